//! What each node holds, as placement sees it, and the apply-time re-check of placement
//! decisions: the reconciler decides on a snapshot of the state, and by the time its batch
//! commits the state may have moved on (a node went down, another batch took the room, the
//! deployment was updated). Admission replays every decision against the state it meets.

use std::collections::{BTreeMap, BTreeSet};

use super::{ActorId, ClusterState, Liveness, NodeId, NodeRecord, Placement, PlacementDecision};
use super::{PlacementStatus, not_found};
use crate::command::{CommandOutcome, ObjectKind, Rejection};
use crate::placement::{GpuDevice, NodeView};
use crate::resources::GpuAmount;

impl ClusterState {
    /// Every node as placement sees it: capacity, what its placements hold (all of them,
    /// whatever their status: a failed actor's room stays reserved until it is moved or
    /// removed), GPU shares per device, and the deployments it hosts.
    pub fn node_views(&self) -> BTreeMap<NodeId, NodeView> {
        self.views_of(|_| true, &BTreeSet::new())
    }

    /// Views of the nodes `wanted` selects, leaving out the placements in `released`.
    pub(crate) fn views_of(
        &self,
        wanted: impl Fn(NodeId) -> bool,
        released: &BTreeSet<&str>,
    ) -> BTreeMap<NodeId, NodeView> {
        let mut views: BTreeMap<NodeId, NodeView> = self
            .nodes
            .iter()
            .filter(|(id, _)| wanted(**id))
            .map(|(id, n)| (*id, empty_view(*id, n)))
            .collect();
        for p in self.placements.values() {
            if released.contains(p.actor_id.as_str()) {
                continue;
            }
            if let Some(view) = views.get_mut(&p.node) {
                hold(view, p);
            }
        }
        views
    }

    /// Applies [`crate::Command::PlaceActors`]: all decisions admitted, or none.
    pub(super) fn place(
        &mut self,
        decisions: &[PlacementDecision],
    ) -> Result<CommandOutcome, Rejection> {
        let mut ids: BTreeSet<ActorId> = BTreeSet::new();
        for d in decisions {
            let id = super::actor_id(&d.deployment, d.replica);
            let deployment = self
                .deployments
                .get(&d.deployment)
                .ok_or_else(|| not_found(ObjectKind::Deployment, &d.deployment))?;
            if !self.nodes.contains_key(&d.node) {
                return Err(Rejection::UnknownNode(d.node));
            }
            if d.replica >= deployment.spec.replicas {
                return Err(Rejection::Invalid(format!(
                    "placement {id:?}: deployment {:?} has {} replicas",
                    d.deployment, deployment.spec.replicas
                )));
            }
            if d.revision != deployment.version {
                return Err(Rejection::Invalid(format!(
                    "placement {id:?} was decided for revision {} of {:?}, which is now at {}",
                    d.revision, d.deployment, deployment.version
                )));
            }
            let current = self.placements.get(&id).map(|p| p.generation);
            if current != d.replaces {
                return Err(Rejection::Invalid(format!(
                    "placement {id:?} changed since it was decided (generation {current:?}, decided against {:?})",
                    d.replaces
                )));
            }
            if !ids.insert(id.clone()) {
                return Err(Rejection::Invalid(format!(
                    "placement {id:?} appears twice in one batch"
                )));
            }
        }
        let touched: BTreeSet<NodeId> = decisions.iter().map(|d| d.node).collect();
        let released: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let mut views = self.views_of(|id| touched.contains(&id), &released);
        for d in decisions {
            let spec = &self.deployments[&d.deployment].spec;
            let view = views
                .get_mut(&d.node)
                .ok_or(Rejection::UnknownNode(d.node))?;
            view.admit(&spec.request(d.replica), &d.gpus)
                .map_err(|why| {
                    Rejection::Invalid(format!(
                        "cannot place {:?} on node {}: the node {why}",
                        spec.actor_id(d.replica),
                        d.node
                    ))
                })?;
        }
        let mut generations = Vec::with_capacity(decisions.len());
        for d in decisions {
            self.last_generation += 1;
            let spec = &self.deployments[&d.deployment].spec;
            let placement = Placement {
                actor_id: spec.actor_id(d.replica),
                deployment: d.deployment.clone(),
                replica: d.replica,
                node: d.node,
                gpus: d.gpus.clone(),
                resources: spec.resources.clone(),
                revision: d.revision,
                generation: self.last_generation,
                status: PlacementStatus::Pending,
            };
            generations.push(placement.generation);
            self.placements
                .insert(placement.actor_id.clone(), placement);
        }
        Ok(CommandOutcome::Placed { generations })
    }
}

fn empty_view(id: NodeId, n: &NodeRecord) -> NodeView {
    let devices = n.capacity.gpu.hundredths() / GpuAmount::PER_DEVICE;
    NodeView {
        id,
        capacity: n.capacity.clone(),
        used: Default::default(),
        labels: n.labels.clone(),
        ready: n.liveness == Liveness::Ready,
        draining: n.draining,
        gpus: (0..devices as u32)
            .map(|index| GpuDevice {
                index,
                free: GpuAmount::ONE,
            })
            .collect(),
        hosted: BTreeSet::new(),
    }
}

/// Adds what `p` holds to its node's view.
fn hold(view: &mut NodeView, p: &Placement) {
    // Capacity was checked when the placement was admitted; a node that re-registered
    // with less can end up over, which saturates instead of wrapping.
    view.used = view
        .used
        .checked_add(&p.resources)
        .unwrap_or_else(|_| view.used.clone());
    for share in &p.gpus {
        if let Some(d) = view.gpus.iter_mut().find(|d| d.index == share.index) {
            d.free = GpuAmount::from_hundredths(
                d.free
                    .hundredths()
                    .saturating_sub(share.amount.hundredths()),
            );
        }
    }
    view.hosted.insert(p.deployment.clone());
}
