//! A job's life on the node that accepted it: run, recorded in the control plane in order,
//! followed from any node through its record; and the janitor that fails orphaned records and
//! prunes finished ones. [`table`] holds the jobs a node runs and their recorder.

mod index;
mod table;

pub(crate) use index::RecordIndex;
pub use table::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arbor_scheduler::state::{JobStatus, Liveness};
use arbor_scheduler::{Command, RaftHandle};
use arbor_scheduler::{ProposeError, Rejection};

use crate::gateway::kinds::{Emit, JobFailure, execute};
use crate::gateway::listener::*;
use crate::gateway::session::{error, not_found};
use arbor_proto::gateway::{JobSpec, JobState, JobView, ServerMsg};
use arbor_proto::{ErrorCode, JobId, Role};

/// A job's place in the in-flight limits; released when dropped.
pub(crate) struct InFlight {
    pub(crate) connection: Arc<AtomicUsize>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) token: String,
}

impl InFlight {
    pub(crate) fn enter(
        connection: &Arc<AtomicUsize>,
        shared: &Arc<Shared>,
        token: &str,
        per_connection: usize,
        per_token: usize,
    ) -> Option<InFlight> {
        if connection.load(Ordering::Relaxed) >= per_connection {
            return None;
        }
        {
            let mut counts = shared
                .per_token
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = counts.entry(token.to_owned()).or_default();
            if *n >= per_token {
                return None;
            }
            *n += 1;
        }
        connection.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            connection: connection.clone(),
            shared: shared.clone(),
            token: token.to_owned(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection.fetch_sub(1, Ordering::Relaxed);
        let mut counts = self
            .shared
            .per_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.token);
            }
        }
    }
}

/// A job's arguments as its control-plane record keeps them. An ingest's documents are left
/// out (their count and ids' range stay): the record is replicated to every node and kept in
/// the state, and a bulk load's documents there cost every node as much memory as the data
/// (100,000 rows with vectors took 4-6 GB on each node) and throttled the load to the
/// consensus log's pace.
pub fn recorded_spec(spec: &JobSpec) -> Vec<u8> {
    // Any other job's arguments are kept whole only when small: a prompt or a call's payload
    // may be tens of KB, and every record is on every node (the review's 12 prompts of 3 MB
    // took raft.redb from 1.6 to 80 MB).
    const WHOLE: usize = 4096;
    let value = match spec {
        JobSpec::Ingest(i) => serde_json::json!({
            "kind": "ingest",
            "collection": i.collection,
            "documents": i.documents.len(),
            "first_id": i.documents.first().map(|d| d.id.as_str()),
            "last_id": i.documents.last().map(|d| d.id.as_str()),
        }),
        other => serde_json::to_value(other).unwrap_or_default(),
    };
    let whole = serde_json::to_vec(&value).unwrap_or_default();
    if whole.len() <= WHOLE {
        return whole;
    }
    let text = String::from_utf8_lossy(&whole);
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|i| *i <= 512)
        .last()
        .unwrap_or(0);
    let summary = serde_json::json!({
        "kind": spec.kind(),
        "bytes": whole.len(),
        "start": &text[..cut],
    });
    serde_json::to_vec(&summary).unwrap_or_default()
}

