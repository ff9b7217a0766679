//! The Shard oracle: hosts the target model, verifies drafts, serves the
//! OpenAI-compatible API, status, metrics and the web app.
//!
//! - [`scheduler`]: which sessions run in the next batched pass — a
//!   deterministic core without I/O.
//! - [`engine`]: the thread that owns the models and caches and carries out
//!   the scheduler's decisions.
//! - [`http`]: axum routes (`/v1`, `/health`, `/api/status`, `/metrics`, `/ws`, `/`).
//! - [`chat`]: chat messages to a prompt with the model's Jinja template.
//! - [`metrics`]: the Prometheus metrics.
//! - [`p2p`]: the libp2p node — transports, handshake, gossip, scouts claiming
//!   work and drafting rounds.
//! - [`serve`]: `oracle serve`'s configuration and startup.
//! - [`trust`]: reputation, golden-ticket checks, bans, credits, rate limits.
//! - [`scout`]: `oracle scout`, a desktop scout (the logic is `scout-wasm`'s).
//! - [`ask`]: `oracle ask`, one completion over p2p as a leech.
//! - [`weights`]: model files as content-addressed pieces (`oracle manifest`),
//!   stored and fetched piece by piece.
//! - [`fetch`]: `oracle fetch`, a model downloaded from the peers that offer it.
//! - [`cli`]: the command line (`tokenize`, `generate`, `bench`, `serve`, `scout`,
//!   `ask`, `fetch`, `manifest`, `credit-token`, `network-key`, `certify`).
#![deny(missing_docs)]

pub mod ask;
pub mod chat;
pub mod cli;
pub mod engine;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod p2p;
pub mod scheduler;
pub mod scout;
pub mod serve;
pub mod trust;
pub mod weights;
