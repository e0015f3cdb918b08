//! The typed commands that change [`crate::ClusterState`], and what applying one returns.
//!
//! These enums are replicated through the Raft log and stored in snapshots: they only grow.
//! Never rename, reorder or reuse a variant; add new ones at the end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{
    ActorId, CollectionSpec, DeploymentSpec, JobId, JobStatus, Liveness, NodeId, PlacementDecision,
    PlacementStatus, Resources, StatusUpdate,
};

/// A change to the cluster state. Applied deterministically, in log order, on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; useful to probe that the log commits.
    Noop,
    /// Adds a node, or updates its address, capacity and labels if it is already known.
    RegisterNode {
        id: NodeId,
        address: String,
        capacity: Resources,
        labels: BTreeMap<String, String>,
    },
    /// Records a node's liveness as observed by the proposer (the leader's failure detector).
    SetNodeLiveness {
        id: NodeId,
        liveness: Liveness,
        /// Proposer's wall clock in ms, stored as is (apply never reads a clock).
        observed_at_ms: u64,
    },
    /// Forgets a node. Rejected while placements still reference it.
    DeregisterNode { id: NodeId },
    /// Creates a deployment at version 1. Rejected if the name exists.
    CreateDeployment(DeploymentSpec),
    /// Replaces a deployment's spec and bumps its version. With `expected_version`, rejected
    /// unless the current version matches (optimistic concurrency).
    UpdateDeployment {
        spec: DeploymentSpec,
        expected_version: Option<u64>,
    },
    /// Deletes a deployment and every placement of it.
    DeleteDeployment { name: String },
    /// Sets a deployment's replica count, restarting none of its replicas.
    ScaleDeployment {
        name: String,
        replicas: u32,
        by: Scaler,
    },
    /// Returns a deployment to the spec of its previous revision (keeping its replica
    /// count), as a new revision that the reconciler rolls out.
    RollbackDeployment { name: String },
    /// A node's requests in flight per deployment (thousandths of a request, the mean over
    /// its last report interval), replacing its previous report: what the autoscaler reads.
    ReportLoad {
        node: NodeId,
        ongoing: BTreeMap<String, u64>,
    },
    /// Places or moves replicas, all or none. Each decision is re-checked against the state
    /// it meets: rejected if its node is unknown, down or draining, if its deployment changed
    /// revision, if the replica's placement changed since it was decided, or if the node can
    /// no longer hold it (resources, GPU shares, labels, anti-affinity). Never overcommits.
    PlaceActors { decisions: Vec<PlacementDecision> },
    /// Updates one placement's status; ignored (rejected) for a stale generation.
    SetPlacementStatus {
        actor_id: ActorId,
        generation: u64,
        status: PlacementStatus,
    },
    /// Removes placements, all or none.
    RemovePlacements { actor_ids: Vec<ActorId> },
    /// Creates a collection. Rejected if the name exists.
    CreateCollection(CollectionSpec),
    /// Deletes a collection.
    DeleteCollection { name: String },
    /// Records a new job as queued. Rejected if the id exists.
    SubmitJob {
        id: JobId,
        kind: String,
        spec: Vec<u8>,
        /// The node that accepted the job and runs it.
        node: NodeId,
        /// Who submitted it (a token id).
        owner: String,
        /// When it was accepted, in ms since the Unix epoch (the proposer's clock: the state
        /// machine never reads one).
        submitted_ms: u64,
    },
    /// Updates a job's status, progress and result. Rejected once a job is finished.
    UpdateJob {
        id: JobId,
        status: JobStatus,
        progress: f32,
        result: Option<Vec<u8>>,
    },
    /// Forgets finished jobs (unfinished ones among `ids`, and unknown ids, are skipped).
    PruneJobs { ids: Vec<JobId> },
    /// Sets a key in the small key-value namespace.
    KvPut { key: String, value: String },
    /// Sets `key` to `new` (or deletes it when `new` is `None`) only if its current value is
    /// `expected` (`None` = absent). Never rejected: the outcome says whether it swapped.
    KvCas {
        key: String,
        expected: Option<String>,
        new: Option<String>,
    },
    /// Node agents' status reports, applied one by one; a report for a generation that is
    /// no longer current is skipped (counted as stale), never applied.
    SetPlacementStatuses { updates: Vec<StatusUpdate> },
    /// Starts or ends a drain of a node.
    SetNodeDrain { id: NodeId, draining: bool },
    /// Records why some replica of a deployment waits (`None`: none waits).
    SetPendingReason {
        deployment: String,
        reason: Option<String>,
    },
    /// A partition's primary vouches that replica `replica` (at `generation`) has caught up
    /// to its sequence number `seq`: it joins the in-sync set. Rejected unless `epoch` is
    /// current. See `state/replication.rs`.
    AddInSync {
        deployment: String,
        replica: u32,
        generation: u64,
        epoch: u64,
        seq: u64,
    },
    /// A partition's primary drops followers (replica, generation) that failed a write or
    /// missed its deadline, before it acknowledges that write (`seq`). Rejected unless
    /// `epoch` is current.
    RemoveInSync {
        deployment: String,
        replicas: Vec<(u32, u64)>,
        epoch: u64,
        seq: u64,
    },
    /// A replica leaves its partition's in-sync set on its own (its storage failed, its file
    /// is gone). A primary hands over to another in-sync replica.
    LeaveInSync {
        deployment: String,
        replica: u32,
        generation: u64,
        reason: String,
    },
    /// The reconciler makes another in-sync replica the primary (the primary's node is down
    /// or its replica failed); the old primary leaves the in-sync set. Rejected unless
    /// `epoch` is current.
    PromotePrimary {
        deployment: String,
        replica: u32,
        epoch: u64,
    },
    /// An operator accepts losing what only the in-sync replicas held: `replica` becomes the
    /// only in-sync replica and the primary. Refused while an in-sync replica is on a ready
    /// node.
    PromoteStale { deployment: String, replica: u32 },
}

