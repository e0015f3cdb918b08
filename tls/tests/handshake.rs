//! Certificates made by `issue`, then real TLS handshakes over loopback TCP.

use arbor_tls::issue::{NodeNames, init, issue};
use arbor_tls::{
    NodeTls, TlsDir, TlsError, check_peer, gateway_client, gateway_server_name, peer_server_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn nodes(ids: &[u64]) -> Vec<NodeNames> {
    ids.iter()
        .map(|&id| NodeNames {
            id,
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
        })
        .collect()
}

fn made(dir: &tempfile::TempDir, cluster: &str, ids: &[u64]) -> TlsDir {
    let tls = TlsDir::new(dir.path().join("tls"));
    init(&tls, cluster, &nodes(ids)).unwrap();
    tls
}

#[test]
fn init_makes_what_is_missing_with_private_keys_and_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsDir::new(dir.path().join("tls"));
    let first = init(&tls, "c", &nodes(&[1, 2])).unwrap();
    assert_eq!(first.len(), 6, "{first:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(tls.path()), 0o700);
        assert_eq!(mode(&tls.ca_key()), 0o600);
        assert_eq!(mode(&tls.node_key(2)), 0o600);
        assert_eq!(mode(&tls.node_cert(2)), 0o644);
    }
    assert!(init(&tls, "c", &nodes(&[1, 2])).unwrap().is_empty());
    // A third node later: only its files, signed by the same CA.
    let third = init(&tls, "c", &nodes(&[1, 2, 3])).unwrap();
    assert_eq!(third, vec![tls.node_cert(3), tls.node_key(3)]);
    NodeTls::load(&tls, 3).unwrap();
    // `issue` never replaces a certificate.
    let err = issue(&tls, "c", &nodes(&[3])[0]).unwrap_err();
    assert!(err.to_string().contains("delete it first"), "{err}");
}

#[test]
fn loading_names_the_missing_file_and_the_command_that_makes_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls = made(&dir, "c", &[1]);
    let err = NodeTls::load(&tls, 7).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("node-7.pem"), "{err}");
    assert!(err.to_string().contains("arbor cert init"), "{err}");
    // Node 1's files under node 2's name are refused at load, not at the first peer.
    std::fs::copy(tls.node_cert(1), tls.node_cert(2)).unwrap();
    std::fs::copy(tls.node_key(1), tls.node_key(2)).unwrap();
    let err = NodeTls::load(&tls, 2).unwrap_err();
    assert!(err.to_string().contains("node 2"), "{err}");
}

/// Node `server` accepts one connection; node `client` dials it as `dial`. What each side got.
async fn handshake(
    server: &NodeTls,
    client: &NodeTls,
    dial: u64,
) -> (Result<Option<u64>, String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.peer_acceptor().unwrap();
    let claimed = client.node();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates();
        check_peer(peer, claimed).map_err(|e| e.to_string())?;
        Ok(Some(claimed))
    });
    let connector = client.peer_connector().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let dialed = match connector.connect(peer_server_name(dial), tcp).await {
        Ok(mut tls) => {
            let _ = tls.write_all(b"x").await;
            let _ = tls.flush().await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    (accept.await.unwrap(), dialed)
}

#[tokio::test]
async fn nodes_of_one_ca_link_and_each_is_bound_to_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let tls = made(&dir, "c", &[1, 2]);
    let (n1, n2) = (
        NodeTls::load(&tls, 1).unwrap(),
        NodeTls::load(&tls, 2).unwrap(),
    );
    let (accepted, dialed) = handshake(&n1, &n2, 1).await;
    assert_eq!(dialed, Ok(()));
    assert_eq!(accepted, Ok(Some(2)));

    // Node 2 dialing "node 2" at node 1's address: node 1's certificate is not node 2's.
    let (_, dialed) = handshake(&n1, &n2, 2).await;
    assert!(dialed.unwrap_err().contains("certificate"));

    // A certificate valid for node 2 claiming to be node 3 is refused by the id check.
    let der = std::fs::read(tls.node_cert(2)).unwrap();
    let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(&der)
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    check_peer(Some(&certs), 2).unwrap();
    let err = check_peer(Some(&certs), 3).unwrap_err();
    assert!(err.to_string().contains("node 3"), "{err}");
    assert!(check_peer(None, 2).is_err());
}

#[tokio::test]
async fn a_node_of_another_ca_is_refused_both_ways() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ours, theirs) = (made(&a, "c", &[1]), made(&b, "c", &[2]));
    let (n1, stranger) = (
        NodeTls::load(&ours, 1).unwrap(),
        NodeTls::load(&theirs, 2).unwrap(),
    );
    let (accepted, _) = handshake(&n1, &stranger, 1).await;
    assert!(accepted.is_err(), "{accepted:?}");
    let (_, dialed) = handshake(&stranger, &n1, 2).await;
    assert!(dialed.is_err(), "{dialed:?}");
}

#[tokio::test]
async fn a_gateway_client_verifies_any_node_of_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = made(&dir, "c", &[4]);
    let node = NodeTls::load(&tls, 4).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = node.gateway_acceptor().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                tls.write_all(b"hi").await.unwrap();
                tls.flush().await.unwrap();
            }
        }
    });
    let connector = gateway_client(&tls.ca_cert()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = connector.connect(gateway_server_name(), tcp).await.unwrap();
    let mut got = [0u8; 2];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hi");
    // The IP address written into the certificate verifies too (any TLS client may dial by it).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let by_ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(by_ip, tcp).await.unwrap();
    stream.read_exact(&mut got).await.unwrap();
    // A name the certificate does not carry is refused.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
    let err = connector.connect(other, tcp).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}
