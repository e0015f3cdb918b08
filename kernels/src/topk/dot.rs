//! Inner products of f32 rows: the arithmetic under the CPU scan.
//!
//! The tile kernel scores a block of queries against a block of rows with one vector
//! accumulator per (query, row) pair (8 × 3 with AVX-512, 4 × 2 with AVX2), so that one load
//! of a row chunk feeds several fused multiply-adds and everything stays in registers. It is
//! written with `std::arch` intrinsics for AVX-512 and AVX2+FMA and in portable Rust for
//! everything else; the best one this CPU supports is picked once at run time, so the binary
//! still runs on any x86-64 (or other) machine. Each inner product is summed in the same
//! order whatever block it falls in, so a row scores the same in every scan and partition.

use std::sync::OnceLock;

const LANES: usize = 16;

/// Inner products of `Q` queries with `V` rows, all of length `d`, in portable Rust (plain
/// multiply-add: without hardware FMA, `mul_add` would be a slow libm call).
#[inline(always)]
fn block<const Q: usize, const V: usize>(
    qs: [&[f32]; Q],
    vs: [&[f32]; V],
    d: usize,
) -> [[f32; V]; Q] {
    let qs = qs.map(|q| &q[..d]);
    let vs = vs.map(|v| &v[..d]);
    let full = d - d % LANES;
    let mut acc = [[[0.0f32; LANES]; V]; Q];
    let mut c = 0;
    while c < full {
        let vch: [&[f32; LANES]; V] = vs.map(|v| v[c..c + LANES].try_into().unwrap());
        for i in 0..Q {
            let qch: &[f32; LANES] = qs[i][c..c + LANES].try_into().unwrap();
            for j in 0..V {
                for l in 0..LANES {
                    acc[i][j][l] += qch[l] * vch[j][l];
                }
            }
        }
        c += LANES;
    }
    let mut out = [[0.0f32; V]; Q];
    for i in 0..Q {
        for j in 0..V {
            // Pairwise sum of the lanes, then the tail.
            let mut lanes = acc[i][j];
            let mut width = LANES / 2;
            while width > 0 {
                for l in 0..width {
                    lanes[l] += lanes[l + width];
                }
                width /= 2;
            }
            let mut s = lanes[0];
            for t in full..d {
                s += qs[i][t] * vs[j][t];
            }
            out[i][j] = s;
        }
    }
    out
}

type TileFn = fn(&[f32], &[f32], usize, &mut [f32], usize);

/// The tile loop, shared by every instruction set: blocks of `$qb` queries × `$vb` rows (as
/// many accumulators as the registers hold), then the leftover queries one at a time against
/// 4 rows. `$block::<Q, V>(qs, vs, d)` returns the
/// `Q × V` inner products of the row pointers `qs` and `vs`.
macro_rules! tile_loop {
    ($block:ident, $qb:literal, $vb:literal, $queries:expr, $rows:expr, $d:expr, $out:expr, $ldo:expr) => {{
        let (queries, rows, d, out, ldo): (&[f32], &[f32], usize, &mut [f32], usize) =
            ($queries, $rows, $d, $out, $ldo);
        let nq = queries.len() / d;
        let nr = rows.len() / d;
        let q = |i: usize| queries[i * d..(i + 1) * d].as_ptr();
        let v = |r: usize| rows[r * d..(r + 1) * d].as_ptr();
        let mut i = 0;
        while i + $qb <= nq {
            let qs: [*const f32; $qb] = std::array::from_fn(|a| q(i + a));
            let mut r = 0;
            while r + $vb <= nr {
                let vs: [*const f32; $vb] = std::array::from_fn(|b| v(r + b));
                // SAFETY: every pointer addresses `d` readable floats.
                let s = unsafe { $block::<$qb, $vb>(qs, vs, d) };
                for (a, s) in s.iter().enumerate() {
                    out[(i + a) * ldo + r..(i + a) * ldo + r + $vb].copy_from_slice(s);
                }
                r += $vb;
            }
            for r in r..nr {
                // SAFETY: as above.
                let s = unsafe { $block::<$qb, 1>(qs, [v(r)], d) };
                for (a, s) in s.iter().enumerate() {
                    out[(i + a) * ldo + r] = s[0];
                }
            }
            i += $qb;
        }
        for i in i..nq {
            let qs = [q(i)];
            let mut r = 0;
            while r + 4 <= nr {
                // SAFETY: as above.
                let [s] = unsafe { $block::<1, 4>(qs, [v(r), v(r + 1), v(r + 2), v(r + 3)], d) };
                out[i * ldo + r..i * ldo + r + 4].copy_from_slice(&s);
                r += 4;
            }
            for r in r..nr {
                // SAFETY: as above.
                out[i * ldo + r] = unsafe { $block::<1, 1>(qs, [v(r)], d) }[0][0];
            }
        }
    }};
}

