//! The scout in a browser tab (wasm32 only).
//!
//! Two wasm bundles share this code (both built by trunk from `webapp/`):
//!
//! - the page (`webapp`): the libp2p node — WebRTC and WebSocket exist only on
//!   a page's main thread — and the web app;
//! - a dedicated Web Worker (`scout_worker`): the draft model on WebGPU (or the
//!   CPU), so drafting never blocks the page.
//!
//! They talk through [`crate::bridge`] messages.

pub mod console;
pub mod identity;
mod model_store;
pub mod node;
pub mod worker;
