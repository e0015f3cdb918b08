//! The kinds of actor a deployment can run, and how one replica of a kind is started.
//!
//! Replicas are unnamed actors: ractor's registry is process-global, and several nodes may
//! share one process in tests. They are found through their deployment's process group, which
//! the node agent joins them to once they have started; a replica joins nothing itself.

mod coordinator;
mod echo;
mod embedder;
pub mod model;
mod partition;
mod spin;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use serde::de::DeserializeOwned;

use crate::replica::ReplicaMsg;

/// A replica's own handle, as its kind sees it.
pub type Me = ActorRef<ReplicaMsg>;
/// What a kind's [`ReplicaKind::start`] returns: its state, or why it could not start.
pub type Started<S> = Result<S, ActorProcessingErr>;
/// What a kind's message handling returns: an error stops the replica (its supervisor decides
/// whether to restart it).
pub type Handled = Result<(), ActorProcessingErr>;

/// What a kind of replica does; [`Replica`] makes it a ractor actor, so the actor's skeleton
/// (its message, its arguments, the trait's signatures) is written once for every kind.
pub trait ReplicaKind: Send + Sync + Sized + 'static {
    type State: Send + 'static;

    /// Loads the replica (its config, model or data) before it reports running.
    fn start(
        &self,
        myself: Me,
        ctx: ReplicaContext,
    ) -> impl Future<Output = Started<Self::State>> + Send;

    /// Once started: work that needs the running actor (a partition's recovery).
    fn started(&self, myself: Me, state: &mut Self::State) -> impl Future<Output = Handled> + Send {
        let _ = (myself, state);
        async { Ok(()) }
    }

    fn handle(
        &self,
        msg: ReplicaMsg,
        state: &mut Self::State,
    ) -> impl Future<Output = Handled> + Send;

    /// When stopped, for whatever reason.
    fn stopped(&self, state: &mut Self::State) -> impl Future<Output = Handled> + Send {
        let _ = state;
        async { Ok(()) }
    }
}

/// A replica of kind `K`, as ractor runs it.
pub struct Replica<K>(pub K);

impl<K: ReplicaKind> Actor for Replica<K> {
    type Msg = ReplicaMsg;
    type State = K::State;
    type Arguments = ReplicaContext;

    async fn pre_start(&self, myself: Me, ctx: ReplicaContext) -> Started<K::State> {
        self.0.start(myself, ctx).await
    }

    async fn post_start(&self, myself: Me, state: &mut K::State) -> Handled {
        self.0.started(myself, state).await
    }

    async fn handle(&self, _myself: Me, msg: ReplicaMsg, state: &mut K::State) -> Handled {
        self.0.handle(msg, state).await
    }

    async fn post_stop(&self, _myself: Me, state: &mut K::State) -> Handled {
        self.0.stopped(state).await
    }
}

pub use coordinator::CoordinatorReplica;
pub use echo::{EchoConfig, EchoReplica};
pub use embedder::{
    DeviceChoice, EmbedderConfig, EmbedderReplica, EmbedderStats, MAX_TEXTS_PER_REQUEST,
};
pub use model::{ModelConfig, ModelReplica};
pub use partition::{PartitionConfig, PartitionReplica};
pub use spin::{MAX_SPIN_MS, SpinReplica, SpinRequest};

/// A kind of actor that a deployment may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Replies with what it got: for checking routing, supervision and placement.
    Echo,
    /// Burns CPU for a requested time: for checking load spreading and concurrency.
    Spin,
    /// An embedder shard: all-MiniLM-L6-v2 with dynamic batching, on the CPU or a GPU.
    Embedder,
    /// One replica of one partition of a vector collection: stores rows, answers top-k.
    VectorPartition,
    /// An LLM replica (SmolLM2) that streams generated text, batching concurrent requests.
    Model,
    /// Ingest and query over one collection: embeds, routes to partitions, merges top-k.
    RetrievalCoordinator,
}

/// The resources one replica of a kind asks for when its deployment file leaves
/// `[resources]` out. A plain pair, so that this crate does not depend on the scheduler's
/// resource type; the node turns it into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindResources {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Echo,
        Kind::Spin,
        Kind::Embedder,
        Kind::VectorPartition,
        Kind::Model,
        Kind::RetrievalCoordinator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Spin => "spin",
            Kind::Embedder => "embedder",
            Kind::VectorPartition => "vector_partition",
            Kind::Model => "model",
            Kind::RetrievalCoordinator => "retrieval_coordinator",
        }
    }

    /// What a replica of this kind is given when its deployment file leaves `[resources]`
    /// out: echo is nearly idle; spin keeps a core busy per request; the embedder keeps one
    /// core busy per batch and holds the model (about 90 MB of weights, plus activations and
    /// the tokenizer); a partition holds its vectors in memory (size it for the data: 1M x 384
    /// vectors take about 1.9 GB). A GPU is never a default: a deployment that wants one says
    /// so.
    pub fn default_resources(self) -> KindResources {
        let (cpu_millicores, memory_bytes) = match self {
            Kind::Echo => (100, 64 * MIB),
            Kind::Spin => (1000, 64 * MIB),
            Kind::Embedder => (1000, 512 * MIB),
            Kind::VectorPartition => (250, 512 * MIB),
            Kind::Model => (2000, 1024 * MIB),
            Kind::RetrievalCoordinator => (250, 128 * MIB),
        };
        KindResources {
            cpu_millicores,
            memory_bytes,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that no kind has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown actor kind {name:?}; known kinds: {known}")]
pub struct UnknownKind {
    pub name: String,
    known: String,
}

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind {
                name: s.to_string(),
                known: Kind::ALL.map(Kind::as_str).join(", "),
            })
    }
}

