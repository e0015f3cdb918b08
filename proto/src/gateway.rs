//! The gateway's wire protocol: JSON, one object per WebSocket text frame, tagged by `"type"`.
//! `docs/protocol.md` documents every message with an example; this module is the one place
//! that turns frames into typed messages and back, so the server and the `arbor` client agree
//! by construction.
//!
//! Parsing never panics and every failure names what was wrong: malformed JSON, a frame that
//! is not an object, an unknown `type` or `kind`, a missing, unknown or mistyped field (with
//! its path, e.g. `job.k`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ErrorCode;
use crate::ids::JobId;
use crate::role::Role;

/// The protocol version this build speaks. `auth` carries it; a client that speaks another
/// one is told so and disconnected.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// A message lives for one frame: boxing the submit's job would cost an allocation per submit
// to save stack space nobody keeps.
#[allow(clippy::large_enum_variant)]
pub enum ClientMsg {
    /// Must be the first message.
    Auth { v: u32, token: String },
    /// Starts a job; answered at once by `accepted` (or an `error`), then its events.
    Submit {
        /// The client's own name for this submit, echoed in `accepted` and in errors, so a
        /// client can pipeline submits.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Record the job in the control plane even if its kind is not recorded by default.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        record: bool,
        job: JobSpec,
    },
    /// Streams a job's events (from where it is now) until it finishes.
    Subscribe { job: JobId },
    /// One job's record, or the most recent jobs when `job` is absent.
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Stops a job.
    Cancel { job: JobId },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

/// What a job does; the `kind` field tags it. Each kind's arguments are a struct of their own
/// so that [`parse_client`] can name the exact field at fault (serde loses field paths inside
/// internally tagged enums).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// Create or update a deployment.
    Deploy(DeployJob),
    Undeploy(NameJob),
    /// Set a deployment's replica count, restarting none of its replicas.
    Scale(ScaleJob),
    /// Return a deployment to its previous revision, with a rolling update.
    Rollback(NameJob),
    CreateCollection(CreateCollectionJob),
    DeleteCollection(NameJob),
    /// The collections and how many of their partition replicas run.
    Collections,
    /// The deployments and where their replicas run.
    Deployments,
    Ingest(IngestJob),
    Query(QueryJob),
    Rag(RagJob),
    Embed(EmbedJob),
    Generate(GenerateJob),
    /// The cluster as the accepting node sees it.
    Status,
    /// One request to any deployment, answered by its kind (echo, spin, a coordinator's JSON).
    Call(CallJob),
    /// Makes a replica that is not in sync its partition's only in-sync replica and primary,
    /// accepting the loss of what only the in-sync replicas (all gone) held.
    PromoteStale(PromoteStaleJob),
    /// Every node's state (up or down, since when, its resources) as the accepting node's
    /// links see it: `arbor status`.
    Membership,
    /// The control plane: leader, term, each member's role, commit and applied index, as each
    /// member reports it: `arbor cluster status`.
    ClusterStatus,
    /// Adds a node of cluster.toml to the control plane (a learner, a voter once caught up).
    AddNode(NodeJob),
    /// Removes a node from the control plane.
    RemoveNode(NodeJob),
    /// Moves a node's actors elsewhere and places none there until undrained.
    Drain(NodeJob),
    Undrain(NodeJob),
    /// One page of a partition's rows from its primary (`arbor collection snapshot`).
    Export(crate::snapshot::ExportJob),
    /// Rows with their ids, written as they are (`arbor collection restore`).
    Import(crate::snapshot::ImportJob),
    /// The control plane's deployments and collections (`arbor cluster backup`).
    Backup,
    /// Makes a backup's deployments and collections (`arbor cluster restore`).
    Restore(crate::snapshot::RestoreJob),
}

