//! The node agent: the root supervisor of the actors placed on one node.
//!
//! The control plane decides placement; the agent makes this node match it. It is told the
//! whole desired set for its node on every change ([`AgentMsg::Assign`], idempotent), diffs it
//! against what runs, starts and stops replicas, joins running ones to their deployment's
//! process group (that is how [`crate::router::Router`] finds them), restarts failed ones
//! with the backoff of [`RestartPolicy`], and reports every change of state on a channel that
//! the node forwards to the control plane.
//!
//! Starting a replica can take a while (a model loads in `pre_start`), so spawns run in their
//! own tasks and report back with [`AgentMsg::Started`]: the agent keeps answering while
//! replicas start. Every spawn carries a token, and a result whose token is no longer the one
//! expected (the assignment changed meanwhile) is discarded and its actor stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::control::Control;
use crate::kinds::{Kind, ReplicaContext, spawn_replica};
use crate::replica::{ReplicaMsg, deployment_group, replica_group};
use crate::supervision::{RestartDecision, RestartHistory, RestartPolicy};

/// One actor that the control plane placed on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Unique in the cluster; the key the agent diffs by.
    pub actor_id: String,
    pub deployment: String,
    /// A kind name, as in [`Kind`]; an unknown one is reported, not retried.
    pub kind: String,
    /// Bumped by the control plane whenever the actor must be replaced.
    pub generation: u64,
    pub devices: Vec<u32>,
    /// The kind's configuration as JSON text.
    pub config: String,
}

impl Assignment {
    /// The actors `state` places on `node`, as the agent wants them. Pure.
    pub fn for_node(state: &arbor_scheduler::ClusterState, node: u64) -> Vec<Assignment> {
        state
            .placements
            .values()
            .filter(|p| p.node == node)
            .filter_map(|p| {
                let spec = &state.deployments.get(&p.deployment)?.spec;
                Some(Assignment {
                    actor_id: p.actor_id.clone(),
                    deployment: p.deployment.clone(),
                    kind: spec.kind.clone(),
                    generation: p.generation,
                    devices: p.devices(),
                    config: spec.config.clone(),
                })
            })
            .collect()
    }

    /// The groups its running replica joins: its deployment's, and its own.
    fn groups(&self) -> [String; 2] {
        [
            deployment_group(&self.deployment),
            replica_group(&self.actor_id, self.generation),
        ]
    }
}

/// Where a replica stands, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Being started, or waiting to be restarted after a failure.
    Starting,
    /// Started and reachable through its deployment's group.
    Running,
    /// Given up on: not restarted until a new generation is assigned.
    Failed { reason: String },
    /// Stopped because it is no longer assigned (or replaced by a new generation).
    Stopped,
}

/// A change of state of one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub actor_id: String,
    pub generation: u64,
    pub state: ReplicaState,
}

/// How to start a node agent.
pub struct AgentArgs {
    pub node: u64,
    /// The process-group scope that replicas join (one per cluster; unique per test).
    pub scope: String,
    pub policy: RestartPolicy,
    /// Where status changes go; a closed receiver is not an error.
    pub reports: UnboundedSender<StatusReport>,
    /// Where replicas keep durable data (each under its own subfolder).
    pub data_dir: PathBuf,
    /// Where model files are (see `arbor_kernels::models`).
    pub models_dir: PathBuf,
    /// The control plane, for the replicas that follow it (partitions, coordinators).
    pub control: Control,
}

/// What the agent is asked to do.
pub enum AgentMsg {
    /// The full desired set of actors for this node (replaces any earlier one).
    Assign(Vec<Assignment>),
    /// What runs here now, for status queries.
    Replicas(RpcReplyPort<Vec<LocalReplica>>),
    /// Internal: a backoff has elapsed; restart the actor if it is still assigned with this
    /// generation.
    Restart { actor_id: String, generation: u64 },
    /// Internal: a spawn started by the agent finished.
    Started {
        actor_id: String,
        generation: u64,
        token: u64,
        result: Result<ActorRef<ReplicaMsg>, String>,
    },
}

