//! `vector_partition` replicas as real actors over real redb files.
//!
//! Every request and reply goes through its wire encoding (bincode with the decode limit), as
//! it would between nodes, so types that bincode cannot carry are caught here. Results are
//! checked against the kernels' brute-force reference, `naive_topk`.

mod common;

use common::Parent;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use arbor_actors::kinds::{Kind, PartitionReplica, ReplicaContext, spawn_replica};
use arbor_actors::partition::{
    MetadataFilter, PartitionAnswer, PartitionReply, PartitionRequest, PartitionStats, SearchHit,
    VectorRecord,
};
use arbor_actors::replica::{CallRequest, ReplicaMsg, deployment_group};
use arbor_actors::wire::Wire;
use arbor_kernels::topk::{Hit, Metric, naive_topk};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, BytesConvertable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const CALL: Duration = Duration::from_secs(30);
const DIM: usize = 16;
const ROWS: u64 = 1000;
const LANGS: [&str; 3] = ["en", "fr", "de"];

fn ctx(data_dir: &Path, config: Value) -> ReplicaContext {
    ReplicaContext {
        actor_id: "p1".into(),
        // A scope of its own per folder, so that tests running together never see each
        // other's replicas as peers.
        scope: data_dir.display().to_string(),
        deployment: "docs".into(),
        generation: 1,
        devices: vec![],
        config: config.to_string(),
        data_dir: data_dir.to_path_buf(),
        models_dir: data_dir.to_path_buf(),
    }
}

fn config(metric: &str) -> Value {
    json!({"collection": "docs", "partition": 0, "dim": DIM, "metric": metric})
}

async fn start(data_dir: &Path, config: Value) -> (ActorRef<ReplicaMsg>, JoinHandle<()>) {
    let started = spawn_joined(ctx(data_dir, config)).await;
    // Alone in its group: it serves at once.
    serving(&started.0).await;
    started
}

/// Spawns a replica and joins it to its deployment's group, as the node agent does.
async fn spawn_joined(ctx: ReplicaContext) -> (ActorRef<ReplicaMsg>, JoinHandle<()>) {
    let (scope, group) = (ctx.scope.clone(), deployment_group(&ctx.deployment));
    let (actor, handle) = Actor::spawn(None, PartitionReplica, ctx)
        .await
        .expect("partition starts");
    ractor::pg::join_scoped(scope, group, vec![actor.get_cell()]);
    (actor, handle)
}

