//! GGUF (v2 and v3) files: header, metadata, tensor directory, tensor data.
//!
//! The header is parsed from any [`Read`]; every count and length in it is
//! checked against the bytes left in the file before anything is allocated, so a
//! malformed or hostile file gives a [`GgufError`], never a panic or a huge
//! allocation. Tensor data is read lazily, one tensor at a time, through
//! [`GgufSource`] — a file on native targets, a byte buffer in the browser.

mod types;

use std::collections::BTreeMap;
use std::io::{self, Read};

use thiserror::Error;

pub use types::{GgmlType, dequantize};

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on tensor rank.
const MAX_DIMS: u32 = 4;
/// Longest key or tensor name we accept (ggml itself uses 64 for names).
const MAX_NAME_LEN: u64 = 1024;
/// Deepest nesting of arrays in metadata.
const MAX_ARRAY_DEPTH: u32 = 4;

/// What can go wrong reading a GGUF file.
#[derive(Debug, Error)]
pub enum GgufError {
    /// Not a GGUF file.
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A GGUF version we do not read.
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends before the structure it announces.
    #[error("file truncated while reading {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A count or length that cannot fit in the file.
    #[error("{what} of {value} does not fit in the {remaining} bytes left in the file")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Bytes left.
        remaining: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: &'static str,
    },
    /// An unknown metadata value type.
    #[error("metadata key {key} has unknown value type {type_id}")]
    BadValueType {
        /// The key.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// Arrays nested deeper than we accept.
    #[error("metadata key {key} nests arrays too deeply")]
    TooDeep {
        /// The key.
        key: String,
    },
    /// The same metadata key or tensor name twice.
    #[error("duplicate {what} {name}")]
    Duplicate {
        /// "key" or "tensor".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A tensor type id we do not know.
    #[error("tensor {tensor} has unknown type id {type_id}")]
    UnknownType {
        /// The tensor.
        tensor: String,
        /// The id found.
        type_id: u32,
    },
    /// A known tensor type that this code cannot dequantise.
    #[error("tensor {tensor} has type {ggml_type}, which is not supported")]
    UnsupportedType {
        /// The tensor.
        tensor: String,
        /// The type's name.
        ggml_type: String,
    },
    /// A tensor whose shape, size or position is impossible.
    #[error("tensor {tensor}: {detail}")]
    TensorSize {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor the model needs is absent.
    #[error("tensor {0} not found")]
    MissingTensor(String),
    /// A metadata key the model needs is absent.
    #[error("metadata key {0} not found")]
    MissingKey(String),
    /// A metadata key with a value of the wrong type.
    #[error("metadata key {key} should be {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Reading the file failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The key-value metadata of a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct Metadata(BTreeMap<String, Value>);

impl From<BTreeMap<String, Value>> for Metadata {
    fn from(map: BTreeMap<String, Value>) -> Self {
        Metadata(map)
    }
}

impl Metadata {
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The value of a required key, converted by `as_type`.
    fn required<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        as_type: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, GgufError> {
        let value = self
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))?;
        as_type(value).ok_or_else(|| GgufError::WrongType {
            key: key.to_owned(),
            expected,
        })
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, "an unsigned integer", Value::as_u64)
    }

    /// A required integer that must fit in `usize` (and be at most `max`).
    pub fn usize_at_most(&self, key: &str, max: usize) -> Result<usize, GgufError> {
        self.required(
            key,
            "an unsigned integer no larger than the implementation allows",
            |v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= max)
            },
        )
    }

    /// A required float.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        self.required(key, "a number", Value::as_f64)
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, "a string", Value::as_str)
    }

    /// A required array.
    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        self.required(key, "an array", Value::as_array)
    }
}

/// Where a tensor lives in the file and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as GGUF lists them: `dims[0]` is the fastest-varying (a row).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Random access to the bytes of a GGUF file.
pub trait GgufSource {
    /// Fills `buf` with the bytes at `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl GgufSource for std::fs::File {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::io::Seek;
        self.seek(io::SeekFrom::Start(offset))?;
        self.read_exact(buf)
    }
}

impl<T: AsRef<[u8]>> GgufSource for io::Cursor<T> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.get_ref().as_ref();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = bytes.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A parsed GGUF file: its directory plus the source to read tensors from.
pub struct Gguf<S> {
    /// Format version (2 or 3).
    pub version: u32,
    /// Key-value metadata.
    pub metadata: Metadata,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    source: S,
}

impl Gguf<std::fs::File> {
    /// Opens a GGUF file and reads its header; tensors are read on demand.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let header = Header::read(io::BufReader::new(&file), len)?;
        Ok(header.with_source(file))
    }
}

impl<T: AsRef<[u8]>> Gguf<io::Cursor<T>> {
    /// Reads a GGUF file held in memory.
    pub fn from_bytes(bytes: T) -> Result<Self, GgufError> {
        let len = bytes.as_ref().len() as u64;
        let header = Header::read(bytes.as_ref(), len)?;
        Ok(header.with_source(io::Cursor::new(bytes)))
    }
}

