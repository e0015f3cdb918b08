//! `ClusterState`: the replicated record of the cluster, and the deterministic `apply` that is
//! the only way it changes.
//!
//! Payloads that later issues flesh out (deployment configs, job specs) are plain serde
//! types or opaque bytes here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::autoscale::Autoscaling;
use crate::command::{Command, CommandOutcome, ObjectKind, Rejection, Scaler};
use crate::placement::{GpuShare, LabelConstraint, ReplicaRequest, Strategy};
pub use crate::resources::Resources;

mod admission;
mod collections;
pub mod jobs;
pub mod replication;

pub use jobs::{Job, JobRecords, JobStatus};
pub use replication::{MemberView, PartitionView, ReplicaSet, partition_views};

/// A Raft node id (never 0).
pub use arbor_proto::NodeId;
/// A placed actor's id, unique in the cluster.
pub type ActorId = String;
/// A job's id.
pub type JobId = String;

/// A node's liveness as last recorded through the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Heard from within `node_timeout`.
    Ready,
    /// Silent for longer than `node_timeout`: its placements are moved elsewhere.
    Down,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub address: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    pub liveness: Liveness,
    /// Proposer's clock when liveness last changed (ms since the Unix epoch).
    pub liveness_at_ms: u64,
    /// Drained by an operator (`arbor node drain`): its actors move off and no new ones
    /// come. Independent of liveness: a draining node can also go down and come back.
    pub draining: bool,
}

/// What a deployment asks for: the desired state a user writes in a deployment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub name: String,
    /// Actor kind, e.g. "echo", "embedder", "model".
    pub kind: String,
    pub replicas: u32,
    /// Per-replica resource request.
    pub resources: Resources,
    pub strategy: Strategy,
    /// Conditions on node labels, all of which a replica's node must meet.
    pub constraints: Vec<LabelConstraint>,
    /// Keep replicas on distinct nodes.
    pub anti_affinity: bool,
    /// How many replicas a rolling update or a drain may take down at a time (at least 1).
    pub max_unavailable: u32,
    /// The user's version label; changing it (or anything but the replica count and the
    /// autoscaling policy) rolls the replicas.
    pub version: String,
    /// Kind-specific configuration as JSON text, read by the actor kind, opaque here.
    pub config: String,
    /// Set on the partition deployments of a collection: they are managed through the
    /// collection (not deployed or undeployed on their own), and first placed as one gang,
    /// all of them or none.
    pub collection: Option<String>,
    /// Its generic calls may run twice without harm, so a call whose replica timed out or
    /// died during it is tried again on another replica (otherwise it fails, saying that it
    /// may have run).
    #[serde(default)]
    pub idempotent: bool,
    /// With a policy, the leader's autoscaler sets `replicas` (within its bounds) from the
    /// load; `arbor scale` is refused.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
}

impl DeploymentSpec {
    /// Whether `next` differs from this spec only in what changes without restarting a
    /// replica: the replica count and the autoscaling policy.
    pub fn same_revision(&self, next: &DeploymentSpec) -> bool {
        let template = |s: &DeploymentSpec| DeploymentSpec {
            replicas: 0,
            autoscaling: None,
            ..s.clone()
        };
        template(self) == template(next)
    }

    /// What placement needs to know to place replica `replica` of this deployment.
    pub fn request(&self, replica: u32) -> ReplicaRequest {
        ReplicaRequest {
            deployment: self.name.clone(),
            replica,
            resources: self.resources.clone(),
            constraints: self.constraints.clone(),
            strategy: self.strategy,
            anti_affinity: self.anti_affinity,
            gang: None,
        }
    }

    /// The id of replica `replica`: stable across moves, so generations fence old copies.
    pub fn actor_id(&self, replica: u32) -> ActorId {
        actor_id(&self.name, replica)
    }
}

/// The id of one replica of a deployment.
pub fn actor_id(deployment: &str, replica: u32) -> ActorId {
    format!("{deployment}/{replica}")
}

/// A deployment, its revision and why replicas wait, if any do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    /// The revision its replicas run: 1 at creation, +1 per update that changes more than
    /// the replica count or the autoscaling policy (those change in place). Placements
    /// record the revision they run, and the reconciler rolls those of an older one.
    pub version: u64,
    /// Why some replica could not be placed, as the reconciler last found it.
    pub pending_reason: Option<String>,
    /// The spec of the revision before this one, which `arbor rollback` returns to.
    pub previous: Option<DeploymentSpec>,
}

