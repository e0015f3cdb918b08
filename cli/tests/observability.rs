//! The HTTP port of real `arbor` node processes: `/healthz`, `/readyz` going from 503 to 200
//! as a node joins its cluster, `/metrics` parsed by Prometheus' own Python parser, and the
//! dashboard driven in a headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, T};
use common::http::{addr as http_addr, get, with_ports as with_http};
use common::support::trust;
use common::{NodeProc, arbor_as, create_token};

/// Polls `GET path` until `want` holds; the last answer.
async fn until(
    addr: SocketAddr,
    path: &str,
    trust: &arbor_client::Trust,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let start = Instant::now();
    let mut last = Err(String::new());
    while start.elapsed() < T {
        last = get(addr, path, trust).await;
        if let Ok((code, body)) = &last
            && want(*code, body)
        {
            return (*code, body.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never saw {what} at {path}; last: {last:?}");
}

/// Metric families, by name, as `prometheus_client`'s text parser reads the page.
fn parse_with_prometheus(page: &str, dir: &Path) -> BTreeMap<String, (String, usize)> {
    let python = std::env::var("ARBOR_PYTHON").expect(
        "ARBOR_PYTHON is not set: run the tests through scripts/test.sh, or \
         export ARBOR_PYTHON=$(scripts/python-env.sh)",
    );
    let file = dir.join("metrics.txt");
    std::fs::write(&file, page).unwrap();
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        text = open(sys.argv[1]).read()\n\
        out = {f.name: [f.type, len(f.samples)] for f in text_string_to_metric_families(text)}\n\
        print(json.dumps(out))\n";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("cannot run python");
    assert!(
        out.status.success(),
        "the page does not parse as Prometheus text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: BTreeMap<String, (String, usize)> = serde_json::from_slice(&out.stdout).unwrap();
    families
}

/// `/healthz` answers as soon as the process serves; `/readyz` says why not (no leader, not
/// registered, not linked) until the node has joined, then 200; `/metrics` parses as
/// Prometheus text and holds the control plane, links, deployments, gateway, router and
/// process series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let text = with_http(common::support::cluster_toml("obs", 3, dir.path(), None));
    std::fs::write(&path, text).unwrap();
    let config = arbor_node::ClusterConfig::load(&path).unwrap();
    let trust = trust(&config);
    let secret = "obs-secret-padded-to-32-bytes-at-least";
    let token = create_token(&path, "admin");

    // Node 3 alone: it serves, but with no quorum it is not ready, and says why.
    let mut nodes = vec![NodeProc::start(&path, 3, secret)];
    let three = http_addr(&config, 3);
    let (code, body) = until(three, "/healthz", &trust, "healthz", |c, _| c == 200).await;
    assert!(body.contains("\"serving\""), "{code} {body}");
    let (_, body) = until(three, "/readyz", &trust, "a 503", |c, _| c == 503).await;
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["ready"], false, "{body}");
    let reasons = r["reasons"].to_string();
    assert!(reasons.contains("no Raft leader"), "{body}");

    // Its peers start: it joins, and becomes ready.
    nodes.push(NodeProc::start(&path, 1, secret));
    nodes.push(NodeProc::start(&path, 2, secret));
    let (_, body) = until(three, "/readyz", &trust, "a 200", |c, _| c == 200).await;
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["ready"].as_bool(), r["node"].as_u64()),
        (Some(true), Some(3))
    );

    // Work for the metrics to show: a deployment, calls through the gateway.
    let file = dir.path().join("echo.toml");
    std::fs::write(
        &file,
        "name = \"echo\"\nkind = \"echo\"\nreplicas = 3\n[resources]\ncpu = \"100m\"\nmemory = \"64MiB\"\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", path.to_str().unwrap()]);
        let out = arbor_as(&all, None, Some(&token));
        assert!(
            out.status.success(),
            "arbor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["deploy", "-f", file.to_str().unwrap(), "--wait"]);
    for i in 0..5 {
        assert_eq!(
            cli(&["call", "echo", &format!("hi {i}")]).trim(),
            format!("hi {i}")
        );
    }

    // A collection whose documents bring their vectors (its embedder never runs), a write and
    // a search, for the partition series.
    let embedder = dir.path().join("embedder.toml");
    std::fs::write(
        &embedder,
        "name = \"embedder\"\nkind = \"embedder\"\nreplicas = 1\n\
         constraints = [{ op = \"exists\", key = \"no-node-has-this-label\" }]\n",
    )
    .unwrap();
    cli(&["deploy", "-f", embedder.to_str().unwrap()]);
    let endpoint = common::support::endpoint(&config, 0);
    let mut conn = common::load::Conn::open(&endpoint, &token).await;
    conn.job(
        serde_json::json!({"kind": "create_collection", "name": "docs", "partitions": 1,
        "replicas": 2, "embedder": "embedder", "dimension": 4, "memory": "64MiB",
        "coordinators": 1}),
    )
    .await;
    let docs = serde_json::json!({"kind": "ingest", "collection": "docs", "documents": [
        {"id": "a", "text": "", "vector": [1.0, 0.0, 0.0, 0.0]},
        {"id": "b", "text": "", "vector": [0.0, 1.0, 0.0, 0.0]},
        {"id": "c", "text": "", "vector": [0.0, 0.0, 1.0, 0.0]}]});
    let start = Instant::now();
    while let Err(e) = conn.try_job(&docs).await {
        assert!(
            start.elapsed() < T,
            "the collection never took the ingest: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let query = serde_json::json!({"kind": "query", "collection": "docs",
        "vector": [1.0, 0.0, 0.0, 0.0], "k": 2});
    let answer = conn.job(query).await;
    assert_eq!(answer["results"][0]["doc_id"], "a", "{answer}");
    let mut pages = String::new();
    for id in 1..=3 {
        pages.push_str(
            &get(http_addr(&config, id), "/metrics", &trust)
                .await
                .unwrap()
                .1,
        );
    }
    for (prefix, what) in [
        ("arbor_partition_rows{partition=\"docs.p0\"} 3", "3 rows"),
        (
            "arbor_partition_replica_in_sync{partition=\"docs.p0\",replica=\"0\"} 1",
            "replica 0 in sync",
        ),
        (
            "arbor_partition_bytes{partition=\"docs.p0\",memory=\"host\"} ",
            "host bytes",
        ),
        (
            "arbor_partition_search_duration_seconds_count{partition=\"docs.p0\"} ",
            "searches",
        ),
    ] {
        assert!(
            pages.lines().any(|l| l.starts_with(prefix)),
            "no {what} ({prefix}) in\n{pages}"
        );
    }

    let one = http_addr(&config, 1);
    let (code, page) = get(one, "/metrics", &trust).await.unwrap();
    assert_eq!(code, 200, "{page}");
    let families = parse_with_prometheus(&page, dir.path());
    for (name, kind) in [
        ("arbor_raft_term", "gauge"),
        ("arbor_raft_commit_index", "gauge"),
        ("arbor_raft_applied_index", "gauge"),
        ("arbor_raft_leader_changes", "counter"),
        ("arbor_raft_proposal_duration_seconds", "histogram"),
        ("arbor_link_up", "gauge"),
        ("arbor_nodes", "gauge"),
        ("arbor_placements", "gauge"),
        ("arbor_deployment_replicas", "gauge"),
        ("arbor_deployment_desired_replicas", "gauge"),
        ("arbor_deployment_request_duration_seconds", "histogram"),
        ("arbor_gateway_connections", "gauge"),
        ("arbor_gateway_jobs", "counter"),
        ("arbor_gateway_job_duration_seconds", "histogram"),
        ("arbor_process_resident_memory_bytes", "gauge"),
        ("arbor_process_open_fds", "gauge"),
    ] {
        let found = families.get(name).map(|(k, _)| k.as_str());
        assert_eq!(found, Some(kind), "{name} in\n{page}");
    }
    // Every name follows the conventions.
    for name in families.keys() {
        assert!(name.starts_with("arbor_"), "{name}");
    }
    let line = |prefix: &str| {
        page.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{page}"))
            .to_owned()
    };
    assert!(
        line("arbor_deployment_replicas{deployment=\"echo\",state=\"running\"}").ends_with(" 3")
    );
    assert!(line("arbor_link_up{peer=\"2\"}").ends_with(" 1"));
    assert!(line("arbor_nodes{liveness=\"ready\"}").ends_with(" 3"));

    // A method or path that is not served gets a clear answer, and the node goes on.
    let (code, body) = get(one, "/nothing", &trust).await.unwrap();
    assert!(
        code == 404 && body.contains("try /metrics"),
        "{code} {body}"
    );
    let (code, _) = get(one, "/healthz", &trust).await.unwrap();
    assert_eq!(code, 200);

    // A node that is killed makes its peers' links report it down.
    nodes[0].sigkill();
    until(one, "/metrics", &trust, "node 3's link down", |_, page| {
        page.lines().any(|l| l == "arbor_link_up{peer=\"3\"} 0")
    })
    .await;
    for node in nodes.into_iter().skip(1) {
        let (ok, log) = node.terminate();
        assert!(ok && !log.contains("panicked"), "{log}");
    }
}

