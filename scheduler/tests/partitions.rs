//! Partitions through fault-injecting proxies between the nodes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_scheduler::{RaftHandle, Role};
use common::proxy::Fault;
use common::{Cluster, kv, put};

const T: Duration = Duration::from_secs(15);

/// Leaders observed, per term.
type LeadersByTerm = Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>;

/// Polls every node's status and records, per term, which nodes claimed leadership.
fn watch_leaders(handles: Vec<RaftHandle>) -> (LeadersByTerm, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(BTreeMap::<u64, BTreeSet<u64>>::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            for h in &handles {
                if let Ok(st) = h.status().await
                    && st.role == Role::Leader
                {
                    s.lock().unwrap().entry(st.term).or_default().insert(st.id);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_commit_majority_goes_on_and_the_minority_converges() {
    let c = Cluster::start(3).await;
    let old = c.wait_leader(&[1, 2, 3], T).await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let (seen, watcher) = watch_leaders((1..=3).map(|i| c.handle(i)).collect());
    c.handle(old).propose(put("before", "1")).await.unwrap();

    // Isolate the leader.
    c.partition(&[old], &majority);
    let minority_write = tokio::time::timeout(
        Duration::from_secs(3),
        c.handle(old).propose(put("minority", "lost")),
    )
    .await;
    assert!(
        !matches!(minority_write, Ok(Ok(_))),
        "an isolated leader committed a write: {minority_write:?}"
    );
    // The majority elects a leader among itself and keeps committing.
    let new = c.wait_leader(&majority, T).await;
    assert_ne!(new, old);
    for i in 0..10 {
        c.handle(majority[i % 2])
            .propose(put("majority", &i.to_string()))
            .await
            .unwrap();
    }
    // The old leader stepped down (CheckQuorum), and a read there cannot succeed.
    let st = c.handle(old).status().await.unwrap();
    assert_ne!(st.role, Role::Leader, "{st:?}");

    // Heal: the old leader converges, and its unacknowledged write never appears.
    c.heal();
    let commit = c.handle(new).status().await.unwrap().commit;
    c.wait_applied(old, commit, T).await;
    assert_eq!(kv(&c.handle(old), "majority").await.as_deref(), Some("9"));
    assert_eq!(kv(&c.handle(old), "minority").await, None);
    assert_eq!(kv(&c.handle(new), "minority").await, None);

    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "expected leaders in two terms: {seen:?}");
    for (term, leaders) in &seen {
        assert_eq!(leaders.len(), 1, "two leaders in term {term}: {leaders:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_and_a_black_holed_link_do_not_stop_commits() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    let (seen, watcher) = watch_leaders((1..=3).map(|i| c.handle(i)).collect());
    // Every link 20 ms slower.
    c.set_all(Fault::Delay(Duration::from_millis(20)));
    for i in 0..10 {
        c.handle(1 + (i % 3) as u64)
            .propose(put("slow", &i.to_string()))
            .await
            .unwrap();
    }
    c.heal();
    // The leader's link to one follower silently drops everything: the other follower
    // still forms a quorum.
    let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.proxies[&(leader, f)].set(Fault::Drop);
    for i in 0..10 {
        c.handle(leader)
            .propose(put("dropped", &i.to_string()))
            .await
            .unwrap();
    }
    // Healed, the follower converges (its connection is re-established after the cut).
    c.proxies[&(leader, f)].set(Fault::Cut);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.heal();
    let l = c.wait_leader(&[1, 2, 3], T).await;
    let commit = c.handle(l).status().await.unwrap().commit;
    c.wait_applied(f, commit, T).await;
    assert_eq!(kv(&c.handle(f), "dropped").await.as_deref(), Some("9"));
    watcher.abort();
    for (term, leaders) in seen.lock().unwrap().iter() {
        assert_eq!(leaders.len(), 1, "two leaders in term {term}: {leaders:?}");
    }
    c.shutdown().await;
}
