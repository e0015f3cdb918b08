//! The WebSocket gateway end to end, against a real 3-node cluster of `arbor` processes and raw
//! WebSocket frames (so malformed input reaches the server exactly as sent): auth and each way
//! it fails, each class of bad input, jobs and their events, limits, cancel (on the running
//! node and through another one), and a job's record outliving the node that accepted it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::support::Endpoint;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

/// A raw connection to one gateway.
struct Ws {
    ws: WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl Ws {
    /// A WebSocket over TLS, verified against the cluster's CA, as any client would open it.
    async fn connect(at: &Endpoint) -> Ws {
        let addr = at.addr;
        let arbor_client::Trust::Ca(tls) = &at.trust else {
            panic!("the test cluster speaks TLS")
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tcp = tls
            .connect(arbor_tls::gateway_server_name(), tcp)
            .await
            .unwrap_or_else(|e| panic!("no TLS with the gateway at {addr}: {e}"));
        let (ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/"), tcp)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the gateway at {addr}: {e}"));
        Ws { ws }
    }

    async fn authed(at: &Endpoint, token: &str) -> Ws {
        let mut ws = Ws::connect(at).await;
        ws.send(json!({"type": "auth", "v": 1, "token": token}))
            .await;
        let m = ws.recv().await;
        assert_eq!(m["type"], "authenticated", "{m}");
        ws
    }

    async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next message; panics on close or after `WAIT`.
    async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no message from the gateway in time");
            match frame {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(c))) => panic!("closed by the gateway: {c:?}"),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Messages until one of `type` (for `job`, when given) comes; returns it and those before.
    async fn until(&mut self, kind: &str, job: Option<&str>) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = self.recv().await;
            if m["type"] == kind && job.is_none_or(|j| m["job"] == j) {
                return (m, before);
            }
            before.push(m);
        }
    }

    /// Waits for the gateway to close the connection; its close code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the gateway did not close the connection");
            match frame {
                Some(Ok(Message::Close(Some(c)))) => {
                    return (u16::from(c.code), c.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (0, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return (0, e.to_string()),
            }
        }
    }

    /// Submits a job; its `accepted` message.
    async fn submit(&mut self, job: Value) -> String {
        self.send(json!({"type": "submit", "ref": "r", "job": job}))
            .await;
        let (m, _) = self.until_any(&["accepted", "error"]).await;
        assert_eq!(m["type"], "accepted", "{m}");
        m["job"].as_str().unwrap().to_owned()
    }

    async fn until_any(&mut self, kinds: &[&str]) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = self.recv().await;
            if kinds.iter().any(|k| m["type"] == *k) {
                return (m, before);
            }
            before.push(m);
        }
    }

    /// Submits and waits for the job's last event; the final result (if any) and that event.
    async fn run(&mut self, job: Value) -> (Option<Value>, Value) {
        let id = self.submit(job).await;
        let mut result = None;
        loop {
            let m = self.recv().await;
            if m["job"] != id.as_str() {
                continue;
            }
            if m["type"] == "result" && m["final"] == true {
                result = Some(m["data"].clone());
            }
            if m["type"] == "event"
                && ["succeeded", "failed", "cancelled"].contains(&m["state"].as_str().unwrap())
            {
                return (result, m);
            }
        }
    }

    /// Sends `v` and expects an `error` with `code` (and `field`, when given).
    async fn refused(&mut self, v: Value, code: &str, field: Option<&str>) -> Value {
        self.send(v.clone()).await;
        let (m, _) = self.until("error", None).await;
        assert_eq!(m["code"], code, "{v} → {m}");
        if let Some(f) = field {
            assert_eq!(m["field"], f, "{v} → {m}");
        }
        assert!(!m["message"].as_str().unwrap().is_empty());
        m
    }
}

fn token(c: &Cluster, role: &str) -> String {
    c.arbor(&["token", "create", "--role", role])
        .trim()
        .to_owned()
}

fn gateway(c: &Cluster, id: usize) -> Endpoint {
    common::support::endpoint(&c.config, id - 1)
}

