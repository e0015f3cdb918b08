//! The state machine as Raft sees it: [`ClusterState`] plus a window of recently applied
//! request ids, so a proposal retried across a leader change applies once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, MAX_PROPOSAL_BYTES, MAX_SNAPSHOT_BYTES};
use crate::command::{Command, CommandOutcome, Rejection};
use crate::state::{ClusterState, NodeId};

/// How long a request id is remembered, by its origin's clock: until a later request of the
/// same origin was first proposed this much later. A proposer retries a request only until
/// its `propose_timeout` (10 s by default), so a retry never comes this late. Counting by
/// time rather than by commands keeps a retry from applying twice however busy the log is;
/// comparing only one origin's stamps with each other keeps clocks of different nodes apart.
pub const DEDUP_SPAN_MS: u64 = 60_000;

/// The most request ids remembered at all, a bound on memory and on snapshots: past it, the
/// oldest ids of the origin that holds the most go first. A cluster reaches it only above
/// 17,000 commands a second for a whole [`DEDUP_SPAN_MS`].
pub const DEDUP_MAX: usize = 1 << 20;

/// Identifies one proposal across its retries: the proposing node, a per-process counter
/// that starts at a random point (so it does not repeat after a restart), and the proposer's
/// wall clock when it first proposed it (a retry carries the same id, stamp included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: NodeId,
    pub seq: u64,
    /// Milliseconds since the Unix epoch on the origin's clock.
    pub at_ms: u64,
}

impl RequestId {
    /// A request id stamped with this node's clock now.
    pub fn now(origin: NodeId, seq: u64) -> Self {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        RequestId { origin, seq, at_ms }
    }
}

/// The request ids of one origin still remembered, in the order they applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Remembered {
    /// The latest stamp seen from this origin.
    newest_ms: u64,
    ids: VecDeque<RequestId>,
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
    recent: BTreeMap<NodeId, Remembered>,
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

    /// Records `result` for `id` (membership changes are applied by the node, not here), and
    /// forgets the ids of its origin stamped more than [`DEDUP_SPAN_MS`] before the latest.
    pub fn remember(&mut self, id: RequestId, result: ApplyResult) {
        let origin = self.recent.entry(id.origin).or_default();
        origin.newest_ms = origin.newest_ms.max(id.at_ms);
        origin.ids.push_back(id);
        self.results.insert(id, result);
        let horizon = origin.newest_ms.saturating_sub(DEDUP_SPAN_MS);
        while let Some(old) = origin.ids.front().filter(|old| old.at_ms < horizon) {
            self.results.remove(old);
            origin.ids.pop_front();
        }
        while self.results.len() > DEDUP_MAX {
            let Some(largest) = self.recent.values_mut().max_by_key(|r| r.ids.len()) else {
                break;
            };
            match largest.ids.pop_front() {
                Some(old) => self.results.remove(&old),
                None => break,
            };
        }
        self.recent.retain(|_, r| !r.ids.is_empty());
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
        let id = RequestId::now(1, 7);
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
    fn ids_are_remembered_for_a_span_of_their_origins_clock_however_busy_the_log() {
        let mut m = StateMachine::default();
        let put = |k: u64| Command::KvPut {
            key: format!("k{k}"),
            value: "v".into(),
        };
        let id = |origin, seq, at_ms| RequestId { origin, seq, at_ms };
        let first = id(1, 1, 1_000_000);
        m.apply(first, &put(0)).unwrap();
        // Far more commands than the old count window, from another origin whose clock is
        // hours ahead: the first id stays.
        for seq in 0..70_000 {
            m.apply(id(2, seq, 9_000_000_000 + seq), &put(1)).unwrap();
        }
        assert!(m.result_of(&first).is_some());
        // Its own origin's later requests, still within the span: it stays.
        m.apply(id(1, 2, 1_000_000 + DEDUP_SPAN_MS), &put(2))
            .unwrap();
        assert!(m.result_of(&first).is_some());
        // Past the span on its origin's clock: it goes, and only it.
        m.apply(id(1, 3, 1_000_001 + DEDUP_SPAN_MS), &put(3))
            .unwrap();
        assert!(m.result_of(&first).is_none());
        assert!(m.result_of(&id(1, 2, 1_000_000 + DEDUP_SPAN_MS)).is_some());
        // Origin 2's ids span 70 s of its clock: those older than 60 s before its newest went.
        assert!(m.result_of(&id(2, 0, 9_000_000_000)).is_none());
        assert!(m.result_of(&id(2, 69_999, 9_000_069_999)).is_some());
        assert_eq!(m.results.len(), 60_001 + 2);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut m = StateMachine::default();
        m.apply(
            RequestId {
                origin: 2,
                seq: 1,
                at_ms: 5,
            },
            &Command::KvPut {
                key: "a".into(),
                value: "b".into(),
            },
        )
        .unwrap();
        let back = StateMachine::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(back.state, m.state);
        assert!(
            back.result_of(&RequestId {
                origin: 2,
                seq: 1,
                at_ms: 5
            })
            .is_some()
        );
    }
}
