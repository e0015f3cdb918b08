//! Bounded selection of the best candidates, one heap per query.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

use rayon::prelude::*;

/// Rayon tasks per thread, so that a slow thread does not hold up the others.
const TASKS_PER_THREAD: usize = 8;
/// Fewest tiles per task, so that small indexes are not split into tiny tasks.
const MIN_TILES_PER_TASK: usize = 4;

/// A scored row during a scan. `key` is higher-is-better for every metric (for L2 it is
/// `2 q·v − |v|²`, which orders rows like the negated distance); ties go to the smaller id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub key: f32,
    pub id: u64,
}

impl Ord for Candidate {
    /// Best first: `a < b` when `a` ranks before `b`.
    fn cmp(&self, other: &Self) -> Ordering {
        // IEEE comparison, so that -0.0 and 0.0 tie; keys are never NaN (input is checked).
        let by_key = other.key.partial_cmp(&self.key).unwrap_or(Ordering::Equal);
        by_key.then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// The `k` best candidates seen so far. The heap's top is the worst one kept, so a candidate
/// that does not beat it is rejected with one comparison.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Candidate>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The key a candidate must reach to be considered: `-inf` until `k` are held.
    #[inline]
    pub fn threshold(&self) -> f32 {
        match self.heap.peek() {
            Some(worst) if self.heap.len() == self.k => worst.key,
            _ => f32::NEG_INFINITY,
        }
    }

    #[inline]
    pub fn push(&mut self, candidate: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && candidate < *worst
        {
            *worst = candidate;
        }
    }

    /// Pushes the keys of a run of rows, skipping those under the threshold cheaply.
    /// `allowed(r)` says whether row `r` of the run may take part; it is asked only for rows
    /// whose key would enter the heap, so a filter costs a few calls per query once the heap
    /// is full rather than one per row.
    #[inline]
    pub fn push_run(&mut self, keys: &[f32], ids: &[u64], mut allowed: impl FnMut(usize) -> bool) {
        let mut threshold = self.threshold();
        for (r, (&key, &id)) in keys.iter().zip(ids).enumerate() {
            if key >= threshold && allowed(r) {
                self.push(Candidate { key, id });
                threshold = self.threshold();
            }
        }
    }

    pub fn extend(&mut self, other: TopK) {
        for c in other.heap {
            self.push(c);
        }
    }

    /// The kept candidates, best first.
    pub fn into_sorted(self) -> Vec<Candidate> {
        self.heap.into_sorted_vec()
    }
}

/// The `k` best of `len` rows for each of `queries` queries: the rows are cut into ranges
/// of whole tiles (`tile` rows), `scan` keeps one heap per query for a range, on the rayon
/// pool, and the ranges' heaps are merged.
pub(crate) fn scan_parallel(
    len: usize,
    tile: usize,
    k: usize,
    queries: usize,
    scan: impl Fn(Range<usize>) -> Vec<TopK> + Sync,
) -> Vec<TopK> {
    let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
    let chunk = len.div_ceil(tasks).div_ceil(tile).max(MIN_TILES_PER_TASK) * tile;
    let starts: Vec<usize> = (0..len).step_by(chunk).collect();
    let partials: Vec<Vec<TopK>> = starts
        .into_par_iter()
        .map(|start| scan(start..(start + chunk).min(len)))
        .collect();
    let mut merged = vec![TopK::new(k); queries];
    for partial in partials {
        for (into, heap) in merged.iter_mut().zip(partial) {
            into.extend(heap);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_k_with_ties_to_the_smaller_id() {
        let mut top = TopK::new(3);
        for (key, id) in [(1.0, 5), (3.0, 9), (3.0, 2), (0.5, 1), (3.0, 4), (2.0, 0)] {
            top.push(Candidate { key, id });
        }
        let kept: Vec<_> = top.into_sorted().iter().map(|c| (c.key, c.id)).collect();
        assert_eq!(kept, [(3.0, 2), (3.0, 4), (3.0, 9)]);
    }

    #[test]
    fn k_zero_keeps_nothing() {
        let mut top = TopK::new(0);
        top.push(Candidate { key: 1.0, id: 1 });
        assert!(top.into_sorted().is_empty());
    }
}