/// The node a cluster job is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeJob {
    pub node: crate::NodeId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteStaleJob {
    pub collection: String,
    pub partition: u32,
    pub replica: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallJob {
    pub deployment: String,
    /// The request, as text (what `arbor call` sends).
    pub payload: String,
}

/// `deployment` is a deployment file (`arbor deploy -f`) as a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployJob {
    pub deployment: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameJob {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleJob {
    pub name: String,
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionJob {
    pub name: String,
    pub partitions: u32,
    pub replicas: u32,
    pub embedder: String,
    #[serde(default = "default_dimension")]
    pub dimension: u32,
    #[serde(default = "default_metric")]
    pub metric: String,
    /// CPU per partition replica, e.g. "250m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory per partition replica, e.g. "512MiB".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Replicas of the collection's own coordinator deployment (`NAME-coordinator`), which
    /// creating the collection deploys; 0 deploys none (bring your own). Default: 2, or 1 on
    /// a one-node cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinators: Option<u32>,
    /// CPU per coordinator replica (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_cpu: Option<String>,
    /// Memory per coordinator replica (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_memory: Option<String>,
    /// The model deployment the coordinator answers `rag` with (default: the only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How the partitions search: `"exact"` (the default) or `{"hnsw": {"m": 16,
    /// "ef_construction": 128, "ef_search": 64}}` (each setting optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<crate::IndexSpec>,
    /// How the partitions hold vectors: `"none"` (f32, the default) or `"int8"` (a quarter of
    /// the memory; the best candidates are rescored on the f32 rows, from disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::Quantization>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestJob {
    pub collection: String,
    pub documents: Vec<Document>,
}

/// A query by `text` (embedded first) or by `vector` (the collection's dimension): exactly
/// one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryJob {
    pub collection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "finite_vector"
    )]
    pub vector: Option<Vec<f32>>,
    #[serde(default = "default_query_k")]
    pub k: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// Candidates each partition's HNSW walk keeps (1..=4096), instead of the collection's
    /// `ef_search`: more is slower and finds more of the exact answer. An exact collection
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagJob {
    pub collection: String,
    pub question: String,
    #[serde(default = "default_rag_k")]
    pub k: u32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedJob {
    pub texts: Vec<String>,
    /// The embedder deployment; absent: the only one there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateJob {
    pub prompt: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// The model deployment; absent: the only one there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

impl<'de> Deserialize<'de> for JobSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobSpec, D::Error> {
        let value = Value::deserialize(d)?;
        job_spec(value, "").map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A job object to its spec; `at` prefixes the field paths in errors (`"job"`).
fn job_spec(value: Value, at: &str) -> Result<JobSpec, ParseError> {
    let field = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    let Value::Object(mut object) = value else {
        return Err(ParseError::new(
            ErrorCode::InvalidField,
            format!(
                "field \"{at}\" must be an object, not {}",
                json_type(&value)
            ),
            Some(at.to_owned()),
        ));
    };
    let kind = match object.remove("kind") {
        Some(Value::String(k)) => k,
        None => {
            let f = field("kind");
            return Err(ParseError::new(
                ErrorCode::MissingField,
                format!(
                    "missing field \"{f}\"; it is one of {}",
                    JOB_KINDS.join(", ")
                ),
                Some(f),
            ));
        }
        Some(other) => {
            let f = field("kind");
            return Err(ParseError::new(
                ErrorCode::InvalidField,
                format!("field \"{f}\" must be a string, not {}", json_type(&other)),
                Some(f),
            ));
        }
    };
    let rest = Value::Object(object);
    let unit = |spec: JobSpec, rest: Value| match rest {
        Value::Object(m) if m.is_empty() => Ok(spec),
        Value::Object(m) => {
            let name = m.keys().next().cloned().unwrap_or_default();
            let f = field(&name);
            Err(ParseError::new(
                ErrorCode::UnknownField,
                format!("unknown field \"{f}\"; a {kind} job takes no arguments"),
                Some(f),
            ))
        }
        _ => Ok(spec),
    };
    Ok(match kind.as_str() {
        "deploy" => JobSpec::Deploy(typed_at(rest, at)?),
        "undeploy" => JobSpec::Undeploy(typed_at(rest, at)?),
        "scale" => JobSpec::Scale(typed_at(rest, at)?),
        "rollback" => JobSpec::Rollback(typed_at(rest, at)?),
        "create_collection" => JobSpec::CreateCollection(typed_at(rest, at)?),
        "delete_collection" => JobSpec::DeleteCollection(typed_at(rest, at)?),
        "promote_stale" => JobSpec::PromoteStale(typed_at(rest, at)?),
        "collections" => unit(JobSpec::Collections, rest)?,
        "deployments" => unit(JobSpec::Deployments, rest)?,
        "ingest" => JobSpec::Ingest(typed_at(rest, at)?),
        "query" => {
            let q: QueryJob = typed_at(rest, at)?;
            match (&q.text, &q.vector) {
                (None, None) => {
                    let f = field("text");
                    return Err(ParseError::new(
                        ErrorCode::MissingField,
                        format!("missing field \"{f}\"; a query has text, or vector instead"),
                        Some(f),
                    ));
                }
                (Some(_), Some(_)) => {
                    let f = field("vector");
                    return Err(ParseError::new(
                        ErrorCode::InvalidField,
                        format!("field \"{f}\": a query has text or vector, not both"),
                        Some(f),
                    ));
                }
                _ => JobSpec::Query(q),
            }
        }
        "rag" => JobSpec::Rag(typed_at(rest, at)?),
        "embed" => JobSpec::Embed(typed_at(rest, at)?),
        "generate" => JobSpec::Generate(typed_at(rest, at)?),
        "status" => unit(JobSpec::Status, rest)?,
        "call" => JobSpec::Call(typed_at(rest, at)?),
        "membership" => unit(JobSpec::Membership, rest)?,
        "cluster_status" => unit(JobSpec::ClusterStatus, rest)?,
        "add_node" => JobSpec::AddNode(typed_at(rest, at)?),
        "remove_node" => JobSpec::RemoveNode(typed_at(rest, at)?),
        "drain" => JobSpec::Drain(typed_at(rest, at)?),
        "undrain" => JobSpec::Undrain(typed_at(rest, at)?),
        "export" => JobSpec::Export(typed_at(rest, at)?),
        "import" => JobSpec::Import(typed_at(rest, at)?),
        "backup" => unit(JobSpec::Backup, rest)?,
        "restore" => JobSpec::Restore(typed_at(rest, at)?),
        other => {
            let f = field("kind");
            return Err(ParseError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown job kind {other:?}; it is one of {}",
                    JOB_KINDS.join(", ")
                ),
                Some(f),
            ));
        }
    })
}

fn default_dimension() -> u32 {
    384
}
fn default_metric() -> String {
    "cosine".into()
}
fn default_query_k() -> u32 {
    5
}
fn default_rag_k() -> u32 {
    3
}
fn default_max_tokens() -> u32 {
    128
}

/// A document to ingest. Its id names it: ingesting the same id again replaces it (its chunks
/// are overwritten, and those past its new end are deleted). The gateway, the coordinator and
/// clients all use this one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    /// Chunked and embedded; with `vector`, stored whole as the one chunk's text (it may then
    /// be empty).
    pub text: String,
    // No `skip_serializing_if` here: documents also travel between nodes as bincode, whose
    // fields are known by position, so every field is always written.
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default, with = "crate::json_text")]
    pub metadata: Map<String, Value>,
    /// The document's own vector (the collection's dimension): stored as one chunk with it,
    /// without embedding.
    #[serde(default, deserialize_with = "finite_vector")]
    pub vector: Option<Vec<f32>>,
}

