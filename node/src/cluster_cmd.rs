//! `arbor cluster ...`: the control plane's status, and membership changes.

use std::time::Duration;

use arbor_actors::wire::Wire;
use arbor_scheduler::{NodeStatus, Role};
use serde::Serialize;

use crate::client::{Client, ClientError, answer};
use crate::config::{ClusterConfig, NodeId, Secret};
use crate::link::messages::{LinkMsg, MembershipChange, MembershipOutcome};

/// One voter or learner, as `arbor cluster status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    pub id: NodeId,
    /// "up" when the node answered, else "down".
    pub state: &'static str,
    pub role: Option<&'static str>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
}

/// The control plane as the reachable nodes report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The leader of the highest term any node reports, if that node knows one.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<MemberRow>,
    pub learners: Vec<MemberRow>,
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
            state: if own.is_some() { "up" } else { "down" },
            role: own.map(|s| role_name(s.role)),
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

/// Asks every node for its own control-plane status.
pub async fn status(
    config: &ClusterConfig,
    secret: &Secret,
    per_node: Duration,
) -> Result<ClusterStatus, ClientError> {
    let mut client = Client::start(config, secret, per_node).await?;
    let answers = client
        .ask_each(async |link, timeout| {
            answer(link.call(LinkMsg::RaftStatus, Some(timeout)).await)?
        })
        .await;
    client.stop().await;
    let answers: Vec<(NodeId, Option<NodeStatus>)> =
        answers.into_iter().map(|(id, r)| (id, r.ok())).collect();
    if answers.iter().all(|(_, s)| s.is_none()) {
        // Say why, the way every other command does.
        let mut client = Client::start(config, secret, per_node).await?;
        let why = client.ask_any(async |_, _| Ok::<(), String>(())).await;
        client.stop().await;
        why?;
    }
    Ok(combine(&answers))
}

/// Adds or removes a control-plane member through any reachable node.
pub async fn change(
    config: &ClusterConfig,
    secret: &Secret,
    per_node: Duration,
    change: MembershipChange,
) -> Result<Result<MembershipOutcome, String>, ClientError> {
    let mut client = Client::start(config, secret, per_node).await?;
    let result = client
        .ask_any(async |link, timeout| {
            let c = Wire::new(change.clone());
            // A change is answered once committed: give it the proposal's own deadline.
            Ok(answer(
                link.call(
                    |reply| LinkMsg::ChangeMembership(c, reply),
                    Some(timeout.max(Duration::from_secs(15))),
                )
                .await,
            ))
        })
        .await;
    client.stop().await;
    result.map(|(_, r)| r.and_then(|inner| inner))
}

/// The table people read.
pub fn to_table(s: &ClusterStatus) -> String {
    let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
    let mut out = format!("leader {leader}, term {}\n", s.term);
    out.push_str("ID  MEMBER   STATE  ROLE           COMMIT  APPLIED\n");
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for (kind, rows) in [("voter", &s.voters), ("learner", &s.learners)] {
        for r in rows {
            out.push_str(&format!(
                "{:<3} {:<8} {:<6} {:<14} {:<7} {}\n",
                r.id,
                kind,
                r.state,
                r.role.unwrap_or("-"),
                opt(r.commit),
                opt(r.applied)
            ));
        }
    }
    out
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
        assert_eq!(s.voters[1].role, Some("leader"));
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
