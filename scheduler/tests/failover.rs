//! Real 3-node clusters (TCP on 127.0.0.1, redb files) surviving kills and restarts.

mod common;

use std::time::Duration;

use arbor_scheduler::{
    Bootstrap, Command, CommandOutcome, ObjectKind, ProposeError, Rejection, StateEvent,
    state::DeploymentSpec,
};
use common::{Cluster, kv, put};

const T: Duration = Duration::from_secs(15);

fn deployment(name: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        kind: "embedder".into(),
        replicas: 1,
        resources: Default::default(),
        strategy: Default::default(),
        constraints: vec![],
        anti_affinity: false,
        max_unavailable: 1,
        version: String::new(),
        config: String::new(),
        collection: None,
        idempotent: false,
        autoscaling: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_from_any_node_apply_everywhere_and_rejections_come_back() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let mut events = c.handle(leader).subscribe();

    // Proposed on a follower: forwarded, applied, answered.
    let out = c
        .handle(follower)
        .propose(Command::CreateDeployment(deployment("emb")))
        .await
        .unwrap();
    assert_eq!(out, CommandOutcome::DeploymentVersion(1));
    // The same again is rejected with its reason, on whichever node proposes it.
    let err = c
        .handle(leader)
        .propose(Command::CreateDeployment(deployment("emb")))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProposeError::Rejected(Rejection::AlreadyExists {
            kind: ObjectKind::Deployment,
            name: "emb".into()
        })
    );
    // The watcher on the leader saw both, in order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(T, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let StateEvent::Applied { result, .. } = event {
            seen.push(result.is_ok());
        }
    }
    assert_eq!(seen, vec![true, false]);
    // Linearizable reads on every node see the deployment.
    for id in 1..=3 {
        let n = c.handle(id).read(|s| s.deployments.len()).await.unwrap();
        assert_eq!(n, 1, "node {id}");
    }
    let status = c.handle(leader).status().await.unwrap();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.voters.len(), 3);
    assert!(status.voters.iter().all(|v| v.matched.is_some()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_new_leader_elected_writes_resume_and_old_leader_catches_up() {
    let mut c = Cluster::start(3).await;
    let old = c.wait_leader(&[1, 2, 3], T).await;
    c.handle(old).propose(put("a", "1")).await.unwrap();
    c.kill(old).await;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = c.wait_leader(&rest, T).await;
    assert_ne!(new, old);
    c.handle(rest[0]).propose(put("a", "2")).await.unwrap();
    c.handle(rest[1]).propose(put("b", "3")).await.unwrap();
    // The killed leader restarts from its files and catches up.
    c.start_node(old, Bootstrap::Voters(vec![1, 2, 3])).await;
    let commit = c.handle(new).status().await.unwrap().commit;
    c.wait_applied(old, commit, T).await;
    assert_eq!(kv(&c.handle(old), "a").await.as_deref(), Some("2"));
    assert_eq!(kv(&c.handle(old), "b").await.as_deref(), Some("3"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_and_restarted_catches_up() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.kill(f).await;
    for i in 0..50 {
        c.handle(leader)
            .propose(put(&format!("k{i}"), &i.to_string()))
            .await
            .unwrap();
    }
    c.start_node(f, Bootstrap::Voters(vec![1, 2, 3])).await;
    let commit = c.handle(leader).status().await.unwrap().commit;
    c.wait_applied(f, commit, T).await;
    let n = c.handle(f).read(|s| s.kv.len()).await.unwrap();
    assert_eq!(n, 50);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_killed_and_restarted_keeps_its_state() {
    let mut c = Cluster::start(3).await;
    c.wait_leader(&[1, 2, 3], T).await;
    let h = c.handle(2);
    for i in 0..30 {
        h.propose(put(&format!("k{i}"), &i.to_string()))
            .await
            .unwrap();
    }
    h.propose(Command::CreateDeployment(deployment("emb")))
        .await
        .unwrap();
    let before = h.read_state().await.unwrap();
    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.start_node(id, Bootstrap::Voters(vec![1, 2, 3])).await;
    }
    c.wait_leader(&[1, 2, 3], T).await;
    for id in 1..=3 {
        let after = c.handle(id).read_state().await.unwrap();
        assert_eq!(after, before, "node {id} lost state across a full restart");
    }
    // And the restarted cluster still takes writes.
    c.handle(3).propose(put("after", "yes")).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_kept_out() {
    let mut c = Cluster::start(3).await;
    c.kill(3).await;
    let mut cfg = c.config(3, Bootstrap::Voters(vec![1, 2, 3]));
    cfg.secret = b"not the cluster secret".to_vec();
    cfg.client.read_timeout = Duration::from_secs(1);
    c.start_node_with(3, cfg).await;
    let leader = c.wait_leader(&[1, 2], T).await;
    for i in 0..5 {
        c.handle(leader)
            .propose(put("k", &i.to_string()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Node 3 never hears from the others, so it has none of the five writes.
    let s3 = c.handle(3).status().await.unwrap();
    let s = c.handle(leader).status().await.unwrap();
    assert!(
        s3.applied + 5 <= s.commit,
        "node 3 applied entries through a refused link: {s3:?} vs leader {s:?}"
    );
    // Cut off from any quorum, it cannot serve a linearizable read.
    assert_eq!(
        c.handle(3).read_state().await,
        Err(arbor_scheduler::ReadError::Timeout(Duration::from_secs(1)))
    );
    assert_ne!(s3.leader, Some(leader), "{s3:?}");
    c.shutdown().await;
}

#[tokio::test]
async fn a_committed_entry_no_node_can_decode_halts_every_node_instead_of_being_skipped() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    c.handle(leader).propose(put("before", "1")).await.unwrap();
    // What a newer version's command looks like to this one.
    c.handle(leader)
        .propose_undecodable(vec![0xff; 16])
        .await
        .unwrap();
    for id in [1, 2, 3] {
        let halt = tokio::time::timeout(T, c.handle(id).halted())
            .await
            .unwrap_or_else(|_| panic!("node {id} kept applying past an undecodable entry"));
        assert!(
            matches!(halt, arbor_scheduler::Halt::Undecodable { .. }),
            "node {id}: {halt}"
        );
        assert!(halt.to_string().contains("cannot be applied"), "{halt}");
    }
    c.shutdown().await;
}
