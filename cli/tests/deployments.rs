//! Deployments on real 3-node clusters of `arbor` processes: placement, recovery from a
//! SIGKILLed or frozen node while a client keeps calling, generation fencing, pending reasons,
//! crash-looping actors, drain and rolling updates.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbor_node::Caller;
use arbor_proto::results::DeploymentReport;
use common::cluster::{Cluster, T};
use common::{NodeProc, arbor, arbor_as};

fn per_node(d: &DeploymentReport) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for r in d.replicas.iter().filter(|r| r.state == "running") {
        *out.entry(r.node.unwrap()).or_default() += 1;
    }
    out
}

const ECHO: &str = r#"
name = "echo"
kind = "echo"
replicas = 6
strategy = "spread"
idempotent = true
[resources]
cpu = "100m"
memory = "64MiB"
"#;

/// 6 echo replicas spread 2 per node; a node SIGKILLed, and its replicas run elsewhere while
/// a client's calls keep succeeding; the node restarted, and no replica runs twice; a node
/// frozen past node_timeout and thawed stops its old copies (generation fencing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_move_off_a_dead_node_and_never_run_twice() {
    let mut c = Cluster::start("deploy-kill", "kill-secret-padded-to-32-bytes-at-least").await;
    let out = c.deploy("echo.toml", ECHO);
    assert!(out.contains("deployment echo created"), "{out}");
    c.wait_for(
        "echo",
        "6 running, 2 per node",
        |_| {},
        |d| d.running == 6 && per_node(d) == BTreeMap::from([(1, 2), (2, 2), (3, 2)]),
    )
    .await;
    let json: serde_json::Value =
        serde_json::from_str(&c.arbor(&["deployments", "--json"])).unwrap();
    let d = &json["deployments"][0];
    assert_eq!(
        (d["name"].as_str(), d["desired"].as_u64()),
        (Some("echo"), Some(6))
    );
    assert_eq!(d["running"], 6);
    assert_eq!(d["pending_reason"], serde_json::Value::Null);
    assert_eq!(d["replicas"][0]["state"], "running");
    assert!(d["replicas"][0]["devices"].as_array().unwrap().is_empty());
    assert_eq!(c.arbor(&["call", "echo", "hello"]).trim(), "hello");

    // A client calls the deployment all along.
    let caller = Caller::connect(&c.config, &c.secret(), Duration::from_secs(3))
        .await
        .unwrap();
    // An echo may run twice (its deployment says `idempotent = true`), so a call whose
    // replica dies under it is tried on another.
    let router = caller
        .router("echo", Duration::from_secs(5))
        .await
        .idempotent(true);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let calls = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("call {i}").into_bytes();
                match router.call(payload.clone(), Duration::from_secs(1)).await {
                    Ok(reply) if reply == payload => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("call {i} failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    c.nodes[2].sigkill();
    let moved = c
        .wait_for(
            "echo",
            "6 running on nodes 1 and 2",
            |_| {},
            |d| d.running == 6 && per_node(d) == BTreeMap::from([(1, 3), (2, 3)]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    calls.await.unwrap();
    caller.stop().await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "replicas of the killed node running elsewhere {moved:?} after SIGKILL (node_timeout 3s, polling included); {ok} calls ok, {failed} failed"
    );
    assert_eq!(failed, 0, "calls must ride through the loss by retrying");
    assert!(ok > 20, "the client kept calling ({ok} calls)");
    // The issue's figure is 5 s; this bound only guards against a broken detector.
    assert!(moved < Duration::from_secs(15), "{moved:?}");

    // Node 3 comes back: it runs nothing, so no replica runs twice.
    c.nodes[2] = NodeProc::start(&c.path, 3, c.secret);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.group_size("echo").await, 6);

    // A frozen node keeps its replicas alive in memory; once marked down they are placed
    // elsewhere, and when it thaws it sees the newer generations and stops its copies.
    c.arbor(&["undeploy", "echo"]);
    c.deploy("echo.toml", ECHO);
    c.wait_for(
        "echo",
        "6 running, 2 per node",
        |_| {},
        |d| d.running == 6 && per_node(d) == BTreeMap::from([(1, 2), (2, 2), (3, 2)]),
    )
    .await;
    let pid = c.nodes[2].child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    c.wait_for(
        "echo",
        "replicas moved off the frozen node",
        |_| {},
        |d| d.running == 6 && !per_node(d).contains_key(&3),
    )
    .await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    // Once node 3 has caught up with the log its agent stops the old copies.
    let start = Instant::now();
    loop {
        let n = c.group_size("echo").await;
        if n == 6 {
            break;
        }
        assert!(start.elapsed() < T, "{n} copies of 6 replicas still run");
    }
    for node in std::mem::take(&mut c.nodes) {
        let (ok, log) = node.terminate();
        assert!(ok && !log.contains("panicked"), "{log}");
    }
}

/// Pending with a reason, crash-looping actors reported failed, drain, and a rolling update
/// that never has fewer than `desired - max_unavailable` replicas running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_failed_drain_and_rolling_update() {
    let c = Cluster::start("deploy-ops", "ops-secret-padded-to-32-bytes-at-least").await;
    c.deploy(
        "gpu.toml",
        "name = \"llm\"\nkind = \"echo\"\nreplicas = 1\n[resources]\ncpu = \"100m\"\ngpu = 1\n",
    );
    c.deploy(
        "bad.toml",
        "name = \"bad\"\nkind = \"echo\"\nreplicas = 1\n[config]\nfail_on_start = \"disk on fire\"\n",
    );
    c.wait_for(
        "llm",
        "a pending reason",
        |_| {},
        |d| d.pending_reason.is_some(),
    )
    .await;
    let llm = c.deployments().await.unwrap().remove("llm").unwrap();
    let reason = llm.pending_reason.unwrap();
    assert!(
        reason.contains("needs gpu=1") && reason.contains("no ready node has a free GPU"),
        "{reason}"
    );
    assert_eq!(llm.replicas[0].state, "pending");
    assert!(c.arbor(&["deployments"]).contains("pending: needs gpu=1"));

    // Restarted with backoff (200 ms doubling: about 6 s), then reported failed.
    c.wait_for(
        "bad",
        "the replica failed",
        |_| {},
        |d| d.replicas[0].state == "failed",
    )
    .await;
    let bad = c.deployments().await.unwrap().remove("bad").unwrap();
    let why = bad.replicas[0].reason.clone().unwrap();
    assert!(
        why.contains("disk on fire") && why.contains("failed 6 times"),
        "{why}"
    );
    c.arbor(&["undeploy", "bad"]);
    c.arbor(&["undeploy", "llm"]);

    // The shipped spin example, called through the CLI.
    let spin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/spin.toml"
    ))
    .unwrap();
    c.deploy("spin.toml", &spin);
    c.wait_for(
        "spin",
        "3 spin replicas, one per node",
        |_| {},
        |d| d.running == 3 && per_node(d).len() == 3,
    )
    .await;
    assert_eq!(
        c.arbor(&["call", "spin", r#"{"ms": 30}"#]).trim(),
        r#"{"spun_ms":30}"#
    );
    c.arbor(&["undeploy", "spin"]);

    // Slow-starting replicas make a rollout take long enough to watch.
    let echo = ECHO.replace(
        "[resources]",
        "max_unavailable = 1\nversion = \"1\"\n[config]\nstart_delay_ms = 300\n[resources]",
    );
    c.deploy("echo.toml", &echo);
    c.wait_for("echo", "6 running", |_| {}, |d| d.running == 6)
        .await;

    let out = c.arbor(&["node", "drain", "2"]);
    assert!(out.contains("node 2 draining"), "{out}");
    let mut lowest = u32::MAX;
    c.wait_for(
        "echo",
        "nothing left on node 2",
        |d| lowest = lowest.min(d.running),
        |d| d.running == 6 && per_node(d) == BTreeMap::from([(1, 3), (3, 3)]),
    )
    .await;
    assert!(
        lowest >= 5,
        "drain took {} replicas down at once",
        6 - lowest
    );
    c.arbor(&["node", "undrain", "2"]);

    let out = c.deploy(
        "echo.toml",
        &echo.replace("version = \"1\"", "version = \"2\""),
    );
    assert!(out.contains("updated"), "{out}");
    let (mut lowest, mut mixed) = (u32::MAX, false);
    c.wait_for(
        "echo",
        "every replica at revision 2",
        |d| {
            lowest = lowest.min(d.running);
            let revisions: std::collections::BTreeSet<_> =
                d.replicas.iter().map(|r| r.revision).collect();
            mixed |= revisions.len() > 1;
        },
        |d| d.running == 6 && d.replicas.iter().all(|r| r.revision == Some(d.revision)),
    )
    .await;
    assert!(mixed, "the rollout was never seen in progress");
    assert!(
        lowest >= 5,
        "the rollout took {} replicas down at once",
        6 - lowest
    );
    let again = c.deploy(
        "echo.toml",
        &echo.replace("version = \"1\"", "version = \"2\""),
    );
    assert!(again.contains("unchanged"), "{again}");

    // Bad input gets a clear error, and nothing is deployed.
    let path = c.path.with_file_name("typo.toml");
    std::fs::write(&path, "name = \"x\"\nkind = \"echoo\"\nreplicas = 1\n").unwrap();
    let out = arbor(
        &[
            "deploy",
            "-f",
            path.to_str().unwrap(),
            "--config",
            c.path.to_str().unwrap(),
        ],
        Some(c.secret),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown actor kind \"echoo\""),
        "{err}"
    );
    assert!(!c.deployments().await.unwrap().contains_key("x"));
}

