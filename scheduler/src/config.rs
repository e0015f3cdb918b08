//! Settings of one control-plane node. Defaults fail over in well under 1.5 s on a LAN.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::NodeId;

/// Raft timing and log management.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftTiming {
    /// One logical clock tick.
    #[serde(with = "millis")]
    pub tick: Duration,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// A follower campaigns after a random timeout in `[election_ticks, 2 * election_ticks)`
    /// ticks without hearing from a leader.
    pub election_ticks: usize,
    /// Snapshot the state machine and compact the log after this many applied entries.
    pub snapshot_interval: u64,
    /// Largest total size of entries in one append message.
    pub max_append_bytes: u64,
    /// Most append messages in flight to one follower.
    pub max_inflight_appends: usize,
}

impl Default for RaftTiming {
    fn default() -> Self {
        // Election timeout 500–1000 ms; with PreVote a failover takes ~0.6–1.2 s.
        RaftTiming {
            tick: Duration::from_millis(100),
            heartbeat_ticks: 1,
            election_ticks: 5,
            snapshot_interval: 10_000,
            max_append_bytes: 1024 * 1024,
            max_inflight_appends: 256,
        }
    }
}

/// Client-side deadlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientTiming {
    /// How long `propose` keeps trying (across leader changes) before giving up.
    #[serde(with = "millis")]
    pub propose_timeout: Duration,
    /// A proposal not applied after this long is proposed again (dedup makes this safe).
    #[serde(with = "millis")]
    pub propose_retry: Duration,
    /// How long a linearizable read keeps trying.
    #[serde(with = "millis")]
    pub read_timeout: Duration,
    /// A ReadIndex request not answered after this long is sent again.
    #[serde(with = "millis")]
    pub read_retry: Duration,
}

impl Default for ClientTiming {
    fn default() -> Self {
        ClientTiming {
            propose_timeout: Duration::from_secs(10),
            propose_retry: Duration::from_millis(1000),
            read_timeout: Duration::from_secs(10),
            read_retry: Duration::from_millis(500),
        }
    }
}

/// Raft transport settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportConfig {
    /// Largest frame accepted or sent: a message larger than this (a snapshot) travels as
    /// several frames of at most this size, so no single allocation is larger.
    pub max_frame_bytes: usize,
    /// Largest message accepted or sent, all its frames together: a snapshot of the whole
    /// state must fit (100,000 placements encode to ~10 MB).
    pub max_message_bytes: usize,
    /// Messages queued per peer; beyond this, new messages to that peer are dropped (Raft
    /// retransmits).
    pub peer_queue: usize,
    /// First reconnect delay; doubles on each failure up to `max_backoff`.
    #[serde(with = "millis")]
    pub min_backoff: Duration,
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    /// A peer that does not finish the handshake within this is dropped.
    #[serde(with = "millis")]
    pub handshake_timeout: Duration,
    /// Inbound connections one source address may hold at once (handshaking or not): a node
    /// needs one per peer node on that machine, so a machine that opens many more is not a
    /// node, and must not take every socket the port has.
    pub max_connections_per_address: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: 8 * 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024 * 1024,
            peer_queue: 4096,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            max_connections_per_address: 64,
        }
    }
}

/// How a node with empty storage starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bootstrap {
    /// Found a new cluster with these voters (the voters in cluster.toml). Every bootstrap
    /// voter writes the same initial snapshot, so they agree from the first index.
    Voters(Vec<NodeId>),
    /// Wait to be added by a membership change; the leader sends a snapshot.
    Join,
}

/// Everything one control-plane node needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where to listen for raft peers.
    pub listen: SocketAddr,
    /// Raft addresses of the other members. These win over addresses learned from the log
    /// (tests route them through fault-injecting proxies).
    pub peers: BTreeMap<NodeId, String>,
    /// The redb file.
    pub data_path: PathBuf,
    /// Shared cluster secret proven (never sent) in the transport handshake.
    pub secret: Vec<u8>,
    /// This node's certificate: with it every connection is mutual TLS and a peer may only
    /// speak as the node its certificate names; `None` is plain TCP (loopback test clusters).
    pub tls: Option<arbor_tls::NodeTls>,
    pub bootstrap: Bootstrap,
    pub raft: RaftTiming,
    pub client: ClientTiming,
    pub transport: TransportConfig,
}

impl NodeConfig {
    /// A config with default timing.
    pub fn new(
        id: NodeId,
        listen: SocketAddr,
        data_path: PathBuf,
        secret: impl Into<Vec<u8>>,
        bootstrap: Bootstrap,
    ) -> Self {
        NodeConfig {
            id,
            listen,
            peers: BTreeMap::new(),
            data_path,
            secret: secret.into(),
            tls: None,
            bootstrap,
            raft: RaftTiming::default(),
            client: ClientTiming::default(),
            transport: TransportConfig::default(),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
