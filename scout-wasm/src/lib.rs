//! The scout.
//!
//! This crate will hold the scout's round logic (claim work, keep a draft KV cache
//! in step with the oracle's accepted tokens, draft k tokens per round, sign and
//! return them), written independent of the transport so native tests can run many
//! scouts, and a thin browser layer: wasm-bindgen exports, the WebRTC/WebSocket
//! libp2p transports and the WebGPU device.
