//! The coordinator: ingest and query over one collection's partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_kernels::topk::{Hit, Metric, merge};
use ractor::ActorCell;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chunk::{ChunkPolicy, chunks};
use super::hedge::HedgeBudget;
use super::route::{chunk_id, partition_of};
use crate::control::Control;
use crate::kinds::model::{ChatMessage, ChatRole, GenerateSpec};
use crate::partition::{
    MAX_GET_IDS, MetadataFilter, PartitionAnswer, PartitionFailure, PartitionReply,
    PartitionRequest, Rows, SearchHit, WriteOp, remote,
};
use crate::replica::{EmbedFailure, EmbedRequest, ReplicaMsg};
use crate::router::{CallError, Router};
use crate::wire::Wire;

mod export;
mod ingest;
mod query;
mod replicas;

use replicas::{answer_name, joined};

/// Texts per embed request: one embedder batch.
const EMBED_BATCH: usize = 32;
/// Records per upsert message: well under the 8 MiB payload limit for 384-dim vectors with
/// a chunk of text each.
const UPSERT_BATCH: usize = 512;
/// Ids per get message: at most `MAX_GET_IDS`, and fewer, so that the rows found (vectors and
/// all their text) stay well under the message limit.
const GET_BATCH: usize = if MAX_GET_IDS < 256 { MAX_GET_IDS } else { 256 };
/// Ids per delete message.
const DELETE_BATCH: usize = 8192;
/// How long a read (stored rows, stats) may take on one replica before the next is tried.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may take on the primary (its followers' deadline and a control-plane
/// commit included).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

pub use arbor_proto::partition_deployment;

/// What a coordinator serves and how it behaves. The collection's shape (partitions,
/// dimension, metric, embedder) is not here: the coordinator reads it from the control plane
/// ([`Shape`]), so that nobody repeats it and a collection created again under the same name
/// is served as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionRoute {
    pub collection: String,
    #[serde(default)]
    pub chunking: ChunkPolicy,
    /// How long one partition may take to answer a search before it counts as missing.
    #[serde(default = "search_timeout_ms")]
    pub search_timeout_ms: u64,
    /// A partition replica that has not answered after this long gets a twin request on
    /// another replica; the first answer wins.
    #[serde(default = "hedge_after_ms")]
    pub hedge_after_ms: u64,
    /// Hedges may add at most this share of the searches sent (in %, plus a burst of 10), so
    /// that a saturated cluster is not loaded twice over; 0 turns hedging off.
    #[serde(default = "hedge_percent")]
    pub hedge_percent: u32,
    /// The model deployment that answers RAG questions (none: RAG is refused).
    #[serde(default)]
    pub model: Option<String>,
    /// How long a write keeps trying while its partition has no primary it can reach (a
    /// failover, a partition waiting for its in-sync replicas) before it fails as
    /// unavailable.
    #[serde(default = "write_patience_ms")]
    pub write_patience_ms: u64,
}

impl CollectionRoute {
    /// The route to `collection` with every knob at its default.
    pub fn new(collection: impl Into<String>) -> CollectionRoute {
        CollectionRoute {
            collection: collection.into(),
            chunking: ChunkPolicy::default(),
            search_timeout_ms: search_timeout_ms(),
            hedge_after_ms: hedge_after_ms(),
            hedge_percent: hedge_percent(),
            model: None,
            write_patience_ms: write_patience_ms(),
        }
    }

    /// Checks the knobs (what a coordinator checks when it starts).
    pub fn validate(&self) -> Result<(), String> {
        self.chunking.validate()
    }
}

/// A collection's shape as the control plane records it, read once per ingest or query.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub partitions: u32,
    pub dimension: u32,
    pub metric: Metric,
    /// The embedder deployment.
    pub embedder: String,
}

fn search_timeout_ms() -> u64 {
    2000
}
fn hedge_after_ms() -> u64 {
    150
}
fn hedge_percent() -> u32 {
    10
}
fn write_patience_ms() -> u64 {
    20_000
}
/// Hedges a coordinator may send at once beyond its share.
const HEDGE_BURST: u32 = 10;

/// A document to ingest, as clients send it (its id names it: ingesting the same id again
/// replaces it).
pub use arbor_proto::gateway::Document;

/// How far an ingest has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestProgress {
    pub chunks_done: u64,
    pub chunks_total: u64,
}

pub use arbor_proto::results::{IngestReport, QueryAnswer, QueryHit, RagAnswer};

