//! Runs [`super::reconcile`] on whichever node leads: after every batch of commits and on a
//! timer, and proposes what it returns.
//!
//! Every node runs a driver; only the leader's acts. Liveness comes from raft itself: the
//! leader hears each member's heartbeat responses every raft heartbeat, so a member whose
//! last message is older than `node_timeout` is silent. A new leader has only just started
//! hearing from its followers: it judges a member only once it has led for a whole
//! `node_timeout`. That is what makes node leases safe (`node/src/lease.rs`): a node that
//! last confirmed a leader at time `s` stops serving at `s + node_timeout / 2`, and no leader,
//! old or new, marks it down before `s + node_timeout`, so its replicas are never moved while
//! it may still serve them.
//!
//! The leader's autoscaler ([`crate::autoscale`]) runs in the same loop, after the
//! reconciler's commands: its decisions only change replica counts, which the next round
//! places.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast::error::TryRecvError;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Observation, ReconcilerConfig, reconcile};
use crate::autoscale::{Autoscaler, Decision, MILLI};
use crate::command::{Command, Scaler};
use crate::node::{NodeStatus, ProposeError, RaftHandle, Role};
use crate::state::NodeId;

/// Who is alive, from the leader's raft status: pure, so its timing rules are tested.
pub fn observe(
    status: &NodeStatus,
    nodes: impl IntoIterator<Item = NodeId>,
    leading_for: Duration,
    node_timeout: Duration,
    now_ms: u64,
) -> Observation {
    let timeout_ms = node_timeout.as_millis() as u64;
    let mut seen = Observation {
        now_ms,
        ..Default::default()
    };
    let heard = |id: NodeId| {
        status
            .voters
            .iter()
            .chain(&status.learners)
            .find(|m| m.id == id)
            .and_then(|m| m.last_heard_ms)
    };
    for id in nodes {
        match heard(id) {
            _ if id == status.id => {
                seen.alive.insert(id);
            }
            Some(ms) if ms <= timeout_ms => {
                seen.alive.insert(id);
            }
            _ if leading_for >= node_timeout => {
                seen.silent.insert(id);
            }
            _ => {}
        }
    }
    seen
}

/// The running reconciler of one node.
pub struct Reconciler {
    task: JoinHandle<()>,
}

impl Reconciler {
    /// Starts the loop; it acts only while this node leads.
    pub fn spawn(raft: RaftHandle, config: ReconcilerConfig) -> Reconciler {
        Reconciler {
            task: tokio::spawn(run(raft, config)),
        }
    }

    /// Stops the loop (a round in progress is abandoned; the next leader redoes it).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn run(raft: RaftHandle, config: ReconcilerConfig) {
    let mut events = raft.subscribe();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (term, since) of this node's current leadership.
    let mut leading: Option<(u64, Instant)> = None;
    let mut autoscaler = Autoscaler::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
        // One round covers every commit that arrived meanwhile.
        loop {
            match events.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        let Ok(status) = raft.status().await else {
            return;
        };
        if status.role != Role::Leader {
            leading = None;
            continue;
        }
        let since = match leading {
            Some((term, since)) if term == status.term => since,
            _ => {
                info!(node = status.id, term = status.term, "reconciler active");
                let now = Instant::now();
                leading = Some((status.term, now));
                // Trends seen under another leader are not ours to trust.
                autoscaler = Autoscaler::default();
                now
            }
        };
        let state = match raft.read_state().await {
            Ok(s) => s,
            Err(e) => {
                debug!("reconciler: state not readable this round: {e}");
                continue;
            }
        };
        let seen = observe(
            &status,
            state.nodes.keys().copied(),
            since.elapsed(),
            config.node_timeout,
            wall_ms(),
        );
        let mut commands = reconcile(&state, &seen, &config);
        commands.extend(
            autoscaler
                .decide(&state, seen.now_ms)
                .into_iter()
                .map(scale_command),
        );
        for command in commands {
            let what = command_name(&command);
            match raft.propose(command).await {
                Ok(_) => debug!("reconciler: {what} applied"),
                Err(ProposeError::Rejected(why)) => {
                    // The state moved on since this round read it; the next round replans.
                    info!("reconciler: {what} rejected as stale: {why}");
                    break;
                }
                Err(ProposeError::Stopped) => return,
                Err(e) => {
                    warn!("reconciler: {what} not applied: {e}");
                    break;
                }
            }
        }
    }
}

/// The command that carries out an autoscaling decision, which is logged and counted here.
fn scale_command(d: Decision) -> Command {
    let direction = if d.to > d.from { "up" } else { "down" };
    info!(
        deployment = %d.deployment,
        from = d.from,
        to = d.to,
        ongoing = d.ongoing_milli as f64 / MILLI as f64,
        "autoscaler: scaling {direction}"
    );
    metrics::counter!(
        "arbor_autoscaler_decisions_total",
        "deployment" => d.deployment.clone(),
        "direction" => direction,
    )
    .increment(1);
    Command::ScaleDeployment {
        name: d.deployment,
        replicas: d.to,
        by: Scaler::Autoscaler,
    }
}

fn command_name(c: &crate::Command) -> String {
    use crate::Command::*;
    match c {
        SetNodeLiveness { id, liveness, .. } => format!("node {id} {liveness:?}"),
        PlaceActors { decisions } => format!("placing {} replicas", decisions.len()),
        RemovePlacements { actor_ids } => format!("removing {} replicas", actor_ids.len()),
        SetPendingReason { deployment, .. } => format!("pending reason of {deployment}"),
        ScaleDeployment { name, replicas, .. } => format!("scaling {name} to {replicas}"),
        other => format!("{other:?}"),
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::MemberProgress;
    use std::collections::BTreeSet;

    fn status(heard: &[(NodeId, Option<u64>)]) -> NodeStatus {
        NodeStatus {
            id: 1,
            leader: Some(1),
            term: 2,
            role: Role::Leader,
            commit: 0,
            applied: 0,
            snapshot_index: 0,
            voters: heard
                .iter()
                .map(|(id, ms)| MemberProgress {
                    id: *id,
                    matched: None,
                    last_heard_ms: *ms,
                })
                .collect(),
            learners: vec![],
            dropped_messages: 0,
        }
    }

    #[test]
    fn a_new_leader_waits_a_full_timeout_before_judging() {
        let s = status(&[(1, Some(0)), (2, Some(50)), (3, None), (4, Some(9000))]);
        let t = Duration::from_secs(3);
        let early = observe(&s, [1, 2, 3, 4, 5], Duration::from_millis(500), t, 7);
        assert_eq!(early.alive, BTreeSet::from([1, 2]));
        assert!(early.silent.is_empty(), "{early:?}");
        // Heard long ago (the old leader, dead): still judged only after a whole timeout,
        // so that a node's lease (half the timeout) has run out by then.
        let settled = observe(&s, [1, 2, 3, 4, 5], Duration::from_millis(2999), t, 7);
        assert!(settled.silent.is_empty(), "{settled:?}");
        let later = observe(&s, [1, 2, 3, 4, 5], Duration::from_secs(3), t, 7);
        assert_eq!(later.alive, BTreeSet::from([1, 2]));
        // Never heard, heard too long ago, and not a raft member at all.
        assert_eq!(later.silent, BTreeSet::from([3, 4, 5]));
        assert_eq!(later.now_ms, 7);
    }
}