/// The generation of every placed replica, by replica number.
fn generations(d: &DeploymentReport) -> BTreeMap<u32, u64> {
    d.replicas
        .iter()
        .filter_map(|r| Some((r.replica, r.generation?)))
        .collect()
}

/// Changing only `replicas` (by file or `arbor scale`) adds and removes replicas and restarts
/// none of the others; `arbor rollback` returns to the previous revision with a rolling
/// update; `--wait` follows a rollout to its end, and fails with the reason when a replica
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_place_rollback_and_wait() {
    let c = Cluster::start("deploy-scale", "scale-secret-padded-to-32-bytes-at-least").await;
    let file = |replicas: u32, version: &str| {
        format!(
            "name = \"echo\"\nkind = \"echo\"\nreplicas = {replicas}\nversion = \"{version}\"\n\
             [resources]\ncpu = \"100m\"\nmemory = \"64MiB\"\n[config]\nstart_delay_ms = 200\n"
        )
    };
    let path = c.path.with_file_name("echo.toml");
    let deploy_wait = |text: &str| {
        std::fs::write(&path, text).unwrap();
        c.arbor(&["deploy", "-f", path.to_str().unwrap(), "--wait"])
    };
    let out = deploy_wait(&file(3, "1"));
    assert!(
        out.contains("deployment echo created, revision 1")
            && out.contains("all 3 replicas run revision 1"),
        "{out}"
    );
    let three = c.deployments().await.unwrap().remove("echo").unwrap();
    assert_eq!(three.running, 3, "--wait returned before the rollout ended");
    let before = generations(&three);

    // 3 -> 5 by file: the 3 running replicas keep their generation.
    let out = deploy_wait(&file(5, "1"));
    assert!(
        out.contains("scaled (no replica restarted), revision 1")
            && out.contains("all 5 replicas run revision 1"),
        "{out}"
    );
    let five = c.deployments().await.unwrap().remove("echo").unwrap();
    assert_eq!(five.running, 5);
    let after = generations(&five);
    for (replica, generation) in &before {
        assert_eq!(after[replica], *generation, "replica {replica} restarted");
    }

    // 5 -> 2 by `arbor scale`: replicas 0 and 1 stay as they are.
    let out = c.arbor(&["scale", "echo", "2", "--wait"]);
    assert!(out.contains("all 2 replicas run revision 1"), "{out}");
    let two = c.deployments().await.unwrap().remove("echo").unwrap();
    assert_eq!(
        generations(&two),
        before.into_iter().filter(|(r, _)| *r < 2).collect()
    );

    // A new revision, then back to the first one.
    let out = deploy_wait(&file(2, "2"));
    assert!(
        out.contains("updated (rolling its replicas), revision 2")
            && out.contains("all 2 replicas run revision 2"),
        "{out}"
    );
    let out = c.arbor(&["rollback", "echo", "--wait"]);
    assert!(out.contains("all 2 replicas run revision 3"), "{out}");
    let back = c.deployments().await.unwrap().remove("echo").unwrap();
    assert_eq!((back.version.as_str(), back.revision), ("1", 3));
    assert!(back.replicas.iter().all(|r| r.revision == Some(3)));

    // A revision whose replicas cannot start: --wait exits non-zero with the reason.
    std::fs::write(
        &path,
        file(2, "3").replace("start_delay_ms = 200", "fail_on_start = \"disk on fire\""),
    )
    .unwrap();
    let out = arbor_as(
        &[
            "deploy",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
            "--config",
            c.path.to_str().unwrap(),
        ],
        None,
        Some(&c.token),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("rollout of echo failed")
            && err.contains("disk on fire"),
        "{err}"
    );
    // The rollout stopped at the failed replica: the other one still runs revision 3.
    let stuck = c.deployments().await.unwrap().remove("echo").unwrap();
    assert!(
        stuck
            .replicas
            .iter()
            .any(|r| r.state == "running" && r.revision == Some(3)),
        "{stuck:#?}"
    );

    // Refusals name what is wrong.
    for (args, says) in [
        (
            vec!["scale", "ghost", "2"],
            "deployment \"ghost\" does not exist",
        ),
        (
            vec!["rollback", "ghost"],
            "deployment \"ghost\" does not exist",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--config", c.path.to_str().unwrap()]);
        let out = arbor_as(&all, None, Some(&c.token));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// An autoscaled deployment grows with the requests in flight, within upscale_delay (plus
/// reporting and placement), falls back to min_replicas once the load stops and
/// downscale_delay has passed, and is never outside [min_replicas, max_replicas].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_follows_the_load_within_its_bounds() {
    use common::load::{Conn, spec};
    let c = Cluster::start("deploy-auto", "auto-secret-padded-to-32-bytes-at-least").await;
    let out = c.deploy(
        "auto.toml",
        "name = \"sleepy\"\nkind = \"spin\"\nidempotent = true\n\
         [resources]\ncpu = \"100m\"\nmemory = \"64MiB\"\n\
         [autoscaling]\nmin_replicas = 1\nmax_replicas = 3\ntarget_ongoing_requests = 2\n\
         upscale_delay = \"1s\"\ndownscale_delay = \"3s\"\n",
    );
    assert!(out.contains("deployment sleepy created"), "{out}");
    c.wait_for("sleepy", "1 running", |_| {}, |d| d.running == 1)
        .await;
    let first = generations(&c.deployments().await.unwrap()["sleepy"]);
    let out = arbor_as(
        &["scale", "sleepy", "2", "--config", c.path.to_str().unwrap()],
        None,
        Some(&c.token),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("autoscaled between 1 and 3"),
        "{err}"
    );

    // 6 requests in flight all along, each held 300 ms: 6 / 2 = 3 replicas wanted.
    let endpoint = common::support::endpoint(&c.config, 0);
    let mut conn = Conn::open(&endpoint, &c.token).await;
    let load = tokio::spawn(async move {
        conn.pipeline(120, 6, |_| {
            spec(serde_json::json!({
                "kind": "call",
                "deployment": "sleepy",
                "payload": "{\"ms\": 300, \"sleep\": true}"
            }))
        })
        .await
        .len()
    });
    let (mut seen, mut most_ongoing) = (std::collections::BTreeSet::new(), 0f64);
    let up = c
        .wait_for(
            "sleepy",
            "3 replicas under load",
            |d| {
                seen.insert(d.desired);
                let a = d.autoscaling.as_ref().unwrap();
                most_ongoing = most_ongoing.max(a.ongoing_requests);
            },
            |d| d.desired == 3 && d.running == 3,
        )
        .await;
    eprintln!("scaled 1 -> 3 in {up:?} under load (upscale_delay 1s)");
    assert!(most_ongoing >= 4.0, "the load seen was {most_ongoing}");
    assert_eq!(load.await.unwrap(), 120, "every call succeeded");

    let down = c
        .wait_for(
            "sleepy",
            "back to 1 replica",
            |d| {
                seen.insert(d.desired);
            },
            |d| d.desired == 1 && d.running == 1,
        )
        .await;
    eprintln!("scaled back to 1 in {down:?} after the load stopped (downscale_delay 3s)");
    // Up and down again, and replica 0 never restarted.
    let last = generations(&c.deployments().await.unwrap()["sleepy"]);
    assert_eq!(last, first, "the autoscaler restarted a replica");
    assert!(down >= Duration::from_secs(2), "{down:?}");
    assert!(seen.iter().all(|n| (1..=3).contains(n)), "{seen:?}");
    let logs: String = c
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(&n.log).unwrap())
        .collect();
    assert!(
        logs.contains("autoscaler: scaling up") && logs.contains("autoscaler: scaling down"),
        "the decisions are logged"
    );
}
