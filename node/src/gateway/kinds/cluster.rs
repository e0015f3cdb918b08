//! The cluster's own jobs: `membership` (`arbor status`), `cluster_status`, `add_node`,
//! `remove_node`, `drain` and `undrain`. They run on the accepting node, which asks its peers
//! over the links between nodes; an operator's machine needs a token, never the cluster secret.

use std::time::Duration;

use arbor_proto::ErrorCode;
use arbor_proto::NodeId;
use arbor_proto::cluster::{ClusterStatus, MembershipOutcome, MembershipReport};
use arbor_scheduler::{CommandOutcome, NodeStatus, Role};

use arbor_proto::cluster::MemberRow;

use super::{Env, JobFailure};
use crate::control::ControlRequest;
use crate::link::messages::LinkMsg;
use crate::link::supervisor::SupervisorMsg;

/// How long one peer may take to say how its control plane stands.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

fn unresponsive(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::new(
        ErrorCode::Unavailable,
        format!("this node's links did not answer: {e}"),
    )
}

/// Every node's state as this node's links see it.
pub async fn membership(env: &Env) -> Result<MembershipReport, JobFailure> {
    ractor::call_t!(env.supervisor, SupervisorMsg::Report, 2000).map_err(unresponsive)
}

/// Each node of cluster.toml asked for its own control-plane status (this one directly, the
/// others over their links, all at once), combined into one view.
pub async fn cluster_status(env: &Env) -> Result<ClusterStatus, JobFailure> {
    let asks = env.raft_addrs.keys().map(|&id| async move {
        let status = if id == env.node {
            env.raft.status().await.ok()
        } else {
            peer_status(env, id).await
        };
        (id, status)
    });
    let answers: Vec<(NodeId, Option<NodeStatus>)> = futures::future::join_all(asks).await;
    Ok(combine(&answers))
}

/// A peer's control-plane status over this node's link with it; `None` if it cannot say.
async fn peer_status(env: &Env, peer: NodeId) -> Option<NodeStatus> {
    let session = ractor::call_t!(env.supervisor, SupervisorMsg::SessionWith, 2000, peer)
        .ok()
        .flatten()?;
    let link = crate::link::peer_link_actor(&env.cluster, peer, &session.get_cell())?;
    let answer = link.call(LinkMsg::RaftStatus, Some(PEER_TIMEOUT)).await;
    crate::client::answer(answer).ok()?.ok()
}

/// A change of the control plane's members, one node at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add the node (as a learner, promoted to voter once it has caught up).
    Add(NodeId),
    Remove(NodeId),
}

/// Adds or removes a control-plane member.
pub async fn change_membership(
    env: &Env,
    change: MembershipChange,
) -> Result<MembershipOutcome, JobFailure> {
    let (MembershipChange::Add(id) | MembershipChange::Remove(id)) = change;
    let Some(addr) = env.raft_addrs.get(&id) else {
        return Err(JobFailure::new(
            ErrorCode::InvalidJob,
            format!(
                "node {id} is not in this node's cluster.toml: add its [[nodes]] entry there \
                 (and on every node) first"
            ),
        ));
    };
    tracing::info!(?change, "membership change requested");
    let outcome = match change {
        MembershipChange::Add(id) => env.raft.add_node(id, addr.clone()).await,
        MembershipChange::Remove(id) => env.raft.remove_node(id).await,
    };
    match outcome.map_err(|e| JobFailure::new(ErrorCode::JobFailed, e.to_string()))? {
        CommandOutcome::Membership { voters, learners } => {
            Ok(MembershipOutcome { voters, learners })
        }
        other => Err(JobFailure::new(
            ErrorCode::JobFailed,
            format!("unexpected outcome {other:?}"),
        )),
    }
}

/// Drains a node (its actors move elsewhere, none are placed there) or lets it take actors.
pub async fn drain(env: &Env, node: NodeId, draining: bool) -> Result<(), JobFailure> {
    if !env.raft_addrs.contains_key(&node) {
        return Err(JobFailure::new(
            ErrorCode::InvalidJob,
            format!("node {node} is not in cluster.toml"),
        ));
    }
    super::control_request(&env.raft, ControlRequest::Drain { node, draining }).await?;
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Follower => "follower",
    }
}

/// Combines each node's own status into one view. Pure, so it is tested without a cluster.
pub fn combine(answers: &[(NodeId, Option<NodeStatus>)]) -> ClusterStatus {
    let newest = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .max_by_key(|s| (s.term, s.leader.is_some(), s.commit));
    let (leader, term) = newest.map_or((None, 0), |s| (s.leader.filter(|l| *l != 0), s.term));
    // Membership as the most up-to-date answer knows it; with no answer, every configured node.
    let (mut voters, mut learners): (Vec<NodeId>, Vec<NodeId>) = match newest {
        Some(s) => (
            s.voters.iter().map(|m| m.id).collect(),
            s.learners.iter().map(|m| m.id).collect(),
        ),
        None => (answers.iter().map(|(id, _)| *id).collect(), Vec::new()),
    };
    voters.sort_unstable();
    learners.sort_unstable();
    let row = |id: NodeId| {
        let own = answers
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, s)| s.as_ref());
        MemberRow {
            id,
            state: if own.is_some() { "up" } else { "down" }.to_owned(),
            role: own.map(|s| role_name(s.role).to_owned()),
            commit: own.map(|s| s.commit),
            applied: own.map(|s| s.applied),
        }
    };
    ClusterStatus {
        leader,
        term,
        voters: voters.into_iter().map(row).collect(),
        learners: learners.into_iter().map(row).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_scheduler::MemberProgress;

    fn st(id: NodeId, term: u64, leader: Option<NodeId>, role: Role, commit: u64) -> NodeStatus {
        NodeStatus {
            id,
            leader,
            term,
            role,
            commit,
            applied: commit,
            snapshot_index: 0,
            voters: (1..=3)
                .map(|id| MemberProgress {
                    id,
                    matched: None,
                    last_heard_ms: None,
                })
                .collect(),
            learners: vec![],
            dropped_messages: 0,
        }
    }

    #[test]
    fn combines_the_newest_term_and_marks_the_silent_down() {
        let answers = vec![
            (1, Some(st(1, 4, Some(1), Role::Follower, 10))),
            (2, Some(st(2, 5, Some(2), Role::Leader, 12))),
            (3, None),
        ];
        let s = combine(&answers);
        assert_eq!((s.leader, s.term), (Some(2), 5));
        assert_eq!(s.voters.len(), 3);
        assert_eq!(s.voters[1].role.as_deref(), Some("leader"));
        assert_eq!(s.voters[2].state, "down");
        assert_eq!(s.voters[2].commit, None);
        assert_eq!(s.voters[0].applied, Some(10));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["leader"], 2);
        assert_eq!(json["voters"][2]["state"], "down");
    }

    #[test]
    fn no_leader_is_null() {
        let s = combine(&[(1, Some(st(1, 3, None, Role::Candidate, 1)))]);
        assert_eq!(s.leader, None);
        assert!(serde_json::to_value(&s).unwrap()["leader"].is_null());
    }
}
