//! `cluster.toml`: the cluster's name, where its secret comes from, and every node.
//!
//! Everything is checked before a port is bound, and every error names the file, the field
//! and what is wrong, so a person can fix it without reading code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arbor_scheduler::resources::{Bytes, Millicores};
use serde::{Deserialize, Serialize};

/// Environment variable that holds the cluster secret when `cluster.secret_file` is not set.
pub const SECRET_ENV: &str = "ARBOR_CLUSTER_SECRET";

/// A node's id in the cluster: a positive integer, unique in cluster.toml.
pub use arbor_proto::NodeId;

/// A parsed and checked cluster.toml.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The file it came from; relative paths in it are relative to its folder.
    pub path: PathBuf,
    pub cluster: ClusterSection,
    pub links: LinkTiming,
    pub raft: RaftSection,
    pub scheduler: SchedulerSection,
    pub gateway: GatewaySection,
    /// How every transport is protected.
    pub tls: Transport,
    pub nodes: Vec<NodeConfig>,
}

/// How a cluster's three transports (actor links, Raft, gateway) are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS with the CA and node certificates in this folder (`arbor cert init`).
    Tls(arbor_tls::TlsDir),
    /// Plain TCP and `ws://`: only when every address of every node is a loopback address (a
    /// test cluster on one machine).
    Insecure,
}

/// `[tls]` as written in cluster.toml.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The folder of `ca.pem`, `ca.key` and `node-N.pem`/`node-N.key`; relative to the config
    /// file's folder.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// No TLS at all, for a cluster whose every address is on loopback.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Names the cluster; nodes of another cluster are not linked.
    pub name: String,
    /// File holding the cluster secret. When absent, `ARBOR_CLUSTER_SECRET` holds it.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The control plane's founding voters. Absent: every node in this file. Other nodes
    /// join later with `arbor cluster add-node`.
    #[serde(default)]
    pub voters: Option<Vec<NodeId>>,
}

/// Raft timing of the control plane. The defaults fail over in about a second.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// One logical clock tick.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// A follower without a leader campaigns after between this and twice this many ticks.
    pub election_ticks: usize,
    /// Snapshot the state and compact the log after this many applied entries.
    pub snapshot_interval: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        let d = arbor_scheduler::RaftTiming::default();
        RaftSection {
            tick: d.tick,
            heartbeat_ticks: d.heartbeat_ticks,
            election_ticks: d.election_ticks,
            snapshot_interval: d.snapshot_interval,
        }
    }
}

impl RaftSection {
    /// The scheduler's timing with these values.
    pub fn timing(&self) -> arbor_scheduler::RaftTiming {
        arbor_scheduler::RaftTiming {
            tick: self.tick,
            heartbeat_ticks: self.heartbeat_ticks,
            election_ticks: self.election_ticks,
            snapshot_interval: self.snapshot_interval,
            ..Default::default()
        }
    }
}

/// How the leader watches nodes and places actors.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// A node the leader has not heard from for this long is marked down, and its actors are
    /// placed elsewhere.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// A vector partition's replica on a down node moves elsewhere (and copies the partition
    /// from its primary) only once the node has been down this long: a node back sooner
    /// catches up from its own files, and its copy stays for `collection promote-stale`.
    #[serde(with = "humantime_serde")]
    pub partition_move_delay: Duration,
    /// The reconciler runs at least this often (and after every commit).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        let d = arbor_scheduler::ReconcilerConfig::default();
        SchedulerSection {
            node_timeout: d.node_timeout,
            partition_move_delay: d.partition_move_delay,
            reconcile_interval: d.interval,
        }
    }
}

impl SchedulerSection {
    /// The reconciler's settings with these values.
    pub fn reconciler(&self) -> arbor_scheduler::ReconcilerConfig {
        arbor_scheduler::ReconcilerConfig {
            node_timeout: self.node_timeout,
            partition_move_delay: self.partition_move_delay,
            interval: self.reconcile_interval,
            ..Default::default()
        }
    }
}

