//! The typed commands that change [`crate::ClusterState`], and what applying one returns.
//!
//! These enums are replicated through the Raft log and stored in snapshots: they only grow.
//! Never rename, reorder or reuse a variant; add new ones at the end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{
    ActorId, CollectionSpec, DeploymentSpec, JobId, JobStatus, Liveness, NodeId, PlacementDecision,
    PlacementStatus, Resources, StatusUpdate,
};

/// A change to the cluster state. Applied deterministically, in log order, on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; useful to probe that the log commits.
    Noop,
    /// Adds a node, or updates its address, capacity and labels if it is already known.
    RegisterNode {
        id: NodeId,
        address: String,
        capacity: Resources,
        labels: BTreeMap<String, String>,
    },
    /// Records a node's liveness as observed by the proposer (the leader's failure detector).
    SetNodeLiveness {
        id: NodeId,
        liveness: Liveness,
        /// Proposer's wall clock in ms, stored as is (apply never reads a clock).
        observed_at_ms: u64,
    },
    /// Forgets a node. Rejected while placements still reference it.
    DeregisterNode { id: NodeId },
    /// Creates a deployment at version 1. Rejected if the name exists.
    CreateDeployment(DeploymentSpec),
    /// Replaces a deployment's spec and bumps its version. With `expected_version`, rejected
    /// unless the current version matches (optimistic concurrency).
    UpdateDeployment {
        spec: DeploymentSpec,
        expected_version: Option<u64>,
    },
    /// Deletes a deployment and every placement of it.
    DeleteDeployment { name: String },
    /// Places or moves replicas, all or none. Each decision is re-checked against the state
    /// it meets: rejected if its node is unknown, down or draining, if its deployment changed
    /// revision, if the replica's placement changed since it was decided, or if the node can
    /// no longer hold it (resources, GPU shares, labels, anti-affinity). Never overcommits.
    PlaceActors { decisions: Vec<PlacementDecision> },
    /// Updates one placement's status; ignored (rejected) for a stale generation.
    SetPlacementStatus {
        actor_id: ActorId,
        generation: u64,
        status: PlacementStatus,
    },
    /// Removes placements, all or none.
    RemovePlacements { actor_ids: Vec<ActorId> },
    /// Creates a collection. Rejected if the name exists.
    CreateCollection(CollectionSpec),
    /// Deletes a collection.
    DeleteCollection { name: String },
    /// Records a new job as queued. Rejected if the id exists.
    SubmitJob {
        id: JobId,
        kind: String,
        spec: Vec<u8>,
        /// The node that accepted the job and runs it.
        node: NodeId,
        /// Who submitted it (a token id).
        owner: String,
        /// When it was accepted, in ms since the Unix epoch (the proposer's clock: the state
        /// machine never reads one).
        submitted_ms: u64,
    },
    /// Updates a job's status, progress and result. Rejected once a job is finished.
    UpdateJob {
        id: JobId,
        status: JobStatus,
        progress: f32,
        result: Option<Vec<u8>>,
    },
    /// Forgets finished jobs (unfinished ones among `ids`, and unknown ids, are skipped).
    PruneJobs { ids: Vec<JobId> },
    /// Sets a key in the small key-value namespace.
    KvPut { key: String, value: String },
    /// Sets `key` to `new` (or deletes it when `new` is `None`) only if its current value is
    /// `expected` (`None` = absent). Never rejected: the outcome says whether it swapped.
    KvCas {
        key: String,
        expected: Option<String>,
        new: Option<String>,
    },
    /// Node agents' status reports, applied one by one; a report for a generation that is
    /// no longer current is skipped (counted as stale), never applied.
    SetPlacementStatuses { updates: Vec<StatusUpdate> },
    /// Starts or ends a drain of a node.
    SetNodeDrain { id: NodeId, draining: bool },
    /// Records why some replica of a deployment waits (`None`: none waits).
    SetPendingReason {
        deployment: String,
        reason: Option<String>,
    },
}

/// What a command that applied returns to its proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Applied; nothing more to say.
    Done,
    /// A deployment now has this version.
    DeploymentVersion(u64),
    /// Result of a [`Command::KvCas`]: whether it swapped, and the value it found.
    Cas {
        swapped: bool,
        previous: Option<String>,
    },
    /// A membership change applied; the voters and learners now in the configuration.
    Membership {
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// Result of [`Command::SetPlacementStatuses`].
    StatusesApplied { applied: u32, stale: u32 },
    /// Result of [`Command::PlaceActors`]: the generations given, in decision order.
    Placed { generations: Vec<u64> },
}

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: ObjectKind, name: String },
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: ObjectKind, name: String },
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("version mismatch: expected {expected}, found {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("invalid command: {0}")]
    Invalid(String),
    #[error("membership change refused: {0}")]
    Membership(String),
}

/// The kind of object a [`Rejection`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Node,
    Deployment,
    Placement,
    Collection,
    Job,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Node => "node",
            ObjectKind::Deployment => "deployment",
            ObjectKind::Placement => "placement",
            ObjectKind::Collection => "collection",
            ObjectKind::Job => "job",
        })
    }
}