/// The chat that asks the model to answer from `sources` only, citing them by number.
pub fn rag_prompt(question: &str, sources: &[QueryHit]) -> Vec<ChatMessage> {
    let mut context = String::new();
    for (i, s) in sources.iter().enumerate() {
        let title = s.title.as_deref().unwrap_or(&s.doc_id);
        context.push_str(&format!("[{}] {title}: {}\n", i + 1, s.text));
    }
    vec![
        ChatMessage {
            role: ChatRole::System,
            content: "Answer the question using only the numbered sources. Cite them like [1]. \
                      If the sources do not contain the answer, say so."
                .into(),
        },
        ChatMessage {
            role: ChatRole::User,
            content: format!("Sources:\n{context}\nQuestion: {question}"),
        },
    ]
}

/// Why an ingest or query failed. It crosses the wire in [`super::RetrievalReply`], and each
/// variant has one client error code ([`arbor_proto::Coded`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum RetrievalError {
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The embedder could not be reached, or stayed overloaded.
    #[error("the embedder is unavailable: {0}")]
    EmbedderUnavailable(String),
    /// The embedder was reached and failed.
    #[error("embedding failed: {0}")]
    Embed(String),
    /// The control plane (as this node knows it) has no such collection.
    #[error("there is no collection {0:?}; see `arbor collections`")]
    NoCollection(String),
    #[error(
        "partition {partition} of collection {collection:?} has no live replica; check `arbor deployments`"
    )]
    NoReplica { collection: String, partition: u32 },
    /// No in-sync replica of the partition could take the write in time.
    #[error("partition {partition} of collection {collection:?} is unavailable: {reason}")]
    Unavailable {
        collection: String,
        partition: u32,
        reason: String,
    },
    #[error("writing to partition {partition} failed: {reason}")]
    Write { partition: u32, reason: String },
    #[error("no replica of partition {partition} could be read: {reason}")]
    Read { partition: u32, reason: String },
    #[error("generation failed: {0}")]
    Generate(String),
}

impl arbor_proto::Coded for RetrievalError {
    /// The request's own fault, the cluster's state now (try again), or a failure.
    fn code(&self) -> arbor_proto::ErrorCode {
        use arbor_proto::ErrorCode;
        match self {
            RetrievalError::Invalid(_) => ErrorCode::InvalidJob,
            RetrievalError::NoCollection(_) => ErrorCode::NotFound,
            RetrievalError::EmbedderUnavailable(_)
            | RetrievalError::NoReplica { .. }
            | RetrievalError::Unavailable { .. }
            | RetrievalError::Read { .. } => ErrorCode::Unavailable,
            RetrievalError::Embed(_)
            | RetrievalError::Write { .. }
            | RetrievalError::Generate(_) => ErrorCode::JobFailed,
        }
    }
}

/// Ingest and query over one collection.
#[derive(Debug, Clone)]
pub struct Coordinator {
    scope: String,
    control: Control,
    route: CollectionRoute,
    /// The router to the collection's embedder, made on first use and kept (it tracks each
    /// replica's outstanding calls); shared by clones.
    embedder: Arc<Mutex<Option<Router>>>,
    /// Shared by every query through this coordinator (clones included).
    hedges: Arc<Mutex<HedgeBudget>>,
}

/// One chunk on its way to the partitions; `vector` is `None` until it is embedded.
struct Pending {
    id: u64,
    text: String,
    metadata: String,
    vector: Option<Vec<f32>>,
}

impl Coordinator {
    /// A coordinator for `route`, reaching replicas in the pg `scope`, where `control` says
    /// which replica of a partition takes writes and which may be read.
    pub fn new(
        scope: impl Into<String>,
        control: Control,
        route: CollectionRoute,
    ) -> Result<Self, RetrievalError> {
        route.validate().map_err(RetrievalError::Invalid)?;
        Ok(Coordinator {
            scope: scope.into(),
            control,
            embedder: Arc::default(),
            hedges: Arc::new(Mutex::new(HedgeBudget::new(
                route.hedge_percent,
                HEDGE_BURST,
            ))),
            route,
        })
    }

    pub fn route(&self) -> &CollectionRoute {
        &self.route
    }

    /// The collection's shape, as this node's view of the control plane records it.
    pub fn shape(&self) -> Result<Shape, RetrievalError> {
        let spec = self
            .control
            .collection(&self.route.collection)
            .ok_or_else(|| RetrievalError::NoCollection(self.route.collection.clone()))?;
        Ok(Shape {
            partitions: spec.partitions,
            dimension: spec.dimension,
            metric: spec.metric,
            embedder: spec.embedder,
        })
    }

    /// The router to `deployment`, the embedder of the shape just read.
    fn embedder(&self, deployment: &str) -> Router {
        let mut cached = self
            .embedder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some(router) if router.deployment() == deployment => router.clone(),
            _ => {
                let router = Router::new(self.scope.clone(), deployment).idempotent(true);
                *cached = Some(router.clone());
                router
            }
        }
    }
}
