//! The message every deployment replica answers, whichever kind it is and whichever node it
//! runs on.
//!
//! Variants only ever grow: a peer running another version drops a variant it does not know
//! (ractor_cluster does so silently), so none is renamed, reordered or reused. Every payload
//! is a [`Wire`], so bytes that do not decode reach the handler as an error, not a panic.

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::kinds::Kind;
use crate::kinds::model::{ModelFailure, ModelReply, ModelRequest};
use crate::partition::{PartitionReply, PartitionRequest};
use crate::retrieval::{RetrievalError, RetrievalReply, RetrievalRequest};
use crate::wire::Wire;

/// Messages to a replica of a deployment.
#[derive(RactorClusterMessage)]
pub enum ReplicaMsg {
    /// One request; the reply is the kind's answer or why it failed.
    #[rpc]
    Call(Wire<CallRequest>, RpcReplyPort<Wire<CallReply>>),
    /// Texts to embed, answered by `embedder` replicas (other kinds answer
    /// [`EmbedFailure::Invalid`]).
    #[rpc]
    Embed(Wire<EmbedRequest>, RpcReplyPort<Wire<EmbedReply>>),
    /// A request to a vector partition; other kinds answer that they are not one.
    #[rpc]
    Partition(Wire<PartitionRequest>, RpcReplyPort<Wire<PartitionReply>>),
    /// A streaming text generation, for `model` replicas; every other kind answers
    /// [`ModelFailure::Invalid`]. See [`crate::kinds::model`].
    #[rpc]
    Model(Wire<ModelRequest>, RpcReplyPort<Wire<ModelReply>>),
    /// An ingest or a query for a `retrieval_coordinator` replica; every other kind answers
    /// [`RetrievalError::Invalid`].
    #[rpc]
    Retrieval(Wire<RetrievalRequest>, RpcReplyPort<Wire<RetrievalReply>>),
}

/// Texts to turn into vectors, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub texts: Vec<String>,
}

/// One unit-length vector of `dim` floats per text of the request, in the same order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResult {
    pub vectors: Vec<Vec<f32>>,
    pub dim: u32,
}

/// Why an embed request got no vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EmbedFailure {
    /// The replica's queue is full: retry later, or on another replica.
    #[error("embedder queue is full ({queued} requests waiting); retry later or add replicas")]
    Overloaded { queued: u32 },
    /// The request itself is at fault (retrying it anywhere fails the same way).
    #[error("invalid embed request: {0}")]
    Invalid(String),
    /// The model failed on a request that looked valid.
    #[error("the model failed: {0}")]
    Model(String),
}

impl arbor_proto::Coded for EmbedFailure {
    fn code(&self) -> arbor_proto::ErrorCode {
        match self {
            EmbedFailure::Overloaded { .. } => arbor_proto::ErrorCode::Overloaded,
            EmbedFailure::Invalid(_) => arbor_proto::ErrorCode::InvalidJob,
            EmbedFailure::Model(_) => arbor_proto::ErrorCode::JobFailed,
        }
    }
}

/// An embedder's answer to [`ReplicaMsg::Embed`].
pub type EmbedReply = Result<EmbedResult, EmbedFailure>;

/// One request to a replica: opaque bytes whose meaning is up to the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    pub payload: Vec<u8>,
}

/// Why a generic call got no answer: an application error, coded
/// ([`arbor_proto::Coded`]) so that the gateway passes the code on to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallFailure {
    /// The request is not one this replica takes (retrying it anywhere fails the same way).
    #[error("{0}")]
    Invalid(String),
    /// The replica is busy: retry later, or add replicas.
    #[error("{0}")]
    Overloaded(String),
    /// Something the request needs is not reachable now (a partition, an embedder).
    #[error("{0}")]
    Unavailable(String),
    /// The replica failed on a request that looked valid.
    #[error("{0}")]
    Failed(String),
}

impl arbor_proto::Coded for CallFailure {
    fn code(&self) -> arbor_proto::ErrorCode {
        use arbor_proto::ErrorCode;
        match self {
            CallFailure::Invalid(_) => ErrorCode::InvalidJob,
            CallFailure::Overloaded(_) => ErrorCode::Overloaded,
            CallFailure::Unavailable(_) => ErrorCode::Unavailable,
            CallFailure::Failed(_) => ErrorCode::JobFailed,
        }
    }
}

