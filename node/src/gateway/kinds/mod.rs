//! What each job kind does, through this node's view of the control plane and its process
//! groups (the node is linked with every peer, so every replica in the cluster is visible
//! here; no extra client node is started). This module checks a job's arguments
//! ([`validate`]) and dispatches it ([`execute`]); one file per family of kinds carries
//! them out.

mod cluster;
mod collection;
mod deploy;
mod generate;
mod retrieval;
mod snapshot;

#[cfg(test)]
use retrieval::{find_coordinator, ingest_steps};

use collection::{create_collection, delete_collection, promote_stale};
use deploy::{deploy, deployed};
use generate::{embed, generate};
use retrieval::{coordinator_of, ingest, query, rag};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::kinds::model::{ChatMessage, ChatRole, Finished, GenerateSpec};
use arbor_actors::replica::{EmbedFailure, EmbedRequest, ReplicaMsg};
use arbor_actors::retrieval::{CollectionRoute, QueryAnswer, rag_prompt};
use arbor_actors::router::{CallError, Router};
use arbor_actors::stream::generate_failover;
use arbor_actors::wire::Wire;
use arbor_scheduler::RaftHandle;
use arbor_scheduler::resources::{Bytes, Millicores, Resources};
use arbor_scheduler::state::{ClusterState, CollectionSpec, Metric};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::jobs::LocalJob;
use crate::config::NodeId;
use crate::control::{self, ControlReply, ControlRequest};
use arbor_proto::MAX_K;
use arbor_proto::gateway::{
    CreateCollectionJob, DeployJob, Document, EmbedJob, GenerateJob, IngestJob, JobSpec,
    PromoteStaleJob, QueryJob, RagJob, ServerMsg,
};
use arbor_proto::results::{
    CallResult, CollectionCreated, CollectionsResult, Deleted, DeployResult, DeploymentsResult,
    DrainResult, EmbedResult, GenerateResult, IngestReport, NodeSummary, PromoteStaleResult,
    RagAnswer, RagSources, StatusSummary,
};
use arbor_proto::{Coded, ErrorCode};

/// The most sources a RAG answer may be given.
pub const MAX_RAG_K: u32 = 16;
/// The most tokens one generation may ask for: the model's own limit, so that the gateway and
/// the model never disagree on what is allowed.
pub const MAX_TOKENS: u32 = arbor_actors::kinds::model::MAX_GENERATE_TOKENS;
/// The largest prompt, question or query text: the model's prompt limit (a query's text is
/// embedded, and a longer one is only truncated by the embedder).
pub const MAX_TEXT_BYTES: usize = arbor_actors::kinds::model::MAX_PROMPT_BYTES;
/// The most texts one embed job may carry.
pub const MAX_EMBED_TEXTS: usize = 256;
/// Documents to embed per request to the coordinator during an ingest: progress is reported,
/// and cancellation takes effect, between them.
const INGEST_STEP: usize = 16;
/// Documents in all per request to the coordinator: those that bring their own vectors cost
/// no embedding, and each request costs a round of writes on every partition, so they go in
/// larger steps (16 a step loaded 4x slower than 256).
const INGEST_STEP_DOCUMENTS: usize = 256;
/// About the most bytes of documents (as JSON) per request, well under the 8 MiB that a
/// message between nodes may carry.
const INGEST_STEP_BYTES: usize = 2 << 20;
/// How long a call to a deployment may take before another replica is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the job kinds need from the node.
#[derive(Clone)]
pub struct Env {
    pub node: NodeId,
    /// The cluster's name (the scope of its links).
    pub cluster: String,
    pub raft: RaftHandle,
    /// This node's link supervisor: the membership view, and sessions with peers.
    pub supervisor: ractor::ActorRef<crate::link::supervisor::SupervisorMsg>,
    /// The Raft address of every node in cluster.toml.
    pub raft_addrs: std::collections::BTreeMap<NodeId, String>,
    /// The process-group scope of this cluster's replicas.
    pub scope: String,
    /// The latest cluster summary (the `status` job's answer).
    pub summary: watch::Receiver<Arc<Value>>,
}

