//! One control-plane node: a tokio task that owns the `RawNode` and drives the Ready loop, the
//! transport tasks around it, and [`RaftHandle`], the cloneable client API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::codec::CodecError;
use crate::command::{Command, CommandOutcome, Rejection};
use crate::config::{Bootstrap, ClientTiming, NodeConfig};
use crate::founding::{self, Founding};
use crate::logger::raft_logger;
use crate::machine::{ApplyResult, ConfContext, Proposal, RequestId, StateMachine};
use crate::state::{ClusterState, NodeId};
use crate::storage::{RedbStorage, StoreError, WriteBatch};
use crate::tasks::TaskGroup;
use crate::transport::{NetEvent, Transport};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node id 0 is reserved by raft")]
    ZeroId,
    #[error("cannot listen for raft peers on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("stored snapshot: {0}")]
    Snapshot(#[from] CodecError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("bootstrap voter list {0:?} must be non-empty, without 0, and include this node")]
    BadBootstrap(Vec<NodeId>),
}

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused the command; nothing changed.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// Not applied within the propose timeout (no quorum, or no leader). It may still apply
    /// later.
    #[error("not applied within {0:?} (no leader or no quorum)")]
    Timeout(Duration),
    /// The node is shutting down or stopped.
    #[error("the raft node stopped")]
    Stopped,
    #[error("cannot encode the command: {0}")]
    Encode(String),
}

/// Why a linearizable read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no read index confirmed within {0:?} (no leader or no quorum)")]
    Timeout(Duration),
    #[error("the raft node stopped")]
    Stopped,
}

/// Why a node's Ready loop stopped on its own: the node can no longer take part in the
/// control plane, and a process that keeps running actors without one is a split brain
/// (its placements move elsewhere while it still serves them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// The raft log could not be written (disk full, I/O error).
    #[error("raft storage failed: {0}")]
    Storage(String),
    /// A committed entry or a snapshot from the leader does not decode: applying around it
    /// would let this node's state differ from every other's (a newer version's command,
    /// or corruption).
    #[error("committed entry {index} cannot be applied: {reason}")]
    Undecodable { index: u64, reason: String },
    /// The Ready loop panicked (raft-rs panics on invariants it cannot keep).
    #[error("the raft driver panicked: {0}")]
    Panicked(String),
    /// The leader knows this node acknowledged entries its storage no longer holds.
    #[error(
        "this node's raft storage lost entries it acknowledged (leader {leader} knows it had up to \
         index {expected}; it holds {held}): its data dir was wiped or replaced. Remove it \
         (`arbor cluster remove-node ID`), then add it again with an empty data dir \
         (`arbor cluster add-node ID`)"
    )]
    LostAcknowledged {
        leader: u64,
        expected: u64,
        held: u64,
    },
}

/// The node's role in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// Replication progress of one member, as far as this node knows (only a leader knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProgress {
    pub id: NodeId,
    /// Highest log index known to be on that member (leader only).
    pub matched: Option<u64>,
    /// Milliseconds since this node last received a raft message from that member (`None`:
    /// never since this node started). On the leader this is the member's heartbeat: the
    /// reconciler marks a member down once it exceeds `node_timeout`.
    pub last_heard_ms: Option<u64>,
}

/// A snapshot of one node's raft status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub role: Role,
    pub commit: u64,
    pub applied: u64,
    /// Index of the last snapshot (the log starts after it).
    pub snapshot_index: u64,
    pub voters: Vec<MemberProgress>,
    pub learners: Vec<MemberProgress>,
    /// Raft messages the transport dropped (full queue or unknown peer).
    pub dropped_messages: u64,
}

