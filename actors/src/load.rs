//! Requests this process has in flight to each deployment: what its node reports to the
//! control plane for autoscaling (as Ray Serve's handles report theirs), and what its
//! `/metrics` shows.
//!
//! Every [`crate::router::Router`] counts its calls here, queued or being served, for as
//! long as each attempt lasts. The book is per process, since routers are made in many
//! places (the gateway's jobs, coordinators, the CLI's caller) that share nothing else; a
//! node is one process, so it is the node's load. (Nodes started in one test process would
//! each report the whole process's load: autoscaling is tested across processes.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// The process's counters, by deployment.
#[derive(Debug, Default)]
pub struct LoadBook {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

static BOOK: LazyLock<LoadBook> = LazyLock::new(LoadBook::default);

/// This process's book.
pub fn book() -> &'static LoadBook {
    &BOOK
}

impl LoadBook {
    /// The in-flight counter of `deployment`, shared by every router to it.
    pub fn counter(&self, deployment: &str) -> Arc<AtomicU64> {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = counters.get(deployment) {
            return counter.clone();
        }
        counters.entry(deployment.to_owned()).or_default().clone()
    }

    /// Requests in flight now, per deployment that any router has called.
    pub fn in_flight(&self) -> BTreeMap<String, u64> {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters
            .iter()
            .map(|(name, n)| (name.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One request counted in flight for as long as it lives (so a cancelled caller's request
/// stops counting too).
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    pub fn enter(counter: &Arc<AtomicU64>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Means of [`LoadBook::in_flight`] samples over a report interval, in thousandths of a
/// request: instantaneous counts would make the autoscaler chase noise.
#[derive(Debug, Default)]
pub struct LoadMeter {
    sums: BTreeMap<String, u64>,
    samples: u64,
}

impl LoadMeter {
    pub fn sample(&mut self, in_flight: &BTreeMap<String, u64>) {
        for (name, n) in in_flight {
            *self.sums.entry(name.clone()).or_default() += n;
        }
        self.samples += 1;
    }

    /// The mean of each deployment's samples since the last call, in thousandths (zero
    /// means left out), and a fresh start.
    pub fn take_means(&mut self) -> BTreeMap<String, u64> {
        let samples = self.samples.max(1);
        let means = std::mem::take(&mut self.sums)
            .into_iter()
            .map(|(name, sum)| (name, sum.saturating_mul(1000) / samples))
            .filter(|(_, milli)| *milli > 0)
            .collect();
        self.samples = 0;
        means
    }
}

/// Whether `next` differs enough from the report last sent to be worth a consensus write:
/// a deployment appeared or went idle, or moved by more than a tenth of a request and 5%.
/// Pure.
pub fn worth_reporting(last: &BTreeMap<String, u64>, next: &BTreeMap<String, u64>) -> bool {
    if last.len() != next.len() || last.keys().zip(next.keys()).any(|(a, b)| a != b) {
        return true;
    }
    last.values().zip(next.values()).any(|(&a, &b)| {
        let diff = a.abs_diff(b);
        diff > 100 && diff * 20 > a.max(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn in_flight_counts_drop_with_the_guard() {
        let book = LoadBook::default();
        let counter = book.counter("a");
        let one = InFlight::enter(&counter);
        let two = InFlight::enter(&book.counter("a"));
        assert_eq!(book.in_flight(), map(&[("a", 2)]));
        drop(one);
        drop(two);
        assert_eq!(book.in_flight(), map(&[("a", 0)]));
    }

    #[test]
    fn the_meter_reports_means_in_thousandths() {
        let mut meter = LoadMeter::default();
        meter.sample(&map(&[("a", 1), ("b", 0)]));
        meter.sample(&map(&[("a", 2), ("b", 0)]));
        assert_eq!(meter.take_means(), map(&[("a", 1500)]));
        assert_eq!(meter.take_means(), map(&[]));
    }

    #[test]
    fn small_wobbles_are_not_reported() {
        let a = map(&[("x", 10_000)]);
        assert!(!worth_reporting(&a, &map(&[("x", 10_300)])));
        assert!(worth_reporting(&a, &map(&[("x", 11_000)])));
        assert!(!worth_reporting(&map(&[("x", 100)]), &map(&[("x", 150)])));
        assert!(worth_reporting(&a, &map(&[])));
        assert!(worth_reporting(&a, &map(&[("y", 10_000)])));
        assert!(!worth_reporting(&map(&[]), &map(&[])));
    }
}
