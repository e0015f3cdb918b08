//! The Arbor node daemon: cluster.toml, the node runtime (links between nodes, the Raft
//! control plane, the node agent) and the gateway. The `arbor` binary (crate `arbor-cli`)
//! starts it with `arbor node`; tests start real nodes in-process through the same code.

mod assignments;
mod call;
mod client;
pub mod config;
mod control;
pub mod deployment_file;
mod gateway;
pub mod http;
mod janitor;
mod lease;
mod link;
mod load_report;
pub mod logging;
mod runtime;

pub use call::Caller;
pub use client::ClientError;
pub use config::{ClusterConfig, ConfigError, NodeId, Secret};
pub use gateway::auth;
pub use link::remote_member;
pub use runtime::{Node, NodeError};
