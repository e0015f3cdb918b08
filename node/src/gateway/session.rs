//! A connection's session: authentication, then each request (submit, subscribe, status,
//! cancel, ping) checked and answered, with the jobs it started.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbor_scheduler::Command;
use arbor_scheduler::state::JobStatus;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::gateway::auth::Role;
use crate::gateway::jobs::*;
use crate::gateway::jobs::{LocalJob, new_job_id, propose_retrying, record_view};
use crate::gateway::kinds::validate;
use crate::gateway::listener::*;
use arbor_proto::gateway::{
    ClientMsg, JobSpec, JobState, JobView, PROTOCOL_VERSION, ServerMsg, parse_client,
};
use arbor_proto::{ErrorCode, JobId};

/// Who a connection authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub(crate) token_id: String,
    pub(crate) role: Role,
}

pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: Outbox,
    pub(crate) auth: Option<Auth>,
    pub(crate) failed_auths: u32,
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Subscriptions of this connection still following a job.
    pub(crate) subscriptions: Arc<AtomicUsize>,
    /// Its place among unauthenticated connections, passed at a good `auth`.
    pub(crate) gate: Arc<crate::gateway::pre_auth::Gate>,
}

/// Subscriptions one connection may have following jobs at once: each is a task, and one on a
/// job of another node polls its record (the review's 50,000 subscriptions on one
/// connection fanned a 3-event job out to 150,000 messages).
pub(crate) const MAX_SUBSCRIPTIONS: usize = 256;

/// One subscription's place, given back when its task ends.
struct Following(Arc<AtomicUsize>);

impl Following {
    fn enter(count: &Arc<AtomicUsize>) -> Option<Following> {
        let mut now = count.load(Ordering::Relaxed);
        loop {
            if now >= MAX_SUBSCRIPTIONS {
                return None;
            }
            match count.compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Following(count.clone())),
                Err(seen) => now = seen,
            }
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn error(
    reference: Option<String>,
    job: Option<JobId>,
    code: ErrorCode,
    message: impl Into<String>,
    field: Option<String>,
) -> ServerMsg {
    ServerMsg::Error {
        reference,
        job,
        code,
        message: message.into(),
        field,
    }
}

impl Session {
    fn send(&self, msg: ServerMsg) {
        let _ = self.tx.send(Outgoing::Msg(msg));
    }

    pub(crate) fn close(&self, code: CloseCode, reason: String) {
        // Close reasons must fit a control frame (125 bytes with the code).
        let mut reason = reason;
        if reason.len() > 120 {
            let mut cut = 120;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let _ = self.tx.send(Outgoing::Close(code, reason));
    }

    /// Counts a failed auth (or a request before auth); false once the connection is closed.
    fn failed_auth(&mut self) -> bool {
        self.failed_auths += 1;
        if self.failed_auths >= self.shared.settings.max_failed_auths {
            self.close(
                CloseCode::Policy,
                format!("{} failed authentication attempts", self.failed_auths),
            );
            return false;
        }
        true
    }

    /// Handles one text frame; false when the connection is to be closed.
    pub(crate) async fn on_text(&mut self, text: &str) -> bool {
        let limit = self.shared.settings.max_message_bytes;
        if text.len() > limit {
            self.send(error(
                None,
                None,
                ErrorCode::MessageTooLarge,
                format!(
                    "the message has {} bytes; the limit is {limit} (gateway.max_message_bytes)",
                    text.len()
                ),
                None,
            ));
            return self.auth.is_some() || self.failed_auth();
        }
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err(e) => {
                self.send(e.to_msg());
                return self.auth.is_some() || self.failed_auth();
            }
        };
        let Some(auth) = self.auth.clone() else {
            return self.authenticate(msg);
        };
        if self.revoked() {
            return false;
        }
        match msg {
            ClientMsg::Auth { .. } => self.send(error(
                None,
                None,
                ErrorCode::AlreadyAuthenticated,
                "this connection is already authenticated; open another one for another token",
                None,
            )),
            ClientMsg::Submit {
                reference,
                record,
                job,
            } => self.submit(&auth, reference, record, job),
            ClientMsg::Subscribe { job } => self.subscribe(&auth, job).await,
            ClientMsg::Status { job, limit } => self.status(&auth, job, limit).await,
            ClientMsg::Cancel { job } => self.cancel(&auth, job).await,
            ClientMsg::Ping { nonce } => self.send(ServerMsg::Pong { nonce }),
        }
        true
    }

