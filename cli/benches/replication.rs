//! What replication costs, on a real 3-node local cluster (three `arbor node` processes on
//! loopback, driven over the gateway's WebSocket as a client would):
//!
//! * bulk load of rows that bring their own 384-d vectors into a collection of 4 partitions
//!   with 1, 2 and 3 replicas: rows/s, and each ingest job's acknowledgement latency (submit
//!   to its last event) at p50 and p99; jobs of 256 rows, 4 in flight;
//! * catch-up: a 1-partition, 2-replica collection holding `ARBOR_BENCH_CATCHUP_ROWS` rows
//!   (default 100,000): the node of one replica is killed, the control plane places that
//!   replica on the third node, and the time from that placement until the new replica is in
//!   sync (copied from the primary, vouched for) is measured.
//!
//! `cargo bench -p arbor-cli --bench replication`. `ARBOR_BENCH_ROWS` sets the bulk load's
//! rows (default 100,000); `ARBOR_BENCH_QUICK=1` makes everything small (10,000 rows);
//! `ARBOR_BENCH_DIR` is where the nodes keep their files (the system's temp dir by default).
//! No model is needed: the collections' embedder deployment never runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use arbor_latency::Latencies;
use arbor_proto::gateway::{IngestJob, JobSpec};
use common::load::{Conn, ms, row, start, unit_vector};
use serde_json::{Value, json};

const SECRET: &str = "replication-bench-secret-padded-to-32-bytes-at-least";
const DIM: usize = 384;
const PARTITIONS: u32 = 4;
const LOAD_BATCH: usize = 256;
const LOAD_IN_FLIGHT: usize = 4;

fn env_rows(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The stand-in embedder (never placed: no node has the label), once.
async fn embedder(c: &mut Conn) {
    c.job(json!({"kind": "deploy", "deployment": {
        "name": "embedder", "kind": "embedder", "replicas": 1,
        "constraints": [{"op": "exists", "key": "no-node-has-this-label"}]}}))
        .await;
}

/// Collection `name` (`partitions` × `replicas`) with a coordinator on every node; returns
/// once every replica is in sync.
async fn collection(c: &mut Conn, name: &str, partitions: u32, replicas: u32) {
    c.job(
        json!({"kind": "create_collection", "coordinators": 0, "name": name, "partitions": partitions,
                 "replicas": replicas, "embedder": "embedder", "dimension": DIM,
                 "memory": "2GiB"}),
    )
    .await;
    c.job(json!({"kind": "deploy", "deployment": {
        "name": format!("{name}-coord"), "kind": "retrieval_coordinator", "replicas": 3,
        "anti_affinity": true,
        "config": {"collection": name}}}))
        .await;
    let start = Instant::now();
    while !whole(c, name).await {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{name} never whole"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn whole(c: &mut Conn, name: &str) -> bool {
    let data = c.job(json!({"kind": "collections"})).await;
    data["collections"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == name))
        .is_some_and(|x| {
            x["running"].as_u64()
                == Some(x["partitions"].as_u64().unwrap() * x["replication"].as_u64().unwrap())
                && x["replica_sets"].as_array().is_some_and(|s| {
                    s.iter().all(|s| {
                        s["in_sync"].as_array().map(Vec::len)
                            == x["replication"].as_u64().map(|r| r as usize)
                    })
                })
        })
}

/// Loads rows `from..to` into `collection`; the jobs' latencies and the time taken.
async fn load(c: &mut Conn, collection: &str, from: usize, to: usize) -> (Latencies, Duration) {
    let text = "a synthetic chunk of text about replication, ".repeat(13);
    let start = Instant::now();
    let jobs = (to - from).div_ceil(LOAD_BATCH);
    let mut done = c
        .pipeline(jobs, LOAD_IN_FLIGHT, |j| {
            let documents = (from + j * LOAD_BATCH..(from + (j + 1) * LOAD_BATCH).min(to))
                .map(|i| row(i, &text, unit_vector(i as u64 + 1_000_000, DIM)))
                .collect();
            JobSpec::Ingest(IngestJob {
                collection: collection.to_string(),
                documents,
            })
        })
        .await;
    let took = start.elapsed();
    let lat: Latencies = done.drain(..).map(|d| d.latency).collect();
    (lat, took)
}

/// Where each replica of `deployment` is placed: (replica, node, generation).
async fn placements(c: &mut Conn, deployment: &str) -> Vec<(u64, u64, u64)> {
    let data: Value = c.job(json!({"kind": "deployments"})).await;
    data["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == deployment)
        .map(|d| {
            d["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| {
                    Some((
                        r["replica"].as_u64()?,
                        r["node"].as_u64()?,
                        r["generation"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let quick = std::env::var("ARBOR_BENCH_QUICK").is_ok();
    let rows = env_rows("ARBOR_BENCH_ROWS", if quick { 10_000 } else { 100_000 });
    let catchup = env_rows(
        "ARBOR_BENCH_CATCHUP_ROWS",
        if quick { 10_000 } else { 100_000 },
    );
    let base = std::env::var("ARBOR_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    rt.block_on(async {
        let (mut nodes, addr, token) = start(dir.path(), "replbench", SECRET).await;
        let mut c = Conn::open(&addr, &token).await;
        embedder(&mut c).await;
        println!("| replicas | rows | rows/s | ack p50 | ack p99 |");
        println!("|---|---|---|---|---|");
        for r in 1..=3u32 {
            let name = format!("r{r}");
            collection(&mut c, &name, PARTITIONS, r).await;
            let (lat, took) = load(&mut c, &name, 0, rows).await;
            println!(
                "| {r} | {rows} | {:.0} | {:.1} ms | {:.1} ms |",
                rows as f64 / took.as_secs_f64(),
                ms(lat.quantile(0.5)),
                ms(lat.quantile(0.99)),
            );
            c.job(json!({"kind": "delete_collection", "name": name}))
                .await;
            c.job(json!({"kind": "undeploy", "name": format!("{name}-coord")}))
                .await;
        }

        // Catch-up of a replica placed anew.
        collection(&mut c, "cu", 1, 2).await;
        let (_, took) = load(&mut c, "cu", 0, catchup).await;
        println!(
            "\ncatch-up collection: {catchup} rows loaded in {:.1} s",
            took.as_secs_f64()
        );
        let before = placements(&mut c, "cu.p0").await;
        // Kill a node that holds a replica but not node 1 (the bench's gateway).
        let (victim_replica, victim_node, _) = *before
            .iter()
            .find(|(_, n, _)| *n != 1)
            .expect("a replica off node 1");
        nodes[victim_node as usize - 1].sigkill();
        let killed = Instant::now();
        let placed = loop {
            let now = placements(&mut c, "cu.p0").await;
            if now
                .iter()
                .any(|(r, n, _)| *r == victim_replica && *n != victim_node)
            {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "never placed elsewhere"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        while !whole(&mut c, "cu").await {
            assert!(
                killed.elapsed() < Duration::from_secs(600),
                "never caught up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caught_up = killed.elapsed() - placed;
        println!(
            "catch-up of {catchup} rows × {DIM} on a replica placed anew: {:.1} s \
             ({:.0} rows/s; placed {:.1} s after its node was killed)",
            caught_up.as_secs_f64(),
            catchup as f64 / caught_up.as_secs_f64(),
            placed.as_secs_f64()
        );
    });
}
