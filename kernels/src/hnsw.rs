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
//! # The int8 variant
//! [`QuantizedHnsw`] is the same graph walked on int8 codes of a
//! [`ScalarQuantizer`](crate::quant::ScalarQuantizer) instead of f32 rows, so that a partition
//! with `--quantization int8` keeps one byte per component in memory (384 bytes per 384-d row
//! rather than 1,536, about a quarter of the bytes every step of the walk reads from memory)
//! and rescores the best candidates on the f32 rows it reads from disk
//! ([`crate::quant::rescore`] of [`crate::quant::candidates`]`(k)` hits). A query is prepared
//! once ([`crate::quant::PreparedQuery`], f32) and scored against codes with the quantizer's
//! per-row kernel (asymmetric, as [`crate::quant::QuantizedRows::scan`] scores). Nodes are
//! compared with one another (neighbour selection and pruning while building) by preparing
//! one node's decoded row as a query, once per candidate rather than once per pair; an
//! inserted node walks the graph with its own code's decoded row, so that a graph built from
//! codes alone ([`QuantizedHnsw::build_from`]) is the graph that upserting the rows builds.
//! Removal, upsert, filtering with its exact fallback (over the codes), rebuilds (which copy
//! codes as they are) and files (kind `int8`, with the quantizer) behave as the f32 graph's.
//!
//! The graph's logic exists once, generic over where the rows live (a private `Space`: f32
//! blocks or code lines); each kind is compiled on its own, so the f32 walk calls its dot
//! kernel exactly as before and neither pays for the other.
//!
//! # Layout, and why
//! The walk is bound by memory: at 384 dimensions every distance reads 24 cache lines of a
//! row that is rarely in cache. So rows live in one contiguous array of 64-byte aligned
//! blocks (a row never straddles a line it does not need, and the kernel needs no tail), the
//! links of layer 0 in one flat array of `1 + 2m` words per node (a count, then the
//! neighbours), and the walk first collects a node's unvisited neighbours, then scores them
//! one after another, prefetching the next one's row while it scores the current one. Scratch space (visited set, heaps) is kept per
//! thread and reused, so a query allocates almost nothing. The large arrays are backed by
//! 2 MiB pages where Linux grants them on request: at a million rows a walk's reads are spread
//! over 1.5 GB, and on 4 KiB pages nearly each of them also missed the TLB (on 1M × 384
//! rows, 2 threads' graph, a Zen 3 VM: 1.3-1.5× the queries/s at every ef).
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

use crate::quant::{self, ClampStats, PreparedQuery, QuantizedRows, RowsFn, ScalarQuantizer};
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

/// Asks the CPU to start loading the cache line at `line`, so that several rows are on their
/// way from memory at once instead of one after another.
#[inline(always)]
fn prefetch<T>(line: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching has no architectural effect; the address is a valid value.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (line as *const T).cast::<i8>(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = line;
}

/// Where a graph keeps its rows and how it compares a query with them: f32 blocks
/// ([`F32Rows`], behind [`HnswIndex`]) or int8 codes ([`Codes`], behind [`QuantizedHnsw`]).
/// [`Graph`] is generic over it, so that each kind's walk is compiled on its own with the
/// distance inlined (no dispatch per distance) from one copy of the graph's logic.
trait Space: Sized + Send + Sync {
    /// What a walk scores nodes against: a prepared query, borrowed where it can be.
    type Query<'a>
    where
        Self: 'a;
    /// Storage a query from outside is prepared into.
    type Buf: Default;
    /// The kind marker of graph files, and its name for errors.
    const KIND: u32;
    const KIND_NAME: &'static str;

    fn dim(&self) -> usize;
    fn metric(&self) -> Metric;
    /// An empty space with the same settings (for codes: the same quantizer and clamp
    /// counts), for a rebuild to fill.
    fn empty_like(&self) -> Self;
    /// Prepares a raw query (normalized here for cosine), once per query.
    fn prepare<'a>(&'a self, raw: &[f32], buf: &'a mut Self::Buf) -> Self::Query<'a>;
    /// A node's row as a query: what nodes are compared with one another by, and what an
    /// inserted node walks the graph with.
    fn node(&self, slot: u32) -> Self::Query<'_>;
    /// Similarity of a query to a node: higher is nearer; for L2 the negated squared distance.
    fn sim(&self, q: &Self::Query<'_>, slot: u32) -> f32;
    /// Starts loading the first line of a node's row.
    fn prefetch(&self, slot: u32);
    fn reserve(&mut self, more: usize, exact: bool);
    /// Appends a raw row (prepared for the metric, or encoded, here).
    fn push_raw(&mut self, row: &[f32]);
    /// Appends the row of `slot` in `from` as it is stored (no round trip through f32).
    fn push_copy(&mut self, from: &Self, slot: u32);
    /// Memory one row takes.
    fn row_bytes(&self) -> usize;
    /// Memory all rows (and whatever else the space holds) take.
    fn memory_bytes(&self) -> usize;
    /// Bytes of one row in a graph file.
    fn file_row_bytes(&self) -> usize;
    fn write_row(&self, slot: u32, out: &mut Vec<u8>);
    /// Appends a row read from a file; the error says what is wrong with it.
    fn read_row(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// What a graph file holds of the space besides its rows, after the common header.
    fn write_extra<W: Write>(&self, out: &mut SumWriter<'_, W>) -> std::io::Result<()>;
    /// Reads [`Space::write_extra`]'s bytes into an empty space for `dim` and `metric`.
    fn read_extra<R: Read>(
        input: &mut SumReader<'_, R>,
        dim: usize,
        metric: Metric,
    ) -> Result<Self, HnswReadError>;
}

/// The f32 rows of [`HnswIndex`]: one contiguous array of 64-byte blocks, normalized for
/// cosine, with `|v|²` per row for L2.
#[derive(Debug, Clone)]
struct F32Rows {
    dim: usize,
    metric: Metric,
    /// Blocks per row: `dim` rounded up to whole blocks.
    stride: usize,
    /// `stride` blocks per node.
    data: Vec<Block>,
    /// `|v|²` of each node, for L2 only.
    sq_norms: Vec<f32>,
    dot: DotFn,
}

/// A prepared f32 vector and its `|v|²`: a node's own row, or a query's blocks.
#[derive(Clone, Copy)]
struct RowRef<'a> {
    v: &'a [Block],
    sq: f32,
}

impl F32Rows {
    fn new(dim: usize, metric: Metric) -> Self {
        F32Rows {
            dim,
            metric,
            stride: dim.div_ceil(LANES),
            data: Vec::new(),
            sq_norms: Vec::new(),
            dot: pick_dot(),
        }
    }

    #[inline(always)]
    fn row(&self, slot: u32) -> &[Block] {
        let s = slot as usize * self.stride;
        &self.data[s..s + self.stride]
    }

    /// Appends a row already prepared for the metric.
    fn push_prepared(&mut self, row: &[f32]) {
        let start = self.data.len();
        self.data.resize(start + self.stride, ZERO_BLOCK);
        for (b, chunk) in self.data[start..].iter_mut().zip(row.chunks(LANES)) {
            b.0[..chunk.len()].copy_from_slice(chunk);
        }
        if self.metric == Metric::L2 {
            let r = &self.data[start..];
            self.sq_norms.push((self.dot)(r, r));
        }
    }
}

impl Space for F32Rows {
    type Query<'a> = RowRef<'a>;
    type Buf = Vec<Block>;
    const KIND: u32 = 0;
    const KIND_NAME: &'static str = "f32";

    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn empty_like(&self) -> Self {
        F32Rows::new(self.dim, self.metric)
    }

    fn prepare<'a>(&'a self, raw: &[f32], buf: &'a mut Vec<Block>) -> RowRef<'a> {
        let mut prepared = raw.to_vec();
        crate::topk::prepare(self.metric, &mut prepared);
        to_blocks(&prepared, buf);
        let v: &'a Vec<Block> = buf;
        RowRef {
            v,
            sq: (self.dot)(v, v),
        }
    }

    #[inline(always)]
    fn node(&self, slot: u32) -> RowRef<'_> {
        RowRef {
            v: self.row(slot),
            sq: self.sq_norms.get(slot as usize).copied().unwrap_or(0.0),
        }
    }

    #[inline(always)]
    fn sim(&self, q: &RowRef<'_>, slot: u32) -> f32 {
        let d = (self.dot)(q.v, self.row(slot));
        match self.metric {
            Metric::Cosine | Metric::Dot => d,
            Metric::L2 => 2.0 * d - q.sq - self.sq_norms[slot as usize],
        }
    }

    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        prefetch(&self.data[slot as usize * self.stride]);
    }

    fn reserve(&mut self, more: usize, exact: bool) {
        grow(&mut self.data, more * self.stride, exact);
        if self.metric == Metric::L2 {
            grow(&mut self.sq_norms, more, exact);
        }
    }

    fn push_raw(&mut self, row: &[f32]) {
        let mut row = row.to_vec();
        crate::topk::prepare(self.metric, &mut row);
        self.push_prepared(&row);
    }

    fn push_copy(&mut self, from: &Self, slot: u32) {
        // The row is already prepared: push it as it is (normalizing again could move a
        // cosine row by a rounding step).
        self.push_prepared(&flat(from.row(slot))[..self.dim]);
    }

    fn row_bytes(&self) -> usize {
        self.stride * size_of::<Block>()
    }

    fn memory_bytes(&self) -> usize {
        self.data.capacity() * size_of::<Block>() + self.sq_norms.capacity() * 4
    }

    fn file_row_bytes(&self) -> usize {
        self.dim * 4
    }

    fn write_row(&self, slot: u32, out: &mut Vec<u8>) {
        for x in &flat(self.row(slot))[..self.dim] {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }

    fn read_row(&mut self, bytes: &[u8]) -> Result<(), String> {
        let row: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        if let Some(p) = row.iter().position(|x| !x.is_finite()) {
            return Err(format!("non-finite component {p}"));
        }
        self.push_prepared(&row);
        Ok(())
    }

    fn write_extra<W: Write>(&self, _: &mut SumWriter<'_, W>) -> std::io::Result<()> {
        Ok(())
    }

    fn read_extra<R: Read>(
        _: &mut SumReader<'_, R>,
        dim: usize,
        metric: Metric,
    ) -> Result<Self, HnswReadError> {
        Ok(F32Rows::new(dim, metric))
    }
}

/// Bytes per code block: one cache line.
const CODE_LANES: usize = 64;

/// One cache line of a code; codes are padded with zeros to whole lines, so that a row never
/// straddles a line it does not need (a 384-byte code is exactly 6 lines, no padding).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct CodeBlock([u8; CODE_LANES]);

const ZERO_CODES: CodeBlock = CodeBlock([0; CODE_LANES]);

/// The bytes of a run of code blocks.
fn flat_codes(blocks: &[CodeBlock]) -> &[u8] {
    // SAFETY: `CodeBlock` is `repr(C)` around `[u8; 64]` with no padding (its size is its
    // alignment), so `n` blocks are `n * 64` contiguous bytes.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), blocks.len() * CODE_LANES) }
}

/// [`flat_codes`], writable.
fn flat_codes_mut(blocks: &mut [CodeBlock]) -> &mut [u8] {
    // SAFETY: as in `flat_codes`; the borrow is unique.
    unsafe {
        std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), blocks.len() * CODE_LANES)
    }
}

