//! `arbor status`: the membership table as a reachable node sees it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use arbor_proto::NodeId;
use arbor_proto::cluster::{MemberStatus, MembershipReport};

/// One node, as `arbor status --json` prints it.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub address: String,
    pub state: &'static str,
    pub since: String,
    pub resources: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub cluster: String,
    pub answered_by: NodeId,
    pub nodes: Vec<NodeRow>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn row(m: &MemberStatus) -> NodeRow {
    NodeRow {
        id: m.id,
        address: m.address.clone(),
        state: m.state.as_str(),
        since: rfc3339(m.since),
        resources: m
            .info
            .as_ref()
            .and_then(|i| serde_json::to_value(&i.resources).ok()),
        labels: m
            .info
            .as_ref()
            .map(|i| i.labels.clone())
            .unwrap_or_default(),
    }
}

/// The `--json` form: one object, `{"nodes": [...]}` plus who answered.
pub fn to_json(report: &MembershipReport) -> StatusJson {
    StatusJson {
        cluster: report.cluster.clone(),
        answered_by: report.answered_by,
        nodes: report.nodes.iter().map(row).collect(),
    }
}

/// The table people read.
pub fn to_table(report: &MembershipReport) -> String {
    let mut rows = vec![
        [
            "ID", "ADDRESS", "STATE", "SINCE", "CPU", "MEMORY", "GPU", "IPU", "CUSTOM", "LABELS",
        ]
        .map(String::from),
    ];
    for m in &report.nodes {
        let (cpu, memory, gpu, ipu, custom, labels) = match &m.info {
            Some(i) => {
                let r = &i.resources;
                let gpu = match r.gpus.first() {
                    Some(g) => format!("{} ({})", r.gpu, g.model),
                    None => r.gpu.to_string(),
                };
                let join = |it: Vec<String>| {
                    if it.is_empty() {
                        "-".to_string()
                    } else {
                        it.join(",")
                    }
                };
                (
                    r.cpu.clone(),
                    r.memory.clone(),
                    gpu,
                    r.ipu.to_string(),
                    join(r.custom.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    join(i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                )
            }
            None => Default::default(),
        };
        rows.push([
            m.id.to_string(),
            m.address.clone(),
            m.state.as_str().to_string(),
            rfc3339(m.since),
            cpu,
            memory,
            gpu,
            ipu,
            custom,
            labels,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "cluster {} (as node {} sees it)\n",
        report.cluster, report.answered_by
    );
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
