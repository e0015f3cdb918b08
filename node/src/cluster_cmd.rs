//! `arbor cluster status`: each member's own status combined into one view (on the node that
//! answers the job), and the table the CLI prints.

use arbor_scheduler::{NodeStatus, Role};

use crate::config::NodeId;

pub use arbor_proto::cluster::{ClusterStatus, MemberRow};

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
                r.role.as_deref().unwrap_or("-"),
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
