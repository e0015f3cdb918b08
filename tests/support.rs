//! What the integration tests share: free ports and configs for clusters on 127.0.0.1.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;

use arbor_node::ClusterConfig;
use arbor_tls::issue::NodeNames;

/// A port that was free a moment ago and that this process has not handed out before. Tests
/// bind it again at once.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), not from it:
/// a port of that range released here may be taken at once as the source port of some
/// outgoing connection (a node dialling another), and the node meant to listen on it then
/// fails to start. Each process starts at a place of its own in the range below, so that
/// test binaries running at once rarely try the same ports.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<Option<(u16, u16, u16)>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let (low, high, at) = next.get_or_insert_with(|| {
        let (low, high) = (10_000, ephemeral_start().max(11_000));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        (low, high, low + (seed % u32::from(high - low)) as u16)
    });
    for _ in *low..*high {
        let port = *at;
        *at = if *at + 1 >= *high { *low } else { *at + 1 };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {high}");
}

/// The first port the kernel hands out for outgoing connections (32768 where it cannot be
/// read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
