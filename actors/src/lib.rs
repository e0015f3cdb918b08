//! Arbor's actor kinds, their messages, the node agent, routing and batching.

pub mod agent;
pub mod batching;
pub mod control;
pub mod kinds;
pub mod partition;
pub mod replica;
pub mod retrieval;
pub mod router;
pub mod stream;
pub mod supervision;
pub mod wire;
