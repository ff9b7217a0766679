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
//! - [`model`]: the Llama-family transformer on burn, generic over the backend,
//!   batch-invariant, with a KV cache that rolls back; [`config`] reads its shape.
//! - [`session`]: one request as a token-level state machine (feed, verify,
//!   stop rules, counters), shared by `oracle generate`, the server and scouts.
//! - [`draft`]: drafting with a local model, batched over sequences.
//! - [`generate`]: one sequence on this machine, plain or with a draft model (same tokens).
//! - [`text`]: token bytes to text as it streams, with stop strings held back.
//! - [`backend`]: the one module that names concrete backends (CPU, CUDA, WebGPU).
//! - `cube` (with `cuda` or `webgpu`): our CubeCL kernels, the GPU backends'
//!   linear layers on weights kept quantised on the device.
//!
//! The crate builds for native targets and for `wasm32-unknown-unknown`.
#![deny(missing_docs)]

pub mod backend;
pub mod config;
#[cfg(any(feature = "cuda", feature = "webgpu"))]
pub mod cube;
pub mod draft;
pub mod generate;
pub mod gguf;
mod host;
pub mod model;
pub mod sampling;
pub mod session;
pub mod text;
pub mod tokenizer;
pub mod verify;
