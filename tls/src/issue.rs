//! Making the cluster's certificates (`arbor cert init|issue`): a CA, then one certificate per
//! node signed by it. Keys are written owner-only (0600), and nothing that exists is replaced:
//! rotating is deleting what should be made again, then running `init` (see the README).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{GATEWAY_NAME, NodeTls, TlsDir, TlsError, node_name};

/// How long the CA's certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a node's certificate is valid.
const NODE_VALIDITY: Duration = Duration::days(825);

/// A node to make a certificate for, and the host names and addresses clients reach it by
/// (written into the certificate besides its id, so that any TLS client can verify it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    pub id: u64,
    pub hosts: Vec<String>,
}

fn failed(e: impl std::fmt::Display) -> TlsError {
    TlsError::Issue(e.to_string())
}

/// The CA's parameters, a pure function of the cluster's name: a CA certificate on disk is
/// signed again under the same subject, so only its key has to be read back.
fn ca_params(cluster: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Arbor cluster CA ({cluster})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

/// Creates what is missing in `dir`: the CA (unless it exists) and each node's certificate and
/// key (unless both exist). The paths written, in order; none when everything was there.
pub fn init(dir: &TlsDir, cluster: &str, nodes: &[NodeNames]) -> Result<Vec<PathBuf>, TlsError> {
    create_dir(dir)?;
    let mut made = Vec::new();
    let (ca_cert, ca_key) = (dir.ca_cert().exists(), dir.ca_key().exists());
    match (ca_cert, ca_key) {
        (true, true) => {}
        (false, false) => {
            if let Some(n) = nodes
                .iter()
                .find(|n| dir.node_cert(n.id).exists() || dir.node_key(n.id).exists())
            {
                return Err(TlsError::Issue(format!(
                    "{} has node {}'s certificate but no CA: it was signed by a CA that is gone; \
                     delete the node-*.pem and node-*.key files there to make new ones",
                    dir.path().display(),
                    n.id
                )));
            }
            let key = KeyPair::generate().map_err(failed)?;
            let cert = ca_params(cluster)?.self_signed(&key).map_err(failed)?;
            write_file(&dir.ca_key(), key.serialize_pem().as_bytes(), true)?;
            write_file(&dir.ca_cert(), cert.pem().as_bytes(), false)?;
            made.extend([dir.ca_cert(), dir.ca_key()]);
        }
        (true, false) => {
            return Err(TlsError::Issue(format!(
                "{} exists but {} does not: new node certificates cannot be signed; restore the \
                 CA key, or delete the folder's files to start a new CA",
                dir.ca_cert().display(),
                dir.ca_key().display()
            )));
        }
        (false, true) => {
            return Err(TlsError::Issue(format!(
                "{} exists but {} does not; restore it, or delete the key to start a new CA",
                dir.ca_key().display(),
                dir.ca_cert().display()
            )));
        }
    }
    for node in nodes {
        let (cert, key) = (
            dir.node_cert(node.id).exists(),
            dir.node_key(node.id).exists(),
        );
        match (cert, key) {
            (true, true) => {}
            (false, false) => made.extend(issue(dir, cluster, node)?),
            _ => {
                return Err(TlsError::Issue(format!(
                    "node {}'s certificate or key is missing in {} but not both; delete the \
                     other and run again",
                    node.id,
                    dir.path().display()
                )));
            }
        }
    }
    Ok(made)
}

/// Makes `node`'s certificate and key, signed by the CA in `dir`. Refuses to replace either.
pub fn issue(dir: &TlsDir, cluster: &str, node: &NodeNames) -> Result<Vec<PathBuf>, TlsError> {
    for path in [dir.node_cert(node.id), dir.node_key(node.id)] {
        if path.exists() {
            return Err(TlsError::Issue(format!(
                "{} exists; delete it first to issue node {}'s certificate again",
                path.display(),
                node.id
            )));
        }
    }
    let ca_pem = std::fs::read_to_string(dir.ca_key()).map_err(|e| TlsError::Missing {
        path: dir.ca_key(),
        why: e.to_string(),
    })?;
    let ca_key = KeyPair::from_pem(&ca_pem).map_err(|e| TlsError::Invalid {
        path: dir.ca_key(),
        what: "CA key",
        why: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(cluster)?, ca_key);

    let mut names = vec![node_name(node.id), GATEWAY_NAME.to_owned()];
    for host in &node.hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    let mut params = CertificateParams::new(names).map_err(failed)?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Arbor node {} ({cluster})", node.id),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + NODE_VALIDITY;
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.signed_by(&key, &issuer).map_err(failed)?;
    write_file(&dir.node_key(node.id), key.serialize_pem().as_bytes(), true)?;
    write_file(&dir.node_cert(node.id), cert.pem().as_bytes(), false)?;
    // Signed by the CA on disk (not another of the same name)?
    NodeTls::load(dir, node.id)?;
    Ok(vec![dir.node_cert(node.id), dir.node_key(node.id)])
}

fn create_dir(dir: &TlsDir) -> Result<(), TlsError> {
    let failed = |e: std::io::Error| TlsError::Write {
        path: dir.path().to_owned(),
        why: e.to_string(),
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir.path()).map_err(failed)
}

/// Writes `bytes` to `path`, readable by the owner only when `secret` (keys).
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let failed = |e: std::io::Error| TlsError::Write {
        path: path.to_owned(),
        why: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}
