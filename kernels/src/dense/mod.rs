//! Dense layers on the CPU: `y = x · Wᵀ + b`, then the element-wise step that follows the
//! layer (GELU, or the residual add), fused so that `y` is written once. The BERT encoder's
//! layers, and the Llama decoder's over a prompt.
//!
//! Weights are packed once, at load, for the kernel this CPU runs best ([`Precision`]):
//!
//! - **bf16**: weights and activations rounded to bf16 (8 bits of mantissa), sums in f32.
//!   all-MiniLM-L6-v2's vectors stay within a cosine of 0.9999 of the f32 ones
//!   (`kernels/tests/embeddings.rs`). Two kernels ([`Bf16Kernel`]) take the same packing: AMX
//!   tiles ([`amx`]), and AVX-512 BF16 dot products (`vdpbf16ps`) in tiles of [`MR`]
//!   rows × [`NR`] columns held in registers over the whole depth.
//! - **f32** through `matrixmultiply`'s sgemm everywhere else, and on request.
//!
//! [`Precision::best`] is bf16 where a bf16 product is faster than an f32 one: on AMX, and on
//! AMD's AVX-512 BF16 (Zen 4 and later), whose `vdpbf16ps` does twice the floating-point work
//! of an f32 FMA per cycle. On a 2-core Zen 5 VM the AVX-512 bf16 kernel embeds
//! all-MiniLM-L6-v2 2.5-9x faster than f32 (questions: 1,760 against 474 texts/s at batch
//! 128). Intel's AVX-512 BF16 without AMX (Cooper Lake, or a Sapphire Rapids whose kernel
//! withholds the tiles) does the opposite: there `vdpbf16ps` does half the work of two f32
//! FMAs per cycle (106 against 212 GFLOP/s on one core), so f32 stays. Tasks of row chunks ×
//! panels run on all cores. A row's result depends only on that row, so a text gets the same
//! vector alone or in any batch.

use rayon::prelude::*;

mod amx;
mod gelu;

use gelu::gelu;

/// The arithmetic of the dense layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// bf16 weights and activations, f32 sums: many times the speed on AMX.
    Bf16,
    /// f32 throughout: the reference arithmetic, and what CPUs without AMX run.
    F32,
}

impl Precision {
    /// bf16 where this CPU multiplies bf16 faster than f32 (see the module's doc), else f32.
    /// Decided once: every prompt's matrices ask, and CPUID traps to the hypervisor in a VM.
    pub fn best() -> Self {
        static BEST: std::sync::OnceLock<Precision> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::best_for(Bf16Kernel::best(), cpu_is_amd()))
    }

    /// The policy of [`Precision::best`], given the bf16 kernel the CPU runs (if any) and
    /// whether it is AMD's.
    fn best_for(kernel: Option<Bf16Kernel>, amd: bool) -> Self {
        match kernel {
            Some(Bf16Kernel::Amx) => Precision::Bf16,
            Some(Bf16Kernel::Avx512) if amd => Precision::Bf16,
            Some(Bf16Kernel::Avx512) | None => Precision::F32,
        }
    }
}

/// Whether the CPU's vendor string (CPUID leaf 0) is AMD's.
fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let leaf = std::arch::x86_64::__cpuid(0);
        // "AuthenticAMD", in EBX, EDX, ECX order.
        [leaf.ebx, leaf.edx, leaf.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU (and OS) runs a bf16 kernel: [`Precision::Bf16`] is f32 elsewhere.
pub fn bf16_supported() -> bool {
    Bf16Kernel::best().is_some()
}

/// The two kernels of bf16 layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bf16Kernel {
    Amx,
    Avx512,
}

impl Bf16Kernel {
    fn best() -> Option<Self> {
        if amx::available() && Self::avx512_bf16() {
            Some(Bf16Kernel::Amx)
        } else if Self::avx512_bf16() {
            Some(Bf16Kernel::Avx512)
        } else {
            None
        }
    }

