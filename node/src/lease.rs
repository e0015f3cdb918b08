//! The control plane as this node's actors see it ([`arbor_actors::control::Control`]): the
//! partitions' replica sets as this node applied them, a way to propose commands, and the
//! node's **lease**.
//!
//! The lease is what fences a node that lost the control plane. Every `renew` the node makes
//! a linearizable read (a ReadIndex round: the leader confirms with a quorum that it still
//! leads, and this node applies everything committed until then); once it succeeds, the
//! views are refreshed from it and the lease is extended to `start + node_timeout / 2`, where
//! `start` is when the read was sent. The leader marks a node down only when it has not heard
//! from it for `node_timeout` (a new leader waits a whole `node_timeout` first), and it heard
//! this node's read no earlier than `start`; so the node stops serving and acknowledging for
//! its partition replicas at least `node_timeout / 2` before its replicas can be moved or its
//! replica set changed without it. Only bounded clock *rates* are assumed, not synchronized
//! clocks: every duration is measured on one machine's monotonic clock.
//!
//! It is also why a primary that dropped a follower waits `node_timeout / 2` before it
//! acknowledges: by then the follower's node has applied the change, or serves nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::control::{Control, ControlError, Lease, Pending, Proposer, Views};
use arbor_scheduler::{Command, CommandOutcome, ProposeError, RaftHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the lease is confirmed, as a fraction of its length.
const RENEWALS_PER_LEASE: u32 = 5;

/// Proposes through this node's Raft handle.
struct RaftProposer(RaftHandle);

impl Proposer for RaftProposer {
    fn propose(&self, command: Command) -> Pending<Result<CommandOutcome, ControlError>> {
        let raft = self.0.clone();
        Box::pin(async move {
            raft.propose(command).await.map_err(|e| match e {
                ProposeError::Rejected(why) => ControlError::Refused(why.to_string()),
                other => ControlError::Unavailable(other.to_string()),
            })
        })
    }
}

/// The tasks that keep a node's [`Control`] current.
pub struct ControlFeed {
    control: Control,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlFeed {
    /// Starts following the control plane through `raft`; the lease lasts
    /// `node_timeout / 2` per confirmation.
    pub fn start(raft: RaftHandle, node_timeout: Duration) -> ControlFeed {
        let (tx, rx) = watch::channel(Arc::new(Views::default()));
        let lease = Lease::new(node_timeout / 2);
        let control = Control::new(
            rx,
            lease.clone(),
            Arc::new(RaftProposer(raft.clone())) as Arc<dyn Proposer>,
        );
        let tx = Arc::new(tx);
        let tasks = vec![
            tokio::spawn(follow(raft.clone(), tx.clone())),
            tokio::spawn(renew(raft, tx, lease.clone())),
        ];
        ControlFeed { control, tasks }
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for ControlFeed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes `views` unless newer ones are out already.
fn publish(tx: &watch::Sender<Arc<Views>>, views: Views) {
    tx.send_if_modified(|current| {
        if views.applied > current.applied || current.applied == 0 {
            *current = Arc::new(views);
            true
        } else {
            false
        }
    });
}

/// Follows this node's commits: the views change as soon as a replica set does.
async fn follow(raft: RaftHandle, tx: Arc<watch::Sender<Arc<Views>>>) {
    let mut events = raft.subscribe();
    loop {
        let views = raft.read_local_at(Views::of).await;
        match views {
            Ok(v) => publish(&tx, v),
            Err(_) => return,
        }
        match events.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
        // Take every event already queued in one go.
        while events.try_recv().is_ok() {}
    }
}

/// Confirms the lease by linearizable reads, refreshing the views from them.
async fn renew(raft: RaftHandle, tx: Arc<watch::Sender<Arc<Views>>>, lease: Lease) {
    let every = lease.duration() / RENEWALS_PER_LEASE;
    loop {
        let start = Instant::now();
        let read = tokio::time::timeout(lease.duration(), raft.read_at(Views::of)).await;
        if let Ok(Ok(views)) = read {
            // The views first: a replica that finds the lease valid also finds views at least
            // as new as this read.
            publish(&tx, views);
            lease.extend(start + lease.duration());
        }
        tokio::time::sleep(every.saturating_sub(start.elapsed())).await;
    }
}
