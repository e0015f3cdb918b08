//! A real in-process cluster for tests: nodes on 127.0.0.1, real redb files in a tempdir, and
//! a fault-injecting proxy on every directed link.
#![allow(dead_code)]

pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arbor_scheduler::{
    Bootstrap, ClusterState, Command, NodeConfig, NodeStatus, RaftHandle, RaftNode, Role,
};
use proxy::{Fault, Proxy};
use tokio::net::TcpListener;

pub const SECRET: &[u8] = b"test-cluster-secret";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, SocketAddr>,
    pub nodes: BTreeMap<u64, RaftNode>,
    /// (from, to) → proxy that carries from's traffic to `to`.
    pub proxies: HashMap<(u64, u64), Proxy>,
    pub tune: fn(&mut NodeConfig),
    pub voters: Vec<u64>,
}

fn default_tune(_: &mut NodeConfig) {}

impl Cluster {
    /// Starts `n` bootstrap voters (ids 1..=n).
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, default_tune).await
    }

    pub async fn start_with(n: u64, tune: fn(&mut NodeConfig)) -> Cluster {
        init_tracing();
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            proxies: HashMap::new(),
            tune,
            voters: (1..=n).collect(),
        };
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            c.addrs.insert(id, l.local_addr().unwrap());
            listeners.insert(id, l);
        }
        for id in 1..=n {
            c.add_proxies(id).await;
        }
        // Together, as a new cluster's voters start: each asks the others whether a cluster
        // already runs before it founds one.
        let starting: Vec<_> = listeners
            .into_iter()
            .map(|(id, l)| {
                let cfg = c.config(id, Bootstrap::Voters(c.voters.clone()));
                tokio::spawn(async move { (id, RaftNode::start_with_listener(cfg, l).await) })
            })
            .collect();
        for s in starting {
            let (id, node) = s.await.unwrap();
            c.nodes.insert(id, node.unwrap());
        }
        c
    }

    /// Creates proxies between `id` and every known node, both directions.
    pub async fn add_proxies(&mut self, id: u64) {
        let others: Vec<u64> = self.addrs.keys().copied().filter(|o| *o != id).collect();
        for o in others {
            if !self.proxies.contains_key(&(id, o)) {
                self.proxies
                    .insert((id, o), Proxy::start(self.addrs[&o]).await);
            }
            if !self.proxies.contains_key(&(o, id)) {
                self.proxies
                    .insert((o, id), Proxy::start(self.addrs[&id]).await);
            }
        }
    }

    pub fn data_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.redb"))
    }

    pub fn config(&self, id: u64, bootstrap: Bootstrap) -> NodeConfig {
        let mut cfg = NodeConfig::new(id, self.addrs[&id], self.data_path(id), SECRET, bootstrap);
        for o in self.addrs.keys().filter(|o| **o != id) {
            if let Some(p) = self.proxies.get(&(id, *o)) {
                cfg.peers.insert(*o, p.addr.to_string());
            }
        }
        cfg.client.propose_timeout = Duration::from_secs(8);
        cfg.client.read_timeout = Duration::from_secs(8);
        (self.tune)(&mut cfg);
        cfg
    }

    /// Starts (or restarts) node `id` on its address with its data file.
    pub async fn start_node(&mut self, id: u64, bootstrap: Bootstrap) {
        let cfg = self.config(id, bootstrap);
        self.start_node_with(id, cfg).await;
    }

    /// Starts node `id` with a config the test adjusted.
    pub async fn start_node_with(&mut self, id: u64, cfg: NodeConfig) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addrs[&id]).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addrs[&id]),
            }
        };
        let node = RaftNode::start_with_listener(cfg, listener).await.unwrap();
        self.nodes.insert(id, node);
    }

    /// Adds a brand-new node id to the address book (not yet a member) and starts it in join
    /// mode.
    pub async fn spawn_joiner(&mut self, id: u64) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        self.addrs.insert(id, addr);
        self.add_proxies(id).await;
        let cfg = self.config(id, Bootstrap::Join);
        self.nodes
            .insert(id, RaftNode::start_with_listener(cfg, l).await.unwrap());
        addr
    }

    /// Restarts every existing node so its peer table includes nodes added since it started.
    pub async fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.remove(&id) {
            n.kill().await;
        }
    }

    pub fn handle(&self, id: u64) -> RaftHandle {
        self.nodes[&id].handle()
    }

    pub async fn statuses(&self) -> Vec<NodeStatus> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            if let Ok(s) = n.handle().status().await {
                out.push(s);
            }
        }
        out
    }

    /// Waits until the running nodes in `among` agree on one leader that is one of them.
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in among {
                if let Some(n) = self.nodes.get(id) {
                    let s = n.handle().status().await.unwrap();
                    leaders.push((s.leader, s.role));
                }
            }
            if let Some((Some(l), _)) = leaders.first()
                && among.contains(l)
                && leaders.iter().all(|(x, _)| *x == Some(*l))
                && leaders.iter().any(|(_, r)| *r == Role::Leader)
            {
                return *l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.nodes[&id].handle().status().await.unwrap();
            if s.applied >= index {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} applied {} < {index}",
                s.applied
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cuts every link between the two sides (both directions).
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        for x in a {
            for y in b {
                for key in [(*x, *y), (*y, *x)] {
                    if let Some(p) = self.proxies.get(&key) {
                        p.set(Fault::Cut);
                    }
                }
            }
        }
    }

    pub fn set_all(&self, fault: Fault) {
        for p in self.proxies.values() {
            p.set(fault);
        }
    }

    pub fn heal(&self) {
        self.set_all(Fault::Pass);
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(n) = self.nodes.remove(&id) {
                n.shutdown().await;
            }
        }
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::KvPut {
        key: key.into(),
        value: value.into(),
    }
}

/// Local (not linearizable) look at a node's applied state, via a read on that node.
pub async fn kv(h: &RaftHandle, key: &str) -> Option<String> {
    let key = key.to_string();
    h.read(move |s: &ClusterState| s.kv.get(&key).cloned())
        .await
        .unwrap()
}