/// Lifecycle of one placed actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementStatus {
    Pending,
    Starting,
    Running,
    Failed { reason: String },
    Stopped,
}

/// One actor assigned to one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// `{deployment}/{replica}`.
    pub actor_id: ActorId,
    pub deployment: String,
    pub replica: u32,
    pub node: NodeId,
    /// GPU shares on that node (device index and amount).
    pub gpus: Vec<GpuShare>,
    /// What it holds on its node: the deployment's request when it was placed.
    pub resources: Resources,
    /// The deployment revision it runs.
    pub revision: u64,
    /// Unique in the cluster and increasing: each placement of an actor gets a new one, so an
    /// actor still running under an older generation is known to be stale and is stopped.
    pub generation: u64,
    pub status: PlacementStatus,
}

impl Placement {
    /// GPU device indices, for the actor.
    pub fn devices(&self) -> Vec<u32> {
        self.gpus.iter().map(|g| g.index).collect()
    }
}

/// A reconciler's decision to place (or move) one replica, re-checked when it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementDecision {
    pub deployment: String,
    pub replica: u32,
    pub node: NodeId,
    pub gpus: Vec<GpuShare>,
    /// The deployment revision the decision was made for; a newer one makes it stale.
    pub revision: u64,
    /// The generation of the placement it replaces (`None`: the replica has none). A
    /// different current generation makes the decision stale.
    pub replaces: Option<u64>,
}

/// A node agent's report about one of its actors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub actor_id: ActorId,
    pub generation: u64,
    pub status: PlacementStatus,
}

/// Similarity metric of a collection (one type with the gateway and the kernels).
pub use arbor_proto::Metric;

/// A vector collection: `partitions` shards, each kept by `replication` replicas on distinct
/// nodes. Creating one creates a deployment per partition (see `state/collections.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub partitions: u32,
    pub replication: u32,
    /// The embedder deployment that turns this collection's text into vectors.
    pub embedder: String,
    /// What each partition replica asks for.
    pub resources: Resources,
    /// How its partitions search.
    #[serde(default)]
    pub index: arbor_proto::IndexSpec,
    /// Set by the control plane when the collection is created (whatever the proposer
    /// wrote): a collection created again under the same name gets another one, so its
    /// replicas never open the files of the one deleted before.
    #[serde(default)]
    pub incarnation: u64,
    /// How its partitions hold vectors in memory.
    #[serde(default)]
    pub quantization: arbor_proto::Quantization,
}

/// The replicated state of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub deployments: BTreeMap<String, Deployment>,
    pub placements: BTreeMap<ActorId, Placement>,
    pub collections: BTreeMap<String, CollectionSpec>,
    pub jobs: JobRecords,
    /// A small key-value namespace (used by tools and the linearizability tests).
    pub kv: BTreeMap<String, String>,
    /// Raft addresses of members added through membership changes (id → address).
    pub raft_members: BTreeMap<NodeId, String>,
    /// The last placement generation handed out.
    pub last_generation: u64,
    /// Each partition's replica set, by its deployment's name.
    pub replica_sets: BTreeMap<String, ReplicaSet>,
    /// The last collection incarnation handed out.
    pub last_incarnation: u64,
    /// Requests in flight per deployment, as each node last reported them (thousandths of a
    /// request, see [`crate::autoscale`]); zero loads are not kept.
    pub loads: BTreeMap<NodeId, BTreeMap<String, u64>>,
}

