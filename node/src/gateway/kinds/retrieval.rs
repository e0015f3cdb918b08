//! `ingest`, `query` and `rag`: through the collection's coordinator.

use super::generate::stream_tokens;
use super::*;
use arbor_actors::partition::MetadataFilter;
use arbor_actors::retrieval::{QueryInput, QueryRequest, RetrievalAnswer, RetrievalRequest};

/// A collection and the coordinator deployment that serves it.
#[derive(Debug)]
pub struct Served {
    /// The coordinator deployment.
    pub coordinator: String,
    /// Its config.
    pub route: CollectionRoute,
    pub partitions: u32,
}

/// The coordinator deployment that serves `collection`. Pure.
pub fn find_coordinator(state: &ClusterState, collection: &str) -> Result<Served, JobFailure> {
    let Some(spec) = state.collections.get(collection) else {
        return Err(JobFailure::field(
            ErrorCode::NotFound,
            "job.collection",
            format!("there is no collection {collection:?}; see `arbor collections`"),
        ));
    };
    state
        .deployments
        .values()
        .filter(|d| d.spec.kind == "retrieval_coordinator")
        .find_map(|d| {
            let route: CollectionRoute = serde_json::from_str(&d.spec.config).ok()?;
            (route.collection == collection).then(|| Served {
                coordinator: d.spec.name.clone(),
                route,
                partitions: spec.partitions,
            })
        })
        .ok_or_else(|| {
            JobFailure::new(
                ErrorCode::Unavailable,
                format!(
                    "collection {collection:?} has no retrieval_coordinator deployment; deploy \
                     one whose config names it (see examples/coordinator.toml)"
                ),
            )
        })
}

pub(super) async fn coordinator_of(env: &Env, collection: &str) -> Result<Served, JobFailure> {
    let name = collection.to_owned();
    read_here(&env.raft, move |s| find_coordinator(s, &name)).await?
}

pub(super) async fn query(
    env: &Env,
    coordinator: &str,
    q: &QueryJob,
) -> Result<QueryAnswer, JobFailure> {
    let input = match (&q.text, &q.vector) {
        (_, Some(vector)) => QueryInput::Vector(vector.clone()),
        (text, None) => QueryInput::Text(text.clone().unwrap_or_default()),
    };
    // `validate` checked the filter already; a failure here is the same refusal.
    let filter = q
        .filter
        .as_ref()
        .map(|f| MetadataFilter::parse(&f.to_string()))
        .transpose()
        .map_err(|e| {
            JobFailure::field(ErrorCode::InvalidJob, "job.filter", format!("filter: {e}"))
        })?;
    let request = RetrievalRequest::Query(QueryRequest {
        input,
        k: q.k,
        filter,
        ef: q.ef,
    });
    match ask_coordinator(env, coordinator, request).await? {
        RetrievalAnswer::Found(found) => Ok(found),
        other => Err(internal(format!(
            "coordinator {coordinator:?} answered a query with {other:?}"
        ))),
    }
}

