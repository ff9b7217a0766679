//! Attention over a KV cache at the default model's heads (SmolLM2-135M: 9
//! query heads of 64 values sharing 3 key/value heads), one layer: decoding
//! one row at growing contexts, a pass of k drafted rows, 16 sessions side by
//! side, and a 512-token prompt. Time per layer (the fastest of five batches,
//! each over enough layers' caches that they come from memory) and the
//! key/value bytes read per second (f16, as the model caches them), each key
//! and value counted once.
//! `cargo bench -p shared-kernels --bench attention [-- THREADS]`.

use half::f16;

use shared_kernels::ops::{Context, Heads, attention};

mod common;

const HEADS: Heads = Heads {
    query: 9,
    kv: 3,
    dim: 64,
};

fn wave(n: usize, f: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * f).sin()).collect()
}

fn wave_f16(n: usize, f: f32) -> Vec<f16> {
    wave(n, f).into_iter().map(f16::from_f32).collect()
}

fn main() {
    let (pool, isa) = common::start(&["pass", "rows", "µs", "KV GB/s"]);
    let hd = HEADS.dim;
    // (what, sessions, rows per session, context of the first row of each)
    let cases = [
        ("decode, context 128", 1, 1, 128),
        ("decode, context 1024", 1, 1, 1024),
        ("decode, context 4096", 1, 1, 4096),
        ("k = 8 drafted rows after 128", 1, 8, 129),
        ("k = 8 drafted rows after 1024", 1, 8, 1025),
        ("16 sessions decoding, context 1024", 16, 1, 1024),
        ("a 512-token prompt", 1, 512, 1),
    ];
    for (name, sessions, rows, first) in cases {
        let capacity = first + rows;
        // Like a model's layers, each call reads its own caches, and there
        // are enough of them (up to 30) that they do not fit in the caches
        // of the processor: a decoding step reads the KV cache from memory.
        let per_layer = sessions * 2 * HEADS.kv * capacity * hd * 2;
        let layers = (256 << 20) / per_layer;
        let layers = layers.clamp(1, 30);
        let caches: Vec<Vec<(Vec<f16>, Vec<f16>)>> = (0..layers)
            .map(|l| {
                (0..sessions)
                    .map(|s| {
                        let n = HEADS.kv * capacity * hd;
                        let f = 0.31 + (s + l) as f32 * 1e-3;
                        (wave_f16(n, f), wave_f16(n, 0.17))
                    })
                    .collect()
            })
            .collect();
        let contexts: Vec<Vec<Context<'_>>> = caches
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .flat_map(|(keys, values)| {
                        (0..rows).map(move |r| Context {
                            keys,
                            values,
                            capacity,
                            len: first + r,
                        })
                    })
                    .collect()
            })
            .collect();
        let n_rows = sessions * rows;
        let q = wave(n_rows * HEADS.query * hd, 0.07);
        let mut out = vec![0f32; q.len()];
        let positions = sessions * (first + rows - 1);
        let bytes = (2 * HEADS.kv * positions * hd * 2) as f64;
        let reps = (20_000_000 / (n_rows * capacity * HEADS.query * hd)).clamp(3, 2000);
        let secs = common::fastest_of_five(reps.max(layers), |i| {
            attention(&pool, isa, HEADS, &q, &contexts[i % layers], &mut out);
        });
        println!(
            "| {name} | {n_rows} | {:.1} | {:.1} |",
            secs * 1e6,
            bytes / secs / 1e9
        );
    }
}
