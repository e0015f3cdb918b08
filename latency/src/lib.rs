//! Latency percentiles for benchmarks and load tests: one helper, over an HDR histogram
//! (`hdrhistogram`), instead of a sorted vector and an index formula in every bench.
//!
//! ```
//! use std::time::Duration;
//! let mut lat = arbor_latency::Latencies::new();
//! for ms in 1..=100 {
//!     lat.record(Duration::from_millis(ms));
//! }
//! assert_eq!(lat.len(), 100);
//! let p50 = lat.quantile(0.5);
//! assert!(p50 >= Duration::from_millis(49) && p50 <= Duration::from_millis(51), "{p50:?}");
//! ```

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

const HOUR_NS: u64 = 3_600_000_000_000;

/// Durations recorded at nanosecond resolution, kept to 3 significant digits (an error of at
/// most 0.1%), from 1 ns to an hour (a longer one counts as an hour).
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Latencies {
        // Bounds above 2 × the lowest and 3 significant digits (of 0..=5): this cannot fail.
        Latencies(Histogram::new_with_bounds(1, HOUR_NS, 3).expect("valid bounds and precision"))
    }

    /// Adds one duration.
    pub fn record(&mut self, d: Duration) {
        self.0
            .saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The duration at quantile `q` (0.5 is the median, 0.99 the 99th percentile); zero when
    /// nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.0.value_at_quantile(q))
    }

    pub fn min(&self) -> Duration {
        Duration::from_nanos(self.0.min())
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.0.max())
    }

    /// How many durations were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds and precision, so adding cannot fail.
        self.0
            .add(&other.0)
            .expect("histograms of one shape add up");
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
        let mut lat = Latencies::new();
        lat.extend(iter);
        lat
    }
}

impl Extend<Duration> for Latencies {
    fn extend<I: IntoIterator<Item = Duration>>(&mut self, iter: I) {
        for d in iter {
            self.record(d);
        }
    }
}

impl<'a> FromIterator<&'a Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = &'a Duration>>(iter: I) -> Self {
        iter.into_iter().copied().collect()
    }
}

impl fmt::Debug for Latencies {
    /// `n 100, p50 50ms, p99 99ms, max 100ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n {}, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            self.len(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.max()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_set() {
        let lat: Latencies = (1..=1000).map(Duration::from_micros).collect();
        let close = |got: Duration, want_us: u64| {
            let want = Duration::from_micros(want_us);
            let tolerance = want / 500;
            assert!(
                got.abs_diff(want) <= tolerance,
                "{got:?} is not within 0.2% of {want:?}"
            );
        };
        close(lat.quantile(0.5), 500);
        close(lat.quantile(0.99), 990);
        close(lat.min(), 1);
        close(lat.max(), 1000);
        assert_eq!(lat.len(), 1000);
        let mut twice = lat.clone();
        twice.merge(&lat);
        assert_eq!(twice.len(), 2000);
        close(twice.quantile(0.5), 500);
        assert_eq!(Latencies::new().quantile(0.99), Duration::ZERO);
        assert!(Latencies::new().is_empty());
    }
}
