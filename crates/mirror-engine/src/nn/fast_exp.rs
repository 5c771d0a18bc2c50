//! A branch-free f32 exponential that the compiler turns into vector code: the softmax of the
//! attention layers calls it hundreds of millions of times at 64², where libm's scalar `expf`
//! was 14 % of a UNet forward. Within 2 ulp of the exact value (Cephes' `expf`: range
//! reduction by ln 2 in two parts, a degree-6 polynomial, the power of two built in the
//! exponent bits); PyTorch's CPU softmax uses a vectorised exponential of the same kind.
//! The error function built on it serves GELU, as PyTorch's vectorised CPU `erf` does.
//!
//! The polynomial runs on fused multiply-adds (`mul_add`), a third fewer operations: the
//! attention's softmax, its largest user, took 13 % less time. Call it from loops compiled
//! with FMA, as `simd::dispatch!`'s copies are on x86-64 (and every aarch64 build is): in
//! baseline x86-64 code `mul_add` is a library call.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts, the first exact in a few bits, so that `x − n·ln 2` loses nothing.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding and subtracting it rounds to the nearest integer without a branch.
const ROUNDER: f32 = 12_582_912.0;

/// The smallest input whose exponential is a normal f32 (ln 2⁻¹²⁶).
const LOWEST: f32 = -87.336_55;

/// e^x for any finite or infinite x: inputs below ln(2⁻¹²⁶) give 0 (the exact value is
/// subnormal there, and a softmax weight that stays subnormal makes every product it enters
/// about a hundred times slower on x86 CPUs), above ln(2¹²⁸) the largest finite value.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // A select, not a branch: the loops stay in vector registers.
    let kept = if x < LOWEST { 0.0 } else { 1.0 };
    // Clamping first keeps the exponent bits below in range (and maps −∞ to the low end).
    let x = x.clamp(LOWEST, 88.722_83);
    let rounded = x.mul_add(LOG2_E, ROUNDER);
    let n = rounded - ROUNDER;
    // The same integer from the bits (its low mantissa bits), without a float-to-int
    // conversion, which has no vector form on baseline x86-64.
    let n_bits = rounded.to_bits() as i32 - ROUNDER.to_bits() as i32;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r + 1.0);
    // n ∈ [−126, 128]; 2¹²⁸ itself is out of range, so scale by 2^(n−1) twice in halves.
    let half = n_bits - 1;
    let lower = half >> 1;
    let upper = half - lower;
    e * 2.0 * pow2(lower) * pow2(upper) * kept
}

/// 2ⁿ for n ∈ [−126, 127], from its exponent bits.
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// erf(x) within 5·10⁻⁷ of the exact value (1.5·10⁻⁷ in exact arithmetic; f32 rounding of
/// the cancelling coefficients adds the rest near 0.2), branch-free: Abramowitz & Stegun 7.1.26,
/// `1 − t·P(t)·e^(−x²)` with `t = 1/(1 + p·|x|)`, the sign restored at the end. The same
/// approximation as PyTorch's vectorised CPU `erf`, which its GELU uses; libm's scalar
/// `erff` was most of a GEGLU layer's time.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let mut p = 1.061_405_4_f32;
    p = p * t - 1.453_152;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    (1.0 - p * t * exp(-a * a)).copysign(x)
}

/// `xs[i] = e^(xs[i] − shift)`, in vector registers.
#[inline(always)]
fn exp_shifted_impl(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = exp(*x - shift);
    }
}

super::simd::dispatch!(exp_shifted_in_place, exp_shifted_impl, (xs: &mut [f32], shift: f32));

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units of the last place between two positive floats.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn within_two_ulp_of_the_exact_exponential() {
        let mut worst = (0, 0.0f32);
        let mut x = -87.0f32;
        while x < 88.5 {
            let exact = (x as f64).exp() as f32;
            let d = ulps(exp(x), exact);
            if d > worst.0 {
                worst = (d, x);
            }
            x += 0.000_37;
        }
        assert!(worst.0 <= 2, "{} ulp at {}", worst.0, worst.1);
    }

    #[test]
    fn erf_within_its_bound_of_the_exact_error_function() {
        let mut worst = (0f64, 0f32);
        let mut x = -6.0f32;
        while x < 6.0 {
            let exact = candle_core::cpu::erf::erf_f64(f64::from(x));
            let d = (f64::from(erf(x)) - exact).abs();
            if d > worst.0 {
                worst = (d, x);
            }
            x += 0.000_71;
        }
        assert!(worst.0 < 5e-7, "{} at {}", worst.0, worst.1);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf(-2.0), -erf(2.0));
    }

    #[test]
    fn ends_of_the_range_stay_finite_and_ordered() {
        assert_eq!(exp(0.0), 1.0);
        // Below the normal range: exactly 0, never a subnormal.
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(-87.4), 0.0);
        assert!(exp(-87.33).is_normal());
        assert!(exp(88.72).is_finite() && exp(f32::INFINITY).is_finite());
        assert!(exp(-87.0) > exp(-87.5));
        let mut dst = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        exp_shifted_in_place(&mut dst, 5.0);
        for (d, k) in dst.iter().zip([-4.0f64, -3.0, -2.0, -1.0, 0.0]) {
            assert!(ulps(*d, k.exp() as f32) <= 2);
        }
    }

    /// The widest build (fused multiply-adds in hardware) gives the baseline build's values
    /// (the same fused operations, in software where the build has no FMA) bit for bit.
    #[test]
    fn every_build_gives_the_same_values() {
        let values: Vec<f32> = (0..4000).map(|i| (i as f32 - 3000.0) * 0.031).collect();
        let mut wide = values.clone();
        exp_shifted_in_place(&mut wide, 1.5);
        let mut baseline = values;
        exp_shifted_impl(&mut baseline, 1.5);
        assert!(
            wide.iter()
                .zip(&baseline)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}
