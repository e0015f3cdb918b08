//! Nodes in one process: one node agent per simulated node, a control plane in memory
//! (`arbor_actors::control::memory`, the real state machine and reconciler without Raft), and
//! the agents' status reports applied to it as a node's reporter would. Replicas on different
//! "nodes" have their own data folders. Claims about several processes are not proved here:
//! the node crate's process tests do that.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::agent::{AgentArgs, AgentMsg, Assignment, NodeAgent, ReplicaState};
use arbor_actors::control::memory::MemoryControl;
use arbor_actors::partition::{PartitionAnswer, PartitionReply, PartitionRequest, remote};
use arbor_actors::retrieval::{CollectionRoute, Coordinator};
use arbor_actors::supervision::RestartPolicy;
use arbor_scheduler::Command;
use arbor_scheduler::state::{Liveness, Metric, PartitionView, PlacementStatus, StatusUpdate};
use ractor::{Actor, ActorCell, ActorRef};

pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct TestNode {
    pub id: u64,
    pub agent: ActorRef<AgentMsg>,
    pub data: tempfile::TempDir,
}

pub struct Cluster {
    pub control: Arc<MemoryControl>,
    pub scope: String,
    pub nodes: BTreeMap<u64, TestNode>,
    /// Actors besides the control plane's placements (an embedder, a model), per node.
    pub extra: BTreeMap<u64, Vec<Assignment>>,
}

impl Cluster {
    /// `n` nodes with agents, all ready; `scope` must be unique per test.
    pub async fn start(scope: &str, n: u64) -> Cluster {
        let control = MemoryControl::new();
        control.nodes(n);
        let mut c = Cluster {
            control,
            scope: scope.into(),
            nodes: BTreeMap::new(),
            extra: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start_node(id).await;
        }
        c
    }