fn not_found(kind: ObjectKind, name: impl ToString) -> Rejection {
    Rejection::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn exists(kind: ObjectKind, name: impl ToString) -> Rejection {
    Rejection::AlreadyExists {
        kind,
        name: name.to_string(),
    }
}

impl ClusterState {
    /// Applies one command: validates everything first, then mutates, so a rejected command
    /// changes nothing. Pure: the result depends only on `self` and `command`.
    pub fn apply(&mut self, command: &Command) -> Result<CommandOutcome, Rejection> {
        use Command::*;
        match command {
            Noop => Ok(CommandOutcome::Done),
            RegisterNode {
                id,
                address,
                capacity,
                labels,
            } => {
                if *id == 0 {
                    return Err(Rejection::Invalid("node id 0 is reserved".into()));
                }
                if address.is_empty() {
                    return Err(Rejection::Invalid(format!(
                        "node {id} has an empty address"
                    )));
                }
                capacity
                    .validate()
                    .map_err(|e| Rejection::Invalid(format!("node {id} capacity: {e}")))?;
                let known = self
                    .nodes
                    .get(id)
                    .map(|n| (n.liveness, n.liveness_at_ms, n.draining));
                let (liveness, liveness_at_ms, draining) =
                    known.unwrap_or((Liveness::Ready, 0, false));
                self.nodes.insert(
                    *id,
                    NodeRecord {
                        address: address.clone(),
                        capacity: capacity.clone(),
                        labels: labels.clone(),
                        liveness,
                        liveness_at_ms,
                        draining,
                    },
                );
                Ok(CommandOutcome::Done)
            }
            SetNodeLiveness {
                id,
                liveness,
                observed_at_ms,
            } => {
                let node = self.nodes.get_mut(id).ok_or(Rejection::UnknownNode(*id))?;
                node.liveness = *liveness;
                node.liveness_at_ms = *observed_at_ms;
                Ok(CommandOutcome::Done)
            }
            DeregisterNode { id } => {
                if !self.nodes.contains_key(id) {
                    return Err(Rejection::UnknownNode(*id));
                }
                if let Some(p) = self.placements.values().find(|p| p.node == *id) {
                    return Err(Rejection::Invalid(format!(
                        "node {id} still hosts placement {:?}",
                        p.actor_id
                    )));
                }
                self.nodes.remove(id);
                Ok(CommandOutcome::Done)
            }
            CreateDeployment(spec) => {
                validate_deployment(spec)?;
                if let Some(c) = &spec.collection {
                    return Err(Rejection::Invalid(format!(
                        "deployment {:?} names collection {c:?}: partitions are created with their collection",
                        spec.name
                    )));
                }
                if self.deployments.contains_key(&spec.name) {
                    return Err(exists(ObjectKind::Deployment, &spec.name));
                }
                self.deployments.insert(
                    spec.name.clone(),
                    Deployment {
                        spec: spec.clone(),
                        version: 1,
                        pending_reason: None,
                        previous: None,
                    },
                );
                Ok(CommandOutcome::DeploymentVersion(1))
            }
            UpdateDeployment {
                spec,
                expected_version,
            } => {
                validate_deployment(spec)?;
                self.not_owned(&spec.name)?;
                let current = self
                    .deployments
                    .get_mut(&spec.name)
                    .ok_or_else(|| not_found(ObjectKind::Deployment, &spec.name))?;
                if let Some(expected) = expected_version
                    && *expected != current.version
                {
                    return Err(Rejection::VersionMismatch {
                        expected: *expected,
                        actual: current.version,
                    });
                }
                if !current.spec.same_revision(spec) {
                    current.previous = Some(current.spec.clone());
                    current.version += 1;
                }
                current.spec = spec.clone();
                Ok(CommandOutcome::DeploymentVersion(current.version))
            }
            ScaleDeployment { name, replicas, by } => {
                self.not_owned(name)?;
                let current = self
                    .deployments
                    .get_mut(name)
                    .ok_or_else(|| not_found(ObjectKind::Deployment, name))?;
                check_scale(&current.spec, *replicas, *by)?;
                current.spec.replicas = *replicas;
                Ok(CommandOutcome::DeploymentVersion(current.version))
            }
            RollbackDeployment { name } => {
                self.not_owned(name)?;
                let current = self
                    .deployments
                    .get_mut(name)
                    .ok_or_else(|| not_found(ObjectKind::Deployment, name))?;
                let Some(mut previous) = current.previous.take() else {
                    return Err(Rejection::Invalid(format!(
                        "deployment {name:?} has no previous revision to roll back to"
                    )));
                };
                // The count follows the load, not the revision: it stays as it is (within
                // the bounds of the policy rolled back to).
                previous.replicas = match &previous.autoscaling {
                    Some(policy) => policy.clamp(current.spec.replicas),
                    None => current.spec.replicas,
                };
                current.previous = Some(std::mem::replace(&mut current.spec, previous));
                current.version += 1;
                Ok(CommandOutcome::DeploymentVersion(current.version))
            }
            ReportLoad { node, ongoing } => {
                if !self.nodes.contains_key(node) {
                    return Err(Rejection::UnknownNode(*node));
                }
                let ongoing: BTreeMap<String, u64> = ongoing
                    .iter()
                    .filter(|(_, milli)| **milli > 0)
                    .map(|(d, milli)| (d.clone(), *milli))
                    .collect();
                if ongoing.is_empty() {
                    self.loads.remove(node);
                } else {
                    self.loads.insert(*node, ongoing);
                }
                Ok(CommandOutcome::Done)
            }
            DeleteDeployment { name } => {
                self.not_owned(name)?;
                if self.deployments.remove(name).is_none() {
                    return Err(not_found(ObjectKind::Deployment, name));
                }
                self.placements.retain(|_, p| &p.deployment != name);
                Ok(CommandOutcome::Done)
            }
            PlaceActors { decisions } => {
                self.check_replacements(decisions)?;
                let outcome = self.place(decisions)?;
                self.replication_after_placement(decisions);
                Ok(outcome)
            }
            SetPlacementStatus {
                actor_id,
                generation,
                status,
            } => {
                let p = self
                    .placements
                    .get_mut(actor_id)
                    .ok_or_else(|| not_found(ObjectKind::Placement, actor_id))?;
                if p.generation != *generation {
                    return Err(Rejection::Invalid(format!(
                        "placement {actor_id:?} is at generation {}, not {generation}",
                        p.generation
                    )));
                }
                p.status = status.clone();
                Ok(CommandOutcome::Done)
            }
            RemovePlacements { actor_ids } => {
                if let Some(missing) = actor_ids.iter().find(|a| !self.placements.contains_key(*a))
                {
                    return Err(not_found(ObjectKind::Placement, missing));
                }
                self.replication_before_removal(actor_ids)?;
                for a in actor_ids {
                    self.placements.remove(a);
                }
                Ok(CommandOutcome::Done)
            }
            CreateCollection(spec) => self.create_collection(spec),
            DeleteCollection { name } => self.delete_collection(name),
            SubmitJob {
                id,
                kind,
                spec,
                node,
                owner,
                submitted_ms,
            } => self.jobs.submit(
                id,
                Job {
                    kind: kind.clone(),
                    spec: spec.clone(),
                    status: JobStatus::Queued,
                    progress: 0.0,
                    result: None,
                    node: *node,
                    owner: owner.clone(),
                    submitted_ms: *submitted_ms,
                },
            ),
            PruneJobs { ids } => {
                self.jobs.prune(ids);
                Ok(CommandOutcome::Done)
            }
            UpdateJob {
                id,
                status,
                progress,
                result,
            } => self.jobs.update(id, status, *progress, result),
            KvPut { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                Ok(CommandOutcome::Done)
            }
            KvCas { key, expected, new } => {
                let previous = self.kv.get(key).cloned();
                let swapped = previous == *expected;
                if swapped {
                    match new {
                        Some(v) => self.kv.insert(key.clone(), v.clone()),
                        None => self.kv.remove(key),
                    };
                }
                Ok(CommandOutcome::Cas { swapped, previous })
            }
            SetPlacementStatuses { updates } => {
                let mut applied = 0;
                for u in updates {
                    if let Some(p) = self.placements.get_mut(&u.actor_id)
                        && p.generation == u.generation
                    {
                        p.status = u.status.clone();
                        applied += 1;
                    }
                }
                Ok(CommandOutcome::StatusesApplied {
                    applied,
                    stale: updates.len() as u32 - applied,
                })
            }
            AddInSync {
                deployment,
                replica,
                generation,
                epoch,
                seq,
            } => self.add_in_sync(deployment, *replica, *generation, *epoch, *seq),
            RemoveInSync {
                deployment,
                replicas,
                epoch,
                seq,
            } => self.remove_in_sync(deployment, replicas, *epoch, *seq),
            LeaveInSync {
                deployment,
                replica,
                generation,
                reason: _,
            } => self.leave_in_sync(deployment, *replica, *generation),
            PromotePrimary {
                deployment,
                replica,
                epoch,
            } => self.promote_primary(deployment, *replica, *epoch),
            PromoteStale {
                deployment,
                replica,
            } => self.promote_stale(deployment, *replica),
            SetNodeDrain { id, draining } => {
                let node = self.nodes.get_mut(id).ok_or(Rejection::UnknownNode(*id))?;
                node.draining = *draining;
                Ok(CommandOutcome::Done)
            }
            SetPendingReason { deployment, reason } => {
                let d = self
                    .deployments
                    .get_mut(deployment)
                    .ok_or_else(|| not_found(ObjectKind::Deployment, deployment))?;
                d.pending_reason = reason.clone();
                Ok(CommandOutcome::Done)
            }
        }
    }
}

/// The most replicas one deployment may ask for: every leader's reconciler walks them on each
/// pass, so a typo of `4e9` must be refused when submitted, not abort every leader in turn.
pub const MAX_REPLICAS: u32 = 10_000;
/// The longest deployment or collection name (a DNS label's length).
pub const MAX_NAME_LEN: usize = 63;

/// Why `name` cannot name a deployment or collection, if it cannot. Pure.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(format!("the name {name:?} starts with '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("the name {name:?} contains {c:?}"));
    }
    Ok(())
}

