//! `arbor bench run SCENARIO... --out DIR` against a running cluster, through its gateway, and
//! `arbor bench compare OLD NEW`.
//!
//! A scenario creates what it needs under a name of its own and removes it afterwards, even
//! when interrupted (ctrl-c ends the run cleanly and writes the report of the scenarios that
//! finished). Load ([`load`]) runs on `--connections` connections: a closed loop of
//! `--in-flight` jobs each, or an open loop at `--rate` jobs/s; a `--warmup` that is not
//! measured, then `--duration` that is. The figures go to `DIR/report.json` ([`report`]).

pub mod compare;
pub mod html;
pub mod load;
pub mod report;

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use arbor_node::ClusterConfig;
use arbor_proto::gateway::{CallJob, DeployJob, JobSpec, NameJob};
use arbor_proto::results::DeploymentsResult;
use serde_json::json;
use tokio::time::Instant;

use super::{GatewayArgs, parse_data, run_job};
use load::{Sample, Shape};
use report::{Machine, Report, SCHEMA, ScenarioReport};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `status` jobs: the gateway's own round trip (role reader).
    Jobs,
    /// `call` jobs to an `echo` deployment with a replica per node, which the scenario
    /// deploys and removes (role admin).
    Call,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Jobs => "jobs",
            Scenario::Call => "call",
        }
    }
}

/// What a scenario set up, to be removed afterwards.
struct Prepared {
    job: JobSpec,
    deployment: Option<String>,
}

/// `arbor bench run`.
pub async fn run(
    gw: &GatewayArgs,
    scenarios: &[Scenario],
    shape: Shape,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = ClusterConfig::load(&gw.config)?;
    let mut report = Report {
        schema: SCHEMA.into(),
        arbor: env!("CARGO_PKG_VERSION").into(),
        started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: Machine::here(),
        nodes: config.nodes.len(),
        scenarios: Vec::new(),
    };
    let path = out.join("report.json");
    let mut interrupted = false;
    for &scenario in scenarios {
        let prepared = prepare(gw, scenario, config.nodes.len()).await?;
        let loop_shape = match shape.rate {
            Some(rate) => format!("open loop at {rate} jobs/s"),
            None => format!("{} in flight each", shape.in_flight),
        };
        eprintln!(
            "{}: {} connections, {loop_shape}, {} warm-up, {} measured",
            scenario.name(),
            shape.connections,
            humantime::format_duration(shape.warmup),
            humantime::format_duration(shape.duration)
        );
        let bar = progress(scenario, shape);
        let measured = tokio::select! {
            r = measure(gw, &prepared.job, shape) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        bar.finish_and_clear();
        if let Some(name) = prepared.deployment {
            let mut client = gw.connect().await?;
            run_job(&mut client, JobSpec::Undeploy(NameJob { name }), "undeploy").await?;
        }
        let Some(samples) = measured else {
            interrupted = true;
            break;
        };
        let r = ScenarioReport::of(scenario.name(), shape, &samples?);
        println!(
            "{:<8} {:>10.0} jobs/s   p50 {:>9.1} µs   p99 {:>9.1} µs   p99.9 {:>9.1} µs   errors {}",
            r.name,
            r.throughput_per_s,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.errors.values().sum::<u64>()
        );
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

/// A bar over the scenario's warm-up and measured time, on a terminal (indicatif draws
/// nothing elsewhere, where the lines printed before and after say enough).
fn progress(scenario: Scenario, shape: Shape) -> indicatif::ProgressBar {
    let total = shape.warmup + shape.duration;
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

/// What `scenario` needs, created.
async fn prepare(gw: &GatewayArgs, scenario: Scenario, nodes: usize) -> anyhow::Result<Prepared> {
    match scenario {
        Scenario::Jobs => Ok(Prepared {
            job: JobSpec::Status,
            deployment: None,
        }),
        Scenario::Call => {
            let unique = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let name = format!("bench-echo-{unique:x}");
            let serde_json::Value::Object(deployment) = json!({
                "name": name, "kind": "echo", "replicas": nodes, "strategy": "spread",
                "idempotent": true, "resources": {"cpu": "100m", "memory": "64MiB"}})
            else {
                unreachable!("a JSON object")
            };
            let mut client = gw.connect().await?;
            run_job(
                &mut client,
                JobSpec::Deploy(DeployJob { deployment }),
                "deploy",
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let data = run_job(&mut client, JobSpec::Deployments, "deployments").await?;
                let r: DeploymentsResult = parse_data(data, "deployments")?;
                let d = r.deployments.iter().find(|d| d.name == name);
                if d.is_some_and(|d| d.running == d.desired) {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = run_job(
                        &mut client,
                        JobSpec::Undeploy(NameJob { name: name.clone() }),
                        "undeploy",
                    )
                    .await;
                    bail!(
                        "the bench's echo deployment did not run in 60 s: {}",
                        d.and_then(|d| d.pending_reason.clone())
                            .unwrap_or_else(|| "no reason given".into())
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Prepared {
                job: JobSpec::Call(CallJob {
                    deployment: name.clone(),
                    payload: "ping".into(),
                }),
                deployment: Some(name),
            })
        }
    }
}

/// Every connection's samples of `job` under `shape`.
async fn measure(gw: &GatewayArgs, job: &JobSpec, shape: Shape) -> anyhow::Result<Vec<Sample>> {
    let mut clients = Vec::new();
    for _ in 0..shape.connections.max(1) {
        clients.push(gw.connect().await?);
    }
    let measure_from = Instant::now() + shape.warmup;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let job = job.clone();
            tokio::spawn(async move { load::drive(&mut client, &job, shape, measure_from).await })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.context("a load task failed")??);
    }
    samples.sort_by_key(|s| s.at);
    Ok(samples)
}

/// `arbor bench compare OLD NEW`: exit status 1 on a regression when `fail` says so.
pub fn compare_files(
    old: &Path,
    new: &Path,
    threshold_percent: f64,
    fail: bool,
) -> anyhow::Result<()> {
    let (old_report, new_report) = (Report::read(old)?, Report::read(new)?);
    let changes = compare::compare(&old_report, &new_report, threshold_percent);
    if changes.is_empty() {
        bail!(
            "{} and {} have no scenario in common",
            old.display(),
            new.display()
        );
    }
    print!("{}", compare::table(&changes));
    let regressions = changes.iter().filter(|c| c.regression).count();
    if regressions > 0 {
        println!("{regressions} figure(s) worse by more than {threshold_percent}%");
        if fail {
            bail!("{regressions} regression(s) beyond {threshold_percent}%");
        }
    }
    Ok(())
}
