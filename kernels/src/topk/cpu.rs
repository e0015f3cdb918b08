//! The exact scan on the CPU: f32 rows, cache-blocked, on all cores.
//!
//! Rows are split into contiguous chunks, one rayon task each. A task walks its chunk a tile
//! at a time (about 192 KiB of rows, which stays in the core's L2 cache while every query is
//! scored against it) and keeps one bounded heap per query; the tasks' heaps are merged at the
//! end. Each row is read from memory once per search, whatever the number of queries.

use std::collections::HashMap;
use std::ops::Range;

use super::select::{Candidate, TopK, scan_parallel};
use super::{
    Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex, check_queries, check_rows, dot,
    score_tile,
};

/// Bytes of rows scored per tile.
const TILE_BYTES: usize = 192 * 1024;

/// An exact index in host memory.
#[derive(Debug, Clone)]
pub struct CpuIndex {
    dim: usize,
    metric: Metric,
    ids: Vec<u64>,
    /// Row-major, `ids.len() × dim`; normalized for cosine.
    data: Vec<f32>,
    /// `|v|²` per row, for L2 only.
    sq_norms: Vec<f32>,
    rows: HashMap<u64, usize>,
}

impl CpuIndex {
    pub fn new(dim: usize, metric: Metric) -> Result<Self, TopKError> {
        if dim == 0 {
            return Err(TopKError::ZeroDimension);
        }
        Ok(CpuIndex {
            dim,
            metric,
            ids: Vec::new(),
            data: Vec::new(),
            sq_norms: Vec::new(),
            rows: HashMap::new(),
        })
    }

    /// Builds an index holding these rows.
    pub fn from_rows(
        dim: usize,
        metric: Metric,
        ids: &[u64],
        vectors: &[f32],
    ) -> Result<Self, TopKError> {
        let mut index = Self::new(dim, metric)?;
        index.upsert(ids, vectors)?;
        Ok(index)
    }

    fn tile_rows(&self) -> usize {
        (TILE_BYTES / (4 * self.dim)).clamp(8, 4096)
    }

    /// Scans `range` of rows for every query; returns one heap per query.
    fn scan(
        &self,
        queries: &[f32],
        range: Range<usize>,
        k: usize,
        filter: Option<Filter<'_>>,
    ) -> Vec<TopK> {
        let d = self.dim;
        let n = queries.len() / d;
        let tile = self.tile_rows();
        let mut heaps = vec![TopK::new(k); n];
        let mut keys = vec![0.0f32; n * tile];
        // Per row of the tile: 0 not asked yet, 1 passes the filter, 2 does not. The filter
        // is asked lazily (see `TopK::push_run`) and at most once per row for all queries.
        let mut verdicts = vec![0u8; tile];
        let mut t0 = range.start;
        while t0 < range.end {
            let t1 = (t0 + tile).min(range.end);
            let nr = t1 - t0;
            score_tile(queries, &self.data[t0 * d..t1 * d], d, &mut keys, tile);
            if self.metric == Metric::L2 {
                let norms = &self.sq_norms[t0..t1];
                for q in keys.chunks_exact_mut(tile) {
                    for (key, norm) in q.iter_mut().zip(norms) {
                        *key = 2.0 * *key - norm;
                    }
                }
            }
            let ids = &self.ids[t0..t1];
            verdicts[..nr].fill(0);
            for (heap, q) in heaps.iter_mut().zip(keys.chunks_exact(tile)) {
                heap.push_run(&q[..nr], ids, |r| match filter {
                    None => true,
                    Some(f) => {
                        if verdicts[r] == 0 {
                            verdicts[r] = if f(ids[r]) { 1 } else { 2 };
                        }
                        verdicts[r] == 1
                    }
                });
            }
            t0 = t1;
        }
        heaps
    }

    fn hits(&self, top: TopK, query_sq_norm: f32) -> Vec<Hit> {
        let mut hits: Vec<Hit> = top
            .into_sorted()
            .into_iter()
            .map(|Candidate { key, id }| Hit {
                id,
                score: crate::topk::score_from_key(self.metric, key, query_sq_norm),
            })
            .collect();
        // L2 distances are clamped at zero, which can turn distinct keys into ties.
        hits.sort_by(|a, b| crate::topk::compare(self.metric, a, b));
        hits
    }
}

impl VectorIndex for CpuIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        check_rows(self.dim, ids, vectors)?;
        let d = self.dim;
        self.rows.reserve(ids.len());
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(d)) {
            let row = match self.rows.get(&id) {
                Some(&row) => {
                    self.data[row * d..(row + 1) * d].copy_from_slice(v);
                    row
                }
                None => {
                    let row = self.ids.len();
                    self.ids.push(id);
                    self.data.extend_from_slice(v);
                    if self.metric == Metric::L2 {
                        self.sq_norms.push(0.0);
                    }
                    self.rows.insert(id, row);
                    row
                }
            };
            let stored = &mut self.data[row * d..(row + 1) * d];
            crate::topk::prepare(self.metric, stored);
            if self.metric == Metric::L2 {
                self.sq_norms[row] = dot(stored, stored);
            }
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize, TopKError> {
        let d = self.dim;
        let mut removed = 0;
        for id in ids {
            let Some(row) = self.rows.remove(id) else {
                continue;
            };
            let last = self.ids.len() - 1;
            if row != last {
                self.data.copy_within(last * d..(last + 1) * d, row * d);
                self.ids[row] = self.ids[last];
                self.rows.insert(self.ids[row], row);
                if self.metric == Metric::L2 {
                    self.sq_norms[row] = self.sq_norms[last];
                }
            }
            self.ids.truncate(last);
            self.data.truncate(last * d);
            self.sq_norms
                .truncate(if self.metric == Metric::L2 { last } else { 0 });
            removed += 1;
        }
        Ok(removed)
    }

    fn reserve(&mut self, additional: usize) -> Result<(), TopKError> {
        let rows = self.ids.len() + additional;
        self.data.reserve_exact(rows * self.dim - self.data.len());
        self.ids.reserve_exact(additional);
        if self.metric == Metric::L2 {
            self.sq_norms.reserve_exact(additional);
        }
        self.rows.reserve(additional);
        Ok(())
    }

    fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        let d = self.dim;
        let n = check_queries(d, queries)?;
        let q_sq_norms: Vec<f32> = queries.chunks_exact(d).map(|q| dot(q, q)).collect();
        if k == 0 || self.ids.is_empty() {
            return Ok(vec![Vec::new(); n]);
        }
        let mut prepared = queries.to_vec();
        prepared
            .chunks_exact_mut(d)
            .for_each(|q| crate::topk::prepare(self.metric, q));

        let len = self.len();
        let tile = self.tile_rows();
        let merged = scan_parallel(len, tile, k, n, |range| {
            self.scan(&prepared, range, k, filter)
        });
        Ok(merged
            .into_iter()
            .zip(q_sq_norms)
            .map(|(top, q_sq)| self.hits(top, q_sq))
            .collect())
    }

    fn memory(&self) -> MemoryUsage {
        // A hash map entry costs its key, value and one control byte.
        let map = MemoryUsage::hash_map_bytes(
            self.rows.capacity(),
            size_of::<u64>() + size_of::<usize>(),
        );
        MemoryUsage {
            host_bytes: self.data.capacity() * 4
                + self.ids.capacity() * 8
                + self.sq_norms.capacity() * 4
                + map,
            device_bytes: 0,
        }
    }
}
