//! `ClusterState`: the replicated record of the cluster, and the deterministic `apply` that is
//! the only way it changes.
//!
//! Payloads that later issues flesh out (deployment configs, job specs) are plain serde
//! types or opaque bytes here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandOutcome, ObjectKind, Rejection};
pub use crate::resources::Resources;

/// A Raft node id (never 0).
pub type NodeId = u64;
/// A placed actor's id, unique in the cluster.
pub type ActorId = String;
/// A job's id.
pub type JobId = String;

/// A node's liveness as last recorded through the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    Ready,
    /// Alive but accepting no new placements.
    Draining,
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
}

/// What a deployment asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub name: String,
    /// Actor kind, e.g. "embedder", "llm", "vector-partition".
    pub kind: String,
    pub replicas: u32,
    /// Per-replica resource request.
    pub resources: Resources,
    /// Node labels a replica's node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// Kind-specific configuration, opaque to the control plane.
    pub config: Vec<u8>,
}

/// A deployment and its version (bumped by every update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    pub version: u64,
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
    pub actor_id: ActorId,
    pub deployment: String,
    pub node: NodeId,
    /// GPU device indices on that node.
    pub devices: Vec<u32>,
    /// Bumped each time the actor is placed again; stale updates are refused.
    pub generation: u64,
    pub status: PlacementStatus,
}

/// Similarity metric of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    Cosine,
    Dot,
    L2,
}

/// A vector collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub partitions: u32,
    pub replication: u32,
}

/// Lifecycle of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed { reason: String },
    Cancelled,
}

impl JobStatus {
    /// A finished job's record no longer changes.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed { .. } | JobStatus::Cancelled
        )
    }
}

/// A job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub kind: String,
    pub spec: Vec<u8>,
    pub status: JobStatus,
    /// 0.0 ..= 1.0.
    pub progress: f32,
    pub result: Option<Vec<u8>>,
}

