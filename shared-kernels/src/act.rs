//! Activations quantised to 8 bits, row by row, for the integer kernels.
//!
//! Each row is quantised on its own (its blocks' scales come from its own
//! values), so a row's quantised form never depends on what else is in the
//! batch. Buffers are kept and reused: quantising a pass allocates nothing once
//! the buffers have grown to the largest pass seen.

use crate::disjoint::Disjoint;
use crate::dot::Isa;
use crate::format::{ActKind, GROUP, block_of_lane};
use crate::pool::Pool;

/// 32 activations: `value ≈ d · q`, with `s = d · Σq` (the Q4_1 kernel needs it).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    /// Scale.
    pub d: f32,
    /// `d · Σ q`.
    pub s: f32,
    /// Quantised values, −127..=127.
    pub q: [i8; 32],
}

/// [`GROUP`] blocks of 32 activations arranged like a weight group (see
/// [`crate::format::lane_of`]): per lane its block's scale, `d · Σq` and
/// `Σq`; per pair of blocks `(a, b)` the values `a[0..16], b[0..16],
/// a[16..32], b[16..32]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Group {
    /// Scales, by lane.
    pub d: [f32; 8],
    /// `d · Σ q`, by lane.
    pub s: [f32; 8],
    /// `Σ q`, by lane.
    pub sum: [i32; 8],
    /// Quantised values, by pair.
    pub q: [[i8; 64]; 4],
}

impl Q8Block {
    const ZERO: Q8Block = Q8Block {
        d: 0.0,
        s: 0.0,
        q: [0; 32],
    };
}

impl Q8KBlock {
    const ZERO: Q8KBlock = Q8KBlock {
        d: 0.0,
        q: [0; 256],
        sums: [0; 16],
    };
}

impl Q8Group {
    const ZERO: Q8Group = Q8Group {
        d: [0.0; 8],
        s: [0.0; 8],
        sum: [0; 8],
        q: [[0; 64]; 4],
    };

    /// Up to [`GROUP`] blocks as a group; missing blocks are zeros.
    fn of(blocks: &[Q8Block]) -> Q8Group {
        let block = |j: usize| blocks.get(j).unwrap_or(&Q8Block::ZERO);
        let mut group = Q8Group::ZERO;
        for lane in 0..GROUP {
            let b = block(block_of_lane(lane));
            group.d[lane] = b.d;
            group.s[lane] = b.s;
            group.sum[lane] = b.q.iter().map(|&v| i32::from(v)).sum();
        }
        for (p, pair) in group.q.iter_mut().enumerate() {
            let (a, b) = (&block(2 * p).q, &block(2 * p + 1).q);
            pair[0..16].copy_from_slice(&a[0..16]);
            pair[16..32].copy_from_slice(&b[0..16]);
            pair[32..48].copy_from_slice(&a[16..32]);
            pair[48..64].copy_from_slice(&b[16..32]);
        }
        group
    }

    /// Block `j` of the group.
    pub fn block(&self, j: usize) -> Q8Block {
        let lane = crate::format::lane_of(j);
        let pair = &self.q[j / 2];
        let half = 16 * (j % 2);
        let mut q = [0i8; 32];
        q[..16].copy_from_slice(&pair[half..half + 16]);
        q[16..].copy_from_slice(&pair[32 + half..32 + half + 16]);
        Q8Block {
            d: self.d[lane],
            s: self.s[lane],
            q,
        }
    }
}

/// One row of Q8 activations in groups of [`GROUP`] blocks; the last group
/// may be short, its missing blocks all zeros (they add exactly nothing).
#[derive(Debug, Clone, Copy)]
pub struct Q8Row<'a> {
    /// The groups.
    pub groups: &'a [Q8Group],
    /// Blocks in the row.
    pub blocks: usize,
}

impl Q8Row<'_> {
    /// The row's blocks in order.
    pub fn blocks(&self) -> Vec<Q8Block> {
        (0..self.blocks)
            .map(|b| self.groups[b / GROUP].block(b % GROUP))
            .collect()
    }
}

/// 256 activations: `value ≈ d · q`, with the sum of each 16 quantised values.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8KBlock {
    /// Scale.
    pub d: f32,
    /// Quantised values, −127..=127.
    pub q: [i8; 256],
    /// `Σ q` over each run of 16.
    pub sums: [i16; 16],
}

/// The rows of one pass in the form a weight format's kernel takes.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    rows: usize,
    cols: usize,
    f32s: Vec<f32>,
    q8_groups: Vec<Q8Group>,
    q8k: Vec<Q8KBlock>,
    kind: Option<ActKind>,
}

