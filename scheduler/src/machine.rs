//! The state machine as Raft sees it: [`ClusterState`] plus a window of recently applied
//! request ids, so a proposal retried across a leader change applies once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, MAX_PROPOSAL_BYTES, MAX_SNAPSHOT_BYTES};
use crate::command::{Command, CommandOutcome, Rejection};
use crate::state::{ClusterState, NodeId};

/// How many recent request ids are remembered. A retry older than this many later commands
/// could apply twice; retries happen within seconds, so this is ample.
pub const DEDUP_WINDOW: usize = 65_536;

/// Identifies one proposal across its retries: the proposing node and a per-process counter
/// that starts at a random point (so it does not repeat after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: NodeId,
    pub seq: u64,
}

/// A normal log entry's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub id: RequestId,
    pub command: Command,
}

impl Proposal {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode("proposal", self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode::<_, MAX_PROPOSAL_BYTES>("proposal", bytes)
    }
}

/// The context attached to a membership-change entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfContext {
    pub id: RequestId,
    /// The raft address of a node being added.
    pub address: Option<String>,
    /// Promote this learner to voter once it has caught up.
    pub promote_when_caught_up: bool,
}

impl ConfContext {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode("membership context", self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode::<_, 65_536>("membership context", bytes)
    }
}

/// The result of one applied request, as remembered for retries and returned to proposers.
pub type ApplyResult = Result<CommandOutcome, Rejection>;

/// Cluster state plus the dedup window; this is what a snapshot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachine {
    pub state: ClusterState,
    recent: VecDeque<RequestId>,
    results: BTreeMap<RequestId, ApplyResult>,
    /// Learners to promote to voters once they have caught up (leader acts on this).
    pub pending_promotions: BTreeSet<NodeId>,
}

impl StateMachine {
    /// Applies `command` unless `id` was already applied, in which case the first result is
    /// returned again and nothing changes.
    pub fn apply(&mut self, id: RequestId, command: &Command) -> ApplyResult {
        if let Some(done) = self.results.get(&id) {
            return done.clone();
        }
        let result = self.state.apply(command);
        self.remember(id, result.clone());
        result
    }

    /// The first result recorded for `id`, if it is still in the window.
    pub fn result_of(&self, id: &RequestId) -> Option<&ApplyResult> {
        self.results.get(id)
    }

    /// Records `result` for `id` (membership changes are applied by the node, not here).
    pub fn remember(&mut self, id: RequestId, result: ApplyResult) {
        self.recent.push_back(id);
        self.results.insert(id, result);
        while self.recent.len() > DEDUP_WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.results.remove(&old);
            }
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode("state snapshot", self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode::<_, MAX_SNAPSHOT_BYTES>("state snapshot", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_request_applies_once() {
        let mut m = StateMachine::default();
        let id = RequestId { origin: 1, seq: 7 };
        let cas = Command::KvCas {
            key: "k".into(),
            expected: None,
            new: Some("v".into()),
        };
        let first = m.apply(id, &cas);
        m.state.kv.insert("k".into(), "other".into());
        m.state.kv.remove("k");
        // The retry returns the first outcome instead of swapping again.
        assert_eq!(m.apply(id, &cas), first);
        assert!(!m.state.kv.contains_key("k"));
    }

    #[test]
    fn snapshot_round_trips() {
        let mut m = StateMachine::default();
        m.apply(
            RequestId { origin: 2, seq: 1 },
            &Command::KvPut {
                key: "a".into(),
                value: "b".into(),
            },
        )
        .unwrap();
        let back = StateMachine::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(back.state, m.state);
        assert!(back.result_of(&RequestId { origin: 2, seq: 1 }).is_some());
    }
}
