//! `model`: a replica of an LLM (a Llama-family GGUF: SmolLM2-135M-Instruct unless its config
//! names another) that streams generated text and batches concurrent requests.
//!
//! The replica is ready (its `pre_start` returns, so the node agent reports it Running) only
//! once the model is loaded. A worker thread owns the model and batches continuously (see
//! [`worker`]). The actor itself only validates, queues, and hands polls to tasks of their
//! own, so a slow model never delays its mailbox.
//!
//! Streaming is long polling ([`ModelRequest`]): ractor_cluster cannot carry an actor
//! reference in a message, so the replica cannot push tokens to a caller on another node.

mod protocol;
mod streams;
mod worker;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arbor_kernels::Device;
use arbor_kernels::llama::Llama;
use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Handled, Kind, Me, ReplicaContext, ReplicaKind, Started, parse_config};
use crate::replica::{CallFailure, CallReply, ReplicaMsg, decode_request};
use crate::wire::Wire;

pub use protocol::{
    ChatMessage, ChatRole, Finished, GenerateSpec, MAX_GENERATE_TOKENS, MAX_MESSAGES,
    MAX_POLL_WAIT_MS, MAX_PROMPT_BYTES, MAX_STOP_BYTES, MAX_STOPS, ModelAnswer, ModelFailure,
    ModelReply, ModelRequest, reason_name,
};
use streams::{Registry, Stream};
use worker::{Job, Queue, Stats};

/// Where a model replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    /// The first GPU assigned to the replica (GPU 0 when none is).
    Cuda,
}

/// `model`'s configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The GGUF file under the models dir (`.gguf` may be left out). Default: SmolLM2-135M.
    pub model: Option<String>,
    /// Default: CUDA on the first assigned device when the replica has devices, else CPU.
    pub device: Option<DeviceChoice>,
    /// The most sequences stepped together.
    pub max_batch: usize,
    /// The most requests waiting for a batch slot; beyond it, requests are refused at once.
    pub max_queue: usize,
    /// A generation that nobody polled for this long is cancelled and forgotten.
    pub idle_timeout_ms: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model: None,
            device: None,
            max_batch: 8,
            max_queue: 64,
            idle_timeout_ms: 30_000,
        }
    }
}

/// Bounds of the configuration, so that a typo cannot ask for a batch of a million.
pub const MAX_BATCH: usize = 64;
pub const MAX_QUEUE: usize = 4096;

