//! A running node: its ractor_cluster server, link supervisor and link actor.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage, node::NodeConnectionMode};

use arbor_scheduler::resources::{Bytes, GpuAmount, Resources};
use arbor_scheduler::{Bootstrap, Command, ProposeError, RaftHandle, RaftNode, Reconciler};

use crate::assignments::AgentBridge;

use crate::config::{ClusterConfig, ConfigError, GpuSpec, NodeConfig, NodeId, Secret};
use crate::link::actor::{LinkActor, LinkActorArgs};
use crate::link::messages::{
    DeclaredResources, GpuDescription, LinkMsg, MembershipReport, NodeInfo,
};
use crate::link::node_name;
use crate::link::supervisor::{LinkSupervisor, SessionEvents, SupervisorArgs, SupervisorMsg};

/// Why a node could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} (nodes[{id}].actors): {reason}; is another node or program using it?"
    )]
    Listen {
        id: NodeId,
        addr: String,
        reason: String,
    },
    #[error("the node's {0} actor did not start: {1}")]
    Spawn(&'static str, String),
    #[error(transparent)]
    Tls(#[from] arbor_tls::TlsError),
    #[error("the node did not answer: {0}")]
    Unresponsive(String),
    #[error("the control plane did not start: {0}")]
    ControlPlane(#[from] arbor_scheduler::StartError),
    #[error(transparent)]
    Tokens(#[from] crate::gateway::auth::TokenError),
    #[error(
        "cannot listen on {addr} (nodes[{id}].gateway): {reason}; is another node or program using it?"
    )]
    GatewayListen {
        id: NodeId,
        addr: String,
        /// Not a `source`: the message says it, and `{:#}` would say it twice.
        reason: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} (nodes[{id}].http): {reason}; is another node or program using it?"
    )]
    HttpListen {
        id: NodeId,
        addr: String,
        reason: std::io::Error,
    },
    #[error("{0}")]
    Metrics(String),
}

/// A started node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    id: NodeId,
    data_dir: PathBuf,
    server: ActorRef<NodeServerMessage>,
    supervisor: ActorRef<SupervisorMsg>,
    link: ActorRef<LinkMsg>,
    raft: RaftNode,
    register: tokio::task::JoinHandle<()>,
    agent: AgentBridge,
    feed: crate::lease::ControlFeed,
    janitor: tokio::task::JoinHandle<()>,
    load_report: tokio::task::JoinHandle<()>,
    reconciler: Reconciler,
    gateway: crate::gateway::Gateway,
    http: Option<crate::http::Http>,
    /// The TLS listener on the actors address (none in an insecure cluster, where the
    /// `NodeServer` listens there itself).
    links_listener: Option<tokio::task::JoinHandle<()>>,
}

/// The capacity a node registers with the control plane.
pub fn capacity(node: &NodeConfig, declared: &DeclaredResources) -> Resources {
    let r = &node.resources;
    Resources {
        cpu: r.cpu,
        memory: r.memory,
        gpu: GpuAmount::whole(u64::from(declared.gpu)),
        gpu_memory: r.gpu_memory.unwrap_or_else(|| {
            // Detected GPUs: their memory together.
            Bytes(declared.gpus.iter().map(|g| g.memory_bytes).sum())
        }),
        ipu: r.ipu,
        custom: r.custom.clone(),
    }
}

/// Creates the data dir (and its parents) and makes it the owner's only (0700): it holds the
/// job records, documents and prompts, which no other local user may read.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The control-plane settings of one node, from cluster.toml.
fn raft_config(
    config: &ClusterConfig,
    node: &NodeConfig,
    secret: &Secret,
    data_dir: &Path,
) -> arbor_scheduler::NodeConfig {
    let voters = config.voters();
    let bootstrap = if voters.contains(&node.id) {
        Bootstrap::Voters(voters)
    } else {
        Bootstrap::Join
    };
    let mut rc = arbor_scheduler::NodeConfig::new(
        node.id,
        node.raft,
        data_dir.join("raft.redb"),
        secret.as_bytes(),
        bootstrap,
    );
    rc.peers = config
        .nodes
        .iter()
        .filter(|n| n.id != node.id)
        .map(|n| (n.id, n.raft.to_string()))
        .collect();
    rc.raft = config.raft.timing();
    rc
}

