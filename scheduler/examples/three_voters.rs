//! Three Raft voters in one process on loopback: a write proposed on one node, read back
//! linearizably on another, then the leader killed and the write still there.
//!
//! ```sh
//! cargo run -p arbor-scheduler --example three_voters
//! ```
//!
//! Each node is what `arbor node` runs for its control plane: a [`RaftNode`] with its own redb
//! file and its own TCP port for Raft messages. Here they share a process; in a cluster each
//! is a machine.

use std::time::Duration;

use arbor_scheduler::{Bootstrap, Command, NodeConfig, RaftNode};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // Bind first, so every node knows its peers' addresses before any starts.
    let mut listeners = Vec::new();
    for _ in 1..=3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let addrs: Vec<_> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;

    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = NodeConfig::new(
            id,
            addrs[i],
            dir.path().join(format!("raft-{id}.redb")),
            b"example secret".to_vec(),
            Bootstrap::Voters(vec![1, 2, 3]),
        );
        for (j, addr) in addrs.iter().enumerate() {
            if j != i {
                cfg.peers.insert(j as u64 + 1, addr.to_string());
            }
        }
        nodes.push(RaftNode::start_with_listener(cfg, listener));
    }
    // Together, as a new cluster's voters start: each asks the others before founding it.
    let mut nodes: Vec<RaftNode> = futures::future::try_join_all(nodes).await?;

    // Propose on node 1: forwarded to whichever node leads, answered once applied.
    let raft1 = nodes[0].handle();
    raft1
        .propose(Command::KvPut {
            key: "greeting".into(),
            value: "hello".into(),
        })
        .await?;
    // Read on node 3: linearizable (ReadIndex), so it sees the write.
    let raft3 = nodes[2].handle();
    let got = raft3.read(|s| s.kv.get("greeting").cloned()).await?;
    println!("node 3 reads greeting = {got:?}");
    assert_eq!(got.as_deref(), Some("hello"));

    // Kill the leader; the other two elect a new one and still hold the write.
    let leader = raft3.status().await?.leader.expect("a leader is known");
    println!("killing the leader, node {leader}");
    let index = nodes
        .iter()
        .position(|n| n.handle().id() == leader)
        .expect("the leader is one of the three");
    nodes.remove(index).kill().await;
    let survivor = nodes[0].handle();
    let start = std::time::Instant::now();
    let got = loop {
        match survivor.read(|s| s.kv.get("greeting").cloned()).await {
            Ok(v) => break v,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                println!("  waiting for a new leader: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let status = survivor.status().await?;
    println!(
        "new leader {:?} in term {}; greeting = {got:?}",
        status.leader, status.term
    );
    assert_eq!(got.as_deref(), Some("hello"));
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