/// A vector whose values are all finite 32-bit floats: a number too large for one (it would
/// become infinite) is refused here, naming its place, rather than failing in a partition.
fn finite_vector<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
    let v: Option<Vec<f32>> = Option::deserialize(d)?;
    if let Some(i) = v.iter().flatten().position(|x| !x.is_finite()) {
        return Err(serde::de::Error::custom(format!(
            "value {i} is not a finite 32-bit float"
        )));
    }
    Ok(v)
}

impl JobSpec {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Deploy(_) => "deploy",
            JobSpec::Undeploy(_) => "undeploy",
            JobSpec::Scale(_) => "scale",
            JobSpec::Rollback(_) => "rollback",
            JobSpec::CreateCollection(_) => "create_collection",
            JobSpec::DeleteCollection(_) => "delete_collection",
            JobSpec::Collections => "collections",
            JobSpec::Deployments => "deployments",
            JobSpec::Ingest(_) => "ingest",
            JobSpec::Query(_) => "query",
            JobSpec::Rag(_) => "rag",
            JobSpec::Embed(_) => "embed",
            JobSpec::Generate(_) => "generate",
            JobSpec::Status => "status",
            JobSpec::Call(_) => "call",
            JobSpec::PromoteStale(_) => "promote_stale",
            JobSpec::Membership => "membership",
            JobSpec::ClusterStatus => "cluster_status",
            JobSpec::AddNode(_) => "add_node",
            JobSpec::RemoveNode(_) => "remove_node",
            JobSpec::Drain(_) => "drain",
            JobSpec::Undrain(_) => "undrain",
            JobSpec::Export(_) => "export",
            JobSpec::Import(_) => "import",
            JobSpec::Backup => "backup",
            JobSpec::Restore(_) => "restore",
        }
    }

    /// The least role that may submit it.
    pub fn required_role(&self) -> Role {
        match self {
            JobSpec::Deploy(_)
            | JobSpec::Undeploy(_)
            | JobSpec::Scale(_)
            | JobSpec::Rollback(_)
            | JobSpec::CreateCollection(_)
            | JobSpec::DeleteCollection(_)
            | JobSpec::PromoteStale(_)
            | JobSpec::AddNode(_)
            | JobSpec::RemoveNode(_)
            | JobSpec::Drain(_)
            | JobSpec::Undrain(_)
            | JobSpec::Export(_)
            | JobSpec::Backup
            | JobSpec::Restore(_) => Role::Admin,
            // Rows with their own vectors and ids: what `ingest` of documents that bring
            // their vectors may write too, in bulk.
            JobSpec::Import(_)
            | JobSpec::Ingest(_)
            | JobSpec::Query(_)
            | JobSpec::Rag(_)
            | JobSpec::Embed(_)
            | JobSpec::Generate(_)
            | JobSpec::Call(_) => Role::User,
            JobSpec::Collections
            | JobSpec::Deployments
            | JobSpec::Status
            | JobSpec::Membership
            | JobSpec::ClusterStatus => Role::Reader,
        }
    }

    /// Whether it stops by itself soon after a cancel (it checks between steps, and cancels
    /// its generation on the model replica); other kinds are dropped at once.
    pub fn stops_by_itself(&self) -> bool {
        matches!(
            self,
            JobSpec::Ingest(_) | JobSpec::Rag(_) | JobSpec::Generate(_)
        )
    }

    /// Whether the control plane records it without being asked to. Reads that answer in
    /// microseconds to milliseconds (status, query, embed, listings) are not: a consensus
    /// write per request would cost more than the request and grow the log without bound.
    /// Changes and long-running work are, so their status outlives the node running them.
    pub fn recorded_by_default(&self) -> bool {
        !matches!(
            self,
            JobSpec::Status
                | JobSpec::Query(_)
                | JobSpec::Embed(_)
                | JobSpec::Call(_)
                | JobSpec::Collections
                | JobSpec::Deployments
                | JobSpec::Membership
                | JobSpec::ClusterStatus
                // Pages and batches of a snapshot or a restore: thousands for one file.
                | JobSpec::Export(_)
                | JobSpec::Import(_)
                | JobSpec::Backup
                // A node removed from the control plane could never record the end of the
                // job that removed it; the change itself is in the log either way.
                | JobSpec::AddNode(_)
                | JobSpec::RemoveNode(_)
        )
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A job as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub kind: String,
    pub state: JobState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// 0.0 ..= 1.0.
    pub progress: f32,
    /// The node that runs it.
    pub node: u64,
    /// The token id that submitted it.
    pub owner: String,
    /// ms since the Unix epoch.
    pub submitted_ms: u64,
    /// Whether the control plane holds its record.
    pub recorded: bool,
    /// The final result, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// A message to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The answer to a good `auth`.
    Authenticated {
        v: u32,
        node: u64,
        role: Role,
        token_id: String,
        limits: Limits,
    },
    /// A submitted job was taken; its events follow.
    Accepted {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        job: JobId,
        kind: String,
        node: u64,
        recorded: bool,
    },
    /// How far a job has come.
    Progress {
        job: JobId,
        done: u64,
        total: u64,
        /// What `done` and `total` count (documents, chunks, tokens).
        unit: String,
    },
    /// Generated text, as it is generated (generate, rag).
    Token { job: JobId, text: String },
    /// A job's result (some kinds send parts before the last one).
    Result {
        job: JobId,
        data: Value,
        #[serde(rename = "final")]
        last: bool,
    },
    /// A job changed state. The last event of a job has a finished state.
    Event {
        job: JobId,
        state: JobState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// One job's record (the answer to `status` with a job).
    Job { job: JobView },
    /// The most recent jobs (the answer to `status` without a job), newest first.
    Jobs { jobs: Vec<JobView> },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    Error {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
        code: ErrorCode,
        message: String,
        /// The field at fault, as a path (`job.k`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

/// The limits the gateway enforces on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_jobs_per_connection: usize,
    pub max_jobs_per_token: usize,
}

/// A frame that is not a valid message: what to answer, and the `ref` if one could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    pub reference: Option<String>,
}

impl crate::Coded for ParseError {
    fn code(&self) -> ErrorCode {
        self.code
    }
}

impl ParseError {
    fn new(code: ErrorCode, message: impl Into<String>, field: Option<String>) -> ParseError {
        ParseError {
            code,
            message: message.into(),
            field,
            reference: None,
        }
    }

    /// The `error` message that answers it.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::Error {
            reference: self.reference.clone(),
            job: None,
            code: self.code,
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

const CLIENT_TYPES: &[&str] = &["auth", "submit", "subscribe", "status", "cancel", "ping"];
const JOB_KINDS: &[&str] = &[
    "deploy",
    "undeploy",
    "scale",
    "rollback",
    "create_collection",
    "delete_collection",
    "promote_stale",
    "collections",
    "deployments",
    "ingest",
    "query",
    "rag",
    "embed",
    "generate",
    "status",
    "call",
    "membership",
    "cluster_status",
    "add_node",
    "remove_node",
    "drain",
    "undrain",
    "export",
    "import",
    "backup",
    "restore",
];

/// Parses one text frame from a client.
pub fn parse_client(text: &str) -> Result<ClientMsg, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ParseError::new(
            ErrorCode::MalformedJson,
            format!("the message is not valid JSON: {e}"),
            None,
        )
    })?;
    let Value::Object(object) = &value else {
        return Err(ParseError::new(
            ErrorCode::NotAnObject,
            format!(
                "a message is one JSON object with a \"type\" field, not {}",
                json_type(&value)
            ),
            None,
        ));
    };
    let reference = object.get("ref").and_then(Value::as_str).map(str::to_owned);
    let with_ref = |mut e: ParseError| {
        e.reference = reference.clone();
        e
    };
    let kind = match object.get("type") {
        None => {
            return Err(with_ref(ParseError::new(
                ErrorCode::MissingField,
                format!(
                    "missing field \"type\"; it is one of {}",
                    CLIENT_TYPES.join(", ")
                ),
                Some("type".into()),
            )));
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(with_ref(ParseError::new(
                ErrorCode::InvalidField,
                format!("field \"type\" must be a string, not {}", json_type(other)),
                Some("type".into()),
            )));
        }
    };
    if !CLIENT_TYPES.contains(&kind) {
        return Err(with_ref(ParseError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown message type {kind:?}; it is one of {}",
                CLIENT_TYPES.join(", ")
            ),
            Some("type".into()),
        )));
    }
    if kind == "submit" {
        return submit(object).map_err(with_ref);
    }
    // Each type's fields on their own, so that serde keeps the path of the one at fault
    // (it loses it inside internally tagged enums).
    let mut rest = object.clone();
    rest.remove("type");
    let rest = Value::Object(rest);
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AuthFields {
        v: u32,
        token: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct JobField {
        job: JobId,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StatusFields {
        #[serde(default)]
        job: Option<JobId>,
        #[serde(default)]
        limit: Option<u32>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PingFields {
        #[serde(default)]
        nonce: Option<u64>,
    }
    let msg = match kind {
        "auth" => typed::<AuthFields>(rest).map(|a| ClientMsg::Auth {
            v: a.v,
            token: a.token,
        }),
        "subscribe" => typed::<JobField>(rest).map(|j| ClientMsg::Subscribe { job: j.job }),
        "cancel" => typed::<JobField>(rest).map(|j| ClientMsg::Cancel { job: j.job }),
        "status" => typed::<StatusFields>(rest).map(|s| ClientMsg::Status {
            job: s.job,
            limit: s.limit,
        }),
        _ => typed::<PingFields>(rest).map(|p| ClientMsg::Ping { nonce: p.nonce }),
    };
    msg.map_err(with_ref)
}

/// A `submit` object, parsed by hand so that errors in the job name their full path.
fn submit(object: &Map<String, Value>) -> Result<ClientMsg, ParseError> {
    if let Some(key) = object
        .keys()
        .find(|k| !["type", "ref", "record", "job"].contains(&k.as_str()))
    {
        return Err(ParseError::new(
            ErrorCode::UnknownField,
            format!("unknown field \"{key}\"; a submit has type, ref, record and job"),
            Some(key.clone()),
        ));
    }
    let reference = match object.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ParseError::new(
                ErrorCode::InvalidField,
                format!("field \"ref\" must be a string, not {}", json_type(other)),
                Some("ref".into()),
            ));
        }
    };
    let record = match object.get("record") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ParseError::new(
                ErrorCode::InvalidField,
                format!(
                    "field \"record\" must be a boolean, not {}",
                    json_type(other)
                ),
                Some("record".into()),
            ));
        }
    };
    let Some(job) = object.get("job") else {
        return Err(ParseError::new(
            ErrorCode::MissingField,
            "missing field \"job\"",
            Some("job".into()),
        ));
    };
    Ok(ClientMsg::Submit {
        reference,
        record,
        job: job_spec(job.clone(), "job")?,
    })
}

