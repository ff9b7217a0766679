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
/// A weight row times four Q8 activation rows: each result equal to the
/// one-row kernel's on that row, bit for bit.
pub(crate) type DotQ8x4 = fn(&[u8], [&[Q8Block]; 4]) -> [f32; 4];
/// A weight row times a Q8K activation row.
pub(crate) type DotQ8K = fn(&[u8], &[Q8KBlock]) -> f32;
/// A weight row times an f32 activation row.
pub(crate) type DotF32 = fn(&[u8], &[f32]) -> f32;

/// The kernels of a format that takes Q8 activations.
#[derive(Clone, Copy)]
pub(crate) struct Q8Kernels {
    /// One activation row.
    pub(crate) one: DotQ8,
    /// Four activation rows, the weight row unpacked once for them.
    pub(crate) four: DotQ8x4,
}

/// The portable kernel over four rows: the one-row kernel, four times.
macro_rules! portable_four {
    ($name:ident, $one:path) => {
        fn $name(w: &[u8], xs: [&[Q8Block]; 4]) -> [f32; 4] {
            xs.map(|x| $one(w, x))
        }
    };
}
portable_four!(portable_q4_0_x4, portable::q4_0);
portable_four!(portable_q4_1_x4, portable::q4_1);
portable_four!(portable_q8_0_x4, portable::q8_0);

/// The kernels of a format that takes Q8 activations.
pub(crate) fn q8_kernels(isa: Isa, format: Format) -> Option<Q8Kernels> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && avx2_available() {
        let (one, four): (DotQ8, DotQ8x4) = match format {
            Format::Q4_0 => (avx2_q4_0, avx2_q4_0_x4),
            Format::Q4_1 => (avx2_q4_1, avx2_q4_1_x4),
            Format::Q8_0 => (avx2_q8_0, avx2_q8_0_x4),
            _ => return None,
        };
        return Some(Q8Kernels { one, four });
    }
    let _ = isa;
    let (one, four): (DotQ8, DotQ8x4) = match format {
        Format::Q4_0 => (portable::q4_0, portable_q4_0_x4),
        Format::Q4_1 => (portable::q4_1, portable_q4_1_x4),
        Format::Q8_0 => (portable::q8_0, portable_q8_0_x4),
        _ => return None,
    };
    Some(Q8Kernels { one, four })
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

/// Safe wrappers of an AVX2 kernel for one and for four rows.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_wrappers {
    ($one:ident, $four:ident, $kernel:ident) => {
        #[allow(unsafe_code)]
        fn $one(w: &[u8], x: &[Q8Block]) -> f32 {
            // SAFETY: `q8_kernels` hands this out only after
            // `avx2_available()` said the CPU has AVX2 and F16C.
            let [y] = unsafe { avx2::$kernel::<1>(w, [x]) };
            y
        }
        #[allow(unsafe_code)]
        fn $four(w: &[u8], xs: [&[Q8Block]; 4]) -> [f32; 4] {
            // SAFETY: as above.
            unsafe { avx2::$kernel::<4>(w, xs) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
avx2_wrappers!(avx2_q4_0, avx2_q4_0_x4, q4_0);
#[cfg(target_arch = "x86_64")]
avx2_wrappers!(avx2_q4_1, avx2_q4_1_x4, q4_1);
#[cfg(target_arch = "x86_64")]
avx2_wrappers!(avx2_q8_0, avx2_q8_0_x4, q8_0);
