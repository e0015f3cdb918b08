//! `/metrics`: the node's metrics in the Prometheus text format.
//!
//! Two sources make one page:
//! - **Events**, recorded where they happen through the `metrics` facade (request and job
//!   latencies, errors by code, tokens, embedded texts, proposals, leader changes, autoscaler
//!   decisions). The node installs the process's Prometheus recorder when it has an HTTP
//!   port; without one, every `metrics::` call is a no-op.
//! - **State**, read at each scrape (Raft indexes, links, placements and replicas by state,
//!   requests in flight, in-sync replicas, process memory and files) into a recorder made for
//!   that scrape alone, so a deployment or peer that is gone leaves no stale series behind.
//!
//! Names follow Prometheus' conventions: an `arbor_` prefix, base units (seconds, bytes),
//! `_total` on counters, and labels from bounded sets (deployments, partitions, peers, kinds,
//! states, error codes; never ids of jobs or requests).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use arbor_scheduler::node::{NodeStatus, Role};
use arbor_scheduler::state::{ClusterState, Liveness, PlacementStatus};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::NodeId;

/// Latency buckets, in seconds: 100 µs to 60 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Batch-size buckets.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static INSTALLED: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's recorder, installed on first use (one per process: nodes started in one
/// test process share it).
pub fn install() -> Result<PrometheusHandle, String> {
    INSTALLED
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES))
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))
        })
        .clone()
}

/// A gateway job ended (`end`: succeeded, failed or cancelled) after `took`: counted by kind
/// and end, timed by kind.
pub fn job_finished(kind: &'static str, end: &'static str, took: std::time::Duration) {
    metrics::counter!("arbor_gateway_jobs_total", "kind" => kind, "state" => end).increment(1);
    metrics::histogram!("arbor_gateway_job_duration_seconds", "kind" => kind)
        .record(took.as_secs_f64());
}

/// What a scrape reads of the node besides the recorded events.
pub struct Observed<'a> {
    pub node: NodeId,
    pub status: Option<&'a NodeStatus>,
    pub cluster: Option<&'a ClusterFigures>,
    /// Peers this node has a link with, and the peers it knows of.
    pub linked: &'a BTreeSet<NodeId>,
    pub peers: &'a BTreeSet<NodeId>,
    /// Requests in flight from this node, per deployment.
    pub in_flight: &'a BTreeMap<String, u64>,
}

/// The state part of the page. Pure apart from reading `/proc/self` (memory, files).
pub fn render_state(o: &Observed<'_>) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || record_state(o));
    recorder.handle().render()
}

fn record_state(o: &Observed<'_>) {
    use metrics::{counter, gauge};
    if let Some(s) = o.status {
        gauge!("arbor_raft_term").set(s.term as f64);
        gauge!("arbor_raft_commit_index").set(s.commit as f64);
        gauge!("arbor_raft_applied_index").set(s.applied as f64);
        gauge!("arbor_raft_leader").set(if s.role == Role::Leader { 1.0 } else { 0.0 });
        gauge!("arbor_raft_has_leader").set(if s.leader.is_some() { 1.0 } else { 0.0 });
        counter!("arbor_raft_dropped_messages_total").absolute(s.dropped_messages);
    }
    for peer in o.peers.iter().filter(|p| **p != o.node) {
        let up = if o.linked.contains(peer) { 1.0 } else { 0.0 };
        gauge!("arbor_link_up", "peer" => peer.to_string()).set(up);
    }
    for (deployment, n) in o.in_flight {
        gauge!("arbor_deployment_requests_in_flight", "deployment" => deployment.clone())
            .set(*n as f64);
    }
    if let Some(cluster) = o.cluster {
        record_cluster(cluster);
    }
    if let Some(process) = Process::read() {
        gauge!("arbor_process_resident_memory_bytes").set(process.resident_bytes as f64);
        gauge!("arbor_process_open_fds").set(process.open_fds as f64);
    }
}

/// What the control plane says of the whole cluster (the same on every node), counted on the
/// Raft loop by [`ClusterFigures::of`] and rendered off it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterFigures {
    nodes: BTreeMap<&'static str, u64>,
    placements: BTreeMap<&'static str, u64>,
    deployments: Vec<DeploymentFigures>,
    partitions: Vec<PartitionFigures>,
}

