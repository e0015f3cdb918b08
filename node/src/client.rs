//! A way into the cluster's own transport for tools that hold the cluster secret (the test
//! suites and benches that address replicas directly): it joins as a client node for a
//! moment, proving the secret like any node, and leaves. The `arbor` CLI does not use it:
//! every command goes through a gateway with a token. [`answer`] also reads the replies of
//! link calls between nodes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage, NodeSessionMessage};
use tokio::sync::mpsc;

use crate::config::{ClusterConfig, NodeConfig, NodeId, Secret};
use crate::link::messages::LinkMsg;
use crate::link::{PeerName, parse_peer_name};

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no node of cluster {cluster} answered:\n{tried}\nIs the cluster running? Start it with scripts/local-cluster.sh, or `arbor node --config {config} --node ID`."
    )]
    NoAnswer {
        cluster: String,
        config: String,
        tried: String,
    },
    #[error("cannot start the client: {0}")]
    Start(String),
    #[error(transparent)]
    Tls(#[from] arbor_tls::TlsError),
}

/// A session event, with the address of the node it is with.
enum Event {
    Authenticated(String),
    Ready(String, ActorRef<NodeSessionMessage>, Option<String>),
    Closed(String),
}

struct Events(mpsc::UnboundedSender<Event>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Authenticated(ses.peer_addr));
    }
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let name = ses.peer_name.map(|n| n.name);
        let _ = self.0.send(Event::Ready(ses.peer_addr, ses.actor, name));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Closed(ses.peer_addr));
    }
}

/// A connected client of one cluster.
pub struct Client<'a> {
    config: &'a ClusterConfig,
    server: ActorRef<NodeServerMessage>,
    events: mpsc::UnboundedReceiver<Event>,
    per_node: Duration,
    /// Sessions kept open by [`Client::join_all`].
    sessions: Vec<ActorRef<NodeSessionMessage>>,
    /// Mutual TLS with the nodes, under the first node's certificate: whoever runs this holds
    /// the cluster secret and a node's key, and acts with a node's authority.
    tls: Option<crate::link::tls::LinkTls>,
}

impl<'a> Client<'a> {
    /// Starts a client node for `config`'s cluster; `per_node` bounds each node's answer.
    pub async fn start(
        config: &'a ClusterConfig,
        secret: &Secret,
        per_node: Duration,
    ) -> Result<Client<'a>, ClientError> {
        let name = format!("{}/cli-{}", config.cluster.name, std::process::id());
        let first = config.nodes.iter().map(|n| n.id).min().unwrap_or(1);
        let tls = config
            .node_tls(first)?
            .as_ref()
            .map(crate::link::tls::LinkTls::new)
            .transpose()?;
        let server = NodeServer::new(
            0,
            secret.cookie(),
            name,
            "127.0.0.1".into(),
            tls.as_ref()
                .map(|t| ractor_cluster::IncomingEncryptionMode::Tls(t.acceptor())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr([127, 0, 0, 1].into());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| ClientError::Start(e.to_string()))?;
        let (tx, events) = mpsc::unbounded_channel();
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "arbor.client".into(),
                subscription: Box::new(Events(tx)),
            })
            .map_err(|e| ClientError::Start(e.to_string()))?;
        Ok(Client {
            config,
            server,
            events,
            per_node,
            sessions: Vec::new(),
            tls,
        })
    }

    /// Links with every node in cluster.toml and keeps the sessions open, so actors the nodes
    /// advertise in process groups (deployment replicas) become reachable from here. Returns
    /// each node's result; the call succeeds if any node linked.
    pub async fn join_all(&mut self) -> Result<Vec<(NodeId, Result<(), String>)>, ClientError> {
        let mut out = Vec::new();
        let mut tried = String::new();
        for node in &self.config.nodes {
            let deadline = Instant::now() + self.per_node;
            let result = self.connect(node, deadline).await.map(|session| {
                self.sessions.push(session);
            });
            if let Err(why) = &result {
                let _ = writeln!(tried, "  node {} at {}: {why}", node.id, node.actors);
            }
            out.push((node.id, result));
        }
        if self.sessions.is_empty() {
            return Err(ClientError::NoAnswer {
                cluster: self.config.cluster.name.clone(),
                config: self.config.path.display().to_string(),
                tried: tried.trim_end().to_owned(),
            });
        }
        Ok(out)
    }

    /// Leaves the cluster's transport.
    pub async fn stop(self) {
        for session in &self.sessions {
            session.get_cell().stop(None);
        }
        let _ = self
            .server
            .stop_and_wait(None, Some(Duration::from_secs(2)))
            .await;
    }

    async fn connect(
        &mut self,
        node: &NodeConfig,
        deadline: Instant,
    ) -> Result<ActorRef<NodeSessionMessage>, String> {
        let here = node.actors.to_string();
        let cluster = &self.config.cluster.name;
        match &self.tls {
            Some(tls) => {
                crate::link::tls::dial(&self.server, tls, node.id, node.actors, self.per_node)
                    .await?
            }
            None => tokio::time::timeout(
                self.per_node,
                ractor_cluster::client_connect(&self.server, node.actors),
            )
            .await
            .map_err(|_| "connection timed out".to_string())?
            .map_err(|e| format!("cannot connect ({e})"))?,
        }
        let mut authenticated = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Err(_) | Ok(None) => return Err("no handshake before the timeout".into()),
                // Events of an earlier attempt, with another node.
                Ok(Some(
                    Event::Authenticated(addr) | Event::Ready(addr, ..) | Event::Closed(addr),
                )) if addr != here => continue,
                Ok(Some(Event::Authenticated(_))) => authenticated = true,
                Ok(Some(Event::Ready(_, session, name))) => {
                    return match parse_peer_name(cluster, name.as_deref().unwrap_or("")) {
                        PeerName::Node(id) if id == node.id => Ok(session),
                        _ => {
                            session.get_cell().stop(None);
                            Err(format!(
                                "it is not node {} of cluster {cluster} (it says {:?})",
                                node.id,
                                name.unwrap_or_default()
                            ))
                        }
                    };
                }
                Ok(Some(Event::Closed(_))) if !authenticated => {
                    return Err(
                        "it refused us: authentication failed; check the cluster secret".into(),
                    );
                }
                Ok(Some(Event::Closed(_))) => return Err("it closed the connection".into()),
            }
        }
    }
}

/// A link actor's RPC result, as the client's answer.
pub fn answer<T>(
    result: Result<
        ractor::rpc::CallResult<arbor_actors::wire::Wire<T>>,
        ractor::MessagingErr<LinkMsg>,
    >,
) -> Result<T, String> {
    match result {
        Ok(ractor::rpc::CallResult::Success(w)) => w.into_inner().map_err(|e| e.to_string()),
        Ok(ractor::rpc::CallResult::Timeout) => Err("no answer before the timeout".into()),
        Ok(ractor::rpc::CallResult::SenderError) => Err("the node dropped the request".into()),
        Err(e) => Err(format!("cannot send ({e})")),
    }
}
