//! x86 intrinsics for the dense layers' streaming kernel: dequantizing a tile of a weight
//! row into f32 (AVX2), and dotting four such rows with an activation row (AVX2 or AVX-512).
//!
//! Written out by hand because the compiler does not vectorize these loops well: measured,
//! its version of the same Rust gathered and converted element by element and ran decoding
//! at a third of the speed of these.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::gguf::GgmlType;

use super::linear::{ROWS, TILE};

/// An f16 stored little-endian at `b[at..at + 2]`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn half(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Stores `d * q + m` for the 16 unsigned bytes of `q` at `out[..16]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_u8x16(q: __m128i, d: __m256, m: __m256, out: *mut f32) {
    // SAFETY: the caller gives 16 writable floats at `out`.
    unsafe {
        let a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
        let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
        _mm256_storeu_ps(out, _mm256_fmadd_ps(a, d, m));
        _mm256_storeu_ps(out.add(8), _mm256_fmadd_ps(b, d, m));
    }
}

/// Dequantizes `bytes` into `out` with AVX2 when `dtype` has a vector path here; `false`
/// (nothing written) when it has not. Lengths as for [`GgmlType::dequantize`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> bool {
    let blocks = bytes.chunks_exact(dtype.block_bytes());
    let outs = out.chunks_exact_mut(dtype.block_len());
    let low = _mm_set1_epi8(0x0f);
    // SAFETY (all arms): each block has `block_bytes` bytes and each output `block_len`
    // floats; every load and store below stays inside them.
    unsafe {
        match dtype {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let (qs, has_min) = if dtype == GgmlType::Q4_0 {
                    (2, false)
                } else {
                    (4, true)
                };
                for (b, o) in blocks.zip(outs) {
                    let d = half(b, 0);
                    let m = if has_min { half(b, 2) } else { -8.0 * d };
                    let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
                    let q = _mm_loadu_si128(b.as_ptr().add(qs).cast());
                    let lo = _mm_and_si128(q, low);
                    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
                    store_u8x16(lo, d, m, o.as_mut_ptr());
                    store_u8x16(hi, d, m, o.as_mut_ptr().add(16));
                }
                true
            }
            GgmlType::Q8_0 => {
                for (b, o) in blocks.zip(outs) {
                    let d = _mm256_set1_ps(half(b, 0));
                    for k in 0..4 {
                        let q = _mm_loadl_epi64(b.as_ptr().add(2 + 8 * k).cast());
                        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                        _mm256_storeu_ps(o.as_mut_ptr().add(8 * k), _mm256_mul_ps(v, d));
                    }
                }
                true
            }
            GgmlType::Q4_K => {
                for (b, o) in blocks.zip(outs) {
                    let (d, dmin) = (half(b, 0), half(b, 2));
                    let scales = &b[4..16];
                    for chunk in 0..4 {
                        let (s1, m1) = scale_min_k4(2 * chunk, scales);
                        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
                        let q = b.as_ptr().add(16 + 32 * chunk);
                        let out = o.as_mut_ptr().add(64 * chunk);
                        for half_q in 0..2 {
                            let q = _mm_loadu_si128(q.add(16 * half_q).cast());
                            let lo = _mm_and_si128(q, low);
                            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
                            let (d1, n1) = (_mm256_set1_ps(d * s1), _mm256_set1_ps(-dmin * m1));
                            let (d2, n2) = (_mm256_set1_ps(d * s2), _mm256_set1_ps(-dmin * m2));
                            store_u8x16(lo, d1, n1, out.add(16 * half_q));
                            store_u8x16(hi, d2, n2, out.add(32 + 16 * half_q));
                        }
                    }
                }
                true
            }
            _ => false,
        }
    }
}

/// ggml's `get_scale_min_k4` (see `gguf/dtype.rs`).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The four rows of `w` (their first `x.len()` values) dotted with `x`, with AVX2 and FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot4_avx2(w: &[[f32; TILE]; ROWS], x: &[f32]) -> [f32; ROWS] {
    let len = x.len();
    let whole = len / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let mut c = 0;
    // SAFETY: c + 8 <= whole <= len <= TILE.
    unsafe {
        while c < whole {
            let xv = _mm256_loadu_ps(x.as_ptr().add(c));
            for (a, row) in acc.iter_mut().zip(w) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(row.as_ptr().add(c)), xv, *a);
            }
            c += 8;
        }
    }
    let mut sums = [0f32; ROWS];
    for ((s, a), row) in sums.iter_mut().zip(acc).zip(w) {
        *s = hsum256(a) + (whole..len).map(|c| row[c] * x[c]).sum::<f32>();
    }
    sums
}

