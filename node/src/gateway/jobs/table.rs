//! Jobs this node runs, and their records in the control plane.
//!
//! Every accepted job has a [`LocalJob`] here while it runs and for a while after, so `status`
//! and `subscribe` on this node see it at once, with its live events. Recorded jobs also have
//! a record in the control plane, written in order by one [`Recorder`] per job, so that every
//! node sees their status, also after this node has died.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arbor_scheduler::state::{Job, JobStatus};
use arbor_scheduler::{Command, ProposeError, RaftHandle};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::NodeId;
use arbor_proto::JobId;
use arbor_proto::gateway::{JobState, JobView, ServerMsg};

/// How many finished jobs this node remembers (beyond those the control plane records).
const FINISHED_KEPT: usize = 10_000;
/// Events buffered for each watcher of a job before it starts losing them.
const WATCHER_BUFFER: usize = 1024;
/// Recorded results larger than this are replaced by a note: the control plane holds status,
/// not bulk data (the submitter received the whole result).
pub use arbor_scheduler::state::jobs::MAX_RECORDED_RESULT;

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh job id: `j` and 16 hex digits (random: unique across nodes and restarts).
pub fn new_job_id() -> JobId {
    format!("j{:016x}", rand::random::<u64>())
}

/// What a job looks like now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: JobState,
    pub reason: Option<String>,
    pub progress: f32,
    pub result: Option<Value>,
}

/// A job this node accepted.
#[derive(Debug)]
pub struct LocalJob {
    pub id: JobId,
    pub kind: &'static str,
    pub owner: String,
    pub node: NodeId,
    pub submitted_ms: u64,
    pub recorded: bool,
    /// Its record was not taken in time and the submitter was told so: a record that
    /// commits later is this node's to fail.
    unrecorded: std::sync::atomic::AtomicBool,
    now: Mutex<Snapshot>,
    /// Events for watchers other than the submitter (who gets them through its connection);
    /// made by the first watcher, since most jobs never have one and the buffer is large.
    events: std::sync::OnceLock<broadcast::Sender<ServerMsg>>,
    cancel: watch::Sender<bool>,
}

impl LocalJob {
    pub fn new(
        id: JobId,
        kind: &'static str,
        owner: String,
        node: NodeId,
        recorded: bool,
    ) -> LocalJob {
        LocalJob {
            id,
            kind,
            owner,
            node,
            submitted_ms: now_ms(),
            recorded,
            unrecorded: std::sync::atomic::AtomicBool::new(false),
            now: Mutex::new(Snapshot {
                state: JobState::Queued,
                reason: None,
                progress: 0.0,
                result: None,
            }),
            events: std::sync::OnceLock::new(),
            cancel: watch::channel(false).0,
        }
    }

    /// Marks that its record was given up on (see `unrecorded`).
    pub fn give_up_record(&self) {
        self.unrecorded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether its record was given up on.
    pub fn record_given_up(&self) -> bool {
        self.unrecorded.load(std::sync::atomic::Ordering::Acquire)
    }

    fn now(&self) -> MutexGuard<'_, Snapshot> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.now().clone()
    }

    pub fn view(&self) -> JobView {
        let s = self.snapshot();
        JobView {
            id: self.id.clone(),
            kind: self.kind.into(),
            state: s.state,
            reason: s.reason,
            progress: s.progress,
            node: self.node,
            owner: self.owner.clone(),
            submitted_ms: self.submitted_ms,
            recorded: self.recorded,
            result: s.result,
        }
    }

