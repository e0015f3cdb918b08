//! `embedder`: an embedder shard. Turns texts into all-MiniLM-L6-v2 sentence vectors (384
//! floats, unit length), batching concurrent requests dynamically.
//!
//! Config (every field optional):
//! ```json
//! {"device": "cpu" | "cuda",
//!  "batching": {"max_batch": 32, "max_wait_ms": 0, "token_budget": 8192, "queue_capacity": 1024}}
//! ```
//! `device` defaults to the first GPU assigned to the replica, or the CPU when none is;
//! `"cuda"` with no GPU assigned is a start failure, as the scheduler did not account for one.
//!
//! **Readiness.** The model loads in `pre_start` (on tokio's blocking pool), so the node agent
//! reports the replica Running, and joins it to its deployment's group, only once it can
//! answer. A model that does not load is a start failure that says where it looked.
//!
//! **Batching.** The actor only checks and queues requests; one worker thread owns the model
//! and runs every due batch (see [`crate::batching`]) as one `embed` call, then hands each
//! request its own vectors. The actor's mailbox never waits on the model, so a full queue is
//! answered [`EmbedFailure::Overloaded`] at once.
//!
//! **Isolation.** One request never fails the others it is batched with: a request is checked
//! on its own before it is queued (no texts, more than [`MAX_TEXTS_PER_REQUEST`], an empty
//! or blank text, which `Embedder::embed` would refuse for the whole call), and if `embed`
//! still fails for a whole batch, its requests are run again one by one so that only the bad
//! one gets the error. A text longer than the model's 256 word pieces is not an error:
//! `Embedder::embed` truncates it (as sentence-transformers does), so its vector reflects its
//! first 256 word pieces only.
//!
//! Besides [`ReplicaMsg::Embed`], the generic [`ReplicaMsg::Call`] (what `arbor call` sends)
//! takes JSON: `{"texts": ["..."]}` answers `{"dim": 384, "vectors": [[...]]}`, and
//! `{"stats": true}` answers the counters of [`EmbedderStats`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use arbor_kernels::Device;
use arbor_kernels::embed::Embedder;
use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Handled, Kind, Me, ReplicaContext, ReplicaKind, Started, parse_config};
use crate::batching::{BatchPolicy, BatchQueue, Cost, Due};
use crate::replica::{
    CallFailure, CallReply, EmbedFailure, EmbedReply, EmbedRequest, EmbedResult, ReplicaMsg,
    decode_request,
};
use crate::wire::Wire;

/// The most texts one request may carry; split larger jobs into several requests (their
/// replies then stay well under the wire's payload limit: 1024 × 384 floats is 1.5 MiB).
pub const MAX_TEXTS_PER_REQUEST: usize = 1024;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    /// The first GPU the scheduler assigned to this replica.
    Cuda,
}

/// `embedder`'s configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    /// The model's folder under the models dir (safetensors, `tokenizer.json`, config and
    /// sentence-transformers' pooling files). Unset: all-MiniLM-L6-v2.
    #[serde(default)]
    pub model: Option<String>,
    /// Unset: the first assigned GPU if there is one, else the CPU.
    #[serde(default)]
    pub device: Option<DeviceChoice>,
    #[serde(default)]
    pub batching: BatchPolicy,
}

impl EmbedderConfig {
    /// What can be checked without the node: the batching bounds and the model's name.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(name) = &self.model {
            arbor_kernels::models::check_name(name)?;
        }
        self.batching.validate()
    }

    /// The model's folder on a node with this models dir.
    pub fn model_dir(&self, models_dir: &std::path::Path) -> std::path::PathBuf {
        arbor_kernels::models::embedder_dir(models_dir, self.model.as_deref())
    }

    /// The device to load the model onto, given the GPUs assigned to the replica.
    pub fn device(&self, assigned: &[u32]) -> Result<Device, String> {
        let first_gpu = assigned.first().map(|&i| Device::Cuda(i as usize));
        match (self.device, first_gpu) {
            (Some(DeviceChoice::Cpu), _) | (None, None) => Ok(Device::Cpu),
            (Some(DeviceChoice::Cuda) | None, Some(gpu)) => Ok(gpu),
            (Some(DeviceChoice::Cuda), None) => Err(
                "device \"cuda\" asked for, but no GPU is assigned to this replica: request one \
                 in the deployment's resources (gpu = 1), or use device \"cpu\""
                    .to_string(),
            ),
        }
    }
}

