//! The gateway's listener and its connections.
//!
//! Each connection has a reader (this task: frames in, limits, auth, dispatch) and a writer
//! task (messages out, batched into one flush). Jobs run in tasks of their own and send their
//! events to the writer, so a slow job never holds up the connection's other requests.
//! Everything a client sends is checked before any work starts: size, JSON, type, fields,
//! authentication, role, and the number of jobs in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arbor_scheduler::state::{JobStatus, Liveness};
use arbor_scheduler::{Command, RaftHandle};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::jobs::{
    JobTable, LocalJob, Recorder, new_job_id, now_ms, propose_retrying, record_status_view,
    record_view,
};
use super::run::{Emit, Env, JobFailure, execute, summarize, validate};
use super::tokens::{Role, TokenStore};
use crate::config::{GatewaySection, NodeId};
use arbor_proto::gateway::{
    ClientMsg, JobSpec, JobState, JobView, Limits, PROTOCOL_VERSION, ServerMsg, encode,
    parse_client,
};
use arbor_proto::{ErrorCode, JobId};

/// A message for a connection's writer.
#[derive(Debug)]
pub enum Outgoing {
    Msg(ServerMsg),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

/// Finished recorded jobs are pruned from the control plane once the leader has seen them
/// finished for this long (by its own monotonic clock).
const RECORD_RETENTION: Duration = Duration::from_secs(3600);
/// At most this many finished jobs stay recorded.
const RECORDS_KEPT: usize = 10_000;
/// Jobs listed by `status` without a job, unless the client asks for another number.
const DEFAULT_LIST: u32 = 20;
/// How often a watcher of a job running on another node reads its record.
const REMOTE_POLL: Duration = Duration::from_millis(200);
/// After a cancel, how long a job may take to stop by itself before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// Progress is written to a job's record at most this often.
const RECORD_PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What a gateway needs to start.
pub struct GatewayArgs {
    pub node: NodeId,
    /// The cluster's name (the scope of its links).
    pub cluster: String,
    /// This node's link supervisor, for the cluster jobs.
    pub supervisor: ractor::ActorRef<crate::link::supervisor::SupervisorMsg>,
    /// The Raft address of every node in cluster.toml.
    pub raft_addrs: std::collections::BTreeMap<NodeId, String>,
    pub addr: SocketAddr,
    pub raft: RaftHandle,
    /// The pg scope of this cluster's replicas.
    pub scope: String,
    pub tokens: TokenStore,
    pub settings: GatewaySection,
}

/// A running gateway. Dropping it does not stop it: call [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// State every connection shares.
struct Shared {
    env: Env,
    tokens: TokenStore,
    settings: GatewaySection,
    jobs: JobTable,
    /// Unfinished jobs per token id.
    per_token: Mutex<HashMap<String, usize>>,
    /// When this gateway started: recorded jobs of this node from before it are orphans.
    started_ms: u64,
}

impl Shared {
    fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.settings.max_message_bytes,
            max_jobs_per_connection: self.settings.max_jobs_per_connection,
            max_jobs_per_token: self.settings.max_jobs_per_token,
        }
    }
}

