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

fn unexpected(request: &'static str, answer: &ModelAnswer) -> StreamError {
    StreamError::Unexpected {
        request,
        answer: format!("{answer:?}"),
    }
}
