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
//! - [`HnswIndex::upsert_parallel`] builds on every thread of the current rayon pool;
//!   [`VectorIndex::upsert`] stays single-threaded, so that the same inserts build the same
//!   graph.
//! - [`HnswIndex::write_to`] and [`HnswIndex::read_from`] persist the graph, so that a
//!   restarted partition loads it instead of building it again.
//!
//! # Layout, and why
//! The walk is bound by memory: at 384 dimensions every distance reads 24 cache lines of a
//! row that is rarely in cache. So rows live in one contiguous array of 64-byte aligned
//! blocks (a row never straddles a line it does not need, and the kernel needs no tail), the
//! links of layer 0 in one flat array of `1 + 2m` words per node (a count, then the
//! neighbours), and the walk first collects a node's unvisited neighbours, then scores them
//! one after another, prefetching the next one's row while it scores the current one. Scratch space (visited set, heaps) is kept per
//! thread and reused, so a query allocates almost nothing.
//!
//! Links are atomics so that several threads can insert at once: a writer changes a node's
//! lists only under that node's lock (one of a set of striped mutexes, never two held at a
//! time, so no deadlock), and readers walk without locks, at worst seeing a list that is being
//! rewritten (every word in it is still a valid node). On x86 a relaxed atomic load is a
//! plain load, so the single-threaded walk pays nothing for this.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering as Mem};
use std::sync::{Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::topk::{Filter, Hit, MemoryUsage, Metric, TopKError, VectorIndex};

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

/// The most links per node on the upper layers. Far above any useful setting (hnswlib
/// suggests 2 to 100); it bounds what a graph file can make [`HnswIndex::read_from`]
/// allocate per node it actually contains.
pub const MAX_M: usize = 1024;

/// Floats per storage block: one 64-byte cache line, one AVX-512 register.
const LANES: usize = 16;

/// Lock stripes guarding the link lists during inserts (node `s` uses stripe `s % STRIPES`).
const STRIPES: usize = 1024;

/// One cache line of a row; rows are padded with zeros to whole blocks.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Block([f32; LANES]);

const ZERO_BLOCK: Block = Block([0.0; LANES]);

/// The floats of a run of blocks.
fn flat(blocks: &[Block]) -> &[f32] {
    // SAFETY: `Block` is `repr(C)` around `[f32; LANES]` with no padding (its size, 64, is
    // a multiple of its alignment), so `n` blocks are `n * LANES` contiguous floats.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<f32>(), blocks.len() * LANES) }
}

/// Copies `v` into whole blocks, zero-padded.
fn to_blocks(v: &[f32], out: &mut Vec<Block>) {
    out.clear();
    for chunk in v.chunks(LANES) {
        let mut b = ZERO_BLOCK;
        b.0[..chunk.len()].copy_from_slice(chunk);
        out.push(b);
    }
}

/// Inner product of two equally long runs of blocks.
type DotFn = fn(&[Block], &[Block]) -> f32;

/// The portable kernel, in plain Rust the compiler vectorizes as it can.
fn dot_portable(a: &[Block], b: &[Block]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.iter().zip(b) {
        for ((acc, x), y) in acc.iter_mut().zip(&x.0).zip(&y.0) {
            *acc += x * y;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Block, LANES};
    use std::arch::x86_64::*;

    /// Four accumulators, so that four fused multiply-adds are in flight at once.
    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_avx512(a: &[Block], b: &[Block]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr().cast::<f32>(), b.as_ptr().cast::<f32>());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: blocks `i..n` of both runs exist and are 64-byte aligned.
        unsafe {
            while i + 4 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_load_ps(pa.add((i + j) * LANES));
                    let y = _mm512_load_ps(pb.add((i + j) * LANES));
                    *acc = _mm512_fmadd_ps(x, y, *acc);
                }
                i += 4;
            }
            while i < n {
                let x = _mm512_load_ps(pa.add(i * LANES));
                let y = _mm512_load_ps(pb.add(i * LANES));
                acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
                i += 1;
            }
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// Two 8-float halves per block, two blocks per step: four accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_avx2(a: &[Block], b: &[Block]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr().cast::<f32>(), b.as_ptr().cast::<f32>());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: blocks `i..n` of both runs exist and are 64-byte aligned.
        unsafe {
            while i + 2 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_load_ps(pa.add(i * LANES + j * 8));
                    let y = _mm256_load_ps(pb.add(i * LANES + j * 8));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 2;
            }
            while i < n {
                for (j, acc) in acc.iter_mut().take(2).enumerate() {
                    let x = _mm256_load_ps(pa.add(i * LANES + j * 8));
                    let y = _mm256_load_ps(pb.add(i * LANES + j * 8));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 1;
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// The best inner-product kernel this CPU runs.
fn pick_dot() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            // SAFETY: the feature was just detected.
            return |a, b| unsafe { x86::dot_avx512(a, b) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the features were just detected.
            return |a, b| unsafe { x86::dot_avx2(a, b) };
        }
    }
    dot_portable
}

/// Asks the CPU to start loading the cache lines of `blocks`, so that several rows are on
/// their way from memory at once instead of one after another.
#[inline(always)]
fn prefetch(blocks: &[Block]) {
    #[cfg(target_arch = "x86_64")]
    for b in blocks {
        // SAFETY: prefetching has no architectural effect; the address is a valid block.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (b as *const Block).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = blocks;
}

/// A node with its similarity to some target; higher is better, ties to the lower slot.
#[derive(Debug, Clone, Copy)]
struct Near {
    sim: f32,
    slot: u32,
}

impl Near {
    /// One integer that orders as `Ord` does: the similarity's bits made to sort as
    /// integers, then the inverted slot. One compare per heap step instead of a float compare
    /// and a branch. `+ 0.0` turns -0.0 into 0.0 so that the two tie, as floats do.
    #[inline(always)]
    fn key(&self) -> u64 {
        let bits = (self.sim + 0.0).to_bits();
        let ordered = if bits >> 31 == 1 {
            !bits
        } else {
            bits | 0x8000_0000
        };
        (u64::from(ordered) << 32) | u64::from(!self.slot)
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Near {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Near {}

/// Nodes seen during one walk: a bitset, and the words set in it, so that clearing costs
/// what the walk touched rather than the size of the graph.
#[derive(Default)]
struct Visited {
    bits: Vec<u64>,
    touched: Vec<u32>,
}

impl Visited {
    /// Empties the set and makes room for `n` nodes.
    fn reset(&mut self, n: usize) {
        for &w in &self.touched {
            self.bits[w as usize] = 0;
        }
        self.touched.clear();
        let words = n.div_ceil(64);
        if self.bits.len() < words {
            self.bits.resize(words, 0);
        }
    }

    /// Marks `slot`; true when it was not marked before.
    #[inline(always)]
    fn insert(&mut self, slot: u32) -> bool {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        let w = &mut self.bits[word];
        if *w & bit != 0 {
            return false;
        }
        if *w == 0 {
            self.touched.push(slot / 64);
        }
        *w |= bit;
        true
    }
}

/// Per-thread working memory of walks and inserts, reused from one to the next.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    candidates: BinaryHeap<Near>,
    /// Worst result on top.
    results: BinaryHeap<Reverse<Near>>,
    /// Unvisited neighbours of the node being expanded.
    fresh: Vec<u32>,
    /// What a layer walk found, best first.
    found: Vec<Near>,
    /// Neighbours chosen by the heuristic.
    kept: Vec<Near>,
    /// A list being pruned.
    pruning: Vec<Near>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (or a fresh one, were it already in use).
fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The entry of the graph: a node on its top layer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Top {
    entry: Option<u32>,
    level: usize,
}

/// An approximate nearest-neighbour index.
#[derive(Debug)]
pub struct HnswIndex {
    dim: usize,
    metric: Metric,
    params: HnswParams,
    /// Blocks per row: `dim` rounded up to whole blocks.
    stride: usize,
    /// Row of each node (slot), `stride` blocks each; normalized for cosine.
    data: Vec<Block>,
    /// `|v|²` of each node, for L2 only.
    sq_norms: Vec<f32>,
    ids: Vec<u64>,
    alive: Vec<bool>,
    levels: Vec<u8>,
    /// Layer 0: per node `1 + 2m` words, the count of links then the links.
    base: Vec<AtomicU32>,
    /// Layers 1 to the node's level: per layer `1 + m` words, the count then the links.
    upper: Vec<Box<[AtomicU32]>>,
    /// Live node of each id.
    slots: HashMap<u64, u32>,
    top: Mutex<Top>,
    /// Held while a node's lists change (`slot % STRIPES`).
    locks: Box<[Mutex<()>]>,
    rng: StdRng,
    dot: DotFn,
}

impl Clone for HnswIndex {
    fn clone(&self) -> Self {
        let copy = |run: &[AtomicU32]| -> Vec<AtomicU32> {
            run.iter()
                .map(|a| AtomicU32::new(a.load(Mem::Relaxed)))
                .collect()
        };
        HnswIndex {
            dim: self.dim,
            metric: self.metric,
            params: self.params,
            stride: self.stride,
            data: self.data.clone(),
            sq_norms: self.sq_norms.clone(),
            ids: self.ids.clone(),
            alive: self.alive.clone(),
            levels: self.levels.clone(),
            base: copy(&self.base),
            upper: self
                .upper
                .iter()
                .map(|u| copy(u).into_boxed_slice())
                .collect(),
            slots: self.slots.clone(),
            top: Mutex::new(self.top()),
            locks: new_locks(),
            rng: self.rng.clone(),
            dot: self.dot,
        }
    }
}

fn new_locks() -> Box<[Mutex<()>]> {
    (0..STRIPES).map(|_| Mutex::new(())).collect()
}

/// A lock guards no data of its own, so a panic elsewhere leaves nothing to distrust.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HnswIndex {
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> Result<Self, TopKError> {
        if dim == 0 {
            return Err(TopKError::ZeroDimension);
        }
        let params = HnswParams {
            m: params.m.clamp(2, MAX_M),
            ef_construction: params.ef_construction.max(1),
            ef_search: params.ef_search.max(1),
            ..params
        };
        Ok(HnswIndex {
            dim,
            metric,
            params,
            stride: dim.div_ceil(LANES),
            data: Vec::new(),
            sq_norms: Vec::new(),
            ids: Vec::new(),
            alive: Vec::new(),
            levels: Vec::new(),
            base: Vec::new(),
            upper: Vec::new(),
            slots: HashMap::new(),
            top: Mutex::new(Top::default()),
            locks: new_locks(),
            rng: StdRng::seed_from_u64(params.seed),
            dot: pick_dot(),
        })
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Changes how many candidates a search keeps (recall against speed); no rebuild needed.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    fn top(&self) -> Top {
        *lock(&self.top)
    }

    #[inline(always)]
    fn row(&self, slot: u32) -> &[Block] {
        let s = slot as usize * self.stride;
        &self.data[s..s + self.stride]
    }

    /// Similarity of a prepared vector (with `|v|²`) to a node: higher is better. For L2 it
    /// is the negated squared distance.
    #[inline(always)]
    fn sim(&self, v: &[Block], v_sq: f32, slot: u32) -> f32 {
        let d = (self.dot)(v, self.row(slot));
        match self.metric {
            Metric::Cosine | Metric::Dot => d,
            Metric::L2 => 2.0 * d - v_sq - self.sq_norms[slot as usize],
        }
    }

    /// Similarity of two nodes.
    fn sim_nodes(&self, a: u32, b: u32) -> f32 {
        self.sim(self.row(a), self.sq_norm(a), b)
    }

    fn sq_norm(&self, slot: u32) -> f32 {
        self.sq_norms.get(slot as usize).copied().unwrap_or(0.0)
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.params.m
        } else {
            self.params.m
        }
    }

    /// The words of a node's list on one layer: the count, then room for the links.
    #[inline(always)]
    fn run(&self, slot: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let w = 1 + 2 * self.params.m;
            &self.base[slot as usize * w..(slot as usize + 1) * w]
        } else {
            let w = 1 + self.params.m;
            &self.upper[slot as usize][(level - 1) * w..level * w]
        }
    }

    /// A node's links on one layer (possibly being rewritten by another thread).
    #[inline(always)]
    fn links(&self, slot: u32, level: usize) -> &[AtomicU32] {
        let run = self.run(slot, level);
        let n = (run[0].load(Mem::Acquire) as usize).min(run.len() - 1);
        &run[1..1 + n]
    }

    /// Replaces a node's list on one layer. The caller holds the node's lock.
    fn store_links(&self, slot: u32, level: usize, links: impl ExactSizeIterator<Item = u32>) {
        let run = self.run(slot, level);
        let n = links.len().min(run.len() - 1);
        for (word, s) in run[1..].iter().zip(links) {
            word.store(s, Mem::Relaxed);
        }
        run[0].store(n as u32, Mem::Release);
    }

    fn node_lock(&self, slot: u32) -> MutexGuard<'_, ()> {
        lock(&self.locks[slot as usize % STRIPES])
    }

    /// Greedy descent from `top` through the layers above `to`: the best entry for `to`.
    fn descend(&self, v: &[Block], v_sq: f32, top: Top, to: usize) -> Option<Near> {
        let entry = top.entry?;
        let mut best = Near {
            sim: self.sim(v, v_sq, entry),
            slot: entry,
        };
        for level in (to + 1..=top.level).rev() {
            loop {
                let mut moved = false;
                for nb in self.links(best.slot, level) {
                    let nb = nb.load(Mem::Relaxed);
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

    /// Best-first walk of one layer from `entry`. Every node routes; only nodes that pass
    /// `accept` become results. Leaves up to `ef` results, best first, in `s.found`.
    #[allow(clippy::too_many_arguments)] // all of them the walk's own state
    fn search_layer(
        &self,
        v: &[Block],
        v_sq: f32,
        entry: Near,
        ef: usize,
        level: usize,
        accept: impl Fn(u32) -> bool,
        s: &mut Scratch,
    ) {
        s.visited.reset(self.ids.len());
        s.candidates.clear();
        s.results.clear();
        s.visited.insert(entry.slot);
        s.candidates.push(entry);
        if accept(entry.slot) {
            s.results.push(Reverse(entry));
        }
        while let Some(c) = s.candidates.pop() {
            if s.results.len() >= ef && s.results.peek().is_some_and(|w| c < w.0) {
                break;
            }
            s.fresh.clear();
            for nb in self.links(c.slot, level) {
                let nb = nb.load(Mem::Relaxed);
                if s.visited.insert(nb) {
                    s.fresh.push(nb);
                }
            }
            // While one row is scored, the first line of the next is on its way (the
            // hardware prefetcher follows on with the rest of it once it is touched), as
            // hnswlib does. On 20k rows of 384 floats (by CPU time, a noisy shared machine)
            // this was a little faster than prefetching the leading lines or the whole rows
            // of all the neighbours up front, which ties up the line-fill buffers that the
            // loads of the row being scored need.
            if let Some(&first) = s.fresh.first() {
                prefetch(&self.row(first)[..1]);
            }
            for i in 0..s.fresh.len() {
                let nb = s.fresh[i];
                if let Some(&next) = s.fresh.get(i + 1) {
                    prefetch(&self.row(next)[..1]);
                }
                let near = Near {
                    sim: self.sim(v, v_sq, nb),
                    slot: nb,
                };
                let worst = s.results.peek().map(|w| w.0);
                if s.results.len() < ef || worst.is_none_or(|w| near > w) {
                    s.candidates.push(near);
                    if accept(nb) {
                        s.results.push(Reverse(near));
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                    }
                }
            }
        }
        s.found.clear();
        s.found.extend(s.results.drain().map(|r| r.0));
        s.found.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Malkov's neighbour heuristic: keep a candidate only when it is nearer to the base node
    /// than to every neighbour already kept, which keeps links spread over directions.
    fn select_neighbors(&self, sorted: &[Near], m: usize, kept: &mut Vec<Near>) {
        kept.clear();
        for &c in sorted {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|k| self.sim_nodes(c.slot, k.slot) < c.sim) {
                kept.push(c);
            }
        }
    }

    fn random_level(&mut self) -> usize {
        let ml = 1.0 / (self.params.m as f64).ln();
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        ((-u.ln() * ml) as usize).min(MAX_LEVEL)
    }

    /// Makes room for `more` rows: exactly when asked to ([`VectorIndex::reserve`], for a
    /// known final size), else with the usual doubling, so that many small upserts do not
    /// copy the arrays once each.
    fn reserve_rows(&mut self, more: usize, exact: bool) {
        fn grow<T>(v: &mut Vec<T>, more: usize, exact: bool) {
            if exact {
                v.reserve_exact(more);
            } else {
                v.reserve(more);
            }
        }
        grow(&mut self.data, more * self.stride, exact);
        if self.metric == Metric::L2 {
            grow(&mut self.sq_norms, more, exact);
        }
        grow(&mut self.ids, more, exact);
        grow(&mut self.alive, more, exact);
        grow(&mut self.levels, more, exact);
        grow(&mut self.base, more * (1 + 2 * self.params.m), exact);
        grow(&mut self.upper, more, exact);
        self.slots.reserve(more);
    }

    /// Adds a raw row as a node with no links yet (killing the id's old node): its vector,
    /// its level drawn from the seeded stream, and room for its lists.
    fn push_node(&mut self, id: u64, v: &[f32]) -> u32 {
        if let Some(old) = self.slots.remove(&id) {
            self.alive[old as usize] = false;
        }
        let mut row = v.to_vec();
        crate::topk::prepare(self.metric, &mut row);
        let level = self.random_level();
        self.push_row(id, true, level as u8, &row)
    }

    /// Links an added node into the graph. Safe to run for several nodes at once: lists
    /// change only under their node's lock, and the entry only under the entry's lock (held
    /// for the whole insert by a node that rises above the top, as hnswlib does).
    fn link(&self, slot: u32, s: &mut Scratch) {
        let level = self.levels[slot as usize] as usize;
        let (row, sq) = (self.row(slot), self.sq_norm(slot));
        let mut top_guard = lock(&self.top);
        let top = *top_guard;
        if top.entry.is_none() {
            *top_guard = Top {
                entry: Some(slot),
                level,
            };
            return;
        }
        let raising = if level > top.level {
            Some(top_guard)
        } else {
            drop(top_guard);
            None
        };
        let Some(mut entry) = self.descend(row, sq, top, level) else {
            return;
        };
        let ef = self.params.ef_construction;
        for l in (0..=level.min(top.level)).rev() {
            self.search_layer(row, sq, entry, ef, l, |n| n != slot, s);
            let found = std::mem::take(&mut s.found);
            let mut kept = std::mem::take(&mut s.kept);
            self.select_neighbors(&found, self.params.m, &mut kept);
            self.set_links(slot, l, &kept, s);
            for nb in &kept {
                self.add_link(nb.slot, slot, l, s);
            }
            entry = found.first().copied().unwrap_or(entry);
            s.found = found;
            s.kept = kept;
        }
        if let Some(mut g) = raising {
            *g = Top {
                entry: Some(slot),
                level,
            };
        }
    }

    /// Gives a new node its chosen links on one layer. Another thread may have linked to it
    /// already (reaching it from above): those links are kept too, pruned when too many.
    fn set_links(&self, slot: u32, level: usize, chosen: &[Near], s: &mut Scratch) {
        let _guard = self.node_lock(slot);
        let existing = self.links(slot, level);
        if existing.is_empty() {
            self.store_links(slot, level, chosen.iter().map(|n| n.slot));
            return;
        }
        let mut all: Vec<u32> = chosen.iter().map(|n| n.slot).collect();
        for e in existing {
            let e = e.load(Mem::Relaxed);
            if !all.contains(&e) {
                all.push(e);
            }
        }
        self.store_pruned(slot, level, &all, s);
    }

    /// Adds `new` to `node`'s list on one layer; a full list is pruned with the heuristic.
    fn add_link(&self, node: u32, new: u32, level: usize, s: &mut Scratch) {
        let _guard = self.node_lock(node);
        let run = self.run(node, level);
        let n = run[0].load(Mem::Relaxed) as usize;
        if n < run.len() - 1 {
            run[1 + n].store(new, Mem::Relaxed);
            run[0].store(n as u32 + 1, Mem::Release);
            return;
        }
        let mut all: Vec<u32> = Vec::with_capacity(n + 1);
        all.extend(run[1..=n].iter().map(|a| a.load(Mem::Relaxed)));
        all.push(new);
        self.store_pruned(node, level, &all, s);
    }

    /// Stores the heuristic's choice among `links` as `node`'s list. The caller holds the
    /// node's lock.
    fn store_pruned(&self, node: u32, level: usize, links: &[u32], s: &mut Scratch) {
        let max = self.max_links(level);
        if links.len() <= max {
            self.store_links(node, level, links.iter().copied());
            return;
        }
        let (row, sq) = (self.row(node), self.sq_norm(node));
        s.pruning.clear();
        s.pruning.extend(links.iter().map(|&l| Near {
            sim: self.sim(row, sq, l),
            slot: l,
        }));
        s.pruning.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = std::mem::take(&mut s.kept);
        self.select_neighbors(&s.pruning, max, &mut kept);
        self.store_links(node, level, kept.iter().map(|n| n.slot));
        s.kept = kept;
    }

    /// Rebuilds the graph from the live rows (after many removals).
    fn rebuild(&mut self) {
        let live: Vec<u32> = (0..self.ids.len() as u32)
            .filter(|&s| self.alive[s as usize])
            .collect();
        tracing::debug!(
            live = live.len(),
            dead = self.ids.len() - live.len(),
            "rebuilding HNSW graph"
        );
        let mut fresh = HnswIndex::new(self.dim, self.metric, self.params)
            .expect("dimension was checked when this index was built");
        fresh.reserve_rows(live.len(), true);
        with_scratch(|s| {
            for &old in &live {
                // The row is already prepared: push it as it is (normalizing again could
                // move a cosine row by a rounding step).
                let row = &flat(self.row(old))[..self.dim];
                let level = fresh.random_level() as u8;
                let slot = fresh.push_row(self.ids[old as usize], true, level, row);
                fresh.link(slot, s);
            }
        });
        *self = fresh;
    }

    /// [`VectorIndex::upsert`] on every thread of the current rayon pool (run it inside
    /// `ThreadPool::install` to choose how many). The graph is as good as a sequential
    /// build's but depends on the threads' timing; with one thread it is the sequential
    /// build, node for node.
    pub fn upsert_parallel(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        let threads = rayon::current_num_threads();
        if threads <= 1 || ids.len() < 2 * threads {
            return self.upsert(ids, vectors);
        }
        self.check_upsert(ids, vectors)?;
        let first = self.ids.len();
        self.reserve_rows(ids.len(), false);
        // Levels are drawn in row order, as a sequential build draws them.
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(self.dim)) {
            self.push_node(id, v);
        }
        let end = self.ids.len();
        let mut next = first;
        if self.top().entry.is_none() {
            with_scratch(|s| self.link(first as u32, s));
            next += 1;
        }
        // Rows are handed out in order from a shared counter (as hnswlib does), so the graph
        // grows about as a sequential build's does rather than in distant ranges at once.
        let counter = AtomicUsize::new(next);
        let this = &*self;
        rayon::broadcast(|_| {
            with_scratch(|s| {
                loop {
                    let slot = counter.fetch_add(1, Mem::Relaxed);
                    if slot >= end {
                        break;
                    }
                    this.link(slot as u32, s);
                }
            })
        });
        Ok(())
    }

    fn check_upsert(&self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        crate::topk::check_rows(self.dim, ids, vectors)?;
        if self.ids.len() + ids.len() > u32::MAX as usize {
            return Err(TopKError::TooManyRows {
                len: self.ids.len() + ids.len(),
                max: u32::MAX as usize,
            });
        }
        Ok(())
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
        if n == 1 {
            // Handing one query to the pool and waiting for it costs more than it saves.
            return Ok(vec![self.search_one(queries, k, filter, ef)]);
        }
        Ok(queries
            .par_chunks(self.dim)
            .map(|q| self.search_one(q, k, filter, ef))
            .collect())
    }

    fn search_one(&self, q: &[f32], k: usize, filter: Option<Filter<'_>>, ef: usize) -> Vec<Hit> {
        let mut prepared = q.to_vec();
        crate::topk::prepare(self.metric, &mut prepared);
        let mut query = Vec::with_capacity(self.stride);
        to_blocks(&prepared, &mut query);
        let q_sq = (self.dot)(&query, &query);
        let accept =
            |s: u32| self.alive[s as usize] && filter.is_none_or(|f| f(self.ids[s as usize]));
        let mut found = with_scratch(|s| {
            match self.descend(&query, q_sq, self.top(), 0) {
                Some(entry) => self.search_layer(&query, q_sq, entry, ef.max(k), 0, accept, s),
                None => s.found.clear(),
            }
            std::mem::take(&mut s.found)
        });
        if found.len() < k && found.len() < self.slots.len() {
            // Too few reachable results: scan the allowed rows exactly.
            found.clear();
            found.extend(
                (0..self.ids.len() as u32)
                    .filter(|&s| accept(s))
                    .map(|s| Near {
                        sim: self.sim(&query, q_sq, s),
                        slot: s,
                    }),
            );
        }
        let mut hits: Vec<Hit> = found
            .iter()
            .map(|n| Hit {
                id: self.ids[n.slot as usize],
                score: match self.metric {
                    Metric::Cosine | Metric::Dot => n.sim,
                    Metric::L2 => (-n.sim).max(0.0),
                },
            })
            .collect();
        // Hand the buffer back for the next query on this thread.
        with_scratch(|s| {
            if s.found.capacity() < found.capacity() {
                s.found = found;
            }
        });
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
        self.check_upsert(ids, vectors)?;
        self.reserve_rows(ids.len(), false);
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(self.dim)) {
            let slot = self.push_node(id, v);
            with_scratch(|s| self.link(slot, s));
        }
        Ok(())
    }

    fn reserve(&mut self, additional: usize) -> Result<(), TopKError> {
        self.reserve_rows(additional, true);
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
        let upper: usize = self
            .upper
            .iter()
            .map(|u| size_of::<Box<[AtomicU32]>>() + u.len() * 4)
            .sum();
        let map = MemoryUsage::hash_map_bytes(self.slots.capacity(), 16);
        MemoryUsage {
            host_bytes: self.data.capacity() * size_of::<Block>()
                + self.sq_norms.capacity() * 4
                + self.ids.capacity() * 8
                + self.alive.capacity()
                + self.levels.capacity()
                + self.base.capacity() * 4
                + upper
                + map
                + STRIPES * size_of::<Mutex<()>>(),
            device_bytes: 0,
        }
    }
}

/// Why a graph file was refused by [`HnswIndex::read_from`].
#[derive(Debug, thiserror::Error)]
pub enum HnswReadError {
    #[error("reading the HNSW graph failed: {0}")]
    Io(std::io::Error),
    #[error("the HNSW graph file ends early (truncated)")]
    Truncated,
    #[error("not an HNSW graph file (no ARBHNSW magic)")]
    BadMagic,
    #[error("HNSW graph format version {found}; this build reads version {supported}")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("the HNSW graph is of dimension {found}, the index is of dimension {expected}")]
    DimensionMismatch { found: u64, expected: usize },
    #[error("the HNSW graph is for metric {found}, the index uses {expected}")]
    MetricMismatch { found: String, expected: Metric },
    #[error("the HNSW graph file is corrupt: {0}")]
    Corrupt(String),
    #[error("the HNSW graph file is corrupt: checksum {computed:#018x}, file says {stored:#018x}")]
    Checksum { stored: u64, computed: u64 },
}

impl From<std::io::Error> for HnswReadError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HnswReadError::Truncated
        } else {
            HnswReadError::Io(e)
        }
    }
}

/// First bytes of a graph file.
const MAGIC: [u8; 8] = *b"ARBHNSW\0";
/// Bumped on any change to the layout below.
const FORMAT_VERSION: u32 = 1;

fn metric_code(m: Metric) -> u32 {
    match m {
        Metric::Cosine => 0,
        Metric::Dot => 1,
        Metric::L2 => 2,
    }
}

fn metric_name(code: u32) -> String {
    match code {
        0 => Metric::Cosine.to_string(),
        1 => Metric::Dot.to_string(),
        2 => Metric::L2.to_string(),
        other => format!("#{other} (unknown)"),
    }
}

/// A 64-bit checksum of a byte stream, fed in pieces of any size: a multiply-rotate step
/// per 8-byte word (each step a bijection of the state, so any one changed word always
/// changes the sum) and a final avalanche. Not cryptographic: it catches torn writes and
/// bit rot, not an adversary.
struct Checksum {
    h: u64,
    tail: [u8; 8],
    tail_len: usize,
    total: u64,
}

impl Checksum {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new() -> Self {
        Checksum {
            h: 0x2545_F491_4F6C_DD1D,
            tail: [0; 8],
            tail_len: 0,
            total: 0,
        }
    }

    #[inline(always)]
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::K).rotate_left(29);
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(&self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        let mut h = self.h ^ u64::from_le_bytes(last);
        h = (h ^ self.total).wrapping_mul(Self::K);
        // splitmix64's finalizer.
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }
}

/// Buffers writes (so that an unbuffered file is written in large pieces) and sums them.
struct SumWriter<'a, W: Write> {
    inner: &'a mut W,
    buf: Vec<u8>,
    sum: Checksum,
}