/// The replicated state of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub deployments: BTreeMap<String, Deployment>,
    pub placements: BTreeMap<ActorId, Placement>,
    pub collections: BTreeMap<String, CollectionSpec>,
    pub jobs: BTreeMap<JobId, Job>,
    /// A small key-value namespace (used by tools and the linearizability tests).
    pub kv: BTreeMap<String, String>,
    /// Raft addresses of members added through membership changes (id → address).
    pub raft_members: BTreeMap<NodeId, String>,
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
                let liveness = self.nodes.get(id).map(|n| (n.liveness, n.liveness_at_ms));
                let (liveness, liveness_at_ms) = liveness.unwrap_or((Liveness::Ready, 0));
                self.nodes.insert(
                    *id,
                    NodeRecord {
                        address: address.clone(),
                        capacity: capacity.clone(),
                        labels: labels.clone(),
                        liveness,
                        liveness_at_ms,
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
                if self.deployments.contains_key(&spec.name) {
                    return Err(exists(ObjectKind::Deployment, &spec.name));
                }
                self.deployments.insert(
                    spec.name.clone(),
                    Deployment {
                        spec: spec.clone(),
                        version: 1,
                    },
                );
                Ok(CommandOutcome::DeploymentVersion(1))
            }
            UpdateDeployment {
                spec,
                expected_version,
            } => {
                validate_deployment(spec)?;
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
                if self.deployments.remove(name).is_none() {
                    return Err(not_found(ObjectKind::Deployment, name));
                }
                self.placements.retain(|_, p| &p.deployment != name);
                Ok(CommandOutcome::Done)
            }
            PlaceActors { placements } => {
                let mut seen = BTreeSet::new();
                for p in placements {
                    if !seen.insert(&p.actor_id) {
                        return Err(Rejection::Invalid(format!(
                            "placement {:?} appears twice in one batch",
                            p.actor_id
                        )));
                    }
                    if !self.nodes.contains_key(&p.node) {
                        return Err(Rejection::UnknownNode(p.node));
                    }
                    if !self.deployments.contains_key(&p.deployment) {
                        return Err(not_found(ObjectKind::Deployment, &p.deployment));
                    }
                    if let Some(old) = self.placements.get(&p.actor_id)
                        && old.generation >= p.generation
                    {
                        return Err(Rejection::Invalid(format!(
                            "placement {:?} generation {} is not newer than {}",
                            p.actor_id, p.generation, old.generation
                        )));
                    }
                }
                for p in placements {
                    self.placements.insert(p.actor_id.clone(), p.clone());
                }
                Ok(CommandOutcome::Done)
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
                for a in actor_ids {
                    self.placements.remove(a);
                }
                Ok(CommandOutcome::Done)
            }
            CreateCollection(spec) => {
                if spec.name.is_empty() || spec.dimension == 0 || spec.partitions == 0 {
                    return Err(Rejection::Invalid(format!(
                        "collection {:?} needs a name, dimension > 0 and partitions > 0",
                        spec.name
                    )));
                }
                if spec.replication == 0 {
                    return Err(Rejection::Invalid("replication must be at least 1".into()));
                }
                if self.collections.contains_key(&spec.name) {
                    return Err(exists(ObjectKind::Collection, &spec.name));
                }
                self.collections.insert(spec.name.clone(), spec.clone());
                Ok(CommandOutcome::Done)
            }
            DeleteCollection { name } => {
                self.collections
                    .remove(name)
                    .ok_or_else(|| not_found(ObjectKind::Collection, name))?;
                Ok(CommandOutcome::Done)
            }
            SubmitJob { id, kind, spec } => {
                if self.jobs.contains_key(id) {
                    return Err(exists(ObjectKind::Job, id));
                }
                self.jobs.insert(
                    id.clone(),
                    Job {
                        kind: kind.clone(),
                        spec: spec.clone(),
                        status: JobStatus::Queued,
                        progress: 0.0,
                        result: None,
                    },
                );
                Ok(CommandOutcome::Done)
            }
            UpdateJob {
                id,
                status,
                progress,
                result,
            } => {
                if !(0.0..=1.0).contains(progress) {
                    return Err(Rejection::Invalid(format!(
                        "job progress {progress} is outside 0..=1"
                    )));
                }
                let job = self
                    .jobs
                    .get_mut(id)
                    .ok_or_else(|| not_found(ObjectKind::Job, id))?;
                if job.status.is_finished() {
                    return Err(Rejection::Invalid(format!(
                        "job {id:?} already finished ({:?})",
                        job.status
                    )));
                }
                job.status = status.clone();
                job.progress = *progress;
                job.result = result.clone();
                Ok(CommandOutcome::Done)
            }
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
        }
    }
}

fn validate_deployment(spec: &DeploymentSpec) -> Result<(), Rejection> {
    if spec.name.is_empty() {
        return Err(Rejection::Invalid("deployment name is empty".into()));
    }
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
            resources: Resources::default(),
            node_selector: BTreeMap::new(),
            config: vec![],
        }
    }

    fn placement(actor: &str, node: NodeId, generation: u64) -> Placement {
        Placement {
            actor_id: actor.into(),
            deployment: "emb".into(),
            node,
            devices: vec![],
            generation,
            status: PlacementStatus::Pending,
        }
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
            placements: vec![placement("a", 1, 1), placement("b", 9, 1)],
        };
        assert_eq!(s.apply(&batch), Err(Rejection::UnknownNode(9)));
        assert_eq!(
            s, before,
            "a rejected batch must not leave a partial placement"
        );
        let ok = Command::PlaceActors {
            placements: vec![placement("a", 1, 1)],
        };
        s.apply(&ok).unwrap();
        assert_eq!(s.placements.len(), 1);
        // Same generation again is stale.
        assert!(matches!(s.apply(&ok), Err(Rejection::Invalid(_))));
        // A node with placements cannot be deregistered.
        assert!(s.apply(&Command::DeregisterNode { id: 1 }).is_err());
        s.apply(&Command::DeleteDeployment { name: "emb".into() })
            .unwrap();
        assert!(s.placements.is_empty());
        s.apply(&Command::DeregisterNode { id: 1 }).unwrap();
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
        })
        .unwrap();
        let upd = |status| Command::UpdateJob {
            id: "j".into(),
            status,
            progress: 1.0,
            result: None,
        };
        s.apply(&upd(JobStatus::Succeeded)).unwrap();
        assert!(s.apply(&upd(JobStatus::Running)).is_err());
        assert_eq!(s.jobs["j"].status, JobStatus::Succeeded);
    }
}
