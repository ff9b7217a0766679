//! GGML tensor types: block geometry and dequantisation to f32.
//!
//! Block layouts follow ggml's `ggml-common.h`. Every quantised type stores
//! `block_size` values in `type_size` bytes; scales are little-endian f16.

use half::{bf16, f16};

use super::GgufError;

/// A GGML tensor element type, by its id in the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// The type with GGUF id `id`, if it is one we know the geometry of.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// `(values per block, bytes per block)`.
    pub fn block_geometry(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            F64 => (1, 8),
            IQ1_M => (256, 56),
            BF16 => (1, 2),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            MXFP4 => (32, 17),
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        self.block_geometry().0
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q6_K)
    }

    /// Name as ggml spells it.
    pub fn name(self) -> String {
        format!("{self:?}")
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantises `bytes` (whole blocks of `ty`) into `out`, which must hold
/// exactly the number of values those blocks encode.
///
/// `tensor` only names the tensor in errors.
pub fn dequantize(
    ty: GgmlType,
    bytes: &[u8],
    out: &mut [f32],
    tensor: &str,
) -> Result<(), GgufError> {
    let (block, type_size) = ty.block_geometry();
    if !out.len().is_multiple_of(block) || bytes.len() != out.len() / block * type_size {
        return Err(GgufError::TensorSize {
            tensor: tensor.to_owned(),
            detail: format!(
                "{} bytes of {ty:?} cannot hold {} values",
                bytes.len(),
                out.len()
            ),
        });
    }
    let blocks = bytes
        .chunks_exact(type_size)
        .zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
                    *yi = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let (lo, hi) = y.split_at_mut(16);
                for (j, &q) in b[2..18].iter().enumerate() {
                    lo[j] = (f32::from(q & 0x0f) - 8.0) * d;
                    hi[j] = (f32::from(q >> 4) - 8.0) * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let (lo, hi) = y.split_at_mut(16);
                for (j, &q) in b[4..20].iter().enumerate() {
                    lo[j] = f32::from(q & 0x0f) * d + m;
                    hi[j] = f32::from(q >> 4) * d + m;
                }
            }
        }
        GgmlType::Q4_K => {
            for (b, y) in blocks {
                dequantize_q4_k(b, y);
            }
        }
        GgmlType::Q6_K => {
            for (b, y) in blocks {
                dequantize_q6_k(b, y);
            }
        }
        other => {
            return Err(GgufError::UnsupportedType {
                tensor: tensor.to_owned(),
                ggml_type: other.name(),
            });
        }
    }
    Ok(())
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed 6-bit values of a
/// K-quant block.
fn k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`, 8 sub-blocks of 32.
fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
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

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let d = f16::from_le_bytes([d[0], d[1]]).to_f32();
    for half in 0..2 {
        let ql = &ql[64 * half..];
        let qh = &qh[32 * half..];
        let sc = &scales[8 * half..];
        let out = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |i: usize| d * f32::from(sc[i] as i8);
            out[l] = s(is) * q1 as f32;
            out[l + 32] = s(is + 2) * q2 as f32;
            out[l + 64] = s(is + 4) * q3 as f32;
            out[l + 96] = s(is + 6) * q4 as f32;
        }
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
        dequantize(GgmlType::Q8_0, &block, &mut out, "t").unwrap();
        assert_eq!(&out[..4], &[-1.0, 0.0, 1.5, 0.0]);
    }

    #[test]
    fn q4_1_by_hand() {
        // d = 1.0 (0x3c00), m = -8.0 (0xc800); byte 0x51: low nibble 1, high 5.
        let mut block = vec![0x00, 0x3c, 0x00, 0xc8, 0x51];
        block.resize(20, 0);
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &block, &mut out, "t").unwrap();
        assert_eq!((out[0], out[16]), (-7.0, -3.0));
        assert_eq!((out[1], out[17]), (-8.0, -8.0));
    }

    #[test]
    fn wrong_sizes_and_unsupported_types_are_errors() {
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out, "w"),
            Err(GgufError::TensorSize { .. })
        ));
        let err = dequantize(
            GgmlType::Q5_K,
            &[0u8; 176],
            &mut [0f32; 256],
            "blk.0.ffn_up.weight",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor blk.0.ffn_up.weight has type Q5_K, which is not supported"
        );
    }
}
