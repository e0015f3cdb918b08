//! An approximate index on the CPU: a hierarchical navigable small-world graph (HNSW,
//! Malkov & Yashunin 2016) behind the same [`VectorIndex`] API as the exact scan.
//!
//! Written here rather than taken from a crate because the vector partition needs what the
//! maintained Rust crates lack together: deletion and upsert by id, a metadata filter applied
//! during the graph walk, deterministic (seeded) builds, and no extra dependency tree.
//!
//! - Removal marks a node dead; dead nodes still route searches but are never returned. When
//!   dead nodes outnumber live ones the graph is rebuilt from the live rows.
//! - Upserting an existing id kills its old node and inserts a new one.
//! - A filter is applied while walking layer 0 (rejected nodes route but are not results).
//!   When the walk finds fewer than `k` results (a very selective filter, or a tiny index),
//!   the search falls back to an exact scan of the allowed rows, so it never returns fewer
//!   hits than exist.
//! - Scores and order are those of [`crate::topk`]: best first, ties by id.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::topk::{Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex, dot};

/// Graph construction and search settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper layers (twice this on layer 0).
    pub m: usize,
    /// Candidate list size while inserting: higher builds a better graph, slower.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k` is used): higher is more accurate.
    pub ef_search: usize,
    /// Seed of the level draws, so that the same inserts build the same graph.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 128,
            ef_search: 64,
            seed: 0x5EED_CAFE,
        }
    }
}

/// The highest layer a node may be drawn on.
const MAX_LEVEL: usize = 16;