impl ModelConfig {
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(name) = &self.model {
            arbor_kernels::models::check_name(name)?;
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(format!("max_batch must be 1 to {MAX_BATCH}"));
        }
        if !(1..=MAX_QUEUE).contains(&self.max_queue) {
            return Err(format!("max_queue must be 1 to {MAX_QUEUE}"));
        }
        if self.idle_timeout_ms < 10 {
            return Err("idle_timeout_ms must be 10 or more".into());
        }
        Ok(())
    }

    /// The device to load on, given the devices the placement assigned.
    pub fn device(&self, assigned: &[u32]) -> Device {
        let first = assigned.first().map_or(0, |&d| d as usize);
        match self.device {
            Some(DeviceChoice::Cpu) => Device::Cpu,
            Some(DeviceChoice::Cuda) => Device::Cuda(first),
            None if assigned.is_empty() => Device::Cpu,
            None => Device::Cuda(first),
        }
    }

    /// The model's file on a node with this models dir.
    pub fn model_path(&self, models_dir: &std::path::Path) -> std::path::PathBuf {
        arbor_kernels::models::gguf_path(models_dir, self.model.as_deref())
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// The generic `Call` payload: `{"stats": true}`, or a [`GenerateSpec`] in JSON (at least
/// `{"prompt": "..."}`), answered with the whole text once it is generated.
#[derive(Debug, Serialize)]
struct CallAnswer {
    text: String,
    finish_reason: String,
    prompt_tokens: u32,
    generated_tokens: u32,
}

/// The `model` actor.
pub struct ModelReplica;

/// A running model replica. Dropping it (the actor stopped or was killed) stops the worker
/// thread after its current step and aborts waiting polls.
pub struct ModelState {
    ctx: ReplicaContext,
    config: ModelConfig,
    queue: Arc<Queue>,
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    next_id: u64,
    tasks: JoinSet<()>,
}

impl Drop for ModelState {
    fn drop(&mut self) {
        self.queue.shutdown();
        self.tasks.abort_all();
    }
}

impl ReplicaKind for ModelReplica {
    type State = ModelState;

    async fn start(&self, _myself: Me, ctx: ReplicaContext) -> Started<Self::State> {
        let config: ModelConfig = parse_config(Kind::Model, &ctx)?;
        config
            .check()
            .map_err(|e| format!("bad config for model actor {:?}: {e}", ctx.actor_id))?;
        let device = config.device(&ctx.devices);
        let path = config.model_path(&ctx.models_dir);
        let llama = {
            let file = path.clone();
            tokio::task::spawn_blocking(move || Llama::load(&file, device))
                .await
                .map_err(|e| format!("loading the model failed: {e}"))?
                .map_err(|e| {
                    format!(
                        "could not load the model from {} on {device}: {e} \
                         (run scripts/fetch-models.sh to fetch it)",
                        path.display()
                    )
                })?
        };
        let queue = Arc::new(Queue::default());
        let stats = Arc::new(Stats::default());
        {
            let (queue, stats, max_batch) = (queue.clone(), stats.clone(), config.max_batch);
            let meters = worker::Meters::of(&ctx.deployment);
            std::thread::Builder::new()
                .name(format!("model-{}", ctx.actor_id))
                .spawn(move || worker::run(llama, queue, stats, meters, max_batch))
                .map_err(|e| format!("could not start the model worker thread: {e}"))?;
        }
        let registry = Arc::new(Registry::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(reap_forever(
            registry.clone(),
            stats.clone(),
            config.idle_timeout(),
        ));
        tracing::info!(actor = %ctx.actor_id, %device, path = %path.display(), "model replica ready");
        Ok(ModelState {
            ctx,
            config,
            queue,
            registry,
            stats,
            // Ids start at a random point: a caller holding an id from a replica that was
            // restarted gets "unknown generation", not someone else's text.
            next_id: rand::random::<u64>() >> 1,
            tasks,
        })
    }

    async fn handle(&self, msg: ReplicaMsg, state: &mut Self::State) -> Handled {
        // Reap finished tasks so the set does not grow with every request.
        while state.tasks.try_join_next().is_some() {}
        match msg {
            ReplicaMsg::Model(request, reply) => match request.into_inner() {
                Ok(request) => state.model_request(request, reply),
                Err(e) => {
                    let why = ModelFailure::Invalid(format!("request rejected: {e}"));
                    let _ = reply.send(Wire::new(Err(why)));
                }
            },
            ReplicaMsg::Call(request, reply) => {
                let payload = decode_request(request).map(|r| r.payload);
                match payload {
                    Ok(payload) => state.call(&payload, reply),
                    Err(why) => {
                        let _ = reply.send(Wire::new(Err(why)));
                    }
                }
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(Kind::Model, &state.ctx.actor_id, other),
        }
        Ok(())
    }
}

impl ModelState {
    fn model_request(&mut self, request: ModelRequest, reply: RpcReplyPort<Wire<ModelReply>>) {
        match request {
            ModelRequest::Generate(spec) => {
                let answer = self.enqueue(spec).map(|(id, stream)| {
                    self.registry.insert(id, stream);
                    ModelAnswer::Started { id }
                });
                let _ = reply.send(Wire::new(answer));
            }
            ModelRequest::Poll { id, from, wait_ms } => {
                let Some(stream) = self.registry.get(id) else {
                    let _ = reply.send(Wire::new(Err(ModelFailure::UnknownGeneration(id))));
                    return;
                };
                let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_POLL_WAIT_MS)));
                let registry = self.registry.clone();
                self.tasks.spawn(async move {
                    let answer = stream.poll(id, from, wait).await;
                    // The answer that carries the end (or the failure) is the last one a
                    // caller needs: the buffer is freed now, not at the idle timeout.
                    if matches!(
                        answer,
                        Ok(ModelAnswer::Tokens {
                            finished: Some(_),
                            ..
                        }) | Err(ModelFailure::Model(_))
                    ) {
                        registry.remove(id);
                    }
                    let _ = reply.send(Wire::new(answer));
                });
            }
            ModelRequest::Cancel { id } => {
                let answer = match self.registry.get(id) {
                    Some(stream) => {
                        stream.cancel();
                        Ok(ModelAnswer::Cancelled)
                    }
                    None => Err(ModelFailure::UnknownGeneration(id)),
                };
                let _ = reply.send(Wire::new(answer));
            }
        }
    }

    /// Validates a spec and queues it for the worker; the id is the generation's.
    fn enqueue(&mut self, spec: GenerateSpec) -> Result<(u64, Arc<Stream>), ModelFailure> {
        let checked = protocol::validate(spec)?;
        let stream = Stream::new();
        let job = Job {
            checked,
            stream: stream.clone(),
            accepted: std::time::Instant::now(),
        };
        match self.queue.push(job, self.config.max_queue) {
            Ok(()) => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                Ok((id, stream))
            }
            Err(0) => Err(ModelFailure::Model("the model worker has stopped".into())),
            Err(queued) => Err(ModelFailure::Overloaded { queued }),
        }
    }

    /// The generic call: statistics, or a whole generation at once (for `arbor call`).
    fn call(&mut self, payload: &[u8], reply: RpcReplyPort<Wire<CallReply>>) {
        let send = |reply: RpcReplyPort<Wire<CallReply>>, answer: CallReply| {
            let _ = reply.send(Wire::new(answer));
        };
        let value: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return send(
                    reply,
                    Err(CallFailure::Invalid(format!(
                        "a model payload is JSON: {{\"prompt\": \"...\", \"max_tokens\": N}} \
                         or {{\"stats\": true}}; got: {e}"
                    ))),
                );
            }
        };
        if value.get("stats").is_some() {
            let stats = self.stats.snapshot(self.queue.len(), self.registry.len());
            let answer = serde_json::to_vec(&stats).map_err(|e| CallFailure::Failed(e.to_string()));
            return send(reply, answer);
        }
        let spec: GenerateSpec = match serde_json::from_value(value) {
            Ok(spec) => spec,
            Err(e) => {
                return send(
                    reply,
                    Err(CallFailure::Invalid(format!(
                        "invalid generate request: {e}"
                    ))),
                );
            }
        };
        let stream = match self.enqueue(spec) {
            Ok((_, stream)) => stream,
            Err(e) => return send(reply, Err(CallFailure::coded(&e))),
        };
        self.tasks.spawn(async move {
            let done = loop {
                // A caller that gave up (its call timed out) frees its batch slot.
                match tokio::time::timeout(Duration::from_secs(1), stream.wait_all()).await {
                    Ok(done) => break done,
                    Err(_) if reply.is_closed() => return stream.cancel(),
                    Err(_) => {}
                }
            };
            let answer = done.and_then(|(text, finished)| {
                serde_json::to_vec(&CallAnswer {
                    text,
                    finish_reason: finished.reason,
                    prompt_tokens: finished.prompt_tokens,
                    generated_tokens: finished.generated_tokens,
                })
                .map_err(|e| e.to_string())
            });
            let answer = answer.map_err(CallFailure::Failed);
            send(reply, answer);
        });
    }
}

