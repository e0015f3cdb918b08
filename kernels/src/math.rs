//! Element-wise math for the CPU kernels, written so that loops of it vectorize (no calls, no
//! branches) once compiled for an instruction set with [`crate::isa::multiversion!`].

/// Lanes of the partial sums that reductions keep, so that the compiler vectorizes them.
pub(crate) const LANES: usize = 16;

/// Σ x, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for chunk in x.chunks(LANES) {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum()
}

/// Σ aᵢ·bᵢ over the shorter of the two, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks(LANES).zip(b.chunks(LANES)) {
        for ((acc, a), b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += a * b;
        }
    }
    acc.iter().sum()
}

/// `s ← softmax(scale · s)`.
#[inline(always)]
pub(crate) fn softmax_in_place(s: &mut [f32], scale: f32) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for x in s.iter_mut() {
        *x = exp((*x - max) * scale);
    }
    let inv = 1.0 / sum(s);
    s.iter_mut().for_each(|x| *x *= inv);
}

/// eˣ for x ≤ 0 (softmax's arguments) within 2 ulp, without a branch or a call, so that
/// loops of it vectorize: 2ⁿ · e^r with n = round(x / ln 2) and a degree-6 polynomial for
/// e^r on |r| ≤ ln 2 / 2 (Cephes' `expf`).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_199_9e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 1.666_666_5e-1);
    p = r.mul_add(p, 0.5);
    let e = (r * r).mul_add(p, r) + 1.0;
    let n = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    e * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_where_softmax_uses_it() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (got, want) = (exp(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs();
            assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e30) > 0.0 && exp(-1e30) < 1e-37);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut s = vec![1.0, 3.0, -2.0, 3.0, 0.5];
        softmax_in_place(&mut s, 0.5);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(s[1], s[3]);
        assert!(s[1] > s[0] && s[0] > s[4] && s[4] > s[2]);
        let want = (0.5f64 * (1.0 - 3.0)).exp()
            / (2.0 + (-1f64).exp() + (-2.5f64).exp() + (-1.25f64).exp());
        assert!((s[0] as f64 - want).abs() < 1e-6, "{} vs {want}", s[0]);
    }
}
