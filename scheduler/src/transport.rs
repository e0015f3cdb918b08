//! Raft messages between nodes over TCP.
//!
//! Each node listens on its raft address. For every peer it keeps one outbound connection fed
//! by a bounded queue: [`Transport::send`] never waits (a full queue drops the message; Raft
//! retransmits). Frames are a 4-byte big-endian length and a payload, refused above
//! `max_frame_bytes` before anything is allocated. A connection starts with a handshake in
//! which both sides prove they hold the cluster secret with HMAC-SHA256 over fresh nonces; the
//! secret itself never crosses the wire.
//!
//! With a certificate ([`arbor_tls::NodeTls`]) every connection is mutual TLS first, and the
//! handshake runs inside it: the dialer verifies that the server's certificate is the node it
//! dialed, and the server refuses a peer whose certificate is not the node it says it is (the
//! `from` it proves, and every message's `from` after it). Without TLS an on-path attacker
//! could take over a connection after the handshake and inject messages from the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::TransportConfig;
use crate::state::NodeId;
use crate::tasks::TaskGroup;
use arbor_proto::per_address::PerAddress;

const GREETING: &[u8] = b"ARBOR-RAFT/1";

/// A connection to a peer: TCP, or TLS over it.
trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> PeerStream for S {}
type Stream = Box<dyn PeerStream>;

/// Both ends of mutual TLS for this node.
struct Tls {
    acceptor: arbor_tls::TlsAcceptor,
    connector: arbor_tls::TlsConnector,
}
const NONCE: usize = 32;
const TAG: usize = 32;

/// What the transport hands to the node's Ready loop.
#[derive(Debug)]
pub enum NetEvent {
    /// A raft message from a peer.
    Raft(Box<Message>),
    /// A snapshot message to `to` was written out (`ok`) or lost.
    SnapshotSent { to: NodeId, ok: bool },
    /// `to` could not be reached.
    Unreachable { to: NodeId },
}

/// Transport failures (logged; they never reach the Ready loop as errors).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("cluster secret mismatch ({0})")]
    SecretMismatch(String),
    /// The peer refused us, and said why.
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("undecodable raft message: {0}")]
    Decode(#[from] protobuf::ProtobufError),
    #[error("{0}")]
    Timeout(String),
    /// A TLS handshake failed, or the peer's certificate is not the node it claims.
    #[error("tls: {0}")]
    Tls(String),
}

/// Reads one length-prefixed frame, refusing lengths above `limit`.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Vec<u8>, TransportError> {
    let len = r.read_u32().await? as usize;
    if len > limit {
        return Err(TransportError::FrameTooLarge { len, limit });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The flag, in a frame's length, of a frame that another follows in the same message.
const MORE: u32 = 1 << 31;

/// Reads one message: frames (each at most `frame_limit`) up to the one not flagged as followed,
/// refusing a message that grows past `message_limit`. Memory grows only with what arrives.
pub async fn read_message<R: AsyncReadExt + Unpin>(
    r: &mut R,
    frame_limit: usize,
    message_limit: usize,
) -> Result<Vec<u8>, TransportError> {
    let mut message = Vec::new();
    loop {
        let word = r.read_u32().await?;
        let (len, more) = ((word & !MORE) as usize, word & MORE != 0);
        if len > frame_limit {
            return Err(TransportError::FrameTooLarge {
                len,
                limit: frame_limit,
            });
        }
        if message.len() + len > message_limit {
            return Err(TransportError::FrameTooLarge {
                len: message.len() + len,
                limit: message_limit,
            });
        }
        let start = message.len();
        message.resize(start + len, 0);
        r.read_exact(&mut message[start..]).await?;
        if !more {
            return Ok(message);
        }
    }
}

/// Writes one message as frames of at most `frame_limit` bytes (not flushed).
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    frame_limit: usize,
) -> Result<(), TransportError> {
    let frame = frame_limit.clamp(1, (MORE - 1) as usize);
    let mut chunks = payload.chunks(frame).peekable();
    if chunks.peek().is_none() {
        w.write_u32(0).await?;
    }
    while let Some(chunk) = chunks.next() {
        let more = if chunks.peek().is_some() { MORE } else { 0 };
        w.write_u32(chunk.len() as u32 | more).await?;
        w.write_all(chunk).await?;
    }
    Ok(())
}

