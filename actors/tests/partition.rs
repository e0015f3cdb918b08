//! `vector_partition` replicas as real actors over real redb files, started by node agents of
//! nodes in one process (`common::cluster`) that follow a control plane in memory.
//!
//! Every request and reply goes through its wire encoding (bincode with the decode limit), as
//! it would between nodes. Search results are checked against the kernels' brute-force
//! reference, `naive_topk`; replication against what each in-sync replica stores.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use arbor_actors::kinds::{Kind, ReplicaContext, spawn_replica};
use arbor_actors::partition::store::{StoreName, partitions_dir};
use arbor_actors::partition::{
    MetadataFilter, Partition, PartitionAnswer, PartitionFailure, PartitionReply, PartitionRequest,
    PartitionStats, Rows, SearchHit, VectorRecord, WriteOp, store_path,
};
use arbor_actors::replica::{CallRequest, ReplicaMsg};
use arbor_actors::wire::Wire;
use arbor_kernels::device::Device;
use arbor_kernels::topk::{Hit, Metric, naive_topk};
use arbor_scheduler::Command;
use arbor_scheduler::state::{PlacementStatus, StatusUpdate};
use common::Parent;
use common::cluster::Cluster;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, BytesConvertable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const CALL: Duration = Duration::from_secs(30);
const DIM: usize = 16;
const ROWS: u64 = 1000;
const LANGS: [&str; 3] = ["en", "fr", "de"];
const P0: &str = "docs.p0";

/// A cluster of `nodes` nodes with collection "docs": one partition of `replicas` replicas.
async fn docs(scope: &str, nodes: u64, replicas: u32, metric: Metric) -> Cluster {
    let c = Cluster::start(scope, nodes).await;
    c.collection("docs", 1, replicas, DIM as u32, metric).await;
    c
}

/// One request to replica `replica`, encoded and decoded both ways as between nodes.
async fn ask(c: &Cluster, replica: u32, request: PartitionRequest) -> PartitionReply {
    let request = Wire::<PartitionRequest>::from_bytes(Wire::new(request).into_bytes());
    let cell = c.replica(P0, replica).await;
    let actor: ActorRef<ReplicaMsg> = cell.into();
    let reply = actor
        .call(|port| ReplicaMsg::Partition(request, port), Some(CALL))
        .await
        .expect("the actor is there");
    let CallResult::Success(reply) = reply else {
        panic!("no reply: {reply:?}");
    };
    Wire::<PartitionReply>::from_bytes(reply.into_bytes())
        .into_inner()
        .expect("the reply decodes")
}

async fn stats(c: &Cluster, replica: u32) -> PartitionStats {
    match ask(c, replica, PartitionRequest::Stats).await {
        Ok(PartitionAnswer::Stats(s)) => s,
        other => panic!("not stats: {other:?}"),
    }
}

async fn search(
    c: &Cluster,
    replica: u32,
    queries: &[Vec<f32>],
    k: u32,
    filter: Option<&MetadataFilter>,
) -> Vec<Vec<SearchHit>> {
    match ask(
        c,
        replica,
        PartitionRequest::search(queries.to_vec(), k, filter, None),
    )
    .await
    {
        Ok(PartitionAnswer::Hits(h)) => h,
        other => panic!("not hits: {other:?}"),
    }
}

