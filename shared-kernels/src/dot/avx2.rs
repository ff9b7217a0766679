//! AVX2 kernels for the 32-value formats, bit for bit equal to
//! [`super::portable`] (see there for the arithmetic; `tests` checks it).
//!
//! A group of eight blocks is four pairs; one 32-byte vector holds the same
//! half of both blocks of a pair (the layout of [`crate::format`] and
//! [`crate::act::Q8Group`]). `maddubs` multiplies unsigned by signed bytes
//! into i16 pairs (at most 2 · 128 · 127 < 2^15: no saturation), `madd` with
//! ones widens them to i32, and three `hadd`s leave each block's exact sum in
//! its lane. Then one multiply-add per group in f32, as the portable kernel.
//! The weights of a pair are unpacked once for all `R` activation rows.
//! Groups of an even number of blocks (all but an odd tail) take
//! [`even_group`], which gets the same exact sums with fewer instructions.
//!
//! The K formats (Q4_K, Q6_K) reduce each 256-value block to exact integers
//! with `maddubs` and `madd` by the sub-block scales, then take the same f32
//! steps as the portable kernels; a block's scales and values are unpacked
//! once for up to four activation rows.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use std::ops::Range;

use crate::act::{Activations, Q8Group, Q8KBlock, Q8Row};
use crate::disjoint::Disjoint;
use crate::format::{Format, GROUP, GroupLayout, QMatrix, f16_at, k_scale_min};

/// Whether this CPU runs these kernels.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

/// See [`super::portable::hsum`] (the order attention's sums take too).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
}

/// Eight f32 from a lane array.
#[target_feature(enable = "avx2")]
fn f32x8(v: &[f32; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable f32; the load is unaligned.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// 32 bytes at `b[at..at + 32]`.
#[target_feature(enable = "avx2")]
fn bytes32(b: &[u8], at: usize) -> __m256i {
    let bytes = &b[at..at + 32];
    // SAFETY: `bytes` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// 32 activation values at `q[at..at + 32]`.
#[target_feature(enable = "avx2")]
fn values32(q: &[i8; 64], at: usize) -> __m256i {
    let values = &q[at..at + 32];
    // SAFETY: `values` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

/// i32 lanes: each four adjacent i16 pairs summed (`madd` with ones).
#[target_feature(enable = "avx2")]
fn widen(pairs: __m256i) -> __m256i {
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// A pair of blocks' weights, ready to multiply: for Q4 the two nibble
/// halves as unsigned bytes (Q4_0's offset of 8 is taken off through the
/// activations' sums); for Q8_0 the two halves as signed bytes.
#[derive(Clone, Copy)]
struct PairWeights {
    first: __m256i,
    second: __m256i,
}

#[target_feature(enable = "avx2")]
fn pair_weights<const Q8: bool>(g: &[u8], at: usize) -> PairWeights {
    if Q8 {
        PairWeights {
            first: bytes32(g, at),
            second: bytes32(g, at + 32),
        }
    } else {
        nibble_halves(bytes32(g, at))
    }
}

/// Packed nibbles as two vectors of bytes: the low nibbles, then the high.
#[target_feature(enable = "avx2")]
fn nibble_halves(packed: __m256i) -> PairWeights {
    let mask = _mm256_set1_epi8(0x0f);
    PairWeights {
        first: _mm256_and_si256(packed, mask),
        second: _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask),
    }
}

/// Lanes 0..4: the first block's partial sums; 4..8: the second's.
#[target_feature(enable = "avx2")]
fn pair_sums<const Q8: bool>(w: PairWeights, x: &[i8; 64]) -> __m256i {
    let (x0, x1) = (values32(x, 0), values32(x, 32));
    if Q8 {
        let p0 = _mm256_maddubs_epi16(
            _mm256_sign_epi8(w.first, w.first),
            _mm256_sign_epi8(x0, w.first),
        );
        let p1 = _mm256_maddubs_epi16(
            _mm256_sign_epi8(w.second, w.second),
            _mm256_sign_epi8(x1, w.second),
        );
        // Each i16 pair is at most 2 · 128 · 127: widen before adding.
        _mm256_add_epi32(widen(p0), widen(p1))
    } else {
        // Each i16 pair is at most 2 · 15 · 127: two add without overflow.
        let p = _mm256_add_epi16(
            _mm256_maddubs_epi16(w.first, x0),
            _mm256_maddubs_epi16(w.second, x1),
        );
        widen(p)
    }
}

/// The exact `Σ w·x` of each block of a group, in lane order, from its four
/// pairs' partial sums.
#[target_feature(enable = "avx2")]
fn group_sums(u: [__m256i; 4]) -> __m256i {
    let h01 = _mm256_hadd_epi32(u[0], u[1]);
    let h23 = _mm256_hadd_epi32(u[2], u[3]);
    // [pair 0..4 first blocks | pair 0..4 second blocks] = lanes 0..8.
    _mm256_hadd_epi32(h01, h23)
}

/// The `n` f16 scales of a group at `g[at..]` (block order) as f32 in lane
/// order, zeros in the lanes of missing blocks.
#[target_feature(enable = "avx2,f16c")]
fn scales(g: &[u8], at: usize, n: usize) -> __m256 {
    // A group of n blocks is at least 18·n bytes and its scales end by 4·n,
    // so 16 bytes from `at` are inside it; lanes past n are masked off.
    let bytes = &g[at..at + 16];
    // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
    let all = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) });
    let present = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let kept = _mm256_and_ps(all, _mm256_castsi256_ps(present));
    // Lane `lane_of(j)` takes block j: lanes 0..4 blocks 0, 2, 4, 6.
    _mm256_permutevar8x32_ps(kept, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7))
}

