//! Retrieval with the real MiniLM (after scripts/fetch-models.sh) on real actors: an embedder
//! and vector partitions started by node agents of two nodes in one process
//! (`common::cluster`, with the control plane in memory), and the coordinator ingesting the
//! corpus shipped in tests/data and answering paraphrased questions.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use arbor_actors::agent::Assignment;
use arbor_actors::partition::MetadataFilter;
use arbor_actors::partition::{PartitionAnswer, PartitionRequest, Rows, VectorRecord, WriteOp};
use arbor_actors::retrieval::chunk::chunks;
use arbor_actors::retrieval::route::{chunk_id, partition_of};
use arbor_actors::retrieval::{
    ChunkPolicy, CollectionRoute, Coordinator, Document, RetrievalError, partition_deployment,
};
use arbor_actors::router::Router;
use arbor_scheduler::Command;
use arbor_scheduler::state::Metric;
use common::cluster::{Cluster, PATIENCE};
use serde::Deserialize;

fn embedder() -> Assignment {
    Assignment {
        actor_id: "embedder/0".into(),
        deployment: "embedder".into(),
        kind: "embedder".into(),
        generation: 1,
        devices: vec![],
        config: r#"{"device": "cpu"}"#.into(),
    }
}

/// Two nodes, the embedder on node 1, and waits until it runs.
async fn cluster(scope: &str) -> Cluster {
    let mut c = Cluster::start(scope, 2).await;
    c.extra.insert(1, vec![embedder()]);
    c.assign();
    wait_running(scope, "embedder").await;
    c
}

