//! What the process tests share: `arbor` node processes and one-shot commands.

#![allow(dead_code)] // each test file uses part of it

pub mod chaos;
pub mod cluster;
pub mod http;
pub mod load;
pub mod proxy;
#[path = "../../../tests/support.rs"]
pub mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ARBOR: &str = env!("CARGO_BIN_EXE_arbor");

/// A node process, killed when dropped so a failing test leaves nothing behind.
pub struct NodeProc {
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProc {
    pub fn start(config: &Path, id: u64, secret: &str) -> NodeProc {
        Self::start_with(config, id, secret, &[])
    }

    pub fn start_with(config: &Path, id: u64, secret: &str, extra: &[&str]) -> NodeProc {
        let log = config.with_file_name(format!("node-{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        Self::spawn(config, id, secret, extra, file, log)
    }

    /// Starts a node whose log goes to `log`, appended to (a restarted node keeps the earlier
    /// run's lines).
    pub fn start_logging(config: &Path, id: u64, secret: &str, log: &Path) -> NodeProc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(config, id, secret, &[], file, log.to_path_buf())
    }

    fn spawn(
        config: &Path,
        id: u64,
        secret: &str,
        extra: &[&str],
        log_file: std::fs::File,
        log: std::path::PathBuf,
    ) -> NodeProc {
        let child = Command::new(ARBOR)
            .args(extra)
            .args(["node", "--config"])
            .arg(config)
            .args(["--node", &id.to_string()])
            .env("ARBOR_CLUSTER_SECRET", secret)
            .env(
                "RUST_LOG",
                std::env::var("ARBOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("cannot start arbor");
        NodeProc { child, log }
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and the log.
    pub fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let ok = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.success();
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        (ok, std::fs::read_to_string(&self.log).unwrap())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks `got` against the embedding sentence-transformers made of `text` with
/// paraphrase-MiniLM-L3-v2 (the kernels' fixture, scripts/embedding-reference.py): the same
/// direction, and the same length, since that model does not normalize.
pub fn assert_paraphrase_reference(text: &str, got: &[f64]) {
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../../../kernels/tests/fixtures/embeddings-paraphrase-MiniLM-L3-v2.json"
    ))
    .unwrap();
    let case = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == text)
        .unwrap_or_else(|| panic!("{text:?} is not in the fixture"));
    let want: Vec<f64> = serde_json::from_value(case["embedding"].clone()).unwrap();
    assert_eq!(got.len(), want.len());
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let dot: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
    let cos = dot / (norm(got) * norm(&want));
    assert!(
        cos >= 0.999,
        "{text:?}: cosine {cos} with sentence-transformers"
    );
    assert!(
        (norm(got) - norm(&want)).abs() < 1e-2 * norm(&want),
        "{text:?}: norm {} against {}",
        norm(got),
        norm(&want)
    );
}

pub fn arbor(args: &[&str], secret: Option<&str>) -> Output {
    arbor_as(args, secret, None)
}

/// [`arbor`] with a gateway token in `ARBOR_TOKEN` (the commands that go through the gateway
/// need one).
pub fn arbor_as(args: &[&str], secret: Option<&str>, token: Option<&str>) -> Output {
    let mut cmd = Command::new(ARBOR);
    cmd.args(args)
        .env_remove("ARBOR_CLUSTER_SECRET")
        .env_remove("ARBOR_TOKEN");
    if let Some(s) = secret {
        cmd.env("ARBOR_CLUSTER_SECRET", s);
    }
    if let Some(t) = token {
        cmd.env("ARBOR_TOKEN", t);
    }
    cmd.output().expect("cannot run arbor")
}

/// `arbor token create --role ROLE` for the cluster of `config`: the token it printed.
pub fn create_token(config: &Path, role: &str) -> String {
    let out = arbor(
        &[
            "token",
            "create",
            "--role",
            role,
            "--config",
            config.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "arbor token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
