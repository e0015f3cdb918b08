//! `/healthz` and `/readyz`: whether the process serves, and whether this node is ready for
//! traffic, with the reasons it is not.
//!
//! Ready means, all at once:
//! - **Raft caught up**: the node knows a leader, and has applied what it knows committed;
//! - **registered**: the control plane has this node, as ready;
//! - **linked**: it has a link with every other node the control plane has as ready, so it
//!   can reach every replica it may route to;
//! - **actors reconciled**: its agent has acted on every placement here (none is still
//!   pending or starting).
//!
//! A node that stops being ready reports so at once: a load balancer takes it out while a
//! peer it cannot reach is still being judged, or while its replicas start.

use std::collections::BTreeSet;

use arbor_scheduler::node::NodeStatus;
use arbor_scheduler::state::{ClusterState, Liveness, PlacementStatus};
use serde::Serialize;

use crate::config::NodeId;

/// Applied entries may trail the commit index by this much and still be caught up (entries
/// are applied in batches, right after they commit).
const APPLY_SLACK: u64 = 16;

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub node: NodeId,
    /// Why the node is not ready; empty when it is.
    pub reasons: Vec<String>,
}

/// Whether node `me` is ready, from its Raft status, its local copy of the state and the
/// peers it has links with. Pure.
pub fn readiness(
    me: NodeId,
    status: Option<&NodeStatus>,
    state: Option<&ClusterState>,
    linked: &BTreeSet<NodeId>,
) -> Readiness {
    let mut reasons = Vec::new();
    match status {
        None => reasons.push("the control plane does not answer on this node".to_owned()),
        Some(s) if s.leader.is_none() => {
            reasons.push(format!("no Raft leader is known (term {})", s.term));
        }
        Some(s) if s.applied + APPLY_SLACK < s.commit => reasons.push(format!(
            "Raft is catching up: applied {} of {} committed entries",
            s.applied, s.commit
        )),
        Some(_) => {}
    }
    match state {
        None => reasons.push("the cluster state is not readable here".to_owned()),
        Some(state) => {
            match state.nodes.get(&me) {
                None => reasons.push(format!("node {me} is not registered yet")),
                Some(n) if n.liveness == Liveness::Down => {
                    reasons.push(format!("the control plane has node {me} as down"));
                }
                Some(_) => {}
            }
            let unlinked: Vec<NodeId> = state
                .nodes
                .iter()
                .filter(|(id, n)| **id != me && n.liveness == Liveness::Ready)
                .map(|(id, _)| *id)
                .filter(|id| !linked.contains(id))
                .collect();
            if !unlinked.is_empty() {
                reasons.push(format!("not linked with ready node(s) {unlinked:?}"));
            }
            let waiting: Vec<&str> = state
                .placements
                .values()
                .filter(|p| p.node == me)
                .filter(|p| {
                    matches!(
                        p.status,
                        PlacementStatus::Pending | PlacementStatus::Starting
                    )
                })
                .map(|p| p.actor_id.as_str())
                .collect();
            if !waiting.is_empty() {
                let shown: Vec<&str> = waiting.iter().take(5).copied().collect();
                reasons.push(format!(
                    "{} actor(s) placed here have not started yet: {}{}",
                    waiting.len(),
                    shown.join(", "),
                    if waiting.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        node: me,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_scheduler::Command;
    use arbor_scheduler::node::Role;
    use arbor_scheduler::resources::{Bytes, Millicores, Resources};

    fn status(leader: Option<NodeId>, commit: u64, applied: u64) -> NodeStatus {
        NodeStatus {
            id: 1,
            leader,
            term: 3,
            role: Role::Follower,
            commit,
            applied,
            snapshot_index: 0,
            voters: vec![],
            learners: vec![],
            dropped_messages: 0,
        }
    }

    fn cluster(nodes: &[NodeId]) -> ClusterState {
        let mut s = ClusterState::default();
        for id in nodes {
            s.apply(&Command::RegisterNode {
                id: *id,
                address: format!("10.0.0.{id}:7000"),
                capacity: Resources {
                    cpu: Millicores(1000),
                    memory: Bytes::gib(1),
                    ..Default::default()
                },
                labels: Default::default(),
            })
            .unwrap();
        }
        s
    }

    #[test]
    fn a_registered_linked_caught_up_node_is_ready() {
        let s = cluster(&[1, 2, 3]);
        let r = readiness(1, Some(&status(Some(2), 10, 10)), Some(&s), &[2, 3].into());
        assert!(r.ready, "{r:?}");
        assert!(r.reasons.is_empty());
    }

    #[test]
    fn each_missing_condition_is_a_reason() {
        let r = readiness(
            4,
            Some(&status(None, 10, 10)),
            Some(&cluster(&[1, 2])),
            &[].into(),
        );
        assert!(!r.ready);
        assert!(r.reasons[0].contains("no Raft leader"), "{r:?}");
        assert!(
            r.reasons[1].contains("node 4 is not registered yet"),
            "{r:?}"
        );
        assert!(
            r.reasons[2].contains("not linked with ready node(s) [1, 2]"),
            "{r:?}"
        );
        let r = readiness(1, Some(&status(Some(1), 100, 10)), None, &[].into());
        assert!(r.reasons[0].contains("applied 10 of 100"), "{r:?}");
        assert!(r.reasons[1].contains("not readable"), "{r:?}");
        let r = readiness(1, None, Some(&cluster(&[1])), &[].into());
        assert_eq!(r.reasons.len(), 1);
    }

    #[test]
    fn a_down_peer_need_not_be_linked() {
        let mut s = cluster(&[1, 2, 3]);
        s.apply(&Command::SetNodeLiveness {
            id: 3,
            liveness: Liveness::Down,
            observed_at_ms: 0,
        })
        .unwrap();
        let r = readiness(1, Some(&status(Some(1), 5, 5)), Some(&s), &[2].into());
        assert!(r.ready, "{r:?}");
    }
}