/// Writes one length-prefixed frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    limit: usize,
) -> Result<(), TransportError> {
    if payload.len() > limit || payload.len() > u32::MAX as usize {
        return Err(TransportError::FrameTooLarge {
            len: payload.len(),
            limit,
        });
    }
    w.write_u32(payload.len() as u32).await?;
    w.write_all(payload).await?;
    Ok(())
}

fn tag(
    secret: &[u8],
    role: &[u8],
    nonce_s: &[u8],
    nonce_c: &[u8],
    from: NodeId,
    to: NodeId,
) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(role);
    mac.update(nonce_s);
    mac.update(nonce_c);
    mac.update(&from.to_le_bytes());
    mac.update(&to.to_le_bytes());
    mac
}

/// What a server's proof is bound to besides the nonces and ids: whether it holds a
/// cluster's state (so a prober cannot be told otherwise by anyone without the secret).
fn server_role(founded: bool) -> &'static [u8] {
    if founded {
        b"server-founded"
    } else {
        b"server"
    }
}

/// Client side: proves the secret to the peer and checks the peer's proof. Returns whether
/// the peer holds a cluster's state (its raft storage is not empty).
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: NodeId,
    peer: NodeId,
    secret: &[u8],
) -> Result<bool, TransportError> {
    let hello = read_frame(stream, 256).await?;
    if hello.len() != GREETING.len() + NONCE || !hello.starts_with(GREETING) {
        return Err(TransportError::Handshake(format!(
            "peer did not greet as an arbor raft node ({} bytes)",
            hello.len()
        )));
    }
    let nonce_s = &hello[GREETING.len()..];
    let nonce_c: [u8; NONCE] = rand::random();
    let mac = tag(secret, b"client", nonce_s, &nonce_c, me, peer)
        .finalize()
        .into_bytes();
    let mut reply = Vec::with_capacity(16 + NONCE + TAG);
    reply.extend_from_slice(&me.to_le_bytes());
    reply.extend_from_slice(&peer.to_le_bytes());
    reply.extend_from_slice(&nonce_c);
    reply.extend_from_slice(&mac);
    write_frame(stream, &reply, 256).await?;
    stream.flush().await?;
    let answer = read_frame(stream, 1024).await?;
    match answer.split_first() {
        Some((flag @ (1 | 2), proof)) => {
            let founded = *flag == 2;
            tag(secret, server_role(founded), nonce_s, &nonce_c, me, peer)
                .verify_slice(proof)
                .map(|()| founded)
                .map_err(|_| {
                    TransportError::SecretMismatch(
                        "the peer could not prove it holds our cluster secret".into(),
                    )
                })
        }
        Some((0, reason)) => Err(TransportError::Refused(
            String::from_utf8_lossy(reason).into_owned(),
        )),
        _ => Err(TransportError::Handshake(
            "malformed handshake answer".into(),
        )),
    }
}

/// Server side: checks the client's proof and that it may speak as the node it claims
/// (`may_be`: its certificate names that node), answers with our own proof (which says whether
/// this node holds a cluster's state, `founded`). Returns the client's id.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: NodeId,
    secret: &[u8],
    founded: bool,
    may_be: impl FnOnce(NodeId) -> Result<(), String>,
) -> Result<NodeId, TransportError> {
    let nonce_s: [u8; NONCE] = rand::random();
    let mut hello = GREETING.to_vec();
    hello.extend_from_slice(&nonce_s);
    write_frame(stream, &hello, 256).await?;
    stream.flush().await?;
    let m = read_frame(stream, 256).await?;
    if m.len() != 16 + NONCE + TAG {
        return Err(TransportError::Handshake(format!(
            "handshake reply has {} bytes, expected {}",
            m.len(),
            16 + NONCE + TAG
        )));
    }
    let from = u64::from_le_bytes(m[0..8].try_into().expect("8 bytes"));
    let to = u64::from_le_bytes(m[8..16].try_into().expect("8 bytes"));
    let nonce_c = &m[16..16 + NONCE];
    let proof = &m[16 + NONCE..];
    if tag(secret, b"client", &nonce_s, nonce_c, from, to)
        .verify_slice(proof)
        .is_err()
    {
        let _ = write_frame(stream, b"\0cluster secret mismatch", 1024).await;
        let _ = stream.flush().await;
        return Err(TransportError::SecretMismatch(format!(
            "node {from} could not prove it holds the cluster secret"
        )));
    }
    if let Err(why) = may_be(from) {
        let _ = write_frame(stream, format!("\0{why}").as_bytes(), 1024).await;
        let _ = stream.flush().await;
        return Err(TransportError::Tls(why));
    }
    if to != me {
        let reason = format!("\0this is node {me}, not node {to}");
        let _ = write_frame(stream, reason.as_bytes(), 1024).await;
        let _ = stream.flush().await;
        return Err(TransportError::Handshake(format!(
            "node {from} dialed node {to} but reached node {me}"
        )));
    }
    let mut ok = vec![if founded { 2u8 } else { 1u8 }];
    ok.extend_from_slice(
        &tag(secret, server_role(founded), &nonce_s, nonce_c, from, to)
            .finalize()
            .into_bytes(),
    );
    write_frame(stream, &ok, 1024).await?;
    stream.flush().await?;
    Ok(from)
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Message>,
}

