//! GGML tensor types: block geometry and dequantisation to f32 (the block
//! formats themselves live in `shared-kernels`, which multiplies them).
//!
//! Block layouts follow ggml's `ggml-common.h`. Every quantised type stores
//! `block_size` values in `type_size` bytes; scales are little-endian f16.

use half::bf16;
use shared_kernels::Format;

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

    /// The format `shared-kernels` multiplies directly, if it has one for this type.
    pub fn kernel_format(self) -> Option<Format> {
        Some(match self {
            GgmlType::F32 => Format::F32,
            GgmlType::F16 => Format::F16,
            GgmlType::Q4_0 => Format::Q4_0,
            GgmlType::Q4_1 => Format::Q4_1,
            GgmlType::Q8_0 => Format::Q8_0,
            GgmlType::Q4_K => Format::Q4_K,
            GgmlType::Q6_K => Format::Q6_K,
            _ => return None,
        })
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
    match ty {
        GgmlType::BF16 => {
            for (b, y) in bytes.chunks_exact(type_size).zip(out.iter_mut()) {
                *y = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            Ok(())
        }
        other => {
            let format = other
                .kernel_format()
                .ok_or_else(|| GgufError::UnsupportedType {
                    tensor: tensor.to_owned(),
                    ggml_type: other.name(),
                })?;
            format
                .dequantize(bytes, out)
                .map_err(|e| GgufError::TensorSize {
                    tensor: tensor.to_owned(),
                    detail: e.to_string(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
