//! The `deploy` scenario: how long a deployment takes to have all its replicas running, as a
//! user sees it through the gateway (the control plane's commit, the reconciler's placement,
//! each agent's start and report). In cycles for as long as the run lasts: deploy an `echo`
//! with a replica per node, scale it to twice that, back down, then undeploy it. Each step is
//! one sample of its own scenario: `deploy`, `scale-up`, `scale-down`.

use std::time::Duration;

use anyhow::bail;
use arbor_client::GatewayClient;
use arbor_proto::gateway::{JobSpec, NameJob, ScaleJob};
use arbor_proto::results::DeploymentsResult;
use tokio::time::Instant;

use super::load::{Sample, Shape};
use super::{parse_data, run_job};

/// How often the deployment is looked at while a step runs.
const POLL: Duration = Duration::from_millis(25);
/// A step that takes longer fails the run.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// The samples of each step, by scenario name. Deployments are named `{prefix}-{n}`: what a
/// cancelled run leaves is found by that prefix.
pub async fn cycles(
    client: &mut GatewayClient,
    prefix: &str,
    nodes: u32,
    shape: Shape,
) -> anyhow::Result<Vec<(&'static str, Vec<Sample>)>> {
    let measure_from = Instant::now() + shape.warmup;
    let until = measure_from + shape.duration;
    let mut steps: Vec<(&'static str, Vec<Sample>)> = vec![
        ("deploy", vec![]),
        ("scale-up", vec![]),
        ("scale-down", vec![]),
    ];
    let n = nodes.max(1);
    let mut cycle = 0u64;
    while Instant::now() < until {
        let name = format!("{prefix}-{cycle}");
        cycle += 1;
        let plan = [
            (0, super::echo(&name, n), n),
            (
                1,
                JobSpec::Scale(ScaleJob {
                    name: name.clone(),
                    replicas: 2 * n,
                }),
                2 * n,
            ),
            (
                2,
                JobSpec::Scale(ScaleJob {
                    name: name.clone(),
                    replicas: n,
                }),
                n,
            ),
        ];
        for (step, job, replicas) in plan {
            let started = Instant::now();
            run_job(client, job, steps[step].0).await?;
            until_running(client, &name, replicas).await?;
            let ended = Instant::now();
            if ended >= measure_from && ended <= until {
                steps[step].1.push(Sample {
                    at: ended - measure_from,
                    latency: ended - started,
                    error: None,
                });
            }
        }
        run_job(client, JobSpec::Undeploy(NameJob { name }), "undeploy").await?;
    }
    Ok(steps)
}

/// Waits until deployment `name` has exactly `replicas` replicas, all running.
pub(crate) async fn until_running(
    client: &mut GatewayClient,
    name: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let data = run_job(client, JobSpec::Deployments, "deployments").await?;
        let r: DeploymentsResult = parse_data(data, "deployments")?;
        let d = r.deployments.iter().find(|d| d.name == name);
        if d.is_some_and(|d| d.desired == replicas && d.running == replicas) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "deployment {name} did not have {replicas} replicas running in {}: {}",
                humantime::format_duration(STEP_LIMIT),
                d.and_then(|d| d.pending_reason.clone())
                    .unwrap_or_else(|| "no reason given".into())
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Removes what a cancelled run left: deployments named with `prefix`.
pub async fn clean(client: &mut GatewayClient, prefix: &str) -> anyhow::Result<()> {
    let data = run_job(client, JobSpec::Deployments, "deployments").await?;
    let r: DeploymentsResult = parse_data(data, "deployments")?;
    for d in r.deployments {
        if d.name.starts_with(prefix) {
            run_job(
                client,
                JobSpec::Undeploy(NameJob { name: d.name }),
                "undeploy",
            )
            .await?;
        }
    }
    Ok(())
}
