//! AVX2 kernels for the 32-value formats, bit for bit equal to
//! [`super::portable`] (see there for the arithmetic; `tests` checks it).
//!
//! Integer lanes come from `maddubs` (unsigned × signed byte pairs into i16)
//! then `madd` with ones (pairs of i16 into i32), so i32 lane `i` holds the
//! values `4i..4i+4` of the block, as the portable kernels define. No pair can
//! saturate: |w| ≤ 128 and |x| ≤ 127 give at most 2 · 128 · 127 < 2^15.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::act::Q8Block;

/// Whether this CPU runs these kernels.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

/// See [`super::portable::hsum`].
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
}

/// The f16 at `b[at..at + 2]` in every lane.
#[target_feature(enable = "avx2,f16c")]
fn f16_broadcast(b: &[u8], at: usize) -> __m256 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

/// 16 bytes of packed nibbles as 32 bytes: low nibbles (values 0..16), then
/// high nibbles (values 16..32).
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes; the load is unaligned.
    let packed = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// The block's 32 activations.
#[target_feature(enable = "avx2")]
fn activations(x: &Q8Block) -> __m256i {
    // SAFETY: `x.q` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(x.q.as_ptr().cast()) }
}

/// i32 lanes of unsigned × signed bytes.
#[target_feature(enable = "avx2")]
fn lanes_unsigned(w: __m256i, x: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// i32 lanes of signed × signed bytes (the sign moves onto `x`).
#[target_feature(enable = "avx2")]
fn lanes_signed(w: __m256i, x: __m256i) -> __m256 {
    lanes_unsigned(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// `acc + (d_w · d_x) · lanes`, a multiply then an add.
#[target_feature(enable = "avx2")]
fn add_lanes(acc: __m256, d: __m256, x: &Q8Block, lanes: __m256) -> __m256 {
    let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d));
    _mm256_add_ps(acc, _mm256_mul_ps(scale, lanes))
}

fn qs16(b: &[u8], at: usize) -> &[u8; 16] {
    b[at..at + 16].try_into().unwrap_or(&[0; 16])
}

/// A Q4_0 row times `R` Q8 rows.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q4_0<const R: usize>(w: &[u8], xs: [&[Q8Block]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let eight = _mm256_set1_epi8(8);
    for (i, b) in w.chunks_exact(18).enumerate() {
        let q = _mm256_sub_epi8(nibbles(qs16(b, 2)), eight);
        let d = f16_broadcast(b, 0);
        for (a, x) in acc.iter_mut().zip(xs) {
            let xb = &x[i];
            *a = add_lanes(*a, d, xb, lanes_signed(q, activations(xb)));
        }
    }
    acc.map(|a| hsum(a))
}

/// A Q4_1 row times `R` Q8 rows.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q4_1<const R: usize>(w: &[u8], xs: [&[Q8Block]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    // The running `Σ m·s` in every lane (the portable kernel's one scalar):
    // a broadcast keeps the conversion off the sum's dependency chain, where
    // a scalar conversion gets compiled into an insert into the sum itself.
    let mut mins = [_mm256_setzero_ps(); R];
    for (i, b) in w.chunks_exact(20).enumerate() {
        let q = nibbles(qs16(b, 4));
        let (d, m) = (f16_broadcast(b, 0), f16_broadcast(b, 2));
        for ((a, s), x) in acc.iter_mut().zip(&mut mins).zip(xs) {
            let xb = &x[i];
            *a = add_lanes(*a, d, xb, lanes_unsigned(q, activations(xb)));
            *s = _mm256_add_ps(*s, _mm256_mul_ps(m, _mm256_set1_ps(xb.s)));
        }
    }
    std::array::from_fn(|r| hsum(acc[r]) + _mm256_cvtss_f32(mins[r]))
}

/// A Q8_0 row times `R` Q8 rows.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q8_0<const R: usize>(w: &[u8], xs: [&[Q8Block]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, b) in w.chunks_exact(34).enumerate() {
        // SAFETY: a Q8_0 block is 34 bytes; bytes 2..34 are readable.
        let q = unsafe { _mm256_loadu_si256(b[2..34].as_ptr().cast()) };
        let d = f16_broadcast(b, 0);
        for (a, x) in acc.iter_mut().zip(xs) {
            let xb = &x[i];
            *a = add_lanes(*a, d, xb, lanes_signed(q, activations(xb)));
        }
    }
    acc.map(|a| hsum(a))
}