/// [`dot4_avx2`] with AVX-512: sixteen lanes per step.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn dot4_avx512(w: &[[f32; TILE]; ROWS], x: &[f32]) -> [f32; ROWS] {
    let len = x.len();
    let whole = len / 16 * 16;
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let mut c = 0;
    // SAFETY: c + 16 <= whole <= len <= TILE.
    unsafe {
        while c < whole {
            let xv = _mm512_loadu_ps(x.as_ptr().add(c));
            for (a, row) in acc.iter_mut().zip(w) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(row.as_ptr().add(c)), xv, *a);
            }
            c += 16;
        }
    }
    let mut sums = [0f32; ROWS];
    for ((s, a), row) in sums.iter_mut().zip(acc).zip(w) {
        *s = _mm512_reduce_add_ps(a) + (whole..len).map(|c| row[c] * x[c]).sum::<f32>();
    }
    sums
}

/// A block of 32 activations quantized to 8 bits, as llama.cpp's `block_q8_1`: values
/// `d * q`, with `sum = d * Σ q` for the offset terms of the weights' blocks.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(super) struct Q8Block {
    q: [i8; 32],
    d: f32,
    sum: f32,
}

/// Quantizes rows of activations (a multiple of 32 long) to [`Q8Block`]s, row after row.
pub(super) fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
    x.chunks_exact(32)
        .map(|c| {
            let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0i8; 32];
            for (q, v) in q.iter_mut().zip(c) {
                *q = (v * inv).round() as i8;
            }
            let sum = d * q.iter().map(|&v| v as i32).sum::<i32>() as f32;
            Q8Block { q, d, sum }
        })
        .collect()
}

/// The values of quantized activations, for tests.
#[cfg(test)]
pub(super) fn dequantize_q8(blocks: &[Q8Block]) -> Vec<f32> {
    blocks
        .iter()
        .flat_map(|b| b.q.iter().map(move |&q| q as f32 * b.d))
        .collect()
}

/// Whether [`rows_q8`] takes weights of this type.
pub(super) fn has_q8_path(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Rows of Q4_0, Q4_1 or Q8_0 weights dotted with quantized activation rows: integer
/// products of 32 weights and 32 activations at a time (`maddubs`), scaled once per block.
/// `rows` are whole weight rows of `blocks` blocks each; `xq` holds `n` activation rows of
/// `blocks` blocks; `out[i * n + t]` = row i · activation row t.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `dtype` must pass [`has_q8_path`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_q8(
    dtype: GgmlType,
    rows: &[&[u8]],
    xq: &[Q8Block],
    blocks: usize,
    n: usize,
    out: &mut [f32],
) {
    // SAFETY: as this function's; the VNNI versions only where the CPU has AVX-512 VNNI.
    unsafe {
        if vnni() {
            match dtype {
                GgmlType::Q4_0 => rows_q8_vnni::<Q4_0>(rows, xq, blocks, n, out),
                GgmlType::Q4_1 => rows_q8_vnni::<Q4_1>(rows, xq, blocks, n, out),
                _ => rows_q8_vnni::<Q8_0>(rows, xq, blocks, n, out),
            }
        } else {
            match dtype {
                GgmlType::Q4_0 => rows_q8_typed::<Q4_0, false>(rows, xq, blocks, n, out),
                GgmlType::Q4_1 => rows_q8_typed::<Q4_1, false>(rows, xq, blocks, n, out),
                _ => rows_q8_typed::<Q8_0, false>(rows, xq, blocks, n, out),
            }
        }
    }
}

/// Whether the CPU multiplies-and-adds four u8 × i8 products into an i32 in one instruction
/// (`vpdpbusd`, AVX-512 VNNI): one instruction where `maddubs` and `madd` are two.
fn vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
    })
}