/// The int8 codes of [`QuantizedHnsw`]: one contiguous array of 64-byte lines, a code per
/// node, scored with [`crate::quant`]'s per-row kernel.
#[derive(Debug, Clone)]
struct Codes {
    quantizer: ScalarQuantizer,
    /// Lines per code: `dim` bytes rounded up to whole lines.
    stride: usize,
    data: Vec<CodeBlock>,
    clamps: ClampStats,
    rows: RowsFn,
}

impl Codes {
    fn new(quantizer: ScalarQuantizer, clamps: ClampStats) -> Self {
        Codes {
            stride: quantizer.dim().div_ceil(CODE_LANES),
            quantizer,
            data: Vec::new(),
            clamps,
            rows: quant::rows_kernel(),
        }
    }

    #[inline(always)]
    fn code(&self, slot: u32) -> &[u8] {
        let s = slot as usize * self.stride;
        &flat_codes(&self.data[s..s + self.stride])[..self.quantizer.dim()]
    }

    /// Appends a code as it is.
    fn push_code(&mut self, code: &[u8]) {
        let start = self.data.len();
        self.data.resize(start + self.stride, ZERO_CODES);
        flat_codes_mut(&mut self.data[start..])[..code.len()].copy_from_slice(code);
    }
}

impl Space for Codes {
    type Query<'a> = PreparedQuery;
    type Buf = ();
    const KIND: u32 = 1;
    const KIND_NAME: &'static str = "int8";

    fn dim(&self) -> usize {
        self.quantizer.dim()
    }

    fn metric(&self) -> Metric {
        self.quantizer.metric()
    }

    fn empty_like(&self) -> Self {
        Codes::new(self.quantizer.clone(), self.clamps)
    }