#[derive(Debug, Clone, PartialEq)]
struct DeploymentFigures {
    name: String,
    desired: u32,
    revision: u64,
    by_state: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct PartitionFigures {
    name: String,
    epoch: u64,
    in_sync: Vec<bool>,
}

const STATES: [&str; 5] = ["pending", "starting", "running", "failed", "stopped"];

impl ClusterFigures {
    /// Counts only: cheap enough for the Raft loop, where local reads run. Pure.
    pub fn of(state: &ClusterState) -> ClusterFigures {
        let mut nodes = BTreeMap::from([("ready", 0), ("down", 0)]);
        for n in state.nodes.values() {
            let key = match n.liveness {
                Liveness::Ready => "ready",
                Liveness::Down => "down",
            };
            *nodes.entry(key).or_default() += 1;
        }
        let mut placements: BTreeMap<&'static str, u64> = STATES.iter().map(|s| (*s, 0)).collect();
        let mut replicas: BTreeMap<(&str, &'static str), u64> = BTreeMap::new();
        for p in state.placements.values() {
            let s = status_name(&p.status);
            *placements.entry(s).or_default() += 1;
            *replicas.entry((p.deployment.as_str(), s)).or_default() += 1;
        }
        let deployments = state
            .deployments
            .iter()
            .map(|(name, d)| DeploymentFigures {
                name: name.clone(),
                desired: d.spec.replicas,
                revision: d.version,
                by_state: STATES
                    .iter()
                    .map(|s| (*s, replicas.get(&(name.as_str(), *s)).copied().unwrap_or(0)))
                    .collect(),
            })
            .collect();
        let partitions = state
            .replica_sets
            .iter()
            .map(|(name, set)| {
                let replicas = state.deployments.get(name).map_or(0, |d| d.spec.replicas);
                PartitionFigures {
                    name: name.clone(),
                    epoch: set.epoch,
                    in_sync: (0..replicas)
                        .map(|r| {
                            state
                                .placements
                                .get(&arbor_scheduler::state::actor_id(name, r))
                                .is_some_and(|p| set.is_in_sync(r, p.generation))
                        })
                        .collect(),
                }
            })
            .collect();
        ClusterFigures {
            nodes,
            placements,
            deployments,
            partitions,
        }
    }
}

fn record_cluster(c: &ClusterFigures) {
    use metrics::gauge;
    for (liveness, n) in &c.nodes {
        gauge!("arbor_nodes", "liveness" => *liveness).set(*n as f64);
    }
    for (state, n) in &c.placements {
        gauge!("arbor_placements", "state" => *state).set(*n as f64);
    }
    for d in &c.deployments {
        let name = || d.name.clone();
        gauge!("arbor_deployment_desired_replicas", "deployment" => name())
            .set(f64::from(d.desired));
        gauge!("arbor_deployment_revision", "deployment" => name()).set(d.revision as f64);
        for (state, n) in &d.by_state {
            gauge!("arbor_deployment_replicas", "deployment" => name(), "state" => *state)
                .set(*n as f64);
        }
    }
    for p in &c.partitions {
        let name = || p.name.clone();
        gauge!("arbor_partition_epoch", "partition" => name()).set(p.epoch as f64);
        let in_sync = p.in_sync.iter().filter(|s| **s).count();
        gauge!("arbor_partition_in_sync_replicas", "partition" => name()).set(in_sync as f64);
        for (replica, yes) in p.in_sync.iter().enumerate() {
            gauge!(
                "arbor_partition_replica_in_sync",
                "partition" => name(),
                "replica" => replica.to_string()
            )
            .set(if *yes { 1.0 } else { 0.0 });
        }
    }
}

fn status_name(s: &PlacementStatus) -> &'static str {
    match s {
        PlacementStatus::Pending => "pending",
        PlacementStatus::Starting => "starting",
        PlacementStatus::Running => "running",
        PlacementStatus::Failed { .. } => "failed",
        PlacementStatus::Stopped => "stopped",
    }
}

/// This process's resident memory and open files, from `/proc/self` (Linux; absent
/// elsewhere).
struct Process {
    resident_bytes: u64,
    open_fds: u64,
}

impl Process {
    fn read() -> Option<Process> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(Process {
            resident_bytes: kib * 1024,
            open_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_scheduler::Command;
    use arbor_scheduler::resources::{Bytes, Millicores, Resources};

    #[test]
    fn the_state_renders_as_prometheus_text_without_stale_series() {
        let mut state = ClusterState::default();
        state
            .apply(&Command::RegisterNode {
                id: 1,
                address: "10.0.0.1:7000".into(),
                capacity: Resources {
                    cpu: Millicores(1000),
                    memory: Bytes::gib(1),
                    ..Default::default()
                },
                labels: Default::default(),
            })
            .unwrap();
        let status = NodeStatus {
            id: 1,
            leader: Some(1),
            term: 7,
            role: Role::Leader,
            commit: 42,
            applied: 41,
            snapshot_index: 0,
            voters: vec![],
            learners: vec![],
            dropped_messages: 3,
        };
        let in_flight = BTreeMap::from([("echo \"x\"".to_string(), 2)]);
        let page = render_state(&Observed {
            node: 1,
            status: Some(&status),
            cluster: Some(&ClusterFigures::of(&state)),
            linked: &[2].into(),
            peers: &[1, 2, 3].into(),
            in_flight: &in_flight,
        });
        for line in [
            "arbor_raft_term 7",
            "arbor_raft_commit_index 42",
            "arbor_raft_applied_index 41",
            "arbor_raft_leader 1",
            "arbor_raft_dropped_messages_total 3",
            "arbor_link_up{peer=\"2\"} 1",
            "arbor_link_up{peer=\"3\"} 0",
            "arbor_nodes{liveness=\"ready\"} 1",
            "arbor_placements{state=\"running\"} 0",
            // Label values are escaped.
            "arbor_deployment_requests_in_flight{deployment=\"echo \\\"x\\\"\"} 2",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
        assert!(page.contains("# TYPE arbor_raft_term gauge"), "{page}");
        assert!(!page.contains("arbor_link_up{peer=\"1\"}"), "{page}");
        // A second scrape of a state without the deployment has no series of it.
        let page = render_state(&Observed {
            node: 1,
            status: None,
            cluster: None,
            linked: &BTreeSet::new(),
            peers: &BTreeSet::new(),
            in_flight: &BTreeMap::new(),
        });
        assert!(!page.contains("echo"), "{page}");
    }
}