/// Records the node, its capacity and labels in the control plane, retrying until a leader
/// takes it (a node may start before a quorum is up).
async fn register(
    raft: RaftHandle,
    id: NodeId,
    address: String,
    capacity: Resources,
    labels: std::collections::BTreeMap<String, String>,
) {
    let command = Command::RegisterNode {
        id,
        address,
        capacity,
        labels,
    };
    loop {
        match raft.propose(command.clone()).await {
            Ok(_) => {
                tracing::info!(node = id, "registered with the control plane");
                return;
            }
            Err(ProposeError::Rejected(why)) => {
                tracing::error!(
                    node = id,
                    "the control plane refused to register this node: {why}"
                );
                return;
            }
            Err(ProposeError::Stopped) => return,
            Err(e) => {
                tracing::debug!(node = id, "registration not yet accepted: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// What a node offers: declared in cluster.toml, GPUs counted when `gpu = "auto"`.
pub fn declared_resources(node: &NodeConfig) -> DeclaredResources {
    let r = &node.resources;
    let gpus: Vec<GpuDescription> = match r.gpu {
        GpuSpec::Count(_) => Vec::new(),
        GpuSpec::Auto => match arbor_kernels::device::detect_gpus() {
            Ok(gpus) => {
                for g in &gpus {
                    tracing::info!(index = g.index, model = %g.model, memory_bytes = g.memory_bytes, "found GPU {}", g.index);
                }
                gpus.into_iter()
                    .map(|g| GpuDescription {
                        index: g.index,
                        model: g.model,
                        memory: Bytes(g.memory_bytes).to_string(),
                        memory_bytes: g.memory_bytes,
                    })
                    .collect()
            }
            Err(reason) => {
                tracing::info!("gpu = \"auto\": no GPU counted: {reason}");
                Vec::new()
            }
        },
    };
    let gpu = match r.gpu {
        GpuSpec::Count(n) => n,
        GpuSpec::Auto => gpus.len() as u32,
    };
    DeclaredResources {
        cpu: r.cpu.to_string(),
        memory: r.memory.to_string(),
        gpu,
        gpus,
        gpu_memory: r.gpu_memory.map(|b| b.to_string()),
        ipu: r.ipu,
        custom: r.custom.clone(),
    }
}

impl Node {
    /// Starts node `id` of the cluster: creates its data dir, listens on its actors address
    /// and begins linking with its peers.
    pub async fn start(
        config: &ClusterConfig,
        id: NodeId,
        secret: &Secret,
        data_dir: Option<&Path>,
    ) -> Result<Node, NodeError> {
        let node = config.node(id)?;
        // Before anything listens: a node without its certificate must not start at all.
        let tls = config.node_tls(id)?;
        let data_dir = config.data_dir(node, data_dir);
        private_dir(&data_dir).map_err(|source| NodeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let me_resources = declared_resources(node);
        let me = NodeInfo {
            id,
            started: SystemTime::now(),
            actors: node.actors.to_string(),
            resources: me_resources.clone(),
            labels: node.labels.clone(),
        };
        let cluster = config.cluster.name.clone();

        let listen_failed = |reason: String| NodeError::Listen {
            id,
            addr: node.actors.to_string(),
            reason,
        };
        let link_tls = tls
            .as_ref()
            .map(crate::link::tls::LinkTls::new)
            .transpose()?;
        // With TLS the node accepts on the actors address itself (see `link::tls`), and the
        // NodeServer's own listener, which it always opens, is put on a loopback port nobody
        // dials, behind TLS as well.
        let server = match &link_tls {
            None => NodeServer::new(
                node.actors.port(),
                secret.cookie(),
                node_name(&cluster, id),
                node.actors.ip().to_string(),
                None,
                Some(NodeConnectionMode::Isolated),
            )
            .with_listen_addr(node.actors.ip()),
            Some(t) => NodeServer::new(
                0,
                secret.cookie(),
                node_name(&cluster, id),
                node.actors.ip().to_string(),
                Some(ractor_cluster::IncomingEncryptionMode::Tls(t.acceptor())),
                Some(NodeConnectionMode::Isolated),
            )
            .with_listen_addr([127, 0, 0, 1].into()),
        };
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| listen_failed(e.to_string()))?;
        let links_listener = match &link_tls {
            None => None,
            Some(t) => {
                let listener = tokio::net::TcpListener::bind(node.actors)
                    .await
                    .map_err(|e| listen_failed(e.to_string()))?;
                Some(tokio::spawn(crate::link::tls::listen(
                    listener,
                    server.clone(),
                    t.clone(),
                    config.links.handshake_timeout,
                )))
            }
        };

        let peers = config
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| (n.id, n.actors))
            .collect();
        let args = SupervisorArgs {
            cluster: cluster.clone(),
            me,
            peers,
            timing: config.links,
            server: server.clone(),
            tls: link_tls,
        };
        let (supervisor, _) = Actor::spawn(None, LinkSupervisor, args)
            .await
            .map_err(|e| NodeError::Spawn("link supervisor", e.to_string()))?;
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "arbor.links".into(),
                subscription: Box::new(SessionEvents(supervisor.clone())),
            })
            .map_err(|e| NodeError::Spawn("link supervisor", e.to_string()))?;
        let mut raft_config = raft_config(config, node, secret, &data_dir);
        raft_config.tls = tls.clone();
        let raft = RaftNode::start(raft_config).await?;
        let register = tokio::spawn(register(
            raft.handle(),
            id,
            node.actors.to_string(),
            capacity(node, &me_resources),
            node.labels.clone(),
        ));
        let link_args = LinkActorArgs {
            cluster,
            node: id,
            supervisor: supervisor.clone(),
            raft: raft.handle(),
        };
        let (link, _) = Actor::spawn(None, LinkActor, link_args)
            .await
            .map_err(|e| NodeError::Spawn("link", e.to_string()))?;
        let feed = crate::lease::ControlFeed::start(raft.handle(), config.scheduler.node_timeout);
        let agent = AgentBridge::start(
            raft.handle(),
            id,
            crate::link::scope(&config.cluster.name),
            Default::default(),
            data_dir.join("actors"),
            feed.control(),
        )
        .await
        .map_err(|e| NodeError::Spawn("node agent", e.to_string()))?;
        let janitor = crate::janitor::spawn(raft.handle(), id, data_dir.join("actors"));
        let load_report = crate::load_report::spawn(raft.handle(), id);
        // Every node runs one; only the leader's acts.
        let reconciler = Reconciler::spawn(raft.handle(), config.scheduler.reconciler());
        let tokens = crate::gateway::auth::TokenStore::open(config.tokens_file())?;
        let gateway = crate::gateway::Gateway::start(crate::gateway::GatewayArgs {
            node: id,
            cluster: config.cluster.name.clone(),
            supervisor: supervisor.clone(),
            raft_addrs: config
                .nodes
                .iter()
                .map(|n| (n.id, n.raft.to_string()))
                .collect(),
            addr: node.gateway,
            raft: raft.handle(),
            scope: crate::link::scope(&config.cluster.name),
            tokens,
            settings: config.gateway.clone(),
            tls: tls.as_ref().map(|t| t.gateway_acceptor()).transpose()?,
        })
        .await
        .map_err(|reason| NodeError::GatewayListen {
            id,
            addr: node.gateway.to_string(),
            reason,
        })?;
        let http = match node.http {
            None => None,
            Some(addr) => {
                let http = crate::http::Http::start(crate::http::HttpArgs {
                    node: id,
                    addr,
                    raft: raft.handle(),
                    supervisor: supervisor.clone(),
                    peers: config.nodes.iter().map(|n| n.id).collect(),
                    gateway: gateway.local_addr(),
                    tls: tls.as_ref().map(|t| t.gateway_acceptor()).transpose()?,
                    metrics: crate::http::metrics::install().map_err(NodeError::Metrics)?,
                })
                .await
                .map_err(|reason| NodeError::HttpListen {
                    id,
                    addr: addr.to_string(),
                    reason,
                })?;
                tracing::info!(node = id, http = %http.local_addr(), "serving /metrics, /healthz, /readyz and the dashboard");
                Some(http)
            }
        };
        tracing::info!(node = id, actors = %node.actors, gateway = %gateway.local_addr(), data_dir = %data_dir.display(), "node started");
        Ok(Node {
            id,
            data_dir,
            server,
            supervisor,
            link,
            raft,
            register,
            agent,
            feed,
            janitor,
            load_report,
            reconciler,
            gateway,
            http,
            links_listener,
        })
    }

    /// Resolves if this node's control plane stops on its own (a storage failure, a committed
    /// entry it cannot decode): the node must then stop too, since running actors without a
    /// control plane would serve what has been moved elsewhere. Its actors are stopped first.
    pub async fn halted(&self) -> arbor_scheduler::Halt {
        let halt = self.raft.handle().halted().await;
        self.feed.stop();
        let _ = self
            .agent
            .agent()
            .stop_and_wait(
                Some(format!("control plane halted: {halt}")),
                Some(Duration::from_secs(5)),
            )
            .await;
        halt
    }

    /// Where this node's HTTP port listens, if it has one.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(crate::http::Http::local_addr)
    }

    /// Where this node's gateway listens.
    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        self.gateway.local_addr()
    }

    /// This node's agent, the supervisor of the actors placed here.
    pub fn agent(&self) -> &ractor::ActorRef<arbor_actors::agent::AgentMsg> {
        self.agent.agent()
    }

    /// The control plane, as this node reaches it.
    pub fn raft(&self) -> RaftHandle {
        self.raft.handle()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// This node's membership view.
    pub async fn membership(&self) -> Result<MembershipReport, NodeError> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Report, 2000)
            .map_err(|e| NodeError::Unresponsive(e.to_string()))
    }

    /// An actor of `peer` in process group `group` (within `scope`), reached over this node's
    /// link with that peer; `None` if not linked or not (yet) advertised.
    pub async fn remote_member(
        &self,
        peer: NodeId,
        scope: &str,
        group: &str,
    ) -> Result<Option<ractor::ActorCell>, NodeError> {
        let session = ractor::call_t!(self.supervisor, SupervisorMsg::SessionWith, 2000, peer)
            .map_err(|e| NodeError::Unresponsive(e.to_string()))?;
        Ok(session.and_then(|s| crate::link::remote_member(scope, group, &s.get_cell())))
    }

    /// Stops the node's actors and closes its links and listener.
    pub async fn shutdown(self) {
        let timeout = Some(Duration::from_secs(5));
        if let Some(listener) = &self.links_listener {
            listener.abort();
        }
        self.register.abort();
        self.janitor.abort();
        self.load_report.abort();
        self.feed.stop();
        self.gateway.shutdown();
        if let Some(http) = &self.http {
            http.shutdown();
        }
        self.reconciler.stop();
        self.agent.shutdown().await;
        let _ = self.link.stop_and_wait(None, timeout).await;
        self.raft.shutdown().await;
        let _ = self.supervisor.stop_and_wait(None, timeout).await;
        let _ = self.server.stop_and_wait(None, timeout).await;
        tracing::info!(node = self.id, "node stopped");
    }
}
