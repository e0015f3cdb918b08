//! What link actors say to each other. Variants only ever grow: a peer running an older
//! version drops a variant it does not know, so none is renamed or reused.

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

/// A heartbeat from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: NodeId,
    pub to: NodeId,
    pub info: NodeInfo,
}

pub use arbor_proto::cluster::{
    DeclaredResources, GpuDescription, MemberStatus, MembershipOutcome, MembershipReport, NodeInfo,
    PeerState,
};
