//! f32 operations on one row at a time, each reducing in one fixed order, so a
//! row's result depends on nothing but the row. Reductions keep eight lanes
//! (`i mod 8`) summed like [`crate::dot`]'s, which compilers turn into SIMD.

use std::cell::RefCell;

use half::f16;

use crate::disjoint::Disjoint;
use crate::dot::Isa;
use crate::dot::portable::hsum;
use crate::exp::exp;
use crate::pool::Pool;

/// `Σ a·b` over eight lanes, then the tail in order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_widened(a, b, |x| x)
}

/// [`dot`] of an f32 row and a row whose values `widen` turns into f32
/// exactly (f16 keys: the same sum as [`dot`] over the widened row).
#[inline(always)]
fn dot_widened<T: Copy>(a: &[f32], b: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let body = a.len().min(b.len()) / 8 * 8;
    let mut acc = [0f32; 8];
    for (ca, cb) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for lane in 0..8 {
            acc[lane] += ca[lane] * widen(cb[lane]);
        }
    }
    let mut sum = hsum(acc);
    for (x, &y) in a[body..].iter().zip(&b[body..]) {
        sum += x * widen(y);
    }
    sum
}

/// `out = x · weight / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_square = dot(x, x) / x.len() as f32;
    let scale = 1.0 / (mean_square + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Rotates the adjacent pairs `(x[2i], x[2i+1])` of one head by the angles
/// whose cosines and sines are `cos[i]`, `sin[i]` (GGUF's llama layout).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (even, odd) = (pair[0], pair[1]);
        pair[0] = even * c - odd * s;
        pair[1] = even * s + odd * c;
    }
}

/// `gate · sigmoid(gate) · up`, into `out`: `g / (1 + e^−g) · u` with
/// [`crate::exp::exp`], the same bits on every instruction set.
#[allow(unsafe_code)]
pub fn silu_mul_into(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && isa.available() {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { simd::silu_mul_into(gate, up, out) };
        return;
    }
    let _ = isa;
    silu_mul_portable(gate, up, out);
}

#[inline(always)]
fn silu_mul_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// One query head attending over `context` positions of its key/value head:
/// `keys`/`values` hold at least `context · hd` values (position-major),
/// `scores` at least `context`. Writes `hd` values into `out`.
///
/// Each score is [`dot`]`(q, key) · scale`; positions are visited in order
/// 0..context for the maximum, the sum of exponentials and the weighted sum
/// of values: the result depends only on the query and its context. (Scores
/// are computed four positions at a time, each in [`dot`]'s order, and the
/// usual head size of 64 keeps its sums in registers: both only change the
/// speed.)
#[inline(always)]
pub fn attend(
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    context: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let scores = &mut scores[..context];
    scores_of(q, keys, scale, scores);
    let mut max = f32::NEG_INFINITY;
    for &s in scores.iter() {
        max = max.max(s);
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = exp(*s - max);
        total += *s;
    }
    let inverse = 1.0 / total;
    if hd == 64 {
        let mut sum = [0f32; 64];
        weighted_sum(&mut sum, scores, values, inverse);
        out.copy_from_slice(&sum);
    } else {
        out.fill(0.0);
        weighted_sum(out, scores, values, inverse);
    }
}

/// `out += Σ_p (scores[p] · inverse) · values[p]`, positions in order.
#[inline(always)]
fn weighted_sum(out: &mut [f32], scores: &[f32], values: &[f16], inverse: f32) {
    let hd = out.len();
    for (&s, v) in scores.iter().zip(values.chunks_exact(hd)) {
        let weight = s * inverse;
        for (o, &x) in out.iter_mut().zip(v) {
            *o += weight * x.to_f32();
        }
    }
}

