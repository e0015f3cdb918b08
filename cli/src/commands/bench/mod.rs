//! `arbor bench run SCENARIO... --out DIR` against a running cluster, through its gateway, and
//! `arbor bench compare OLD NEW`.
//!
//! A scenario creates what it needs under a name of its own and removes it afterwards, even
//! when interrupted (ctrl-c ends the run cleanly and writes the report of the scenarios that
//! finished). Load ([`load`]) runs on `--connections` connections: a closed loop of
//! `--in-flight` jobs each, or an open loop at `--rate` jobs/s; a `--warmup` that is not
//! measured, then `--duration` that is. The figures go to `DIR/report.json` ([`report`]).

pub mod compare;
pub mod fault;
pub mod html;
pub mod lifecycle;
pub mod load;
pub mod local;
pub mod report;
pub mod text;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use arbor_node::ClusterConfig;
use arbor_proto::gateway::{
    CallJob, CreateCollectionJob, DeployJob, Document, EmbedJob, GenerateJob, IngestJob, JobSpec,
    NameJob, QueryJob,
};
use arbor_proto::results::DeploymentsResult;
use serde_json::json;
use tokio::time::Instant;

use super::{GatewayArgs, parse_data, run_job};
use load::{Sample, Shape};
use report::{Machine, Report, SCHEMA, ScenarioReport, System};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `status` jobs: the gateway's own round trip (role reader).
    Jobs,
    /// `call` jobs to an `echo` deployment with a replica per node, which the scenario
    /// deploys and removes (role admin).
    Call,
    /// `ingest` jobs of rows that bring their own vectors, into a collection of a partition
    /// per node that the scenario creates and deletes (role admin).
    IngestVectors,
    /// `query` jobs by vector (top `--k`) over `--rows` rows loaded first, in a collection
    /// the scenario creates and deletes (role admin).
    QueryVector,
    /// `status` jobs that the control plane records: each is committed writes (its record,
    /// then its end) (role reader).
    Control,
    /// `embed` jobs of 8 short texts to the cluster's only embedder deployment (role user).
    Embed,
    /// `generate` jobs of 16 tokens from the cluster's only model deployment (role user).
    Generate,
    /// `ingest` jobs of 8 text documents, embedded by the cluster's embedder, into a
    /// collection the scenario creates and deletes (role admin).
    IngestText,
    /// `query` jobs by text (top 10) over `--documents` documents loaded first (role admin).
    QueryText,
    /// `rag` jobs (top 3, 16 tokens) with the cluster's embedder and model over
    /// `--documents` documents loaded first (role admin).
    Rag,
    /// With `arbor bench local` only: calls under load while the last node is SIGKILLed;
    /// records the clients' errors and latency around it, and how long until its replicas
    /// ran elsewhere (role admin).
    KillNode,
    /// With `arbor bench local` only: recorded jobs (committed writes) from a node that
    /// stays, while the Raft leader is SIGKILLed; records the time to the next commit.
    KillLeader,
    /// Deploy an `echo` with a replica per node, scale it up to twice that and back down,
    /// undeploy it, again and again: the time until all replicas run at each step, reported
    /// as `deploy`, `scale-up` and `scale-down` (role admin; not a load, so one connection).
    Deploy,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Jobs => "jobs",
            Scenario::Call => "call",
            Scenario::IngestVectors => "ingest-vectors",
            Scenario::QueryVector => "query-vector",
            Scenario::Control => "control",
            Scenario::Embed => "embed",
            Scenario::Generate => "generate",
            Scenario::Deploy => "deploy",
            Scenario::IngestText => "ingest-text",
            Scenario::QueryText => "query-text",
            Scenario::Rag => "rag",
            Scenario::KillNode => "kill-node",
            Scenario::KillLeader => "kill-leader",
        }
    }
}