/// Why a job did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl Coded for JobFailure {
    fn code(&self) -> ErrorCode {
        self.code
    }
}

impl JobFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> JobFailure {
        JobFailure {
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> JobFailure {
        JobFailure {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

/// Every import row's vector is finite; otherwise a failure naming the row and the value
/// (in `job.rows[N].vector`).
pub(crate) fn check_finite(rows: &[arbor_proto::snapshot::ImportRow]) -> Result<(), JobFailure> {
    for (n, row) in rows.iter().enumerate() {
        if let Some(p) = row.vector.iter().position(|x| !x.is_finite()) {
            return Err(not_finite(&format!("job.rows[{n}].vector"), row.id, p));
        }
    }
    Ok(())
}

/// Every packed row's vector is finite; otherwise a failure naming the row and the value (in
/// `job.packed.vectors`).
pub(crate) fn check_finite_packed(
    rows: &arbor_proto::snapshot::RowColumns,
) -> Result<(), JobFailure> {
    match rows.vectors.iter().position(|x| !x.is_finite()) {
        Some(p) => Err(not_finite(
            "job.packed.vectors",
            rows.ids[p / rows.dimension],
            p % rows.dimension,
        )),
        None => Ok(()),
    }
}

fn not_finite(field: &str, id: u64, value: usize) -> JobFailure {
    JobFailure::field(
        ErrorCode::InvalidJob,
        field,
        format!("value {value} of row {id}'s vector is not a finite number"),
    )
}

/// Checks a job's arguments before it is accepted. Pure.
pub fn validate(spec: &JobSpec) -> Result<(), JobFailure> {
    let invalid = |field: &str, message: String| {
        Err(JobFailure::field(
            ErrorCode::InvalidJob,
            &format!("job.{field}"),
            message,
        ))
    };
    let named = |field: &str, name: &str| {
        if name.trim().is_empty() {
            invalid(field, format!("{field} is empty"))
        } else {
            Ok(())
        }
    };
    let text = |field: &str, text: &str| {
        named(field, text)?;
        if text.len() > MAX_TEXT_BYTES {
            return invalid(
                field,
                format!(
                    "{field} is {} bytes; at most {MAX_TEXT_BYTES} are allowed",
                    text.len()
                ),
            );
        }
        Ok(())
    };
    match spec {
        JobSpec::Undeploy(n) | JobSpec::Rollback(n) | JobSpec::DeleteCollection(n) => {
            named("name", &n.name)
        }
        JobSpec::Scale(s) => named("name", &s.name),
        JobSpec::PromoteStale(p) => named("collection", &p.collection),
        JobSpec::AddNode(n) | JobSpec::RemoveNode(n) | JobSpec::Drain(n) | JobSpec::Undrain(n)
            if n.node == 0 =>
        {
            invalid("node", "node ids start at 1".into())
        }
        JobSpec::CreateCollection(c) => {
            named("name", &c.name)?;
            named("embedder", &c.embedder)?;
            if c.partitions == 0 {
                return invalid("partitions", "partitions must be at least 1".into());
            }
            if c.replicas == 0 {
                return invalid("replicas", "replicas must be at least 1".into());
            }
            if c.dimension == 0 {
                return invalid("dimension", "dimension must be at least 1".into());
            }
            if let Some(Err(e)) = c.index.map(|i| i.validate()) {
                return invalid("index", e.0);
            }
            metric(&c.metric).map(|_| ())
        }
        JobSpec::Ingest(i) => {
            named("collection", &i.collection)?;
            if i.documents.is_empty() {
                return invalid("documents", "documents is empty".into());
            }
            match i.documents.iter().position(|d| d.id.is_empty()) {
                Some(n) => invalid(
                    &format!("documents[{n}].id"),
                    "a document id is empty".into(),
                ),
                None => Ok(()),
            }
        }
        JobSpec::Query(q) => {
            named("collection", &q.collection)?;
            if let Some(t) = &q.text {
                text("text", t)?;
            }
            if q.vector.as_ref().is_some_and(Vec::is_empty) {
                return invalid("vector", "vector is empty".into());
            }
            if q.k == 0 || q.k > MAX_K {
                return invalid("k", format!("k = {} is not in 1..={MAX_K}", q.k));
            }
            let efs = arbor_proto::index::EF_RANGE;
            if let Some(ef) = q.ef.filter(|ef| !efs.contains(ef)) {
                return invalid(
                    "ef",
                    format!("ef = {ef} is not in {}..={}", efs.start(), efs.end()),
                );
            }
            match &q.filter {
                Some(f) => arbor_actors::partition::MetadataFilter::parse(&f.to_string())
                    .map(|_| ())
                    .or_else(|e| invalid("filter", format!("filter: {e}"))),
                None => Ok(()),
            }
        }
        JobSpec::Rag(r) => {
            named("collection", &r.collection)?;
            text("question", &r.question)?;
            if r.k == 0 || r.k > MAX_RAG_K {
                return invalid("k", format!("k = {} is not in 1..={MAX_RAG_K}", r.k));
            }
            max_tokens(r.max_tokens)
        }
        JobSpec::Embed(e) => {
            if e.texts.is_empty() || e.texts.len() > MAX_EMBED_TEXTS {
                return invalid(
                    "texts",
                    format!(
                        "texts has {} entries; give 1..={MAX_EMBED_TEXTS}",
                        e.texts.len()
                    ),
                );
            }
            Ok(())
        }
        JobSpec::Generate(g) => {
            text("prompt", &g.prompt)?;
            max_tokens(g.max_tokens)
        }
        JobSpec::Call(c) => named("deployment", &c.deployment),
        JobSpec::Export(e) => named("collection", &e.collection),
        JobSpec::Import(i) => {
            named("collection", &i.collection)?;
            let max = arbor_proto::snapshot::MAX_IMPORT_ROWS;
            let n = i.row_count();
            if n == 0 || n > max {
                return invalid(
                    "rows",
                    format!("the job carries {n} rows (rows and packed together); give 1..={max}"),
                );
            }
            // Packed rows are read (and their values checked) where they are written.
            check_finite(&i.rows)
        }
        JobSpec::Deploy(_)
        | JobSpec::Backup
        | JobSpec::Restore(_)
        | JobSpec::Collections
        | JobSpec::Deployments
        | JobSpec::Status
        | JobSpec::Membership
        | JobSpec::ClusterStatus
        | JobSpec::AddNode(_)
        | JobSpec::RemoveNode(_)
        | JobSpec::Drain(_)
        | JobSpec::Undrain(_) => Ok(()),
    }
}

fn max_tokens(n: u32) -> Result<(), JobFailure> {
    if n == 0 || n > MAX_TOKENS {
        return Err(JobFailure::field(
            ErrorCode::InvalidJob,
            "job.max_tokens",
            format!("max_tokens = {n} is not in 1..={MAX_TOKENS}"),
        ));
    }
    Ok(())
}

fn metric(name: &str) -> Result<Metric, JobFailure> {
    name.parse().map_err(|e: arbor_proto::UnknownMetric| {
        JobFailure::field(ErrorCode::InvalidJob, "job.metric", e.to_string())
    })
}

/// Hands a job's events to its submitter and its watchers.
pub struct Emit {
    pub job: Arc<LocalJob>,
    /// The submitter's connection (events to it are never dropped).
    pub owner: Option<super::listener::Outbox>,
    /// Progress is also written to the job's record, at most this often.
    pub on_progress: Box<dyn Fn(f32) + Send + Sync>,
}

impl Emit {
    pub fn send(&self, msg: ServerMsg) {
        self.job.publish(&msg);
        if let Some(owner) = &self.owner {
            let _ = owner.send(super::listener::Outgoing::Msg(msg));
        }
    }

    fn progress(&self, done: u64, total: u64, unit: &str) {
        let fraction = if total == 0 {
            0.0
        } else {
            (done as f32 / total as f32).clamp(0.0, 1.0)
        };
        self.job.update(|s| s.progress = fraction);
        (self.on_progress)(fraction);
        self.send(ServerMsg::Progress {
            job: self.job.id.clone(),
            done,
            total,
            unit: unit.into(),
        });
    }

    fn token(&self, text: &str) {
        self.send(ServerMsg::Token {
            job: self.job.id.clone(),
            text: text.into(),
        });
    }
}

/// Runs one job to its result.
pub async fn execute(env: &Env, spec: JobSpec, emit: &Emit) -> Result<Value, JobFailure> {
    let spec_kind = spec.kind();
    match spec {
        JobSpec::Status => Ok(Value::clone(&env.summary.borrow())),
        JobSpec::Deploy(d) => deploy(env, d).await,
        JobSpec::Undeploy(n) => {
            control_request(&env.raft, ControlRequest::Undeploy(n.name.clone())).await?;
            data(Deleted {
                name: n.name,
                deleted: true,
            })
        }
        JobSpec::Scale(s) => {
            let request = ControlRequest::Scale {
                name: s.name.clone(),
                replicas: s.replicas,
            };
            deployed(env, s.name, request).await
        }
        JobSpec::Rollback(n) => {
            deployed(env, n.name.clone(), ControlRequest::Rollback(n.name)).await
        }
        JobSpec::CreateCollection(c) => create_collection(env, c).await,
        JobSpec::DeleteCollection(n) => delete_collection(env, n.name).await,
        JobSpec::Collections => {
            let collections = read(&env.raft, control::collections).await?;
            data(CollectionsResult { collections })
        }
        JobSpec::Deployments => {
            let deployments = read(&env.raft, control::report).await?;
            data(DeploymentsResult { deployments })
        }
        JobSpec::Ingest(i) => ingest(env, i, emit).await,
        JobSpec::Query(q) => {
            let coordinator = coordinator_of(env, &q.collection).await?.coordinator;
            let answer = query(env, &coordinator, &q).await?;
            serde_json::to_value(answer).map_err(internal)
        }
        JobSpec::Rag(r) => rag(env, r, emit).await,
        JobSpec::Embed(e) => embed(env, e).await,
        JobSpec::Generate(g) => generate(env, g, emit).await,
        JobSpec::PromoteStale(p) => promote_stale(env, p).await,
        JobSpec::Export(e) => snapshot::export(env, e).await,
        JobSpec::Import(i) => snapshot::import(env, i).await,
        JobSpec::Backup => snapshot::backup(env).await,
        JobSpec::Restore(r) => snapshot::restore(env, r).await,
        JobSpec::Membership => {
            let report = cluster::membership(env).await?;
            serde_json::to_value(report).map_err(internal)
        }
        JobSpec::ClusterStatus => {
            let status = cluster::cluster_status(env).await?;
            serde_json::to_value(status).map_err(internal)
        }
        JobSpec::AddNode(n) => {
            let outcome =
                cluster::change_membership(env, cluster::MembershipChange::Add(n.node)).await?;
            serde_json::to_value(outcome).map_err(internal)
        }
        JobSpec::RemoveNode(n) => {
            let outcome =
                cluster::change_membership(env, cluster::MembershipChange::Remove(n.node)).await?;
            serde_json::to_value(outcome).map_err(internal)
        }
        JobSpec::Drain(n) | JobSpec::Undrain(n) => {
            let draining = matches!(spec_kind, "drain");
            cluster::drain(env, n.node, draining).await?;
            data(DrainResult {
                node: n.node,
                draining,
            })
        }
        JobSpec::Call(c) => {
            let name = c.deployment.clone();
            let idempotent = read_here(&env.raft, move |s| {
                s.deployments.get(&name).is_some_and(|d| d.spec.idempotent)
            })
            .await?;
            let reply = router(env, &c.deployment)
                .idempotent(idempotent)
                .call(c.payload.into_bytes(), CALL_TIMEOUT)
                .await
                .map_err(call_failure)?;
            data(CallResult {
                reply: String::from_utf8_lossy(&reply).into_owned(),
            })
        }
    }
}

/// A typed result as the `result` message's data.
fn data(result: impl serde::Serialize) -> Result<Value, JobFailure> {
    serde_json::to_value(result).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::new(ErrorCode::Internal, e.to_string())
}

/// A linearizable read of the control plane, for what a client is shown (listings): a node
/// that lags (just restarted, cut off) answers what the leader would, or that it cannot,
/// never an old state.
async fn read<R: Send + 'static>(
    raft: &RaftHandle,
    f: impl FnOnce(&ClusterState) -> R + Send + 'static,
) -> Result<R, JobFailure> {
    raft.read(f).await.map_err(unreachable_control)
}

fn unreachable_control(e: arbor_scheduler::ReadError) -> JobFailure {
    JobFailure::new(
        ErrorCode::Unavailable,
        format!("the control plane is not reachable from this node: {e}"),
    )
}

/// This node's own copy of the state, for finding where to send a job (a deployment's
/// name): a slightly old answer only costs a retry there.
async fn read_here<R: Send + 'static>(
    raft: &RaftHandle,
    f: impl FnOnce(&ClusterState) -> R + Send + 'static,
) -> Result<R, JobFailure> {
    raft.read_local(f).await.map_err(|e| {
        JobFailure::new(
            ErrorCode::Unavailable,
            format!("the control plane is not reachable from this node: {e}"),
        )
    })
}

pub(super) async fn control_request(
    raft: &RaftHandle,
    request: ControlRequest,
) -> Result<ControlReply, JobFailure> {
    control::carry_out(raft, request)
        .await
        .map_err(|e| JobFailure::new(e.code(), e.to_string()))
}

/// The deployment of `kind` to use: the one named, or the only one there is. Pure.
pub fn pick_deployment(
    state: &ClusterState,
    kind: &str,
    named: Option<&str>,
) -> Result<String, JobFailure> {
    let of_kind: Vec<&str> = state
        .deployments
        .values()
        .filter(|d| d.spec.kind == kind)
        .map(|d| d.spec.name.as_str())
        .collect();
    match named {
        Some(name) if of_kind.contains(&name) => Ok(name.to_owned()),
        Some(name) => Err(JobFailure::field(
            ErrorCode::NotFound,
            "job.deployment",
            format!(
                "there is no {kind} deployment {name:?}; the {kind} deployments are {of_kind:?}"
            ),
        )),
        None => match of_kind.as_slice() {
            [only] => Ok((*only).to_owned()),
            [] => Err(JobFailure::new(
                ErrorCode::Unavailable,
                format!("there is no {kind} deployment; deploy one (see examples/)"),
            )),
            many => Err(JobFailure::field(
                ErrorCode::InvalidJob,
                "job.deployment",
                format!("there are several {kind} deployments ({many:?}); name one in deployment"),
            )),
        },
    }
}

fn call_failure(e: CallError) -> JobFailure {
    let code = e.code();
    match e {
        CallError::Replica(why) => JobFailure::new(code, why.to_string()),
        other => JobFailure::new(code, other.to_string()),
    }
}

/// One typed request that may run twice without harm (a read, an upsert by id, an embedding)
/// to a replica of `deployment`: a replica lost during it is replaced by another. The
/// replica's reply, decoded. `here_first`: a replica on this node is asked first where there
/// is one ([`Router::prefer_local`]), for requests that carry rows.
async fn ask_idempotent<R: Send + 'static>(
    env: &Env,
    deployment: &str,
    here_first: bool,
    make: impl Fn(ractor::RpcReplyPort<Wire<R>>) -> ReplicaMsg,
) -> Result<R, JobFailure> {
    router(env, deployment)
        .idempotent(true)
        .prefer_local(here_first)
        .ask(make, CALL_TIMEOUT)
        .await
        .map_err(call_failure)?
        .into_inner()
        .map_err(internal)
}

/// A router to `deployment`'s replicas, as every job kind calls them.
fn router(env: &Env, deployment: &str) -> Router {
    Router::new(env.scope.clone(), deployment).with_attempt_deadline(Duration::from_secs(10))
}

/// The `status` job's answer. Pure.
pub fn summarize(state: &ClusterState, node: NodeId, leader: Option<NodeId>) -> StatusSummary {
    use arbor_scheduler::state::Liveness;
    let views = state.node_views();
    StatusSummary {
        node,
        leader,
        nodes: state
            .nodes
            .iter()
            .map(|(id, n)| {
                let used = views.get(id).map(|v| v.used.clone()).unwrap_or_default();
                NodeSummary {
                    id: *id,
                    state: match n.liveness {
                        Liveness::Ready => "up",
                        Liveness::Down => "down",
                    }
                    .into(),
                    draining: n.draining,
                    capacity: n.capacity.to_string(),
                    used: used.to_string(),
                    cpu_millicores: n.capacity.cpu.0,
                    cpu_used_millicores: used.cpu.0,
                }
            })
            .collect(),
        deployments: state.deployments.len() as u64,
        collections: state.collections.len() as u64,
        jobs_running: state.jobs.unfinished() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_proto::gateway::parse_client;

    fn job(text: &str) -> JobSpec {
        match parse_client(&format!(r#"{{"type":"submit","job":{text}}}"#)).unwrap() {
            arbor_proto::gateway::ClientMsg::Submit { job, .. } => job,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arguments_out_of_range_name_their_field() {
        let cases = [
            (
                r#"{"kind":"query","collection":"c","text":"t","k":0}"#,
                "job.k",
            ),
            (
                r#"{"kind":"query","collection":"c","text":"  "}"#,
                "job.text",
            ),
            (
                r#"{"kind":"query","collection":"c","text":"t","ef":0}"#,
                "job.ef",
            ),
            (
                r#"{"kind":"create_collection","name":"c","partitions":1,"replicas":1,
                    "embedder":"e","index":{"hnsw":{"m":1}}}"#,
                "job.index",
            ),
            (
                r#"{"kind":"query","collection":"c","text":"t","filter":{"a":{"$nope":1}}}"#,
                "job.filter",
            ),
            (
                r#"{"kind":"rag","collection":"c","question":"q","k":17}"#,
                "job.k",
            ),
            (
                r#"{"kind":"generate","prompt":"p","max_tokens":0}"#,
                "job.max_tokens",
            ),
            // The model's own limit (the review's 4096 was accepted, then failed there).
            (
                r#"{"kind":"generate","prompt":"p","max_tokens":2049}"#,
                "job.max_tokens",
            ),
            (
                r#"{"kind":"query","collection":"c","vector":[]}"#,
                "job.vector",
            ),
            (r#"{"kind":"embed","texts":[]}"#, "job.texts"),
            (
                r#"{"kind":"ingest","collection":"c","documents":[]}"#,
                "job.documents",
            ),
            (
                r#"{"kind":"ingest","collection":"c","documents":[{"id":"","text":"t"}]}"#,
                "job.documents[0].id",
            ),
            (
                r#"{"kind":"create_collection","name":"c","partitions":0,"replicas":1,"embedder":"e"}"#,
                "job.partitions",
            ),
            (
                r#"{"kind":"create_collection","name":"c","partitions":1,"replicas":1,"embedder":"e","metric":"manhattan"}"#,
                "job.metric",
            ),
            (r#"{"kind":"undeploy","name":""}"#, "job.name"),
        ];
        for (text, field) in cases {
            let e = validate(&job(text)).expect_err(text);
            assert_eq!(e.code, ErrorCode::InvalidJob, "{text}");
            assert_eq!(e.field.as_deref(), Some(field), "{text}: {}", e.message);
        }
        validate(&job(r#"{"kind":"query","collection":"c","text":"t"}"#)).unwrap();
        // Texts past the model's prompt limit, and more tokens than the model would generate,
        // are refused here rather than by the model after the job was accepted.
        let long = "w ".repeat(MAX_TEXT_BYTES);
        for (text, field) in [
            (
                format!(r#"{{"kind":"generate","prompt":"{long}"}}"#),
                "job.prompt",
            ),
            (
                format!(r#"{{"kind":"rag","collection":"c","question":"{long}"}}"#),
                "job.question",
            ),
            (
                format!(r#"{{"kind":"query","collection":"c","text":"{long}"}}"#),
                "job.text",
            ),
            (
                format!(
                    r#"{{"kind":"generate","prompt":"p","max_tokens":{}}}"#,
                    MAX_TOKENS + 1
                ),
                "job.max_tokens",
            ),
        ] {
            let e = validate(&job(&text)).expect_err(field);
            assert_eq!(e.field.as_deref(), Some(field), "{}", e.message);
        }
    }

    #[test]
    fn ingest_steps_hold_few_documents_to_embed_and_many_with_vectors() {
        let doc = |vector: bool, text: usize| Document {
            id: "d".into(),
            text: "x".repeat(text),
            title: None,
            metadata: Default::default(),
            vector: vector.then(|| vec![0.0; 384]),
        };
        let sizes = |docs: &[Document]| -> Vec<usize> {
            let steps = ingest_steps(docs);
            let mut next = 0;
            for s in &steps {
                assert_eq!(s.start, next, "steps cover the documents in order");
                next = s.end;
            }
            assert_eq!(next, docs.len());
            steps.iter().map(|s| s.len()).collect()
        };
        assert!(ingest_steps(&[]).is_empty());
        assert_eq!(sizes(&vec![doc(false, 10); 40]), vec![16, 16, 8]);
        assert_eq!(sizes(&vec![doc(true, 10); 600]), vec![256, 256, 88]);
        // Mixed: 16 to embed end a step, whatever the vectors around them.
        let mixed: Vec<Document> = (0..64).map(|i| doc(i % 2 == 0, 10)).collect();
        assert_eq!(sizes(&mixed), vec![33, 31]);
        // Large documents: about 2 MiB a step, and one alone when it is larger.
        assert_eq!(sizes(&vec![doc(true, 700_000); 7]), vec![2, 2, 2, 1]);
        assert_eq!(sizes(&vec![doc(false, 3 << 20); 2]), vec![1, 1]);
    }

    #[test]
    fn deployments_are_picked_by_name_or_when_only_one() {
        use arbor_scheduler::Command;
        use arbor_scheduler::state::DeploymentSpec;
        let mut s = ClusterState::default();
        assert_eq!(
            pick_deployment(&s, "model", None).unwrap_err().code,
            ErrorCode::Unavailable
        );
        let spec = |name: &str| DeploymentSpec {
            name: name.into(),
            kind: "model".into(),
            replicas: 1,
            resources: Default::default(),
            strategy: Default::default(),
            constraints: vec![],
            anti_affinity: false,
            max_unavailable: 1,
            version: String::new(),
            config: "{}".into(),
            collection: None,
            idempotent: false,
            autoscaling: None,
        };
        s.apply(&Command::CreateDeployment(spec("m1"))).unwrap();
        assert_eq!(pick_deployment(&s, "model", None).unwrap(), "m1");
        s.apply(&Command::CreateDeployment(spec("m2"))).unwrap();
        assert_eq!(
            pick_deployment(&s, "model", None).unwrap_err().code,
            ErrorCode::InvalidJob
        );
        assert_eq!(pick_deployment(&s, "model", Some("m2")).unwrap(), "m2");
        assert_eq!(
            pick_deployment(&s, "model", Some("m3")).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            find_coordinator(&s, "docs").unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