/// A change applied on this node, for local watchers.
#[derive(Debug, Clone)]
pub enum StateEvent {
    /// A command applied at `index` (including rejected ones, with their reason).
    Applied {
        index: u64,
        command: Arc<Command>,
        result: ApplyResult,
    },
    /// Membership changed at `index`.
    Membership {
        index: u64,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    /// The whole state was replaced by a snapshot from the leader: re-read everything.
    Restored { index: u64 },
}

/// A read, given the applied index and the state at that index.
type ReadFn = Box<dyn FnOnce(u64, &ClusterState) + Send>;
type ProposeReply = oneshot::Sender<Result<CommandOutcome, ProposeError>>;

enum Request {
    Propose {
        id: RequestId,
        entry: PendingEntry,
        reply: ProposeReply,
    },
    Read {
        f: ReadFn,
    },
    ReadLocal {
        f: ReadFn,
    },
    Status(oneshot::Sender<NodeStatus>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone)]
enum PendingEntry {
    Normal(Vec<u8>),
    Conf(ConfChange),
}

struct PendingProposal {
    entry: PendingEntry,
    reply: ProposeReply,
    /// When raft last accepted it (None: not yet, retry on the next tick).
    proposed_at: Option<Instant>,
}

struct PendingRead {
    f: ReadFn,
    issued: Instant,
    deadline: Instant,
}

/// The cloneable client API of one node. Every method may be called from any node; the
/// node forwards proposals to the leader and retries them across leader changes.
#[derive(Clone)]
pub struct RaftHandle {
    id: NodeId,
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<StateEvent>,
    seq: Arc<AtomicU64>,
    client: ClientTiming,
    halted: watch::Receiver<Option<Halt>>,
}

impl RaftHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Resolves once the node's Ready loop has stopped on its own, with the reason; never
    /// while the node runs or after a requested shutdown or kill.
    pub async fn halted(&self) -> Halt {
        let mut rx = self.halted.clone();
        loop {
            if let Some(h) = rx.borrow_and_update().clone() {
                return h;
            }
            if rx.changed().await.is_err() {
                // The sender is gone without a halt: shut down or killed. Never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    fn next_id(&self) -> RequestId {
        RequestId::now(self.id, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    async fn submit(&self, entry: PendingEntry) -> Result<CommandOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let id = self.next_id();
        let entry = match entry {
            PendingEntry::Normal(_) => entry,
            PendingEntry::Conf(mut cc) => {
                let mut ctx = ConfContext::decode(&cc.context)
                    .map_err(|e| ProposeError::Encode(format!("membership context: {e}")))?;
                ctx.id = id;
                cc.context = ctx
                    .encode()
                    .map_err(|e| ProposeError::Encode(e.to_string()))?
                    .into();
                PendingEntry::Conf(cc)
            }
        };
        self.tx
            .send(Request::Propose { id, entry, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        let timeout = self.client.propose_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    /// Proposes `command` and waits until it is applied; returns its outcome, or the reason
    /// the state machine rejected it.
    pub async fn propose(&self, command: Command) -> Result<CommandOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let id = self.next_id();
        let data = Proposal { id, command }
            .encode()
            .map_err(|e| ProposeError::Encode(e.to_string()))?;
        self.tx
            .send(Request::Propose {
                id,
                entry: PendingEntry::Normal(data),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        let timeout = self.client.propose_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    /// Proposes raw entry bytes, as a newer version's command would look to this one: only
    /// for tests of what a node does with an entry it cannot decode.
    #[doc(hidden)]
    pub async fn propose_undecodable(&self, data: Vec<u8>) -> Result<(), ProposeError> {
        let (reply, _rx) = oneshot::channel();
        self.tx
            .send(Request::Propose {
                id: self.next_id(),
                entry: PendingEntry::Normal(data),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// Runs `f` on a linearizable view of the state: after a ReadIndex round confirms this
    /// node has applied everything committed when the read began. `f` runs on the node's
    /// Ready loop, so keep it short (clone what you need).
    pub async fn read<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&ClusterState) -> R + Send + 'static,
    {
        self.read_at(move |_, s| f(s)).await
    }

    /// [`RaftHandle::read`], with the applied index the state is at.
    pub async fn read_at<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(u64, &ClusterState) -> R + Send + 'static,
    {
        let rx = self.enqueue(f, |f| Request::Read { f }).await?;
        let timeout = self.client.read_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            // The node dropped the read: its deadline passed, or it stopped.
            Ok(Err(_)) => Err(ReadError::Timeout(timeout)),
            Err(_) => Err(ReadError::Timeout(timeout)),
        }
    }

    /// Hands `f` to the Ready loop as the request `wrap` makes; its result comes back on the
    /// returned channel.
    async fn enqueue<R, F>(
        &self,
        f: F,
        wrap: impl FnOnce(ReadFn) -> Request,
    ) -> Result<oneshot::Receiver<R>, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(u64, &ClusterState) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let f: ReadFn = Box::new(move |applied, s| {
            let _ = tx.send(f(applied, s));
        });
        self.tx
            .send(wrap(f))
            .await
            .map_err(|_| ReadError::Stopped)?;
        Ok(rx)
    }

    /// Runs `f` on this node's state as applied so far, without asking the leader: possibly
    /// stale, but answered even without a quorum. For work that follows commits anyway
    /// (a node agent watching its own placements).
    pub async fn read_local<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&ClusterState) -> R + Send + 'static,
    {
        self.read_local_at(move |_, s| f(s)).await
    }

    /// [`RaftHandle::read_local`], with the applied index the state is at.
    pub async fn read_local_at<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(u64, &ClusterState) -> R + Send + 'static,
    {
        let rx = self.enqueue(f, |f| Request::ReadLocal { f }).await?;
        rx.await.map_err(|_| ReadError::Stopped)
    }

    /// A linearizable copy of the whole state.
    pub async fn read_state(&self) -> Result<ClusterState, ReadError> {
        self.read(|s| s.clone()).await
    }

    /// Changes applied on this node from now on. A receiver that falls behind gets
    /// `RecvError::Lagged` and should re-read the state.
    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    /// This node's raft status.
    pub async fn status(&self) -> Result<NodeStatus, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Status(tx))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)
    }

    fn conf(
        &self,
        change: ConfChangeType,
        node: NodeId,
        address: Option<String>,
        promote: bool,
    ) -> Result<PendingEntry, ProposeError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = node;
        let ctx = ConfContext {
            id: RequestId {
                origin: 0,
                seq: 0,
                at_ms: 0,
            },
            address,
            promote_when_caught_up: promote,
        };
        cc.context = ctx
            .encode()
            .map_err(|e| ProposeError::Encode(e.to_string()))?
            .into();
        Ok(PendingEntry::Conf(cc))
    }

    /// Adds node `id` (reachable for raft at `raft_addr`) as a learner; the leader promotes it
    /// to voter once it has caught up. Returns when the learner is in the configuration; poll
    /// [`RaftHandle::status`] (voters) to see the promotion.
    pub async fn add_node(
        &self,
        id: NodeId,
        raft_addr: String,
    ) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::AddLearnerNode, id, Some(raft_addr), true)?;
        self.submit(e).await
    }

    /// Adds node `id` as a learner that stays a learner.
    pub async fn add_learner(
        &self,
        id: NodeId,
        raft_addr: String,
    ) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::AddLearnerNode, id, Some(raft_addr), false)?;
        self.submit(e).await
    }

    /// Promotes learner `id` to voter now (rejected unless it is a learner).
    pub async fn promote(&self, id: NodeId) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::AddNode, id, None, false)?;
        self.submit(e).await
    }

    /// Removes member `id` (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<CommandOutcome, ProposeError> {
        let e = self.conf(ConfChangeType::RemoveNode, id, None, false)?;
        self.submit(e).await
    }
}

