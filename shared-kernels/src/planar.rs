//! Weight matrices in the layout the GPU kernels read.
//!
//! GGUF blocks mix f16 scales and packed integers in records of 18, 20, 34,
//! 144 or 210 bytes, which a GPU can only read a byte at a time. A
//! [`PlanarMatrix`] splits them into planes a kernel reads a word at a time,
//! and writes every block as `value = scale · code + offset`:
//!
//! | kind | formats | `codes` | `scales`, `offsets` |
//! |---|---|---|---|
//! | [`PlanarKind::Nibbles`] | Q4_0, Q4_1, Q4_K | 8 unsigned 4-bit codes per `u32` (value `j` of a row: word `j / 8`, bits `4 · (j % 8)`) | one each per 32 values |
//! | [`PlanarKind::Bytes`] | Q8_0, Q6_K | 4 signed 8-bit codes per `u32` (value `j`: word `j / 4`, bits `8 · (j % 4)`) | a scale per 16 values, no offsets |
//! | [`PlanarKind::Floats`] | F32, F16 | none | the values themselves, as f32 |
//!
//! The scales and offsets are the products ggml's dequantisation forms (for
//! Q4_0, `offset = −8 · d`; for Q4_K, `scale = d · sc`, `offset = −dmin · m`),
//! so [`PlanarMatrix::value`] equals [`Format::dequantize`] bit for bit (for
//! finite scales; `scale · code` is exact in f32 for every format). The
//! quantised kinds cost 6 (nibbles) or 10 (bytes) bits per weight.

use crate::KernelError;
use crate::format::{Format, f16_at, k_scale_min, q6_k_value};

/// How a [`PlanarMatrix`] stores its values (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanarKind {
    /// 4-bit codes, a scale and an offset per 32 values.
    Nibbles,
    /// Signed 8-bit codes, a scale per 16 values.
    Bytes,
    /// f32 values.
    Floats,
}

impl PlanarKind {
    /// The kind `format` is stored as.
    pub const fn of(format: Format) -> PlanarKind {
        match format {
            Format::Q4_0 | Format::Q4_1 | Format::Q4_K => PlanarKind::Nibbles,
            Format::Q8_0 | Format::Q6_K => PlanarKind::Bytes,
            Format::F32 | Format::F16 => PlanarKind::Floats,
        }
    }

    /// Values that share one scale (and offset).
    pub const fn scale_group(self) -> usize {
        match self {
            PlanarKind::Nibbles => 32,
            PlanarKind::Bytes => 16,
            PlanarKind::Floats => 1,
        }
    }

    /// Codes per `u32` word (0: no codes).
    pub const fn codes_per_word(self) -> usize {
        match self {
            PlanarKind::Nibbles => 8,
            PlanarKind::Bytes => 4,
            PlanarKind::Floats => 0,
        }
    }
}

/// A `rows × cols` weight matrix split into planes (see the module docs).
/// Row `r` holds output `r`'s weights over the `cols` inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanarMatrix {
    /// How the values are stored.
    pub kind: PlanarKind,
    /// Outputs.
    pub rows: usize,
    /// Inputs; a multiple of 32.
    pub cols: usize,
    /// Packed integer codes, row after row (empty for floats).
    pub codes: Vec<u32>,
    /// Scales, one per scale group, row after row (for floats: the values).
    pub scales: Vec<f32>,
    /// Offsets, one per 32 values (nibbles only; else empty).
    pub offsets: Vec<f32>,
}

/// Inputs of a planar matrix must come in whole blocks of this many (every
/// kernel works on 32 values at a time).
pub const PLANAR_BLOCK: usize = 32;

