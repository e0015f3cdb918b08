//! The decoder's dense layers: `y = x · Wᵀ`, with `W` kept as the GGUF file stores it.
//!
//! On the GPU they are burn matmuls over f32 weights (`model.rs`). On the CPU (`cpu.rs`),
//! decoding a token reads every weight once and does little arithmetic per weight, so its
//! speed is the memory's: the weights stay quantized in memory ([`HostMatrix`] holds the file's blocks, 4.5 to 8.5 bits a weight
//! instead of 32) and each block is dequantized into registers right before it is used.
//!
//! - A few activation rows (decoding, `n ≤ SMALL_BATCH`): each task streams a band of weight
//!   rows once, dequantizes 256 columns of four rows at a time into a buffer that stays in L1,
//!   and dots them with every activation row ([`kernel`]): with AVX-512 or AVX2 intrinsics
//!   (`simd.rs`) or portable Rust, picked at run time.
//! - Many rows (a prompt): the arithmetic dominates, so the weights are dequantized to f32 once
//!   per call and multiplied with `matrixmultiply`'s blocked, threaded GEMM.

use std::sync::Arc;

use rayon::prelude::*;

use crate::dense::{Dense, Precision, Then};
use crate::gguf::GgmlType;
use crate::isa::Isa;

/// Columns dequantized at once: a whole number of blocks of every type, 1 KiB of f32.
pub(super) const TILE: usize = 256;
/// Weight rows dequantized and dotted together, so each activation load serves four rows.
pub(super) const ROWS: usize = 4;
/// Logits per position that an [`exact`](HostMatrix::exact) matrix recomputes in f32.
const RECHECKED: usize = 32;

/// Output rows per rayon task: enough work per task to amortize the scheduling.
const ROWS_PER_TASK: usize = 32;
/// Up to this many activation rows, the streaming kernel; beyond it, dequantize and GEMM.
pub(crate) const SMALL_BATCH: usize = 16;

/// A row-major `[rows, cols]` matrix in host memory, in one of the GGUF element types; clones
/// share the data (the tied embedding and output head are one matrix).
#[derive(Debug, Clone)]
pub(crate) struct HostMatrix {
    rows: usize,
    cols: usize,
    dtype: GgmlType,
    row_bytes: usize,
    /// The buffer holding the matrix at `start..` (the whole GGUF file, when loaded from one).
    data: Arc<Vec<u8>>,
    start: usize,
    /// The logits that decide tokens come from f32 activations (see [`Self::exact`]).
    exact: bool,
}

impl HostMatrix {
    /// A matrix from its stored bytes; `Err` says why they do not make `[rows, cols]`.
    #[cfg(test)]
    pub(crate) fn new(
        rows: usize,
        cols: usize,
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> Result<Self, String> {
        let len = data.len();
        Self::shared(rows, cols, dtype, Arc::new(data), 0..len)
    }

    /// A matrix whose stored bytes are `data[range]`, kept where they are.
    pub(crate) fn shared(
        rows: usize,
        cols: usize,
        dtype: GgmlType,
        data: Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> Result<Self, String> {
        let row_bytes = dtype
            .bytes_for(cols as u64)
            .ok_or_else(|| format!("rows of {cols} are not whole {dtype:?} blocks"))?
            as usize;
        if range.len() != rows * row_bytes || data.get(range.clone()).is_none() {
            return Err(format!(
                "{} bytes do not hold {rows} rows of {cols} {dtype:?} elements",
                range.len()
            ));
        }
        Ok(HostMatrix {
            rows,
            cols,
            dtype,
            row_bytes,
            data,
            start: range.start,
            exact: false,
        })
    }

    /// An f32 matrix.
    #[cfg(test)]
    pub(crate) fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(rows, cols, GgmlType::F32, bytes).expect("f32 matrix shape")
    }

    /// For the output head, whose logits decide the token: with 8-bit activations throughout,
    /// SmolLM2's answer to a chat prompt began with another token than with f32 ones. With
    /// [`Activations::Int8`], every logit is first computed with 8-bit activations, then the
    /// [`RECHECKED`] largest of each row again from the f32 activations: the candidates that
    /// greedy decoding and sampling pick among are as the f32 path gives them, at the 8-bit
    /// path's speed (the head is a third of a small model's bytes).
    pub(crate) fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the matrix (shared by clones).
    pub(crate) fn bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    fn row_bytes(&self, i: usize) -> &[u8] {
        let at = self.start + i * self.row_bytes;
        &self.data[at..at + self.row_bytes]
    }

    /// Dequantizes row `i` into `out` (`cols` long).
    pub(crate) fn row_into(&self, i: usize, out: &mut [f32]) {
        self.dtype.dequantize(self.row_bytes(i), out);
    }

    /// The whole matrix as f32, row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(i, row)| self.row_into(i, row));
        out
    }