/// `scores[p] = dot(q, keys[p]) · scale`, four positions at a time (each
/// summed exactly as [`dot`] sums it).
#[inline(always)]
fn scores_of(q: &[f32], keys: &[f16], scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    let body = hd / 8 * 8;
    let quads = scores.len() / 4 * 4;
    for (quad, out) in scores[..quads].chunks_exact_mut(4).enumerate() {
        let k = &keys[4 * quad * hd..(4 * quad + 4) * hd];
        let mut acc = [[0f32; 8]; 4];
        for c in 0..body / 8 {
            let qc = &q[8 * c..8 * c + 8];
            for (i, a) in acc.iter_mut().enumerate() {
                let kc = &k[i * hd + 8 * c..i * hd + 8 * c + 8];
                for lane in 0..8 {
                    a[lane] += qc[lane] * kc[lane].to_f32();
                }
            }
        }
        for (i, (o, a)) in out.iter_mut().zip(acc).enumerate() {
            let mut sum = hsum(a);
            for (x, y) in q[body..].iter().zip(&k[i * hd + body..(i + 1) * hd]) {
                sum += x * y.to_f32();
            }
            *o = sum * scale;
        }
    }
    for (p, o) in scores.iter_mut().enumerate().skip(quads) {
        *o = dot_widened(q, &keys[p * hd..(p + 1) * hd], f16::to_f32) * scale;
    }
}

/// The attention heads of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub query: usize,
    /// Key/value heads (each shared by `query / kv` query heads).
    pub kv: usize,
    /// Values per head.
    pub dim: usize,
}

/// What one row of a pass attends over: its sequence's cached keys and
/// values, `[kv heads][capacity][hd]` each, of which the first `len`
/// positions are its context.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Keys.
    pub keys: &'a [f16],
    /// Values.
    pub values: &'a [f16],
    /// Positions each head's run of the buffers has room for.
    pub capacity: usize,
    /// Positions attended over.
    pub len: usize,
}

