//! Arbor's control plane: the Raft-replicated cluster state, placement and the reconciler.

pub mod placement;
pub mod resources;
