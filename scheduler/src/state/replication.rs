//! Replica sets: which replicas of a vector partition hold every acknowledged write.
//!
//! A partition is a deployment whose replicas hold data, so losing one is not like losing an
//! `echo`. For each partition the state keeps a [`ReplicaSet`] (PacificA's configuration,
//! Kafka's ISR, Elasticsearch's primary term): one **primary** that orders writes, the
//! **in-sync** replicas (each at the placement generation that is in sync: a replica moved to
//! another node starts empty and is not) and an **epoch** that grows with every change of
//! either. The primary acknowledges a write only once every in-sync replica has it durable,
//! and removes a replica that failed it *before* acknowledging (a committed command), so every
//! in-sync replica holds every acknowledged write. Hence the rules below:
//!
//! * only committed commands change a set, each one bumping the epoch;
//! * a replica joins only when the primary vouches that it caught up ([`Command::AddInSync`]);
//! * the primary moves only to another in-sync replica, and a stale replica is promoted only
//!   by an operator who accepts the loss ([`Command::PromoteStale`]);
//! * a placement change that would discard the last in-sync copy is refused: the partition
//!   waits for that copy's node instead.
//!
//! A new collection's replicas are all empty: the first one placed is its primary at epoch 1,
//! and the others join it like any replica that starts.
//!
//! [`Command::AddInSync`]: crate::Command::AddInSync
//! [`Command::PromoteStale`]: crate::Command::PromoteStale

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ClusterState, Liveness, NodeId, PlacementDecision, PlacementStatus, not_found};
use crate::command::{CommandOutcome, ObjectKind, Rejection};

/// One partition's replication state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    /// Grows with every change of the primary or the in-sync set; 0 until the partition's
    /// replicas are first placed.
    pub epoch: u64,
    /// The replica that orders writes; always in `in_sync` when set. `None`: no in-sync
    /// replica is left, and the partition is unavailable until an operator acts.
    pub primary: Option<u32>,
    /// The in-sync replicas: replica index → the generation of its placement that is in sync.
    pub in_sync: BTreeMap<u32, u64>,
    /// The highest sequence number the primary reported acknowledged by the whole in-sync set
    /// when it last changed the set: what an operator promoting a stale replica is told.
    pub checkpoint: u64,
}

impl ReplicaSet {
    /// Whether replica `replica` at `generation` is in sync.
    pub fn is_in_sync(&self, replica: u32, generation: u64) -> bool {
        self.in_sync.get(&replica) == Some(&generation)
    }

    fn bump(&mut self) {
        self.epoch += 1;
    }
}

/// A partition as a replica or a coordinator needs to see it: its set, and where each of its
/// replicas runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    /// The collection's incarnation: a collection created again under the same name has
    /// another one.
    pub incarnation: u64,
    /// The collection's vector dimension.
    pub dimension: u32,
    pub set: ReplicaSet,
    /// Every placed replica: index → where and under which generation.
    pub members: BTreeMap<u32, MemberView>,
}

/// One placed replica of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub generation: u64,
    pub node: NodeId,
    /// Its node is ready (heard from within `node_timeout`).
    pub node_ready: bool,
}

impl PartitionView {
    /// The primary's index and generation, if there is one.
    pub fn primary(&self) -> Option<(u32, u64)> {
        let p = self.set.primary?;
        Some((p, *self.set.in_sync.get(&p)?))
    }
}

/// Every partition's view, by deployment name. Pure.
pub fn partition_views(state: &ClusterState) -> BTreeMap<String, PartitionView> {
    let mut views: BTreeMap<String, PartitionView> = state
        .replica_sets
        .iter()
        .filter_map(|(deployment, set)| {
            let collection = state
                .deployments
                .get(deployment)?
                .spec
                .collection
                .as_ref()?;
            let spec = state.collections.get(collection)?;
            Some((
                deployment.clone(),
                PartitionView {
                    incarnation: spec.incarnation,
                    dimension: spec.dimension,
                    set: set.clone(),
                    members: BTreeMap::new(),
                },
            ))
        })
        .collect();
    for p in state.placements.values() {
        if let Some(view) = views.get_mut(&p.deployment) {
            view.members.insert(
                p.replica,
                MemberView {
                    generation: p.generation,
                    node: p.node,
                    node_ready: state
                        .nodes
                        .get(&p.node)
                        .is_some_and(|n| n.liveness == Liveness::Ready),
                },
            );
        }
    }
    views
}

impl ClusterState {
    fn replica_set(&mut self, deployment: &str) -> Result<&mut ReplicaSet, Rejection> {
        self.replica_sets
            .get_mut(deployment)
            .ok_or_else(|| not_found(ObjectKind::Deployment, format!("{deployment} (partition)")))
    }

