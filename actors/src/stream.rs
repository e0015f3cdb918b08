//! Client side of a model replica's long-polling stream: start a generation, poll its tokens
//! until it ends, cancel it.
//!
//! Used by whatever needs generated text from a replica on any node (a retrieval coordinator,
//! the gateway). A caller that stops polling (it died, or dropped the future) needs no
//! clean-up: the replica drops the generation after its idle timeout.

use std::time::Duration;

use ractor::ActorRef;
use ractor::rpc::CallResult;

use crate::kinds::model::{Finished, GenerateSpec, ModelAnswer, ModelFailure, ModelRequest};
use crate::replica::ReplicaMsg;
use crate::wire::{Wire, WireError};

/// How long a request other than a poll may take, and how much longer than its own wait a
/// poll may take (the network, a busy runtime) before the caller gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a streamed generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    #[error("the model replica could not be reached: {0}")]
    Unreachable(String),
    #[error("the model replica did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the model replica's answer is unusable: {0}")]
    Wire(#[from] WireError),
    #[error(transparent)]
    Failure(#[from] ModelFailure),
    #[error("the model replica answered {answer} to a {request} request")]
    Unexpected {
        request: &'static str,
        answer: String,
    },
    #[error(
        "no replica of model deployment {deployment:?} is reachable; check `arbor deployments`"
    )]
    NoReplicas { deployment: String },
}

impl arbor_proto::Coded for StreamError {
    /// The model's own refusal carries its code; a replica out of reach is unavailable; an
    /// answer that makes no sense is a bug.
    fn code(&self) -> arbor_proto::ErrorCode {
        use arbor_proto::ErrorCode;
        match self {
            StreamError::Failure(failure) => failure.code(),
            StreamError::Unreachable(_)
            | StreamError::Timeout(_)
            | StreamError::NoReplicas { .. } => ErrorCode::Unavailable,
            StreamError::Wire(_) | StreamError::Unexpected { .. } => ErrorCode::Internal,
        }
    }
}

/// Sends one request and waits up to `timeout` for its answer.
pub async fn request(
    replica: &ActorRef<ReplicaMsg>,
    request: ModelRequest,
    timeout: Duration,
) -> Result<ModelAnswer, StreamError> {
    let sent = replica
        .call(
            |port| ReplicaMsg::Model(Wire::new(request), port),
            Some(timeout),
        )
        .await
        .map_err(|e| StreamError::Unreachable(e.to_string()))?;
    match sent {
        CallResult::Success(reply) => Ok(reply.into_inner()??),
        CallResult::Timeout => Err(StreamError::Timeout(timeout)),
        CallResult::SenderError => Err(StreamError::Unreachable(
            "the replica stopped before answering".into(),
        )),
    }
}

/// Starts a generation and returns its id.
pub async fn start(replica: &ActorRef<ReplicaMsg>, spec: GenerateSpec) -> Result<u64, StreamError> {
    match request(replica, ModelRequest::Generate(spec), REQUEST_TIMEOUT).await? {
        ModelAnswer::Started { id } => Ok(id),
        other => Err(unexpected("generate", &other)),
    }
}

/// The token texts from position `from` on, waiting up to `wait` for one; returns them, the
/// next position, and how it ended once it has.
pub async fn poll(
    replica: &ActorRef<ReplicaMsg>,
    id: u64,
    from: u32,
    wait: Duration,
) -> Result<(Vec<String>, u32, Option<Finished>), StreamError> {
    let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
    let poll = ModelRequest::Poll { id, from, wait_ms };
    match request(replica, poll, wait + REQUEST_TIMEOUT).await? {
        ModelAnswer::Tokens {
            texts,
            next,
            finished,
        } => Ok((texts, next, finished)),
        other => Err(unexpected("poll", &other)),
    }
}

