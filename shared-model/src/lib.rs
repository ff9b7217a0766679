//! The language model that oracles and scouts both run.
//!
//! - [`gguf`]: GGUF files — metadata, tensor directory, lazy tensor reads,
//!   dequantisation (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
//!
//! - [`tokenizer`]: byte-level BPE and SentencePiece vocabularies from GGUF
//!   metadata, with llama.cpp's token ids, and streaming UTF-8 decoding.
//!
//! - [`sampling`]: greedy / temperature / top-k / top-p and a seeded RNG.
//! - [`verify`]: greedy and sampling speculative verification, pure functions.
//!
//! Still to come (issue 3): a
//! Llama-family transformer on burn that returns logits for every new position,
//! a KV cache that can be rolled back, sampling, and the speculative verifiers.
//! The crate builds for native targets and for `wasm32-unknown-unknown`.
#![deny(missing_docs)]

pub mod gguf;
pub mod sampling;
pub mod tokenizer;
pub mod verify;
