//! Deployments, collections and drains: what the gateway's control jobs (`deploy`,
//! `undeploy`, `deployments`, `drain`, `create_collection`, ...) ask of the control plane, how
//! this node carries them out, and the reports it reads back.

use arbor_scheduler::command::Scaler;
use arbor_scheduler::state::{
    ClusterState, CollectionSpec, DeploymentSpec, Liveness, PlacementStatus,
};
use arbor_scheduler::{Command, CommandOutcome, RaftHandle};

use crate::config::NodeId;

pub use arbor_proto::results::{
    AutoscalingReport, CollectionReport, DeployChange, DeploymentReport, ReplicaReport,
    ReplicaSetReport,
};

/// What the gateway's control jobs ask of the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRequest {
    /// Create the deployment, or update it if its spec differs.
    Deploy(DeploymentSpec),
    Undeploy(String),
    /// Set a deployment's replica count (one without autoscaling).
    Scale {
        name: String,
        replicas: u32,
    },
    /// Return a deployment to its previous revision.
    Rollback(String),
    /// Start (`true`) or end a drain of a node.
    Drain {
        node: NodeId,
        draining: bool,
    },
    CreateCollection(CollectionSpec),
    DeleteCollection(String),
    /// Makes a stale replica its partition's only in-sync replica and primary.
    PromoteStale {
        deployment: String,
        replica: u32,
    },
}

/// What a [`ControlRequest`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlReply {
    Deployed { revision: u64, change: DeployChange },
    Undeployed,
    Drained,
    CollectionCreated,
    CollectionDeleted,
    Promoted { epoch: u64 },
}

/// Why a [`ControlRequest`] was not carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// The control plane refused it (not found, exists, invalid): retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// The control plane could not be reached in time (no leader, no quorum): retry.
    #[error("{0}")]
    Unavailable(String),
}

impl arbor_proto::Coded for ControlError {
    fn code(&self) -> arbor_proto::ErrorCode {
        match self {
            ControlError::Refused(_) => arbor_proto::ErrorCode::InvalidJob,
            ControlError::Unavailable(_) => arbor_proto::ErrorCode::Unavailable,
        }
    }
}

impl From<arbor_scheduler::ProposeError> for ControlError {
    fn from(e: arbor_scheduler::ProposeError) -> Self {
        match e {
            arbor_scheduler::ProposeError::Rejected(_) => ControlError::Refused(e.to_string()),
            other => ControlError::Unavailable(other.to_string()),
        }
    }
}

impl From<arbor_scheduler::ReadError> for ControlError {
    fn from(e: arbor_scheduler::ReadError) -> Self {
        ControlError::Unavailable(e.to_string())
    }
}

/// Carries out one request through this node's view of the control plane.
pub async fn carry_out(
    raft: &RaftHandle,
    request: ControlRequest,
) -> Result<ControlReply, ControlError> {
    let propose = async |command| raft.propose(command).await.map_err(ControlError::from);
    let deployed = |outcome, change| match outcome {
        CommandOutcome::DeploymentVersion(revision) => {
            Ok(ControlReply::Deployed { revision, change })
        }
        other => Err(ControlError::Unavailable(format!(
            "unexpected outcome {other:?}"
        ))),
    };
    match request {
        ControlRequest::Deploy(mut spec) => {
            let name = spec.name.clone();
            let current = raft
                .read(move |s| s.deployments.get(&name).cloned())
                .await?;
            if let (Some(d), Some(policy)) = (&current, &spec.autoscaling) {
                // Redeploying an autoscaled deployment keeps the count the load has set.
                spec.replicas = policy.clamp(d.spec.replicas);
            }
            let (command, change) = match current {
                None => (Command::CreateDeployment(spec), DeployChange::Created),
                Some(d) if d.spec == spec => {
                    return Ok(ControlReply::Deployed {
                        revision: d.version,
                        change: DeployChange::Unchanged,
                    });
                }
                Some(d) => {
                    let change = if d.spec.same_revision(&spec) {
                        DeployChange::Scaled
                    } else {
                        DeployChange::Updated
                    };
                    let command = Command::UpdateDeployment {
                        spec,
                        expected_version: Some(d.version),
                    };
                    (command, change)
                }
            };
            deployed(propose(command).await?, change)
        }
        ControlRequest::Scale { name, replicas } => {
            let command = Command::ScaleDeployment {
                name,
                replicas,
                by: Scaler::Operator,
            };
            deployed(propose(command).await?, DeployChange::Scaled)
        }
        ControlRequest::Rollback(name) => deployed(
            propose(Command::RollbackDeployment { name }).await?,
            DeployChange::Updated,
        ),
        ControlRequest::Undeploy(name) => {
            propose(Command::DeleteDeployment { name }).await?;
            Ok(ControlReply::Undeployed)
        }
        ControlRequest::Drain { node, draining } => {
            propose(Command::SetNodeDrain { id: node, draining }).await?;
            Ok(ControlReply::Drained)
        }
        ControlRequest::CreateCollection(spec) => {
            propose(Command::CreateCollection(spec)).await?;
            Ok(ControlReply::CollectionCreated)
        }
        ControlRequest::DeleteCollection(name) => {
            propose(Command::DeleteCollection { name }).await?;
            Ok(ControlReply::CollectionDeleted)
        }
        ControlRequest::PromoteStale {
            deployment,
            replica,
        } => match propose(Command::PromoteStale {
            deployment,
            replica,
        })
        .await?
        {
            CommandOutcome::Epoch(epoch) => Ok(ControlReply::Promoted { epoch }),
            other => Err(ControlError::Unavailable(format!(
                "unexpected outcome {other:?}"
            ))),
        },
    }
}