    /// The in-sync replica to promote when `leaving` leaves: one whose node is ready, lowest
    /// index first (deterministic, as apply must be).
    fn successor(&self, deployment: &str, set: &ReplicaSet, leaving: &[u32]) -> Option<u32> {
        let candidates = || set.in_sync.keys().copied().filter(|r| !leaving.contains(r));
        let ready = |replica: u32| {
            let id = super::actor_id(deployment, replica);
            self.placements
                .get(&id)
                .and_then(|p| self.nodes.get(&p.node))
                .is_some_and(|n| n.liveness == Liveness::Ready)
        };
        candidates()
            .find(|r| ready(*r))
            .or_else(|| candidates().next())
    }

    fn current_epoch(set: &ReplicaSet, deployment: &str, epoch: u64) -> Result<(), Rejection> {
        if set.epoch != epoch {
            return Err(Rejection::Invalid(format!(
                "partition {deployment:?} is at epoch {}, not {epoch}",
                set.epoch
            )));
        }
        Ok(())
    }

    /// [`crate::Command::AddInSync`].
    pub(super) fn add_in_sync(
        &mut self,
        deployment: &str,
        replica: u32,
        generation: u64,
        epoch: u64,
        seq: u64,
    ) -> Result<CommandOutcome, Rejection> {
        let placed = self
            .placements
            .get(&super::actor_id(deployment, replica))
            .map(|p| p.generation);
        if placed != Some(generation) {
            return Err(Rejection::Invalid(format!(
                "replica {replica} of {deployment:?} is not placed at generation {generation}"
            )));
        }
        let set = self.replica_set(deployment)?;
        Self::current_epoch(set, deployment, epoch)?;
        if set.primary.is_none() {
            return Err(Rejection::Invalid(format!(
                "partition {deployment:?} has no primary to vouch for replica {replica}"
            )));
        }
        set.in_sync.insert(replica, generation);
        set.checkpoint = set.checkpoint.max(seq);
        set.bump();
        Ok(CommandOutcome::Epoch(set.epoch))
    }

    /// [`crate::Command::RemoveInSync`].
    pub(super) fn remove_in_sync(
        &mut self,
        deployment: &str,
        replicas: &[(u32, u64)],
        epoch: u64,
        seq: u64,
    ) -> Result<CommandOutcome, Rejection> {
        let set = self.replica_set(deployment)?;
        Self::current_epoch(set, deployment, epoch)?;
        if let Some((r, _)) = replicas.iter().find(|(r, _)| Some(*r) == set.primary) {
            return Err(Rejection::Invalid(format!(
                "replica {r} is the primary of {deployment:?}; it cannot be removed from its own in-sync set"
            )));
        }
        for (replica, generation) in replicas {
            if set.is_in_sync(*replica, *generation) {
                set.in_sync.remove(replica);
            }
        }
        set.checkpoint = set.checkpoint.max(seq);
        set.bump();
        Ok(CommandOutcome::Epoch(set.epoch))
    }

    /// [`crate::Command::LeaveInSync`]: always allowed for a member; the primary hands over to
    /// another in-sync replica, or the partition is left without one.
    pub(super) fn leave_in_sync(
        &mut self,
        deployment: &str,
        replica: u32,
        generation: u64,
    ) -> Result<CommandOutcome, Rejection> {
        let set = self.replica_set(deployment)?.clone();
        if !set.is_in_sync(replica, generation) {
            // Already out: nothing to do, and nothing to refuse either.
            return Ok(CommandOutcome::Epoch(set.epoch));
        }
        let successor = if set.primary == Some(replica) {
            self.successor(deployment, &set, &[replica])
        } else {
            set.primary
        };
        let set = self.replica_set(deployment)?;
        set.in_sync.remove(&replica);
        set.primary = successor;
        set.bump();
        Ok(CommandOutcome::Epoch(set.epoch))
    }

    /// [`crate::Command::PromotePrimary`].
    pub(super) fn promote_primary(
        &mut self,
        deployment: &str,
        replica: u32,
        epoch: u64,
    ) -> Result<CommandOutcome, Rejection> {
        let set = self.replica_set(deployment)?;
        Self::current_epoch(set, deployment, epoch)?;
        if !set.in_sync.contains_key(&replica) {
            return Err(Rejection::Invalid(format!(
                "replica {replica} of {deployment:?} is not in sync; only an operator may promote a stale replica"
            )));
        }
        if let Some(old) = set.primary.filter(|old| *old != replica) {
            set.in_sync.remove(&old);
        }
        set.primary = Some(replica);
        set.bump();
        Ok(CommandOutcome::Epoch(set.epoch))
    }

    /// [`crate::Command::PromoteStale`].
    pub(super) fn promote_stale(
        &mut self,
        deployment: &str,
        replica: u32,
    ) -> Result<CommandOutcome, Rejection> {
        let placement = self
            .placements
            .get(&super::actor_id(deployment, replica))
            .ok_or_else(|| not_found(ObjectKind::Placement, super::actor_id(deployment, replica)))?
            .clone();
        let set = self.replica_set(deployment)?.clone();
        let serving = set.in_sync.iter().find(|(r, g)| {
            self.placements
                .get(&super::actor_id(deployment, **r))
                .filter(|p| p.generation == **g)
                .is_some_and(|p| {
                    !matches!(p.status, PlacementStatus::Failed { .. })
                        && self
                            .nodes
                            .get(&p.node)
                            .is_some_and(|n| n.liveness == Liveness::Ready)
                })
        });
        if let Some((r, _)) = serving {
            return Err(Rejection::Invalid(format!(
                "replica {r} of {deployment:?} is in sync and its node is ready: nothing is lost, no promotion needed"
            )));
        }
        let set = self.replica_set(deployment)?;
        set.in_sync = BTreeMap::from([(replica, placement.generation)]);
        set.primary = Some(replica);
        set.bump();
        Ok(CommandOutcome::Epoch(set.epoch))
    }

