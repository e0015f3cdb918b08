//! `arbor deploy|scale|rollback|undeploy|deployments|collection create|collection
//! delete|collections`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};

use super::{GatewayArgs, parse_data, run_job};
use crate::flags::WaitArgs;
use arbor_client::GatewayClient;
use arbor_node::deployment_file;
use arbor_proto::gateway::{
    CreateCollectionJob, DeployJob, JobSpec, NameJob, PromoteStaleJob, ScaleJob,
};
use arbor_proto::results::{
    CollectionCreated, CollectionReport, CollectionsResult, DeployChange, DeployResult,
    DeploymentReport, DeploymentsResult,
};

/// A deployment file as the JSON object a `deploy` job carries: JSON when the name ends in
/// `.json`, TOML otherwise (as `deployment_file` reads it).
pub fn deployment_object(path: &Path, text: &str) -> anyhow::Result<Map<String, Value>> {
    let json = path.extension().is_some_and(|e| e == "json");
    if json {
        serde_json::from_str(text).with_context(|| format!("{}: not a JSON object", path.display()))
    } else {
        toml::from_str(text).with_context(|| format!("{}: not valid TOML", path.display()))
    }
}

/// `arbor deploy -f FILE [--wait]`.
pub async fn deploy(gw: &GatewayArgs, file: &Path, wait: WaitArgs) -> anyhow::Result<()> {
    // Checked here first, so that a typo is reported before any connection.
    deployment_file::load(file)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let deployment = deployment_object(file, &text)?;
    let job = JobSpec::Deploy(DeployJob { deployment });
    change(gw, job, "deploy", wait).await
}

/// `arbor scale NAME N [--wait]`.
pub async fn scale(
    gw: &GatewayArgs,
    name: String,
    replicas: u32,
    wait: WaitArgs,
) -> anyhow::Result<()> {
    change(
        gw,
        JobSpec::Scale(ScaleJob { name, replicas }),
        "scale",
        wait,
    )
    .await
}

/// `arbor rollback NAME [--wait]`.
pub async fn rollback(gw: &GatewayArgs, name: String, wait: WaitArgs) -> anyhow::Result<()> {
    change(gw, JobSpec::Rollback(NameJob { name }), "rollback", wait).await
}

/// Runs a job that changes a deployment, says what changed and, with `--wait`, follows the
/// rollout to its end.
async fn change(gw: &GatewayArgs, job: JobSpec, what: &str, wait: WaitArgs) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, job, what).await?;
    let r: DeployResult = parse_data(data, what)?;
    let change = match r.change {
        DeployChange::Created => "created",
        DeployChange::Updated => "updated (rolling its replicas)",
        DeployChange::Scaled => "scaled (no replica restarted)",
        DeployChange::Unchanged => "unchanged",
    };
    if !wait.wait {
        println!(
            "deployment {} {change}, revision {}; watch it with `arbor deployments`",
            r.name, r.revision
        );
        return Ok(());
    }
    println!("deployment {} {change}, revision {}", r.name, r.revision);
    follow_rollout(&mut client, &r.name, r.revision, wait.timeout).await
}

/// How far a deployment's rollout to `revision` has come. Pure.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    /// Every replica runs `revision`.
    Done,
    /// A replica of `revision` failed, or the deployment is gone.
    Failed(String),
    Progress {
        running: u32,
        desired: u32,
    },
}

pub fn rollout(report: Option<&DeploymentReport>, name: &str, revision: u64) -> Rollout {
    let Some(d) = report else {
        return Rollout::Failed(format!("deployment {name} was deleted"));
    };
    if d.revision != revision {
        return Rollout::Failed(format!(
            "deployment {name} moved on to revision {} meanwhile",
            d.revision
        ));
    }
    if let Some(r) = d
        .replicas
        .iter()
        .find(|r| r.state == "failed" && r.revision == Some(revision))
    {
        let why = r.reason.as_deref().unwrap_or("no reason given");
        return Rollout::Failed(format!("replica {name}/{} failed: {why}", r.replica));
    }
    let running = d
        .replicas
        .iter()
        .filter(|r| r.state == "running" && r.revision == Some(revision))
        .count() as u32;
    if running == d.desired {
        Rollout::Done
    } else {
        Rollout::Progress {
            running,
            desired: d.desired,
        }
    }
}

