//! Arbor's control plane: the Raft-replicated cluster state, placement and the reconciler.
//!
//! # The Raft control plane in one page
//!
//! Every voter runs a [`RaftNode`]: one tokio task owns the raft-rs `RawNode` and drives the
//! Ready loop (send leader messages → apply a received snapshot → apply committed entries and
//! persist new entries + HardState + applied index in **one fsynced redb transaction** → send
//! persisted messages → advance). PreVote and CheckQuorum are on. Raft messages travel over
//! their own TCP port ([`transport`]): length-prefixed frames with a size limit, an HMAC
//! challenge-response that proves the cluster secret, reconnect with capped backoff, and
//! bounded per-peer queues that drop when full, so sending never blocks the loop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use arbor_scheduler::{Bootstrap, Command, NodeConfig, RaftNode};
//!
//! // From cluster.toml: this node's id, raft listen address, peers, data dir, secret.
//! let mut cfg = NodeConfig::new(
//!     1,
//!     "127.0.0.1:7001".parse()?,
//!     "/var/lib/arbor/raft.redb".into(),
//!     b"cluster secret".to_vec(),
//!     Bootstrap::Voters(vec![1, 2, 3]), // `Bootstrap::Join` for a node added later
//! );
//! cfg.peers.insert(2, "127.0.0.1:7002".into());
//! cfg.peers.insert(3, "127.0.0.1:7003".into());
//! // cfg.raft (tick, heartbeat/election ticks, snapshot interval), cfg.client (timeouts)
//! // and cfg.transport (frame limit, queues, backoff) are serde structs with defaults,
//! // ready to be embedded in cluster.toml.
//! let node = RaftNode::start(cfg).await?;
//! let raft = node.handle(); // cloneable; usable from any node
//!
//! // Propose from any node: forwarded to the leader, retried across leader changes
//! // (deduplicated by request id), answered once applied.
//! let outcome = raft
//!     .propose(Command::KvPut { key: "k".into(), value: "v".into() })
//!     .await?; // Err(ProposeError::Rejected(reason)) if the state machine refused it
//!
//! // Linearizable read (ReadIndex, retried until `client.read_timeout`).
//! let deployments = raft.read(|s| s.deployments.len()).await?;
//! let whole = raft.read_state().await?;
//!
//! // Local watchers: every applied command with its result, membership changes, and
//! // `Restored` when a snapshot replaced the state.
//! let mut changes = raft.subscribe();
//!
//! // `arbor cluster status`: id, leader (None when unknown), term, role, commit, applied,
//! // voters and learners with `matched` (known on the leader only).
//! let status = raft.status().await?;
//!
//! // Membership, one change at a time: a new node (started with Bootstrap::Join) joins as a
//! // learner and the leader promotes it to voter once it has caught up.
//! raft.add_node(4, "10.0.0.4:7001".into()).await?;
//! raft.remove_node(3).await?;
//!
//! node.shutdown().await; // or `node.kill()`: abort every task, like SIGKILL
//! # let _ = (outcome, deployments, whole, changes, status); Ok(()) }
//! ```
//!
//! * State: [`ClusterState`] (nodes, deployments, placements, collections, jobs, a small
//!   key-value namespace) changes only through [`Command`]s; apply is deterministic and a
//!   command that does not validate returns a [`Rejection`] and changes nothing. The enums
//!   only grow.
//! * Storage ([`storage`]): redb file with entries, HardState, the last snapshot (metadata
//!   with its ConfState + the encoded state machine) and the applied index. A restart loads
//!   the snapshot and replays the committed log suffix.
//! * Snapshots every `raft.snapshot_interval` applied entries compact the log; a lagging or
//!   new node catches up by snapshot, sent as frames of at most `transport.max_frame_bytes`
//!   (8 MiB) up to `transport.max_message_bytes` (4 GiB; 100,000 placements are ≈10 MB).
//! * A node whose data dir was wiped has forgotten its vote and the entries it acknowledged:
//!   started again under its old id it stops ([`Halt::LostAcknowledged`]) as soon as the
//!   leader tells it what it had, instead of voting; `remove_node` then `add_node` brings it
//!   back.
//! * A committed entry or snapshot a node cannot decode, or a storage failure, stops the
//!   node's Ready loop ([`RaftHandle::halted`]); it never applies around it.

pub mod autoscale;
pub mod codec;
pub mod command;
pub mod config;
pub mod founding;
mod logger;
pub mod machine;
pub mod node;
pub mod placement;
pub mod reconciler;
pub mod resources;
pub mod state;
pub mod storage;
pub mod tasks;
pub mod transport;

pub use command::{Command, CommandOutcome, ObjectKind, Rejection};
pub use config::{Bootstrap, ClientTiming, NodeConfig, RaftTiming, TransportConfig};
pub use node::{
    Halt, MemberProgress, NodeStatus, ProposeError, RaftHandle, RaftNode, ReadError, Role,
    StartError, StateEvent,
};
pub use reconciler::ReconcilerConfig;
pub use reconciler::driver::Reconciler;
pub use state::ClusterState;