    /// Where weight `(o, i)` (output `o`, input `i`) lies in the packing, with `pairs` pairs
    /// of inputs per panel of [`NR`] outputs.
    ///
    /// AVX-512: for each pair of inputs, the panel's `NR` columns' pairs side by side, so one
    /// 512-bit load gives 16 columns. AMX: the panel's two halves of 32 columns one after the
    /// other, each as a run of tiles (for each 16 pairs of inputs, two tiles of 16 pairs × 16
    /// columns' pairs, 1 KiB each), so that a block reads its weights in one stream.
    fn packed_at(self, pairs: usize, o: usize, i: usize) -> usize {
        let (panel, col) = (o / NR, o % NR);
        let (pair, e) = (i / 2, i % 2);
        let panel_start = panel * pairs * NR * 2;
        match self {
            Bf16Kernel::Avx512 => panel_start + (pair * NR + col) * 2 + e,
            Bf16Kernel::Amx => {
                let steps = pairs / 16;
                let (half, tile, c) = (col / 32, col % 32 / 16, col % 16);
                let (step, row) = (pair / 16, pair % 16);
                panel_start + ((half * steps + step) * 2 + tile) * 512 + row * 32 + c * 2 + e
            }
        }
    }

    /// AVX-512 BF16, which both kernels' conversions and epilogues use.
    fn avx512_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::isa::Isa::detect() == crate::isa::Isa::Avx512
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// Rows per tile of the bf16 kernel.
const MR: usize = 6;
/// Columns per tile of the bf16 kernel (4 vectors of 16 f32), and per packed panel.
const NR: usize = 64;
/// Rows that tiles of one task share (their activations stay in L2 while the task walks the
/// weight panels): a multiple of [`MR`] and of AMX's 32.
const CHUNK_ROWS: usize = 96;
/// Inputs are padded to a multiple of this (AMX's tile depth) in the bf16 packing.
const K_ALIGN: usize = 32;

/// What happens to `x · Wᵀ + b` before it is stored.
#[derive(Clone, Copy)]
pub(crate) enum Then<'a> {
    /// Stored as is.
    Nothing,
    /// GELU (erf), as BERT's intermediate layer does.
    Gelu,
    /// Added to the same element of this `[rows, out]` matrix: the residual connection.
    Add(&'a [f32]),
}

impl<'a> Then<'a> {
    /// The same step for the `len` elements from `start` of the output.
    fn part(self, start: usize, len: usize) -> Self {
        match self {
            Then::Add(all) => Then::Add(&all[start..][..len]),
            other => other,
        }
    }
}

/// How the weights are laid out in memory.
enum Packed {
    /// bf16 in panels of [`NR`] output columns: for each pair of inputs `(2p, 2p + 1)`, the
    /// panel holds `NR` adjacent pairs, so one 512-bit load (or one 64-byte tile row) gives
    /// 16 columns' pairs. Columns past `out` and inputs past `inp` (up to a multiple of
    /// [`K_ALIGN`]) are zeros.
    Bf16(Panels),
    /// f32, `[inp, out]` row-major (the checkpoint's `[out, inp]`, transposed).
    F32 { weight: Vec<f32> },
}

/// The bf16 packing (see [`Packed::Bf16`]) and the kernel that runs it.
struct Panels {
    panels: Vec<u16>,
    pairs: usize,
    kernel: Bf16Kernel,
}

/// One dense layer, packed for [`Precision`].
pub(crate) struct Dense {
    inp: usize,
    out: usize,
    bias: Vec<f32>,
    packed: Packed,
}

impl Dense {
    /// Packs a checkpoint layer: `weight` is `[out, inp]` row-major, `bias` has `out` values.
    pub fn new(weight: &[f32], bias: Vec<f32>, inp: usize, precision: Precision) -> Self {
        let kernel = match precision {
            Precision::Bf16 => Bf16Kernel::best(),
            Precision::F32 => None,
        };
        Self::with_kernel(weight, bias, inp, kernel)
    }

