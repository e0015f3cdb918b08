//! Scalar-quantized vectors: one byte per component in memory, searched asymmetrically, with
//! the best candidates rescored on the exact f32 rows.
//!
//! A collection created with `--quantization int8` keeps, per partition replica, only the
//! codes of its vectors in memory: 384 bytes per 384-d row instead of 1,536, so that a million
//! rows fit in about 0.43 GB rather than 1.58 GB. The f32 rows stay on disk, where the caller
//! reads the few it needs to rescore.
//!
//! # The pieces
//! - [`ScalarQuantizer`] maps each component to a byte through a per-dimension range trained
//!   from a sample of rows ([`ScalarQuantizer::train`]). Per dimension, because embedding
//!   dimensions differ widely in spread: one global range would waste most of the 256 levels on
//!   the narrow ones. The range may be clipped at quantiles ([`TrainOptions::clip`]) so that a
//!   rare outlier does not stretch it for everyone.
//! - [`PreparedQuery`] and [`score`]: the query stays f32 and only the row is a code
//!   (asymmetric scoring), which halves the error of quantizing both and costs nothing at
//!   search time since the query is prepared once. With `x̂ = lo + s∘c` the decoded row,
//!   dot is `q·lo + Σ (q∘s)ᵢ cᵢ` and L2 is `Σ (rᵢ − sᵢ cᵢ)²` with `r = q − lo`.
//! - [`QuantizedRows`]: the codes of a partition, contiguous, with their ids; upsert and
//!   remove by id, and an exact scan over the codes ([`QuantizedRows::scan`]) that returns
//!   approximate candidates.
//! - [`rescore`]: exact scores of the candidates from their f32 rows, in [`crate::topk`]'s
//!   order. A search is `scan(q, candidates(k))`, read those rows, `rescore(.., k)`.
//!
//! # Metrics
//! The same as [`crate::topk`]: cosine rows and queries are normalized before they are
//! quantized (the trained ranges are those of unit vectors), so cosine is a dot product of
//! unit vectors; dot is the raw inner product; L2 is the squared Euclidean distance. Scores
//! from [`QuantizedRows::scan`] are approximations of those values; [`rescore`] gives the exact
//! ones. Both come best first with ties broken by id ascending, like every index here.
//!
//! # Clamping and retraining
//! A quantizer is trained at one point in time. A later row with a component outside its
//! dimension's range is clamped to the range's end: it is still stored and found, with more
//! error in that component. [`QuantizedRows::clamp_stats`] counts clamped components since the
//! store was built, and [`QuantizedRows::should_retrain`] compares that with what training
//! itself clamped. To retrain, train a new quantizer on a fresh sample, build a new
//! [`QuantizedRows`] with it from the f32 rows on disk (its ids are [`QuantizedRows::ids`]),
//! and swap it in; the codes of the two are not comparable.
//!
//! # Kernels
//! The per-row kernels are written with `std::arch` intrinsics for AVX-512 and for AVX2 with
//! FMA, and in portable Rust (16 lanes, which LLVM vectorizes with NEON on aarch64 and SSE2
//! elsewhere). The best one this CPU supports is picked once ([`crate::isa::Isa::detect`]).
//! [`score_reference`] is the plain sequential version the tests hold them to.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::isa::Isa;
use crate::topk::select::{TopK, scan_parallel};
use crate::topk::{Filter, Hit, MemoryUsage, Metric, TopKError, check_queries, check_rows, dot};

/// The largest code: components map to `0..=255`.
const MAX_CODE: f32 = 255.0;

/// Default fraction of a training sample's values, per dimension and per end, left outside the
/// trained range. 1 in 10,000 at each end: with a sample of 10,000 rows or more, a handful of
/// outliers per dimension no longer set its range, while the range still covers essentially
/// all of the data (so the clamping it causes is negligible).
pub const DEFAULT_CLIP: f32 = 1e-4;

/// Default oversampling for rescoring: a search for `k` rows scans the codes for
/// [`candidates`]`(k)` = `max(4 k, k + 16)` candidates and rescores those. On clustered
/// 384-d data (20k rows, tight and loose clusters, the `quant` tests) the codes alone reach
/// recall@10 of 0.94 to 0.99, 2 k candidates 0.999 to 1.0, and 4 k 1.0 for cosine, dot and L2.
/// 4 k leaves margin for data less kind to quantization at the price of reading 40 f32 rows
/// per query for k = 10; the `k + 16` floor keeps small `k` from being starved.
pub const DEFAULT_OVERSAMPLE: usize = 4;

/// The fewest extra candidates beyond `k` that [`candidates`] asks for.
pub const MIN_EXTRA_CANDIDATES: usize = 16;

/// How many candidates to take from [`QuantizedRows::scan`] to rescore into the best `k`.
pub fn candidates(k: usize) -> usize {
    k.saturating_mul(DEFAULT_OVERSAMPLE)
        .max(k.saturating_add(MIN_EXTRA_CANDIDATES))
}

/// Why quantization refused a request.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A shape or finiteness check shared with the exact index failed.
    #[error(transparent)]
    TopK(#[from] TopKError),
    #[error("the training sample holds no rows")]
    EmptySample,
    #[error("{values} sample values are not a whole number of rows of dimension {dim}")]
    RaggedSample { values: usize, dim: usize },
    #[error("sample row {row} has a non-finite component at position {position}")]
    NonFiniteSample { row: usize, position: usize },
    #[error("clip fraction {0} is outside [0, 0.5)")]
    BadClip(f32),
    #[error("a vector of {got} components was given where the quantizer expects {dim}")]
    DimensionMismatch { dim: usize, got: usize },
    #[error("a vector has a non-finite component at position {position}")]
    NonFiniteVector { position: usize },
    #[error("quantizer bytes are truncated: {got} bytes where {need} are needed")]
    Truncated { got: usize, need: usize },
    #[error("invalid quantizer bytes: {0}")]
    Invalid(&'static str),
}

/// How a quantizer's ranges are trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// Fraction of the sample's values in each dimension left below the range, and the same
    /// fraction above it: the range is the `clip` and `1 − clip` quantiles of the dimension.
    /// 0 takes the minimum and maximum. Must be in `[0, 0.5)`.
    pub clip: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { clip: DEFAULT_CLIP }
    }
}