/// The 16 bytes at `b[at..at + 16]` in the low half, zeros above.
#[target_feature(enable = "avx2")]
fn half16(b: &[u8], at: usize) -> __m256i {
    let bytes = &b[at..at + 16];
    // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
    _mm256_zextsi128_si256(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
}

/// The weights of pair `p` of a group laid out as `layout`; a missing
/// partner (an odd last block) reads as zeros.
#[target_feature(enable = "avx2")]
fn group_pair<const Q8: bool>(g: &[u8], layout: GroupLayout, p: usize) -> PairWeights {
    let at = layout.values + p * layout.pair;
    if 2 * p + 1 < layout.n {
        return pair_weights::<Q8>(g, at);
    }
    if Q8 {
        PairWeights {
            first: half16(g, at),
            second: half16(g, at + 16),
        }
    } else {
        nibble_halves(half16(g, at))
    }
}

/// A row of a 32-value format times `R` Q8 rows; see
/// [`super::portable::q8_family`] for the arithmetic.
#[target_feature(enable = "avx2,f16c")]
fn q8_family<const FORMAT: u8, const R: usize>(w: &[u8], xs: [Q8Row<'_>; R]) -> [f32; R] {
    let format = match FORMAT {
        0 => Format::Q4_0,
        1 => Format::Q4_1,
        _ => Format::Q8_0,
    };
    let q8 = FORMAT == 2;
    let (_, size) = format.block();
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [_mm256_setzero_ps(); R];
    for (gi, g) in w.chunks(GROUP * size).enumerate() {
        let xg = xs.map(|x| &x.groups[gi]);
        match g.len() / size {
            8 => even_group::<FORMAT, R, 4>(g, xg, &mut acc, &mut mins),
            6 => even_group::<FORMAT, R, 3>(g, xg, &mut acc, &mut mins),
            4 => even_group::<FORMAT, R, 2>(g, xg, &mut acc, &mut mins),
            2 => even_group::<FORMAT, R, 1>(g, xg, &mut acc, &mut mins),
            _ => {}
        }
        if g.len() / size % 2 == 0 {
            continue;
        }
        let layout = GroupLayout::new(format, g.len() / size);
        let pairs = layout.n.div_ceil(2);
        let mut weights = [PairWeights {
            first: _mm256_setzero_si256(),
            second: _mm256_setzero_si256(),
        }; 4];
        for (p, w) in weights.iter_mut().enumerate().take(pairs) {
            *w = if q8 {
                group_pair::<true>(g, layout, p)
            } else {
                group_pair::<false>(g, layout, p)
            };
        }
        let d = scales(g, 0, layout.n);
        let m = if FORMAT == 1 {
            scales(g, layout.mins, layout.n)
        } else {
            _mm256_setzero_ps()
        };
        for r in 0..R {
            let xg = &xs[r].groups[gi];
            let u: [__m256i; 4] = std::array::from_fn(|p| {
                if p >= pairs {
                    _mm256_setzero_si256()
                } else if q8 {
                    pair_sums::<true>(weights[p], &xg.q[p])
                } else {
                    pair_sums::<false>(weights[p], &xg.q[p])
                }
            });
            let mut sums = group_sums(u);
            if FORMAT == 0 {
                // Σ (n − 8)·x = Σ n·x − 8·Σ x, exactly.
                // SAFETY: `xg.sum` is 8 readable i32; the load is unaligned.
                let xsum = unsafe { _mm256_loadu_si256(xg.sum.as_ptr().cast()) };
                sums = _mm256_sub_epi32(sums, _mm256_slli_epi32::<3>(xsum));
            }
            let scale = _mm256_mul_ps(d, f32x8(&xg.d));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sums)));
            if FORMAT == 1 {
                mins[r] = _mm256_add_ps(mins[r], _mm256_mul_ps(m, f32x8(&xg.s)));
            }
        }
    }
    std::array::from_fn(|r| {
        if FORMAT == 1 {
            hsum(acc[r]) + hsum(mins[r])
        } else {
            hsum(acc[r])
        }
    })
}