/// What a replica has done since it started; `{"stats": true}` through `Call` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderStats {
    /// Batches the worker took from the queue.
    pub batches: u64,
    /// Requests in those batches (answered with vectors or a model error).
    pub requests: u64,
    /// Texts in those requests.
    pub texts: u64,
    /// Most requests in one batch.
    pub largest_batch: u64,
    /// Requests refused because the queue was full.
    pub overloaded: u64,
    /// Requests refused as invalid before queuing.
    pub invalid: u64,
    /// Requests answered with a model error.
    pub model_failures: u64,
    /// Requests waiting now.
    pub queued: u64,
}

/// The model as the worker uses it; a trait so that tests can put a failing model in.
trait Encoder: Send + Sync + 'static {
    fn dim(&self) -> usize;
    fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, String>;
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
}

impl Encoder for Embedder {
    fn dim(&self) -> usize {
        Embedder::dim(self)
    }

    fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, String> {
        Embedder::count_tokens(self, texts).map_err(|e| e.to_string())
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.embed(texts).map_err(|e| e.to_string())
    }
}

/// Where a request's answer goes: an `Embed` caller gets the typed reply, a `Call` caller
/// the JSON one.
enum Replier {
    Embed(RpcReplyPort<Wire<EmbedReply>>),
    Call(RpcReplyPort<Wire<CallReply>>),
}

#[derive(Serialize)]
struct JsonVectors<'a> {
    dim: u32,
    vectors: &'a [Vec<f32>],
}

impl Replier {
    /// Sends the answer; a caller that gave up (timed out) is not an error.
    fn send(self, reply: EmbedReply) {
        match self {
            Replier::Embed(port) => {
                let _ = port.send(Wire::new(reply));
            }
            Replier::Call(port) => {
                let answer = match reply {
                    Ok(r) => serde_json::to_vec(&JsonVectors {
                        dim: r.dim,
                        vectors: &r.vectors,
                    })
                    .map_err(|e| {
                        CallFailure::Failed(format!("could not encode the vectors as JSON: {e}"))
                    }),
                    Err(failure) => Err(CallFailure::coded(&failure)),
                };
                let _ = port.send(Wire::new(answer));
            }
        }
    }
}

/// One queued request.
struct Job {
    texts: Vec<String>,
    reply: Replier,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    texts: AtomicU64,
    largest_batch: AtomicU64,
    overloaded: AtomicU64,
    invalid: AtomicU64,
    model_failures: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

struct Pending {
    queue: BatchQueue<Job>,
    /// Set when the replica stops: the worker exits and nothing more is queued.
    closed: bool,
}

/// The deployment's series on `/metrics`: texts embedded, batch sizes, requests queued.
struct Meters {
    texts: metrics::Counter,
    batch_size: metrics::Histogram,
    queued: metrics::Gauge,
}

impl Meters {
    fn of(deployment: &str) -> Meters {
        let d = deployment.to_owned();
        Meters {
            texts: metrics::counter!("arbor_embedder_texts_total", "deployment" => d.clone()),
            batch_size: metrics::histogram!("arbor_embedder_batch_size", "deployment" => d.clone()),
            queued: metrics::gauge!("arbor_deployment_queue_depth", "deployment" => d),
        }
    }
}

/// What the actor and its worker share.
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when a request is queued or the replica stops.
    wake: Condvar,
    counters: Counters,
    meters: Meters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // The queue is consistent between calls: one a panic interrupted is still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the worker after its current batch. Queued requests are dropped unanswered, so
    /// their callers see the replica gone (and a router tries another replica) rather than
    /// an application error.
    fn close(&self) {
        let dropped = {
            let mut pending = self.lock();
            pending.closed = true;
            let mut dropped = Vec::new();
            while !pending.queue.is_empty() {
                dropped.extend(pending.queue.take_batch());
            }
            dropped
        };
        drop(dropped);
        self.wake.notify_all();
    }

