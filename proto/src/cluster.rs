//! What a client learns about the cluster's nodes and control plane: the answers of the
//! `membership`, `cluster_status`, `add_node` and `remove_node` jobs. Nodes also send the
//! membership types to each other (heartbeats carry [`NodeInfo`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The members after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipOutcome {
    pub voters: Vec<crate::NodeId>,
    pub learners: Vec<crate::NodeId>,
}

/// What a node says about itself: who it is, since when, and what it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: crate::NodeId,
    /// When this run of the node started; changes on every restart.
    pub started: SystemTime,
    pub actors: String,
    pub resources: DeclaredResources,
    pub labels: BTreeMap<String, String>,
}

/// Resources in human form, as the node declared or detected them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeclaredResources {
    pub cpu: String,
    pub memory: String,
    pub gpu: u32,
    pub gpus: Vec<GpuDescription>,
    pub gpu_memory: Option<String>,
    pub ipu: u32,
    pub custom: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDescription {
    pub index: usize,
    pub model: String,
    pub memory: String,
    pub memory_bytes: u64,
}

/// Up or down, as one node sees another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Up,
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Down => "down",
        }
    }
}

/// One row of the membership table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: crate::NodeId,
    pub address: String,
    pub state: PeerState,
    pub since: SystemTime,
    /// What the node declared: its own for the answering node, the last heartbeat's for a
    /// peer, absent for a peer never heard from.
    pub info: Option<NodeInfo>,
}

/// A node's whole membership view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipReport {
    pub cluster: String,
    pub answered_by: crate::NodeId,
    pub nodes: Vec<MemberStatus>,
}

/// One voter or learner, as `arbor cluster status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub id: crate::NodeId,
    /// "up" when the node answered, else "down".
    pub state: String,
    /// leader, follower, candidate or pre-candidate.
    pub role: Option<String>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
}

/// The control plane as its reachable members report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader of the highest term any node reports, if that node knows one.
    pub leader: Option<crate::NodeId>,
    pub term: u64,
    pub voters: Vec<MemberRow>,
    pub learners: Vec<MemberRow>,
}