/// Waits until a replica of `deployment` runs.
async fn wait_running(scope: &str, deployment: &str) {
    let group = arbor_actors::replica::deployment_group(deployment);
    let start = std::time::Instant::now();
    while ractor::pg::get_scoped_members(&scope.to_owned(), &group).is_empty() {
        assert!(start.elapsed() < PATIENCE, "{deployment} never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn route(collection: &str) -> CollectionRoute {
    serde_json::from_value(serde_json::json!({
        "collection": collection,
        "write_patience_ms": 2000,
    }))
    .unwrap()
}

fn corpus() -> Vec<Document> {
    include_str!("data/corpus.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[derive(Deserialize)]
struct Question {
    question: String,
    doc_id: String,
}

fn questions() -> Vec<Question> {
    include_str!("data/questions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Top-3 document ids per question.
async fn answers(c: &Coordinator) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for q in questions() {
        let a = c.query(&q.question, 3, None).await.unwrap();
        assert!(a.missing_partitions.is_empty(), "{a:?}");
        out.push(a.results.into_iter().map(|h| h.doc_id).collect());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrased_questions_find_their_paragraph_on_one_and_on_four_partitions() {
    let scope = "t-retrieval";
    let mut c = cluster(scope).await;
    c.collection("one", 1, 1, 384, Metric::Cosine).await;
    c.collection("docs", 4, 2, 384, Metric::Cosine).await;

    let one = c.coordinator(route("one"));
    let four = c.coordinator(route("docs"));
    // The config names only the collection: its shape is read from the control plane.
    assert_eq!(four.shape().unwrap().partitions, 4);
    assert_eq!(four.shape().unwrap().embedder, "embedder");
    let mut progress = Vec::new();
    let report = four
        .ingest(&corpus(), |p| progress.push(p.chunks_done))
        .await
        .unwrap();
    assert_eq!((report.documents, report.chunks), (20, 20));
    assert_eq!(report.per_partition.len(), 4);
    assert_eq!(report.per_partition.iter().sum::<u64>(), 20);
    assert!(report.per_partition.iter().all(|n| *n > 0), "{report:?}");
    assert_eq!(progress.last(), Some(&20));
    one.ingest(&corpus(), |_| {}).await.unwrap();
    // Ingesting again changes nothing (ids come from document id and position).
    four.ingest(&corpus(), |_| {}).await.unwrap();

    let on_four = answers(&four).await;
    let on_one = answers(&one).await;
    assert_eq!(on_four, on_one, "1 and 4 partitions must agree");
    let qs = questions();
    let right = qs
        .iter()
        .zip(&on_four)
        .filter(|(q, top)| top.first() == Some(&q.doc_id))
        .count();
    eprintln!("rank-1 accuracy: {right}/{}", qs.len());
    assert!(
        right * 10 >= qs.len() * 9,
        "only {right} of {} at rank 1",
        qs.len()
    );

    // Results carry the chunk's text, title and the document's metadata.
    let top = &four
        .query("What causes the tides?", 1, None)
        .await
        .unwrap()
        .results[0];
    assert_eq!(top.doc_id, "tides");
    assert_eq!(top.title.as_deref(), Some("Ocean tides"));
    assert!(top.text.starts_with("Ocean tides are"), "{top:?}");
    assert_eq!(top.metadata["topic"], "science");
    assert!(top.score > 0.3, "{top:?}");

    // A filter applies during the search: still k hits, all matching.
    let filter =
        MetadataFilter::parse(r#"{"op": "equal", "key": "topic", "value": "science"}"#).unwrap();
    let science = four
        .query("What causes the tides?", 5, Some(&filter))
        .await
        .unwrap();
    assert_eq!(science.results.len(), 5);
    assert!(
        science
            .results
            .iter()
            .all(|h| h.metadata["topic"] == "science")
    );

    // The same through a retrieval_coordinator replica, called with JSON like `arbor call`.
    let coordinator = Assignment {
        actor_id: "docs-coord/0".into(),
        deployment: "docs-coord".into(),
        kind: "retrieval_coordinator".into(),
        generation: 1,
        devices: vec![],
        config: r#"{"collection": "docs", "model": "llm"}"#.into(),
    };
    let model = Assignment {
        actor_id: "llm/0".into(),
        deployment: "llm".into(),
        kind: "model".into(),
        generation: 1,
        devices: vec![],
        config: r#"{"device": "cpu"}"#.into(),
    };
    c.extra.insert(1, vec![embedder(), coordinator, model]);
    c.assign();
    wait_running(scope, "docs-coord").await;
    let router = Router::new(scope, "docs-coord");
    let reply = router
        .call(
            br#"{"query": "What causes the tides?", "k": 2}"#.to_vec(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let found: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(found["results"][0]["doc_id"], "tides", "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 2);
    assert_eq!(found["missing_partitions"], serde_json::json!([]));
    let reply = router
        .call(
            br#"{"ingest": [{"id": "extra", "text": "An extra paragraph about kites."}]}"#.to_vec(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(report["chunks"], 1, "{report}");
    // Keep the one-partition collection equal, for the comparison below.
    let extra: Document =
        serde_json::from_str(r#"{"id": "extra", "text": "An extra paragraph about kites."}"#)
            .unwrap();
    one.ingest(&[extra], |_| {}).await.unwrap();
    let on_one = answers(&one).await;
    let err = router
        .call(
            br#"{"query": "x", "k": 0}"#.to_vec(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("k = 0"), "{err}");
    let err = router
        .call(br#"{"frobnicate": 1}"#.to_vec(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");

    // Node 2 gone: its primaries fail over to node 1, queries and writes go on there.
    c.kill_node(2).await;
    assert_eq!(answers(&four).await, on_one);
    four.ingest(&corpus()[..3], |_| {}).await.unwrap();

    // Partition 2's last in-sync replica leaves too: the answer says which partition it
    // lacks, and a write there fails with a reason that names it.
    let p2 = partition_deployment("docs", 2);
    let view = c.view(&p2);
    let (last, generation) = view.primary().unwrap();
    c.control
        .apply(&Command::LeaveInSync {
            deployment: p2.clone(),
            replica: last,
            generation,
            reason: "a test".into(),
        })
        .unwrap();
    let partial = four.query("volcano eruption", 3, None).await.unwrap();
    assert_eq!(partial.missing_partitions, vec![2]);
    assert!(!partial.results.is_empty());
    let err = four.ingest(&corpus(), |_| {}).await.unwrap_err();
    assert!(
        matches!(err, RetrievalError::Unavailable { partition: 2, .. }),
        "{err}"
    );

    // Bad input gets a clear error.
    let bad = Document {
        id: "x".into(),
        text: "t".into(),
        title: None,
        metadata: serde_json::from_str(r#"{"_doc": 1}"#).unwrap(),
        vector: None,
    };
    let err = four.ingest(&[bad], |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("reserved"), "{err}");
    assert!(four.query("  ", 3, None).await.is_err());
}

/// Which of `ids` each in-sync replica of their partitions holds: one list per replica.
async fn stored_ids(c: &Cluster, collection: &str, partitions: u32, ids: &[u64]) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mine: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| partition_of(*id, partitions) == p)
            .collect();
        if mine.is_empty() {
            continue;
        }
        for (_, records) in c
            .get_everywhere(&partition_deployment(collection, p), &mine)
            .await
        {
            out.push(records.into_iter().map(|r| r.id).collect());
        }
    }
    out
}

/// A text of `n` distinct sentences (so that each chunk reads differently).
fn long_text(n: usize) -> String {
    const TOPICS: [&str; 8] = [
        "kites climb on steady sea wind",
        "volcanoes push molten rock through the crust",
        "bees dance to tell the hive where flowers grow",
        "glaciers carve valleys over thousands of years",
        "tides follow the pull of the moon",
        "owls hunt by sound in the dark",
        "coral reefs shelter a quarter of sea life",
        "deserts lose their heat quickly at night",
    ];
    (0..n)
        .map(|i| format!("Note {i}: {}.", TOPICS[(i / 12) % TOPICS.len()]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn doc(id: &str, text: String) -> Document {
    Document {
        id: id.into(),
        text,
        title: Some(format!("About {id}")),
        metadata: Default::default(),
        vector: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_ingested_again_shorter_leaves_no_stale_chunks() {
    let scope = "t-shrink";
    let cl = cluster(scope).await;
    cl.collection("shrink", 4, 2, 384, Metric::Cosine).await;
    let c = cl.coordinator(route("shrink"));
    let policy = ChunkPolicy::default();

    let long = long_text(120);
    let old_chunks = chunks(&long, policy);
    assert!(old_chunks.len() >= 5, "{}", old_chunks.len());
    let old_n = old_chunks.len() as u32;
    let report = c
        .ingest(&[doc("long", long), doc("other", long_text(10))], |_| {})
        .await
        .unwrap();
    assert_eq!(report.chunks, u64::from(old_n) + 1);
    let all_ids: Vec<u64> = (0..old_n).map(|i| chunk_id("long", i)).collect();
    let everywhere: usize = stored_ids(&cl, "shrink", 4, &all_ids)
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(
        everywhere,
        2 * all_ids.len(),
        "every chunk on both replicas"
    );
    // The last chunk's own text finds it first.
    let last = old_chunks.last().unwrap();
    let found = c.query(last, 1, None).await.unwrap();
    assert_eq!(
        (found.results[0].doc_id.as_str(), found.results[0].chunk_id),
        ("long", old_n - 1)
    );
    assert!(
        !found.results[0].metadata.contains_key("_chunks"),
        "the chunk count is not shown as the document's metadata: {:?}",
        found.results[0]
    );

    // Again, shorter: the chunks past its new end are gone from every replica and from
    // the answers; those it still has are there.
    let short = long_text(30);
    let new_n = chunks(&short, policy).len() as u32;
    assert!(new_n >= 2 && new_n < old_n, "{new_n} of {old_n}");
    c.ingest(&[doc("long", short)], |_| {}).await.unwrap();
    let dropped: Vec<u64> = (new_n..old_n).map(|i| chunk_id("long", i)).collect();
    for held in stored_ids(&cl, "shrink", 4, &dropped).await {
        assert!(held.is_empty(), "stale chunks still stored: {held:?}");
    }
    let kept: Vec<u64> = (0..new_n).map(|i| chunk_id("long", i)).collect();
    let kept_everywhere: usize = stored_ids(&cl, "shrink", 4, &kept)
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(kept_everywhere, 2 * kept.len());
    for text in &old_chunks[new_n as usize..] {
        let found = c.query(text, 20, None).await.unwrap();
        assert!(found.missing_partitions.is_empty(), "{found:?}");
        let long_hits: BTreeSet<u32> = found
            .results
            .iter()
            .filter(|h| h.doc_id == "long")
            .map(|h| h.chunk_id)
            .collect();
        assert_eq!(long_hits, (0..new_n).collect(), "{found:?}");
    }

    // An empty text has no chunks: ingesting it removes the document.
    c.ingest(&[doc("long", String::new())], |_| {})
        .await
        .unwrap();
    for held in stored_ids(&cl, "shrink", 4, &kept).await {
        assert!(held.is_empty(), "{held:?}");
    }
    let found = c.query("kites on the sea wind", 20, None).await.unwrap();
    assert!(
        found.results.iter().all(|h| h.doc_id == "other"),
        "{found:?}"
    );

    // A document stored before chunk counts were kept (no `_chunks`) is not pruned: nothing
    // says how many chunks it had.
    let legacy: Vec<VectorRecord> = (0..2)
        .map(|i| VectorRecord {
            id: chunk_id("legacy", i),
            vector: vec![0.05; 384],
            metadata: format!(r#"{{"_doc": "legacy", "_chunk": {i}, "_text": "old"}}"#),
        })
        .collect();
    for r in legacy {
        let deployment = partition_deployment("shrink", partition_of(r.id, 4));
        let view = cl.view(&deployment);
        let request = PartitionRequest::Write {
            epoch: view.set.epoch,
            op: WriteOp::Upsert(Rows::from_records([r]).unwrap()),
        };
        let written = cl
            .ask(&deployment, view.primary().unwrap().0, request)
            .await;
        assert!(
            matches!(written, Ok(PartitionAnswer::Written { .. })),
            "{written:?}"
        );
    }
    c.ingest(&[doc("legacy", "Now one short chunk.".into())], |_| {})
        .await
        .unwrap();
    let held: usize = stored_ids(&cl, "shrink", 4, &[chunk_id("legacy", 1)])
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(held, 2, "the old chunk 1 stays on both replicas");
}

/// A unit vector of `dim` values, the same for the same `seed`.
fn unit_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= norm);
    v
}

fn vector_doc(n: u64, vector: Vec<f32>) -> Document {
    Document {
        id: format!("v-{n}"),
        text: format!("vector document {n}"),
        title: None,
        metadata: serde_json::from_value(serde_json::json!({ "n": n })).unwrap(),
        vector: Some(vector),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_with_their_own_vectors_are_found_by_vector_queries() {
    let scope = "t-vectors";
    let mut cl = cluster(scope).await;
    cl.collection("vec", 2, 1, 384, Metric::Cosine).await;
    let coordinator = Assignment {
        actor_id: "vec-coord/0".into(),
        deployment: "vec-coord".into(),
        kind: "retrieval_coordinator".into(),
        generation: 1,
        devices: vec![],
        config: r#"{"collection": "vec"}"#.into(),
    };
    cl.extra.insert(1, vec![embedder(), coordinator]);
    cl.assign();
    let c = cl.coordinator(route("vec"));
    // A coordinator of a collection the control plane does not have says so, by name.
    let absent = cl.coordinator(route("absent"));
    let err = absent
        .query_vector(vec![0.0; 384], 3, None)
        .await
        .unwrap_err();
    assert_eq!(err, RetrievalError::NoCollection("absent".into()));
    assert_eq!(
        arbor_proto::Coded::code(&err),
        arbor_proto::ErrorCode::NotFound
    );
    let err = absent.ingest(&corpus(), |_| {}).await.unwrap_err();
    assert_eq!(err, RetrievalError::NoCollection("absent".into()));

    // A mixed batch: documents with vectors (one with an empty text) and ones to embed.
    let mut docs: Vec<Document> = (0..40)
        .map(|n| vector_doc(n, unit_vector(n, 384)))
        .collect();
    docs[7].text = String::new();
    docs.push(doc(
        "kites",
        "Kites climb on the steady wind by the sea.".into(),
    ));
    docs.push(doc("owls", long_text(200)));
    let owl_chunks = chunks(&docs[41].text, ChunkPolicy::default()).len() as u64;
    let report = c.ingest(&docs, |_| {}).await.unwrap();
    assert_eq!((report.documents, report.chunks), (42, 40 + 1 + owl_chunks));
    for n in [0u64, 7, 23, 39] {
        let found = c.query_vector(unit_vector(n, 384), 3, None).await.unwrap();
        assert!(found.missing_partitions.is_empty(), "{found:?}");
        let top = &found.results[0];
        assert_eq!(
            (top.doc_id.as_str(), top.chunk_id),
            (docs[n as usize].id.as_str(), 0)
        );
        assert!(top.score > 0.999, "{top:?}");
        assert_eq!(top.text, docs[n as usize].text);
        assert_eq!(
            top.metadata, docs[n as usize].metadata,
            "only the document's own keys"
        );
    }
    let found = c.query("kites and the sea wind", 1, None).await.unwrap();
    assert_eq!(found.results[0].doc_id, "kites", "{found:?}");

    // A vector of the wrong length is refused, naming the document, before anything of
    // the batch is written.
    let fresh = vector_doc(100, unit_vector(100, 384));
    let err = c
        .ingest(&[fresh.clone(), vector_doc(101, vec![0.5; 3])], |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"v-101\"") && err.contains("3 values") && err.contains("384"),
        "{err}"
    );
    let found = c
        .query_vector(unit_vector(100, 384), 1, None)
        .await
        .unwrap();
    assert_ne!(
        found.results[0].doc_id, "v-100",
        "nothing of a refused batch is stored"
    );
    let err = c
        .ingest(&[vector_doc(102, vec![f32::NAN; 384])], |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"v-102\"") && err.contains("finite"), "{err}");
    let err = c
        .query_vector(vec![1.0; 5], 1, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 values") && err.contains("384"), "{err}");

    // A document that had several chunks and now brings a vector is one chunk.
    let owls = Document {
        vector: Some(unit_vector(500, 384)),
        ..docs[41].clone()
    };
    c.ingest(&[owls], |_| {}).await.unwrap();
    let ids: Vec<u64> = (0..owl_chunks as u32)
        .map(|i| chunk_id("owls", i))
        .collect();
    let held: Vec<u64> = stored_ids(&cl, "vec", 2, &ids)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(held, vec![chunk_id("owls", 0)]);

    // The same through the coordinator's JSON call.
    wait_running(scope, "vec-coord").await;
    let router = Router::new(scope, "vec-coord");
    let ingest = serde_json::json!({ "ingest": [
        { "id": "j-1", "text": "", "vector": unit_vector(1000, 384) },
    ]});
    let reply = router
        .call(ingest.to_string().into_bytes(), PATIENCE)
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(report["chunks"], 1, "{report}");
    let ask = serde_json::json!({ "query_vector": unit_vector(1000, 384), "k": 2 });
    let reply = router
        .call(ask.to_string().into_bytes(), PATIENCE)
        .await
        .unwrap();
    let found: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(found["results"][0]["doc_id"], "j-1", "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 2);
    let bad = serde_json::json!({ "ingest": [{ "id": "j-2", "text": "x", "vector": [1.0, 2.0] }]});
    let err = router
        .call(bad.to_string().into_bytes(), PATIENCE)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"j-2\""), "{err}");
}
