//! Retrieval with the real MiniLM (after scripts/fetch-models.sh) on real actors: an embedder
//! and vector partitions started by node agents (two "nodes" with their own data dirs, so a
//! partition's two replicas are apart as anti-affinity would place them), and the coordinator
//! ingesting the corpus shipped in tests/data and answering paraphrased questions.

use std::collections::BTreeSet;
use std::time::Duration;

use arbor_actors::agent::{AgentArgs, AgentMsg, Assignment, NodeAgent, ReplicaState, StatusReport};
use arbor_actors::partition::{
    MetadataFilter, PartitionAnswer, PartitionReply, PartitionRequest, VectorRecord,
};
use arbor_actors::replica::{ReplicaMsg, deployment_group};
use arbor_actors::retrieval::chunk::chunks;
use arbor_actors::retrieval::route::{chunk_id, partition_of};
use arbor_actors::retrieval::{
    ChunkPolicy, CollectionRoute, Coordinator, Document, RetrievalError, partition_deployment,
};
use arbor_actors::router::Router;
use arbor_actors::supervision::RestartPolicy;
use arbor_actors::wire::Wire;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use serde::Deserialize;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const PATIENCE: Duration = Duration::from_secs(60);

struct Node {
    agent: ActorRef<AgentMsg>,
    reports: UnboundedReceiver<StatusReport>,
    _data: tempfile::TempDir,
}

async fn node(scope: &str, id: u64) -> Node {
    let data = tempfile::tempdir().unwrap();
    let (reports, rx) = unbounded_channel();
    let args = AgentArgs {
        node: id,
        scope: scope.into(),
        policy: RestartPolicy::default(),
        reports,
        data_dir: data.path().to_path_buf(),
        models_dir: arbor_kernels::models::models_dir(None),
    };
    let (agent, _) = Actor::spawn(None, NodeAgent, args).await.unwrap();
    Node {
        agent,
        reports: rx,
        _data: data,
    }
}

impl Node {
    /// Assigns `actors` and waits until each runs.
    async fn run(&mut self, actors: Vec<Assignment>) {
        let all = actors.iter().map(|a| a.actor_id.clone()).collect();
        self.run_waiting(actors, all).await;
    }

    /// Assigns `actors` and waits until those in `waiting` run.
    async fn run_waiting(&mut self, actors: Vec<Assignment>, mut waiting: BTreeSet<String>) {
        self.agent.cast(AgentMsg::Assign(actors)).unwrap();
        while !waiting.is_empty() {
            let report = tokio::time::timeout(PATIENCE, self.reports.recv())
                .await
                .expect("actors start in time")
                .unwrap();
            match report.state {
                ReplicaState::Running => {
                    waiting.remove(&report.actor_id);
                }
                ReplicaState::Failed { reason } => panic!("{} failed: {reason}", report.actor_id),
                _ => {}
            }
        }
    }
}

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

fn partition(collection: &str, partition: u32, replica: u32) -> Assignment {
    let deployment = partition_deployment(collection, partition);
    Assignment {
        actor_id: format!("{deployment}/{replica}"),
        deployment,
        kind: "vector_partition".into(),
        generation: 1,
        devices: vec![],
        config: format!(
            r#"{{"collection":"{collection}","partition":{partition},"dim":384,"metric":"cosine"}}"#
        ),
    }
}

