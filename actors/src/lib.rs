//! Arbor's actor kinds, their messages, the node agent, routing and batching.

pub mod wire;
