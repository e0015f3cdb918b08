//! Arbor's control plane: the Raft-replicated cluster state, placement and the reconciler.

pub mod codec;
pub mod command;
pub mod config;
mod logger;
pub mod machine;
pub mod node;
pub mod placement;
pub mod resources;
pub mod state;
pub mod storage;
pub mod tasks;
pub mod transport;

pub use command::{Command, CommandOutcome, ObjectKind, Rejection};
pub use config::{Bootstrap, ClientTiming, NodeConfig, RaftTiming, TransportConfig};
pub use node::{
    MemberProgress, NodeStatus, ProposeError, RaftHandle, RaftNode, ReadError, Role, StartError,
    StateEvent,
};
pub use state::ClusterState;
