//! Actor links over mutual TLS.
//!
//! ractor_cluster's own TLS listener completes each handshake inline in its accept loop, so
//! one peer that never starts its handshake stalls every other (see ARCHITECTURE.md). The node
//! therefore listens on its actors address itself: each connection gets its TLS handshake in a
//! task of its own, under a deadline and a cap on handshakes in flight per source address, and
//! only then is handed to the `NodeServer` as an external stream. Dials go the same way.
//!
//! TLS proves that a peer holds a certificate of the cluster's CA; which node it may be is
//! decided once its ractor handshake names it: [`Certified`] keeps each inbound connection's
//! certificate under the label ractor reports as the session's address, and the link
//! supervisor refuses a session whose certificate is not the node it names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_tls::CertificateDer;
use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::config::NodeId;

/// TLS handshakes one source address may have in flight on the actors port; more are closed
/// at once (a node dials each peer once, so only a flood reaches this).
const HANDSHAKES_PER_ADDRESS: usize = 8;

/// Both ends of mutual TLS for the actor links.
#[derive(Clone)]
pub struct LinkTls {
    acceptor: arbor_tls::TlsAcceptor,
    connector: arbor_tls::TlsConnector,
    certified: Certified,
}

impl LinkTls {
    pub fn new(tls: &arbor_tls::NodeTls) -> Result<LinkTls, arbor_tls::TlsError> {
        Ok(LinkTls {
            acceptor: tls.peer_acceptor()?,
            connector: tls.peer_connector()?,
            certified: Certified::default(),
        })
    }

    pub fn acceptor(&self) -> arbor_tls::TlsAcceptor {
        self.acceptor.clone()
    }

    pub fn certified(&self) -> &Certified {
        &self.certified
    }
}

/// Inbound connections' certificates, by the label ractor reports as the session's address.
#[derive(Clone, Default)]
pub struct Certified {
    by_label: Arc<Mutex<HashMap<String, Vec<CertificateDer<'static>>>>>,
    next: Arc<AtomicU64>,
}

