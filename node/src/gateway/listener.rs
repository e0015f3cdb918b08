//! The gateway's listener: accept (and refuse beyond the connection limit), the state every
//! connection shares, the `status` job's summary, and a connection's reader and writer.
//!
//! Each connection has a reader (this task: frames in, limits, auth, dispatch) and a writer
//! task (messages out, batched into one flush). Jobs run in tasks of their own and send their
//! events to the writer, so a slow job never holds up the connection's other requests.
//! Everything a client sends is checked before any work starts: size, JSON, type, fields,
//! authentication, role, and the number of jobs in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_scheduler::RaftHandle;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::auth::TokenStore;
use super::jobs::{JobTable, now_ms};
use super::kinds::{Env, summarize};
use crate::config::{GatewaySection, NodeId};
use crate::gateway::jobs::{RecordIndex, janitor};
use crate::gateway::pre_auth::{Gate, Metered};
use crate::gateway::session::Session;
use arbor_proto::gateway::{Limits, ServerMsg, encode};

/// A message for a connection's writer.
#[derive(Debug)]
pub enum Outgoing {
    Msg(ServerMsg),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

/// What the writer takes: a message already encoded (and counted), or a close.
enum Queued {
    Text(String),
    Close(CloseCode, String),
}

/// A connection's messages out, bounded in bytes: a client that stops reading while it keeps
/// asking (or while its jobs stream) would otherwise grow the queue without end. Past the
/// bound the connection is closed; what was queued is dropped.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    overflow: Arc<tokio::sync::Notify>,
}

impl Outbox {
    /// Queues `out` for the writer; [`Gone`] when the connection is closed or over its bound
    /// (the message is dropped: whoever sends should stop).
    pub fn send(&self, out: Outgoing) -> Result<(), Gone> {
        let queued = match out {
            Outgoing::Msg(m) => {
                let text = encode(&m);
                if self.queued.fetch_add(text.len(), Ordering::AcqRel) + text.len() > self.limit {
                    self.queued.fetch_sub(text.len(), Ordering::AcqRel);
                    self.overflow.notify_one();
                    return Err(Gone);
                }
                Queued::Text(text)
            }
            Outgoing::Close(code, reason) => Queued::Close(code, reason),
        };
        self.tx.send(queued).map_err(|_| Gone)
    }
}

/// The connection a message was for is closed, or was closed for not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// Finished recorded jobs are pruned from the control plane once the leader has seen them
/// finished for this long (by its own monotonic clock).
pub(crate) const RECORD_RETENTION: Duration = Duration::from_secs(3600);
/// At most this many finished jobs stay recorded.
pub(crate) const RECORDS_KEPT: usize = 10_000;
/// Jobs listed by `status` without a job, unless the client asks for another number.
pub(crate) const DEFAULT_LIST: u32 = 20;
/// How often a watcher of a job running on another node reads its record.
pub(crate) const REMOTE_POLL: Duration = Duration::from_millis(200);
/// After a cancel, how long a job may take to stop by itself before it is dropped.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// The largest frame read from a connection that has not authenticated (an `auth` is ~150).
pub(crate) const PRE_AUTH_BYTES: usize = 4096;
/// Progress is written to a job's record at most this often.
pub(crate) const RECORD_PROGRESS_EVERY: Duration = Duration::from_millis(500);

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
    /// `wss://` with this node's certificate; `None` is plain `ws://` (an insecure cluster,
    /// which is on loopback only).
    pub tls: Option<arbor_tls::TlsAcceptor>,
}

/// A running gateway. Dropping it does not stop it: call [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// State every connection shares.
pub(crate) struct Shared {
    pub(crate) env: Env,
    pub(crate) tokens: TokenStore,
    pub(crate) settings: GatewaySection,
    pub(crate) jobs: JobTable,
    /// The control plane's job records, kept beside the Raft loop.
    pub(crate) records: Arc<RecordIndex>,
    /// Unfinished jobs per token id.
    pub(crate) per_token: Mutex<HashMap<String, usize>>,
    /// When this gateway started: recorded jobs of this node from before it are orphans.
    pub(crate) started_ms: u64,
}