pub(super) async fn ingest(env: &Env, i: IngestJob, emit: &Emit) -> Result<Value, JobFailure> {
    let Served {
        coordinator,
        partitions,
        ..
    } = coordinator_of(env, &i.collection).await?;
    let start = Instant::now();
    let total = i.documents.len() as u64;
    let steps = ingest_steps(&i.documents);
    let mut rest = i.documents.into_iter();
    let mut chunks = 0u64;
    let mut per_partition = vec![0u64; partitions as usize];
    let mut done = 0u64;
    emit.progress(0, total, "documents");
    for range in steps {
        if emit.job.is_cancelled() {
            break;
        }
        // The steps are consecutive: each takes the next documents, moved, not copied.
        let step: Vec<Document> = rest.by_ref().take(range.len()).collect();
        let sent = step.len() as u64;
        let report =
            match ask_coordinator(env, &coordinator, RetrievalRequest::Ingest(step)).await? {
                RetrievalAnswer::Ingested(report) => report,
                other => {
                    return Err(internal(format!(
                        "coordinator {coordinator:?} answered an ingest with {other:?}"
                    )));
                }
            };
        chunks += report.chunks;
        for (sum, n) in per_partition.iter_mut().zip(&report.per_partition) {
            *sum += n;
        }
        done += sent;
        emit.progress(done, total, "documents");
    }
    data(IngestReport {
        documents: done,
        chunks,
        per_partition,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

/// One typed request to a coordinator of the collection. Ingests and queries are safe to run
/// twice (a document's id names its rows). The coordinator's coded error becomes the job's,
/// code for code.
pub(super) async fn ask_coordinator(
    env: &Env,
    coordinator: &str,
    request: RetrievalRequest,
) -> Result<RetrievalAnswer, JobFailure> {
    // Rows to import go to a coordinator on this node where there is one: megabytes that
    // need not cross the network one more time than they must.
    let here_first = matches!(request, RetrievalRequest::Import(_));
    ask_idempotent(env, coordinator, here_first, |port| {
        ReplicaMsg::Retrieval(Wire::new(request.clone()), port)
    })
    .await?
    .map_err(|e| JobFailure::new(e.code(), e.to_string()))
}

/// The documents of each request to the coordinator, in order: at most [`INGEST_STEP`] to
/// embed, [`INGEST_STEP_DOCUMENTS`] in all and about [`INGEST_STEP_BYTES`] (one document more
/// when a single one is larger). Pure.
pub fn ingest_steps(docs: &[Document]) -> Vec<std::ops::Range<usize>> {
    let mut steps = Vec::new();
    let (mut start, mut to_embed, mut bytes) = (0, 0, 0);
    for (n, d) in docs.iter().enumerate() {
        // Encoded size, roughly (JSON's, which is larger than bincode's: a vector's value
        // takes up to about 14 characters).
        let size = d.id.len()
            + d.text.len()
            + d.title.as_ref().map_or(0, String::len)
            + d.vector.as_ref().map_or(0, |v| v.len() * 14)
            + if d.metadata.is_empty() {
                0
            } else {
                Value::Object(d.metadata.clone()).to_string().len()
            }
            + 64;
        let embeds = usize::from(d.vector.is_none());
        if n > start
            && (to_embed + embeds > INGEST_STEP
                || n - start == INGEST_STEP_DOCUMENTS
                || bytes + size > INGEST_STEP_BYTES)
        {
            steps.push(start..n);
            (start, to_embed, bytes) = (n, 0, 0);
        }
        to_embed += embeds;
        bytes += size;
    }
    if start < docs.len() {
        steps.push(start..docs.len());
    }
    steps
}

pub(super) async fn rag(env: &Env, r: RagJob, emit: &Emit) -> Result<Value, JobFailure> {
    let Served {
        coordinator, route, ..
    } = coordinator_of(env, &r.collection).await?;
    // The coordinator's model, or the only model deployment there is.
    let named = route.model.clone();
    let model = read_here(&env.raft, move |s| {
        pick_deployment(s, "model", named.as_deref())
    })
    .await??;
    let found = query(
        env,
        &coordinator,
        &QueryJob {
            collection: r.collection.clone(),
            text: Some(r.question.clone()),
            vector: None,
            k: r.k,
            filter: None,
            ef: None,
        },
    )
    .await?;
    emit.send(ServerMsg::Result {
        job: emit.job.id.clone(),
        data: data(RagSources {
            sources: found.results.clone(),
            missing_partitions: found.missing_partitions.clone(),
        })?,
        last: false,
    });
    let spec = GenerateSpec::chat(rag_prompt(&r.question, &found.results), r.max_tokens);
    let (answer, finished) = stream_tokens(env, &model, spec, emit).await?;
    data(RagAnswer {
        answer,
        sources: found.results,
        missing_partitions: found.missing_partitions,
        finish_reason: finished.reason,
    })
}