    /// Refuses a batch of placement decisions that would discard the last in-sync copy of a
    /// partition: a replaced replica leaves its set, and a set with nobody left has lost the
    /// partition's acknowledged writes.
    pub(super) fn check_replacements(
        &self,
        decisions: &[PlacementDecision],
    ) -> Result<(), Rejection> {
        let mut leaving: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for d in decisions {
            let Some(set) = self.replica_sets.get(&d.deployment) else {
                continue;
            };
            if let Some(g) = d.replaces
                && set.is_in_sync(d.replica, g)
            {
                leaving.entry(&d.deployment).or_default().push(d.replica);
            }
        }
        for (deployment, replicas) in leaving {
            let set = &self.replica_sets[deployment];
            if set.in_sync.keys().all(|r| replicas.contains(r)) {
                return Err(Rejection::Invalid(format!(
                    "moving {replicas:?} of {deployment:?} would discard its last in-sync copy; \
                     it waits for its node, or for `arbor collection promote-stale`"
                )));
            }
        }
        Ok(())
    }

    /// After placements applied: a replaced replica leaves its set (handing over the primary
    /// when it had it); a partition placed for the first time starts in sync at epoch 1.
    pub(super) fn replication_after_placement(&mut self, decisions: &[PlacementDecision]) {
        for d in decisions {
            let Some(set) = self.replica_sets.get(&d.deployment).cloned() else {
                continue;
            };
            if let Some(g) = d.replaces
                && set.is_in_sync(d.replica, g)
            {
                let successor = if set.primary == Some(d.replica) {
                    self.successor(&d.deployment, &set, &[d.replica])
                } else {
                    set.primary
                };
                if let Some(s) = self.replica_sets.get_mut(&d.deployment) {
                    s.in_sync.remove(&d.replica);
                    s.primary = successor;
                    s.bump();
                }
            }
        }
        // First placements: nothing was ever written, so the first placed replica is the
        // primary and in sync at epoch 1; the others join it as any new replica does, which
        // bumps the epoch (so a replica that finds its file missing later, at epoch 2 or
        // more, knows that it lost data).
        let fresh: Vec<String> = self
            .replica_sets
            .iter()
            .filter(|(_, s)| s.epoch == 0)
            .map(|(d, _)| d.clone())
            .collect();
        for deployment in fresh {
            let Some(replicas) = self.deployments.get(&deployment).map(|d| d.spec.replicas) else {
                continue;
            };
            let first = (0..replicas).find_map(|r| {
                let p = self.placements.get(&super::actor_id(&deployment, r))?;
                Some((r, p.generation))
            });
            if let Some((replica, generation)) = first
                && let Some(set) = self.replica_sets.get_mut(&deployment)
            {
                set.primary = Some(replica);
                set.in_sync = BTreeMap::from([(replica, generation)]);
                set.epoch = 1;
            }
        }
    }

    /// Refuses removing placements that hold the last in-sync copy of a partition; otherwise
    /// takes removed replicas out of their sets.
    pub(super) fn replication_before_removal(
        &mut self,
        actor_ids: &[String],
    ) -> Result<(), Rejection> {
        let mut leaving: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
        for id in actor_ids {
            if let Some(p) = self.placements.get(id)
                && self
                    .replica_sets
                    .get(&p.deployment)
                    .is_some_and(|s| s.is_in_sync(p.replica, p.generation))
            {
                leaving
                    .entry(p.deployment.clone())
                    .or_default()
                    .push((p.replica, p.generation));
            }
        }
        for (deployment, replicas) in &leaving {
            let set = &self.replica_sets[deployment];
            if set
                .in_sync
                .keys()
                .all(|r| replicas.iter().any(|(x, _)| x == r))
            {
                return Err(Rejection::Invalid(format!(
                    "removing {replicas:?} of {deployment:?} would discard its last in-sync copy"
                )));
            }
        }
        for (deployment, replicas) in leaving {
            let set = self.replica_sets[&deployment].clone();
            let gone: Vec<u32> = replicas.iter().map(|(r, _)| *r).collect();
            let successor = match set.primary {
                Some(p) if gone.contains(&p) => self.successor(&deployment, &set, &gone),
                other => other,
            };
            if let Some(s) = self.replica_sets.get_mut(&deployment) {
                for r in &gone {
                    s.in_sync.remove(r);
                }
                s.primary = successor;
                s.bump();
            }
        }
        Ok(())
    }
}