    fn prepare<'a>(&'a self, raw: &[f32], _: &'a mut ()) -> PreparedQuery {
        self.quantizer.prepare_unchecked(raw)
    }

    /// The decoded row prepared as a query: compared with another node's code, it gives the
    /// metric between the two decoded rows (symmetric, as the f32 graph's row-to-row dot is).
    /// It costs about one distance, so the heuristic prepares each candidate once and scores
    /// the kept neighbours against it, never once per pair.
    fn node(&self, slot: u32) -> PreparedQuery {
        self.quantizer.prepare_code(self.code(slot))
    }

    #[inline(always)]
    fn sim(&self, q: &PreparedQuery, slot: u32) -> f32 {
        let mut out = [0.0f32];
        (self.rows)(q, self.code(slot), &mut out);
        match q.metric() {
            Metric::Cosine | Metric::Dot => out[0],
            Metric::L2 => -out[0],
        }
    }

    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        prefetch(&self.data[slot as usize * self.stride]);
    }

    fn reserve(&mut self, more: usize, exact: bool) {
        grow(&mut self.data, more * self.stride, exact);
    }

    fn push_raw(&mut self, row: &[f32]) {
        let (start, dim) = (self.data.len(), self.quantizer.dim());
        self.data.resize(start + self.stride, ZERO_CODES);
        let code = &mut flat_codes_mut(&mut self.data[start..])[..dim];
        // Normalizes a cosine row first, as `QuantizedRows` does.
        let clamped = self.quantizer.encode_unchecked(row, code);
        self.clamps.record(dim, clamped);
    }

    fn push_copy(&mut self, from: &Self, slot: u32) {
        self.push_code(from.code(slot));
    }

    fn row_bytes(&self) -> usize {
        self.stride * size_of::<CodeBlock>()
    }

    fn memory_bytes(&self) -> usize {
        self.data.capacity() * size_of::<CodeBlock>() + self.quantizer.memory_bytes()
    }

    fn file_row_bytes(&self) -> usize {
        self.quantizer.dim()
    }

    fn write_row(&self, slot: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(self.code(slot));
    }

    fn read_row(&mut self, bytes: &[u8]) -> Result<(), String> {
        // Every byte is a valid code.
        self.push_code(bytes);
        Ok(())
    }

    /// The quantizer (its own bytes, length first) and the clamp counts, so that a loaded
    /// graph scores as the saved one did and still knows when to call for retraining.
    fn write_extra<W: Write>(&self, out: &mut SumWriter<'_, W>) -> std::io::Result<()> {
        let q = self.quantizer.to_bytes();
        out.u32(q.len() as u32)?;
        out.put(&q)?;
        let c = self.clamps;
        for v in [c.rows, c.rows_clamped, c.components, c.components_clamped] {
            out.u64(v)?;
        }
        Ok(())
    }

    fn read_extra<R: Read>(
        input: &mut SumReader<'_, R>,
        dim: usize,
        metric: Metric,
    ) -> Result<Self, HnswReadError> {
        let len = input.u32()? as usize;
        // A quantizer of `dim` takes a 16-byte header and two floats per dimension; anything
        // longer is refused before it is allocated.
        let most = dim.saturating_mul(8).saturating_add(64);
        if len > most {
            return Err(corrupt(format!(
                "a quantizer of {len} bytes for dimension {dim}"
            )));
        }
        let mut bytes = vec![0u8; len];
        input.fill(&mut bytes)?;
        let quantizer = ScalarQuantizer::from_bytes(&bytes)
            .map_err(|e| corrupt(format!("the quantizer: {e}")))?;
        if quantizer.dim() != dim || quantizer.metric() != metric {
            return Err(corrupt(format!(
                "the quantizer is for dimension {} and metric {}, the graph for {dim} and {metric}",
                quantizer.dim(),
                quantizer.metric()
            )));
        }
        let clamps = ClampStats {
            rows: input.u64()?,
            rows_clamped: input.u64()?,
            components: input.u64()?,
            components_clamped: input.u64()?,
        };
        if clamps.rows_clamped > clamps.rows || clamps.components_clamped > clamps.components {
            return Err(corrupt(format!("clamp counts {clamps:?}")));
        }
        Ok(Codes::new(quantizer, clamps))
    }
}

/// Grows `v` by `more`: exactly when asked to, else with the usual doubling. A large array
/// moves into a fresh allocation that is backed by huge pages where the kernel has them
/// ([`advise_huge_pages`]) before anything is written to it: a `realloc` would move the pages
/// already written as they are (small), and the advice only applies to pages touched after it.
fn grow<T>(v: &mut Vec<T>, more: usize, exact: bool) {
    let needed = v.len() + more;
    if needed <= v.capacity() {
        return;
    }
    let capacity = if exact {
        needed
    } else {
        needed.max(2 * v.capacity())
    };
    if capacity * std::mem::size_of::<T>() < HUGE_PAGE_MIN_BYTES {
        v.reserve_exact(capacity - v.len());
        return;
    }
    let mut fresh = Vec::with_capacity(capacity);
    advise_huge_pages(&fresh);
    fresh.append(v);
    *v = fresh;
}