/// Prints a line each time the rollout moves, until it is done, fails or times out.
async fn follow_rollout(
    client: &mut GatewayClient,
    name: &str,
    revision: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = None;
    loop {
        let data = run_job(client, JobSpec::Deployments, "deployments").await?;
        let r: DeploymentsResult = parse_data(data, "deployments")?;
        let report = r.deployments.iter().find(|d| d.name == name);
        let pending = report.and_then(|d| d.pending_reason.clone());
        match rollout(report, name, revision) {
            Rollout::Done => {
                let n = report.map_or(0, |d| d.desired);
                println!("deployment {name}: all {n} replicas run revision {revision}");
                return Ok(());
            }
            Rollout::Failed(why) => anyhow::bail!("rollout of {name} failed: {why}"),
            Rollout::Progress { running, desired } => {
                let line = format!(
                    "deployment {name}: {running}/{desired} replicas run revision {revision}{}",
                    pending
                        .as_ref()
                        .map_or(String::new(), |why| format!(" (waiting: {why})"))
                );
                if shown.as_ref() != Some(&line) {
                    println!("{line}");
                    shown = Some(line);
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "rollout of {name} did not finish in {}: {running}/{desired} replicas \
                         run revision {revision}{}",
                        humantime::format_duration(timeout),
                        pending.map_or(String::new(), |why| format!("; {why}"))
                    );
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// `arbor undeploy NAME`.
pub async fn undeploy(gw: &GatewayArgs, name: String) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    run_job(
        &mut client,
        JobSpec::Undeploy(NameJob { name: name.clone() }),
        "undeploy",
    )
    .await?;
    println!("deployment {name} deleted; its replicas are stopping");
    Ok(())
}

/// `arbor deployments [--json]`.
pub async fn deployments(gw: &GatewayArgs, json: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::Deployments, "deployments").await?;
    let r: DeploymentsResult = parse_data(data, "deployments")?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", deployments_table(&r.deployments));
    }
    Ok(())
}

/// `arbor collection create`.
pub async fn create_collection(gw: &GatewayArgs, job: CreateCollectionJob) -> anyhow::Result<()> {
    let (name, partitions, replicas) = (job.name.clone(), job.partitions, job.replicas);
    let mut client = gw.connect().await?;
    let data = run_job(
        &mut client,
        JobSpec::CreateCollection(job),
        "create_collection",
    )
    .await?;
    let created: CollectionCreated = parse_data(data, "create_collection")?;
    let coordinator = match &created.coordinator {
        Some(c) => format!(", served by its coordinator deployment {c}"),
        None => ", with no coordinator of its own (deploy one whose config names it)".into(),
    };
    println!(
        "collection {name} created: {partitions} partitions x {replicas} replicas{coordinator}; watch them with `arbor collections`"
    );
    Ok(())
}

/// `arbor collection delete NAME`.
pub async fn delete_collection(gw: &GatewayArgs, name: String) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    run_job(
        &mut client,
        JobSpec::DeleteCollection(NameJob { name: name.clone() }),
        "delete_collection",
    )
    .await?;
    println!("collection {name} deleted");
    Ok(())
}

/// `arbor collection promote-stale NAME PARTITION --replica N`.
pub async fn promote_stale(
    gw: &GatewayArgs,
    collection: String,
    partition: u32,
    replica: u32,
) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(
        &mut client,
        JobSpec::PromoteStale(PromoteStaleJob {
            collection: collection.clone(),
            partition,
            replica,
        }),
        "promote_stale",
    )
    .await?;
    println!(
        "replica {replica} is now the primary of partition {partition} of {collection}: {}",
        data["lost"]
            .as_str()
            .unwrap_or("what the lost replicas held is gone")
    );
    Ok(())
}

/// `arbor collections [--json]`.
pub async fn collections(gw: &GatewayArgs, json: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::Collections, "collections").await?;
    let r: CollectionsResult = parse_data(data, "collections")?;
    if json {
        println!("{}", serde_json::json!({ "collections": r.collections }));
    } else {
        print!("{}", collections_table(&r.collections));
    }
    Ok(())
}

/// `arbor collections` as text.
pub fn collections_table(list: &[CollectionReport]) -> String {
    if list.is_empty() {
        return "no collections; create one with `arbor collection create`\n".into();
    }
    let mut out = String::new();
    for c in list {
        let index = match c.index {
            arbor_proto::IndexSpec::Exact => "exact".to_owned(),
            arbor_proto::IndexSpec::Hnsw(h) => format!(
                "hnsw(m={},ef_construction={},ef_search={})",
                h.m, h.ef_construction, h.ef_search
            ),
        };
        let _ = writeln!(
            out,
            "{}  dim={} metric={} index={index} quantization={} partitions={} replicas={} \
             embedder={}  running {}/{}",
            c.name,
            c.dimension,
            c.metric,
            c.quantization.as_str(),
            c.partitions,
            c.replication,
            c.embedder,
            c.running,
            c.partitions * c.replication
        );
        for set in &c.replica_sets {
            let primary = set
                .primary
                .map_or("none (every in-sync replica is gone)".to_owned(), |p| {
                    p.to_string()
                });
            let _ = writeln!(
                out,
                "  p{}  epoch {}  primary {primary}  in sync {:?}",
                set.partition, set.epoch, set.in_sync
            );
        }
    }
    out
}

