//! The kernels against the arithmetic they stand for: the SIMD kernels equal
//! the portable ones bit for bit, every format's product is the dequantised
//! weights times the dequantised activations, and a row's result does not
//! depend on the rows or threads beside it.
#![allow(clippy::unwrap_used)]

use half::f16;
use proptest::prelude::*;
use shared_kernels::ops::{Context, Heads, attend, attention};
use shared_kernels::{ActKind, Activations, Format, Isa, Pool, QMatrix, matmul};

const FORMATS: [Format; 7] = [
    Format::F32,
    Format::F16,
    Format::Q4_0,
    Format::Q4_1,
    Format::Q8_0,
    Format::Q4_K,
    Format::Q6_K,
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn scale(&mut self) -> [u8; 2] {
        f16::from_f32(0.002 + 0.02 * self.unit().abs()).to_le_bytes()
    }
}

/// A row of `cols` values in `format`: random quants, sane scales.
fn random_row(format: Format, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let (block, size) = format.block();
    let mut out = Vec::with_capacity(format.bytes_for(cols));
    for _ in 0..cols / block {
        let mut b: Vec<u8> = (0..size).map(|_| rng.byte()).collect();
        match format {
            Format::F32 => b.copy_from_slice(&rng.unit().to_le_bytes()),
            Format::F16 => b.copy_from_slice(&f16::from_f32(rng.unit()).to_le_bytes()),
            Format::Q4_0 | Format::Q8_0 | Format::Q4_K => b[..2].copy_from_slice(&rng.scale()),
            Format::Q4_1 => {
                b[..2].copy_from_slice(&rng.scale());
                b[2..4].copy_from_slice(&f16::from_f32(-0.1 * rng.unit().abs()).to_le_bytes());
            }
            Format::Q6_K => b[208..].copy_from_slice(&rng.scale()),
        }
        if format == Format::Q4_K {
            b[2..4].copy_from_slice(&rng.scale());
        }
        out.extend_from_slice(&b);
    }
    out
}

/// A row length for `format` that leaves blocks after the last whole group
/// of the interleaved layout (19 blocks of 32), or 2 blocks of 256.
fn cols_for(format: Format) -> usize {
    if format.block().0 == 256 {
        512
    } else {
        19 * 32
    }
}

fn random_matrix(format: Format, rows: usize, cols: usize, seed: u64) -> QMatrix {
    let mut rng = Rng(seed | 1);
    let data = (0..rows)
        .flat_map(|_| random_row(format, cols, &mut rng))
        .collect();
    QMatrix::new(format, rows, cols, data).unwrap()
}

fn random_activations(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed | 1);
    (0..rows * cols).map(|_| rng.unit() * 4.0).collect()
}