/// Bytes of `n` blocks' scales in a group of `FORMAT` (0: Q4_0, 1: Q4_1, 2: Q8_0).
const fn scale_bytes_of(format: u8, n: usize) -> usize {
    if format == 1 { 4 * n } else { 2 * n }
}

/// Bytes of one pair of blocks' values of `FORMAT`.
const fn pair_bytes_of(format: u8) -> usize {
    if format == 2 { 64 } else { 32 }
}

/// A group of `2 · PAIRS` blocks (a full group, or an even tail of one) of a
/// weight row times the same group of `R` activation rows, added to each
/// row's accumulators: the exact block sums of [`group_sums`] by a shorter
/// road, then the same f32 steps as the general path (so the same result bit
/// for bit). Pairs past `PAIRS` add nothing, as there.
///
/// Q4: the two halves' `maddubs` of a pair are added in i16 (each lane at
/// most 2 · 2 · 15 · 127 = 7620), three `hadd`s of i16 sum each block's
/// lanes four by four (at most 4 · 7620 = 30480 < 2^15, and `hadd` wraps
/// rather than saturates, so the sums are exact), and one `madd` with ones
/// widens the last pairs to i32: a block's sum in its lane with one integer
/// multiply instead of four. Q8_0 widens each half first (one `maddubs` lane
/// is up to 2 · 128 · 127) and reduces with `hadd` of i32.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn even_group<const FORMAT: u8, const R: usize, const PAIRS: usize>(
    g: &[u8],
    xg: [&Q8Group; R],
    acc: &mut [__m256; R],
    mins: &mut [__m256; R],
) {
    let n = 2 * PAIRS;
    let values = scale_bytes_of(FORMAT, n);
    let g = &g[..values + PAIRS * pair_bytes_of(FORMAT)];
    let q8 = FORMAT == 2;
    let zero = _mm256_setzero_si256();
    // Q8_0: each half's magnitudes (the unsigned operand) and, to sign the
    // activations with, the weights themselves.
    let weights: [PairWeights; 4] = std::array::from_fn(|p| {
        if p >= PAIRS {
            PairWeights {
                first: zero,
                second: zero,
            }
        } else if q8 {
            pair_weights::<true>(g, values + 64 * p)
        } else {
            pair_weights::<false>(g, values + 32 * p)
        }
    });
    let magnitudes: [PairWeights; 4] = if q8 {
        std::array::from_fn(|p| PairWeights {
            first: _mm256_sign_epi8(weights[p].first, weights[p].first),
            second: _mm256_sign_epi8(weights[p].second, weights[p].second),
        })
    } else {
        weights
    };
    let d = if PAIRS == 4 {
        full_scales(g, 0)
    } else {
        scales(g, 0, n)
    };
    let m = match (FORMAT, PAIRS) {
        (1, 4) => full_scales(g, 16),
        (1, _) => scales(g, 2 * n, n),
        _ => _mm256_setzero_ps(),
    };
    let ones = _mm256_set1_epi16(1);
    for r in 0..R {
        let x = xg[r];
        let mut sums = if q8 {
            let u: [__m256i; 4] = std::array::from_fn(|p| {
                if p >= PAIRS {
                    return zero;
                }
                let (w, a) = (weights[p], magnitudes[p]);
                let (x0, x1) = (values32(&x.q[p], 0), values32(&x.q[p], 32));
                let p0 = _mm256_maddubs_epi16(a.first, _mm256_sign_epi8(x0, w.first));
                let p1 = _mm256_maddubs_epi16(a.second, _mm256_sign_epi8(x1, w.second));
                _mm256_add_epi32(widen(p0), widen(p1))
            });
            group_sums(u)
        } else {
            let p: [__m256i; 4] = std::array::from_fn(|p| {
                if p >= PAIRS {
                    return zero;
                }
                let (x0, x1) = (values32(&x.q[p], 0), values32(&x.q[p], 32));
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(weights[p].first, x0),
                    _mm256_maddubs_epi16(weights[p].second, x1),
                )
            });
            let h = _mm256_hadd_epi16(_mm256_hadd_epi16(p[0], p[1]), _mm256_hadd_epi16(p[2], p[3]));
            _mm256_madd_epi16(h, ones)
        };
        if FORMAT == 0 {
            // SAFETY: `x.sum` is 8 readable i32; the load is unaligned.
            let xsum = unsafe { _mm256_loadu_si256(x.sum.as_ptr().cast()) };
            sums = _mm256_sub_epi32(sums, _mm256_slli_epi32::<3>(xsum));
        }
        let scale = _mm256_mul_ps(d, f32x8(&x.d));
        acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sums)));
        if FORMAT == 1 {
            mins[r] = _mm256_add_ps(mins[r], _mm256_mul_ps(m, f32x8(&x.s)));
        }
    }
}

