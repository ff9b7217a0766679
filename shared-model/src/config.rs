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
        if head_dim % 2 != 0 {
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
        Ok(LlamaConfig {
            n_layer: m.usize_at_most("llama.block_count", MAX_LAYERS)?,
            n_embd,
            n_ff: m.usize_at_most("llama.feed_forward_length", MAX_DIM * 4)?,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps,
            rope_base,
            vocab_size,
            context_length: m.usize_at_most("llama.context_length", MAX_CONTEXT)?,
        })
    }
}