    fn stats(&self) -> EmbedderStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EmbedderStats {
            batches: get(&c.batches),
            requests: get(&c.requests),
            texts: get(&c.texts),
            largest_batch: get(&c.largest_batch),
            overloaded: get(&c.overloaded),
            invalid: get(&c.invalid),
            model_failures: get(&c.model_failures),
            queued: self.lock().queue.len() as u64,
        }
    }
}

/// Checks one request on its own and says what it costs a batch.
fn check_request(encoder: &dyn Encoder, texts: &[String]) -> Result<Cost, String> {
    if texts.is_empty() {
        return Err("no texts: an embed request needs at least one".into());
    }
    if texts.len() > MAX_TEXTS_PER_REQUEST {
        return Err(format!(
            "{} texts in one request; at most {MAX_TEXTS_PER_REQUEST} are allowed: split it",
            texts.len()
        ));
    }
    // The same test `Embedder::embed` applies to the whole call: done here, it fails only
    // this request.
    if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(format!(
            "text {index} is empty or blank: it has no meaning to embed"
        ));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = encoder
        .count_tokens(&refs)
        .map_err(|e| format!("cannot tokenize: {e}"))?;
    Ok(Cost {
        texts: texts.len(),
        tokens: tokens.iter().sum(),
    })
}

/// Embeds one batch and answers each of its requests. When the whole batch fails, its
/// requests are tried one by one, so only the one at fault gets the error.
fn serve_batch(encoder: &dyn Encoder, batch: Vec<Job>, counters: &Counters) {
    let dim = u32::try_from(encoder.dim()).unwrap_or(u32::MAX);
    bump(&counters.batches, 1);
    bump(&counters.requests, batch.len());
    bump(
        &counters.texts,
        batch.iter().map(|j| j.texts.len()).sum::<usize>(),
    );
    counters
        .largest_batch
        .fetch_max(batch.len() as u64, Ordering::Relaxed);

    let run = |jobs: &[Job]| -> Result<Vec<Vec<f32>>, String> {
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let vectors = encoder.encode(&texts)?;
        if vectors.len() != texts.len() {
            return Err(format!(
                "{} vectors for {} texts",
                vectors.len(),
                texts.len()
            ));
        }
        Ok(vectors)
    };
    let answer = |job: Job, reply: EmbedReply| {
        if reply.is_err() {
            bump(&counters.model_failures, 1);
        }
        job.reply.send(reply);
    };

    match run(&batch) {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for job in batch {
                let own: Vec<Vec<f32>> = vectors.by_ref().take(job.texts.len()).collect();
                answer(job, Ok(EmbedResult { vectors: own, dim }));
            }
        }
        Err(why) if batch.len() == 1 => {
            for job in batch {
                answer(job, Err(EmbedFailure::Model(why.clone())));
            }
        }
        Err(why) => {
            warn!(
                requests = batch.len(),
                "batch failed ({why}); retrying its requests one by one"
            );
            for job in batch {
                let reply = run(std::slice::from_ref(&job))
                    .map(|vectors| EmbedResult { vectors, dim })
                    .map_err(EmbedFailure::Model);
                answer(job, reply);
            }
        }
    }
}

/// The worker: waits until a batch is due, runs it, and again, until the replica stops.
fn work(shared: &Shared, encoder: &dyn Encoder) {
    loop {
        let batch = {
            let mut pending = shared.lock();
            loop {
                if pending.closed {
                    return;
                }
                let now = Instant::now();
                pending = match pending.queue.due(now) {
                    Due::Now => {
                        let batch = pending.queue.take_batch();
                        shared.meters.queued.set(pending.queue.len() as f64);
                        break batch;
                    }
                    Due::At(when) => {
                        let wait = when.saturating_duration_since(now);
                        shared
                            .wake
                            .wait_timeout(pending, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    Due::Idle => shared
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner),
                };
            }
        };
        let texts: usize = batch.iter().map(|j| j.texts.len()).sum();
        shared.meters.texts.increment(texts as u64);
        shared.meters.batch_size.record(texts as f64);
        serve_batch(encoder, batch, &shared.counters);
    }
}

/// Starts the worker thread. Should it panic (the model did), the requests in its batch are
/// dropped unanswered, the queue is closed and the replica stopped, so that the node agent
/// starts a fresh one rather than keeping a replica that accepts work it never does.
fn start_worker(
    name: String,
    shared: Arc<Shared>,
    encoder: Arc<dyn Encoder>,
    replica: ActorRef<ReplicaMsg>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| work(&shared, encoder.as_ref())));
        if outcome.is_err() {
            shared.close();
            replica.stop(Some("the embedding worker panicked".into()));
        }
    })?;
    Ok(())
}

