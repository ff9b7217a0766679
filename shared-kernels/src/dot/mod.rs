//! One row of weights times one row of activations, per format, with the
//! instruction set chosen once at run time.

pub(crate) mod portable;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

use std::sync::OnceLock;

use std::ops::Range;

use crate::act::Activations;
use crate::disjoint::Disjoint;
use crate::format::{Format, QMatrix};

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

/// Output columns `columns` of `w` times every row of `x` (Q8 or Q8K, as
/// the format takes), written to `out[r · w.rows() + o]`; the caller hands
/// each task columns no other task has (the kernel writes there through
/// [`Disjoint`]). Each `(row, column)` result is the same whatever the other
/// rows and columns are (the SIMD kernels group rows in fours to share
/// unpacked weights, with each row's arithmetic unchanged).
pub(crate) type Columns = fn(&QMatrix, Range<usize>, &Activations, &Disjoint<'_>);
/// A weight row times an f32 activation row.
pub(crate) type DotF32 = fn(&[u8], &[f32]) -> f32;

/// The portable kernel over columns.
#[allow(unsafe_code)]
fn portable_columns(w: &QMatrix, columns: Range<usize>, x: &Activations, out: &Disjoint<'_>) {
    let (m, n) = (x.rows(), w.rows());
    for o in columns {
        let row = w.row(o);
        for r in 0..m {
            let y = match w.format() {
                Format::Q4_K => portable::q4_k(row, x.q8k_row(r)),
                Format::Q6_K => portable::q6_k(row, x.q8k_row(r)),
                format => portable::q8_family(format, row, x.q8_row(r)),
            };
            // SAFETY: the columns handed to a kernel belong to its task alone.
            unsafe { out.set(r * n + o, y) };
        }
    }
}

/// The kernel over columns of a format that takes quantised activations.
pub(crate) fn columns_kernel(isa: Isa, format: Format) -> Option<Columns> {
    if !matches!(
        format,
        Format::Q4_0 | Format::Q4_1 | Format::Q8_0 | Format::Q4_K | Format::Q6_K
    ) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && avx2_available() {
        return Some(match format {
            Format::Q4_0 => avx2_q4_0,
            Format::Q4_1 => avx2_q4_1,
            Format::Q8_0 => avx2_q8_0,
            Format::Q4_K => avx2_q4_k,
            _ => avx2_q6_k,
        });
    }
    let _ = isa;
    Some(portable_columns)
}

/// The kernel of a format that takes f32 activations.
pub(crate) fn f32_kernel(format: Format) -> Option<DotF32> {
    match format {
        Format::F32 => Some(|w, x| portable::float(w, x, false)),
        Format::F16 => Some(|w, x| portable::float(w, x, true)),
        _ => None,
    }
}

/// A safe wrapper of an AVX2 kernel over columns.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_wrapper {
    ($name:ident, $kernel:path) => {
        #[allow(unsafe_code)]
        fn $name(w: &QMatrix, columns: Range<usize>, x: &Activations, out: &Disjoint<'_>) {
            // SAFETY: `columns_kernel` hands this out only after
            // `avx2_available()` said the CPU has AVX2 and F16C.
            unsafe { $kernel(w, columns, x, out) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
avx2_wrapper!(avx2_q4_0, avx2::columns::<0>);
#[cfg(target_arch = "x86_64")]
avx2_wrapper!(avx2_q4_1, avx2::columns::<1>);
#[cfg(target_arch = "x86_64")]
avx2_wrapper!(avx2_q8_0, avx2::columns::<2>);
#[cfg(target_arch = "x86_64")]
avx2_wrapper!(avx2_q4_k, avx2::k_columns::<false>);
#[cfg(target_arch = "x86_64")]
avx2_wrapper!(avx2_q6_k, avx2::k_columns::<true>);