    /// `x` is `[n, cols]`; returns `[n, rows]` = x · selfᵀ. With [`Activations::Int8`] (and
    /// a machine and type that have the path) the activations are rounded to 8 bits first.
    pub(crate) fn matmul_t(&self, x: &[f32], n: usize, activations: Activations) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul_t input shape");
        if n > SMALL_BATCH {
            return self.matmul_t_gemm(x, n, activations);
        }
        let isa = Isa::detect();
        // Computed transposed ([rows, n]) so that each task writes one contiguous block.
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable
            && super::simd::has_q8_path(self.dtype)
            && activations == Activations::Int8
        {
            let mut out_t = vec![0f32; self.rows * n];
            self.matmul_t_q8(x, n, &mut out_t);
            let mut out = transpose(out_t, self.rows, n);
            if self.exact {
                self.recheck_largest(x, &mut out);
            }
            return out;
        }
        let mut out_t = vec![0f32; self.rows * n];
        out_t
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                let rows = first..first + out.len() / n;
                kernel::rows_dot(isa, self, rows, x, n, out);
            });
        transpose(out_t, self.rows, n)
    }

    /// Recomputes the [`RECHECKED`] largest values of each row of `out` (`[n, rows]`) from
    /// the f32 activations `x`.
    fn recheck_largest(&self, x: &[f32], out: &mut [f32]) {
        let mut weights = vec![0f32; self.cols];
        let mut order: Vec<usize> = Vec::with_capacity(self.rows);
        for (x, out) in x
            .chunks_exact(self.cols)
            .zip(out.chunks_exact_mut(self.rows))
        {
            order.clear();
            order.extend(0..self.rows);
            let keep = RECHECKED.min(self.rows);
            order.select_nth_unstable_by(keep - 1, |&a, &b| out[b].total_cmp(&out[a]));
            for &r in &order[..keep] {
                self.row_into(r, &mut weights);
                out[r] = crate::math::dot(&weights, x);
            }
        }
    }

    /// The integer path: activations quantized to 8 bits once, then integer dot products
    /// with the weights' blocks, as llama.cpp computes them.
    #[cfg(target_arch = "x86_64")]
    fn matmul_t_q8(&self, x: &[f32], n: usize, out_t: &mut [f32]) {
        let xq = super::simd::quantize_q8(x);
        let blocks = self.cols / 32;
        out_t
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                let rows: Vec<&[u8]> = (first..first + out.len() / n)
                    .map(|r| self.row_bytes(r))
                    .collect();
                // SAFETY: `Isa::detect` saw AVX2, FMA and F16C; the type has the path; the
                // rows and activations have `blocks` blocks each.
                unsafe { super::simd::rows_q8(self.dtype, &rows, &xq, blocks, n, out) };
            });
    }

    /// Many rows (a prompt): the weights dequantized to f32, then multiplied in bf16 where
    /// that is this CPU's best [`Precision`] (AMX, AMD's AVX-512 BF16) and the activations
    /// may be rounded (not [`Activations::F32`], not an [`exact`](Self::exact) matrix), else
    /// in f32 by `matrixmultiply`'s GEMM.
    fn matmul_t_gemm(&self, x: &[f32], n: usize, activations: Activations) -> Vec<f32> {
        let w = self.to_f32();
        if activations == Activations::Int8 && !self.exact && Precision::best() == Precision::Bf16 {
            let dense = Dense::new(&w, vec![0.0; self.rows], self.cols, Precision::Bf16);
            let mut out = vec![0f32; n * self.rows];
            dense.forward(x, &mut out, Then::Nothing);
            return out;
        }
        let (m, k) = (self.rows, self.cols);
        let mut out = vec![0f32; n * m];
        // out[n, m] = x[n, k] · w[m, k]ᵀ: w read with its strides swapped.
        // SAFETY: the pointers cover n × k, m × k and n × m elements, with these strides.
        unsafe {
            matrixmultiply::sgemm(
                n,
                k,
                m,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                0.0,
                out.as_mut_ptr(),
                m as isize,
                1,
            );
        }
        out
    }
}