struct Inner {
    me: NodeId,
    secret: Arc<Vec<u8>>,
    tls: Option<Tls>,
    config: TransportConfig,
    events: mpsc::Sender<NetEvent>,
    tasks: TaskGroup,
    /// Addresses from configuration; they win over learned ones.
    configured: HashMap<NodeId, String>,
    learned: Mutex<HashMap<NodeId, String>>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Whether this node's raft storage holds a cluster's state (told to every peer that
    /// connects, so that a node starting empty can tell a new cluster from a running one).
    founded: std::sync::atomic::AtomicBool,
    /// Inbound connections held per source address.
    inbound: PerAddress,
}

/// What this node proves itself with: the cluster secret, and its certificate (with which
/// every connection is mutual TLS).
pub struct Credentials {
    pub secret: Vec<u8>,
    pub tls: Option<arbor_tls::NodeTls>,
}

/// The sending side of the transport; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Starts accepting peers on `listener` and returns the sender.
    pub fn start(
        me: NodeId,
        listener: TcpListener,
        configured: HashMap<NodeId, String>,
        credentials: Credentials,
        config: TransportConfig,
        events: mpsc::Sender<NetEvent>,
        tasks: TaskGroup,
    ) -> Result<Transport, TransportError> {
        let Credentials { secret, tls } = credentials;
        let tls = match tls {
            Some(t) => Some(Tls {
                acceptor: t
                    .peer_acceptor()
                    .map_err(|e| TransportError::Tls(e.to_string()))?,
                connector: t
                    .peer_connector()
                    .map_err(|e| TransportError::Tls(e.to_string()))?,
            }),
            None => None,
        };
        let inner = Arc::new(Inner {
            me,
            secret: Arc::new(secret),
            tls,
            config,
            events,
            tasks: tasks.clone(),
            configured,
            learned: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            dropped: Default::default(),
            founded: Default::default(),
            inbound: PerAddress::default(),
        });
        tasks.spawn(accept_loop(inner.clone(), listener));
        Ok(Transport { inner })
    }