/// `arbor deployments` as a table.
pub fn deployments_table(reports: &[DeploymentReport]) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no deployments; create one with `arbor deploy -f FILE`\n");
        return out;
    }
    for d in reports {
        let _ = writeln!(
            out,
            "{}  kind={}  version={:?} (revision {})  running {}/{}",
            d.name, d.kind, d.version, d.revision, d.running, d.desired
        );
        for r in &d.replicas {
            let node = r.node.map_or("-".to_owned(), |n| format!("node {n}"));
            let devices = if r.devices.is_empty() {
                String::new()
            } else {
                format!("  gpus {:?}", r.devices)
            };
            let reason = r
                .reason
                .as_ref()
                .map_or(String::new(), |why| format!("  ({why})"));
            let _ = writeln!(
                out,
                "  {}/{:<4} {:<8} {:<9}{devices}{reason}",
                d.name, r.replica, node, r.state
            );
        }
        if let Some(a) = &d.autoscaling {
            let _ = writeln!(
                out,
                "  autoscaling: {}-{} replicas, target {} requests in flight each, now {:.1}",
                a.min_replicas, a.max_replicas, a.target_ongoing_requests, a.ongoing_requests
            );
        }
        if let Some(why) = &d.pending_reason {
            let _ = writeln!(out, "  pending: {why}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_files_become_json_objects() {
        let toml = "name = \"echo\"\nkind = \"echo\"\nreplicas = 2\n[config]\nstart_delay_ms = 5\n";
        let m = deployment_object(Path::new("echo.toml"), toml).unwrap();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"name": "echo", "kind": "echo", "replicas": 2,
                               "config": {"start_delay_ms": 5}})
        );
        let m = deployment_object(Path::new("e.json"), r#"{"name":"e","replicas":1}"#).unwrap();
        assert_eq!(m["replicas"], 1);
        let e = deployment_object(Path::new("e.json"), "[1]").unwrap_err();
        assert!(format!("{e:#}").contains("e.json"), "{e:#}");
    }

    #[test]
    fn deploy_results_parse() {
        let r: DeployResult = parse_data(
            serde_json::json!({"name": "echo", "revision": 3, "change": "updated"}),
            "deploy",
        )
        .unwrap();
        assert_eq!((r.revision, r.change), (3, DeployChange::Updated));
        let e = parse_data::<DeployResult>(serde_json::json!({"name": "x"}), "deploy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("deploy result"), "{e}");
    }

    #[test]
    fn a_rollout_is_done_when_every_replica_runs_its_revision() {
        use arbor_proto::results::ReplicaReport;
        let replica = |i: u32, state: &str, revision: u64| ReplicaReport {
            replica: i,
            node: Some(1),
            state: state.into(),
            reason: (state == "failed").then(|| "disk on fire".into()),
            devices: vec![],
            generation: Some(u64::from(i)),
            revision: Some(revision),
        };
        let report = |replicas: Vec<ReplicaReport>| DeploymentReport {
            name: "e".into(),
            kind: "echo".into(),
            version: String::new(),
            revision: 2,
            desired: replicas.len() as u32,
            running: 0,
            replicas,
            pending_reason: None,
            autoscaling: None,
        };
        let d = report(vec![replica(0, "running", 2), replica(1, "running", 1)]);
        assert_eq!(
            rollout(Some(&d), "e", 2),
            Rollout::Progress {
                running: 1,
                desired: 2
            }
        );
        let d = report(vec![replica(0, "running", 2), replica(1, "running", 2)]);
        assert_eq!(rollout(Some(&d), "e", 2), Rollout::Done);
        // An old replica that failed is being replaced; a new one that failed ends it.
        let d = report(vec![replica(0, "failed", 1), replica(1, "running", 2)]);
        assert!(matches!(
            rollout(Some(&d), "e", 2),
            Rollout::Progress { .. }
        ));
        let d = report(vec![replica(0, "failed", 2), replica(1, "running", 2)]);
        assert_eq!(
            rollout(Some(&d), "e", 2),
            Rollout::Failed("replica e/0 failed: disk on fire".into())
        );
        assert!(
            matches!(rollout(Some(&d), "e", 1), Rollout::Failed(why) if why.contains("revision 2"))
        );
        assert!(matches!(rollout(None, "e", 2), Rollout::Failed(why) if why.contains("deleted")));
    }

    #[test]
    fn collections_print_one_line_each() {
        assert!(collections_table(&[]).contains("arbor collection create"));
        let c = CollectionReport {
            name: "docs".into(),
            dimension: 384,
            metric: "cosine".into(),
            partitions: 2,
            replication: 2,
            embedder: "minilm".into(),
            index: arbor_proto::IndexSpec::Hnsw(Default::default()),
            quantization: arbor_proto::Quantization::Int8,
            running: 3,
            replica_sets: vec![],
        };
        let t = collections_table(&[c]);
        assert!(
            t.starts_with("docs  dim=384") && t.contains("running 3/4"),
            "{t}"
        );
        assert!(
            t.contains("index=hnsw(m=16,ef_construction=128,ef_search=64) quantization=int8"),
            "{t}"
        );
    }
}