/// What the collection scenarios use.
#[derive(Debug, Clone)]
pub struct Vectors {
    /// Rows loaded before `query-vector` is measured.
    pub rows: u64,
    pub dimension: u32,
    pub k: u32,
    /// The metadata filter of `query-vector`'s queries (see [`row`] for what rows have).
    pub filter: Option<serde_json::Value>,
    /// The index of the collections `ingest-vectors` and `query-vector` create.
    pub index: arbor_proto::IndexSpec,
    /// How those collections hold vectors in memory.
    pub quantization: arbor_proto::Quantization,
    /// `query-vector`'s HNSW `ef`.
    pub ef: Option<u32>,
    /// Partitions of those collections (`None`: one per node).
    pub partitions: Option<u32>,
    /// Replicas of each partition.
    pub replicas: u32,
    /// The existing collection `query-vector` queries (`None`: it creates and loads one).
    pub collection: Option<String>,
    /// Text documents loaded before `query-text` and `rag` are measured.
    pub documents: u64,
}

impl Vectors {
    /// What a report says `scenario` ran with, beyond its load.
    fn parameters(&self, scenario: Scenario) -> serde_json::Map<String, serde_json::Value> {
        let value = match scenario {
            Scenario::IngestVectors => json!({"rows_per_job": ROWS_PER_JOB,
                "dimension": self.dimension, "index": self.index,
                "partitions": self.partitions, "replicas": self.replicas,
                "quantization": self.quantization}),
            Scenario::QueryVector => json!({
                "rows": self.rows.div_ceil(ROWS_PER_JOB) * ROWS_PER_JOB,
                "dimension": self.dimension, "k": self.k, "filter": self.filter,
                "metric": "cosine", "search": self.index.kind(), "index": self.index,
                "quantization": self.quantization, "ef": self.ef,
                "partitions": self.partitions, "replicas": self.replicas}),
            Scenario::Embed => json!({"texts_per_job": 8}),
            Scenario::Generate => json!({"max_tokens": 16}),
            Scenario::IngestText => json!({"documents_per_job": 8}),
            Scenario::QueryText => json!({"documents": self.documents, "k": 10}),
            Scenario::Rag => json!({"documents": self.documents, "k": 3, "max_tokens": 16}),
            _ => json!({}),
        };
        match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// Rows per `ingest` job.
const ROWS_PER_JOB: u64 = 256;

/// What a scenario set up, to be removed afterwards.
pub(crate) struct Prepared {
    job: Arc<load::Jobs>,
    /// Whether the control plane records each job.
    record: bool,
    created: Created,
    /// What the report says the scenario ran with, when it is not what the flags say (an
    /// existing collection's own shape).
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Prepared {
    /// Jobs that are all the same, recorded or not, creating nothing.
    fn same(job: JobSpec, record: bool) -> Prepared {
        Prepared {
            job: Arc::new(move |_| job.clone()),
            record,
            created: Created::default(),
            parameters: None,
        }
    }
}

/// What a scenario created: the jobs that remove it, in order.
#[derive(Default)]
pub(crate) struct Created(Vec<JobSpec>);

impl Created {
    fn deployment(mut self, name: &str) -> Created {
        self.0
            .push(JobSpec::Undeploy(NameJob { name: name.into() }));
        self
    }

    /// A collection goes before the deployments it names.
    fn collection(mut self, name: &str) -> Created {
        self.0
            .insert(0, JobSpec::DeleteCollection(NameJob { name: name.into() }));
        self
    }
}

/// `arbor bench run`.
pub async fn run(
    gw: &GatewayArgs,
    scenarios: &[Scenario],
    shape: Shape,
    vectors: Vectors,
    out: &Path,
    mut local: Option<&mut local::Local>,
) -> anyhow::Result<()> {
    if let Some(s) = scenarios
        .iter()
        .find(|s| matches!(s, Scenario::KillNode | Scenario::KillLeader))
        && local.is_none()
    {
        bail!(
            "{} kills one of the cluster's processes: run it with `arbor bench local`",
            s.name()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = ClusterConfig::load(&gw.config)?;
    let mut report = Report {
        schema: SCHEMA.into(),
        system: System::arbor(),
        started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: Machine::here(),
        nodes: config.nodes.len(),
        cluster_gpus: cluster_gpus(gw).await?,
        scenarios: Vec::new(),
    };
    let path = out.join("report.json");
    let mut interrupted = false;
    for &scenario in scenarios {
        if matches!(scenario, Scenario::KillNode | Scenario::KillLeader)
            && let Some(cluster) = local.as_deref_mut()
        {
            let r = if scenario == Scenario::KillNode {
                eprintln!(
                    "kill-node: calls under load, the last node SIGKILLed a third of the way in"
                );
                fault::kill_node(gw, cluster, shape).await?
            } else {
                eprintln!(
                    "kill-leader: committed writes, the Raft leader SIGKILLed a third of the way in"
                );
                fault::kill_leader(gw, cluster, shape).await?
            };
            print_line(&r);
            if let Some(f) = &r.fault {
                println!(
                    "               {} at {:.1} s: recovered {:.2} s later",
                    f.what, f.at_s, f.recovered_after_s
                );
            }
            report.scenarios.push(r);
            continue;
        }
        if scenario == Scenario::Deploy {
            // Steps one after another, not a load: nothing to ramp up.
            let shape = Shape {
                ramp: Duration::ZERO,
                ..shape
            };
            let prefix = unique("bench-deploy");
            eprintln!(
                "deploy: cycles of deploy, scale up, scale down, undeploy; {} warm-up, {} measured",
                humantime::format_duration(shape.warmup),
                humantime::format_duration(shape.duration)
            );
            let bar = progress(scenario, shape);
            let mut client = gw.connect().await?;
            let measured = tokio::select! {
                r = lifecycle::cycles(&mut client, &prefix, config.nodes.len() as u32, shape) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            };
            bar.finish_and_clear();
            let mut client = gw.connect().await?;
            lifecycle::clean(&mut client, &prefix).await?;
            let Some(steps) = measured else {
                interrupted = true;
                break;
            };
            for (name, samples) in steps? {
                let r = ScenarioReport::of(name, shape, &samples);
                print_line(&r);
                report.scenarios.push(r);
            }
            continue;
        }
        let prepared = prepare(gw, scenario, config.nodes.len(), vectors.clone()).await?;
        let ramp = if shape.ramp.is_zero() {
            String::new()
        } else {
            format!("{} ramp, ", humantime::format_duration(shape.ramp))
        };
        eprintln!(
            "{}: {}, {ramp}{} warm-up, {} measured",
            scenario.name(),
            shape.describe(),
            humantime::format_duration(shape.warmup),
            humantime::format_duration(shape.duration)
        );
        let bar = progress(scenario, shape);
        let measured = tokio::select! {
            r = measure(gw, &prepared.job, prepared.record, shape) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        bar.finish_and_clear();
        remove(gw, prepared.created).await?;
        let Some(samples) = measured else {
            interrupted = true;
            break;
        };
        let mut r = ScenarioReport::of(scenario.name(), shape, &samples?);
        r.parameters = prepared
            .parameters
            .unwrap_or_else(|| vectors.parameters(scenario));
        print_line(&r);
        report.scenarios.push(r);
    }
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let page = out.join("report.html");
    std::fs::write(&page, html::page(&report))
        .with_context(|| format!("cannot write {}", page.display()))?;
    if interrupted {
        bail!(
            "interrupted: what was created is removed; the finished scenarios are in {}",
            path.display()
        );
    }
    println!("report: {} and {}", path.display(), page.display());
    Ok(())
}

/// The GPUs the cluster's nodes declared, as the gateway's node sees them.
async fn cluster_gpus(gw: &GatewayArgs) -> anyhow::Result<Vec<String>> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::Membership, "membership").await?;
    let m: arbor_proto::cluster::MembershipReport = parse_data(data, "membership")?;
    Ok(m.nodes
        .iter()
        .filter_map(|n| Some((n.id, n.info.as_ref()?)))
        .flat_map(|(id, info)| {
            info.resources
                .gpus
                .iter()
                .map(move |g| format!("node {id}: {}, {}", g.model, g.memory))
        })
        .collect())
}

/// One scenario's figures on one line.
fn print_line(r: &ScenarioReport) {
    println!(
        "{:<14} {:>10.1} /s   p50 {:>10.1} µs   p99 {:>10.1} µs   p99.9 {:>10.1} µs   errors {}",
        r.name,
        r.throughput_per_s,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.errors.values().sum::<u64>()
    );
}

/// A bar over the scenario's warm-up and measured time, on a terminal (indicatif draws
/// nothing elsewhere, where the lines printed before and after say enough).
fn progress(scenario: Scenario, shape: Shape) -> indicatif::ProgressBar {
    let total = shape.ramp + shape.warmup + shape.duration;
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{} {{wide_bar}} {{elapsed}} of {}",
        scenario.name(),
        humantime::format_duration(total)
    )) {
        bar.set_style(style);
    }
    let ticking = bar.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        while !ticking.is_finished() {
            ticking.set_position(start.elapsed().as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    bar
}

/// Removes what a scenario created.
async fn remove(gw: &GatewayArgs, created: Created) -> anyhow::Result<()> {
    if created.0.is_empty() {
        return Ok(());
    }
    let mut client = gw.connect().await?;
    for job in created.0 {
        run_job(&mut client, job, "removing what the bench created").await?;
    }
    Ok(())
}

/// A name no one else uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{prefix}-{nanos:x}")
}

/// What `scenario` needs, created.
async fn prepare(
    gw: &GatewayArgs,
    scenario: Scenario,
    nodes: usize,
    vectors: Vectors,
) -> anyhow::Result<Prepared> {
    match scenario {
        Scenario::IngestText | Scenario::QueryText | Scenario::Rag => {
            let name = unique("bench-text");
            let mut client = gw.connect().await?;
            let prepared = text::prepare(
                &mut client,
                scenario,
                name.clone(),
                nodes,
                vectors.documents,
            )
            .await;
            if prepared.is_err() {
                // Whatever of it was made before the failure.
                let _ = remove(gw, Created::default().collection(&name)).await;
            }
            prepared
        }
        // Their own steps, not one job under load (see `lifecycle` and `fault`).
        Scenario::Deploy | Scenario::KillNode | Scenario::KillLeader => {
            bail!("the {} scenario runs its own steps", scenario.name())
        }
        Scenario::Jobs => Ok(Prepared::same(JobSpec::Status, false)),
        Scenario::Control => Ok(Prepared::same(JobSpec::Status, true)),
        Scenario::Embed => {
            let texts = (0..8)
                .map(|i| format!("A short text to embed, number {i}, about clusters."))
                .collect();
            let job = JobSpec::Embed(EmbedJob {
                texts,
                deployment: None,
            });
            Ok(Prepared::same(job, false))
        }
        Scenario::Generate => {
            let job = JobSpec::Generate(GenerateJob {
                prompt: "Write one sentence about distributed systems.".into(),
                max_tokens: 16,
                deployment: None,
            });
            Ok(Prepared::same(job, false))
        }
        Scenario::Call => {
            let name = unique("bench-echo");
            let mut client = gw.connect().await?;
            run_job(&mut client, echo(&name, nodes as u32), "deploy").await?;
            let created = Created::default().deployment(&name);
            if let Err(e) = lifecycle::until_running(&mut client, &name, nodes as u32).await {
                remove(gw, created).await?;
                return Err(e);
            }
            let job = JobSpec::Call(CallJob {
                deployment: name,
                payload: "ping".into(),
            });
            Ok(Prepared {
                job: Arc::new(move |_| job.clone()),
                record: false,
                created,
                parameters: None,
            })
        }
        Scenario::QueryVector if vectors.collection.is_some() => {
            let name = vectors.collection.clone().unwrap_or_default();
            existing_collection(gw, name, &vectors).await
        }
        Scenario::IngestVectors | Scenario::QueryVector => {
            let name = unique("bench-vectors");
            let mut client = gw.connect().await?;
            let (embedder, mut created) = embedder(&mut client, &name).await?;
            let create = CreateCollectionJob {
                name: name.clone(),
                partitions: vectors.partitions.unwrap_or(nodes.max(1) as u32),
                replicas: vectors.replicas,
                embedder,
                dimension: vectors.dimension,
                metric: "cosine".into(),
                cpu: Some("100m".into()),
                memory: Some("256MiB".into()),
                coordinators: None,
                coordinator_cpu: None,
                coordinator_memory: None,
                model: None,
                index: Some(vectors.index),
                quantization: Some(vectors.quantization),
            };
            if let Err(e) = run_job(
                &mut client,
                JobSpec::CreateCollection(create),
                "create_collection",
            )
            .await
            {
                remove(gw, created).await?;
                return Err(e);
            }
            created = created.collection(&name);
            let dim = vectors.dimension as usize;
            let rows = move |collection: &str, n: u64| {
                let documents = (0..ROWS_PER_JOB)
                    .map(|i| row(n * ROWS_PER_JOB + i, dim))
                    .collect();
                JobSpec::Ingest(IngestJob {
                    collection: collection.to_owned(),
                    documents,
                })
            };
            if let Err(e) = first_write(&mut client, rows(&name, u64::MAX >> 33)).await {
                remove(gw, created).await?;
                return Err(e);
            }
            if scenario == Scenario::IngestVectors {
                let name = name.clone();
                return Ok(Prepared {
                    job: Arc::new(move |n| rows(&name, n)),
                    record: false,
                    created,
                    parameters: None,
                });
            }
            let jobs = vectors.rows.div_ceil(ROWS_PER_JOB);
            eprintln!(
                "query-vector: loading {} rows of {} dimensions",
                jobs * ROWS_PER_JOB,
                vectors.dimension
            );
            for n in 0..jobs {
                if let Err(e) = run_job(&mut client, rows(&name, n), "ingest").await {
                    remove(gw, created).await?;
                    return Err(e);
                }
            }
            let (k, filter, ef) = (vectors.k, vectors.filter, vectors.ef);
            Ok(Prepared {
                job: Arc::new(move |n| {
                    JobSpec::Query(QueryJob {
                        collection: name.clone(),
                        text: None,
                        vector: Some(unit_vector(n ^ 0x5eed, dim)),
                        k,
                        filter: filter.clone(),
                        ef,
                    })
                }),
                record: false,
                created,
                parameters: None,
            })
        }
    }
}

/// `query-vector` on `name`, a collection that exists already: random unit queries of its
/// dimension, with the report's parameters taken from the collection itself.
async fn existing_collection(
    gw: &GatewayArgs,
    name: String,
    vectors: &Vectors,
) -> anyhow::Result<Prepared> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::Collections, "collections").await?;
    let r: arbor_proto::results::CollectionsResult = parse_data(data, "collections")?;
    let Some(c) = r.collections.into_iter().find(|c| c.name == name) else {
        bail!("there is no collection {name} to query (`arbor collections` lists them)");
    };
    eprintln!(
        "query-vector: the existing collection {name} ({} dimensions, {} x {}, {} running)",
        c.dimension, c.partitions, c.replication, c.running
    );
    let parameters = json!({
        "collection": name, "dimension": c.dimension, "k": vectors.k,
        "filter": vectors.filter, "metric": c.metric, "search": c.index.kind(),
        "index": c.index, "quantization": c.quantization, "ef": vectors.ef,
        "partitions": c.partitions, "replicas": c.replication});
    let (k, filter, ef, dim) = (vectors.k, vectors.filter.clone(), vectors.ef, c.dimension);
    Ok(Prepared {
        job: Arc::new(move |n| {
            JobSpec::Query(QueryJob {
                collection: name.clone(),
                text: None,
                vector: Some(unit_vector(n ^ 0x5eed, dim as usize)),
                k,
                filter: filter.clone(),
                ef,
            })
        }),
        record: false,
        created: Created::default(),
        parameters: match parameters {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        },
    })
}

/// The embedder a bench collection names: the cluster's own when it has one, else one of
/// no replicas made for it (the rows bring their vectors, so it never embeds anything).
async fn embedder(
    client: &mut arbor_client::GatewayClient,
    collection: &str,
) -> anyhow::Result<(String, Created)> {
    let data = run_job(client, JobSpec::Deployments, "deployments").await?;
    let r: DeploymentsResult = parse_data(data, "deployments")?;
    if let Some(d) = r.deployments.iter().find(|d| d.kind == "embedder") {
        return Ok((d.name.clone(), Created::default()));
    }
    let name = format!("{collection}-embedder");
    let serde_json::Value::Object(deployment) =
        json!({"name": name, "kind": "embedder", "replicas": 0})
    else {
        unreachable!("a JSON object")
    };
    run_job(client, JobSpec::Deploy(DeployJob { deployment }), "deploy").await?;
    let created = Created::default().deployment(&name);
    Ok((name, created))
}

/// A deploy job for an `echo` of `replicas` small replicas spread over the nodes, whose calls
/// may be retried (what the bench's call, deploy and fault scenarios use).
fn echo(name: &str, replicas: u32) -> JobSpec {
    let serde_json::Value::Object(deployment) = json!({
        "name": name, "kind": "echo", "replicas": replicas, "strategy": "spread",
        "idempotent": true, "resources": {"cpu": "10m", "memory": "16MiB"}})
    else {
        unreachable!("a JSON object")
    };
    JobSpec::Deploy(DeployJob { deployment })
}

/// Runs `job`, a collection's first write, until it succeeds: it waits for the collection's
/// replicas to run (at most two minutes).
async fn first_write(client: &mut arbor_client::GatewayClient, job: JobSpec) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match run_job(client, job.clone(), "ingest").await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("the bench's collection never took a write"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Row `i`: a unit vector of `dim` values, the same for the same `i`, with the metadata a
/// `--filter` may select on: `bucket` (i % 10) and `even`.
fn row(i: u64, dim: usize) -> Document {
    let serde_json::Value::Object(metadata) =
        json!({"bucket": i % 10, "even": i.is_multiple_of(2)})
    else {
        unreachable!("a JSON object")
    };
    Document {
        id: format!("r{i}"),
        text: String::new(),
        title: None,
        metadata,
        vector: Some(unit_vector(i, dim)),
    }
}

/// A unit vector of `dim` values from a seed (xorshift: cheap, and the same everywhere).
fn unit_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v
        .iter()
        .map(|a| a * a)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|a| *a /= norm);
    v
}

