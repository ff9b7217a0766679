//! Speculative verification is lossless only if a position's logits do not
//! depend on how many positions share the forward pass. These tests compare,
//! bit for bit, logits computed one token at a time with logits computed in
//! passes of other sizes, and check that rolling the cache back is exact.
#![allow(clippy::unwrap_used)]

mod common;

use shared_model::backend::{Backend, Cpu, cpu_device};
use shared_model::gguf::Gguf;
use shared_model::model::{BatchItem, Llama, Logits};
use shared_model::tokenizer::{EncodeOptions, Tokenizer};

fn setup() -> (Llama<Cpu>, Vec<u32>) {
    let mut gguf = Gguf::open(common::default_model()).unwrap();
    let tokenizer = Tokenizer::from_metadata(&gguf.metadata).unwrap();
    let model = Llama::load(&mut gguf, &cpu_device(), None).unwrap();
    let text = "fn main() {\n    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{xs:?}\");\n}\n// The sum of the squares is";
    (model, tokenizer.encode(text, EncodeOptions::TEXT))
}

fn bits(rows: &[Vec<f32>]) -> Vec<Vec<u32>> {
    rows.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// Logits of every position, feeding the tokens in passes of the given sizes.
fn logits_in_passes<B: Backend>(
    model: &Llama<B>,
    tokens: &[u32],
    sizes: &[usize],
) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut rows = Vec::new();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at == tokens.len() {
            break;
        }
        let end = (at + size).min(tokens.len());
        let logits = model
            .forward(&tokens[at..end], &mut cache, Logits::All)
            .unwrap();
        rows.extend(model.logits_to_rows(logits).unwrap());
        at = end;
    }
    rows
}

#[test]
fn logits_do_not_depend_on_how_many_positions_share_a_pass() {
    let (model, tokens) = setup();
    assert!(tokens.len() > 40, "{}", tokens.len());
    let sizes = [
        vec![tokens.len()],
        vec![2],
        vec![4],
        vec![8],
        vec![3, 1, 5, 2, 7],
    ];
    assert_passes_agree(&model, &tokens, &sizes);
}

/// Asserts that feeding `tokens` in passes of each of `sizes` gives every
/// position the logits it gets one token at a time, bit for bit.
fn assert_passes_agree<B: Backend>(model: &Llama<B>, tokens: &[u32], sizes: &[Vec<usize>]) {
    let one_at_a_time = bits(&logits_in_passes(model, tokens, &[1]));
    for sizes in sizes {
        let batched = bits(&logits_in_passes(model, tokens, sizes));
        let differing: Vec<usize> = (0..tokens.len())
            .filter(|&i| batched[i] != one_at_a_time[i])
            .collect();
        assert!(
            differing.is_empty(),
            "passes of {sizes:?}: positions {differing:?} differ"
        );
    }
}

#[test]
fn rolling_the_cache_back_is_exact() {
    let (model, tokens) = setup();
    let (prefix, rest) = tokens.split_at(20);
    let mut cache = model.new_cache();
    model.forward(prefix, &mut cache, Logits::Last).unwrap();
    // Draft 6 wrong tokens, then roll back and feed the real continuation.
    model
        .forward(&[7, 7, 7, 7, 7, 7], &mut cache, Logits::All)
        .unwrap();
    assert_eq!(cache.len(), 26);
    cache.truncate(20);
    let after_rollback = model
        .logits_to_rows(model.forward(&rest[..8], &mut cache, Logits::All).unwrap())
        .unwrap();

    let mut clean = model.new_cache();
    model.forward(prefix, &mut clean, Logits::Last).unwrap();
    let straight = model
        .logits_to_rows(model.forward(&rest[..8], &mut clean, Logits::All).unwrap())
        .unwrap();
    assert_eq!(bits(&after_rollback), bits(&straight));
}

#[test]
fn bad_input_is_refused_without_touching_the_cache() {
    let (model, tokens) = setup();
    let mut cache = model.new_cache();
    model
        .forward(&tokens[..4], &mut cache, Logits::Last)
        .unwrap();
    assert!(model.forward(&[], &mut cache, Logits::All).is_err());
    assert!(
        model
            .forward(&[1, 49_152], &mut cache, Logits::All)
            .is_err()
    );
    assert_eq!(cache.len(), 4);
}

#[test]
fn sessions_with_their_own_caches_do_not_interfere() {
    let (model, tokens) = setup();
    let (a, b) = (&tokens[..12], &tokens[12..24]);
    let alone = |t: &[u32]| {
        let mut cache = model.new_cache();
        bits(
            &model
                .logits_to_rows(model.forward(t, &mut cache, Logits::All).unwrap())
                .unwrap(),
        )
    };
    // Interleave two sequences on one model, a few tokens at a time.
    let (mut ca, mut cb) = (model.new_cache(), model.new_cache());
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for i in (0..12).step_by(3) {
        ra.extend(
            model
                .logits_to_rows(model.forward(&a[i..i + 3], &mut ca, Logits::All).unwrap())
                .unwrap(),
        );
        rb.extend(
            model
                .logits_to_rows(model.forward(&b[i..i + 3], &mut cb, Logits::All).unwrap())
                .unwrap(),
        );
    }
    assert_eq!(bits(&ra), alone(a));
    assert_eq!(bits(&rb), alone(b));
}

