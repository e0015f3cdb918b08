//! The bf16 dense layers on AMX (Advanced Matrix Extensions: Sapphire Rapids and later Xeons),
//! whose tile instruction multiplies a 16 × 32 block of bf16 by a 32 × 16 block in one go.
//!
//! Measured on this project's 2-core Sapphire Rapids VMs, one core: `tdpbf16ps` 3,100 GFLOP/s,
//! f32 FMAs (AVX-512) 212, `vdpbf16ps` (AVX-512 BF16) 106. The dense layers then stop being
//! most of an encoder pass.
//!
//! Rust has no stable AMX intrinsics, so the few tile instructions are written with `asm!`.
//! Linux lends the tile registers to a process that asks for them once
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); each task loads its tile configuration and releases
//! the tiles when done.

use std::sync::OnceLock;

/// Whether this CPU has AMX-BF16 and the OS lets this process use the tiles (asked once).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use std::arch::x86_64::__cpuid_count;
            // CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let leaf = __cpuid_count(7, 0);
            if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            let granted = unsafe {
                libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
            } == 0;
            if !granted {
                tracing::info!(
                    "this CPU has AMX but the kernel did not grant the tiles: dense layers in AVX-512"
                );
            }
            granted
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) use tiles::{BLOCK_COLS, BLOCK_ROWS, K_STEP, Tiles};

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use std::arch::asm;

    /// Rows of a block: two A tiles of 16 rows.
    pub const BLOCK_ROWS: usize = 32;
    /// Columns of a block: two B tiles of 16 columns.
    pub const BLOCK_COLS: usize = 32;
    /// Inputs per tile step (16 pairs).
    pub const K_STEP: usize = 32;

    /// The tile configuration (palette 1): eight tiles of 16 rows × 64 bytes. Tiles 0–3
    /// hold the block's sums (2 × 2 of 16 × 16 f32), 4–5 the two A tiles, 6–7 the two B
    /// tiles.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// The tile registers of this thread, configured; released when dropped.
    pub struct Tiles {
        /// Tiles belong to the thread that configured them.
        _not_send: std::marker::PhantomData<*const ()>,
    }

    impl Tiles {
        /// # Safety
        /// [`super::available`] is true.
        pub unsafe fn configure() -> Tiles {
            // SAFETY: AMX is available (the caller's promise); the configuration is valid.
            unsafe {
                asm!(
                    "ldtilecfg [{cfg}]",
                    cfg = in(reg) &CONFIG as *const Config,
                    options(nostack, readonly),
                );
            }
            Tiles {
                _not_send: std::marker::PhantomData,
            }
        }

        /// `c[r][j] = Σ_k a[r][k] · b[k][j]` for a block of 32 rows × 32 columns (16 rows
        /// if `upper_only`: the lower half of `c` is then left as it was), over `steps · 32`
        /// inputs.
        ///
        /// `a` points at the block's first row of bf16 activations, `a_stride` bytes apart.
        /// `b` points at the block's weights: for each step, two tiles of 16 pairs of inputs
        /// × 16 columns' pairs (64 bytes a row, 1 KiB a tile), one after the other. `c`
        /// receives 32 rows of 32 f32, `c_stride` bytes apart.
        ///
        /// # Safety
        /// `a` has 32 rows (16 if `upper_only`) of `steps · 32` values, `b` has `steps` steps,
        /// `c` room for 32 rows of 32 floats, at the strides given.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn block(
            &self,
            a: *const u16,
            a_stride: usize,
            b: *const u16,
            steps: usize,
            upper_only: bool,
            c: *mut f32,
            c_stride: usize,
        ) {
            const TILE_BYTES: usize = 1024;
            // SAFETY: the tiles are configured (`self`); the caller's promise covers every
            // address read and written.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem),
                );
                for step in 0..steps {
                    let a0 = a.add(step * 32).cast::<u8>();
                    let b0 = b.cast::<u8>().add(step * 2 * TILE_BYTES);
                    let b1 = b0.add(TILE_BYTES);
                    if upper_only {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            a0 = in(reg) a0,
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            sa = in(reg) a_stride,
                            sb = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    } else {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0,
                            a1 = in(reg) a0.add(16 * a_stride),
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            sa = in(reg) a_stride,
                            sb = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    }
                }
                let c = c.cast::<u8>();
                asm!(
                    "tilestored [{c00} + {sc}*1], tmm0",
                    "tilestored [{c01} + {sc}*1], tmm1",
                    c00 = in(reg) c,
                    c01 = in(reg) c.add(64),
                    sc = in(reg) c_stride,
                    options(nostack),
                );
                if !upper_only {
                    asm!(
                        "tilestored [{c10} + {sc}*1], tmm2",
                        "tilestored [{c11} + {sc}*1], tmm3",
                        c10 = in(reg) c.add(16 * c_stride),
                        c11 = in(reg) c.add(16 * c_stride + 64),
                        sc = in(reg) c_stride,
                        options(nostack),
                    );
                }
            }
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: the tiles were configured by `configure` on this thread.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
}