impl Gateway {
    /// Listens on the node's gateway address and starts serving.
    pub async fn start(args: GatewayArgs) -> std::io::Result<Gateway> {
        let listener = TcpListener::bind(args.addr).await?;
        let addr = listener.local_addr()?;
        let (summary_tx, summary) = tokio::sync::watch::channel(Arc::new(Value::Null));
        let shared = Arc::new(Shared {
            env: Env {
                node: args.node,
                cluster: args.cluster,
                raft: args.raft.clone(),
                supervisor: args.supervisor,
                raft_addrs: args.raft_addrs,
                scope: args.scope,
                summary,
            },
            tokens: args.tokens.clone(),
            settings: args.settings,
            jobs: JobTable::default(),
            per_token: Mutex::default(),
            started_ms: now_ms(),
        });
        let tasks = vec![
            tokio::spawn(keep_summary(args.raft.clone(), args.node, summary_tx)),
            tokio::spawn(janitor(shared.clone())),
            args.tokens
                .spawn_watcher(super::tokens::DEFAULT_WATCH_INTERVAL),
            tokio::spawn(accept(listener, shared)),
        ];
        tracing::info!(node = args.node, %addr, "gateway listening");
        Ok(Gateway { addr, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and its background tasks (running jobs end with the
    /// process).
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let max = shared.settings.max_connections;
                if open.load(Ordering::Relaxed) >= max {
                    tokio::spawn(refuse_connection(shared.clone(), stream, max));
                    continue;
                }
                open.fetch_add(1, Ordering::Relaxed);
                let (shared, open) = (shared.clone(), open.clone());
                tokio::spawn(async move {
                    connection(shared, stream, peer).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                tracing::warn!("gateway accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers a connection over the limit: the handshake, then a close that says why (1013: try
/// again later, or another node).
async fn refuse_connection(shared: Arc<Shared>, stream: TcpStream, max: usize) {
    let handshake = tokio::time::timeout(
        shared.settings.auth_timeout,
        tokio_tungstenite::accept_async(stream),
    );
    if let Ok(Ok(mut ws)) = handshake.await {
        let frame = CloseFrame {
            code: CloseCode::Again,
            reason: format!("this node serves {max} connections (gateway.max_connections); try another node or later").into(),
        };
        let _ = ws.close(Some(frame)).await;
    }
}

/// Keeps the `status` job's answer fresh: recomputed after commits (at most every 50 ms) and
/// every second (leadership changes without a commit here).
async fn keep_summary(raft: RaftHandle, node: NodeId, tx: tokio::sync::watch::Sender<Arc<Value>>) {
    let mut events = raft.subscribe();
    loop {
        let leader = raft.status().await.ok().and_then(|s| s.leader);
        if let Ok(summary) = raft.read_local(move |s| summarize(s, node, leader)).await
            && let Ok(v) = serde_json::to_value(summary)
        {
            tx.send_replace(Arc::new(v));
        }
        tokio::select! {
            e = events.recv() => {
                if matches!(e, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One client connection, from handshake to close.
async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // Frames up to twice the limit are read and answered with an error; larger ones close
    // the connection (tungstenite stops reading them).
    let hard = shared.settings.max_message_bytes.saturating_mul(2);
    let config = WebSocketConfig::default()
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard));
    let handshake = tokio::time::timeout(
        shared.settings.auth_timeout,
        tokio_tungstenite::accept_async_with_config(stream, Some(config)),
    )
    .await;
    let ws = match handshake {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "websocket handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "websocket handshake timed out");
            return;
        }
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(out) = next.take() {
                match out {
                    Outgoing::Msg(m) => {
                        if sink.feed(Message::text(encode(&m))).await.is_err() {
                            return;
                        }
                    }
                    Outgoing::Close(code, reason) => {
                        let frame = CloseFrame {
                            code,
                            reason: reason.into(),
                        };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        let _ = sink.close().await;
                        return;
                    }
                }
                next = rx.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut session = Session {
        shared,
        tx,
        auth: None,
        failed_auths: 0,
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let deadline = tokio::time::Instant::now() + session.shared.settings.auth_timeout;
    loop {
        let frame = if session.auth.is_none() {
            match tokio::time::timeout_at(deadline, source.next()).await {
                Ok(f) => f,
                Err(_) => {
                    session.close(
                        CloseCode::Policy,
                        format!(
                            "no successful auth within {:?} (gateway.auth_timeout)",
                            session.shared.settings.auth_timeout
                        ),
                    );
                    break;
                }
            }
        } else {
            source.next().await
        };
        let keep_going = match frame {
            None | Some(Ok(Message::Close(_))) => false,
            Some(Ok(Message::Text(text))) => session.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                session.close(
                    CloseCode::Unsupported,
                    "binary frames are not part of the protocol; send JSON text frames (docs/protocol.md)".into(),
                );
                false
            }
            Some(Ok(_)) => true, // ping, pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(e))) => {
                session.close(
                    CloseCode::Size,
                    format!(
                        "message too large ({e}); the limit is {} bytes (gateway.max_message_bytes)",
                        session.shared.settings.max_message_bytes
                    ),
                );
                false
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, "websocket error: {e}");
                session.close(CloseCode::Protocol, format!("protocol violation: {e}"));
                false
            }
        };
        if !keep_going {
            break;
        }
    }
    drop(session);
    // The writer ends once every job of this connection has sent its last event.
    let _ = writer.await;
}

/// Who a connection authenticated as.
#[derive(Debug, Clone)]
struct Auth {
    token_id: String,
    role: Role,
}

struct Session {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    auth: Option<Auth>,
    failed_auths: u32,
    in_flight: Arc<AtomicUsize>,
}

fn error(
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

    fn close(&self, code: CloseCode, reason: String) {
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
    async fn on_text(&mut self, text: &str) -> bool {
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
        if !self.shared.tokens.still_valid(&auth.token_id, auth.role) {
            self.send(error(
                None,
                None,
                ErrorCode::AuthFailed,
                format!("token {} was revoked", auth.token_id),
                None,
            ));
            self.close(CloseCode::Policy, "token revoked".into());
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
            ClientMsg::Subscribe { job } => self.subscribe(job).await,
            ClientMsg::Status { job, limit } => self.status(job, limit).await,
            ClientMsg::Cancel { job } => self.cancel(&auth, job).await,
            ClientMsg::Ping { nonce } => self.send(ServerMsg::Pong { nonce }),
        }
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
        // A token created a moment ago works at once: look at the file again before refusing.
        let verified = tokens
            .verify(&token)
            .or_else(|e| match tokens.reload_if_changed() {
                Ok(true) => tokens.verify(&token),
                _ => Err(e),
            });
        match verified {
            Ok(info) => {
                self.send(ServerMsg::Authenticated {
                    v: PROTOCOL_VERSION,
                    node: self.shared.env.node,
                    role: info.role,
                    token_id: info.id.clone(),
                    limits: self.shared.limits(),
                });
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

    async fn subscribe(&self, id: JobId) {
        if let Some(job) = self.shared.jobs.get(&id) {
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
            self.send(ServerMsg::Event {
                job: id.clone(),
                state: now.state,
                reason: now.reason.clone(),
            });
            let tx = self.tx.clone();
            tokio::spawn(async move {
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
            Some(view) => {
                tokio::spawn(watch_record(
                    self.shared.env.raft.clone(),
                    view,
                    self.tx.clone(),
                ));
            }
            None => self.send(not_found(&id)),
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

    async fn status(&self, job: Option<JobId>, limit: Option<u32>) {
        if let Some(id) = job {
            let view = match self.shared.jobs.get(&id) {
                Some(j) => Some(j.view()),
                None => self.record(&id).await,
            };
            match view {
                Some(job) => self.send(ServerMsg::Job { job }),
                None => self.send(not_found(&id)),
            }
            return;
        }
        let limit = limit.unwrap_or(DEFAULT_LIST).clamp(1, 1000) as usize;
        let mut jobs = self.shared.jobs.recent(limit);
        let records = self
            .read_records(move |s| {
                let mut newest: Vec<(&String, &arbor_scheduler::state::Job)> =
                    s.jobs.iter().collect();
                newest.sort_by_key(|(_, j)| std::cmp::Reverse(j.submitted_ms));
                newest
                    .into_iter()
                    .take(limit)
                    .map(|(id, j)| record_status_view(id, j))
                    .collect::<Vec<JobView>>()
            })
            .await
            .unwrap_or_default();
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
                self.send(finished(job.snapshot().state));
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

fn not_found(id: &str) -> ServerMsg {
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

/// A job's place in the in-flight limits; released when dropped.
struct InFlight {
    connection: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    token: String,
}

impl InFlight {
    fn enter(
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
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Runs one accepted job: records it, runs it, reports its end.
async fn run_job(
    shared: Arc<Shared>,
    job: Arc<LocalJob>,
    spec: JobSpec,
    reference: Option<String>,
    owner: mpsc::UnboundedSender<Outgoing>,
    slot: InFlight,
) {
    let env = &shared.env;
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
            let _ = owner.send(Outgoing::Msg(error(
                reference,
                None,
                ErrorCode::Unavailable,
                message,
                None,
            )));
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

/// Streams a job running on another node from its record until it finishes.
async fn watch_record(raft: RaftHandle, first: JobView, tx: mpsc::UnboundedSender<Outgoing>) {
    let id = first.id.clone();
    let send = |m: ServerMsg| tx.send(Outgoing::Msg(m)).is_ok();
    let mut last: Option<(JobState, f32)> = None;
    let mut view = Some(first);
    loop {
        let Some(v) = view.take() else {
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
        let key = id.clone();
        view = raft
            .read_local(move |s| s.jobs.get(&key).map(|j| record_view(&key, j)))
            .await
            .ok()
            .flatten();
    }
}

/// Housekeeping of job records: stops local jobs cancelled from another node (every 250 ms);
/// fails recorded jobs whose node died or restarted, and prunes old finished records (the
/// leader, every 2 s).
async fn janitor(shared: Arc<Shared>) {
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
        let plan = raft
            .read_local(move |s| {
                let mut fail = Vec::new();
                let mut finished: Vec<(u64, JobId)> = Vec::new();
                for (id, j) in &s.jobs {
                    if j.status.is_finished() {
                        finished.push((j.submitted_ms, id.clone()));
                        continue;
                    }
                    if j.node == me && !local.contains(id) {
                        // Not running here: from before a restart, or recorded after this
                        // node gave up waiting for the record (and told the client so).
                        let why = if j.submitted_ms < started {
                            format!("node {me} restarted while running it")
                        } else {
                            format!("node {me} was not running it (its record came late)")
                        };
                        fail.push((id.clone(), why));
                    } else if leader
                        && s.nodes
                            .get(&j.node)
                            .is_none_or(|n| n.liveness == Liveness::Down)
                    {
                        fail.push((
                            id.clone(),
                            format!("node {} went down while running it", j.node),
                        ));
                    }
                }
                if !leader {
                    finished.clear();
                }
                (fail, finished)
            })
            .await;
        let Ok((fail, finished)) = plan else { continue };
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
fn records_to_prune(
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
    }
}
