//! Whether a node that starts with empty raft storage founds the cluster or joins one.
//!
//! Every founding voter writes the same initial snapshot (index 1, term 1, the voters of
//! cluster.toml), so voters that found together agree from the first index. A node appended
//! to cluster.toml later, and so among its default voters, must not do the same: its snapshot
//! would match the running cluster's first entry by index and term but not by voters, and
//! the cluster's appends would be taken on top of the wrong configuration. So before founding,
//! a node asks the other founding voters (through the transport's handshake, which says
//! whether a peer holds a cluster's state): if any does, it joins instead (a founding voter
//! that starts late is sent the leader's snapshot, an appended node waits for
//! `arbor cluster add-node`); it founds once a majority of the voters, itself included, are
//! known to be empty.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::state::NodeId;
use crate::transport::Transport;

/// What a node with empty storage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Founding {
    /// Write the founding snapshot: no voter holds a cluster yet.
    Found,
    /// Start empty and wait for a leader: a cluster already runs.
    Join,
    /// Not enough voters have answered yet.
    Wait,
}

/// The decision from the answers so far (`true`: that voter holds a cluster's state).
pub fn decide(voters: &[NodeId], me: NodeId, answers: &BTreeMap<NodeId, bool>) -> Founding {
    if answers.values().any(|&founded| founded) {
        return Founding::Join;
    }
    let empty = 1 + answers
        .iter()
        .filter(|(id, founded)| **id != me && !**founded && voters.contains(id))
        .count();
    if empty * 2 > voters.len() {
        Founding::Found
    } else {
        Founding::Wait
    }
}

/// How often the other voters are asked again while too few have answered.
const ASK_AGAIN: Duration = Duration::from_millis(300);

/// Asks the other founding voters until [`decide`] says something other than `Wait`, or
/// `patience` runs out (then it founds, as every voter did before this check: a node that
/// cannot reach a majority of its cluster could not join it either).
pub async fn ask_voters(
    transport: &Transport,
    me: NodeId,
    voters: &[NodeId],
    patience: Duration,
) -> Founding {
    let start = Instant::now();
    let mut answers = BTreeMap::new();
    let mut said_waiting = false;
    loop {
        let unanswered: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| *v != me && !answers.contains_key(v))
            .collect();
        for v in unanswered {
            let Some(addr) = transport.address(v) else {
                continue;
            };
            if let Ok(founded) = transport.probe(v, &addr).await {
                answers.insert(v, founded);
            }
        }
        match decide(voters, me, &answers) {
            Founding::Wait if start.elapsed() < patience => {
                if !said_waiting {
                    info!(
                        node = me,
                        ?voters,
                        answered = ?answers.keys().collect::<Vec<_>>(),
                        "empty raft storage: waiting for a majority of the founding voters to \
                         say whether a cluster already runs"
                    );
                    said_waiting = true;
                }
                tokio::time::sleep(ASK_AGAIN).await;
            }
            Founding::Wait => {
                warn!(
                    node = me,
                    ?voters,
                    "no majority of the founding voters answered within {patience:?}; founding \
                     the cluster as cluster.toml says"
                );
                return Founding::Found;
            }
            decided => return decided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(NodeId, bool)]) -> BTreeMap<NodeId, bool> {
        list.iter().copied().collect()
    }

    #[test]
    fn a_running_cluster_is_joined_and_a_new_one_founded_by_a_majority() {
        let three = [1, 2, 3];
        assert_eq!(decide(&[1], 1, &answers(&[])), Founding::Found);
        assert_eq!(decide(&three, 1, &answers(&[])), Founding::Wait);
        assert_eq!(decide(&three, 1, &answers(&[(2, false)])), Founding::Found);
        assert_eq!(decide(&three, 3, &answers(&[(1, true)])), Founding::Join);
        // Node 4 appended to a running cluster's cluster.toml (default voters: every node).
        let four = [1, 2, 3, 4];
        assert_eq!(decide(&four, 4, &answers(&[(1, false)])), Founding::Wait);
        assert_eq!(
            decide(&four, 4, &answers(&[(1, false), (2, true)])),
            Founding::Join
        );
        assert_eq!(
            decide(&four, 4, &answers(&[(1, false), (2, false)])),
            Founding::Found
        );
        // Answers from nodes that are not voters do not count towards a majority.
        assert_eq!(decide(&three, 1, &answers(&[(9, false)])), Founding::Wait);
    }
}
