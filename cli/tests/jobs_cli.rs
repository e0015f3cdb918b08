//! The AI job kinds end to end through the `arbor` client over WebSocket, on a real 3-process
//! cluster with the real models (after scripts/fetch-models.sh): deploy the embedder and the
//! model, create a collection (which deploys its own coordinator), ingest the test corpus (JSONL) and a Markdown
//! file, then query, rag, embed and generate, and list the jobs; documents with their own
//! vectors and queries by vector through the gateway's typed client.

mod common;

use std::time::{Duration, Instant};

use arbor_client::GatewayClient;
use arbor_proto::gateway::{Document, IngestJob, JobSpec, QueryJob};
use common::cluster::{Cluster, T};
use serde_json::Value;

const MODEL: &str = r#"
name = "model"
kind = "model"
replicas = 1
[config]
max_batch = 4
max_queue = 16
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_rag_embed_generate_through_the_client() {
    let c = Cluster::start_with("jobs-cli", "jobs-secret-padded-to-32-bytes-at-least", |t| {
        t.replace(
            "cpu = \"1\"\nmemory = \"1GiB\"",
            "cpu = \"8\"\nmemory = \"16GiB\"",
        )
    })
    .await;
    let embedder = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/embedder.toml");
    let out = c.arbor(&["deploy", "-f", embedder]);
    assert!(out.contains("deployment embedder created"), "{out}");
    c.deploy("model.toml", MODEL);
    let out = c.arbor(&[
        "collection",
        "create",
        "docs",
        "--partitions",
        "2",
        "--replicas",
        "2",
        "--embedder",
        "embedder",
        "--memory",
        "128MiB",
    ]);
    // The collection deploys its own coordinator (two replicas on three nodes), which
    // answers rag with the only model there is.
    assert!(out.contains("docs-coordinator"), "{out}");
    let start = Instant::now();
    while !c
        .deployments()
        .await
        .is_some_and(|d| d.len() == 5 && d.values().all(|d| d.running == d.desired))
    {
        assert!(start.elapsed() < T * 2, "{:#?}", c.deployments().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // JSONL and Markdown, with a summary.
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../actors/tests/data/corpus.jsonl"
    );
    let md = c.path.with_file_name("gossip.md");
    std::fs::write(
        &md,
        "# Gossip\n\nGossip protocols spread membership news: every second each member tells \
         a few random peers what it knows, so news reaches everyone in a logarithmic number \
         of rounds.\n",
    )
    .unwrap();
    let out = c.arbor(&["ingest", "docs", corpus, md.to_str().unwrap()]);
    assert!(out.contains("21 documents"), "{out}");

    let found: Value = serde_json::from_str(&c.arbor(&[
        "query",
        "docs",
        "How do members learn about each other by telling random peers?",
        "--k",
        "3",
        "--json",
    ]))
    .unwrap();
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{found}");
    assert_eq!(results[0]["doc_id"], "gossip.md", "{found}");
    for field in ["chunk_id", "score", "text", "metadata"] {
        assert!(!results[0][field].is_null(), "{field} missing: {found}");
    }
    assert_eq!(found["missing_partitions"], Value::Array(vec![]));

    let out = c.arbor(&[
        "rag",
        "docs",
        "What does Raft elect?",
        "--k",
        "2",
        "--max-tokens",
        "24",
    ]);
    assert!(out.contains("Sources:"), "{out}");
    assert!(out.contains("[1] "), "{out}");
    let answer = out.split("Sources:").next().unwrap();
    assert!(answer.trim().len() > 3, "no answer streamed: {out}");

    let embedded: Value =
        serde_json::from_str(&c.arbor(&["embed", "first text", "second text"])).unwrap();
    assert_eq!(embedded["dim"], 384, "{embedded}");
    assert_eq!(embedded["vectors"].as_array().unwrap().len(), 2);

    // Documents that bring their own vectors (here the embedder's, made above), mixed with
    // one to embed; found again by vector, at rank 1.
    let vector =
        |i: usize| -> Vec<f32> { serde_json::from_value(embedded["vectors"][i].clone()).unwrap() };
    let doc = |id: &str, text: &str, vector: Option<Vec<f32>>| Document {
        id: id.into(),
        text: text.into(),
        title: None,
        metadata: Default::default(),
        vector,
    };
    let mut client = GatewayClient::connect(
        &[c.config.nodes[1].gateway],
        &common::support::trust(&c.config),
        &c.token,
        T,
    )
    .await
    .unwrap();
    let ingest = |documents| {
        JobSpec::Ingest(IngestJob {
            collection: "docs".into(),
            documents,
        })
    };
    let report = client
        .run(
            ingest(vec![
                doc("own-1", "", Some(vector(0))),
                Document {
                    // Free-form metadata crosses the gateway (JSON) and the nodes (bincode).
                    metadata: serde_json::json!({"lang": "fr", "tags": ["a", {"b": null}]})
                        .as_object()
                        .unwrap()
                        .clone(),
                    ..doc("own-2", "the second, by vector", Some(vector(1)))
                },
                doc(
                    "plain",
                    "Lighthouses warn ships away from rocks at night.",
                    None,
                ),
            ]),
            |_| {},
        )
        .await
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(report["chunks"], 3, "{report}");
    for (i, id) in [(0, "own-1"), (1, "own-2")] {
        let found = client
            .run(
                JobSpec::Query(QueryJob {
                    collection: "docs".into(),
                    text: None,
                    vector: Some(vector(i)),
                    k: 2,
                    filter: None,
                    ef: None,
                }),
                |_| {},
            )
            .await
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(found["results"][0]["doc_id"], id, "{found}");
        assert!(
            found["results"][0]["score"].as_f64().unwrap() > 0.999,
            "{found}"
        );
        assert_eq!(found["missing_partitions"], Value::Array(vec![]));
    }
    // A filter on that metadata: own-1's vector finds only own-2, with its metadata whole.
    let found = client
        .run(
            JobSpec::Query(QueryJob {
                collection: "docs".into(),
                text: None,
                vector: Some(vector(0)),
                k: 5,
                filter: Some(serde_json::json!({"op": "equal", "key": "lang", "value": "fr"})),
                ef: None,
            }),
            |_| {},
        )
        .await
        .unwrap()
        .into_data()
        .unwrap();
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{found}");
    assert_eq!(results[0]["doc_id"], "own-2", "{found}");
    assert_eq!(
        results[0]["metadata"],
        serde_json::json!({"lang": "fr", "tags": ["a", {"b": null}]}),
        "{found}"
    );
    let refused = client
        .run(
            ingest(vec![doc("short-vec", "x", Some(vec![0.1; 3]))]),
            |_| {},
        )
        .await
        .unwrap()
        .into_data()
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("\"short-vec\"") && refused.contains("384"),
        "{refused}"
    );
    // The coordinator's coded error is the job's: the request's fault, not a failure.
    assert!(refused.contains("invalid_job"), "{refused}");

    let out = c.arbor(&["generate", "Name a colour.", "--max-tokens", "12"]);
    assert!(!out.trim().is_empty(), "nothing generated");

    let jobs: Value = serde_json::from_str(&c.arbor(&["jobs", "--json"])).unwrap();
    let kinds: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    for kind in ["ingest", "rag", "generate", "deploy", "create_collection"] {
        assert!(kinds.contains(&kind), "{kind} not listed: {jobs}");
    }
}
