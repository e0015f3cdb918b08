//! `arbor status`: ask any reachable node for its membership view and print it.
//!
//! The client joins the cluster's transport for a moment as a client node (it proves the
//! cluster secret like any node), calls the node's link actor, and leaves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage, NodeSessionMessage};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{ClusterConfig, NodeConfig, NodeId, Secret};
use crate::link::messages::{LinkMsg, MemberStatus, MembershipReport};
use crate::link::{PeerName, parse_peer_name, peer_link_actor};

/// Why no node answered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "no node of cluster {cluster} answered:\n{tried}\nIs the cluster running? Start it with scripts/local-cluster.sh, or `arbor node --config {config} --node ID`."
    )]
    NoAnswer {
        cluster: String,
        config: String,
        tried: String,
    },
    #[error("cannot start the status client: {0}")]
    Client(String),
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

/// Asks the nodes of the cluster, in cluster.toml's order, until one answers.
pub async fn query(
    config: &ClusterConfig,
    secret: &Secret,
    per_node: Duration,
) -> Result<MembershipReport, StatusError> {
    let cluster = &config.cluster.name;
    let name = format!("{cluster}/cli-{}", std::process::id());
    let server = NodeServer::new(
        0,
        secret.cookie(),
        name,
        "127.0.0.1".into(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr([127, 0, 0, 1].into());
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| StatusError::Client(e.to_string()))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "arbor.status".into(),
            subscription: Box::new(Events(tx)),
        })
        .map_err(|e| StatusError::Client(e.to_string()))?;

    let mut tried = String::new();
    let mut answer = None;
    for node in &config.nodes {
        match ask(&server, &mut rx, cluster, node, per_node).await {
            Ok(report) => {
                answer = Some(report);
                break;
            }
            Err(why) => {
                let _ = writeln!(tried, "  node {} at {}: {why}", node.id, node.actors);
            }
        }
    }
    let _ = server
        .stop_and_wait(None, Some(Duration::from_secs(2)))
        .await;
    answer.ok_or_else(|| StatusError::NoAnswer {
        cluster: cluster.clone(),
        config: config.path.display().to_string(),
        tried: tried.trim_end().to_owned(),
    })
}

async fn ask(
    server: &ActorRef<NodeServerMessage>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    cluster: &str,
    node: &NodeConfig,
    timeout: Duration,
) -> Result<MembershipReport, String> {
    let deadline = Instant::now() + timeout;
    let here = node.actors.to_string();
    tokio::time::timeout(timeout, ractor_cluster::client_connect(server, node.actors))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| format!("cannot connect ({e})"))?;
    let mut authenticated = false;
    let session = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) | Ok(None) => return Err("no handshake before the timeout".into()),
            // Events of an earlier attempt, with another node.
            Ok(Some(Event::Authenticated(addr) | Event::Ready(addr, ..) | Event::Closed(addr)))
                if addr != here =>
            {
                continue;
            }
            Ok(Some(Event::Authenticated(_))) => authenticated = true,
            Ok(Some(Event::Ready(_, session, name))) => {
                match parse_peer_name(cluster, name.as_deref().unwrap_or("")) {
                    PeerName::Node(id) if id == node.id => break session,
                    _ => {
                        session.get_cell().stop(None);
                        return Err(format!(
                            "it is not node {} of cluster {cluster} (it says {:?})",
                            node.id,
                            name.unwrap_or_default()
                        ));
                    }
                }
            }
            Ok(Some(Event::Closed(_))) if !authenticated => {
                return Err(
                    "it refused us: authentication failed; check the cluster secret".into(),
                );
            }
            Ok(Some(Event::Closed(_))) => return Err("it closed the connection".into()),
        }
    };
    let result = call_membership(cluster, node.id, &session, deadline).await;
    session.get_cell().stop(None);
    result
}

async fn call_membership(
    cluster: &str,
    id: NodeId,
    session: &ActorRef<NodeSessionMessage>,
    deadline: Instant,
) -> Result<MembershipReport, String> {
    // The node's link actor is mirrored as part of the session's ready sync; look briefly.
    let target: ActorRef<LinkMsg> = loop {
        if let Some(t) = peer_link_actor(cluster, id, &session.get_cell()) {
            break t;
        }
        if Instant::now() >= deadline {
            return Err("its link actor did not show up".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let reply = ractor::call_t!(target, LinkMsg::Membership, left.as_millis() as u64)
        .map_err(|e| format!("no answer ({e})"))?;
    reply.into_inner().map_err(|e| e.to_string())
}

/// One node, as `arbor status --json` prints it.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub address: String,
    pub state: &'static str,
    pub since: String,
    pub resources: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub cluster: String,
    pub answered_by: NodeId,
    pub nodes: Vec<NodeRow>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn row(m: &MemberStatus) -> NodeRow {
    NodeRow {
        id: m.id,
        address: m.address.clone(),
        state: m.state.as_str(),
        since: rfc3339(m.since),
        resources: m
            .info
            .as_ref()
            .and_then(|i| serde_json::to_value(&i.resources).ok()),
        labels: m
            .info
            .as_ref()
            .map(|i| i.labels.clone())
            .unwrap_or_default(),
    }
}

/// The `--json` form: one object, `{"nodes": [...]}` plus who answered.
pub fn to_json(report: &MembershipReport) -> StatusJson {
    StatusJson {
        cluster: report.cluster.clone(),
        answered_by: report.answered_by,
        nodes: report.nodes.iter().map(row).collect(),
    }
}

/// The table people read.
pub fn to_table(report: &MembershipReport) -> String {
    let mut rows = vec![
        [
            "ID", "ADDRESS", "STATE", "SINCE", "CPU", "MEMORY", "GPU", "IPU", "CUSTOM", "LABELS",
        ]
        .map(String::from),
    ];
    for m in &report.nodes {
        let (cpu, memory, gpu, ipu, custom, labels) = match &m.info {
            Some(i) => {
                let r = &i.resources;
                let gpu = match r.gpus.first() {
                    Some(g) => format!("{} ({})", r.gpu, g.model),
                    None => r.gpu.to_string(),
                };
                let join = |it: Vec<String>| {
                    if it.is_empty() {
                        "-".to_string()
                    } else {
                        it.join(",")
                    }
                };
                (
                    r.cpu.clone(),
                    r.memory.clone(),
                    gpu,
                    r.ipu.to_string(),
                    join(r.custom.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    join(i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                )
            }
            None => Default::default(),
        };
        rows.push([
            m.id.to_string(),
            m.address.clone(),
            m.state.as_str().to_string(),
            rfc3339(m.since),
            cpu,
            memory,
            gpu,
            ipu,
            custom,
            labels,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "cluster {} (as node {} sees it)\n",
        report.cluster, report.answered_by
    );
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