    /// Says, from now on, whether this node's raft storage holds a cluster's state.
    pub fn set_founded(&self, founded: bool) {
        self.inner
            .founded
            .store(founded, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this node has said it holds a cluster's state.
    pub fn founded(&self) -> bool {
        self.inner
            .founded
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks node `to` at `addr` (a handshake, then nothing) whether it holds a cluster's
    /// state.
    pub async fn probe(&self, to: NodeId, addr: &str) -> Result<bool, TransportError> {
        let mut s = dial(&self.inner, to, addr).await?;
        tokio::time::timeout(
            self.inner.config.handshake_timeout,
            client_handshake(&mut s, self.inner.me, to, &self.inner.secret),
        )
        .await
        .map_err(|_| TransportError::Handshake("timed out".into()))?
    }

    /// The address node `id` is dialed at: from configuration, else learned from the log.
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.inner
            .configured
            .get(&id)
            .cloned()
            .or_else(|| self.inner.learned.lock().expect("lock").get(&id).cloned())
    }

    /// Remembers a peer address learned from the log (used unless configuration names one).
    pub fn learn_address(&self, id: NodeId, addr: String) {
        if id != self.inner.me {
            self.inner.learned.lock().expect("lock").insert(id, addr);
        }
    }

    /// Stops sending to a removed member.
    pub fn forget(&self, id: NodeId) {
        self.inner.peers.lock().expect("lock").remove(&id);
        self.inner.learned.lock().expect("lock").remove(&id);
    }

    /// Messages dropped so far because a peer queue was full or a peer was unknown.
    pub fn dropped(&self) -> u64 {
        self.inner
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues messages for their peers; never waits.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let mut peers = self.inner.peers.lock().expect("lock");
        for m in msgs {
            let to = m.to;
            if let std::collections::hash_map::Entry::Vacant(slot) = peers.entry(to) {
                let addr = self
                    .inner
                    .configured
                    .get(&to)
                    .cloned()
                    .or_else(|| self.inner.learned.lock().expect("lock").get(&to).cloned());
                let Some(addr) = addr else {
                    debug!(to, "no address for raft peer; message dropped");
                    self.inner
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let (tx, rx) = mpsc::channel(self.inner.config.peer_queue);
                self.inner
                    .tasks
                    .spawn(peer_loop(self.inner.clone(), to, addr.clone(), rx));
                slot.insert(Peer { addr, queue: tx });
            }
            let peer = peers.get(&to).expect("inserted above");
            match peer.queue.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    let n = self
                        .inner
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n.is_multiple_of(1000) {
                        debug!(to, addr = %peer.addr, "raft peer queue full; dropping messages");
                    }
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        let _ = self
                            .inner
                            .events
                            .try_send(NetEvent::SnapshotSent { to, ok: false });
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    peers.remove(&to);
                }
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let per = inner.config.max_connections_per_address;
                let Some(place) = inner.inbound.enter(remote.ip(), per) else {
                    debug!(
                        node = inner.me,
                        %remote,
                        "raft connection closed: its address holds {per} already"
                    );
                    continue;
                };
                let inner2 = inner.clone();
                inner.tasks.spawn(async move {
                    let _place = place;
                    if let Err(e) = serve_peer(inner2.clone(), stream).await {
                        match e {
                            TransportError::SecretMismatch(_)
                            | TransportError::Handshake(_)
                            | TransportError::Refused(_)
                            | TransportError::Tls(_) => {
                                warn!(node = inner2.me, %remote, "raft connection refused: {e}")
                            }
                            _ => debug!(node = inner2.me, %remote, "raft connection closed: {e}"),
                        }
                    }
                });
            }
            Err(e) => {
                warn!(node = inner.me, "raft listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How long an inbound connection may stay silent before it is dropped.
const IDLE_READ: Duration = Duration::from_secs(10);

/// Connects to node `to` at `addr`: TCP, then TLS (its certificate must be `to`'s) when this
/// node has a certificate. Each step within the handshake timeout: without a deadline a
/// connect into a dead route waits for the kernel's SYN retries (about two minutes).
async fn dial(inner: &Inner, to: NodeId, addr: &str) -> Result<Stream, TransportError> {
    let deadline = inner.config.handshake_timeout;
    let tcp = tokio::time::timeout(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout("connect timed out".into()))??;
    tcp.set_nodelay(true)?;
    let Some(tls) = &inner.tls else {
        return Ok(Box::new(tcp));
    };
    let stream = tokio::time::timeout(
        deadline,
        tls.connector.connect(arbor_tls::peer_server_name(to), tcp),
    )
    .await
    .map_err(|_| TransportError::Tls("the TLS handshake timed out".into()))?
    .map_err(|e| TransportError::Tls(format!("node {to} at {addr}: {e}")))?;
    Ok(Box::new(stream))
}

async fn serve_peer(inner: Arc<Inner>, tcp: TcpStream) -> Result<(), TransportError> {
    tcp.set_nodelay(true)?;
    let deadline = tokio::time::Instant::now() + inner.config.handshake_timeout;
    let timed_out = |what: &str| TransportError::Handshake(format!("{what} timed out"));
    // The certificate the peer presented, if this node speaks TLS.
    let (mut stream, certs): (Stream, Option<Vec<_>>) = match &inner.tls {
        None => (Box::new(tcp), None),
        Some(tls) => {
            let s = tokio::time::timeout_at(deadline, tls.acceptor.accept(tcp))
                .await
                .map_err(|_| timed_out("the TLS handshake"))?
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            let certs = s.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            (Box::new(s), Some(certs.unwrap_or_default()))
        }
    };
    // Every message's `from` is checked against the handshake's below, so a peer speaks only
    // as the node its certificate names.
    let may_be = |from: NodeId| match &certs {
        Some(certs) => arbor_tls::check_peer(Some(certs), from).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let from = tokio::time::timeout_at(
        deadline,
        server_handshake(
            &mut stream,
            inner.me,
            &inner.secret,
            inner.founded.load(std::sync::atomic::Ordering::Relaxed),
            may_be,
        ),
    )
    .await
    .map_err(|_| timed_out("the handshake"))??;
    debug!(node = inner.me, from, "raft peer connected");
    let mut reader = tokio::io::BufReader::new(stream);
    loop {
        // A peer that stays silent this long is gone or behind a dead route (a half-open
        // connection would otherwise hold this reader until TCP gives up, minutes later);
        // it dials again when it has something to say.
        let frame = tokio::time::timeout(
            IDLE_READ,
            read_message(
                &mut reader,
                inner.config.max_frame_bytes,
                inner.config.max_message_bytes,
            ),
        )
        .await
        .map_err(|_| TransportError::Timeout(format!("peer silent for {IDLE_READ:?}")))??;
        let msg = Message::parse_from_bytes(&frame)?;
        if msg.from != from || msg.to != inner.me {
            return Err(TransportError::Handshake(format!(
                "node {from} sent a message from {} to {}",
                msg.from, msg.to
            )));
        }
        // Never block on the Ready loop: drop if it is saturated.
        let _ = inner.events.try_send(NetEvent::Raft(Box::new(msg)));
    }
}

async fn peer_loop(inner: Arc<Inner>, to: NodeId, addr: String, mut rx: mpsc::Receiver<Message>) {
    let cfg = inner.config.clone();
    let mut backoff = cfg.min_backoff;
    let mut failures = 0u32;
    loop {
        let connected = async {
            let mut s = dial(&inner, to, &addr).await?;
            tokio::time::timeout(
                cfg.handshake_timeout,
                client_handshake(&mut s, inner.me, to, &inner.secret),
            )
            .await
            .map_err(|_| TransportError::Handshake("timed out".into()))??;
            Ok::<_, TransportError>(s)
        }
        .await;
        match connected {
            Ok(stream) => {
                if failures > 0 {
                    info!(node = inner.me, to, %addr, "raft peer reachable again");
                }
                failures = 0;
                backoff = cfg.min_backoff;
                match pump(&inner, to, stream, &mut rx).await {
                    Ok(()) => return, // queue closed: peer forgotten
                    Err(e) => debug!(node = inner.me, to, %addr, "raft send failed: {e}"),
                }
            }
            Err(e) => {
                failures += 1;
                match &e {
                    TransportError::SecretMismatch(_)
                    | TransportError::Refused(_)
                    | TransportError::Tls(_) => {
                        warn!(node = inner.me, to, %addr, "raft handshake refused: {e}")
                    }
                    _ if failures == 1 => {
                        info!(node = inner.me, to, %addr, "raft peer unreachable: {e}")
                    }
                    _ => debug!(node = inner.me, to, %addr, "raft peer unreachable: {e}"),
                }
                let _ = inner.events.try_send(NetEvent::Unreachable { to });
                // What is queued is stale by the time we reconnect.
                loop {
                    match rx.try_recv() {
                        Ok(m) => {
                            if m.get_msg_type() == MessageType::MsgSnapshot {
                                let _ = inner
                                    .events
                                    .try_send(NetEvent::SnapshotSent { to, ok: false });
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.max_backoff);
            }
        }
    }
}

/// Writes queued messages until the queue closes (`Ok`) or the connection fails.
async fn pump(
    inner: &Inner,
    to: NodeId,
    stream: Stream,
    rx: &mut mpsc::Receiver<Message>,
) -> Result<(), TransportError> {
    let (frame, limit) = (inner.config.max_frame_bytes, inner.config.max_message_bytes);
    let mut w = BufWriter::with_capacity(256 * 1024, stream);
    let mut snapshots = 0usize;
    let result = async {
        loop {
            let Some(first) = rx.recv().await else {
                return Ok(());
            };
            let mut next = Some(first);
            while let Some(m) = next.take() {
                let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
                let bytes = m.write_to_bytes()?;
                if bytes.len() > limit {
                    warn!(
                        node = inner.me,
                        to,
                        "raft {:?} of {} bytes exceeds max_message_bytes {limit}; dropped",
                        m.get_msg_type(),
                        bytes.len()
                    );
                    if is_snap {
                        let _ = inner
                            .events
                            .try_send(NetEvent::SnapshotSent { to, ok: false });
                    }
                } else {
                    write_message(&mut w, &bytes, frame).await?;
                    snapshots += usize::from(is_snap);
                }
                next = rx.try_recv().ok();
            }
            w.flush().await?;
            for _ in 0..std::mem::take(&mut snapshots) {
                let _ = inner
                    .events
                    .try_send(NetEvent::SnapshotSent { to, ok: true });
            }
        }
    }
    .await;
    if result.is_err() {
        for _ in 0..snapshots {
            let _ = inner
                .events
                .try_send(NetEvent::SnapshotSent { to, ok: false });
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn handshake_accepts_the_same_secret() {
        let (mut c, mut s) = pair().await;
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, 1, 2, b"sesame"),
            server_handshake(&mut s, 2, b"sesame", false, |_| Ok(()))
        );
        assert!(!cr.unwrap(), "an empty server says so");
        assert_eq!(sr.unwrap(), 1);
        // A server that holds a cluster says so, bound to its proof.
        let (mut c, mut s) = pair().await;
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, 1, 2, b"sesame"),
            server_handshake(&mut s, 2, b"sesame", true, |_| Ok(()))
        );
        assert!(cr.unwrap());
        assert_eq!(sr.unwrap(), 1);
    }

    #[tokio::test]
    async fn handshake_refuses_a_wrong_secret_on_both_sides() {
        let (mut c, mut s) = pair().await;
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, 1, 2, b"wrong"),
            server_handshake(&mut s, 2, b"sesame", false, |_| Ok(()))
        );
        assert!(
            matches!(&cr, Err(TransportError::Refused(why)) if why.contains("secret")),
            "{cr:?}"
        );
        assert!(
            matches!(sr, Err(TransportError::SecretMismatch(_))),
            "{sr:?}"
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocation() {
        let (mut c, mut s) = pair().await;
        c.write_u32(u32::MAX).await.unwrap();
        let err = read_frame(&mut s, 1024).await.unwrap_err();
        assert!(
            matches!(err, TransportError::FrameTooLarge { len, limit: 1024 } if len == u32::MAX as usize)
        );
    }

    #[tokio::test]
    async fn a_message_larger_than_a_frame_travels_in_frames() {
        let (mut c, mut s) = pair().await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            write_message(&mut c, &sent, 256 * 1024).await.unwrap();
            write_message(&mut c, &[], 256 * 1024).await.unwrap();
            write_message(&mut c, b"small", 256 * 1024).await.unwrap();
            c
        });
        assert_eq!(
            read_message(&mut s, 256 * 1024, 4 << 20).await.unwrap(),
            big
        );
        assert!(
            read_message(&mut s, 256 * 1024, 4 << 20)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            read_message(&mut s, 256 * 1024, 4 << 20).await.unwrap(),
            b"small"
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_message_past_its_limit_is_refused_as_it_grows() {
        let (mut c, mut s) = pair().await;
        let writer = tokio::spawn(async move {
            let _ = write_message(&mut c, &vec![7u8; 1 << 20], 64 * 1024).await;
            c
        });
        let err = read_message(&mut s, 64 * 1024, 256 * 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::FrameTooLarge { limit, .. } if limit == 256 * 1024),
            "{err}"
        );
        drop(writer.await.unwrap());
        // And a single frame over the frame limit, before anything is allocated.
        let (mut c, mut s) = pair().await;
        c.write_u32((MORE - 1) | MORE).await.unwrap();
        assert!(matches!(
            read_message(&mut s, 1024, 1 << 30).await,
            Err(TransportError::FrameTooLarge { limit: 1024, .. })
        ));
    }
}
