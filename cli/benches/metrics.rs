//! What metrics cost: 2-node clusters of `arbor node` processes side by side, one whose nodes
//! have an HTTP port (so they record every metric), one without (every `metrics::` call a
//! no-op), and a second one without as the control (how far two identical clusters differ
//! here), run in rotating rounds so that all see the same machine.
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
        text = common::http::with_ports(text);
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
    let (rounds, per_round) = if quick { (3, 300) } else { (24, 1_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A second cluster without metrics is the control: how far two identical clusters on
    // this machine differ, which a difference due to metrics must be read against.
    // They start in the opposite order of their places (on, off, control), so that the
    // cluster started first (with the lowest ports) is not the one with metrics.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut clusters: Vec<_> = [
        ("metrics-on", true),
        ("metrics-off", false),
        ("control", false),
    ]
    .into_iter()
    .zip(&dirs)
    .rev()
    .map(|((name, metrics), dir)| rt.block_on(start(dir.path(), name, metrics)))
    .collect();
    clusters.reverse();

    let jobs = [
        ("status job round trip", json!({"kind": "status"})),
        ("call round trip (replica on the other node)", call()),
    ];
    // Per job: latencies per cluster, and per-round p50 ratios on/off and control/off.
    let results = rt.block_on(async {
        let mut conns = Vec::new();
        for (_, at, token) in &clusters {
            conns.push(Conn::open(at, token).await);
        }
        for (_, job) in &jobs {
            for c in conns.iter_mut() {
                round(c, job, per_round / 4).await;
            }
        }
        let mut out: Vec<(Vec<Latencies>, Vec<f64>, Vec<f64>)> = jobs
            .iter()
            .map(|_| ((0..3).map(|_| Latencies::new()).collect(), vec![], vec![]))
            .collect();
        for r in 0..rounds {
            for (j, (_, job)) in jobs.iter().enumerate() {
                let mut p50 = [0.0; 3];
                // Rotate which cluster goes first, so none always follows another.
                for k in 0..3 {
                    let i = (r + k) % 3;
                    let lat = round(&mut conns[i], job, per_round).await;
                    p50[i] = lat.quantile(0.5).as_secs_f64();
                    out[j].0[i].merge(&lat);
                }
                out[j].1.push(p50[0] / p50[1]);
                out[j].2.push(p50[2] / p50[1]);
            }
        }
        out
    });
    println!(
        "metrics on (nodes with an HTTP port) vs off, and a second cluster without metrics as \
         the control; 2-node clusters of `arbor node` processes over wss://, {rounds} rotating \
         rounds of {per_round} jobs, 1 in flight"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2] - 1.0) * 100.0
    };
    for ((name, _), (lat, on, control)) in jobs.iter().zip(results) {
        let us = |l: &Latencies, q| l.quantile(q).as_secs_f64() * 1e6;
        // The two clusters without metrics together are the baseline.
        let mut baseline = Latencies::new();
        baseline.merge(&lat[1]);
        baseline.merge(&lat[2]);
        let cost = (us(&lat[0], 0.5) / us(&baseline, 0.5) - 1.0) * 100.0;
        let spread = (us(&lat[2], 0.5) / us(&lat[1], 0.5) - 1.0) * 100.0;
        println!(
            "{name:<44} p50 on {:>6.1} µs, off {:>6.1} µs: metrics {cost:+.1}% \
             (the two clusters without differ by {spread:+.1}%; median per-round ratios: \
             on {:+.1}%, control {:+.1}%)   p99 on {:>6.1} µs, off {:>6.1} µs",
            us(&lat[0], 0.5),
            us(&baseline, 0.5),
            median(on),
            median(control),
            us(&lat[0], 0.99),
            us(&baseline, 0.99),
        );
    }
}