impl<W: Write> SumWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sum.update(bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 1 << 16 {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
    fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.put(&[v])
    }
    fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn finish(mut self) -> std::io::Result<()> {
        let sum = self.sum.finish();
        self.buf.extend_from_slice(&sum.to_le_bytes());
        self.inner.write_all(&self.buf)?;
        self.inner.flush()
    }
}

/// Reads exactly what it is asked for (never past the graph's end) and sums it.
struct SumReader<'a, R: Read> {
    inner: &'a mut R,
    sum: Checksum,
}

impl<R: Read> SumReader<'_, R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), HnswReadError> {
        self.inner.read_exact(buf)?;
        self.sum.update(buf);
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, HnswReadError> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }
    fn u32(&mut self) -> Result<u32, HnswReadError> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, HnswReadError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

fn corrupt(what: impl Into<String>) -> HnswReadError {
    HnswReadError::Corrupt(what.into())
}

impl HnswIndex {
    /// Writes the whole index: a header (magic, format version, metric, dimension, params,
    /// counts, entry point), then per node its id, live mark, level, vector and links on
    /// each of its layers, then a checksum of everything before it. Little-endian
    /// throughout. Writes in large pieces, so `w` need not be buffered.
    ///
    /// Take the index's write lock for the duration: a graph being changed meanwhile would
    /// be written torn (the `&self` here only allows concurrent readers).
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut out = SumWriter {
            inner: w,
            buf: Vec::with_capacity(1 << 17),
            sum: Checksum::new(),
        };
        let top = self.top();
        out.put(&MAGIC)?;
        out.u32(FORMAT_VERSION)?;
        out.u32(metric_code(self.metric))?;
        out.u64(self.dim as u64)?;
        out.u64(self.params.m as u64)?;
        out.u64(self.params.ef_construction as u64)?;
        out.u64(self.params.ef_search as u64)?;
        out.u64(self.params.seed)?;
        out.u64(self.ids.len() as u64)?;
        out.u64(self.slots.len() as u64)?;
        out.u64(top.entry.map_or(u64::MAX, u64::from))?;
        out.u64(top.level as u64)?;
        let mut bytes = Vec::with_capacity(self.dim * 4);
        for slot in 0..self.ids.len() as u32 {
            out.u64(self.ids[slot as usize])?;
            out.u8(u8::from(self.alive[slot as usize]))?;
            let level = self.levels[slot as usize];
            out.u8(level)?;
            bytes.clear();
            for x in &flat(self.row(slot))[..self.dim] {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            out.put(&bytes)?;
            for l in 0..=level as usize {
                let links = self.links(slot, l);
                out.u32(links.len() as u32)?;
                for s in links {
                    out.u32(s.load(Mem::Relaxed))?;
                }
            }
        }
        out.finish()
    }

