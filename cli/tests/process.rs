//! `arbor` run as separate processes: nodes killed with SIGKILL are seen down and come back,
//! a wrong secret is refused and logged on both sides, `arbor status` answers or says why
//! not, and config errors end the process with a message and no panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{NodeProc, arbor, arbor_as, support};

/// An admin token for the cluster of `config`, made once. The commands run with it and
/// without the cluster secret: an operator's machine needs a token, never the secret.
fn token(config: &Path) -> String {
    let path = config.with_file_name("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return t;
    }
    let t = common::create_token(config, "admin");
    std::fs::write(&path, &t).unwrap();
    t
}

/// Each node's state as `arbor status --json` reports it, or None if no node answered.
fn states(config: &Path, _secret: &str) -> Option<Vec<(u64, String)>> {
    let out = arbor_as(
        &["status", "--config", config.to_str().unwrap(), "--json"],
        None,
        Some(&token(config)),
    );
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    let nodes = v["nodes"].as_array().expect("a nodes array");
    Some(
        nodes
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap(),
                    n["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
    )
}

/// Polls status until `want` holds; returns how long it took.
fn wait_until(
    config: &Path,
    secret: &str,
    what: &str,
    want: impl Fn(&[(u64, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(s) = states(config, secret) {
            if want(&s) {
                return start.elapsed();
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never saw {what}; last status: {last:?}");
}

fn state_of(s: &[(u64, String)], id: u64) -> &str {
    s.iter()
        .find(|(i, _)| *i == id)
        .map_or("missing", |(_, st)| st)
}

fn setup(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, support::cluster_toml(name, 3, dir.path(), None)).unwrap();
    (dir, path)
}

#[test]
fn a_killed_node_is_seen_down_and_back_up_after_restart() {
    let (_dir, config) = setup("procs");
    let secret = "process-secret-padded-to-32-bytes-at-least";
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|id| NodeProc::start(&config, id, secret))
        .collect();
    wait_until(&config, secret, "all nodes up", |s| {
        s.len() == 3 && s.iter().all(|(_, st)| st == "up")
    });
    // A node's data is its account's alone (the review found 0755 and 0644): the folder
    // 0700, the Raft log 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let data = config.with_file_name("node-1");
        assert_eq!(mode(&data), 0o700, "{}", data.display());
        assert_eq!(mode(&data.join("raft.redb")), 0o600);
    }

    nodes[2].sigkill();
    let down = wait_until(&config, secret, "node 3 down", |s| {
        state_of(s, 3) == "down" && state_of(s, 2) == "up"
    });
    nodes[2] = NodeProc::start(&config, 3, secret);
    let up = wait_until(&config, secret, "node 3 up again", |s| {
        s.iter().all(|(_, st)| st == "up")
    });
    // A frozen node keeps its sockets open: only missed heartbeats tell it is gone.
    let pid = nodes[2].child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let silent = wait_until(&config, secret, "frozen node 3 down", |s| {
        state_of(s, 3) == "down"
    });
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let thawed = wait_until(&config, secret, "node 3 up after SIGCONT", |s| {
        s.iter().all(|(_, st)| st == "up")
    });
    // The figures the issue names (down within 2 s, up within 2 s); measured, not asserted.
    eprintln!(
        "node 3 seen down {down:?} after SIGKILL, up {up:?} after restart; \
         down {silent:?} after SIGSTOP, up {thawed:?} after SIGCONT (status polling included)"
    );

    for node in nodes {
        let (ok, log) = node.terminate();
        assert!(ok, "a node must exit 0 on SIGTERM; log:\n{log}");
        assert!(log.contains("node stopped"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn a_wrong_secret_is_refused_and_both_sides_say_so() {
    let (_dir, config) = setup("wrong");
    let good = "right-secret-padded-to-32-bytes-at-least";
    let n1 = NodeProc::start(&config, 1, good);
    let n2 = NodeProc::start(&config, 2, good);
    let n3 = NodeProc::start(&config, 3, "wrong-secret-padded-to-32-bytes-at-least");
    wait_until(&config, good, "1 and 2 linked", |s| {
        state_of(s, 1) == "up" && state_of(s, 2) == "up"
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = states(&config, good).expect("the cluster answers");
    assert_eq!(state_of(&s, 2), "up", "{s:?}");
    assert_eq!(state_of(&s, 3), "down", "{s:?}");

    let (_, log3) = n3.terminate();
    let (_, log1) = n1.terminate();
    let (_, log2) = n2.terminate();
    for log in [&log1, &log2, &log3] {
        assert!(
            log.contains("refused") && log.contains("cluster secret"),
            "{log}"
        );
    }
}

#[test]
fn status_says_when_no_node_answers() {
    let (_dir, config) = setup("silent");
    let out = arbor_as(
        &["status", "--config", config.to_str().unwrap()],
        None,
        Some("arbor_00000000_0000"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no gateway answered"), "{err}");
    assert!(err.contains("wss://127.0.0.1:"), "{err}");
    assert!(err.contains("cluster.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn config_errors_exit_nonzero_with_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = support::cluster_toml("bad", 2, dir.path(), None)
        .replace("memory = \"1GiB\"", "memory = \"8GB\"");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let check = |out: Output, wants: &[&str]| {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        for w in wants {
            assert!(err.contains(w), "missing {w:?} in: {err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    };
    check(
        arbor(&["node", "--config", p, "--node", "1"], Some("s")),
        &["bad.toml", "8GiB"],
    );

    let good = support::cluster_toml("ok", 2, dir.path(), None);
    std::fs::write(&path, good).unwrap();
    check(
        arbor(&["node", "--config", p, "--node", "9"], Some("s")),
        &["bad.toml", "no node has id 9"],
    );
    check(
        arbor(&["node", "--config", p, "--node", "1"], None),
        &["no cluster secret", "ARBOR_CLUSTER_SECRET"],
    );
    check(
        arbor(&["node", "--config", p, "--node", "1"], Some("s")),
        &["ARBOR_CLUSTER_SECRET is 1 bytes; at least 32"],
    );
    check(
        arbor(
            &[
                "node",
                "--config",
                "/nonexistent/cluster.toml",
                "--node",
                "1",
            ],
            Some("s"),
        ),
        &["cannot read /nonexistent/cluster.toml"],
    );
}

/// `arbor cluster status --json` as a value, or None if nothing answered.
fn cluster_status(config: &Path, _secret: &str) -> Option<serde_json::Value> {
    let out = arbor_as(
        &[
            "cluster",
            "status",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ],
        None,
        Some(&token(config)),
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("cluster status --json prints JSON"))
}

fn wait_cluster(
    config: &Path,
    secret: &str,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(s) = cluster_status(config, secret) {
            if want(&s) {
                return s;
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never saw {what}; last cluster status: {last:?}");
}

/// `arbor cluster add-node|remove-node ID`, which must succeed.
fn change_members(config: &Path, _secret: &str, verb: &str, id: u64) {
    let id = id.to_string();
    let out = arbor_as(
        &["cluster", verb, &id, "--config", config.to_str().unwrap()],
        None,
        Some(&token(config)),
    );
    assert!(
        out.status.success(),
        "{verb} {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn voter_ids(s: &serde_json::Value) -> Vec<u64> {
    s["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect()
}

fn caught_up(s: &serde_json::Value) -> bool {
    let voters = s["voters"].as_array().unwrap();
    s["leader"].is_u64()
        && voters
            .iter()
            .all(|v| v["state"] == "up" && v["commit"] == v["applied"])
        && voters.windows(2).all(|w| w[0]["commit"] == w[1]["commit"])
}

#[test]
fn the_control_plane_fails_over_and_changes_members() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let text = support::cluster_toml("raft", 4, dir.path(), None).replacen(
        "[cluster]\n",
        "[cluster]\nvoters = [1, 2, 3]\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let secret = "raft-secret-padded-to-32-bytes-at-least";
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|id| NodeProc::start(&config, id, secret))
        .collect();
    let s = wait_cluster(
        &config,
        secret,
        "a leader and 3 caught-up voters",
        caught_up,
    );
    assert_eq!(voter_ids(&s), vec![1, 2, 3]);
    let leader = s["leader"].as_u64().unwrap();
    let term = s["term"].as_u64().unwrap();

    // The leader dies: the others elect a new one in a later term.
    nodes[leader as usize - 1].sigkill();
    let s = wait_cluster(&config, secret, "a new leader", |s| {
        s["leader"].as_u64().is_some_and(|l| l != leader) && s["term"].as_u64() > Some(term)
    });
    eprintln!("new leader {} in term {}", s["leader"], s["term"]);
    nodes[leader as usize - 1] = NodeProc::start(&config, leader, secret);
    wait_cluster(
        &config,
        secret,
        "the old leader back and caught up",
        caught_up,
    );

    // A fourth node joins as a learner and is promoted; then it is removed again.
    nodes.push(NodeProc::start(&config, 4, secret));
    change_members(&config, secret, "add-node", 4);
    wait_cluster(&config, secret, "node 4 a caught-up voter", |s| {
        voter_ids(s).contains(&4) && caught_up(s)
    });
    change_members(&config, secret, "remove-node", 4);
    wait_cluster(&config, secret, "node 4 removed", |s| {
        voter_ids(s) == vec![1, 2, 3]
    });

    let out = arbor_as(
        &[
            "cluster",
            "add-node",
            "9",
            "--config",
            config.to_str().unwrap(),
        ],
        None,
        Some(&token(&config)),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node 9 is not in"), "{err}");
    for node in nodes {
        let (ok, log) = node.terminate();
        assert!(!log.contains("panicked"), "{log}");
        assert!(ok, "{log}");
    }
}

#[test]
fn a_node_appended_to_cluster_toml_joins_instead_of_founding_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    // No `voters`: they default to every node in the file, node 4 included once appended.
    let four = support::cluster_toml("appended", 4, dir.path(), None);
    let three = &four[..four.rfind("\n[[nodes]]").unwrap()];
    std::fs::write(&config, three).unwrap();
    let secret = "appended-secret-padded-to-32-bytes-at-least";
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|id| NodeProc::start(&config, id, secret))
        .collect();
    wait_cluster(&config, secret, "3 caught-up voters", |s| {
        voter_ids(s) == vec![1, 2, 3] && caught_up(s)
    });
    // The operator appends node 4 and rolls the running nodes onto the new file.
    std::fs::write(&config, &four).unwrap();
    let old = std::mem::take(&mut nodes);
    for (node, id) in old.into_iter().zip(1..) {
        let (ok, log) = node.terminate();
        assert!(ok, "{log}");
        nodes.push(NodeProc::start(&config, id, secret));
    }
    wait_cluster(&config, secret, "3 caught-up voters again", |s| {
        voter_ids(s) == vec![1, 2, 3] && caught_up(s)
    });
    nodes.push(NodeProc::start(&config, 4, secret));
    change_members(&config, secret, "add-node", 4);
    wait_cluster(&config, secret, "node 4 a caught-up voter", |s| {
        voter_ids(s) == vec![1, 2, 3, 4] && caught_up(s)
    });
    let fourth = nodes.pop().unwrap();
    let (ok, log) = fourth.terminate();
    assert!(ok, "{log}");
    assert!(
        log.contains("a cluster of these voters already runs") && !log.contains("bootstrapped"),
        "node 4 founded a cluster of its own: {log}"
    );
    for node in nodes {
        let (ok, log) = node.terminate();
        assert!(!log.contains("panicked"), "{log}");
        assert!(ok, "{log}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, support::cluster_toml("json", 1, dir.path(), None)).unwrap();
    let node = NodeProc::start_with(
        &config,
        1,
        "json-secret-padded-to-32-bytes-at-least",
        &["--log-format", "json"],
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&node.log)
        .unwrap()
        .contains("node started")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the node never logged its start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, log) = node.terminate();
    assert!(ok, "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "node started")
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}