/// The portable kernel: plain Rust the compiler may vectorize as it can.
fn tile_plain(queries: &[f32], rows: &[f32], d: usize, out: &mut [f32], ldo: usize) {
    /// # Safety
    /// Every pointer must address `d` readable floats.
    unsafe fn block_plain<const Q: usize, const V: usize>(
        qs: [*const f32; Q],
        vs: [*const f32; V],
        d: usize,
    ) -> [[f32; V]; Q] {
        // SAFETY: the caller guarantees `d` floats behind each pointer.
        let qs = qs.map(|p| unsafe { std::slice::from_raw_parts(p, d) });
        let vs = vs.map(|p| unsafe { std::slice::from_raw_parts(p, d) });
        block::<Q, V>(qs, vs, d)
    }
    tile_loop!(block_plain, 4, 2, queries, rows, d, out, ldo)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F must be available and every pointer must address `d` readable floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512<const Q: usize, const V: usize>(
        qs: [*const f32; Q],
        vs: [*const f32; V],
        d: usize,
    ) -> [[f32; V]; Q] {
        let mut acc = [[_mm512_setzero_ps(); V]; Q];
        let mut vv = [_mm512_setzero_ps(); V];
        let full = d - d % 16;
        let mut c = 0;
        // SAFETY (loads): c + 16 <= d inside the loop; the tail load is masked to d − c lanes.
        unsafe {
            while c < full {
                for j in 0..V {
                    vv[j] = _mm512_loadu_ps(vs[j].add(c));
                }
                for i in 0..Q {
                    let qq = _mm512_loadu_ps(qs[i].add(c));
                    for j in 0..V {
                        acc[i][j] = _mm512_fmadd_ps(qq, vv[j], acc[i][j]);
                    }
                }
                c += 16;
            }
            if c < d {
                let mask: __mmask16 = ((1u32 << (d - c)) - 1) as u16;
                for j in 0..V {
                    vv[j] = _mm512_maskz_loadu_ps(mask, vs[j].add(c));
                }
                for i in 0..Q {
                    let qq = _mm512_maskz_loadu_ps(mask, qs[i].add(c));
                    for j in 0..V {
                        acc[i][j] = _mm512_fmadd_ps(qq, vv[j], acc[i][j]);
                    }
                }
            }
        }
        let mut out = [[0.0f32; V]; Q];
        for i in 0..Q {
            for j in 0..V {
                out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
        out
    }

    /// # Safety
    /// AVX2 and FMA must be available and every pointer must address `d` readable floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2<const Q: usize, const V: usize>(
        qs: [*const f32; Q],
        vs: [*const f32; V],
        d: usize,
    ) -> [[f32; V]; Q] {
        let mut acc = [[_mm256_setzero_ps(); V]; Q];
        let mut vv = [_mm256_setzero_ps(); V];
        let full = d - d % 8;
        let mut c = 0;
        let mut out = [[0.0f32; V]; Q];
        // SAFETY (loads): c + 8 <= d inside the loop, and t < d in the tail.
        unsafe {
            while c < full {
                for j in 0..V {
                    vv[j] = _mm256_loadu_ps(vs[j].add(c));
                }
                for i in 0..Q {
                    let qq = _mm256_loadu_ps(qs[i].add(c));
                    for j in 0..V {
                        acc[i][j] = _mm256_fmadd_ps(qq, vv[j], acc[i][j]);
                    }
                }
                c += 8;
            }
            for i in 0..Q {
                for j in 0..V {
                    let a = acc[i][j];
                    let x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
                    let x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
                    let mut s = _mm_cvtss_f32(x);
                    for t in full..d {
                        s = (*qs[i].add(t)).mul_add(*vs[j].add(t), s);
                    }
                    out[i][j] = s;
                }
            }
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn tile_avx512(
        queries: &[f32],
        rows: &[f32],
        d: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        tile_loop!(block_avx512, 8, 3, queries, rows, d, out, ldo)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tile_avx2(queries: &[f32], rows: &[f32], d: usize, out: &mut [f32], ldo: usize) {
        tile_loop!(block_avx2, 4, 2, queries, rows, d, out, ldo)
    }

    pub(super) fn pick() -> (super::TileFn, &'static str) {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature tile_avx512 is compiled for was just detected.
            (
                |q, r, d, o, l| unsafe { tile_avx512(q, r, d, o, l) },
                "avx512",
            )
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2 and FMA.
            (|q, r, d, o, l| unsafe { tile_avx2(q, r, d, o, l) }, "avx2")
        } else {
            (super::tile_plain, "plain")
        }
    }
}

fn kernel() -> TileFn {
    static KERNEL: OnceLock<TileFn> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let (f, name) = x86::pick();
        #[cfg(not(target_arch = "x86_64"))]
        let (f, name): (TileFn, _) = (tile_plain, "plain");
        tracing::debug!(kernel = name, "top-k scan kernel selected");
        f
    })
}

/// Scores every query against every row: `out[i * ldo + r] = queries[i] · rows[r]`.
///
/// `queries` and `rows` are row-major with `d` components each; `out` must hold
/// `(n_queries − 1) · ldo + n_rows` values and `ldo ≥ n_rows`.
pub fn score_tile(queries: &[f32], rows: &[f32], d: usize, out: &mut [f32], ldo: usize) {
    assert!(d > 0 && queries.len().is_multiple_of(d) && rows.len().is_multiple_of(d));
    let (nq, nr) = (queries.len() / d, rows.len() / d);
    assert!(ldo >= nr && (nq == 0 || out.len() >= (nq - 1) * ldo + nr));
    kernel()(queries, rows, d, out, ldo)
}

/// The name of the kernel this CPU runs (`avx512`, `avx2` or `plain`), for reports.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    return x86::pick().1;
    #[cfg(not(target_arch = "x86_64"))]
    return "plain";
}