/// Who asks for a [`Command::ScaleDeployment`]: an operator may scale only a deployment that
/// has no autoscaling policy, the autoscaler only one that has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scaler {
    Operator,
    Autoscaler,
}

/// What a command that applied returns to its proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Applied; nothing more to say.
    Done,
    /// A deployment now has this version.
    DeploymentVersion(u64),
    /// Result of a [`Command::KvCas`]: whether it swapped, and the value it found.
    Cas {
        swapped: bool,
        previous: Option<String>,
    },
    /// A membership change applied; the voters and learners now in the configuration.
    Membership {
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// Result of [`Command::SetPlacementStatuses`].
    StatusesApplied { applied: u32, stale: u32 },
    /// Result of [`Command::PlaceActors`]: the generations given, in decision order.
    Placed { generations: Vec<u64> },
    /// A partition's replica set is now at this epoch.
    Epoch(u64),
    /// A job record was written; these finished records made room for it (see
    /// `state::jobs`), oldest first.
    JobsEvicted(Vec<JobId>),
}

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: ObjectKind, name: String },
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: ObjectKind, name: String },
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("version mismatch: expected {expected}, found {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("invalid command: {0}")]
    Invalid(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    /// A budget is full of what may not be evicted (running jobs' records).
    #[error("over quota: {0}")]
    Quota(String),
}

/// The kind of object a [`Rejection`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Node,
    Deployment,
    Placement,
    Collection,
    Job,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Node => "node",
            ObjectKind::Deployment => "deployment",
            ObjectKind::Placement => "placement",
            ObjectKind::Collection => "collection",
            ObjectKind::Job => "job",
        })
    }
}

#[cfg(test)]
mod tests {
    //! Every command must survive the log's encoding: bincode cannot decode some serde shapes
    //! (internally tagged or untagged enums, flatten, `serde_json::Value`), and a committed
    //! entry that does not decode stops every node that applies it.

    use std::collections::BTreeSet;

    use proptest::collection::{btree_map, btree_set, vec};
    use proptest::option;
    use proptest::prelude::*;

    use super::*;
    use crate::machine::{Proposal, RequestId};
    use crate::placement::{GpuShare, LabelConstraint, Strategy as Spread};
    use crate::resources::{Bytes, GpuAmount, Millicores, Resources};
    use crate::state::{
        CollectionSpec, DeploymentSpec, JobStatus, Liveness, Metric, PlacementDecision,
        PlacementStatus, StatusUpdate,
    };

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn resources() -> impl Strategy<Value = Resources> {
        (
            any::<u64>(),
            any::<u64>(),
            0u64..10_000,
            any::<u64>(),
            any::<u32>(),
            btree_map(text(), any::<u64>(), 0..3),
        )
            .prop_map(|(cpu, memory, gpu, gpu_memory, ipu, custom)| Resources {
                cpu: Millicores(cpu),
                memory: Bytes(memory),
                gpu: GpuAmount::from_hundredths(gpu),
                gpu_memory: Bytes(gpu_memory),
                ipu,
                custom,
            })
    }

