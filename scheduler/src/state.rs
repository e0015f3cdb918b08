//! `ClusterState`: the replicated record of the cluster, and the deterministic `apply` that is
//! the only way it changes.
//!
//! Payloads that later issues flesh out (deployment configs, job specs) are plain serde
//! types or opaque bytes here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandOutcome, ObjectKind, Rejection};
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
    /// The user's version label; changing it (or anything else) rolls the replicas.
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
}

impl DeploymentSpec {
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

/// A deployment, its revision (bumped by every update) and why replicas wait, if any do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    /// 1 at creation, +1 per update. Placements record the revision they run.
    pub version: u64,
    /// Why some replica could not be placed, as the reconciler last found it.
    pub pending_reason: Option<String>,
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
    /// Set by the control plane when the collection is created (whatever the proposer
    /// wrote): a collection created again under the same name gets another one, so its
    /// replicas never open the files of the one deleted before.
    #[serde(default)]
    pub incarnation: u64,
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
                current.spec = spec.clone();
                current.version += 1;
                Ok(CommandOutcome::DeploymentVersion(current.version))
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
    Ok(())
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
        // Scale to 3: a third does not fit, and admission says why.
        let mut bigger = deployment("emb");
        bigger.replicas = 3;
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
    fn update_deployment_checks_version() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateDeployment(deployment("emb")))
            .unwrap();
        let upd = |v| Command::UpdateDeployment {
            spec: deployment("emb"),
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