/// Arrays smaller than this stay on ordinary pages: they fit in a few hundred TLB entries.
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// Asks Linux to back the allocation of `v` with transparent huge pages (2 MiB) where it
/// keeps them only on request (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, the
/// default of many distributions). A walk reads rows at random across the whole array: at a
/// million 384-d rows that is 1.5 GB, some 390,000 pages of 4 KiB, so nearly every row read
/// also misses the TLB and walks the page table; in 2 MiB pages the same array is 750
/// entries. Only a hint: where huge pages are off, or the call fails, nothing changes.
fn advise_huge_pages<T>(v: &Vec<T>) {
    #[cfg(not(target_os = "linux"))]
    let _ = v;
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let bytes = v.capacity() * std::mem::size_of::<T>();
        let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (v.as_ptr() as usize + bytes) / PAGE * PAGE;
        if end > start {
            // SAFETY: `start..end` lies within the vector's own allocation, page aligned;
            // MADV_HUGEPAGE changes how the kernel backs those pages, never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
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

/// The graph over the rows of a [`Space`]: everything of [`HnswIndex`] and [`QuantizedHnsw`]
/// but the rows themselves.
#[derive(Debug)]
struct Graph<S> {
    space: S,
    params: HnswParams,
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
}

impl<S: Clone> Clone for Graph<S> {
    fn clone(&self) -> Self {
        let copy = |run: &[AtomicU32]| -> Vec<AtomicU32> {
            run.iter()
                .map(|a| AtomicU32::new(a.load(Mem::Relaxed)))
                .collect()
        };
        Graph {
            space: self.space.clone(),
            params: self.params,
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
            top: Mutex::new(*lock(&self.top)),
            locks: new_locks(),
            rng: self.rng.clone(),
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

impl<S: Space> Graph<S> {
    fn new(space: S, params: HnswParams) -> Self {
        let params = HnswParams {
            m: params.m.clamp(2, MAX_M),
            ef_construction: params.ef_construction.max(1),
            ef_search: params.ef_search.max(1),
            ..params
        };
        Graph {
            space,
            params,
            ids: Vec::new(),
            alive: Vec::new(),
            levels: Vec::new(),
            base: Vec::new(),
            upper: Vec::new(),
            slots: HashMap::new(),
            top: Mutex::new(Top::default()),
            locks: new_locks(),
            rng: StdRng::seed_from_u64(params.seed),
        }
    }

    fn top(&self) -> Top {
        *lock(&self.top)
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
    fn descend(&self, q: &S::Query<'_>, top: Top, to: usize) -> Option<Near> {
        let entry = top.entry?;
        let mut best = Near {
            sim: self.space.sim(q, entry),
            slot: entry,
        };
        for level in (to + 1..=top.level).rev() {
            loop {
                let mut moved = false;
                for nb in self.links(best.slot, level) {
                    let nb = nb.load(Mem::Relaxed);
                    let sim = self.space.sim(q, nb);
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
    fn search_layer(
        &self,
        q: &S::Query<'_>,
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
                self.space.prefetch(first);
            }
            for i in 0..s.fresh.len() {
                let nb = s.fresh[i];
                if let Some(&next) = s.fresh.get(i + 1) {
                    self.space.prefetch(next);
                }
                let near = Near {
                    sim: self.space.sim(q, nb),
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
    /// than to every neighbour already kept, which keeps links spread over directions. Each
    /// candidate is prepared as a query once and scored against the kept ones (for f32 rows
    /// that is the row itself; for codes it costs about one distance).
    fn select_neighbors(&self, sorted: &[Near], m: usize, kept: &mut Vec<Near>) {
        kept.clear();
        for &c in sorted {
            if kept.len() >= m {
                break;
            }
            if kept.is_empty() {
                kept.push(c);
                continue;
            }
            let q = self.space.node(c.slot);
            if kept.iter().all(|k| self.space.sim(&q, k.slot) < c.sim) {
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
        self.space.reserve(more, exact);
        grow(&mut self.ids, more, exact);
        grow(&mut self.alive, more, exact);
        grow(&mut self.levels, more, exact);
        grow(&mut self.base, more * (1 + 2 * self.params.m), exact);
        grow(&mut self.upper, more, exact);
        self.slots.reserve(more);
    }

    /// Adds a raw row as a node with no links yet (killing the id's old node): its row, its
    /// level drawn from the seeded stream, and room for its lists.
    fn push_node(&mut self, id: u64, v: &[f32]) -> u32 {
        if let Some(old) = self.slots.remove(&id) {
            self.alive[old as usize] = false;
        }
        self.space.push_raw(v);
        let level = self.random_level();
        self.add_node(id, true, level as u8)
    }

    /// Adds the graph's part of a node whose row was just pushed to the space: empty lists
    /// on layers 0 to `level`.
    fn add_node(&mut self, id: u64, alive: bool, level: u8) -> u32 {
        let slot = self.ids.len() as u32;
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

    /// Links an added node into the graph. Safe to run for several nodes at once: lists
    /// change only under their node's lock, and the entry only under the entry's lock (held
    /// for the whole insert by a node that rises above the top, as hnswlib does).
    fn link(&self, slot: u32, s: &mut Scratch) {
        let level = self.levels[slot as usize] as usize;
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
        let q = self.space.node(slot);
        let Some(mut entry) = self.descend(&q, top, level) else {
            return;
        };
        let ef = self.params.ef_construction;
        for l in (0..=level.min(top.level)).rev() {
            self.search_layer(&q, entry, ef, l, |n| n != slot, s);
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
        let q = self.space.node(node);
        s.pruning.clear();
        s.pruning.extend(links.iter().map(|&l| Near {
            sim: self.space.sim(&q, l),
            slot: l,
        }));
        s.pruning.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = std::mem::take(&mut s.kept);
        self.select_neighbors(&s.pruning, max, &mut kept);
        self.store_links(node, level, kept.iter().map(|n| n.slot));
        s.kept = kept;
    }

    /// Rebuilds the graph from the live rows (after many removals), copying each row as it
    /// is stored: f32 rows are not normalized again, codes are not decoded and encoded again.
    fn rebuild(&mut self) {
        let live: Vec<u32> = (0..self.ids.len() as u32)
            .filter(|&s| self.alive[s as usize])
            .collect();
        tracing::debug!(
            live = live.len(),
            dead = self.ids.len() - live.len(),
            kind = S::KIND_NAME,
            "rebuilding HNSW graph"
        );
        let mut fresh = Graph::new(self.space.empty_like(), self.params);
        fresh.reserve_rows(live.len(), true);
        with_scratch(|s| {
            for &old in &live {
                let level = fresh.random_level() as u8;
                fresh.space.push_copy(&self.space, old);
                let slot = fresh.add_node(self.ids[old as usize], true, level);
                fresh.link(slot, s);
            }
        });
        *self = fresh;
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        self.check_upsert(ids, vectors)?;
        self.reserve_rows(ids.len(), false);
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(self.space.dim())) {
            let slot = self.push_node(id, v);
            with_scratch(|s| self.link(slot, s));
        }
        Ok(())
    }

    fn upsert_parallel(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        let threads = rayon::current_num_threads();
        if threads <= 1 || ids.len() < 2 * threads {
            return self.upsert(ids, vectors);
        }
        self.check_upsert(ids, vectors)?;
        let first = self.ids.len();
        self.reserve_rows(ids.len(), false);
        // Levels are drawn in row order, as a sequential build draws them.
        for (&id, v) in ids.iter().zip(vectors.chunks_exact(self.space.dim())) {
            self.push_node(id, v);
        }
        self.link_parallel(first);
        Ok(())
    }

    /// Links the nodes from `first` on, on every thread of the current rayon pool.
    fn link_parallel(&self, first: usize) {
        let end = self.ids.len();
        let mut next = first;
        if next < end && self.top().entry.is_none() {
            with_scratch(|s| self.link(first as u32, s));
            next += 1;
        }
        // Rows are handed out in order from a shared counter (as hnswlib does), so the graph
        // grows about as a sequential build's does rather than in distant ranges at once.
        let counter = AtomicUsize::new(next);
        rayon::broadcast(|_| {
            with_scratch(|s| {
                loop {
                    let slot = counter.fetch_add(1, Mem::Relaxed);
                    if slot >= end {
                        break;
                    }
                    self.link(slot as u32, s);
                }
            })
        });
    }

    fn check_upsert(&self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        crate::topk::check_rows(self.space.dim(), ids, vectors)?;
        if self.ids.len() + ids.len() > u32::MAX as usize {
            return Err(TopKError::TooManyRows {
                len: self.ids.len() + ids.len(),
                max: u32::MAX as usize,
            });
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> usize {
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
        removed
    }

    fn search_with_ef(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
        ef: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        let dim = self.space.dim();
        let n = crate::topk::check_queries(dim, queries)?;
        if k == 0 || self.slots.is_empty() {
            return Ok(vec![Vec::new(); n]);
        }
        let ef = ef.unwrap_or(self.params.ef_search);
        if n == 1 {
            // Handing one query to the pool and waiting for it costs more than it saves.
            return Ok(vec![self.search_one(queries, k, filter, ef)]);
        }
        Ok(queries
            .par_chunks(dim)
            .map(|q| self.search_one(q, k, filter, ef))
            .collect())
    }

    fn search_one(&self, q: &[f32], k: usize, filter: Option<Filter<'_>>, ef: usize) -> Vec<Hit> {
        let mut buf = S::Buf::default();
        let query = self.space.prepare(q, &mut buf);
        let accept =
            |s: u32| self.alive[s as usize] && filter.is_none_or(|f| f(self.ids[s as usize]));
        let mut found = with_scratch(|s| {
            match self.descend(&query, self.top(), 0) {
                Some(entry) => self.search_layer(&query, entry, ef.max(k), 0, accept, s),
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
                        sim: self.space.sim(&query, s),
                        slot: s,
                    }),
            );
        }
        let metric = self.space.metric();
        let mut hits: Vec<Hit> = found
            .iter()
            .map(|n| Hit {
                id: self.ids[n.slot as usize],
                score: match metric {
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
        hits.sort_by(|a, b| crate::topk::compare(metric, a, b));
        hits.truncate(k);
        hits
    }

    fn memory(&self) -> MemoryUsage {
        let upper: usize = self
            .upper
            .iter()
            .map(|u| size_of::<Box<[AtomicU32]>>() + u.len() * 4)
            .sum();
        let map = MemoryUsage::hash_map_bytes(self.slots.capacity(), 16);
        MemoryUsage {
            host_bytes: self.space.memory_bytes()
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

/// An approximate nearest-neighbour index over f32 rows.
#[derive(Debug, Clone)]
pub struct HnswIndex(Graph<F32Rows>);

impl HnswIndex {
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> Result<Self, TopKError> {
        if dim == 0 {
            return Err(TopKError::ZeroDimension);
        }
        Ok(HnswIndex(Graph::new(F32Rows::new(dim, metric), params)))
    }

    pub fn params(&self) -> HnswParams {
        self.0.params
    }

    /// Changes how many candidates a search keeps (recall against speed); no rebuild needed.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.0.params.ef_search = ef.max(1);
    }

    /// [`VectorIndex::upsert`] on every thread of the current rayon pool (run it inside
    /// `ThreadPool::install` to choose how many). The graph is as good as a sequential
    /// build's but depends on the threads' timing; with one thread it is the sequential
    /// build, node for node.
    pub fn upsert_parallel(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        self.0.upsert_parallel(ids, vectors)
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
        self.0.search_with_ef(queries, k, filter, ef)
    }

    /// Writes the whole index: a header (magic, format version, kind `f32`, metric,
    /// dimension, params, counts, entry point), then per node its id, live mark, level,
    /// vector and links on each of its layers, then a checksum of everything before it.
    /// Little-endian throughout. Writes in large pieces, so `w` need not be buffered.
    ///
    /// Take the index's write lock for the duration: a graph being changed meanwhile would
    /// be written torn (the `&self` here only allows concurrent readers).
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.0.write_to(w)
    }

    /// Reads an index written by [`HnswIndex::write_to`], for an index of `dim` and
    /// `metric` (a file of another, or of a [`QuantizedHnsw`], refuses to load). The file is
    /// not trusted: every count is checked against the format's limits before it is used,
    /// memory grows only with what was actually read (so a short file cannot make it
    /// allocate much), every link must name a node of the graph on that layer, and the
    /// checksum must match. Any failure is an error, never a panic.
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
        Graph::read_from(r, dim, metric).map(HnswIndex)
    }
}

/// An approximate nearest-neighbour index over int8 codes: the graph of [`HnswIndex`], walked
/// on the codes of a [`ScalarQuantizer`] (one byte per component in memory) instead of f32
/// rows. Its hits carry approximate scores; rescore the best [`quant::candidates`]`(k)` of
/// them on the f32 rows with [`quant::rescore`].
#[derive(Debug, Clone)]
pub struct QuantizedHnsw(Graph<Codes>);

impl QuantizedHnsw {
    /// An empty graph whose rows are encoded with `quantizer` (its dimension and metric are
    /// the index's).
    pub fn new(quantizer: ScalarQuantizer, params: HnswParams) -> Result<Self, TopKError> {
        if quantizer.dim() == 0 {
            return Err(TopKError::ZeroDimension);
        }
        Ok(QuantizedHnsw(Graph::new(
            Codes::new(quantizer, ClampStats::default()),
            params,
        )))
    }

    /// Builds the graph over the codes of `rows` (the same ids, the codes copied as they are:
    /// no round trip through f32), inserting on every thread of the current rayon pool as
    /// [`QuantizedHnsw::upsert_parallel`] does. The graph starts with the clamp counts of
    /// `rows`, since those describe the codes it holds.
    pub fn build_from(rows: &QuantizedRows, params: HnswParams) -> Result<Self, TopKError> {
        let d = rows.dim();
        let mut graph = Graph::new(
            Codes::new(rows.quantizer().clone(), rows.clamp_stats()),
            params,
        );
        graph.reserve_rows(rows.len(), true);
        // Levels are drawn in slot order, as an upsert of the rows in that order draws them.
        for (&id, code) in rows.ids().iter().zip(rows.codes().chunks_exact(d)) {
            graph.space.push_code(code);
            let level = graph.random_level() as u8;
            graph.add_node(id, true, level);
        }
        graph.link_parallel(0);
        Ok(QuantizedHnsw(graph))
    }

    /// The quantizer the codes are encoded with.
    pub fn quantizer(&self) -> &ScalarQuantizer {
        &self.0.space.quantizer
    }

    pub fn params(&self) -> HnswParams {
        self.0.params
    }

    /// Changes how many candidates a search keeps (recall against speed); no rebuild needed.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.0.params.ef_search = ef.max(1);
    }

    /// [`VectorIndex::upsert`] (rows encoded here) on every thread of the current rayon
    /// pool, as [`HnswIndex::upsert_parallel`].
    pub fn upsert_parallel(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
        self.0.upsert_parallel(ids, vectors)
    }

    /// Approximate hits by the codes, scores in [`crate::topk`]'s convention (as
    /// [`QuantizedRows::scan`] returns them), best first, ties by id; `ef` candidates kept
    /// instead of the index's `ef_search` (at least `k` either way).
    pub fn search_with_ef(
        &self,
        queries: &[f32],
        k: usize,
        filter: Option<Filter<'_>>,
        ef: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>, TopKError> {
        self.0.search_with_ef(queries, k, filter, ef)
    }

    /// Clamping seen by the rows encoded since the graph was built (by
    /// [`QuantizedHnsw::build_from`]: since its rows were), as [`QuantizedRows::clamp_stats`].
    /// Kept through rebuilds and files.
    pub fn clamp_stats(&self) -> ClampStats {
        self.0.space.clamps
    }

    /// Whether the rows that arrived call for a new quantizer: the rule of
    /// [`QuantizedRows::should_retrain`].
    pub fn should_retrain(&self) -> bool {
        self.0
            .space
            .clamps
            .call_for_retraining(&self.0.space.quantizer)
    }

    /// Writes the whole index as [`HnswIndex::write_to`] does, with kind `int8`, the
    /// quantizer's bytes and the clamp counts after the header, and codes for rows.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.0.write_to(w)
    }

    /// Reads an index written by [`QuantizedHnsw::write_to`], with the checks of
    /// [`HnswIndex::read_from`]; an f32 graph's file is refused
    /// ([`HnswReadError::KindMismatch`]). The quantizer comes from the file: compare it with
    /// [`QuantizedHnsw::quantizer`] where the caller keeps its own.
    pub fn read_from(
        r: &mut impl Read,
        dim: usize,
        metric: Metric,
    ) -> Result<QuantizedHnsw, HnswReadError> {
        Graph::read_from(r, dim, metric).map(QuantizedHnsw)
    }
}

macro_rules! vector_index {
    ($t:ty) => {
        impl VectorIndex for $t {
            fn dim(&self) -> usize {
                self.0.space.dim()
            }

            fn metric(&self) -> Metric {
                self.0.space.metric()
            }

            fn len(&self) -> usize {
                self.0.slots.len()
            }

            fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), TopKError> {
                self.0.upsert(ids, vectors)
            }

            fn reserve(&mut self, additional: usize) -> Result<(), TopKError> {
                self.0.reserve_rows(additional, true);
                Ok(())
            }

            fn remove(&mut self, ids: &[u64]) -> Result<usize, TopKError> {
                Ok(self.0.remove(ids))
            }

            fn search_filtered(
                &self,
                queries: &[f32],
                k: usize,
                filter: Option<Filter<'_>>,
            ) -> Result<Vec<Vec<Hit>>, TopKError> {
                self.0.search_with_ef(queries, k, filter, None)
            }

            fn memory(&self) -> MemoryUsage {
                self.0.memory()
            }
        }
    };
}

vector_index!(HnswIndex);
vector_index!(QuantizedHnsw);

/// Why a graph file was refused by [`HnswIndex::read_from`] or [`QuantizedHnsw::read_from`].
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
    /// The file holds the other kind of graph (f32 rows where codes were expected, or the
    /// reverse).
    #[error("the HNSW graph file holds a graph of {found} rows, this index keeps {expected} rows")]
    KindMismatch {
        found: String,
        expected: &'static str,
    },
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
/// Bumped on any change to the layout below. 2: the kind of rows (f32 or int8) after the
/// version.
const FORMAT_VERSION: u32 = 2;

/// The name of a kind marker, for errors.
fn kind_name(kind: u32) -> String {
    match kind {
        F32Rows::KIND => F32Rows::KIND_NAME.to_string(),
        Codes::KIND => Codes::KIND_NAME.to_string(),
        other => format!("kind #{other} (unknown)"),
    }
}

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

impl<S: Space> Graph<S> {
    /// The layout of [`HnswIndex::write_to`]: a header (magic, format version, kind, metric,
    /// dimension, params, counts, entry point), what the space adds ([`Space::write_extra`]),
    /// then per node its id, live mark, level, row and links on each of its layers, then a
    /// checksum of everything before it.
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut out = SumWriter {
            inner: w,
            buf: Vec::with_capacity(1 << 17),
            sum: Checksum::new(),
        };
        let top = self.top();
        out.put(&MAGIC)?;
        out.u32(FORMAT_VERSION)?;
        out.u32(S::KIND)?;
        out.u32(metric_code(self.space.metric()))?;
        out.u64(self.space.dim() as u64)?;
        out.u64(self.params.m as u64)?;
        out.u64(self.params.ef_construction as u64)?;
        out.u64(self.params.ef_search as u64)?;
        out.u64(self.params.seed)?;
        out.u64(self.ids.len() as u64)?;
        out.u64(self.slots.len() as u64)?;
        out.u64(top.entry.map_or(u64::MAX, u64::from))?;
        out.u64(top.level as u64)?;
        self.space.write_extra(&mut out)?;
        let mut bytes = Vec::with_capacity(self.space.file_row_bytes());
        for slot in 0..self.ids.len() as u32 {
            out.u64(self.ids[slot as usize])?;
            out.u8(u8::from(self.alive[slot as usize]))?;
            let level = self.levels[slot as usize];
            out.u8(level)?;
            bytes.clear();
            self.space.write_row(slot, &mut bytes);
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

    /// See [`HnswIndex::read_from`].
    fn read_from(r: &mut impl Read, dim: usize, metric: Metric) -> Result<Self, HnswReadError> {
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
        let kind = input.u32()?;
        if kind != S::KIND {
            return Err(HnswReadError::KindMismatch {
                found: kind_name(kind),
                expected: S::KIND_NAME,
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
        let space = S::read_extra(&mut input, dim, metric)?;

        let mut index = Graph::new(space, params);
        // Reserve no more than a modest amount up front: the header's counts are not yet
        // backed by data, so memory grows with the nodes actually read.
        index.reserve_rows(nodes.min(1 << 14), false);
        let mut raw = vec![0u8; index.space.file_row_bytes()];
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
            allocated += index.space.row_bytes()
                + (1 + 2 * index.params.m + level as usize * (1 + index.params.m)) * 4
                + 32;
            if allocated as u64 > 64 * input.sum.total + (16 << 20) {
                return Err(corrupt(format!(
                    "node {slot}: the graph would need {allocated} bytes of memory, far more \
                     than the {} bytes read describe",
                    input.sum.total
                )));
            }
            if index.ids.len() == index.ids.capacity() {
                // Doubled here rather than one push at a time, so that the arrays grow
                // through `grow` (and are backed by huge pages once large).
                index.reserve_rows(index.ids.len(), false);
            }
            input.fill(&mut raw)?;
            index
                .space
                .read_row(&raw)
                .map_err(|e| corrupt(format!("node {slot}: {e}")))?;
            index.add_node(id, alive, level);
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
}

#[cfg(test)]
mod tests {
    //! The int8 graph (the f32 graph's tests are in `tests/topk_hnsw.rs`).

    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::quant::TrainOptions;
    use crate::topk::CpuIndex;

    const METRICS: [Metric; 3] = [Metric::Cosine, Metric::Dot, Metric::L2];

    /// `grow` gives room as asked on both sides of the size above which it moves an array
    /// into a fresh allocation advised for huge pages, and the move keeps every element.
    #[test]
    fn growing_keeps_the_elements_and_gives_the_room_asked_for() {
        let words = HUGE_PAGE_MIN_BYTES / 4;
        for (start, more) in [(10, 20), (words / 2, words), (words + 3, 5)] {
            for exact in [true, false] {
                let mut v: Vec<u32> = (0..start as u32).collect();
                v.shrink_to_fit();
                let before = v.capacity();
                grow(&mut v, more, exact);
                assert_eq!(v.len(), start);
                assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
                assert!(v.capacity() >= start + more, "{start} + {more}");
                if exact {
                    assert_eq!(v.capacity(), start + more, "{start} + {more}, exact");
                } else {
                    assert!(v.capacity() >= 2 * before, "{start} + {more}, doubling");
                }
                let capacity = v.capacity();
                grow(&mut v, more, exact);
                assert_eq!(
                    v.capacity(),
                    capacity,
                    "room that is there is not asked for again"
                );
            }
        }
    }

    /// A standard normal draw (Box-Muller).
    fn normal(rng: &mut StdRng) -> f32 {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let v: f64 = rng.random();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// Clustered rows like embeddings, as in the `quant` tests: centres, each row a centre
    /// plus noise, dimensions of different spread and offset (so per-dimension ranges
    /// matter), noise large enough that a query's neighbours are close calls.
    struct Clustered {
        dim: usize,
        centres: Vec<f32>,
        spread: Vec<f32>,
        noise: f32,
    }

    impl Clustered {
        fn new(dim: usize, clusters: usize, noise: f32, rng: &mut StdRng) -> Self {
            let spread: Vec<f32> = (0..dim).map(|_| rng.random_range(0.2..2.0)).collect();
            let offset: Vec<f32> = (0..dim).map(|_| rng.random_range(-0.5..0.5)).collect();
            let centres = (0..clusters * dim)
                .map(|i| offset[i % dim] + spread[i % dim] * normal(rng))
                .collect();
            Clustered {
                dim,
                centres,
                spread,
                noise,
            }
        }

        fn rows(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
            let d = self.dim;
            let clusters = self.centres.len() / d;
            let mut out = Vec::with_capacity(n * d);
            for _ in 0..n {
                let c = rng.random_range(0..clusters);
                for j in 0..d {
                    out.push(self.centres[c * d + j] + self.noise * self.spread[j] * normal(rng));
                }
            }
            out
        }
    }

    /// Rows, their ids and queries of one clustered set.
    struct Data {
        dim: usize,
        rows: Vec<f32>,
        ids: Vec<u64>,
        queries: Vec<f32>,
        slot_of: HashMap<u64, usize>,
    }

    fn data(n: usize, dim: usize, queries: usize, seed: u64) -> Data {
        let mut rng = StdRng::seed_from_u64(seed);
        let set = Clustered::new(dim, 32, 0.5, &mut rng);
        let rows = set.rows(n, &mut rng);
        let queries = set.rows(queries, &mut rng);
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
        let slot_of = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        Data {
            dim,
            rows,
            ids,
            queries,
            slot_of,
        }
    }

    impl Data {
        fn row(&self, id: u64) -> &[f32] {
            let s = self.slot_of[&id];
            &self.rows[s * self.dim..(s + 1) * self.dim]
        }

        fn quantizer(&self, metric: Metric) -> ScalarQuantizer {
            ScalarQuantizer::train(self.dim, metric, &self.rows, &TrainOptions::default()).unwrap()
        }

        /// What the partition does: the graph's `candidates(k)` hits, rescored on the f32
        /// rows, best `k`.
        fn rescored(&self, graph: &QuantizedHnsw, k: usize) -> Vec<Vec<Hit>> {
            let metric = graph.metric();
            let cands = graph
                .search_with_ef(&self.queries, quant::candidates(k), None, None)
                .unwrap();
            cands
                .iter()
                .zip(self.queries.chunks_exact(self.dim))
                .map(|(hits, q)| {
                    for pair in hits.windows(2) {
                        assert!(crate::topk::compare(metric, &pair[0], &pair[1]).is_lt());
                    }
                    let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
                    let vectors: Vec<f32> =
                        ids.iter().flat_map(|&id| self.row(id)).copied().collect();
                    quant::rescore(metric, q, &ids, &vectors, k).unwrap()
                })
                .collect()
        }
    }

    fn recall(got: &[Vec<Hit>], want: &[Vec<Hit>]) -> f64 {
        let mut found = 0;
        let mut total = 0;
        for (g, w) in got.iter().zip(want) {
            let truth: HashSet<u64> = w.iter().map(|h| h.id).collect();
            found += g.iter().filter(|h| truth.contains(&h.id)).count();
            total += w.len();
        }
        found as f64 / total as f64
    }

    fn code_of(g: &QuantizedHnsw, id: u64) -> &[u8] {
        g.0.space.code(g.0.slots[&id])
    }

    /// Recall@10 of the int8 graph's candidates rescored on f32 rows, against the exact
    /// index, for every metric; a graph built from the codes of a `QuantizedRows` is as good
    /// as one built by upserting, holds the very same codes, and scores as the scan does.
    #[test]
    fn int8_graph_with_rescoring_reaches_097_recall_for_every_metric() {
        let d = data(6000, 64, 60, 1);
        for metric in METRICS {
            let truth = CpuIndex::from_rows(d.dim, metric, &d.ids, &d.rows)
                .unwrap()
                .search(&d.queries, 10)
                .unwrap();
            let quantizer = d.quantizer(metric);
            let mut upserted =
                QuantizedHnsw::new(quantizer.clone(), HnswParams::default()).unwrap();
            upserted.upsert_parallel(&d.ids, &d.rows).unwrap();
            let mut store = QuantizedRows::new(quantizer);
            store.upsert(&d.ids, &d.rows).unwrap();
            let built = QuantizedHnsw::build_from(&store, HnswParams::default()).unwrap();
            assert_eq!((upserted.len(), built.len()), (d.ids.len(), d.ids.len()));
            assert_eq!(built.clamp_stats(), store.clamp_stats());
            assert_eq!(upserted.clamp_stats(), store.clamp_stats());
            for &id in d.ids.iter().step_by(97) {
                assert_eq!(code_of(&built, id), store.code(id).unwrap());
                assert_eq!(code_of(&upserted, id), store.code(id).unwrap());
            }

            let codes_only = recall(&upserted.search(&d.queries, 10).unwrap(), &truth);
            let r_upserted = recall(&d.rescored(&upserted, 10), &truth);
            let r_built = recall(&d.rescored(&built, 10), &truth);
            eprintln!(
                "{metric}: recall@10 codes only {codes_only:.4}, rescored {r_upserted:.4} \
                 (upserted), {r_built:.4} (built from codes)"
            );
            assert!(r_upserted >= 0.97, "{metric}: recall@10 {r_upserted}");
            assert!(
                r_built >= 0.97,
                "{metric}: recall@10 {r_built} built from codes"
            );
            assert!((r_upserted - r_built).abs() <= 0.02, "{metric}");

            // The approximate scores are those of the scan over the same codes.
            let q = &d.queries[..d.dim];
            let scan: HashMap<u64, f32> = store
                .scan(q, store.len(), None)
                .unwrap()
                .remove(0)
                .into_iter()
                .map(|h| (h.id, h.score))
                .collect();
            for hit in &built.search(q, 20).unwrap()[0] {
                let want = scan[&hit.id];
                assert!(
                    (hit.score - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{metric}: {hit:?} vs {want}"
                );
            }
        }
    }

    /// A query scores a node as `quant::score` does (L2 negated into a similarity), and two
    /// nodes score each other alike: the metric between their decoded rows.
    #[test]
    fn int8_similarities_follow_the_quantizer() {
        let d = data(200, 40, 0, 2);
        for metric in METRICS {
            let quantizer = d.quantizer(metric);
            let mut g = QuantizedHnsw::new(quantizer.clone(), HnswParams::default()).unwrap();
            g.upsert(&d.ids, &d.rows).unwrap();
            let space = &g.0.space;
            let mut a = vec![0.0f32; d.dim];
            let mut b = vec![0.0f32; d.dim];
            for (x, y) in [(0u32, 1u32), (5, 77), (123, 199)] {
                let raw = &d.rows[x as usize * d.dim..(x as usize + 1) * d.dim];
                let prepared = quantizer.prepare(raw).unwrap();
                let score = quant::score(&prepared, space.code(y));
                let sim = space.sim(&space.prepare(raw, &mut ()), y);
                let want = if metric == Metric::L2 { -score } else { score };
                assert!((sim - want).abs() <= 1e-5 * want.abs().max(1.0), "{metric}");

                quantizer.decode(space.code(x), &mut a).unwrap();
                quantizer.decode(space.code(y), &mut b).unwrap();
                let exact: f64 = match metric {
                    Metric::Cosine | Metric::Dot => {
                        a.iter().zip(&b).map(|(p, q)| f64::from(p * q)).sum()
                    }
                    Metric::L2 => -a
                        .iter()
                        .zip(&b)
                        .map(|(p, q)| f64::from(p - q).powi(2))
                        .sum::<f64>(),
                };
                let xy = f64::from(space.sim(&space.node(x), y));
                let yx = f64::from(space.sim(&space.node(y), x));
                for got in [xy, yx] {
                    assert!(
                        (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                        "{metric}"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_graph_removes_filters_and_upserts_like_the_f32_graph() {
        let n = 2000;
        let d = data(n, 32, 30, 3);
        let ids: Vec<u64> = (0..n as u64).collect();
        let metric = Metric::Cosine;
        let mut g = QuantizedHnsw::new(d.quantizer(metric), HnswParams::default()).unwrap();
        g.upsert(&ids, &d.rows).unwrap();
        let mut exact = CpuIndex::from_rows(d.dim, metric, &ids, &d.rows).unwrap();

        let gone: Vec<u64> = (0..n as u64).filter(|i| i % 3 == 0).collect();
        assert_eq!(g.remove(&gone).unwrap(), gone.len());
        assert_eq!(g.remove(&gone).unwrap(), 0);
        exact.remove(&gone).unwrap();
        assert_eq!(g.len(), n - gone.len());
        let even = |id: u64| id.is_multiple_of(2);
        let got = g.search_filtered(&d.queries, 10, Some(&even)).unwrap();
        let want = exact.search_filtered(&d.queries, 10, Some(&even)).unwrap();
        for hits in &got {
            assert_eq!(hits.len(), 10);
            assert!(
                hits.iter()
                    .all(|h| !h.id.is_multiple_of(3) && h.id.is_multiple_of(2)),
                "{hits:?}"
            );
        }
        let r = recall(&got, &want);
        assert!(r >= 0.8, "filtered recall@10 by codes alone {r}");

        // A filter that admits only three rows still finds all three (exact fallback over
        // the codes).
        let few = |id: u64| [1, 5, 7].contains(&id);
        let got = g
            .search_filtered(&d.queries[..d.dim], 10, Some(&few))
            .unwrap();
        let mut found: Vec<u64> = got[0].iter().map(|h| h.id).collect();
        found.sort();
        assert_eq!(found, [1, 5, 7]);

        // Upserting an id moves it: a search for its new vector finds it first.
        let target = d.queries[..d.dim].to_vec();
        g.upsert(&[1], &target).unwrap();
        assert_eq!(g.len(), n - gone.len());
        let top = g.search(&target, 1).unwrap();
        assert_eq!(top[0][0].id, 1);
        assert!((top[0][0].score - 1.0).abs() < 0.02, "{:?}", top[0][0]);

        // Removing most rows rebuilds the graph, copying the codes as they are.
        let survivor = 11u64;
        let code = code_of(&g, survivor).to_vec();
        let clamps = g.clamp_stats();
        let most: Vec<u64> = (0..n as u64).filter(|i| i % 10 != 1).collect();
        g.remove(&most).unwrap();
        let left = g.len();
        assert_eq!(
            left,
            (0..n as u64).filter(|i| i % 10 == 1 && i % 3 != 0).count()
        );
        assert_eq!(g.0.ids.len(), left, "rebuilt without the dead nodes");
        assert_eq!(code_of(&g, survivor), code);
        assert_eq!(g.clamp_stats(), clamps);
        let all = g.search(&d.queries[..d.dim], left + 5).unwrap();
        assert_eq!(all[0].len(), left);
        assert!(g.memory().host_bytes > left * d.dim);
    }

    /// A code costs one byte per component (384 at 384-d), a quarter of an f32 row.
    #[test]
    fn a_code_costs_a_byte_per_component() {
        let quantizer =
            ScalarQuantizer::from_ranges(Metric::Dot, &[-1.0; 384], &[1.0; 384]).unwrap();
        let mut g = QuantizedHnsw::new(quantizer, HnswParams::default()).unwrap();
        g.reserve(100).unwrap();
        let ids: Vec<u64> = (0..100).collect();
        g.upsert(&ids, &vec![0.25; 100 * 384]).unwrap();
        assert_eq!(g.0.space.row_bytes(), 384);
        assert_eq!(
            g.0.space.data.capacity() * size_of::<CodeBlock>(),
            100 * 384
        );
        let mut f = HnswIndex::new(384, Metric::Dot, HnswParams::default()).unwrap();
        f.reserve(100).unwrap();
        f.upsert(&ids, &vec![0.25; 100 * 384]).unwrap();
        assert_eq!(
            f.memory().host_bytes - g.memory().host_bytes,
            100 * 3 * 384 - g.0.space.quantizer.memory_bytes()
        );
    }

    /// Rows outside the trained ranges are counted, and enough of them call for retraining,
    /// as with `QuantizedRows`.
    #[test]
    fn clamping_is_counted_and_calls_for_retraining() {
        let quantizer = ScalarQuantizer::from_ranges(Metric::L2, &[-1.0; 8], &[1.0; 8]).unwrap();
        let mut g = QuantizedHnsw::new(quantizer.clone(), HnswParams::default()).unwrap();
        let ids: Vec<u64> = (0..1000).collect();
        let mut rows = vec![0.5f32; 1000 * 8];
        g.upsert_parallel(&ids, &rows).unwrap();
        assert_eq!(g.clamp_stats().rows, 1000);
        assert_eq!(g.clamp_stats().components_clamped, 0);
        assert!(!g.should_retrain());
        rows.chunks_exact_mut(8).for_each(|r| r[3] = 5.0);
        g.upsert(&ids, &rows).unwrap();
        let mut store = QuantizedRows::new(quantizer);
        store.upsert(&ids, &rows).unwrap();
        store.upsert(&ids, &rows).unwrap();
        assert_eq!(g.clamp_stats().rows, 2000);
        assert_eq!(g.clamp_stats().components_clamped, 1000);
        assert!(g.should_retrain());
        assert_eq!(store.should_retrain(), g.should_retrain());
    }

    /// A graph of every metric, with dead nodes and a dimension that is no whole number of
    /// lines, for the persistence tests.
    fn small_graph(metric: Metric, n: usize, dim: usize, params: HnswParams) -> QuantizedHnsw {
        let d = data(n, dim, 0, 4);
        let mut g = QuantizedHnsw::new(d.quantizer(metric), params).unwrap();
        g.upsert(&d.ids, &d.rows).unwrap();
        g.remove(&d.ids[..n / 10]).unwrap();
        g
    }

    fn saved(g: &QuantizedHnsw) -> Vec<u8> {
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn an_int8_graph_file_loads_and_answers_alike() {
        let queries = data(10, 24, 20, 5).queries;
        for metric in METRICS {
            let g = small_graph(metric, 1500, 24, HnswParams::default());
            let bytes = saved(&g);
            let mut loaded = QuantizedHnsw::read_from(&mut bytes.as_slice(), 24, metric).unwrap();
            assert_eq!(loaded.len(), g.len());
            assert_eq!(loaded.params(), g.params());
            assert_eq!(loaded.quantizer(), g.quantizer());
            assert_eq!(loaded.clamp_stats(), g.clamp_stats());
            let some = |id: u64| id % 4 == 1;
            for ef in [10, 64, 200] {
                for filter in [None, Some(&some as Filter<'_>)] {
                    assert_eq!(
                        loaded
                            .search_with_ef(&queries, 10, filter, Some(ef))
                            .unwrap(),
                        g.search_with_ef(&queries, 10, filter, Some(ef)).unwrap(),
                        "{metric}, ef {ef}"
                    );
                }
            }
            // Writing the loaded graph again gives the same bytes; it stays writable.
            assert_eq!(saved(&loaded), bytes);
            loaded.upsert(&[1], &queries[..24]).unwrap();
            assert_eq!(loaded.search(&queries[..24], 1).unwrap()[0][0].id, 1);
        }
        let quantizer = ScalarQuantizer::from_ranges(Metric::L2, &[0.0; 3], &[1.0; 3]).unwrap();
        let empty = QuantizedHnsw::new(quantizer, HnswParams::default()).unwrap();
        let loaded =
            QuantizedHnsw::read_from(&mut saved(&empty).as_slice(), 3, Metric::L2).unwrap();
        assert_eq!(loaded.len(), 0);
        assert!(loaded.search(&[0.5; 3], 3).unwrap()[0].is_empty());
    }

    #[test]
    fn graph_files_of_the_other_kind_or_damaged_are_refused() {
        let params = HnswParams {
            m: 4,
            ef_construction: 16,
            ..HnswParams::default()
        };
        let int8 = saved(&small_graph(Metric::Dot, 60, 5, params));
        let mut f32 = HnswIndex::new(5, Metric::Dot, params).unwrap();
        f32.upsert(&[1, 2, 3], &[0.5; 15]).unwrap();
        let mut f32_bytes = Vec::new();
        f32.write_to(&mut f32_bytes).unwrap();

        let err = QuantizedHnsw::read_from(&mut f32_bytes.as_slice(), 5, Metric::Dot).unwrap_err();
        assert!(
            matches!(&err, HnswReadError::KindMismatch { found, expected: "int8" } if found == "f32"),
            "{err}"
        );
        let err = HnswIndex::read_from(&mut int8.as_slice(), 5, Metric::Dot).unwrap_err();
        assert!(
            matches!(&err, HnswReadError::KindMismatch { found, expected: "f32" } if found == "int8"),
            "{err}"
        );
        assert!(err.to_string().contains("int8"), "{err}");
        let err = QuantizedHnsw::read_from(&mut int8.as_slice(), 6, Metric::Dot).unwrap_err();
        assert!(
            matches!(err, HnswReadError::DimensionMismatch { .. }),
            "{err}"
        );
        let err = QuantizedHnsw::read_from(&mut int8.as_slice(), 5, Metric::L2).unwrap_err();
        assert!(matches!(err, HnswReadError::MetricMismatch { .. }), "{err}");

        for len in 0..int8.len() {
            match QuantizedHnsw::read_from(&mut &int8[..len], 5, Metric::Dot) {
                Err(HnswReadError::Truncated) => {}
                other => panic!("truncated to {len}: {:?}", other.map(|g| g.len())),
            }
        }
        for at in 0..int8.len() {
            let mut bad = int8.clone();
            bad[at] ^= 1 << (at % 8);
            assert!(
                QuantizedHnsw::read_from(&mut bad.as_slice(), 5, Metric::Dot).is_err(),
                "byte {at} flipped was accepted"
            );
        }
        // A quantizer length far beyond the dimension's is refused before it is allocated.
        let at = 8 + 4 + 4 + 4 + 8 * 9;
        let mut huge = int8.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = QuantizedHnsw::read_from(&mut huge.as_slice(), 5, Metric::Dot).unwrap_err();
        assert!(matches!(err, HnswReadError::Corrupt(_)), "{err}");
        assert!(QuantizedHnsw::read_from(&mut int8.as_slice(), 5, Metric::Dot).is_ok());
    }
}
