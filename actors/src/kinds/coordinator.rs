//! `retrieval_coordinator`: ingest and query over one collection, as a deployment.
//!
//! A thin actor over [`Coordinator`]: every request runs in its own task, so a long ingest
//! never holds up queries. The gateway asks it typed [`RetrievalRequest`]s
//! ([`ReplicaMsg::Retrieval`]), answered with coded errors. People keep a JSON door, the
//! generic call (`arbor call`), turned into the same requests:
//!
//! * `{"ingest": [{"id", "text", "title"?, "metadata"?, "vector"?}, ...]}` → the ingest report
//!   (a document with a `vector` is stored as one chunk with it, not embedded);
//! * `{"query": "text", "k": 5, "filter": {...}?}` → `{"results": [...], "missing_partitions": [...]}`;
//! * `{"query_vector": [0.1, ...], "k": 5, "filter": {...}?}` → the same, for a vector of the
//!   collection's dimension (no embedding);
//! * `{"rag": "question", "k": 3, "max_tokens": 128}` → `{"answer", "sources", "missing_partitions",
//!   "finish_reason"}` (needs `model` in the config).

use serde::Deserialize;

use super::{Handled, Kind, Me, ReplicaContext, ReplicaKind, Started};
use crate::partition::MetadataFilter;
use crate::replica::{CallFailure, CallReply, ReplicaMsg, decode_request};
use crate::retrieval::{
    CollectionRoute, Coordinator, Document, QueryInput, QueryRequest, RetrievalAnswer,
    RetrievalError, RetrievalRequest,
};
use crate::wire::Wire;

/// The `retrieval_coordinator` actor.
pub struct CoordinatorReplica;

/// Its state: who it is and the coordinator it serves through.
pub struct CoordinatorState {
    ctx: ReplicaContext,
    coordinator: Coordinator,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
enum CallAsk {
    #[serde(rename = "ingest")]
    Ingest(Vec<Document>),
    #[serde(untagged)]
    Rag {
        rag: String,
        #[serde(default = "default_k")]
        k: u32,
        #[serde(default = "default_max_tokens")]
        max_tokens: u32,
    },
    #[serde(untagged)]
    QueryVector {
        query_vector: Vec<f32>,
        #[serde(default = "default_k")]
        k: u32,
        #[serde(default)]
        filter: Option<serde_json::Value>,
        #[serde(default)]
        ef: Option<u32>,
    },
    #[serde(untagged)]
    Query {
        query: String,
        #[serde(default = "default_k")]
        k: u32,
        #[serde(default)]
        filter: Option<serde_json::Value>,
        #[serde(default)]
        ef: Option<u32>,
    },
}

fn default_k() -> u32 {
    5
}

fn default_max_tokens() -> u32 {
    128
}

impl ReplicaKind for CoordinatorReplica {
    type State = CoordinatorState;

    async fn start(&self, _myself: Me, ctx: ReplicaContext) -> Started<Self::State> {
        let route: CollectionRoute = serde_json::from_str(&ctx.config).map_err(|e| {
            format!(
                "bad config for {} actor {:?}: {e} (it names its collection; partitions, \
                 embedder and metric are the collection's, read from the control plane)",
                Kind::RetrievalCoordinator,
                ctx.actor_id
            )
        })?;
        let coordinator = Coordinator::new(ctx.scope.clone(), ctx.control.clone(), route)?;
        Ok(CoordinatorState { ctx, coordinator })
    }

    async fn handle(&self, msg: ReplicaMsg, state: &mut Self::State) -> Handled {
        const KIND: Kind = Kind::RetrievalCoordinator;
        match msg {
            ReplicaMsg::Call(request, reply) => {
                let coordinator = state.coordinator.clone();
                tokio::spawn(async move {
                    let answer = match decode_request(request) {
                        Ok(r) => answer(&coordinator, &r.payload).await,
                        Err(why) => Err(why),
                    };
                    let _ = reply.send(Wire::new(answer));
                });
            }
            ReplicaMsg::Retrieval(request, reply) => {
                let coordinator = state.coordinator.clone();
                tokio::spawn(async move {
                    let answer = match request.into_inner() {
                        Ok(r) => serve(&coordinator, r).await,
                        Err(why) => {
                            Err(RetrievalError::Invalid(format!("request rejected: {why}")))
                        }
                    };
                    let _ = reply.send(Wire::new(answer));
                });
            }
            // Requests for other kinds are refused with what this replica is.
            other => crate::replica::refuse(KIND, &state.ctx.actor_id, other),
        }
        Ok(())
    }
}

/// An ingest, the request that carries the most (vectors): parsed on its own, since an enum
/// with untagged variants is first buffered whole, every number as a value of its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestAsk {
    ingest: Vec<Document>,
}

