//! The Python client example (`examples/python/arbor_client.py`) against a real 1-node
//! cluster: `status` as text and as JSON, a refused token, and a job that fails after it was
//! accepted. No models are needed.
//!
//! The interpreter is `$ARBOR_PYTHON` (scripts/test.sh sets it from scripts/python-env.sh),
//! else `python3` when it can import `websockets`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{NodeProc, support};
use serde_json::Value;

const SECRET: &str = "python-client-test-secret-padded-to-32-bytes-at-least";
const WAIT: Duration = Duration::from_secs(30);

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/arbor_client.py")
}

/// The Python that runs the client: `$ARBOR_PYTHON`, else `python3` if it has `websockets`.
fn python() -> String {
    if let Some(p) = std::env::var("ARBOR_PYTHON").ok().filter(|p| !p.is_empty()) {
        return p;
    }
    let has_websockets = Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_websockets,
        "no Python with the `websockets` package for the Python client test: run \
         `export ARBOR_PYTHON=$(scripts/python-env.sh)` first (or run the tests with \
         scripts/test.sh, which does that)"
    );
    "python3".into()
}

/// Runs the client with `args` after `--url URL --ca CA`; its output.
fn client(python: &str, url: &str, ca: &Path, args: &[&str]) -> Output {
    Command::new(python)
        .arg(client_script())
        .args(["--url", url])
        .arg("--ca")
        .arg(ca)
        .args(args)
        .env_remove("ARBOR_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (is ARBOR_PYTHON right?)"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn python_client_against_a_node() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(
        &path,
        support::cluster_toml("py-client", 1, dir.path(), None),
    )
    .unwrap();
    let config = arbor_node::ClusterConfig::load(&path).unwrap();
    let url = format!("wss://{}/", config.nodes[0].gateway);
    let ca = config.gateway_ca().expect("the test cluster speaks TLS");

    let token = common::create_token(&path, "admin");

    let node = NodeProc::start(&path, 1, SECRET);

    // Until the node's gateway answers and the node sees itself up.
    let start = Instant::now();
    let status = loop {
        let out = client(&python, &url, &ca, &["--token", &token, "status"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && stdout.contains("nodes: 1 up of 1") {
            break stdout;
        }
        assert!(
            start.elapsed() < WAIT,
            "the Python client never got a status with 1 node up; last run: {}\nnode log:\n{}",
            text(&out),
            std::fs::read_to_string(&node.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains("node 1 answered"), "{status}");
    assert!(status.contains("  node 1: up"), "{status}");

    // The same as JSON: the job's result data.
    let out = client(&python, &url, &ca, &["--token", &token, "--json", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    let data: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&out)));
    assert_eq!(data["node"], 1, "{data}");
    assert_eq!(data["nodes"][0]["id"], 1, "{data}");
    assert_eq!(data["nodes"][0]["state"], "up", "{data}");

    // A wrong token, well-formed or not: refused with auth_failed, exit 1.
    let wrong = format!("arbor_{}_{}", &token[6..14], "0".repeat(64));
    for bad in [wrong.as_str(), "not-a-token"] {
        let out = client(&python, &url, &ca, &["--token", bad, "status"]);
        assert_eq!(out.status.code(), Some(1), "token {bad:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: auth_failed"),
            "token {bad:?}: {}",
            text(&out)
        );
    }

    // The token and the CA from the environment, and a job refused by the gateway: its code,
    // exit 1.
    let out = Command::new(&python)
        .arg(client_script())
        .args(["--url", &url, "query", "nope", "some text", "--k", "0"])
        .env("ARBOR_TOKEN", &token)
        .env("ARBOR_CA", &ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: invalid_job (field job.k)"),
        "{}",
        text(&out)
    );

    // No gateway there: exit 2 with a message that says so.
    drop(node);
    let out = client(&python, &url, &ca, &["--token", &token, "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out)
    );
}
