//! A control plane in one process, for tests and benches: the same `ClusterState` and the
//! same commands as the Raft-replicated one, applied under a lock, with a lease that always
//! holds. It decides placement with the real reconciler. What it cannot show is anything
//! about several processes: those claims are proved by the node's multi-process tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arbor_scheduler::reconciler::{Observation, ReconcilerConfig, reconcile};
use arbor_scheduler::resources::{Bytes, Millicores, Resources};
use arbor_scheduler::state::{
    ClusterState, CollectionSpec, DeploymentSpec, Liveness, Metric, NodeId,
};
use arbor_scheduler::{Command, CommandOutcome, Rejection};
use tokio::sync::watch;

use super::{Control, ControlError, Lease, Pending, Proposer, Views};
use crate::agent::Assignment;

/// An in-process control plane.
pub struct MemoryControl {
    state: Mutex<(u64, ClusterState)>,
    views: watch::Sender<Arc<Views>>,
}

impl MemoryControl {
    pub fn new() -> Arc<MemoryControl> {
        let (views, _) = watch::channel(Arc::new(Views::default()));
        Arc::new(MemoryControl {
            state: Mutex::new((0, ClusterState::default())),
            views,
        })
    }

    /// The control plane as actors see it.
    pub fn control(self: &Arc<Self>) -> Control {
        Control::new(
            self.views.subscribe(),
            Lease::forever(),
            self.clone() as Arc<dyn Proposer>,
        )
    }

    /// Applies `command` as a commit would, and publishes the views it leads to.
    pub fn apply(&self, command: &Command) -> Result<CommandOutcome, Rejection> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (applied, state) = &mut *guard;
        *applied += 1;
        let outcome = state.apply(command);
        let views = Views::of(*applied, state);
        self.views.send_replace(Arc::new(views));
        outcome
    }

    /// A copy of the state.
    pub fn state(&self) -> ClusterState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Registers `nodes` nodes (1..=nodes) with room for anything, all ready.
    pub fn nodes(&self, nodes: u64) {
        for id in 1..=nodes {
            self.apply(&Command::RegisterNode {
                id,
                address: format!("node-{id}"),
                capacity: Resources {
                    cpu: Millicores::cores(64),
                    memory: Bytes::gib(64),
                    ..Default::default()
                },
                labels: BTreeMap::new(),
            })
            .expect("a node registers");
        }
    }

    /// Creates a collection (and the embedder deployment it names, with no replicas, if there
    /// is none) and places its replicas as the leader's reconciler would.
    pub fn collection(
        &self,
        name: &str,
        partitions: u32,
        replication: u32,
        dim: u32,
        metric: Metric,
    ) {
        let embedder = "embedder";
        if !self.state().deployments.contains_key(embedder) {
            self.apply(&Command::CreateDeployment(DeploymentSpec {
                name: embedder.into(),
                kind: "embedder".into(),
                replicas: 0,
                resources: Resources::default(),
                strategy: Default::default(),
                constraints: vec![],
                anti_affinity: false,
                max_unavailable: 1,
                version: String::new(),
                config: String::new(),
                collection: None,
                idempotent: false,
                autoscaling: None,
            }))
            .expect("the embedder deployment is created");
        }
        self.apply(&Command::CreateCollection(CollectionSpec {
            name: name.into(),
            dimension: dim,
            metric,
            partitions,
            replication,
            embedder: embedder.into(),
            resources: Resources {
                cpu: Millicores(10),
                memory: Bytes::mib(16),
                ..Default::default()
            },
            index: Default::default(),
            incarnation: 0,
            quantization: Default::default(),
        }))
        .expect("the collection is created");
        self.reconcile();
    }

    /// One round of the real reconciler, its commands applied; a node is alive or silent as
    /// the state records it (tests mark nodes down with `SetNodeLiveness`).
    pub fn reconcile(&self) {
        let state = self.state();
        let (alive, silent) = state
            .nodes
            .iter()
            .partition::<Vec<_>, _>(|(_, n)| n.liveness == Liveness::Ready);
        let seen = Observation {
            now_ms: 0,
            alive: alive.into_iter().map(|(id, _)| *id).collect(),
            silent: silent.into_iter().map(|(id, _)| *id).collect(),
        };
        // In-process tests kill nodes to see replicas move: no waiting for them.
        let config = ReconcilerConfig {
            max_batch: 4096,
            partition_move_delay: std::time::Duration::ZERO,
            ..Default::default()
        };
        for command in reconcile(&state, &seen, &config) {
            let _ = self.apply(&command);
        }
    }

    /// What node `node` runs, as its agent is told.
    pub fn assignments(&self, node: NodeId) -> Vec<Assignment> {
        Assignment::for_node(&self.state(), node)
    }
}

impl Proposer for MemoryControl {
    fn propose(&self, command: Command) -> Pending<Result<CommandOutcome, ControlError>> {
        let outcome = self
            .apply(&command)
            .map_err(|e| ControlError::Refused(e.to_string()));
        Box::pin(async move { outcome })
    }
}
