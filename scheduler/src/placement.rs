//! Placement: which node runs which replica, as a pure function from data to data.
//!
//! [`place`] takes a snapshot of the nodes and a list of replica requests and returns where
//! each replica goes (with concrete GPU device indices) or why it stays pending. It never
//! reads a clock, a random source or global state, so the leader's reconciler can call it and
//! the tests can check its promises exhaustively:
//!
//! * no resource of any node is ever overcommitted, GPU devices included;
//! * label constraints hold, and only ready, undrained nodes receive work;
//! * `spread` picks the least-loaded node that fits, `pack` the most-loaded that fits;
//! * with anti-affinity, replicas of one deployment land on distinct nodes;
//! * a whole-GPU request gets devices nobody else holds; fractions share a device up to 1.0;
//! * a gang is placed entirely or not at all;
//! * ties are broken by node id, so the same input always gives the same answer.
//!
//! "Load" is a node's dominant share (the largest used/capacity fraction over cpu, memory,
//! gpu, gpu memory and ipu), with the sum of those fractions breaking ties, then the node id.
//!
//! Cost: nodes sit in ordered indexes by load, one pair (spread, pack) per static filter
//! (label constraints, "has GPUs") met so far, so a request walks only nodes that can match
//! it. Consecutive requests with the same shape (deployment and spec) form a run, and a node
//! that cannot take the shape is skipped once per run, not once per replica: within a run
//! free capacity only shrinks, so a node that failed stays failed. A decision costs
//! O(log nodes) plus the nodes it rejects, and each placement updates the indexes holding
//! its node. A shape that fits nowhere is remembered for the rest of the call.

mod constraint;
mod reason;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::resources::{GpuAmount, ResourceError, ResourceKind, Resources};

pub use constraint::LabelConstraint;
pub use reason::{NoFit, PendingReason, Rejection};

pub use arbor_proto::NodeId;

/// One GPU on a node and how much of it is still free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// The device index as the node's driver numbers it.
    pub index: u32,
    /// The unassigned part, from 0 to 1.
    pub free: GpuAmount,
}

/// What placement needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    pub id: NodeId,
    pub capacity: Resources,
    /// What replicas already placed here hold.
    pub used: Resources,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub draining: bool,
    /// Per-device free fractions; their sum should agree with `capacity.gpu - used.gpu`,
    /// and a GPU request must fit both.
    pub gpus: Vec<GpuDevice>,
    /// Deployments that already have a replica here, for anti-affinity.
    pub hosted: BTreeSet<String>,
}

impl NodeView {
    /// Re-checks one decision against this node's current state and, if it still holds,
    /// takes its resources, GPU shares and anti-affinity mark. This is what the state machine
    /// does when it applies a batch decided earlier: a stale decision is rejected with the
    /// first filter it now fails, never overcommitted. On error the node is unchanged.
    pub fn admit(&mut self, request: &ReplicaRequest, gpus: &[GpuShare]) -> Result<(), Rejection> {
        if !self.ready {
            return Err(Rejection::NotReady);
        }
        if self.draining {
            return Err(Rejection::Draining);
        }
        if let Some(c) = request
            .constraints
            .iter()
            .find(|c| !c.matches(&self.labels))
        {
            return Err(Rejection::Constraint(c.clone()));
        }
        if request.anti_affinity && self.hosted.contains(&request.deployment) {
            return Err(Rejection::AntiAffinity);
        }
        let free = self.capacity.saturating_sub(&self.used);
        if let Some(kind) = free.shortfall(&request.resources) {
            return Err(Rejection::Insufficient(kind));
        }
        // The devices must have the shape `place` gives: `whole` devices held alone, plus at
        // most one device holding the fraction.
        let want = request.resources.gpu.hundredths();
        let (whole, fraction) = (want / GpuAmount::PER_DEVICE, want % GpuAmount::PER_DEVICE);
        let wholes = gpus.iter().filter(|s| s.amount == GpuAmount::ONE).count() as u64;
        let parts: Vec<u64> = gpus
            .iter()
            .filter(|s| s.amount != GpuAmount::ONE)
            .map(|s| s.amount.hundredths())
            .collect();
        let distinct: BTreeSet<u32> = gpus.iter().map(|s| s.index).collect();
        let shaped = wholes == whole
            && distinct.len() == gpus.len()
            && match fraction {
                0 => parts.is_empty(),
                f => parts == [f],
            };
        if !shaped {
            return Err(Rejection::GpuAssignment { index: None });
        }
        for share in gpus {
            let device = self.gpus.iter().find(|d| d.index == share.index);
            if device.is_none_or(|d| d.free < share.amount) {
                return Err(Rejection::GpuAssignment {
                    index: Some(share.index),
                });
            }
        }
        let used = self
            .used
            .checked_add(&request.resources)
            .map_err(|e| match e {
                ResourceError::Overflow { resource, .. } => Rejection::Insufficient(resource),
                _ => Rejection::Insufficient(ResourceKind::Cpu),
            })?;
        self.used = used;
        for share in gpus {
            if let Some(device) = self.gpus.iter_mut().find(|d| d.index == share.index) {
                device.free = GpuAmount::from_hundredths(
                    device.free.hundredths() - share.amount.hundredths(),
                );
            }
        }
        self.hosted.insert(request.deployment.clone());
        Ok(())
    }
}

