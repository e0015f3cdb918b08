//! The WebSocket gateway every node runs: clients authenticate with a token, submit jobs and
//! watch them. See `docs/protocol.md`.
//!
//! * [`protocol`]: the messages, and the parser that names what is wrong with a bad one;
//! * [`tokens`]: the hashed tokens file and its roles, reloaded while nodes run;
//! * [`server`]: the listener and its connections (limits, auth, dispatch);
//! * [`jobs`]: the jobs a node runs and their records in the control plane;
//! * [`run`]: what each job kind does;
//! * [`client`]: the client the `arbor` commands, tests and benchmarks use.

mod cluster_jobs;
pub mod jobs;
pub mod run;
pub mod server;
pub mod tokens;

pub use server::{Gateway, GatewayArgs};
