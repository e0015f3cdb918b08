//! `arbor deploy|undeploy|deployments|collection create|collection delete|collections`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};

use super::{GatewayArgs, parse_data, run_job};
use arbor_node::deployment_file;
use arbor_proto::gateway::{CreateCollectionJob, DeployJob, JobSpec, NameJob, PromoteStaleJob};
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

/// `arbor deploy -f FILE`.
pub async fn deploy(gw: &GatewayArgs, file: &Path) -> anyhow::Result<()> {
    // Checked here first, so that a typo is reported before any connection.
    deployment_file::load(file)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let deployment = deployment_object(file, &text)?;
    let mut client = gw.connect().await?;
    let data = run_job(
        &mut client,
        JobSpec::Deploy(DeployJob { deployment }),
        "deploy",
    )
    .await?;
    let r: DeployResult = parse_data(data, "deploy")?;
    let what = match r.change {
        DeployChange::Created => "created",
        DeployChange::Updated => "updated (rolling its replicas)",
        DeployChange::Unchanged => "unchanged",
    };
    println!(
        "deployment {} {what}, revision {}; watch it with `arbor deployments`",
        r.name, r.revision
    );
    Ok(())
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
        let _ = writeln!(
            out,
            "{}  dim={} metric={} partitions={} replicas={} embedder={}  running {}/{}",
            c.name,
            c.dimension,
            c.metric,
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
    fn collections_print_one_line_each() {
        assert!(collections_table(&[]).contains("arbor collection create"));
        let c = CollectionReport {
            name: "docs".into(),
            dimension: 384,
            metric: "cosine".into(),
            partitions: 2,
            replication: 2,
            embedder: "minilm".into(),
            running: 3,
            replica_sets: vec![],
        };
        let t = collections_table(&[c]);
        assert!(
            t.starts_with("docs  dim=384") && t.contains("running 3/4"),
            "{t}"
        );
    }
}
