//! What the integration tests share: free ports and configs for clusters on 127.0.0.1.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;

use arbor_node::ClusterConfig;
use arbor_tls::issue::NodeNames;

/// A port that was free a moment ago and that this process has not handed out before (the
/// OS may give a just-closed port again). Tests bind it again at once.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// cluster.toml text for `n` nodes on free loopback ports, data under `dir`, with mutual TLS:
/// the CA and the nodes' certificates are made in `dir/tls` (as `arbor cert init` would), and
/// kept when they are there already.
pub fn cluster_toml(name: &str, n: u64, dir: &Path, secret_file: Option<&str>) -> String {
    certificates(name, n, &dir.join("tls"));
    let mut t = format!("[cluster]\nname = \"{name}\"\n");
    if let Some(f) = secret_file {
        let _ = writeln!(t, "secret_file = \"{f}\"");
    }
    // Before the nodes: tests cut the text at a `[[nodes]]` to drop the last ones.
    let _ = write!(t, "\n[tls]\ndir = \"{}\"\n", dir.join("tls").display());
    for id in 1..=n {
        let _ = write!(
            t,
            "\n[[nodes]]\nid = {id}\nactors = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\ngateway = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nlabels = {{ rack = \"r{id}\" }}\n[nodes.resources]\ncpu = \"1\"\nmemory = \"1GiB\"\ngpu = \"auto\"\n",
            free_port(),
            free_port(),
            free_port(),
            dir.join(format!("node-{id}")).display()
        );
    }
    // Tests that kill a node expect its partition replicas to move as soon as it is down; a
    // production cluster waits a minute for the node to come back (`partition_move_delay`).
    t.push_str("\n[scheduler]\npartition_move_delay = \"0s\"\n");
    t
}

/// The CA and certificates for nodes 1..=n on loopback in `dir`, made where missing.
pub fn certificates(cluster: &str, n: u64, dir: &Path) {
    let nodes: Vec<NodeNames> = (1..=n)
        .map(|id| NodeNames {
            id,
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
        })
        .collect();
    arbor_tls::issue::init(&arbor_tls::TlsDir::new(dir), cluster, &nodes)
        .expect("cannot make the test cluster's certificates");
}

/// A parsed config for `n` nodes, written to `dir/cluster.toml`.
pub fn cluster(name: &str, n: u64, dir: &Path) -> ClusterConfig {
    let text = cluster_toml(name, n, dir, None);
    let path = dir.join("cluster.toml");
    std::fs::write(&path, &text).expect("cannot write cluster.toml");
    ClusterConfig::load(&path).expect("test config must parse")
}

/// How a client trusts the gateways of a test cluster (its CA).
pub fn trust(config: &ClusterConfig) -> arbor_client::Trust {
    arbor_client::Trust::from_ca(config.gateway_ca().as_deref()).expect("the test cluster's CA")
}

/// A node's gateway and how to trust it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: std::net::SocketAddr,
    pub trust: arbor_client::Trust,
}

/// The gateway of the `i`-th node of `config`.
pub fn endpoint(config: &ClusterConfig, i: usize) -> Endpoint {
    Endpoint {
        addr: config.nodes[i].gateway,
        trust: trust(config),
    }
}
