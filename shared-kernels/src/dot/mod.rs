//! One row of weights times one row of activations, per format, with the
//! instruction set chosen once at run time.

pub(crate) mod portable;

#[cfg(target_arch = "x86_64")]
mod avx2;

use std::sync::OnceLock;

use crate::act::{Q8Block, Q8KBlock};
use crate::format::Format;

/// The instruction set the kernels use. Results are the same on every one
/// (the portable kernels define them; the others are tested against them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, any machine.
    Portable,
    /// x86-64 AVX2 with F16C.
    Avx2,
}

impl Isa {
    /// The best this machine runs, unless `SHARD_KERNELS=portable` asks for
    /// the portable kernels (to compare, or to rule the SIMD ones out).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let forced = std::env::var("SHARD_KERNELS").is_ok_and(|v| v == "portable");
            if !forced && avx2_available() {
                Isa::Avx2
            } else {
                Isa::Portable
            }
        })
    }

    /// Whether this machine can run `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => avx2_available(),
        }
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    avx2::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// A weight row times a Q8 activation row.
pub(crate) type DotQ8 = fn(&[u8], &[Q8Block]) -> f32;
/// A weight row times a Q8K activation row.
pub(crate) type DotQ8K = fn(&[u8], &[Q8KBlock]) -> f32;
/// A weight row times an f32 activation row.
pub(crate) type DotF32 = fn(&[u8], &[f32]) -> f32;

/// The kernel of a format that takes Q8 activations.
pub(crate) fn q8_kernel(isa: Isa, format: Format) -> Option<DotQ8> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && avx2_available() {
        return Some(match format {
            Format::Q4_0 => avx2_q4_0,
            Format::Q4_1 => avx2_q4_1,
            Format::Q8_0 => avx2_q8_0,
            _ => return None,
        });
    }
    let _ = isa;
    Some(match format {
        Format::Q4_0 => portable::q4_0,
        Format::Q4_1 => portable::q4_1,
        Format::Q8_0 => portable::q8_0,
        _ => return None,
    })
}

/// The kernel of a format that takes Q8K activations.
pub(crate) fn q8k_kernel(format: Format) -> Option<DotQ8K> {
    match format {
        Format::Q4_K => Some(portable::q4_k),
        Format::Q6_K => Some(portable::q6_k),
        _ => None,
    }
}

/// The kernel of a format that takes f32 activations.
pub(crate) fn f32_kernel(format: Format) -> Option<DotF32> {
    match format {
        Format::F32 => Some(|w, x| portable::float(w, x, false)),
        Format::F16 => Some(|w, x| portable::float(w, x, true)),
        _ => None,
    }
}

// SAFETY (all three): `q8_kernel` hands these out only after
// `avx2_available()` said the CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn avx2_q4_0(w: &[u8], x: &[Q8Block]) -> f32 {
    unsafe { avx2::q4_0(w, x) }
}
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn avx2_q4_1(w: &[u8], x: &[Q8Block]) -> f32 {
    unsafe { avx2::q4_1(w, x) }
}
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn avx2_q8_0(w: &[u8], x: &[Q8Block]) -> f32 {
    unsafe { avx2::q8_0(w, x) }
}