/// Every connection's samples of `job` under `shape`.
async fn measure(
    gw: &GatewayArgs,
    job: &Arc<load::Jobs>,
    record: bool,
    shape: Shape,
) -> anyhow::Result<Vec<Sample>> {
    let from = Instant::now() + shape.ramp + shape.warmup;
    measure_from(gw, job, record, shape, from).await
}

/// [`measure`], its window starting at `from`.
async fn measure_from(
    gw: &GatewayArgs,
    job: &Arc<load::Jobs>,
    record: bool,
    shape: Shape,
    from: Instant,
) -> anyhow::Result<Vec<Sample>> {
    let mut clients = Vec::new();
    for _ in 0..shape.connections.max(1) {
        clients.push(gw.connect().await?);
    }
    let measure_from = from;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let job = job.clone();
            tokio::spawn(async move {
                let job = job.as_ref();
                load::drive(&mut client, i as u64, job, record, shape, measure_from).await
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.context("a load task failed")??);
    }
    samples.sort_by_key(|s| s.at);
    Ok(samples)
}

/// How `arbor bench local` makes its cluster.
pub struct LocalArgs {
    pub nodes: u64,
    /// Keep the cluster's data afterwards.
    pub keep: bool,
    /// Deployment files deployed (and waited for) before the scenarios.
    pub deploy: Vec<std::path::PathBuf>,
}