/// Parses one text frame from a gateway (the client side).
pub fn parse_server(text: &str) -> Result<ServerMsg, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ParseError::new(
            ErrorCode::MalformedJson,
            format!("the gateway sent a frame that is not JSON: {e}"),
            None,
        )
    })?;
    typed(value)
}

/// Deserializes with the path of the field at fault.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ParseError> {
    typed_at(value, "")
}

/// Deserializes with the path of the field at fault, under `at`.
fn typed_at<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = match (at, path.as_str()) {
            ("", p) => p.to_owned(),
            (a, "" | ".") => a.to_owned(),
            (a, p) if p.starts_with('[') => format!("{a}{p}"),
            (a, p) => format!("{a}.{p}"),
        };
        let inner = e.into_inner().to_string();
        field_error(&path, &inner)
    })
}

/// Classifies serde's message and names the field: serde reports a missing or unknown field
/// at the object that lacks or has it, and a mistyped one at the field itself.
fn field_error(path: &str, message: &str) -> ParseError {
    let at = |name: &str| {
        if path.is_empty() || path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(name) = quoted("missing field `") {
        let field = at(&name);
        return ParseError::new(
            ErrorCode::MissingField,
            format!("missing field \"{field}\""),
            Some(field),
        );
    }
    if let Some(name) = quoted("unknown field `") {
        // serde_path_to_error's path already ends at an unknown field.
        let field = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_owned()
        } else {
            at(&name)
        };
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| format!("; expected {}", e.replace('`', "\"")))
            .unwrap_or_default();
        return ParseError::new(
            ErrorCode::UnknownField,
            format!("unknown field \"{field}\"{expected}"),
            Some(field),
        );
    }
    let field = (!path.is_empty() && path != ".").then(|| path.to_owned());
    let message = message.replace('`', "\"");
    ParseError::new(
        ErrorCode::InvalidField,
        match &field {
            Some(f) => format!("field \"{f}\": {message}"),
            None => message,
        },
        field,
    )
}