    fn with_kernel(weight: &[f32], bias: Vec<f32>, inp: usize, kernel: Option<Bf16Kernel>) -> Self {
        let out = bias.len();
        assert_eq!(weight.len(), out * inp, "weight is not [out, inp]");
        let packed = match kernel {
            Some(kernel) => {
                let pairs = inp.div_ceil(K_ALIGN) * K_ALIGN / 2;
                let panel_count = out.div_ceil(NR);
                let panel_len = pairs * NR * 2;
                let mut panels = vec![0u16; panel_count * panel_len];
                panels
                    .par_chunks_mut(panel_len)
                    .enumerate()
                    .for_each(|(panel, packed)| {
                        let outputs = panel * NR..((panel + 1) * NR).min(out);
                        for o in outputs {
                            for (i, &w) in weight[o * inp..][..inp].iter().enumerate() {
                                let at = kernel.packed_at(pairs, o, i) - panel * panel_len;
                                packed[at] = half::bf16::from_f32(w).to_bits();
                            }
                        }
                    });
                Packed::Bf16(Panels {
                    panels,
                    pairs,
                    kernel,
                })
            }
            None => {
                let mut transposed = vec![0f32; inp * out];
                for (o, row) in weight.chunks_exact(inp).enumerate() {
                    for (i, &w) in row.iter().enumerate() {
                        transposed[i * out + o] = w;
                    }
                }
                Packed::F32 { weight: transposed }
            }
        };
        Dense {
            inp,
            out,
            bias,
            packed,
        }
    }

    /// `y ← then(x · Wᵀ + b)` for the `rows` rows of `x` (`[rows, inp]`); `y` is `[rows, out]`.
    pub fn forward(&self, x: &[f32], y: &mut [f32], then: Then<'_>) {
        let rows = x.len() / self.inp;
        assert_eq!(x.len(), rows * self.inp, "input is not [rows, inp]");
        assert_eq!(y.len(), rows * self.out, "output is not [rows, out]");
        if let Then::Add(r) = then {
            assert_eq!(r.len(), y.len(), "residual is not [rows, out]");
        }
        if rows == 0 {
            return;
        }
        match &self.packed {
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16(panels) => self.forward_bf16(x, rows, panels, y, then),
            #[cfg(not(target_arch = "x86_64"))]
            Packed::Bf16(_) => unreachable!("bf16 weights are packed only on x86_64"),
            Packed::F32 { weight } => self.forward_f32(x, rows, weight, y, then),
        }
    }

    fn forward_f32(&self, x: &[f32], rows: usize, w: &[f32], y: &mut [f32], then: Then<'_>) {
        let (k, n) = (self.inp, self.out);
        // SAFETY: the pointers and strides describe `x` ([rows, k]), `w` ([k, n]) and `y`
        // ([rows, n]), whose lengths were checked above; `y` is not aliased.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                n,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                n as isize,
                1,
                0.0,
                y.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        let chunk = CHUNK_ROWS * n;
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
            let len = ys.len();
            finish_rows(ys, &self.bias, then.part(c * chunk, len));
        });
    }

    #[cfg(target_arch = "x86_64")]
    fn forward_bf16(&self, x: &[f32], rows: usize, packed: &Panels, y: &mut [f32], then: Then<'_>) {
        let (k, n) = (self.inp, self.out);
        let Panels {
            panels,
            pairs,
            kernel,
        } = packed;
        let (pairs, kernel) = (*pairs, *kernel);
        let stride = pairs * 2;
        // The activations in bf16, each row padded with zeros as the weights are, and zero
        // rows up to a whole AMX block.
        let mut a = vec![0u16; rows.next_multiple_of(32) * stride];
        a.par_chunks_mut(CHUNK_ROWS * stride)
            .zip(x.par_chunks(CHUNK_ROWS * k))
            .for_each(|(a, x)| {
                for (a, x) in a.chunks_exact_mut(stride).zip(x.chunks_exact(k)) {
                    // SAFETY: the packing chose bf16 only where `bf16_supported()`.
                    unsafe { simd::to_bf16(x, &mut a[..k]) };
                }
            });

        let panel_count = n.div_ceil(NR);
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let out = Disjoint(y.as_mut_ptr());
        (0..chunks * panel_count).into_par_iter().for_each(|tile| {
            let (chunk, panel) = (tile / panel_count, tile % panel_count);
            let cols = panel * NR..((panel + 1) * NR).min(n);
            let first = chunk * CHUNK_ROWS;
            let task = simd::Task {
                a: &a[first * stride..],
                stride,
                rows: first..(first + CHUNK_ROWS).min(rows),
                w: &panels[panel * pairs * NR * 2..][..pairs * NR * 2],
                pairs,
                bias: &self.bias[cols.clone()],
                first_col: cols.start,
                n,
                then,
                out,
            };
            // SAFETY: the packing chose the kernel that this CPU runs; tiles cover disjoint
            // (rows, columns) of `y`, which outlives the parallel loop; `a` holds rows up to
            // a multiple of 32.
            match kernel {
                Bf16Kernel::Amx => unsafe { simd::run_amx(&task) },
                Bf16Kernel::Avx512 => unsafe { simd::run(&task) },
            }
        });
    }
}