/// A job's record as node `id` tells it.
async fn job_status(c: &Cluster, id: usize, token: &str, job: &str) -> Value {
    let mut ws = Ws::authed(&gateway(c, id), token).await;
    ws.send(json!({"type": "status", "job": job})).await;
    let (m, _) = ws.until_any(&["job", "error"]).await;
    assert_eq!(m["type"], "job", "{m}");
    m["job"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_end_to_end() {
    let mut c = Cluster::start_with("gw", "gateway-secret-padded-to-32-bytes-at-least", |t| {
        t.replacen(
            "\n[[nodes]]",
            "\n[gateway]\nmax_message_bytes = 65536\nmax_jobs_per_connection = 3\n\
             max_failed_auths = 3\nauth_timeout = \"2s\"\nmax_connections_per_address = 32\n\n\
             [[nodes]]",
            1,
        )
    })
    .await;
    let admin = token(&c, "admin");
    let user = token(&c, "user");
    let reader = token(&c, "reader");
    let g1 = gateway(&c, 1);

    // ---- Plaintext is refused: the gateway speaks only TLS, and a client that trusts another
    // CA does not get through either.
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/", g1.addr)).await;
    assert!(plain.is_err(), "a plaintext WebSocket was accepted");
    let other = tempfile::tempdir().unwrap();
    common::support::certificates("other", 1, other.path());
    let stranger = arbor_client::Trust::ca(&other.path().join("ca.pem")).unwrap();
    let refused =
        arbor_client::GatewayClient::connect(&[g1.addr], &stranger, &admin, Duration::from_secs(3))
            .await
            .err()
            .expect("a client of another CA was let in");
    assert!(
        refused.to_string().contains("TLS handshake failed"),
        "{refused}"
    );

    // ---- Before auth, a large frame is refused unparsed (the review's 3.8 MB ping).
    let mut ws = Ws::connect(&g1).await;
    ws.send_text(format!(
        "{{\"type\":\"ping\",\"x\":\"{}\"}}",
        "0".repeat(10_000)
    ))
    .await;
    let (code, why) = ws.closed().await;
    assert_eq!(code, 1009, "{why}");
    assert!(why.contains("before auth"), "{why}");

    // ---- Auth and each way it fails.
    let mut ws = Ws::connect(&g1).await;
    ws.refused(
        json!({"type": "submit", "job": {"kind": "status"}}),
        "not_authenticated",
        None,
    )
    .await;
    let unknown = format!("arbor_00000000_{}", "0".repeat(64));
    ws.refused(
        json!({"type": "auth", "v": 1, "token": unknown}),
        "auth_failed",
        Some("token"),
    )
    .await;
    ws.refused(
        json!({"type": "auth", "v": 1, "token": "letmein"}),
        "auth_failed",
        Some("token"),
    )
    .await;
    assert_eq!(
        ws.closed().await.0,
        1008,
        "the third failure closes the connection"
    );

    let mut ws = Ws::connect(&g1).await;
    ws.refused(
        json!({"type": "auth", "v": 2, "token": admin}),
        "unsupported_version",
        Some("v"),
    )
    .await;
    assert_eq!(ws.closed().await.0, 1008);

    let mut ws = Ws::connect(&g1).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(
        code, 1008,
        "silent connections are closed after auth_timeout"
    );
    assert!(reason.contains("auth"), "{reason}");

    let mut ws = Ws::authed(&g1, &reader).await;
    ws.refused(
        json!({"type": "auth", "v": 1, "token": reader}),
        "already_authenticated",
        None,
    )
    .await;
    ws.refused(
        json!({"type": "submit", "job": {"kind": "undeploy", "name": "x"}}),
        "forbidden",
        Some("job.kind"),
    )
    .await;
    ws.refused(
        json!({"type": "submit", "job": {"kind": "query", "collection": "c", "text": "t"}}),
        "forbidden",
        None,
    )
    .await;
    // A reader may not force writes into the replicated job records.
    ws.refused(
        json!({"type": "submit", "record": true, "job": {"kind": "status"}}),
        "forbidden",
        Some("record"),
    )
    .await;
    // Jobs have owners: a user's job, its record and its result are not a reader's to see
    // (answered as unknown, and left out of listings), and an admin sees them.
    let users_job = {
        let mut mine = Ws::authed(&g1, &user).await;
        mine.send(json!({"type": "submit", "record": true, "job": {"kind": "status"}}))
            .await;
        let id = mine.until("accepted", None).await.0["job"]
            .as_str()
            .unwrap()
            .to_owned();
        mine.until("event", Some(&id)).await;
        id
    };
    ws.refused(
        json!({"type": "status", "job": users_job}),
        "not_found",
        None,
    )
    .await;
    ws.refused(
        json!({"type": "subscribe", "job": users_job}),
        "not_found",
        None,
    )
    .await;
    ws.send(json!({"type": "status", "limit": 100})).await;
    let listed = ws.until("jobs", None).await.0;
    assert!(
        !listed.to_string().contains(&users_job),
        "a reader listed a user's job: {listed}"
    );
    let mut boss = Ws::authed(&g1, &admin).await;
    boss.send(json!({"type": "status", "job": users_job})).await;
    let (seen, _) = boss.until_any(&["job", "error"]).await;
    assert_eq!(seen["type"], "job", "{seen}");
    let (status, _) = ws.run(json!({"kind": "status"})).await;
    let status = status.unwrap();
    assert_eq!(status["node"], 1);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    // The cluster's own jobs: a reader sees the nodes and the control plane, and may not
    // change either.
    for change in [
        json!({"kind": "drain", "node": 2}),
        json!({"kind": "undrain", "node": 2}),
        json!({"kind": "add_node", "node": 2}),
        json!({"kind": "remove_node", "node": 2}),
    ] {
        ws.refused(
            json!({"type": "submit", "job": change}),
            "forbidden",
            Some("job.kind"),
        )
        .await;
    }
    let (membership, _) = ws.run(json!({"kind": "membership"})).await;
    let membership = membership.unwrap();
    assert_eq!(membership["answered_by"], 1, "{membership}");
    assert_eq!(
        membership["nodes"].as_array().unwrap().len(),
        3,
        "{membership}"
    );
    let (control, _) = ws.run(json!({"kind": "cluster_status"})).await;
    let control = control.unwrap();
    assert!(control["leader"].is_u64(), "{control}");
    assert_eq!(control["voters"].as_array().unwrap().len(), 3, "{control}");

    // A revoked token stops working on open connections too.
    let mut revoked = Ws::authed(&g1, &user).await;
    let id = user.split('_').nth(1).unwrap().to_owned();
    c.arbor(&["token", "revoke", &id]);
    let start = Instant::now();
    loop {
        revoked.send(json!({"type": "ping"})).await;
        let m = revoked.recv().await;
        if m["type"] == "error" {
            assert_eq!(m["code"], "auth_failed", "{m}");
            break;
        }
        assert!(start.elapsed() < WAIT, "the revocation was never picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(revoked.closed().await.0, 1008);
    let mut ws = Ws::connect(&gateway(&c, 2)).await;
    ws.refused(
        json!({"type": "auth", "v": 1, "token": user}),
        "auth_failed",
        None,
    )
    .await;

    // ---- Each class of bad input gets an error naming it; the connection stays usable.
    let mut ws = Ws::authed(&g1, &admin).await;
    ws.send_text("{not json".into()).await;
    assert_eq!(ws.until("error", None).await.0["code"], "malformed_json");
    ws.refused(json!([1, 2]), "not_an_object", None).await;
    ws.refused(json!({"type": "launch"}), "unknown_type", Some("type"))
        .await;
    ws.refused(json!({"v": 1}), "missing_field", Some("type"))
        .await;
    ws.refused(json!({"type": "cancel"}), "missing_field", Some("job"))
        .await;
    ws.refused(
        json!({"type": "cancel", "job": 7}),
        "invalid_field",
        Some("job"),
    )
    .await;
    ws.refused(json!({"type": "ping", "colour": 1}), "unknown_field", None)
        .await;
    ws.refused(
        json!({"type": "submit", "job": {"kind": "fly"}}),
        "unknown_type",
        Some("job.kind"),
    )
    .await;
    let m = ws
        .refused(
            json!({"type": "submit", "ref": "q1", "job": {"kind": "query", "collection": "c", "text": "t", "k": "five"}}),
            "invalid_field",
            Some("job.k"),
        )
        .await;
    assert_eq!(m["ref"], "q1", "errors carry the submit's ref");
    ws.refused(
        json!({"type": "submit", "job": {"kind": "query", "collection": "c", "text": "t", "k": 0}}),
        "invalid_job",
        Some("job.k"),
    )
    .await;
    ws.refused(
        json!({"type": "submit", "job": {"kind": "query", "collection": "none", "text": "t"}}),
        "not_found",
        Some("job.collection"),
    )
    .await;
    ws.send(json!({"type": "ping", "nonce": 1, "pad": "x".repeat(70_000)}))
        .await;
    let m = ws.until("error", None).await.0;
    assert_eq!(m["code"], "message_too_large", "{m}");
    assert!(m["message"].as_str().unwrap().contains("65536"), "{m}");
    ws.send(json!({"type": "ping", "nonce": 2})).await;
    assert_eq!(ws.until("pong", None).await.0["nonce"], 2, "still usable");
    ws.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.closed().await.0,
        1003,
        "binary frames close the connection"
    );
    let mut ws = Ws::authed(&g1, &admin).await;
    // The gateway stops reading at the frame's header; a client still writing the rest may
    // find the connection reset under it (TLS records make that likelier), and then it cannot
    // read the close frame either. Either way the connection is closed, and when the write
    // went through, the close says why.
    let sent = ws.ws.send(Message::text("x".repeat(200_000))).await;
    let (code, why) = ws.closed().await;
    if sent.is_ok() && code != 0 {
        assert_eq!(
            code, 1009,
            "over the hard limit closes the connection: {why}"
        );
    } else {
        assert!(code == 1009 || code == 0, "{code}: {why}");
    }

    // ---- Jobs: a deploy (recorded) and calls through it, from any node.
    let mut ws = Ws::authed(&g1, &admin).await;
    let (result, end) = ws
        .run(json!({"kind": "deploy", "deployment": {
            "name": "spin", "kind": "spin", "replicas": 2, "version": "1"
        }}))
        .await;
    assert_eq!(end["state"], "succeeded", "{end}");
    let result = result.unwrap();
    assert_eq!(
        (result["name"].as_str(), result["change"].as_str()),
        (Some("spin"), Some("created"))
    );
    let deploy_job = end["job"].as_str().unwrap().to_owned();
    let record = job_status(&c, 2, &admin, &deploy_job).await;
    assert_eq!(
        record["state"], "succeeded",
        "recorded jobs show on every node: {record}"
    );
    assert_eq!(record["node"], 1);
    assert_eq!(record["kind"], "deploy");

    // A collection's embedder must be an embedder (when it is deployed already).
    let (_, end) = ws
        .run(
            json!({"kind": "create_collection", "name": "spun", "partitions": 1,
                    "replicas": 1, "embedder": "spin"}),
        )
        .await;
    assert_eq!(end["state"], "failed", "{end}");
    assert!(
        end["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not an embedder"),
        "{end}"
    );

    let mut on3 = Ws::authed(&gateway(&c, 3), &admin).await;
    on3.send(json!({"type": "subscribe", "job": deploy_job}))
        .await;
    let (m, before) = on3.until("event", Some(&deploy_job)).await;
    assert_eq!(m["state"], "succeeded");
    assert!(before.iter().any(|m| m["type"] == "result"), "{before:?}");

    let start = Instant::now();
    loop {
        let (result, end) = ws
            .run(json!({"kind": "call", "deployment": "spin", "payload": "{\"ms\": 1}"}))
            .await;
        if end["state"] == "succeeded" {
            assert!(result.unwrap()["reply"].as_str().unwrap().contains("spun"));
            break;
        }
        assert!(start.elapsed() < WAIT, "spin never answered: {end}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A running job followed from another node through its record (the record index beside
    // node 3's Raft loop): it is seen (queued and) running, then its result and its end arrive.
    ws.send(json!({"type": "submit", "ref": "slow", "record": true,
                   "job": {"kind": "call", "deployment": "spin", "payload": "{\"ms\": 1500}"}}))
        .await;
    let (m, _) = ws.until_any(&["accepted", "error"]).await;
    let slow = m["job"].as_str().expect("accepted").to_owned();
    on3.send(json!({"type": "subscribe", "job": slow})).await;
    let mut states = Vec::new();
    let mut result_before_end = false;
    loop {
        let m = on3.recv().await;
        if m["job"] != slow.as_str() {
            continue;
        }
        if m["type"] == "result" {
            result_before_end = m["data"]["reply"].as_str().is_some();
        }
        if m["type"] == "event" {
            states.push(m["state"].as_str().unwrap_or_default().to_owned());
            if !["queued", "running"].contains(&m["state"].as_str().unwrap_or_default()) {
                break;
            }
        }
    }
    states.retain(|s| s != "queued");
    assert_eq!(states, ["running", "succeeded"], "followed from node 3");
    assert!(result_before_end, "the result comes before the end");
    // The listing on node 3 holds it, from the index.
    on3.send(json!({"type": "status"})).await;
    let jobs = on3.until("jobs", None).await.0;
    let listed = jobs["jobs"].as_array().unwrap();
    let mine = listed.iter().find(|j| j["id"] == slow.as_str());
    assert_eq!(
        mine.map(|j| j["state"].clone()),
        Some(json!("succeeded")),
        "{jobs}"
    );
    assert!(listed.iter().all(|j| j.get("result").is_none()), "{jobs}");
    let newest_first = listed
        .windows(2)
        .all(|w| w[0]["submitted_ms"].as_u64() >= w[1]["submitted_ms"].as_u64());
    assert!(newest_first, "{jobs}");

    // One connection follows at most 256 jobs at once (the review's 50,000 subscriptions on
    // one connection fanned a 3-event job out to 150,000 messages).
    let long = ws
        .submit(json!({"kind": "call", "deployment": "spin", "payload": "{\"ms\": 4000}"}))
        .await;
    let mut follower = Ws::authed(&g1, &admin).await;
    for _ in 0..256 {
        follower
            .send(json!({"type": "subscribe", "job": long}))
            .await;
    }
    follower
        .send(json!({"type": "subscribe", "job": long}))
        .await;
    let (refused, _) = follower.until("error", None).await;
    assert_eq!(refused["code"], "overloaded", "{refused}");
    drop(follower);
    // Cancelled, so that it does not count against the in-flight limits tested below.
    ws.send(json!({"type": "cancel", "job": long})).await;
    loop {
        let (m, _) = ws.until("event", Some(&long)).await;
        if !["queued", "running"].contains(&m["state"].as_str().unwrap_or_default()) {
            break;
        }
    }

    // Revoking a token ends its running jobs and closes its connections at once, idle ones
    // too (the review's revoked token still streamed its job's result 6 s later).
    let doomed = token(&c, "user");
    let mut idle = Ws::authed(&g1, &doomed).await;
    let mut busy = Ws::authed(&g1, &doomed).await;
    let long_job = busy
        .submit(json!({"kind": "call", "deployment": "spin", "payload": "{\"ms\": 50000}"}))
        .await;
    c.arbor(&["token", "revoke", doomed.split('_').nth(1).unwrap()]);
    assert_eq!(
        idle.closed().await.0,
        1008,
        "the idle connection stays open"
    );
    assert_eq!(
        busy.closed().await.0,
        1008,
        "the busy connection stays open"
    );
    let start = Instant::now();
    loop {
        ws.send(json!({"type": "status", "job": long_job})).await;
        let (m, _) = ws.until_any(&["job", "error"]).await;
        if m["job"]["state"] == "cancelled" {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the revoked token's job goes on: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    ws.send(json!({"type": "status"})).await;
    let jobs = ws.until("jobs", None).await.0;
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == deploy_job.as_str()),
        "{jobs}"
    );

    // ---- Limits: in-flight jobs per connection.
    for _ in 0..3 {
        ws.submit(json!({"kind": "call", "deployment": "spin", "payload": "{\"ms\": 3000}"}))
            .await;
    }
    ws.refused(
        json!({"type": "submit", "job": {"kind": "call", "deployment": "spin", "payload": "1"}}),
        "overloaded",
        None,
    )
    .await;

    // ---- Cancel, on the node that runs the job and through another one.
    let mut runner = Ws::authed(&g1, &admin).await;
    let spin = json!({"type": "submit", "record": true, "job": {"kind": "call", "deployment": "spin", "payload": "{\"ms\": 50000}"}});
    runner.send(spin.clone()).await;
    let job = runner.until("accepted", None).await.0["job"]
        .as_str()
        .unwrap()
        .to_owned();
    runner.send(json!({"type": "cancel", "job": job})).await;
    let (m, _) = runner.until("event", Some(&job)).await;
    let (m2, _) = if m["state"] == "running" {
        runner.until("event", Some(&job)).await
    } else {
        (m, vec![])
    };
    assert_eq!(m2["state"], "cancelled", "{m2}");
    let start = Instant::now();
    while job_status(&c, 3, &admin, &job).await["state"] != "cancelled" {
        assert!(
            start.elapsed() < WAIT,
            "the cancel never reached the record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    runner
        .refused(json!({"type": "cancel", "job": job}), "job_finished", None)
        .await;
    runner
        .refused(json!({"type": "cancel", "job": "jnope"}), "not_found", None)
        .await;

    runner.send(spin.clone()).await;
    let job = runner.until("accepted", None).await.0["job"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other = Ws::authed(&gateway(&c, 2), &admin).await;
    other.send(json!({"type": "cancel", "job": job})).await;
    assert_eq!(
        other.until("event", Some(&job)).await.0["state"],
        "cancelled"
    );
    let start = Instant::now();
    loop {
        let (m, _) = runner.until("event", Some(&job)).await;
        if m["state"] == "cancelled" {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the runner never stopped the job: {m}"
        );
    }

    // ---- A job's record outlives the node that accepted it.
    let (_, done) = {
        let mut ws = Ws::authed(&g1, &admin).await;
        ws.send(json!({"type": "submit", "record": true, "job": {"kind": "status"}}))
            .await;
        let id = ws.until("accepted", None).await.0["job"]
            .as_str()
            .unwrap()
            .to_owned();
        let (m, _) = ws.until_any(&["event"]).await;
        let m = if m["state"] == "running" {
            ws.until("event", Some(&id)).await.0
        } else {
            m
        };
        (id, m)
    };
    assert_eq!(done["state"], "succeeded");
    let finished_job = done["job"].as_str().unwrap().to_owned();
    runner.send(spin).await;
    let running_job = runner.until("accepted", None).await.0["job"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes[0].sigkill();
    let record = job_status(&c, 2, &admin, &finished_job).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert!(
        record["result"]["nodes"].is_array(),
        "the result is recorded: {record}"
    );
    let start = Instant::now();
    let record = loop {
        let r = job_status(&c, 3, &admin, &running_job).await;
        if r["state"] == "failed" {
            break r;
        }
        assert_eq!(r["state"], "running", "{r}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never marked failed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("node 1 went down"),
        "{record}"
    );

    // The client fails over: node 1 comes first in cluster.toml and is dead.
    let shown: Value = serde_json::from_str(&c.arbor(&["job", &finished_job, "--json"])).unwrap();
    assert_eq!(shown["state"], "succeeded", "{shown}");
    assert_eq!(shown["node"], 1);

    // One address holds at most max_connections_per_address connections (32 here); more are
    // closed at once, unread (the review's idle sockets locked real clients out).
    let g2 = gateway(&c, 2);
    let mut held = Vec::new();
    let mut closed_at_once = 0;
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(g2.addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut tcp, &mut byte);
        // Well inside auth_timeout (2 s), after which the node drops idle ones by itself.
        match tokio::time::timeout(Duration::from_millis(20), read).await {
            Ok(Ok(0) | Err(_)) => closed_at_once += 1,
            _ => held.push(tcp),
        }
    }
    assert!(
        closed_at_once >= 8,
        "only {closed_at_once} of 40 closed ({} held) at {}",
        held.len(),
        g2.addr
    );
    assert!(held.len() <= 32, "{} held", held.len());
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = Ws::authed(&g2, &admin).await;
    ws.send(json!({"type": "ping", "nonce": 9})).await;
    assert_eq!(ws.until("pong", None).await.0["nonce"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_told_to_come_back_later() {
    let c = Cluster::start_with(
        "gw-conns",
        "gateway-conns-secret-padded-to-32-bytes-at-least",
        |t| {
            t.replacen(
                "\n[[nodes]]",
                "\n[gateway]\nmax_connections = 2\nmax_queued_bytes = 65536\n\n[[nodes]]",
                1,
            )
        },
    )
    .await;
    let token = token(&c, "reader");
    let g1 = gateway(&c, 1);
    let first = Ws::authed(&g1, &token).await;
    let _second = Ws::authed(&g1, &token).await;
    let mut third = Ws::connect(&g1).await;
    let (code, reason) = third.closed().await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("max_connections"), "{reason}");
    // Another node has room of its own.
    let _elsewhere = Ws::authed(&gateway(&c, 2), &token).await;

    // Once one closes, a new connection is served.
    drop(first);
    let start = Instant::now();
    loop {
        let mut ws = Ws::connect(&g1).await;
        // May fail when the gateway has already closed it: the answer below says so.
        let auth = json!({"type": "auth", "v": 1, "token": token}).to_string();
        let _ = ws.ws.send(Message::text(auth)).await;
        match tokio::time::timeout(WAIT, ws.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert!(t.as_str().contains("authenticated"), "{t}");
                break;
            }
            other => assert!(
                start.elapsed() < WAIT,
                "the closed connection never freed its place: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(_second);
    // The node frees their places once it has seen them close.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A client that keeps asking and never reads is disconnected once its answers waiting
    // to be sent pass max_queued_bytes (the review's flood of unread status answers grew a
    // node by 176 MB), and the node goes on serving others.
    let mut flood = Ws::authed(&g1, &token).await;
    let mut sent = 0u64;
    let cut_off = loop {
        let ping = json!({"type": "ping", "nonce": sent}).to_string();
        if flood.ws.send(Message::text(ping)).await.is_err() {
            break true;
        }
        sent += 1;
        if sent == 2_000_000 {
            break false;
        }
    };
    assert!(
        cut_off,
        "{sent} pings went unread and the connection stayed open"
    );
    drop(flood);
    // Its place is freed once the node has closed it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut other = Ws::authed(&g1, &token).await;
    other.send(json!({"type": "ping", "nonce": 7})).await;
    assert_eq!(other.until("pong", None).await.0["nonce"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_get_a_small_budget_of_places_and_bytes() {
    let c = Cluster::start_with(
        "gw-preauth",
        "gateway-preauth-secret-padded-to-32-bytes-at-least",
        |t| {
            t.replacen(
                "\n[[nodes]]",
                "\n[gateway]\nmax_unauthenticated = 3\n\n[[nodes]]",
                1,
            )
        },
    )
    .await;
    let token = token(&c, "reader");
    let g1 = gateway(&c, 1);
    let mut client = Ws::authed(&g1, &token).await;

    // Three idle sockets take every place for unauthenticated connections: a fourth is
    // closed at once, unread, while the authenticated client is served as before.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(g1.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(g1.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut fourth, &mut byte);
    let read = tokio::time::timeout(Duration::from_secs(1), read).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a fourth unauthenticated socket was held: {read:?}"
    );
    client.send(json!({"type": "ping", "nonce": 1})).await;
    assert_eq!(client.until("pong", None).await.0["nonce"], 1);

    // Their places come back when they go.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Ws::authed(&g1, &token).await;
    again.send(json!({"type": "ping", "nonce": 2})).await;
    assert_eq!(again.until("pong", None).await.0["nonce"], 2);

    // Before auth a client may send 64 KiB in all: a 100 KiB frame ends the connection
    // before the node buffers it (the review's 3.8 MB pre-auth frame cost 137 MB).
    let mut big = Ws::connect(&g1).await;
    let frame = json!({"type": "ping", "x": "0".repeat(100 * 1024)}).to_string();
    let _ = big.ws.send(Message::text(frame)).await;
    let (code, why) = big.closed().await;
    assert_ne!(code, 1000, "{why}");
    // ...and a client that authenticates first may send frames as large as the limit: this
    // one is read whole and answered (its extra field is refused by name).
    let large = json!({"type": "ping", "nonce": 3, "x": "0".repeat(100 * 1024)});
    again.send(large).await;
    let (answer, _) = again.until_any(&["pong", "error"]).await;
    assert_eq!(answer["field"], "x", "{answer}");
    again.send(json!({"type": "ping", "nonce": 4})).await;
    assert_eq!(again.until("pong", None).await.0["nonce"], 4);
}

/// What a cell of the authorization matrix expects: an answer (the request was taken), or a
/// refusal with this code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    Taken,
    Refused(&'static str),
}
use Cell::{Refused, Taken};

/// Every role × every job kind and message × its own and another token's job, against a real
/// cluster, with the answer each cell must get written out. Arguments are ones that either fail
/// when run (an absent collection, node 9) or at validation, so no cell changes the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix() {
    let c = Cluster::start("gw-matrix", "matrix-secret-padded-to-32-bytes-at-least").await;
    let g1 = gateway(&c, 1);
    let roles = ["reader", "user", "admin"];
    let tokens: Vec<String> = roles.iter().map(|r| token(&c, r)).collect();

    // Each job kind, and what a reader, a user and an admin get when submitting it.
    const F: Cell = Refused("forbidden");
    let kinds: [(Value, [Cell; 3]); 20] = [
        (json!({"kind": "status"}), [Taken, Taken, Taken]),
        (json!({"kind": "membership"}), [Taken, Taken, Taken]),
        (json!({"kind": "cluster_status"}), [Taken, Taken, Taken]),
        (json!({"kind": "deployments"}), [Taken, Taken, Taken]),
        (json!({"kind": "collections"}), [Taken, Taken, Taken]),
        (
            json!({"kind": "ingest", "collection": "absent", "documents": [{"id": "a", "text": "t"}]}),
            [F, Taken, Taken],
        ),
        (
            json!({"kind": "query", "collection": "absent", "text": "t"}),
            [F, Taken, Taken],
        ),
        (
            json!({"kind": "rag", "collection": "absent", "question": "q"}),
            [F, Taken, Taken],
        ),
        (json!({"kind": "embed", "texts": ["t"]}), [F, Taken, Taken]),
        (
            json!({"kind": "generate", "prompt": "p"}),
            [F, Taken, Taken],
        ),
        (
            json!({"kind": "call", "deployment": "absent", "payload": "x"}),
            [F, Taken, Taken],
        ),
        (
            json!({"kind": "deploy", "deployment": {"name": "m", "kind": "nope", "replicas": 1}}),
            [F, F, Taken],
        ),
        (json!({"kind": "undeploy", "name": "absent"}), [F, F, Taken]),
        (
            json!({"kind": "create_collection", "name": "m", "partitions": 0, "replicas": 1, "embedder": "e"}),
            [F, F, Refused("invalid_job")],
        ),
        (
            json!({"kind": "delete_collection", "name": "absent"}),
            [F, F, Taken],
        ),
        (
            json!({"kind": "promote_stale", "collection": "absent", "partition": 0, "replica": 0}),
            [F, F, Taken],
        ),
        (json!({"kind": "add_node", "node": 9}), [F, F, Taken]),
        (json!({"kind": "remove_node", "node": 9}), [F, F, Taken]),
        (json!({"kind": "drain", "node": 9}), [F, F, Taken]),
        (json!({"kind": "undrain", "node": 9}), [F, F, Taken]),
    ];
    let mut conns = Vec::new();
    for token in &tokens {
        conns.push(Ws::authed(&g1, token).await);
    }
    let mut wrong = Vec::new();
    for (n, (job, expected)) in kinds.iter().enumerate() {
        for (r, ws) in conns.iter_mut().enumerate() {
            let reference = format!("k{n}");
            ws.send(json!({"type": "submit", "ref": reference, "job": job}))
                .await;
            let got = answer_to(ws, &reference).await;
            if got != expected[r] {
                wrong.push(format!(
                    "{} submits {job}: {got:?}, expected {:?}",
                    roles[r], expected[r]
                ));
            }
        }
    }

    // The other messages, and jobs of one's own and of another token. Each role's own job is
    // a finished `status` job; "another's" is the admin's for the reader and the user, the
    // user's for the admin. Each cell gets a fresh connection of its token, so that nothing
    // but the answer to its one message arrives on it.
    let mut own = Vec::new();
    for token in &tokens {
        let mut ws = Ws::authed(&g1, token).await;
        let id = ws.submit(json!({"kind": "status"})).await;
        let (m, _) = ws.until("event", Some(&id)).await;
        let m = if m["state"] == "running" {
            ws.until("event", Some(&id)).await.0
        } else {
            m
        };
        assert_eq!(m["state"], "succeeded", "{m}");
        own.push(id);
    }
    let others = [own[2].clone(), own[2].clone(), own[1].clone()];
    let messages: [(&str, [Cell; 3]); 8] = [
        ("ping", [Taken, Taken, Taken]),
        ("auth again", [Refused("already_authenticated"); 3]),
        ("status listing", [Taken, Taken, Taken]),
        ("status own", [Taken, Taken, Taken]),
        (
            "status other's",
            [Refused("not_found"), Refused("not_found"), Taken],
        ),
        ("subscribe own", [Taken, Taken, Taken]),
        (
            "subscribe other's",
            [Refused("not_found"), Refused("not_found"), Taken],
        ),
        (
            "cancel other's",
            [Refused("forbidden"), Refused("forbidden"), Taken],
        ),
    ];
    for (what, expected) in messages {
        for r in 0..roles.len() {
            let msg = match what {
                "ping" => json!({"type": "ping", "nonce": 1}),
                "auth again" => json!({"type": "auth", "v": 1, "token": tokens[r]}),
                "status listing" => json!({"type": "status"}),
                "status own" => json!({"type": "status", "job": own[r]}),
                "status other's" => json!({"type": "status", "job": others[r]}),
                "subscribe own" => json!({"type": "subscribe", "job": own[r]}),
                "subscribe other's" => json!({"type": "subscribe", "job": others[r]}),
                _ => json!({"type": "cancel", "job": others[r]}),
            };
            let mut ws = Ws::authed(&g1, &tokens[r]).await;
            ws.send(msg).await;
            let m = ws.recv().await;
            let got = match m["type"].as_str() {
                Some("error") => Refused(match m["code"].as_str().unwrap() {
                    "already_authenticated" => "already_authenticated",
                    "not_found" => "not_found",
                    "forbidden" => "forbidden",
                    // A finished job cannot be cancelled: being told so is the request taken.
                    "job_finished" => "job_finished",
                    other => panic!("unexpected refusal {other}: {m}"),
                }),
                _ => Taken,
            };
            let got = if got == Refused("job_finished") {
                Taken
            } else {
                got
            };
            if got != expected[r] {
                wrong.push(format!(
                    "{} sends {what}: {got:?} ({m}), expected {:?}",
                    roles[r], expected[r]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells with another answer:\n{}",
        wrong.join("\n")
    );
}

/// The answer to the submit with `reference`: `accepted`, or the `error` that refused it.
async fn answer_to(ws: &mut Ws, reference: &str) -> Cell {
    loop {
        let m = ws.recv().await;
        if m["ref"] != reference {
            continue;
        }
        match m["type"].as_str() {
            Some("accepted") => return Taken,
            Some("error") => {
                return Refused(match m["code"].as_str().unwrap() {
                    "forbidden" => "forbidden",
                    "invalid_job" => "invalid_job",
                    other => panic!("unexpected refusal {other}: {m}"),
                });
            }
            _ => continue,
        }
    }
}