/// Causal grouped-query attention for the rows of a pass: row `r`'s query
/// `q[r]` (`heads.query · heads.dim` values) attends over `contexts[r]`;
/// query heads `j·group..(j+1)·group` share key/value head `j`. Writes `out` like `q`.
/// Rows and heads are spread over the pool; each is [`attend`], so the
/// result is the same whatever else is in the pass.
///
/// # Panics
/// If the shapes disagree (the model checks them before a pass).
#[allow(unsafe_code)]
pub fn attention(
    pool: &Pool,
    isa: Isa,
    heads: Heads,
    q: &[f32],
    contexts: &[Context<'_>],
    out: &mut [f32],
) {
    let Heads {
        query: n_head,
        kv: n_head_kv,
        dim: hd,
    } = heads;
    let width = n_head * hd;
    assert!(q.len() == contexts.len() * width && out.len() == q.len());
    let group = n_head / n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let out = Disjoint::new(out);
    pool.run(contexts.len() * n_head, |task| {
        let (row, head) = (task / n_head, task % n_head);
        let c = &contexts[row];
        let start = (head / group) * c.capacity * hd;
        let span = start..start + c.len * hd;
        let query = &q[row * width + head * hd..row * width + (head + 1) * hd];
        SCORES.with_borrow_mut(|scores| {
            if scores.len() < c.len {
                scores.resize(c.len, 0.0);
            }
            let (keys, values) = (&c.keys[span.clone()], &c.values[span]);
            // SAFETY: each task is one (row, head): its `hd` outputs are its alone.
            let out = unsafe { out.range(row * width + head * hd, hd) };
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx2 && isa.available() {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { attend_avx2(query, keys, values, c.len, scale, scores, out) };
                return;
            }
            let _ = isa;
            attend(query, keys, values, c.len, scale, scores, out);
        });
    });
}

/// [`attend`] on AVX2 registers: the same operations in the same order (a
/// score's eight lanes summed over the head's chunks, then [`hsum`]'s order;
/// each output lane summed over positions in order; no fused multiply-adds),
/// so the same result bit for bit, with the query and the output held in
/// registers. Heads of other sizes than 32, 64, 96, 128 and 256 values take
/// [`attend`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn attend_avx2(
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    context: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use simd::attend_chunks;
    match q.len() {
        32 => attend_chunks::<4>(q, keys, values, context, scale, scores, out),
        64 => attend_chunks::<8>(q, keys, values, context, scale, scores, out),
        96 => attend_chunks::<12>(q, keys, values, context, scale, scores, out),
        128 => attend_chunks::<16>(q, keys, values, context, scale, scores, out),
        256 => attend_chunks::<32>(q, keys, values, context, scale, scores, out),
        _ => attend(q, keys, values, context, scale, scores, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use crate::dot::avx2::hsum;
    use crate::exp::{exp, exp8};

    /// [`super::silu_mul_into`], eight lanes at a time, then the tail one by
    /// one: the same operations, so the same bits.
    #[target_feature(enable = "avx2")]
    pub(super) fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let body = n / 8 * 8;
        let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
        for i in (0..body).step_by(8) {
            let (g, u, o) = (&gate[i..i + 8], &up[i..i + 8], &mut out[i..i + 8]);
            // SAFETY: 8 readable f32 each, 8 writable; unaligned.
            unsafe {
                let g = _mm256_loadu_ps(g.as_ptr());
                let e = exp8(_mm256_xor_ps(g, sign));
                let y = _mm256_mul_ps(
                    _mm256_div_ps(g, _mm256_add_ps(one, e)),
                    _mm256_loadu_ps(u.as_ptr()),
                );
                _mm256_storeu_ps(o.as_mut_ptr(), y);
            }
        }
        super::silu_mul_portable(&gate[body..n], &up[body..n], &mut out[body..n]);
    }

    /// Eight f32 at `v[at..at + 8]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load8(v: &[f32], at: usize) -> __m256 {
        let lanes = &v[at..at + 8];
        // SAFETY: `lanes` is 8 readable f32; the load is unaligned.
        unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
    }

    /// Eight f16 at `v[at..at + 8]`, widened to f32 (exactly, as `f16::to_f32`).
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    fn load8h(v: &[f16], at: usize) -> __m256 {
        let lanes = &v[at..at + 8];
        // SAFETY: `lanes` is 16 readable bytes; the load is unaligned.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(lanes.as_ptr().cast())) }
    }

    /// One score: `dot(q, key) · scale`, [`super::dot`]'s arithmetic.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    fn score<const CHUNKS: usize>(q: &[__m256; CHUNKS], key: &[f16], scale: f32) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (c, &qc) in q.iter().enumerate() {
            acc = _mm256_add_ps(acc, _mm256_mul_ps(qc, load8h(key, 8 * c)));
        }
        hsum(acc) * scale
    }

    /// [`super::attend`] for heads of `8 · CHUNKS` values.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn attend_chunks<const CHUNKS: usize>(
        q: &[f32],
        keys: &[f16],
        values: &[f16],
        context: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = 8 * CHUNKS;
        let qv: [__m256; CHUNKS] = std::array::from_fn(|c| load8(q, 8 * c));
        let scores = &mut scores[..context];
        let keys = &keys[..context * hd];
        // Four positions at a time: four independent sums in flight.
        let quads = context / 4 * 4;
        for (quad, s) in scores[..quads].chunks_exact_mut(4).enumerate() {
            let k = &keys[4 * quad * hd..(4 * quad + 4) * hd];
            let mut acc = [_mm256_setzero_ps(); 4];
            for (c, &qc) in qv.iter().enumerate() {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qc, load8h(k, i * hd + 8 * c)));
                }
            }
            for (o, a) in s.iter_mut().zip(acc) {
                *o = hsum(a) * scale;
            }
        }
        for (p, o) in scores.iter_mut().enumerate().skip(quads) {
            *o = score(&qv, &keys[p * hd..(p + 1) * hd], scale);
        }
        // The largest score, eight lanes at a time: the same value as the
        // loop in `attend`. `max_ps(s, m)` keeps `m` where `s` is NaN, as
        // `f32::max` skips NaN; the two could differ only in which of +0 and
        // −0 they keep, and no score is −0 (each is a sum that starts at +0,
        // times a positive scale).
        let mut lanes = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut eights = scores.chunks_exact(8);
        for e in &mut eights {
            // SAFETY: `e` is 8 readable f32; the load is unaligned.
            lanes = _mm256_max_ps(unsafe { _mm256_loadu_ps(e.as_ptr()) }, lanes);
        }
        let mut max = f32::NEG_INFINITY;
        let mut each = [0f32; 8];
        // SAFETY: `each` is 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(each.as_mut_ptr(), lanes) };
        for &s in each.iter().chain(eights.remainder()) {
            max = max.max(s);
        }
        // Eight exponentials at a time, then the sum in position order.
        let maxv = _mm256_set1_ps(max);
        let mut eights = scores.chunks_exact_mut(8);
        for e in &mut eights {
            // SAFETY: `e` is 8 readable and writable f32; unaligned.
            unsafe {
                let v = _mm256_sub_ps(_mm256_loadu_ps(e.as_ptr()), maxv);
                _mm256_storeu_ps(e.as_mut_ptr(), exp8(v));
            }
        }
        for s in eights.into_remainder() {
            *s = exp(*s - max);
        }
        let mut total = 0f32;
        for &s in scores.iter() {
            total += s;
        }
        let inverse = 1.0 / total;
        let mut sum = [_mm256_setzero_ps(); CHUNKS];
        for (&s, v) in scores.iter().zip(values[..context * hd].chunks_exact(hd)) {
            let weight = _mm256_set1_ps(s * inverse);
            for (c, acc) in sum.iter_mut().enumerate() {
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(weight, load8h(v, 8 * c)));
            }
        }
        for (c, acc) in sum.iter().enumerate() {
            let lanes = &mut out[8 * c..8 * c + 8];
            // SAFETY: `lanes` is 8 writable f32; the store is unaligned.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
        }
    }
}