/// A running node. Dropping it leaves the tasks running; call [`RaftNode::shutdown`] or
/// [`RaftNode::kill`].
pub struct RaftNode {
    handle: RaftHandle,
    tasks: TaskGroup,
    driver: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

impl RaftNode {
    /// Binds `config.listen` and starts the node.
    pub async fn start(config: NodeConfig) -> Result<RaftNode, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Self::start_with_listener(config, listener).await
    }

    /// Starts the node on an already-bound listener (tests bind port 0 first).
    pub async fn start_with_listener(
        config: NodeConfig,
        listener: TcpListener,
    ) -> Result<RaftNode, StartError> {
        if config.id == 0 {
            return Err(StartError::ZeroId);
        }
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let path = config.data_path.clone();
        let mut storage = blocking(|| RedbStorage::open(&path))?;
        if storage.is_empty()
            && let Bootstrap::Voters(voters) = &config.bootstrap
            && (voters.is_empty() || voters.contains(&0) || !voters.contains(&config.id))
        {
            return Err(StartError::BadBootstrap(voters.clone()));
        }
        // The transport listens first: founding voters that start empty ask each other
        // whether a cluster already runs (see `founding`).
        let tasks = TaskGroup::default();
        let (net_tx, net_rx) = mpsc::channel(16_384);
        let transport = Transport::start(
            config.id,
            listener,
            config.peers.clone().into_iter().collect(),
            config.secret.clone(),
            config.transport.clone(),
            net_tx,
            tasks.clone(),
        );
        transport.set_founded(!storage.is_empty());
        if storage.is_empty()
            && let Bootstrap::Voters(voters) = &config.bootstrap
        {
            let mut voters = voters.clone();
            voters.sort_unstable();
            voters.dedup();
            let patience = config.raft.tick * (config.raft.election_ticks as u32) * 10;
            match founding::ask_voters(&transport, config.id, &voters, patience).await {
                Founding::Join => info!(
                    node = config.id,
                    ?voters,
                    "a cluster of these voters already runs: starting empty, for its leader to \
                     catch this node up (a node appended to cluster.toml waits for `arbor \
                     cluster add-node`)"
                ),
                Founding::Found | Founding::Wait => {
                    let initial = StateMachine::default().encode().inspect_err(|_| {
                        tasks.abort_all();
                    })?;
                    if let Err(e) = blocking(|| storage.bootstrap(&voters, initial)) {
                        tasks.abort_all();
                        return Err(e.into());
                    }
                    transport.set_founded(true);
                    info!(node = config.id, ?voters, "bootstrapped a new raft cluster");
                }
            }
        }
        let snap_index = storage.snapshot_index();
        let machine = if snap_index > 0 {
            StateMachine::decode(storage.snapshot_data())?
        } else {
            StateMachine::default()
        };
        info!(
            node = config.id,
            snapshot = snap_index,
            persisted_applied = storage.persisted_applied(),
            commit = storage.hard_state().commit,
            term = storage.hard_state().term,
            "raft storage loaded from {}",
            storage.path()
        );
        let t = &config.raft;
        let raft_cfg = raft::Config {
            id: config.id,
            election_tick: t.election_ticks,
            heartbeat_tick: t.heartbeat_ticks,
            applied: snap_index,
            max_size_per_msg: t.max_append_bytes,
            max_inflight_msgs: t.max_inflight_appends,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, storage, &raft_logger(config.id))?;

        for (id, addr) in &machine.state.raft_members {
            transport.learn_address(*id, addr.clone());
        }
        let (tx, rx) = mpsc::channel(16_384);
        let (events, _) = broadcast::channel(4096);
        let (halt_tx, halted) = watch::channel(None);
        let handle = RaftHandle {
            id: config.id,
            tx,
            events: events.clone(),
            seq: Arc::new(AtomicU64::new(rand::random::<u64>() >> 1)),
            client: config.client.clone(),
            halted,
        };
        let config_id = config.id;
        let driver = Driver {
            id: config.id,
            raw,
            machine,
            applied: snap_index,
            transport,
            events,
            pending: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            // Random, like request ids: a read context from before a restart must not answer
            // one made after it (raft keys pending reads by context alone).
            next_read: rand::random::<u64>() >> 1,
            leader: 0,
            config,
            promotion_seq: rand::random::<u64>() >> 1,
            hand_over: false,
            applied_dirty: false,
            last_heard: HashMap::new(),
        };
        let node_id = config_id;
        let run = tasks.spawn(driver.run(rx, net_rx));
        // Watches the Ready loop: a loop that ends by itself (storage, an undecodable entry,
        // a panic) is reported through `RaftHandle::halted`, so the process can stop. Not in
        // the task group: `kill` aborts the loop and then awaits this watcher, which ends only
        // once the loop's task (and the storage it owns) is gone.
        let driver = tokio::spawn(async move {
            let halt = match run.await {
                Ok(Ok(())) => return,
                Ok(Err(h)) => h,
                Err(e) if e.is_panic() => Halt::Panicked(panic_message(e.into_panic())),
                Err(_) => return, // aborted: a kill
            };
            error!(node = node_id, "raft node halted: {halt}");
            let _ = halt_tx.send(Some(halt));
        });
        Ok(RaftNode {
            handle,
            tasks,
            driver,
            local_addr,
        })
    }

