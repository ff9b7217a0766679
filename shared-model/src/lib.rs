//! The language model that oracles and scouts both run.
//!
//! This crate will hold (issue 3): a GGUF reader with dequantisation, the tokenizer
//! built from GGUF metadata, a Llama-family transformer on burn that is generic over
//! the backend and returns logits for every new position, a KV cache that can be
//! rolled back, sampling, and the greedy and sampling speculative verifiers. It
//! builds for native targets and for `wasm32-unknown-unknown`.