impl PlanarMatrix {
    /// Splits `data`, `rows` rows of `cols` values in `format` as GGUF stores
    /// them, into planes.
    pub fn from_gguf(
        format: Format,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, KernelError> {
        let (block, size) = format.block();
        if cols == 0 || !cols.is_multiple_of(block.max(PLANAR_BLOCK)) {
            return Err(KernelError::Shape(format!(
                "a row of {cols} values is not a whole number of {format:?} blocks of {}",
                block.max(PLANAR_BLOCK)
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
        let kind = PlanarKind::of(format);
        let values = rows * cols;
        let mut m = PlanarMatrix {
            kind,
            rows,
            cols,
            codes: Vec::with_capacity(values.checked_div(kind.codes_per_word()).unwrap_or(0)),
            scales: Vec::with_capacity(values / kind.scale_group()),
            offsets: Vec::new(),
        };
        if kind == PlanarKind::Nibbles {
            m.offsets.reserve(values / 32);
        }
        let mut codes = Codes::default();
        for b in data.chunks_exact(size) {
            match format {
                Format::F32 | Format::F16 => {
                    let mut y = [0f32];
                    format.dequantize(b, &mut y)?;
                    m.scales.push(y[0]);
                }
                Format::Q4_0 => {
                    let d = f16_at(b, 0);
                    m.scales.push(d);
                    m.offsets.push(-8.0 * d);
                    codes.nibble_block(&b[2..18], &mut m.codes);
                }
                Format::Q4_1 => {
                    m.scales.push(f16_at(b, 0));
                    m.offsets.push(f16_at(b, 2));
                    codes.nibble_block(&b[4..20], &mut m.codes);
                }
                Format::Q8_0 => {
                    let d = f16_at(b, 0);
                    m.scales.extend([d, d]);
                    for &q in &b[2..34] {
                        codes.push_byte(q as i8, &mut m.codes);
                    }
                }
                Format::Q4_K => {
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    // Each 32 bytes of codes hold two sub-blocks: low nibbles,
                    // then high nibbles.
                    for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
                        for (j, shift) in [(2 * chunk, 0), (2 * chunk + 1, 4)] {
                            let (sc, mn) = k_scale_min(j, &b[4..16]);
                            m.scales.push(d * f32::from(sc));
                            m.offsets.push(-(dmin * f32::from(mn)));
                            for &byte in q {
                                codes.push_nibble((byte >> shift) & 0x0f, &mut m.codes);
                            }
                        }
                    }
                }
                Format::Q6_K => {
                    let d = f16_at(b, 208);
                    for s in &b[192..208] {
                        m.scales.push(d * f32::from(*s as i8));
                    }
                    for half in 0..2 {
                        for quarter in 0..4 {
                            for l in 0..32 {
                                let q = q6_k_value(b, half, quarter, l) - 32;
                                codes.push_byte(q as i8, &mut m.codes);
                            }
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// The weight at row `r`, column `c`, as ggml dequantises it.
    ///
    /// # Panics
    /// If `r` or `c` is out of range.
    pub fn value(&self, r: usize, c: usize) -> f32 {
        assert!(r < self.rows && c < self.cols, "({r}, {c}) out of range");
        let j = r * self.cols + c;
        match self.kind {
            PlanarKind::Floats => self.scales[j],
            PlanarKind::Nibbles => {
                let code = (self.codes[j / 8] >> (4 * (j % 8))) & 0x0f;
                // ggml's `d · q + m` and `d₁ · q − m₁`; Q4_0's `(q − 8) · d` is
                // exact in both forms (at most 15 significant bits).
                self.scales[j / 32] * code as f32 + self.offsets[j / 32]
            }
            PlanarKind::Bytes => {
                let code = (self.codes[j / 4] >> (8 * (j % 4))) as u8 as i8;
                self.scales[j / 16] * f32::from(code)
            }
        }
    }

    /// Bytes the planes take.
    pub fn bytes(&self) -> usize {
        4 * (self.codes.len() + self.scales.len() + self.offsets.len())
    }
}

/// Packs codes into words in order.
#[derive(Default)]
struct Codes {
    word: u32,
    filled: u32,
}

impl Codes {
    fn push_nibble(&mut self, q: u8, out: &mut Vec<u32>) {
        self.push(u32::from(q & 0x0f), 4, out);
    }

    fn push_byte(&mut self, q: i8, out: &mut Vec<u32>) {
        self.push(u32::from(q as u8), 8, out);
    }

    /// A 32-value block of 16 bytes: values 0..16 are the low nibbles, 16..32
    /// the high ones.
    fn nibble_block(&mut self, qs: &[u8], out: &mut Vec<u32>) {
        for &q in qs {
            self.push_nibble(q & 0x0f, out);
        }
        for &q in qs {
            self.push_nibble(q >> 4, out);
        }
    }

    fn push(&mut self, bits: u32, width: u32, out: &mut Vec<u32>) {
        self.word |= bits << self.filled;
        self.filled += width;
        if self.filled == 32 {
            out.push(self.word);
            (self.word, self.filled) = (0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_q4_0_block_by_hand() {
        // d = 0.5; codes 0..16 in the low nibbles, 15..0 in the high ones.
        let mut b = vec![0x00, 0x38];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let m = PlanarMatrix::from_gguf(Format::Q4_0, 1, 32, &b).unwrap();
        assert_eq!(m.kind, PlanarKind::Nibbles);
        assert_eq!(
            (m.scales.clone(), m.offsets.clone()),
            (vec![0.5], vec![-4.0])
        );
        assert_eq!(m.codes[0], 0x7654_3210);
        assert_eq!(m.codes[2], 0x89ab_cdef);
        assert_eq!(m.value(0, 0), -4.0);
        assert_eq!(m.value(0, 15), 3.5);
        assert_eq!(m.value(0, 16), 3.5);
        assert_eq!(m.bytes(), 4 * (4 + 1 + 1));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PlanarMatrix::from_gguf(Format::Q4_0, 1, 16, &[0; 9]).is_err());
        assert!(PlanarMatrix::from_gguf(Format::Q4_0, 2, 32, &[0; 18]).is_err());
        assert!(PlanarMatrix::from_gguf(Format::F32, 1, 20, &[0; 80]).is_err());
        assert!(PlanarMatrix::from_gguf(Format::Q6_K, 1, 256, &[0; 209]).is_err());
    }
}
