//! The result data of every job kind, typed: the gateway serializes these and clients read
//! them back, so the schema lives once. `docs/protocol.md` shows each as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::NodeId;

/// `undeploy` and `delete_collection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub name: String,
    pub deleted: bool,
}

/// `deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResult {
    pub name: String,
    /// The deployment's revision after the deploy.
    pub revision: u64,
    pub change: DeployChange,
}

/// `create_collection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionCreated {
    pub name: String,
    pub partitions: u32,
    pub replicas: u32,
    pub embedder: String,
    /// The coordinator deployment the collection deployed for itself (none when asked for 0).
    #[serde(default)]
    pub coordinator: Option<String>,
}

/// `promote_stale`: what the promoted replica holds, and what is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteStaleResult {
    pub collection: String,
    pub partition: u32,
    pub promoted: u32,
    /// Rows the promoted replica holds, when it could be asked.
    pub rows: Option<u64>,
    /// The last sequence number it applied, when it could be asked.
    pub seq: Option<u64>,
    /// The last sequence number the control plane recorded as acknowledged by all in-sync
    /// replicas.
    pub checkpoint: u64,
    /// What the promotion loses, in words.
    pub lost: String,
}

/// `collections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionsResult {
    pub collections: Vec<CollectionReport>,
}

/// `deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentsResult {
    pub deployments: Vec<DeploymentReport>,
}

/// The first `result` of a `rag` job: what the answer will be drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RagSources {
    pub sources: Vec<QueryHit>,
    pub missing_partitions: Vec<u32>,
}

/// `generate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateResult {
    pub deployment: String,
    pub text: String,
    /// Why generation stopped: `eos`, `max_tokens`, ...
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
}

/// `embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResult {
    pub deployment: String,
    pub dim: u32,
    pub vectors: Vec<Vec<f32>>,
}

/// `drain` and `undrain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainResult {
    pub node: NodeId,
    pub draining: bool,
}

/// `call`: the replica's reply, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    pub reply: String,
}

/// `status`: the cluster in a few numbers, as the accepting node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSummary {
    pub node: NodeId,
    pub leader: Option<NodeId>,
    pub nodes: Vec<NodeSummary>,
    pub deployments: u64,
    pub collections: u64,
    pub jobs_running: u64,
}

/// One node in [`StatusSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub id: NodeId,
    /// up or down.
    pub state: String,
    pub draining: bool,
    /// What it offers, as "cpu=4 memory=16GiB gpu=1".
    #[serde(default)]
    pub capacity: String,
    /// What the replicas placed on it hold, in the same form.
    #[serde(default)]
    pub used: String,
    /// CPU offered and held, in millicores (for a gauge).
    #[serde(default)]
    pub cpu_millicores: u64,
    #[serde(default)]
    pub cpu_used_millicores: u64,
}

/// One collection as `arbor collections` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionReport {
    pub name: String,
    pub dimension: u32,
    pub metric: String,
    pub partitions: u32,
    pub replication: u32,
    pub embedder: String,
    /// How its partitions search.
    #[serde(default)]
    pub index: crate::IndexSpec,
    /// How its partitions hold vectors in memory.
    #[serde(default)]
    pub quantization: crate::Quantization,
    /// Partition replicas running and in sync, out of partitions × replication.
    pub running: u32,
    /// Each partition's replica set: who takes writes, who holds every acknowledged write.
    #[serde(default)]
    pub replica_sets: Vec<ReplicaSetReport>,
}

/// One partition's replica set as `arbor collections` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSetReport {
    pub partition: u32,
    pub epoch: u64,
    /// The replica that takes writes (`None`: no in-sync replica is left).
    pub primary: Option<u32>,
    /// The replicas that hold every acknowledged write.
    pub in_sync: Vec<u32>,
}

/// Whether a deploy changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployChange {
    Created,
    /// A new revision, which the replicas roll to.
    Updated,
    /// Only the replica count (or the autoscaling policy) changed: replicas were added or
    /// removed, and none of the others restarted.
    Scaled,
    /// The same spec was already deployed.
    Unchanged,
}

/// One deployment as `arbor deployments` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentReport {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub revision: u64,
    pub desired: u32,
    /// Replicas running, on nodes that are up.
    pub running: u32,
    pub replicas: Vec<ReplicaReport>,
    pub pending_reason: Option<String>,
    /// Its autoscaling policy and the load it sees, when it has one.
    #[serde(default)]
    pub autoscaling: Option<AutoscalingReport>,
}

/// An autoscaled deployment's bounds, target and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalingReport {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_ongoing_requests: f64,
    /// Requests in flight to its replicas, as the nodes that are up last reported them.
    pub ongoing_requests: f64,
}

/// One replica: where it runs and how it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: u32,
    /// `None` while it waits for a node.
    pub node: Option<NodeId>,
    /// pending, starting, running, failed, stopped, lost (its node is down), or, for a
    /// partition replica that runs but is not in sync yet, catching-up.
    pub state: String,
    /// Why it failed.
    pub reason: Option<String>,
    pub devices: Vec<u32>,
    pub generation: Option<u64>,
    /// The deployment revision it runs.
    pub revision: Option<u64>,
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    pub documents: u64,
    pub chunks: u64,
    /// Chunks written per partition.
    pub per_partition: Vec<u64>,
    pub elapsed_ms: u64,
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryHit {
    pub doc_id: String,
    pub chunk_id: u32,
    pub score: f32,
    pub text: String,
    pub title: Option<String>,
    /// The document's own metadata.
    #[serde(with = "crate::json_text")]
    pub metadata: Map<String, Value>,
}

/// The answer to a query; `missing_partitions` lists partitions that did not answer, so a
/// partial answer says what it lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryAnswer {
    pub results: Vec<QueryHit>,
    pub missing_partitions: Vec<u32>,
}

/// A question answered from the collection: the generated answer and the chunks it was
/// given, numbered as the answer cites them (`[1]` is `sources[0]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RagAnswer {
    pub answer: String,
    pub sources: Vec<QueryHit>,
    pub missing_partitions: Vec<u32>,
    pub finish_reason: String,
}
