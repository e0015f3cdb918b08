//! The chaos harness: separate `arbor` node processes whose links to each other go through a
//! fault proxy per port and per directed pair of nodes, so that the Raft port and the actor
//! port fail separately and in one direction. Each node reads its own cluster.toml, in which
//! its peers' addresses are the proxies it dials through; the test's client uses the real
//! addresses.
//!
//! Documents bring their own vectors, so no model is needed: the collection's embedder
//! deployment exists only because collections name one (it waits, unplaceable, on a label
//! no node has). Every acknowledged document is remembered; [`Chaos::verify`] then reads its
//! row from *every* in-sync replica, addressed directly, and checks they all hold it and all
//! agree. What the harness did and saw is kept as a history and printed when a test fails.

#![allow(dead_code)] // each test file uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arbor_actors::partition::{PartitionAnswer, PartitionRequest, remote};
use arbor_actors::retrieval::route::{chunk_id, partition_of};
use arbor_client::GatewayClient;
use arbor_node::Caller;
use arbor_node::{ClusterConfig, Secret};
use arbor_proto::gateway::{Document, IngestJob, JobSpec};
use arbor_proto::results::{CollectionReport, DeploymentReport};
use serde_json::Value;

use super::proxy::{Fault, Proxy};
use super::{NodeProc, arbor_as};

pub const SECRET: &str = "chaos-secret-padded-to-32-bytes-at-least";
/// The vectors' dimension: small, so that bulk loads are quick.
pub const DIM: usize = 8;

/// Which port of a node a fault concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    Raft,
    Actors,
}

#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub actors: SocketAddr,
    pub raft: SocketAddr,
    pub gateway: SocketAddr,
}

pub struct Chaos {
    pub dir: tempfile::TempDir,
    /// The client's cluster.toml (real addresses).
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    pub addrs: BTreeMap<u64, Addrs>,
    /// Each node's own cluster.toml (its peers behind proxies).
    pub node_configs: BTreeMap<u64, PathBuf>,
    proxies: BTreeMap<(u64, u64, Port), Proxy>,
    /// The node processes running now (a killed one is removed, a restarted one added).
    nodes: Mutex<BTreeMap<u64, NodeProc>>,
    pub token: String,
    started: Instant,
    history: Mutex<Vec<String>>,
}

impl Drop for Chaos {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
    }
}

/// Prints the scenario's history if the test panics while it is alive: for a harness shared
/// with tasks (`Arc<Chaos>`), whose own drop comes too late.
pub struct Witness(pub std::sync::Arc<Chaos>);

impl Drop for Witness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.report();
            // Nothing is left running when the test ends.
            let mut nodes = self.0.nodes.lock().unwrap_or_else(|e| e.into_inner());
            for n in nodes.values_mut() {
                n.sigkill();
            }
        }
    }
}

impl Chaos {
    /// How a client trusts this cluster's gateways (its CA).
    pub fn trust(&self) -> arbor_client::Trust {
        super::support::trust(&self.config)
    }

