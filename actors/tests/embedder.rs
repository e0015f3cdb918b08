//! The `embedder` kind with the real all-MiniLM-L6-v2 model and real actors.
//!
//! Needs the model in the models dir (`scripts/fetch-models.sh`). Replicas run on the CPU.
//! Tests that go through a node agent use a pg scope of their own (pg is process-global).

mod common;

use common::Parent;
use std::sync::OnceLock;
use std::time::Duration;

use arbor_actors::agent::{AgentArgs, AgentMsg, Assignment, NodeAgent, ReplicaState};
use arbor_actors::kinds::{EmbedderStats, Kind, ReplicaContext, spawn_replica};
use arbor_actors::replica::{
    CallFailure, CallRequest, EmbedFailure, EmbedReply, EmbedRequest, EmbedResult, ReplicaMsg,
};
use arbor_actors::router::Router;
use arbor_actors::supervision::RestartPolicy;
use arbor_actors::wire::Wire;
use arbor_kernels::Device;
use arbor_kernels::embed::Embedder;
use arbor_kernels::models::models_dir;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, SpawnErr};

/// Generous: an unoptimized test build on a busy 2-core machine.
const CALL: Duration = Duration::from_secs(120);

const SENTENCES: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "Vector databases store embeddings for similarity search.",
    "Rust gives memory safety without a garbage collector.",
    "It rained all afternoon in the mountains.",
    "A replica answers requests for its deployment.",
    "Cats sleep most of the day.",
    "The scheduler places actors so that no node is overcommitted.",
    "Dynamic batching trades a little latency for throughput.",
];

/// The model called directly, once per test binary.
fn direct() -> &'static Embedder {
    static MODEL: OnceLock<Embedder> = OnceLock::new();
    MODEL.get_or_init(|| {
        Embedder::load(models_dir(None), Device::Cpu)
            .expect("the model is in the models dir (run scripts/fetch-models.sh)")
    })
}

fn context(kind: Kind, config: &str, models: std::path::PathBuf) -> ReplicaContext {
    ReplicaContext {
        actor_id: format!("{kind}-test"),
        deployment: "embed-test".into(),
        generation: 1,
        devices: vec![],
        config: config.into(),
        data_dir: std::env::temp_dir(),
        models_dir: models,
        scope: String::new(),
        control: arbor_actors::control::memory::MemoryControl::new().control(),
    }
}

/// Starts a replica under a fresh parent; the error is the start failure's reason.
async fn start(
    kind: Kind,
    config: &str,
    models: std::path::PathBuf,
) -> Result<ActorRef<ReplicaMsg>, String> {
    let (parent, _) = Actor::spawn(None, Parent, ()).await.expect("parent starts");
    spawn_replica(kind, context(kind, config, models), parent.get_cell())
        .await
        .map_err(|e| match e {
            SpawnErr::StartupFailed(inner) => inner.to_string(),
            other => other.to_string(),
        })
}

async fn embedder(config: &str) -> ActorRef<ReplicaMsg> {
    start(Kind::Embedder, config, models_dir(None))
        .await
        .expect("embedder starts")
}

async fn embed(replica: &ActorRef<ReplicaMsg>, texts: &[&str]) -> EmbedReply {
    let request = EmbedRequest {
        texts: texts.iter().map(|t| t.to_string()).collect(),
    };
    let reply = replica
        .call(
            |port| ReplicaMsg::Embed(Wire::new(request), port),
            Some(CALL),
        )
        .await
        .expect("replica reachable");
    let CallResult::Success(reply) = reply else {
        panic!("no reply: {reply:?}");
    };
    reply.into_inner().expect("reply decodes")
}

async fn call(replica: &ActorRef<ReplicaMsg>, json: &str) -> Result<Vec<u8>, CallFailure> {
    let request = CallRequest {
        payload: json.as_bytes().to_vec(),
    };
    let reply = replica
        .call(
            |port| ReplicaMsg::Call(Wire::new(request), port),
            Some(CALL),
        )
        .await
        .expect("replica reachable");
    let CallResult::Success(reply) = reply else {
        panic!("no reply: {reply:?}");
    };
    reply.into_inner().expect("reply decodes")
}

async fn stats(replica: &ActorRef<ReplicaMsg>) -> EmbedderStats {
    let json = call(replica, r#"{"stats": true}"#).await.expect("stats");
    serde_json::from_slice(&json).expect("stats are JSON")
}

fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], tolerance: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "vector {i}");
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "vector {i} differs by {worst}");
    }
}

