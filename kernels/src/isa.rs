//! The instruction set the CPU kernels run with, detected once, and [`multiversion!`], which
//! compiles a plain loop once per instruction set and calls the best.
//!
//! The crate is built for the baseline x86-64 (SSE2, no FMA), so that one binary runs on every
//! machine of a cluster. Element-wise loops written in plain Rust then vectorize 4 wide at
//! most, and `f32::mul_add` becomes a call to libm; compiled again with AVX-512 or AVX2 and FMA
//! enabled, the same source runs 16 or 8 wide with fused multiply-adds.

use std::sync::OnceLock;

/// The instruction set the kernels run with, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512 F, VL, BW and DQ, with AVX2, FMA and F16C.
    Avx512,
    /// AVX2, FMA and F16C.
    Avx2,
    Portable,
}

impl Isa {
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") && has!("f16c") {
                    return if has!("avx512f")
                        && has!("avx512vl")
                        && has!("avx512bw")
                        && has!("avx512dq")
                    {
                        Isa::Avx512
                    } else {
                        Isa::Avx2
                    };
                }
            }
            Isa::Portable
        })
    }
}

/// Defines a function whose body is compiled three times (for AVX-512, for AVX2 with FMA, and
/// portable) and which runs the one this CPU has ([`Isa::detect`]). The body must be safe code
/// that returns nothing; what it calls must be `#[inline(always)]` to be compiled with it.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::isa::Isa::detect() {
                    // SAFETY: `Isa::detect` saw the features each version is compiled for.
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;