/// The Chromium to drive, installed by `scripts/chromium.sh` (through scripts/test.sh) when
/// missing; `None` where there is none.
fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("ARBOR_CHROMIUM")
        && !path.is_empty()
    {
        return Some(PathBuf::from(path));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = std::process::Command::new("which")
                .arg(name)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// The dashboard in a real headless Chromium: it asks for a token, keeps it out of the URL,
/// shows the 3 nodes up with the deployments, and shows a node as down once it is SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_a_node_going_down() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED: no Chromium here and scripts/chromium.sh could not install one \
             (apt-get install chromium needs root); the dashboard was not tested"
        );
        return;
    };
    let mut c = Cluster::start_with(
        "dashboard",
        "dashboard-secret-padded-to-32-bytes-at-least",
        with_http,
    )
    .await;
    c.deploy(
        "echo.toml",
        "name = \"echo\"\nkind = \"echo\"\nreplicas = 3\n[resources]\ncpu = \"100m\"\nmemory = \"64MiB\"\n",
    );
    c.deploy(
        "sleepy.toml",
        "name = \"sleepy\"\nkind = \"spin\"\n[resources]\ncpu = \"100m\"\nmemory = \"64MiB\"\n\
         [autoscaling]\nmin_replicas = 1\nmax_replicas = 3\n",
    );
    c.wait_for("echo", "3 running", |_| {}, |d| d.running == 3)
        .await;
    let reader = create_token(&c.path, "reader");
    let url = format!("https://{}/", http_addr(&c.config, 1));

    let mut browser = cdp::Browser::launch(&chromium).await;
    browser.navigate(&url).await;
    browser
        .until(
            "the sign-in form",
            "!document.getElementById('login').hidden",
        )
        .await;
    let sign_in = format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('login').requestSubmit(); true",
        serde_json::to_string(&reader).unwrap()
    );
    browser.eval(&sign_in).await;
    let rows = "JSON.stringify([...document.querySelectorAll('#nodes tbody tr')]\
                .map(r => [r.dataset.node, r.dataset.state]))";
    let up = r#"[["1","up"],["2","up"],["3","up"]]"#;
    browser
        .until("3 nodes up", &format!("{rows} === '{up}'"))
        .await;
    browser
        .until(
            "the deployments",
            "document.getElementById('deployments').textContent.includes('echo') && \
             document.getElementById('deployments').textContent.includes('sleepy')",
        )
        .await;
    let quoted = serde_json::to_string(&reader).unwrap();
    // Calls for the charts to show: jobs/s and latency percentiles from /metrics.
    let endpoint = common::support::endpoint(&c.config, 0);
    let mut conn = common::load::Conn::open(&endpoint, &c.token).await;
    let load = tokio::spawn(async move {
        conn.pipeline(1500, 2, |i| {
            common::load::spec(serde_json::json!(
                {"kind": "call", "deployment": "echo", "payload": format!("chart {i}")}
            ))
        })
        .await
        .len()
    });
    browser
        .until(
            "jobs/s and latency on the charts",
            "series.rps.some(v => v > 0) && series.p50.some(v => v != null)",
        )
        .await;
    assert_eq!(load.await.unwrap(), 1500);
    let href = browser.eval("location.href").await;
    assert!(
        !href.to_string().contains(&reader),
        "the token is in the URL: {href}"
    );
    let shown = browser
        .eval(&format!(
            "document.body.innerHTML.includes({quoted}) || \
             document.getElementById('token').value !== ''"
        ))
        .await;
    assert_eq!(
        shown,
        serde_json::Value::Bool(false),
        "the token is in the page"
    );

    c.nodes[2].sigkill();
    let down = r#"[["1","up"],["2","up"],["3","down"]]"#;
    let shown = Instant::now();
    browser
        .until("node 3 down", &format!("{rows} === '{down}'"))
        .await;
    eprintln!("node 3 shown down {:?} after SIGKILL", shown.elapsed());
    // The charts have had a few scrapes by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Ok(out) = std::env::var("ARBOR_DASHBOARD_SCREENSHOT") {
        browser.screenshot(Path::new(&out)).await;
    }
    browser.close().await;
    for node in std::mem::take(&mut c.nodes).into_iter().take(2) {
        let (ok, log) = node.terminate();
        assert!(ok && !log.contains("panicked"), "{log}");
    }
}