/// The WebSocket gateway: who may connect, and the limits that hold before any work starts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// The tokens file (`arbor token create` writes it); relative to the config file's folder.
    /// Missing: no client is accepted until a token is created.
    pub tokens_file: PathBuf,
    /// The largest frame a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Jobs one connection may have unfinished at once (per-connection backpressure).
    pub max_jobs_per_connection: usize,
    /// Jobs one token may have unfinished at once, over all its connections to this node.
    pub max_jobs_per_token: usize,
    /// Failed `auth` attempts after which the connection is closed.
    pub max_failed_auths: u32,
    /// Open connections a node serves at once; more are closed with 1013 ("try again later",
    /// or another node) so a flood of them cannot exhaust its file descriptors.
    pub max_connections: usize,
    /// A connection that has not authenticated after this long is closed.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Connections one source address may hold open at once; more are closed at once.
    pub max_connections_per_address: usize,
    /// Connections not yet authenticated the node holds at once, from all addresses; more are
    /// closed at once, so idle or slow sockets cannot take the places clients need. Each may
    /// send 64 KiB before it authenticates.
    pub max_unauthenticated: usize,
    /// Bytes of answers and events one connection may have waiting to be sent; a client that
    /// does not read past this is disconnected. It must hold the largest single answer.
    pub max_queued_bytes: usize,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            tokens_file: PathBuf::from("tokens.toml"),
            max_message_bytes: 4 << 20,
            max_jobs_per_connection: 64,
            max_jobs_per_token: 256,
            max_failed_auths: 3,
            max_connections: 10_000,
            auth_timeout: Duration::from_secs(10),
            max_queued_bytes: 32 << 20,
            max_connections_per_address: 256,
            max_unauthenticated: 512,
        }
    }
}

impl GatewaySection {
    /// The smallest `max_message_bytes`: room for an auth frame and a modest request.
    pub const MIN_MESSAGE_BYTES: usize = 1 << 10;
    /// The largest `max_message_bytes`: bulk data goes in several frames, not one huge one.
    pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
}

