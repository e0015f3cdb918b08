//! Placement: which node runs which replica.