/// Maps f32 components to one byte each through a trained range per dimension:
/// `c = round((x − lo) / s)` clamped to `0..=255`, decoded as `lo + s·c`, with
/// `s = (hi − lo) / 255`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarQuantizer {
    metric: Metric,
    lo: Vec<f32>,
    scale: Vec<f32>,
    /// `1 / scale`, or 0 for a dimension whose range is a single value.
    inv_scale: Vec<f32>,
    /// Fraction of the training sample's components that this quantizer clamps.
    sample_clamp_fraction: f32,
}

/// Serialized form: magic, version, then the parameters in little-endian.
const MAGIC: &[u8; 4] = b"ARSQ";
const VERSION: u8 = 1;
/// magic (4) + version (1) + metric (1) + reserved (2) + dim (4) + clamp fraction (4).
const HEADER: usize = 16;

impl ScalarQuantizer {
    /// Trains the ranges on `sample`, rows of `dim` components (prepared for the metric first:
    /// cosine rows are normalized). A sample of 10,000 to 100,000 rows drawn uniformly from the
    /// collection is plenty; more only costs training time.
    pub fn train(
        dim: usize,
        metric: Metric,
        sample: &[f32],
        options: &TrainOptions,
    ) -> Result<Self, QuantError> {
        if dim == 0 {
            return Err(TopKError::ZeroDimension.into());
        }
        if !(0.0..0.5).contains(&options.clip) {
            return Err(QuantError::BadClip(options.clip));
        }
        if !sample.len().is_multiple_of(dim) {
            return Err(QuantError::RaggedSample {
                values: sample.len(),
                dim,
            });
        }
        if sample.is_empty() {
            return Err(QuantError::EmptySample);
        }
        if let Some(bad) = sample.iter().position(|x| !x.is_finite()) {
            return Err(QuantError::NonFiniteSample {
                row: bad / dim,
                position: bad % dim,
            });
        }
        let mut rows = sample.to_vec();
        rows.chunks_exact_mut(dim)
            .for_each(|r| crate::topk::prepare(metric, r));
        let n = rows.len() / dim;
        let low_rank = (f64::from(options.clip) * (n - 1) as f64).floor() as usize;
        let ranges: Vec<(f32, f32)> = (0..dim)
            .into_par_iter()
            .map(|j| {
                let mut column: Vec<f32> = rows.chunks_exact(dim).map(|r| r[j]).collect();
                if low_rank == 0 {
                    let lo = column.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = column.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    (lo, hi)
                } else {
                    let (_, &mut lo, _) = column.select_nth_unstable_by(low_rank, f32::total_cmp);
                    let (_, &mut hi, _) =
                        column.select_nth_unstable_by(n - 1 - low_rank, f32::total_cmp);
                    (lo, hi)
                }
            })
            .collect();
        let (lo, hi): (Vec<f32>, Vec<f32>) = ranges.into_iter().unzip();
        let mut quantizer = Self::from_ranges(metric, &lo, &hi)?;
        let clamped: usize = rows
            .par_chunks(dim * 256)
            .map(|block| {
                block
                    .chunks_exact(dim)
                    .map(|row| quantizer.count_clamped(row))
                    .sum::<usize>()
            })
            .sum();
        quantizer.sample_clamp_fraction = (clamped as f64 / rows.len() as f64) as f32;
        Ok(quantizer)
    }

    /// Builds a quantizer from explicit per-dimension ranges `[lo, hi]` (as components of
    /// prepared rows, i.e. unit vectors for cosine).
    pub fn from_ranges(metric: Metric, lo: &[f32], hi: &[f32]) -> Result<Self, QuantError> {
        if lo.is_empty() {
            return Err(TopKError::ZeroDimension.into());
        }
        if lo.len() != hi.len() {
            return Err(QuantError::DimensionMismatch {
                dim: lo.len(),
                got: hi.len(),
            });
        }
        if let Some(position) = lo.iter().chain(hi).position(|x| !x.is_finite()) {
            return Err(QuantError::NonFiniteVector {
                position: position % lo.len(),
            });
        }
        let scale: Vec<f32> = lo
            .iter()
            .zip(hi)
            .map(|(&lo, &hi)| {
                let s = (hi - lo) / MAX_CODE;
                // An empty range, or one so narrow that 1/s would overflow, is one value.
                if s >= f32::MIN_POSITIVE && s.is_finite() {
                    s
                } else {
                    0.0
                }
            })
            .collect();
        Self::from_parts(metric, lo.to_vec(), scale, 0.0)
    }

    fn from_parts(
        metric: Metric,
        lo: Vec<f32>,
        scale: Vec<f32>,
        sample_clamp_fraction: f32,
    ) -> Result<Self, QuantError> {
        let valid = lo.iter().zip(&scale).all(|(&lo, &s)| {
            lo.is_finite()
                && (s == 0.0 || (s >= f32::MIN_POSITIVE && s.is_finite()))
                && (lo + MAX_CODE * s).is_finite()
        });
        if !valid {
            return Err(QuantError::Invalid("a range is not finite"));
        }
        if !(0.0..=1.0).contains(&sample_clamp_fraction) {
            return Err(QuantError::Invalid("clamp fraction outside [0, 1]"));
        }
        let inv_scale = scale
            .iter()
            .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
            .collect();
        Ok(ScalarQuantizer {
            metric,
            lo,
            scale,
            inv_scale,
            sample_clamp_fraction,
        })
    }

    /// Components per vector.
    pub fn dim(&self) -> usize {
        self.lo.len()
    }

    /// The metric rows are prepared and scored for.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Per dimension, the value code 0 stands for.
    pub fn lower(&self) -> &[f32] {
        &self.lo
    }

    /// Per dimension, the step between consecutive codes (0 for a single-valued range).
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// Fraction of the training sample's components that fell outside the trained ranges
    /// (about `2 × clip` by construction; 0 for quantizers built from ranges).
    pub fn sample_clamp_fraction(&self) -> f32 {
        self.sample_clamp_fraction
    }