/// What a replica knows about itself when it starts.
#[derive(Debug, Clone)]
pub struct ReplicaContext {
    pub actor_id: String,
    pub deployment: String,
    /// Changes whenever the control plane replaces the actor (new config, moved, ...).
    pub generation: u64,
    /// Accelerator indices assigned to this replica on its node.
    pub devices: Vec<u32>,
    /// The kind's configuration as JSON text; `""` or `"{}"` means the defaults.
    pub config: String,
    /// The node's folder for actor data; a kind that keeps files makes its own subfolder.
    pub data_dir: PathBuf,
    /// Where model files are (see `arbor_kernels::models`).
    pub models_dir: PathBuf,
    /// The process-group scope of the cluster, for kinds that call other deployments (a
    /// retrieval coordinator reaches embedders and partitions through it).
    pub scope: String,
    /// The control plane as this node knows it (partition replica sets, the node's lease).
    pub control: crate::control::Control,
}

/// Starts one replica of `kind` as a linked child of `supervisor`, and returns once it is
/// ready (its `pre_start` has finished) or has failed to start.
pub async fn spawn_replica(
    kind: Kind,
    ctx: ReplicaContext,
    supervisor: ActorCell,
) -> Result<ActorRef<ReplicaMsg>, SpawnErr> {
    let spawned = match kind {
        Kind::Echo => Actor::spawn_linked(None, Replica(EchoReplica), ctx, supervisor).await,
        Kind::Spin => Actor::spawn_linked(None, Replica(SpinReplica), ctx, supervisor).await,
        Kind::Embedder => {
            Actor::spawn_linked(None, Replica(EmbedderReplica), ctx, supervisor).await
        }
        Kind::VectorPartition => {
            Actor::spawn_linked(None, Replica(PartitionReplica), ctx, supervisor).await
        }
        Kind::Model => Actor::spawn_linked(None, Replica(ModelReplica), ctx, supervisor).await,
        Kind::RetrievalCoordinator => {
            Actor::spawn_linked(None, Replica(CoordinatorReplica), ctx, supervisor).await
        }
    };
    spawned.map(|(actor, _handle)| actor)
}

/// Checks a kind's configuration as a deployment is submitted, before anything is recorded:
/// the parse and the bounds a replica applies when it starts, without loading anything. A
/// config that passes here can still fail at start only for what the node has (a model file,
/// a GPU), never for what the config says.
pub fn check_config(kind: Kind, config: &str) -> Result<(), String> {
    use crate::retrieval::CollectionRoute;
    fn parse<C: DeserializeOwned + Default>(config: &str) -> Result<C, String> {
        if config.trim().is_empty() {
            return Ok(C::default());
        }
        serde_json::from_str(config).map_err(|e| e.to_string())
    }
    fn required<C: DeserializeOwned>(config: &str, needed: &str) -> Result<C, String> {
        if config.trim().is_empty() {
            return Err(format!("it needs a config with {needed}"));
        }
        serde_json::from_str(config).map_err(|e| e.to_string())
    }
    let checked = match kind {
        Kind::Echo => parse::<echo::EchoConfig>(config).map(drop),
        Kind::Spin => parse::<spin::SpinConfig>(config).map(drop),
        Kind::Embedder => parse::<embedder::EmbedderConfig>(config)?.check(),
        Kind::Model => parse::<model::ModelConfig>(config)?.check(),
        Kind::VectorPartition => {
            required::<partition::PartitionConfig>(config, partition::NEEDED)?.validate()
        }
        Kind::RetrievalCoordinator => {
            required::<CollectionRoute>(config, "\"collection\"")?.validate()
        }
    };
    checked.map_err(|e| format!("bad config for kind {kind}: {e}"))
}

/// Positions per sequence a model replica is checked to have memory for: the weights and
/// `max_batch` caches of this many positions (or the context, if shorter) must fit.
pub const MODEL_CHECKED_POSITIONS: usize = 2048;