/// [`rows_q8_typed`] with `vpdpbusd`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn rows_q8_vnni<const T: u8>(
    rows: &[&[u8]],
    xq: &[Q8Block],
    blocks: usize,
    n: usize,
    out: &mut [f32],
) {
    // SAFETY: as the caller's; the features of the VNNI body are enabled here.
    unsafe { rows_q8_typed::<T, true>(rows, xq, blocks, n, out) }
}

/// How far ahead of the block being multiplied the decode kernel prefetches each row: a
/// step reads every weight once, from memory, and the hardware prefetcher stops at 4 KiB
/// pages. SmolLM2 Q4_1 decode on 2 cores, tokens/s: none 59, 512 B 66, 2 KiB 80, 4 KiB 91,
/// 8 KiB 91, 32 KiB 88.
const PREFETCH: usize = 4096;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// The f16 at `p`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_at(p: *const u8) -> f32 {
    // SAFETY: the caller gives two readable bytes at `p`; F16C is enabled by the callers.
    unsafe {
        let bits = p.cast::<u16>().read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// One weight block, unpacked for [`products`]: its 32 weights as bytes (Q4: the unsigned
/// nibbles; Q8_0: the signed values), its scale `d` and offset `m` (value = d · q + m).
#[inline(always)]
unsafe fn unpack<const T: u8>(w: *const u8) -> (__m256i, f32, f32) {
    // SAFETY: the caller gives a whole block at `w`.
    unsafe {
        let d = half_at(w);
        if T == Q8_0 {
            return (_mm256_loadu_si256(w.add(2).cast()), d, 0.0);
        }
        let low = _mm_set1_epi8(0x0f);
        let (qs, m) = if T == Q4_1 {
            (4, half_at(w.add(2)))
        } else {
            (2, -8.0 * d)
        };
        let q = _mm_loadu_si128(w.add(qs).cast());
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        (_mm256_set_m128i(hi, lo), d, m)
    }
}

/// The integer sums (8 lanes of 4 products) of an unpacked weight block and an activation
/// block. With `VNNI`, the caller has AVX-512 VNNI.
#[inline(always)]
unsafe fn products<const T: u8, const VNNI: bool>(u: __m256i, xv: __m256i) -> __m256i {
    // SAFETY: plain register arithmetic on the features the callers enable.
    unsafe {
        // u8 × i8 products: Q8_0 multiplies |w| by x with w's sign.
        let (u, x) = if T == Q8_0 {
            (_mm256_sign_epi8(u, u), _mm256_sign_epi8(xv, u))
        } else {
            (u, xv)
        };
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
        }
    }
}

/// One weight block times one activation block: the integer sums (8 lanes) and the block's
/// scale `d` and offset `m` (value = d * q + m). With `VNNI`, the caller has AVX-512 VNNI.
#[inline(always)]
unsafe fn block_products<const T: u8, const VNNI: bool>(
    w: *const u8,
    xv: __m256i,
) -> (__m256i, f32, f32) {
    // SAFETY: the caller gives a whole block at `w`.
    unsafe {
        let (u, d, m) = unpack::<T>(w);
        (products::<T, VNNI>(u, xv), d, m)
    }
}

/// Activation rows that [`rows_q8_typed`] takes together when there are several: each
/// weight block is unpacked once for all of them.
const ACTIVATION_ROWS: usize = 8;

/// One weight row times `TN` activation rows from `x` (rows `blocks` blocks apart):
/// `out[t * stride]` for `t < TN`.
#[inline(always)]
unsafe fn row_times_rows<const T: u8, const VNNI: bool, const TN: usize>(
    w: *const u8,
    bb: usize,
    x: *const Q8Block,
    blocks: usize,
    out: &mut [f32],
    stride: usize,
) {
    // SAFETY: the caller gives a row of `blocks` blocks at `w` and `TN` activation rows.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); TN];
        let mut offsets = [0f32; TN];
        for b in 0..blocks {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(b * bb + PREFETCH).cast());
            let (u, d, m) = unpack::<T>(w.add(b * bb));
            for t in 0..TN {
                let xb = &*x.add(t * blocks + b);
                let xv = _mm256_loadu_si256(xb.q.as_ptr().cast());
                let p = products::<T, VNNI>(u, xv);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xb.d), acc[t]);
                offsets[t] += m * xb.sum;
            }
        }
        for t in 0..TN {
            out[t * stride] = hsum256(acc[t]) + offsets[t];
        }
    }
}