/// Runs one JSON request.
async fn answer(coordinator: &Coordinator, payload: &[u8]) -> CallReply {
    let ask = match serde_json::from_slice::<IngestAsk>(payload) {
        Ok(IngestAsk { ingest }) => Ok(CallAsk::Ingest(ingest)),
        // Anything else, or an ingest that is wrong: the full parse says what is wrong.
        Err(_) => serde_json::from_slice::<CallAsk>(payload),
    };
    let ask: CallAsk = ask.map_err(|e| {
        CallFailure::Invalid(format!(
            "expected {{\"ingest\": [documents]}}, {{\"query\": \"text\", \"k\": 5, \"filter\": {{...}}}}, {{\"query_vector\": [numbers], \"k\": 5, \"filter\": {{...}}}} or {{\"rag\": \"question\"}}: {e}"
        ))
    })?;
    let request = match ask {
        CallAsk::Ingest(docs) => RetrievalRequest::Ingest(docs),
        CallAsk::Rag { rag, k, max_tokens } => {
            if k == 0 || k > 16 {
                return Err(CallFailure::Invalid(format!(
                    "k = {k} is not in 1..=16 for rag"
                )));
            }
            let answer = coordinator
                .rag(&rag, k, max_tokens, |_| {})
                .await
                .map_err(|e| CallFailure::coded(&e))?;
            return encode(&answer);
        }
        CallAsk::QueryVector {
            query_vector,
            k,
            filter,
            ef,
        } => RetrievalRequest::Query(QueryRequest {
            input: QueryInput::Vector(query_vector),
            k,
            filter: query_filter(filter)?,
            ef,
        }),
        CallAsk::Query {
            query,
            k,
            filter,
            ef,
        } => RetrievalRequest::Query(QueryRequest {
            input: QueryInput::Text(query),
            k,
            filter: query_filter(filter)?,
            ef,
        }),
    };
    match serve(coordinator, request)
        .await
        .map_err(|e| CallFailure::coded(&e))?
    {
        RetrievalAnswer::Ingested(report) => encode(&report),
        RetrievalAnswer::Found(found) => encode(&found),
        RetrievalAnswer::Exported(page) => encode(&page),
        RetrievalAnswer::Imported(rows) => encode(&rows),
    }
}

/// The JSON door's answer as it is written.
fn encode(answer: &impl serde::Serialize) -> CallReply {
    serde_json::to_vec(answer)
        .map_err(|e| CallFailure::Failed(format!("the answer could not be encoded: {e}")))
}

/// Runs one typed request: what the gateway asks, and what the JSON door turns into.
async fn serve(
    coordinator: &Coordinator,
    request: RetrievalRequest,
) -> Result<RetrievalAnswer, RetrievalError> {
    match request {
        RetrievalRequest::Ingest(docs) => coordinator
            .ingest(&docs, |_| {})
            .await
            .map(RetrievalAnswer::Ingested),
        RetrievalRequest::Query(QueryRequest {
            input,
            k,
            filter,
            ef,
        }) => coordinator
            .query_ef(input, k, filter.as_ref(), ef)
            .await
            .map(RetrievalAnswer::Found),
        RetrievalRequest::Export {
            partition,
            from,
            limit,
        } => coordinator
            .export(partition, from, limit)
            .await
            .map(RetrievalAnswer::Exported),
        RetrievalRequest::Import(rows) => coordinator
            .import(rows)
            .await
            .map(RetrievalAnswer::Imported),
    }
}

/// A query's filter, parsed (and checked) from its JSON.
fn query_filter(filter: Option<serde_json::Value>) -> Result<Option<MetadataFilter>, CallFailure> {
    filter
        .map(|f| {
            MetadataFilter::parse(&f.to_string())
                .map_err(|e| CallFailure::Invalid(format!("filter: {e}")))
        })
        .transpose()
}