/// Checks the model a deployment of `kind` names against this node's models dir, as the
/// deployment is submitted: the file is there, of an architecture and types the kernels run,
/// and fits in `memory` bytes. Kinds without a model pass. `config` has passed
/// [`check_config`].
pub fn check_model_files(
    kind: Kind,
    config: &str,
    memory: u64,
    models_dir: &std::path::Path,
) -> Result<(), String> {
    fn parse<C: DeserializeOwned + Default>(config: &str) -> Result<C, String> {
        if config.trim().is_empty() {
            return Ok(C::default());
        }
        serde_json::from_str(config).map_err(|e| e.to_string())
    }
    use arbor_scheduler::resources::Bytes;
    let fits = |what: &str, needed: u64| {
        if needed > memory {
            Err(format!(
                "{what} needs {} of memory; the deployment's resources give {}: raise memory",
                Bytes(needed.next_multiple_of(1 << 20)),
                Bytes(memory)
            ))
        } else {
            Ok(())
        }
    };
    match kind {
        Kind::Model => {
            let config: model::ModelConfig = parse(config)?;
            let path = config.model_path(models_dir);
            let summary = arbor_kernels::llama::Llama::inspect(&path)
                .map_err(|e| format!("model {}: {e}", path.display()))?;
            fits(
                &format!(
                    "model {} with {} sequences of {MODEL_CHECKED_POSITIONS} positions",
                    path.display(),
                    config.max_batch
                ),
                summary.memory_needed(config.max_batch, MODEL_CHECKED_POSITIONS),
            )
        }
        Kind::Embedder => {
            let config: embedder::EmbedderConfig = parse(config)?;
            let dir = config.model_dir(models_dir);
            let summary = arbor_kernels::embed::Embedder::inspect(&dir)
                .map_err(|e| format!("model {}: {e}", dir.display()))?;
            fits(&format!("model {}", dir.display()), summary.weight_bytes)
        }
        Kind::Echo | Kind::Spin | Kind::VectorPartition | Kind::RetrievalCoordinator => Ok(()),
    }
}

/// Parses a kind's JSON configuration; `""` (or whitespace) means the defaults. The error
/// names the replica and, through serde_json, the field at fault.
pub(crate) fn parse_config<C: DeserializeOwned + Default>(
    kind: Kind,
    ctx: &ReplicaContext,
) -> Result<C, String> {
    if ctx.config.trim().is_empty() {
        return Ok(C::default());
    }
    serde_json::from_str(&ctx.config).map_err(|e| {
        format!(
            "bad config for {kind} actor {:?} (deployment {:?}): {e}",
            ctx.actor_id, ctx.deployment
        )
    })
}

/// Parses a kind's JSON configuration that has required fields: `""` is an error that says
/// which fields are needed.
pub(crate) fn parse_required_config<C: DeserializeOwned>(
    kind: Kind,
    ctx: &ReplicaContext,
    needed: &str,
) -> Result<C, String> {
    let bad = |e: &dyn fmt::Display| {
        format!(
            "bad config for {kind} actor {:?} (deployment {:?}): {e}",
            ctx.actor_id, ctx.deployment
        )
    };
    if ctx.config.trim().is_empty() {
        return Err(bad(&format!("a {kind} needs a config with {needed}")));
    }
    serde_json::from_str(&ctx.config).map_err(|e| bad(&e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ctx(config: &str) -> ReplicaContext {
        ReplicaContext {
            actor_id: "a1".into(),
            deployment: "d".into(),
            generation: 1,
            devices: vec![],
            config: config.into(),
            data_dir: std::env::temp_dir(),
            models_dir: std::env::temp_dir(),
            scope: String::new(),
            control: crate::control::memory::MemoryControl::new().control(),
        }
    }

    #[test]
    fn kinds_parse_and_print() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let err = "foo".parse::<Kind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown actor kind \"foo\"; known kinds: echo, spin, embedder, vector_partition, model, retrieval_coordinator"
        );
    }

    #[test]
    fn every_kind_has_default_resources() {
        for kind in Kind::ALL {
            let r = kind.default_resources();
            assert!(r.cpu_millicores > 0 && r.memory_bytes > 0, "{kind}: {r:?}");
        }
        assert_eq!(
            Kind::Embedder.default_resources(),
            KindResources {
                cpu_millicores: 1000,
                memory_bytes: 512 * MIB
            }
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let c: EchoConfig = parse_config(Kind::Echo, &ctx("")).unwrap();
        assert_eq!(c, EchoConfig::default());
        let c: EchoConfig = parse_config(Kind::Echo, &ctx("{}")).unwrap();
        assert_eq!(c, EchoConfig::default());
        let err =
            parse_config::<EchoConfig>(Kind::Echo, &ctx(r#"{"fail_on_stat": "x"}"#)).unwrap_err();
        assert!(err.contains("fail_on_stat"), "{err}");
        let err =
            parse_config::<EchoConfig>(Kind::Echo, &ctx(r#"{"start_delay_ms": "x"}"#)).unwrap_err();
        assert!(err.contains("bad config for echo"), "{err}");
    }
}
