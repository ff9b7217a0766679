//! The scout: drafts tokens with a small model for an oracle, which verifies
//! them.
//!
//! The scout's logic is independent of where it runs, so the same code drafts
//! in a browser tab and, natively, on a desktop or in tests that run many:
//!
//! - [`round`]: sessions claimed from oracles and the answer to each round
//!   (drafted tokens, signed), with no I/O;
//! - [`net`]: the libp2p pieces every Shard node shares (timeouts, protocols,
//!   gossipsub with validation, handshake rules) — the oracle uses them too;
//! - [`behaviour`]: the scout's libp2p behaviour;
//! - [`wire`]: sampling settings across the wire;
//! - [`bridge`]: messages between a browser scout's page and its model worker;
//! - [`dial`]: which of an oracle's addresses a browser dials, best first;
//! - `browser` (wasm32 only): the model worker and the page's node;
//! - `native` (not on wasm32): the desktop runtime with TCP, QUIC, WebSocket
//!   and WebRTC-direct, run by `oracle scout`;
//! - `leech` (not on wasm32): one completion asked of an oracle over p2p, on
//!   the same transports, run by `oracle ask`.
#![deny(missing_docs)]

pub mod behaviour;
pub mod bridge;
#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod dial;
#[cfg(not(target_arch = "wasm32"))]
pub mod leech;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod net;
pub mod round;
pub mod wire;