/// Drops silent generations every quarter of the idle timeout (between 10 ms and 1 s).
async fn reap_forever(registry: Arc<Registry>, stats: Arc<Stats>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let abandoned = registry.reap(idle);
        if abandoned > 0 {
            tracing::info!(abandoned, "dropped generations nobody polled");
            stats
                .abandoned
                .fetch_add(abandoned as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::ctx;

    #[test]
    fn config_defaults_devices_and_bounds() {
        let c: ModelConfig = parse_config(Kind::Model, &ctx("")).unwrap();
        assert_eq!(c, ModelConfig::default());
        assert_eq!(c.device(&[]), Device::Cpu);
        assert_eq!(c.device(&[2, 3]), Device::Cuda(2));
        let c: ModelConfig = parse_config(Kind::Model, &ctx(r#"{"device": "cpu"}"#)).unwrap();
        assert_eq!(c.device(&[1]), Device::Cpu);
        let c: ModelConfig = parse_config(Kind::Model, &ctx(r#"{"device": "cuda"}"#)).unwrap();
        assert_eq!(c.device(&[]), Device::Cuda(0));
        let err = parse_config::<ModelConfig>(Kind::Model, &ctx(r#"{"batch": 4}"#)).unwrap_err();
        assert!(err.contains("batch"), "{err}");
        let c: ModelConfig = parse_config(Kind::Model, &ctx(r#"{"max_batch": 0}"#)).unwrap();
        assert!(c.check().unwrap_err().contains("max_batch"));
    }
}