/// The eight f16 scales of a full group at `g[at..at + 16]` as f32 in lane
/// order (see [`scales`]).
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn full_scales(g: &[u8], at: usize) -> __m256 {
    let bytes = &g[at..at + 16];
    // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
    let all = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) });
    _mm256_permutevar8x32_ps(all, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7))
}

/// Output columns `columns` of `w` times every row of `x`, rows four at a
/// time, then two, then one (see [`super::Columns`]).
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn columns<const FORMAT: u8>(
    w: &QMatrix,
    columns: Range<usize>,
    x: &Activations,
    out: &Disjoint<'_>,
) {
    let (m, n) = (x.rows(), w.rows());
    for o in columns {
        let row = w.row(o);
        let mut r = 0;
        while r + 4 <= m {
            let ys = q8_family::<FORMAT, 4>(row, [0, 1, 2, 3].map(|i| x.q8_row(r + i)));
            for (i, y) in ys.into_iter().enumerate() {
                // SAFETY: column `o` belongs to this task alone (`Columns`).
                unsafe { out.set((r + i) * n + o, y) };
            }
            r += 4;
        }
        if r + 2 <= m {
            let ys = q8_family::<FORMAT, 2>(row, [x.q8_row(r), x.q8_row(r + 1)]);
            // SAFETY: as above.
            unsafe {
                out.set(r * n + o, ys[0]);
                out.set((r + 1) * n + o, ys[1]);
            }
            r += 2;
        }
        if r < m {
            let [y] = q8_family::<FORMAT, 1>(row, [x.q8_row(r)]);
            // SAFETY: as above.
            unsafe { out.set(r * n + o, y) };
        }
    }
}

/// A Q4_K row times `R` Q8K rows; see [`super::portable::q4_k`]. The
/// integer sums `Σ sc·(Σ q·x)` and `Σ m·(Σ x)` of a block are exact (at most
/// 256 · 15 · 127 · 63 < 2^31), so only the f32 steps, done as there, matter.
/// A block's scales and nibbles are unpacked once for all the rows.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q4_k<const R: usize>(w: &[u8], xs: [&[Q8KBlock]; R]) -> [f32; R] {
    let mut acc = [0f32; R];
    let mask = _mm256_set1_epi8(0x0f);
    for (i, b) in w.chunks_exact(144).enumerate() {
        let scales = &b[4..16];
        let xb: [&Q8KBlock; R] = std::array::from_fn(|r| &xs[r][i]);
        let mut scaled = [_mm256_setzero_si256(); R];
        let mut mins = [0i32; R];
        for chunk in 0..4 {
            let (sc_lo, m_lo) = k_scale_min(2 * chunk, scales);
            let (sc_hi, m_hi) = k_scale_min(2 * chunk + 1, scales);
            let q = bytes32(b, 16 + 32 * chunk);
            let lo = _mm256_and_si256(q, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
            let sc_lo = _mm256_set1_epi16(i16::from(sc_lo));
            let sc_hi = _mm256_set1_epi16(i16::from(sc_hi));
            for r in 0..R {
                let p_lo = _mm256_maddubs_epi16(lo, q8k_values(xb[r], 64 * chunk));
                let p_hi = _mm256_maddubs_epi16(hi, q8k_values(xb[r], 64 * chunk + 32));
                scaled[r] = _mm256_add_epi32(
                    scaled[r],
                    _mm256_add_epi32(
                        _mm256_madd_epi16(p_lo, sc_lo),
                        _mm256_madd_epi16(p_hi, sc_hi),
                    ),
                );
                let sum = |j: usize| i32::from(xb[r].sums[j]);
                mins[r] += i32::from(m_lo) * (sum(4 * chunk) + sum(4 * chunk + 1))
                    + i32::from(m_hi) * (sum(4 * chunk + 2) + sum(4 * chunk + 3));
            }
        }
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        for r in 0..R {
            acc[r] += (d * xb[r].d) * exact_sum(scaled[r]) as f32;
            acc[r] -= (dmin * xb[r].d) * mins[r] as f32;
        }
    }
    acc
}