/// The direct model's vectors for texts of [`SENTENCES`], each embedded on its own.
fn expected(texts: &[&str]) -> Vec<Vec<f32>> {
    texts
        .iter()
        .map(|t| direct().embed(&[t]).expect("direct embed").remove(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_are_the_models_own() {
    let replica = embedder("").await;
    let texts = &SENTENCES[..3];
    let got = embed(&replica, texts).await.expect("embedded");
    assert_eq!(got.dim, 384);
    let want = direct().embed(texts).expect("direct embed");
    assert_close(&got.vectors, &want, 1e-5);
    for v in &got.vectors {
        assert_eq!(v.len(), 384);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    // The same through the generic call, as `arbor call` sends it.
    let json = call(&replica, &serde_json::json!({ "texts": texts }).to_string())
        .await
        .expect("embedded");
    let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(value["dim"], 384);
    let vectors: Vec<Vec<f32>> = serde_json::from_value(value["vectors"].clone()).expect("vectors");
    assert_close(&vectors, &want, 1e-5);
    let err = call(&replica, r#"{"texts": []}"#).await.unwrap_err();
    assert!(matches!(err, CallFailure::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("at least one"), "{err}");
    replica.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_gets_its_own_vectors() {
    let replica = embedder(r#"{"batching": {"max_wait_ms": 20}}"#).await;
    let requests: Vec<Vec<&'static str>> = (0..64)
        .map(|i| {
            let n = 1 + i % 3;
            (0..n)
                .map(|j| SENTENCES[(i * 3 + j) % SENTENCES.len()])
                .collect()
        })
        .collect();
    let tasks: Vec<_> = requests
        .iter()
        .map(|texts| {
            let replica = replica.clone();
            let texts = texts.clone();
            tokio::spawn(async move { embed(&replica, &texts).await })
        })
        .collect();
    let want = expected(&SENTENCES);
    for (texts, task) in requests.iter().zip(tasks) {
        let got = task.await.expect("task").expect("embedded");
        let want: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| want[SENTENCES.iter().position(|s| s == t).unwrap()].clone())
            .collect();
        // Batched with others, a text is padded to a longer one: masked, so the same up to
        // float summation order.
        assert_close(&got.vectors, &want, 1e-4);
    }
    let stats = stats(&replica).await;
    assert_eq!(stats.requests, 64, "{stats:?}");
    assert!(
        stats.largest_batch > 1,
        "no batch of more than one: {stats:?}"
    );
    assert!(stats.batches < 64, "{stats:?}");
    assert_eq!((stats.overloaded, stats.invalid, stats.queued), (0, 0, 0));
    replica.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_fails_alone() {
    // A long wait, so that the requests sent together are batched together.
    let replica = embedder(r#"{"batching": {"max_wait_ms": 200}}"#).await;
    let too_many: Vec<&str> = vec!["word"; 1025];
    let requests: Vec<Vec<&str>> = vec![
        vec![SENTENCES[0]],
        vec![],
        vec![SENTENCES[1], SENTENCES[2]],
        vec![SENTENCES[3], "   "],
        too_many,
        vec![SENTENCES[4]],
    ];
    let tasks: Vec<_> = requests
        .iter()
        .map(|texts| {
            let replica = replica.clone();
            let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
            tokio::spawn(async move {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                embed(&replica, &refs).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    let invalid = |r: &EmbedReply, what: &str| match r {
        Err(EmbedFailure::Invalid(why)) => assert!(why.contains(what), "{why}"),
        other => panic!("expected an invalid request ({what}), got {other:?}"),
    };
    invalid(&replies[1], "at least one");
    invalid(&replies[3], "text 1 is empty");
    invalid(&replies[4], "at most 1024");
    for i in [0, 2, 5] {
        let got: &EmbedResult = replies[i].as_ref().expect("a valid request succeeds");
        assert_close(&got.vectors, &expected(&requests[i]), 1e-4);
    }
    let stats = stats(&replica).await;
    assert_eq!((stats.invalid, stats.requests), (3, 3), "{stats:?}");
    replica.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let replica = embedder(r#"{"batching": {"queue_capacity": 2, "max_wait_ms": 50}}"#).await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let replica = replica.clone();
            tokio::spawn(async move { embed(&replica, &[SENTENCES[i % SENTENCES.len()]]).await })
        })
        .collect();
    let want = expected(&SENTENCES);
    let (mut ok, mut refused) = (0, 0);
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(got) => {
                assert_close(&got.vectors, &want[i % SENTENCES.len()..][..1], 1e-4);
                ok += 1;
            }
            Err(EmbedFailure::Overloaded { queued }) => {
                assert_eq!(queued, 2);
                refused += 1;
            }
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert!(ok >= 2 && refused >= 1, "{ok} answered, {refused} refused");
    let stats = stats(&replica).await;
    assert_eq!(stats.overloaded, refused, "{stats:?}");
    let shown = EmbedFailure::Overloaded { queued: 2 }.to_string();
    assert_eq!(
        shown,
        "embedder queue is full (2 requests waiting); retry later or add replicas"
    );
    replica.stop(None);
}

#[tokio::test]
async fn a_missing_model_fails_the_start_with_the_fetch_hint() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = start(Kind::Embedder, "", empty.path().to_path_buf())
        .await
        .expect_err("no model there");
    assert!(err.contains("scripts/fetch-models.sh"), "{err}");
    assert!(err.contains(&empty.path().display().to_string()), "{err}");
    assert!(err.contains("embedder actor"), "{err}");
}

#[tokio::test]
async fn a_bad_config_names_the_field() {
    for (config, field) in [
        (r#"{"batching": {"max_wait": 5}}"#, "max_wait"),
        (r#"{"batching": {"queue_capacity": 0}}"#, "queue_capacity"),
        (r#"{"devices": "cpu"}"#, "devices"),
        (r#"{"device": "cuda"}"#, "no GPU is assigned"),
    ] {
        let err = start(Kind::Embedder, config, models_dir(None))
            .await
            .expect_err("refused");
        assert!(err.contains(field), "{config}: {err}");
        assert!(err.contains("bad config for embedder"), "{config}: {err}");
    }
}

#[tokio::test]
async fn other_kinds_say_they_are_not_embedders() {
    for kind in [Kind::Echo, Kind::Spin] {
        let replica = start(kind, "", models_dir(None)).await.expect("starts");
        match embed(&replica, &["hello"]).await {
            Err(EmbedFailure::Invalid(why)) => assert!(why.contains("not an embedder"), "{why}"),
            other => panic!("{kind}: {other:?}"),
        }
        replica.stop(None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_it_runs_once_loaded_and_answers_calls() {
    let scope = "t-embedder-agent";
    let data = tempfile::tempdir().expect("tempdir");
    let (reports, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let args = AgentArgs {
        node: 1,
        scope: scope.into(),
        control: arbor_actors::control::memory::MemoryControl::new().control(),
        policy: RestartPolicy::default(),
        reports,
        data_dir: data.path().to_path_buf(),
        models_dir: models_dir(None),
    };
    let (agent, _) = Actor::spawn(None, NodeAgent, args).await.expect("agent");
    agent
        .cast(AgentMsg::Assign(vec![Assignment {
            actor_id: "e1".into(),
            deployment: "emb".into(),
            kind: "embedder".into(),
            generation: 1,
            devices: vec![],
            config: r#"{"device": "cpu"}"#.into(),
        }]))
        .expect("assign");
    loop {
        let report = tokio::time::timeout(CALL, rx.recv())
            .await
            .expect("a report in time")
            .expect("reports open");
        match report.state {
            ReplicaState::Running => break,
            ReplicaState::Starting => continue,
            other => panic!("{other:?}"),
        }
    }
    let router = Router::new(scope, "emb");
    let json = router
        .call(br#"{"texts": ["hello world"]}"#.to_vec(), CALL)
        .await
        .expect("answered");
    let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(value["dim"], 384);
    let vectors: Vec<Vec<f32>> = serde_json::from_value(value["vectors"].clone()).expect("vectors");
    assert_close(&vectors, &expected(&["hello world"]), 1e-5);
    agent.stop(None);
}

/// Not a test: texts per second through the actor (many concurrent one-text requests) against
/// one direct `embed` call over the same texts. Speed is never asserted (ARCHITECTURE.md,
/// Testing). Run:
/// `cargo test -p arbor-actors --test embedder -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn throughput() {
    const N: usize = 512;
    let texts: Vec<String> = (0..N)
        .map(|i| format!("{} (#{i})", SENTENCES[i % SENTENCES.len()]))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    direct().embed(&refs[..8]).expect("warm up");
    let t = std::time::Instant::now();
    direct().embed(&refs).expect("direct");
    let direct_rate = N as f64 / t.elapsed().as_secs_f64();

    let replica = embedder("").await;
    embed(&replica, &refs[..8]).await.expect("warm up");
    let t = std::time::Instant::now();
    let tasks: Vec<_> = texts
        .iter()
        .map(|text| {
            let replica = replica.clone();
            let text = text.clone();
            tokio::spawn(async move { embed(&replica, &[text.as_str()]).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("embedded");
    }
    let actor_rate = N as f64 / t.elapsed().as_secs_f64();
    let s = stats(&replica).await;
    println!(
        "{N} texts: direct embed (one call) {direct_rate:.0} texts/s; through the actor \
         ({N} concurrent 1-text requests) {actor_rate:.0} texts/s in {} batches \
         (largest {} requests)",
        s.batches - 1,
        s.largest_batch
    );
    replica.stop(None);
}