    /// Fraction of the components of `rows` (raw, not yet prepared) this quantizer would
    /// clamp: run it on a fresh sample to decide whether to retrain.
    pub fn clamp_fraction(&self, rows: &[f32]) -> Result<f64, QuantError> {
        let d = self.dim();
        if !rows.len().is_multiple_of(d) {
            return Err(QuantError::RaggedSample {
                values: rows.len(),
                dim: d,
            });
        }
        if rows.is_empty() {
            return Ok(0.0);
        }
        let mut buf = vec![0.0f32; d];
        let mut clamped = 0usize;
        for row in rows.chunks_exact(d) {
            buf.copy_from_slice(row);
            crate::topk::prepare(self.metric, &mut buf);
            clamped += self.count_clamped(&buf);
        }
        Ok(clamped as f64 / rows.len() as f64)
    }

    /// Whether `x` in dimension `j` falls outside the range its code can stand for (that is,
    /// outside `[lo − s/2, hi + s/2]`).
    #[inline]
    fn clamps(&self, j: usize, x: f32) -> bool {
        if self.scale[j] == 0.0 {
            x != self.lo[j]
        } else {
            let t = (x - self.lo[j]) * self.inv_scale[j];
            !(-0.5..=MAX_CODE + 0.5).contains(&t)
        }
    }

    /// Clamped components of a prepared row.
    fn count_clamped(&self, row: &[f32]) -> usize {
        row.iter()
            .enumerate()
            .filter(|&(j, &x)| self.clamps(j, x))
            .count()
    }

    /// Encodes a raw row (prepared here for the metric) into `code`; returns how many of its
    /// components were clamped. The lengths and finiteness are the caller's to check.
    pub(crate) fn encode_unchecked(&self, row: &[f32], code: &mut [u8]) -> usize {
        let norm = if self.metric == Metric::Cosine {
            dot(row, row).sqrt()
        } else {
            0.0
        };
        let mut clamped = 0;
        for (j, (&x, c)) in row.iter().zip(code.iter_mut()).enumerate() {
            // The same division as `crate::topk::normalize`, so rows match the exact index's.
            let x = if norm > 0.0 { x / norm } else { x };
            clamped += usize::from(self.clamps(j, x));
            let t = (x - self.lo[j]) * self.inv_scale[j];
            *c = t.round().clamp(0.0, MAX_CODE) as u8;
        }
        clamped
    }

    /// Encodes one raw row (normalized here for cosine) into `code`, which must hold
    /// [`ScalarQuantizer::dim`] bytes. Returns how many components were clamped.
    pub fn encode(&self, row: &[f32], code: &mut [u8]) -> Result<usize, QuantError> {
        self.check_vector(row)?;
        self.check_len(code.len())?;
        Ok(self.encode_unchecked(row, code))
    }

    /// Decodes `code` into `out` (`lo + s·c`): the prepared row the code stands for.
    pub fn decode(&self, code: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
        self.check_len(code.len())?;
        self.check_len(out.len())?;
        for (j, (o, &c)) in out.iter_mut().zip(code).enumerate() {
            *o = self.scale[j].mul_add(f32::from(c), self.lo[j]);
        }
        Ok(())
    }

    fn check_len(&self, got: usize) -> Result<(), QuantError> {
        if got == self.dim() {
            Ok(())
        } else {
            Err(QuantError::DimensionMismatch {
                dim: self.dim(),
                got,
            })
        }
    }

    fn check_vector(&self, v: &[f32]) -> Result<(), QuantError> {
        self.check_len(v.len())?;
        match v.iter().position(|x| !x.is_finite()) {
            Some(position) => Err(QuantError::NonFiniteVector { position }),
            None => Ok(()),
        }
    }

    /// Prepares a query for scoring against codes, once per query.
    pub fn prepare(&self, query: &[f32]) -> Result<PreparedQuery, QuantError> {
        self.check_vector(query)?;
        Ok(self.prepare_unchecked(query))
    }

    /// [`ScalarQuantizer::prepare`] without the checks: the caller has checked the length and
    /// finiteness. Normalizes a cosine query.
    pub(crate) fn prepare_unchecked(&self, query: &[f32]) -> PreparedQuery {
        let mut q = query.to_vec();
        crate::topk::prepare(self.metric, &mut q);
        match self.metric {
            Metric::Cosine | Metric::Dot => PreparedQuery {
                metric: self.metric,
                bias: dot(&q, &self.lo),
                weights: q.iter().zip(&self.scale).map(|(q, s)| q * s).collect(),
                scale: Vec::new(),
            },
            Metric::L2 => PreparedQuery {
                metric: self.metric,
                bias: 0.0,
                weights: q.iter().zip(&self.lo).map(|(q, lo)| q - lo).collect(),
                scale: self.scale.clone(),
            },
        }
    }

    /// The row behind `code` (decoded, `lo + s·c`, not normalized again) prepared as a query,
    /// without an intermediate decoded row: what a graph compares its nodes with one another
    /// by. Scoring another code against it gives the metric's value between the two decoded
    /// rows, so the comparison is symmetric. Plain multiply-adds rather than `mul_add`, which
    /// is a library call in a baseline x86-64 build. `code` holds [`ScalarQuantizer::dim`]
    /// bytes (the caller's to check).
    pub(crate) fn prepare_code(&self, code: &[u8]) -> PreparedQuery {
        let decoded = self
            .lo
            .iter()
            .zip(&self.scale)
            .zip(code)
            .map(|((&lo, &s), &c)| (lo, s, lo + s * f32::from(c)));
        match self.metric {
            Metric::Cosine | Metric::Dot => {
                let mut bias = 0.0;
                let weights = decoded
                    .map(|(lo, s, x)| {
                        bias += x * lo;
                        x * s
                    })
                    .collect();
                PreparedQuery {
                    metric: self.metric,
                    bias,
                    weights,
                    scale: Vec::new(),
                }
            }
            Metric::L2 => PreparedQuery {
                metric: self.metric,
                bias: 0.0,
                weights: decoded.map(|(lo, _, x)| x - lo).collect(),
                scale: self.scale.clone(),
            },
        }
    }

