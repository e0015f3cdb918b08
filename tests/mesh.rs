//! Nodes in one process, linked for real over loopback: they form a full mesh, and a node
//! with the wrong secret is refused while the others stay linked.

use std::time::{Duration, Instant};

use arbor_node::{Node, NodeId, Secret};
use arbor_proto::cluster::PeerState;
use arbor_tests::cluster;

/// Polls until `check` holds for node's view, or panics with the last view.
async fn wait_for(node: &Node, what: &str, check: impl Fn(&[(NodeId, PeerState)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view: Vec<(NodeId, PeerState)> = node
            .membership()
            .await
            .unwrap()
            .nodes
            .iter()
            .map(|n| (n.id, n.state))
            .collect();
        if check(&view) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never saw {what}: {view:?}",
            node.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_up(view: &[(NodeId, PeerState)]) -> bool {
    view.iter().all(|(_, s)| *s == PeerState::Up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_full_mesh() {
    arbor_node::logging::init(Default::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster("mesh", 3, dir.path());
    let secret = Secret::new("mesh-secret").unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::start(&config, id, &secret, None).await.unwrap());
    }
    for node in &nodes {
        wait_for(node, "every node up", all_up).await;
        let report = node.membership().await.unwrap();
        assert_eq!(report.nodes.len(), 3);
        for row in &report.nodes {
            let info = row.info.as_ref().expect("an up node has declared itself");
            assert_eq!(info.resources.cpu, "1");
            assert_eq!(info.resources.memory, "1GiB");
            assert_eq!(info.labels["rack"], format!("r{}", row.id));
        }
        assert!(node.data_dir().is_dir());
    }

    // A node that leaves cleanly is seen down, and up again when it returns.
    let third = nodes.pop().unwrap();
    third.shutdown().await;
    for node in &nodes {
        wait_for(node, "node 3 down", |v| v.contains(&(3, PeerState::Down))).await;
    }
    nodes.push(Node::start(&config, 3, &secret, None).await.unwrap());
    for node in &nodes {
        wait_for(node, "every node up again", all_up).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_refused() {
    arbor_node::logging::init(Default::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster("secrets", 3, dir.path());
    let good = Secret::new("the-cluster-secret").unwrap();
    let wrong = Secret::new("not-the-secret").unwrap();
    let n1 = Node::start(&config, 1, &good, None).await.unwrap();
    let n2 = Node::start(&config, 2, &good, None).await.unwrap();
    let n3 = Node::start(&config, 3, &wrong, None).await.unwrap();

    let linked = |v: &[(NodeId, PeerState)]| {
        v.contains(&(1, PeerState::Up)) && v.contains(&(2, PeerState::Up))
    };
    wait_for(&n1, "node 2 up", linked).await;
    wait_for(&n2, "node 1 up", linked).await;
    // Give node 3 many dial attempts' worth of time; it must stay out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in [&n1, &n2] {
        wait_for(node, "1 and 2 still linked, 3 refused", |v| {
            linked(v) && v.contains(&(3, PeerState::Down))
        })
        .await;
    }
    wait_for(&n3, "no peer up", |v| {
        v.contains(&(1, PeerState::Down)) && v.contains(&(2, PeerState::Down))
    })
    .await;
    for node in [n1, n2, n3] {
        node.shutdown().await;
    }
}