/// The inner product of two equal-length vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    if a.is_empty() {
        return 0.0;
    }
    let mut out = [0.0f32];
    score_tile(a, b, a.len(), &mut out, 1);
    out[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    /// Every kernel this CPU can run, whichever one `score_tile` picked.
    fn kernels() -> Vec<(&'static str, TileFn)> {
        let mut all: Vec<(&'static str, TileFn)> = vec![("plain", tile_plain)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                all.push(("avx2", |q, r, d, o, l| unsafe {
                    x86::tile_avx2(q, r, d, o, l)
                }));
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: as above.
                all.push(("avx512", |q, r, d, o, l| unsafe {
                    x86::tile_avx512(q, r, d, o, l)
                }));
            }
        }
        all
    }

    /// Checks `kernel` against the naive dot product on every shape in `ds × nqs × nrs`,
    /// writing into rows `pad` floats wider than needed (so stray writes would show).
    fn matches_naive(
        name: &str,
        kernel: impl Fn(&[f32], &[f32], usize, &mut [f32], usize),
        ds: &[usize],
        nqs: &[usize],
        nrs: &[usize],
        pad: usize,
    ) {
        for &d in ds {
            for &nq in nqs {
                for &nr in nrs {
                    let q: Vec<f32> = (0..nq * d)
                        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0)
                        .collect();
                    let r: Vec<f32> = (0..nr * d)
                        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0)
                        .collect();
                    let ldo = nr + pad;
                    let mut out = vec![f32::NAN; nq * ldo];
                    kernel(&q, &r, d, &mut out, ldo);
                    for i in 0..nq {
                        for j in 0..nr {
                            let want = naive(&q[i * d..(i + 1) * d], &r[j * d..(j + 1) * d]);
                            let got = f64::from(out[i * ldo + j]);
                            assert!(
                                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                                "{name} d={d} nq={nq} nr={nr} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_naive_for_every_shape() {
        for (name, kernel) in kernels() {
            let ds = [1, 3, 8, 16, 17, 40, 384];
            matches_naive(name, kernel, &ds, &[1, 5, 8, 9, 17], &[1, 2, 3, 5, 7], 1);
        }
    }

    #[test]
    fn tile_matches_naive_for_every_shape() {
        let ds = [1, 3, 16, 17, 40, 384];
        matches_naive("tile", score_tile, &ds, &[1, 3, 4, 5, 9], &[1, 2, 5, 8], 3);
    }
}
