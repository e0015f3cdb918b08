//! The `model` kind with the real SmolLM2 model and real actors: generations through the
//! actor match the kernel's own, streams add up, concurrent requests share batches, and
//! cancellation, idle reaping, overload and bad requests behave.
//! Needs the model file: run scripts/fetch-models.sh first.

mod common;

use common::Parent;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arbor_actors::kinds::model::{
    ChatMessage, ChatRole, GenerateSpec, ModelAnswer, ModelFailure, ModelReply, ModelRequest,
};
use arbor_actors::kinds::{Kind, ReplicaContext, spawn_replica};
use arbor_actors::replica::{CallFailure, CallRequest, ReplicaMsg};
use arbor_actors::stream::{self, StreamError, generate_stream};
use arbor_actors::wire::Wire;
use arbor_kernels::Device;
use arbor_kernels::llama::{GenerateParams, Generation, Llama, Message};
use arbor_kernels::models::{SMOLLM2_GGUF, models_dir};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, BytesConvertable};

const CALL: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);

fn model_dir() -> PathBuf {
    let dir = models_dir(None);
    let path = dir.join(SMOLLM2_GGUF);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh (or set ARBOR_MODELS to the models dir)",
        path.display()
    );
    dir
}

/// The model called directly, to compare the actor's answers with.
fn reference() -> &'static Mutex<Llama> {
    static LLAMA: OnceLock<Mutex<Llama>> = OnceLock::new();
    LLAMA.get_or_init(|| {
        let llama = Llama::load(model_dir().join(SMOLLM2_GGUF), Device::Cpu).expect("loads");
        Mutex::new(llama)
    })
}

fn solo(prompt: &str, params: &GenerateParams) -> Generation {
    let llama = reference().lock().unwrap_or_else(|e| e.into_inner());
    llama
        .generate(prompt, params, |_| ControlFlow::Continue(()))
        .expect("generates")
}

fn chat_prompt(question: &str) -> String {
    let llama = reference().lock().unwrap_or_else(|e| e.into_inner());
    llama
        .chat_template()
        .render(&[Message::user(question)])
        .expect("renders")
}

async fn spawn(kind: Kind, config: &str) -> (ActorRef<ReplicaMsg>, ActorRef<()>) {
    let (parent, _) = Actor::spawn(None, Parent, ()).await.expect("parent starts");
    let ctx = ReplicaContext {
        actor_id: format!("test-{kind}"),
        deployment: "model".into(),
        generation: 1,
        devices: vec![],
        config: config.into(),
        data_dir: std::env::temp_dir(),
        models_dir: model_dir(),
        scope: String::new(),
        control: arbor_actors::control::memory::MemoryControl::new().control(),
    };
    let replica = spawn_replica(kind, ctx, parent.get_cell())
        .await
        .expect("replica starts");
    (replica, parent)
}

async fn model(config: &str) -> (ActorRef<ReplicaMsg>, ActorRef<()>) {
    spawn(Kind::Model, config).await
}

async fn ask(replica: &ActorRef<ReplicaMsg>, request: ModelRequest) -> ModelReply {
    let reply = replica
        .call(
            |port| ReplicaMsg::Model(Wire::new(request), port),
            Some(CALL),
        )
        .await
        .expect("sent");
    let CallResult::Success(reply) = reply else {
        panic!("no reply");
    };
    reply.into_inner().expect("reply decodes")
}

async fn call_json(
    replica: &ActorRef<ReplicaMsg>,
    payload: &str,
) -> Result<serde_json::Value, CallFailure> {
    let request = CallRequest {
        payload: payload.as_bytes().to_vec(),
    };
    let reply = replica
        .call(
            |port| ReplicaMsg::Call(Wire::new(request), port),
            Some(CALL),
        )
        .await
        .expect("sent");
    let CallResult::Success(reply) = reply else {
        panic!("no reply");
    };
    reply
        .into_inner()
        .expect("reply decodes")
        .map(|bytes| serde_json::from_slice(&bytes).expect("JSON answer"))
}