/// Waits until the replica serves (it has caught up), for at most 30 s.
async fn serving(actor: &ActorRef<ReplicaMsg>) {
    let give_up = tokio::time::Instant::now() + CALL;
    loop {
        let request = PartitionRequest::Page {
            after: None,
            limit: 1,
        };
        match ask(actor, request).await {
            Ok(PartitionAnswer::Page { .. }) => return,
            Err(e) if e.contains("catching up") => {}
            other => panic!("not a page: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "still catching up after {CALL:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the actor and waits until it is gone.
async fn kill(actor: ActorRef<ReplicaMsg>, handle: JoinHandle<()>) {
    actor.get_cell().kill();
    let _ = handle.await;
}

/// One request, encoded and decoded both ways as between nodes.
async fn ask(actor: &ActorRef<ReplicaMsg>, request: PartitionRequest) -> PartitionReply {
    let request = Wire::<PartitionRequest>::from_bytes(Wire::new(request).into_bytes());
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

async fn stats(actor: &ActorRef<ReplicaMsg>) -> PartitionStats {
    match ask(actor, PartitionRequest::Stats).await {
        Ok(PartitionAnswer::Stats(s)) => s,
        other => panic!("not stats: {other:?}"),
    }
}

async fn search(
    actor: &ActorRef<ReplicaMsg>,
    queries: &[Vec<f32>],
    k: u32,
    filter: Option<&MetadataFilter>,
) -> Vec<Vec<SearchHit>> {
    match ask(actor, PartitionRequest::search(queries.to_vec(), k, filter)).await {
        Ok(PartitionAnswer::Hits(h)) => h,
        other => panic!("not hits: {other:?}"),
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

async fn upsert(actor: &ActorRef<ReplicaMsg>, rows: Vec<VectorRecord>) -> (u64, u32) {
    match ask(actor, PartitionRequest::Upsert(rows)).await {
        Ok(PartitionAnswer::Written { seq, count }) => (seq, count),
        other => panic!("not written: {other:?}"),
    }
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
    let dir = tempfile::tempdir().unwrap();
    let (actor, handle) = start(dir.path(), config("cosine")).await;
    let mut rng = StdRng::seed_from_u64(7);
    let rows = random_rows(&mut rng, ROWS);
    // Two batches, as a caller would send them under the message limit.
    assert_eq!(upsert(&actor, rows[..600].to_vec()).await, (1, 600));
    assert_eq!(upsert(&actor, rows[600..].to_vec()).await, (2, 400));
    let s = stats(&actor).await;
    assert_eq!((s.count, s.dim, s.seq), (ROWS, DIM as u32, 2));
    assert!(s.host_bytes >= ROWS * DIM as u64 * 4, "{s:?}");

    let queries = random_queries(&mut rng, 8);
    let got = search(&actor, &queries, 10, None).await;
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
        let got = search(&actor, &queries, 10, Some(f)).await;
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
    let got = search(&actor, &queries, 10, Some(&rare)).await;
    assert!(got.iter().all(|h| h.len() == matching));
    kill(actor, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_everything_acknowledged_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, handle) = start(dir.path(), config("l2")).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut rows = random_rows(&mut rng, ROWS);
    upsert(&actor, rows.clone()).await;
    let gone: Vec<u64> = rows.iter().step_by(10).map(|r| r.id).collect();
    match ask(&actor, PartitionRequest::Delete(gone.clone())).await {
        Ok(PartitionAnswer::Deleted { seq: 2, count }) => assert_eq!(count as usize, gone.len()),
        other => panic!("{other:?}"),
    }
    rows.retain(|r| !gone.contains(&r.id));
    // Searching for a deleted row's own vector does not find it.
    let deleted_vector = {
        let mut r = StdRng::seed_from_u64(11);
        random_rows(&mut r, 1).remove(0).vector
    };
    let hits = search(&actor, &[deleted_vector], 5, None).await;
    assert!(hits[0].iter().all(|h| !gone.contains(&h.id)));

    let queries = random_queries(&mut rng, 4);
    let f = filter(json!({"op": "range", "key": "page", "gt": 30}));
    let before_plain = search(&actor, &queries, 20, None).await;
    let before_filtered = search(&actor, &queries, 20, Some(&f)).await;
    assert_same(
        &before_plain,
        &expected(Metric::L2, &rows, &queries, 20, None),
    );
    assert_same(
        &before_filtered,
        &expected(Metric::L2, &rows, &queries, 20, Some(&f)),
    );
    let before = stats(&actor).await;
    assert_eq!(before.count, rows.len() as u64);

    kill(actor, handle).await;
    let (actor, handle) = start(dir.path(), config("l2")).await;
    let after = stats(&actor).await;
    assert_eq!(after.count, before.count);
    assert_eq!(after.seq, before.seq);
    let ids = |h: &[Vec<SearchHit>]| -> Vec<Vec<u64>> {
        h.iter().map(|l| l.iter().map(|x| x.id).collect()).collect()
    };
    let after_plain = search(&actor, &queries, 20, None).await;
    let after_filtered = search(&actor, &queries, 20, Some(&f)).await;
    assert_eq!(ids(&after_plain), ids(&before_plain));
    assert_eq!(ids(&after_filtered), ids(&before_filtered));
    assert_same(
        &after_plain,
        &expected(Metric::L2, &rows, &queries, 20, None),
    );
    kill(actor, handle).await;

    // Another shape on the same file is refused at start, with the reason.
    let mut other = config("l2");
    other["dim"] = json!(DIM + 1);
    let err = Actor::spawn(None, PartitionReplica, ctx(dir.path(), other))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds dimension 16"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_just_before_a_kill_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let rows = random_rows(&mut rng, 50);
    let mut expected_count = 0;
    for round in 0..5 {
        let (actor, handle) = start(dir.path(), config("dot")).await;
        assert_eq!(stats(&actor).await.count, expected_count);
        let batch = rows[round * 10..(round + 1) * 10].to_vec();
        let (seq, count) = upsert(&actor, batch).await;
        assert_eq!((seq, count), (round as u64 + 1, 10));
        expected_count += 10;
        kill(actor, handle).await;
    }
    let (actor, handle) = start(dir.path(), config("dot")).await;
    let s = stats(&actor).await;
    assert_eq!((s.count, s.seq), (50, 5));
    kill(actor, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_distinct_ordered_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, handle) = start(dir.path(), config("cosine")).await;
    let mut rng = StdRng::seed_from_u64(5);
    let rows = random_rows(&mut rng, 200);
    let calls: Vec<_> = rows
        .chunks(10)
        .map(|chunk| {
            let (actor, chunk) = (actor.clone(), chunk.to_vec());
            tokio::spawn(async move { upsert(&actor, chunk).await.0 })
        })
        .collect();
    let mut seqs = Vec::new();
    for call in calls {
        seqs.push(call.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let s = stats(&actor).await;
    assert_eq!((s.count, s.seq), (200, 20));
    kill(actor, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, handle) = start(dir.path(), config("cosine")).await;
    let mut rng = StdRng::seed_from_u64(9);
    let rows = random_rows(&mut rng, 20);
    upsert(&actor, rows.clone()).await;
    let before = stats(&actor).await;
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
        let err = ask(&actor, PartitionRequest::Upsert(records))
            .await
            .unwrap_err();
        assert!(err.contains(why), "{err} (wanted {why})");
    }
    let q = vec![good.clone()];
    let bad_searches = [
        (
            PartitionRequest::Search {
                queries: q.clone(),
                k: 5,
                filter: Some(r#"{"op":"range","key":"page"}"#.into()),
            },
            "no bound",
        ),
        (
            PartitionRequest::Search {
                queries: q.clone(),
                k: 5,
                filter: Some(r#"{"op":"range","key":"page","lt":"9"}"#.into()),
            },
            "must be numbers",
        ),
        (
            PartitionRequest::Search {
                queries: q.clone(),
                k: 5,
                filter: Some("not json".into()),
            },
            "bad filter",
        ),
        (
            PartitionRequest::Search {
                queries: vec![vec![1.0; DIM + 2]],
                k: 5,
                filter: None,
            },
            "dimension is 16",
        ),
        (
            PartitionRequest::Search {
                queries: q.clone(),
                k: 100_000,
                filter: None,
            },
            "at most 256",
        ),
    ];
    for (request, why) in bad_searches {
        let err = ask(&actor, request).await.unwrap_err();
        assert!(err.contains(why), "{err} (wanted {why})");
    }
    // Bytes that do not decode are an error reply, not a crash.
    let garbage = Wire::<PartitionRequest>::from_bytes(vec![0xFF; 5]);
    let reply = actor
        .call(|port| ReplicaMsg::Partition(garbage, port), Some(CALL))
        .await
        .unwrap();
    let CallResult::Success(reply) = reply else {
        panic!("no reply")
    };
    assert!(
        reply
            .into_inner()
            .unwrap()
            .unwrap_err()
            .contains("does not decode")
    );

    assert_eq!(stats(&actor).await, before);
    // And the same after a restart: nothing refused reached the disk.
    kill(actor, handle).await;
    let (actor, handle) = start(dir.path(), config("cosine")).await;
    let after = stats(&actor).await;
    // Byte counts follow allocation history (capacities), so only the contents compare.
    assert_eq!((after.count, after.seq), (before.count, before.seq));
    kill(actor, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_call_answers_stats_and_other_kinds_refuse_partition_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, handle) = start(dir.path(), config("cosine")).await;
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
    let err = call(b"hello").await.unwrap_err();
    assert!(err.contains("{\"stats\": true}"), "{err}");
    kill(actor, handle).await;

    for kind in [Kind::Echo, Kind::Spin] {
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let mut c = ctx(dir.path(), json!({}));
        c.config = String::new();
        let replica = spawn_replica(kind, c, parent.get_cell()).await.unwrap();
        let err = ask(&replica, PartitionRequest::Stats).await.unwrap_err();
        assert!(err.contains("not a vector partition"), "{kind}: {err}");
        replica.stop(None);
        parent.stop(None);
    }
}

// ---- Catching up from a live replica ----

/// A replica `actor_id` of the "docs" partition in `scope`, on its own folder.
async fn replica(
    scope: &str,
    data_dir: &Path,
    actor_id: &str,
) -> (ActorRef<ReplicaMsg>, JoinHandle<()>) {
    let mut c = ctx(data_dir, config("dot"));
    c.scope = scope.into();
    c.actor_id = actor_id.into();
    spawn_joined(c).await
}

/// Every row a replica stores, through `Page` requests.
async fn all_rows(actor: &ActorRef<ReplicaMsg>) -> Vec<VectorRecord> {
    let mut rows: Vec<VectorRecord> = Vec::new();
    let mut after = None;
    loop {
        match ask(actor, PartitionRequest::Page { after, limit: 700 }).await {
            Ok(PartitionAnswer::Page { records, last }) => {
                assert!(records.len() <= 700);
                if let (Some(prev), Some(first)) = (rows.last(), records.first()) {
                    assert!(first.id > prev.id, "pages come in id order");
                }
                rows.extend(records);
                match last {
                    Some(l) => after = Some(l),
                    None => return rows,
                }
            }
            other => panic!("not a page: {other:?}"),
        }
    }
}

/// Waits until the replica holds `count` rows (30 s at most).
async fn wait_count(actor: &ActorRef<ReplicaMsg>, count: u64) {
    let give_up = tokio::time::Instant::now() + CALL;
    while stats(actor).await.count != count {
        assert!(
            tokio::time::Instant::now() < give_up,
            "count is {} after {CALL:?}, not {count}",
            stats(actor).await.count
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upsert_all(actor: &ActorRef<ReplicaMsg>, rows: &[VectorRecord]) {
    for chunk in rows.chunks(1000) {
        upsert(actor, chunk.to_vec()).await;
    }
}

async fn delete(actor: &ActorRef<ReplicaMsg>, ids: Vec<u64>) {
    match ask(actor, PartitionRequest::Delete(ids)).await {
        Ok(PartitionAnswer::Deleted { .. }) => {}
        other => panic!("not deleted: {other:?}"),
    }
}

/// Both replicas answer the same searches, with and without a filter.
async fn same_searches(a: &ActorRef<ReplicaMsg>, b: &ActorRef<ReplicaMsg>, rng: &mut StdRng) {
    let queries = random_queries(rng, 20);
    assert_eq!(
        search(a, &queries, 10, None).await,
        search(b, &queries, 10, None).await
    );
    let f = filter(json!({"op": "equal", "key": "lang", "value": "fr"}));
    assert_eq!(
        search(a, &queries, 10, Some(&f)).await,
        search(b, &queries, 10, Some(&f)).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_from_a_live_one_before_it_serves() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let scope = "t-catchup-new";
    let mut rng = StdRng::seed_from_u64(11);
    let (a, ha) = replica(scope, dir_a.path(), "p/0").await;
    serving(&a).await;
    let rows = random_rows(&mut rng, 3000);
    upsert_all(&a, &rows).await;
    // A page never holds more than asked, in id order, and the pages cover every row.
    let paged = all_rows(&a).await;
    assert_eq!(paged, rows, "pages hold exactly the stored rows");

    let (b, hb) = replica(scope, dir_b.path(), "p/1").await;
    let query = random_queries(&mut rng, 1);
    match ask(&b, PartitionRequest::search(query.clone(), 5, None)).await {
        Err(e) => assert!(e.contains("catching up from a live replica"), "{e}"),
        // Already caught up: then it must have everything.
        Ok(PartitionAnswer::Hits(h)) => assert_eq!(h, search(&a, &query, 5, None).await),
        Ok(other) => panic!("not hits: {other:?}"),
    }
    wait_count(&b, 3000).await;
    serving(&b).await;
    assert_eq!(all_rows(&b).await, rows);
    same_searches(&a, &b, &mut rng).await;
    kill(b, hb).await;
    kill(a, ha).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_on_a_stale_store_catches_up() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let scope = "t-catchup-stale";
    let mut rng = StdRng::seed_from_u64(12);
    let (a, ha) = replica(scope, dir_a.path(), "p/0").await;
    serving(&a).await;
    let (b, hb) = replica(scope, dir_b.path(), "p/1").await;
    serving(&b).await;
    let rows = random_rows(&mut rng, 1500);
    upsert_all(&a, &rows).await;
    upsert_all(&b, &rows).await;
    kill(b, hb).await;

    // While B is down: new rows, a changed row and two deletes, on A only.
    let mut more = random_rows(&mut rng, 2500);
    more.drain(..1500);
    upsert_all(&a, &more).await;
    let mut changed = rows[10].clone();
    changed.metadata = json!({"lang": "fr", "changed": true}).to_string();
    upsert(&a, vec![changed.clone()]).await;
    let deleted = vec![rows[0].id, rows[700].id];
    delete(&a, deleted.clone()).await;
    assert_eq!(stats(&a).await.count, 2498);

    let (b, hb) = replica(scope, dir_b.path(), "p/1").await;
    serving(&b).await;
    assert_eq!(stats(&b).await.count, 2498);
    let on_b = all_rows(&b).await;
    assert_eq!(on_b, all_rows(&a).await);
    assert!(on_b.iter().all(|r| !deleted.contains(&r.id)));
    assert!(on_b.contains(&changed));
    same_searches(&a, &b, &mut rng).await;
    // And what it copied is durable: restarted alone, B still has it.
    kill(a, ha).await;
    kill(b, hb).await;
    let (b, hb) = replica(scope, dir_b.path(), "p/1").await;
    serving(&b).await;
    assert_eq!(all_rows(&b).await, on_b);
    kill(b, hb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_catch_up_are_not_overwritten_by_the_copy() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let scope = "t-catchup-writes";
    let mut rng = StdRng::seed_from_u64(13);
    let (a, ha) = replica(scope, dir_a.path(), "p/0").await;
    serving(&a).await;
    let rows = random_rows(&mut rng, 3000);
    upsert_all(&a, &rows).await;

    // B starts empty; the writes a coordinator would send to both arrive while it copies.
    let (b, hb) = replica(scope, dir_b.path(), "p/1").await;
    let mut newer: Vec<VectorRecord> = [5, 1500, 2999]
        .iter()
        .map(|&i| {
            let mut r = rows[i].clone();
            r.metadata = json!({"lang": "de", "version": 2}).to_string();
            r
        })
        .collect();
    newer.push(VectorRecord {
        id: 1_000_000,
        vector: vec![0.5; DIM],
        metadata: json!({"lang": "en", "new": true}).to_string(),
    });
    let gone = vec![rows[6].id, rows[2000].id];
    for r in [&a, &b] {
        upsert(r, newer.clone()).await;
        delete(r, gone.clone()).await;
    }
    serving(&b).await;
    let on_b = all_rows(&b).await;
    assert_eq!(on_b, all_rows(&a).await);
    assert_eq!(on_b.len(), 3000 - 2 + 1);
    for r in &newer {
        assert!(on_b.contains(r), "row {} lost its newer version", r.id);
    }
    assert!(on_b.iter().all(|r| !gone.contains(&r.id)));
    same_searches(&a, &b, &mut rng).await;
    kill(b, hb).await;
    kill(a, ha).await;
}
