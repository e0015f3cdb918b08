//! The node's side of placement: what the control plane assigns to this node goes to its node
//! agent, and what the agent reports goes back through the control plane.
//!
//! The watcher starts nothing until one linearizable read has brought this node's state up
//! to the leader's (a node restarted after its placements moved must not start the old
//! ones); then it follows commits on this node's own copy of the state (`read_local`). A node
//! cut off from the quorum keeps its actors, but its partition replicas stop serving once
//! its lease runs out (`lease.rs`). The reporter
//! batches the agent's status changes into one [`Command::SetPlacementStatuses`] per burst and
//! keeps what it could not deliver for the next try; reports for a generation that was
//! replaced meanwhile are skipped by the state machine.

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_actors::agent::{AgentArgs, AgentMsg, Assignment, NodeAgent, ReplicaState, StatusReport};
use arbor_actors::control::Control;
use arbor_actors::supervision::RestartPolicy;
use arbor_scheduler::state::{ClusterState, PlacementStatus, StatusUpdate};
use arbor_scheduler::{Command, RaftHandle, StateEvent};
use ractor::{Actor, ActorRef};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::NodeId;

/// How often the watcher re-reads its assignments without a commit (catches anything a
/// lagging subscription missed).
const RESYNC: Duration = Duration::from_secs(1);
/// The pause before retrying reports the control plane did not take.
const REPORT_RETRY: Duration = Duration::from_millis(300);

/// The actors `state` places on `node`, as the agent wants them. Pure.
pub fn assignments(state: &ClusterState, node: NodeId) -> Vec<Assignment> {
    Assignment::for_node(state, node)
}

fn status(state: ReplicaState) -> PlacementStatus {
    match state {
        ReplicaState::Starting => PlacementStatus::Starting,
        ReplicaState::Running => PlacementStatus::Running,
        ReplicaState::Failed { reason } => PlacementStatus::Failed { reason },
        ReplicaState::Stopped => PlacementStatus::Stopped,
    }
}

/// A node agent wired to the control plane.
pub struct AgentBridge {
    agent: ActorRef<AgentMsg>,
    watcher: JoinHandle<()>,
    reporter: JoinHandle<()>,
}

impl AgentBridge {
    /// Starts node `node`'s agent; its replicas join process groups in `scope` and keep their
    /// files under `data_dir`.
    pub async fn start(
        raft: RaftHandle,
        node: NodeId,
        scope: String,
        policy: RestartPolicy,
        data_dir: std::path::PathBuf,
        control: Control,
    ) -> Result<AgentBridge, ractor::SpawnErr> {
        let (reports, rx) = mpsc::unbounded_channel();
        let args = AgentArgs {
            node,
            scope,
            policy,
            reports,
            data_dir,
            models_dir: arbor_kernels::models::models_dir(None),
            control,
        };
        let (agent, _) = Actor::spawn(None, NodeAgent, args).await?;
        let watcher = tokio::spawn(watch(raft.clone(), node, agent.clone()));
        let reporter = tokio::spawn(report(raft, node, rx));
        Ok(AgentBridge {
            agent,
            watcher,
            reporter,
        })
    }

    pub fn agent(&self) -> &ActorRef<AgentMsg> {
        &self.agent
    }

    /// Stops every actor of this node, then the agent.
    pub async fn shutdown(self) {
        self.watcher.abort();
        let _ = self
            .agent
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        // Give the reporter a moment to hand over the final Stopped reports.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.reporter).await;
    }
}

async fn watch(raft: RaftHandle, node: NodeId, agent: ActorRef<AgentMsg>) {
    let mut events = raft.subscribe();
    // Caught up with the leader before anything starts.
    tracing::info!(
        node,
        "starting no actor until this node has caught up with the control plane"
    );
    loop {
        match raft.read(|_| ()).await {
            Ok(()) => {
                tracing::info!(node, "caught up with the control plane; starting actors");
                break;
            }
            Err(arbor_scheduler::ReadError::Stopped) => return,
            Err(e) => {
                tracing::info!(node, "not caught up with the control plane yet: {e}");
            }
        }
    }
    let mut last: Option<Vec<Assignment>> = None;
    loop {
        let wanted = match raft.read_local(move |s| assignments(s, node)).await {
            Ok(w) => w,
            Err(_) => return,
        };
        if last.as_ref() != Some(&wanted) {
            tracing::debug!(node, actors = wanted.len(), "assignments changed");
            if agent.cast(AgentMsg::Assign(wanted.clone())).is_err() {
                return;
            }
            last = Some(wanted);
        }
        // Wait for a commit that may concern placements (or the resync timer), then take
        // every event already queued in one go.
        tokio::select! {
            ev = events.recv() => if matches!(ev, Err(RecvError::Closed)) { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
        loop {
            match events.try_recv() {
                Ok(StateEvent::Applied { .. } | StateEvent::Restored { .. })
                | Ok(StateEvent::Membership { .. })
                | Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
    }
}

async fn report(raft: RaftHandle, node: NodeId, mut rx: mpsc::UnboundedReceiver<StatusReport>) {
    // Latest state per (actor, generation) not yet delivered.
    let mut unsent: BTreeMap<(String, u64), PlacementStatus> = BTreeMap::new();
    loop {
        if unsent.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    unsent.insert((r.actor_id, r.generation), status(r.state));
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            unsent.insert((r.actor_id, r.generation), status(r.state));
        }
        let updates: Vec<StatusUpdate> = unsent
            .iter()
            .map(|((actor_id, generation), status)| StatusUpdate {
                actor_id: actor_id.clone(),
                generation: *generation,
                status: status.clone(),
            })
            .collect();
        match raft
            .propose(Command::SetPlacementStatuses { updates })
            .await
        {
            Ok(_) => unsent.clear(),
            Err(arbor_scheduler::ProposeError::Stopped) => return,
            Err(e) => {
                tracing::debug!(node, "status reports not delivered yet: {e}");
                tokio::time::sleep(REPORT_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_scheduler::resources::Resources;
    use arbor_scheduler::state::{DeploymentSpec, PlacementDecision};

    #[test]
    fn a_node_gets_its_own_placements_with_kind_config_and_devices() {
        let mut s = ClusterState::default();
        for id in [1, 2] {
            s.apply(&Command::RegisterNode {
                id,
                address: "a".into(),
                capacity: Resources {
                    gpu: arbor_scheduler::resources::GpuAmount::whole(1),
                    ..Default::default()
                },
                labels: Default::default(),
            })
            .unwrap();
        }
        s.apply(&Command::CreateDeployment(DeploymentSpec {
            name: "e".into(),
            kind: "echo".into(),
            replicas: 2,
            resources: Default::default(),
            strategy: Default::default(),
            constraints: vec![],
            anti_affinity: false,
            max_unavailable: 1,
            version: String::new(),
            config: "{\"start_delay_ms\":1}".into(),
            collection: None,
            idempotent: false,
            autoscaling: None,
        }))
        .unwrap();
        let decision = |replica, node| PlacementDecision {
            deployment: "e".into(),
            replica,
            node,
            gpus: vec![],
            revision: 1,
            replaces: None,
        };
        s.apply(&Command::PlaceActors {
            decisions: vec![decision(0, 1), decision(1, 2)],
        })
        .unwrap();
        let mine = assignments(&s, 2);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].actor_id, "e/1");
        assert_eq!(mine[0].kind, "echo");
        assert_eq!(mine[0].config, "{\"start_delay_ms\":1}");
        assert_eq!(mine[0].generation, s.placements["e/1"].generation);
        assert!(assignments(&s, 3).is_empty());
    }
}
