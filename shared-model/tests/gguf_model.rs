//! The GGUF reader on the real default model.
#![allow(clippy::unwrap_used)]

mod common;

use shared_model::gguf::{GgmlType, Gguf};

#[test]
fn the_default_model_parses_and_every_tensor_dequantises() {
    let mut g = Gguf::open(common::default_model()).unwrap();
    let m = &g.metadata;
    assert_eq!(m.str("general.architecture").unwrap(), "llama");
    assert_eq!(m.u64("llama.block_count").unwrap(), 30);
    assert_eq!(m.u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(m.u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(m.u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(m.f64("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(m.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(m.str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(m.array("tokenizer.ggml.tokens").unwrap().len(), 49152);

    // 30 blocks of 9 tensors, the embedding and the final norm (tied output head).
    assert_eq!(g.tensors.len(), 30 * 9 + 2);
    let types: std::collections::BTreeSet<_> =
        g.tensors.iter().map(|t| t.ggml_type.name()).collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["F32", "Q4_1", "Q8_0"]
    );

    let embd = g.tensor_info("token_embd.weight").unwrap().clone();
    assert_eq!(embd.dims, vec![576, 49152]);
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    let names: Vec<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    for name in names {
        let (dims, values) = g.tensor_f32(&name).unwrap();
        assert_eq!(values.len() as u64, dims.iter().product::<u64>());
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name} has a non-finite value"
        );
    }
}