/// A write through the primary, at the epoch the control plane is at: (seq, count). Asked
/// again at the newer epoch when the set moved on meanwhile, as a coordinator does.
async fn write(c: &Cluster, op: WriteOp) -> Result<(u64, u32), PartitionFailure> {
    loop {
        let view = c.view(P0);
        let (primary, _) = view.primary().expect("a primary");
        let request = PartitionRequest::Write {
            epoch: view.set.epoch,
            op: op.clone(),
        };
        match ask(c, primary, request).await {
            Ok(PartitionAnswer::Written { seq, count, .. }) => return Ok((seq, count)),
            Ok(other) => panic!("not written: {other:?}"),
            Err(PartitionFailure::StaleEpoch { .. }) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn upsert(c: &Cluster, rows: Vec<VectorRecord>) -> (u64, u32) {
    let rows = Rows::from_records(rows).expect("rows of one dimension");
    write(c, WriteOp::Upsert(rows)).await.expect("written")
}

/// Every in-sync replica stores exactly `rows` (compared by `Get`), and nothing else is found.
async fn every_replica_holds(c: &Cluster, rows: &[VectorRecord]) {
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    for chunk in ids.chunks(1000) {
        let found = c.get_everywhere(P0, chunk).await;
        let want: Vec<&VectorRecord> = rows.iter().filter(|r| chunk.contains(&r.id)).collect();
        for (replica, got) in found {
            assert_eq!(got.len(), want.len(), "replica {replica}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.id, &g.vector), (w.id, &w.vector), "replica {replica}");
            }
        }
    }
    for replica in c.view(P0).set.in_sync.keys() {
        assert_eq!(
            stats(c, *replica).await.count,
            rows.len() as u64,
            "replica {replica}"
        );
    }
}

fn metadata_of(i: u64) -> Value {
    json!({
        "group": i % 5,
        "lang": LANGS[(i % 3) as usize],
        "page": i % 100,
        "tag": format!("t{}", i % 7),
    })
}

fn random_rows(rng: &mut StdRng, n: u64) -> Vec<VectorRecord> {
    (0..n)
        .map(|i| VectorRecord {
            id: i * 3 + 1,
            vector: (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            metadata: metadata_of(i).to_string(),
        })
        .collect()
}

fn random_queries(rng: &mut StdRng, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

/// The reference answer over `rows`, by brute force.
fn expected(
    metric: Metric,
    rows: &[VectorRecord],
    queries: &[Vec<f32>],
    k: usize,
    filter: Option<&MetadataFilter>,
) -> Vec<Vec<Hit>> {
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let vectors: Vec<f32> = rows.iter().flat_map(|r| r.vector.clone()).collect();
    let flat: Vec<f32> = queries.concat();
    let passes: HashSet<u64> = rows
        .iter()
        .filter(|r| {
            let meta: Value = serde_json::from_str(&r.metadata).unwrap();
            filter.is_none_or(|f| f.matches(meta.as_object().unwrap()))
        })
        .map(|r| r.id)
        .collect();
    let pass = |id: u64| passes.contains(&id);
    naive_topk(metric, DIM, &ids, &vectors, &flat, k, Some(&pass))
}

/// Same ids and scores as the reference, allowing two rows whose scores tie to the last
/// float bits to come in either order.
fn assert_same(got: &[Vec<SearchHit>], want: &[Vec<Hit>]) {
    assert_eq!(got.len(), want.len());
    for (q, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.len(),
            w.len(),
            "query {q}: {} hits, want {}",
            g.len(),
            w.len()
        );
        for (i, (g, w)) in g.iter().zip(w).enumerate() {
            assert!(
                (g.score - w.score).abs() < 1e-4,
                "query {q} hit {i}: score {} want {}",
                g.score,
                w.score
            );
            if g.id != w.id {
                let tie = w.score;
                assert!(
                    want[q]
                        .iter()
                        .any(|h| h.id == g.id && (h.score - tie).abs() < 1e-4),
                    "query {q} hit {i}: id {} want {}",
                    g.id,
                    w.id
                );
            }
        }
    }
}

fn filter(json: Value) -> MetadataFilter {
    MetadataFilter::parse(&json.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_matches_brute_force_with_and_without_filters() {
    let c = docs("partition-search", 1, 1, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(7);
    let rows = random_rows(&mut rng, ROWS);
    // Two batches, as a caller would send them under the message limit.
    assert_eq!(upsert(&c, rows[..600].to_vec()).await, (1, 600));
    assert_eq!(upsert(&c, rows[600..].to_vec()).await, (2, 400));
    let s = stats(&c, 0).await;
    assert_eq!((s.count, s.dim, s.seq), (ROWS, DIM as u32, 2));
    assert!(s.host_bytes >= ROWS * DIM as u64 * 4, "{s:?}");

    let queries = random_queries(&mut rng, 8);
    let got = search(&c, 0, &queries, 10, None).await;
    assert_same(&got, &expected(Metric::Cosine, &rows, &queries, 10, None));
    // Metadata comes back with every hit.
    let hit = &got[0][0];
    let i = (hit.id - 1) / 3;
    assert_eq!(
        serde_json::from_str::<Value>(&hit.metadata).unwrap(),
        metadata_of(i)
    );
    let filters = [
        filter(json!({"op": "equal", "key": "lang", "value": "fr"})),
        filter(json!({"op": "in", "key": "group", "values": [1, 3]})),
        filter(json!({"op": "range", "key": "page", "gte": 10, "lt": 20})),
        filter(json!({"op": "and", "filters": [
            {"op": "equal", "key": "tag", "value": "t2"},
            {"op": "range", "key": "page", "lte": 50}
        ]})),
    ];
    for f in &filters {
        let got = search(&c, 0, &queries, 10, Some(f)).await;
        assert_same(
            &got,
            &expected(Metric::Cosine, &rows, &queries, 10, Some(f)),
        );
        for hits in &got {
            // Filtered inside the scan: still k rows, every one of them matching.
            assert_eq!(hits.len(), 10, "{f:?}");
            for h in hits {
                let meta: Value = serde_json::from_str(&h.metadata).unwrap();
                assert!(f.matches(meta.as_object().unwrap()), "{f:?}: {meta}");
            }
        }
    }
    // Fewer matching rows than k: all of them, no more.
    let rare = filter(json!({"op": "and", "filters": [
        {"op": "equal", "key": "page", "value": 5},
        {"op": "equal", "key": "lang", "value": "de"}
    ]}));
    let matching = (0..ROWS).filter(|i| i % 100 == 5 && i % 3 == 2).count();
    assert!(matching > 0 && matching < 10);
    let got = search(&c, 0, &queries, 10, Some(&rare)).await;
    assert!(got.iter().all(|h| h.len() == matching));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_everything_acknowledged_survive_a_restart() {
    let mut c = docs("partition-restart", 1, 1, Metric::L2).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut rows = random_rows(&mut rng, ROWS);
    upsert(&c, rows.clone()).await;
    let gone: Vec<u64> = rows.iter().step_by(10).map(|r| r.id).collect();
    assert_eq!(
        write(&c, WriteOp::Delete(gone.clone())).await.unwrap(),
        (2, gone.len() as u32)
    );
    rows.retain(|r| !gone.contains(&r.id));
    let queries = random_queries(&mut rng, 4);
    let f = filter(json!({"op": "range", "key": "page", "gt": 30}));
    let before_plain = search(&c, 0, &queries, 20, None).await;
    let before_filtered = search(&c, 0, &queries, 20, Some(&f)).await;
    assert_same(
        &before_plain,
        &expected(Metric::L2, &rows, &queries, 20, None),
    );
    assert_same(
        &before_filtered,
        &expected(Metric::L2, &rows, &queries, 20, Some(&f)),
    );
    let before = stats(&c, 0).await;

    // The node's agent goes and comes back: same placement, same file.
    c.stop_node(1).await;
    c.start_node(1).await;
    c.in_sync(P0, 1).await;
    let after = stats(&c, 0).await;
    assert_eq!((after.count, after.seq), (before.count, before.seq));
    let ids = |h: &[Vec<SearchHit>]| -> Vec<Vec<u64>> {
        h.iter().map(|l| l.iter().map(|x| x.id).collect()).collect()
    };
    assert_eq!(
        ids(&search(&c, 0, &queries, 20, None).await),
        ids(&before_plain)
    );
    assert_eq!(
        ids(&search(&c, 0, &queries, 20, Some(&f)).await),
        ids(&before_filtered)
    );
    every_replica_holds(&c, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_distinct_ordered_sequence_numbers() {
    let c = std::sync::Arc::new(docs("partition-seq", 1, 1, Metric::Cosine).await);
    let mut rng = StdRng::seed_from_u64(5);
    let rows = random_rows(&mut rng, 200);
    let calls: Vec<_> = rows
        .chunks(10)
        .map(|chunk| {
            let (c, chunk) = (c.clone(), chunk.to_vec());
            tokio::spawn(async move { upsert(&c, chunk).await.0 })
        })
        .collect();
    let mut seqs = Vec::new();
    for call in calls {
        seqs.push(call.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let s = stats(&c, 0).await;
    assert_eq!((s.count, s.seq), (200, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = docs("partition-bad", 2, 2, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(9);
    let rows = random_rows(&mut rng, 20);
    upsert(&c, rows.clone()).await;
    let before = stats(&c, 0).await;
    let row = |vector: Vec<f32>, metadata: &str| VectorRecord {
        id: 10_000,
        vector,
        metadata: metadata.into(),
    };
    let good = vec![0.5; DIM];
    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let bad_writes = [
        (vec![row(vec![0.5; DIM - 1], "{}")], "dimension is 16"),
        (vec![row(nan, "{}")], "non-finite"),
        (
            vec![row(good.clone(), r#""text""#)],
            "must be a JSON object, got a string",
        ),
        (vec![row(good.clone(), "{oops")], "not JSON"),
        // One bad row spoils the batch: the good row before it is not written either.
        (
            vec![
                VectorRecord {
                    id: 20_000,
                    vector: good.clone(),
                    metadata: "{}".into(),
                },
                row(good.clone(), "[]"),
            ],
            "must be a JSON object",
        ),
    ];
    for (records, why) in bad_writes {
        let rows = Rows::from_records(records).unwrap();
        let err = write(&c, WriteOp::Upsert(rows)).await.unwrap_err();
        assert!(
            matches!(err, PartitionFailure::Invalid(_)) && err.to_string().contains(why),
            "{err} (wanted {why})"
        );
    }
    let q = vec![good.clone()];
    let bad_searches = [
        (
            Some(r#"{"op":"range","key":"page"}"#),
            q.clone(),
            5,
            "no bound",
        ),
        (
            Some(r#"{"op":"range","key":"page","lt":"9"}"#),
            q.clone(),
            5,
            "must be numbers",
        ),
        (Some("not json"), q.clone(), 5, "bad filter"),
        (None, vec![vec![1.0; DIM + 2]], 5, "dimension is 16"),
        (None, q.clone(), 100_000, "at most 256"),
    ];
    for (filter, queries, k, why) in bad_searches {
        let request = PartitionRequest::Search {
            queries,
            k,
            filter: filter.map(String::from),
            ef: None,
        };
        let err = ask(&c, 1, request).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err} (wanted {why})");
    }
    // A write with an old epoch is refused, and says which is current.
    let view = c.view(P0);
    let stale = PartitionRequest::Write {
        epoch: view.set.epoch - 1,
        op: WriteOp::Delete(vec![1]),
    };
    assert_eq!(
        ask(&c, 0, stale).await,
        Err(PartitionFailure::StaleEpoch {
            asked: view.set.epoch - 1,
            current: view.set.epoch
        })
    );
    // A follower takes no write from a coordinator.
    let to_follower = PartitionRequest::Write {
        epoch: view.set.epoch,
        op: WriteOp::Delete(vec![1]),
    };
    assert!(matches!(
        ask(&c, 1, to_follower).await,
        Err(PartitionFailure::NotPrimary { .. })
    ));
    // Bytes that do not decode are an error reply, not a crash.
    let garbage = Wire::<PartitionRequest>::from_bytes(vec![0xFF; 5]);
    let actor: ActorRef<ReplicaMsg> = c.replica(P0, 0).await.into();
    let reply = actor
        .call(|port| ReplicaMsg::Partition(garbage, port), Some(CALL))
        .await
        .unwrap();
    let CallResult::Success(reply) = reply else {
        panic!("no reply")
    };
    let err = reply.into_inner().unwrap().unwrap_err();
    assert!(err.to_string().contains("does not decode"), "{err}");

    for replica in [0, 1] {
        let after = stats(&c, replica).await;
        assert_eq!((after.count, after.seq), (before.count, before.seq));
    }
    every_replica_holds(&c, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_call_answers_stats_and_other_kinds_refuse_partition_requests() {
    let c = docs("partition-call", 1, 1, Metric::Cosine).await;
    let actor: ActorRef<ReplicaMsg> = c.replica(P0, 0).await.into();
    let call = |payload: &[u8]| {
        let actor = actor.clone();
        let request = Wire::new(CallRequest {
            payload: payload.to_vec(),
        });
        async move {
            let reply = actor
                .call(|port| ReplicaMsg::Call(request, port), Some(CALL))
                .await
                .unwrap();
            let CallResult::Success(reply) = reply else {
                panic!("no reply")
            };
            reply.into_inner().unwrap()
        }
    };
    let stats: Value = serde_json::from_slice(&call(br#"{"stats": true}"#).await.unwrap()).unwrap();
    assert_eq!(stats["count"], json!(0));
    assert_eq!(stats["dim"], json!(DIM));
    assert_eq!(stats["metric"], json!("cosine"));
    assert_eq!(stats["role"], json!("primary"));
    let err = call(b"hello").await.unwrap_err();
    assert_eq!(
        arbor_proto::Coded::code(&err),
        arbor_proto::ErrorCode::InvalidJob
    );
    assert!(err.to_string().contains("{\"stats\": true}"), "{err}");

    for kind in [Kind::Echo, Kind::Spin] {
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let ctx = ReplicaContext {
            actor_id: "x/0".into(),
            deployment: "x".into(),
            generation: 1,
            devices: vec![],
            config: String::new(),
            data_dir: std::env::temp_dir(),
            models_dir: std::env::temp_dir(),
            scope: "partition-call".into(),
            control: c.control.control(),
        };
        let replica = spawn_replica(kind, ctx, parent.get_cell()).await.unwrap();
        let reply = replica
            .call(
                |port| ReplicaMsg::Partition(Wire::new(PartitionRequest::Stats), port),
                Some(CALL),
            )
            .await
            .unwrap();
        let CallResult::Success(reply) = reply else {
            panic!("no reply")
        };
        let err = reply.into_inner().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("not a vector partition"),
            "{kind}: {err}"
        );
        replica.stop(None);
        parent.stop(None);
    }
}

// ---- Replication ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_on_every_in_sync_replica() {
    let c = docs("replication-all", 3, 3, Metric::Dot).await;
    let mut rng = StdRng::seed_from_u64(21);
    let mut rows = random_rows(&mut rng, 300);
    for chunk in rows.chunks(50) {
        upsert(&c, chunk.to_vec()).await;
    }
    let gone: Vec<u64> = rows.iter().step_by(7).map(|r| r.id).collect();
    write(&c, WriteOp::Delete(gone.clone())).await.unwrap();
    rows.retain(|r| !gone.contains(&r.id));
    assert_eq!(c.view(P0).set.in_sync.len(), 3);
    every_replica_holds(&c, &rows).await;
    // Same searches everywhere.
    let queries = random_queries(&mut rng, 5);
    let first = search(&c, 0, &queries, 10, None).await;
    for replica in [1, 2] {
        assert_eq!(search(&c, replica, &queries, 10, None).await, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_misses_writes_is_dropped_before_the_ack_then_catches_up() {
    let mut c = docs("replication-lag", 2, 2, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(22);
    let rows = random_rows(&mut rng, 200);
    upsert(&c, rows[..100].to_vec()).await;
    let before = c.view(P0);
    // The follower's node dies for less than node_timeout: its placement stays.
    let follower = if before.set.primary == Some(0) { 1 } else { 0 };
    let node = before.members[&follower].node;
    c.stop_node(node).await;
    // The write is acknowledged once the follower is out of the in-sync set.
    upsert(&c, rows[100..150].to_vec()).await;
    let after = c.view(P0);
    assert!(!after.set.in_sync.contains_key(&follower), "{after:?}");
    assert!(after.set.epoch > before.set.epoch);
    assert_eq!(
        after.members[&follower].generation,
        before.members[&follower].generation
    );
    // Back: it copies what it missed from the primary and joins again.
    let epoch = after.set.epoch;
    c.start_node(node).await;
    upsert(&c, rows[150..].to_vec()).await;
    c.until(P0, "took the replica back", |v| {
        v.set.epoch > epoch && v.set.in_sync.len() == 2
    })
    .await;
    every_replica_holds(&c, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_undoes_writes_its_primary_never_had() {
    let mut c = docs("replication-undo", 2, 2, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(23);
    let rows = random_rows(&mut rng, 120);
    upsert(&c, rows[..60].to_vec()).await;
    let view = c.view(P0);
    let (old, generation) = view.primary().unwrap();
    let member = view.members[&old];
    c.stop_node(member.node).await;
    // What a primary leaves when it fails between making a write durable and passing it on:
    // the write on its own disk, in its epoch, and nowhere else.
    let path = store_path(
        c.nodes[&member.node].data.path(),
        &StoreName {
            collection: "docs".into(),
            incarnation: view.incarnation,
            partition: 0,
            generation,
        },
    );
    let mut ghost_rows = random_rows(&mut StdRng::seed_from_u64(99), 5);
    for r in &mut ghost_rows {
        r.id += 1_000_000;
    }
    let overwritten = VectorRecord {
        vector: vec![9.0; DIM],
        ..rows[0].clone()
    };
    {
        let mut p = Partition::open(
            &path,
            DIM,
            Metric::Cosine,
            Device::Cpu,
            arbor_proto::IndexSpec::Exact,
        )
        .unwrap();
        let mut ghost = ghost_rows.clone();
        ghost.push(overwritten);
        p.upsert(ghost, view.set.epoch).unwrap();
        p.delete(&[rows[1].id], view.set.epoch).unwrap();
    }
    // Its replica is reported failed: the other in-sync replica takes over and goes on.
    c.control
        .apply(&Command::SetPlacementStatuses {
            updates: vec![StatusUpdate {
                actor_id: format!("{P0}/{old}"),
                generation,
                status: PlacementStatus::Failed {
                    reason: "a test".into(),
                },
            }],
        })
        .unwrap();
    c.reconcile_until_quiet();
    assert_ne!(c.view(P0).set.primary, Some(old));
    upsert(&c, rows[60..].to_vec()).await;
    // Back in place (same generation, same file): it undoes its own last writes on the new
    // primary's word, copies what it missed, and joins.
    let epoch = c.view(P0).set.epoch;
    c.start_node(member.node).await;
    c.until(P0, "took the replica back", |v| {
        v.set.epoch > epoch && v.set.in_sync.len() == 2
    })
    .await;
    every_replica_holds(&c, &rows).await;
    let ghosts: Vec<u64> = ghost_rows.iter().map(|r| r.id).collect();
    for (replica, found) in c.get_everywhere(P0, &ghosts).await {
        assert!(found.is_empty(), "replica {replica} kept {found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_never_reuses_a_sequence_number_a_follower_holds() {
    let c = docs("replication-reuse", 2, 2, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(26);
    let rows = random_rows(&mut rng, 90);
    upsert(&c, rows[..60].to_vec()).await;
    let view = c.view(P0);
    let (primary, _) = view.primary().unwrap();
    let follower = 1 - primary;
    let (pnode, fmember) = (view.members[&primary].node, view.members[&follower]);
    // The primary dies after its follower made write N durable but before it did: the
    // follower holds a write, in the primary's epoch, that the primary never had.
    c.stop_node(pnode).await;
    c.stop_node(fmember.node).await;
    let path = store_path(
        c.nodes[&fmember.node].data.path(),
        &StoreName {
            collection: "docs".into(),
            incarnation: view.incarnation,
            partition: 0,
            generation: fmember.generation,
        },
    );
    let mut ghost = random_rows(&mut StdRng::seed_from_u64(98), 3);
    for r in &mut ghost {
        r.id += 2_000_000;
    }
    Partition::open(
        &path,
        DIM,
        Metric::Cosine,
        Device::Cpu,
        arbor_proto::IndexSpec::Exact,
    )
    .unwrap()
    .upsert(ghost.clone(), view.set.epoch)
    .unwrap();
    let mut c = c;
    c.start_node(fmember.node).await;
    c.start_node(pnode).await;
    // Back within node_timeout: still the primary. Its next write opens a new epoch, so the
    // follower's ghost is seen for what it is and undone.
    upsert(&c, rows[60..].to_vec()).await;
    c.until(P0, "took the follower back", |v| {
        v.set.in_sync.len() == 2 && v.set.epoch > view.set.epoch + 1
    })
    .await;
    every_replica_holds(&c, &rows).await;
    let ids: Vec<u64> = ghost.iter().map(|r| r.id).collect();
    for (replica, found) in c.get_everywhere(P0, &ids).await {
        assert!(found.is_empty(), "replica {replica} kept {found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_fails_over_and_no_acknowledged_write_is_lost() {
    let mut c = docs("replication-failover", 3, 2, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(24);
    let rows = random_rows(&mut rng, 300);
    upsert(&c, rows[..100].to_vec()).await;
    let view = c.view(P0);
    let (primary, _) = view.primary().unwrap();
    c.kill_node(view.members[&primary].node).await;
    let after = c.view(P0);
    assert_ne!(after.primary().unwrap().0, primary, "{after:?}");
    upsert(&c, rows[100..].to_vec()).await;
    // The old primary's replica was placed anew; it starts empty and copies everything.
    let view = c.in_sync(P0, 2).await;
    assert_ne!(view.members[&primary].node, 0);
    every_replica_holds(&c, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_file_vanished_leaves_the_in_sync_set_and_copies_again() {
    let mut c = docs("replication-wiped", 2, 2, Metric::Cosine).await;
    let mut rng = StdRng::seed_from_u64(25);
    let rows = random_rows(&mut rng, 80);
    upsert(&c, rows.clone()).await;
    let view = c.view(P0);
    let follower = if view.set.primary == Some(0) { 1 } else { 0 };
    let node = view.members[&follower].node;
    c.stop_node(node).await;
    std::fs::remove_dir_all(partitions_dir(c.nodes[&node].data.path())).unwrap();
    assert!(
        view.set
            .is_in_sync(follower, view.members[&follower].generation)
    );
    let epoch = view.set.epoch;
    c.start_node(node).await;
    // It must not serve what it no longer has: it left (one epoch), copied everything again
    // and joined (another).
    c.until(P0, "took the replica back", |v| {
        v.set.epoch >= epoch + 2 && v.set.in_sync.len() == 2
    })
    .await;
    every_replica_holds(&c, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_row_leave_every_replica_identical() {
    let c = std::sync::Arc::new(docs("replication-race", 3, 3, Metric::Cosine).await);
    for round in 0..40u64 {
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let c = c.clone();
                tokio::spawn(async move {
                    let row = VectorRecord {
                        id: 7,
                        vector: vec![(round * 2 + w) as f32 + 1.0; DIM],
                        metadata: json!({"writer": w, "round": round}).to_string(),
                    };
                    upsert(&c, vec![row]).await
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let found = c.get_everywhere(P0, &[7]).await;
        let first = found.values().next().unwrap().clone();
        assert!(
            found.values().all(|r| *r == first),
            "round {round}: {found:?}"
        );
    }
}