/// `arbor bench local`: the scenarios against a cluster of `args.nodes` processes started
/// for them in `out/cluster`, with `args.deploy` deployed first.
pub async fn local(
    args: LocalArgs,
    scenarios: &[Scenario],
    shape: Shape,
    vectors: Vectors,
    out: &Path,
) -> anyhow::Result<()> {
    let nodes = args.nodes;
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    // Checked before any node starts, so that a typo costs nothing.
    for file in &args.deploy {
        arbor_node::deployment_file::load(file)?;
    }
    eprintln!(
        "starting a local cluster of {nodes} nodes in {}",
        out.join("cluster").display()
    );
    let mut cluster = local::Local::start(&out.join("cluster"), nodes).await?;
    let gateway = cluster.gateway.clone();
    let outcome = async {
        for file in &args.deploy {
            eprintln!("deploying {}", file.display());
            let wait = crate::flags::WaitArgs {
                wait: true,
                timeout: Duration::from_secs(600),
            };
            super::admin::deploy(&gateway, file, wait).await?;
        }
        run(&gateway, scenarios, shape, vectors, out, Some(&mut cluster)).await
    }
    .await;
    cluster.stop(args.keep).await;
    outcome
}

/// `arbor bench compare OLD NEW [MORE...]`: each report after the first against the first;
/// with `html`, all of them side by side on one page. Exit status 1 on a regression when
/// `fail` says so.
pub fn compare_files(
    paths: &[std::path::PathBuf],
    threshold_percent: f64,
    fail: bool,
    html: Option<&Path>,
) -> anyhow::Result<()> {
    let reports = paths
        .iter()
        .map(|p| Report::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((base, others)) = reports.split_first() else {
        bail!("compare needs two reports or more");
    };
    let mut regressions = 0;
    for (other, path) in others.iter().zip(&paths[1..]) {
        let changes = compare::compare(base, other, threshold_percent);
        if changes.is_empty() {
            bail!(
                "{} and {} have no scenario in common",
                paths[0].display(),
                path.display()
            );
        }
        print!("{}", compare::table(base, other, &changes));
        regressions += changes.iter().filter(|c| c.regression).count();
    }
    if let Some(file) = html {
        std::fs::write(file, html::side_by_side(&reports))
            .with_context(|| format!("cannot write {}", file.display()))?;
        println!("side by side: {}", file.display());
    }
    if regressions > 0 {
        println!("{regressions} figure(s) worse by more than {threshold_percent}%");
        if fail {
            bail!("{regressions} regression(s) beyond {threshold_percent}%");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_the_same_in_every_language() {
        // benches/peers/run.py makes these vectors too (so FAISS and hnswlib search what arbor
        // searches): the values its `unit_vector` gives for the same seeds.
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-7);
        let v = unit_vector(1, 4);
        assert!(
            close(
                &v,
                &[0.737_888_9, -0.216_773_73, -0.039_811_71, -0.637_921_7]
            ),
            "{v:?}"
        );
        let q = unit_vector(12345 ^ 0x5eed, 3);
        assert!(
            close(&q, &[-0.953_812_96, 0.097_838_96, 0.284_021_74]),
            "{q:?}"
        );
        let r = row(13, 2);
        assert_eq!(r.metadata["bucket"], 3);
        assert_eq!(r.metadata["even"], false);
    }
}
