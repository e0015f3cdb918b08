//! Arbor's mutual TLS, one place for the three transports (actor links, Raft, gateway).
//!
//! A cluster has one CA. Each node has a certificate signed by it whose names carry the node
//! id ([`node_name`]: `node-N.arbor`), so that a peer is accepted only when its certificate is
//! valid for the id it claims ([`check_peer`]). Every node certificate also carries the
//! name [`GATEWAY_NAME`], which is what gateway clients verify: they hold the CA, not a list of
//! node ids, and they prove who they are with a token, not a certificate.
//!
//! The files live in one folder ([`TlsDir`]): `ca.pem`, `ca.key`, `node-N.pem`, `node-N.key`.
//! [`issue`] (feature `issue`, used by `arbor cert`) makes them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[cfg(feature = "issue")]
pub mod issue;

pub use rustls::pki_types::CertificateDer;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every node certificate carries for gateway clients.
pub const GATEWAY_NAME: &str = "gateway.arbor";

/// The certificate name that binds a certificate to node `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.arbor")
}

/// Why TLS material could not be loaded or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path}: {why}; run `arbor cert init --config cluster.toml` to make the \
         cluster's certificates"
    )]
    Missing { path: PathBuf, why: String },
    #[error("{path} holds no usable {what}: {why}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("the TLS configuration was refused: {0}")]
    Config(String),
    /// The peer presented no certificate, or one that is not valid for the node it claims.
    #[error("the peer's certificate is not node {claimed}'s: {why}")]
    WrongPeer { claimed: u64, why: String },
    #[cfg(feature = "issue")]
    #[error("cannot make certificates: {0}")]
    Issue(String),
    #[error("cannot write {path}: {why}")]
    Write { path: PathBuf, why: String },
}

/// The folder that holds a cluster's CA and node certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDir(PathBuf);

impl TlsDir {
    pub fn new(dir: impl Into<PathBuf>) -> TlsDir {
        TlsDir(dir.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.0.join(format!("node-{id}.pem"))
    }
    pub fn node_key(&self, id: u64) -> PathBuf {
        self.0.join(format!("node-{id}.key"))
    }
}

/// The crypto every config uses, named rather than taken from a process default (which would
/// be ambiguous if two providers were ever compiled in).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Missing {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            what: "certificate",
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            what: "certificate",
            why: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Missing {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Invalid {
        path: path.to_owned(),
        what: "private key",
        why: e.to_string(),
    })
}

/// The CA's certificates as a root store.
fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            what: "CA certificate",
            why: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// One node's TLS identity: the cluster CA it trusts and its own certificate and key.
#[derive(Debug, Clone)]
pub struct NodeTls {
    node: u64,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl NodeTls {
    /// Loads node `node`'s identity from `dir`, and checks that its certificate is the node's
    /// and signed by the CA there (a mix-up of files fails here, not at the first peer).
    pub fn load(dir: &TlsDir, node: u64) -> Result<NodeTls, TlsError> {
        let roots = roots(&dir.ca_cert())?;
        let chain = certs(&dir.node_cert(node))?;
        let key = key(&dir.node_key(node))?;
        let tls = NodeTls {
            node,
            roots,
            chain,
            key: Arc::new(key),
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(tls.roots.clone(), provider())
            .build()
            .map_err(config_error)?;
        let name = ServerName::try_from(node_name(node)).map_err(config_error)?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &tls.chain[0],
            &tls.chain[1..],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|e| TlsError::Invalid {
            path: dir.node_cert(node),
            what: "certificate for this node",
            why: format!(
                "{e} (is it node {node}'s, signed by {}?)",
                dir.ca_cert().display()
            ),
        })?;
        Ok(tls)
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// For the ports only nodes dial (actor links, Raft): the peer must present a certificate
    /// signed by the cluster CA. Which node it is, the transport checks with [`check_peer`]
    /// once the peer says who it claims to be.
    pub fn peer_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(config_error)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// For the gateway: clients verify the node, and authenticate with a token.
    pub fn gateway_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// For dialing a peer: the peer's certificate must be valid for [`node_name`] of the node
    /// dialed, and this node presents its own.
    pub fn peer_connector(&self) -> Result<TlsConnector, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The name to dial node `id` under: its certificate must be valid for it.
pub fn peer_server_name(id: u64) -> ServerName<'static> {
    ServerName::try_from(node_name(id)).expect("node-N.arbor is a valid DNS name")
}

/// The name a gateway client verifies a node under.
pub fn gateway_server_name() -> ServerName<'static> {
    ServerName::try_from(GATEWAY_NAME).expect("gateway.arbor is a valid DNS name")
}

/// A gateway client's config: it trusts the cluster CA in `ca` and presents no certificate.
pub fn gateway_client(ca: &Path) -> Result<TlsConnector, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Whether the peer's certificate (already verified against the CA by the handshake) is valid
/// for node `claimed`: a node may only speak as itself.
pub fn check_peer(peer: Option<&[CertificateDer<'_>]>, claimed: u64) -> Result<(), TlsError> {
    let wrong = |why: String| TlsError::WrongPeer { claimed, why };
    let cert = peer
        .and_then(|c| c.first())
        .ok_or_else(|| wrong("it presented none".into()))?;
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| wrong(e.to_string()))?;
    let name = peer_server_name(claimed);
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| wrong(format!("{e:?}")))
}
