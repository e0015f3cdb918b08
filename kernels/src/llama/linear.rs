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
        HostMatrix { rows, cols, data: data.into() }
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { rows_dot_avx2(w, x, cols, n, out) };
    }
    rows_dot_body::<false>(w, x, cols, n, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_dot_avx2(w: &[f32], x: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    rows_dot_body::<true>(w, x, cols, n, out)
}

#[inline(always)]
fn rows_dot_body<const FMA: bool>(w: &[f32], x: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    for (w_row, out_row) in w.chunks_exact(cols).zip(out.chunks_exact_mut(n)) {
        for (x_row, o) in x.chunks_exact(cols).zip(out_row.iter_mut()) {
            *o = dot::<FMA>(w_row, x_row);
        }
    }
}

/// A dot product with 16 independent accumulators, which the compiler turns into SIMD lanes.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] = if FMA { x[j].mul_add(y[j], acc[j]) } else { acc[j] + x[j] * y[j] };
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    // Pairwise reduction of the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] += acc[j + width];
        }
        width /= 2;
    }
    acc[0] + tail
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
            let t = Tensor::<B, 2>::from_data(TensorData::new(weights.data.to_vec(), [rows, cols]), device);
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
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let m = HostMatrix::new(rows, cols, w.clone());
        for n in [1, 3] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
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
