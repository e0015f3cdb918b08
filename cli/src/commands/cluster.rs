//! `arbor status`, `arbor cluster status|add-node|remove-node`, `arbor node drain|undrain` and
//! `arbor call`: jobs on any node's gateway, like every other command. The machine they run
//! on needs a token (reader for the two status commands, admin for changes, user for call),
//! never the cluster secret.

use arbor_proto::NodeId;
use arbor_proto::cluster::{ClusterStatus, MembershipOutcome, MembershipReport};
use arbor_proto::gateway::{CallJob, JobSpec, NodeJob};

use super::{GatewayArgs, parse_data, run_job};

/// `arbor status [--json]`.
pub async fn status(gw: &GatewayArgs, json: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::Membership, "status").await?;
    let report: MembershipReport = parse_data(data, "status")?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&super::status::to_json(&report))?
        );
    } else {
        print!("{}", super::status::to_table(&report));
    }
    Ok(())
}

/// `arbor cluster status [--json]`.
pub async fn cluster_status(gw: &GatewayArgs, json: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(&mut client, JobSpec::ClusterStatus, "cluster status").await?;
    let status: ClusterStatus = parse_data(data, "cluster status")?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", to_table(&status));
    }
    Ok(())
}

/// `arbor cluster add-node|remove-node ID`.
pub async fn change_members(gw: &GatewayArgs, node: NodeId, add: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let (job, what) = if add {
        (JobSpec::AddNode(NodeJob { node }), "add-node")
    } else {
        (JobSpec::RemoveNode(NodeJob { node }), "remove-node")
    };
    let data = run_job(&mut client, job, what).await?;
    let outcome: MembershipOutcome = parse_data(data, what)?;
    println!(
        "voters: {:?}, learners: {:?}",
        outcome.voters, outcome.learners
    );
    Ok(())
}

/// `arbor node drain|undrain ID`.
pub async fn drain(gw: &GatewayArgs, node: NodeId, draining: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let (job, what) = if draining {
        (JobSpec::Drain(NodeJob { node }), "drain")
    } else {
        (JobSpec::Undrain(NodeJob { node }), "undrain")
    };
    run_job(&mut client, job, what).await?;
    println!(
        "node {node} {}",
        if draining {
            "draining: its actors are moving elsewhere; watch `arbor deployments`"
        } else {
            "takes actors again"
        }
    );
    Ok(())
}

/// `arbor call DEPLOYMENT PAYLOAD`: prints the replica's reply as text.
pub async fn call(gw: &GatewayArgs, deployment: String, payload: String) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(
        &mut client,
        JobSpec::Call(CallJob {
            deployment,
            payload,
        }),
        "call",
    )
    .await?;
    println!("{}", data["reply"].as_str().unwrap_or_default());
    Ok(())
}

/// The table `arbor cluster status` prints.
pub fn to_table(s: &ClusterStatus) -> String {
    let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
    let mut out = format!("leader {leader}, term {}\n", s.term);
    out.push_str("ID  MEMBER   STATE  ROLE           COMMIT  APPLIED\n");
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for (kind, rows) in [("voter", &s.voters), ("learner", &s.learners)] {
        for r in rows {
            out.push_str(&format!(
                "{:<3} {:<8} {:<6} {:<14} {:<7} {}\n",
                r.id,
                kind,
                r.state,
                r.role.as_deref().unwrap_or("-"),
                opt(r.commit),
                opt(r.applied)
            ));
        }
    }
    out
}
