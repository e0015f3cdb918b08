//! A client of the gateway: the `arbor` CLI, tests and benchmarks talk to the cluster through
//! it. It connects to the first gateway of a list that answers, authenticates, and then either
//! runs jobs one after another ([`GatewayClient::run`]) or, for benchmarks, keeps many in
//! flight ([`GatewayClient::send_raw`], [`GatewayClient::recv_raw`]).
//!
//! Every message the server sends lands in one queue; a method that waits for one particular
//! answer (the `accepted` of its submit, a `pong`) takes that answer and leaves every other
//! message queued in order, so nothing a pipelined caller still needs is lost.
//!
//! Reading is cancel-safe: [`GatewayClient::next_event`], [`GatewayClient::recv_raw`] and
//! [`GatewayClient::follow`] may be dropped in a `tokio::select!` (e.g. against ctrl-c) and
//! called again without losing a message.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use arbor_proto::gateway::{
    ClientMsg, JobSpec, JobState, JobView, Limits, PROTOCOL_VERSION, ServerMsg, encode,
    parse_server,
};
use arbor_proto::{ErrorCode, JobId, Role};

/// How long a connect waits for each node by default (TCP, WebSocket handshake and `auth`).
pub const DEFAULT_PER_NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest message this client reads from a gateway. Results are bounded by the gateway
/// (a query's k, an embed's texts); this only keeps a broken peer from exhausting memory.
pub const MAX_INCOMING_MESSAGE_BYTES: usize = 64 << 20;
/// The largest frame this client reads.
pub const MAX_INCOMING_FRAME_BYTES: usize = 16 << 20;

/// The connection under the WebSocket: TCP, or TLS over it.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Duplex for S {}
type Ws = WebSocketStream<Box<dyn Duplex>>;

/// How a client trusts the gateways it dials.
#[derive(Clone)]
pub enum Trust {
    /// `wss://`: a node is accepted only with a certificate signed by the cluster's CA.
    Ca(arbor_tls::TlsConnector),
    /// `ws://`: for a cluster whose cluster.toml says `[tls] insecure = true` (loopback only).
    Plain,
}

impl Trust {
    /// Trusts the nodes whose certificates the CA in `ca_pem` signed (`[tls] dir`/ca.pem).
    pub fn ca(ca_pem: &std::path::Path) -> Result<Trust, ClientError> {
        Ok(Trust::Ca(arbor_tls::gateway_client(ca_pem)?))
    }

    /// [`Trust::ca`] with the cluster's CA, or [`Trust::Plain`] for a cluster without one
    /// (`ClusterConfig::gateway_ca` says which).
    pub fn from_ca(ca_pem: Option<&std::path::Path>) -> Result<Trust, ClientError> {
        ca_pem.map_or(Ok(Trust::Plain), Trust::ca)
    }

    fn scheme(&self) -> &'static str {
        match self {
            Trust::Ca(_) => "wss",
            Trust::Plain => "ws",
        }
    }
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trust::Ca(_) => "Trust::Ca",
            Trust::Plain => "Trust::Plain",
        })
    }
}

