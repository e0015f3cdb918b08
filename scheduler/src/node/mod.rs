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
use crate::transport::{Credentials, NetEvent, Transport};

mod driver;
mod error;
mod handle;
mod membership;

use driver::{Driver, blocking, panic_message};
pub use error::{Halt, ProposeError, ReadError, StartError};
pub use handle::RaftHandle;

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
    /// A command applied at `index` (including rejected ones, with their reason). A retry
    /// of a proposal that already applied changes nothing and is not sent again.
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
            Credentials {
                secret: config.secret.clone(),
                tls: config.tls.clone(),
            },
            config.transport.clone(),
            net_tx,
            tasks.clone(),
        )?;
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
