//! Models as content-addressed pieces, for every peer that shares them.
//!
//! A model file travels the network as pieces of a few hundred KiB to 16 MiB,
//! each with its SHA-256 in the file's [`Manifest`]; the manifest's own content
//! id names the model. Oracles serve pieces, scouts and new oracles fetch them
//! from several peers at once. This crate is the part every one of them shares,
//! written without sockets, clocks or files so it is tested without a network
//! and runs in the browser too:
//!
//! - [`manifest`]: building a manifest from a file (deterministic), reading one
//!   received by content id, checking a piece against it, the pieces a range of
//!   layers needs.
//! - [`picker`]: which piece to ask which peer for next — rarest first, a
//!   deadline per request, a retry elsewhere, strikes for peers that send bad
//!   pieces.
//! - [`progress`]: bytes, pieces, rate and ETA for progress bars and events,
//!   and the bandwidth cap.
//! - [`resume`]: the record of verified pieces a download keeps on disk, so a
//!   killed download starts again where it stopped.
//!
//! It is its own crate (not part of `shared-proto` or `shared-model`) because it
//! is neither wire format nor model: the native downloader, the oracle's server
//! and the browser's worker all use it without pulling in burn.
#![deny(missing_docs)]

pub mod manifest;
pub mod picker;
pub mod progress;
pub mod resume;

pub use manifest::{Manifest, ManifestError, PieceError, TensorLayout, piece_size_for};
pub use picker::{Availability, Picker, PickerConfig, PieceOutcome};
pub use progress::{Meter, Progress, RateCap};