/// `[rows, n]` to `[n, rows]`.
fn transpose(t: Vec<f32>, rows: usize, n: usize) -> Vec<f32> {
    if n == 1 {
        return t;
    }
    let mut out = vec![0f32; n * rows];
    for (r, row) in t.chunks_exact(n).enumerate() {
        for (i, v) in row.iter().enumerate() {
            out[i * rows + r] = *v;
        }
    }
    out
}

/// What the CPU's dense layers multiply the weights with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activations {
    /// While decoding (a few rows at a time), activations rounded to 8 bits per block of
    /// 32 and multiplied in integers, as llama.cpp does: the fastest (Q4_0, Q4_1 and Q8_0
    /// weights on AVX2 machines; other types and machines multiply f32). Prompts (more than
    /// 16 rows) and the output head stay f32: with 8-bit activations there, SmolLM2's answer
    /// to a chat prompt began with another token. Greedy decoding can part from an f32
    /// implementation's where two tokens are nearly tied.
    #[default]
    Int8,
    /// Activations as computed, in f32: the arithmetic of an f32 reference implementation.
    F32,
}

/// The streaming kernel: for each band of four weight rows, each tile of 256 columns is
/// dequantized into a buffer that stays in L1, then dotted with every activation row. The
/// dequantization and the dot products are the instruction set's (`simd.rs`), or portable.
mod kernel {
    use std::ops::Range;

    use super::{HostMatrix, Isa, ROWS, TILE};
    use crate::gguf::GgmlType;