impl Certified {
    fn insert(&self, peer: SocketAddr, certs: Vec<CertificateDer<'static>>) -> String {
        let label = format!("{peer}#{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.lock().insert(label.clone(), certs);
        label
    }

    /// Whether the connection behind `label` presented node `claimed`'s certificate.
    pub fn check(&self, label: &str, claimed: NodeId) -> Result<(), String> {
        let certs = self.lock().get(label).cloned();
        match certs {
            None => Err("it came in without a certificate on record".into()),
            Some(certs) => arbor_tls::check_peer(Some(&certs), claimed).map_err(|e| e.to_string()),
        }
    }

    /// Forgets a closed session's certificate.
    pub fn forget(&self, label: &str) {
        self.lock().remove(label);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<CertificateDer<'static>>>> {
        self.by_label
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A TLS stream handed to ractor_cluster, with the label it reports as the peer's address.
struct Labeled<S> {
    stream: S,
    label: String,
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> ClusterBidiStream for Labeled<S> {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        (Box::new(read), Box::new(write))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// Dials node `peer` at `addr`: TCP, TLS (its certificate must be `peer`'s), then the stream
/// goes to `server` for ractor's handshake. Its sessions report `addr` as their address.
pub async fn dial(
    server: &ActorRef<NodeServerMessage>,
    tls: &LinkTls,
    peer: NodeId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tls.connector
            .connect(arbor_tls::peer_server_name(peer), tcp)
            .await
            .map_err(|e| format!("TLS with node {peer} failed: {e}"))
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("no TLS handshake within {timeout:?}"))??;
    let labeled = Labeled {
        stream,
        label: addr.to_string(),
    };
    ractor_cluster::client_connect_external(server, Box::new(labeled))
        .await
        .map_err(|e| e.to_string())
}

/// Accepts peers on the actors address: each connection's TLS handshake in its own task, under
/// `timeout`; the authenticated stream goes to `server`.
pub async fn listen(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    tls: LinkTls,
    timeout: Duration,
) {
    let in_flight = arbor_proto::per_address::PerAddress::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("actors port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(place) = in_flight.enter(peer.ip(), HANDSHAKES_PER_ADDRESS) else {
            tracing::debug!(%peer, "actors port: too many handshakes from this address");
            continue;
        };
        let (server, tls) = (server.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(timeout, tls.acceptor.accept(tcp)).await;
            drop(place);
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "actors port: refused a connection: TLS failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "actors port: no TLS handshake within {timeout:?}");
                    return;
                }
            };
            let certs = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            let label = tls.certified.insert(peer, certs);
            let labeled = Labeled {
                stream,
                label: label.clone(),
            };
            let opened = server.cast(NodeServerMessage::ConnectionOpenedExternal {
                stream: Box::new(labeled),
                is_server: true,
            });
            if opened.is_err() {
                tls.certified.forget(&label);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Secret, Transport};
    use ractor::Actor;
    use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
    use ractor_cluster::{NodeEventSubscription, NodeServer};
    use tokio::sync::mpsc;

    /// What a peer's node server saw of its session: ready, or closed.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Ready,
        Closed,
    }

    struct Events(mpsc::UnboundedSender<Seen>);

    impl NodeEventSubscription for Events {
        fn node_session_opened(&self, _: NodeServerSessionInformation) {}
        fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
        fn node_session_ready(&self, _: NodeServerSessionInformation) {
            let _ = self.0.send(Seen::Ready);
        }
        fn node_session_disconnected(&self, _: NodeServerSessionInformation) {
            let _ = self.0.send(Seen::Closed);
        }
    }

    fn free() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A peer that names itself node `name` in ractor's handshake and presents node `cert`'s
    /// certificate; it dials node 1 and reports what happens to the session.
    async fn peer(
        config: &ClusterConfig,
        secret: &Secret,
        name: NodeId,
        cert: NodeId,
    ) -> mpsc::UnboundedReceiver<Seen> {
        let tls = LinkTls::new(&arbor_tls::NodeTls::load(dir_of(config), cert).unwrap()).unwrap();
        let server = NodeServer::new(
            0,
            secret.cookie(),
            super::super::node_name(&config.cluster.name, name),
            "127.0.0.1".into(),
            Some(ractor_cluster::IncomingEncryptionMode::Tls(tls.acceptor())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr([127, 0, 0, 1].into());
        let (server, _) = Actor::spawn(None, server, ()).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "test".into(),
                subscription: Box::new(Events(tx)),
            })
            .unwrap();
        dial(
            &server,
            &tls,
            1,
            config.nodes[0].actors,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        rx
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Option<Seen> {
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_naming_itself_another_node_than_its_certificate_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            // Silent peers are cut off only after 30 s: the honest peer below sends no
            // heartbeats, and must not be cut off for that while the test watches it.
            "[cluster]\nname = \"impostors\"\n\n[links]\npeer_timeout = \"30s\"\n\n[tls]\n\
             dir = \"{}\"\n",
            dir.path().join("tls").display()
        );
        for id in 1..=3 {
            text.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nactors = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\n\
                 gateway = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n[nodes.resources]\ncpu = \"1\"\n\
                 memory = \"1GiB\"\ngpu = 0\n",
                free(),
                free(),
                free(),
                dir.path().join(format!("node-{id}")).display()
            ));
        }
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        let nodes: Vec<arbor_tls::issue::NodeNames> = (1..=3)
            .map(|id| arbor_tls::issue::NodeNames {
                id,
                hosts: vec!["127.0.0.1".into()],
            })
            .collect();
        arbor_tls::issue::init(
            &arbor_tls::TlsDir::new(dir.path().join("tls")),
            "impostors",
            &nodes,
        )
        .unwrap();
        let secret = Secret::new("impostors-secret-impostors-secret").unwrap();
        let node = crate::Node::start(&config, 1, &secret, None).await.unwrap();

        // Node 3's certificate (and the cluster secret) naming itself node 2: TLS lets it in,
        // ractor's handshake completes, and node 1 stops the session when it names itself.
        let mut impostor = peer(&config, &secret, 2, 3).await;
        let mut seen = Vec::new();
        while let Some(s) = next(&mut impostor, Duration::from_secs(10)).await {
            let closed = s == Seen::Closed;
            seen.push(s);
            if closed {
                break;
            }
        }
        assert_eq!(seen.last(), Some(&Seen::Closed), "{seen:?}");

        // Node 2's own certificate: linked, and it stays linked.
        let mut honest = peer(&config, &secret, 2, 2).await;
        assert_eq!(
            next(&mut honest, Duration::from_secs(10)).await,
            Some(Seen::Ready)
        );
        assert_eq!(next(&mut honest, Duration::from_secs(2)).await, None);

        // A plaintext peer (ractor's own framing, no TLS) never gets a session: closed.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let closed_within = async |s: &mut (dyn AsyncRead + Unpin + Send), within: Duration| {
            let mut buf = [0u8; 64];
            loop {
                match tokio::time::timeout(within, s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        };
        let mut plain = TcpStream::connect(config.nodes[0].actors).await.unwrap();
        let _ = plain
            .write_all(&[0, 0, 0, 8, 10, 6, b'n', b'o', b'd', b'e', b'-', b'2'])
            .await;
        assert!(
            closed_within(&mut plain, Duration::from_secs(5)).await,
            "a plaintext peer was held"
        );

        // A peer with a good certificate that then says nothing (ractor's handshake never
        // starts) is closed after the handshake timeout (1.5 s), not held.
        let tcp = TcpStream::connect(config.nodes[0].actors).await.unwrap();
        let n2 = LinkTls::new(&arbor_tls::NodeTls::load(dir_of(&config), 2).unwrap()).unwrap();
        let mut silent = n2
            .connector
            .connect(arbor_tls::peer_server_name(1), tcp)
            .await
            .unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(6)).await,
            "a silent peer with a good certificate was held"
        );
        node.shutdown().await;
    }

    fn dir_of(config: &ClusterConfig) -> &arbor_tls::TlsDir {
        match &config.tls {
            Transport::Tls(dir) => dir,
            _ => unreachable!(),
        }
    }
}
