//! What link actors say to each other. Variants only ever grow: a peer running an older
//! version drops a variant it does not know, so none is renamed or reused.

use std::collections::BTreeMap;
use std::time::SystemTime;

use arbor_actors::wire::Wire;
use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::config::NodeId;

/// Messages to a node's remote-capable link actor.
#[derive(RactorClusterMessage)]
pub enum LinkMsg {
    /// A peer says it is alive, and what it offers.
    Heartbeat(Wire<Heartbeat>),
    /// The node's membership view, for `arbor status`.
    #[rpc]
    Membership(RpcReplyPort<Wire<MembershipReport>>),
    /// The node's control-plane status, for `arbor cluster status`.
    #[rpc]
    RaftStatus(RpcReplyPort<Wire<Result<arbor_scheduler::NodeStatus, String>>>),
    /// Adds or removes a control-plane member, for `arbor cluster add-node|remove-node`.
    #[rpc]
    ChangeMembership(
        Wire<MembershipChange>,
        RpcReplyPort<Wire<Result<MembershipOutcome, String>>>,
    ),
    /// Deployments and drains, for `arbor deploy|undeploy|deployments|node drain`.
    #[rpc]
    Control(
        Wire<crate::control::ControlRequest>,
        RpcReplyPort<Wire<Result<crate::control::ControlReply, String>>>,
    ),
}

/// A change of the control plane's members, one node at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add the node (as a learner, promoted to voter once it has caught up).
    Add(NodeId),
    Remove(NodeId),
}

/// The members after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipOutcome {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// A heartbeat from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: NodeId,
    pub to: NodeId,
    pub info: NodeInfo,
}

/// What a node says about itself: who it is, since when, and what it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
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
    pub id: NodeId,
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
    pub answered_by: NodeId,
    pub nodes: Vec<MemberStatus>,
}
