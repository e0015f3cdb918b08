//! The decoder's dense layers: `y = x · Wᵀ`.
//!
//! On the GPU they are burn matmuls. On the CPU, burn's ndarray backend multiplies through
//! `matrixmultiply`, which copies (packs) the whole weight matrix on every call: at decode time
//! the activations are a handful of rows, so each token would read every weight three times.
//! [`HostMatrix`] instead streams each weight row once and dots it with all activation rows,
//! spread over threads with rayon (measured in `benches/generate.rs`).

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// A row-major `[rows, cols]` f32 matrix in host memory; clones share the data (the tied
/// embedding and output head are one matrix).
#[derive(Debug, Clone)]
pub(crate) struct HostMatrix {
    rows: usize,
    cols: usize,
    data: Arc<[f32]>,
}

/// Output rows per rayon task: enough work per task to amortize the scheduling.
const ROWS_PER_TASK: usize = 32;

impl HostMatrix {
    pub(crate) fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "HostMatrix shape");
        HostMatrix {
            rows,
            cols,
            data: data.into(),
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// `x` is `[n, cols]`; returns `[n, rows]` = x · selfᵀ.
    pub(crate) fn matmul_t(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul_t input shape");
        // Computed transposed ([rows, n]) so that each task writes one contiguous block.
        let mut out_t = vec![0f32; self.rows * n];
        out_t
            .par_chunks_mut(ROWS_PER_TASK * n)
            .zip(self.data.par_chunks(ROWS_PER_TASK * self.cols))
            .for_each(|(out, w)| rows_dot(w, x, self.cols, n, out));
        if n == 1 {
            return out_t;
        }
        let mut out = vec![0f32; n * self.rows];
        for (r, row) in out_t.chunks_exact(n).enumerate() {
            for (t, v) in row.iter().enumerate() {
                out[t * self.rows + r] = *v;
            }
        }
        out
    }
}

/// `out[r * n + t] = w_r · x_t` for the weight rows `w` and activation rows `x`.
fn rows_dot(w: &[f32], x: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    debug_assert_eq!(w.len() % cols, 0);
    debug_assert_eq!(x.len(), n * cols);
    debug_assert_eq!(out.len(), w.len() / cols * n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features (checked above); the lengths are as asserted.
        return unsafe { avx2::rows_dot(w, x, cols, n, out) };
    }
    for (w_row, out_row) in w.chunks_exact(cols).zip(out.chunks_exact_mut(n)) {
        for (x_row, o) in x.chunks_exact(cols).zip(out_row.iter_mut()) {
            *o = w_row.iter().zip(x_row).map(|(a, b)| a * b).sum();
        }
    }
}

/// Register-blocked dot products with AVX2 and FMA: a block of `R` weight rows and `T`
/// activation rows keeps `R × T` accumulators in registers, so each loaded weight vector
/// serves `T` tokens and each loaded activation vector `R` rows.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_dot(w: &[f32], x: &[f32], cols: usize, n: usize, out: &mut [f32]) {
        let rows = w.len() / cols;
        let mut r = 0;
        // SAFETY (all blocks): r + R <= rows and t + T <= n, so every row read and every
        // output written is inside the slices (lengths checked by the caller).
        unsafe {
            while r + 4 <= rows {
                let mut t = 0;
                while t + 4 <= n {
                    block::<2, 4>(w, x, cols, n, r, t, out);
                    block::<2, 4>(w, x, cols, n, r + 2, t, out);
                    t += 4;
                }
                while t < n {
                    block::<4, 1>(w, x, cols, n, r, t, out);
                    t += 1;
                }
                r += 4;
            }
            while r < rows {
                for t in 0..n {
                    block::<1, 1>(w, x, cols, n, r, t, out);
                }
                r += 1;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize, const T: usize>(
        w: &[f32],
        x: &[f32],
        cols: usize,
        n: usize,
        r0: usize,
        t0: usize,
        out: &mut [f32],
    ) {
        let simd = cols / 8 * 8;
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        // SAFETY: the caller keeps r0 + R rows and t0 + T tokens in bounds; c + 8 <= cols.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut c = 0;
            while c < simd {
                let mut xv = [_mm256_setzero_ps(); T];
                for (t, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xp.add((t0 + t) * cols + c));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add((r0 + r) * cols + c));
                    for (a, xv) in acc_r.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, *xv, *a);
                    }
                }
                c += 8;
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (t, a) in acc_r.iter().enumerate() {
                    let mut sum = hsum(*a);
                    for c in simd..cols {
                        sum += w[(r0 + r) * cols + c] * x[(t0 + t) * cols + c];
                    }
                    out[(r0 + r) * n + t0 + t] = sum;
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// A dense layer without bias, `[in] -> [out]`.
#[derive(Debug, Clone)]
pub(crate) enum Linear<B: Backend> {
    /// Weights `[out, in]` on the host, for the CPU.
    Host(HostMatrix),
    /// Weights `[in, out]` as a burn tensor, for the GPU.
    Device(Tensor<B, 2>),
}

impl<B: Backend> Linear<B> {
    /// Builds the layer from a row-major `[out, in]` matrix.
    pub(crate) fn new(weights: HostMatrix, on_host: bool, device: &B::Device) -> Self {
        if on_host {
            Linear::Host(weights)
        } else {
            let (rows, cols) = (weights.rows, weights.cols);
            let t = Tensor::<B, 2>::from_data(
                TensorData::new(weights.data.to_vec(), [rows, cols]),
                device,
            );
            Linear::Device(t.transpose())
        }
    }

    /// `x` is `[n, in]`; returns `[n, out]`.
    pub(crate) fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Linear::Device(w) => x.matmul(w.clone()),
            Linear::Host(w) => {
                let device = x.device();
                let [n, _] = x.dims();
                let input = x.into_data().into_vec::<f32>().expect("f32 activations");
                let out = w.matmul_t(&input, n);
                Tensor::from_data(TensorData::new(out, [n, w.rows]), &device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_t_matches_naive() {
        let (rows, cols) = (70, 37);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let m = HostMatrix::new(rows, cols, w.clone());
        for n in [1, 3, 4, 5, 8] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2)
                .collect();
            let y = m.matmul_t(&x, n);
            for t in 0..n {
                for r in 0..rows {
                    let expect: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                    assert!((y[t * rows + r] - expect).abs() < 1e-4, "{t} {r}");
                }
            }
        }
    }
}
