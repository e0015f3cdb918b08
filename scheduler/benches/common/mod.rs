//! A 3-node in-process control plane for the benchmarks: real TCP on 127.0.0.1, real redb
//! files with fsync.

#![allow(dead_code)] // each bench uses part of it

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_scheduler::{Bootstrap, NodeConfig, RaftHandle, RaftNode, Role};
use tokio::net::TcpListener;

pub struct BenchCluster {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    addrs: BTreeMap<u64, std::net::SocketAddr>,
    pub nodes: BTreeMap<u64, RaftNode>,
}

impl BenchCluster {
    pub async fn start() -> BenchCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut c = BenchCluster {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        let mut listeners = BTreeMap::new();
        for id in 1..=3 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            c.addrs.insert(id, l.local_addr().unwrap());
            listeners.insert(id, l);
        }
        // Together, as a new cluster's voters start (each asks the others before founding).
        let starting: Vec<_> = listeners
            .into_iter()
            .map(|(id, l)| {
                let cfg = c.config(id);
                tokio::spawn(async move { (id, RaftNode::start_with_listener(cfg, l).await) })
            })
            .collect();
        for s in starting {
            let (id, node) = s.await.unwrap();
            c.nodes.insert(id, node.unwrap());
        }
        c
    }

    pub fn config(&self, id: u64) -> NodeConfig {
        let mut cfg = NodeConfig::new(
            id,
            self.addrs[&id],
            self.dir.join(format!("n{id}.redb")),
            b"bench-secret".to_vec(),
            Bootstrap::Voters(vec![1, 2, 3]),
        );
        for (o, a) in &self.addrs {
            if *o != id {
                cfg.peers.insert(*o, a.to_string());
            }
        }
        cfg
    }

    pub async fn restart(&mut self, id: u64) {
        let l = loop {
            match TcpListener::bind(self.addrs[&id]).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let node = RaftNode::start_with_listener(self.config(id), l)
            .await
            .unwrap();
        self.nodes.insert(id, node);
    }

    pub async fn leader(&self) -> u64 {
        loop {
            for n in self.nodes.values() {
                if let Ok(s) = n.handle().status().await
                    && s.role == Role::Leader
                {
                    return s.id;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn handle(&self, id: u64) -> RaftHandle {
        self.nodes[&id].handle()
    }
}