    /// Changes the snapshot; returns false (and changes nothing) once the job has finished.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) -> bool {
        let mut now = self.now();
        if now.state.is_finished() {
            return false;
        }
        f(&mut now);
        true
    }

    /// Hands an event to this job's watchers.
    pub fn publish(&self, msg: &ServerMsg) {
        if let Some(events) = self.events.get()
            && events.receiver_count() > 0
        {
            let _ = events.send(msg.clone());
        }
    }

    /// The events from now on.
    pub fn watch(&self) -> broadcast::Receiver<ServerMsg> {
        self.events
            .get_or_init(|| broadcast::channel(WATCHER_BUFFER).0)
            .subscribe()
    }

    /// Asks the job to stop; true if it was still running and had not been asked before. A
    /// second cancel while the job winds down (its record may already say cancelled) is not
    /// a new cancellation.
    pub fn cancel(&self) -> bool {
        let running = !self.now().state.is_finished();
        let asked_before = self.cancel.send_replace(true);
        running && !asked_before
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves once the job is asked to stop.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// The jobs this node accepted: those running and the most recent finished ones.
#[derive(Debug, Default)]
pub struct JobTable {
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
struct TableInner {
    jobs: HashMap<JobId, Arc<LocalJob>>,
    /// Ids in the order they were added, to forget the oldest finished ones.
    order: VecDeque<JobId>,
}

impl JobTable {
    fn inner(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, job: Arc<LocalJob>) {
        let mut t = self.inner();
        t.order.push_back(job.id.clone());
        t.jobs.insert(job.id.clone(), job);
        // Forget the oldest finished jobs beyond the limit; running ones always stay.
        let mut scan = t.order.len().saturating_sub(FINISHED_KEPT);
        while scan > 0 {
            scan -= 1;
            let Some(id) = t.order.pop_front() else { break };
            let finished = t
                .jobs
                .get(&id)
                .is_none_or(|j| j.snapshot().state.is_finished());
            if finished {
                t.jobs.remove(&id);
            } else {
                t.order.push_back(id);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<LocalJob>> {
        self.inner().jobs.get(id).cloned()
    }

    /// The most recent `limit` jobs, newest first.
    pub fn recent(&self, limit: usize) -> Vec<JobView> {
        let t = self.inner();
        t.order
            .iter()
            .rev()
            .filter_map(|id| t.jobs.get(id))
            .take(limit)
            .map(|j| j.view())
            .collect()
    }

    /// Jobs of `owner` (a token id) not yet finished here.
    pub fn unfinished_of(&self, owner: &str) -> Vec<Arc<LocalJob>> {
        self.inner()
            .jobs
            .values()
            .filter(|j| j.owner == owner && !j.snapshot().state.is_finished())
            .cloned()
            .collect()
    }

    /// The token ids that have jobs not yet finished here.
    pub fn owners(&self) -> std::collections::BTreeSet<String> {
        self.inner()
            .jobs
            .values()
            .filter(|j| !j.snapshot().state.is_finished())
            .map(|j| j.owner.clone())
            .collect()
    }

    /// Recorded jobs still running here.
    pub fn running_recorded(&self) -> Vec<Arc<LocalJob>> {
        self.inner()
            .jobs
            .values()
            .filter(|j| j.recorded && !j.snapshot().state.is_finished())
            .cloned()
            .collect()
    }
}

/// A control-plane record as a [`JobView`], with its result.
pub fn record_view(id: &str, job: &Job) -> JobView {
    JobView {
        result: job
            .result
            .as_deref()
            .and_then(|r| serde_json::from_slice(r).ok()),
        ..record_status_view(id, job)
    }
}

/// A control-plane record as a [`JobView`] without its result (listings: no decoding).
pub fn record_status_view(id: &str, job: &Job) -> JobView {
    let (state, reason) = job_state(&job.status);
    JobView {
        id: id.to_owned(),
        kind: job.kind.clone(),
        state,
        reason,
        progress: job.progress,
        node: job.node,
        owner: job.owner.clone(),
        submitted_ms: job.submitted_ms,
        recorded: true,
        result: None,
    }
}

/// A recorded status as the protocol's state and reason.
pub fn job_state(status: &JobStatus) -> (JobState, Option<String>) {
    match status {
        JobStatus::Queued => (JobState::Queued, None),
        JobStatus::Running => (JobState::Running, None),
        JobStatus::Succeeded => (JobState::Succeeded, None),
        JobStatus::Failed { reason } => (JobState::Failed, Some(reason.clone())),
        JobStatus::Cancelled => (JobState::Cancelled, None),
    }
}

/// The control plane's status for a snapshot.
pub fn record_status(s: &Snapshot) -> JobStatus {
    match s.state {
        JobState::Queued => JobStatus::Queued,
        JobState::Running => JobStatus::Running,
        JobState::Succeeded => JobStatus::Succeeded,
        JobState::Failed => JobStatus::Failed {
            reason: s.reason.clone().unwrap_or_default(),
        },
        JobState::Cancelled => JobStatus::Cancelled,
    }
}

/// Writes one job's record changes to the control plane in order, skipping to the newest
/// when several wait (progress updates are only ever superseded), and always writing the last.
///
/// The last change (a finished state) is a durable intent: it is retried until the control
/// plane takes it or refuses it, however long an election storm lasts, so a record never
/// stays `running` for a job that ended. A refusal means the record was finished elsewhere
/// (the leader failed the job while this node was cut off, or it was cancelled from another
/// node): [`Recorder::finish`] then says what the record holds, so the submitter is told the
/// same as everyone else.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Snapshot>,
    done: tokio::task::JoinHandle<Result<(), JobStatus>>,
}

impl Recorder {
    pub fn start(raft: RaftHandle, id: JobId) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Snapshot>();
        let done = tokio::spawn(async move {
            let mut outcome = Ok(());
            while let Some(mut s) = rx.recv().await {
                while let Ok(newer) = rx.try_recv() {
                    s = newer;
                }
                let result = s.result.as_ref().map(|r| {
                    let bytes = serde_json::to_vec(r).unwrap_or_default();
                    if bytes.len() > MAX_RECORDED_RESULT {
                        serde_json::to_vec(&serde_json::json!({
                            "truncated": true,
                            "bytes": bytes.len(),
                        }))
                        .unwrap_or_default()
                    } else {
                        bytes
                    }
                });
                let status = record_status(&s);
                let last = status.is_finished();
                let command = Command::UpdateJob {
                    id: id.clone(),
                    status,
                    progress: s.progress.clamp(0.0, 1.0),
                    result,
                };
                outcome = loop {
                    match propose_retrying(&raft, command.clone()).await {
                        Ok(()) => break Ok(()),
                        Err(ProposeError::Rejected(_)) => {
                            // Finished elsewhere: what does the record say?
                            let key = id.clone();
                            let recorded = raft
                                .read_local(move |st| st.jobs.get(&key).map(|j| j.status.clone()))
                                .await
                                .ok()
                                .flatten();
                            break match recorded {
                                Some(status) if status.is_finished() => Err(status),
                                _ => Ok(()),
                            };
                        }
                        Err(ProposeError::Stopped) => break Ok(()),
                        Err(e) if last => {
                            tracing::warn!(job = %id, "the job's last record is not written yet ({e}); retrying");
                        }
                        Err(e) => {
                            tracing::debug!(job = %id, "job record not updated: {e}");
                            break Ok(());
                        }
                    }
                };
            }
            outcome
        });
        Recorder { tx, done }
    }

    /// Another handle for handing over changes (progress, from inside the job).
    pub fn sender(&self) -> mpsc::UnboundedSender<Snapshot> {
        self.tx.clone()
    }

    pub fn record(&self, s: Snapshot) {
        let _ = self.tx.send(s);
    }

    /// Waits until every change handed over is written; `Err` with the recorded status when
    /// the record had been finished elsewhere and refused this node's end.
    pub async fn finish(self) -> Result<(), JobStatus> {
        drop(self.tx);
        self.done.await.unwrap_or(Ok(()))
    }
}

/// Proposes, retrying for a few seconds while there is no leader (an election).
pub async fn propose_retrying(raft: &RaftHandle, command: Command) -> Result<(), ProposeError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match raft.propose(command.clone()).await {
            Ok(_) => return Ok(()),
            Err(e @ (ProposeError::Rejected(_) | ProposeError::Stopped)) => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_jobs_are_forgotten_oldest_first_running_ones_never() {
        let table = JobTable::default();
        let running = Arc::new(LocalJob::new("run".into(), "ingest", "t".into(), 1, true));
        table.insert(running.clone());
        for i in 0..FINISHED_KEPT + 5 {
            let j = Arc::new(LocalJob::new(
                format!("j{i}"),
                "status",
                "t".into(),
                1,
                false,
            ));
            j.update(|s| s.state = JobState::Succeeded);
            table.insert(j);
        }
        assert!(table.get("run").is_some());
        assert!(table.get("j0").is_none());
        assert!(table.get(&format!("j{}", FINISHED_KEPT + 4)).is_some());
        assert_eq!(table.recent(2)[0].id, format!("j{}", FINISHED_KEPT + 4));
    }

    #[test]
    fn a_finished_job_does_not_change() {
        let j = LocalJob::new("j".into(), "query", "t".into(), 1, false);
        assert!(j.update(|s| s.state = JobState::Cancelled));
        assert!(!j.update(|s| s.state = JobState::Succeeded));
        assert_eq!(j.snapshot().state, JobState::Cancelled);
        assert!(
            !j.cancel(),
            "cancelling a finished job reports it was not running"
        );
    }

    #[test]
    fn a_second_cancel_while_the_job_winds_down_is_not_a_new_one() {
        let j = LocalJob::new("j".into(), "call", "t".into(), 1, true);
        j.update(|s| s.state = JobState::Running);
        assert!(j.cancel(), "the first cancel stops a running job");
        assert_eq!(
            j.snapshot().state,
            JobState::Running,
            "it has not ended yet"
        );
        assert!(
            !j.cancel(),
            "a second cancel before the job has ended is answered as finished, not cancelled again"
        );
        assert!(j.is_cancelled());
    }
}