/// Asks the replica to stop generation `id` at its next step; its last poll then says
/// `cancelled`.
pub async fn cancel(replica: &ActorRef<ReplicaMsg>, id: u64) -> Result<(), StreamError> {
    match request(replica, ModelRequest::Cancel { id }, REQUEST_TIMEOUT).await? {
        ModelAnswer::Cancelled => Ok(()),
        other => Err(unexpected("cancel", &other)),
    }
}

/// Generates on `replica`, handing each new piece of text to `on_text` as it comes, and
/// returns how the generation ended. Each poll waits up to `poll_wait` for new tokens.
pub async fn generate_stream(
    replica: ActorRef<ReplicaMsg>,
    spec: GenerateSpec,
    mut on_text: impl FnMut(&str),
    poll_wait: Duration,
) -> Result<Finished, StreamError> {
    let id = start(&replica, spec).await?;
    let mut from = 0;
    loop {
        let (texts, next, finished) = poll(&replica, id, from, poll_wait).await?;
        texts
            .iter()
            .filter(|t| !t.is_empty())
            .for_each(|t| on_text(t));
        from = next;
        if let Some(finished) = finished {
            return Ok(finished);
        }
    }
}

/// Generates on a replica of `deployment` (process groups of `scope`), handing each new piece
/// of text to `on_text`, and returns the whole text and how it ended.
///
/// When a replica is lost mid-answer another one continues: decoding is deterministic (greedy,
/// or seeded sampling), so it regenerates the same text and only the part past what was
/// already streamed is handed on. `cancelled` is asked between polls; once it says yes, the
/// generation is cancelled on its replica (so it stops using a batch slot at once) and the
/// result's reason is `cancelled`.
pub async fn generate_failover(
    scope: &str,
    deployment: &str,
    spec: GenerateSpec,
    mut on_text: impl FnMut(&str),
    cancelled: impl Fn() -> bool,
    poll_wait: Duration,
) -> Result<(String, Finished), StreamError> {
    let group = crate::replica::deployment_group(deployment);
    let mut text = String::new();
    let mut tried: Vec<ractor::ActorId> = Vec::new();
    loop {
        let fresh: Vec<ractor::ActorCell> =
            ractor::pg::get_scoped_members(&scope.to_owned(), &group)
                .into_iter()
                .filter(|m| !tried.contains(&m.get_id()))
                .collect();
        if fresh.is_empty() {
            return Err(StreamError::NoReplicas {
                deployment: deployment.to_owned(),
            });
        }
        let cell = fresh[rand::random_range(0..fresh.len())].clone();
        tried.push(cell.get_id());
        let replica: ActorRef<ReplicaMsg> = cell.into();
        let already = text.len();
        let mut seen = 0usize;
        let attempt = async {
            let id = start(&replica, spec.clone()).await?;
            let mut from = 0;
            loop {
                if cancelled() {
                    // Best effort: a replica that cannot be told drops it after its idle timeout.
                    let _ = cancel(&replica, id).await;
                    return Ok(Finished {
                        reason: "cancelled".into(),
                        prompt_tokens: 0,
                        generated_tokens: 0,
                    });
                }
                let (texts, next, finished) = poll(&replica, id, from, poll_wait).await?;
                for t in texts.iter().filter(|t| !t.is_empty()) {
                    let start = seen;
                    seen += t.len();
                    if seen > already {
                        // Never panics: a cut that is not a char boundary yields nothing.
                        let new = t.get(already.saturating_sub(start)..).unwrap_or("");
                        text.push_str(new);
                        on_text(new);
                    }
                }
                from = next;
                if let Some(finished) = finished {
                    return Ok(finished);
                }
            }
        };
        match attempt.await {
            Ok(finished) => return Ok((text, finished)),
            Err(e @ (StreamError::Unreachable(_) | StreamError::Timeout(_))) => {
                tracing::warn!("a model replica was lost mid-answer ({e}); trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

fn unexpected(request: &'static str, answer: &ModelAnswer) -> StreamError {
    StreamError::Unexpected {
        request,
        answer: format!("{answer:?}"),
    }
}