/// Runs one accepted job: records it, runs it, reports its end.
pub(crate) async fn run_job(
    shared: Arc<Shared>,
    job: Arc<LocalJob>,
    spec: JobSpec,
    reference: Option<String>,
    owner: Outbox,
    slot: InFlight,
) {
    let env = &shared.env;
    let started = std::time::Instant::now();
    let send = |msg: ServerMsg| {
        job.publish(&msg);
        let _ = owner.send(Outgoing::Msg(msg));
    };
    if job.recorded {
        let command = Command::SubmitJob {
            id: job.id.clone(),
            kind: job.kind.into(),
            spec: recorded_spec(&spec),
            node: env.node,
            owner: job.owner.clone(),
            submitted_ms: job.submitted_ms,
        };
        if let Err(e) = propose_retrying(&env.raft, command).await {
            job.give_up_record();
            let message = format!("the control plane did not record the job: {e}");
            job.update(|s| {
                s.state = JobState::Failed;
                s.reason = Some(message.clone());
            });
            // A token (or the cluster) whose job records are full of running jobs is told
            // so; anything else the control plane said is a reason to retry.
            let code = match e {
                ProposeError::Rejected(Rejection::Quota(_)) => ErrorCode::Overloaded,
                _ => ErrorCode::Unavailable,
            };
            let _ = owner.send(Outgoing::Msg(error(reference, None, code, message, None)));
            return;
        }
    }
    let _ = owner.send(Outgoing::Msg(ServerMsg::Accepted {
        reference: reference.clone(),
        job: job.id.clone(),
        kind: job.kind.into(),
        node: env.node,
        recorded: job.recorded,
    }));
    let recorder = job
        .recorded
        .then(|| Recorder::start(env.raft.clone(), job.id.clone()));
    job.update(|s| s.state = JobState::Running);
    if let Some(r) = &recorder {
        r.record(job.snapshot());
    }
    send(ServerMsg::Event {
        job: job.id.clone(),
        state: JobState::Running,
        reason: None,
    });
    let last_record = Mutex::new(std::time::Instant::now());
    let progress_sink = recorder.as_ref().map(Recorder::sender);
    let progress_job = job.clone();
    let emit = Emit {
        job: job.clone(),
        owner: Some(owner.clone()),
        on_progress: Box::new(move |_| {
            let Some(sink) = &progress_sink else { return };
            let mut last = last_record.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() >= RECORD_PROGRESS_EVERY {
                *last = std::time::Instant::now();
                let _ = sink.send(progress_job.snapshot());
            }
        }),
    };
    let grace = if spec.stops_by_itself() {
        CANCEL_GRACE
    } else {
        Duration::ZERO
    };
    let outcome = {
        let work = execute(env, spec, &emit);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = job.cancelled() => {
                // Kinds that stream stop by themselves at their next step; others are dropped.
                tokio::time::timeout(grace, &mut work)
                    .await
                    .unwrap_or_else(|_| Err(JobFailure::new(ErrorCode::JobFailed, "cancelled")))
            }
        }
    };
    drop(emit);
    let (mut state, mut reason, mut data, mut failure) = match outcome {
        _ if job.is_cancelled() => (JobState::Cancelled, None, None, None),
        Ok(data) => (JobState::Succeeded, None, Some(data), None),
        Err(f) => (JobState::Failed, Some(f.message.clone()), None, Some(f)),
    };
    if let Some(r) = recorder {
        // The end is recorded before the submitter (or this node's status) hears of it: once
        // it does, every node's status shows the same. A record finished elsewhere (this node
        // was cut off and the job failed over there) wins: the submitter is told what
        // everyone else is.
        let mut last = job.snapshot();
        last.state = state;
        last.reason = reason.clone();
        last.result = data.clone();
        if state == JobState::Succeeded {
            last.progress = 1.0;
        }
        r.record(last);
        if let Err(recorded) = r.finish().await {
            let (s, why) = match recorded {
                JobStatus::Cancelled => (JobState::Cancelled, None),
                JobStatus::Failed { reason } => (JobState::Failed, Some(reason)),
                _ => (
                    JobState::Failed,
                    Some("the job's record ended otherwise".into()),
                ),
            };
            let message = format!(
                "the control plane recorded this job as {} ({}) before this node could record \
                 its end; its outcome here is not kept",
                match s {
                    JobState::Cancelled => "cancelled",
                    _ => "failed",
                },
                why.as_deref().unwrap_or("no reason")
            );
            (state, reason, data) = (s, why.or(Some(message.clone())), None);
            failure = Some(JobFailure::new(ErrorCode::JobFailed, message));
        }
    }
    job.update(|s| {
        s.state = state;
        s.reason = reason.clone();
        s.result = data.clone();
        if state == JobState::Succeeded {
            s.progress = 1.0;
        }
    });
    let end = match state {
        JobState::Succeeded => "succeeded",
        JobState::Cancelled => "cancelled",
        _ => "failed",
    };
    crate::http::metrics::job_finished(job.kind, end, started.elapsed());
    if let Some(data) = data {
        send(ServerMsg::Result {
            job: job.id.clone(),
            data,
            last: true,
        });
    }
    if let Some(f) = failure {
        let _ = owner.send(Outgoing::Msg(error(
            reference,
            Some(job.id.clone()),
            f.code,
            f.message,
            f.field,
        )));
    }
    drop(slot);
    send(ServerMsg::Event {
        job: job.id.clone(),
        state,
        reason,
    });
}

