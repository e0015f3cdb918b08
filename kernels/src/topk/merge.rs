//! Merging top-k lists that were computed over disjoint parts of a collection.

use super::{Hit, Metric};

/// Merges per-partition top-k lists (each best first, from disjoint sets of rows) into the
/// global top-k, best first with ties broken by id ascending. Because every list holds its
/// partition's best `k` in that same order, the result equals one scan over all partitions.
pub fn merge<'a>(metric: Metric, k: usize, lists: impl IntoIterator<Item = &'a [Hit]>) -> Vec<Hit> {
    let mut all: Vec<Hit> = lists.into_iter().flatten().copied().collect();
    if k < all.len() {
        all.select_nth_unstable_by(k, |a, b| crate::topk::compare(metric, a, b));
        all.truncate(k);
    }
    all.sort_unstable_by(|a, b| crate::topk::compare(metric, a, b));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_in_metric_order() {
        let a = [Hit { id: 4, score: 0.1 }, Hit { id: 1, score: 0.5 }];
        let b = [Hit { id: 3, score: 0.1 }, Hit { id: 9, score: 0.7 }];
        let l2 = merge(Metric::L2, 3, [&a[..], &b[..]]);
        assert_eq!(l2.iter().map(|h| h.id).collect::<Vec<_>>(), [3, 4, 1]);
        let dot = merge(Metric::Dot, 2, [&a[..], &b[..]]);
        assert_eq!(dot.iter().map(|h| h.id).collect::<Vec<_>>(), [9, 1]);
        assert!(merge(Metric::Dot, 0, [&a[..]]).is_empty());
    }
}
