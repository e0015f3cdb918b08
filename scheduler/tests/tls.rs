//! The Raft transport over mutual TLS: real nodes with certificates made by `arbor_tls::issue`,
//! and peers that must be refused (no TLS, another CA, a certificate of another node).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_scheduler::transport::{TransportError, client_handshake};
use arbor_scheduler::{Bootstrap, NodeConfig, RaftNode};
use arbor_tls::issue::{NodeNames, init};
use arbor_tls::{NodeTls, TlsDir, peer_server_name};
use common::{SECRET, kv, put};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn certificates(dir: &std::path::Path, ids: &[u64]) -> TlsDir {
    let tls = TlsDir::new(dir.join("tls"));
    let nodes: Vec<NodeNames> = ids
        .iter()
        .map(|&id| NodeNames {
            id,
            hosts: vec!["127.0.0.1".into()],
        })
        .collect();
    init(&tls, "t", &nodes).unwrap();
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_over_mutual_tls_commit_and_refuse_impostors() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let tls = certificates(dir.path(), &[1, 2, 3]);
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();
    let mut starting = Vec::new();
    for (id, l) in listeners {
        let mut cfg = NodeConfig::new(
            id,
            l.local_addr().unwrap(),
            dir.path().join(format!("node-{id}.redb")),
            SECRET,
            Bootstrap::Voters(vec![1, 2, 3]),
        );
        cfg.peers = addrs
            .clone()
            .into_iter()
            .filter(|(o, _)| *o != id)
            .collect();
        cfg.tls = Some(NodeTls::load(&tls, id).unwrap());
        starting.push(tokio::spawn(RaftNode::start_with_listener(cfg, l)));
    }
    let mut nodes = Vec::new();
    for s in starting {
        nodes.push(s.await.unwrap().unwrap());
    }
    nodes[0]
        .handle()
        .propose(put("k", "over tls"))
        .await
        .unwrap();
    for n in &nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while kv(&n.handle(), "k").await.as_deref() != Some("over tls") {
            assert!(std::time::Instant::now() < deadline, "not replicated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Plain TCP to a TLS node: the node never greets it, and drops it.
    let mut plain = TcpStream::connect(&addrs[&1]).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        client_handshake(&mut plain, 2, 1, SECRET),
    )
    .await
    .expect("a plaintext peer is dropped within the handshake timeout");
    assert!(r.is_err(), "{r:?}");

    // Node 2's certificate, and the secret, claiming to be node 3: refused, with the reason.
    let n2 = NodeTls::load(&tls, 2).unwrap();
    let as_node_2 = async || {
        let tcp = TcpStream::connect(&addrs[&1]).await.unwrap();
        n2.peer_connector()
            .unwrap()
            .connect(peer_server_name(1), tcp)
            .await
            .unwrap()
    };
    let mut s = as_node_2().await;
    let err = client_handshake(&mut s, 3, 1, SECRET).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Refused(why) if why.contains("node 3")),
        "{err:?}"
    );
    // ...and as itself it is let in.
    let mut s = as_node_2().await;
    assert!(client_handshake(&mut s, 2, 1, SECRET).await.unwrap());

    // A node of another CA cannot even finish TLS.
    let other = tempfile::tempdir().unwrap();
    let stranger = NodeTls::load(&certificates(other.path(), &[2]), 2).unwrap();
    let tcp = TcpStream::connect(&addrs[&1]).await.unwrap();
    let refused = stranger
        .peer_connector()
        .unwrap()
        .connect(peer_server_name(1), tcp)
        .await;
    assert!(refused.is_err(), "a certificate of another CA was accepted");

    // One machine (127.0.0.2) opening idle connections: past the per-address limit (64) each
    // is closed at once, and the nodes (from 127.0.0.1) are not locked out.
    let mut idle = Vec::new();
    for _ in 0..80 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(addrs[&1].parse().unwrap()).await.unwrap());
    }
    // All at once, well within the handshake timeout (which closes the others later).
    let reads = idle.iter_mut().map(|s| async move {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(500), s.read(&mut byte)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    });
    let closed = futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count();
    assert_eq!(
        closed,
        80 - 64,
        "connections over the per-address limit are closed at once"
    );

    // The cluster still serves, through node 1 too.
    nodes[1].handle().propose(put("k2", "v")).await.unwrap();
    nodes[0].handle().propose(put("k3", "v")).await.unwrap();
    drop(idle);
    for n in nodes {
        n.shutdown().await;
    }
}
