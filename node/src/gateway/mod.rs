//! The WebSocket gateway every node runs: clients authenticate with a token, submit jobs and
//! watch them. See `docs/protocol.md`.

pub mod jobs;
pub mod protocol;
pub mod tokens;
