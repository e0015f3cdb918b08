//! The `arbor` node: cluster.toml, the node runtime, links between nodes, and the client
//! commands. The binary in `main.rs` is a thin shell over this library, so tests start real
//! nodes in-process through the same code.

pub mod assignments;
pub mod call;
pub mod client;
pub mod cluster_cmd;
pub mod commands;
pub mod config;
pub mod control;
pub mod deployment_file;
pub mod gateway;
pub mod janitor;
pub mod lease;
pub mod link;
pub mod local;
pub mod logging;
pub mod runtime;
pub mod status;

pub use config::{ClusterConfig, ConfigError, NodeId, Secret};
pub use runtime::{Node, NodeError};
