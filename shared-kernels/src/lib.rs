//! Quantised matrix kernels for running the model on the CPU.
//!
//! - [`format`]: GGUF's block formats ([`Format`]) and matrices kept in them
//!   ([`QMatrix`]), byte for byte as in the file.
//! - [`act`]: a pass's activations quantised to 8 bits, row by row.
//! - [`matmul()`]: weights times activations, integer dot products per block,
//!   spread over a [`Pool`] of threads by output column.
//! - [`ops`]: the f32 row operations around them (RMSNorm, RoPE, SwiGLU,
//!   attention over a sequence's cached keys and values).
//! - [`planar`]: the same matrices split into the planes GPU kernels read
//!   (`shared-model`'s CubeCL kernels).
//!
//! # Numerics
//!
//! Weights stay in their GGUF format. Activations are quantised per block of
//! 32 (for Q4_0/Q4_1/Q8_0) or 256 (for the K formats) to 8 bits with an f32
//! scale, as llama.cpp does on the CPU; each block's products are summed as
//! exact integers and scaled in f32. F32 and F16 weights multiply f32
//! activations. Everything else is f32.
//!
//! # Batch invariance
//!
//! A row's result is computed by the same instructions on the same values
//! whatever else is in the pass — the number of rows, of threads, or the
//! instruction set ([`Isa`]: the SIMD kernels equal the portable ones bit for
//! bit). Speculative decoding relies on it: position i's logits from a k-token
//! pass equal those from decoding one token at a time.

pub mod act;
mod disjoint;
mod dot;
pub mod exp;
pub mod format;
mod matmul;
pub mod ops;
pub mod planar;
mod pool;

pub use act::Activations;
pub use dot::Isa;
pub use format::{ActKind, Format, QMatrix};
pub use matmul::matmul;
pub use planar::{PlanarKind, PlanarMatrix};
pub use pool::Pool;

use thiserror::Error;

/// What can go wrong handing data to the kernels.
#[derive(Debug, Error)]
pub enum KernelError {
    /// Bytes that are not whole blocks of the values they should hold.
    #[error("{bytes} bytes of {format:?} cannot hold {values} values")]
    Size {
        /// The format.
        format: Format,
        /// Bytes given.
        bytes: usize,
        /// Values expected.
        values: usize,
    },
    /// Shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The worker threads could not be started.
    #[error("cannot start the kernel threads: {0}")]
    Threads(String),
}