fn validate_deployment(spec: &DeploymentSpec) -> Result<(), Rejection> {
    check_name(&spec.name).map_err(|why| Rejection::Invalid(format!("deployment name: {why}")))?;
    if spec.replicas > MAX_REPLICAS {
        return Err(Rejection::Invalid(format!(
            "deployment {:?}: {} replicas is more than the {MAX_REPLICAS} allowed",
            spec.name, spec.replicas
        )));
    }
    if spec.max_unavailable == 0 {
        return Err(Rejection::Invalid(format!(
            "deployment {:?}: max_unavailable must be at least 1",
            spec.name
        )));
    }
    spec.resources
        .validate()
        .map_err(|e| Rejection::Invalid(format!("deployment {:?} resources: {e}", spec.name)))?;
    if spec.kind.is_empty() {
        return Err(Rejection::Invalid(format!(
            "deployment {:?} has no kind",
            spec.name
        )));
    }
    if let Some(policy) = &spec.autoscaling {
        let invalid = |why: String| {
            Rejection::Invalid(format!("deployment {:?} autoscaling: {why}", spec.name))
        };
        policy.check().map_err(invalid)?;
        if policy.max_replicas > MAX_REPLICAS {
            return Err(invalid(format!(
                "max_replicas {} is more than the {MAX_REPLICAS} allowed",
                policy.max_replicas
            )));
        }
        if policy.clamp(spec.replicas) != spec.replicas {
            return Err(invalid(format!(
                "{} replicas is outside [{}, {}]",
                spec.replicas, policy.min_replicas, policy.max_replicas
            )));
        }
    }
    Ok(())
}