/// How to choose among the nodes that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The least-loaded node: replicas spread out, a node's loss costs few of them.
    #[default]
    Spread,
    /// The most-loaded node that fits: replicas fill nodes, leaving others empty for large
    /// requests.
    Pack,
}

/// One replica to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRequest {
    pub deployment: String,
    pub replica: u32,
    pub resources: Resources,
    pub constraints: Vec<LabelConstraint>,
    pub strategy: Strategy,
    /// Keep this deployment's replicas on distinct nodes.
    pub anti_affinity: bool,
    /// Requests sharing a gang id are placed all together or not at all.
    pub gang: Option<String>,
}

impl ReplicaRequest {
    /// Two requests with the same shape succeed and fail on exactly the same nodes.
    fn same_shape(&self, other: &ReplicaRequest) -> bool {
        self.deployment == other.deployment
            && self.resources == other.resources
            && self.constraints == other.constraints
            && self.strategy == other.strategy
            && self.anti_affinity == other.anti_affinity
    }
}

/// A share of one GPU device given to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuShare {
    pub index: u32,
    pub amount: GpuAmount,
}

/// A replica assigned to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub deployment: String,
    pub replica: u32,
    pub node: NodeId,
    /// Empty unless the replica asked for GPUs.
    pub gpus: Vec<GpuShare>,
}

/// A replica that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub deployment: String,
    pub replica: u32,
    pub reason: PendingReason,
}

/// The answer of [`place`]: every request is in exactly one of the two lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlacementPlan {
    pub placements: Vec<Placement>,
    pub pending: Vec<Pending>,
}

/// Places `requests` on `nodes`, in request order, except that a gang is handled as a unit
/// at the position of its first member.
pub fn place(nodes: &[NodeView], requests: &[ReplicaRequest]) -> PlacementPlan {
    let mut placer = Placer::new(nodes);
    let mut plan = PlacementPlan::default();

    // Gang members, in request order, by gang id.
    let mut gangs: HashMap<&str, Vec<&ReplicaRequest>> = HashMap::new();
    for request in requests {
        if let Some(gang) = &request.gang {
            gangs.entry(gang.as_str()).or_default().push(request);
        }
    }

    let mut i = 0;
    while i < requests.len() {
        let request = &requests[i];
        if let Some(gang) = &request.gang {
            // Only the first member triggers the gang; later members are skipped.
            if let Some(members) = gangs.remove(gang.as_str()) {
                placer.place_gang(gang, &members, &mut plan);
            }
            i += 1;
            continue;
        }
        let end = requests[i..]
            .iter()
            .position(|r| r.gang.is_some() || !r.same_shape(request))
            .map_or(requests.len(), |n| i + n);
        let run: Vec<&ReplicaRequest> = requests[i..end].iter().collect();
        let (placed, failure) = placer.place_run(&run, None);
        plan.placements.extend(placed);
        if let Some((first_failed, cause)) = failure {
            let reason = PendingReason::NoFit(cause);
            plan.pending.extend(
                run[first_failed..]
                    .iter()
                    .map(|r| pending(r, reason.clone())),
            );
        }
        i = end;
    }
    plan
}

