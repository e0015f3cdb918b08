//! Retrieval end to end on a real 3-node local cluster: three `arbor node` processes on
//! loopback, an embedder, a model, a coordinator and a collection of 4 partitions × 2 replicas,
//! all driven over the gateway's WebSocket as a client would:
//!
//! * ingest of text documents (chunked, embedded, written to both replicas) in documents/s and
//!   chunks/s, beside the embedder's own throughput on the same chunk texts through `embed`
//!   jobs of the same size and concurrency;
//! * bulk load of synthetic rows that bring their own vectors (384-d unit vectors, metadata
//!   shaped like real chunks) up to 100,000 rows, or `ARBOR_BENCH_ROWS`;
//! * at each size, query latency (p50/p99, one connection, one at a time) and queries/s (8
//!   connections), by text (embedding included) and by vector, k = 10;
//! * RAG time to first token;
//! * each node's resident memory and the partitions' own accounting after each load.
//!
//! `cargo bench -p arbor-cli --bench cluster` prints a table (it needs the models:
//! scripts/fetch-models.sh). `ARBOR_BENCH_QUICK=1` makes it short (10,000 rows);
//! `ARBOR_BENCH_ROWS=1000000` loads up to a million rows (about 8 GB of partition files, under
//! `ARBOR_BENCH_DIR`, default the system's temp dir; deleted at the end).

#[path = "../tests/common/mod.rs"]
mod common;

use arbor_latency::Latencies;
use common::load::{Conn, ms, row, spec, start, unit_vector};

use common::support::Endpoint;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbor_actors::retrieval::ChunkPolicy;
use arbor_actors::retrieval::chunk::chunks;
use arbor_proto::gateway::{IngestJob, JobSpec, QueryJob};
use common::NodeProc;
use serde_json::{Value, json};

const SECRET: &str = "cluster-bench-secret-padded-to-32-bytes-at-least";
const DIM: usize = 384;
const PARTITIONS: u32 = 4;
/// Documents per `ingest` job of text (as `arbor ingest` sends at most) and texts per `embed`
/// job; jobs in flight on the one connection (as `arbor ingest` keeps).
const TEXT_BATCH: usize = 64;
const TEXT_IN_FLIGHT: usize = 2;
/// Rows per bulk-load `ingest` job (about 1.3 MB of JSON, under the 4 MiB message limit) and
/// jobs in flight.
const LOAD_BATCH: usize = 256;
const LOAD_IN_FLIGHT: usize = 4;
const K: u32 = 10;