thread_local! {
    /// Attention scores of the task a thread runs (grows to the longest context).
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<const N: usize>(v: [f32; N]) -> [f16; N] {
        v.map(f16::from_f32)
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let (q, k, v) = ([1.0, 2.0], h([0.5, -1.0]), h([3.0, 4.0]));
        let mut out = [0f32; 2];
        attend(&q, &k, &v, 1, 0.7, &mut [0.0; 4], &mut out);
        assert_eq!(out, [3.0, 4.0]);
    }

    #[test]
    fn attention_weights_follow_softmax() {
        // Two positions with scores 0 and ln 3: weights 1/4 and 3/4.
        let q = [1.0f32, 0.0];
        let k = h([0.0, 0.0, 3f32.ln(), 0.0]);
        let v = h([4.0, 0.0, 0.0, 8.0]);
        let mut out = [0f32; 2];
        attend(&q, &k, &v, 2, 1.0, &mut [0.0; 2], &mut out);
        // Within f16's rounding of ln 3 in the cached key (2^-11 relative).
        assert!(
            (out[0] - 1.0).abs() < 1e-4 && (out[1] - 6.0).abs() < 1e-4,
            "{out:?}"
        );
    }

    #[test]
    fn rms_norm_and_rope_by_hand() {
        let mut out = [0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
        let mut x = [1.0f32, 0.0];
        rope(&mut x, &[0.0], &[1.0]);
        assert_eq!(x, [0.0, 1.0]);
    }

    #[test]
    fn scores_four_at_a_time_equal_one_at_a_time() {
        for hd in [64, 12, 3] {
            let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let keys: Vec<f16> = (0..7 * hd)
                .map(|i| f16::from_f32((i as f32 * 0.11).cos()))
                .collect();
            let mut scores = vec![0f32; 7];
            scores_of(&q, &keys, 0.125, &mut scores);
            for (p, &s) in scores.iter().enumerate() {
                let key: Vec<f32> = keys[p * hd..(p + 1) * hd]
                    .iter()
                    .map(|k| k.to_f32())
                    .collect();
                let one = dot(&q, &key) * 0.125;
                assert_eq!(s.to_bits(), one.to_bits(), "hd {hd}, position {p}");
            }
        }
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..13).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..13).map(|i| (i * i) as f32).sum::<f32>());
    }
}
