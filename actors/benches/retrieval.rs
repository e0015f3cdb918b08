//! The retrieval path, with real actors in one process (a node agent running an embedder and 4
//! vector partitions, the coordinator calling them through their process groups):
//!
//! * query latency end to end (embed the question, search every partition, merge) and without
//!   the embedding (`query_vector`), over `ARBOR_QUERY_ROWS` vectors (default 100,000; random
//!   unit vectors, written straight to the partitions so that setting up does not take an hour
//!   of embedding on a small CPU); p50/p99 printed;
//! * RAG time to first token (retrieve, build the prompt, prefill on a `model` replica);
//! * ingest throughput (chunk, embed, route, durable writes) against the embedder's own
//!   throughput on the same texts through the same actor: the cluster's cost.
//!
//! `cargo bench -p arbor-actors --bench retrieval` (needs scripts/fetch-models.sh first).

use arbor_latency::Latencies;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use arbor_actors::agent::Assignment;
use arbor_actors::partition::{PartitionAnswer, PartitionRequest, Rows, VectorRecord, WriteOp};
use arbor_actors::replica::{EmbedRequest, ReplicaMsg, deployment_group};
use arbor_actors::retrieval::{CollectionRoute, Document, partition_deployment};
use arbor_actors::router::Router;
use arbor_actors::wire::Wire;
use arbor_scheduler::state::Metric;
use common::cluster::Cluster;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const SCOPE: &str = "bench-retrieval";
const PARTITIONS: u32 = 4;
const DIM: usize = 384;

fn assignment(actor_id: &str, deployment: &str, kind: &str, config: String) -> Assignment {
    Assignment {
        actor_id: actor_id.into(),
        deployment: deployment.into(),
        kind: kind.into(),
        generation: 1,
        devices: vec![],
        config,
    }
}

/// One node with the embedder, a model and a collection of 4 one-replica partitions, all
/// running.
async fn start() -> Cluster {
    let mut c = Cluster::start(SCOPE, 1).await;
    c.extra.insert(
        1,
        vec![
            assignment(
                "embedder/0",
                "embedder",
                "embedder",
                r#"{"device": "cpu"}"#.into(),
            ),
            assignment("llm/0", "llm", "model", r#"{"device": "cpu"}"#.into()),
        ],
    );
    c.assign();
    c.collection("bench", PARTITIONS, 1, DIM as u32, Metric::Cosine)
        .await;
    for d in ["embedder", "llm"] {
        while ractor::pg::get_scoped_members(&SCOPE.to_owned(), &deployment_group(d)).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c
}

/// Writes `rows` random unit vectors, spread evenly over the partitions.
async fn fill(c: &Cluster, rows: usize) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let per = rows / PARTITIONS as usize;
    for p in 0..PARTITIONS {
        let deployment = partition_deployment("bench", p);
        let mut id = u64::from(p) << 40;
        let mut left = per;
        while left > 0 {
            let n = left.min(2000);
            left -= n;
            let records: Vec<VectorRecord> = (0..n)
                .map(|_| {
                    id += 1;
                    VectorRecord {
                        id,
                        vector: (0..DIM).map(|_| next()).collect(),
                        metadata: format!(r#"{{"_doc":"d{id}","_chunk":0,"_text":"row {id}"}}"#),
                    }
                })
                .collect();
            let view = c.view(&deployment);
            let request = PartitionRequest::Write {
                epoch: view.set.epoch,
                op: WriteOp::Upsert(Rows::from_records(records).expect("one dimension")),
            };
            let written = c.ask(&deployment, view.primary().unwrap().0, request).await;
            assert!(
                matches!(written, Ok(PartitionAnswer::Written { .. })),
                "{written:?}"
            );
        }
    }
}

fn documents(n: usize) -> Vec<Document> {
    let corpus: Vec<Document> = include_str!("../tests/data/corpus.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let mut d = corpus[i % corpus.len()].clone();
            d.id = format!("{}-{i}", d.id);
            d
        })
        .collect()
}

fn retrieval(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let rows: usize = std::env::var("ARBOR_QUERY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cluster = rt.block_on(start());
    let loaded = Instant::now();
    rt.block_on(fill(&cluster, rows));
    eprintln!("retrieval: {rows} rows written in {:.1?}", loaded.elapsed());
    let route = CollectionRoute {
        model: Some("llm".into()),
        ..CollectionRoute::new("bench")
    };
    let coordinator = cluster.coordinator(route);

    // Percentiles over a fixed run, beside criterion's means.
    let questions = ["How do bees communicate?", "What causes the tides?"];
    for (what, with_text) in [("text", true), ("vector", false)] {
        let mut lat = Latencies::new();
        let vector = vec![0.05f32; DIM];
        for i in 0..200 {
            let t = Instant::now();
            let found = rt.block_on(async {
                if with_text {
                    coordinator.query(questions[i % 2], 10, None).await
                } else {
                    coordinator.query_vector(vector.clone(), 10, None).await
                }
            });
            lat.record(t.elapsed());
            assert_eq!(found.unwrap().results.len(), 10);
        }
        eprintln!(
            "retrieval/query_{what} over {rows} rows in {PARTITIONS} partitions: p50 {:.2?} p99 {:.2?}",
            lat.quantile(0.5),
            lat.quantile(0.99)
        );
    }
    let mut g = c.benchmark_group("retrieval_query");
    g.sample_size(30);
    g.bench_function(format!("text_{rows}_rows"), |b| {
        b.to_async(&rt).iter(|| async {
            coordinator
                .query("How do bees communicate?", 10, None)
                .await
                .unwrap()
        })
    });
    g.finish();

    // RAG: time from the question to the first streamed token of the answer (retrieval,
    // prompt with 3 sources, prefill, first decode step).
    let mut g = c.benchmark_group("retrieval_rag");
    g.sample_size(10);
    g.bench_function("time_to_first_token", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let coordinator = coordinator.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let mut first = None;
                    coordinator
                        .rag("How do bees communicate?", 3, 8, |t| {
                            if first.is_none() && !t.is_empty() {
                                first = Some(start.elapsed());
                            }
                        })
                        .await
                        .unwrap();
                    total += first.unwrap_or_else(|| start.elapsed());
                }
                total
            }
        })
    });
    g.finish();

    // Ingest against the embedder alone, on the same texts (one chunk per document).
    let docs = documents(256);
    let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
    let embedder = Router::new(SCOPE, "embedder");
    let mut g = c.benchmark_group("retrieval_ingest");
    g.sample_size(10);
    g.throughput(Throughput::Elements(docs.len() as u64));
    g.bench_function("embed_only_256_texts", |b| {
        b.to_async(&rt).iter(|| async {
            for batch in texts.chunks(32) {
                let request = EmbedRequest {
                    texts: batch.to_vec(),
                };
                let reply = embedder
                    .ask(
                        |r| ReplicaMsg::Embed(Wire::new(request.clone()), r),
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
                reply.into_inner().unwrap().unwrap();
            }
        })
    });
    g.bench_function("ingest_256_documents", |b| {
        b.to_async(&rt)
            .iter(|| async { coordinator.ingest(&docs, |_| {}).await.unwrap() })
    });
    g.finish();
}

criterion_group!(benches, retrieval);
criterion_main!(benches);