/// Deploys the embedder, the model, the collection and its coordinator, and waits until
/// every replica runs.
async fn deploy(c: &mut Conn) {
    let deploy = |d: Value| json!({"kind": "deploy", "deployment": d});
    c.job(deploy(
        json!({"name": "embedder", "kind": "embedder", "replicas": 1,
        "resources": {"cpu": "1", "memory": "1GiB"},
        "config": {"device": "cpu"}}),
    ))
    .await;
    c.job(deploy(
        json!({"name": "model", "kind": "model", "replicas": 1,
        "resources": {"cpu": "1", "memory": "1GiB"},
        "config": {"max_batch": 4, "max_queue": 16}}),
    ))
    .await;
    c.job(
        json!({"kind": "create_collection", "coordinators": 0, "name": "bench", "partitions": PARTITIONS,
        "replicas": 2, "embedder": "embedder", "cpu": "1", "memory": "4GiB"}),
    )
    .await;
    c.job(deploy(
        json!({"name": "coordinator", "kind": "retrieval_coordinator",
        "replicas": 1, "resources": {"cpu": "1", "memory": "256MiB"},
        "config": {"collection": "bench", "model": "model"}}),
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let d = c.job(json!({"kind": "deployments"})).await;
        let all = d["deployments"].as_array().cloned().unwrap_or_default();
        if all.len() == 3 + PARTITIONS as usize && all.iter().all(|d| d["running"] == d["desired"])
        {
            break;
        }
        assert!(Instant::now() < deadline, "not all running: {d}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Replicas that started together settle who is caught up, and the embedder loads its
    // model: until a query answers from every partition.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = json!({"kind": "query", "collection": "bench", "vector": vec![0.05f32; DIM]});
        if let Ok(a) = c.try_job(&q).await
            && a["missing_partitions"] == json!([])
            && c.try_job(&json!({"kind": "embed", "texts": ["warm up"]}))
                .await
                .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the collection never answered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The paragraphs of examples/corpus, each at least a sentence long.
fn paragraphs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .split("\n\n")
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|p| p.len() > 80 && !p.starts_with('#'))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `n` distinct documents: corpus paragraphs, each joined with two others (one to three
/// chunks of up to 160 words).
fn text_documents(n: usize, paragraphs: &[String]) -> Vec<Value> {
    let p = paragraphs.len();
    (0..n)
        .map(|i| {
            let text = format!(
                "{} {} {}",
                paragraphs[i % p],
                paragraphs[(i * 7 + 3) % p],
                paragraphs[(i * 13 + 5) % p]
            );
            json!({"id": format!("doc-{i}"), "title": format!("Document {i}"), "text": text,
                   "metadata": {"n": i}})
        })
        .collect()
}

/// A deterministic unit vector.
/// Bulk-load rows `from..to` (ids `row-N`, a ~600-character text from the corpus words, a
/// random unit vector).
async fn load(c: &mut Conn, from: usize, to: usize, words: &str) -> Duration {
    let start = Instant::now();
    let jobs = (to - from).div_ceil(LOAD_BATCH);
    let words: Vec<&str> = words.split_whitespace().collect();
    let texts: Vec<String> = (0..64)
        .map(|i| {
            let mut text = String::new();
            for w in words.iter().cycle().skip(i * 97) {
                if text.len() >= 600 {
                    break;
                }
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(w);
            }
            text
        })
        .collect();
    c.pipeline(jobs, LOAD_IN_FLIGHT, |j| {
        let documents = (from + j * LOAD_BATCH..(from + (j + 1) * LOAD_BATCH).min(to))
            .map(|i| {
                row(
                    i,
                    &texts[i % texts.len()],
                    unit_vector(i as u64 + 1_000_000, DIM),
                )
            })
            .collect();
        JobSpec::Ingest(IngestJob {
            collection: "bench".to_string(),
            documents,
        })
    })
    .await;
    start.elapsed()
}

fn check_answer(data: &Value) {
    assert!(
        data["results"].as_array().is_some_and(|r| !r.is_empty()),
        "no results: {data:.300}"
    );
    assert_eq!(data["missing_partitions"], json!([]), "{data:.300}");
}

/// Whether an answer under load lacks partitions (a search timed out on every replica it
/// was sent to). Counted and printed rather than fatal: under saturation that is how the
/// coordinator is meant to degrade.
fn is_partial(data: &Value) -> bool {
    assert!(
        data["results"].as_array().is_some_and(|r| !r.is_empty()),
        "no results: {data:.300}"
    );
    data["missing_partitions"] != json!([])
}

/// Query latency with one connection (one at a time) and queries/s with 8 connections.
async fn queries(addr: &Endpoint, token: &str, name: &str, n: usize, job: fn(usize) -> JobSpec) {
    let mut c = Conn::open(addr, token).await;
    // A few to warm up.
    c.pipeline(5, 1, job).await;
    let done = c.pipeline(n, 1, job).await;
    done.iter().for_each(|d| check_answer(&d.data));
    let lat: Latencies = done.iter().map(|d| d.latency).collect();
    let conns = 8;
    let per_conn = (n / 2).max(10);
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Conn::open(addr, token).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let done = c
                    .pipeline(per_conn, 1, |j| job(i * per_conn + j + 1000))
                    .await;
                done.iter().filter(|d| is_partial(&d.data)).count()
            })
        })
        .collect();
    let mut partial = 0;
    for t in tasks {
        partial += t.await.unwrap();
    }
    let qps = (conns * per_conn) as f64 / start.elapsed().as_secs_f64();
    println!(
        "  {name:<28} p50 {:>7.2} ms   p99 {:>7.2} ms   {:>7.1} queries/s (8 connections; \
         {partial} of {} answers missed a partition)",
        ms(lat.quantile(0.5)),
        ms(lat.quantile(0.99)),
        qps,
        conns * per_conn
    );
}

