//! Why a node could not start, a proposal or a read failed, or the Ready loop stopped.

use super::*;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node id 0 is reserved by raft")]
    ZeroId,
    #[error("cannot listen for raft peers on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("stored snapshot: {0}")]
    Snapshot(#[from] CodecError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("bootstrap voter list {0:?} must be non-empty, without 0, and include this node")]
    BadBootstrap(Vec<NodeId>),
    #[error("raft transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
}

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused the command; nothing changed.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// Not applied within the propose timeout (no quorum, or no leader). It may still apply
    /// later.
    #[error("not applied within {0:?} (no leader or no quorum)")]
    Timeout(Duration),
    /// The node is shutting down or stopped.
    #[error("the raft node stopped")]
    Stopped,
    #[error("cannot encode the command: {0}")]
    Encode(String),
}

/// Why a linearizable read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no read index confirmed within {0:?} (no leader or no quorum)")]
    Timeout(Duration),
    #[error("the raft node stopped")]
    Stopped,
}

/// Why a node's Ready loop stopped on its own: the node can no longer take part in the
/// control plane, and a process that keeps running actors without one is a split brain
/// (its placements move elsewhere while it still serves them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// The raft log could not be written (disk full, I/O error).
    #[error("raft storage failed: {0}")]
    Storage(String),
    /// A committed entry or a snapshot from the leader does not decode: applying around it
    /// would let this node's state differ from every other's (a newer version's command,
    /// or corruption).
    #[error("committed entry {index} cannot be applied: {reason}")]
    Undecodable { index: u64, reason: String },
    /// The Ready loop panicked (raft-rs panics on invariants it cannot keep).
    #[error("the raft driver panicked: {0}")]
    Panicked(String),
    /// The leader knows this node acknowledged entries its storage no longer holds.
    #[error(
        "this node's raft storage lost entries it acknowledged (leader {leader} knows it had up to \
         index {expected}; it holds {held}): its data dir was wiped or replaced. Remove it \
         (`arbor cluster remove-node ID`), then add it again with an empty data dir \
         (`arbor cluster add-node ID`)"
    )]
    LostAcknowledged {
        leader: u64,
        expected: u64,
        held: u64,
    },
}