    /// Prints what the scenario did and saw, and the end of every node's log.
    pub fn report(&self) {
        {
            eprintln!("---- what the scenario did and saw ----");
            for line in self
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                eprintln!("{line}");
            }
            for id in self.addrs.keys() {
                let log = std::fs::read_to_string(self.log_path(*id)).unwrap_or_default();
                // Leaderless raft's per-proposal lines would hide everything else.
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.contains("dropping"))
                    .take(60)
                    .collect();
                eprintln!("---- node {id}: the end of its log ----");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// One test at a time: several 3-node clusters on two cores would time each other out.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Chaos {
    /// `n` nodes (cluster.toml tuned by `edit`), started, with the control plane answering.
    pub async fn start(name: &str, n: u64, edit: impl Fn(String) -> String) -> Chaos {
        let dir = tempfile::tempdir().unwrap();
        let text = edit(super::support::cluster_toml(name, n, dir.path(), None)).replace(
            "cpu = \"1\"\nmemory = \"1GiB\"",
            "cpu = \"16\"\nmemory = \"64GiB\"",
        );
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = ClusterConfig::load(&config_path).unwrap();
        let addrs: BTreeMap<u64, Addrs> = config
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    Addrs {
                        actors: n.actors,
                        raft: n.raft,
                        gateway: n.gateway,
                    },
                )
            })
            .collect();
        let mut proxies = BTreeMap::new();
        for from in addrs.keys() {
            for (to, a) in &addrs {
                if from == to {
                    continue;
                }
                proxies.insert((*from, *to, Port::Raft), Proxy::start(a.raft).await);
                proxies.insert((*from, *to, Port::Actors), Proxy::start(a.actors).await);
            }
        }
        let mut node_configs = BTreeMap::new();
        for from in addrs.keys() {
            let mut own = text.clone();
            for (to, a) in &addrs {
                if from == to {
                    continue;
                }
                own = own
                    .replace(
                        &format!("raft = \"{}\"", a.raft),
                        &format!("raft = \"{}\"", proxies[&(*from, *to, Port::Raft)].addr),
                    )
                    .replace(
                        &format!("actors = \"{}\"", a.actors),
                        &format!("actors = \"{}\"", proxies[&(*from, *to, Port::Actors)].addr),
                    );
            }
            let path = dir.path().join(format!("node-{from}.toml"));
            std::fs::write(&path, own).unwrap();
            node_configs.insert(*from, path);
        }
        let token = super::create_token(&config_path, "admin");
        let c = Chaos {
            dir,
            config_path,
            config,
            addrs,
            node_configs,
            proxies,
            nodes: Mutex::new(BTreeMap::new()),
            token,
            started: Instant::now(),
            history: Mutex::new(Vec::new()),
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c.until(
            "the control plane answers",
            Duration::from_secs(60),
            async |c| c.deployments().await.is_some(),
        )
        .await;
        c
    }

    /// Records one line of the scenario's history.
    pub fn note(&self, what: impl AsRef<str>) {
        let line = format!(
            "{:>8.3}s  {}",
            self.started.elapsed().as_secs_f64(),
            what.as_ref()
        );
        self.history.lock().unwrap().push(line);
    }

    /// Where node `id` logs (every run of it, appended).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn start_node(&self, id: u64) {
        self.note(format!("start node {id}"));
        let proc = NodeProc::start_logging(&self.node_configs[&id], id, SECRET, &self.log_path(id));
        self.nodes.lock().unwrap().insert(id, proc);
    }

    pub fn sigkill(&self, id: u64) {
        self.note(format!("SIGKILL node {id}"));
        let node = self.nodes.lock().unwrap().remove(&id);
        if let Some(mut n) = node {
            n.sigkill();
        }
    }

    /// Whether node `id`'s process has exited (it is reaped then); its exit status.
    pub fn exited(&self, id: u64) -> Option<std::process::ExitStatus> {
        let mut nodes = self.nodes.lock().unwrap();
        nodes.get_mut(&id)?.child.try_wait().ok().flatten()
    }

    pub fn signal(&self, id: u64, signal: &str) {
        self.note(format!("SIG{signal} node {id}"));
        let pid = self.nodes.lock().unwrap()[&id].child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Sets the fault on what node `from` sends to node `to` on `port` (for the actor port,
    /// the one connection between two nodes carries both directions).
    pub fn fault(&self, from: u64, to: u64, port: Port, fault: Fault) {
        self.note(format!("{port:?} {from} -> {to}: {fault:?}"));
        self.proxies[&(from, to, port)].set(fault);
    }

    /// Cuts (or heals) `port` between `node` and every other node, both ways.
    pub fn isolate(&self, node: u64, port: Port, fault: Fault) {
        for other in self.addrs.keys().filter(|o| **o != node) {
            self.fault(node, *other, port, fault);
            self.fault(*other, node, port, fault);
        }
    }

    /// `arbor ARGS --config <client config>` with the admin token and without the cluster
    /// secret (the CLI needs only a token); stdout, or stderr as the error.
    pub async fn arbor(&self, args: &[&str]) -> Result<String, String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--config".into(), self.config_path.display().to_string()]);
        let token = self.token.clone();
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            arbor_as(&refs, None, Some(&token))
        })
        .await
        .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A listing job's data from the first node that answers it (a node cut off from the
    /// control plane, or removed from it, answers `unavailable`: the next is asked).
    async fn listing(&self, job: JobSpec) -> Option<Value> {
        for a in self.addrs.values() {
            let Ok(mut client) = GatewayClient::connect(
                &[a.gateway],
                &self.trust(),
                &self.token,
                Duration::from_secs(1),
            )
            .await
            else {
                continue;
            };
            let answer =
                tokio::time::timeout(Duration::from_secs(5), client.run(job.clone(), |_| {})).await;
            if let Ok(Ok(outcome)) = answer
                && let Ok(data) = outcome.into_data()
            {
                return Some(data);
            }
        }
        None
    }

    pub async fn deployments(&self) -> Option<BTreeMap<String, DeploymentReport>> {
        let v = self.listing(JobSpec::Deployments).await?;
        let list: Vec<DeploymentReport> = serde_json::from_value(v["deployments"].clone()).ok()?;
        Some(list.into_iter().map(|d| (d.name.clone(), d)).collect())
    }

    pub async fn collections(&self) -> Option<BTreeMap<String, CollectionReport>> {
        let v = self.listing(JobSpec::Collections).await?;
        let list: Vec<CollectionReport> = serde_json::from_value(v["collections"].clone()).ok()?;
        Some(list.into_iter().map(|c| (c.name.clone(), c)).collect())
    }

    /// Polls `check` until it holds, at most `patience`.
    pub async fn until(
        &self,
        what: &str,
        patience: Duration,
        check: impl AsyncFn(&Chaos) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < patience {
            if check(self).await {
                self.note(format!("{what}: after {:.1?}", start.elapsed()));
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.note(format!("never: {what}"));
        panic!("never saw {what} within {patience:?}");
    }

    pub async fn deploy(&self, name: &str, text: &str) {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = self.arbor(&["deploy", "-f", path.to_str().unwrap()]).await;
        self.note(format!("deploy {name}: {out:?}"));
        out.unwrap();
    }

    /// The embedder a collection names, deployed where no node can take it: documents bring
    /// their own vectors, so it never runs (once per cluster).
    pub async fn stand_in_embedder(&self) {
        if self
            .deployments()
            .await
            .is_none_or(|d| !d.contains_key("embedder"))
        {
            self.deploy(
                "embedder",
                "name = \"embedder\"\nkind = \"embedder\"\nreplicas = 1\n\
                 constraints = [{ op = \"exists\", key = \"no-node-has-this-label\" }]\n",
            )
            .await;
        }
    }

    /// Collection `name` of `partitions` × `replicas`, its coordinators (one per node) and
    /// the stand-in embedder; returns once every replica runs and is in sync.
    pub async fn collection(&self, name: &str, partitions: u32, replicas: u32) {
        self.collection_with(name, partitions, replicas, &[]).await
    }

    /// [`Chaos::collection`] with more flags for `arbor collection create` (its index, say).
    pub async fn collection_with(&self, name: &str, partitions: u32, replicas: u32, more: &[&str]) {
        self.stand_in_embedder().await;
        let (partitions_text, replicas_text, dim) = (
            partitions.to_string(),
            replicas.to_string(),
            DIM.to_string(),
        );
        let mut args = vec![
            "collection",
            "create",
            name,
            "--partitions",
            &partitions_text,
            "--replicas",
            &replicas_text,
            "--embedder",
            "embedder",
            "--dim",
            &dim,
            "--memory",
            "64MiB",
            // Its coordinators are deployed below: one per node, patient writes.
            "--coordinators",
            "0",
        ];
        args.extend_from_slice(more);
        let out = self.arbor(&args).await;
        self.note(format!("collection create {name}: {out:?}"));
        out.unwrap();
        let nodes = self.addrs.len();
        self.deploy(
            &format!("{name}-coord"),
            &format!(
                "name = \"{name}-coord\"\nkind = \"retrieval_coordinator\"\nreplicas = {nodes}\n\
                 anti_affinity = true\n[config]\ncollection = \"{name}\"\n\
                 write_patience_ms = 10000\n"
            ),
        )
        .await;
        self.until_whole(name, Duration::from_secs(60)).await;
    }

    /// Waits until every partition of `collection` has all its replicas in sync and running.
    pub async fn until_whole(&self, collection: &str, patience: Duration) -> Duration {
        let name = collection.to_string();
        self.until(
            &format!("every replica of {collection} in sync"),
            patience,
            async move |c| {
                let Some(cs) = c.collections().await else {
                    return false;
                };
                let Some(col) = cs.get(&name) else {
                    return false;
                };
                col.running == col.partitions * col.replication
                    && col
                        .replica_sets
                        .iter()
                        .all(|s| s.in_sync.len() as u32 == col.replication && s.primary.is_some())
            },
        )
        .await
    }

    /// A gateway client to whichever node answers first.
    pub async fn client(&self) -> GatewayClient {
        let addrs: Vec<SocketAddr> = self.addrs.values().map(|a| a.gateway).collect();
        GatewayClient::connect(&addrs, &self.trust(), &self.token, Duration::from_secs(2))
            .await
            .expect("some gateway answers")
    }

    /// Ingests documents with their own vectors through the gateway; `Ok` once the job
    /// succeeded (every document acknowledged).
    pub async fn ingest(
        &self,
        client: &mut GatewayClient,
        collection: &str,
        docs: &[(String, Vec<f32>)],
    ) -> Result<(), String> {
        let job = JobSpec::Ingest(IngestJob {
            collection: collection.into(),
            documents: docs
                .iter()
                .map(|(id, vector)| Document {
                    id: id.clone(),
                    text: format!("document {id}"),
                    title: None,
                    metadata: Default::default(),
                    vector: Some(vector.clone()),
                })
                .collect(),
        });
        let outcome = client.run(job, |_| {}).await.map_err(|e| e.to_string())?;
        outcome.into_data().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Checks every acknowledged document (id → the vector last acknowledged for it) on
    /// every in-sync replica of its partition, read directly from each: all hold it, and all
    /// hold the same row. Waits first until every partition is whole again.
    pub async fn verify(
        &self,
        collection: &str,
        partitions: u32,
        acked: &BTreeMap<String, Vec<f32>>,
    ) {
        let rows: BTreeMap<u64, (String, Vec<f32>)> = acked
            .iter()
            .map(|(doc, v)| (chunk_id(doc, 0), (format!("document {doc:?}"), v.clone())))
            .collect();
        self.verify_rows(collection, partitions, &rows).await
    }

    /// [`Chaos::verify`] for rows by id (id → a name for messages, the vector acknowledged).
    pub async fn verify_rows(
        &self,
        collection: &str,
        partitions: u32,
        acked: &BTreeMap<u64, (String, Vec<f32>)>,
    ) {
        self.until_whole(collection, Duration::from_secs(90)).await;
        let sets = self.collections().await.unwrap()[collection]
            .replica_sets
            .clone();
        let deployments = self.deployments().await.unwrap();
        let secret = Secret::new(SECRET).unwrap();
        let caller = Caller::connect(&self.config, &secret, Duration::from_secs(3))
            .await
            .unwrap();
        let scope = caller.scope().to_owned();
        let mut by_partition: BTreeMap<u32, Vec<(u64, &String)>> = BTreeMap::new();
        for (&id, (name, _)) in acked {
            by_partition
                .entry(partition_of(id, partitions))
                .or_default()
                .push((id, name));
        }
        let mut checked = 0;
        for set in &sets {
            let deployment = arbor_proto::partition_deployment(collection, set.partition);
            let docs = by_partition
                .get(&set.partition)
                .cloned()
                .unwrap_or_default();
            let report = &deployments[&deployment];
            let mut seen: BTreeMap<u32, BTreeMap<u64, Vec<f32>>> = BTreeMap::new();
            for replica in &set.in_sync {
                let generation = report
                    .replicas
                    .iter()
                    .find(|r| r.replica == *replica)
                    .and_then(|r| r.generation)
                    .unwrap();
                let start = Instant::now();
                let cell = loop {
                    if let Some(cell) = remote::member(&scope, &deployment, *replica, generation) {
                        break cell;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "replica {deployment}/{replica} at generation {generation} is not \
                         reachable; groups seen here: {:?}",
                        ractor::pg::which_scopes_and_groups()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let mut rows = BTreeMap::new();
                for chunk in docs.chunks(256) {
                    let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
                    let records = get(&cell, ids).await.unwrap_or_else(|why| {
                        panic!("{deployment}/{replica} did not answer a get: {why}")
                    });
                    for r in records {
                        rows.insert(r.id, r.vector);
                    }
                }
                seen.insert(*replica, rows);
            }
            for (id, name) in &docs {
                let want = &acked[id].1;
                for (replica, rows) in &seen {
                    let got = rows.get(id);
                    assert!(
                        got == Some(want),
                        "acknowledged {name} (row {id}) on {deployment}/{replica}: {got:?}, want {want:?}"
                    );
                }
                checked += 1;
            }
        }
        self.note(format!(
            "verified {checked} acknowledged rows on every in-sync replica"
        ));
        caller.stop().await;
    }

    /// Each in-sync replica's stats (`deployment/replica` → stats), asked of the replica
    /// itself.
    pub async fn replica_stats(
        &self,
        collection: &str,
    ) -> BTreeMap<String, arbor_actors::partition::PartitionStats> {
        let sets = self.collections().await.unwrap()[collection]
            .replica_sets
            .clone();
        let deployments = self.deployments().await.unwrap();
        let secret = Secret::new(SECRET).unwrap();
        let caller = Caller::connect(&self.config, &secret, Duration::from_secs(3))
            .await
            .unwrap();
        let scope = caller.scope().to_owned();
        let mut out = BTreeMap::new();
        for set in &sets {
            let deployment = arbor_proto::partition_deployment(collection, set.partition);
            for replica in &set.in_sync {
                let Some(generation) = deployments[&deployment]
                    .replicas
                    .iter()
                    .find(|r| r.replica == *replica)
                    .and_then(|r| r.generation)
                else {
                    continue;
                };
                let start = Instant::now();
                let cell = loop {
                    if let Some(cell) = remote::member(&scope, &deployment, *replica, generation) {
                        break Some(cell);
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let Some(cell) = cell else { continue };
                let answer =
                    remote::ask(&cell, PartitionRequest::Stats, Duration::from_secs(10)).await;
                if let Ok(PartitionAnswer::Stats(stats)) = answer {
                    out.insert(format!("{deployment}/{replica}"), stats);
                }
            }
        }
        caller.stop().await;
        out
    }

    /// The replica set of `collection`'s partition `p`: (primary, in-sync replicas, epoch).
    pub async fn set(&self, collection: &str, p: u32) -> Option<(Option<u32>, Vec<u32>, u64)> {
        let cs = self.collections().await?;
        let s = cs
            .get(collection)?
            .replica_sets
            .iter()
            .find(|s| s.partition == p)?
            .clone();
        Some((s.primary, s.in_sync, s.epoch))
    }

    /// The node each replica of `collection`'s partition `p` is placed on.
    pub async fn replica_nodes(&self, collection: &str, p: u32) -> BTreeMap<u32, u64> {
        let d = self.deployments().await.unwrap();
        d[&arbor_proto::partition_deployment(collection, p)]
            .replicas
            .iter()
            .filter_map(|r| Some((r.replica, r.node?)))
            .collect()
    }

    /// The nodes holding no replica of `collection`'s partition `p`.
    pub async fn other_nodes(&self, collection: &str, p: u32) -> BTreeSet<u64> {
        let used: BTreeSet<u64> = self
            .replica_nodes(collection, p)
            .await
            .into_values()
            .collect();
        self.addrs
            .keys()
            .copied()
            .filter(|n| !used.contains(n))
            .collect()
    }
}

/// `Get(ids)` from one replica; a replica that is briefly fenced or not yet back in sync
/// (its node just had its lease confirmed again) is asked again for a while.
pub async fn get(
    cell: &ractor::ActorCell,
    ids: Vec<u64>,
) -> Result<Vec<arbor_actors::partition::VectorRecord>, String> {
    let start = Instant::now();
    loop {
        let answer = remote::ask(
            cell,
            PartitionRequest::Get(ids.clone()),
            Duration::from_secs(30),
        )
        .await;
        match answer {
            Ok(PartitionAnswer::Records(records)) => return Ok(records),
            Err(
                arbor_actors::partition::PartitionFailure::Fenced
                | arbor_actors::partition::PartitionFailure::NotInSync,
            ) if start.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Err(format!("{other:?}")),
        }
    }
}

/// A unit vector of [`DIM`] values, the same for the same seed.
pub fn vector(seed: u64) -> Vec<f32> {
    super::load::unit_vector(seed, DIM)
}
