//! `arbor bench local SCENARIO... --nodes N --out DIR`: a cluster of N `arbor node` processes
//! on this machine, set up as a user's would be (mutual TLS from its own CA, a random secret, a
//! tokens file with an admin token), the scenarios run against it through its gateway, then
//! the nodes stopped. The cluster lives in `DIR/cluster` (its logs stay there; its data is
//! removed unless `--keep`).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use arbor_node::ClusterConfig;
use arbor_node::auth::{Role, TokenFile};
use arbor_proto::gateway::JobSpec;
use tokio::time::Instant;

use super::run_job;
use crate::flags::GatewayArgs;

/// A running local cluster. Its processes are killed if it is dropped without `stop`.
pub struct Local {
    pub dir: PathBuf,
    pub gateway: GatewayArgs,
    /// Node `i + 1`'s process.
    nodes: Vec<tokio::process::Child>,
}

/// `count` distinct ports nobody listens on now. The listeners are held until all are taken:
/// the OS may hand a just-closed port out again, and two nodes given one port would leave
/// the cluster one node short.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("no free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// cluster.toml for `n` nodes on loopback, each offered `cpu` and `memory`.
fn cluster_toml(n: u64, cpu_millicores: u64, memory_mib: u64) -> anyhow::Result<String> {
    let mut t = String::from(
        "# Made by `arbor bench local`.\n[cluster]\nname = \"bench-local\"\n\
         secret_file = \"cluster.secret\"\n\n[tls]\ndir = \"tls\"\n\n\
         [gateway]\ntokens_file = \"tokens.toml\"\nmax_jobs_per_token = 4096\n",
    );
    let ports = free_ports(4 * n as usize)?;
    for (id, p) in (1..=n).zip(ports.chunks(4)) {
        let _ = write!(
            t,
            "\n[[nodes]]\nid = {id}\nactors = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\n\
             gateway = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\ndata_dir = \"data/node-{id}\"\n\
             [nodes.resources]\ncpu = \"{cpu_millicores}m\"\nmemory = \"{memory_mib}MiB\"\n\
             gpu = \"auto\"\n",
            p[0], p[1], p[2], p[3],
        );
    }
    Ok(t)
}

impl Local {
    /// Makes the cluster's files in `dir` and starts its `n` nodes; returns once the
    /// control plane has a leader and every node is registered.
    pub async fn start(dir: &Path, n: u64) -> anyhow::Result<Local> {
        if dir.join("cluster.toml").exists() {
            bail!(
                "{} already holds a cluster: remove it, or give another --out",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let machine = super::report::Machine::here();
        let cores = machine.cores as u64;
        let memory_mib = (machine.memory_bytes >> 20).max(4096) / n.max(1);
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, cluster_toml(n, cores * 1000, memory_mib)?)?;
        let secret: [u8; 32] = rand::random();
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&dir.join("cluster.secret"), &secret)?;
        let config = ClusterConfig::load(&config_path)?;
        let names: Vec<arbor_tls::issue::NodeNames> = config
            .nodes
            .iter()
            .map(|node| arbor_tls::issue::NodeNames {
                id: node.id,
                hosts: ClusterConfig::certificate_hosts(node),
            })
            .collect();
        arbor_tls::issue::init(
            &arbor_tls::TlsDir::new(dir.join("tls")),
            "bench-local",
            &names,
        )?;
        let (_, token) = TokenFile::create(&config.tokens_file(), Role::Admin, Some("bench"))?;
        let mut nodes = Vec::new();
        for node in &config.nodes {
            nodes.push(spawn(dir, &config_path, node.id)?);
        }
        let mut local = Local {
            dir: dir.to_path_buf(),
            gateway: GatewayArgs {
                config: config_path,
                token: Some(token),
            },
            nodes,
        };
        local.until_ready(n).await?;
        Ok(local)
    }

    /// How many nodes it has.
    pub fn size(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// SIGKILLs node `id`.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let child = self
            .nodes
            .get_mut(id as usize - 1)
            .with_context(|| format!("no node {id}"))?;
        child.kill().await?;
        Ok(())
    }

    /// Starts node `id` again (its log goes on where it was), and waits until it serves its
    /// own gateway and the control plane has it up.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let child = spawn(&self.dir, &self.gateway.config, id)?;
        self.nodes[id as usize - 1] = child;
        let config = ClusterConfig::load(&self.gateway.config)?;
        let own = [config.node(id)?.gateway];
        let trust = crate::commands::trust(&config)?;
        let token = self.gateway.token()?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let serving =
                arbor_client::GatewayClient::connect(&own, &trust, &token, Duration::from_secs(1))
                    .await
                    .is_ok();
            if serving
                && let Ok(mut client) = self.gateway.connect().await
                && let Ok(status) = run_job(&mut client, JobSpec::Status, "status").await
                && status["nodes"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|n| n["id"] == id && n["state"] == "up"))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {id} did not come back in 60 s\n{}", self.diagnosis());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn until_ready(&mut self, n: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut client) = self.gateway.connect().await
                && let Ok(status) = run_job(&mut client, JobSpec::Status, "status").await
                && !status["leader"].is_null()
                && status["nodes"]
                    .as_array()
                    .is_some_and(|a| a.len() as u64 == n)
            {
                return Ok(());
            }
            if self.any_exited() {
                bail!(
                    "the local cluster did not come up: a node stopped\n{}",
                    self.diagnosis()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the local cluster did not come up in 60 s\n{}",
                    self.diagnosis()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Whether a node's process has ended.
    fn any_exited(&mut self) -> bool {
        self.nodes
            .iter_mut()
            .any(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Each node's state and the end of its log: what a user (or CI) needs to see why the
    /// cluster did not come up, without opening the files.
    fn diagnosis(&mut self) -> String {
        let mut text = String::new();
        for (i, child) in self.nodes.iter_mut().enumerate() {
            let id = i + 1;
            let state = match child.try_wait() {
                Ok(Some(status)) => format!("stopped ({status})"),
                Ok(None) => "running".to_owned(),
                Err(e) => format!("unknown ({e})"),
            };
            let log = self.dir.join(format!("node-{id}.log"));
            let _ = writeln!(text, "node {id}: {state}; the end of {}:", log.display());
            let lines = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = lines.lines().collect();
            for line in &lines[lines.len().saturating_sub(12)..] {
                let _ = writeln!(text, "  {line}");
            }
        }
        text
    }

    /// SIGTERM to every node, then a kill for any still running after 10 s; the data is
    /// removed unless `keep`.
    pub async fn stop(mut self, keep: bool) {
        for child in &self.nodes {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) with a pid of a child this process started and still holds.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for child in &mut self.nodes {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if !keep {
            let _ = std::fs::remove_dir_all(self.dir.join("data"));
        }
    }
}

/// Starts node `id` of the cluster in `dir`, its log appended to `dir/node-ID.log`.
fn spawn(dir: &Path, config: &Path, id: u64) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("cannot find the arbor binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node-{id}.log")))?;
    tokio::process::Command::new(exe)
        .args(["node", "--config"])
        .arg(config)
        .args(["--node", &id.to_string()])
        .env_remove("ARBOR_CLUSTER_SECRET")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start an arbor node")
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