/// Why a gateway call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No gateway could be reached (or none answered `auth` in time).
    #[error(
        "no gateway answered:\n{}Check that the nodes run (a node's log says why it stopped) and that the gateway addresses in {origin} are right.",
        tried_list(.scheme, .tried)
    )]
    Unreachable {
        /// `wss` or `ws`.
        scheme: &'static str,
        /// Each address tried, and why it failed.
        tried: Vec<(SocketAddr, String)>,
        /// Where the addresses came from (a cluster.toml path).
        origin: String,
    },
    /// The gateway refused the token. A bad token is bad on every node, so there is no
    /// failover to the next one.
    #[error(
        "the gateway refused the token ({code}): {message}\nPass a valid token with --token or ARBOR_TOKEN; create one with `arbor token create --role ROLE` and make sure the nodes were given the tokens file that holds it."
    )]
    Auth { code: ErrorCode, message: String },
    /// The gateway refused a request (a submit, a status, a cancel): bad arguments, a role
    /// that may not do it, too many jobs in flight, an unknown job.
    #[error("{}", refused_text(*.code, .message))]
    Refused {
        code: ErrorCode,
        message: String,
        /// The field at fault, as a path (`job.k`).
        field: Option<String>,
    },
    /// A job was accepted and then failed.
    #[error("job {job} failed ({code}): {message}")]
    JobFailed {
        job: JobId,
        code: ErrorCode,
        message: String,
    },
    /// A job was accepted and then cancelled.
    #[error("job {job} was cancelled{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    JobCancelled { job: JobId, reason: Option<String> },
    /// The gateway closed the connection; the reason is its close code and text.
    #[error("the gateway closed the connection: {0}")]
    Closed(String),
    /// The connection broke.
    #[error(
        "lost the connection to the gateway at {addr}: {source}; run the command again (the next node's gateway is tried when one is down)"
    )]
    Lost {
        addr: SocketAddr,
        source: tungstenite::Error,
    },
    /// The gateway sent something this client cannot read.
    #[error(
        "the gateway at {addr} sent {message}; is that node running the same arbor version as this client?"
    )]
    Protocol { addr: SocketAddr, message: String },
    /// A message this client was asked to send is over the gateway's limit.
    #[error(
        "the message is {bytes} bytes, but the gateway takes at most {limit} bytes per message (max_message_bytes); send less at once"
    )]
    TooLarge { bytes: usize, limit: usize },
    /// The cluster's CA could not be read.
    #[error(transparent)]
    Tls(#[from] arbor_tls::TlsError),
}

fn tried_list(scheme: &str, tried: &[(SocketAddr, String)]) -> String {
    if tried.is_empty() {
        return "  (there was no gateway address to try)\n".into();
    }
    let mut out = String::new();
    for (addr, why) in tried {
        let _ = writeln!(out, "  {scheme}://{addr}/: {why}");
    }
    out
}

fn refused_text(code: ErrorCode, message: &str) -> String {
    let hint = match code {
        ErrorCode::Forbidden => {
            "; use a token with a role that may do this (`arbor token create --role admin`)"
        }
        ErrorCode::Overloaded => "; wait for running jobs to finish, or retry later",
        ErrorCode::Unavailable => "; the cluster is not ready for it now, retry in a moment",
        _ => "",
    };
    format!("the gateway refused the request ({code}): {message}{hint}")
}

impl ClientError {
    /// The gateway's error code, for refusals and failed jobs.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Auth { code, .. }
            | ClientError::Refused { code, .. }
            | ClientError::JobFailed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// An `error` message that ended a job or answered a request.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job: JobId,
    /// succeeded, failed or cancelled.
    pub state: JobState,
    /// Why it failed or was cancelled (from its last `event`).
    pub reason: Option<String>,
    /// The data of its final `result` (the last one when none was marked final).
    pub result: Option<Value>,
    /// The `error` message that ended it, when one did.
    pub error: Option<JobError>,
}

impl JobOutcome {
    pub fn succeeded(&self) -> bool {
        self.state == JobState::Succeeded
    }

    /// The final result data of a job that succeeded (`null` when it sent none), or why it
    /// did not succeed.
    pub fn into_data(self) -> Result<Value, ClientError> {
        match self.state {
            JobState::Succeeded => Ok(self.result.unwrap_or(Value::Null)),
            JobState::Cancelled => Err(ClientError::JobCancelled {
                job: self.job,
                reason: self.reason,
            }),
            _ => {
                let (code, message) = match self.error {
                    Some(e) => (e.code, e.message),
                    None => (
                        ErrorCode::JobFailed,
                        self.reason
                            .unwrap_or_else(|| "the gateway gave no reason".into()),
                    ),
                };
                Err(ClientError::JobFailed {
                    job: self.job,
                    code,
                    message,
                })
            }
        }
    }
}

/// Follows one job's messages to its end. Pure: [`GatewayClient::follow`] feeds it, and so
/// can a caller that reads messages itself (e.g. in a `select!` with ctrl-c).
#[derive(Debug, Clone)]
pub struct JobWatch {
    job: JobId,
    reference: Option<String>,
    result: Option<Value>,
    /// Whether `result` came in a result marked final.
    result_final: bool,
}

