//! `kill-node` (with `arbor bench local` only: it kills one of the cluster's processes): calls
//! to an echo deployment with two replicas per node, under load, while the last node is
//! SIGKILLed a third of the way into the measured window. The clients' errors and latency
//! around the kill are the scenario's figures and series; the fault records how long until
//! every replica ran again on the nodes left. The node is started again afterwards.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use arbor_proto::gateway::{CallJob, JobSpec, NameJob};
use arbor_proto::results::DeploymentsResult;
use tokio::time::Instant;

use super::load::Shape;
use super::local::Local;
use super::report::{Fault, ScenarioReport};
use super::{echo, lifecycle, measure_from, parse_data, run_job, unique};
use crate::flags::GatewayArgs;

/// How long the replicas may take to run elsewhere before the scenario fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

pub async fn kill_node(
    gw: &GatewayArgs,
    cluster: &mut Local,
    shape: Shape,
) -> anyhow::Result<ScenarioReport> {
    let nodes = cluster.size();
    if nodes < 2 {
        bail!("kill-node needs at least 2 nodes (--nodes)");
    }
    // The clients' gateway is node 1's (the first of cluster.toml): the last node goes.
    let victim = nodes;
    let name = unique("bench-kill");
    let mut client = gw.connect().await?;
    run_job(&mut client, echo(&name, 2 * nodes as u32), "deploy").await?;
    let outcome = under_load(gw, cluster, &mut client, &name, victim, shape).await;
    let undeployed = run_job(
        &mut gw.connect().await?,
        JobSpec::Undeploy(NameJob { name }),
        "undeploy",
    )
    .await;
    let report = outcome?;
    undeployed?;
    Ok(report)
}

async fn under_load(
    gw: &GatewayArgs,
    cluster: &mut Local,
    client: &mut arbor_client::GatewayClient,
    name: &str,
    victim: u64,
    shape: Shape,
) -> anyhow::Result<ScenarioReport> {
    let nodes = cluster.size() as u32;
    lifecycle::until_running(client, name, 2 * nodes).await?;
    let job = JobSpec::Call(CallJob {
        deployment: name.to_owned(),
        payload: "ping".into(),
    });
    let jobs: Arc<super::load::Jobs> = Arc::new(move |_| job.clone());
    let from = Instant::now() + shape.ramp + shape.warmup;
    let load = tokio::spawn({
        let gw = gw.clone();
        async move { measure_from(&gw, &jobs, false, shape, from).await }
    });
    tokio::time::sleep_until(from + shape.duration / 3).await;
    let killed = Instant::now();
    cluster.kill(victim).await?;
    let recovered = loop {
        let data = run_job(client, JobSpec::Deployments, "deployments").await?;
        let r: DeploymentsResult = parse_data(data, "deployments")?;
        let back = r
            .deployments
            .iter()
            .find(|d| d.name == name)
            .is_some_and(|d| {
                d.running == d.desired && d.replicas.iter().all(|r| r.node != Some(victim))
            });
        if back {
            break killed.elapsed();
        }
        if killed.elapsed() > RECOVERY_LIMIT {
            bail!("the replicas of node {victim} did not run elsewhere in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let samples = load.await??;
    cluster.restart(victim).await?;
    let mut report = ScenarioReport::of("kill-node", shape, &samples);
    report.fault = Some(Fault::new(
        format!("SIGKILL node {victim}"),
        killed.saturating_duration_since(from),
        recovered,
        &samples,
    ));
    Ok(report)
}

/// `kill-leader` (with `arbor bench local` only): recorded `status` jobs (each a committed
/// write) one after another from a node that does not lead, while the Raft leader is
/// SIGKILLed a third of the way into the window. The fault records the time from the kill to
/// the first commit after it (a new leader elected and serving); the leader is started again
/// afterwards.
pub async fn kill_leader(
    gw: &GatewayArgs,
    cluster: &mut Local,
    shape: Shape,
) -> anyhow::Result<ScenarioReport> {
    if cluster.size() < 3 {
        bail!("kill-leader needs at least 3 nodes (--nodes), so that a majority remains");
    }
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::ClusterStatus, "cluster_status").await?;
    let status: arbor_proto::cluster::ClusterStatus = parse_data(data, "cluster_status")?;
    let Some(leader) = status.leader else {
        bail!("the cluster has no leader to kill");
    };
    // The jobs go to a node that stays.
    let config = arbor_node::ClusterConfig::load(&gw.config)?;
    let addrs: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.gateway)
        .collect();
    let trust = super::super::trust(&config)?;
    let token = gw.token()?.to_owned();
    let connect = || {
        arbor_client::GatewayClient::connect(
            &addrs,
            &trust,
            &token,
            arbor_client::DEFAULT_PER_NODE_TIMEOUT,
        )
    };
    let mut probe = connect().await?;
    let jobs: Arc<super::load::Jobs> = Arc::new(|_| JobSpec::Status);
    let one = Shape {
        connections: 1,
        in_flight: 1,
        ..shape
    };
    let from = Instant::now() + shape.ramp + shape.warmup;
    let load = tokio::spawn(async move {
        super::load::drive(&mut probe, 0, jobs.as_ref(), true, one, from).await
    });
    tokio::time::sleep_until(from + shape.duration / 3).await;
    let killed = Instant::now();
    cluster.kill(leader).await?;
    let samples = load.await??;
    let killed_at = killed.saturating_duration_since(from);
    let in_window = samples
        .iter()
        .find(|s| s.error.is_none() && s.at > killed_at)
        .map(|s| s.at - killed_at);
    // An election can outlast a short window (a busy machine, an unlucky timeout): then the
    // first commit is awaited after it, so the figure is the recovery, not the window's end.
    let recovered = match in_window {
        Some(after) => after,
        None => first_commit_after(&mut connect().await?, killed, leader).await?,
    };
    cluster.restart(leader).await?;
    let mut report = ScenarioReport::of("kill-leader", one, &samples);
    report.fault = Some(Fault::new(
        format!("SIGKILL the Raft leader, node {leader}"),
        killed_at,
        recovered,
        &samples,
    ));
    Ok(report)
}

/// Sends recorded `status` jobs until one commits: the time from `killed` to that commit.
async fn first_commit_after(
    client: &mut arbor_client::GatewayClient,
    killed: Instant,
    leader: u64,
) -> anyhow::Result<Duration> {
    loop {
        if commit(client).await.is_ok() {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > RECOVERY_LIMIT {
            bail!("no write committed in 60 s after the leader (node {leader}) was killed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One recorded `status` job, to its end.
async fn commit(client: &mut arbor_client::GatewayClient) -> anyhow::Result<()> {
    let (id, reference) = client.submit_with(JobSpec::Status, true).await?;
    let watch = &mut arbor_client::JobWatch::new(id, Some(reference));
    client.follow(watch, |_| {}).await?.into_data()?;
    Ok(())
}
