//! Weight formats as GGUF stores them, and matrices kept in them.
//!
//! Block layouts follow ggml's `ggml-common.h`; every scale is a
//! little-endian f16. A [`QMatrix`] holds the file's blocks, byte for byte,
//! so a model costs in memory what it costs on disk. The 32-value formats
//! (Q4_0, Q4_1, Q8_0) are rearranged within each row into groups of
//! [`GROUP`] blocks (the last group of a row may be shorter) for the SIMD
//! kernels: the group's scales side by side (one vector load gives eight),
//! then its quantised values by pairs of blocks, so that one vector holds the
//! same half of two blocks (see [`lane_of`]).

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

/// Blocks per group of the interleaved layout.
pub const GROUP: usize = 8;

/// The lane (0..8) that block `j` (0..8) of a group is summed in, and the
/// position of its scales in the group: pair `p` of blocks `(2p, 2p + 1)`
/// goes to lanes `p` and `4 + p`, the order a vector of pairs reduces to.
pub const fn lane_of(j: usize) -> usize {
    (j % 2) * 4 + j / 2
}

/// The block of a group whose scales sit at `lane` (inverse of [`lane_of`]).
pub const fn block_of_lane(lane: usize) -> usize {
    (lane % 4) * 2 + lane / 4
}

/// Whether `format` is kept in interleaved groups.
pub(crate) const fn interleaved(format: Format) -> bool {
    matches!(format, Format::Q4_0 | Format::Q4_1 | Format::Q8_0)
}

/// Bytes of a block's scales in the file's layout (`d`, and `m` for Q4_1).
pub(crate) const fn scale_bytes(format: Format) -> usize {
    match format {
        Format::Q4_1 => 4,
        _ => 2,
    }
}

/// Bytes of one pair of blocks' values in a group.
pub(crate) const fn pair_bytes(format: Format) -> usize {
    match format {
        Format::Q8_0 => 64,
        _ => 32,
    }
}

/// Where a group of `n` blocks (8, or fewer at the end of a row) keeps its
/// parts, relative to its start: the blocks' `d` in block order, then (Q4_1)
/// their `m`, then the values by pairs, then an odd last block's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupLayout {
    /// Blocks in the group.
    pub(crate) n: usize,
    /// Start of the `m` array (Q4_1).
    pub(crate) mins: usize,
    /// Start of the values (pair 0).
    pub(crate) values: usize,
    /// Bytes per pair.
    pub(crate) pair: usize,
}

impl GroupLayout {
    pub(crate) const fn new(format: Format, n: usize) -> GroupLayout {
        GroupLayout {
            n,
            mins: 2 * n,
            values: scale_bytes(format) * n,
            pair: pair_bytes(format),
        }
    }

    /// Where block `j` keeps its values, as byte ranges in element order: a
    /// Q4 block's 16 packed bytes; a Q8_0 block's first and last 16 values.
    /// A pair holds the same half of both blocks side by side (Q8_0:
    /// `a[0..16], b[0..16], a[16..32], b[16..32]`); an odd last block is alone.
    pub(crate) fn value_ranges(&self, format: Format, j: usize) -> [std::ops::Range<usize>; 2] {
        let in_pair = j / 2 < self.n / 2;
        let base = self.values + (j / 2) * self.pair + if in_pair { 16 * (j % 2) } else { 0 };
        match (format, in_pair) {
            (Format::Q8_0, true) => [base..base + 16, base + 32..base + 48],
            (Format::Q8_0, false) => [base..base + 16, base + 16..base + 32],
            _ => [base..base + 16, base + 16..base + 16],
        }
    }
}

/// Row `src` (file layout) rearranged into groups, appended to `out`.
fn interleave_row(format: Format, src: &[u8], out: &mut Vec<u8>) {
    let (_, size) = format.block();
    for blocks in src.chunks(GROUP * size) {
        let n = blocks.len() / size;
        let layout = GroupLayout::new(format, n);
        let start = out.len();
        out.resize(start + blocks.len(), 0);
        let group = &mut out[start..];
        for (j, block) in blocks.chunks_exact(size).enumerate() {
            group[2 * j..2 * j + 2].copy_from_slice(&block[0..2]);
            if format == Format::Q4_1 {
                group[layout.mins + 2 * j..layout.mins + 2 * j + 2].copy_from_slice(&block[2..4]);
            }
            let mut values = &block[scale_bytes(format)..];
            for range in layout.value_ranges(format, j) {
                let (now, rest) = values.split_at(range.len());
                group[range].copy_from_slice(now);
                values = rest;
            }
        }
    }
}