impl CallFailure {
    /// The failure with the same code as `error`, and its text.
    pub fn coded(error: &(impl arbor_proto::Coded + std::fmt::Display)) -> CallFailure {
        use arbor_proto::ErrorCode;
        let text = error.to_string();
        match error.code() {
            ErrorCode::Overloaded => CallFailure::Overloaded(text),
            ErrorCode::Unavailable => CallFailure::Unavailable(text),
            ErrorCode::JobFailed | ErrorCode::Internal | ErrorCode::JobFinished => {
                CallFailure::Failed(text)
            }
            _ => CallFailure::Invalid(text),
        }
    }
}

/// The kind's answer, or why the request failed.
pub type CallReply = Result<Vec<u8>, CallFailure>;

pub use arbor_proto::{deployment_group, replica_group};

/// The request inside a [`Wire`], or the error reply that a replica sends back when the bytes
/// did not decode.
pub(crate) fn decode_request(request: Wire<CallRequest>) -> Result<CallRequest, CallFailure> {
    request
        .into_inner()
        .map_err(|e| CallFailure::Invalid(format!("request rejected: {e}")))
}

/// Answers a request that `kind` does not serve, saying what the replica is instead: each kind
/// matches the variants it serves and hands every other one here.
pub(crate) fn refuse(kind: Kind, actor_id: &str, msg: ReplicaMsg) {
    // The caller may have given up: nothing to do about a failed send.
    match msg {
        ReplicaMsg::Call(_, reply) => {
            let _ = reply.send(Wire::new(Err(CallFailure::Invalid(format!(
                "actor {actor_id:?} is a {kind} replica and takes no generic call"
            )))));
        }
        ReplicaMsg::Embed(_, reply) => {
            let _ = reply.send(Wire::new(not_an_embedder(kind, actor_id)));
        }
        ReplicaMsg::Partition(_, reply) => {
            let _ = reply.send(not_a_partition(kind));
        }
        ReplicaMsg::Model(_, reply) => not_a_model(kind, reply),
        ReplicaMsg::Retrieval(_, reply) => {
            let _ = reply.send(Wire::new(Err(RetrievalError::Invalid(format!(
                "actor {actor_id:?} is a {kind} replica, not a retrieval coordinator"
            )))));
        }
    }
}

/// What a replica of a kind other than `embedder` answers to [`ReplicaMsg::Embed`].
pub(crate) fn not_an_embedder(kind: crate::kinds::Kind, actor_id: &str) -> EmbedReply {
    Err(EmbedFailure::Invalid(format!(
        "actor {actor_id:?} is a {kind} replica, not an embedder"
    )))
}

/// The answer a kind that is not a vector partition gives to a partition request.
pub(crate) fn not_a_partition(kind: crate::kinds::Kind) -> Wire<PartitionReply> {
    Wire::new(Err(crate::partition::PartitionFailure::Invalid(format!(
        "this replica is a {kind} actor, not a vector partition"
    ))))
}

/// The answer of a replica that is not a model to a [`ReplicaMsg::Model`] request.
pub(crate) fn not_a_model(kind: Kind, reply: RpcReplyPort<Wire<ModelReply>>) {
    let why = ModelFailure::Invalid(format!("a {kind} replica is not a model replica"));
    // The caller may have given up: nothing to do about it.
    let _ = reply.send(Wire::new(Err(why)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::BytesConvertable;

    #[test]
    fn group_name() {
        assert_eq!(deployment_group("echo-1"), "arbor.deploy.echo-1");
    }

    #[test]
    fn garbage_request_is_an_error() {
        let wire = Wire::<CallRequest>::from_bytes(vec![0xFF; 3]);
        let err = decode_request(wire).unwrap_err();
        assert!(matches!(err, CallFailure::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn embed_reply_round_trips() {
        for reply in [
            Ok(EmbedResult {
                vectors: vec![vec![0.5, -0.25]],
                dim: 2,
            }),
            Err(EmbedFailure::Overloaded { queued: 3 }),
            Err(EmbedFailure::Invalid("no texts".into())),
        ] {
            let bytes = Wire::new(reply.clone()).into_bytes();
            assert_eq!(
                Wire::<EmbedReply>::from_bytes(bytes).into_inner(),
                Ok(reply)
            );
        }
    }

    #[test]
    fn reply_round_trips() {
        for reply in [
            Ok(b"yes".to_vec()),
            Err(CallFailure::Invalid("nope".into())),
            Err(CallFailure::Overloaded("busy".into())),
            Err(CallFailure::Unavailable("later".into())),
            Err(CallFailure::Failed("broke".into())),
        ] {
            let bytes = Wire::new(reply.clone()).into_bytes();
            assert_eq!(Wire::<CallReply>::from_bytes(bytes).into_inner(), Ok(reply));
        }
    }
}
