//! Hyperparameters of a Llama-family model, read from GGUF metadata.

use crate::gguf::{GgufError, Metadata};

/// The shape of a Llama-family transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward (SwiGLU) size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub context_length: usize,
}

/// Bounds that keep a hostile file from asking for absurd allocations.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CONTEXT: usize = 1 << 20;

impl LlamaConfig {
    /// Reads the `llama.*` keys. Fails on other architectures and on settings
    /// we do not implement (partial rotary, RoPE scaling).
    pub fn from_metadata(m: &Metadata) -> Result<Self, GgufError> {
        let arch = m.str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::WrongType {
                key: "general.architecture".into(),
                expected: "\"llama\" (the only architecture implemented)",
            });
        }
        let n_embd = m.usize_at_most("llama.embedding_length", MAX_DIM)?;
        let n_head = m.usize_at_most("llama.attention.head_count", MAX_DIM)?;
        let n_head_kv = match m.get("llama.attention.head_count_kv") {
            Some(_) => m.usize_at_most("llama.attention.head_count_kv", MAX_DIM)?,
            None => n_head,
        };
        let bad = |key: &str, expected: &'static str| GgufError::WrongType {
            key: key.into(),
            expected,
        };
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(bad(
                "llama.attention.head_count",
                "a divisor of the embedding length",
            ));
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                "llama.attention.head_count_kv",
                "a divisor of the head count",
            ));
        }
        let head_dim = n_embd / n_head;
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad("llama.embedding_length", "an even head size"));
        }
        if let Some(v) = m.get("llama.rope.dimension_count")
            && v.as_u64() != Some(head_dim as u64)
        {
            return Err(bad(
                "llama.rope.dimension_count",
                "the head size (partial rotary is not implemented)",
            ));
        }
        if let Some(v) = m.get("llama.rope.scaling.type")
            && !matches!(v.as_str(), Some("none"))
        {
            return Err(bad(
                "llama.rope.scaling.type",
                "\"none\" (RoPE scaling is not implemented)",
            ));
        }
        let vocab_size = match m.get("llama.vocab_size") {
            Some(_) => m.usize_at_most("llama.vocab_size", MAX_VOCAB)?,
            None => m.array("tokenizer.ggml.tokens")?.len(),
        };
        let rms_eps = m.f64("llama.attention.layer_norm_rms_epsilon")? as f32;
        let rope_base = match m.get("llama.rope.freq_base") {
            Some(_) => m.f64("llama.rope.freq_base")? as f32,
            None => 10_000.0,
        };
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(bad(
                "llama.attention.layer_norm_rms_epsilon",
                "a positive number",
            ));
        }
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(bad("llama.rope.freq_base", "a number above 1"));
        }
        let n_layer = m.usize_at_most("llama.block_count", MAX_LAYERS)?;
        let n_ff = m.usize_at_most("llama.feed_forward_length", MAX_DIM * 4)?;
        let context_length = m.usize_at_most("llama.context_length", MAX_CONTEXT)?;
        for (key, value) in [
            ("llama.block_count", n_layer),
            ("llama.embedding_length", n_embd),
            ("llama.feed_forward_length", n_ff),
            ("llama.context_length", context_length),
            ("llama.vocab_size", vocab_size),
        ] {
            if value == 0 {
                return Err(bad(key, "a positive number"));
            }
        }
        Ok(LlamaConfig {
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps,
            rope_base,
            vocab_size,
            context_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    fn metadata(overrides: &[(&str, Value)]) -> Metadata {
        let mut m = std::collections::BTreeMap::new();
        for (k, v) in [
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(2)),
            ("llama.embedding_length", Value::U32(64)),
            ("llama.feed_forward_length", Value::U32(128)),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.attention.head_count_kv", Value::U32(2)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.context_length", Value::U32(256)),
            ("llama.vocab_size", Value::U32(100)),
        ] {
            m.insert(k.to_owned(), v);
        }
        for (k, v) in overrides {
            m.insert((*k).to_owned(), v.clone());
        }
        Metadata::from(m)
    }

    #[test]
    fn reads_a_valid_config() {
        let c = LlamaConfig::from_metadata(&metadata(&[])).unwrap();
        assert_eq!(
            (c.head_dim, c.n_head / c.n_head_kv, c.rope_base),
            (16, 2, 10_000.0)
        );
    }

    #[test]
    fn impossible_shapes_are_refused_with_the_key_named() {
        for (key, value) in [
            ("general.architecture", Value::String("gpt2".into())),
            ("llama.embedding_length", Value::U32(0)),
            ("llama.embedding_length", Value::U32(68)),
            ("llama.attention.head_count_kv", Value::U32(3)),
            ("llama.attention.head_count", Value::U32(0)),
            ("llama.block_count", Value::U32(0)),
            ("llama.context_length", Value::U64(1 << 40)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                Value::F32(f32::NAN),
            ),
            ("llama.rope.dimension_count", Value::U32(8)),
            ("llama.rope.scaling.type", Value::String("yarn".into())),
        ] {
            let err = LlamaConfig::from_metadata(&metadata(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}