fn pending(request: &ReplicaRequest, reason: PendingReason) -> Pending {
    Pending {
        deployment: request.deployment.clone(),
        replica: request.replica,
        reason,
    }
}

/// Index of the fixed resource dimensions in `Resources::fixed`.
const GPU: usize = 2;

/// Mutable per-node state during one [`place`] call.
struct NodeState<'a> {
    view: &'a NodeView,
    capacity: [u64; 5],
    free: [u64; 5],
    custom_free: BTreeMap<String, u64>,
    /// (device index, free hundredths), sorted by index.
    gpus: Vec<(u32, u64)>,
    schedulable: bool,
    /// Load, higher is fuller: dominant share in the high half, sum of shares in the low.
    load: u64,
}

impl NodeState<'_> {
    fn compute_load(&mut self) {
        let (mut dominant, mut sum) = (0u64, 0u64);
        for d in 0..5 {
            if self.capacity[d] > 0 {
                let used = u128::from(self.capacity[d] - self.free[d]);
                let share = (used * 1_000_000 / u128::from(self.capacity[d])) as u64;
                dominant = dominant.max(share);
                sum += share;
            }
        }
        self.load = (dominant << 32) | sum.min(u64::from(u32::MAX));
    }
}

/// Ordered index entry: the strategy's order key in the high half, the node's position in
/// the low half. Positions follow node ids, so equal keys fall back to the lowest id.
type Slot = u128;

fn slot_pos(slot: Slot) -> usize {
    slot as u64 as usize
}

/// What to put back when a gang fails.
struct Undo {
    node: usize,
    resources: Resources,
    gpus: Vec<GpuShare>,
    hosted: Option<(u32, usize)>,
}

/// What makes two requests fail on the same nodes: resources, constraints and, under
/// anti-affinity, the deployment.
type ShapeKey<'a> = (&'a Resources, &'a [LabelConstraint], Option<&'a str>);

fn shape_key(request: &ReplicaRequest) -> ShapeKey<'_> {
    (
        &request.resources,
        &request.constraints,
        request.anti_affinity.then_some(request.deployment.as_str()),
    )
}

/// The schedulable nodes that pass a static filter, in one strategy's order: least loaded
/// first for spread, most loaded first for pack, then by id.
struct NodeIndex {
    strategy: Strategy,
    slots: BTreeSet<Slot>,
}

/// A static filter (label constraints, which do not change during a call, and whether the
/// node has GPU devices at all) and the order wanted.
type FilterKey<'a> = (&'a [LabelConstraint], bool, Strategy);

/// Indexes for distinct constraint lists beyond this many are not built; such requests walk
/// the unconstrained index and test labels node by node. This bounds the work each
/// placement spends keeping indexes current.
const MAX_INDEXES: usize = 64;

/// The mutable working state of one [`place`] call.
struct Placer<'a> {
    nodes: Vec<NodeState<'a>>,
    /// One index per static filter met so far, built on first use, so a request scans only
    /// nodes that can match it (a GPU request never walks past CPU-only nodes, a zone-bound one
    /// never past other zones) and each decision costs O(log nodes).
    indexes: Vec<NodeIndex>,
    index_of: HashMap<FilterKey<'a>, usize>,
    /// Per node, the indexes that hold it.
    member_of: Vec<Vec<usize>>,
    deployments: HashMap<String, u32>,
    /// (deployment, node position) pairs with a replica, for anti-affinity.
    hosted: HashSet<(u32, usize)>,
    run: u64,
    /// Per node, the run in which it last failed that run's shape.
    rejected_in: Vec<u64>,
    /// Shapes no node could take. Free capacity only shrinks during a call (a failed gang
    /// restores exactly what it took, and gangs never add here), so they stay unplaceable and
    /// later requests of the same shape are answered without another scan. Their reason is the
    /// one found first: every node it lists as short of something is still short of it.
    dead: HashMap<ShapeKey<'a>, NoFit>,
}