impl Shared {
    pub(crate) fn limits(&self) -> Limits {
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
            records: RecordIndex::start(args.raft.clone()),
            per_token: Mutex::default(),
            started_ms: now_ms(),
        });
        let tasks = vec![
            tokio::spawn(keep_summary(args.raft.clone(), args.node, summary_tx)),
            tokio::spawn(janitor(shared.clone())),
            tokio::spawn(crate::gateway::jobs::revoker(shared.clone())),
            args.tokens
                .spawn_watcher(super::auth::DEFAULT_WATCH_INTERVAL),
            tokio::spawn(accept(listener, shared, args.tls)),
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

pub(crate) async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<arbor_tls::TlsAcceptor>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let per_address = arbor_proto::per_address::PerAddress::default();
    let waiting = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // One address may hold only so many connections (authenticated or not): idle
                // sockets from one machine must not lock everyone else out. Closed at once,
                // with nothing read or written.
                let per = shared.settings.max_connections_per_address;
                let Some(place) = per_address.enter(peer.ip(), per) else {
                    tracing::debug!(%peer, "gateway: closed a connection over max_connections_per_address");
                    continue;
                };
                let Some(gate) = Gate::enter(&waiting, shared.settings.max_unauthenticated) else {
                    tracing::debug!(%peer, "gateway: closed a connection over max_unauthenticated");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let max = shared.settings.max_connections;
                let over = open.load(Ordering::Relaxed) >= max;
                if !over {
                    open.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!("arbor_gateway_connections").increment(1.0);
                }
                let (shared, open, tls) = (shared.clone(), open.clone(), tls.clone());
                tokio::spawn(async move {
                    let _place = place;
                    match tls {
                        None if over => refuse_connection(shared, stream, max).await,
                        None => {
                            let stream = Metered::new(stream, gate.clone());
                            connection(shared, stream, peer, gate).await
                        }
                        Some(tls) => {
                            // The TLS handshake counts against the same deadline as auth.
                            let handshake = tokio::time::timeout(
                                shared.settings.auth_timeout,
                                tls.accept(stream),
                            )
                            .await;
                            match handshake {
                                Ok(Ok(s)) if over => refuse_connection(shared, s, max).await,
                                Ok(Ok(s)) => {
                                    let s = Metered::new(s, gate.clone());
                                    connection(shared, s, peer, gate).await
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "gateway TLS handshake failed: {e}")
                                }
                                Err(_) => tracing::debug!(%peer, "gateway TLS handshake timed out"),
                            }
                        }
                    }
                    if !over {
                        open.fetch_sub(1, Ordering::Relaxed);
                        metrics::gauge!("arbor_gateway_connections").decrement(1.0);
                    }
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
pub(crate) async fn refuse_connection<S>(shared: Arc<Shared>, stream: S, max: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
pub(crate) async fn keep_summary(
    raft: RaftHandle,
    node: NodeId,
    tx: tokio::sync::watch::Sender<Arc<Value>>,
) {
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
pub(crate) async fn connection<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr, gate: Arc<Gate>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    let outbox = Outbox {
        tx,
        queued: Arc::default(),
        limit: shared.settings.max_queued_bytes,
        overflow: Arc::default(),
    };
    let (queued, overflow) = (outbox.queued.clone(), outbox.overflow.clone());
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut yielded = false;
            while let Some(out) = next.take() {
                match out {
                    Queued::Text(text) => {
                        let len = text.len();
                        if sink.feed(Message::text(text)).await.is_err() {
                            return;
                        }
                        queued.fetch_sub(len, Ordering::AcqRel);
                    }
                    Queued::Close(code, reason) => {
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
                if next.is_none() && !yielded {
                    // A job's answers come in a burst (accepted, running, result, end) from a
                    // task that may run on another worker: one yield lets the burst go out as
                    // one write (one TLS record, one wakeup of the client) instead of several.
                    yielded = true;
                    tokio::task::yield_now().await;
                    next = rx.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut session = Session {
        shared,
        tx: outbox,
        auth: None,
        failed_auths: 0,
        in_flight: Arc::new(AtomicUsize::new(0)),
        subscriptions: Arc::default(),
        gate,
    };
    let deadline = tokio::time::Instant::now() + session.shared.settings.auth_timeout;
    let mut token_changes = session.shared.tokens.changes();
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
            tokio::select! {
                frame = source.next() => frame,
                () = overflow.notified() => {
                    tracing::info!(
                        %peer,
                        "closed a connection that does not read what it asked for \
                         (gateway.max_queued_bytes)"
                    );
                    // The writer is stuck on a client that does not read: drop the socket.
                    writer.abort();
                    return;
                }
                // A revoked token's connection closes at once, not at its next request.
                Ok(()) = token_changes.changed() => {
                    if session.revoked() {
                        break;
                    }
                    continue;
                }
            }
        };
        let keep_going = match frame {
            None | Some(Ok(Message::Close(_))) => false,
            // Before auth only an `auth` frame is any use: a large one is refused before it is
            // parsed (parsing JSON takes many times its size).
            Some(Ok(Message::Text(text)))
                if session.auth.is_none() && text.len() > PRE_AUTH_BYTES =>
            {
                session.close(
                    CloseCode::Size,
                    format!(
                        "a frame of {} bytes before auth; until a token is accepted frames are at \
                         most {PRE_AUTH_BYTES} bytes (send `auth` first)",
                        text.len()
                    ),
                );
                false
            }
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