impl JobWatch {
    /// Watches `job`; `reference` is the `ref` of its submit, when there was one.
    pub fn new(job: impl Into<JobId>, reference: Option<String>) -> JobWatch {
        JobWatch {
            job: job.into(),
            reference,
            result: None,
            result_final: false,
        }
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// Whether `msg` is about this job.
    pub fn concerns(&self, msg: &ServerMsg) -> bool {
        match msg {
            ServerMsg::Progress { job, .. }
            | ServerMsg::Token { job, .. }
            | ServerMsg::Result { job, .. }
            | ServerMsg::Event { job, .. } => *job == self.job,
            ServerMsg::Error { job, reference, .. } => {
                job.as_deref() == Some(self.job.as_str())
                    || (reference.is_some() && *reference == self.reference)
            }
            _ => false,
        }
    }

    /// Takes one message about this job; `Some` once the job has ended.
    pub fn observe(&mut self, msg: &ServerMsg) -> Option<JobOutcome> {
        if !self.concerns(msg) {
            return None;
        }
        match msg {
            ServerMsg::Result { data, last, .. } => {
                // A part is kept only until a later part or the final result comes.
                if *last || !self.result_final {
                    self.result = Some(data.clone());
                    self.result_final = *last;
                }
                None
            }
            ServerMsg::Event { state, reason, .. } if state.is_finished() => Some(JobOutcome {
                job: self.job.clone(),
                state: *state,
                reason: reason.clone(),
                result: self.result.take(),
                error: None,
            }),
            ServerMsg::Error {
                code,
                message,
                field,
                ..
            } => Some(JobOutcome {
                job: self.job.clone(),
                state: JobState::Failed,
                reason: Some(message.clone()),
                result: self.result.take(),
                error: Some(JobError {
                    code: *code,
                    message: message.clone(),
                    field: field.clone(),
                }),
            }),
            _ => None,
        }
    }
}

/// An authenticated connection to one node's gateway.
pub struct GatewayClient {
    ws: Ws,
    addr: SocketAddr,
    node: u64,
    role: Role,
    token_id: String,
    limits: Limits,
    /// Messages read from the socket that nobody has taken yet, in arrival order.
    queue: VecDeque<ServerMsg>,
    next_ref: u64,
    next_nonce: u64,
}

/// What one node said to an `auth` attempt.
enum Attempt {
    Ok(Box<GatewayClient>),
    /// The gateway refused the token: do not try another node.
    Refused(ClientError),
    /// This node is out of reach or not ready: try the next.
    Failed(String),
}

impl GatewayClient {
    /// Connects to the first of `addrs` (tried in order) whose gateway accepts `token`. A node
    /// that refuses the connection, does not answer within `per_node_timeout` or is not ready
    /// is skipped; a refused token ends the attempt at once ([`ClientError::Auth`]).
    pub async fn connect(
        addrs: &[SocketAddr],
        trust: &Trust,
        token: &str,
        per_node_timeout: Duration,
    ) -> Result<GatewayClient, ClientError> {
        Self::connect_from(
            addrs,
            trust,
            token,
            per_node_timeout,
            "the addresses given".into(),
        )
        .await
    }

    /// [`GatewayClient::connect`], naming where the addresses came from (a cluster.toml path)
    /// in the error that says none answered.
    pub async fn connect_from(
        addrs: &[SocketAddr],
        trust: &Trust,
        token: &str,
        per_node_timeout: Duration,
        origin: String,
    ) -> Result<GatewayClient, ClientError> {
        let mut tried = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let attempt =
                tokio::time::timeout(per_node_timeout, Self::attempt(addr, trust, token)).await;
            match attempt {
                Ok(Attempt::Ok(client)) => return Ok(*client),
                Ok(Attempt::Refused(e)) => return Err(e),
                Ok(Attempt::Failed(why)) => tried.push((addr, why)),
                Err(_) => tried.push((
                    addr,
                    format!(
                        "no answer within {}",
                        humantime::format_duration(per_node_timeout)
                    ),
                )),
            }
        }
        Err(ClientError::Unreachable {
            scheme: trust.scheme(),
            tried,
            origin,
        })
    }