impl<'a> Placer<'a> {
    fn new(views: &'a [NodeView]) -> Self {
        let mut placer = Placer {
            nodes: Vec::with_capacity(views.len()),
            indexes: Vec::new(),
            index_of: HashMap::new(),
            member_of: vec![Vec::new(); views.len()],
            deployments: HashMap::new(),
            hosted: HashSet::new(),
            run: 0,
            rejected_in: vec![0; views.len()],
            dead: HashMap::new(),
        };
        // Positions in id order make "lowest position" mean "lowest id" in every tie.
        let mut by_id: Vec<&NodeView> = views.iter().collect();
        by_id.sort_by_key(|v| v.id);
        for (pos, view) in by_id.into_iter().enumerate() {
            let free_res = view.capacity.saturating_sub(&view.used);
            let mut gpus: Vec<(u32, u64)> = view
                .gpus
                .iter()
                .map(|g| (g.index, g.free.hundredths().min(GpuAmount::PER_DEVICE)))
                .collect();
            gpus.sort_unstable();
            gpus.dedup_by_key(|g| g.0);
            let mut node = NodeState {
                view,
                capacity: view.capacity.fixed(),
                free: free_res.fixed(),
                custom_free: free_res.custom,
                gpus,
                schedulable: view.ready && !view.draining,
                load: 0,
            };
            node.compute_load();
            placer.nodes.push(node);
            for name in &view.hosted {
                let id = placer.deployment_id(name);
                placer.hosted.insert((id, pos));
            }
        }
        placer
    }