impl<S: GgufSource> Gguf<S> {
    /// The directory entry of `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_bytes(&mut self, name: &str) -> Result<(TensorInfo, Vec<u8>), GgufError> {
        let info = self.tensor_info(name)?.clone();
        let len = usize::try_from(info.size).map_err(|_| GgufError::TensorSize {
            tensor: info.name.clone(),
            detail: "too large for this platform".into(),
        })?;
        let mut buf = vec![0u8; len];
        self.source.read_exact_at(info.offset, &mut buf)?;
        Ok((info, buf))
    }

    /// Tensor `name` dequantised to f32, with its GGUF dims.
    pub fn tensor_f32(&mut self, name: &str) -> Result<(Vec<u64>, Vec<f32>), GgufError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                tensor: info.name,
                ggml_type: info.ggml_type.name(),
            });
        }
        let n = usize::try_from(info.n_elements()).map_err(|_| GgufError::TensorSize {
            tensor: info.name.clone(),
            detail: "too many elements for this platform".into(),
        })?;
        let mut out = vec![0f32; n];
        dequantize(info.ggml_type, &bytes, &mut out, &info.name)?;
        Ok((info.dims, out))
    }
}

/// The header of a GGUF file, before a source is attached.
struct Header {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

impl Header {
    fn with_source<S>(self, source: S) -> Gguf<S> {
        Gguf {
            version: self.version,
            metadata: self.metadata,
            tensors: self.tensors,
            source,
        }
    }

    fn read<R: Read>(reader: R, file_len: u64) -> Result<Header, GgufError> {
        let mut r = Reader {
            inner: reader,
            pos: 0,
            len: file_len,
        };
        let magic: [u8; 4] = r.array("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = u32::from_le_bytes(r.array("version")?);
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes;
        // each tensor entry at least 8 + 4 + 8 + 4 + 8.
        r.check_count("metadata count", n_kv, 13)?;
        r.check_count("tensor count", n_tensors, 32)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key", MAX_NAME_LEN)?;
            let type_id = u32::from_le_bytes(r.array("metadata value type")?);
            let value = r.value(&key, type_id, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Duplicate {
                    what: "key",
                    name: key,
                });
            }
        }
        let metadata = Metadata(metadata);
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::WrongType {
                        key: "general.alignment".into(),
                        expected: "a power of two up to 1 MiB",
                    });
                }
            },
        };

        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name", MAX_NAME_LEN)?;
            let n_dims = u32::from_le_bytes(r.array("tensor rank")?);
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::TensorSize {
                    tensor: name,
                    detail: format!("rank {n_dims}"),
                });
            }
            let dims = (0..n_dims)
                .map(|_| r.u64("tensor dimension"))
                .collect::<Result<Vec<_>, _>>()?;
            let type_id = u32::from_le_bytes(r.array("tensor type")?);
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
                tensor: name.clone(),
                type_id,
            })?;
            let offset = r.u64("tensor offset")?;
            raw.push((name, dims, ggml_type, offset));
        }

        let data_start = r.pos.div_ceil(alignment) * alignment;
        let data_len = file_len.saturating_sub(data_start);
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, ggml_type, offset) in raw {
            let size = tensor_size(&name, &dims, ggml_type)?;
            let bad = |detail: String| GgufError::TensorSize {
                tensor: name.clone(),
                detail,
            };
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            match offset.checked_add(size) {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(bad(format!(
                        "{size} bytes at offset {offset} run past the {data_len} bytes of tensor data"
                    )));
                }
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::Duplicate {
                    what: "tensor",
                    name,
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset: data_start + offset,
                size,
            });
        }
        Ok(Header {
            version,
            metadata,
            tensors,
        })
    }
}

/// Bytes taken by a tensor of `dims` and `ty`, checking that rows are whole blocks.
fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |detail: String| GgufError::TensorSize {
        tensor: name.to_owned(),
        detail,
    };
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let (block, type_size) = ty.block_geometry();
    if !dims[0].is_multiple_of(block as u64) {
        return Err(bad(format!(
            "row of {} values is not a whole number of {block}-value blocks",
            dims[0]
        )));
    }
    (n / block as u64)
        .checked_mul(type_size as u64)
        .ok_or_else(|| bad("size overflows".into()))
}

/// A bounds-checked little-endian reader that knows how much of the file is left.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn check_count(&self, what: &'static str, count: u64, min_each: u64) -> Result<(), GgufError> {
        if count.saturating_mul(min_each) > self.remaining() {
            return Err(GgufError::TooLarge {
                what,
                value: count,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    fn fill(&mut self, what: &'static str, buf: &mut [u8]) -> Result<(), GgufError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => GgufError::Truncated { what },
            _ => GgufError::Io(e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(what, &mut buf)?;
        Ok(buf)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &'static str, max: u64) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > max.min(self.remaining()) {
            return Err(GgufError::TooLarge {
                what,
                value: len,
                remaining: self.remaining(),
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.fill(what, &mut buf)?;
        String::from_utf8(buf).map_err(|_| GgufError::InvalidUtf8 { what })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: u32) -> Result<Value, GgufError> {
        const WHAT: &str = "metadata value";
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array(WHAT)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(WHAT)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(WHAT)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(WHAT)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(WHAT)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(WHAT)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(WHAT)?)),
            7 => Value::Bool(u8::from_le_bytes(self.array(WHAT)?) != 0),
            8 => Value::String(self.string("metadata string", u64::MAX)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep {
                        key: key.to_owned(),
                    });
                }
                let elem_type = u32::from_le_bytes(self.array("array element type")?);
                let count = self.u64("array length")?;
                let min_each = match elem_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => 8,  // a string is at least its length
                    9 => 12, // an array is at least its type and length
                    other => {
                        return Err(GgufError::BadValueType {
                            key: key.to_owned(),
                            type_id: other,
                        });
                    }
                };
                self.check_count("array length", count, min_each)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(WHAT)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(WHAT)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(WHAT)?)),
            other => {
                return Err(GgufError::BadValueType {
                    key: key.to_owned(),
                    type_id: other,
                });
            }
        })
    }
}

#[cfg(test)]
mod tests;
