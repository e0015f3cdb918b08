//! Shared pieces of the benchmarks: echo actors and two linked nodes in one process, both
//! through Arbor's node runtime and through raw ractor_cluster, for comparison.

// Shared with the tests; the benches use only part of it.
#[path = "../tests/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use arbor_actors::wire::Wire;
use arbor_node::{Node, Secret};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServer, NodeServerMessage, RactorClusterMessage};

/// The process-group scope the benchmark actors join.
pub const SCOPE: &str = "arbor-bench";

/// An echo actor speaking Arbor's wire payloads (bincode with a decode limit).
#[derive(RactorClusterMessage)]
pub enum EchoMsg {
    #[rpc]
    Echo(Wire<Vec<u8>>, RpcReplyPort<Wire<Vec<u8>>>),
    Count(Wire<u64>),
    #[rpc]
    Seen(RpcReplyPort<Wire<u64>>),
}

pub struct EchoActor;

impl Actor for EchoActor {
    type Msg = EchoMsg;
    type State = u64;
    type Arguments = String;

    async fn pre_start(
        &self,
        me: ActorRef<EchoMsg>,
        group: String,
    ) -> Result<u64, ActorProcessingErr> {
        ractor::pg::join_scoped(SCOPE.into(), group, vec![me.get_cell()]);
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<EchoMsg>,
        msg: EchoMsg,
        seen: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EchoMsg::Echo(payload, reply) => {
                let _ = reply.send(payload);
            }
            EchoMsg::Count(_) => *seen += 1,
            EchoMsg::Seen(reply) => {
                let _ = reply.send(Wire::new(*seen));
            }
        }
        Ok(())
    }
}

/// The same actor with ractor's own byte conversions: the raw ractor_cluster baseline.
#[derive(RactorClusterMessage)]
pub enum RawMsg {
    #[rpc]
    Echo(Vec<u8>, RpcReplyPort<Vec<u8>>),
    Count(u64),
    #[rpc]
    Seen(RpcReplyPort<u64>),
}

pub struct RawActor;

impl Actor for RawActor {
    type Msg = RawMsg;
    type State = u64;
    type Arguments = String;

    async fn pre_start(
        &self,
        me: ActorRef<RawMsg>,
        group: String,
    ) -> Result<u64, ActorProcessingErr> {
        ractor::pg::join_scoped(SCOPE.into(), group, vec![me.get_cell()]);
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<RawMsg>,
        msg: RawMsg,
        seen: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RawMsg::Echo(payload, reply) => {
                let _ = reply.send(payload);
            }
            RawMsg::Count(_) => *seen += 1,
            RawMsg::Seen(reply) => {
                let _ = reply.send(*seen);
            }
        }
        Ok(())
    }
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "benchmark setup: {what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two Arbor nodes linked over loopback (over mutual TLS, or in plain TCP when `tls` is
/// false: an insecure loopback cluster), and node 2's echo actor as node 1 reaches it. The two
/// kinds may run in one process side by side: each has its own cluster and echo group.
pub async fn arbor_pair(dir: &std::path::Path, tls: bool) -> (Vec<Node>, ActorRef<EchoMsg>) {
    let name = if tls { "bench-tls" } else { "bench-plain" };
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = support::cluster(name, 2, &dir);
    if !tls {
        let text = std::fs::read_to_string(&config.path).unwrap();
        let tls_dir = format!("dir = \"{}\"", dir.join("tls").display());
        std::fs::write(&config.path, text.replace(&tls_dir, "insecure = true")).unwrap();
        config = arbor_node::ClusterConfig::load(&config.path).unwrap();
    }
    let secret = Secret::new("bench-secret-padded-to-32-bytes-at-least").unwrap();
    let n1 = Node::start(&config, 1, &secret, None).await.unwrap();
    let n2 = Node::start(&config, 2, &secret, None).await.unwrap();
    let group = format!("echo.{name}");
    Actor::spawn(None, EchoActor, group.clone()).await.unwrap();
    let target = poll("node 1 reaches node 2's echo actor", async || {
        n1.remote_member(2, SCOPE, &group).await.unwrap()
    })
    .await;
    (vec![n1, n2], ActorRef::from(target))
}

/// Two bare ractor_cluster node servers linked over loopback, and the raw echo actor.
pub async fn raw_pair() -> (Vec<ActorRef<NodeServerMessage>>, ActorRef<RawMsg>) {
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for name in ["raw-a", "raw-b"] {
        let port = support::free_port();
        let server = NodeServer::new(
            port,
            "cookie".into(),
            name.into(),
            "127.0.0.1".into(),
            None,
            None,
        )
        .with_listen_addr([127, 0, 0, 1].into());
        servers.push(Actor::spawn(None, server, ()).await.unwrap().0);
        ports.push(port);
    }
    Actor::spawn(None, RawActor, "raw.b".into()).await.unwrap();
    ractor_cluster::client_connect(&servers[0], ("127.0.0.1", ports[1]))
        .await
        .unwrap();
    let server = servers[0].clone();
    let target = poll("raw link ready", async || {
        let sessions = ractor::call_t!(server, NodeServerMessage::GetSessions, 1000).ok()?;
        sessions
            .values()
            .find_map(|s| arbor_node::remote_member(SCOPE, "raw.b", &s.actor.get_cell()))
    })
    .await;
    (servers, ActorRef::from(target))
}
