//! Weight formats as GGUF stores them, and matrices kept in them.
//!
//! Block layouts follow ggml's `ggml-common.h`; every scale is a
//! little-endian f16. A [`QMatrix`] holds the file's bytes unchanged: the
//! kernels read the blocks directly, so a model costs in memory what it costs
//! on disk.

use half::f16;

use crate::KernelError;

/// A weight format the kernels multiply directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Format {
    /// Plain f32.
    F32,
    /// Plain IEEE half.
    F16,
    /// `d: f16, qs: [u8; 16]`: 32 values `d · (nibble − 8)`.
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`: 32 values `d · nibble + m`.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`: 32 values `d · q`.
    Q8_0,
    /// `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 256 values in 8
    /// sub-blocks of 32, each `d · sc · nibble − dmin · m` with 6-bit `sc`, `m`.
    Q4_K,
    /// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: 256 values
    /// in 16 sub-blocks of 16, each `d · sc · (q − 32)` with 6-bit `q`.
    Q6_K,
}

/// How the activations a format is multiplied with are stored (see
/// [`crate::act`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActKind {
    /// f32 as they are (for f32 and f16 weights).
    F32,
    /// 8-bit blocks of 32 values (for Q4_0, Q4_1, Q8_0).
    Q8,
    /// 8-bit blocks of 256 values with sums per 16 (for the K formats).
    Q8K,
}

impl Format {
    /// `(values per block, bytes per block)`.
    pub const fn block(self) -> (usize, usize) {
        match self {
            Format::F32 => (1, 4),
            Format::F16 => (1, 2),
            Format::Q4_0 => (32, 18),
            Format::Q4_1 => (32, 20),
            Format::Q8_0 => (32, 34),
            Format::Q4_K => (256, 144),
            Format::Q6_K => (256, 210),
        }
    }

    /// The activations this format's kernel takes.
    pub const fn activations(self) -> ActKind {
        match self {
            Format::F32 | Format::F16 => ActKind::F32,
            Format::Q4_0 | Format::Q4_1 | Format::Q8_0 => ActKind::Q8,
            Format::Q4_K | Format::Q6_K => ActKind::Q8K,
        }
    }

    /// Bytes that `n` values take (`n` a whole number of blocks).
    pub const fn bytes_for(self, n: usize) -> usize {
        let (values, bytes) = self.block();
        n / values * bytes
    }

    /// Dequantises `bytes` (whole blocks) into `out`, which must hold exactly
    /// the values those blocks encode.
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
        let (block, size) = self.block();
        if !out.len().is_multiple_of(block) || bytes.len() != out.len() / block * size {
            return Err(KernelError::Size {
                format: self,
                bytes: bytes.len(),
                values: out.len(),
            });
        }
        let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(block));
        match self {
            Format::F32 => {
                for (b, y) in blocks {
                    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Format::F16 => {
                for (b, y) in blocks {
                    y[0] = f16_at(b, 0);
                }
            }
            Format::Q8_0 => {
                for (b, y) in blocks {
                    let d = f16_at(b, 0);
                    for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
                        *yi = f32::from(q as i8) * d;
                    }
                }
            }
            Format::Q4_0 => {
                for (b, y) in blocks {
                    let d = f16_at(b, 0);
                    let (lo, hi) = y.split_at_mut(16);
                    for (j, &q) in b[2..18].iter().enumerate() {
                        lo[j] = (f32::from(q & 0x0f) - 8.0) * d;
                        hi[j] = (f32::from(q >> 4) - 8.0) * d;
                    }
                }
            }
            Format::Q4_1 => {
                for (b, y) in blocks {
                    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                    let (lo, hi) = y.split_at_mut(16);
                    for (j, &q) in b[4..20].iter().enumerate() {
                        lo[j] = f32::from(q & 0x0f) * d + m;
                        hi[j] = f32::from(q >> 4) * d + m;
                    }
                }
            }
            Format::Q4_K => {
                for (b, y) in blocks {
                    dequantize_q4_k(b, y);
                }
            }
            Format::Q6_K => {
                for (b, y) in blocks {
                    dequantize_q6_k(b, y);
                }
            }
        }
        Ok(())
    }
}

/// The f16 at byte `at` of `bytes`, as f32 (exact).
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed 6-bit values of a
/// Q4_K block.
pub(crate) fn k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// The 6-bit value `l` (0..32) of quarter `quarter` (0..4) in half `half`
/// (0..2) of a Q6_K block, 0..64; its element is `128·half + 32·quarter + l`.
pub(crate) fn q6_k_value(b: &[u8], half: usize, quarter: usize, l: usize) -> i32 {
    let ql = &b[64 * half..64 * half + 64];
    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
    let low = match quarter {
        0 => ql[l] & 0x0f,
        1 => ql[l + 32] & 0x0f,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    let high = (qh[l] >> (2 * quarter)) & 3;
    i32::from(low | (high << 4))
}

fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    // Each 32 bytes of qs hold two sub-blocks: low nibbles, then high nibbles.
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = k_scale_min(2 * chunk, scales);
        let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * f32::from(q[l] & 0x0f) - min1;
            hi[l] = d2 * f32::from(q[l] >> 4) - min2;
        }
    }
}

fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    let scales = &b[192..208];
    for half in 0..2 {
        for quarter in 0..4 {
            for l in 0..32 {
                let element = 128 * half + 32 * quarter + l;
                let scale = d * f32::from(scales[element / 16] as i8);
                y[element] = scale * (q6_k_value(b, half, quarter, l) - 32) as f32;
            }
        }
    }
}

/// A weight matrix of `rows` outputs by `cols` inputs, each row a run of
/// blocks as in the GGUF file (GGUF's `dims = [cols, rows]`).
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl QMatrix {
    /// Wraps `data`, checking that it holds exactly `rows` rows of `cols`
    /// values in `format`.
    pub fn new(
        format: Format,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, KernelError> {
        let (block, _) = format.block();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(KernelError::Shape(format!(
                "a row of {cols} values is not a whole number of {format:?} blocks of {block}"
            )));
        }
        let row_bytes = format.bytes_for(cols);
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(KernelError::Size {
                format,
                bytes: data.len(),
                values: rows.saturating_mul(cols),
            });
        }
        Ok(QMatrix {
            format,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// The format of the blocks.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Outputs (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs (values per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` dequantised into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::Shape(format!(
                "row {r} of a matrix of {} rows",
                self.rows
            )));
        }
        self.format.dequantize(self.row(r), out)
    }

    /// Stacks matrices with the same format and columns into one whose rows
    /// are theirs in order (e.g. Q, K and V projections, multiplied at once).
    pub fn stack(parts: &[QMatrix]) -> Result<QMatrix, KernelError> {
        let first = parts
            .first()
            .ok_or_else(|| KernelError::Shape("nothing to stack".into()))?;
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            if p.format != first.format || p.cols != first.cols {
                return Err(KernelError::Shape(format!(
                    "cannot stack {:?} × {} with {:?} × {}",
                    p.format, p.cols, first.format, first.cols
                )));
            }
            data.extend_from_slice(&p.data);
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        QMatrix::new(first.format, rows, first.cols, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_by_hand() {
        // d = 0.5 (f16 0x3800), values -2, 0, 3, then zeros.
        let mut block = vec![0x00, 0x38, 0xfe, 0x00, 0x03];
        block.resize(34, 0);
        let mut out = [1.0f32; 32];
        Format::Q8_0.dequantize(&block, &mut out).unwrap();
        assert_eq!(&out[..4], &[-1.0, 0.0, 1.5, 0.0]);
    }

    #[test]
    fn q4_1_by_hand() {
        // d = 1.0 (0x3c00), m = -8.0 (0xc800); byte 0x51: low nibble 1, high 5.
        let mut block = vec![0x00, 0x3c, 0x00, 0xc8, 0x51];
        block.resize(20, 0);
        let mut out = [0f32; 32];
        Format::Q4_1.dequantize(&block, &mut out).unwrap();
        assert_eq!((out[0], out[16]), (-7.0, -3.0));
        assert_eq!((out[1], out[17]), (-8.0, -8.0));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut out = [0f32; 32];
        assert!(matches!(
            Format::Q8_0.dequantize(&[0u8; 33], &mut out),
            Err(KernelError::Size { .. })
        ));
        assert!(QMatrix::new(Format::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(QMatrix::new(Format::Q4_1, 2, 48, vec![0; 60]).is_err());
        assert!(QMatrix::new(Format::Q4_1, 2, 0, vec![]).is_err());
        let m = QMatrix::new(Format::Q4_1, 2, 64, vec![0; 80]).unwrap();
        assert!(m.dequantize_row(2, &mut [0f32; 64]).is_err());
    }

    #[test]
    fn stacking_keeps_rows_in_order() {
        let a = QMatrix::new(Format::Q8_0, 1, 32, vec![1; 34]).unwrap();
        let b = QMatrix::new(Format::Q8_0, 2, 32, vec![2; 68]).unwrap();
        let s = QMatrix::stack(&[a, b.clone()]).unwrap();
        assert_eq!((s.rows(), s.row(0)[0], s.row(2)[0]), (3, 1, 2));
        let c = QMatrix::new(Format::Q4_0, 1, 32, vec![0; 18]).unwrap();
        assert!(QMatrix::stack(&[b, c]).is_err());
    }
}