fn product(pool: &Pool, isa: Isa, w: &QMatrix, x: &[f32], rows: usize) -> Vec<f32> {
    let mut a = Activations::new();
    a.quantize(w.format().activations(), x, rows, w.cols());
    let mut out = vec![0f32; rows * w.rows()];
    matmul(pool, isa, w, &a, &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn simd_kernels_equal_the_portable_ones_bit_for_bit() {
    let pool = Pool::new(1).unwrap();
    if !Isa::Avx2.available() {
        println!("this machine has no AVX2: only the portable kernels run");
        return;
    }
    for format in FORMATS {
        // Rows of 8, 3, 18, 48, 72, 25 blocks of 32 and 12, 13, 14, 15, 6: last
        // groups of every length (1..8) in the interleaved layout.
        let shapes: [(usize, u64); 11] = [
            (256, 1),
            (576, 2),
            (1536, 3),
            (2304, 4),
            (96, 5),
            (800, 6),
            (384, 7),
            (416, 8),
            (448, 9),
            (480, 10),
            (192, 11),
        ];
        for (cols, seed) in shapes {
            if !cols.is_multiple_of(format.block().0) {
                continue;
            }
            // 7 rows: the kernels over 4, 2 and 1 rows all run.
            let w = random_matrix(format, 37, cols, seed);
            let x = random_activations(7, cols, seed + 100);
            let portable = product(&pool, Isa::Portable, &w, &x, 7);
            let simd = product(&pool, Isa::Avx2, &w, &x, 7);
            assert_eq!(bits(&portable), bits(&simd), "{format:?} × {cols}");
        }
    }
}

#[test]
fn every_format_multiplies_its_dequantised_values() {
    let pool = Pool::new(2).unwrap();
    let (rows, m) = (19, 3);
    for format in FORMATS {
        let cols = cols_for(format);
        let w = random_matrix(format, rows, cols, 7);
        let x = random_activations(m, cols, 8);
        let got = product(&pool, Isa::detect(), &w, &x, m);
        // The reference: dequantised weights times the activations as the
        // kernel sees them (quantised, then dequantised), in f64.
        let mut a = Activations::new();
        a.quantize(format.activations(), &x, m, cols);
        let seen: Vec<f32> = match format.activations() {
            ActKind::F32 => x.clone(),
            ActKind::Q8 => (0..m)
                .flat_map(|r| {
                    a.q8_row(r)
                        .blocks()
                        .into_iter()
                        .flat_map(|b| b.q.map(|q| f32::from(q) * b.d))
                })
                .collect(),
            ActKind::Q8K => (0..m)
                .flat_map(|r| {
                    a.q8k_row(r)
                        .iter()
                        .flat_map(|b| b.q.map(|q| f32::from(q) * b.d))
                })
                .collect(),
        };
        let mut wr = vec![0f32; cols];
        for o in 0..rows {
            w.dequantize_row(o, &mut wr).unwrap();
            for r in 0..m {
                let xr = &seen[r * cols..(r + 1) * cols];
                let exact: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let magnitude: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                    .sum();
                let g = f64::from(got[r * rows + o]);
                assert!(
                    (g - exact).abs() <= 1e-5 * magnitude + 1e-6,
                    "{format:?} row {r} col {o}: {g} vs {exact}"
                );
            }
        }
        // And the quantised activations are close to the originals.
        let worst = x
            .iter()
            .zip(&seen)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 4.0 / 127.0 * 0.5 + 1e-6, "{format:?}: {worst}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Row `i` of a pass over `m` rows on `threads` threads equals the same
    /// row multiplied alone on one thread, bit for bit.
    #[test]
    fn a_row_is_the_same_alone_and_in_any_batch(
        format_index in 0..FORMATS.len(),
        m in 1usize..18,
        threads in 1usize..4,
        seed in 1u64..1000,
    ) {
        let format = FORMATS[format_index];
        let cols = cols_for(format);
        let w = random_matrix(format, 67, cols, seed);
        let x = random_activations(m, cols, seed + 1);
        let isa = Isa::detect();
        let all = product(&Pool::new(threads).unwrap(), isa, &w, &x, m);
        let single = Pool::new(1).unwrap();
        for r in 0..m {
            let alone = product(&single, isa, &w, &x[r * cols..(r + 1) * cols], 1);
            prop_assert_eq!(bits(&all[r * 67..(r + 1) * 67]), bits(&alone));
        }
    }
}

#[test]
fn attention_equals_each_head_alone_on_every_instruction_set() {
    // Head sizes with a SIMD path (32, 64, 128) and without (12, 20).
    for hd in [64, 32, 128, 12, 20] {
        attention_on_both(hd);
    }
}

/// A context of 41 positions whose largest score is at the last one, past the
/// last group of eight the SIMD maximum takes (score 90 there, 0 elsewhere):
/// a maximum that missed it would make e^(90 − max) overflow. Attention
/// then returns that position's value, and the same bits on both
/// instruction sets.
#[test]
fn attention_finds_the_largest_score_in_the_tail() {
    let (hd, len) = (64, 41);
    let mut keys = vec![f16::ZERO; len * hd];
    keys[(len - 1) * hd] = f16::from_f32(90.0 * 8.0);
    let values: Vec<f16> = random_activations(len, hd, 21)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let mut q = vec![0f32; hd];
    q[0] = 1.0;
    let contexts = [Context {
        keys: &keys,
        values: &values,
        capacity: len,
        len,
    }];
    let heads = Heads {
        query: 1,
        kv: 1,
        dim: hd,
    };
    let pool = Pool::new(1).unwrap();
    let run = |isa| {
        let mut out = vec![0f32; hd];
        attention(&pool, isa, heads, &q, &contexts, &mut out);
        out
    };
    let portable = run(Isa::Portable);
    let last: Vec<f32> = values[(len - 1) * hd..]
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(bits(&portable), bits(&last));
    if Isa::Avx2.available() {
        assert_eq!(bits(&portable), bits(&run(Isa::Avx2)));
    }
}

#[test]
fn silu_and_quantising_give_the_same_bits_on_every_instruction_set() {
    if !Isa::Avx2.available() {
        return;
    }
    // SiLU(gate) · up over 8-lane bodies and tails, with the exponential's
    // edges (overflow, underflow, NaN) in the gates.
    let mut gate = random_activations(1, 203, 15);
    gate[..6].copy_from_slice(&[-100.0, -88.5, 90.0, f32::NAN, f32::INFINITY, 0.0]);
    let up = random_activations(1, 203, 16);
    let silu = |isa| {
        let mut out = vec![0f32; 203];
        shared_kernels::ops::silu_mul_into(isa, &gate, &up, &mut out);
        out
    };
    assert_eq!(bits(&silu(Isa::Portable)), bits(&silu(Isa::Avx2)));

    let mut x = random_activations(3, 608, 14);
    // Values that test the edges of rounding and of the scale: exact ties,
    // NaN and infinities (NaN is skipped by the maximum and becomes 0; an
    // infinite maximum makes the whole block NaN · 0 = 0), zeros, a
    // block of all zeros.
    let steps = [0.5f32, 1.5, -2.5, 126.5, -126.5, 127.0, -127.0, 0.0, -0.0];
    for (i, v) in steps.iter().enumerate() {
        x[i] = *v;
    }
    x[40] = f32::NAN;
    x[70] = f32::INFINITY;
    x[101] = f32::NEG_INFINITY;
    x[608..640].fill(0.0);
    x[700] = 1e-38;
    let (mut a, mut b) = (Activations::new(), Activations::new());
    a.quantize_on(Isa::Portable, ActKind::Q8, &x, 3, 608);
    b.quantize_on(Isa::Avx2, ActKind::Q8, &x, 3, 608);
    // Bits, not `==`: a block with an infinite scale has NaN in `s`.
    let bits_of = |blocks: Vec<shared_kernels::act::Q8Block>| -> Vec<(u32, u32, [i8; 32])> {
        blocks
            .iter()
            .map(|b| (b.d.to_bits(), b.s.to_bits(), b.q))
            .collect()
    };
    for r in 0..3 {
        assert_eq!(bits_of(a.q8_row(r).blocks()), bits_of(b.q8_row(r).blocks()));
    }
}

/// Attention with heads of `hd` values over contexts of 1 to 300 positions
/// (shorter and longer than a block of scoring work) gives each (row, head)
/// the bits of [`attend`] on that head alone, and the same bits on both
/// instruction sets where the machine has AVX2.
fn attention_on_both(hd: usize) {
    let (n_head, n_head_kv, capacity) = (6, 2, 300);
    let to_f16 = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
    let keys = to_f16(random_activations(n_head_kv * capacity, hd, 11));
    let mut values = to_f16(random_activations(n_head_kv * capacity, hd, 12));
    // f16's edges: a subnormal, the largest finite value, a negative zero.
    values[3..6].copy_from_slice(&[f16::from_bits(1), f16::MAX, f16::NEG_ZERO]);
    let lens = [1, 17, 40, 64, 65, 150, 300];
    let q = random_activations(lens.len(), n_head * hd, 13);
    let contexts: Vec<Context<'_>> = lens
        .iter()
        .map(|&len| Context {
            keys: &keys,
            values: &values,
            capacity,
            len,
        })
        .collect();
    let heads = Heads {
        query: n_head,
        kv: n_head_kv,
        dim: hd,
    };
    let run = |isa, threads| {
        let mut out = vec![0f32; q.len()];
        attention(
            &Pool::new(threads).unwrap(),
            isa,
            heads,
            &q,
            &contexts,
            &mut out,
        );
        out
    };
    let portable = run(Isa::Portable, 2);
    if Isa::Avx2.available() {
        assert_eq!(bits(&portable), bits(&run(Isa::Avx2, 2)), "hd {hd}");
        assert_eq!(
            bits(&portable),
            bits(&run(Isa::Avx2, 1)),
            "hd {hd}, one thread"
        );
    }
    let mut scores = vec![0f32; capacity];
    for (row, &len) in lens.iter().enumerate() {
        for head in 0..n_head {
            let kv = head / (n_head / n_head_kv);
            let span = kv * capacity * hd..(kv * capacity + len) * hd;
            let at = (row * n_head + head) * hd;
            let mut alone = vec![0f32; hd];
            let scale = 1.0 / (hd as f32).sqrt();
            attend(
                &q[at..at + hd],
                &keys[span.clone()],
                &values[span],
                len,
                scale,
                &mut scores,
                &mut alone,
            );
            assert_eq!(
                bits(&portable[at..at + hd]),
                bits(&alone),
                "hd {hd}, row {row}, head {head}"
            );
        }
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let pool = Pool::new(1).unwrap();
    let w = random_matrix(Format::Q4_1, 4, 64, 1);
    let mut a = Activations::new();
    a.quantize(ActKind::Q8K, &[0.0; 256], 1, 256);
    assert!(matmul(&pool, Isa::Portable, &w, &a, &mut [0.0; 4]).is_err());
    a.quantize(ActKind::Q8, &[0.0; 64], 1, 64);
    assert!(matmul(&pool, Isa::Portable, &w, &a, &mut [0.0; 3]).is_err());
    assert!(matmul(&pool, Isa::Portable, &w, &a, &mut [0.0; 4]).is_ok());
}

#[test]
fn planar_matrices_hold_the_dequantised_values_bit_for_bit() {
    use shared_kernels::PlanarMatrix;
    let mut rng = Rng(99);
    for format in FORMATS {
        let (rows, cols) = (3, if format.block().0 == 256 { 512 } else { 96 });
        let data: Vec<u8> = (0..rows)
            .flat_map(|_| random_row(format, cols, &mut rng))
            .collect();
        let planar = PlanarMatrix::from_gguf(format, rows, cols, &data).unwrap();
        let mut want = vec![0f32; rows * cols];
        format.dequantize(&data, &mut want).unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    planar.value(r, c).to_bits(),
                    want[r * cols + c].to_bits(),
                    "{format:?} ({r}, {c})"
                );
            }
        }
    }
}