    fn deployment_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.deployments.get(name) {
            return id;
        }
        let id = self.deployments.len() as u32;
        self.deployments.insert(name.to_owned(), id);
        id
    }

    fn slot(&self, pos: usize, strategy: Strategy) -> Slot {
        let load = self.nodes[pos].load;
        let key = match strategy {
            Strategy::Spread => load,
            Strategy::Pack => u64::MAX - load,
        };
        (u128::from(key) << 64) | pos as u128
    }

    /// The index for this filter and order, built on first use.
    fn index_for(
        &mut self,
        constraints: &'a [LabelConstraint],
        gpu: bool,
        strategy: Strategy,
    ) -> usize {
        if let Some(&i) = self.index_of.get(&(constraints, gpu, strategy)) {
            return i;
        }
        if !constraints.is_empty() && self.indexes.len() >= MAX_INDEXES {
            return self.index_for(&[], gpu, strategy);
        }
        let i = self.indexes.len();
        let mut slots = BTreeSet::new();
        for pos in 0..self.nodes.len() {
            let node = &self.nodes[pos];
            if node.schedulable
                && (!gpu || !node.gpus.is_empty())
                && constraints.iter().all(|c| c.matches(&node.view.labels))
            {
                slots.insert(self.slot(pos, strategy));
                self.member_of[pos].push(i);
            }
        }
        self.indexes.push(NodeIndex { strategy, slots });
        self.index_of.insert((constraints, gpu, strategy), i);
        i
    }

    fn index_insert(&mut self, pos: usize) {
        let (spread, pack) = (
            self.slot(pos, Strategy::Spread),
            self.slot(pos, Strategy::Pack),
        );
        for &i in &self.member_of[pos] {
            let index = &mut self.indexes[i];
            index.slots.insert(match index.strategy {
                Strategy::Spread => spread,
                Strategy::Pack => pack,
            });
        }
    }

    fn index_remove(&mut self, pos: usize) {
        let (spread, pack) = (
            self.slot(pos, Strategy::Spread),
            self.slot(pos, Strategy::Pack),
        );
        for &i in &self.member_of[pos] {
            let index = &mut self.indexes[i];
            index.slots.remove(&match index.strategy {
                Strategy::Spread => spread,
                Strategy::Pack => pack,
            });
        }
    }

    /// Places a run of same-shape requests. Returns the placements made and, if it stopped
    /// early, the index of the first request that failed with the diagnosis. With `undo`, each
    /// placement is logged so a gang can take it back.
    fn place_run(
        &mut self,
        run: &[&'a ReplicaRequest],
        mut undo: Option<&mut Vec<Undo>>,
    ) -> (Vec<Placement>, Option<(usize, NoFit)>) {
        let Some(&first) = run.first() else {
            return (Vec::new(), None);
        };
        if let Some(cause) = self.dead.get(&shape_key(first)) {
            let mut cause = cause.clone();
            cause.deployment.clone_from(&first.deployment);
            return (Vec::new(), Some((0, cause)));
        }
        self.run += 1;
        let stamp = self.run;
        let strategy = first.strategy;
        let filter = self.index_for(&first.constraints, !first.resources.gpu.is_zero(), strategy);
        let deployment = self.deployment_id(&first.deployment);
        // Every slot at or before the cursor is rejected for this run, except possibly the
        // node placed on last (pack moves it forward as it fills).
        let mut cursor: Option<Slot> = None;
        let mut last: Option<usize> = None;
        let mut placed = Vec::with_capacity(run.len());

        for (i, request) in run.iter().enumerate() {
            let mut candidate: Option<Slot> = None;
            let lower = cursor.map_or(Bound::Unbounded, Bound::Excluded);
            for &slot in self.indexes[filter].slots.range((lower, Bound::Unbounded)) {
                let pos = slot_pos(slot);
                if self.rejected_in[pos] != stamp
                    && admits(&self.nodes, &self.hosted, pos, request, deployment)
                {
                    candidate = Some(slot);
                    break;
                }
                self.rejected_in[pos] = stamp;
                cursor = Some(slot);
            }
            if let Some(pos) = last
                && self.rejected_in[pos] != stamp
            {
                if admits(&self.nodes, &self.hosted, pos, request, deployment) {
                    let slot = self.slot(pos, strategy);
                    if candidate.is_none_or(|c| slot < c) {
                        candidate = Some(slot);
                    }
                } else {
                    self.rejected_in[pos] = stamp;
                }
            }
            let Some(pos) = candidate.map(slot_pos) else {
                let cause = self.diagnose(request, deployment);
                if undo.is_none() {
                    self.dead.insert(shape_key(request), cause.clone());
                }
                return (placed, Some((i, cause)));
            };
            let placement = self.assign(pos, request, deployment, undo.as_deref_mut());
            placed.push(placement);
            last = Some(pos);
        }
        (placed, None)
    }

    /// Takes `request`'s resources from node `pos`, which has been checked to fit.
    fn assign(
        &mut self,
        pos: usize,
        request: &ReplicaRequest,
        deployment: u32,
        undo: Option<&mut Vec<Undo>>,
    ) -> Placement {
        self.index_remove(pos);
        let want = request.resources.fixed();
        let node = &mut self.nodes[pos];
        for (free, want) in node.free.iter_mut().zip(want) {
            *free -= want;
        }
        for (name, amount) in &request.resources.custom {
            if let Some(free) = node.custom_free.get_mut(name) {
                *free -= amount;
            }
        }
        let gpus = if want[GPU] > 0 {
            let shares = choose_gpus(&node.gpus, want[GPU]).expect("checked by reject");
            for share in &shares {
                let device = node
                    .gpus
                    .iter_mut()
                    .find(|g| g.0 == share.index)
                    .expect("chosen from this node");
                device.1 -= share.amount.hundredths();
            }
            shares
        } else {
            Vec::new()
        };
        node.compute_load();
        let node_id = node.view.id;
        self.index_insert(pos);
        let newly_hosted = self.hosted.insert((deployment, pos));
        if let Some(log) = undo {
            log.push(Undo {
                node: pos,
                resources: request.resources.clone(),
                gpus: gpus.clone(),
                hosted: newly_hosted.then_some((deployment, pos)),
            });
        }
        Placement {
            deployment: request.deployment.clone(),
            replica: request.replica,
            node: node_id,
            gpus,
        }
    }

    fn unassign(&mut self, undo: Undo) {
        let pos = undo.node;
        self.index_remove(pos);
        let node = &mut self.nodes[pos];
        for (free, want) in node.free.iter_mut().zip(undo.resources.fixed()) {
            *free += want;
        }
        for (name, amount) in &undo.resources.custom {
            if let Some(free) = node.custom_free.get_mut(name) {
                *free += amount;
            }
        }
        for share in &undo.gpus {
            if let Some(device) = node.gpus.iter_mut().find(|g| g.0 == share.index) {
                device.1 += share.amount.hundredths();
            }
        }
        node.compute_load();
        self.index_insert(pos);
        if let Some(key) = undo.hosted {
            self.hosted.remove(&key);
        }
    }

    /// Places every member of a gang, or none of them.
    fn place_gang(&mut self, gang: &str, members: &[&'a ReplicaRequest], plan: &mut PlacementPlan) {
        let mut log = Vec::new();
        let mut placed = Vec::with_capacity(members.len());
        let mut start = 0;
        while start < members.len() {
            let end = members[start..]
                .iter()
                .position(|r| !r.same_shape(members[start]))
                .map_or(members.len(), |n| start + n);
            let (done, failure) = self.place_run(&members[start..end], Some(&mut log));
            placed.extend(done);
            if let Some((failed, cause)) = failure {
                let blocker = members[start + failed];
                for entry in log.into_iter().rev() {
                    self.unassign(entry);
                }
                let reason = PendingReason::Gang {
                    gang: gang.to_owned(),
                    deployment: blocker.deployment.clone(),
                    replica: blocker.replica,
                    cause,
                };
                plan.pending
                    .extend(members.iter().map(|r| pending(r, reason.clone())));
                return;
            }
            start = end;
        }
        plan.placements.extend(placed);
    }

    /// Why no node takes `request`: each node counted under the first filter it fails.
    fn diagnose(&self, request: &ReplicaRequest, deployment: u32) -> NoFit {
        let mut counts: BTreeMap<Rejection, usize> = BTreeMap::new();
        for pos in 0..self.nodes.len() {
            if let Some(c) = check(&self.nodes, &self.hosted, pos, request, deployment) {
                *counts.entry(c.to_rejection()).or_default() += 1;
            }
        }
        NoFit::new(
            request.resources.clone(),
            request.deployment.clone(),
            self.nodes.len(),
            counts,
        )
    }
}

/// The first filter node `pos` fails for `request`, borrowing from the request so the hot
/// scan allocates nothing.
#[derive(Debug, Clone, Copy)]
enum Check<'r> {
    NotReady,
    Draining,
    Constraint(&'r LabelConstraint),
    AntiAffinity,
    Insufficient(usize),
    InsufficientCustom(&'r str),
    GpuFragmented,
}

impl Check<'_> {
    fn to_rejection(self) -> Rejection {
        const KINDS: [ResourceKind; 5] = [
            ResourceKind::Cpu,
            ResourceKind::Memory,
            ResourceKind::Gpu,
            ResourceKind::GpuMemory,
            ResourceKind::Ipu,
        ];
        match self {
            Check::NotReady => Rejection::NotReady,
            Check::Draining => Rejection::Draining,
            Check::Constraint(c) => Rejection::Constraint(c.clone()),
            Check::AntiAffinity => Rejection::AntiAffinity,
            Check::Insufficient(d) => Rejection::Insufficient(KINDS[d].clone()),
            Check::InsufficientCustom(name) => {
                Rejection::Insufficient(ResourceKind::Custom(name.to_owned()))
            }
            Check::GpuFragmented => Rejection::GpuFragmented,
        }
    }
}

/// Runs the filters in order on node `pos`: `None` means it can take `request` now.
fn check<'r>(
    nodes: &[NodeState<'_>],
    hosted: &HashSet<(u32, usize)>,
    pos: usize,
    request: &'r ReplicaRequest,
    deployment: u32,
) -> Option<Check<'r>> {
    let node = &nodes[pos];
    if !node.view.ready {
        return Some(Check::NotReady);
    }
    if node.view.draining {
        return Some(Check::Draining);
    }
    if let Some(c) = request
        .constraints
        .iter()
        .find(|c| !c.matches(&node.view.labels))
    {
        return Some(Check::Constraint(c));
    }
    if request.anti_affinity && hosted.contains(&(deployment, pos)) {
        return Some(Check::AntiAffinity);
    }
    let want = request.resources.fixed();
    if let Some(d) = (0..5).find(|&d| want[d] > node.free[d]) {
        return Some(Check::Insufficient(d));
    }
    if let Some((name, _)) = request
        .resources
        .custom
        .iter()
        .find(|(name, amount)| **amount > node.custom_free.get(*name).copied().unwrap_or(0))
    {
        return Some(Check::InsufficientCustom(name));
    }
    if want[GPU] > 0 && choose_gpus(&node.gpus, want[GPU]).is_none() {
        let total: u64 = node.gpus.iter().map(|g| g.1).sum();
        return Some(if total >= want[GPU] {
            Check::GpuFragmented
        } else {
            Check::Insufficient(GPU)
        });
    }
    None
}

