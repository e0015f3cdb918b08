//! The WebSocket gateway every node runs: clients authenticate with a token, submit jobs and
//! watch them. See `docs/protocol.md`.
//!
//! * [`auth`]: the hashed tokens file and its roles, reloaded while nodes run;
//! * `listener`: accept, connection limits, a connection's reader and writer;
//! * `pre_auth`: the places and bytes an unauthenticated client may take;
//! * `session`: a connection's session (auth, submit, subscribe, status, cancel);
//! * `jobs`: a job's life cycle, its record in the control plane, the janitor, and the
//!   table of the jobs a node runs;
//! * `kinds`: what each job kind does, one file per family.
//!
//! The protocol itself is `arbor_proto::gateway`; the client is the `arbor-client` crate.

pub mod auth;
mod jobs;
mod kinds;
mod listener;
mod pre_auth;
mod session;

pub use listener::{Gateway, GatewayArgs};