    pub(super) fn rows_dot(
        isa: Isa,
        m: &HostMatrix,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        assert_eq!(out.len(), rows.len() * n);
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => tiles(m, rows, x, n, out, dequantize_avx2, |w, x| {
                // SAFETY: `Isa::detect` saw AVX-512F.
                unsafe { super::super::simd::dot4_avx512(w, x) }
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => tiles(m, rows, x, n, out, dequantize_avx2, |w, x| {
                // SAFETY: `Isa::detect` saw AVX2 and FMA.
                unsafe { super::super::simd::dot4_avx2(w, x) }
            }),
            _ => portable(m, rows, x, n, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn dequantize_avx2(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) {
        // SAFETY: only called when `Isa::detect` saw AVX2, FMA and F16C.
        if !unsafe { super::super::simd::dequantize(dtype, bytes, out) } {
            dtype.dequantize(bytes, out);
        }
    }

    /// Any CPU's build of the kernel.
    pub(super) fn portable(
        m: &HostMatrix,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        tiles(m, rows, x, n, out, |t, b, o| t.dequantize(b, o), dot4)
    }

    /// `out[(r - rows.start) * n + t] = row r · x_t`.
    #[inline(always)]
    fn tiles(
        m: &HostMatrix,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        dequantize: impl Fn(GgmlType, &[u8], &mut [f32]),
        dot4: impl Fn(&[[f32; TILE]; ROWS], &[f32]) -> [f32; ROWS],
    ) {
        let cols = m.cols;
        let mut buf = [[0f32; TILE]; ROWS];
        let mut r = rows.start;
        while r < rows.end {
            let block = ROWS.min(rows.end - r);
            let out_rows = &mut out[(r - rows.start) * n..(r - rows.start + block) * n];
            out_rows.fill(0.0);
            let mut c = 0;
            while c < cols {
                let len = TILE.min(cols - c);
                let b0 = m.dtype.bytes_for(c as u64).unwrap_or(0) as usize;
                let b1 = m.dtype.bytes_for(len as u64).unwrap_or(0) as usize;
                for (i, tile) in buf.iter_mut().enumerate().take(block) {
                    dequantize(m.dtype, &m.row_bytes(r + i)[b0..b0 + b1], &mut tile[..len]);
                }
                for t in 0..n {
                    // Rows past `block` hold stale values; their sums are not used.
                    let sums = dot4(&buf, &x[t * cols + c..t * cols + c + len]);
                    for (i, s) in sums.into_iter().enumerate().take(block) {
                        out_rows[i * n + t] += s;
                    }
                }
                c += len;
            }
            r += block;
        }
    }

    const LANES: usize = 8;

    /// Four weight rows dotted with one activation slice, in plain Rust.
    fn dot4(w: &[[f32; TILE]; ROWS], x: &[f32]) -> [f32; ROWS] {
        let len = x.len();
        let whole = len / LANES * LANES;
        let mut acc = [[0f32; LANES]; ROWS];
        for (j, xc) in x[..whole].chunks_exact(LANES).enumerate() {
            for (acc_r, w_r) in acc.iter_mut().zip(w) {
                let wc = &w_r[j * LANES..(j + 1) * LANES];
                for k in 0..LANES {
                    acc_r[k] += wc[k] * xc[k];
                }
            }
        }
        let mut sums = [0f32; ROWS];
        for (s, (acc_r, w_r)) in sums.iter_mut().zip(acc.iter().zip(w)) {
            *s = acc_r.iter().sum::<f32>() + (whole..len).map(|c| w_r[c] * x[c]).sum::<f32>();
        }
        sums
    }
}

/// `x` (`[n, in]`) through matrices whose outputs are concatenated (q, k and v whose types
/// differ): `[n, Σ rows]`.
pub(crate) fn host_linear(
    parts: &[HostMatrix],
    x: &[f32],
    n: usize,
    activations: Activations,
) -> Vec<f32> {
    if let [one] = parts {
        return one.matmul_t(x, n, activations);
    }
    let width: usize = parts.iter().map(HostMatrix::rows).sum();
    let outs: Vec<Vec<f32>> = parts
        .par_iter()
        .map(|p| p.matmul_t(x, n, activations))
        .collect();
    let mut out = Vec::with_capacity(n * width);
    for t in 0..n {
        for (p, o) in parts.iter().zip(&outs) {
            out.extend_from_slice(&o[t * p.rows..(t + 1) * p.rows]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                out[t * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
            }
        }
        out
    }

    /// What `matmul_t` with [`Activations::Int8`] gives over more than `SMALL_BATCH` rows
    /// (a prompt): where bf16 is the best [`Precision`], weights and activations rounded to
    /// bf16 and f32 sums; elsewhere f32.
    fn naive_prompt(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        if Precision::best() == Precision::Bf16 {
            let bf16 = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|&x| half::bf16::from_f32(x).to_f32())
                    .collect()
            };
            naive(&bf16(w), &bf16(x), rows, cols, n)
        } else {
            naive(w, x, rows, cols, n)
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{i}: {a} vs {b}");
        }
    }

    /// An exact matrix (the output head): with 8-bit activations, the largest values of each
    /// row are the f32 path's, the others the 8-bit path's.
    #[test]
    fn an_exact_matrix_rechecks_its_largest_values_in_f32() {
        let (rows, cols) = (300, 64);
        let mut bytes = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                bytes.extend(half::f16::from_f32(0.02).to_le_bytes());
                bytes.extend((0..32).map(|j| ((r * 37 + b * 11 + j * 13) % 251) as u8));
            }
        }
        let plain = HostMatrix::new(rows, cols, GgmlType::Q8_0, bytes).expect("shape");
        let exact = plain.clone().exact();
        let n = 3;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.37)
            .collect();
        let f32s = plain.matmul_t(&x, n, Activations::F32);
        let int8 = plain.matmul_t(&x, n, Activations::Int8);
        let mixed = exact.matmul_t(&x, n, Activations::Int8);
        for t in 0..n {
            let row = |v: &[f32]| v[t * rows..][..rows].to_vec();
            let (f32s, int8, mixed) = (row(&f32s), row(&int8), row(&mixed));
            let mut order: Vec<usize> = (0..rows).collect();
            order.sort_by(|&a, &b| f32s[b].total_cmp(&f32s[a]));
            // The top of the f32 order is recomputed (8-bit errors are far smaller than the
            // gaps below RECHECKED here).
            for &r in &order[..RECHECKED / 2] {
                assert!(
                    (mixed[r] - f32s[r]).abs() < 1e-4,
                    "row {t}, {r}: {} vs {}",
                    mixed[r],
                    f32s[r]
                );
            }
            // Anything not recomputed is the 8-bit value.
            let changed = (0..rows).filter(|&r| mixed[r] != int8[r]).count();
            assert!(changed <= RECHECKED, "{changed} values changed");
            let argmax = |v: &[f32]| (0..rows).max_by(|&a, &b| v[a].total_cmp(&v[b]));
            assert_eq!(argmax(&mixed), argmax(&f32s));
        }
    }