/// Whether `by` may give `spec` `replicas` replicas: an operator only scales a deployment
/// without a policy, the autoscaler only within its policy's bounds.
fn check_scale(spec: &DeploymentSpec, replicas: u32, by: Scaler) -> Result<(), Rejection> {
    if replicas > MAX_REPLICAS {
        return Err(Rejection::Invalid(format!(
            "deployment {:?}: {replicas} replicas is more than the {MAX_REPLICAS} allowed",
            spec.name
        )));
    }
    match (&spec.autoscaling, by) {
        (Some(p), Scaler::Operator) => Err(Rejection::Invalid(format!(
            "deployment {:?} is autoscaled between {} and {} replicas; change min_replicas and \
             max_replicas in its file's [autoscaling] table instead",
            spec.name, p.min_replicas, p.max_replicas
        ))),
        (None, Scaler::Autoscaler) => Err(Rejection::Invalid(format!(
            "deployment {:?} is no longer autoscaled",
            spec.name
        ))),
        (Some(p), Scaler::Autoscaler) if p.clamp(replicas) != replicas => {
            Err(Rejection::Invalid(format!(
                "deployment {:?}: {replicas} replicas is outside [{}, {}]",
                spec.name, p.min_replicas, p.max_replicas
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> Command {
        Command::RegisterNode {
            id,
            address: format!("10.0.0.{id}:7000"),
            capacity: Resources {
                cpu: crate::resources::Millicores(8000),
                ..Default::default()
            },
            labels: BTreeMap::new(),
        }
    }

    fn deployment(name: &str) -> DeploymentSpec {
        DeploymentSpec {
            name: name.into(),
            kind: "embedder".into(),
            replicas: 2,
            resources: Resources {
                cpu: crate::resources::Millicores(3000),
                ..Default::default()
            },
            strategy: Strategy::Spread,
            constraints: vec![],
            anti_affinity: false,
            max_unavailable: 1,
            version: String::new(),
            config: String::new(),
            collection: None,
            idempotent: false,
            autoscaling: None,
        }
    }

    fn decision(replica: u32, node: NodeId, replaces: Option<u64>) -> PlacementDecision {
        PlacementDecision {
            deployment: "emb".into(),
            replica,
            node,
            gpus: vec![],
            revision: 1,
            replaces,
        }
    }

    #[test]
    fn the_state_machine_refuses_huge_deployments_and_bad_names() {
        let mut s = ClusterState::default();
        let mut huge = deployment("huge");
        huge.replicas = 4_000_000_000;
        let err = s.apply(&Command::CreateDeployment(huge)).unwrap_err();
        assert!(
            err.to_string().contains("more than the 10000 allowed"),
            "{err}"
        );
        assert!(s.deployments.is_empty());
        for bad in [".dot", "a/b", "new\nline", &"z".repeat(64)] {
            let err = s
                .apply(&Command::CreateDeployment(deployment(bad)))
                .unwrap_err();
            assert!(
                err.to_string().contains("deployment name"),
                "{bad:?}: {err}"
            );
        }
        let mut most = deployment(&"m".repeat(63));
        most.replicas = MAX_REPLICAS;
        s.apply(&Command::CreateDeployment(most)).unwrap();
    }

    #[test]
    fn duplicate_deployment_is_rejected_and_changes_nothing() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&Command::CreateDeployment(deployment("emb"))),
            Ok(CommandOutcome::DeploymentVersion(1))
        );
        let before = s.clone();
        let err = s
            .apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap_err();
        assert_eq!(err.to_string(), "deployment \"emb\" already exists");
        assert_eq!(s, before);
    }

    #[test]
    fn placement_batch_is_all_or_none() {
        let mut s = ClusterState::default();
        s.apply(&node(1)).unwrap();
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        let before = s.clone();
        let batch = Command::PlaceActors {
            decisions: vec![decision(0, 1, None), decision(1, 9, None)],
        };
        assert_eq!(s.apply(&batch), Err(Rejection::UnknownNode(9)));
        assert_eq!(
            s, before,
            "a rejected batch must not leave a partial placement"
        );
        let ok = Command::PlaceActors {
            decisions: vec![decision(0, 1, None)],
        };
        assert_eq!(
            s.apply(&ok),
            Ok(CommandOutcome::Placed {
                generations: vec![1]
            })
        );
        assert_eq!(s.placements.len(), 1);
        // The same decision again is stale: the replica has a placement now.
        assert!(matches!(s.apply(&ok), Err(Rejection::Invalid(_))));
        // A node with placements cannot be deregistered.
        assert!(s.apply(&Command::DeregisterNode { id: 1 }).is_err());
        s.apply(&Command::DeleteDeployment { name: "emb".into() })
            .unwrap();
        assert!(s.placements.is_empty());
        s.apply(&Command::DeregisterNode { id: 1 }).unwrap();
    }

    #[test]
    fn stale_decisions_are_rejected_never_overcommitted() {
        let mut s = ClusterState::default();
        s.apply(&node(1)).unwrap(); // 8 cores; each replica asks for 3
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        // Two replicas fit (6 of 8 cores).
        s.apply(&Command::PlaceActors {
            decisions: vec![decision(0, 1, None), decision(1, 1, None)],
        })
        .unwrap();
        // Scale to 3 with a new version label: a third does not fit, and admission says why.
        let mut bigger = deployment("emb");
        bigger.replicas = 3;
        bigger.version = "2".into();
        s.apply(&Command::UpdateDeployment {
            spec: bigger,
            expected_version: None,
        })
        .unwrap();
        let mut third = decision(2, 1, None);
        third.revision = 2;
        let err = s
            .apply(&Command::PlaceActors {
                decisions: vec![third.clone()],
            })
            .unwrap_err();
        assert!(err.to_string().contains("lacks free cpu"), "{err}");
        // A decision made for revision 1 is stale now.
        let gen0 = s.placements["emb/0"].generation;
        let err = s
            .apply(&Command::PlaceActors {
                decisions: vec![decision(0, 1, Some(gen0))],
            })
            .unwrap_err();
        assert!(err.to_string().contains("revision 1"), "{err}");
        // Moving replica 0 in place releases what it held first, so it fits.
        let mut again = decision(0, 1, Some(gen0));
        again.revision = 2;
        s.apply(&Command::PlaceActors {
            decisions: vec![again],
        })
        .unwrap();
        assert!(s.placements["emb/0"].generation > gen0);
        // A down or draining node takes nothing.
        s.apply(&Command::SetNodeDrain {
            id: 1,
            draining: true,
        })
        .unwrap();
        s.apply(&Command::RemovePlacements {
            actor_ids: vec!["emb/1".into()],
        })
        .unwrap();
        let mut one = decision(1, 1, None);
        one.revision = 2;
        let err = s
            .apply(&Command::PlaceActors {
                decisions: vec![one],
            })
            .unwrap_err();
        assert!(err.to_string().contains("draining"), "{err}");
    }

    #[test]
    fn status_reports_for_old_generations_are_skipped() {
        let mut s = ClusterState::default();
        s.apply(&node(1)).unwrap();
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        s.apply(&Command::PlaceActors {
            decisions: vec![decision(0, 1, None)],
        })
        .unwrap();
        let report = |generation| StatusUpdate {
            actor_id: "emb/0".into(),
            generation,
            status: PlacementStatus::Running,
        };
        assert_eq!(
            s.apply(&Command::SetPlacementStatuses {
                updates: vec![report(1), report(7)]
            }),
            Ok(CommandOutcome::StatusesApplied {
                applied: 1,
                stale: 1
            })
        );
        assert_eq!(s.placements["emb/0"].status, PlacementStatus::Running);
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut s = ClusterState::default();
        let cas = |expected: Option<&str>, new: &str| Command::KvCas {
            key: "k".into(),
            expected: expected.map(Into::into),
            new: Some(new.into()),
        };
        assert_eq!(
            s.apply(&cas(None, "1")),
            Ok(CommandOutcome::Cas {
                swapped: true,
                previous: None
            })
        );
        assert_eq!(
            s.apply(&cas(None, "2")),
            Ok(CommandOutcome::Cas {
                swapped: false,
                previous: Some("1".into())
            })
        );
        assert_eq!(s.kv["k"], "1");
    }

    #[test]
    fn a_new_replica_count_is_not_a_new_revision() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        let scaled = DeploymentSpec {
            replicas: 5,
            ..deployment("emb")
        };
        let update = |spec: DeploymentSpec| Command::UpdateDeployment {
            spec,
            expected_version: None,
        };
        assert_eq!(
            s.apply(&update(scaled.clone())),
            Ok(CommandOutcome::DeploymentVersion(1))
        );
        assert_eq!(s.deployments["emb"].spec.replicas, 5);
        assert_eq!(s.deployments["emb"].previous, None);
        assert_eq!(
            s.apply(&Command::ScaleDeployment {
                name: "emb".into(),
                replicas: 3,
                by: Scaler::Operator,
            }),
            Ok(CommandOutcome::DeploymentVersion(1))
        );
        assert_eq!(s.deployments["emb"].spec.replicas, 3);
        // Anything else is a new revision, and the one before is kept for a rollback.
        let relabeled = DeploymentSpec {
            version: "2".into(),
            ..deployment("emb")
        };
        assert_eq!(
            s.apply(&update(relabeled.clone())),
            Ok(CommandOutcome::DeploymentVersion(2))
        );
        assert_eq!(
            s.deployments["emb"]
                .previous
                .as_ref()
                .map(|p| p.version.as_str()),
            Some("")
        );
    }

    #[test]
    fn rollback_returns_to_the_previous_revision_and_keeps_the_count() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        let rollback = Command::RollbackDeployment { name: "emb".into() };
        let err = s.apply(&rollback).unwrap_err();
        assert!(err.to_string().contains("no previous revision"), "{err}");
        s.apply(&Command::UpdateDeployment {
            spec: DeploymentSpec {
                version: "2".into(),
                config: "{\"x\": 1}".into(),
                replicas: 4,
                ..deployment("emb")
            },
            expected_version: None,
        })
        .unwrap();
        assert_eq!(s.apply(&rollback), Ok(CommandOutcome::DeploymentVersion(3)));
        let d = &s.deployments["emb"];
        assert_eq!(d.spec.version, "");
        assert_eq!(d.spec.config, deployment("emb").config);
        assert_eq!(
            d.spec.replicas, 4,
            "the count follows the load, not the revision"
        );
        // Rolling back again returns to what was rolled back from.
        assert_eq!(s.apply(&rollback), Ok(CommandOutcome::DeploymentVersion(4)));
        assert_eq!(s.deployments["emb"].spec.version, "2");
    }

    #[test]
    fn operators_scale_fixed_deployments_and_the_autoscaler_autoscaled_ones() {
        let mut s = ClusterState::default();
        let policy = Autoscaling {
            min_replicas: 1,
            max_replicas: 3,
            target_ongoing_milli: 1000,
            upscale_delay: std::time::Duration::from_secs(1),
            downscale_delay: std::time::Duration::from_secs(1),
        };
        s.apply(&Command::CreateDeployment(deployment("fixed")))
            .unwrap();
        let auto = DeploymentSpec {
            replicas: 1,
            autoscaling: Some(policy.clone()),
            ..deployment("auto")
        };
        s.apply(&Command::CreateDeployment(auto)).unwrap();
        let scale = |name: &str, replicas, by| Command::ScaleDeployment {
            name: name.into(),
            replicas,
            by,
        };
        let err = s.apply(&scale("auto", 2, Scaler::Operator)).unwrap_err();
        assert!(
            err.to_string().contains("autoscaled between 1 and 3"),
            "{err}"
        );
        let err = s.apply(&scale("auto", 4, Scaler::Autoscaler)).unwrap_err();
        assert!(err.to_string().contains("outside [1, 3]"), "{err}");
        s.apply(&scale("auto", 3, Scaler::Autoscaler)).unwrap();
        assert!(s.apply(&scale("fixed", 3, Scaler::Autoscaler)).is_err());
        s.apply(&scale("fixed", 7, Scaler::Operator)).unwrap();
        assert!(s.apply(&scale("ghost", 1, Scaler::Operator)).is_err());
        // A policy whose bounds exclude the count is refused.
        let err = s
            .apply(&Command::CreateDeployment(DeploymentSpec {
                replicas: 9,
                autoscaling: Some(policy),
                ..deployment("other")
            }))
            .unwrap_err();
        assert!(
            err.to_string().contains("9 replicas is outside [1, 3]"),
            "{err}"
        );
    }

    #[test]
    fn load_reports_replace_the_nodes_last_one() {
        let mut s = ClusterState::default();
        s.apply(&node(1)).unwrap();
        let report = |pairs: &[(&str, u64)]| Command::ReportLoad {
            node: 1,
            ongoing: pairs.iter().map(|(d, m)| (d.to_string(), *m)).collect(),
        };
        s.apply(&report(&[("a", 1500), ("b", 0)])).unwrap();
        assert_eq!(s.loads[&1], BTreeMap::from([("a".to_string(), 1500)]));
        s.apply(&report(&[])).unwrap();
        assert!(s.loads.is_empty());
        assert_eq!(
            s.apply(&Command::ReportLoad {
                node: 9,
                ongoing: BTreeMap::new()
            }),
            Err(Rejection::UnknownNode(9))
        );
    }

    #[test]
    fn update_deployment_checks_version() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        let upd = |v| Command::UpdateDeployment {
            spec: DeploymentSpec {
                version: format!("label {v}"),
                ..deployment("emb")
            },
            expected_version: Some(v),
        };
        assert_eq!(s.apply(&upd(1)), Ok(CommandOutcome::DeploymentVersion(2)));
        assert_eq!(
            s.apply(&upd(1)),
            Err(Rejection::VersionMismatch {
                expected: 1,
                actual: 2
            })
        );
    }

    #[test]
    fn finished_jobs_do_not_change() {
        let mut s = ClusterState::default();
        s.apply(&Command::SubmitJob {
            id: "j".into(),
            kind: "ingest".into(),
            spec: vec![],
            node: 1,
            owner: "t".into(),
            submitted_ms: 5,
        })
        .unwrap();
        let upd = |status| Command::UpdateJob {
            id: "j".into(),
            status,
            progress: 1.0,
            result: None,
        };
        let prune = Command::PruneJobs {
            ids: vec!["j".into(), "unknown".into()],
        };
        s.apply(&upd(JobStatus::Running)).unwrap();
        s.apply(&prune).unwrap();
        assert!(s.jobs.contains_key("j"), "a running job is never pruned");
        s.apply(&upd(JobStatus::Succeeded)).unwrap();
        assert!(s.apply(&upd(JobStatus::Running)).is_err());
        assert_eq!(s.jobs["j"].status, JobStatus::Succeeded);
        assert_eq!(s.jobs["j"].node, 1);
        s.apply(&prune).unwrap();
        assert!(s.jobs.is_empty());
    }
}
