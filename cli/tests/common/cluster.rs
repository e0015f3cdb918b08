//! A 3-node cluster of `arbor` processes, driven through the CLI (and an in-process client
//! where a test calls deployments).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arbor_actors::replica::deployment_group;
use arbor_node::Caller;
use arbor_node::{ClusterConfig, Secret};
use arbor_proto::results::DeploymentReport;

use super::{NodeProc, arbor_as};

pub const T: Duration = Duration::from_secs(30);

pub struct Cluster {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub config: ClusterConfig,
    pub secret: &'static str,
    /// An admin token of the gateway, for the commands that go through it.
    pub token: String,
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Starts 3 node processes and waits until the control plane answers.
    pub async fn start(name: &str, secret: &'static str) -> Cluster {
        Self::start_with(name, secret, |t| t).await
    }

    /// Like [`Cluster::start`], with the cluster.toml text changed by `edit` first.
    pub async fn start_with(
        name: &str,
        secret: &'static str,
        edit: impl Fn(String) -> String,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        let text = edit(super::support::cluster_toml(name, 3, dir.path(), None));
        std::fs::write(&path, text).unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        let token = super::create_token(&path, "admin");
        let nodes = (1..=3)
            .map(|id| NodeProc::start(&path, id, secret))
            .collect();
        let c = Cluster {
            _dir: dir,
            path,
            config,
            secret,
            token,
            nodes,
        };
        let start = Instant::now();
        while c.deployments().await.is_none() {
            assert!(start.elapsed() < T, "the cluster never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c
    }

    pub fn secret(&self) -> Secret {
        Secret::new(self.secret).unwrap()
    }

    /// Runs `arbor ARGS --config <this cluster>`; panics with its stderr if it fails.
    pub fn arbor(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.path.to_str().unwrap()]);
        // Only a token: the CLI never needs the cluster secret.
        let out = arbor_as(&all, None, Some(&self.token));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "arbor {args:?} failed: {stderr}");
        stdout
    }

    pub fn deploy(&self, file: &str, text: &str) -> String {
        let path = self.path.with_file_name(file);
        std::fs::write(&path, text).unwrap();
        self.arbor(&["deploy", "-f", path.to_str().unwrap()])
    }

    /// `arbor deployments --json`, or `None` if no node answered. Run as its own process:
    /// ractor_cluster numbers remote actors per client node, and a second client node in
    /// this process would clash with the caller's in the process-global groups.
    pub async fn deployments(&self) -> Option<BTreeMap<String, DeploymentReport>> {
        let config = self.path.to_str().unwrap().to_owned();
        let token = self.token.clone();
        let out = tokio::task::spawn_blocking(move || {
            arbor_as(
                &["deployments", "--json", "--config", &config],
                None,
                Some(&token),
            )
        })
        .await
        .unwrap();
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let list: Vec<DeploymentReport> = serde_json::from_value(v["deployments"].clone()).ok()?;
        Some(list.into_iter().map(|d| (d.name.clone(), d)).collect())
    }

    /// Polls `arbor deployments` until `want` holds for `name`; calls `each` on every answer.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        mut each: impl FnMut(&DeploymentReport),
        want: impl Fn(&DeploymentReport) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < T {
            if let Some(d) = self.deployments().await.and_then(|mut d| d.remove(name)) {
                each(&d);
                if want(&d) {
                    return start.elapsed();
                }
                last = Some(d);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never saw {what}; last: {last:#?}");
    }

    /// How many live replicas of `deployment` a freshly linked client finds in its group.
    pub async fn group_size(&self, deployment: &str) -> usize {
        let caller = Caller::connect(&self.config, &self.secret(), Duration::from_secs(3))
            .await
            .unwrap();
        // Group memberships arrive just after each session is ready.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let scope = caller.scope().to_owned();
        let n = ractor::pg::get_scoped_members(&scope, &deployment_group(deployment)).len();
        caller.stop().await;
        n
    }
}