/// Logits of every position of several sequences run side by side: step `s`
/// feeds sequence `i` its next `sizes[i]` tokens (while it has any), all
/// sequences in one batched pass.
fn logits_batched<B: Backend>(
    model: &Llama<B>,
    seqs: &[&[u32]],
    sizes: &[usize],
) -> Vec<Vec<Vec<f32>>> {
    let mut caches: Vec<_> = seqs.iter().map(|_| model.new_cache()).collect();
    let mut rows = vec![Vec::new(); seqs.len()];
    let mut at = vec![0; seqs.len()];
    loop {
        let mut items = Vec::new();
        let mut who = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate() {
            if at[i] < seqs[i].len() {
                let end = (at[i] + sizes[i]).min(seqs[i].len());
                items.push(BatchItem {
                    tokens: &seqs[i][at[i]..end],
                    cache,
                    logits: Logits::All,
                });
                who.push((i, end - at[i]));
                at[i] = end;
            }
        }
        if items.is_empty() {
            return rows;
        }
        let logits = model.forward_batch(&mut items).unwrap().unwrap();
        let mut all = model.logits_to_rows(logits).unwrap().into_iter();
        for (i, n) in who {
            rows[i].extend(all.by_ref().take(n));
        }
    }
}

#[test]
fn logits_do_not_depend_on_the_other_sequences_in_a_pass() {
    let (model, tokens) = setup();
    // Four sequences of different lengths and contents.
    let seqs: Vec<&[u32]> = vec![
        &tokens[..30],
        &tokens[5..12],
        &tokens[10..41],
        &tokens[2..20],
    ];
    let alone: Vec<_> = seqs
        .iter()
        .map(|s| bits(&logits_in_passes(&model, s, &[1])))
        .collect();
    // Decode-like steps beside prefill-like chunks, and all prompts at once.
    for sizes in [[1, 1, 1, 1], [1, 8, 3, 2], [30, 7, 31, 18], [4, 1, 16, 5]] {
        let batched = logits_batched(&model, &seqs, &sizes);
        for (i, rows) in batched.iter().enumerate() {
            assert_eq!(
                bits(rows),
                alone[i],
                "sequence {i} with passes of {sizes:?} differs from running alone"
            );
        }
    }
}

#[test]
fn a_bad_item_fails_the_batch_without_touching_any_cache() {
    let (model, tokens) = setup();
    let (mut a, mut b) = (model.new_cache(), model.new_cache_with_limit(4));
    model.forward(&tokens[..3], &mut a, Logits::Last).unwrap();
    let err = model
        .forward_batch(&mut [
            BatchItem {
                tokens: &tokens[3..5],
                cache: &mut a,
                logits: Logits::All,
            },
            BatchItem {
                tokens: &tokens[..5],
                cache: &mut b,
                logits: Logits::All,
            },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("sequence 1"), "{err}");
    assert_eq!((a.len(), b.len()), (3, 0));
    // Only the rows asked for come back.
    let rows = model
        .forward_batch(&mut [
            BatchItem {
                tokens: &tokens[3..6],
                cache: &mut a,
                logits: Logits::From(1),
            },
            BatchItem {
                tokens: &tokens[..4],
                cache: &mut b,
                logits: Logits::None,
            },
        ])
        .unwrap()
        .unwrap();
    assert_eq!(rows.dims()[0], 2);
    assert_eq!((a.len(), b.len()), (6, 4));
    assert!(b.allocated_bytes() >= 4 * model.kv_bytes_per_position());
}

/// The same checks on our GPU kernels: burn's wgpu backend (natively a GPU
/// through Vulkan or Metal, or Mesa's software Vulkan, lavapipe, in CI) and
/// CUDA (built with `--features cuda`, on a machine with a GPU). The first 4
/// blocks of the model: software Vulkan is slow, and every block runs the same
/// kernels.
#[cfg(any(feature = "webgpu", feature = "cuda"))]
mod gpu {
    use super::*;
    use shared_model::backend::Kernels;

    #[cfg(feature = "webgpu")]
    #[test]
    fn wgpu_logits_do_not_depend_on_how_many_positions_share_a_pass_or_the_other_sequences() {
        let (device, info) = shared_model::backend::wgpu_device();
        eprintln!("wgpu adapter: {info:?}");
        check::<shared_model::backend::WebGpu>(&device);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_logits_do_not_depend_on_how_many_positions_share_a_pass_or_the_other_sequences() {
        check::<shared_model::backend::Cuda>(&shared_model::backend::cuda_device(0));
    }

    fn check<B: Backend>(device: &B::Device) {
        let mut gguf = Gguf::open(common::default_model()).unwrap();
        let tokenizer = Tokenizer::from_metadata(&gguf.metadata).unwrap();
        let model = Llama::<B>::load_with(&mut gguf, device, Some(4), Kernels::Tensors).unwrap();
        let engine = model.engine_description();
        assert!(
            engine.contains("linear layers on our GPU kernels")
                && !engine.contains("burn's matmul"),
            "{engine}"
        );
        let text = "fn main() {\n    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();";
        let tokens = tokenizer.encode(text, EncodeOptions::TEXT);
        assert!(tokens.len() >= 12, "{}", tokens.len());
        let tokens = &tokens[..12];
        assert_passes_agree(
            &model,
            tokens,
            &[vec![tokens.len()], vec![5], vec![3, 1, 6, 2]],
        );
        // Two sequences side by side, a prefill-like chunk beside decoding.
        let seqs: Vec<&[u32]> = vec![&tokens[..8], &tokens[3..8]];
        let batched = logits_batched(&model, &seqs, &[5, 1]);
        for (i, rows) in batched.iter().enumerate() {
            let alone = bits(&logits_in_passes(&model, seqs[i], &[1]));
            assert_eq!(bits(rows), alone, "sequence {i} differs from running alone");
        }
    }
}
