//! Reports this node's load (requests in flight per deployment, see `arbor_actors::load`)
//! to the control plane, where the leader's autoscaler reads it.
//!
//! The counts are sampled every [`SAMPLE`] and their mean is proposed every [`REPORT`], but
//! only when it moved enough to matter (`arbor_actors::load::worth_reporting`): an idle
//! cluster writes nothing, a busy one a few small entries per node and second.

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_actors::load::{LoadMeter, book, worth_reporting};
use arbor_scheduler::{Command, ProposeError, RaftHandle};
use tokio::task::JoinHandle;

use crate::config::NodeId;

/// How often the in-flight counts are sampled.
const SAMPLE: Duration = Duration::from_millis(100);
/// How often a report may be proposed.
const REPORT: Duration = Duration::from_secs(1);

/// Starts the reporter; abort the handle to stop it.
pub fn spawn(raft: RaftHandle, node: NodeId) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut meter = LoadMeter::default();
        // `None` until the first report lands: it is sent even when empty, to replace what
        // an earlier run of this node may have left in the state.
        let mut last: Option<BTreeMap<String, u64>> = None;
        let mut ticker = tokio::time::interval(SAMPLE);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let per_report = (REPORT.as_millis() / SAMPLE.as_millis()).max(1) as u32;
        let mut samples = 0u32;
        loop {
            ticker.tick().await;
            meter.sample(&book().in_flight());
            samples += 1;
            if samples < per_report {
                continue;
            }
            samples = 0;
            let means = meter.take_means();
            if last
                .as_ref()
                .is_some_and(|last| !worth_reporting(last, &means))
            {
                continue;
            }
            let report = Command::ReportLoad {
                node,
                ongoing: means.clone(),
            };
            match raft.propose(report).await {
                Ok(_) => last = Some(means),
                Err(ProposeError::Stopped) => return,
                // Not registered yet, or no leader: the next report tries again.
                Err(e) => tracing::debug!(node, "load report not recorded: {e}"),
            }
        }
    })
}
