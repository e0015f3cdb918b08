//! The coordinator: ingest and query over one collection's partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_kernels::topk::Metric;
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
    PartitionRequest, SearchHit, VectorRecord, WriteOp, remote,
};
use crate::replica::{EmbedFailure, EmbedRequest, ReplicaMsg};
use crate::router::{CallError, Router};
use crate::wire::Wire;

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

/// What a coordinator serves: a collection and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionRoute {
    pub collection: String,
    pub partitions: u32,
    /// The embedder deployment.
    pub embedder: String,
    #[serde(default = "cosine")]
    pub metric: Metric,
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

fn cosine() -> Metric {
    Metric::Cosine
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

/// A document to ingest. Its id names it: ingesting the same id again replaces it (its chunks
/// are overwritten, and those past its new end are deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    /// Chunked and embedded; with `vector`, stored whole as the one chunk's text (it may then
    /// be empty).
    pub text: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The document's own vector (the collection's dimension, finite values): it is stored as
    /// exactly one chunk with this vector and is not embedded, which is how vectors made
    /// elsewhere are loaded, and how bulk loads go without the embedder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

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

/// Why an ingest or query failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("embedding failed: {0}")]
    Embed(String),
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

/// Ingest and query over one collection.
#[derive(Debug, Clone)]
pub struct Coordinator {
    scope: String,
    control: Control,
    route: CollectionRoute,
    embedder: Router,
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
        route.chunking.validate().map_err(RetrievalError::Invalid)?;
        if route.partitions == 0 {
            return Err(RetrievalError::Invalid(
                "partitions must be at least 1".into(),
            ));
        }
        let scope = scope.into();
        Ok(Coordinator {
            embedder: Router::new(scope.clone(), route.embedder.clone()),
            scope,
            control,
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

    /// Chunks, embeds and writes `docs`; returns once every chunk is durable on every live
    /// replica of its partition. Idempotent: chunk ids derive from document id and position.
    ///
    /// A document ingested again replaces the one stored: before anything is written, the
    /// chunks past its new end are deleted (chunk 0 records how many a document has, in
    /// `_chunks`). Deleting first means that an ingest that fails half way leaves no chunk
    /// that a later ingest of the document could not find. When a batch names a document
    /// more than once, its last occurrence is the one stored.
    pub async fn ingest(
        &self,
        docs: &[Document],
        mut progress: impl FnMut(IngestProgress),
    ) -> Result<IngestReport, RetrievalError> {
        let start = Instant::now();
        let dimension = if docs.iter().any(|d| d.vector.is_some()) {
            Some(self.dimension().await?)
        } else {
            None
        };
        let last: HashMap<&str, usize> = docs
            .iter()
            .enumerate()
            .map(|(n, d)| (d.id.as_str(), n))
            .collect();
        let mut pending: Vec<Pending> = Vec::new();
        let mut counts: Vec<(&str, u32)> = Vec::new();
        for (n, doc) in docs.iter().enumerate() {
            check_document(doc, dimension)?;
            if last.get(doc.id.as_str()) != Some(&n) {
                continue;
            }
            let pieces: Vec<(String, Option<Vec<f32>>)> = match &doc.vector {
                Some(v) => vec![(doc.text.clone(), Some(v.clone()))],
                None => chunks(&doc.text, self.route.chunking)
                    .into_iter()
                    .map(|t| (t, None))
                    .collect(),
            };
            let count = pieces.len() as u32;
            for (i, (text, vector)) in pieces.into_iter().enumerate() {
                let i = i as u32;
                let mut meta = doc.metadata.clone();
                meta.insert("_doc".into(), Value::from(doc.id.clone()));
                meta.insert("_chunk".into(), Value::from(i));
                meta.insert("_text".into(), Value::from(text.clone()));
                if let Some(title) = &doc.title {
                    meta.insert("_title".into(), Value::from(title.clone()));
                }
                if i == 0 {
                    meta.insert("_chunks".into(), Value::from(count));
                }
                pending.push(Pending {
                    id: chunk_id(&doc.id, i),
                    text,
                    metadata: Value::Object(meta).to_string(),
                    vector,
                });
            }
            counts.push((doc.id.as_str(), count));
        }
        self.prune(&counts).await?;

        let total = pending.len() as u64;
        let mut per_partition = vec![0u64; self.route.partitions as usize];
        let mut done = 0u64;
        // Steps of at most EMBED_BATCH texts to embed and UPSERT_BATCH rows; a step's writes
        // run while the next step is embedded.
        let mut writing: Option<tokio::task::JoinHandle<Result<u64, RetrievalError>>> = None;
        let mut rest = pending;
        while !rest.is_empty() {
            let mut to_embed = 0;
            let mut take = 0;
            while take < rest.len() && take < UPSERT_BATCH {
                if rest[take].vector.is_none() {
                    if to_embed == EMBED_BATCH {
                        break;
                    }
                    to_embed += 1;
                }
                take += 1;
            }
            let mut step: Vec<Pending> = rest.drain(..take).collect();
            if to_embed > 0 {
                let texts: Vec<String> = step
                    .iter()
                    .filter(|p| p.vector.is_none())
                    .map(|p| p.text.clone())
                    .collect();
                let mut vectors = self.embed(texts).await?.into_iter();
                for p in step.iter_mut().filter(|p| p.vector.is_none()) {
                    p.vector = Some(vectors.next().ok_or_else(|| {
                        RetrievalError::Embed("the embedder returned too few vectors".into())
                    })?);
                }
            }
            let mut by_partition: BTreeMap<u32, Vec<VectorRecord>> = BTreeMap::new();
            for p in step {
                by_partition
                    .entry(partition_of(p.id, self.route.partitions))
                    .or_default()
                    .push(VectorRecord {
                        id: p.id,
                        vector: p.vector.unwrap_or_default(),
                        metadata: p.metadata,
                    });
            }
            for (partition, records) in &by_partition {
                per_partition[*partition as usize] += records.len() as u64;
            }
            if let Some(previous) = writing.take() {
                done += joined(previous.await)?;
                progress(IngestProgress {
                    chunks_done: done,
                    chunks_total: total,
                });
            }
            let this = self.clone();
            writing = Some(tokio::spawn(async move { this.upsert(by_partition).await }));
        }
        if let Some(previous) = writing.take() {
            done += joined(previous.await)?;
            progress(IngestProgress {
                chunks_done: done,
                chunks_total: total,
            });
        }
        Ok(IngestReport {
            documents: docs.len() as u64,
            chunks: total,
            per_partition,
            elapsed_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Writes each partition's rows to its replicas, the partitions at once; the rows written.
    async fn upsert(
        &self,
        by_partition: BTreeMap<u32, Vec<VectorRecord>>,
    ) -> Result<u64, RetrievalError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, records) in by_partition {
            let this = self.clone();
            tasks.spawn(async move {
                let n = records.len() as u64;
                for part in records.chunks(UPSERT_BATCH) {
                    this.write(partition, WriteOp::Upsert(part.to_vec()))
                        .await?;
                }
                Ok(n)
            });
        }
        let mut written = 0;
        while let Some(done) = tasks.join_next().await {
            written += joined(done)?;
        }
        Ok(written)
    }

    /// Deletes the chunks that documents had past their new count (`counts`: document id and
    /// the number of chunks it is about to have). Chunk 0 of each is read (by id, from one
    /// replica of its partition) for the count stored with it; a document stored before
    /// counts were kept has none and is left as it is.
    async fn prune(&self, counts: &[(&str, u32)]) -> Result<(), RetrievalError> {
        let mut asks: BTreeMap<u32, Vec<(u64, String, u32)>> = BTreeMap::new();
        for (doc, n) in counts {
            let id = chunk_id(doc, 0);
            asks.entry(partition_of(id, self.route.partitions))
                .or_default()
                .push((id, (*doc).to_owned(), *n));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, docs) in asks {
            let this = self.clone();
            tasks.spawn(async move { this.stale_chunks(partition, docs).await });
        }
        let mut stale: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        while let Some(found) = tasks.join_next().await {
            for id in joined(found)? {
                stale
                    .entry(partition_of(id, self.route.partitions))
                    .or_default()
                    .push(id);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, ids) in stale {
            let this = self.clone();
            tasks.spawn(async move {
                for part in ids.chunks(DELETE_BATCH) {
                    this.write(partition, WriteOp::Delete(part.to_vec()))
                        .await?;
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            joined(done)?;
        }
        Ok(())
    }

    /// The ids of the chunks past the new end of `docs` (chunk 0's id, document id, new
    /// count), all of whose chunk 0 is in `partition`.
    async fn stale_chunks(
        &self,
        partition: u32,
        docs: Vec<(u64, String, u32)>,
    ) -> Result<Vec<u64>, RetrievalError> {
        let mut stale = Vec::new();
        for batch in docs.chunks(GET_BATCH) {
            let ids = batch.iter().map(|(id, _, _)| *id).collect();
            let records = match self.read(partition, PartitionRequest::Get(ids)).await? {
                PartitionAnswer::Records(records) => records,
                other => {
                    return Err(RetrievalError::Read {
                        partition,
                        reason: format!("a get was answered with {}", answer_name(&other)),
                    });
                }
            };
            let stored: HashMap<u64, u64> = records
                .iter()
                .filter_map(|r| {
                    let meta: Map<String, Value> = serde_json::from_str(&r.metadata).ok()?;
                    let count = meta.get("_chunks")?.as_u64()?;
                    let doc = meta.get("_doc")?.as_str()?;
                    // An id of another document (a hash collision) says nothing about this one.
                    batch
                        .iter()
                        .any(|(id, d, _)| *id == r.id && d == doc)
                        .then_some((r.id, count))
                })
                .collect();
            for (id, doc, new) in batch {
                if let Some(&old) = stored.get(id) {
                    let old = u32::try_from(old).unwrap_or(u32::MAX);
                    stale.extend((*new..old).map(|i| chunk_id(doc, i)));
                }
            }
        }
        Ok(stale)
    }

    /// The collection's dimension, as the control plane records it.
    async fn dimension(&self) -> Result<u32, RetrievalError> {
        self.control
            .view(&self.deployment(0))
            .map(|v| v.dimension)
            .ok_or_else(|| RetrievalError::NoReplica {
                collection: self.route.collection.clone(),
                partition: 0,
            })
    }

    /// The `k` chunks closest to `text`.
    pub async fn query(
        &self,
        text: &str,
        k: u32,
        filter: Option<&MetadataFilter>,
    ) -> Result<QueryAnswer, RetrievalError> {
        if text.trim().is_empty() {
            return Err(RetrievalError::Invalid("the query text is empty".into()));
        }
        let mut vectors = self.embed(vec![text.to_owned()]).await?;
        let vector = vectors
            .pop()
            .ok_or_else(|| RetrievalError::Embed("the embedder returned no vector".into()))?;
        self.query_vector(vector, k, filter).await
    }

    /// Retrieves the `k` chunks closest to `question`, asks a replica of the model deployment
    /// to answer from them, and streams the answer's text to `on_text` as it is generated.
    pub async fn rag(
        &self,
        question: &str,
        k: u32,
        max_tokens: u32,
        on_text: impl FnMut(&str),
    ) -> Result<RagAnswer, RetrievalError> {
        let model = self.route.model.as_deref().ok_or_else(|| {
            RetrievalError::Invalid(format!(
                "the coordinator of {:?} has no model deployment configured (config: model)",
                self.route.collection
            ))
        })?;
        let found = self.query(question, k, None).await?;
        let spec = GenerateSpec::chat(rag_prompt(question, &found.results), max_tokens);
        let (answer, finished) = crate::stream::generate_failover(
            &self.scope,
            model,
            spec,
            on_text,
            || false,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| RetrievalError::Generate(e.to_string()))?;
        Ok(RagAnswer {
            answer,
            sources: found.results,
            missing_partitions: found.missing_partitions,
            finish_reason: finished.reason,
        })
    }

    /// The `k` chunks closest to `vector`: one replica of every partition is asked (a second
    /// one too if the first is slow), and the answers are merged.
    pub async fn query_vector(
        &self,
        vector: Vec<f32>,
        k: u32,
        filter: Option<&MetadataFilter>,
    ) -> Result<QueryAnswer, RetrievalError> {
        if k == 0 {
            return Err(RetrievalError::Invalid("k must be at least 1".into()));
        }
        let dimension = self.dimension().await?;
        if vector.len() != dimension as usize {
            return Err(RetrievalError::Invalid(format!(
                "the query vector has {} values; collection {:?} has dimension {dimension}",
                vector.len(),
                self.route.collection
            )));
        }
        if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
            return Err(RetrievalError::Invalid(format!(
                "the query vector's value {i} is not a finite number"
            )));
        }
        let request = PartitionRequest::search(vec![vector], k, filter);
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..self.route.partitions {
            let (this, request) = (self.clone(), request.clone());
            tasks.spawn(async move { (partition, this.search(partition, request).await) });
        }
        let mut hits: Vec<SearchHit> = Vec::new();
        let mut missing = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Some(mut found))) => hits.append(&mut found),
                Ok((partition, None)) => missing.push(partition),
                Err(e) => tracing::warn!("a partition search task failed: {e}"),
            }
        }
        missing.sort_unstable();
        let lower_better = self.route.metric.lower_is_better();
        hits.sort_by(|a, b| {
            let order = a.score.total_cmp(&b.score);
            if lower_better { order } else { order.reverse() }
        });
        hits.truncate(k as usize);
        Ok(QueryAnswer {
            results: hits.into_iter().map(hit).collect(),
            missing_partitions: missing,
        })
    }

    /// Embeds `texts`, trying another embedder replica when one is overloaded or gone.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, RetrievalError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = EmbedRequest {
                texts: texts.clone(),
            };
            let reply = self
                .embedder
                .ask(
                    |reply| ReplicaMsg::Embed(Wire::new(request.clone()), reply),
                    Duration::from_secs(30),
                )
                .await;
            let answer = match reply {
                Ok(wire) => wire
                    .into_inner()
                    .map_err(|e| RetrievalError::Embed(e.to_string()))?,
                Err(CallError::NoReplicas { deployment }) => {
                    return Err(RetrievalError::Embed(format!(
                        "no replica of embedder deployment {deployment:?} is reachable"
                    )));
                }
                Err(e) => return Err(RetrievalError::Embed(e.to_string())),
            };
            match answer {
                Ok(result) => return Ok(result.vectors),
                Err(EmbedFailure::Overloaded { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(RetrievalError::Embed(e.to_string())),
            }
        }
    }

    fn deployment(&self, partition: u32) -> String {
        partition_deployment(&self.route.collection, partition)
    }

    /// The in-sync replicas of `partition` this node can reach, in random order: the only
    /// ones that may answer a read.
    fn readable(&self, partition: u32) -> Vec<ActorCell> {
        let deployment = self.deployment(partition);
        let Some(view) = self.control.view(&deployment) else {
            return Vec::new();
        };
        let mut cells: Vec<ActorCell> = view
            .set
            .in_sync
            .iter()
            .filter_map(|(r, g)| remote::member(&self.scope, &deployment, *r, *g))
            .collect();
        if !cells.is_empty() {
            let first = rand::random_range(0..cells.len());
            cells.rotate_left(first);
        }
        cells
    }

    /// Writes to the partition's primary, which answers once every in-sync replica has the
    /// write durable. While the replica set changes (a failover, a dropped follower, this
    /// node behind the control plane) it tries again, for up to `write_patience_ms`; writes
    /// are idempotent (rows by id), so a try that timed out may be repeated.
    async fn write(&self, partition: u32, op: WriteOp) -> Result<(), RetrievalError> {
        let deployment = self.deployment(partition);
        let deadline = Instant::now() + Duration::from_millis(self.route.write_patience_ms);
        let unavailable = |reason: String| RetrievalError::Unavailable {
            collection: self.route.collection.clone(),
            partition,
            reason,
        };
        let mut last = String::from("no primary yet");
        while Instant::now() < deadline {
            let Some(view) = self.control.view(&deployment) else {
                return Err(RetrievalError::NoReplica {
                    collection: self.route.collection.clone(),
                    partition,
                });
            };
            let Some((primary, generation)) = view.primary() else {
                last = format!(
                    "no in-sync replica is left (epoch {}); it waits for one to return",
                    view.set.epoch
                );
                let _ = self
                    .control
                    .view_at(&deployment, view.set.epoch + 1, Duration::from_millis(500))
                    .await;
                continue;
            };
            let Some(cell) = remote::member(&self.scope, &deployment, primary, generation) else {
                last = format!("its primary (replica {primary}) is not reachable from this node");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let request = PartitionRequest::Write {
                epoch: view.set.epoch,
                op: op.clone(),
            };
            match remote::ask(&cell, request, WRITE_TIMEOUT).await {
                Ok(PartitionAnswer::Written { .. }) => return Ok(()),
                Ok(other) => {
                    return Err(RetrievalError::Write {
                        partition,
                        reason: format!("a write was answered with {}", answer_name(&other)),
                    });
                }
                Err(PartitionFailure::Invalid(reason)) => {
                    return Err(RetrievalError::Write { partition, reason });
                }
                Err(PartitionFailure::StaleEpoch { current, .. }) => {
                    last = format!("this node knew epoch {}, not {current}", view.set.epoch);
                    let _ = self
                        .control
                        .view_at(&deployment, current, Duration::from_secs(1))
                        .await;
                }
                Err(e) => {
                    last = e.to_string();
                    let _ = self
                        .control
                        .view_at(&deployment, view.set.epoch + 1, Duration::from_millis(200))
                        .await;
                }
            }
        }
        Err(unavailable(last))
    }

    /// Asks one in-sync replica of `partition` at a time (starting at a random one) until one
    /// answers: a replica that fails, times out or is not in sync passes it on to the next.
    /// When none is reachable, or every one failed for a reason that passes (a replica set
    /// that changes, a node that lost the control plane for an election), it tries again, for
    /// the write patience: the reads made for a write, such as an ingest's, share it.
    async fn read(
        &self,
        partition: u32,
        request: PartitionRequest,
    ) -> Result<PartitionAnswer, RetrievalError> {
        let deployment = self.deployment(partition);
        let deadline = Instant::now() + Duration::from_millis(self.route.write_patience_ms);
        let mut reasons: Vec<String> = Vec::new();
        loop {
            let members = self.readable(partition);
            if members.is_empty() {
                reasons = vec!["no in-sync replica is reachable".into()];
            } else {
                reasons.clear();
            }
            for member in members {
                match remote::ask(&member, request.clone(), READ_TIMEOUT).await {
                    Ok(answer) => return Ok(answer),
                    Err(PartitionFailure::Invalid(reason)) => {
                        return Err(RetrievalError::Read { partition, reason });
                    }
                    Err(why) => reasons.push(why.to_string()),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            match self.control.view(&deployment) {
                Some(view) => {
                    let next = view.set.epoch + 1;
                    let _ = self
                        .control
                        .view_at(&deployment, next, Duration::from_millis(200))
                        .await;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(RetrievalError::Unavailable {
            collection: self.route.collection.clone(),
            partition,
            reason: reasons.join("; "),
        })
    }

    fn hedge_budget(&self) -> std::sync::MutexGuard<'_, HedgeBudget> {
        self.hedges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One partition's hits, or `None` if no in-sync replica answered in time.
    async fn search(&self, partition: u32, request: PartitionRequest) -> Option<Vec<SearchHit>> {
        let timeout = Duration::from_millis(self.route.search_timeout_ms);
        let hedge_after = Duration::from_millis(self.route.hedge_after_ms);
        let members = self.readable(partition);
        if members.is_empty() {
            return None;
        }
        let ask = |cell: ActorCell| {
            let request = request.clone();
            async move { hits_of(remote::ask(&cell, request, timeout).await) }
        };
        let primary = ask(members[0].clone());
        tokio::pin!(primary);
        self.hedge_budget().on_request();
        let Some(second) = members.get(1).cloned() else {
            return primary.await;
        };
        tokio::select! {
            found = &mut primary => match found {
                Some(hits) => return Some(hits),
                None => return ask(second).await,
            },
            _ = tokio::time::sleep(hedge_after) => {}
        }
        if !self.hedge_budget().try_hedge() {
            // Over budget: the cluster is likely saturated, and a twin would only add load.
            return match primary.await {
                Some(hits) => Some(hits),
                None => ask(second).await,
            };
        }
        let hedge = ask(second);
        tokio::pin!(hedge);
        // The first answer wins; a failure waits for the other.
        tokio::select! {
            found = &mut primary => match found {
                Some(hits) => Some(hits),
                None => hedge.await,
            },
            found = &mut hedge => match found {
                Some(hits) => Some(hits),
                None => primary.await,
            },
        }
    }
}

fn hits_of(reply: PartitionReply) -> Option<Vec<SearchHit>> {
    match reply {
        Ok(PartitionAnswer::Hits(mut per_query)) => per_query.pop(),
        Ok(_) => None,
        Err(why) => {
            tracing::warn!("a partition replica did not search: {why}");
            None
        }
    }
}

/// A task's result, its panic or cancellation made an error.
fn joined<T>(
    r: Result<Result<T, RetrievalError>, tokio::task::JoinError>,
) -> Result<T, RetrievalError> {
    r.unwrap_or_else(|e| {
        Err(RetrievalError::Invalid(format!(
            "an ingest task failed: {e}"
        )))
    })
}

fn answer_name(a: &PartitionAnswer) -> &'static str {
    match a {
        PartitionAnswer::Written { .. } => "written",
        PartitionAnswer::Hits(_) => "hits",
        PartitionAnswer::Stats(_) => "stats",
        PartitionAnswer::Records(_) => "records",
        PartitionAnswer::Applied { .. } => "applied",
        PartitionAnswer::Common { .. } => "a common prefix",
        PartitionAnswer::Changes { .. } => "changes",
        PartitionAnswer::Versions(_) => "versions",
        PartitionAnswer::Rows { .. } => "rows",
        PartitionAnswer::Tombstones { .. } => "tombstones",
        PartitionAnswer::Joined { .. } => "joined",
    }
}

/// Refuses a document that could not be stored as it is, naming it and what is wrong.
fn check_document(doc: &Document, dimension: Option<u32>) -> Result<(), RetrievalError> {
    if doc.id.is_empty() {
        return Err(RetrievalError::Invalid("a document has an empty id".into()));
    }
    if let Some(key) = doc.metadata.keys().find(|k| k.starts_with('_')) {
        return Err(RetrievalError::Invalid(format!(
            "document {:?}: metadata key {key:?} starts with '_', which is reserved",
            doc.id
        )));
    }
    if let (Some(vector), Some(dimension)) = (&doc.vector, dimension) {
        if vector.len() != dimension as usize {
            return Err(RetrievalError::Invalid(format!(
                "document {:?}: its vector has {} values; the collection's dimension is {dimension}",
                doc.id,
                vector.len()
            )));
        }
        if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
            return Err(RetrievalError::Invalid(format!(
                "document {:?}: its vector's value {i} is not a finite number",
                doc.id
            )));
        }
    }
    Ok(())
}

fn hit(h: SearchHit) -> QueryHit {
    let mut meta: Map<String, Value> = serde_json::from_str(&h.metadata).unwrap_or_default();
    let take_str = |m: &mut Map<String, Value>, k: &str| match m.remove(k) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let doc_id = take_str(&mut meta, "_doc").unwrap_or_default();
    let text = take_str(&mut meta, "_text").unwrap_or_default();
    let title = take_str(&mut meta, "_title");
    let chunk_id = meta.remove("_chunk").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    meta.remove("_chunks");
    QueryHit {
        doc_id,
        chunk_id,
        score: h.score,
        text,
        title,
        metadata: meta,
    }
}
