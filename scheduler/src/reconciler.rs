//! The reconciler: desired state (deployments) against actual state (placements, node
//! liveness), as a pure function from a snapshot to the commands that close the gap.
//!
//! [`reconcile`] runs on the leader (see [`driver`]) on every commit and on a timer. One
//! round:
//! 1. liveness: a ready node silent for `node_timeout` is marked down, a down node heard
//!    again is marked ready;
//! 2. per deployment: replicas past `replicas` are removed; missing replicas, and replicas on
//!    down nodes, are placed; replicas of an older revision (rolling update) or on a draining
//!    node are replaced, but only while fewer than `max_unavailable` replicas are unavailable,
//!    so each new replica runs before the next old one stops;
//! 3. one [`place`] call for everything, batched into [`Command::PlaceActors`] proposals that
//!    the state machine re-checks when it applies them (see `state/admission.rs`);
//!    A new collection's partitions go in as one gang: all of them or none;
//! 4. replicas of down nodes that fit nowhere are unplaced (they wait as pending, and never
//!    count as running on a node that is gone); each deployment records why replicas wait.
//!
//! Moving a replica gives it a new generation, so a node that comes back and still runs the
//! old copy stops it as soon as it sees the new placement: never two live copies.
//!
//! Vector partitions hold data, so their replicas follow their replica set
//! (`state/replication.rs`): a primary whose node is down (or whose replica failed) is first
//! replaced by another in-sync replica; an in-sync replica moves only while another in-sync
//! replica is up to take over (a moved replica starts empty); and when every in-sync replica
//! is down nothing of the partition moves: it waits for one of them, with a reason that says
//! so. Availability for `max_unavailable` counts in-sync replicas. A partition replica whose
//! node is down moves only once the node has been down for `partition_move_delay` (as
//! Elasticsearch delays reallocating a departed node's shards): a node back sooner catches up
//! from its own files instead of a full copy, and a stale copy stays where
//! `arbor collection promote-stale` can still use it if every in-sync copy is lost meanwhile.

pub mod driver;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::command::Command;
use crate::placement::{ReplicaRequest, place};
use crate::state::{
    ActorId, ClusterState, Liveness, NodeId, Placement, PlacementDecision, PlacementStatus,
    ReplicaSet,
};

/// Reconciler settings (cluster.toml `[scheduler]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcilerConfig {
    /// A node silent for this long is marked down and its actors are placed elsewhere.
    pub node_timeout: Duration,
    /// A partition replica on a down node is placed elsewhere (starting empty, copying from
    /// its primary) only once the node has been down this long.
    pub partition_move_delay: Duration,
    /// A round runs at least this often, even without commits.
    pub interval: Duration,
    /// Most placement decisions in one proposal.
    pub max_batch: usize,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            node_timeout: Duration::from_secs(3),
            partition_move_delay: Duration::from_secs(60),
            interval: Duration::from_millis(250),
            max_batch: 2048,
        }
    }
}

/// What the leader knows about its peers this round. A node in neither set is undecided
/// (a new leader gives every node `node_timeout` to be heard before judging it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The proposer's wall clock (ms since the Unix epoch), recorded with liveness changes.
    pub now_ms: u64,
    /// Heard from within `node_timeout`.
    pub alive: BTreeSet<NodeId>,
    /// Silent for longer than `node_timeout`.
    pub silent: BTreeSet<NodeId>,
}

