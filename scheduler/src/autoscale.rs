//! Autoscaling, with Ray Serve's semantics: a deployment with an [`Autoscaling`] policy is
//! given `ceil(ongoing / target_ongoing_requests)` replicas, within `[min_replicas,
//! max_replicas]`, once that figure has stayed above the current count for `upscale_delay`
//! (or below it for `downscale_delay`).
//!
//! "Ongoing" is what callers have in flight to the deployment's replicas, queued or being
//! served: every node reports the mean over its last second to the control plane
//! ([`crate::Command::ReportLoad`], only when it changed), and the leader adds up the reports
//! of the nodes that are up. The trend (since when the wanted count has differed from the
//! current one, and in which direction) lives only in the leader's memory: a new leader
//! starts its delays afresh, which errs on the side of not scaling.
//!
//! A scale decision only changes the replica count ([`crate::Command::ScaleDeployment`]):
//! the running replicas are left alone, new ones go through placement like any other (one
//! that fits nowhere waits with its reason), and a scale-down removes the highest-numbered.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{ClusterState, Liveness};

/// One ongoing request, in the unit loads are reported in (thousandths of a request, so
/// that a mean over a second is an integer and the replicated state holds no floats).
pub const MILLI: u64 = 1000;

/// A deployment's autoscaling policy (its file's `[autoscaling]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoscaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Requests in flight per replica that the autoscaler aims for, in thousandths.
    pub target_ongoing_milli: u64,
    /// How long more replicas must be wanted before they are added.
    pub upscale_delay: Duration,
    /// How long fewer replicas must be wanted before any is removed.
    pub downscale_delay: Duration,
}

impl Autoscaling {
    /// Why the policy cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.max_replicas == 0 {
            return Err("max_replicas must be at least 1".into());
        }
        if self.min_replicas > self.max_replicas {
            return Err(format!(
                "min_replicas ({}) is more than max_replicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if self.target_ongoing_milli == 0 {
            return Err("target_ongoing_requests must be more than 0".into());
        }
        Ok(())
    }

    /// `replicas` brought within `[min_replicas, max_replicas]`.
    pub fn clamp(&self, replicas: u32) -> u32 {
        replicas.clamp(self.min_replicas, self.max_replicas)
    }

    /// The replicas that `ongoing_milli` requests in flight call for. Pure.
    pub fn wanted(&self, ongoing_milli: u64) -> u32 {
        let n = ongoing_milli.div_ceil(self.target_ongoing_milli);
        self.clamp(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// Which way a deployment's wanted count points, and since when (ms, the leader's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trend {
    pub up: bool,
    pub since_ms: u64,
}

/// What [`step`] concluded for one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The new replica count, when it changes now.
    pub scale_to: Option<u32>,
    /// The trend to remember for the next round.
    pub trend: Option<Trend>,
}

/// One round of the policy for one deployment. Pure: the current count, the load, the
/// remembered trend and the time in; the decision and the trend to remember out.
pub fn step(
    policy: &Autoscaling,
    current: u32,
    ongoing_milli: u64,
    trend: Option<Trend>,
    now_ms: u64,
) -> Step {
    // A count outside the bounds (the bounds changed) is corrected at once.
    if policy.clamp(current) != current {
        return Step {
            scale_to: Some(policy.clamp(current)),
            trend: None,
        };
    }
    let wanted = policy.wanted(ongoing_milli);
    if wanted == current {
        return Step {
            scale_to: None,
            trend: None,
        };
    }
    let up = wanted > current;
    let since_ms = match trend {
        Some(t) if t.up == up => t.since_ms,
        _ => now_ms,
    };
    let delay = if up {
        policy.upscale_delay
    } else {
        policy.downscale_delay
    };
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    if now_ms.saturating_sub(since_ms) >= delay_ms {
        Step {
            scale_to: Some(wanted),
            trend: None,
        }
    } else {
        Step {
            scale_to: None,
            trend: Some(Trend { up, since_ms }),
        }
    }
}

/// The requests in flight to `deployment`, in thousandths, as the nodes that are up last
/// reported them.
pub fn ongoing(state: &ClusterState, deployment: &str) -> u64 {
    state
        .loads
        .iter()
        .filter(|(id, _)| {
            state
                .nodes
                .get(id)
                .is_some_and(|n| n.liveness == Liveness::Ready)
        })
        .filter_map(|(_, load)| load.get(deployment))
        .sum()
}

/// One scale decision, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub deployment: String,
    pub from: u32,
    pub to: u32,
    pub ongoing_milli: u64,
}

/// The leader's autoscaler: the trends of the autoscaled deployments between rounds.
#[derive(Debug, Default)]
pub struct Autoscaler {
    trends: BTreeMap<String, Trend>,
}

