//! The gateway over WebSocket, against a real `arbor node` process on loopback: a `status`
//! job's round trip (submit → its last event) with 1 and 64 connections, one job in flight per
//! connection and pipelined; and, when the models are fetched, `query` jobs end to end
//! (gateway → coordinator → embedder → 4 partitions and back).
//!
//! `cargo bench -p arbor-cli --bench gateway` prints a table first, then criterion's figures.
//! `ARBOR_BENCH_QUICK=1` shortens every pass (CI smoke runs).

#[path = "../tests/common/mod.rs"]
mod common;

use arbor_latency::Latencies;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbor_client::GatewayClient;
use arbor_proto::gateway::{ClientMsg, JobSpec, JobState, ServerMsg};
use common::NodeProc;
use common::support::Endpoint;
use criterion::{Criterion, Throughput};
use serde_json::{Value, json};

const SECRET: &str = "gateway-bench-secret-padded-to-32-bytes-at-least";

/// A connection that pipelines submits: the gateway client's raw send and receive.
struct Conn {
    client: GatewayClient,
}

impl Conn {
    async fn open(at: &Endpoint, token: &str) -> Conn {
        let client = GatewayClient::connect(&[at.addr], &at.trust, token, Duration::from_secs(5))
            .await
            .unwrap();
        Conn { client }
    }

    async fn send(&mut self, msg: &ClientMsg) {
        self.client.send_raw(msg).await.unwrap();
    }

    async fn recv(&mut self) -> ServerMsg {
        self.client.recv_raw().await.unwrap()
    }

    /// Submits `submit` and waits for its job's last event; panics unless it succeeded.
    async fn job(&mut self, submit: &ClientMsg) {
        self.send(submit).await;
        self.until_done(1).await;
    }

    /// Reads until `n` jobs have ended.
    async fn until_done(&mut self, mut n: usize) {
        while n > 0 {
            match self.recv().await {
                ServerMsg::Event { state, reason, .. } if state != JobState::Running => {
                    assert_eq!(state, JobState::Succeeded, "{reason:?}");
                    n -= 1;
                }
                m @ ServerMsg::Error { .. } => panic!("{m:?}"),
                _ => {}
            }
        }
    }
}

/// A submit of the job written as JSON (`{"kind": ...}`).
fn submit(job: Value) -> ClientMsg {
    ClientMsg::Submit {
        reference: None,
        record: false,
        job: serde_json::from_value::<JobSpec>(job).unwrap(),
    }
}

fn status_submit() -> ClientMsg {
    submit(json!({"kind": "status"}))
}