/// How nodes watch each other. The defaults see a dead peer within 2 s.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkTiming {
    /// How often a node sends a heartbeat to each linked peer.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A peer that sent no heartbeat for this long is down.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// First re-dial delay after a failed or lost link; doubles up to `redial_max`.
    #[serde(with = "humantime_serde")]
    pub redial_min: Duration,
    #[serde(with = "humantime_serde")]
    pub redial_max: Duration,
    /// A dial whose handshake has not finished after this long is abandoned.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for LinkTiming {
    fn default() -> Self {
        LinkTiming {
            heartbeat_interval: Duration::from_millis(200),
            peer_timeout: Duration::from_millis(1000),
            redial_min: Duration::from_millis(100),
            redial_max: Duration::from_millis(800),
            handshake_timeout: Duration::from_millis(1500),
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Address of the actor transport (ractor_cluster).
    pub actors: SocketAddr,
    /// Address of the Raft transport.
    pub raft: SocketAddr,
    /// Address of the WebSocket gateway.
    pub gateway: SocketAddr,
    /// Address of the HTTP port: `/metrics` (Prometheus), `/healthz`, `/readyz` and the
    /// dashboard at `/`. Absent: none (and no metrics are recorded).
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Where the node keeps its durable state; relative to the config file's folder.
    pub data_dir: PathBuf,
    pub resources: ResourcesConfig,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl NodeConfig {
    /// Each address the node listens on, with its field name in cluster.toml.
    pub fn addresses(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> {
        [
            ("actors", Some(self.actors)),
            ("raft", Some(self.raft)),
            ("gateway", Some(self.gateway)),
            ("http", self.http),
        ]
        .into_iter()
        .filter_map(|(field, addr)| Some((field, addr?)))
    }
}

/// What a node offers to the scheduler.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    pub cpu: Millicores,
    pub memory: Bytes,
    #[serde(default)]
    pub gpu: GpuSpec,
    #[serde(default)]
    pub gpu_memory: Option<Bytes>,
    #[serde(default)]
    pub ipu: u32,
    #[serde(default)]
    pub custom: BTreeMap<String, u64>,
}

/// How many GPUs a node has: counted at start (`"auto"`), or declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuSpec {
    #[default]
    Auto,
    Count(u32),
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuSpec::Auto => f.write_str("auto"),
            GpuSpec::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for GpuSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuSpec::Auto => s.serialize_str("auto"),
            GpuSpec::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for GpuSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        let bad = |what: &str| {
            serde::de::Error::custom(format!(
                "gpu = {what} is not valid: write \"auto\" to count GPUs at start, or a whole number such as 0 or 2"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Count(n) => u32::try_from(n)
                .map(GpuSpec::Count)
                .map_err(|_| bad(&n.to_string())),
            Raw::Text(t) if t == "auto" => Ok(GpuSpec::Auto),
            Raw::Text(t) => t
                .parse::<u32>()
                .map(GpuSpec::Count)
                .map_err(|_| bad(&format!("{t:?}"))),
        }
    }
}

/// A config that cannot be used, with the file, the field and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: no node has id {id} (configured ids: {known})")]
    UnknownNode {
        path: PathBuf,
        id: NodeId,
        known: String,
    },
    #[error("{0}")]
    Secret(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: ClusterSection,
    #[serde(default)]
    links: LinkTiming,
    #[serde(default)]
    raft: RaftSection,
    #[serde(default)]
    scheduler: SchedulerSection,
    #[serde(default)]
    gateway: GatewaySection,
    tls: Option<TlsSection>,
    #[serde(default, rename = "nodes")]
    nodes: Vec<NodeConfig>,
}

impl ClusterConfig {
    /// Reads and checks a cluster.toml.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks cluster.toml text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut config = ClusterConfig {
            path: path.to_owned(),
            cluster: raw.cluster,
            links: raw.links,
            raft: raw.raft,
            scheduler: raw.scheduler,
            gateway: raw.gateway,
            tls: Transport::Insecure,
            nodes: raw.nodes,
        };
        config.validate()?;
        config.tls = config.transport(raw.tls)?;
        Ok(config)
    }

    /// What `[tls]` says, checked: a folder of certificates, or plain TCP on loopback only.
    fn transport(&self, section: Option<TlsSection>) -> Result<Transport, ConfigError> {
        match section {
            None => Err(self.invalid(
                "tls",
                "there is no [tls] section: every transport is mutual TLS; add\n  [tls]\n  \
                 dir = \".arbor/tls\"\nand run `arbor cert init --config <this file>` to make \
                 the certificates (or `insecure = true` for a cluster whose every address is on \
                 loopback)",
            )),
            Some(TlsSection {
                dir: Some(_),
                insecure: true,
            }) => Err(self.invalid(
                "tls",
                "give either `dir` (mutual TLS) or `insecure = true`, not both",
            )),
            Some(TlsSection {
                dir: Some(dir),
                insecure: false,
            }) if !dir.as_os_str().is_empty() => {
                Ok(Transport::Tls(arbor_tls::TlsDir::new(self.resolve(&dir))))
            }
            Some(TlsSection { insecure: true, .. }) => {
                for (i, node) in self.nodes.iter().enumerate() {
                    for (field, addr) in node.addresses() {
                        if !addr.ip().is_loopback() {
                            return Err(self.invalid(
                                format!("nodes[{i}].{field}"),
                                format!(
                                    "{addr} is not a loopback address, and [tls] says \
                                     insecure = true: plain TCP is only allowed on loopback; \
                                     use `dir` and `arbor cert init` instead"
                                ),
                            ));
                        }
                    }
                }
                Ok(Transport::Insecure)
            }
            Some(_) => Err(self.invalid(
                "tls.dir",
                "must name the certificates' folder (for example \".arbor/tls\")",
            )),
        }
    }

    /// The addresses node `node` is reached at, for its certificate (besides its id): each
    /// distinct IP of its addresses (not the unspecified one, which nobody dials), and
    /// `localhost` when it listens on loopback.
    pub fn certificate_hosts(node: &NodeConfig) -> Vec<String> {
        let mut hosts = Vec::new();
        for ip in node.addresses().map(|(_, addr)| addr.ip()) {
            let host = ip.to_string();
            if !ip.is_unspecified() && !hosts.contains(&host) {
                hosts.push(host);
            }
            if ip.is_loopback() && !hosts.iter().any(|h| h == "localhost") {
                hosts.push("localhost".into());
            }
        }
        hosts
    }

    /// The CA certificate gateway clients verify nodes against; `None` when the cluster is
    /// insecure (plain `ws://`).
    pub fn gateway_ca(&self) -> Option<PathBuf> {
        match &self.tls {
            Transport::Tls(dir) => Some(dir.ca_cert()),
            Transport::Insecure => None,
        }
    }

    /// Node `id`'s TLS identity, loaded from `[tls] dir`; `None` when the cluster is insecure.
    pub fn node_tls(&self, id: NodeId) -> Result<Option<arbor_tls::NodeTls>, arbor_tls::TlsError> {
        match &self.tls {
            Transport::Tls(dir) => arbor_tls::NodeTls::load(dir, id).map(Some),
            Transport::Insecure => Ok(None),
        }
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.name.trim().is_empty() {
            return Err(self.invalid("cluster.name", "must not be empty"));
        }
        if self.cluster.name.contains('/') {
            return Err(self.invalid("cluster.name", "must not contain '/'"));
        }
        if self.nodes.is_empty() {
            return Err(self.invalid(
                "nodes",
                "no node is configured: add at least one [[nodes]] table",
            ));
        }
        let heartbeat = self.raft.tick * self.raft.heartbeat_ticks.max(1) as u32;
        if self.scheduler.node_timeout < heartbeat * 3 {
            return Err(self.invalid(
                "scheduler.node_timeout",
                format!(
                    "must be at least 3 raft heartbeats ({:?}), or healthy nodes would be marked down",
                    heartbeat * 3
                ),
            ));
        }
        if self.scheduler.reconcile_interval.is_zero() {
            return Err(self.invalid("scheduler.reconcile_interval", "must be more than 0"));
        }
        let t = &self.links;
        if t.heartbeat_interval.is_zero() || t.peer_timeout <= t.heartbeat_interval {
            return Err(self.invalid(
                "links.peer_timeout",
                format!(
                    "must be longer than links.heartbeat_interval ({:?} <= {:?})",
                    t.peer_timeout, t.heartbeat_interval
                ),
            ));
        }
        if t.redial_min.is_zero() || t.redial_max < t.redial_min {
            return Err(self.invalid(
                "links.redial_max",
                "must be at least links.redial_min, which must be positive",
            ));
        }
        let mut ids: HashMap<NodeId, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let at = |field: &str| format!("nodes[{i}].{field}");
            if node.id == 0 {
                return Err(self.invalid(at("id"), "node ids start at 1"));
            }
            if let Some(first) = ids.insert(node.id, i) {
                return Err(self.invalid(
                    at("id"),
                    format!("duplicate node id {}: nodes[{first}] has it too", node.id),
                ));
            }
            for (field, addr) in node.addresses() {
                // Port 0 (pick any free port) never collides.
                if addr.port() == 0 {
                    continue;
                }
                let here = at(field);
                if let Some(other) = addrs.insert(addr, here.clone()) {
                    return Err(self.invalid(
                        here,
                        format!("duplicate address {addr}: {other} uses it too"),
                    ));
                }
            }
            if node.data_dir.as_os_str().is_empty() {
                return Err(self.invalid(at("data_dir"), "must not be empty"));
            }
            for key in node.labels.keys().chain(node.resources.custom.keys()) {
                if key.trim().is_empty() {
                    return Err(self.invalid(at("labels"), "names must not be empty"));
                }
            }
        }
        let r = &self.raft;
        if r.tick.is_zero() || r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err(self.invalid(
                "raft.election_ticks",
                "must be more than raft.heartbeat_ticks, which must be positive, with a positive raft.tick",
            ));
        }
        if r.snapshot_interval == 0 {
            return Err(self.invalid("raft.snapshot_interval", "must be positive"));
        }
        let g = &self.gateway;
        if g.tokens_file.as_os_str().is_empty() {
            return Err(self.invalid("gateway.tokens_file", "must not be empty"));
        }
        if !(GatewaySection::MIN_MESSAGE_BYTES..=GatewaySection::MAX_MESSAGE_BYTES)
            .contains(&g.max_message_bytes)
        {
            return Err(self.invalid(
                "gateway.max_message_bytes",
                format!(
                    "{} is out of range: must be between {} (1 KiB) and {} (64 MiB)",
                    g.max_message_bytes,
                    GatewaySection::MIN_MESSAGE_BYTES,
                    GatewaySection::MAX_MESSAGE_BYTES
                ),
            ));
        }
        for (field, value) in [
            ("gateway.max_jobs_per_connection", g.max_jobs_per_connection),
            ("gateway.max_jobs_per_token", g.max_jobs_per_token),
            ("gateway.max_failed_auths", g.max_failed_auths as usize),
            ("gateway.max_connections", g.max_connections),
            (
                "gateway.max_connections_per_address",
                g.max_connections_per_address,
            ),
            ("gateway.max_unauthenticated", g.max_unauthenticated),
        ] {
            if value == 0 {
                return Err(self.invalid(field, "must be positive"));
            }
        }
        if g.max_queued_bytes < 64 << 10 {
            return Err(self.invalid(
                "gateway.max_queued_bytes",
                format!(
                    "{} is less than 65536 (64 KiB): it must hold the largest answer (a \
                     query's hits, a generation's result)",
                    g.max_queued_bytes
                ),
            ));
        }
        if g.auth_timeout.is_zero() {
            return Err(self.invalid("gateway.auth_timeout", "must be more than 0"));
        }
        if let Some(voters) = &self.cluster.voters {
            if voters.is_empty() {
                return Err(self.invalid("cluster.voters", "must name at least one node"));
            }
            if let Some(v) = voters.iter().find(|v| !ids.contains_key(v)) {
                return Err(self.invalid("cluster.voters", format!("node {v} is not configured")));
            }
        }
        Ok(())
    }

    /// The control plane's founding voters.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v = self
            .cluster
            .voters
            .clone()
            .unwrap_or_else(|| self.nodes.iter().map(|n| n.id).collect());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The node with this id, or an error listing the ids there are.
    pub fn node(&self, id: NodeId) -> Result<&NodeConfig, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::UnknownNode {
                path: self.path.clone(),
                id,
                known: self
                    .nodes
                    .iter()
                    .map(|n| n.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// A path from the config, anchored at the config file's folder when relative.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// The node's data dir: the override if given, else the configured one.
    pub fn data_dir(&self, node: &NodeConfig, overridden: Option<&Path>) -> PathBuf {
        overridden.map_or_else(|| self.resolve(&node.data_dir), Path::to_owned)
    }

    /// The gateway's tokens file, anchored at the config file's folder when relative.
    pub fn tokens_file(&self) -> PathBuf {
        self.resolve(&self.gateway.tokens_file)
    }

    /// Reads the cluster secret from `cluster.secret_file`, or from `ARBOR_CLUSTER_SECRET`.
    pub fn secret(&self) -> Result<Secret, ConfigError> {
        self.secret_from(std::env::var_os(SECRET_ENV).map(|v| v.into_encoded_bytes()))
    }

    /// [`Self::secret`] with the environment value given, for tests.
    pub fn secret_from(&self, env: Option<Vec<u8>>) -> Result<Secret, ConfigError> {
        let (bytes, source) = match &self.cluster.secret_file {
            Some(file) => {
                let file = self.resolve(file);
                let bytes = std::fs::read(&file).map_err(|e| {
                    ConfigError::Secret(format!(
                        "{}: cluster.secret_file: cannot read {}: {e}",
                        self.path.display(),
                        file.display()
                    ))
                })?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&file)
                        .map(|m| m.permissions().mode() & 0o777)
                        .unwrap_or(0);
                    if mode & 0o077 != 0 {
                        return Err(ConfigError::Secret(format!(
                            "{}: cluster.secret_file: {} may be read by others (mode {mode:o}); \
                             `chmod 600 {}` and keep it so",
                            self.path.display(),
                            file.display(),
                            file.display()
                        )));
                    }
                }
                (bytes, format!("secret file {}", file.display()))
            }
            None => match env {
                Some(bytes) => (bytes, SECRET_ENV.to_string()),
                None => {
                    return Err(ConfigError::Secret(format!(
                        "{}: no cluster secret: set cluster.secret_file, or the {SECRET_ENV} environment variable",
                        self.path.display()
                    )));
                }
            },
        };
        let secret = Secret::new(bytes).ok_or_else(|| {
            ConfigError::Secret(format!(
                "{}: the cluster secret from {source} is empty",
                self.path.display()
            ))
        })?;
        if secret.as_bytes().len() < Secret::MIN_BYTES {
            return Err(ConfigError::Secret(format!(
                "{}: the cluster secret from {source} is {} bytes; at least {} are needed \
                 (make one with `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`)",
                self.path.display(),
                secret.as_bytes().len(),
                Secret::MIN_BYTES
            )));
        }
        Ok(secret)
    }
}

/// The cluster secret. Never printed; nodes prove they hold it without sending it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The shortest secret a node accepts from its config: the secret is a password every node
    /// proves in each handshake, so it must not be guessable.
    pub const MIN_BYTES: usize = 32;

    /// A secret from bytes; surrounding whitespace (a file's trailing newline) is not part of
    /// it. `None` when nothing is left.
    pub fn new(bytes: impl AsRef<[u8]>) -> Option<Self> {
        let b = bytes.as_ref().trim_ascii();
        (!b.is_empty()).then(|| Secret(b.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The string ractor_cluster's handshake uses as its cookie: a digest of the secret, so
    /// that any bytes work and the secret itself is never kept as a string.
    pub fn cookie(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&self.0);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}