impl Autoscaler {
    /// The scale decisions this round calls for, and the trends remembered for the next.
    pub fn decide(&mut self, state: &ClusterState, now_ms: u64) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut trends = BTreeMap::new();
        for (name, d) in &state.deployments {
            let Some(policy) = &d.spec.autoscaling else {
                continue;
            };
            let load = ongoing(state, name);
            let current = d.spec.replicas;
            let s = step(
                policy,
                current,
                load,
                self.trends.get(name).copied(),
                now_ms,
            );
            if let Some(to) = s.scale_to {
                decisions.push(Decision {
                    deployment: name.clone(),
                    from: current,
                    to,
                    ongoing_milli: load,
                });
            }
            if let Some(t) = s.trend {
                trends.insert(name.clone(), t);
            }
        }
        self.trends = trends;
        decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Autoscaling {
        Autoscaling {
            min_replicas: 1,
            max_replicas: 4,
            target_ongoing_milli: 2 * MILLI,
            upscale_delay: Duration::from_secs(3),
            downscale_delay: Duration::from_secs(10),
        }
    }

    #[test]
    fn wanted_is_the_load_over_the_target_rounded_up_within_bounds() {
        let p = policy();
        assert_eq!(p.wanted(0), 1);
        assert_eq!(p.wanted(2 * MILLI), 1);
        assert_eq!(p.wanted(2 * MILLI + 1), 2);
        assert_eq!(p.wanted(7 * MILLI), 4);
        assert_eq!(p.wanted(u64::MAX), 4);
    }

    #[test]
    fn scales_up_only_after_the_upscale_delay_of_steady_demand() {
        let p = policy();
        let s = step(&p, 1, 6 * MILLI, None, 1000);
        assert_eq!(s.scale_to, None);
        let t = s.trend.unwrap();
        assert!(t.up);
        let s = step(&p, 1, 6 * MILLI, Some(t), 3999);
        assert_eq!(s.scale_to, None);
        let s = step(&p, 1, 6 * MILLI, s.trend, 4000);
        assert_eq!(s.scale_to, Some(3));
        assert_eq!(s.trend, None);
    }

    #[test]
    fn a_pause_in_demand_restarts_the_delay() {
        let p = policy();
        let s = step(&p, 1, 6 * MILLI, None, 0);
        let s = step(&p, 1, MILLI, s.trend, 2000);
        assert_eq!(
            s,
            Step {
                scale_to: None,
                trend: None
            }
        );
        let s = step(&p, 1, 6 * MILLI, s.trend, 2500);
        let s = step(&p, 1, 6 * MILLI, s.trend, 4000);
        assert_eq!(s.scale_to, None, "the delay counts from 2500");
        assert_eq!(step(&p, 1, 6 * MILLI, s.trend, 5500).scale_to, Some(3));
    }

    #[test]
    fn scales_down_to_min_after_the_downscale_delay() {
        let p = policy();
        let s = step(&p, 4, 0, None, 0);
        assert_eq!(s.scale_to, None);
        let s = step(&p, 4, 0, s.trend, 9999);
        assert_eq!(s.scale_to, None);
        assert_eq!(step(&p, 4, 0, s.trend, 10_000).scale_to, Some(1));
    }

    #[test]
    fn a_count_outside_changed_bounds_is_corrected_at_once() {
        let mut p = policy();
        p.min_replicas = 2;
        assert_eq!(step(&p, 1, 0, None, 0).scale_to, Some(2));
        assert_eq!(step(&p, 9, 0, None, 0).scale_to, Some(4));
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        let mut p = policy();
        p.min_replicas = 5;
        assert!(p.check().unwrap_err().contains("min_replicas (5)"));
        let mut p = policy();
        p.target_ongoing_milli = 0;
        assert!(p.check().unwrap_err().contains("target_ongoing_requests"));
        let mut p = policy();
        p.max_replicas = 0;
        p.min_replicas = 0;
        assert!(p.check().is_err());
        assert!(policy().check().is_ok());
    }

    proptest::proptest! {
        #[test]
        fn never_outside_the_bounds(
            min in 0u32..5, span in 0u32..5, current in 0u32..12,
            loads in proptest::collection::vec(0u64..40_000, 1..30),
        ) {
            let p = Autoscaling { min_replicas: min, max_replicas: (min + span).max(1), ..policy() };
            let mut replicas = current;
            let mut trend = None;
            for (i, load) in loads.into_iter().enumerate() {
                let s = step(&p, replicas, load, trend, i as u64 * 4000);
                if let Some(to) = s.scale_to {
                    replicas = to;
                    proptest::prop_assert!(to >= p.min_replicas && to <= p.max_replicas);
                }
                trend = s.trend;
            }
        }
    }
}
