//! What link actors say to each other. Variants only ever grow: a peer running an older
//! version drops a variant it does not know, so none is renamed or reused.

use arbor_actors::wire::Wire;
use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::config::NodeId;

/// Messages to a node's remote-capable link actor. Retired, never to be reused: `Membership`,
/// `ChangeMembership` and `Control`, which served the old CLI over the actor transport (clients
/// now come through the gateway, with a token).
#[derive(RactorClusterMessage)]
pub enum LinkMsg {
    /// A peer says it is alive, and what it offers.
    Heartbeat(Wire<Heartbeat>),
    /// The node's control-plane status, for `arbor cluster status`.
    #[rpc]
    RaftStatus(RpcReplyPort<Wire<Result<arbor_scheduler::NodeStatus, String>>>),
}

/// A heartbeat from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: NodeId,
    pub to: NodeId,
    pub info: NodeInfo,
}

pub use arbor_proto::cluster::{
    DeclaredResources, GpuDescription, MemberStatus, MembershipReport, NodeInfo, PeerState,
};