impl Activations {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the contents with `x` (`rows × cols`, row-major) in `kind`'s
    /// form. `cols` must be a whole number of that form's blocks.
    ///
    /// # Panics
    /// If `x.len() != rows · cols` or `cols` does not split into blocks; the
    /// model's shapes are checked when it is loaded.
    pub fn quantize(&mut self, kind: ActKind, x: &[f32], rows: usize, cols: usize) {
        self.quantize_on(Isa::detect(), kind, x, rows, cols);
    }

    /// [`Self::quantize`] with the instruction set `isa` (the result is the
    /// same on every one; tests compare them).
    pub fn quantize_on(&mut self, isa: Isa, kind: ActKind, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(x.len(), rows * cols, "activations of the wrong size");
        self.reshape(kind, rows, cols);
        match kind {
            ActKind::F32 => self.f32s.copy_from_slice(x),
            ActKind::Q8 => {
                let groups = cols.div_ceil(32 * GROUP);
                for (row, out) in x
                    .chunks_exact(cols)
                    .zip(self.q8_groups.chunks_exact_mut(groups))
                {
                    quantize_row_q8(isa, row, out);
                }
            }
            ActKind::Q8K => {
                for (block, out) in x.chunks_exact(256).zip(&mut self.q8k) {
                    *out = quantize_q8k(block);
                }
            }
        }
    }

    /// Like [`Self::quantize`], of rows made on the spot and spread over
    /// `pool`: `fill(r, row)` writes row `r`'s `cols` values (a norm of the
    /// residual, an activation function, a copy), then the row is quantised
    /// on the thread that filled it. Each row is quantised on its own, so the
    /// result equals [`Self::quantize`] of the filled rows.
    ///
    /// # Panics
    /// If `cols` does not split into `kind`'s blocks.
    #[allow(unsafe_code)]
    pub fn quantize_rows(
        &mut self,
        pool: &Pool,
        isa: Isa,
        kind: ActKind,
        rows: usize,
        cols: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        self.reshape(kind, rows, cols);
        match kind {
            ActKind::F32 => {
                let out = Disjoint::new(&mut self.f32s);
                pool.run(rows, |r| {
                    // SAFETY: task `r` alone writes row `r`.
                    fill(r, unsafe { out.range(r * cols, cols) });
                });
            }
            ActKind::Q8 => {
                let groups = cols.div_ceil(32 * GROUP);
                let out = Disjoint::new(&mut self.q8_groups);
                pool.run(rows, |r| {
                    with_row(cols, |row| {
                        fill(r, row);
                        // SAFETY: task `r` alone writes row `r`'s groups.
                        quantize_row_q8(isa, row, unsafe { out.range(r * groups, groups) });
                    });
                });
            }
            ActKind::Q8K => {
                let blocks = cols / 256;
                let out = Disjoint::new(&mut self.q8k);
                pool.run(rows, |r| {
                    with_row(cols, |row| {
                        fill(r, row);
                        // SAFETY: task `r` alone writes row `r`'s blocks.
                        let out = unsafe { out.range(r * blocks, blocks) };
                        for (block, o) in row.chunks_exact(256).zip(out) {
                            *o = quantize_q8k(block);
                        }
                    });
                });
            }
        }
    }

