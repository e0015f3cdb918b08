//! A plain HTTP/1.1 GET to a node's HTTP port, over TLS with the cluster CA when the cluster
//! has it (what `curl --cacert tls/ca.pem https://...` does).

use std::net::SocketAddr;
use std::time::Duration;

use arbor_node::ClusterConfig;

use arbor_client::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code and body of `GET path`, or why there is none.
pub async fn get(addr: SocketAddr, path: &str, trust: &Trust) -> Result<(u16, String), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        match trust {
            Trust::Plain => {
                let mut s = tcp;
                s.write_all(request.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
            }
            Trust::Ca(connector) => {
                let mut s = connector
                    .connect(arbor_tls::gateway_server_name(), tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                s.write_all(request.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                // A server may close without a TLS close_notify once the body is sent.
                let _ = s.read_to_end(&mut raw).await;
            }
        }
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer in 10 s".to_string())??;
    let text = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:.200}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:.200}"))?;
    Ok((status, body.to_owned()))
}

/// cluster.toml text with an HTTP port (`http = ...`) for every node.
pub fn with_ports(text: String) -> String {
    text.lines()
        .map(|line| {
            if line.starts_with("gateway = ") {
                format!(
                    "{line}\nhttp = \"127.0.0.1:{}\"",
                    super::support::free_port()
                )
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Node `id`'s HTTP address.
pub fn addr(config: &ClusterConfig, id: u64) -> SocketAddr {
    config.nodes[id as usize - 1].http.expect("an http address")
}

/// Every node's `/metrics` page, one after the other.
pub async fn all_metrics(config: &ClusterConfig) -> String {
    let trust = super::support::trust(config);
    let mut pages = String::new();
    for node in &config.nodes {
        if let Some(at) = node.http
            && let Ok((200, page)) = get(at, "/metrics", &trust).await
        {
            pages.push_str(&page);
        }
    }
    pages
}

/// The value of the first sample whose line starts with `prefix` (name and labels).
pub fn sample(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