/// # Safety
/// As [`rows_q8`]; with `VNNI`, inlined only into a function with AVX-512 VNNI.
#[inline(always)]
unsafe fn rows_q8_typed<const T: u8, const VNNI: bool>(
    rows: &[&[u8]],
    xq: &[Q8Block],
    blocks: usize,
    n: usize,
    out: &mut [f32],
) {
    let bb = match T {
        Q4_0 => 18,
        Q4_1 => 20,
        _ => 34,
    };
    // Adds one weight block's products to an accumulator and its offset term.
    macro_rules! step {
        ($row:expr, $off:expr, $xv:expr, $xb:expr, $acc:ident, $offsets:ident) => {{
            let (p, d, m) = block_products::<T, VNNI>($row.add($off), $xv);
            $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * $xb.d), $acc);
            $offsets += m * $xb.sum;
        }};
    }
    // SAFETY: every row has `blocks * bb` bytes and `xq` `n * blocks` blocks (checked by
    // the caller); each load reads inside one block.
    unsafe {
        if n > 1 {
            // Several activation rows: each weight block unpacked once for up to
            // ACTIVATION_ROWS of them.
            for (i, row) in rows.iter().enumerate() {
                let out = &mut out[i * n..(i + 1) * n];
                let mut t0 = 0;
                while t0 < n {
                    let x = xq.as_ptr().add(t0 * blocks);
                    let out = &mut out[t0..];
                    let w = row.as_ptr();
                    let taken = (n - t0).min(ACTIVATION_ROWS);
                    match taken {
                        8 => row_times_rows::<T, VNNI, 8>(w, bb, x, blocks, out, 1),
                        7 => row_times_rows::<T, VNNI, 7>(w, bb, x, blocks, out, 1),
                        6 => row_times_rows::<T, VNNI, 6>(w, bb, x, blocks, out, 1),
                        5 => row_times_rows::<T, VNNI, 5>(w, bb, x, blocks, out, 1),
                        4 => row_times_rows::<T, VNNI, 4>(w, bb, x, blocks, out, 1),
                        3 => row_times_rows::<T, VNNI, 3>(w, bb, x, blocks, out, 1),
                        2 => row_times_rows::<T, VNNI, 2>(w, bb, x, blocks, out, 1),
                        _ => row_times_rows::<T, VNNI, 1>(w, bb, x, blocks, out, 1),
                    }
                    t0 += taken;
                }
            }
            return;
        }
        for t in 0..n {
            let x = xq.as_ptr().add(t * blocks);
            let mut i = 0;
            // Four rows at a time: each activation block is loaded once for the four.
            while i + 4 <= rows.len() {
                let (r0, r1, r2, r3) = (
                    rows[i].as_ptr(),
                    rows[i + 1].as_ptr(),
                    rows[i + 2].as_ptr(),
                    rows[i + 3].as_ptr(),
                );
                let (mut a0, mut a1, mut a2, mut a3) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                let (mut o0, mut o1, mut o2, mut o3) = (0f32, 0f32, 0f32, 0f32);
                for b in 0..blocks {
                    let xb = &*x.add(b);
                    let xv = _mm256_loadu_si256(xb.q.as_ptr().cast());
                    let off = b * bb;
                    // The weights are read once per token, from memory: ask for the lines
                    // PREFETCH bytes ahead of each of the four rows.
                    _mm_prefetch::<_MM_HINT_T0>(r0.wrapping_add(off + PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T0>(r1.wrapping_add(off + PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T0>(r2.wrapping_add(off + PREFETCH).cast());
                    _mm_prefetch::<_MM_HINT_T0>(r3.wrapping_add(off + PREFETCH).cast());
                    step!(r0, off, xv, xb, a0, o0);
                    step!(r1, off, xv, xb, a1, o1);
                    step!(r2, off, xv, xb, a2, o2);
                    step!(r3, off, xv, xb, a3, o3);
                }
                out[i * n + t] = hsum256(a0) + o0;
                out[(i + 1) * n + t] = hsum256(a1) + o1;
                out[(i + 2) * n + t] = hsum256(a2) + o2;
                out[(i + 3) * n + t] = hsum256(a3) + o3;
                i += 4;
            }
            while i < rows.len() {
                let r = rows[i].as_ptr();
                let mut a = _mm256_setzero_ps();
                let mut o = 0f32;
                for b in 0..blocks {
                    let xb = &*x.add(b);
                    let xv = _mm256_loadu_si256(xb.q.as_ptr().cast());
                    _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(b * bb + PREFETCH).cast());
                    step!(r, b * bb, xv, xb, a, o);
                }
                out[i * n + t] = hsum256(a) + o;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AVX2 without VNNI, as on CPUs that lack it.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_q8_maddubs<const T: u8>(
        rows: &[&[u8]],
        xq: &[Q8Block],
        blocks: usize,
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as the caller's.
        unsafe { rows_q8_typed::<T, false>(rows, xq, blocks, n, out) }
    }

    /// Both integer kernels against the dequantized weights times the rounded activations,
    /// for every type they take.
    #[test]
    fn integer_kernels_match_the_dequantized_products() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            eprintln!("no AVX2 here: the integer kernels do not run");
            return;
        }
        // One activation row, several (each weight block unpacked once for them), and more
        // than ACTIVATION_ROWS.
        for n in [1, 3, ACTIVATION_ROWS + 3] {
            check_integer_kernels(n);
        }
    }

    fn check_integer_kernels(n: usize) {
        let (rows, blocks) = (9, 4);
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let weights: Vec<Vec<u8>> = (0..rows)
                .map(|r| {
                    let mut row = Vec::new();
                    for b in 0..blocks {
                        row.extend(
                            half::f16::from_f32(0.01 * (1 + (r + b) % 4) as f32).to_le_bytes(),
                        );
                        if dtype == GgmlType::Q4_1 {
                            row.extend(half::f16::from_f32(-0.05 * (b as f32)).to_le_bytes());
                        }
                        let len = if dtype == GgmlType::Q8_0 { 32 } else { 16 };
                        row.extend((0..len).map(|j| ((r * 31 + b * 7 + j * 13) % 251) as u8));
                    }
                    row
                })
                .collect();
            let x: Vec<f32> = (0..n * blocks * 32)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
                .collect();
            let xq = quantize_q8(&x);
            let xr = dequantize_q8(&xq);
            let mut want = vec![0f32; rows * n];
            for (i, row) in weights.iter().enumerate() {
                let mut w = vec![0f32; blocks * 32];
                dtype.dequantize(row, &mut w);
                for t in 0..n {
                    want[i * n + t] = (0..blocks * 32)
                        .map(|k| w[k] * xr[t * blocks * 32 + k])
                        .sum();
                }
            }
            let rows: Vec<&[u8]> = weights.iter().map(Vec::as_slice).collect();
            let mut got = vec![0f32; want.len()];
            // SAFETY: AVX2, FMA and F16C were detected; the shapes match.
            unsafe {
                match dtype {
                    GgmlType::Q4_0 => rows_q8_maddubs::<Q4_0>(&rows, &xq, blocks, n, &mut got),
                    GgmlType::Q4_1 => rows_q8_maddubs::<Q4_1>(&rows, &xq, blocks, n, &mut got),
                    _ => rows_q8_maddubs::<Q8_0>(&rows, &xq, blocks, n, &mut got),
                }
            }
            let close = |got: &[f32], what: &str| {
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{dtype:?} {what}: {g} vs {w}"
                    );
                }
            };
            close(&got, "maddubs");
            if vnni() {
                let mut got = vec![0f32; want.len()];
                // SAFETY: as above, and VNNI was detected.
                unsafe {
                    match dtype {
                        GgmlType::Q4_0 => rows_q8_vnni::<Q4_0>(&rows, &xq, blocks, n, &mut got),
                        GgmlType::Q4_1 => rows_q8_vnni::<Q4_1>(&rows, &xq, blocks, n, &mut got),
                        _ => rows_q8_vnni::<Q8_0>(&rows, &xq, blocks, n, &mut got),
                    }
                }
                close(&got, "vnni");
            } else {
                eprintln!("no AVX-512 VNNI here: the VNNI kernel was not run");
            }
        }
    }
}