    fn constraint() -> impl Strategy<Value = LabelConstraint> {
        prop_oneof![
            (text(), text()).prop_map(|(key, value)| LabelConstraint::Equal { key, value }),
            (text(), text()).prop_map(|(key, value)| LabelConstraint::NotEqual { key, value }),
            (text(), btree_set(text(), 0..4))
                .prop_map(|(key, values)| LabelConstraint::In { key, values }),
            text().prop_map(|key| LabelConstraint::Exists { key }),
        ]
    }

    fn deployment() -> impl Strategy<Value = DeploymentSpec> {
        (
            (text(), text(), any::<u32>(), resources()),
            (
                prop_oneof![Just(Spread::Spread), Just(Spread::Pack)],
                vec(constraint(), 0..4),
                any::<bool>(),
                any::<u32>(),
            ),
            (
                text(),
                text(),
                option::of(text()),
                any::<bool>(),
                option::of(autoscaling()),
            ),
        )
            .prop_map(
                |(
                    (name, kind, replicas, resources),
                    (strategy, constraints, anti_affinity, max_unavailable),
                    (version, config, collection, idempotent, autoscaling),
                )| DeploymentSpec {
                    name,
                    kind,
                    replicas,
                    resources,
                    strategy,
                    constraints,
                    anti_affinity,
                    max_unavailable,
                    version,
                    config,
                    collection,
                    idempotent,
                    autoscaling,
                },
            )
    }