/// Streams a job running on another node from its record until it finishes: its progress
/// and state from the record index (off the Raft loop), its result read once at the end.
pub(crate) async fn watch_record(
    raft: RaftHandle,
    records: Arc<RecordIndex>,
    first: JobView,
    tx: Outbox,
) {
    let id = first.id.clone();
    let send = |m: ServerMsg| tx.send(Outgoing::Msg(m)).is_ok();
    let mut last: Option<(JobState, f32)> = None;
    let mut view = Some(first);
    loop {
        let Some(mut v) = view.take() else {
            let _ = send(not_found(&id));
            return;
        };
        if last.is_none_or(|(_, p)| p != v.progress) && !v.state.is_finished() {
            let done = (v.progress * 1000.0).round() as u64;
            if !send(ServerMsg::Progress {
                job: id.clone(),
                done,
                total: 1000,
                unit: "permille".into(),
            }) {
                return;
            }
        }
        if last.is_none_or(|(s, _)| s != v.state) || v.state.is_finished() {
            if v.state.is_finished() && v.result.is_none() {
                let key = id.clone();
                v.result = raft
                    .read_local(move |s| s.jobs.get(&key).map(|j| record_view(&key, j).result))
                    .await
                    .ok()
                    .flatten()
                    .flatten();
            }
            if v.state.is_finished()
                && let Some(data) = v.result.clone()
            {
                let _ = send(ServerMsg::Result {
                    job: id.clone(),
                    data,
                    last: true,
                });
            }
            if !send(ServerMsg::Event {
                job: id.clone(),
                state: v.state,
                reason: v.reason.clone(),
            }) || v.state.is_finished()
            {
                return;
            }
        }
        last = Some((v.state, v.progress));
        tokio::time::sleep(REMOTE_POLL).await;
        view = records.get(&id).await.map(|v| JobView::clone(&v));
    }
}

/// Housekeeping of job records: stops local jobs cancelled from another node (every 250 ms);
/// fails recorded jobs whose node died or restarted, and prunes old finished records (the
/// leader, every 2 s).
/// Cancels the jobs of a token once it is revoked (the tokens file changed and no longer holds
/// it): a revoked token's running job must not go on streaming its results.
pub(crate) async fn revoker(shared: Arc<Shared>) {
    let mut changes = shared.tokens.changes();
    while changes.changed().await.is_ok() {
        for owner in shared.jobs.owners() {
            if shared.tokens.still_valid(&owner, Role::Reader) {
                continue;
            }
            for job in shared.jobs.unfinished_of(&owner) {
                tracing::info!(job = %job.id, token = %owner, "job cancelled: its token was revoked");
                job.cancel();
            }
        }
    }
}

pub(crate) async fn janitor(shared: Arc<Shared>) {
    let raft = shared.env.raft.clone();
    let me = shared.env.node;
    let mut tick = 0u64;
    // While this node leads: when it first saw each finished record.
    let mut seen_finished: HashMap<JobId, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tick += 1;
        let running = shared.jobs.running_recorded();
        if !running.is_empty() {
            let ids: Vec<JobId> = running.iter().map(|j| j.id.clone()).collect();
            let finished: Vec<bool> = raft
                .read_local(move |s| {
                    ids.iter()
                        .map(|id| s.jobs.get(id).is_some_and(|j| j.status.is_finished()))
                        .collect()
                })
                .await
                .unwrap_or_default();
            for (job, done) in running.iter().zip(finished) {
                if done {
                    tracing::info!(job = %job.id, "job cancelled through another node");
                    job.cancel();
                }
            }
        }
        if !tick.is_multiple_of(8) {
            continue;
        }
        let leader = raft.status().await.ok().and_then(|s| s.leader) == Some(me);
        if !leader {
            seen_finished.clear();
        }
        let started = shared.started_ms;
        let local: std::collections::HashSet<JobId> = shared
            .jobs
            .running_recorded()
            .into_iter()
            .map(|j| j.id.clone())
            .collect();
        // Node liveness from the state (a few entries); the records from the index.
        let liveness = raft
            .read_local(|s| {
                s.nodes
                    .iter()
                    .map(|(id, n)| (*id, n.liveness))
                    .collect::<HashMap<_, _>>()
            })
            .await;
        let Ok(liveness) = liveness else { continue };
        let mut fail = Vec::new();
        let mut finished: Vec<(u64, JobId)> = Vec::new();
        for j in shared.records.all().await {
            if j.state.is_finished() {
                finished.push((j.submitted_ms, j.id.clone()));
                continue;
            }
            if j.node == me && !local.contains(&j.id) {
                // Not running here: from before a restart, or recorded after this node gave
                // up waiting for the record (and told the client so).
                let why = if j.submitted_ms < started {
                    format!("node {me} restarted while running it")
                } else {
                    format!("node {me} was not running it (its record came late)")
                };
                fail.push((j.id.clone(), why));
            } else if leader && liveness.get(&j.node).is_none_or(|l| *l == Liveness::Down) {
                fail.push((
                    j.id.clone(),
                    format!("node {} went down while running it", j.node),
                ));
            }
        }
        if !leader {
            finished.clear();
        }
        let prune = records_to_prune(finished, &mut seen_finished, Instant::now());
        // Only a record whose job is not here (from before a restart) or whose record this
        // node gave up on is failed: a job created after `local` was taken, or one that just
        // ended and is writing its last record, is still this node's to finish.
        let fail = fail
            .into_iter()
            .filter(|(id, _)| shared.jobs.get(id).is_none_or(|j| j.record_given_up()));
        for (id, reason) in fail {
            tracing::warn!(job = %id, "{reason}; marking it failed");
            let _ = raft
                .propose(Command::UpdateJob {
                    id,
                    status: JobStatus::Failed { reason },
                    progress: 0.0,
                    result: None,
                })
                .await;
        }
        if !prune.is_empty() {
            let _ = raft.propose(Command::PruneJobs { ids: prune }).await;
        }
    }
}

