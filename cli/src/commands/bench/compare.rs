//! `arbor bench compare OLD NEW`: each scenario both reports measured, figure by figure, with
//! the ones that got worse by more than a threshold marked as regressions.

use std::fmt::Write as _;

use super::report::Report;

/// One figure of one scenario in both reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub scenario: String,
    pub figure: &'static str,
    pub old: f64,
    pub new: f64,
    /// Relative change, in percent.
    pub percent: f64,
    /// How many times better `new` is: new/old for a throughput, old/new for a latency or
    /// errors (above 1: better).
    pub ratio: f64,
    /// Worse by more than the threshold (lower throughput, higher latency or errors).
    pub regression: bool,
}

/// The changes between `old` and `new`, for the scenarios both have. Pure. Reports of two
/// systems (arbor and a peer) are set side by side with their ratios; only two runs of the
/// same system can regress.
pub fn compare(old: &Report, new: &Report, threshold_percent: f64) -> Vec<Change> {
    let same_system = old.system.name == new.system.name;
    let mut out = Vec::new();
    for n in &new.scenarios {
        let Some(o) = old.scenarios.iter().find(|o| o.name == n.name) else {
            continue;
        };
        let errors = |s: &super::report::ScenarioReport| s.errors.values().sum::<u64>() as f64;
        // (figure, old, new, higher is better)
        let figures = [
            ("throughput/s", o.throughput_per_s, n.throughput_per_s, true),
            ("p50 µs", o.latency_us.p50, n.latency_us.p50, false),
            ("p99 µs", o.latency_us.p99, n.latency_us.p99, false),
            ("p99.9 µs", o.latency_us.p999, n.latency_us.p999, false),
            ("errors", errors(o), errors(n), false),
        ];
        for (figure, old, new, higher_is_better) in figures {
            let percent = if old == 0.0 {
                if new == 0.0 { 0.0 } else { f64::INFINITY }
            } else {
                (new - old) / old * 100.0
            };
            let worse = if higher_is_better { -percent } else { percent };
            let (better, base) = if higher_is_better {
                (new, old)
            } else {
                (old, new)
            };
            let ratio = if base == 0.0 {
                if better == 0.0 { 1.0 } else { f64::INFINITY }
            } else {
                better / base
            };
            out.push(Change {
                scenario: n.name.clone(),
                figure,
                old,
                new,
                percent,
                ratio,
                regression: same_system && worse > threshold_percent,
            });
        }
    }
    out
}

/// The changes as a table, under a line that says what is compared with what.
pub fn table(old: &Report, new: &Report, changes: &[Change]) -> String {
    let mut out = format!(
        "{} -> {} (x: how many times better the second is)\n",
        old.system.label(),
        new.system.label()
    );
    for c in changes {
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:>12.1} -> {:>12.1}  {:>+8.1}%  {:>7.2}x{}",
            c.scenario,
            c.figure,
            c.old,
            c.new,
            c.percent,
            c.ratio,
            if c.regression { "  REGRESSION" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::load::Shape;
    use super::super::report::{Machine, Percentiles, Report, SCHEMA, ScenarioReport};
    use super::*;
    use std::time::Duration;

    fn report(throughput: f64, p50: f64) -> Report {
        let latency = Percentiles {
            p50,
            p90: p50,
            p99: p50 * 2.0,
            p999: p50 * 3.0,
            max: p50 * 4.0,
        };
        Report {
            schema: SCHEMA.into(),
            system: super::super::report::System::arbor(),
            started: String::new(),
            machine: Machine {
                cpu: "x".into(),
                cores: 2,
                memory_bytes: 0,
                gpus: vec![],
                gpu_driver: None,
            },
            nodes: 3,
            cluster_gpus: vec![],
            scenarios: vec![ScenarioReport {
                name: "jobs".into(),
                load: Shape {
                    connections: 1,
                    in_flight: 1,
                    rate: None,
                    ramp: Duration::ZERO,
                    warmup: Duration::ZERO,
                    duration: Duration::from_secs(1),
                },
                parameters: Default::default(),
                completed: 1,
                errors: Default::default(),
                throughput_per_s: throughput,
                latency_us: latency,
                per_second: vec![],
                cdf: vec![],
                fault: None,
            }],
        }
    }

    #[test]
    fn worse_beyond_the_threshold_is_a_regression() {
        let changes = compare(&report(1000.0, 100.0), &report(850.0, 104.0), 10.0);
        let by = |f: &str| changes.iter().find(|c| c.figure == f).unwrap();
        assert!(by("throughput/s").regression, "{changes:?}");
        assert!((by("throughput/s").percent + 15.0).abs() < 1e-9);
        assert!((by("throughput/s").ratio - 0.85).abs() < 1e-9);
        assert!((by("p50 µs").ratio - 100.0 / 104.0).abs() < 1e-9);
        assert!(!by("p50 µs").regression);
        assert!(!by("errors").regression);
        // Better is never a regression, however large.
        let changes = compare(&report(1000.0, 100.0), &report(5000.0, 10.0), 10.0);
        assert!(changes.iter().all(|c| !c.regression), "{changes:?}");
        assert!((changes[1].ratio - 10.0).abs() < 1e-9, "p50 100 -> 10 µs");
        let text = table(&report(1.0, 1.0), &report(1.0, 1.0), &changes);
        assert!(
            text.contains("throughput/s") && text.contains("5.00x"),
            "{text}"
        );
    }

    #[test]
    fn a_peer_is_compared_but_never_regresses() {
        let mut peer = report(100.0, 1000.0);
        peer.system.name = "ray-serve".into();
        let changes = compare(&report(1000.0, 100.0), &peer, 10.0);
        assert!(changes.iter().all(|c| !c.regression), "{changes:?}");
        assert!((changes[0].ratio - 0.1).abs() < 1e-9, "{changes:?}");
    }

    #[test]
    fn scenarios_in_one_report_only_are_left_out() {
        let mut new = report(1.0, 1.0);
        new.scenarios[0].name = "call".into();
        assert!(compare(&report(1.0, 1.0), &new, 10.0).is_empty());
    }
}
