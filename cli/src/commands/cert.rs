//! `arbor cert init|issue`: the cluster CA and the node certificates in `[tls] dir`.

use anyhow::bail;
use arbor_node::ClusterConfig;
use arbor_node::config::Transport;
use arbor_tls::issue::{self, NodeNames};

use crate::flags::CertCommand;

pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Init { config } => {
            let config = ClusterConfig::load(&config)?;
            let dir = tls_dir(&config)?;
            let nodes: Vec<NodeNames> = config.nodes.iter().map(names).collect();
            let made = issue::init(&dir, &config.cluster.name, &nodes)?;
            if made.is_empty() {
                println!(
                    "{} already holds the CA and a certificate for every node; nothing to do",
                    dir.path().display()
                );
            }
            for path in made {
                println!("made {}", path.display());
            }
        }
        CertCommand::Issue { config, node } => {
            let config = ClusterConfig::load(&config)?;
            let dir = tls_dir(&config)?;
            let made = issue::issue(&dir, &config.cluster.name, &names(config.node(node)?))?;
            for path in made {
                println!("made {}", path.display());
            }
            println!(
                "copy {} and node-{node}.pem/node-{node}.key to node {node}'s machine (keep the \
                 key private), then start it",
                dir.ca_cert().display()
            );
        }
    }
    Ok(())
}

fn tls_dir(config: &ClusterConfig) -> anyhow::Result<arbor_tls::TlsDir> {
    match &config.tls {
        Transport::Tls(dir) => Ok(dir.clone()),
        Transport::Insecure => bail!(
            "{} says [tls] insecure = true: there are no certificates to make; replace it with \
             `dir = \".arbor/tls\"`",
            config.path.display()
        ),
    }
}

fn names(node: &arbor_node::config::NodeConfig) -> NodeNames {
    NodeNames {
        id: node.id,
        hosts: ClusterConfig::certificate_hosts(node),
    }
}