/// Each of `conns` connections runs `per_conn` jobs, `depth` in flight at a time; latencies
/// (of whole windows divided by `depth` when pipelined) and jobs/s overall.
async fn sample(
    addr: &Endpoint,
    token: &str,
    conns: usize,
    per_conn: usize,
    depth: usize,
    submit: ClientMsg,
) -> (Latencies, f64) {
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Conn::open(addr, token).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut c| {
            let submit = submit.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_conn);
                for _ in 0..per_conn / depth {
                    let t = Instant::now();
                    for _ in 0..depth {
                        c.send(&submit).await;
                    }
                    c.until_done(depth).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Latencies::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = (all.len() as usize * depth) as f64 / start.elapsed().as_secs_f64();
    (all, rate)
}

fn report(name: &str, (lat, rate): (Latencies, f64)) {
    println!(
        "{name:<52} p50 {:>9.1} µs   p99 {:>9.1} µs   {:>9.0} jobs/s",
        lat.quantile(0.5).as_secs_f64() * 1e6,
        lat.quantile(0.99).as_secs_f64() * 1e6,
        rate
    );
}

/// Starts a 1-node cluster in `dir`, over TLS (`wss://`, the default) or as an insecure
/// loopback cluster (`ws://`); the node's process, its gateway and an admin token.
async fn start(dir: &Path, tls: bool) -> (NodeProc, Endpoint, String, PathBuf) {
    let config = dir.join("cluster.toml");
    // 64 connections × 16 jobs in flight are one token's: let it have them all.
    let mut text = common::support::cluster_toml("gwbench", 1, dir, None).replacen(
        "\n[[nodes]]",
        "\n[gateway]\nmax_jobs_per_token = 4096\n\n[[nodes]]",
        1,
    );
    if !tls {
        let tls_dir = format!("dir = \"{}\"", dir.join("tls").display());
        text = text.replace(&tls_dir, "insecure = true");
    }
    std::fs::write(&config, text).unwrap();
    let token = common::create_token(&config, "admin");
    let node = NodeProc::start(&config, 1, SECRET);
    let addr = common::support::endpoint(&arbor_node::ClusterConfig::load(&config).unwrap(), 0);
    // Until the control plane has a leader and the status job answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) =
            GatewayClient::connect(&[addr.addr], &addr.trust, &token, Duration::from_secs(1)).await
            && let Ok(outcome) = client.run(JobSpec::Status, |_| {}).await
            && outcome.into_data().is_ok_and(|d| !d["leader"].is_null())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (node, addr, token, config)
}

/// Deploys an embedder, a 4-partition collection and its coordinator, ingests the test
/// corpus, and returns the collection's name; `None` without the models.
async fn rag_setup(addr: &Endpoint, token: &str, dir: &Path) -> Option<String> {
    let models = std::env::var("ARBOR_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/arbor/models")
        });
    if !models.join("all-MiniLM-L6-v2").exists() {
        println!(
            "query jobs: skipped (no models in {}; run scripts/fetch-models.sh)",
            models.display()
        );
        return None;
    }
    let _ = dir;
    let mut c = Conn::open(addr, token).await;
    let deploy = |d: Value| submit(json!({"kind": "deploy", "deployment": d}));
    c.job(&deploy(
        json!({"name": "embedder", "kind": "embedder", "replicas": 1,
        "resources": {"cpu": "100m", "memory": "64MiB"}}),
    ))
    .await;
    c.job(&submit(
        json!({"kind": "create_collection", "coordinators": 0, "name": "bench",
        "partitions": 4, "replicas": 1, "embedder": "embedder", "cpu": "50m", "memory": "32MiB"}),
    ))
    .await;
    c.job(&deploy(
        json!({"name": "coordinator", "kind": "retrieval_coordinator", "replicas": 1,
        "resources": {"cpu": "50m", "memory": "32MiB"},
        "config": {"collection": "bench"}}),
    ))
    .await;
    let corpus = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../actors/tests/data/corpus.jsonl"),
    )
    .unwrap();
    let docs: Vec<Value> = corpus
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Replicas take a moment to start and load the model: retry the first ingest.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        c.send(&submit(
            json!({"kind": "ingest", "collection": "bench", "documents": docs}),
        ))
        .await;
        let mut ok = None;
        while ok.is_none() {
            if let ServerMsg::Event { state, .. } = c.recv().await
                && state != JobState::Running
            {
                ok = Some(state == JobState::Succeeded);
            }
        }
        if ok == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collection never took an ingest"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Some("bench".into())
}

fn main() {
    let quick = std::env::var_os("ARBOR_BENCH_QUICK").is_some();
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, token, _config) = rt.block_on(start(dir.path(), true));
    // The same over plain ws://, for the cost of TLS side by side in this run.
    let plain_dir = tempfile::tempdir().unwrap();
    let (_plain_node, plain, plain_token, _) = rt.block_on(start(plain_dir.path(), false));

    println!(
        "gateway jobs over WebSocket (wss:// unless marked ws://), one `arbor node` process on loopback"
    );
    let status = status_submit();
    for (name, conns, per_conn, depth) in [
        ("status, 1 connection, 1 in flight", 1, 20_000, 1),
        ("status, 64 connections, 1 in flight each", 64, 500, 1),
        ("status, 1 connection, 32 in flight", 1, 40_000, 32),
        ("status, 64 connections, 16 in flight each", 64, 1_600, 16),
    ] {
        report(
            name,
            rt.block_on(sample(
                &addr,
                &token,
                conns,
                (per_conn / scale).max(depth),
                depth,
                status.clone(),
            )),
        );
        report(
            &format!("{name} (ws://)"),
            rt.block_on(sample(
                &plain,
                &plain_token,
                conns,
                (per_conn / scale).max(depth),
                depth,
                status.clone(),
            )),
        );
    }
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("gateway");
    g.throughput(Throughput::Elements(1));
    for (name, at, token) in [
        ("status_round_trip", &addr, &token),
        ("status_round_trip_plain", &plain, &plain_token),
    ] {
        let conn = std::sync::Arc::new(tokio::sync::Mutex::new(rt.block_on(Conn::open(at, token))));
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let conn = conn.clone();
                let status = status.clone();
                async move { conn.lock().await.job(&status).await }
            })
        });
    }
    g.finish();

    // Query jobs last: the actors they deploy would weigh on the status figures.
    if let Some(collection) = rt.block_on(rag_setup(&addr, &token, dir.path())) {
        let query = submit(json!({"kind": "query", "collection": collection,
            "text": "How do vector partitions stay available when a node dies?", "k": 5}));
        for (name, conns, per_conn) in [
            ("query, 1 connection, 1 in flight", 1, 200),
            ("query, 8 connections, 1 in flight each", 8, 50),
        ] {
            report(
                name,
                rt.block_on(sample(
                    &addr,
                    &token,
                    conns,
                    (per_conn / scale).max(1),
                    1,
                    query.clone(),
                )),
            );
        }
    }

    c.final_summary();
}