    /// Whether this connection's token was revoked (or lost its role); if so the client is
    /// told, and the connection closes.
    pub(crate) fn revoked(&self) -> bool {
        let Some(auth) = &self.auth else {
            return false;
        };
        if self.shared.tokens.still_valid(&auth.token_id, auth.role) {
            return false;
        }
        self.send(error(
            None,
            None,
            ErrorCode::AuthFailed,
            format!("token {} was revoked", auth.token_id),
            None,
        ));
        self.close(CloseCode::Policy, "token revoked".into());
        true
    }

    fn authenticate(&mut self, msg: ClientMsg) -> bool {
        let ClientMsg::Auth { v, token } = msg else {
            self.send(error(
                None,
                None,
                ErrorCode::NotAuthenticated,
                r#"authenticate first: {"type":"auth","v":1,"token":"..."}"#,
                None,
            ));
            return self.failed_auth();
        };
        if v != PROTOCOL_VERSION {
            self.send(error(
                None,
                None,
                ErrorCode::UnsupportedVersion,
                format!("this gateway speaks protocol version {PROTOCOL_VERSION}, not {v}"),
                Some("v".into()),
            ));
            self.close(CloseCode::Policy, "unsupported protocol version".into());
            return false;
        }
        let tokens = &self.shared.tokens;
        // A token created or revoked a moment ago counts at once, not at the watcher's next
        // look: one stat of the file per authentication (a read only when it changed). An
        // unreadable file keeps the tokens already loaded (the watcher logs why).
        let _ = tokens.reload_if_changed();
        match tokens.verify(&token) {
            Ok(info) => {
                self.send(ServerMsg::Authenticated {
                    v: PROTOCOL_VERSION,
                    node: self.shared.env.node,
                    role: info.role,
                    token_id: info.id.clone(),
                    limits: self.shared.limits(),
                });
                self.gate.pass();
                self.auth = Some(Auth {
                    token_id: info.id,
                    role: info.role,
                });
                true
            }
            Err(why) => {
                self.send(error(
                    None,
                    None,
                    ErrorCode::AuthFailed,
                    why.to_string(),
                    Some("token".into()),
                ));
                self.failed_auth()
            }
        }
    }

