//! How many hedged searches a coordinator may send.
//!
//! A hedge (a second request to another replica of a partition that has not answered yet) cuts
//! the tail when one replica is slow for its own reasons: a pause, a busy neighbour. When every
//! replica is slow because the cluster is saturated, a hedge per late request doubles the work
//! and makes every answer later still, until searches time out and answers miss partitions.
//! So hedges are paid from a budget that each request adds a share to, as "The Tail at Scale"
//! and Finagle's retry budgets do: at most `share` extra load on top of a small burst.

/// A token bucket filled by requests and drained by hedges, counted in hundredths of a hedge
/// so that the arithmetic is exact. Pure: the caller says what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HedgeBudget {
    /// Hundredths of a hedge available.
    tokens: u64,
    /// Hundredths earned per request: the percentage.
    per_request: u64,
    /// Most hundredths held.
    cap: u64,
}

/// One hedge, in hundredths.
const HEDGE: u64 = 100;

impl HedgeBudget {
    /// Hedges may add up to `percent` % of the requests sent, plus `burst` at any moment.
    /// `percent = 0` turns hedging off.
    pub fn new(percent: u32, burst: u32) -> Self {
        let burst = if percent == 0 {
            0
        } else {
            u64::from(burst) * HEDGE
        };
        HedgeBudget {
            tokens: burst,
            per_request: u64::from(percent),
            cap: burst.max(HEDGE),
        }
    }

    /// A request was sent: it earns its share of a hedge.
    pub fn on_request(&mut self) {
        self.tokens = (self.tokens + self.per_request).min(self.cap);
    }

    /// Whether a hedge may go out now; if so, it is paid for.
    pub fn try_hedge(&mut self) -> bool {
        if self.tokens >= HEDGE {
            self.tokens -= HEDGE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_share() {
        let mut b = HedgeBudget::new(10, 3);
        assert!((0..3).all(|_| b.try_hedge()));
        assert!(!b.try_hedge());
        for _ in 0..9 {
            b.on_request();
        }
        assert!(!b.try_hedge());
        b.on_request();
        assert!(b.try_hedge());
        assert!(!b.try_hedge());
    }

    #[test]
    fn zero_percent_never_hedges() {
        let mut b = HedgeBudget::new(0, 10);
        for _ in 0..1000 {
            b.on_request();
            assert!(!b.try_hedge());
        }
    }

    proptest! {
        /// However requests and hedge attempts interleave, hedges never exceed the burst plus
        /// the share of requests.
        #[test]
        fn hedges_stay_within_the_share(
            steps in prop::collection::vec(any::<bool>(), 0..2000),
            percent in 0u32..50,
            burst in 0u32..20,
        ) {
            let mut b = HedgeBudget::new(percent, burst);
            let (mut requests, mut hedges) = (0u32, 0u32);
            for request in steps {
                if request {
                    b.on_request();
                    requests += 1;
                } else if b.try_hedge() {
                    hedges += 1;
                }
            }
            let allowed = if percent == 0 { 0 } else { 100 * burst + requests * percent };
            prop_assert!(100 * hedges <= allowed, "{hedges} hedges for {requests} requests");
        }
    }
}