/// The finished records (`(submitted_ms, id)`) the leader prunes now, at most 1000: those it
/// has seen finished (`seen`, kept across calls) for longer than [`RECORD_RETENTION`], and the
/// earliest submitted beyond [`RECORDS_KEPT`]. Age is measured on the leader's monotonic
/// clock from when it first saw the record finished, never from a submitter's wall clock: a
/// node whose clock runs an hour slow would otherwise have its jobs pruned as they end. A new
/// leader starts counting afresh, so a record may outlive the retention by one more.
pub(crate) fn records_to_prune(
    mut finished: Vec<(u64, JobId)>,
    seen: &mut HashMap<JobId, Instant>,
    now: Instant,
) -> Vec<JobId> {
    let present: std::collections::HashSet<&JobId> = finished.iter().map(|(_, id)| id).collect();
    seen.retain(|id, _| present.contains(id));
    finished.sort();
    let excess = finished.len().saturating_sub(RECORDS_KEPT);
    let mut prune = Vec::new();
    for (i, (_, id)) in finished.into_iter().enumerate() {
        let first_seen = *seen.entry(id.clone()).or_insert(now);
        if i < excess || now.duration_since(first_seen) > RECORD_RETENTION {
            prune.push(id);
        }
        if prune.len() >= 1000 {
            break;
        }
    }
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_proto::gateway::ClientMsg;
    use arbor_proto::gateway::parse_client;

    #[test]
    fn records_are_pruned_by_how_long_the_leader_saw_them_finished() {
        let id = |s: &str| -> JobId { s.to_string() };
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        // "slow" was submitted by a node whose clock runs two hours behind: it stays.
        let finished = vec![(1_000, id("slow")), (9_000_000, id("fresh"))];
        assert!(records_to_prune(finished.clone(), &mut seen, t0).is_empty());
        let later = t0 + RECORD_RETENTION / 2;
        assert!(records_to_prune(finished.clone(), &mut seen, later).is_empty());
        // Past the retention, counted from when the leader first saw them finished.
        let past = t0 + RECORD_RETENTION + Duration::from_secs(1);
        let mut pruned = records_to_prune(finished, &mut seen, past);
        pruned.sort();
        assert_eq!(pruned, vec![id("fresh"), id("slow")]);
        // Records gone from the state are forgotten; beyond RECORDS_KEPT the earliest go.
        let many: Vec<(u64, JobId)> = (0..RECORDS_KEPT as u64 + 3)
            .map(|i| (i, id(&format!("j{i}"))))
            .collect();
        let pruned = records_to_prune(many, &mut seen, past);
        assert!(!seen.contains_key(&id("slow")));
        assert_eq!(pruned, vec![id("j0"), id("j1"), id("j2")]);
    }

    #[test]
    fn an_ingest_is_recorded_without_its_documents() {
        let job = |text: &str| match parse_client(&format!(r#"{{"type":"submit","job":{text}}}"#)) {
            Ok(ClientMsg::Submit { job, .. }) => job,
            other => panic!("{other:?}"),
        };
        let ingest = job(r#"{"kind":"ingest","collection":"c","documents":[
                {"id":"a","text":"first","vector":[0.5,0.25]},{"id":"b","text":"second"}]}"#);
        let recorded: serde_json::Value = serde_json::from_slice(&recorded_spec(&ingest)).unwrap();
        assert_eq!(
            recorded,
            serde_json::json!({"kind": "ingest", "collection": "c", "documents": 2,
                               "first_id": "a", "last_id": "b"})
        );
        let query = job(r#"{"kind":"query","collection":"c","text":"t","k":3}"#);
        let recorded: serde_json::Value = serde_json::from_slice(&recorded_spec(&query)).unwrap();
        assert_eq!(recorded, serde_json::to_value(&query).unwrap());
        // A large prompt is recorded as its size and its start, never whole.
        let prompt = "p".repeat(60_000);
        let generate = job(&format!(r#"{{"kind":"generate","prompt":"{prompt}"}}"#));
        let bytes = recorded_spec(&generate);
        assert!(bytes.len() < 1024, "{} bytes recorded", bytes.len());
        let recorded: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(recorded["kind"], "generate");
        assert!(recorded["bytes"].as_u64().unwrap() > 60_000);
    }
}