    #[test]
    fn matmul_t_matches_naive_for_every_batch_size() {
        let (rows, cols) = (70, 37);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let m = HostMatrix::from_f32(rows, cols, &w);
        for n in [1, 3, 4, 5, 8, 17, 40] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2)
                .collect();
            let exact = naive(&w, &x, rows, cols, n);
            close(&m.matmul_t(&x, n, Activations::F32), &exact, 1e-4);
            let int8 = m.matmul_t(&x, n, Activations::Int8);
            if n > SMALL_BATCH {
                close(&int8, &naive_prompt(&w, &x, rows, cols, n), 1e-4);
            } else {
                close(&int8, &exact, 1e-4);
            }
        }
    }

    /// Q8_0 blocks of known values: the quantized kernels (every instruction set this machine
    /// has, and the portable one) give what the dequantized matrix gives.
    #[test]
    fn quantized_kernels_match_the_dequantized_matrix() {
        let (rows, cols) = (37, 320);
        let mut bytes = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                let d = half::f16::from_f32(0.01 * (1 + (r + b) % 5) as f32);
                bytes.extend(d.to_le_bytes());
                bytes.extend((0..32).map(|j| ((r * 31 + b * 7 + j * 13) % 255) as u8));
            }
        }
        let m = HostMatrix::new(rows, cols, GgmlType::Q8_0, bytes).expect("shape");
        let w = m.to_f32();
        for n in [1, 2, 5, 16, 20] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
                .collect();
            let expect = naive(&w, &x, rows, cols, n);
            // Up to SMALL_BATCH rows, AVX2 machines quantize the activations to 8 bits (as
            // llama.cpp does): exact against the activations so rounded.
            #[cfg(target_arch = "x86_64")]
            if n <= SMALL_BATCH && Isa::detect() != Isa::Portable {
                let rounded =
                    super::super::simd::dequantize_q8(&super::super::simd::quantize_q8(&x));
                close(
                    &m.matmul_t(&x, n, Activations::Int8),
                    &naive(&w, &rounded, rows, cols, n),
                    1e-4,
                );
            }
            if n > SMALL_BATCH {
                let prompt = naive_prompt(&w, &x, rows, cols, n);
                close(&m.matmul_t(&x, n, Activations::Int8), &prompt, 1e-4);
            } else if Isa::detect() == Isa::Portable {
                close(&m.matmul_t(&x, n, Activations::Int8), &expect, 1e-4);
            }
            close(&m.matmul_t(&x, n, Activations::F32), &expect, 1e-4);
            let mut out_t = vec![0f32; rows * n];
            kernel::portable(&m, 0..rows, &x, n, &mut out_t);
            close(&transpose(out_t, rows, n), &expect, 1e-4);
            // The AVX2 build on an AVX-512 machine too.
            if Isa::detect() == Isa::Avx512 {
                let mut out_t = vec![0f32; rows * n];
                kernel::rows_dot(Isa::Avx2, &m, 0..rows, &x, n, &mut out_t);
                close(&transpose(out_t, rows, n), &expect, 1e-4);
            }
        }
    }

    #[test]
    fn concatenated_outputs_follow_the_parts() {
        let a = HostMatrix::from_f32(2, 32, &[1.0; 64]);
        let q = HostMatrix::new(1, 32, GgmlType::Q8_0, {
            let mut b = half::f16::from_f32(0.5).to_le_bytes().to_vec();
            b.extend([2u8; 32]);
            b
        })
        .expect("shape");
        // Multiples of 1/127 of the block's largest value: exact in 8 bits too.
        let x: Vec<f32> = (0..64).map(|i| (i % 2 * 127) as f32).collect();
        let out = host_linear(&[a, q], &x, 2, Activations::Int8);
        let s = 16.0 * 127.0;
        assert_eq!(out, vec![s, s, s, s, s, s]);
    }
}