/// Block `b` of an interleaved row, back in the file's layout.
fn block_from_interleaved(format: Format, row: &[u8], b: usize, out: &mut [u8]) {
    let (_, size) = format.block();
    let blocks = row.len() / size;
    let (g, j) = (b / GROUP, b % GROUP);
    let n = GROUP.min(blocks - g * GROUP);
    let layout = GroupLayout::new(format, n);
    let group = &row[g * GROUP * size..g * GROUP * size + n * size];
    out[0..2].copy_from_slice(&group[2 * j..2 * j + 2]);
    if format == Format::Q4_1 {
        out[2..4].copy_from_slice(&group[layout.mins + 2 * j..layout.mins + 2 * j + 2]);
    }
    let mut at = scale_bytes(format);
    for range in layout.value_ranges(format, j) {
        let len = range.len();
        out[at..at + len].copy_from_slice(&group[range]);
        at += len;
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
    /// Takes `data` (rows as GGUF stores them), checking that it holds
    /// exactly `rows` rows of `cols` values in `format`, and arranges each row
    /// for the kernels.
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
        let data = if interleaved(format) {
            let mut out = Vec::with_capacity(data.len());
            for row in data.chunks_exact(row_bytes) {
                interleave_row(format, row, &mut out);
            }
            out
        } else {
            data
        };
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

    /// The blocks of row `r`, as the kernels read them.
    pub(crate) fn row(&self, r: usize) -> &[u8] {
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
        if !interleaved(self.format) {
            return self.format.dequantize(self.row(r), out);
        }
        let (values, size) = self.format.block();
        if out.len() != self.cols {
            return Err(KernelError::Size {
                format: self.format,
                bytes: self.row_bytes,
                values: out.len(),
            });
        }
        let mut block = [0u8; 34];
        for (b, y) in out.chunks_exact_mut(values).enumerate() {
            block_from_interleaved(self.format, self.row(r), b, &mut block[..size]);
            self.format.dequantize(&block[..size], y)?;
        }
        Ok(())
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
        // Rows are arranged independently: stacking them keeps the layout.
        Ok(QMatrix {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            row_bytes: first.row_bytes,
            data,
        })
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
    fn interleaving_keeps_every_block() {
        for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
            let (values, size) = format.block();
            // 2 whole groups and a short one of 3 blocks; every byte different
            // enough to catch a misplaced one, scales kept finite.
            let blocks = 2 * GROUP + 3;
            let mut data: Vec<u8> = (0..blocks * size).map(|i| (i * 7 % 251) as u8).collect();
            for b in 0..blocks {
                data[b * size + 1] = 0x30;
                if format == Format::Q4_1 {
                    data[b * size + 3] = 0x30;
                }
            }
            let m = QMatrix::new(format, 1, blocks * values, data.clone()).unwrap();
            assert_ne!(m.row(0), &data[..]);
            let mut expected = vec![0f32; blocks * values];
            format.dequantize(&data, &mut expected).unwrap();
            let mut got = vec![0f32; blocks * values];
            m.dequantize_row(0, &mut got).unwrap();
            assert_eq!(got, expected, "{format:?}");
        }
        for j in 0..GROUP {
            assert_eq!(block_of_lane(lane_of(j)), j);
        }
    }

    #[test]
    fn stacking_keeps_rows_in_order() {
        let a = QMatrix::new(Format::Q8_0, 1, 32, vec![1; 34]).unwrap();
        let b = QMatrix::new(Format::Q8_0, 2, 32, vec![2; 68]).unwrap();
        let s = QMatrix::stack(&[a, b.clone()]).unwrap();
        assert_eq!((s.rows(), s.row(0)[0], s.row(2)[0]), (3, 1, 2));
        let mut row = [0f32; 32];
        s.dequantize_row(2, &mut row).unwrap();
        let mut expected = [0f32; 32];
        b.dequantize_row(1, &mut expected).unwrap();
        assert_eq!(row, expected);
        let c = QMatrix::new(Format::Q4_0, 1, 32, vec![0; 18]).unwrap();
        assert!(QMatrix::stack(&[b, c]).is_err());
    }
}