    async fn attempt(addr: SocketAddr, trust: &Trust, token: &str) -> Attempt {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INCOMING_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_INCOMING_FRAME_BYTES));
        let tcp = match TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Duplex> = match trust {
            Trust::Plain => Box::new(tcp),
            Trust::Ca(connector) => {
                match connector
                    .connect(arbor_tls::gateway_server_name(), tcp)
                    .await
                {
                    Ok(tls) => Box::new(tls),
                    Err(e) => {
                        return Attempt::Failed(format!(
                            "TLS handshake failed: {e} (a node of this cluster presents a \
                             certificate signed by its CA; is this the cluster's ca.pem, and \
                             does the node speak TLS?)"
                        ));
                    }
                }
            }
        };
        let url = format!("{}://{addr}/", trust.scheme());
        let mut ws =
            match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
                Ok((ws, _response)) => ws,
                Err(tungstenite::Error::Io(e)) => return Attempt::Failed(e.to_string()),
                Err(tungstenite::Error::Http(response)) => {
                    return Attempt::Failed(format!(
                        "answered HTTP {} instead of a WebSocket: is this a gateway address?",
                        response.status()
                    ));
                }
                Err(e) => return Attempt::Failed(format!("WebSocket handshake failed: {e}")),
            };
        let auth = ClientMsg::Auth {
            v: PROTOCOL_VERSION,
            token: token.to_owned(),
        };
        if let Err(e) = ws.send(Message::text(encode(&auth))).await {
            return Attempt::Failed(format!("cannot send auth: {e}"));
        }
        let mut client = GatewayClient {
            ws,
            addr,
            node: 0,
            role: Role::Reader,
            token_id: String::new(),
            limits: Limits {
                max_message_bytes: 4 << 20,
                max_jobs_per_connection: 64,
                max_jobs_per_token: 256,
            },
            queue: VecDeque::new(),
            next_ref: 0,
            next_nonce: 0,
        };
        match client.read().await {
            Ok(ServerMsg::Authenticated {
                node,
                role,
                token_id,
                limits,
                ..
            }) => {
                client.node = node;
                client.role = role;
                client.token_id = token_id;
                client.limits = limits;
                Attempt::Ok(Box::new(client))
            }
            // A node that cannot check tokens now, or takes no more connections, is no
            // reason to give up on the others.
            Ok(ServerMsg::Error {
                code: code @ (ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Internal),
                message,
                ..
            }) => Attempt::Failed(format!("not ready ({code}): {message}")),
            Ok(ServerMsg::Error { code, message, .. }) => {
                Attempt::Refused(ClientError::Auth { code, message })
            }
            Ok(other) => Attempt::Failed(format!(
                "answered auth with a {} message instead of authenticated",
                msg_type(&other)
            )),
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// The address of the gateway this client is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node whose gateway this is.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The token's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The token's id (not the secret).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// The limits the gateway enforces on this connection.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A `ref` not used before on this connection.
    pub fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("r{}", self.next_ref)
    }

    /// Submits a job and waits until the gateway accepts it (or refuses it). Messages about
    /// other jobs that arrive meanwhile stay queued for [`Self::next_event`].
    pub async fn submit(&mut self, job: JobSpec) -> Result<JobId, ClientError> {
        self.submit_with(job, false).await.map(|(job, _)| job)
    }

    /// [`Self::submit`], asking the control plane to record the job even if its kind is not
    /// recorded by default; also returns the `ref` it was sent with.
    pub async fn submit_with(
        &mut self,
        job: JobSpec,
        record: bool,
    ) -> Result<(JobId, String), ClientError> {
        let reference = self.fresh_ref();
        self.send_raw(&ClientMsg::Submit {
            reference: Some(reference.clone()),
            record,
            job,
        })
        .await?;
        let answer = self
            .recv_matching(|m| match m {
                ServerMsg::Accepted { reference: r, .. } => r.as_deref() == Some(&reference),
                ServerMsg::Error {
                    reference: r, job, ..
                } => r.as_deref() == Some(&reference) || (r.is_none() && job.is_none()),
                _ => false,
            })
            .await?;
        match answer {
            ServerMsg::Accepted { job, .. } => Ok((job, reference)),
            other => Err(refusal(other)),
        }
    }

    /// Submits `job` and takes its messages until it ends, handing each (progress, tokens,
    /// partial results, events) to `on_event`. A job that is refused is an `Err`; one that
    /// was accepted ends in a [`JobOutcome`] (see [`JobOutcome::into_data`]).
    pub async fn run(
        &mut self,
        job: JobSpec,
        on_event: impl FnMut(&ServerMsg),
    ) -> Result<JobOutcome, ClientError> {
        let (id, reference) = self.submit_with(job, false).await?;
        self.follow(&mut JobWatch::new(id, Some(reference)), on_event)
            .await
    }

    /// Takes `watch`'s job's messages until it ends, handing each to `on_event`; messages
    /// about anything else stay queued. Cancel-safe: `watch` keeps what it has seen.
    pub async fn follow(
        &mut self,
        watch: &mut JobWatch,
        mut on_event: impl FnMut(&ServerMsg),
    ) -> Result<JobOutcome, ClientError> {
        loop {
            let msg = self.recv_matching(|m| watch.concerns(m)).await?;
            on_event(&msg);
            if let Some(outcome) = watch.observe(&msg) {
                return Ok(outcome);
            }
        }
    }

    /// Asks for a job's events from where it is now; take them with [`Self::follow`]
    /// (`JobWatch::new(job, None)`) or [`Self::next_event`].
    pub async fn subscribe(&mut self, job: &str) -> Result<(), ClientError> {
        self.send_raw(&ClientMsg::Subscribe { job: job.into() })
            .await
    }

    /// One job's record (`job`), or the most recent jobs, newest first (at most `limit`).
    pub async fn status(
        &mut self,
        job: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<JobView>, ClientError> {
        self.send_raw(&ClientMsg::Status {
            job: job.map(str::to_owned),
            limit,
        })
        .await?;
        let answer = self
            .recv_matching(|m| match (m, job) {
                (ServerMsg::Job { job: view }, Some(id)) => view.id == id,
                (ServerMsg::Jobs { .. }, None) => true,
                (
                    ServerMsg::Error {
                        reference: None,
                        job: j,
                        ..
                    },
                    _,
                ) => j.is_none() || j.as_deref() == job,
                _ => false,
            })
            .await?;
        match answer {
            ServerMsg::Job { job } => Ok(vec![job]),
            ServerMsg::Jobs { jobs } => Ok(jobs),
            other => Err(refusal(other)),
        }
    }

    /// Cancels a job. `Ok` once the gateway says it is cancelled; a job that has already
    /// finished is [`ClientError::Refused`] with code `job_finished`, an unknown one
    /// `not_found`.
    pub async fn cancel(&mut self, job: &str) -> Result<(), ClientError> {
        self.send_raw(&ClientMsg::Cancel { job: job.into() })
            .await?;
        let answer = self
            .recv_matching(|m| match m {
                ServerMsg::Event { job: j, state, .. } => j == job && *state == JobState::Cancelled,
                ServerMsg::Error {
                    job: j,
                    reference: None,
                    ..
                } => j.as_deref() == Some(job) || j.is_none(),
                _ => false,
            })
            .await?;
        match answer {
            ServerMsg::Event { .. } => Ok(()),
            other => Err(refusal(other)),
        }
    }

    /// Sends a `ping` and returns the time until its `pong`.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let start = Instant::now();
        self.send_raw(&ClientMsg::Ping { nonce: Some(nonce) })
            .await?;
        self.recv_matching(|m| matches!(m, ServerMsg::Pong { nonce: Some(n) } if *n == nonce))
            .await?;
        Ok(start.elapsed())
    }

    /// The next message from the gateway (queued ones first). Cancel-safe.
    pub async fn next_event(&mut self) -> Result<ServerMsg, ClientError> {
        match self.queue.pop_front() {
            Some(msg) => Ok(msg),
            None => self.read().await,
        }
    }

    /// Sends one message as it is: with [`Self::recv_raw`], for callers that keep many jobs
    /// in flight (give each submit its own `ref`, e.g. from [`Self::fresh_ref`]).
    pub async fn send_raw(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let text = self.encode_checked(msg)?;
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| self.lost(e))
    }

    /// Sends several messages with one flush.
    pub async fn send_raw_all(&mut self, msgs: &[ClientMsg]) -> Result<(), ClientError> {
        for msg in msgs {
            let text = self.encode_checked(msg)?;
            let sent = self.ws.feed(Message::text(text)).await;
            sent.map_err(|e| self.lost(e))?;
        }
        let flushed = self.ws.flush().await;
        flushed.map_err(|e| self.lost(e))
    }

    /// The next message from the gateway, as it is. Cancel-safe.
    pub async fn recv_raw(&mut self) -> Result<ServerMsg, ClientError> {
        self.next_event().await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    fn encode_checked(&self, msg: &ClientMsg) -> Result<String, ClientError> {
        let text = encode(msg);
        if text.len() > self.limits.max_message_bytes {
            return Err(ClientError::TooLarge {
                bytes: text.len(),
                limit: self.limits.max_message_bytes,
            });
        }
        Ok(text)
    }

    /// The first queued or arriving message for which `wanted` holds; the others stay queued
    /// in order. Cancel-safe: the only await is the socket read.
    async fn recv_matching(
        &mut self,
        mut wanted: impl FnMut(&ServerMsg) -> bool,
    ) -> Result<ServerMsg, ClientError> {
        if let Some(i) = self.queue.iter().position(&mut wanted)
            && let Some(msg) = self.queue.remove(i)
        {
            return Ok(msg);
        }
        loop {
            let msg = self.read().await?;
            if wanted(&msg) {
                return Ok(msg);
            }
            self.queue.push_back(msg);
        }
    }

    /// One message from the socket. Cancel-safe.
    async fn read(&mut self) -> Result<ServerMsg, ClientError> {
        loop {
            let frame = match self.ws.next().await {
                None => {
                    return Err(ClientError::Closed(
                        "the connection ended without a close frame".into(),
                    ));
                }
                Some(Err(e)) => return Err(self.lost(e)),
                Some(Ok(frame)) => frame,
            };
            match frame {
                Message::Text(text) => {
                    return parse_server(text.as_str()).map_err(|e| ClientError::Protocol {
                        addr: self.addr,
                        message: format!("a message this client cannot read ({e})"),
                    });
                }
                Message::Binary(_) => {
                    return Err(ClientError::Protocol {
                        addr: self.addr,
                        message: "a binary frame (the protocol has only text frames)".into(),
                    });
                }
                Message::Close(frame) => return Err(ClientError::Closed(close_reason(frame))),
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    fn lost(&self, e: tungstenite::Error) -> ClientError {
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                ClientError::Closed("the connection is closed".into())
            }
            source => ClientError::Lost {
                addr: self.addr,
                source,
            },
        }
    }
}

/// An `error` answer as a [`ClientError::Refused`].
fn refusal(msg: ServerMsg) -> ClientError {
    match msg {
        ServerMsg::Error {
            code,
            message,
            field,
            ..
        } => ClientError::Refused {
            code,
            message,
            field,
        },
        other => ClientError::Refused {
            code: ErrorCode::Internal,
            message: format!("unexpected {} message", msg_type(&other)),
            field: None,
        },
    }
}

fn close_reason(frame: Option<CloseFrame>) -> String {
    match frame {
        None => "no reason given".into(),
        Some(f) if f.reason.is_empty() => format!("close code {}", u16::from(f.code)),
        Some(f) => format!("{} (close code {})", f.reason.as_str(), u16::from(f.code)),
    }
}

/// The `type` tag of a server message.
pub fn msg_type(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::Authenticated { .. } => "authenticated",
        ServerMsg::Accepted { .. } => "accepted",
        ServerMsg::Progress { .. } => "progress",
        ServerMsg::Token { .. } => "token",
        ServerMsg::Result { .. } => "result",
        ServerMsg::Event { .. } => "event",
        ServerMsg::Job { .. } => "job",
        ServerMsg::Jobs { .. } => "jobs",
        ServerMsg::Pong { .. } => "pong",
        ServerMsg::Error { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    fn event(job: &str, state: JobState) -> ServerMsg {
        ServerMsg::Event {
            job: job.into(),
            state,
            reason: None,
        }
    }

    fn result(job: &str, data: Value, last: bool) -> ServerMsg {
        ServerMsg::Result {
            job: job.into(),
            data,
            last,
        }
    }

    fn error(reference: Option<&str>, job: Option<&str>, code: ErrorCode) -> ServerMsg {
        ServerMsg::Error {
            reference: reference.map(str::to_owned),
            job: job.map(str::to_owned),
            code,
            message: "m".into(),
            field: None,
        }
    }

    #[test]
    fn a_watch_keeps_the_final_result_and_ends_on_the_last_event() {
        let mut w = JobWatch::new("j1", Some("r1".into()));
        assert!(!w.concerns(&event("j2", JobState::Succeeded)));
        assert!(w.concerns(&error(Some("r1"), None, ErrorCode::Overloaded)));
        assert!(!w.concerns(&error(Some("r2"), None, ErrorCode::Overloaded)));
        assert_eq!(w.observe(&event("j1", JobState::Running)), None);
        assert_eq!(w.observe(&result("j1", json!({"part": 1}), false)), None);
        assert_eq!(w.observe(&result("j1", json!({"all": true}), true)), None);
        // A part after the final result does not replace it.
        assert_eq!(w.observe(&result("j1", json!({"part": 2}), false)), None);
        // Another job's end is not this one's.
        assert_eq!(w.observe(&event("j2", JobState::Failed)), None);
        let done = w.observe(&event("j1", JobState::Succeeded)).unwrap();
        assert_eq!(done.result, Some(json!({"all": true})));
        assert_eq!(done.into_data().unwrap(), json!({"all": true}));
    }

    #[test]
    fn an_error_for_the_job_ends_it_as_a_failure() {
        let mut w = JobWatch::new("j1", Some("r1".into()));
        let done = w
            .observe(&error(None, Some("j1"), ErrorCode::Unavailable))
            .unwrap();
        assert_eq!(done.state, JobState::Failed);
        assert_eq!(done.error.as_ref().unwrap().code, ErrorCode::Unavailable);
        let e = done.into_data().unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        assert_eq!(e.to_string(), "job j1 failed (unavailable): m");

        let failed = JobWatch::new("j2", None)
            .observe(&ServerMsg::Event {
                job: "j2".into(),
                state: JobState::Failed,
                reason: Some("model replica died".into()),
            })
            .unwrap();
        assert_eq!(
            failed.into_data().unwrap_err().to_string(),
            "job j2 failed (job_failed): model replica died"
        );
        let cancelled = JobWatch::new("j3", None)
            .observe(&event("j3", JobState::Cancelled))
            .unwrap();
        assert!(matches!(
            cancelled.into_data(),
            Err(ClientError::JobCancelled { .. })
        ));
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        let e = ClientError::Unreachable {
            scheme: "ws",
            tried: vec![
                (
                    "127.0.0.1:7001".parse().unwrap(),
                    "connection refused".into(),
                ),
                (
                    "127.0.0.1:7002".parse().unwrap(),
                    "no answer within 3s".into(),
                ),
            ],
            origin: "cluster.toml".into(),
        }
        .to_string();
        assert!(
            e.contains("ws://127.0.0.1:7001/: connection refused\n"),
            "{e}"
        );
        assert!(
            e.contains("ws://127.0.0.1:7002/: no answer within 3s\n"),
            "{e}"
        );
        assert!(
            e.contains("nodes run") && e.contains("addresses in cluster.toml"),
            "{e}"
        );
        let e = ClientError::Auth {
            code: ErrorCode::AuthFailed,
            message: "unknown token".into(),
        }
        .to_string();
        assert!(
            e.contains("auth_failed") && e.contains("arbor token create"),
            "{e}"
        );
        let e = refusal(error(Some("r"), None, ErrorCode::Forbidden)).to_string();
        assert!(e.contains("forbidden") && e.contains("--role"), "{e}");
    }

    /// A one-connection fake gateway: answers auth with `auth_reply`, then sends `script`'s
    /// messages as the client's messages come (one reply list per client message).
    async fn fake_gateway(auth_reply: ServerMsg, script: Vec<Vec<ServerMsg>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let Some(Ok(Message::Text(auth))) = ws.next().await else {
                return;
            };
            assert!(auth.as_str().contains(r#""type":"auth""#), "{auth}");
            ws.send(Message::text(encode(&auth_reply))).await.unwrap();
            for replies in script {
                if ws.next().await.is_none() {
                    return;
                }
                for r in replies {
                    ws.send(Message::text(encode(&r))).await.unwrap();
                }
            }
            let _ = ws
                .close(Some(CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Policy,
                    reason: "bye".into(),
                }))
                .await;
        });
        addr
    }

    fn authenticated(node: u64) -> ServerMsg {
        ServerMsg::Authenticated {
            v: 1,
            node,
            role: Role::User,
            token_id: "t1".into(),
            limits: Limits {
                max_message_bytes: 1 << 20,
                max_jobs_per_connection: 64,
                max_jobs_per_token: 256,
            },
        }
    }

    /// An address nothing listens on.
    async fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connect_skips_dead_nodes_and_keeps_order() {
        let dead = dead_addr().await;
        let live = fake_gateway(authenticated(2), vec![]).await;
        let c = GatewayClient::connect(&[dead, live], &Trust::Plain, "tok", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!((c.node(), c.role(), c.addr()), (2, Role::User, live));
        assert_eq!(c.limits().max_message_bytes, 1 << 20);

        let e = GatewayClient::connect(&[dead], &Trust::Plain, "tok", Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        let ClientError::Unreachable { tried, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(tried[0].0, dead);
    }

    #[tokio::test]
    async fn a_refused_token_does_not_fail_over() {
        let refusing = fake_gateway(error(None, None, ErrorCode::AuthFailed), vec![]).await;
        // A second gateway that would accept: it must not be asked.
        let accepting = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = accepting.local_addr().unwrap();
        let e = GatewayClient::connect(
            &[refusing, other],
            &Trust::Plain,
            "bad",
            Duration::from_secs(2),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(
                e,
                ClientError::Auth {
                    code: ErrorCode::AuthFailed,
                    ..
                }
            ),
            "{e}"
        );
        let asked = tokio::time::timeout(Duration::from_millis(100), accepting.accept()).await;
        assert!(asked.is_err(), "the second gateway was tried");
    }

    #[tokio::test]
    async fn messages_that_arrive_while_waiting_are_kept() {
        let other_progress = ServerMsg::Progress {
            job: "other".into(),
            done: 1,
            total: 2,
            unit: "documents".into(),
        };
        let accepted = ServerMsg::Accepted {
            reference: Some("r1".into()),
            job: "j1".into(),
            kind: "query".into(),
            node: 1,
            recorded: false,
        };
        let script = vec![vec![
            other_progress.clone(),
            accepted,
            result("j1", json!({"results": []}), true),
            event("j1", JobState::Succeeded),
        ]];
        let addr = fake_gateway(authenticated(1), script).await;
        let mut c = GatewayClient::connect(&[addr], &Trust::Plain, "tok", Duration::from_secs(2))
            .await
            .unwrap();
        let job = JobSpec::Query(arbor_proto::gateway::QueryJob {
            collection: "c".into(),
            text: Some("t".into()),
            vector: None,
            k: 1,
            filter: None,
            ef: None,
        });
        let mut seen = 0;
        let outcome = c.run(job, |_| seen += 1).await.unwrap();
        assert_eq!(outcome.job, "j1");
        assert_eq!(outcome.into_data().unwrap(), json!({"results": []}));
        assert_eq!(seen, 2);
        // The other job's progress waited in the queue.
        assert_eq!(c.next_event().await.unwrap(), other_progress);
        // Then the gateway closes: the reason is passed on.
        match c.next_event().await {
            Err(ClientError::Closed(why)) => assert!(why.contains("bye"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn too_large_messages_are_not_sent() {
        let addr = fake_gateway(authenticated(1), vec![]).await;
        let mut c = GatewayClient::connect(&[addr], &Trust::Plain, "tok", Duration::from_secs(2))
            .await
            .unwrap();
        let job = JobSpec::Embed(arbor_proto::gateway::EmbedJob {
            texts: vec!["x".repeat(2 << 20)],
            deployment: None,
        });
        let e = c.submit(job).await.unwrap_err();
        assert!(
            matches!(e, ClientError::TooLarge { limit: 1048576, .. }),
            "{e}"
        );
    }
}