/// The commands that move `state` toward what its deployments ask for, in the order they
/// must be proposed. Placements go in batches of at most `config.max_batch` decisions.
pub fn reconcile(
    state: &ClusterState,
    seen: &Observation,
    config: &ReconcilerConfig,
) -> Vec<Command> {
    let max_batch = config.max_batch;
    let mut commands = liveness_changes(state, seen);
    // Plan against the state as it will be once the liveness changes apply.
    let state = if commands.is_empty() {
        Cow::Borrowed(state)
    } else {
        let mut next = state.clone();
        for c in &commands {
            let _ = next.apply(c);
        }
        Cow::Owned(next)
    };
    let state = state.as_ref();

    let mut by_deployment: BTreeMap<&str, BTreeMap<u32, &Placement>> = BTreeMap::new();
    let mut removals: Vec<ActorId> = Vec::new();
    for p in state.placements.values() {
        match state.deployments.get(&p.deployment) {
            Some(d) if p.replica < d.spec.replicas => {
                by_deployment
                    .entry(&p.deployment)
                    .or_default()
                    .insert(p.replica, p);
            }
            // Scaled down (or an orphan): stop it.
            _ => removals.push(p.actor_id.clone()),
        }
    }

    let node_up = |id: NodeId| {
        state
            .nodes
            .get(&id)
            .is_some_and(|n| n.liveness == Liveness::Ready)
    };
    let draining = |id: NodeId| state.nodes.get(&id).is_some_and(|n| n.draining);
    // How much longer a partition replica on `id` waits for it to come back (zero: move it).
    let delay_ms = u64::try_from(config.partition_move_delay.as_millis()).unwrap_or(u64::MAX);
    let move_wait_ms = |id: NodeId| {
        state.nodes.get(&id).map_or(0, |n| {
            let down_for = seen.now_ms.saturating_sub(n.liveness_at_ms);
            delay_ms.saturating_sub(down_for)
        })
    };

    // Collections none of whose partitions is placed yet go in as one gang.
    let placed_collections: BTreeSet<&str> = by_deployment
        .keys()
        .filter_map(|d| state.deployments.get(*d)?.spec.collection.as_deref())
        .collect();
    let request = |spec: &crate::state::DeploymentSpec, replica: u32| {
        let mut r = spec.request(replica);
        r.gang = spec
            .collection
            .clone()
            .filter(|c| !placed_collections.contains(c.as_str()));
        r
    };

    let mut requests: Vec<ReplicaRequest> = Vec::new();
    let mut replaces: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    let mut lost: BTreeSet<(&str, u32)> = BTreeSet::new();
    // Replicas that hold a partition's only up-to-date copies: never unplaced.
    let mut kept: BTreeSet<(&str, u32)> = BTreeSet::new();
    let mut reasons: BTreeMap<&str, String> = BTreeMap::new();
    let mut promotions: Vec<Command> = Vec::new();
    let empty = BTreeMap::new();
    for (name, d) in &state.deployments {
        let spec = &d.spec;
        let placed = by_deployment.get(name.as_str()).unwrap_or(&empty);
        let set = state.replica_sets.get(name).filter(|s| s.epoch > 0);
        let in_sync = |p: &Placement| set.is_some_and(|s| s.is_in_sync(p.replica, p.generation));
        let serving =
            |p: &Placement| node_up(p.node) && !matches!(p.status, PlacementStatus::Failed { .. });
        if let Some(set) = set {
            match partition_failover(name, set, placed, &serving) {
                Failover::Promote { replica, epoch } => {
                    // The primary moves first; placements are planned on the next round.
                    promotions.push(Command::PromotePrimary {
                        deployment: name.clone(),
                        replica,
                        epoch,
                    });
                    continue;
                }
                Failover::Stuck(reason) => {
                    reasons.insert(name.as_str(), reason);
                }
                Failover::None => {}
            }
        }
        let available = placed
            .values()
            .filter(|p| {
                p.status == PlacementStatus::Running
                    && node_up(p.node)
                    && (set.is_none() || in_sync(p))
            })
            .count() as u32;
        // Another in-sync replica that is up could take over from `replica`'s copy.
        let covered = |replica: u32| {
            placed
                .values()
                .any(|q| q.replica != replica && in_sync(q) && serving(q))
        };
        let mut budget = spec
            .max_unavailable
            .saturating_sub(spec.replicas.saturating_sub(available));
        for replica in 0..spec.replicas {
            let Some(p) = placed.get(&replica) else {
                requests.push(request(spec, replica));
                continue;
            };
            let key = (name.as_str(), replica);
            if in_sync(p) && !covered(replica) {
                // The last in-sync copies stay where they are, whatever happens to their node.
                kept.insert(key);
                if !node_up(p.node) || p.revision != d.version || draining(p.node) {
                    reasons.entry(name.as_str()).or_insert_with(|| {
                        format!(
                            "replica {replica} holds the only in-sync copy of partition {name:?};                              it moves once another replica has caught up"
                        )
                    });
                }
                continue;
            }
            if !node_up(p.node) {
                if set.is_some() && move_wait_ms(p.node) > 0 {
                    // Stable wording: a reason that changed every round would be a command
                    // every round.
                    reasons.entry(name.as_str()).or_insert_with(|| {
                        format!(
                            "replica {replica} waits for node {} to come back; it moves \
                             elsewhere once the node has been down for {:?} \
                             ([scheduler] partition_move_delay)",
                            p.node, config.partition_move_delay
                        )
                    });
                    continue;
                }
                lost.insert(key);
            } else if p.revision != d.version || draining(p.node) {
                // Replacing a replica that is not running costs no availability.
                if p.status == PlacementStatus::Running {
                    if budget == 0 {
                        continue;
                    }
                    budget -= 1;
                }
            } else {
                continue;
            }
            replaces.insert(key, p.generation);
            requests.push(spec.request(replica));
        }
    }
    commands.extend(promotions);

    // What replaced and removed replicas hold is free for the new decisions: the state
    // machine releases it the same way when it applies them.
    let mut released: BTreeSet<&str> = removals.iter().map(String::as_str).collect();
    for (name, replica) in replaces.keys() {
        if let Some(p) = by_deployment.get(name).and_then(|m| m.get(replica)) {
            released.insert(p.actor_id.as_str());
        }
    }
    let views: Vec<_> = state.views_of(|_| true, &released).into_values().collect();
    let plan = if requests.is_empty() {
        Default::default()
    } else {
        place(&views, &requests)
    };

    let decisions: Vec<PlacementDecision> = plan
        .placements
        .into_iter()
        .map(|p| {
            let revision = state.deployments[&p.deployment].version;
            let replaces = replaces.get(&(p.deployment.as_str(), p.replica)).copied();
            PlacementDecision {
                deployment: p.deployment,
                replica: p.replica,
                node: p.node,
                gpus: p.gpus,
                revision,
                replaces,
            }
        })
        .collect();

    for pending in &plan.pending {
        let key = (pending.deployment.as_str(), pending.replica);
        if lost.contains(&key)
            && !kept.contains(&key)
            && let Some(p) = by_deployment.get(key.0).and_then(|m| m.get(&key.1))
        {
            removals.push(p.actor_id.clone());
        }
        reasons
            .entry(pending.deployment.as_str())
            .or_insert_with(|| pending.reason.to_string());
    }

    for chunk in removals.chunks(max_batch.max(1)) {
        commands.push(Command::RemovePlacements {
            actor_ids: chunk.to_vec(),
        });
    }
    for chunk in decisions.chunks(max_batch.max(1)) {
        commands.push(Command::PlaceActors {
            decisions: chunk.to_vec(),
        });
    }
    for (name, d) in &state.deployments {
        let reason = reasons.get(name.as_str()).cloned();
        if reason != d.pending_reason {
            commands.push(Command::SetPendingReason {
                deployment: name.clone(),
                reason,
            });
        }
    }
    commands
}

