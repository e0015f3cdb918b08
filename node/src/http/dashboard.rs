//! The dashboard at `/`: one page, served from the binary (`dashboard.html`, plain HTML, CSS
//! and JavaScript: nothing to build).
//!
//! The page is a gateway client like any other: it asks for a token (reader or above), keeps
//! it in the tab's `sessionStorage` (never in a URL, a cookie or a log line), and runs the
//! read-only jobs `status`, `membership`, `cluster_status`, `deployments` and `collections`,
//! and the job list, over the gateway's WebSocket every few seconds. Its charts come from
//! this node's `/metrics` (same origin, no token): jobs finished per second, job latency
//! percentiles, model tokens per second.

use hyper::StatusCode;
use hyper::header::HeaderValue;

use super::{HttpArgs, Reply, reply};

const PAGE: &str = include_str!("dashboard.html");

/// The page, told where this node's gateway listens (its host is the one the browser used).
pub fn page(args: &HttpArgs) -> Reply {
    let scheme = if args.tls.is_some() { "wss" } else { "ws" };
    let html = PAGE
        .replace("{{GATEWAY_SCHEME}}", scheme)
        .replace("{{GATEWAY_PORT}}", &args.gateway.port().to_string())
        .replace("{{NODE}}", &args.node.to_string());
    let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", html);
    let headers = r.headers_mut();
    // Only this page's own script and style, and connections to this host (the gateway).
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:; img-src 'self' data:; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}