/// A `Call` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallPayload {
    #[serde(default)]
    texts: Option<Vec<String>>,
    #[serde(default)]
    stats: bool,
}

enum CallAsk {
    Embed(Vec<String>),
    Stats,
}

fn parse_call(payload: &[u8]) -> Result<CallAsk, CallFailure> {
    const USAGE: &str = "an embedder payload is {\"texts\": [\"...\", ...]} or {\"stats\": true}";
    let parsed: CallPayload = serde_json::from_slice(payload)
        .map_err(|e| CallFailure::Invalid(format!("{USAGE}; got: {e}")))?;
    match parsed {
        CallPayload {
            texts: Some(texts),
            stats: false,
        } => Ok(CallAsk::Embed(texts)),
        CallPayload {
            texts: None,
            stats: true,
        } => Ok(CallAsk::Stats),
        _ => Err(CallFailure::Invalid(USAGE.to_string())),
    }
}

/// The `embedder` actor.
pub struct EmbedderReplica;

/// A running embedder: its model, and the queue its worker drains. Dropping it (the actor
/// stopped or was killed) stops the worker.
pub struct EmbedderState {
    ctx: ReplicaContext,
    encoder: Arc<dyn Encoder>,
    shared: Arc<Shared>,
}

impl Drop for EmbedderState {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl EmbedderState {
    /// Checks a request and queues it, or answers it at once (invalid, overloaded).
    fn submit(&self, texts: Vec<String>, reply: Replier) {
        let counters = &self.shared.counters;
        let cost = match check_request(self.encoder.as_ref(), &texts) {
            Ok(cost) => cost,
            Err(why) => {
                bump(&counters.invalid, 1);
                reply.send(Err(EmbedFailure::Invalid(why)));
                return;
            }
        };
        let offered = {
            let mut pending = self.shared.lock();
            if pending.closed {
                // Only after the worker died; the actor is being stopped.
                Some((
                    reply,
                    EmbedFailure::Model("the embedding worker has stopped".into()),
                ))
            } else {
                match pending
                    .queue
                    .offer(Job { texts, reply }, cost, Instant::now())
                {
                    Ok(()) => {
                        let queued = pending.queue.len() as f64;
                        self.shared.meters.queued.set(queued);
                        None
                    }
                    Err(refused) => {
                        bump(&counters.overloaded, 1);
                        let queued = u32::try_from(refused.error.queued).unwrap_or(u32::MAX);
                        Some((refused.item.reply, EmbedFailure::Overloaded { queued }))
                    }
                }
            }
        };
        match offered {
            None => self.shared.wake.notify_one(),
            Some((reply, failure)) => reply.send(Err(failure)),
        }
    }

    fn stats_json(&self) -> CallReply {
        serde_json::to_vec(&self.shared.stats())
            .map_err(|e| CallFailure::Failed(format!("could not encode the stats: {e}")))
    }
}

impl ReplicaKind for EmbedderReplica {
    type State = EmbedderState;