/// What a partition's primary needs this round.
enum Failover {
    None,
    /// This in-sync replica takes over (at the set's epoch).
    Promote {
        replica: u32,
        epoch: u64,
    },
    /// No in-sync replica can serve: the partition waits, for this reason.
    Stuck(String),
}

/// Pure: a primary that cannot serve (its node is down, its replica failed, or there is
/// none) is replaced by an in-sync replica that can, lowest index first.
fn partition_failover(
    name: &str,
    set: &ReplicaSet,
    placed: &BTreeMap<u32, &Placement>,
    serving: &impl Fn(&Placement) -> bool,
) -> Failover {
    let in_sync_serving = |replica: u32| {
        placed
            .get(&replica)
            .is_some_and(|p| set.is_in_sync(replica, p.generation) && serving(p))
    };
    if set.primary.is_some_and(in_sync_serving) {
        return Failover::None;
    }
    match set.in_sync.keys().copied().find(|r| in_sync_serving(*r)) {
        Some(replica) => Failover::Promote {
            replica,
            epoch: set.epoch,
        },
        None if set.in_sync.is_empty() => Failover::Stuck(format!(
            "partition {name:?} has no in-sync replica left;              `arbor collection promote-stale` accepts the loss"
        )),
        None => Failover::Stuck(format!(
            "the in-sync replicas {:?} of partition {name:?} are all down or failed;              it waits for one of them (or `arbor collection promote-stale`)",
            set.in_sync.keys().collect::<Vec<_>>()
        )),
    }
}

/// Liveness changes the observation calls for.
fn liveness_changes(state: &ClusterState, seen: &Observation) -> Vec<Command> {
    state
        .nodes
        .iter()
        .filter_map(|(id, n)| {
            let liveness = match n.liveness {
                Liveness::Ready if seen.silent.contains(id) => Liveness::Down,
                Liveness::Down if seen.alive.contains(id) => Liveness::Ready,
                _ => return None,
            };
            Some(Command::SetNodeLiveness {
                id: *id,
                liveness,
                observed_at_ms: seen.now_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