    /// The parameters as bytes, for storing next to the partition's data. Read back with
    /// [`ScalarQuantizer::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let d = self.dim();
        let mut out = Vec::with_capacity(HEADER + 8 * d);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(metric_code(self.metric));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(d as u32).to_le_bytes());
        out.extend_from_slice(&self.sample_clamp_fraction.to_le_bytes());
        for v in self.lo.iter().chain(&self.scale) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads parameters written by [`ScalarQuantizer::to_bytes`]. The bytes may come from a
    /// damaged file or a peer: anything but a well-formed quantizer is an error, never a panic,
    /// and nothing larger than the input is allocated.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, QuantError> {
        if bytes.len() < HEADER {
            return Err(QuantError::Truncated {
                got: bytes.len(),
                need: HEADER,
            });
        }
        if &bytes[..4] != MAGIC {
            return Err(QuantError::Invalid("not a scalar quantizer (bad magic)"));
        }
        if bytes[4] != VERSION {
            return Err(QuantError::Invalid("unsupported version"));
        }
        let metric = match bytes[5] {
            0 => Metric::Cosine,
            1 => Metric::Dot,
            2 => Metric::L2,
            _ => return Err(QuantError::Invalid("unknown metric")),
        };
        if bytes[6..8] != [0, 0] {
            return Err(QuantError::Invalid("reserved bytes are not zero"));
        }
        let dim = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        if dim == 0 {
            return Err(QuantError::Invalid("dimension 0"));
        }
        let need = dim
            .checked_mul(8)
            .and_then(|b| b.checked_add(HEADER))
            .ok_or(QuantError::Invalid("dimension too large"))?;
        if bytes.len() < need {
            return Err(QuantError::Truncated {
                got: bytes.len(),
                need,
            });
        }
        if bytes.len() > need {
            return Err(QuantError::Invalid("trailing bytes"));
        }
        let clamp = f32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let floats: Vec<f32> = bytes[HEADER..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let (lo, scale) = floats.split_at(dim);
        Self::from_parts(metric, lo.to_vec(), scale.to_vec(), clamp)
    }
}

fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::Cosine => 0,
        Metric::Dot => 1,
        Metric::L2 => 2,
    }
}

/// A query prepared for one quantizer: what is constant across rows is computed once.
/// For cosine and dot, `weights = q∘s` and `bias = q·lo`; for L2, `weights = q − lo` and
/// `scale = s`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedQuery {
    metric: Metric,
    weights: Vec<f32>,
    /// The quantizer's steps, for L2 only (copied so that scoring needs nothing else).
    scale: Vec<f32>,
    bias: f32,
}

impl PreparedQuery {
    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn dim(&self) -> usize {
        self.weights.len()
    }

    /// Same as [`score`].
    pub fn score(&self, code: &[u8]) -> f32 {
        score(self, code)
    }
}

/// The approximate score of the row behind `code` for a prepared query: the metric's natural
/// value (cosine similarity, inner product, or squared L2 distance) of the decoded row. This
/// is the per-row kernel a graph index can walk on.
///
/// # Panics
/// If `code` is not [`PreparedQuery::dim`] bytes long.
pub fn score(query: &PreparedQuery, code: &[u8]) -> f32 {
    assert_eq!(
        code.len(),
        query.dim(),
        "code length differs from the query's"
    );
    let mut out = [0.0f32];
    (kernel().rows)(query, code, &mut out);
    out[0]
}

/// [`score`] computed the plain way (sequential, in f64): the reference the SIMD kernels are
/// tested against. Slow; not for searching.
///
/// # Panics
/// If `code` is not [`PreparedQuery::dim`] bytes long.
pub fn score_reference(query: &PreparedQuery, code: &[u8]) -> f32 {
    assert_eq!(
        code.len(),
        query.dim(),
        "code length differs from the query's"
    );
    let w = query.weights.iter().map(|&w| f64::from(w));
    let c = code.iter().map(|&c| f64::from(c));
    match query.metric {
        Metric::Cosine | Metric::Dot => {
            (f64::from(query.bias) + w.zip(c).map(|(w, c)| w * c).sum::<f64>()) as f32
        }
        Metric::L2 => w
            .zip(c)
            .zip(&query.scale)
            .map(|((r, c), &s)| {
                let diff = r - f64::from(s) * c;
                diff * diff
            })
            .sum::<f64>() as f32,
    }
}

/// The name of the kernel this CPU runs (`avx512`, `avx2` or `portable`), for reports.
pub fn kernel_name() -> &'static str {
    kernel().name
}

/// Scores every code of `codes` (rows of `query.dim()` bytes) into `out`, one per row.
pub(crate) type RowsFn = fn(&PreparedQuery, &[u8], &mut [f32]);

#[derive(Clone, Copy)]
struct Kernel {
    name: &'static str,
    rows: RowsFn,
}

/// The per-row kernel this CPU runs, for callers that score one code at a time (the graph's
/// walk in [`crate::hnsw::QuantizedHnsw`]) and keep the function pointer.
pub(crate) fn rows_kernel() -> RowsFn {
    kernel().rows
}

fn kernel() -> Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let k = match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::AVX512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::AVX2,
            _ => PORTABLE,
        };
        tracing::debug!(kernel = k.name, "quantized scan kernel selected");
        k
    })
}

/// Every kernel this CPU can run, for the tests.
#[cfg(test)]
fn kernels() -> Vec<Kernel> {
    let mut all = vec![PORTABLE];
    #[cfg(target_arch = "x86_64")]
    match Isa::detect() {
        Isa::Avx512 => all.extend([x86::AVX2, x86::AVX512]),
        Isa::Avx2 => all.push(x86::AVX2),
        Isa::Portable => {}
    }
    all
}

const PORTABLE: Kernel = Kernel {
    name: "portable",
    rows: rows_portable,
};

/// Lanes of the portable kernel's partial sums (a multiple of every SIMD width, so that the
/// compiler vectorizes the lane loops).
const LANES: usize = 16;