    /// Reads an index written by [`HnswIndex::write_to`], for an index of `dim` and
    /// `metric` (a file of another refuses to load). The file is not trusted: every count
    /// is checked against the format's limits before it is used, memory grows only with
    /// what was actually read (so a short file cannot make it allocate much), every link
    /// must name a node of the graph on that layer, and the checksum must match. Any
    /// failure is an error, never a panic.
    ///
    /// Reads exactly the bytes `write_to` wrote, nothing past them, in small pieces: give
    /// it a buffered reader (`BufReader`) for a file.
    ///
    /// The level draws of later inserts continue from a stream seeded by the params' seed
    /// and the node count, so the same file and the same inserts still build the same graph.
    pub fn read_from(
        r: &mut impl Read,
        dim: usize,
        metric: Metric,
    ) -> Result<HnswIndex, HnswReadError> {
        let mut input = SumReader {
            inner: r,
            sum: Checksum::new(),
        };
        let mut magic = [0u8; 8];
        input.fill(&mut magic)?;
        if magic != MAGIC {
            return Err(HnswReadError::BadMagic);
        }
        let version = input.u32()?;
        if version != FORMAT_VERSION {
            return Err(HnswReadError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let code = input.u32()?;
        if code > 2 || code != metric_code(metric) {
            return Err(HnswReadError::MetricMismatch {
                found: metric_name(code),
                expected: metric,
            });
        }
        let file_dim = input.u64()?;
        if file_dim != dim as u64 || dim == 0 {
            return Err(HnswReadError::DimensionMismatch {
                found: file_dim,
                expected: dim,
            });
        }
        let m = input.u64()?;
        let ef_construction = input.u64()?;
        let ef_search = input.u64()?;
        let seed = input.u64()?;
        if !(2..=MAX_M as u64).contains(&m) {
            return Err(corrupt(format!("m {m} is outside 2..={MAX_M}")));
        }
        for (name, ef) in [
            ("ef_construction", ef_construction),
            ("ef_search", ef_search),
        ] {
            if ef == 0 || ef > u64::from(u32::MAX) {
                return Err(corrupt(format!("{name} {ef} is out of range")));
            }
        }
        let params = HnswParams {
            m: m as usize,
            ef_construction: ef_construction as usize,
            ef_search: ef_search as usize,
            seed,
        };
        let nodes = input.u64()?;
        let live = input.u64()?;
        let entry = input.u64()?;
        let top_level = input.u64()?;
        if nodes > u64::from(u32::MAX) {
            return Err(corrupt(format!("{nodes} nodes is more than a graph holds")));
        }
        if live > nodes {
            return Err(corrupt(format!("{live} live nodes of {nodes}")));
        }
        if top_level > MAX_LEVEL as u64 {
            return Err(corrupt(format!("top level {top_level} above {MAX_LEVEL}")));
        }
        let entry = match (entry, nodes) {
            (u64::MAX, 0) => None,
            (e, n) if e < n => Some(e as u32),
            (e, n) => {
                return Err(corrupt(format!("entry point {e} in a graph of {n} nodes")));
            }
        };
        let nodes = nodes as usize;

        let mut index = HnswIndex::new(dim, metric, params)
            .expect("the dimension was checked to be at least 1");
        // Reserve no more than a modest amount up front: the header's counts are not yet
        // backed by data, so memory grows with the nodes actually read.
        index.reserve_rows(nodes.min(1 << 14), false);
        let mut raw = vec![0u8; dim * 4];
        let mut row = vec![0.0f32; dim];
        let mut allocated = 0usize;
        for slot in 0..nodes as u32 {
            let id = input.u64()?;
            let alive = match input.u8()? {
                0 => false,
                1 => true,
                other => return Err(corrupt(format!("node {slot}: live mark {other}"))),
            };
            let level = input.u8()?;
            if level as usize > MAX_LEVEL {
                return Err(corrupt(format!("node {slot}: level {level}")));
            }
            // Each node costs memory for its row and full-size lists; a file that claims
            // far more of it than its own bytes could describe is refused before it is
            // allocated (a real graph stays far under: its lists are mostly full).
            allocated += index.stride * size_of::<Block>()
                + (1 + 2 * index.params.m + level as usize * (1 + index.params.m)) * 4
                + 32;
            if allocated as u64 > 64 * input.sum.total + (16 << 20) {
                return Err(corrupt(format!(
                    "node {slot}: the graph would need {allocated} bytes of memory, far more \
                     than the {} bytes read describe",
                    input.sum.total
                )));
            }
            input.fill(&mut raw)?;
            for (x, b) in row.iter_mut().zip(raw.chunks_exact(4)) {
                *x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
            if let Some(p) = row.iter().position(|x| !x.is_finite()) {
                return Err(corrupt(format!("node {slot}: non-finite component {p}")));
            }
            index.push_row(id, alive, level, &row);
            for l in 0..=level as usize {
                let count = input.u32()? as usize;
                let max = index.max_links(l);
                if count > max {
                    return Err(corrupt(format!(
                        "node {slot}: {count} links on layer {l}, at most {max}"
                    )));
                }
                let run = index.run(slot, l);
                for word in &run[1..=count] {
                    word.store(input.u32()?, Mem::Relaxed);
                }
                run[0].store(count as u32, Mem::Relaxed);
            }
        }
        let computed = input.sum.finish();
        let mut stored = [0u8; 8];
        input.inner.read_exact(&mut stored)?;
        let stored = u64::from_le_bytes(stored);
        if stored != computed {
            return Err(HnswReadError::Checksum { stored, computed });
        }

        // The structure: links inside the graph and on a layer their target has, the entry
        // on the top layer, ids of live nodes unique.
        for slot in 0..nodes as u32 {
            for l in 0..=index.levels[slot as usize] as usize {
                for s in index.links(slot, l) {
                    let s = s.load(Mem::Relaxed);
                    if s as usize >= nodes || (index.levels[s as usize] as usize) < l {
                        return Err(corrupt(format!(
                            "node {slot} links to {s} on layer {l}, which has no such node"
                        )));
                    }
                }
            }
        }
        let max_level = index.levels.iter().copied().max().unwrap_or(0) as u64;
        if let Some(e) = entry
            && (index.levels[e as usize] as u64 != top_level || max_level != top_level)
        {
            return Err(corrupt(format!(
                "entry point {e} is not on the top layer {top_level}"
            )));
        }
        if index.slots.len() as u64 != live {
            return Err(corrupt(format!(
                "{} distinct live ids, header says {live}",
                index.slots.len()
            )));
        }
        *index.top.get_mut().unwrap_or_else(|p| p.into_inner()) = Top {
            entry,
            level: top_level as usize,
        };
        index.rng = StdRng::seed_from_u64(seed ^ (nodes as u64).wrapping_mul(Checksum::K));
        Ok(index)
    }

    /// Adds a node with a prepared row and empty lists on layers 0 to `level`.
    fn push_row(&mut self, id: u64, alive: bool, level: u8, row: &[f32]) -> u32 {
        let slot = self.ids.len() as u32;
        let start = self.data.len();
        self.data.resize(start + self.stride, ZERO_BLOCK);
        for (b, chunk) in self.data[start..].iter_mut().zip(row.chunks(LANES)) {
            b.0[..chunk.len()].copy_from_slice(chunk);
        }
        if self.metric == Metric::L2 {
            let r = self.row(slot);
            self.sq_norms.push((self.dot)(r, r));
        }
        self.ids.push(id);
        self.alive.push(alive);
        self.levels.push(level);
        self.base
            .extend((0..1 + 2 * self.params.m).map(|_| AtomicU32::new(0)));
        self.upper.push(
            (0..level as usize * (1 + self.params.m))
                .map(|_| AtomicU32::new(0))
                .collect(),
        );
        if alive {
            // (From a file, a second live node with an id leaves the count short of the
            // header's, which is refused.)
            self.slots.insert(id, slot);
        }
        slot
    }
}