fn route(collection: &str, partitions: u32) -> CollectionRoute {
    serde_json::from_value(serde_json::json!({
        "collection": collection,
        "partitions": partitions,
        "embedder": "embedder",
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
    let mut a = node(scope, 1).await;
    let mut b = node(scope, 2).await;
    // Node a: the embedder, the one-partition collection, and replica 0 of each of 4
    // partitions; node b: replica 1 of each.
    let mut on_a = vec![embedder(), partition("one", 0, 0)];
    on_a.extend((0..4).map(|p| partition("docs", p, 0)));
    a.run(on_a.clone()).await;
    b.run((0..4).map(|p| partition("docs", p, 1)).collect())
        .await;

    let one = Coordinator::new(scope, route("one", 1)).unwrap();
    let four = Coordinator::new(scope, route("docs", 4)).unwrap();
    let mut progress = Vec::new();
    let report = four
        .ingest(&corpus(), |p| progress.push(p.chunks_done))
        .await
        .unwrap();
    assert_eq!((report.documents, report.chunks), (20, 20));
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
        config:
            r#"{"collection": "docs", "partitions": 4, "embedder": "embedder", "model": "llm"}"#
                .into(),
    };
    let model = Assignment {
        actor_id: "llm/0".into(),
        deployment: "llm".into(),
        kind: "model".into(),
        generation: 1,
        devices: vec![],
        config: r#"{"device": "cpu"}"#.into(),
    };
    let mut with_coordinator = on_a.clone();
    with_coordinator.push(coordinator);
    with_coordinator.push(model);
    a.run_waiting(
        with_coordinator,
        BTreeSet::from(["docs-coord/0".to_owned(), "llm/0".to_owned()]),
    )
    .await;
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

    // One replica of each partition gone: queries and writes go on with the other.
    b.run(vec![]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(answers(&four).await, on_one);
    four.ingest(&corpus()[..3], |_| {}).await.unwrap();

    // Both replicas of partition 2 gone: the answer says which partition it lacks, and a
    // write there fails with a reason.
    let without_2: Vec<Assignment> = on_a
        .into_iter()
        .filter(|x| x.deployment != partition_deployment("docs", 2))
        .collect();
    a.agent.cast(AgentMsg::Assign(without_2)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let partial = four.query("volcano eruption", 3, None).await.unwrap();
    assert_eq!(partial.missing_partitions, vec![2]);
    assert!(!partial.results.is_empty());
    let err = four.ingest(&corpus(), |_| {}).await.unwrap_err();
    assert!(
        matches!(err, RetrievalError::NoReplica { partition: 2, .. }),
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
    a.agent.stop(None);
    b.agent.stop(None);
}

/// Asks every replica of `collection`'s `partition` (there must be `replicas`) and returns
/// their answers, in no particular order.
async fn on_every_replica(
    scope: &str,
    collection: &str,
    partition: u32,
    replicas: usize,
    request: PartitionRequest,
) -> Vec<PartitionAnswer> {
    let group = deployment_group(&partition_deployment(collection, partition));
    let members = ractor::pg::get_scoped_members(&scope.to_owned(), &group);
    assert_eq!(members.len(), replicas, "replicas of partition {partition}");
    let mut answers = Vec::new();
    for member in members {
        let actor: ActorRef<ReplicaMsg> = member.into();
        let request = request.clone();
        let reply = ractor::rpc::call(
            &actor.get_cell(),
            |port| ReplicaMsg::Partition(Wire::new(request), port),
            Some(PATIENCE),
        )
        .await
        .unwrap();
        let CallResult::Success(wire) = reply else {
            panic!("partition {partition} did not answer: {reply:?}")
        };
        let answer: PartitionReply = wire.into_inner().unwrap();
        answers.push(answer.unwrap());
    }
    answers
}

/// Which of `ids` each replica of their partitions holds: one list per replica.
async fn stored_ids(
    scope: &str,
    collection: &str,
    partitions: u32,
    replicas: usize,
    ids: &[u64],
) -> Vec<Vec<u64>> {
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
        for answer in
            on_every_replica(scope, collection, p, replicas, PartitionRequest::Get(mine)).await
        {
            let PartitionAnswer::Records(records) = answer else {
                panic!("a get answered {answer:?}")
            };
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
    let mut a = node(scope, 1).await;
    let mut b = node(scope, 2).await;
    let mut on_a = vec![embedder()];
    on_a.extend((0..4).map(|p| partition("shrink", p, 0)));
    a.run(on_a).await;
    b.run((0..4).map(|p| partition("shrink", p, 1)).collect())
        .await;
    let c = Coordinator::new(scope, route("shrink", 4)).unwrap();
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
    let everywhere: usize = stored_ids(scope, "shrink", 4, 2, &all_ids)
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
    for held in stored_ids(scope, "shrink", 4, 2, &dropped).await {
        assert!(held.is_empty(), "stale chunks still stored: {held:?}");
    }
    let kept: Vec<u64> = (0..new_n).map(|i| chunk_id("long", i)).collect();
    let kept_everywhere: usize = stored_ids(scope, "shrink", 4, 2, &kept)
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
    for held in stored_ids(scope, "shrink", 4, 2, &kept).await {
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
        let p = partition_of(r.id, 4);
        on_every_replica(scope, "shrink", p, 2, PartitionRequest::Upsert(vec![r])).await;
    }
    c.ingest(&[doc("legacy", "Now one short chunk.".into())], |_| {})
        .await
        .unwrap();
    let held: usize = stored_ids(scope, "shrink", 4, 2, &[chunk_id("legacy", 1)])
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(held, 2, "the old chunk 1 stays on both replicas");
    a.agent.stop(None);
    b.agent.stop(None);
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
    let mut a = node(scope, 1).await;
    let coordinator = Assignment {
        actor_id: "vec-coord/0".into(),
        deployment: "vec-coord".into(),
        kind: "retrieval_coordinator".into(),
        generation: 1,
        devices: vec![],
        config: r#"{"collection": "vec", "partitions": 2, "embedder": "embedder"}"#.into(),
    };
    a.run(vec![
        embedder(),
        partition("vec", 0, 0),
        partition("vec", 1, 0),
        coordinator,
    ])
    .await;
    let c = Coordinator::new(scope, route("vec", 2)).unwrap();

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
    let held: Vec<u64> = stored_ids(scope, "vec", 2, 1, &ids)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(held, vec![chunk_id("owls", 0)]);

    // The same through the coordinator's JSON call.
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
    a.agent.stop(None);
}