// Local only: the node crate talks to remote peers through its own link messages.
impl ractor::Message for AgentMsg {}

/// One replica as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplica {
    pub actor_id: String,
    pub deployment: String,
    pub generation: u64,
    pub state: ReplicaState,
    /// Restarts since this generation was assigned.
    pub restarts: u32,
    /// The running actor, if one runs.
    pub pid: Option<ActorId>,
}

/// The node agent actor.
pub struct NodeAgent;

/// The agent's state: one slot per assigned actor.
pub struct AgentState {
    node: u64,
    scope: String,
    policy: RestartPolicy,
    reports: UnboundedSender<StatusReport>,
    data_dir: PathBuf,
    models_dir: PathBuf,
    control: Control,
    slots: BTreeMap<String, Slot>,
    /// Running children, to find the slot of a supervision event.
    by_pid: HashMap<ActorId, String>,
    next_token: u64,
}

struct Slot {
    assignment: Assignment,
    state: ReplicaState,
    history: RestartHistory,
    restarts: u32,
    child: Option<ActorCell>,
    /// The token of the spawn in flight, if one is.
    spawning: Option<u64>,
    /// A `Restart` message is on its way.
    restart_pending: bool,
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AgentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        info!(node = args.node, scope = %args.scope, "node agent started");
        Ok(AgentState {
            node: args.node,
            scope: args.scope,
            policy: args.policy,
            reports: args.reports,
            data_dir: args.data_dir,
            models_dir: args.models_dir,
            control: args.control,
            slots: BTreeMap::new(),
            by_pid: HashMap::new(),
            next_token: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ids: Vec<String> = state.slots.keys().cloned().collect();
        for actor_id in ids {
            state.stop_slot(&actor_id, "node agent stopped");
        }
        info!(node = state.node, "node agent stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::Assign(desired) => state.assign(&myself, desired),
            AgentMsg::Replicas(reply) => {
                let _ = reply.send(state.replicas());
            }
            AgentMsg::Restart {
                actor_id,
                generation,
            } => state.restart(&myself, &actor_id, generation),
            AgentMsg::Started {
                actor_id,
                generation,
                token,
                result,
            } => state.started(&myself, &actor_id, generation, token, result),
        }
        Ok(())
    }

    /// Overridden so that a failing child never takes the agent down with it (ractor's
    /// default stops the supervisor).
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                state.child_exited(&myself, &cell, format!("failed: {err}"));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = match reason {
                    Some(r) => format!("terminated ({r})"),
                    None => "terminated".to_string(),
                };
                state.child_exited(&myself, &cell, reason);
            }
            _ => {}
        }
        Ok(())
    }
}

impl AgentState {
    fn report(&self, actor_id: &str, generation: u64, state: ReplicaState) {
        let _ = self.reports.send(StatusReport {
            actor_id: actor_id.to_string(),
            generation,
            state,
        });
    }

    fn replicas(&self) -> Vec<LocalReplica> {
        self.slots
            .values()
            .map(|slot| LocalReplica {
                actor_id: slot.assignment.actor_id.clone(),
                deployment: slot.assignment.deployment.clone(),
                generation: slot.assignment.generation,
                state: slot.state.clone(),
                restarts: slot.restarts,
                pid: slot.child.as_ref().map(ActorCell::get_id),
            })
            .collect()
    }

