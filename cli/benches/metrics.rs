//! What metrics cost: two 2-node clusters of `arbor node` processes side by side, one whose
//! nodes have an HTTP port (so they record every metric) and one without (every `metrics::`
//! call a no-op), run in alternating rounds so that both see the same machine.
//!
//! - `status` job round trip: gateway only (connections, jobs by kind and state, job latency).
//! - `call` round trip to an echo replica pinned to the other node: gateway → router → the
//!   link → the replica and back (router latency, in-flight counts, and the gateway's).
//!
//! `cargo bench -p arbor-cli --bench metrics` prints the table; `ARBOR_BENCH_QUICK=1`
//! shortens it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use arbor_latency::Latencies;
use common::NodeProc;
use common::load::{Conn, spec};
use common::support::Endpoint;
use serde_json::{Value, json};

const SECRET: &str = "metrics-bench-secret-padded-to-32-bytes-at-least";

/// A 2-node cluster in `dir`, with HTTP ports (metrics on) or without; its gateway (node 1)
/// and an admin token, once an echo replica runs on node 2.
async fn start(dir: &Path, name: &str, metrics: bool) -> (Vec<NodeProc>, Endpoint, String) {
    let config = dir.join("cluster.toml");
    let mut text = common::support::cluster_toml(name, 2, dir, None).replacen(
        "\n[[nodes]]",
        "\n[gateway]\nmax_jobs_per_token = 4096\n\n[[nodes]]",
        1,
    );
    if metrics {
        text = text
            .lines()
            .map(|l| {
                if l.starts_with("gateway = ") {
                    format!("{l}\nhttp = \"127.0.0.1:{}\"", common::support::free_port())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    std::fs::write(&config, text).unwrap();
    let token = common::create_token(&config, "admin");
    let nodes: Vec<NodeProc> = (1..=2)
        .map(|id| NodeProc::start(&config, id, SECRET))
        .collect();
    let at = common::support::endpoint(&arbor_node::ClusterConfig::load(&config).unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        let reachable = arbor_client::GatewayClient::connect(
            &[at.addr],
            &at.trust,
            &token,
            Duration::from_secs(1),
        )
        .await
        .is_ok();
        if reachable {
            let mut c = Conn::open(&at, &token).await;
            if let Ok(s) = c.try_job(&json!({"kind": "status"})).await
                && !s["leader"].is_null()
                && s["nodes"].as_array().is_some_and(|n| n.len() == 2)
            {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "the cluster never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    conn.job(json!({"kind": "deploy", "deployment": {
        "name": "echo", "kind": "echo", "replicas": 1,
        "constraints": [{"op": "equal", "key": "rack", "value": "r2"}],
        "resources": {"cpu": "100m", "memory": "64MiB"}}}))
        .await;
    loop {
        if conn.try_job(&call()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the echo replica never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (nodes, at, token)
}

fn call() -> Value {
    json!({"kind": "call", "deployment": "echo", "payload": "ping"})
}

/// `n` jobs one after another on one connection: their latencies.
async fn round(conn: &mut Conn, job: &Value, n: usize) -> Latencies {
    let mut lat = Latencies::new();
    for done in conn.pipeline(n, 1, |_| spec(job.clone())).await {
        lat.record(done.latency);
    }
    lat
}

fn main() {
    let quick = std::env::var_os("ARBOR_BENCH_QUICK").is_some();
    let (rounds, per_round) = if quick { (4, 300) } else { (12, 2_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (on_dir, off_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_on_nodes, on_at, on_token) = rt.block_on(start(on_dir.path(), "metrics-on", true));
    let (_off_nodes, off_at, off_token) = rt.block_on(start(off_dir.path(), "metrics-off", false));

    let status = json!({"kind": "status"});
    let call = call();
    let results = rt.block_on(async {
        let mut on = Conn::open(&on_at, &on_token).await;
        let mut off = Conn::open(&off_at, &off_token).await;
        // Warm up both.
        for job in [&status, &call] {
            round(&mut on, job, per_round / 4).await;
            round(&mut off, job, per_round / 4).await;
        }
        let mut all: Vec<(&str, Latencies, Latencies, Vec<f64>)> = vec![
            (
                "status job round trip",
                Latencies::new(),
                Latencies::new(),
                vec![],
            ),
            (
                "call round trip (replica on the other node)",
                Latencies::new(),
                Latencies::new(),
                vec![],
            ),
        ];
        for r in 0..rounds {
            for (i, job) in [&status, &call].into_iter().enumerate() {
                // Alternate which goes first, so neither always follows the other.
                let (a, b) = if r % 2 == 0 {
                    let a = round(&mut on, job, per_round).await;
                    (a, round(&mut off, job, per_round).await)
                } else {
                    let b = round(&mut off, job, per_round).await;
                    (round(&mut on, job, per_round).await, b)
                };
                let ratio = a.quantile(0.5).as_secs_f64() / b.quantile(0.5).as_secs_f64();
                all[i].1.merge(&a);
                all[i].2.merge(&b);
                all[i].3.push(ratio);
            }
        }
        all
    });
    println!(
        "metrics on (nodes with an HTTP port) vs off, 2-node clusters of `arbor node` \
         processes over wss://, {rounds} alternating rounds of {per_round} jobs, 1 in flight"
    );
    for (name, on, off, mut ratios) in results {
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let us = |l: &Latencies, q| l.quantile(q).as_secs_f64() * 1e6;
        println!(
            "{name:<46} p50 on {:>7.1} µs  off {:>7.1} µs   p99 on {:>7.1} µs  off {:>7.1} µs   \
             median of per-round p50 ratios {:+.1}%",
            us(&on, 0.5),
            us(&off, 0.5),
            us(&on, 0.99),
            us(&off, 0.99),
            (median - 1.0) * 100.0
        );
    }
}
