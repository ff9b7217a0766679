//! Our CubeCL kernels (`shared_model::cube`) through the `Backend` trait, on
//! burn's wgpu backend — a GPU through Vulkan or Metal, or Mesa's software
//! Vulkan (lavapipe) in CI — and on CUDA where built with `--features cuda`
//! and a GPU is present: each product equals the dequantised weights times
//! the activations, and a row's result is bit for bit the same whatever other
//! rows share the pass; rows looked up (embeddings) are the dequantised
//! weights.
#![cfg(any(feature = "webgpu", feature = "cuda"))]
#![allow(clippy::unwrap_used)]

use burn::tensor::{Tensor, TensorData};
use half::f16;
use shared_kernels::{Format, PlanarMatrix};
use shared_model::backend::Backend;
use shared_model::cube::ROWS;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows × cols` random blocks of `format` with sane scales.
fn random_blocks(format: Format, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let (block, size) = format.block();
    let scale = |rng: &mut Rng| f16::from_f32(0.002 + 0.02 * rng.unit().abs()).to_le_bytes();
    let mut out = Vec::new();
    for _ in 0..rows * cols / block {
        let mut b: Vec<u8> = (0..size).map(|_| (rng.next() >> 32) as u8).collect();
        match format {
            Format::F32 => b.copy_from_slice(&rng.unit().to_le_bytes()),
            Format::F16 => b.copy_from_slice(&f16::from_f32(rng.unit()).to_le_bytes()),
            Format::Q4_0 | Format::Q8_0 => b[..2].copy_from_slice(&scale(rng)),
            Format::Q4_1 | Format::Q4_K => {
                b[..2].copy_from_slice(&scale(rng));
                b[2..4].copy_from_slice(&scale(rng));
            }
            Format::Q6_K => b[208..].copy_from_slice(&scale(rng)),
        }
        out.extend_from_slice(&b);
    }
    out
}

#[cfg(feature = "webgpu")]
#[test]
fn wgpu_products_are_the_dequantised_products_and_do_not_depend_on_the_other_rows() {
    let (device, info) = shared_model::backend::wgpu_device();
    println!("wgpu adapter: {} ({})", info.adapter, info.api);
    check_kernels::<shared_model::backend::WebGpu>(&device);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_products_are_the_dequantised_products_and_do_not_depend_on_the_other_rows() {
    check_kernels::<shared_model::backend::Cuda>(&shared_model::backend::cuda_device(0));
}

fn check_kernels<B: Backend>(device: &B::Device) {
    let mut rng = Rng(7);
    // 2 × ROWS + 3 rows: a cube's worth, a partial one, and rows in every slot.
    let n = 2 * ROWS + 3;
    for format in [
        Format::F32,
        Format::F16,
        Format::Q4_0,
        Format::Q4_1,
        Format::Q8_0,
        Format::Q4_K,
        Format::Q6_K,
    ] {
        // 37 outputs: not a multiple of the columns a cube takes.
        let (rows, cols) = (37, if format.block().0 == 256 { 512 } else { 608 });
        let planar = PlanarMatrix::from_gguf(
            format,
            rows,
            cols,
            &random_blocks(format, rows, cols, &mut rng),
        )
        .unwrap();
        let m = B::upload_matrix(&planar, device).unwrap();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.unit() * 4.0).collect();
        let run = |from: usize, to: usize| -> Vec<f32> {
            let t = Tensor::<B, 2>::from_data(
                TensorData::new(x[from * cols..to * cols].to_vec(), [to - from, cols]),
                device,
            );
            B::device_matmul(t, &m).into_data().to_vec::<f32>().unwrap()
        };
        let all = run(0, n);
        // Against the dequantised weights, summed in f64: f32 sums of `cols`
        // terms are good to a few ulps of the terms' magnitudes.
        let mut worst = 0f64;
        for i in 0..n {
            for o in 0..rows {
                let terms =
                    (0..cols).map(|c| f64::from(planar.value(o, c)) * f64::from(x[i * cols + c]));
                let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                worst = worst.max((f64::from(all[i * rows + o]) - want).abs() / size);
            }
        }
        println!("{format:?}: largest error {worst:.1e} of the terms' magnitude");
        assert!(
            worst < 1e-6,
            "{format:?}: off by {worst:.1e} of the terms' magnitude"
        );
        // Each row alone, and the rows in passes that put them in other slots.
        for i in 0..n {
            let alone = run(i, i + 1);
            assert_eq!(
                alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                all[i * rows..(i + 1) * rows]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "{format:?}: row {i} alone differs from the same row in a pass of {n}"
            );
        }
        // Rows looked up (embeddings): the dequantised values, bit for bit
        // (`scale · code` is exact, so a fused multiply-add rounds the same).
        let ids = [5u32, 0, 36, 5];
        let looked_up: Vec<f32> = B::device_rows(&m, &ids, device)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (i, &id) in ids.iter().enumerate() {
            for c in 0..cols {
                let (got, want) = (looked_up[i * cols + c], planar.value(id as usize, c));
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{format:?}: row {id} column {c}: {got} vs {want}"
                );
            }
        }
        let shifted = run(3, n);
        assert_eq!(
            shifted.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            all[3 * rows..]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "{format:?}: rows moved to other slots differ"
        );
    }
}