/// Every deployment, its replicas and why any waits. Pure.
pub fn report(state: &ClusterState) -> Vec<DeploymentReport> {
    state
        .deployments
        .values()
        .map(|d| {
            let replicas: Vec<ReplicaReport> = (0..d.spec.replicas)
                .map(|i| match state.placements.get(&d.spec.actor_id(i)) {
                    None => ReplicaReport {
                        replica: i,
                        node: None,
                        state: "pending".into(),
                        reason: None,
                        devices: vec![],
                        generation: None,
                        revision: None,
                    },
                    Some(p) => {
                        let down = state
                            .nodes
                            .get(&p.node)
                            .is_none_or(|n| n.liveness == Liveness::Down);
                        let catching_up = state
                            .replica_sets
                            .get(&d.spec.name)
                            .is_some_and(|set| !set.is_in_sync(p.replica, p.generation));
                        let (name, reason) = match &p.status {
                            _ if down => ("lost", None),
                            PlacementStatus::Pending => ("pending", None),
                            PlacementStatus::Starting => ("starting", None),
                            PlacementStatus::Running if catching_up => ("catching-up", None),
                            PlacementStatus::Running => ("running", None),
                            PlacementStatus::Failed { reason } => ("failed", Some(reason.clone())),
                            PlacementStatus::Stopped => ("stopped", None),
                        };
                        ReplicaReport {
                            replica: i,
                            node: Some(p.node),
                            state: name.into(),
                            reason,
                            devices: p.devices(),
                            generation: Some(p.generation),
                            revision: Some(p.revision),
                        }
                    }
                })
                .collect();
            DeploymentReport {
                name: d.spec.name.clone(),
                kind: d.spec.kind.clone(),
                version: d.spec.version.clone(),
                revision: d.version,
                desired: d.spec.replicas,
                running: replicas.iter().filter(|r| r.state == "running").count() as u32,
                replicas,
                pending_reason: d.pending_reason.clone(),
                autoscaling: d.spec.autoscaling.as_ref().map(|p| {
                    let milli = arbor_scheduler::autoscale::MILLI as f64;
                    AutoscalingReport {
                        min_replicas: p.min_replicas,
                        max_replicas: p.max_replicas,
                        target_ongoing_requests: p.target_ongoing_milli as f64 / milli,
                        ongoing_requests: arbor_scheduler::autoscale::ongoing(state, &d.spec.name)
                            as f64
                            / milli,
                    }
                }),
            }
        })
        .collect()
}

/// Every collection and how many of its partition replicas run. Pure.
pub fn collections(state: &ClusterState) -> Vec<CollectionReport> {
    let running = report(state);
    state
        .collections
        .values()
        .map(|c| CollectionReport {
            name: c.name.clone(),
            dimension: c.dimension,
            metric: c.metric.as_str().into(),
            partitions: c.partitions,
            replication: c.replication,
            embedder: c.embedder.clone(),
            index: c.index,
            quantization: c.quantization,
            running: (0..c.partitions)
                .filter_map(|p| {
                    let name = c.partition_deployment(p);
                    running.iter().find(|d| d.name == name).map(|d| d.running)
                })
                .sum(),
            replica_sets: (0..c.partitions)
                .filter_map(|p| {
                    let set = state.replica_sets.get(&c.partition_deployment(p))?;
                    Some(ReplicaSetReport {
                        partition: p,
                        epoch: set.epoch,
                        primary: set.primary,
                        in_sync: set.in_sync.keys().copied().collect(),
                    })
                })
                .collect(),
        })
        .collect()
}