crate::isa::multiversion! {
    /// [`finish`] for whole rows of `bias.len()` values.
    fn finish_rows(rows: &mut [f32], bias: &[f32], then: Then<'_>) {
        let n = bias.len();
        for (r, row) in rows.chunks_exact_mut(n).enumerate() {
            finish(row, bias, then.part(r * n, n));
        }
    }
}

/// `row ← then(row + bias)`, `row` holding the sums of one output row (or part of one) and
/// `then` naming the residual's same part.
#[inline(always)]
fn finish(row: &mut [f32], bias: &[f32], then: Then<'_>) {
    match then {
        Then::Nothing => {
            for (y, b) in row.iter_mut().zip(bias) {
                *y += b;
            }
        }
        Then::Gelu => {
            for (y, b) in row.iter_mut().zip(bias) {
                *y = gelu(*y + b);
            }
        }
        Then::Add(residual) => {
            for ((y, b), r) in row.iter_mut().zip(bias).zip(residual) {
                *y += b + r;
            }
        }
    }
}

/// The output matrix, written by tiles in parallel: each tile writes only its own rows and
/// columns.
#[derive(Clone, Copy)]
pub(crate) struct Disjoint(pub(crate) *mut f32);

// SAFETY: `Disjoint` is only used to write disjoint parts of one slice from rayon tasks that
// end before the slice is used again.
unsafe impl Send for Disjoint {}
unsafe impl Sync for Disjoint {}

impl Disjoint {
    /// # Safety
    /// `start..start + len` lies within the slice, and no other task uses it meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn row_part(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Disjoint, MR, NR, Then, finish};

    const _: () =
        assert!(super::CHUNK_ROWS.is_multiple_of(32) && super::K_ALIGN.is_multiple_of(32));

