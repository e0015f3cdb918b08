//! Snapshots, log compaction, catching up by snapshot, and membership changes.

mod common;

use std::time::Duration;

use arbor_scheduler::state::{DeploymentSpec, PlacementDecision, Resources};
use arbor_scheduler::{Bootstrap, Command, CommandOutcome, NodeConfig, ProposeError, Rejection};
use common::{Cluster, kv, put};

const T: Duration = Duration::from_secs(30);

fn small_snapshots(cfg: &mut NodeConfig) {
    cfg.raft.snapshot_interval = 50;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_stops_and_rejoins_through_removal_and_a_snapshot() {
    let mut c = Cluster::start_with(3, small_snapshots).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    for i in 0..200 {
        c.handle(leader)
            .propose(put(&format!("k{}", i % 20), &i.to_string()))
            .await
            .unwrap();
    }
    let leader_status = c.handle(leader).status().await.unwrap();
    assert!(
        leader_status.snapshot_index >= 150,
        "log was not compacted: {leader_status:?}"
    );
    c.kill(f).await;
    std::fs::remove_file(c.data_path(f)).unwrap();
    // Started again under its old id, as `arbor node` would (a founding voter): it learns
    // from the leader that it forgot what it acknowledged, and stops instead of voting.
    c.start_node(f, Bootstrap::Voters(vec![1, 2, 3])).await;
    let halt = tokio::time::timeout(T, c.handle(f).halted())
        .await
        .expect("a wiped node must stop");
    assert!(
        matches!(halt, arbor_scheduler::Halt::LostAcknowledged { .. }),
        "{halt}"
    );
    assert!(halt.to_string().contains("remove-node"), "{halt}");
    c.kill(f).await;
    // The safe way back: remove it, then add it again with empty storage.
    c.handle(leader).remove_node(f).await.unwrap();
    std::fs::remove_file(c.data_path(f)).unwrap();
    c.start_node(f, Bootstrap::Join).await;
    c.handle(leader)
        .add_node(f, c.addrs[&f].to_string())
        .await
        .unwrap();
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(f, commit, T).await;
    let s = c.handle(f).status().await.unwrap();
    assert!(
        s.snapshot_index >= 150,
        "did not catch up by snapshot: {s:?}"
    );
    let want = c.handle(leader).read_state().await.unwrap();
    let got = c.handle(f).read_state().await.unwrap();
    assert_eq!(got, want);
    // Promoted to voter once caught up: the cluster survives losing another node.
    let start = std::time::Instant::now();
    while !c
        .handle(leader)
        .status()
        .await
        .unwrap()
        .voters
        .iter()
        .any(|v| v.id == f)
    {
        assert!(start.elapsed() < T, "never promoted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let other = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader && *i != f)
        .unwrap();
    c.kill(other).await;
    c.wait_leader(&[leader, f], T).await;
    c.handle(f).propose(put("after", "wipe")).await.unwrap();
    assert_eq!(
        kv(&c.handle(leader), "after").await.as_deref(),
        Some("wipe")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_add_learner_promote_then_remove() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    for i in 0..20 {
        c.handle(leader)
            .propose(put(&format!("k{i}"), "v"))
            .await
            .unwrap();
    }
    let addr = c.spawn_joiner(4).await;
    // Promoting a node that never joined is refused.
    let err = c.handle(1).promote(4).await.unwrap_err();
    assert!(
        matches!(err, ProposeError::Rejected(Rejection::Membership(_))),
        "{err:?}"
    );
    // The leader's peers reach node 4 through its proxy; the address in the log is a
    // fallback for nodes without one configured.
    let out = c.handle(2).add_node(4, addr.to_string()).await.unwrap();
    assert!(
        matches!(&out, CommandOutcome::Membership { learners, .. } if learners.contains(&4)),
        "{out:?}"
    );
    // The leader promotes it once it has caught up.
    let deadline = std::time::Instant::now() + T;
    loop {
        let s = c.handle(leader).status().await.unwrap();
        if s.voters.iter().any(|v| v.id == 4) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 4 never promoted: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.handle(4).read(|s| s.kv.len()).await.unwrap(), 20);
    // Remove a voter that is not the leader; the rest goes on.
    let gone = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let out = c.handle(4).remove_node(gone).await.unwrap();
    assert!(
        matches!(&out, CommandOutcome::Membership { voters, .. } if !voters.contains(&gone) && voters.len() == 3),
        "{out:?}"
    );
    c.kill(gone).await;
    c.handle(4).propose(put("after", "remove")).await.unwrap();
    c.shutdown().await;
}

fn every_5(cfg: &mut NodeConfig) {
    cfg.raft.snapshot_interval = 5;
}

/// Snapshots every 5 entries, and frames of 1 MiB: the ≈10 MB snapshot travels in ten.
fn every_5_small_frames(cfg: &mut NodeConfig) {
    every_5(cfg);
    cfg.transport.max_frame_bytes = 1 << 20;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_thousand_placements_snapshot_transfer_and_restore() {
    let mut c = Cluster::start_with(3, every_5_small_frames).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    let h = c.handle(leader);
    for id in 1..=3u64 {
        h.propose(Command::RegisterNode {
            id,
            address: format!("127.0.0.1:{}", 7000 + id),
            capacity: Resources::default(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    }
    // Ten deployments of the most replicas one may have (10,000), every replica placed.
    for batch in 0..10u64 {
        let name = format!("emb-{batch}");
        h.propose(Command::CreateDeployment(DeploymentSpec {
            name: name.clone(),
            kind: "embedder".into(),
            replicas: 10_000,
            resources: Resources::default(),
            strategy: Default::default(),
            constraints: vec![],
            anti_affinity: false,
            max_unavailable: 1,
            version: String::new(),
            config: String::new(),
            collection: None,
            idempotent: false,
            autoscaling: None,
        }))
        .await
        .unwrap();
        let decisions = (0..10_000u64)
            .map(|i| PlacementDecision {
                deployment: name.clone(),
                replica: i as u32,
                node: 1 + i % 3,
                gpus: vec![],
                revision: 1,
                replaces: None,
            })
            .collect();
        h.propose(Command::PlaceActors { decisions }).await.unwrap();
    }
    // Some writes after the big batches so the snapshot lands past them.
    for i in 0..10 {
        h.propose(put(&format!("k{i}"), "v")).await.unwrap();
    }
    let status = h.status().await.unwrap();
    assert!(status.snapshot_index > 10, "{status:?}");

    // A new node can only catch up through the (≈10 MB) snapshot.
    let addr = c.spawn_joiner(4).await;
    c.handle(leader)
        .add_learner(4, addr.to_string())
        .await
        .unwrap();
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(4, commit, T).await;
    let s4 = c.handle(4).status().await.unwrap();
    assert!(
        s4.snapshot_index > 10,
        "node 4 did not get a snapshot: {s4:?}"
    );
    let count = c.handle(4).read(|s| s.placements.len()).await.unwrap();
    assert_eq!(count, 100_000);
    let want = c.handle(leader).read_state().await.unwrap();
    assert_eq!(c.handle(4).read_state().await.unwrap(), want);

    // And the learner restores it from its own file after a kill.
    c.kill(4).await;
    c.start_node(4, Bootstrap::Join).await;
    c.wait_applied(4, commit, T).await;
    assert_eq!(c.handle(4).read_state().await.unwrap(), want);
    c.shutdown().await;
}
