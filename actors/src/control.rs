//! What actors need of the control plane, without its Raft machinery: the partitions'
//! replica sets as this node last learned them, this node's lease, and a way to propose the
//! commands that change a replica set. The node implements [`Proposer`] over its Raft handle
//! and keeps the views and the lease current; [`memory`] is an in-process control plane for
//! tests and benches that applies the same commands to a `ClusterState` directly.

pub mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbor_scheduler::state::{ClusterState, CollectionSpec, PartitionView, partition_views};
use arbor_scheduler::{Command, CommandOutcome};
use tokio::sync::watch;

/// A boxed future, so that [`Proposer`] can be used as a trait object.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a proposal did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The state machine refused it (the replica set moved on meanwhile).
    #[error("refused by the control plane: {0}")]
    Refused(String),
    /// It did not apply in time (no leader or no quorum); it may still apply later.
    #[error("the control plane did not answer: {0}")]
    Unavailable(String),
}

/// Proposes commands to the control plane and answers once they applied on this node.
pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, command: Command) -> Pending<Result<CommandOutcome, ControlError>>;
}

/// Every collection and every partition's view, as of one applied index of the control plane.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Views {
    /// The control plane's applied index these views were read at.
    pub applied: u64,
    /// Each collection's shape (partitions, dimension, metric, embedder), by name: what a
    /// coordinator serves is read here, never repeated in its own config.
    pub collections: BTreeMap<String, CollectionSpec>,
    pub partitions: BTreeMap<String, PartitionView>,
}

impl Views {
    /// The views of `state`, read at `applied`. Pure.
    pub fn of(applied: u64, state: &ClusterState) -> Views {
        Views {
            applied,
            collections: state.collections.clone(),
            partitions: partition_views(state),
        }
    }
}

/// A node's lease: until when it may serve and acknowledge for its replicas without having
/// confirmed contact with a quorum-backed leader again. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Nanoseconds since [`origin`] until which the lease holds (0: never held).
    until: Arc<AtomicU64>,
    /// How long one confirmation of contact holds it.
    duration: Duration,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Lease {
    /// A lease not yet held, that each confirmation extends by `duration`.
    pub fn new(duration: Duration) -> Lease {
        Lease {
            until: Arc::new(AtomicU64::new(0)),
            duration,
        }
    }

    /// A lease that always holds: one process with no quorum to lose (tests, benches).
    pub fn forever() -> Lease {
        Lease {
            until: Arc::new(AtomicU64::new(u64::MAX)),
            duration: Duration::ZERO,
        }
    }

    /// How long one confirmation holds it.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Holds until `until` (never shortens it).
    pub fn extend(&self, until: Instant) {
        let nanos = until.saturating_duration_since(origin()).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.until.fetch_max(nanos, Ordering::AcqRel);
    }

    /// Whether it holds now.
    pub fn valid(&self) -> bool {
        let now = Instant::now()
            .saturating_duration_since(origin())
            .as_nanos();
        u128::from(self.until.load(Ordering::Acquire)) > now
    }
}

/// The control plane as one node's actors see it. Cloning shares it.
#[derive(Clone)]
pub struct Control {
    views: watch::Receiver<Arc<Views>>,
    lease: Lease,
    proposer: Arc<dyn Proposer>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("applied", &self.views.borrow().applied)
            .field("lease_valid", &self.lease.valid())
            .finish()
    }
}

impl Control {
    pub fn new(
        views: watch::Receiver<Arc<Views>>,
        lease: Lease,
        proposer: Arc<dyn Proposer>,
    ) -> Self {
        Control {
            views,
            lease,
            proposer,
        }
    }

    /// The partition deployment's view as this node knows it.
    pub fn view(&self, deployment: &str) -> Option<PartitionView> {
        self.views.borrow().partitions.get(deployment).cloned()
    }

    /// The collection's spec as this node knows it.
    pub fn collection(&self, name: &str) -> Option<CollectionSpec> {
        self.views.borrow().collections.get(name).cloned()
    }

    /// A receiver that wakes on every new set of views.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Views>> {
        self.views.clone()
    }

    /// Whether this node's lease holds.
    pub fn lease_valid(&self) -> bool {
        self.lease.valid()
    }

    /// How long this node's lease holds once confirmed: after the control plane dropped a
    /// replica, the replica's node serves no read it lacks once this long has passed (it has
    /// heard of the change, or its lease ran out).
    pub fn lease_duration(&self) -> Duration {
        self.lease.duration()
    }

    /// Waits (at most `patience`) until the deployment's view is at `epoch` or later, and
    /// returns it as it then is.
    pub async fn view_at(
        &self,
        deployment: &str,
        epoch: u64,
        patience: Duration,
    ) -> Option<PartitionView> {
        let mut rx = self.views.clone();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let view = rx.borrow_and_update().partitions.get(deployment).cloned();
            if view.as_ref().is_none_or(|v| v.set.epoch >= epoch) {
                return view;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return view,
            }
        }
    }

    /// Proposes `command`; answers once it applied on this node.
    pub async fn propose(&self, command: Command) -> Result<CommandOutcome, ControlError> {
        self.proposer.propose(command).await
    }
}