/// Whether node `pos` can take `request` now: the same verdict as `check(..).is_none()`,
/// with the cheap integer comparisons first and the label lookups last, for the hot scan.
fn admits(
    nodes: &[NodeState<'_>],
    hosted: &HashSet<(u32, usize)>,
    pos: usize,
    request: &ReplicaRequest,
    deployment: u32,
) -> bool {
    let node = &nodes[pos];
    let want = request.resources.fixed();
    node.view.ready
        && !node.view.draining
        && (0..5).all(|d| want[d] <= node.free[d])
        && request
            .resources
            .custom
            .iter()
            .all(|(name, amount)| *amount <= node.custom_free.get(name).copied().unwrap_or(0))
        && !(request.anti_affinity && hosted.contains(&(deployment, pos)))
        && (want[GPU] == 0 || choose_gpus(&node.gpus, want[GPU]).is_some())
        && request
            .constraints
            .iter()
            .all(|c| c.matches(&node.view.labels))
}

/// Picks devices for `want` hundredths of GPU: whole devices nobody holds (lowest indices
/// first) for the whole part, and for a fraction the device with the least free room that
/// still fits it, so partly used devices fill up before fresh ones are broken into.
fn choose_gpus(devices: &[(u32, u64)], want: u64) -> Option<Vec<GpuShare>> {
    let (whole, fraction) = (want / GpuAmount::PER_DEVICE, want % GpuAmount::PER_DEVICE);
    let mut shares: Vec<GpuShare> = devices
        .iter()
        .filter(|d| d.1 == GpuAmount::PER_DEVICE)
        .take(whole as usize)
        .map(|d| GpuShare {
            index: d.0,
            amount: GpuAmount::ONE,
        })
        .collect();
    if (shares.len() as u64) < whole {
        return None;
    }
    if fraction > 0 {
        let device = devices
            .iter()
            .filter(|d| d.1 >= fraction && !shares.iter().any(|s| s.index == d.0))
            .min_by_key(|d| (d.1, d.0))?;
        shares.push(GpuShare {
            index: device.0,
            amount: GpuAmount::from_hundredths(fraction),
        });
    }
    Some(shares)
}

#[cfg(test)]
mod tests;