    fn submit(&self, auth: &Auth, reference: Option<String>, record: bool, spec: JobSpec) {
        let shared = &self.shared;
        let refuse = |code, message: String, field: Option<String>| {
            self.send(error(reference.clone(), None, code, message, field));
        };
        let needed = spec.required_role();
        if !auth.role.allows(needed) {
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "a {} token may not submit {} jobs; they need a {needed} token",
                    auth.role,
                    spec.kind()
                ),
                Some("job.kind".into()),
            );
        }
        if let Err(f) = validate(&spec) {
            return refuse(f.code, f.message, f.field);
        }
        // A record is a write to the replicated state on every node: a reader's status
        // listings must not be able to force them (nor prune others' records by their number).
        if record && !auth.role.allows(Role::User) {
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "a {} token may not ask for \"record\": true; recording a job needs a user \
                     or admin token",
                    auth.role
                ),
                Some("record".into()),
            );
        }
        let Some(slot) = InFlight::enter(
            &self.in_flight,
            shared,
            &auth.token_id,
            shared.settings.max_jobs_per_connection,
            shared.settings.max_jobs_per_token,
        ) else {
            return refuse(
                ErrorCode::Overloaded,
                format!(
                    "too many jobs in flight: at most {} per connection \
                     (gateway.max_jobs_per_connection) and {} per token \
                     (gateway.max_jobs_per_token); wait for one to finish",
                    shared.settings.max_jobs_per_connection, shared.settings.max_jobs_per_token
                ),
                None,
            );
        };
        let recorded = record || spec.recorded_by_default();
        let job = Arc::new(LocalJob::new(
            new_job_id(),
            spec.kind(),
            auth.token_id.clone(),
            shared.env.node,
            recorded,
        ));
        shared.jobs.insert(job.clone());
        tokio::spawn(run_job(
            shared.clone(),
            job,
            spec,
            reference,
            self.tx.clone(),
            slot,
        ));
    }

    async fn subscribe(&self, auth: &Auth, id: JobId) {
        if let Some(job) = self.shared.jobs.get(&id) {
            if !may_see(auth, &job.owner) {
                return self.send(not_found(&id));
            }
            let mut events = job.watch();
            let now = job.snapshot();
            if now.state.is_finished() {
                if let Some(data) = now.result {
                    self.send(ServerMsg::Result {
                        job: id.clone(),
                        data,
                        last: true,
                    });
                }
                self.send(ServerMsg::Event {
                    job: id,
                    state: now.state,
                    reason: now.reason,
                });
                return;
            }
            let Some(place) = Following::enter(&self.subscriptions) else {
                return self.send(too_many_subscriptions(&id));
            };
            self.send(ServerMsg::Event {
                job: id.clone(),
                state: now.state,
                reason: now.reason.clone(),
            });
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _place = place;
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match events.recv().await {
                        Ok(msg) => {
                            let last = matches!(&msg, ServerMsg::Event { state, .. } if state.is_finished());
                            if tx.send(Outgoing::Msg(msg)).is_err() || last {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            let _ = tx.send(Outgoing::Msg(error(
                                None,
                                Some(job.id.clone()),
                                ErrorCode::Overloaded,
                                format!("this subscriber fell behind and missed {n} events"),
                                None,
                            )));
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            });
            return;
        }
        match self.record(&id).await {
            Some(view) if may_see(auth, &view.owner) => {
                let Some(place) = Following::enter(&self.subscriptions) else {
                    return self.send(too_many_subscriptions(&id));
                };
                let (raft, tx) = (self.shared.env.raft.clone(), self.tx.clone());
                let records = self.shared.records.clone();
                tokio::spawn(async move {
                    let _place = place;
                    watch_record(raft, records, view, tx).await;
                });
            }
            _ => self.send(not_found(&id)),
        }
    }

    /// A job's record in the control plane, as this node has applied it.
    async fn record(&self, id: &str) -> Option<JobView> {
        let id = id.to_owned();
        self.read_records(move |s| s.jobs.get(&id).map(|j| record_view(&id, j)))
            .await
            .flatten()
    }

    /// Reads job records as the leader has them (a linearizable read: a client that saw its
    /// job end sees its record, whichever node it asks), or from this node's own state when no
    /// quorum answers (better late records than none).
    async fn read_records<R, F>(&self, f: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(&arbor_scheduler::state::ClusterState) -> R + Clone + Send + 'static,
    {
        let raft = &self.shared.env.raft;
        match raft.read(f.clone()).await {
            Ok(r) => Some(r),
            Err(_) => raft.read_local(f).await.ok(),
        }
    }

    async fn status(&self, auth: &Auth, job: Option<JobId>, limit: Option<u32>) {
        if let Some(id) = job {
            let view = match self.shared.jobs.get(&id) {
                Some(j) => Some(j.view()),
                None => self.record(&id).await,
            };
            match view {
                Some(job) if may_see(auth, &job.owner) => self.send(ServerMsg::Job { job }),
                // Another token's job is as unknown as a job that never was.
                _ => self.send(not_found(&id)),
            }
            return;
        }
        let limit = limit.unwrap_or(DEFAULT_LIST).clamp(1, 1000) as usize;
        let mut jobs = self.shared.jobs.recent(limit);
        jobs.retain(|j| may_see(auth, &j.owner));
        // A linearizable read first (a client that saw its job end sees its record, whichever
        // node it asks; without a quorum, this node's records will do), then the index: the
        // listing itself never runs on the Raft loop.
        let _ = self.shared.env.raft.read(|_| ()).await;
        let owner = (!auth.role.allows(Role::Admin)).then_some(auth.token_id.as_str());
        let records = self.shared.records.newest(owner, limit).await;
        for r in records {
            if !jobs.iter().any(|j| j.id == r.id) {
                jobs.push(r);
            }
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.submitted_ms));
        jobs.truncate(limit);
        // Results can be large; the list shows status only (`status` with a job has it).
        for j in &mut jobs {
            j.result = None;
        }
        self.send(ServerMsg::Jobs { jobs });
    }

    async fn cancel(&self, auth: &Auth, id: JobId) {
        let may = |owner: &str| owner == auth.token_id || auth.role.allows(Role::Admin);
        let cancelled = ServerMsg::Event {
            job: id.clone(),
            state: JobState::Cancelled,
            reason: None,
        };
        let finished = |state: JobState| {
            error(
                None,
                Some(id.clone()),
                ErrorCode::JobFinished,
                format!("job {id} already {}", state.as_str()),
                None,
            )
        };
        let forbidden = || {
            error(
                None,
                Some(id.clone()),
                ErrorCode::Forbidden,
                format!(
                    "job {id} was submitted by another token; only it or an admin may cancel it"
                ),
                None,
            )
        };
        if let Some(job) = self.shared.jobs.get(&id) {
            if !may(&job.owner) {
                return self.send(forbidden());
            }
            if job.cancel() {
                self.send(cancelled);
            } else {
                // Finished, or already cancelled and winding down.
                let state = job.snapshot().state;
                self.send(finished(if state.is_finished() {
                    state
                } else {
                    JobState::Cancelled
                }));
            }
            return;
        }
        let Some(view) = self.record(&id).await else {
            return self.send(not_found(&id));
        };
        if !may(&view.owner) {
            return self.send(forbidden());
        }
        if view.state.is_finished() {
            return self.send(finished(view.state));
        }
        // The node running it sees the record change and stops the work.
        let command = Command::UpdateJob {
            id: id.clone(),
            status: JobStatus::Cancelled,
            progress: view.progress,
            result: None,
        };
        match propose_retrying(&self.shared.env.raft, command).await {
            Ok(()) => self.send(cancelled),
            Err(e) => self.send(error(
                None,
                Some(id),
                ErrorCode::Unavailable,
                format!("the cancel was not recorded: {e}"),
                None,
            )),
        }
    }
}

pub(crate) fn not_found(id: &str) -> ServerMsg {
    error(
        None,
        Some(id.to_owned()),
        ErrorCode::NotFound,
        format!(
            "no job {id:?} here or in the control plane (status, query, embed and listing jobs \
             are only known to the node that ran them unless submitted with \"record\": true)"
        ),
        Some("job".into()),
    )
}

/// Whether `auth` may see a job of `owner`: its own, or any job for an admin. Others' jobs
/// (their results: documents, answers, embeddings) are not a reader's or user's to see. Pure.
fn may_see(auth: &Auth, owner: &str) -> bool {
    owner == auth.token_id || auth.role.allows(Role::Admin)
}

fn too_many_subscriptions(id: &JobId) -> ServerMsg {
    error(
        None,
        Some(id.clone()),
        ErrorCode::Overloaded,
        format!(
            "this connection already follows {MAX_SUBSCRIPTIONS} jobs; wait for one to end, or \
             open another connection"
        ),
        None,
    )
}
