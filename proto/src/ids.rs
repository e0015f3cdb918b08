//! Ids and the names derived from them. A name that two programs compute must be computed
//! here, once: a partition's deployment, a deployment's process group.

/// A node's id in the cluster: its Raft id, its actor-link name and its key in `cluster.toml`.
pub type NodeId = u64;

/// A job's id, given by the gateway that accepted it.
pub type JobId = String;

/// The most results one query may ask for (`k`); a partition's scan keeps a heap of this size.
pub const MAX_K: u32 = 256;

/// The deployment that holds partition `partition` of `collection`.
pub fn partition_deployment(collection: &str, partition: u32) -> String {
    format!("{collection}.p{partition}")
}

/// The coordinator deployment a collection deploys for itself.
pub fn collection_coordinator(collection: &str) -> String {
    format!("{collection}-coordinator")
}

/// The process group that a deployment's running replicas join, in the agent's pg scope.
pub fn deployment_group(deployment: &str) -> String {
    format!("arbor.deploy.{deployment}")
}

/// The process group of one replica at one generation (its only member, once it runs): how a
/// partition's primary and its followers address each other. An older copy still running on
/// a node that has not heard of its replacement is in another group, so it is never asked.
pub fn replica_group(actor_id: &str, generation: u64) -> String {
    format!("arbor.replica.{actor_id}@{generation}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        // Nodes of different versions must agree on these: they are part of the wire.
        assert_eq!(partition_deployment("docs", 3), "docs.p3");
        assert_eq!(deployment_group("docs.p3"), "arbor.deploy.docs.p3");
        assert_eq!(replica_group("docs.p3/1", 7), "arbor.replica.docs.p3/1@7");
    }
}