fn rows_portable(q: &PreparedQuery, codes: &[u8], out: &mut [f32]) {
    let d = q.dim();
    let rows = codes.chunks_exact(d).zip(out.iter_mut());
    match q.metric {
        Metric::Cosine | Metric::Dot => {
            for (code, o) in rows {
                *o = q.bias + dot_portable(&q.weights, code);
            }
        }
        Metric::L2 => {
            for (code, o) in rows {
                *o = l2_portable(&q.weights, &q.scale, code);
            }
        }
    }
}

/// Pairwise sum of the lanes.
#[inline(always)]
fn sum_lanes(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// `Σ wᵢ cᵢ` in [`LANES`] partial sums.
#[inline(always)]
fn dot_portable(w: &[f32], c: &[u8]) -> f32 {
    let d = w.len();
    let full = d - d % LANES;
    let mut acc = [0.0f32; LANES];
    for (w, c) in w[..full]
        .chunks_exact(LANES)
        .zip(c[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += w[l] * f32::from(c[l]);
        }
    }
    let mut s = sum_lanes(acc);
    for t in full..d {
        s += w[t] * f32::from(c[t]);
    }
    s
}

/// `Σ (rᵢ − sᵢ cᵢ)²` in [`LANES`] partial sums.
#[inline(always)]
fn l2_portable(r: &[f32], s: &[f32], c: &[u8]) -> f32 {
    let d = r.len();
    let full = d - d % LANES;
    let mut acc = [0.0f32; LANES];
    for ((r, s), c) in r[..full]
        .chunks_exact(LANES)
        .zip(s[..full].chunks_exact(LANES))
        .zip(c[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let diff = r[l] - s[l] * f32::from(c[l]);
            acc[l] += diff * diff;
        }
    }
    let mut total = sum_lanes(acc);
    for t in full..d {
        let diff = r[t] - s[t] * f32::from(c[t]);
        total += diff * diff;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Each 8 (AVX2) or 16 (AVX-512) codes are widened to i32 (`vpmovzxbd`, straight from
    //! memory), converted to f32 and fed to a fused multiply-add, with several accumulators
    //! so that the additions do not wait on one another.

    use std::arch::x86_64::*;

    use super::{Kernel, Metric, PreparedQuery};

    pub(super) const AVX2: Kernel = Kernel {
        name: "avx2",
        // SAFETY: only chosen after `Isa::detect` saw AVX2 and FMA.
        rows: |q, codes, out| unsafe { rows_avx2(q, codes, out) },
    };

    pub(super) const AVX512: Kernel = Kernel {
        name: "avx512",
        // SAFETY: only chosen after `Isa::detect` saw AVX-512 F, VL and BW.
        rows: |q, codes, out| unsafe { rows_avx512(q, codes, out) },
    };

    /// Horizontal sum of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(a: __m256) -> f32 {
        let x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
        _mm_cvtss_f32(x)
    }

    /// 8 codes from `p` as f32.
    ///
    /// # Safety
    /// `p` must address 8 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn codes8(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 8 bytes.
        let bytes = unsafe { _mm_loadl_epi64(p.cast()) };
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(w: &[f32], c: &[u8]) -> f32 {
        let d = w.len();
        assert_eq!(c.len(), d);
        let (wp, cp) = (w.as_ptr(), c.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (loads): i + 32 <= d, then i + 8 <= d, in each loop; both slices hold d.
        unsafe {
            while i + 32 <= d {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let x = codes8(cp.add(i + 8 * u));
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i + 8 * u)), x, *acc);
                }
                i += 32;
            }
            while i + 8 <= d {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), codes8(cp.add(i)), acc[0]);
                i += 8;
            }
        }
        let all = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum256(all);
        for t in i..d {
            s = w[t].mul_add(f32::from(c[t]), s);
        }
        s
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn l2_avx2(r: &[f32], s: &[f32], c: &[u8]) -> f32 {
        let d = r.len();
        assert!(s.len() == d && c.len() == d);
        let (rp, sp, cp) = (r.as_ptr(), s.as_ptr(), c.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (loads): as in `dot_avx2`, all three slices hold d.
        unsafe {
            while i + 32 <= d {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let o = i + 8 * u;
                    let x = codes8(cp.add(o));
                    let diff =
                        _mm256_fnmadd_ps(_mm256_loadu_ps(sp.add(o)), x, _mm256_loadu_ps(rp.add(o)));
                    *acc = _mm256_fmadd_ps(diff, diff, *acc);
                }
                i += 32;
            }
            while i + 8 <= d {
                let x = codes8(cp.add(i));
                let diff =
                    _mm256_fnmadd_ps(_mm256_loadu_ps(sp.add(i)), x, _mm256_loadu_ps(rp.add(i)));
                acc[0] = _mm256_fmadd_ps(diff, diff, acc[0]);
                i += 8;
            }
        }
        let all = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum256(all);
        for t in i..d {
            let diff = (-s[t]).mul_add(f32::from(c[t]), r[t]);
            total = diff.mul_add(diff, total);
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    fn rows_avx2(q: &PreparedQuery, codes: &[u8], out: &mut [f32]) {
        let d = q.dim();
        let rows = codes.chunks_exact(d).zip(out.iter_mut());
        match q.metric {
            Metric::Cosine | Metric::Dot => {
                for (code, o) in rows {
                    *o = q.bias + dot_avx2(&q.weights, code);
                }
            }
            Metric::L2 => {
                for (code, o) in rows {
                    *o = l2_avx2(&q.weights, &q.scale, code);
                }
            }
        }
    }

    /// 16 codes from `p` (only the lanes of `mask`) as f32.
    ///
    /// # Safety
    /// The bytes of `p` selected by `mask` must be readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw")]
    unsafe fn codes16(mask: __mmask16, p: *const u8) -> __m512 {
        // SAFETY: masked-off bytes are not read; the caller guarantees the others.
        let bytes = unsafe { _mm_maskz_loadu_epi8(mask, p.cast()) };
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw")]
    fn dot_avx512(w: &[f32], c: &[u8]) -> f32 {
        let d = w.len();
        assert_eq!(c.len(), d);
        let (wp, cp) = (w.as_ptr(), c.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (loads): i + 32 <= d, then i + 16 <= d; the tail is masked to d − i lanes.
        unsafe {
            while i + 32 <= d {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let o = i + 16 * u;
                    let x = codes16(!0, cp.add(o));
                    *acc = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(o)), x, *acc);
                }
                i += 32;
            }
            if i + 16 <= d {
                let x = codes16(!0, cp.add(i));
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i)), x, acc[0]);
                i += 16;
            }
            if i < d {
                let mask = ((1u32 << (d - i)) - 1) as __mmask16;
                let x = codes16(mask, cp.add(i));
                acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, wp.add(i)), x, acc[1]);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw")]
    fn l2_avx512(r: &[f32], s: &[f32], c: &[u8]) -> f32 {
        let d = r.len();
        assert!(s.len() == d && c.len() == d);
        let (rp, sp, cp) = (r.as_ptr(), s.as_ptr(), c.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (loads): as in `dot_avx512`, all three slices hold d.
        unsafe {
            while i + 32 <= d {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let o = i + 16 * u;
                    let x = codes16(!0, cp.add(o));
                    let diff =
                        _mm512_fnmadd_ps(_mm512_loadu_ps(sp.add(o)), x, _mm512_loadu_ps(rp.add(o)));
                    *acc = _mm512_fmadd_ps(diff, diff, *acc);
                }
                i += 32;
            }
            if i + 16 <= d {
                let x = codes16(!0, cp.add(i));
                let diff =
                    _mm512_fnmadd_ps(_mm512_loadu_ps(sp.add(i)), x, _mm512_loadu_ps(rp.add(i)));
                acc[0] = _mm512_fmadd_ps(diff, diff, acc[0]);
                i += 16;
            }
            if i < d {
                let mask = ((1u32 << (d - i)) - 1) as __mmask16;
                let x = codes16(mask, cp.add(i));
                let diff = _mm512_fnmadd_ps(
                    _mm512_maskz_loadu_ps(mask, sp.add(i)),
                    x,
                    _mm512_maskz_loadu_ps(mask, rp.add(i)),
                );
                acc[1] = _mm512_fmadd_ps(diff, diff, acc[1]);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw")]
    fn rows_avx512(q: &PreparedQuery, codes: &[u8], out: &mut [f32]) {
        let d = q.dim();
        let rows = codes.chunks_exact(d).zip(out.iter_mut());
        match q.metric {
            Metric::Cosine | Metric::Dot => {
                for (code, o) in rows {
                    *o = q.bias + dot_avx512(&q.weights, code);
                }
            }
            Metric::L2 => {
                for (code, o) in rows {
                    *o = l2_avx512(&q.weights, &q.scale, code);
                }
            }
        }
    }
}

/// Clamping seen by a [`QuantizedRows`] since it was built: a measure of how far the data has
/// drifted from the sample the quantizer was trained on. Counts only grow (removing a row does
/// not take its clamps back), since they describe the data that arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClampStats {
    /// Rows encoded (inserts and replacements).
    pub rows: u64,
    /// Rows with at least one clamped component.
    pub rows_clamped: u64,
    /// Components encoded.
    pub components: u64,
    /// Components clamped to their dimension's range.
    pub components_clamped: u64,
}

impl ClampStats {
    /// Counts one encoded row of `dim` components, `clamped` of them clamped.
    pub(crate) fn record(&mut self, dim: usize, clamped: usize) {
        self.rows += 1;
        self.rows_clamped += u64::from(clamped > 0);
        self.components += dim as u64;
        self.components_clamped += clamped as u64;
    }

    /// Whether these rows, encoded with `quantizer`, clamp clearly more than its training
    /// sample did: more than 10 times its fraction and more than 1 component in 1,000, over at
    /// least 1,000 rows. A rule of thumb: recall degrades gracefully with clamping, so this
    /// flags drift early rather than a failure.
    pub(crate) fn call_for_retraining(&self, quantizer: &ScalarQuantizer) -> bool {
        let trained = f64::from(quantizer.sample_clamp_fraction());
        let seen = self.fraction();
        self.rows >= 1000 && seen > 1e-3 && seen > 10.0 * trained
    }

    /// Fraction of the encoded components that were clamped (0 when none were encoded).
    pub fn fraction(&self) -> f64 {
        if self.components == 0 {
            0.0
        } else {
            self.components_clamped as f64 / self.components as f64
        }
    }
}

/// Bytes of codes scored per tile of the scan: small enough to stay in L2 while every query
/// of a batch is scored against it.
const TILE_BYTES: usize = 96 * 1024;

/// The codes of a partition's rows, contiguous, with their ids. Ids map to slots; removal
/// moves the last row into the freed slot, so the codes stay dense and a scan reads one
/// contiguous block.
///
/// Per row it holds the code (`dim` bytes), the id (8 bytes) and a hash map entry (about
/// 17 to 34 bytes, with the map's load factor); see [`QuantizedRows::memory_bytes_for`].
#[derive(Debug, Clone)]
pub struct QuantizedRows {
    quantizer: ScalarQuantizer,
    /// Row-major, `ids.len() × dim`.
    codes: Vec<u8>,
    ids: Vec<u64>,
    /// Slot of each id. u32 slots: a partition replica never holds 4 billion rows.
    slots: HashMap<u64, u32>,
    clamps: ClampStats,
}

impl QuantizedRows {
    /// An empty store whose rows are encoded with `quantizer`.
    pub fn new(quantizer: ScalarQuantizer) -> Self {
        QuantizedRows {
            quantizer,
            codes: Vec::new(),
            ids: Vec::new(),
            slots: HashMap::new(),
            clamps: ClampStats::default(),
        }
    }

    pub fn quantizer(&self) -> &ScalarQuantizer {
        &self.quantizer
    }

    pub fn dim(&self) -> usize {
        self.quantizer.dim()
    }

    pub fn metric(&self) -> Metric {
        self.quantizer.metric()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.slots.contains_key(&id)
    }

    /// The ids held, in slot order (the order of [`QuantizedRows::codes`]'s rows).
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// All codes, row-major in slot order.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The code of one row.
    pub fn code(&self, id: u64) -> Option<&[u8]> {
        let d = self.dim();
        self.slots
            .get(&id)
            .map(|&slot| &self.codes[slot as usize * d..(slot as usize + 1) * d])
    }

    /// Clamping seen since the store was built.
    pub fn clamp_stats(&self) -> ClampStats {
        self.clamps
    }

    /// Whether the rows that arrived clamp clearly more than the training sample did: more
    /// than 10 times its fraction and more than 1 component in 1,000, over at least 1,000
    /// rows. A rule of thumb: recall degrades gracefully with clamping, so this flags drift
    /// early rather than a failure.
    pub fn should_retrain(&self) -> bool {
        self.clamps.call_for_retraining(&self.quantizer)
    }

    /// Makes room for `additional` more rows exactly, so that loading `n` known rows costs
    /// `n` rows of memory rather than the next doubling.
    pub fn reserve(&mut self, additional: usize) {
        let d = self.dim();
        self.codes.reserve_exact(additional.saturating_mul(d));
        self.ids.reserve_exact(additional);
        self.slots.reserve(additional);
    }

    /// Gives back memory held beyond the rows (after many removals).
    pub fn shrink_to_fit(&mut self) {
        self.codes.shrink_to_fit();
        self.ids.shrink_to_fit();
        self.slots.shrink_to_fit();
    }

    /// Encodes and adds rows (`vectors` is `ids.len() × dim` raw f32, row-major), replacing
    /// any row that already has one of the ids. Nothing is changed when the input is refused.
    pub fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), QuantError> {
        let d = self.dim();
        check_rows(d, ids, vectors)?;
        let new = ids.iter().filter(|id| !self.slots.contains_key(id)).count();
        let max = u32::MAX as usize;
        if self.len() + new > max {
            return Err(TopKError::TooManyRows {
                len: self.len() + new,
                max,
            }
            .into());
        }
        self.slots.reserve(new);
        self.ids.reserve(new);
        self.codes.reserve(new * d);
        for (&id, row) in ids.iter().zip(vectors.chunks_exact(d)) {
            let slot = match self.slots.get(&id) {
                Some(&slot) => slot as usize,
                None => {
                    let slot = self.ids.len();
                    self.ids.push(id);
                    self.codes.resize(self.codes.len() + d, 0);
                    self.slots.insert(id, slot as u32);
                    slot
                }
            };
            let clamped = self
                .quantizer
                .encode_unchecked(row, &mut self.codes[slot * d..(slot + 1) * d]);
            self.clamps.record(d, clamped);
        }
        Ok(())
    }

    /// Removes the rows with these ids; ids not present are ignored. Returns how many went.
    pub fn remove(&mut self, ids: &[u64]) -> usize {
        let d = self.dim();
        let mut removed = 0;
        for id in ids {
            let Some(slot) = self.slots.remove(id) else {
                continue;
            };
            let slot = slot as usize;
            let last = self.ids.len() - 1;
            if slot != last {
                self.codes.copy_within(last * d..(last + 1) * d, slot * d);
                self.ids[slot] = self.ids[last];
                self.slots.insert(self.ids[slot], slot as u32);
            }
            self.ids.truncate(last);
            self.codes.truncate(last * d);
            removed += 1;
        }
        removed
    }

    /// Bytes held: codes, ids and the id map at their allocated capacity, and the quantizer.
    pub fn memory_bytes(&self) -> usize {
        self.codes.capacity()
            + self.ids.capacity() * size_of::<u64>()
            + MemoryUsage::hash_map_bytes(self.slots.capacity(), size_of::<(u64, u32)>())
            + self.quantizer.memory_bytes()
    }

    /// [`QuantizedRows::memory_bytes`] as [`MemoryUsage`] (all of it on the host).
    pub fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            host_bytes: self.memory_bytes(),
            device_bytes: 0,
        }
    }

    /// The bytes a store of `rows` rows of `dim` components holds when it was loaded with
    /// [`QuantizedRows::reserve`] (what [`QuantizedRows::memory_bytes`] reports then), for
    /// sizing without allocating: 1M × 384 is about 0.428 GB, 428 bytes per row.
    pub fn memory_bytes_for(rows: usize, dim: usize) -> usize {
        // The map's capacity after `reserve(rows)`: the usable part of a power of two of
        // buckets, as the standard map rounds it.
        let capacity = match rows {
            0 => 0,
            1..4 => 3,
            4..8 => 7,
            _ => (rows * 8 / 7).next_power_of_two() / 8 * 7,
        };
        rows * dim
            + rows * size_of::<u64>()
            + MemoryUsage::hash_map_bytes(capacity, size_of::<(u64, u32)>())
            + 3 * dim * size_of::<f32>()
    }

    fn tile_rows(&self) -> usize {
        (TILE_BYTES / self.dim()).clamp(8, 4096)
    }

    /// The `n` best rows for each query (`queries` is `count × dim`, raw f32, row-major) by
    /// their codes, best first with ties by id: candidates for [`rescore`], with approximate
    /// scores. Only rows whose id passes `filter` take part.
    pub fn scan(
        &self,
        queries: &[f32],
        n: usize,
        filter: Option<Filter<'_>>,
    ) -> Result<Vec<Vec<Hit>>, QuantError> {
        let d = self.dim();
        let nq = check_queries(d, queries)?;
        if n == 0 || self.is_empty() {
            return Ok(vec![Vec::new(); nq]);
        }
        let prepared: Vec<PreparedQuery> = queries
            .chunks_exact(d)
            .map(|q| self.quantizer.prepare_unchecked(q))
            .collect();
        let len = self.len();
        let tile = self.tile_rows();
        let merged = scan_parallel(len, tile, n, nq, |range| {
            self.scan_range(&prepared, range, n, filter)
        });
        let metric = self.metric();
        Ok(merged
            .into_iter()
            .map(|best| {
                best.into_sorted()
                    .into_iter()
                    .map(|c| Hit {
                        id: c.id,
                        score: key_to_score(metric, c.key),
                    })
                    .collect()
            })
            .collect())
    }

    /// Scans the rows of `range` for every query; one heap per query.
    fn scan_range(
        &self,
        queries: &[PreparedQuery],
        range: Range<usize>,
        n: usize,
        filter: Option<Filter<'_>>,
    ) -> Vec<TopK> {
        let d = self.dim();
        let tile = self.tile_rows();
        let rows = kernel().rows;
        let l2 = self.metric() == Metric::L2;
        let mut heaps = vec![TopK::new(n); queries.len()];
        let mut scores = vec![0.0f32; tile];
        // Per row of the tile: 0 not asked yet, 1 passes the filter, 2 does not. The filter
        // is asked only for rows that would enter a heap, at most once for all queries.
        let mut verdicts = vec![0u8; tile];
        let mut t0 = range.start;
        while t0 < range.end {
            let t1 = (t0 + tile).min(range.end);
            let nr = t1 - t0;
            let codes = &self.codes[t0 * d..t1 * d];
            let ids = &self.ids[t0..t1];
            verdicts[..nr].fill(0);
            for (heap, q) in heaps.iter_mut().zip(queries) {
                rows(q, codes, &mut scores[..nr]);
                if l2 {
                    scores[..nr].iter_mut().for_each(|s| *s = -*s);
                }
                heap.push_run(&scores[..nr], ids, |r| match filter {
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

    /// [`rescore`] with this store's metric and dimension.
    pub fn rescore(
        &self,
        query: &[f32],
        ids: &[u64],
        vectors: &[f32],
        k: usize,
    ) -> Result<Vec<Hit>, QuantError> {
        self.quantizer.check_len(query.len())?;
        rescore(self.metric(), query, ids, vectors, k)
    }
}

impl ScalarQuantizer {
    pub(crate) fn memory_bytes(&self) -> usize {
        (self.lo.capacity() + self.scale.capacity() + self.inv_scale.capacity()) * size_of::<f32>()
    }
}

/// Scan keys are higher-is-better for every metric: the score, or the negated L2 distance.
fn key_to_score(metric: Metric, key: f32) -> f32 {
    if metric == Metric::L2 { -key } else { key }
}

/// Exact scores of candidate rows from their f32 vectors (`vectors` is `ids.len() × dim`,
/// row-major, `dim = query.len()`, as stored: raw, not normalized), the best `k` of them in
/// [`crate::topk`]'s order: best first, ties by id. Scores are those of [`crate::topk`]:
/// cosine similarity, inner product, squared L2 distance. Ids should be distinct (a scan's
/// are).
pub fn rescore(
    metric: Metric,
    query: &[f32],
    ids: &[u64],
    vectors: &[f32],
    k: usize,
) -> Result<Vec<Hit>, QuantError> {
    let d = query.len();
    if d == 0 {
        return Err(TopKError::ZeroDimension.into());
    }
    check_queries(d, query)?;
    check_rows(d, ids, vectors)?;
    let mut q = query.to_vec();
    crate::topk::prepare(metric, &mut q);
    let mut buf = vec![0.0f32; d];
    let mut hits: Vec<Hit> = ids
        .iter()
        .zip(vectors.chunks_exact(d))
        .map(|(&id, v)| {
            let score = match metric {
                Metric::Dot => dot(&q, v),
                Metric::Cosine => {
                    buf.copy_from_slice(v);
                    crate::topk::normalize(&mut buf);
                    dot(&q, &buf)
                }
                Metric::L2 => {
                    for ((b, q), v) in buf.iter_mut().zip(&q).zip(v) {
                        *b = q - v;
                    }
                    dot(&buf, &buf)
                }
            };
            Hit { id, score }
        })
        .collect();
    hits.sort_by(|a, b| crate::topk::compare(metric, a, b));
    hits.truncate(k);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut StdRng, spread: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-spread..spread)).collect()
    }

    /// Every kernel agrees with the reference on every metric and awkward dimensions.
    #[test]
    fn every_kernel_matches_the_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        for d in [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 100, 384, 385] {
            for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
                let sample = random(64 * d, &mut rng, 2.0);
                let q =
                    ScalarQuantizer::train(d, metric, &sample, &TrainOptions::default()).unwrap();
                let rows = 5;
                let codes: Vec<u8> = (0..rows * d).map(|_| rng.random()).collect();
                let query = q.prepare(&random(d, &mut rng, 3.0)).unwrap();
                let want: Vec<f32> = codes
                    .chunks_exact(d)
                    .map(|c| score_reference(&query, c))
                    .collect();
                // Bound on the rounding: relative to the sum of the terms' magnitudes.
                let magnitude: Vec<f64> = codes
                    .chunks_exact(d)
                    .map(|c| {
                        let probe = PreparedQuery {
                            weights: query.weights.iter().map(|w| w.abs()).collect(),
                            scale: query.scale.iter().map(|s| -s.abs()).collect(),
                            bias: query.bias.abs(),
                            metric: query.metric,
                        };
                        f64::from(score_reference(&probe, c)).abs() + 1.0
                    })
                    .collect();
                for kernel in kernels() {
                    let mut got = vec![f32::NAN; rows + 1];
                    (kernel.rows)(&query, &codes, &mut got[..rows]);
                    assert!(got[rows].is_nan(), "{} wrote past the rows", kernel.name);
                    for r in 0..rows {
                        let err = f64::from((got[r] - want[r]).abs());
                        assert!(
                            err <= 1e-5 * magnitude[r],
                            "{} {metric} d={d} row {r}: {} vs {}",
                            kernel.name,
                            got[r],
                            want[r]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn memory_estimate_matches_a_loaded_store() {
        for rows in [0, 1, 5, 100, 3000] {
            let d = 24;
            let q = ScalarQuantizer::from_ranges(Metric::Dot, &[-1.0; 24], &[1.0; 24]).unwrap();
            let mut store = QuantizedRows::new(q);
            store.reserve(rows);
            let ids: Vec<u64> = (0..rows as u64).collect();
            store.upsert(&ids, &vec![0.5; rows * d]).unwrap();
            assert_eq!(
                store.memory_bytes(),
                QuantizedRows::memory_bytes_for(rows, d),
                "{rows} rows"
            );
        }
    }
}
