//! The Arbor node daemon: cluster.toml, the node runtime (links between nodes, the Raft
//! control plane, the node agent) and the gateway. The `arbor` binary (crate `arbor-cli`)
//! starts it with `arbor node`; tests start real nodes in-process through the same code.

mod assignments;
pub mod call;
mod client;
pub mod config;
pub mod control;
pub mod deployment_file;
pub mod gateway;
mod janitor;
mod lease;
pub mod link;
pub mod logging;
mod runtime;

pub use config::{ClusterConfig, ConfigError, NodeId, Secret};
pub use runtime::{Node, NodeError};