    /// One task of the bf16 layer: rows `rows` of the output, the columns of one panel.
    pub struct Task<'a> {
        /// The activations in bf16, from row `rows.start`, `stride` apart.
        pub a: &'a [u16],
        pub stride: usize,
        pub rows: Range<usize>,
        /// The panel.
        pub w: &'a [u16],
        pub pairs: usize,
        /// The panel's columns' biases (fewer than `NR` in the last panel).
        pub bias: &'a [f32],
        /// The panel's first column.
        pub first_col: usize,
        /// Columns of the output.
        pub n: usize,
        /// For the whole output.
        pub then: Then<'a>,
        /// The whole output.
        pub out: Disjoint,
    }

    /// Computes a task's tiles and finishes their rows, all compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `out` is `[rows, n]` with `rows ≥ task.rows.end`, and no
    /// other thread uses the task's part of it meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub unsafe fn run(task: &Task<'_>) {
        let mut acc = [[0f32; NR]; MR];
        let width = task.bias.len();
        for first in task.rows.clone().step_by(MR) {
            let count = MR.min(task.rows.end - first);
            let a = &task.a[(first - task.rows.start) * task.stride..];
            // SAFETY: `a` holds `count` rows and the panel `pairs` pairs (the caller's
            // promise, checked by `tile`).
            unsafe { tile(a, task.stride, count, task.w, task.pairs, &mut acc) };
            for (r, acc) in acc.iter().take(count).enumerate() {
                let at = (first + r) * task.n + task.first_col;
                // SAFETY: the caller's promise.
                let dst = unsafe { task.out.row_part(at, width) };
                dst.copy_from_slice(&acc[..width]);
                finish(dst, task.bias, task.then.part(at, width));
            }
        }
    }

    /// [`run`] on AMX: blocks of 32 rows × 32 columns.
    ///
    /// # Safety
    /// As [`run`], and AMX is available; `task.a` holds rows up to a multiple of 32 (zeros
    /// past the last row).
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub unsafe fn run_amx(task: &Task<'_>) {
        use super::amx::{BLOCK_COLS, BLOCK_ROWS, K_STEP, Tiles};

        // SAFETY: AMX is available (the caller's promise).
        let tiles = unsafe { Tiles::configure() };
        let mut c = [[0f32; NR]; BLOCK_ROWS];
        let width = task.bias.len();
        let steps = task.pairs * 2 / K_STEP;
        for first in task.rows.clone().step_by(BLOCK_ROWS) {
            let count = BLOCK_ROWS.min(task.rows.end - first);
            let a = task.a[(first - task.rows.start) * task.stride..].as_ptr();
            for half in 0..NR / BLOCK_COLS {
                // SAFETY: `a` has 32 rows of the padded depth (16 if `count` ≤ 16),
                // each half of the panel `steps` steps of two tiles, `c` 32 rows of NR
                // floats.
                unsafe {
                    tiles.block(
                        a,
                        task.stride * 2,
                        task.w.as_ptr().add(half * steps * 2 * 512),
                        steps,
                        count <= BLOCK_ROWS / 2,
                        c.as_mut_ptr().cast::<f32>().add(half * BLOCK_COLS),
                        NR * 4,
                    )
                };
            }
            for (r, c) in c.iter().take(count).enumerate() {
                let at = (first + r) * task.n + task.first_col;
                // SAFETY: the caller's promise.
                let dst = unsafe { task.out.row_part(at, width) };
                dst.copy_from_slice(&c[..width]);
                finish(dst, task.bias, task.then.part(at, width));
            }
        }
    }

    /// `a[i] ← bf16(x[i])`, rounding to nearest even, as the instruction does.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `a` is at least as long as `x`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub unsafe fn to_bf16(x: &[f32], a: &mut [u16]) {
        let mut i = 0;
        while i + 16 <= x.len() {
            // SAFETY: 16 values are in bounds of both.
            unsafe {
                let v = _mm512_loadu_ps(x.as_ptr().add(i));
                let h = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
                _mm256_storeu_si256(a.as_mut_ptr().add(i).cast(), h);
            }
            i += 16;
        }
        for (a, &x) in a[i..].iter_mut().zip(&x[i..]) {
            *a = half::bf16::from_f32(x).to_bits();
        }
    }

    /// `acc[r][c] = Σ_k a[r][k] · w[k][c]` for `rows ≤ MR` rows of `a` (bf16, `stride`
    /// apart) and one packed panel `w` of `pairs` input pairs.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `a` holds `rows` rows of at least `2 · pairs` values
    /// and `w` holds `pairs · NR · 2` values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile(
        a: &[u16],
        stride: usize,
        rows: usize,
        w: &[u16],
        pairs: usize,
        acc: &mut [[f32; NR]; MR],
    ) {
        assert!(a.len() >= (rows - 1) * stride + 2 * pairs);
        assert!(w.len() >= pairs * NR * 2);
        // SAFETY: as the caller promises, for every count of rows.
        unsafe {
            match rows {
                1 => tile_rows::<1>(a.as_ptr(), stride, w.as_ptr(), pairs, acc),
                2 => tile_rows::<2>(a.as_ptr(), stride, w.as_ptr(), pairs, acc),
                3 => tile_rows::<3>(a.as_ptr(), stride, w.as_ptr(), pairs, acc),
                4 => tile_rows::<4>(a.as_ptr(), stride, w.as_ptr(), pairs, acc),
                5 => tile_rows::<5>(a.as_ptr(), stride, w.as_ptr(), pairs, acc),
                _ => tile_rows::<MR>(a.as_ptr(), stride, w.as_ptr(), pairs, acc),
            }
        }
    }

    /// The same 512 bits, seen as 32 bf16.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rows<const R: usize>(
        a: *const u16,
        stride: usize,
        w: *const u16,
        pairs: usize,
        acc: &mut [[f32; NR]; MR],
    ) {
        let mut sum = [[_mm512_setzero_ps(); 4]; R];
        for p in 0..pairs {
            // SAFETY: pair `p` of the panel and of each row is in bounds (see `tile`).
            unsafe {
                let wp = w.add(p * NR * 2);
                let wv: [__m512bh; 4] = [
                    bh(_mm512_loadu_si512(wp.cast())),
                    bh(_mm512_loadu_si512(wp.add(32).cast())),
                    bh(_mm512_loadu_si512(wp.add(64).cast())),
                    bh(_mm512_loadu_si512(wp.add(96).cast())),
                ];
                for (r, sum) in sum.iter_mut().enumerate() {
                    let pair = a.add(r * stride + 2 * p).cast::<i32>().read_unaligned();
                    let av = bh(_mm512_set1_epi32(pair));
                    for (s, wv) in sum.iter_mut().zip(wv) {
                        *s = _mm512_dpbf16_ps(*s, av, wv);
                    }
                }
            }
        }
        for (out, sum) in acc.iter_mut().zip(sum) {
            for (j, s) in sum.into_iter().enumerate() {
                // SAFETY: 16 floats at 16·j < NR.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), s) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_best_on_amx_and_on_amds_avx512_only() {
        use Bf16Kernel::{Amx, Avx512};
        for amd in [false, true] {
            assert_eq!(Precision::best_for(Some(Amx), amd), Precision::Bf16);
            assert_eq!(Precision::best_for(None, amd), Precision::F32);
        }
        assert_eq!(Precision::best_for(Some(Avx512), true), Precision::Bf16);
        assert_eq!(Precision::best_for(Some(Avx512), false), Precision::F32);
        // This machine: bf16 is best exactly where the policy says.
        assert_eq!(
            Precision::best(),
            Precision::best_for(Bf16Kernel::best(), cpu_is_amd())
        );
    }

    fn layer(inp: usize, out: usize, seed: u32) -> (Vec<f32>, Vec<f32>) {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let w = (0..inp * out).map(|_| next()).collect();
        let b = (0..out).map(|_| next()).collect();
        (w, b)
    }

    /// `then(x · Wᵀ + b)` in f64, one element at a time.
    fn reference(x: &[f32], w: &[f32], b: &[f32], inp: usize, then: Then<'_>) -> Vec<f32> {
        let out = b.len();
        let rows = x.len() / inp;
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let mut s = b[o] as f64;
                for i in 0..inp {
                    s += x[r * inp + i] as f64 * w[o * inp + i] as f64;
                }
                let v = s as f32;
                y[r * out + o] = match then {
                    Then::Nothing => v,
                    Then::Gelu => gelu(v),
                    Then::Add(res) => v + res[r * out + o],
                };
            }
        }
        y
    }

    fn round_bf16(v: &[f32]) -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    }

    /// The bf16 kernels this CPU runs.
    fn bf16_kernels() -> Vec<Bf16Kernel> {
        let kernels: Vec<_> = [Bf16Kernel::Amx, Bf16Kernel::Avx512]
            .into_iter()
            .filter(|k| match k {
                Bf16Kernel::Amx => Bf16Kernel::best() == Some(Bf16Kernel::Amx),
                Bf16Kernel::Avx512 => Bf16Kernel::avx512_bf16(),
            })
            .collect();
        if kernels.is_empty() {
            eprintln!("this CPU has neither AMX nor AVX-512 BF16: no bf16 kernel to test");
        }
        kernels
    }

    fn check(kernel: Option<Bf16Kernel>, rows: usize, inp: usize, out: usize) {
        let (w, b) = layer(inp, out, 7 + rows as u32);
        let (x, _) = layer(inp, rows, 99 + out as u32);
        let (res, _) = layer(out, rows, 5);
        let dense = Dense::with_kernel(&w, b.clone(), inp, kernel);
        // A bf16 kernel's exact result is the f32 sum of the rounded inputs.
        let (wr, xr) = if kernel.is_some() {
            (round_bf16(&w), round_bf16(&x))
        } else {
            (w.clone(), x.clone())
        };
        for then in [Then::Nothing, Then::Gelu, Then::Add(&res)] {
            let want = reference(&xr, &wr, &b, inp, then);
            let mut got = vec![f32::NAN; rows * out];
            dense.forward(&x, &mut got, then);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{kernel:?} {rows}x{inp}->{out} at {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn f32_layers_match_the_reference() {
        for (rows, inp, out) in [(1, 8, 3), (7, 33, 65), (100, 64, 130)] {
            check(None, rows, inp, out);
        }
    }

    #[test]
    fn bf16_layers_match_the_rounded_reference_at_every_shape() {
        // Tails of every kind: rows not a multiple of MR, of an AMX block or of a chunk;
        // inputs odd or not a multiple of 32; outputs not a multiple of NR or of 32.
        for kernel in bf16_kernels() {
            for (rows, inp, out) in [
                (1, 2, 1),
                (5, 7, 64),
                (6, 384, 70),
                (13, 31, 129),
                (33, 64, 20),
                (CHUNK_ROWS + 7, 40, 200),
                (2 * CHUNK_ROWS, 96, 128),
            ] {
                check(Some(kernel), rows, inp, out);
            }
        }
    }

    #[test]
    fn precision_picks_a_kernel_this_cpu_has() {
        let dense = Dense::new(&[1.0, 2.0], vec![0.5], 2, Precision::Bf16);
        match (&dense.packed, Bf16Kernel::best()) {
            (Packed::Bf16(panels), Some(best)) => assert_eq!(panels.kernel, best),
            (Packed::F32 { .. }, None) => {}
            _ => panic!("bf16 packed without a kernel, or f32 with one"),
        }
        let mut y = [0f32];
        dense.forward(&[3.0, 4.0], &mut y, Then::Nothing);
        assert_eq!(y, [11.5]);
    }

    #[test]
    fn a_row_is_the_same_alone_or_in_a_batch() {
        let (inp, out) = (48, 100);
        let (w, b) = layer(inp, out, 3);
        let (x, _) = layer(inp, 23, 4);
        let kernels = bf16_kernels().into_iter().map(Some);
        for kernel in kernels.chain([None]) {
            let dense = Dense::with_kernel(&w, b.clone(), inp, kernel);
            let mut all = vec![0f32; 23 * out];
            dense.forward(&x, &mut all, Then::Gelu);
            for r in [0, 5, 6, 22] {
                let mut one = vec![0f32; out];
                dense.forward(&x[r * inp..][..inp], &mut one, Then::Gelu);
                if kernel.is_some() {
                    assert_eq!(one, all[r * out..][..out], "{kernel:?} row {r}");
                } else {
                    for (a, b) in one.iter().zip(&all[r * out..][..out]) {
                        assert!((a - b).abs() < 1e-5, "row {r}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