const QUESTIONS: [&str; 8] = [
    "How do servers agree on a log?",
    "What happens when a node dies?",
    "How are vectors compared?",
    "Why batch requests on a GPU?",
    "How does gossip spread membership news?",
    "What does quantization trade away?",
    "How is a leader elected?",
    "What is the key-value cache for?",
];

fn text_query(i: usize) -> JobSpec {
    JobSpec::Query(QueryJob {
        collection: "bench".into(),
        text: Some(format!("{} ({i})", QUESTIONS[i % QUESTIONS.len()])),
        vector: None,
        k: K,
        filter: None,
        ef: None,
    })
}

fn vector_query(i: usize) -> JobSpec {
    JobSpec::Query(QueryJob {
        collection: "bench".into(),
        text: None,
        vector: Some(unit_vector(i as u64, DIM)),
        k: K,
        filter: None,
        ef: None,
    })
}

fn rss_line(nodes: &[NodeProc]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", n.child.id()))
                .unwrap_or_default();
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            format!("node {} {:.0} MiB", i + 1, kb as f64 / 1024.0)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn report_memory(c: &mut Conn, nodes: &[NodeProc]) {
    println!("  RSS: {}", rss_line(nodes));
    for p in 0..PARTITIONS {
        let reply = c
            .job(
                json!({"kind": "call", "deployment": arbor_proto::partition_deployment("bench", p),
                        "payload": "{\"stats\": true}"}),
            )
            .await;
        let s: Value = serde_json::from_str(reply["reply"].as_str().unwrap_or("{}")).unwrap();
        let mib = |k: &str| s[k].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
        println!(
            "  bench.p{p}: {:>8} rows on {}, host {:.1} MiB, device {:.1} MiB, metadata {:.1} MiB",
            s["count"],
            s["device"].as_str().unwrap_or("?"),
            mib("host_bytes"),
            mib("device_bytes"),
            mib("metadata_bytes")
        );
    }
}

fn main() {
    let quick = std::env::var_os("ARBOR_BENCH_QUICK").is_some();
    let models = std::env::var("ARBOR_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/arbor/models")
        });
    if !models.join("all-MiniLM-L6-v2").exists() {
        println!(
            "cluster bench: skipped (no models in {}; run scripts/fetch-models.sh)",
            models.display()
        );
        return;
    }
    let rows: usize = std::env::var("ARBOR_BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let first = if quick { 10_000 } else { 100_000 };
    let sizes = match rows {
        0 => vec![first],
        r if r <= first => vec![r],
        r => vec![first, r],
    };
    let (n_docs, n_queries, n_rag) = if quick { (64, 30, 2) } else { (256, 200, 5) };
    let base = std::env::var_os("ARBOR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("arbor-cluster-bench-")
        .tempdir_in(&base)
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (nodes, addr, token) = start(dir.path(), "clbench", SECRET).await;
        let mut c = Conn::open(&addr, &token).await;
        deploy(&mut c).await;
        println!(
            "retrieval on a 3-node local cluster (`arbor node` processes on loopback, {} cores), \
             collection of {PARTITIONS} partitions x 2 replicas, data in {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            dir.path().display()
        );

        // ---- Ingest of text, and the embedder alone on the same chunks.
        let paragraphs = paragraphs();
        let docs = text_documents(n_docs, &paragraphs);
        let chunk_texts: Vec<String> = docs
            .iter()
            .flat_map(|d| chunks(d["text"].as_str().unwrap(), ChunkPolicy::default()))
            .collect();
        let start = Instant::now();
        let done = c
            .pipeline(n_docs.div_ceil(TEXT_BATCH), TEXT_IN_FLIGHT, |j| {
                let batch = &docs[j * TEXT_BATCH..((j + 1) * TEXT_BATCH).min(n_docs)];
                spec(json!({"kind": "ingest", "collection": "bench", "documents": batch}))
            })
            .await;
        let ingest_s = start.elapsed().as_secs_f64();
        let chunks_in: u64 = done.iter().map(|d| d.data["chunks"].as_u64().unwrap()).sum();
        assert_eq!(chunks_in as usize, chunk_texts.len());
        let start = Instant::now();
        c.pipeline(
            chunk_texts.len().div_ceil(TEXT_BATCH),
            TEXT_IN_FLIGHT,
            |j| {
                let batch =
                    &chunk_texts[j * TEXT_BATCH..((j + 1) * TEXT_BATCH).min(chunk_texts.len())];
                spec(json!({"kind": "embed", "texts": batch}))
            },
        )
        .await;
        let embed_s = start.elapsed().as_secs_f64();
        let ingest_rate = chunks_in as f64 / ingest_s;
        let embed_rate = chunk_texts.len() as f64 / embed_s;
        println!(
            "ingest: {n_docs} documents, {chunks_in} chunks in {ingest_s:.2} s: {:.1} documents/s, \
             {ingest_rate:.1} chunks/s (jobs of {TEXT_BATCH} documents, {TEXT_IN_FLIGHT} in flight)",
            n_docs as f64 / ingest_s
        );
        println!(
            "embedder alone, same chunk texts: {embed_rate:.1} texts/s (embed jobs of \
             {TEXT_BATCH}, {TEXT_IN_FLIGHT} in flight); ingest is {:.0}% of it",
            100.0 * ingest_rate / embed_rate
        );
        report_memory(&mut c, &nodes).await;

        // ---- Bulk loads, and queries at each size.
        let words = paragraphs.join(" ");
        let mut loaded = 0;
        for size in sizes {
            let took = load(&mut c, loaded, size, &words).await;
            println!(
                "bulk load: rows {loaded}..{size} in {:.1} s: {:.0} rows/s (ingest jobs of {LOAD_BATCH} \
                 rows with vectors, {LOAD_IN_FLIGHT} in flight)",
                took.as_secs_f64(),
                (size - loaded) as f64 / took.as_secs_f64()
            );
            loaded = size;
            report_memory(&mut c, &nodes).await;
            // A stored row's own vector finds it first.
            let probe = loaded / 2;
            let found = c
                .job(json!({"kind": "query", "collection": "bench",
                    "vector": unit_vector(probe as u64 + 1_000_000, DIM), "k": 1}))
                .await;
            assert_eq!(found["results"][0]["doc_id"], format!("row-{probe}"), "{found:.300}");
            println!(
                "queries over {} chunks, k = {K} (submit to last event; 1 connection, one at a time):",
                loaded + chunks_in as usize
            );
            queries(&addr, &token, "text (embedding included)", n_queries, text_query).await;
            queries(&addr, &token, "vector", n_queries, vector_query).await;
        }

        // ---- RAG: time to the first token.
        let done = c
            .pipeline(n_rag, 1, |i| {
                spec(json!({"kind": "rag", "collection": "bench",
                       "question": QUESTIONS[i % QUESTIONS.len()], "k": 3, "max_tokens": 16}))
            })
            .await;
        let first: Latencies = done.iter().filter_map(|d| d.first_token).collect();
        assert_eq!(first.len(), n_rag as u64, "every rag streamed a token");
        let whole: Latencies = done.iter().map(|d| d.latency).collect();
        println!(
            "rag, k = 3, 16 tokens: time to first token p50 {:.0} ms (whole answer p50 {:.0} ms, {n_rag} questions)",
            ms(first.quantile(0.5)),
            ms(whole.quantile(0.5))
        );
        drop(nodes);
    });
}
