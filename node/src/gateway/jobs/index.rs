//! The control plane's job records as this node has applied them, kept beside the Raft loop
//! so that listings, subscriptions and the janitor never scan the records on it.
//!
//! The index copies the records once (one pass on the loop), then follows the commands the
//! loop applies (`StateEvent::Applied`, which carries each command and its outcome): a
//! submission adds a view and drops the records its outcome says were evicted, an update
//! changes one, a prune drops finished ones. When it falls behind the event channel, or a
//! snapshot replaces the state, it copies again. Events are sent as the loop applies, before
//! it answers any read at that index, so after a linearizable read the events up to it are
//! already waiting: draining them makes the index as fresh as the read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arbor_proto::JobId;
use arbor_proto::gateway::{JobState, JobView};
use arbor_scheduler::{Command, CommandOutcome, RaftHandle, StateEvent};
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::{job_state, record_status_view};

/// How often the index drains its events when nobody asks: often enough that 4096 queued
/// events (the channel's room) are rarely outrun.
const DRAIN_EVERY: Duration = Duration::from_millis(200);

/// The records' views, newest first by submission, and by owner.
#[derive(Default)]
struct Views {
    by_id: HashMap<JobId, Arc<JobView>>,
    newest: BTreeSet<(u64, JobId)>,
    by_owner: HashMap<String, BTreeSet<(u64, JobId)>>,
}

impl Views {
    fn insert(&mut self, view: JobView) {
        self.remove(&view.id);
        let key = (view.submitted_ms, view.id.clone());
        self.newest.insert(key.clone());
        self.by_owner
            .entry(view.owner.clone())
            .or_default()
            .insert(key);
        self.by_id.insert(view.id.clone(), Arc::new(view));
    }

    fn remove(&mut self, id: &str) -> Option<Arc<JobView>> {
        let view = self.by_id.remove(id)?;
        let key = (view.submitted_ms, view.id.clone());
        self.newest.remove(&key);
        if let Some(own) = self.by_owner.get_mut(&view.owner) {
            own.remove(&key);
            if own.is_empty() {
                self.by_owner.remove(&view.owner);
            }
        }
        Some(view)
    }

    /// Follows one applied command.
    fn follow(&mut self, command: &Command, outcome: &CommandOutcome) {
        match (command, outcome) {
            (
                Command::SubmitJob {
                    id,
                    kind,
                    node,
                    owner,
                    submitted_ms,
                    ..
                },
                CommandOutcome::JobsEvicted(gone),
            ) => {
                for old in gone {
                    self.remove(old);
                }
                self.insert(JobView {
                    id: id.clone(),
                    kind: kind.clone(),
                    state: JobState::Queued,
                    reason: None,
                    progress: 0.0,
                    node: *node,
                    owner: owner.clone(),
                    submitted_ms: *submitted_ms,
                    recorded: true,
                    result: None,
                });
            }
            (
                Command::UpdateJob {
                    id,
                    status,
                    progress,
                    ..
                },
                _,
            ) => {
                if let Some(view) = self.by_id.get_mut(id) {
                    let (state, reason) = job_state(&status.as_recorded());
                    let view = Arc::make_mut(view);
                    view.state = state;
                    view.reason = reason;
                    view.progress = *progress;
                }
            }
            (Command::PruneJobs { ids }, _) => {
                for id in ids {
                    if self.by_id.get(id).is_some_and(|v| v.state.is_finished()) {
                        self.remove(id);
                    }
                }
            }
            _ => {}
        }
    }
}

struct Inner {
    events: broadcast::Receiver<StateEvent>,
    /// The applied index the views were copied at: events at or below it are in them.
    copied_at: u64,
    /// False until the first copy, and after the index fell behind or a snapshot came.
    fresh: bool,
    views: Views,
}

/// The job records' views, kept beside the Raft loop. See the module's doc.
pub(crate) struct RecordIndex {
    raft: RaftHandle,
    inner: tokio::sync::Mutex<Inner>,
}

impl RecordIndex {
    /// An index of `raft`'s job records, kept drained by a task of its own.
    pub(crate) fn start(raft: RaftHandle) -> Arc<RecordIndex> {
        let index = Arc::new(RecordIndex {
            inner: tokio::sync::Mutex::new(Inner {
                events: raft.subscribe(),
                copied_at: 0,
                fresh: false,
                views: Views::default(),
            }),
            raft,
        });
        let weak = Arc::downgrade(&index);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DRAIN_EVERY).await;
                let Some(index) = weak.upgrade() else { return };
                drop(index.synced().await);
            }
        });
        index
    }

    /// The views, with every event already applied on this node followed.
    async fn synced(&self) -> tokio::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().await;
        loop {
            if inner.fresh {
                match inner.events.try_recv() {
                    Ok(StateEvent::Applied {
                        index,
                        command,
                        result: Ok(outcome),
                    }) if index > inner.copied_at => inner.views.follow(&command, &outcome),
                    Ok(StateEvent::Restored { .. }) | Err(TryRecvError::Lagged(_)) => {
                        inner.fresh = false;
                    }
                    Ok(_) => {}
                    Err(TryRecvError::Empty | TryRecvError::Closed) => return inner,
                }
                continue;
            }
            // Subscribe first, then copy: an event applied after the copy is in the channel,
            // one applied before it is skipped by its index.
            inner.events = self.raft.subscribe();
            let copy = self
                .raft
                .read_local_at(|applied, s| {
                    let views: Vec<JobView> = s
                        .jobs
                        .iter()
                        .map(|(id, j)| record_status_view(id, j))
                        .collect();
                    (applied, views)
                })
                .await;
            let Ok((applied, views)) = copy else {
                // The loop has stopped: nothing will change any more.
                return inner;
            };
            inner.views = Views::default();
            for view in views {
                inner.views.insert(view);
            }
            inner.copied_at = applied;
            inner.fresh = true;
        }
    }

    /// The views of the newest `limit` records, of `owner`'s jobs only unless `None`.
    pub(crate) async fn newest(&self, owner: Option<&str>, limit: usize) -> Vec<JobView> {
        let inner = self.synced().await;
        let views = &inner.views;
        let keys = match owner {
            None => Some(&views.newest),
            Some(owner) => views.by_owner.get(owner),
        };
        keys.into_iter()
            .flat_map(|k| k.iter().rev())
            .take(limit)
            .filter_map(|(_, id)| views.by_id.get(id).map(|v| JobView::clone(v)))
            .collect()
    }

    /// One record's view (without its result).
    pub(crate) async fn get(&self, id: &str) -> Option<Arc<JobView>> {
        self.synced().await.views.by_id.get(id).cloned()
    }

    /// Every record's view.
    pub(crate) async fn all(&self) -> Vec<Arc<JobView>> {
        self.synced().await.views.by_id.values().cloned().collect()
    }
}
