//! Quantised matrix products at the shapes of the default model
//! (SmolLM2-135M: d = 576, ff = 1536, vocab 49152) and of the K formats most
//! GGUF files use, for 1..16 rows: time per
//! product, effective multiply-adds per second, and weight bytes streamed per
//! second (the fastest of five batches). `cargo bench -p shared-kernels [-- THREADS]`.

use std::time::Instant;

use shared_kernels::{Activations, Format, QMatrix, matmul};

mod common;

fn matrix(format: Format, rows: usize, cols: usize) -> QMatrix {
    let (block, size) = format.block();
    let mut data = Vec::with_capacity(rows * cols / block * size);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..rows * cols / block {
        for i in 0..size {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            data.push((state >> 56) as u8);
            // Keep f16 scales finite: 0x2c00 ≈ 0.0625 (the K formats' d and
            // dmin are bytes 0..4 too, Q6_K's d its last two).
            if i == 1 || i == 3 || (format == Format::Q6_K && i == size - 1) {
                *data.last_mut().unwrap_or(&mut 0) = 0x2c;
            }
        }
    }
    QMatrix::new(format, rows, cols, data).unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    let (pool, isa) = common::start(&["weights", "rows", "µs", "GMAC/s", "weight GB/s"]);
    // What handing work to the threads costs: a pass of empty tasks.
    let reps = 20_000;
    let start = Instant::now();
    for _ in 0..reps {
        pool.run(pool.threads() * 4, |t| {
            std::hint::black_box(t);
        });
    }
    println!(
        "| (empty tasks: the cost of one hand-off to the threads) | – | {:.2} | – | – |",
        start.elapsed().as_secs_f64() / f64::from(reps) * 1e6
    );
    let shapes = [
        ("Q4_1 1536×576 (ffn up)", Format::Q4_1, 1536, 576),
        ("Q4_1 576×1536 (ffn down)", Format::Q4_1, 576, 1536),
        ("Q8_0 49152×576 (output)", Format::Q8_0, 49152, 576),
        (
            "Q4_K 2048×2048 (a 1B model's attention)",
            Format::Q4_K,
            2048,
            2048,
        ),
        ("Q6_K 2048×2048", Format::Q6_K, 2048, 2048),
    ];
    for (name, format, n, k) in shapes {
        let w = matrix(format, n, k);
        for m in [1, 2, 4, 8, 16] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut act = Activations::new();
            act.quantize(format.activations(), &x, m, k);
            let mut out = vec![0f32; m * n];
            let reps = (40_000_000 / (m * n * k)).clamp(3, 400);
            let secs = common::fastest_of_five(reps, |_| {
                matmul(&pool, isa, &w, &act, &mut out).unwrap_or_else(|e| panic!("{e}"));
            });
            println!(
                "| {name} | {m} | {:.1} | {:.1} | {:.1} |",
                secs * 1e6,
                (m * n * k) as f64 / secs / 1e9,
                w.bytes() as f64 / secs / 1e9
            );
        }
    }
}
