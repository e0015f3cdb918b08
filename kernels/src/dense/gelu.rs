//! GELU (the exact, erf-based one BERT uses), for the dense layers' fused step.
//!
//! libm's `erf` is a call per element that no loop vectorizes (in burn's ndarray backend it was
//! a tenth of the encoder's CPU time). This rational approximation (the one Eigen and XLA use
//! for f32) has no branches and no `exp`, so the compiler vectorizes it, and it is within 1e-6
//! of erf over the whole line.

/// `x · (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf(x) for f32: an odd rational function on [-4, 4], ±1 outside.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_600_1e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_473_9e-2);
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64: exact enough (≪ 1e-9) for |x| ≤ 4.
    fn erf_series(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_a_millionth() {
        let mut worst = 0f64;
        for i in -5000..=5000 {
            let x = i as f64 / 1000.0; // [-5, 5]
            let want = if x.abs() > 4.5 {
                x.signum()
            } else {
                erf_series(x)
            };
            worst = worst.max((erf(x as f32) as f64 - want).abs());
        }
        assert!(worst < 1e-6, "max error {worst}");
    }

    #[test]
    fn gelu_known_values() {
        let x = [0.0, 1.0, -1.0, 3.0, -10.0, 10.0].map(gelu);
        let want = [0.0, 0.841_344_7, -0.158_655_26, 2.995_950_4, 0.0, 10.0];
        for (got, want) in x.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
