//! The node's HTTP port (`nodes[].http` in cluster.toml): what operators' tools expect of a
//! server.
//!
//! | path | what | auth |
//! |---|---|---|
//! | `/metrics` | Prometheus text ([`metrics`]) | none: scrapers rarely carry tokens; bind the port where only they reach it |
//! | `/healthz` | 200 while the process serves | none |
//! | `/readyz` | 200 when ready, 503 with the reasons ([`health`]) | none |
//! | `/` | the dashboard ([`dashboard`]) | the page asks for a token, which it sends only to the gateway |
//!
//! HTTP/1.1 through hyper, behind the same TLS as the gateway when the cluster has TLS (the
//! node's certificate, no client certificate: browsers and scrapers verify the node against
//! the cluster CA). Connections are capped and a slow client's headers time out, so the port
//! cannot be used to tie the node up.

pub mod dashboard;
pub mod health;
pub mod metrics;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use arbor_scheduler::RaftHandle;

use crate::config::NodeId;
use crate::link::supervisor::SupervisorMsg;

/// Most HTTP connections open at once.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for the control plane or the links before answering without.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the HTTP port serves from.
pub struct HttpArgs {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub raft: RaftHandle,
    pub supervisor: ractor::ActorRef<SupervisorMsg>,
    /// Every node of cluster.toml.
    pub peers: BTreeSet<NodeId>,
    /// Where this node's gateway listens (the dashboard's jobs go there).
    pub gateway: SocketAddr,
    pub tls: Option<arbor_tls::TlsAcceptor>,
    /// The process's recorder of events.
    pub metrics: PrometheusHandle,
}

/// How often the recorder's histograms are drained when nobody scrapes (their samples
/// queue until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// A running HTTP port. Dropping it does not stop it: call [`Http::shutdown`].
pub struct Http {
    addr: SocketAddr,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Http {
    /// Listens on `args.addr`.
    pub async fn start(args: HttpArgs) -> std::io::Result<Http> {
        let listener = TcpListener::bind(args.addr).await?;
        let addr = listener.local_addr()?;
        let recorder = args.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP);
            loop {
                every.tick().await;
                recorder.run_upkeep();
            }
        });
        let serve = tokio::spawn(serve(listener, Arc::new(args)));
        Ok(Http {
            addr,
            tasks: [serve, upkeep],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(&self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

async fn serve(listener: TcpListener, args: Arc<HttpArgs>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "http: {MAX_CONNECTIONS} connections open; refused one");
            continue;
        };
        let args = args.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = args.tls.clone();
            let service = hyper::service::service_fn(move |req| {
                let args = args.clone();
                async move { Ok::<_, Infallible>(route(&args, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = match &tls {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => http.serve_connection(TokioIo::new(stream), service).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "http: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "http: connection ended: {e}");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    reply(status, "application/json", body)
}

async fn route(args: &HttpArgs, req: Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": format!("{} is not served here; use GET", req.method())}),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => json(
            StatusCode::OK,
            &serde_json::json!({"status": "serving", "node": args.node}),
        ),
        "/readyz" => {
            let r = readiness(args).await;
            let code = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, &r)
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(args).await,
        ),
        "/" | "/index.html" => dashboard::page(args),
        other => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({
                "error": format!("nothing at {other:.100}; try /metrics, /healthz, /readyz or /")
            }),
        ),
    }
}

/// The peers this node has a link with.
async fn linked(args: &HttpArgs) -> BTreeSet<NodeId> {
    let report = ractor::call_t!(
        args.supervisor,
        SupervisorMsg::Report,
        READ_TIMEOUT.as_millis() as u64
    );
    match report {
        Ok(report) => report
            .nodes
            .iter()
            .filter(|n| n.id != args.node && n.state == arbor_proto::cluster::PeerState::Up)
            .map(|n| n.id)
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

async fn status(args: &HttpArgs) -> Option<arbor_scheduler::node::NodeStatus> {
    tokio::time::timeout(READ_TIMEOUT, args.raft.status())
        .await
        .ok()?
        .ok()
}

async fn readiness(args: &HttpArgs) -> health::Readiness {
    let (status, linked) = tokio::join!(status(args), linked(args));
    let me = args.node;
    let local = {
        let (status, linked) = (status.clone(), linked.clone());
        args.raft
            .read_local(move |s| health::readiness(me, status.as_ref(), Some(s), &linked))
    };
    match tokio::time::timeout(READ_TIMEOUT, local).await {
        Ok(Ok(r)) => r,
        _ => health::readiness(me, status.as_ref(), None, &linked),
    }
}

async fn scrape(args: &HttpArgs) -> String {
    let (status, linked) = tokio::join!(status(args), linked(args));
    let in_flight = arbor_actors::load::book().in_flight();
    // Counted on the Raft loop, rendered here.
    let cluster = tokio::time::timeout(
        READ_TIMEOUT,
        args.raft.read_local(metrics::ClusterFigures::of),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let state = metrics::render_state(&metrics::Observed {
        node: args.node,
        status: status.as_ref(),
        cluster: cluster.as_ref(),
        linked: &linked,
        peers: &args.peers,
        in_flight: &in_flight,
    });
    args.metrics.run_upkeep();
    let mut page = args.metrics.render();
    if !page.is_empty() && !page.ends_with('\n') {
        page.push('\n');
    }
    page.push_str(&state);
    page
}