async fn stats(replica: &ActorRef<ReplicaMsg>) -> serde_json::Value {
    call_json(replica, r#"{"stats": true}"#)
        .await
        .expect("stats")
}

/// Streams a generation through the actor: its text and finish reason and token count.
async fn streamed(replica: &ActorRef<ReplicaMsg>, spec: GenerateSpec) -> (String, String, u32) {
    let mut text = String::new();
    let finished = generate_stream(replica.clone(), spec, |piece| text.push_str(piece), POLL)
        .await
        .expect("generates");
    (text, finished.reason, finished.generated_tokens)
}

fn reason_of(g: &Generation) -> String {
    arbor_actors::kinds::model::reason_name(g.finish_reason).to_owned()
}

/// Polls until generation `id` has made at least one token.
async fn until_a_token(replica: &ActorRef<ReplicaMsg>, id: u64) {
    loop {
        let (_, next, finished) = stream::poll(replica, id, 0, POLL).await.expect("polls");
        assert!(finished.is_none(), "ended before it could be tested");
        if next > 0 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_through_the_actor_is_the_kernels_own() {
    let (replica, parent) = model(r#"{"device": "cpu"}"#).await;
    let question = "What is the capital of France?";
    let prompt = chat_prompt(question);
    let expected = solo(&prompt, &GenerateParams::greedy(16));

    let (text, reason, tokens) = streamed(&replica, GenerateSpec::prompt(&prompt, 16)).await;
    assert_eq!(text, expected.text, "streamed pieces add up to the answer");
    assert_eq!(reason, reason_of(&expected));
    assert_eq!(tokens as usize, expected.token_ids.len());

    // The same question as chat messages is rendered with the model's template.
    let messages = vec![ChatMessage {
        role: ChatRole::User,
        content: question.into(),
    }];
    let (text, _, _) = streamed(&replica, GenerateSpec::chat(messages, 16)).await;
    assert_eq!(text, expected.text);

    // The generic call answers with the whole text at once.
    let payload = serde_json::json!({"prompt": prompt, "max_tokens": 16}).to_string();
    let answer = call_json(&replica, &payload).await.expect("call answers");
    assert_eq!(answer["text"], expected.text.as_str());
    assert_eq!(answer["finish_reason"], reason_of(&expected).as_str());

    // Every finished generation was read to its end, so none is kept.
    let s = stats(&replica).await;
    assert_eq!(s["generations"], 0, "{s}");
    assert_eq!(s["finished"], 3, "{s}");
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generations_share_steps_and_match_their_solo_answers() {
    let (replica, parent) = model(r#"{"device": "cpu", "max_batch": 8}"#).await;
    let questions = [
        "What is the capital of France?",
        "Name a primary color.",
        "Write a haiku about the sea.",
        "What is 2 + 2?",
    ];
    let prompts: Vec<String> = questions.iter().map(|q| chat_prompt(q)).collect();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (replica, spec) = (replica.clone(), GenerateSpec::prompt(p, 12));
            tokio::spawn(async move { streamed(&replica, spec).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    for (prompt, (text, reason, _)) in prompts.iter().zip(&answers) {
        let expected = solo(prompt, &GenerateParams::greedy(12));
        assert_eq!(text, &expected.text, "prompt {prompt:?}");
        assert_eq!(reason, &reason_of(&expected));
    }
    let s = stats(&replica).await;
    assert_eq!(
        s["max_batch_seen"], 4,
        "the four generations were stepped together: {s}"
    );
    assert_eq!(s["active"], 0, "{s}");
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_end_generation_without_the_stop_text() {
    let (replica, parent) = model(r#"{"device": "cpu"}"#).await;
    let prompt = chat_prompt("Write a haiku about the sea.");
    let free = solo(&prompt, &GenerateParams::greedy(20));
    // A word that the free answer has, past its start.
    let word = free
        .text
        .split_whitespace()
        .nth(3)
        .expect("the answer has words")
        .to_owned();
    let stop = format!(" {word}");
    assert!(free.text.contains(&stop), "{:?} lacks {stop:?}", free.text);
    let cut = &free.text[..free.text.find(&stop).unwrap_or_default()];

    let spec = GenerateSpec {
        stop: vec![stop.clone()],
        ..GenerateSpec::prompt(&prompt, 20)
    };
    let (text, reason, _) = streamed(&replica, spec).await;
    assert_eq!(reason, "stop");
    assert_eq!(text, cut);
    assert!(!text.contains(&stop));
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_long_generation_early() {
    let (replica, parent) = model(r#"{"device": "cpu"}"#).await;
    let spec = GenerateSpec::prompt(chat_prompt("Tell me a long story about a dragon."), 64);
    let id = stream::start(&replica, spec).await.expect("starts");
    until_a_token(&replica, id).await;
    stream::cancel(&replica, id).await.expect("cancels");
    let mut from = 0;
    let finished = loop {
        let (_, next, finished) = stream::poll(&replica, id, from, POLL).await.expect("polls");
        from = next;
        if let Some(f) = finished {
            break f;
        }
    };
    assert_eq!(finished.reason, "cancelled");
    assert!(finished.generated_tokens < 64, "{finished:?}");
    // Read to its end, the generation is gone.
    assert_eq!(
        ask(
            &replica,
            ModelRequest::Poll {
                id,
                from: 0,
                wait_ms: 0
            }
        )
        .await,
        Err(ModelFailure::UnknownGeneration(id))
    );
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_nobody_polls_is_dropped_after_the_idle_timeout() {
    let (replica, parent) = model(r#"{"device": "cpu", "idle_timeout_ms": 200}"#).await;
    let prompt = chat_prompt("Tell me a long story about a dragon.");
    let abandoned = stream::start(&replica, GenerateSpec::prompt(&prompt, 1000))
        .await
        .expect("starts");
    // A caller that keeps polling outlives the idle timeout however long it takes.
    let expected = solo(&prompt, &GenerateParams::greedy(12));
    let spec = GenerateSpec::prompt(&prompt, 12);
    let mut text = String::new();
    let finished = generate_stream(
        replica.clone(),
        spec,
        |p| text.push_str(p),
        Duration::from_millis(50),
    )
    .await
    .expect("a polled generation survives");
    assert_eq!(text, expected.text);
    assert_eq!(finished.reason, reason_of(&expected));

    assert_eq!(
        ask(
            &replica,
            ModelRequest::Poll {
                id: abandoned,
                from: 0,
                wait_ms: 0
            }
        )
        .await,
        Err(ModelFailure::UnknownGeneration(abandoned))
    );
    let s = stats(&replica).await;
    assert_eq!(s["abandoned"], 1, "{s}");
    // The worker ended it too: it does not burn the model.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = stats(&replica).await;
        if s["active"] == 0 {
            assert!(s["tokens"].as_u64().unwrap_or(u64::MAX) < 1000, "{s}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still active: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (replica, parent) = model(r#"{"device": "cpu", "max_batch": 1, "max_queue": 1}"#).await;
    let spec = GenerateSpec::prompt(chat_prompt("Tell me a long story about a dragon."), 200);
    let running = stream::start(&replica, spec.clone()).await.expect("starts");
    until_a_token(&replica, running).await;
    // The only batch slot is taken: the next waits, the one after is refused.
    let waiting = stream::start(&replica, spec.clone()).await.expect("queues");
    let refused = stream::start(&replica, spec).await;
    assert_eq!(
        refused,
        Err(StreamError::Failure(ModelFailure::Overloaded { queued: 1 }))
    );
    for id in [running, waiting] {
        stream::cancel(&replica, id).await.expect("cancels");
    }
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let (replica, parent) = model(r#"{"device": "cpu"}"#).await;
    let invalid = |field: &'static str| {
        move |reply: ModelReply| match reply {
            Err(ModelFailure::Invalid(why)) => assert!(why.starts_with(field), "{field}: {why}"),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    };
    let both = GenerateSpec {
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: "Hi".into(),
        }],
        ..GenerateSpec::prompt("Hi", 4)
    };
    invalid("prompt and messages")(ask(&replica, ModelRequest::Generate(both)).await);
    for max_tokens in [0, 5000] {
        let spec = GenerateSpec::prompt("Hi", max_tokens);
        invalid("max_tokens")(ask(&replica, ModelRequest::Generate(spec)).await);
    }
    let cold = GenerateSpec {
        temperature: Some(-1.0),
        ..GenerateSpec::prompt("Hi", 4)
    };
    invalid("temperature")(ask(&replica, ModelRequest::Generate(cold)).await);

    let unknown = ModelRequest::Poll {
        id: 12345,
        from: 0,
        wait_ms: 10,
    };
    assert_eq!(
        ask(&replica, unknown).await,
        Err(ModelFailure::UnknownGeneration(12345))
    );
    assert_eq!(
        ask(&replica, ModelRequest::Cancel { id: 7 }).await,
        Err(ModelFailure::UnknownGeneration(7))
    );

    // Bytes that do not decode get an error reply, not a panic.
    let garbage = Wire::<ModelRequest>::from_bytes(vec![0xFF; 5]);
    let reply = replica
        .call(|port| ReplicaMsg::Model(garbage, port), Some(CALL))
        .await
        .expect("sent");
    let CallResult::Success(reply) = reply else {
        panic!("no reply");
    };
    invalid("request rejected")(reply.into_inner().expect("decodes"));
    // Refusals of the generic call are coded as the request's fault.
    let err = call_json(&replica, "not json").await.unwrap_err();
    assert!(matches!(err, CallFailure::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("a model payload is JSON"), "{err}");
    let err = call_json(&replica, r#"{"prompt": "Hi", "max_tokens": 0}"#)
        .await
        .unwrap_err();
    assert!(matches!(err, CallFailure::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("max_tokens"), "{err}");

    // A started generation still answers normally after all that.
    let id = stream::start(&replica, GenerateSpec::prompt("Hi", 2))
        .await
        .expect("starts");
    assert!(matches!(
        ask(
            &replica,
            ModelRequest::Poll {
                id,
                from: 0,
                wait_ms: 5000
            }
        )
        .await,
        Ok(ModelAnswer::Tokens { .. })
    ));
    replica.stop(None);
    parent.stop(None);
}

#[tokio::test]
async fn other_kinds_say_they_are_not_model_replicas() {
    for kind in [Kind::Echo, Kind::Spin] {
        let (replica, parent) = spawn(kind, "").await;
        let reply = ask(&replica, ModelRequest::Cancel { id: 1 }).await;
        match reply {
            Err(ModelFailure::Invalid(why)) => {
                assert!(why.contains("is not a model replica"), "{kind}: {why}")
            }
            other => panic!("{kind}: {other:?}"),
        }
        replica.stop(None);
        parent.stop(None);
    }
}

#[tokio::test]
async fn a_missing_model_file_fails_the_start_and_says_where() {
    let (parent, _) = Actor::spawn(None, Parent, ()).await.expect("parent starts");
    let ctx = ReplicaContext {
        actor_id: "no-model".into(),
        deployment: "model".into(),
        generation: 1,
        devices: vec![],
        config: String::new(),
        data_dir: std::env::temp_dir(),
        models_dir: std::env::temp_dir().join("arbor-no-models-here"),
        scope: String::new(),
        control: arbor_actors::control::memory::MemoryControl::new().control(),
    };
    let err = spawn_replica(Kind::Model, ctx, parent.get_cell())
        .await
        .expect_err("no model, no replica")
        .to_string();
    assert!(err.contains("arbor-no-models-here"), "{err}");
    assert!(err.contains("scripts/fetch-models.sh"), "{err}");
    parent.stop(None);
}

/// A replica of deployment "model" named `actor_id`, in the group of its deployment in pg
/// `scope` (as the node agent puts it once it runs).
async fn replica_in(scope: &str, actor_id: &str) -> (ActorRef<ReplicaMsg>, ActorRef<()>) {
    let (parent, _) = Actor::spawn(None, Parent, ()).await.expect("parent starts");
    let ctx = ReplicaContext {
        actor_id: actor_id.into(),
        deployment: "model".into(),
        generation: 1,
        devices: vec![],
        config: "{}".into(),
        data_dir: std::env::temp_dir(),
        models_dir: model_dir(),
        scope: scope.into(),
        control: arbor_actors::control::memory::MemoryControl::new().control(),
    };
    let replica = spawn_replica(Kind::Model, ctx, parent.get_cell())
        .await
        .expect("replica starts");
    ractor::pg::join_scoped(
        scope.into(),
        arbor_actors::replica::deployment_group("model"),
        vec![replica.get_cell()],
    );
    (replica, parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_continues_on_another_replica_when_its_own_dies_mid_stream() {
    const SCOPE: &str = "model-failover-test";
    let a = replica_in(SCOPE, "model/0").await;
    let b = replica_in(SCOPE, "model/1").await;
    let spec = GenerateSpec::chat(
        vec![ChatMessage {
            role: ChatRole::User,
            content: "Tell me a long story about a dragon.".into(),
        }],
        40,
    );
    let (whole, _) =
        stream::generate_failover(SCOPE, "model", spec.clone(), |_| {}, || false, POLL)
            .await
            .expect("generates");

    // Again, and once three pieces have arrived, the replica that generates them dies.
    let (tx, first_pieces) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(async move {
        let mut pieces: Vec<String> = Vec::new();
        let mut tx = Some(tx);
        let result = stream::generate_failover(
            SCOPE,
            "model",
            spec,
            |t| {
                pieces.push(t.to_owned());
                if pieces.len() == 3
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            },
            || false,
            POLL,
        )
        .await;
        (result, pieces)
    });
    first_pieces.await.expect("three pieces stream");
    // Both are asked before either is stopped: once one stops, the generation goes on on the
    // other, which would then count too.
    let mut generating = Vec::new();
    for (replica, _) in [&a, &b] {
        if stats(replica).await["generations"].as_u64() > Some(0) {
            generating.push(replica);
        }
    }
    assert_eq!(generating.len(), 1, "exactly one replica was generating");
    generating[0].stop(Some("killed by the test".into()));
    let (result, pieces) = run.await.unwrap();
    let (text, finished) = result.expect("the other replica finishes it");
    assert_eq!(text, whole, "greedy decoding: the same answer");
    assert_eq!(pieces.concat(), whole, "no piece streamed twice or lost");
    assert_eq!(finished.reason, "max_tokens");
}