    pub fn handle(&self) -> RaftHandle {
        self.handle.clone()
    }

    /// The address peers reach this node's raft transport on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the node abruptly, like SIGKILL: aborts every task without flushing anything
    /// beyond what was already committed to redb. Returns once the storage file is closed.
    pub async fn kill(self) {
        self.tasks.abort_all();
        let _ = self.driver.await;
    }

    /// Stops the node after its current batch.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.tx.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.tasks.abort_all();
        let _ = self.driver.await;
    }
}

fn storage(e: StoreError) -> Halt {
    Halt::Storage(e.to_string())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs blocking storage work without stalling other tasks on a multi-thread runtime.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

struct Driver {
    id: NodeId,
    raw: RawNode<RedbStorage>,
    machine: StateMachine,
    applied: u64,
    transport: Transport,
    events: broadcast::Sender<StateEvent>,
    pending: HashMap<RequestId, PendingProposal>,
    reads: HashMap<u64, PendingRead>,
    ready_reads: Vec<(u64, ReadFn)>,
    next_read: u64,
    leader: NodeId,
    config: NodeConfig,
    promotion_seq: u64,
    /// This node removed itself from the voters while leading: it hands leadership over (raft-rs
    /// 0.7 would keep a non-member leader leading).
    hand_over: bool,
    applied_dirty: bool,
    /// When each peer last sent this node a raft message.
    last_heard: HashMap<NodeId, Instant>,
}

/// Most requests handled between two Ready rounds (bounds latency under load).
const MAX_BATCH: usize = 4096;

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut net: mpsc::Receiver<NetEvent>,
    ) -> Result<(), Halt> {
        let mut ticker = tokio::time::interval(self.config.raft.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.on_tick();
                }
                req = rx.recv() => match req {
                    Some(r) => self.handle_request(r, &mut stop),
                    None => return Ok(()),
                },
                ev = net.recv() => match ev {
                    Some(e) => self.handle_net(e)?,
                    None => return Ok(()),
                },
            }
            let mut n = 0;
            while n < MAX_BATCH {
                match net.try_recv() {
                    Ok(e) => self.handle_net(e)?,
                    Err(_) => break,
                }
                n += 1;
            }
            while n < MAX_BATCH && stop.is_none() {
                match rx.try_recv() {
                    Ok(r) => self.handle_request(r, &mut stop),
                    Err(_) => break,
                }
                n += 1;
            }
            self.on_ready()?;
            if let Some(s) = stop.take() {
                info!(node = self.id, "raft node shut down");
                let _ = s.send(());
                return Ok(());
            }
        }
    }

    fn handle_net(&mut self, e: NetEvent) -> Result<(), Halt> {
        match e {
            NetEvent::Raft(m) => {
                self.last_heard.insert(m.from, Instant::now());
                let last = self.raw.raft.raft_log.last_index();
                if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last {
                    // A leader sends at most what it knows this node acknowledged: this node
                    // has lost entries it acknowledged (its data dir was wiped or replaced).
                    // Taking part again would let it vote and count toward commits with a
                    // log that forgot what it promised: it stops instead.
                    return Err(Halt::LostAcknowledged {
                        leader: m.from,
                        expected: m.commit,
                        held: last,
                    });
                }
                if let Err(e) = self.raw.step(*m) {
                    debug!(node = self.id, "raft step: {e}");
                }
            }
            NetEvent::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            NetEvent::Unreachable { to } => self.raw.report_unreachable(to),
        }
        Ok(())
    }

    fn handle_request(&mut self, r: Request, stop: &mut Option<oneshot::Sender<()>>) {
        match r {
            Request::Propose { id, entry, reply } => {
                if let Some(done) = self.machine.result_of(&id) {
                    let _ = reply.send(done.clone().map_err(ProposeError::Rejected));
                    return;
                }
                let mut p = PendingProposal {
                    entry,
                    reply,
                    proposed_at: None,
                };
                self.try_propose(&mut p);
                self.pending.insert(id, p);
            }
            Request::Read { f } => {
                let ctx = self.next_read;
                self.next_read += 1;
                self.raw.read_index(ctx.to_le_bytes().to_vec());
                let now = Instant::now();
                self.reads.insert(
                    ctx,
                    PendingRead {
                        f,
                        issued: now,
                        deadline: now + self.config.client.read_timeout,
                    },
                );
            }
            Request::ReadLocal { f } => f(self.applied, &self.machine.state),
            Request::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Request::Shutdown(tx) => *stop = Some(tx),
        }
    }

    fn try_propose(&mut self, p: &mut PendingProposal) {
        let result = match &p.entry {
            PendingEntry::Normal(data) => self.raw.propose(vec![], data.clone()),
            PendingEntry::Conf(cc) => {
                // raft turns a second pending change into an empty entry; wait instead.
                if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
                    return;
                }
                self.raw.propose_conf_change(vec![], cc.clone())
            }
        };
        match result {
            Ok(()) => p.proposed_at = Some(Instant::now()),
            Err(raft::Error::ProposalDropped) => p.proposed_at = None,
            Err(e) => {
                debug!(node = self.id, "proposal not accepted: {e}");
                p.proposed_at = None;
            }
        }
    }

    fn on_tick(&mut self) {
        self.maybe_hand_over();
        let now = Instant::now();
        let retry = self.config.client.propose_retry;
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain(|_, p| !p.reply.is_closed());
        for p in pending.values_mut() {
            let due = match p.proposed_at {
                None => true,
                Some(at) => now.duration_since(at) >= retry,
            };
            if due {
                self.try_propose(p);
            }
        }
        self.pending = pending;

        let read_retry = self.config.client.read_retry;
        self.reads.retain(|_, r| r.deadline > now);
        let mut again = Vec::new();
        for (ctx, r) in self.reads.iter_mut() {
            if now.duration_since(r.issued) >= read_retry {
                r.issued = now;
                again.push(*ctx);
            }
        }
        for ctx in again {
            self.raw.read_index(ctx.to_le_bytes().to_vec());
        }
        self.maybe_promote();
    }

    /// A leader that removed itself hands leadership to the most caught-up remaining voter
    /// (once more every tick until someone else leads).
    fn maybe_hand_over(&mut self) {
        if !self.hand_over {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            self.hand_over = false;
            return;
        }
        let voters = self.raw.store().conf_state().voters.clone();
        let best = voters
            .iter()
            .filter(|v| **v != self.id)
            .max_by_key(|v| self.raw.raft.prs().get(**v).map_or(0, |p| p.matched))
            .copied();
        if let Some(to) = best {
            info!(
                node = self.id,
                to, "removed from the voters while leading; handing over"
            );
            self.raw.transfer_leader(to);
        }
    }

    /// On the leader: promotes a learner that asked for it once it has caught up.
    fn maybe_promote(&mut self) {
        if self.raw.raft.state != StateRole::Leader
            || self.raw.raft.has_pending_conf()
            || self.machine.pending_promotions.is_empty()
        {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let learners: Vec<u64> = self.raw.store().conf_state().learners.clone();
        for id in self.machine.pending_promotions.clone() {
            if !learners.contains(&id) {
                continue;
            }
            let caught_up = self
                .raw
                .raft
                .prs()
                .get(id)
                .is_some_and(|pr| pr.matched + 8 >= committed);
            if !caught_up {
                continue;
            }
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = id;
            self.promotion_seq += 1;
            let ctx = ConfContext {
                id: RequestId::now(self.id, self.promotion_seq),
                address: None,
                promote_when_caught_up: false,
            };
            let Ok(bytes) = ctx.encode() else { return };
            cc.context = bytes.into();
            info!(
                node = self.id,
                learner = id,
                "learner caught up; promoting to voter"
            );
            if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
                debug!(node = self.id, "promotion not proposed: {e}");
            }
            return; // one change at a time
        }
    }

    fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let leader = raft.state == StateRole::Leader;
        let now = Instant::now();
        let progress = |id: &u64| MemberProgress {
            id: *id,
            last_heard_ms: if *id == self.id {
                Some(0)
            } else {
                self.last_heard
                    .get(id)
                    .map(|at| now.duration_since(*at).as_millis() as u64)
            },
            matched: if leader {
                raft.prs().get(*id).map(|p| p.matched)
            } else {
                None
            },
        };
        NodeStatus {
            id: self.id,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            term: raft.term,
            role: raft.state.into(),
            commit: raft.raft_log.committed,
            applied: self.applied,
            snapshot_index: self.raw.store().snapshot_index(),
            voters: cs.voters.iter().map(progress).collect(),
            learners: cs.learners.iter().map(progress).collect(),
            dropped_messages: self.transport.dropped(),
        }
    }

    /// One round of the Ready loop, in the order ARCHITECTURE.md gives.
    fn on_ready(&mut self) -> Result<(), Halt> {
        if !self.raw.has_ready() {
            self.run_ready_reads();
            return self.maybe_snapshot().map_err(storage);
        }
        let mut rd = self.raw.ready();
        let mut repropose = false;
        if let Some(ss) = rd.ss()
            && ss.leader_id != self.leader
        {
            {
                info!(
                    node = self.id,
                    leader = ss.leader_id,
                    term = self.raw.raft.term,
                    role = ?ss.raft_state,
                    "raft leader changed"
                );
                self.leader = ss.leader_id;
                // Proposals in flight to the old leader may be lost: propose them again once
                // this Ready is advanced (proposing now would append to the log behind the
                // Ready's back, and raft panics when it is advanced).
                repropose = ss.leader_id != 0;
            }
        }
        // 1. A leader sends its messages before persisting (it may append in parallel).
        self.transport.send(rd.take_messages());

        let mut batch = WriteBatch::default();
        // 2. A snapshot from the leader replaces the state.
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            match StateMachine::decode(&snap.data) {
                Err(e) => {
                    // raft-rs marks the snapshot persisted once this Ready is advanced: a
                    // node that dropped it would never be sent another. Stop instead.
                    return Err(Halt::Undecodable {
                        index,
                        reason: format!("the leader's snapshot: {e}"),
                    });
                }
                Ok(m) => {
                    self.machine = m;
                    self.applied = index;
                    self.transport.set_founded(true);
                    for (id, addr) in &self.machine.state.raft_members {
                        self.transport.learn_address(*id, addr.clone());
                    }
                    info!(
                        node = self.id,
                        index,
                        bytes = snap.data.len(),
                        "restored a snapshot from the leader"
                    );
                    let _ = self.events.send(StateEvent::Restored { index });
                    batch.received_snapshot = Some(snap);
                    batch.applied = Some(index);
                }
            }
        }
        for rs in rd.take_read_states() {
            let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) else {
                continue;
            };
            if let Some(r) = self.reads.remove(&u64::from_le_bytes(ctx)) {
                self.ready_reads.push((rs.index, r.f));
            }
        }
        // 3+4. Committed entries (already durable here) apply; new entries and HardState are
        // written with the applied index in one fsynced transaction.
        let committed = rd.take_committed_entries();
        let mut replies = Vec::new();
        self.apply_entries(committed, &mut replies)?;
        if self.applied_dirty {
            batch.applied = Some(self.applied);
            self.applied_dirty = false;
        }
        batch.entries = rd.take_entries();
        batch.hard_state = rd.hs().cloned();
        let store = self.raw.mut_store();
        if !batch.is_empty() {
            blocking(|| store.write(batch)).map_err(storage)?;
        }
        self.send_replies(replies);
        // 5. Only now may the messages that depend on persisted state go out.
        self.transport.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.transport.send(light.take_messages());
        let mut replies = Vec::new();
        self.apply_entries(light.take_committed_entries(), &mut replies)?;
        self.send_replies(replies);
        self.raw.advance_apply();
        if repropose {
            // Those whose proposer gave up are dropped instead.
            let mut pending = std::mem::take(&mut self.pending);
            pending.retain(|_, p| !p.reply.is_closed());
            for p in pending.values_mut() {
                self.try_propose(p);
            }
            self.pending = pending;
        }
        self.run_ready_reads();
        self.maybe_snapshot().map_err(storage)
    }

    fn send_replies(&mut self, replies: Vec<(RequestId, ApplyResult)>) {
        for (id, result) in replies {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(result.map_err(ProposeError::Rejected));
            }
        }
    }

    fn run_ready_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.applied;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = later;
        for (_, f) in now {
            f(applied, &self.machine.state);
        }
    }

    /// Applies committed entries in order. An entry that does not decode stops the loop:
    /// skipping it would leave this node's state different from the others' while it reports
    /// the same applied index.
    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        replies: &mut Vec<(RequestId, ApplyResult)>,
    ) -> Result<(), Halt> {
        for entry in entries {
            let index = entry.index;
            if index <= self.applied {
                continue;
            }
            if entry.data.is_empty() {
                self.applied = index;
                self.applied_dirty = true;
                continue; // a new leader's empty entry
            }
            let undecodable = |reason: String| Halt::Undecodable { index, reason };
            match entry.get_entry_type() {
                EntryType::EntryNormal => match Proposal::decode(&entry.data) {
                    Ok(p) => {
                        self.applied = index;
                        self.applied_dirty = true;
                        let result = self.machine.apply(p.id, &p.command);
                        replies.push((p.id, result.clone()));
                        let _ = self.events.send(StateEvent::Applied {
                            index,
                            command: Arc::new(p.command),
                            result,
                        });
                    }
                    Err(e) => return Err(undecodable(e.to_string())),
                },
                EntryType::EntryConfChange => match ConfChange::parse_from_bytes(&entry.data) {
                    Ok(cc) => {
                        self.applied = index;
                        self.applied_dirty = true;
                        if let Some((id, result)) = self.apply_conf_change(index, &cc) {
                            replies.push((id, result));
                        }
                    }
                    Err(e) => return Err(undecodable(format!("membership change: {e}"))),
                },
                EntryType::EntryConfChangeV2 => {
                    return Err(undecodable(
                        "a joint-consensus membership change, which this version never makes"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Validates and applies one membership change. Deterministic: depends only on the
    /// configuration and the state machine, which every node has identically at this index.
    fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChange,
    ) -> Option<(RequestId, ApplyResult)> {
        let ctx = match ConfContext::decode(&cc.context) {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    node = self.id,
                    index, "membership change without a valid context: {e}"
                );
                return None;
            }
        };
        if let Some(done) = self.machine.result_of(&ctx.id) {
            return Some((ctx.id, done.clone()));
        }
        let cs = self.raw.store().conf_state().clone();
        let node = cc.node_id;
        let is_voter = cs.voters.contains(&node);
        let is_learner = cs.learners.contains(&node);
        let refuse = |why: String| Err(Rejection::Membership(why));
        let check: Result<(), Rejection> = match cc.get_change_type() {
            _ if node == 0 => refuse("node id 0 is reserved".into()),
            ConfChangeType::AddLearnerNode if is_voter => {
                refuse(format!("node {node} is already a voter"))
            }
            ConfChangeType::AddLearnerNode if ctx.address.as_deref().unwrap_or("").is_empty() => {
                refuse(format!("node {node} needs a raft address"))
            }
            ConfChangeType::AddNode if !is_learner && !is_voter => refuse(format!(
                "node {node} must join as a learner and catch up before it votes"
            )),
            ConfChangeType::RemoveNode if !is_voter && !is_learner => {
                refuse(format!("node {node} is not a member"))
            }
            ConfChangeType::RemoveNode if is_voter && cs.voters.len() == 1 => {
                refuse("cannot remove the last voter".into())
            }
            _ => Ok(()),
        };
        let result = match check {
            Err(r) => Err(r),
            Ok(()) => match self.raw.apply_conf_change(cc) {
                Ok(new_cs) => {
                    match cc.get_change_type() {
                        ConfChangeType::AddLearnerNode => {
                            let addr = ctx.address.clone().unwrap_or_default();
                            self.machine.state.raft_members.insert(node, addr.clone());
                            self.transport.learn_address(node, addr);
                            if ctx.promote_when_caught_up {
                                self.machine.pending_promotions.insert(node);
                            }
                        }
                        ConfChangeType::AddNode => {
                            self.machine.pending_promotions.remove(&node);
                        }
                        ConfChangeType::RemoveNode => {
                            self.machine.pending_promotions.remove(&node);
                            self.machine.state.raft_members.remove(&node);
                            self.transport.forget(node);
                            if node == self.id {
                                self.hand_over = true;
                            }
                        }
                    }
                    info!(
                        node = self.id,
                        index,
                        change = ?cc.get_change_type(),
                        target = node,
                        voters = ?new_cs.voters,
                        learners = ?new_cs.learners,
                        "membership changed"
                    );
                    let _ = self.events.send(StateEvent::Membership {
                        index,
                        voters: new_cs.voters.clone(),
                        learners: new_cs.learners.clone(),
                    });
                    let outcome = CommandOutcome::Membership {
                        voters: new_cs.voters.clone(),
                        learners: new_cs.learners.clone(),
                    };
                    self.raw.mut_store().set_conf_state(new_cs);
                    Ok(outcome)
                }
                Err(e) => Err(Rejection::Membership(e.to_string())),
            },
        };
        self.machine.remember(ctx.id, result.clone());
        Some((ctx.id, result))
    }

    /// Snapshots the state machine and compacts the log every `snapshot_interval` entries, or
    /// when raft asked for a newer snapshot than the stored one.
    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        let store = self.raw.store();
        let due = self.applied >= store.snapshot_index() + self.config.raft.snapshot_interval;
        let asked = store.take_snapshot_request() && self.applied > store.snapshot_index();
        if !due && !asked {
            return Ok(());
        }
        let data = match self.machine.encode() {
            Ok(d) => d,
            Err(e) => {
                error!(node = self.id, "cannot encode a snapshot: {e}");
                return Ok(());
            }
        };
        let index = self.applied;
        let cs = self.raw.store().conf_state().clone();
        let store = self.raw.mut_store();
        let bytes = data.len();
        blocking(|| store.install_local_snapshot(index, cs, data))?;
        debug!(
            node = self.id,
            index, bytes, "snapshot taken; log compacted"
        );
        Ok(())
    }
}