/// A Q6_K row times `R` Q8K rows; see [`super::portable::q6_k`]. Values are
/// multiplied unsigned (0..64) and the offset of 32 taken off through the
/// activations' sums per 16, exactly. A block's values are unpacked once
/// for all the rows.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn q6_k<const R: usize>(w: &[u8], xs: [&[Q8KBlock]; R]) -> [f32; R] {
    let mut acc = [0f32; R];
    let low = _mm256_set1_epi8(0x0f);
    let two = _mm256_set1_epi8(0x03);
    for (i, b) in w.chunks_exact(210).enumerate() {
        let sc: [i16; 16] = std::array::from_fn(|j| i16::from(b[192 + j] as i8));
        let mut scaled = [_mm256_setzero_si256(); R];
        for half in 0..2 {
            let ql0 = bytes32(b, 64 * half);
            let ql1 = bytes32(b, 64 * half + 32);
            let qh = bytes32(b, 128 + 32 * half);
            // Bits 4..6 of each quarter's values: pairs of `qh` bits.
            let high = [
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, two)),
                _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_slli_epi16::<2>(two))),
                _mm256_and_si256(qh, _mm256_slli_epi16::<4>(two)),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), _mm256_slli_epi16::<4>(two)),
            ];
            let quarters = [
                _mm256_or_si256(_mm256_and_si256(ql0, low), high[0]),
                _mm256_or_si256(_mm256_and_si256(ql1, low), high[1]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low), high[2]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low), high[3]),
            ];
            for (quarter, q) in quarters.into_iter().enumerate() {
                let start = 128 * half + 32 * quarter;
                let j = start / 16;
                let scale = _mm256_set_m128i(_mm_set1_epi16(sc[j + 1]), _mm_set1_epi16(sc[j]));
                for r in 0..R {
                    let p = _mm256_maddubs_epi16(q, q8k_values(&xs[r][i], start));
                    scaled[r] = _mm256_add_epi32(scaled[r], _mm256_madd_epi16(p, scale));
                }
            }
        }
        let d = f16_at(b, 208);
        for r in 0..R {
            let xb = &xs[r][i];
            let offset: i32 = (0..16)
                .map(|j| i32::from(sc[j]) * i32::from(xb.sums[j]))
                .sum();
            let total = exact_sum(scaled[r]) - 32 * offset;
            acc[r] += (d * xb.d) * total as f32;
        }
    }
    acc
}

/// Output columns `columns` of a K-format `w` times every row of `x`
/// (Q8K), rows four at a time, then two, then one; each row's arithmetic
/// is the one-row kernel's.
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn k_columns<const Q6: bool>(
    w: &QMatrix,
    columns: Range<usize>,
    x: &Activations,
    out: &Disjoint<'_>,
) {
    let (m, n) = (x.rows(), w.rows());
    let store = |r: usize, o: usize, ys: &[f32]| {
        for (i, &y) in ys.iter().enumerate() {
            // SAFETY: column `o` belongs to this task alone (`Columns`).
            unsafe { out.set((r + i) * n + o, y) };
        }
    };
    for o in columns {
        let row = w.row(o);
        let mut r = 0;
        while r + 4 <= m {
            let xs = std::array::from_fn(|i| x.q8k_row(r + i));
            store(
                r,
                o,
                &if Q6 {
                    q6_k::<4>(row, xs)
                } else {
                    q4_k::<4>(row, xs)
                },
            );
            r += 4;
        }
        if r + 2 <= m {
            let xs = [x.q8k_row(r), x.q8k_row(r + 1)];
            store(
                r,
                o,
                &if Q6 {
                    q6_k::<2>(row, xs)
                } else {
                    q4_k::<2>(row, xs)
                },
            );
            r += 2;
        }
        if r < m {
            let xs = [x.q8k_row(r)];
            store(
                r,
                o,
                &if Q6 {
                    q6_k::<1>(row, xs)
                } else {
                    q4_k::<1>(row, xs)
                },
            );
        }
    }
}

/// 32 activation values of a Q8K block from `at`.
#[target_feature(enable = "avx2")]
fn q8k_values(x: &Q8KBlock, at: usize) -> __m256i {
    let values = &x.q[at..at + 32];
    // SAFETY: `values` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

/// The exact sum of eight i32 lanes.
#[target_feature(enable = "avx2")]
fn exact_sum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}