    fn autoscaling() -> impl Strategy<Value = crate::autoscale::Autoscaling> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(min, max, target, up, down)| crate::autoscale::Autoscaling {
                    min_replicas: min,
                    max_replicas: max,
                    target_ongoing_milli: target,
                    upscale_delay: std::time::Duration::from_millis(up),
                    downscale_delay: std::time::Duration::from_millis(down),
                },
            )
    }

    fn decision() -> impl Strategy<Value = PlacementDecision> {
        (
            text(),
            any::<u32>(),
            any::<u64>(),
            vec((any::<u32>(), 0u64..100), 0..3),
            any::<u64>(),
            option::of(any::<u64>()),
        )
            .prop_map(|(deployment, replica, node, gpus, revision, replaces)| {
                PlacementDecision {
                    deployment,
                    replica,
                    node,
                    gpus: gpus
                        .into_iter()
                        .map(|(index, h)| GpuShare {
                            index,
                            amount: GpuAmount::from_hundredths(h),
                        })
                        .collect(),
                    revision,
                    replaces,
                }
            })
    }

    fn placement_status() -> impl Strategy<Value = PlacementStatus> {
        prop_oneof![
            Just(PlacementStatus::Pending),
            Just(PlacementStatus::Starting),
            Just(PlacementStatus::Running),
            text().prop_map(|reason| PlacementStatus::Failed { reason }),
            Just(PlacementStatus::Stopped),
        ]
    }

    fn job_status() -> impl Strategy<Value = JobStatus> {
        prop_oneof![
            Just(JobStatus::Queued),
            Just(JobStatus::Running),
            Just(JobStatus::Succeeded),
            text().prop_map(|reason| JobStatus::Failed { reason }),
            Just(JobStatus::Cancelled),
        ]
    }

    fn collection() -> impl Strategy<Value = CollectionSpec> {
        (
            (text(), any::<u32>(), any::<u32>(), any::<u32>()),
            (
                prop_oneof![Just(Metric::Cosine), Just(Metric::Dot), Just(Metric::L2)],
                text(),
                resources(),
                any::<u64>(),
                prop_oneof![
                    Just(arbor_proto::IndexSpec::Exact),
                    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(m, c, s)| {
                        arbor_proto::IndexSpec::Hnsw(arbor_proto::HnswSpec {
                            m,
                            ef_construction: c,
                            ef_search: s,
                        })
                    }),
                ],
                prop_oneof![
                    Just(arbor_proto::Quantization::None),
                    Just(arbor_proto::Quantization::Int8)
                ],
            ),
        )
            .prop_map(
                |(
                    (name, dimension, partitions, replication),
                    (metric, embedder, resources, incarnation, index, quantization),
                )| {
                    CollectionSpec {
                        name,
                        dimension,
                        metric,
                        partitions,
                        replication,
                        embedder,
                        resources,
                        index,
                        incarnation,
                        quantization,
                    }
                },
            )
    }

    /// One generator per variant: a variant added without one fails `every_variant_is_covered`.
    fn command() -> impl Strategy<Value = Command> {
        let labels = || btree_map(text(), text(), 0..3);
        prop_oneof![
            Just(Command::Noop),
            (any::<u64>(), text(), resources(), labels()).prop_map(
                |(id, address, capacity, labels)| Command::RegisterNode {
                    id,
                    address,
                    capacity,
                    labels
                }
            ),
            (any::<u64>(), any::<bool>(), any::<u64>()).prop_map(|(id, up, observed_at_ms)| {
                Command::SetNodeLiveness {
                    id,
                    liveness: if up { Liveness::Ready } else { Liveness::Down },
                    observed_at_ms,
                }
            }),
            any::<u64>().prop_map(|id| Command::DeregisterNode { id }),
            deployment().prop_map(Command::CreateDeployment),
            (deployment(), option::of(any::<u64>())).prop_map(|(spec, expected_version)| {
                Command::UpdateDeployment {
                    spec,
                    expected_version,
                }
            }),
            text().prop_map(|name| Command::DeleteDeployment { name }),
            (text(), any::<u32>(), any::<bool>()).prop_map(|(name, replicas, auto)| {
                Command::ScaleDeployment {
                    name,
                    replicas,
                    by: if auto {
                        Scaler::Autoscaler
                    } else {
                        Scaler::Operator
                    },
                }
            }),
            text().prop_map(|name| Command::RollbackDeployment { name }),
            (any::<u64>(), btree_map(text(), any::<u64>(), 0..3))
                .prop_map(|(node, ongoing)| Command::ReportLoad { node, ongoing }),
            vec(decision(), 0..4).prop_map(|decisions| Command::PlaceActors { decisions }),
            (text(), any::<u64>(), placement_status()).prop_map(
                |(actor_id, generation, status)| Command::SetPlacementStatus {
                    actor_id,
                    generation,
                    status
                }
            ),
            vec(text(), 0..4).prop_map(|actor_ids| Command::RemovePlacements { actor_ids }),
            collection().prop_map(Command::CreateCollection),
            text().prop_map(|name| Command::DeleteCollection { name }),
            (
                text(),
                text(),
                vec(any::<u8>(), 0..16),
                any::<u64>(),
                text(),
                any::<u64>()
            )
                .prop_map(|(id, kind, spec, node, owner, submitted_ms)| {
                    Command::SubmitJob {
                        id,
                        kind,
                        spec,
                        node,
                        owner,
                        submitted_ms,
                    }
                }),
            (
                text(),
                job_status(),
                0.0f32..=1.0,
                option::of(vec(any::<u8>(), 0..16))
            )
                .prop_map(|(id, status, progress, result)| Command::UpdateJob {
                    id,
                    status,
                    progress,
                    result
                }),
            vec(text(), 0..4).prop_map(|ids| Command::PruneJobs { ids }),
            (text(), text()).prop_map(|(key, value)| Command::KvPut { key, value }),
            (text(), option::of(text()), option::of(text()))
                .prop_map(|(key, expected, new)| Command::KvCas { key, expected, new }),
            vec(
                (text(), any::<u64>(), placement_status()).prop_map(
                    |(actor_id, generation, status)| StatusUpdate {
                        actor_id,
                        generation,
                        status
                    }
                ),
                0..4
            )
            .prop_map(|updates| Command::SetPlacementStatuses { updates }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(id, draining)| Command::SetNodeDrain { id, draining }),
            (text(), option::of(text()))
                .prop_map(|(deployment, reason)| Command::SetPendingReason { deployment, reason }),
            (
                text(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(deployment, replica, generation, epoch, seq)| {
                    Command::AddInSync {
                        deployment,
                        replica,
                        generation,
                        epoch,
                        seq,
                    }
                }),
            (
                text(),
                vec((any::<u32>(), any::<u64>()), 0..4),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(deployment, replicas, epoch, seq)| Command::RemoveInSync {
                    deployment,
                    replicas,
                    epoch,
                    seq
                }),
            (text(), any::<u32>(), any::<u64>(), text()).prop_map(
                |(deployment, replica, generation, reason)| Command::LeaveInSync {
                    deployment,
                    replica,
                    generation,
                    reason
                }
            ),
            (text(), any::<u32>(), any::<u64>()).prop_map(|(deployment, replica, epoch)| {
                Command::PromotePrimary {
                    deployment,
                    replica,
                    epoch,
                }
            }),
            (text(), any::<u32>()).prop_map(|(deployment, replica)| Command::PromoteStale {
                deployment,
                replica
            }),
        ]
    }

    /// The variant's name, so the test can see that every one was generated.
    fn variant(c: &Command) -> &'static str {
        match c {
            Command::Noop => "Noop",
            Command::RegisterNode { .. } => "RegisterNode",
            Command::SetNodeLiveness { .. } => "SetNodeLiveness",
            Command::DeregisterNode { .. } => "DeregisterNode",
            Command::CreateDeployment(_) => "CreateDeployment",
            Command::UpdateDeployment { .. } => "UpdateDeployment",
            Command::DeleteDeployment { .. } => "DeleteDeployment",
            Command::ScaleDeployment { .. } => "ScaleDeployment",
            Command::RollbackDeployment { .. } => "RollbackDeployment",
            Command::ReportLoad { .. } => "ReportLoad",
            Command::PlaceActors { .. } => "PlaceActors",
            Command::SetPlacementStatus { .. } => "SetPlacementStatus",
            Command::RemovePlacements { .. } => "RemovePlacements",
            Command::CreateCollection(_) => "CreateCollection",
            Command::DeleteCollection { .. } => "DeleteCollection",
            Command::SubmitJob { .. } => "SubmitJob",
            Command::UpdateJob { .. } => "UpdateJob",
            Command::PruneJobs { .. } => "PruneJobs",
            Command::KvPut { .. } => "KvPut",
            Command::KvCas { .. } => "KvCas",
            Command::SetPlacementStatuses { .. } => "SetPlacementStatuses",
            Command::SetNodeDrain { .. } => "SetNodeDrain",
            Command::SetPendingReason { .. } => "SetPendingReason",
            Command::AddInSync { .. } => "AddInSync",
            Command::RemoveInSync { .. } => "RemoveInSync",
            Command::LeaveInSync { .. } => "LeaveInSync",
            Command::PromotePrimary { .. } => "PromotePrimary",
            Command::PromoteStale { .. } => "PromoteStale",
        }
    }

    const VARIANTS: usize = 28;

    fn round_trip(command: &Command) -> Command {
        let proposal = Proposal {
            id: RequestId::now(1, 2),
            command: command.clone(),
        };
        Proposal::decode(&proposal.encode().unwrap())
            .unwrap_or_else(|e| panic!("{command:?} does not decode: {e}"))
            .command
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_command_round_trips_through_the_log(command in command()) {
            prop_assert_eq!(round_trip(&command), command);
        }
    }

    #[test]
    fn every_variant_is_covered() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = command();
        let mut seen = BTreeSet::new();
        for _ in 0..5000 {
            let c = strategy.new_tree(&mut runner).unwrap().current();
            seen.insert(variant(&c));
        }
        assert_eq!(seen.len(), VARIANTS, "generated only {seen:?}");
    }

    #[test]
    fn the_reported_constraint_deployment_is_accepted_by_the_log() {
        // `constraints = [{ op = "equal", key = "zone", value = "a" }]` once failed to decode
        // on every node (AnyNotSupported) and the deploy timed out.
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "name": "echo", "kind": "echo", "replicas": 1, "resources": {},
            "strategy": "spread",
            "constraints": [{"op": "equal", "key": "zone", "value": "a"}],
            "anti_affinity": false, "max_unavailable": 1, "version": "", "config": "",
            "collection": null
        }))
        .unwrap();
        let command = Command::CreateDeployment(spec);
        assert_eq!(round_trip(&command), command);
    }
}