/// A node with its similarity to some target; higher is better, ties to the lower slot.
#[derive(Debug, Clone, Copy)]
struct Near {
    sim: f32,
    slot: u32,
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sim = self.sim.partial_cmp(&other.sim).unwrap_or(Ordering::Equal);
        by_sim.then(other.slot.cmp(&self.slot))
    }
}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Near {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Near {}

/// Nodes seen during one walk.
struct Visited(Vec<u64>);

impl Visited {
    fn new(n: usize) -> Self {
        Visited(vec![0; n.div_ceil(64)])
    }
    /// Marks `slot`; true when it was not marked before.
    fn insert(&mut self, slot: u32) -> bool {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// An approximate nearest-neighbour index.
#[derive(Debug, Clone)]
pub struct HnswIndex {
    dim: usize,
    metric: Metric,
    params: HnswParams,
    /// Per node (slot), row-major; normalized for cosine.
    data: Vec<f32>,
    sq_norms: Vec<f32>,
    ids: Vec<u64>,
    alive: Vec<bool>,
    /// Per node, per layer from 0 up to its level: its neighbours.
    links: Vec<Vec<Vec<u32>>>,
    /// Live node of each id.
    slots: HashMap<u64, u32>,
    entry: Option<u32>,
    top_level: usize,
    rng: StdRng,
}

impl HnswIndex {
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> Result<Self, TopKError> {
        if dim == 0 {
            return Err(TopKError::ZeroDimension);
        }
        Ok(HnswIndex {
            dim,
            metric,
            params: HnswParams {
                m: params.m.max(2),
                ef_construction: params.ef_construction.max(1),
                ..params
            },
            data: Vec::new(),
            sq_norms: Vec::new(),
            ids: Vec::new(),
            alive: Vec::new(),
            links: Vec::new(),
            slots: HashMap::new(),
            entry: None,
            top_level: 0,
            rng: StdRng::seed_from_u64(params.seed),
        })
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Changes how many candidates a search keeps (recall against speed); no rebuild needed.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    fn row(&self, slot: u32) -> &[f32] {
        let s = slot as usize * self.dim;
        &self.data[s..s + self.dim]
    }

    /// Similarity of a prepared vector (with `|v|²`) to a node: higher is better. For L2 it
    /// is the negated squared distance.
    fn sim(&self, v: &[f32], v_sq: f32, slot: u32) -> f32 {
        let d = dot(v, self.row(slot));
        match self.metric {
            Metric::Cosine | Metric::Dot => d,
            Metric::L2 => 2.0 * d - v_sq - self.sq_norms[slot as usize],
        }
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.params.m
        } else {
            self.params.m
        }
    }

    /// Greedy descent through the upper layers to the best entry for layer `to`.
    fn descend(&self, v: &[f32], v_sq: f32, to: usize) -> Option<Near> {
        let entry = self.entry?;
        let mut best = Near {
            sim: self.sim(v, v_sq, entry),
            slot: entry,
        };
        for level in (to + 1..=self.top_level).rev() {
            loop {
                let mut moved = false;
                for &nb in &self.links[best.slot as usize][level] {
                    let sim = self.sim(v, v_sq, nb);
                    if sim > best.sim {
                        best = Near { sim, slot: nb };
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        Some(best)
    }

    /// Best-first walk of one layer from `entries`. Every node routes; only nodes that pass
    /// `accept` become results. Returns up to `ef` results, best first.
    fn search_layer(
        &self,
        v: &[f32],
        v_sq: f32,
        entries: &[Near],
        ef: usize,
        level: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Near> {
        let mut visited = Visited::new(self.ids.len());
        let mut candidates: BinaryHeap<Near> = BinaryHeap::new();
        // Worst result on top.
        let mut results: BinaryHeap<std::cmp::Reverse<Near>> = BinaryHeap::new();
        for &e in entries {
            if visited.insert(e.slot) {
                candidates.push(e);
                if accept(e.slot) {
                    results.push(std::cmp::Reverse(e));
                }
            }
        }
        while let Some(c) = candidates.pop() {
            if results.len() >= ef && c < results.peek().map_or(c, |w| w.0) {
                break;
            }
            for &nb in &self.links[c.slot as usize][level] {
                if !visited.insert(nb) {
                    continue;
                }
                let near = Near {
                    sim: self.sim(v, v_sq, nb),
                    slot: nb,
                };
                let worst = results.peek().map(|w| w.0);
                if results.len() < ef || worst.is_none_or(|w| near > w) {
                    candidates.push(near);
                    if accept(nb) {
                        results.push(std::cmp::Reverse(near));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        let mut out: Vec<Near> = results.into_iter().map(|r| r.0).collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// Malkov's neighbour heuristic: keep a candidate only when it is nearer to the base node
    /// than to every neighbour already kept, which keeps links spread over directions.
    fn select_neighbors(&self, sorted: &[Near], m: usize) -> Vec<u32> {
        let mut kept: Vec<Near> = Vec::with_capacity(m);
        for &c in sorted {
            if kept.len() >= m {
                break;
            }
            let row = self.row(c.slot);
            let c_sq = self.sq_norms.get(c.slot as usize).copied().unwrap_or(0.0);
            if kept.iter().all(|k| self.sim(row, c_sq, k.slot) < c.sim) {
                kept.push(c);
            }
        }
        kept.into_iter().map(|n| n.slot).collect()
    }

    fn random_level(&mut self) -> usize {
        let ml = 1.0 / (self.params.m as f64).ln();
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        ((-u.ln() * ml) as usize).min(MAX_LEVEL)
    }

    /// Adds one prepared row as a new node.
    fn insert(&mut self, id: u64, row: &[f32]) {
        let slot = self.ids.len() as u32;
        let level = self.random_level();
        let sq = dot(row, row);
        self.data.extend_from_slice(row);
        if self.metric == Metric::L2 {
            self.sq_norms.push(sq);
        }
        self.ids.push(id);
        self.alive.push(true);
        self.links.push(vec![Vec::new(); level + 1]);
        self.slots.insert(id, slot);

        let Some(mut entry) = self.descend(row, sq, level) else {
            self.entry = Some(slot);
            self.top_level = level;
            return;
        };
        let row = row.to_vec();
        for l in (0..=level.min(self.top_level)).rev() {
            let found =
                self.search_layer(&row, sq, &[entry], self.params.ef_construction, l, &|s| {
                    s != slot
                });
            let neighbors = self.select_neighbors(&found, self.params.m);
            for &nb in &neighbors {
                self.links[nb as usize][l].push(slot);
                if self.links[nb as usize][l].len() > self.max_links(l) {
                    self.prune(nb, l);
                }
            }
            self.links[slot as usize][l] = neighbors;
            entry = found.first().copied().unwrap_or(entry);
        }
        if level > self.top_level {
            self.entry = Some(slot);
            self.top_level = level;
        }
    }

    /// Cuts a node's links on one layer back to the layer's maximum with the heuristic.
    fn prune(&mut self, node: u32, level: usize) {
        let row = self.row(node).to_vec();
        let sq = self.sq_norms.get(node as usize).copied().unwrap_or(0.0);
        let mut near: Vec<Near> = self.links[node as usize][level]
            .iter()
            .map(|&s| Near {
                sim: self.sim(&row, sq, s),
                slot: s,
            })
            .collect();
        near.sort_by(|a, b| b.cmp(a));
        self.links[node as usize][level] = self.select_neighbors(&near, self.max_links(level));
    }

    /// Rebuilds the graph from the live rows (after many removals).
    fn rebuild(&mut self) {
        let live: Vec<(u64, Vec<f32>)> = (0..self.ids.len() as u32)
            .filter(|&s| self.alive[s as usize])
            .map(|s| (self.ids[s as usize], self.row(s).to_vec()))
            .collect();
        tracing::debug!(
            live = live.len(),
            dead = self.ids.len() - live.len(),
            "rebuilding HNSW graph"
        );
        let mut fresh = HnswIndex::new(self.dim, self.metric, self.params)
            .expect("dimension was checked when this index was built");
        for (id, row) in live {
            fresh.insert(id, &row);
        }
        *self = fresh;
    }

    /// [`VectorIndex::search_filtered`] with `ef` candidates kept instead of the index's
    /// `ef_search` (at least `k` either way): one query may trade speed for recall.
    pub fn search_with_ef(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
        ef: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        let n = crate::topk::check_queries(self.dim, queries)?;
        if k == 0 || self.slots.is_empty() {
            return Ok(vec![Vec::new(); n]);
        }
        let ef = ef.unwrap_or(self.params.ef_search);
        Ok(queries
            .par_chunks(self.dim)
            .map(|q| self.search_one(q, k, filter, ef))
            .collect())
    }

    fn search_one(&self, q: &[f32], k: usize, filter: Option<Filter<'_>>, ef: usize) -> Vec<Hit> {
        let mut prepared = q.to_vec();
        crate::topk::prepare(self.metric, &mut prepared);
        let q_sq = dot(&prepared, &prepared);
        let accept =
            |s: u32| self.alive[s as usize] && filter.is_none_or(|f| f(self.ids[s as usize]));
        let found = match self.descend(&prepared, q_sq, 0) {
            Some(entry) => self.search_layer(&prepared, q_sq, &[entry], ef.max(k), 0, &accept),
            None => Vec::new(),
        };
        let found = if found.len() < k && found.len() < self.slots.len() {
            // Too few reachable results: scan the allowed rows exactly.
            (0..self.ids.len() as u32)
                .filter(|&s| accept(s))
                .map(|s| Near {
                    sim: self.sim(&prepared, q_sq, s),
                    slot: s,
                })
                .collect()
        } else {
            found
        };
        let mut hits: Vec<Hit> = found
            .into_iter()
            .map(|n| Hit {
                id: self.ids[n.slot as usize],
                score: match self.metric {
                    Metric::Cosine | Metric::Dot => n.sim,
                    Metric::L2 => (-n.sim).max(0.0),
                },
            })
            .collect();
        hits.sort_by(|a, b| crate::topk::compare(self.metric, a, b));
        hits.truncate(k);
        hits
    }
}

impl VectorIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        crate::topk::check_rows(self.dim, ids, vectors)?;
        if self.ids.len() + ids.len() > u32::MAX as usize {
            return Err(TopKError::TooManyRows {
                len: self.ids.len() + ids.len(),
                max: u32::MAX as usize,
            });
        }
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(self.dim)) {
            if let Some(old) = self.slots.remove(&id) {
                self.alive[old as usize] = false;
            }
            let mut row = v.to_vec();
            crate::topk::prepare(self.metric, &mut row);
            self.insert(id, &row);
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize, TopKError> {
        let mut removed = 0;
        for id in ids {
            if let Some(slot) = self.slots.remove(id) {
                self.alive[slot as usize] = false;
                removed += 1;
            }
        }
        let dead = self.ids.len() - self.slots.len();
        if dead > self.slots.len() && dead >= 64 {
            self.rebuild();
        }
        Ok(removed)
    }

    fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        self.search_with_ef(queries, k, filter, None)
    }

    fn memory(&self) -> MemoryUsage {
        let links: usize = self
            .links
            .iter()
            .map(|node| {
                size_of::<Vec<Vec<u32>>>()
                    + node
                        .iter()
                        .map(|l| size_of::<Vec<u32>>() + l.capacity() * 4)
                        .sum::<usize>()
            })
            .sum();
        let map = self.slots.capacity() * (size_of::<u64>() + size_of::<u32>() + 1);
        MemoryUsage {
            host_bytes: self.data.capacity() * 4
                + self.sq_norms.capacity() * 4
                + self.ids.capacity() * 8
                + self.alive.capacity()
                + links
                + map,
            device_bytes: 0,
        }
    }
}