    async fn start(&self, myself: Me, ctx: ReplicaContext) -> Started<Self::State> {
        let whose = format!(
            "embedder actor {:?} (deployment {:?})",
            ctx.actor_id, ctx.deployment
        );
        let config: EmbedderConfig = parse_config(Kind::Embedder, &ctx)?;
        config
            .check()
            .map_err(|e| format!("bad config for {whose}: {e}"))?;
        let device = config
            .device(&ctx.devices)
            .map_err(|e| format!("bad config for {whose}: {e}"))?;

        // Loading reads the weights and builds the model: not on an async worker thread.
        let dir = config.model_dir(&ctx.models_dir);
        let started = Instant::now();
        let embedder = {
            let file = dir.clone();
            tokio::task::spawn_blocking(move || Embedder::load_dir(&file, device))
                .await
                .map_err(|e| format!("{whose}: loading the model panicked: {e}"))?
                .map_err(|e| {
                    format!(
                        "{whose} could not load the model in {} onto {device}: {e}",
                        dir.display()
                    )
                })?
        };
        info!(actor_id = %ctx.actor_id, %device, model = %dir.display(), dim = embedder.dim(), elapsed = ?started.elapsed(), "embedder loaded");

        let encoder: Arc<dyn Encoder> = Arc::new(embedder);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                queue: BatchQueue::new(config.batching),
                closed: false,
            }),
            wake: Condvar::new(),
            counters: Counters::default(),
            meters: Meters::of(&ctx.deployment),
        });
        start_worker(
            format!("embed-{}", ctx.actor_id),
            shared.clone(),
            encoder.clone(),
            myself,
        )
        .map_err(|e| format!("{whose}: cannot start its worker thread: {e}"))?;
        Ok(EmbedderState {
            ctx,
            encoder,
            shared,
        })
    }

    async fn stopped(&self, state: &mut Self::State) -> Handled {
        state.shared.close();
        info!(actor_id = %state.ctx.actor_id, "embedder stopped");
        Ok(())
    }

    async fn handle(&self, msg: ReplicaMsg, state: &mut Self::State) -> Handled {
        match msg {
            ReplicaMsg::Embed(request, reply) => match request.into_inner() {
                Ok(EmbedRequest { texts }) => state.submit(texts, Replier::Embed(reply)),
                Err(e) => {
                    bump(&state.shared.counters.invalid, 1);
                    let _ = reply.send(Wire::new(Err(EmbedFailure::Invalid(format!(
                        "request rejected: {e}"
                    )))));
                }
            },
            ReplicaMsg::Call(request, reply) => {
                match decode_request(request).and_then(|r| parse_call(&r.payload)) {
                    Ok(CallAsk::Embed(texts)) => state.submit(texts, Replier::Call(reply)),
                    Ok(CallAsk::Stats) => {
                        let _ = reply.send(Wire::new(state.stats_json()));
                    }
                    Err(why) => {
                        let _ = reply.send(Wire::new(Err(why)));
                    }
                }
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(Kind::Embedder, &state.ctx.actor_id, other),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::ctx;

    /// A model that fails any call containing "poison", and gives text `t` the vector
    /// `[len(t), 1]`.
    struct Fake;

    impl Encoder for Fake {
        fn dim(&self) -> usize {
            2
        }
        fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, String> {
            Ok(texts.iter().map(|t| t.len()).collect())
        }
        fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
            if texts.contains(&"poison") {
                return Err("poisoned".into());
            }
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
    }

    type Rx = tokio::sync::oneshot::Receiver<Wire<EmbedReply>>;

    fn job(texts: &[&str]) -> (Job, Rx) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            reply: Replier::Embed(tx.into()),
        };
        (job, rx)
    }

    fn answer(mut rx: Rx) -> EmbedReply {
        rx.try_recv()
            .expect("answered")
            .into_inner()
            .expect("decodes")
    }

    #[test]
    fn each_request_gets_its_own_vectors() {
        let counters = Counters::default();
        let (a, ra) = job(&["x", "yy"]);
        let (b, rb) = job(&["zzz"]);
        serve_batch(&Fake, vec![a, b], &counters);
        assert_eq!(
            answer(ra).unwrap().vectors,
            vec![vec![1.0, 1.0], vec![2.0, 1.0]]
        );
        assert_eq!(
            answer(rb).unwrap(),
            EmbedResult {
                vectors: vec![vec![3.0, 1.0]],
                dim: 2
            }
        );
        assert_eq!(counters.largest_batch.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_failing_batch_is_retried_so_only_the_bad_request_fails() {
        let counters = Counters::default();
        let (a, ra) = job(&["ok"]);
        let (b, rb) = job(&["fine", "poison"]);
        let (c, rc) = job(&["also ok"]);
        serve_batch(&Fake, vec![a, b, c], &counters);
        assert!(answer(ra).is_ok());
        assert_eq!(answer(rb), Err(EmbedFailure::Model("poisoned".into())));
        assert_eq!(answer(rc).unwrap().vectors, vec![vec![7.0, 1.0]]);
        assert_eq!(counters.model_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn requests_are_checked_on_their_own() {
        let texts = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_request(&Fake, &texts(&["ab", "c"])),
            Ok(Cost {
                texts: 2,
                tokens: 3
            })
        );
        let err = check_request(&Fake, &[]).unwrap_err();
        assert!(err.contains("at least one"), "{err}");
        let err = check_request(&Fake, &texts(&["a", " \n"])).unwrap_err();
        assert!(err.contains("text 1 is empty"), "{err}");
        let many = vec!["a".to_string(); MAX_TEXTS_PER_REQUEST + 1];
        let err = check_request(&Fake, &many).unwrap_err();
        assert!(err.contains("at most 1024"), "{err}");
    }

    #[test]
    fn call_payloads() {
        assert!(matches!(
            parse_call(br#"{"texts": ["a", "b"]}"#),
            Ok(CallAsk::Embed(t)) if t == ["a", "b"]
        ));
        assert!(matches!(
            parse_call(br#"{"stats": true}"#),
            Ok(CallAsk::Stats)
        ));
        for bad in [
            &br#"{"text": ["a"]}"#[..],
            br#"{}"#,
            br#"{"texts": ["a"], "stats": true}"#,
            b"\xff",
            b"hello",
        ] {
            let err = parse_call(bad).err().expect("refused");
            assert!(matches!(err, CallFailure::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains("an embedder payload is"), "{err}");
        }
    }

    #[test]
    fn call_replies_are_json() {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        Replier::Call(tx.into()).send(Ok(EmbedResult {
            vectors: vec![vec![0.5, -1.0]],
            dim: 2,
        }));
        let json = rx.try_recv().unwrap().into_inner().unwrap().unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"dim":2,"vectors":[[0.5,-1.0]]}"#
        );
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        Replier::Call(tx.into()).send(Err(EmbedFailure::Overloaded { queued: 4 }));
        let err = rx.try_recv().unwrap().into_inner().unwrap().unwrap_err();
        assert!(matches!(err, CallFailure::Overloaded(_)), "{err:?}");
        assert!(
            err.to_string().contains("queue is full (4 requests"),
            "{err}"
        );
    }

    #[test]
    fn devices() {
        let parse = |json: &str| parse_config::<EmbedderConfig>(Kind::Embedder, &ctx(json));
        let none = parse("").unwrap();
        assert_eq!(none.device(&[]), Ok(Device::Cpu));
        assert_eq!(none.device(&[2, 3]), Ok(Device::Cuda(2)));
        let cpu = parse(r#"{"device": "cpu"}"#).unwrap();
        assert_eq!(cpu.device(&[2]), Ok(Device::Cpu));
        let cuda = parse(r#"{"device": "cuda"}"#).unwrap();
        assert_eq!(cuda.device(&[1]), Ok(Device::Cuda(1)));
        assert!(cuda.device(&[]).unwrap_err().contains("no GPU is assigned"));
        let err = parse(r#"{"device": "gpu"}"#).unwrap_err();
        assert!(
            err.contains("gpu") && err.contains("bad config for embedder"),
            "{err}"
        );
        let err = parse(r#"{"batching": {"max_batchez": 3}}"#).unwrap_err();
        assert!(err.contains("max_batchez"), "{err}");
    }

    #[test]
    fn the_worker_serves_due_batches_and_stops_when_closed() {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                queue: BatchQueue::new(BatchPolicy::default()),
                closed: false,
            }),
            wake: Condvar::new(),
            counters: Counters::default(),
            meters: Meters::of("test"),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::spawn(move || work(&shared, &Fake))
        };
        let (a, ra) = job(&["abc"]);
        shared
            .lock()
            .queue
            .offer(
                a,
                Cost {
                    texts: 1,
                    tokens: 3,
                },
                Instant::now(),
            )
            .ok()
            .expect("queued");
        shared.wake.notify_one();
        let reply = ra.blocking_recv().expect("answered").into_inner().unwrap();
        assert_eq!(reply.unwrap().vectors, vec![vec![3.0, 1.0]]);
        shared.close();
        worker.join().expect("worker exits");
        assert_eq!(shared.stats().batches, 1);
    }
}
