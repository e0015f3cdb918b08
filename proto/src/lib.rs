//! The words every Arbor program shares: what crosses a process boundary, defined once.
//!
//! - [`ids`]: node and job ids, and the names derived from them (a partition's deployment, a
//!   deployment's process group).
//! - [`gateway`]: the gateway's WebSocket protocol: client and server messages, job specs,
//!   their parsing with field paths in errors (`docs/protocol.md` documents it).
//! - [`error`]: the error codes a client sees, and [`Coded`] for every error that reaches one.
//! - [`role`]: the roles a token carries.
//! - [`metric`]: how a collection compares vectors; [`index`]: how its partitions search.
//! - [`cluster`]: what the cluster jobs answer (nodes and their state, the control plane).
//! - [`results`]: every other job kind's result data, typed.
//! - [`f32le`]: vectors as little-endian bytes in binary payloads.
//! - [`json_text`]: free-form JSON (metadata, filters) inside bincode messages between nodes.
//!
//! This crate imports nothing of ours and depends on serde and little else, so the daemon, the
//! client, the CLI and the actors can all stand on it.

pub mod cluster;
pub mod error;
pub mod f32le;
pub mod gateway;
pub mod ids;
pub mod index;
pub mod json_text;
pub mod metric;
pub mod per_address;
pub mod results;
pub mod role;
pub mod snapshot;

pub use error::{Coded, ErrorCode};
pub use ids::{
    JobId, MAX_K, NodeId, collection_coordinator, deployment_group, partition_deployment,
    replica_group,
};
pub use index::{HnswSpec, IndexSpec, Quantization};
pub use metric::{Metric, UnknownMetric};
pub use role::{Role, UnknownRole};
