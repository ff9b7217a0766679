//! `e^x` for f32 in plain IEEE operations — a fixed sequence of multiplies
//! and adds (never fused), one rounding to an integer and an exponent built
//! from bits — so the portable path and the AVX2 path, which takes eight
//! values at a time, give the same bits, and softmax and SiLU need no
//! library call per value.
//!
//! The method is the classic one (as in Cephes' `expf`): `x = n·ln 2 + r`
//! with `n` the nearest integer to `x / ln 2` and `|r| ≤ ln 2 / 2`, `ln 2`
//! split in two so that `n·ln 2` loses nothing; `e^r` by a degree-7
//! polynomial; `2^n` from its exponent bits. Within 2 ulp of `e^x` (the
//! tests hold it to that). Ranges: NaN stays NaN; `x > 88.37` gives +∞
//! (`e^x` is finite up to 88.72, where 2^n would need `n = 128`); `x <
//! −87.33` gives 0 (results there would be subnormal).

/// Above this, +∞.
const HIGH: f32 = 88.37;
/// Below this, 0.
const LOW: f32 = -87.336_54;
/// `ln 2` in two parts: the first has 9 significant bits, so `n · LN2_HI`
/// is exact for the `|n| ≤ 128` that reach it.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Coefficients of `(e^r − 1 − r) / r²`, highest power first.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` (see the module docs for its accuracy and ranges).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > HIGH {
        return f32::INFINITY;
    }
    if x < LOW {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let z = r * r;
    let mut y = P[0];
    for &c in &P[1..] {
        y = y * r + c;
    }
    let y = y * z + r + 1.0;
    // `n` is in −126..=127 here: a normal power of two.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`exp`] of eight lanes on AVX2: the same operations lane by lane (the
/// ranges by masks rather than branches), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // Clamped into range first so the integer steps see sane values; the
    // masks put NaN, +∞ and 0 back at the end.
    let xc = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(HIGH)), _mm256_set1_ps(LOW));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI)));
    let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)));
    let z = _mm256_mul_ps(r, r);
    let mut y = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, z), r), _mm256_set1_ps(1.0));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    let e = _mm256_blendv_ps(
        e,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HIGH)),
    );
    let e = _mm256_blendv_ps(
        e,
        _mm256_setzero_ps(),
        _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LOW)),
    );
    _mm256_blendv_ps(e, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values across the whole range, the edges and some specials.
    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (0..200_000)
            .map(|i| -90.0 + 180.0 * i as f32 / 200_000.0)
            .collect();
        v.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-30,
            -1e-30,
            HIGH,
            HIGH + 0.01,
            LOW,
            LOW - 0.01,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        v
    }

    #[test]
    fn within_two_ulp_of_the_exact_value() {
        for x in samples() {
            let got = exp(x);
            if x.is_nan() {
                assert!(got.is_nan());
                continue;
            }
            if x > HIGH {
                assert_eq!(got, f32::INFINITY, "{x}");
                continue;
            }
            if x < LOW {
                assert_eq!(got, 0.0, "{x}");
                continue;
            }
            let exact = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * exact.abs();
            let error = (f64::from(got) - exact).abs();
            assert!(error <= 2.0 * ulp, "exp({x}) = {got}, exactly {exact}");
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn eight_lanes_equal_one_at_a_time_bit_for_bit() {
        use std::arch::x86_64::*;
        if !crate::Isa::Avx2.available() {
            return;
        }
        for chunk in samples().chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0f32; 8];
            // SAFETY: the CPU has AVX2 (checked above); 8 readable and 8
            // writable f32, unaligned loads and stores.
            unsafe {
                let v = exp8(_mm256_loadu_ps(lanes.as_ptr()));
                _mm256_storeu_ps(out.as_mut_ptr(), v);
            }
            for (x, y) in lanes.iter().zip(out) {
                assert_eq!(exp(*x).to_bits(), y.to_bits(), "exp({x})");
            }
        }
    }
}