    /// (Re)starts the agent of node `id`, with a fresh data folder unless it had one.
    pub async fn start_node(&mut self, id: u64) {
        let data = match self.nodes.remove(&id) {
            Some(old) => old.data,
            None => tempfile::tempdir().unwrap(),
        };
        let (reports, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let args = AgentArgs {
            node: id,
            scope: self.scope.clone(),
            policy: RestartPolicy {
                initial_backoff: Duration::from_millis(50),
                ..RestartPolicy::default()
            },
            reports,
            data_dir: data.path().to_path_buf(),
            models_dir: arbor_kernels::models::models_dir(None),
            control: self.control.control(),
        };
        let (agent, _) = Actor::spawn(None, NodeAgent, args).await.unwrap();
        let control = self.control.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let status = match r.state {
                    ReplicaState::Starting => PlacementStatus::Starting,
                    ReplicaState::Running => PlacementStatus::Running,
                    ReplicaState::Failed { reason } => PlacementStatus::Failed { reason },
                    ReplicaState::Stopped => PlacementStatus::Stopped,
                };
                let _ = control.apply(&Command::SetPlacementStatuses {
                    updates: vec![StatusUpdate {
                        actor_id: r.actor_id,
                        generation: r.generation,
                        status,
                    }],
                });
            }
        });
        self.nodes.insert(id, TestNode { id, agent, data });
        self.assign();
    }

    /// Every agent gets what the control plane places on its node (and its extras).
    pub fn assign(&self) {
        for (id, node) in &self.nodes {
            let mut actors = self.control.assignments(*id);
            actors.extend(self.extra.get(id).cloned().unwrap_or_default());
            let _ = node.agent.cast(AgentMsg::Assign(actors));
        }
    }

    /// Stops node `id`'s agent and its actors (as a dead process), and has the control plane
    /// notice: the node is marked down and the reconciler runs until it has nothing to do.
    pub async fn kill_node(&mut self, id: u64) {
        if let Some(node) = self.nodes.get(&id) {
            let _ = node
                .agent
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        self.control
            .apply(&Command::SetNodeLiveness {
                id,
                liveness: Liveness::Down,
                observed_at_ms: 1,
            })
            .unwrap();
        self.reconcile_until_quiet();
        self.assign();
    }

    /// Brings node `id` back (same data folder) and marks it ready.
    pub async fn revive_node(&mut self, id: u64) {
        self.control
            .apply(&Command::SetNodeLiveness {
                id,
                liveness: Liveness::Ready,
                observed_at_ms: 2,
            })
            .unwrap();
        self.start_node(id).await;
        self.reconcile_until_quiet();
        self.assign();
    }

    /// Rounds of the reconciler (against what the control plane believes) until a round
    /// changes nothing.
    pub fn reconcile_until_quiet(&self) {
        for _ in 0..20 {
            let before = self.control.state();
            self.control.reconcile();
            if self.control.state() == before {
                return;
            }
        }
    }

    /// Creates a collection, starts its replicas and waits until all are in sync.
    pub async fn collection(
        &self,
        name: &str,
        partitions: u32,
        replication: u32,
        dim: u32,
        metric: Metric,
    ) {
        self.control
            .collection(name, partitions, replication, dim, metric);
        self.assign();
        for p in 0..partitions {
            self.in_sync(&format!("{name}.p{p}"), replication as usize)
                .await;
        }
    }

    pub fn view(&self, deployment: &str) -> PartitionView {
        self.control.state();
        self.control
            .control()
            .view(deployment)
            .unwrap_or_else(|| panic!("no partition {deployment}"))
    }

    /// Waits until `deployment`'s view meets `want`, reconciling meanwhile.
    pub async fn until(
        &self,
        deployment: &str,
        what: &str,
        want: impl Fn(&PartitionView) -> bool,
    ) -> PartitionView {
        let start = Instant::now();
        loop {
            let view = self.view(deployment);
            if want(&view) {
                return view;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{deployment} never {what}: {view:?}"
            );
            self.reconcile_until_quiet();
            self.assign();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `id`'s agent and waits until its replicas have let go of their files (a
    /// process that died), without the control plane noticing: as a restart within
    /// `node_timeout`.
    pub async fn stop_node(&self, id: u64) {
        let node = &self.nodes[&id];
        let replicas: Vec<ActorCell> = node.agent.get_children();
        let _ = node
            .agent
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        for r in replicas {
            let start = Instant::now();
            while !matches!(r.get_status(), ractor::ActorStatus::Stopped) {
                assert!(start.elapsed() < PATIENCE, "a replica never stopped");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Its last commit may still finish on the blocking pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Waits until `deployment` has `n` in-sync replicas, reconciling meanwhile.
    pub async fn in_sync(&self, deployment: &str, n: usize) -> PartitionView {
        let start = Instant::now();
        loop {
            let view = self.view(deployment);
            let running = view
                .set
                .in_sync
                .iter()
                .all(|(r, g)| remote::member(&self.scope, deployment, *r, *g).is_some());
            if view.set.in_sync.len() == n && view.primary().is_some() && running {
                return view;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{deployment} never had {n} in-sync replicas: {view:?}"
            );
            self.reconcile_until_quiet();
            self.assign();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running actor of a replica at its current generation.
    pub async fn replica(&self, deployment: &str, replica: u32) -> ActorCell {
        let start = Instant::now();
        loop {
            let view = self.view(deployment);
            if let Some(m) = view.members.get(&replica)
                && let Some(cell) = remote::member(&self.scope, deployment, replica, m.generation)
            {
                return cell;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "replica {deployment}/{replica} never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ask(
        &self,
        deployment: &str,
        replica: u32,
        request: PartitionRequest,
    ) -> PartitionReply {
        let cell = self.replica(deployment, replica).await;
        remote::ask(&cell, request, Duration::from_secs(30)).await
    }

    /// Every replica's answer to `Get(ids)`, by replica index; each must be in sync.
    pub async fn get_everywhere(
        &self,
        deployment: &str,
        ids: &[u64],
    ) -> BTreeMap<u32, Vec<arbor_actors::partition::VectorRecord>> {
        let view = self.view(deployment);
        let mut out = BTreeMap::new();
        for replica in view.set.in_sync.keys() {
            match self
                .ask(deployment, *replica, PartitionRequest::Get(ids.to_vec()))
                .await
            {
                Ok(PartitionAnswer::Records(r)) => {
                    out.insert(*replica, r);
                }
                other => panic!("replica {replica} of {deployment}: {other:?}"),
            }
        }
        out
    }

    pub fn coordinator(&self, route: CollectionRoute) -> Coordinator {
        Coordinator::new(self.scope.clone(), self.control.control(), route).unwrap()
    }
}