/// Just enough of the Chrome DevTools Protocol to drive one page: JSON messages over the
/// browser's WebSocket, one page target attached in flat mode.
mod cdp {
    use std::path::Path;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio_tungstenite::tungstenite::Message;

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    pub struct Browser {
        child: tokio::process::Child,
        socket: Socket,
        session: String,
        next: u64,
        _profile: tempfile::TempDir,
    }

    impl Browser {
        pub async fn launch(chromium: &Path) -> Browser {
            let profile = tempfile::tempdir().unwrap();
            let mut child = tokio::process::Command::new(chromium)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    // The cluster CA is not the browser's; an operator would add it.
                    "--ignore-certificate-errors",
                    "--remote-debugging-port=0",
                    "--window-size=1400,1000",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("cannot start chromium");
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let endpoint = tokio::time::timeout(Duration::from_secs(60), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        return url.trim().to_owned();
                    }
                }
                panic!("chromium exited without a DevTools endpoint");
            })
            .await
            .expect("chromium did not start in 60 s");
            // Keep reading its stderr so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
                .await
                .expect("cannot reach chromium's DevTools");
            let mut b = Browser {
                child,
                socket,
                session: String::new(),
                next: 0,
                _profile: profile,
            };
            let target = b
                .send(None, "Target.createTarget", json!({"url": "about:blank"}))
                .await;
            let target = target["targetId"].as_str().unwrap().to_owned();
            let attached = b
                .send(
                    None,
                    "Target.attachToTarget",
                    json!({"targetId": target, "flatten": true}),
                )
                .await;
            b.session = attached["sessionId"].as_str().unwrap().to_owned();
            b
        }

        async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
            self.next += 1;
            let id = self.next;
            let mut msg = json!({"id": id, "method": method, "params": params});
            if let Some(s) = session {
                msg["sessionId"] = Value::from(s);
            }
            self.socket
                .send(Message::text(msg.to_string()))
                .await
                .unwrap();
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                    .await
                    .unwrap_or_else(|_| panic!("{method}: no answer from chromium"))
                    .expect("chromium closed DevTools")
                    .unwrap();
                let Message::Text(text) = frame else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"].as_u64() == Some(id) {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
            }
        }

        pub async fn navigate(&mut self, url: &str) {
            let session = self.session.clone();
            self.send(Some(&session), "Page.navigate", json!({"url": url}))
                .await;
        }

        /// The value of a JavaScript expression in the page.
        pub async fn eval(&mut self, expression: &str) -> Value {
            let session = self.session.clone();
            let r = self
                .send(
                    Some(&session),
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                )
                .await;
            if let Some(e) = r.get("exceptionDetails") {
                panic!("{expression}: {e}");
            }
            r["result"]["value"].clone()
        }

        /// Polls `expression` until it is `true`.
        pub async fn until(&mut self, what: &str, expression: &str) {
            let start = Instant::now();
            loop {
                let session = self.session.clone();
                let r = self
                    .send(
                        Some(&session),
                        "Runtime.evaluate",
                        json!({"expression": expression, "returnByValue": true}),
                    )
                    .await;
                if r["result"]["value"] == Value::Bool(true) {
                    return;
                }
                if start.elapsed() > super::T {
                    let page = self.eval("document.body.innerText").await;
                    panic!("the dashboard never showed {what}; it shows:\n{page}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        pub async fn screenshot(&mut self, out: &Path) {
            use base64::Engine;
            let session = self.session.clone();
            let r = self
                .send(
                    Some(&session),
                    "Page.captureScreenshot",
                    json!({"format": "png", "captureBeyondViewport": true}),
                )
                .await;
            let png = base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap())
                .unwrap();
            std::fs::write(out, png).unwrap();
        }

        pub async fn close(mut self) {
            // Chromium may close the socket before it answers: no answer is awaited.
            let close = json!({"id": 0, "method": "Browser.close"}).to_string();
            let _ = self.socket.send(Message::text(close)).await;
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}