    fn assign(&mut self, myself: &ActorRef<AgentMsg>, desired: Vec<Assignment>) {
        let mut wanted: BTreeMap<String, Assignment> = BTreeMap::new();
        for a in desired {
            if let Some(earlier) = wanted.insert(a.actor_id.clone(), a) {
                warn!(actor_id = %earlier.actor_id, "actor assigned twice; the last one counts");
            }
        }
        let stale: Vec<String> = self
            .slots
            .iter()
            .filter(|(id, slot)| {
                wanted
                    .get(*id)
                    .is_none_or(|a| a.generation != slot.assignment.generation)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for actor_id in stale {
            self.stop_slot(&actor_id, "no longer assigned to this node");
        }
        for (actor_id, assignment) in wanted {
            if self.slots.contains_key(&actor_id) {
                continue;
            }
            let generation = assignment.generation;
            let kind = assignment.kind.parse::<Kind>();
            let mut slot = Slot {
                assignment,
                state: ReplicaState::Starting,
                history: RestartHistory::new(),
                restarts: 0,
                child: None,
                spawning: None,
                restart_pending: false,
            };
            match kind {
                Ok(_) => {
                    self.slots.insert(actor_id.clone(), slot);
                    self.report(&actor_id, generation, ReplicaState::Starting);
                    self.spawn(myself, &actor_id);
                }
                Err(e) => {
                    warn!(actor_id = %actor_id, generation, "cannot start: {e}");
                    let failed = ReplicaState::Failed {
                        reason: e.to_string(),
                    };
                    slot.state = failed.clone();
                    self.slots.insert(actor_id.clone(), slot);
                    self.report(&actor_id, generation, failed);
                }
            }
        }
    }

    /// Stops and forgets an actor the agent no longer wants, and reports it `Stopped`.
    fn stop_slot(&mut self, actor_id: &str, why: &str) {
        let Some(slot) = self.slots.remove(actor_id) else {
            return;
        };
        let generation = slot.assignment.generation;
        if let Some(cell) = slot.child {
            self.by_pid.remove(&cell.get_id());
            for group in slot.assignment.groups() {
                ractor::pg::leave_scoped(self.scope.clone(), group, vec![cell.clone()]);
            }
            cell.stop(Some(why.to_string()));
        }
        // A spawn in flight is discarded when it reports back (its token matches no slot).
        info!(actor_id = %actor_id, generation, "stopping: {why}");
        self.report(actor_id, generation, ReplicaState::Stopped);
    }

    /// Starts the slot's actor in a task of its own; the result comes back as `Started`.
    fn spawn(&mut self, myself: &ActorRef<AgentMsg>, actor_id: &str) {
        let token = self.next_token;
        self.next_token += 1;
        let (data_dir, models_dir) = (self.data_dir.clone(), self.models_dir.clone());
        let Some(slot) = self.slots.get_mut(actor_id) else {
            return;
        };
        let a = &slot.assignment;
        let kind = match a.kind.parse::<Kind>() {
            Ok(kind) => kind,
            Err(e) => {
                // Checked on assignment; kept total all the same.
                slot.state = ReplicaState::Failed {
                    reason: e.to_string(),
                };
                return;
            }
        };
        slot.spawning = Some(token);
        slot.state = ReplicaState::Starting;
        let ctx = ReplicaContext {
            actor_id: a.actor_id.clone(),
            deployment: a.deployment.clone(),
            generation: a.generation,
            devices: a.devices.clone(),
            config: a.config.clone(),
            data_dir,
            models_dir,
            scope: self.scope.clone(),
            control: self.control.clone(),
        };
        debug!(actor_id = %ctx.actor_id, generation = ctx.generation, %kind, "spawning");
        let agent = myself.clone();
        tokio::spawn(async move {
            let actor_id = ctx.actor_id.clone();
            let generation = ctx.generation;
            let result = spawn_replica(kind, ctx, agent.get_cell())
                .await
                .map_err(startup_error);
            let child = result.as_ref().ok().cloned();
            let sent = agent.cast(AgentMsg::Started {
                actor_id,
                generation,
                token,
                result,
            });
            if sent.is_err()
                && let Some(child) = child
            {
                // The agent is gone: nobody would supervise this replica.
                child.stop(Some("node agent stopped".into()));
            }
        });
    }

    fn started(
        &mut self,
        myself: &ActorRef<AgentMsg>,
        actor_id: &str,
        generation: u64,
        token: u64,
        result: Result<ActorRef<ReplicaMsg>, String>,
    ) {
        let current = self.slots.get_mut(actor_id).filter(|slot| {
            slot.assignment.generation == generation && slot.spawning == Some(token)
        });
        let Some(slot) = current else {
            if let Ok(stale) = result {
                debug!(actor_id = %actor_id, generation, "discarding a replica no longer wanted");
                stale.stop(Some("no longer assigned to this node".into()));
            }
            return;
        };
        slot.spawning = None;
        let actor = match result {
            Ok(actor) => actor,
            Err(reason) => {
                self.failed(myself, actor_id, format!("failed to start: {reason}"));
                return;
            }
        };
        if matches!(
            actor.get_status(),
            ActorStatus::Stopping | ActorStatus::Stopped
        ) {
            // It exited before this message arrived, so its supervision event found no slot.
            self.failed(myself, actor_id, "exited right after it started".into());
            return;
        }
        let cell = actor.get_cell();
        for group in slot.assignment.groups() {
            ractor::pg::join_scoped(self.scope.clone(), group, vec![cell.clone()]);
        }
        self.by_pid.insert(cell.get_id(), actor_id.to_string());
        slot.child = Some(cell);
        slot.state = ReplicaState::Running;
        info!(actor_id = %actor_id, generation, pid = %actor.get_id(), "running");
        self.report(actor_id, generation, ReplicaState::Running);
    }

    fn child_exited(&mut self, myself: &ActorRef<AgentMsg>, cell: &ActorCell, reason: String) {
        // Children the agent stopped itself were already forgotten.
        let Some(actor_id) = self.by_pid.remove(&cell.get_id()) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&actor_id) else {
            return;
        };
        slot.child = None;
        for group in slot.assignment.groups() {
            ractor::pg::leave_scoped(self.scope.clone(), group, vec![cell.clone()]);
        }
        self.failed(myself, &actor_id, reason);
    }

    /// A replica failed or exited unasked: restart it after a backoff, or give up.
    fn failed(&mut self, myself: &ActorRef<AgentMsg>, actor_id: &str, error: String) {
        let policy = self.policy;
        let Some(slot) = self.slots.get_mut(actor_id) else {
            return;
        };
        let generation = slot.assignment.generation;
        let decision = slot.history.on_failure(&policy, Instant::now());
        let state = match decision {
            RestartDecision::Restart { after, attempt } => {
                warn!(actor_id = %actor_id, generation, attempt, ?after, "replica {error}; restarting");
                slot.restarts = slot.restarts.saturating_add(1);
                slot.restart_pending = true;
                let actor_id = actor_id.to_string();
                myself.send_after(after, move || AgentMsg::Restart {
                    actor_id,
                    generation,
                });
                ReplicaState::Starting
            }
            RestartDecision::GiveUp { failures, window } => {
                let reason = format!("failed {failures} times in {window:?}; last error: {error}");
                warn!(actor_id = %actor_id, generation, "giving up: {reason}");
                ReplicaState::Failed { reason }
            }
        };
        slot.state = state.clone();
        self.report(actor_id, generation, state);
    }

    fn restart(&mut self, myself: &ActorRef<AgentMsg>, actor_id: &str, generation: u64) {
        let due = self.slots.get_mut(actor_id).filter(|slot| {
            slot.assignment.generation == generation
                && slot.restart_pending
                && slot.child.is_none()
                && slot.spawning.is_none()
        });
        let Some(slot) = due else {
            return;
        };
        slot.restart_pending = false;
        self.spawn(myself, actor_id);
    }
}

/// The reason inside a spawn error, without ractor's wrapping (which calls every startup
/// error a panic).
fn startup_error(err: SpawnErr) -> String {
    match err {
        SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