    /// Sizes the buffer of `kind` for `rows × cols` (contents unspecified:
    /// every element is written before it is read).
    fn reshape(&mut self, kind: ActKind, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.kind = Some(kind);
        match kind {
            ActKind::F32 => self.f32s.resize(rows * cols, 0.0),
            ActKind::Q8 => {
                assert!(
                    cols.is_multiple_of(32),
                    "a row of {cols} is not whole Q8 blocks"
                );
                self.q8_groups
                    .resize(rows * cols.div_ceil(32 * GROUP), Q8Group::ZERO);
            }
            ActKind::Q8K => {
                assert!(
                    cols.is_multiple_of(256),
                    "a row of {cols} is not whole Q8K blocks"
                );
                self.q8k.resize(rows * cols / 256, Q8KBlock::ZERO);
            }
        }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The form held (`None` before the first [`Self::quantize`]).
    pub fn kind(&self) -> Option<ActKind> {
        self.kind
    }

    /// Row `r` as f32 (after quantising to [`ActKind::F32`]).
    pub fn f32_row(&self, r: usize) -> &[f32] {
        &self.f32s[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r` as Q8 groups and blocks (after quantising to [`ActKind::Q8`]).
    pub fn q8_row(&self, r: usize) -> Q8Row<'_> {
        let blocks = self.cols / 32;
        let groups = blocks.div_ceil(GROUP);
        Q8Row {
            groups: &self.q8_groups[r * groups..(r + 1) * groups],
            blocks,
        }
    }

    /// Row `r` as Q8K blocks (after quantising to [`ActKind::Q8K`]).
    pub fn q8k_row(&self, r: usize) -> &[Q8KBlock] {
        let n = self.cols / 256;
        &self.q8k[r * n..(r + 1) * n]
    }
}

/// The scale that maps the largest magnitude of `x` to 127, and its inverse.
#[inline(always)]
fn scale_of(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    (d, inverse)
}

/// `v · inverse` rounded to the nearest integer (ties to even: one
/// instruction with SSE4.1 and up, where rounding ties away from zero is a
/// library call) and kept within ±127 (NaN becomes 0).
#[inline(always)]
fn quantize_value(v: f32, inverse: f32) -> i8 {
    (v * inverse).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// A row's Q8 blocks, grouped, into `out` (one group per 256 values).
#[allow(unsafe_code)]
fn quantize_row_q8(isa: Isa, row: &[f32], out: &mut [Q8Group]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && isa.available() {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { quantize_row_q8_avx2(row, out) };
        return;
    }
    let _ = isa;
    quantize_row_q8_portable(row, out);
}

fn quantize_row_q8_portable(row: &[f32], out: &mut [Q8Group]) {
    group_row(row, out, quantize_q8);
}

/// A row's blocks of 32, each quantised by `quantize`, grouped into `out`.
#[inline(always)]
fn group_row(row: &[f32], out: &mut [Q8Group], quantize: impl Fn(&[f32]) -> Q8Block) {
    let mut blocks = [Q8Block::ZERO; GROUP];
    for (values, group) in row.chunks(32 * GROUP).zip(out) {
        let n = values.len() / 32;
        for (block, x) in blocks.iter_mut().zip(values.chunks_exact(32)) {
            *block = quantize(x);
        }
        *group = Q8Group::of(&blocks[..n]);
    }
}

/// [`quantize_row_q8`] on AVX2 registers, block by block
/// ([`simd::quantize_q8`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_row_q8_avx2(row: &[f32], out: &mut [Q8Group]) {
    group_row(row, out, |x| simd::quantize_q8(x));
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::Q8Block;

    /// [`super::quantize_q8`] of 32 values, eight lanes at a time, with the
    /// same results: the maximum magnitude skips NaN as `f32::max` does
    /// (`max_ps` returns its second operand when one is NaN, and the running
    /// maximum goes second), `round_ps` rounds ties to even, and lanes that
    /// are NaN after scaling become 0 as `as i8` makes them.
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize_q8(x: &[f32]) -> Q8Block {
        let x = &x[..32];
        // SAFETY: `x` is 32 readable f32; the loads are unaligned.
        let v: [__m256; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x[8 * i..].as_ptr()) });
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for &vi in &v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, vi), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
        let d = amax / 127.0;
        let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
        let scale = _mm256_set1_ps(inverse);
        let (low, high) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let ints: [__m256i; 4] = std::array::from_fn(|i| {
            let y = _mm256_mul_ps(v[i], scale);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
            let clamped = _mm256_max_ps(_mm256_min_ps(r, high), low);
            let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(y, y);
            _mm256_cvtps_epi32(_mm256_and_ps(clamped, ordered))
        });
        let total = _mm256_add_epi32(
            _mm256_add_epi32(ints[0], ints[1]),
            _mm256_add_epi32(ints[2], ints[3]),
        );
        let t = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256::<1>(total),
        );
        let t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32::<1>(t)));
        // Within ±127 the packs do not saturate; they interleave 128-bit
        // lanes, which the permute puts back in order.
        let words = [
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        ];
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(words[0], words[1]),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        let mut q = [0i8; 32];
        // SAFETY: `q` is 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), bytes) };
        Q8Block {
            d,
            s: d * sum as f32,
            q,
        }
    }
}

thread_local! {
    /// The f32 row a [`Activations::quantize_rows`] task fills.
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's row buffer, `cols` long.
fn with_row(cols: usize, f: impl FnOnce(&mut [f32])) {
    ROW.with_borrow_mut(|row| {
        row.resize(cols, 0.0);
        f(row);
    });
}

#[inline(always)]
fn quantize_q8(x: &[f32]) -> Q8Block {
    let (d, inverse) = scale_of(x);
    let mut q = [0i8; 32];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = quantize_value(v, inverse);
    }
    let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
    Q8Block {
        d,
        s: d * sum as f32,
        q,
    }
}

fn quantize_q8k(x: &[f32]) -> Q8KBlock {
    let (d, inverse) = scale_of(x);
    let mut q = [0i8; 256];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = quantize_value(v, inverse);
    }
    let mut sums = [0i16; 16];
    for (s, run) in sums.iter_mut().zip(q.chunks_exact(16)) {
        // At most 16 · 127: fits.
        *s = run.iter().map(|&v| i16::from(v)).sum();
    }
    Q8KBlock { d, q, sums }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::lane_of;

    #[test]
    fn rows_made_and_quantised_on_threads_equal_quantising_them_whole() {
        let pool = Pool::new(2).unwrap();
        for (kind, cols) in [(ActKind::Q8, 608), (ActKind::Q8K, 512), (ActKind::F32, 40)] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
                .collect();
            let mut whole = Activations::new();
            whole.quantize(kind, &x, rows, cols);
            let mut made = Activations::new();
            // A different shape first: the buffers are reused.
            made.quantize(kind, &x[..cols], 1, cols);
            made.quantize_rows(&pool, Isa::detect(), kind, rows, cols, |r, row| {
                row.copy_from_slice(&x[r * cols..(r + 1) * cols]);
            });
            assert_eq!(
                (made.rows(), made.cols(), made.kind()),
                (rows, cols, Some(kind))
            );
            for r in 0..rows {
                match kind {
                    ActKind::Q8 => assert_eq!(made.q8_row(r).blocks(), whole.q8_row(r).blocks()),
                    ActKind::Q8K => assert_eq!(made.q8k_row(r), whole.q8k_row(r)),
                    ActKind::F32 => assert_eq!(made.f32_row(r), whole.f32_row(r)),
                }
            }
        }
    }

    #[test]
    fn q8_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = Activations::new();
        a.quantize(ActKind::Q8, &x, 2, 32);
        for r in 0..2 {
            for (b, chunk) in a
                .q8_row(r)
                .blocks()
                .iter()
                .zip(x[r * 32..].chunks_exact(32))
            {
                assert!(b.q.iter().any(|&q| q.abs() == 127));
                let sum: i32 = b.q.iter().map(|&q| i32::from(q)).sum();
                assert_eq!(b.s, b.d * sum as f32);
                for (&q, &v) in b.q.iter().zip(chunk) {
                    assert!((f32::from(q) * b.d - v).abs() <= b.d * 0.5 + 1e-6);
                }
            }
        }
    }

    #[test]
    fn zeros_and_non_finite_values_stay_in_range() {
        let mut a = Activations::new();
        a.quantize(ActKind::Q8, &[0.0; 32], 1, 32);
        assert_eq!(a.q8_row(0).blocks()[0].q, [0; 32]);
        let mut x = vec![1.0f32; 256];
        x[3] = f32::NAN;
        a.quantize(ActKind::Q8K, &x, 1, 256);
        let b = &a.q8k_row(0)[0];
        assert_eq!(b.q[3], 0);
        assert_eq!(b.sums[0], 15 * 127);
    }

    #[test]
    fn groups_hold_their_blocks() {
        // 2 rows of 2 groups and 3 more blocks each.
        let cols = 32 * (2 * GROUP + 3);
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 31) % 97) as f32 - 48.0)
            .collect();
        let mut a = Activations::new();
        a.quantize(ActKind::Q8, &x, 2, cols);
        for r in 0..2 {
            let row = a.q8_row(r);
            assert_eq!((row.groups.len(), row.blocks), (3, 19));
            assert_eq!(row.groups[2].d[lane_of(3)], 0.0, "a missing block is zeros");
            let expected: Vec<Q8Block> = x[r * cols..(r + 1) * cols]
                .chunks_exact(32)
                .map(quantize_q8)
                .collect();
            assert_eq!(row.blocks(), expected);
        }
    }

    #[test]
    fn a_row_quantises_the_same_alone_and_among_others() {
        let x: Vec<f32> = (0..3 * 256)
            .map(|i| ((i * 7919) % 1000) as f32 - 500.0)
            .collect();
        let (mut all, mut one) = (Activations::new(), Activations::new());
        all.quantize(ActKind::Q8K, &x, 3, 256);
        one.quantize(ActKind::Q8K, &x[256..512], 1, 256);
        assert_eq!(all.q8k_row(1), one.q8k_row(0));
    }
}