/// What kind of JSON value `v` is, as an error message names it ("an array").
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One message as a text frame.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Our own types hold only strings, numbers, maps and JSON values: encoding cannot fail.
    serde_json::to_string(msg).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","code":"internal","message":"cannot encode: {e}"}}"#)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(text: &str) -> ParseError {
        parse_client(text).expect_err(text)
    }

    #[test]
    fn every_message_type_parses() {
        let cases = [
            r#"{"type":"auth","v":1,"token":"t"}"#,
            r#"{"type":"submit","ref":"a","job":{"kind":"status"}}"#,
            r#"{"type":"submit","job":{"kind":"query","collection":"c","text":"hi","k":3,"filter":{"lang":"en"}}}"#,
            r#"{"type":"submit","job":{"kind":"query","collection":"c","vector":[0.5,-1,2e-3],"k":3}}"#,
            r#"{"type":"submit","job":{"kind":"ingest","collection":"c","documents":[{"id":"a","text":"","vector":[1,0]},{"id":"b","text":"t"}]}}"#,
            r#"{"type":"submit","record":true,"job":{"kind":"embed","texts":["a"]}}"#,
            r#"{"type":"subscribe","job":"j1"}"#,
            r#"{"type":"status"}"#,
            r#"{"type":"status","job":"j1"}"#,
            r#"{"type":"cancel","job":"j1"}"#,
            r#"{"type":"ping","nonce":7}"#,
            r#"{"type":"submit","job":{"kind":"membership"}}"#,
            r#"{"type":"submit","job":{"kind":"cluster_status"}}"#,
            r#"{"type":"submit","job":{"kind":"add_node","node":4}}"#,
            r#"{"type":"submit","job":{"kind":"remove_node","node":4}}"#,
            r#"{"type":"submit","job":{"kind":"drain","node":2}}"#,
            r#"{"type":"submit","job":{"kind":"undrain","node":2}}"#,
        ];
        for c in cases {
            let m = parse_client(c).unwrap_or_else(|e| panic!("{c}: {e}"));
            // What we encode parses back the same.
            assert_eq!(parse_client(&encode(&m)).unwrap(), m, "{c}");
        }
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let ClientMsg::Submit { job, .. } = parse_client(
            r#"{"type":"submit","job":{"kind":"rag","collection":"c","question":"q"}}"#,
        )
        .unwrap() else {
            panic!("not a submit")
        };
        assert_eq!(
            job,
            JobSpec::Rag(RagJob {
                collection: "c".into(),
                question: "q".into(),
                k: 3,
                max_tokens: 128
            })
        );
    }

    #[test]
    fn each_bad_input_class_names_its_problem() {
        let e = err("{not json");
        assert_eq!(e.code, ErrorCode::MalformedJson);
        let e = err("[1,2]");
        assert_eq!(e.code, ErrorCode::NotAnObject);
        assert!(e.message.contains("an array"), "{}", e.message);
        let e = err(r#"{"token":"x"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("type"))
        );
        let e = err(r#"{"type":7}"#);
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = err(r#"{"type":"launch"}"#);
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert!(e.message.contains("launch") && e.message.contains("submit"));
        let e = err(r#"{"type":"submit","ref":"r9","job":{"kind":"fly"}}"#);
        assert_eq!(
            (e.code, e.field.as_deref(), e.reference.as_deref()),
            (ErrorCode::UnknownType, Some("job.kind"), Some("r9"))
        );
        let e = err(r#"{"type":"submit","job":{"kind":"query","collection":"c"}}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("job.text"))
        );
        assert!(e.message.contains("vector"), "{}", e.message);
        let e = err(
            r#"{"type":"submit","job":{"kind":"query","collection":"c","text":"t","vector":[1]}}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job.vector"))
        );
        let e =
            err(r#"{"type":"submit","job":{"kind":"query","collection":"c","vector":[1,"x"]}}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job.vector[1]"))
        );
        let e = err(
            r#"{"type":"submit","job":{"kind":"ingest","collection":"c","documents":[{"id":"a","text":"","vector":{}}]}}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job.documents[0].vector"))
        );
        let e =
            err(r#"{"type":"submit","job":{"kind":"query","collection":"c","vector":[1,1e39]}}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job.vector"))
        );
        assert!(
            e.message.contains("value 1 is not a finite"),
            "{}",
            e.message
        );
        let e = err(
            r#"{"type":"submit","job":{"kind":"query","collection":"c","text":"t","k":"five"}}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job.k"))
        );
        let e = err(r#"{"type":"submit","job":{"kind":"status","colour":1}}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::UnknownField, Some("job.colour"))
        );
        let e = err(r#"{"type":"cancel","job":7}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job"))
        );
        let e = err(r#"{"type":"ping","colour":1}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::UnknownField, Some("colour"))
        );
        let e = err(r#"{"type":"auth","v":1}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("token"))
        );
        let e = err(
            r#"{"type":"submit","job":{"kind":"ingest","collection":"c","documents":[{"id":"a"}]}}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("job.documents[0].text"))
        );
        let e = err(r#"{"type":"submit","job":[]}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("job"))
        );
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = [
            ServerMsg::Accepted {
                reference: Some("r".into()),
                job: "j".into(),
                kind: "query".into(),
                node: 1,
                recorded: false,
            },
            ServerMsg::Event {
                job: "j".into(),
                state: JobState::Failed,
                reason: Some("x".into()),
            },
            ServerMsg::Result {
                job: "j".into(),
                data: serde_json::json!({"a": 1}),
                last: true,
            },
            ParseError::new(ErrorCode::Overloaded, "busy", None).to_msg(),
        ];
        for m in msgs {
            let text = encode(&m);
            assert_eq!(parse_server(&text).unwrap(), m, "{text}");
        }
        assert!(encode(&msgs_error()).contains(r#""code":"job_finished""#));
    }

    fn msgs_error() -> ServerMsg {
        ServerMsg::Error {
            reference: None,
            job: Some("j".into()),
            code: ErrorCode::JobFinished,
            message: "done".into(),
            field: None,
        }
    }

    #[test]
    fn error_code_names_match_their_json() {
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::Overloaded,
            ErrorCode::JobFinished,
            ErrorCode::UnsupportedVersion,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::String(code.as_str().into())
            );
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z_]{0,8}".prop_map(Value::from),
            prop::sample::select(vec![
                "auth", "submit", "status", "query", "kind", "job", "type", "token", "k"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "type",
                        "job",
                        "kind",
                        "token",
                        "v",
                        "ref",
                        "text",
                        "k",
                        "collection",
                        "documents",
                        "id",
                        "texts",
                        "filter",
                        "vector",
                        "nonce",
                        "limit"
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the parser, and a refusal always names a code.
        #[test]
        fn arbitrary_text_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = parse_client(&text) {
                prop_assert!(!e.message.is_empty());
            }
        }

        /// Arbitrary JSON shaped like messages never panics, and what parses re-encodes to
        /// something that parses the same.
        #[test]
        fn arbitrary_json_never_panics(v in json_value()) {
            let text = v.to_string();
            match parse_client(&text) {
                Ok(m) => prop_assert_eq!(parse_client(&encode(&m)).unwrap(), m),
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }
}
