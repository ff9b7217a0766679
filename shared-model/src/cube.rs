//! Our CubeCL kernels for burn's GPU backends (CUDA, WebGPU): the linear
//! layers multiply weights kept quantised on the device.
//!
//! One `#[cube]` source compiles to CUDA C++ and to WGSL. A weight matrix is
//! uploaded as a [`PlanarMatrix`] (packed integer codes, an f32 scale and
//! offset per 32 or 16 values: 6 bits per weight for the 4-bit formats instead
//! of the 32 of an f32 copy). The token embeddings are looked up from the same
//! planes ([`rows`]), so a tied output head and the embeddings are one matrix.
//!
//! # Numerics and batch invariance
//!
//! Each output value `y[row, column]` is the same sum whatever the pass holds:
//! [`SPLIT`] threads take the row's 32-value blocks in turn (thread `p` takes
//! blocks `p, p + SPLIT, …`), each block contributes
//! `scale · Σ code·x + offset · Σ x` (sums over the block in order, f32), the
//! threads keep one partial sum per pass row, and the partials are added in
//! thread order. Only the *grid* grows with the number of rows (a cube takes
//! [`ROWS`] of them, and [`COLUMNS`] outputs); no row's arithmetic depends on
//! another row, so a position's logits are bit for bit the same alone, among
//! k drafts or beside other sessions — unlike a stock matmul, which picks its
//! tiling (and so its order of additions) by shape.

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, IntElement};
use cubecl::CubeCount;
use shared_kernels::{PlanarKind, PlanarMatrix};

/// Output columns one cube computes.
pub const COLUMNS: usize = 16;
/// Threads that share the reduction of one output column.
pub const SPLIT: usize = 8;
/// Rows of the pass one cube takes.
pub const ROWS: usize = 8;
/// Values per block: every kernel walks a row 32 values at a time.
const BLOCK: usize = shared_kernels::planar::PLANAR_BLOCK;

/// A weight matrix resident on a CubeCL device, in planes.
#[derive(Debug, Clone)]
pub struct CubeMatrix<R: CubeRuntime> {
    kind: PlanarKind,
    rows: usize,
    cols: usize,
    codes: CubeTensor<R>,
    scales: CubeTensor<R>,
    offsets: CubeTensor<R>,
}

impl<R: CubeRuntime> CubeMatrix<R> {
    /// Uploads `m` to `device`.
    pub fn upload(m: &PlanarMatrix, device: &R::Device) -> Self {
        let client = R::client(device);
        let upload_u32 = |values: &[u32]| {
            // An empty plane still needs a binding: one unused word.
            let values = if values.is_empty() {
                &[0u32][..]
            } else {
                values
            };
            let handle = client.create_from_slice(u32::as_bytes(values));
            CubeTensor::new_contiguous(
                client.clone(),
                device.clone(),
                Shape::new([values.len()]),
                handle,
                DType::U32,
            )
        };
        let upload_f32 = |values: &[f32]| {
            let values = if values.is_empty() {
                &[0f32][..]
            } else {
                values
            };
            let handle = client.create_from_slice(f32::as_bytes(values));
            CubeTensor::new_contiguous(
                client.clone(),
                device.clone(),
                Shape::new([values.len()]),
                handle,
                DType::F32,
            )
        };
        CubeMatrix {
            kind: m.kind,
            rows: m.rows,
            cols: m.cols,
            codes: upload_u32(&m.codes),
            scales: upload_f32(&m.scales),
            offsets: upload_f32(&m.offsets),
        }
    }

    /// Bytes the matrix takes on the device.
    pub fn bytes(&self) -> usize {
        [&self.codes, &self.scales, &self.offsets]
            .iter()
            .map(|t| t.meta.shape().num_elements() * 4)
            .sum()
    }

    /// `x [n, cols] → [n, rows]`.
    fn forward(&self, x: CubeTensor<R>) -> CubeTensor<R> {
        let x = burn_cubecl::kernel::into_contiguous(x);
        let n = x.meta.shape()[0];
        // A narrower `x` would be read out of bounds.
        assert_eq!(
            x.meta.shape()[1],
            self.cols,
            "activations of the wrong width"
        );
        let out = burn_cubecl::ops::numeric::empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([n, self.rows]),
            DType::F32,
        );
        let count = CubeCount::Static(
            self.rows.div_ceil(COLUMNS) as u32,
            n.div_ceil(ROWS) as u32,
            1,
        );
        let dim = CubeDim::new_1d((COLUMNS * SPLIT) as u32);
        let client = x.client.clone();
        let (codes, scales, offsets) = (
            self.codes.clone().into_array_arg(),
            self.scales.clone().into_array_arg(),
            self.offsets.clone().into_array_arg(),
        );
        let args = (x.into_array_arg(), out.clone().into_array_arg());
        match self.kind {
            PlanarKind::Nibbles => nibble_matmul::launch(
                &client, count, dim, args.0, codes, scales, offsets, args.1, n, self.cols,
                self.rows,
            ),
            PlanarKind::Bytes => byte_matmul::launch(
                &client, count, dim, args.0, codes, scales, args.1, n, self.cols, self.rows,
            ),
            PlanarKind::Floats => float_matmul::launch(
                &client, count, dim, args.0, scales, args.1, n, self.cols, self.rows,
            ),
        }
        out
    }
}

/// Rows `ids` of `m`, dequantised: `[ids.len(), m.cols]` (the embedding
/// lookup, from the same planes as a tied output head).
///
/// # Panics
/// If an id is not a row of `m`, or more than 65 535 rows are asked for at
/// once (a grid dimension's limit; the model's passes are far shorter).
pub fn rows<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    m: &CubeMatrix<R>,
    ids: &[u32],
    device: &R::Device,
) -> Tensor<CubeBackend<R, f32, I, BT>, 2> {
    let client = R::client(device);
    let n = ids.len();
    // Checked here: a GPU would read out of bounds.
    assert!(
        ids.iter().all(|&id| (id as usize) < m.rows),
        "row id out of range for a matrix of {} rows",
        m.rows
    );
    assert!(n <= 65_535, "{n} rows looked up at once");
    let out = burn_cubecl::ops::numeric::empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::new([n, m.cols]),
        DType::F32,
    );
    if n > 0 {
        let handle = client.create_from_slice(u32::as_bytes(ids));
        let ids = CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            Shape::new([n]),
            handle,
            DType::U32,
        );
        let count = CubeCount::Static(m.cols.div_ceil(ROW_THREADS) as u32, n as u32, 1);
        let dim = CubeDim::new_1d(ROW_THREADS as u32);
        let (ids, out_arg) = (ids.into_array_arg(), out.clone().into_array_arg());
        let (codes, scales, offsets) = (
            m.codes.clone().into_array_arg(),
            m.scales.clone().into_array_arg(),
            m.offsets.clone().into_array_arg(),
        );
        match m.kind {
            PlanarKind::Nibbles => nibble_rows::launch(
                &client, count, dim, ids, codes, scales, offsets, out_arg, m.cols,
            ),
            PlanarKind::Bytes => {
                byte_rows::launch(&client, count, dim, ids, codes, scales, out_arg, m.cols)
            }
            PlanarKind::Floats => {
                float_rows::launch(&client, count, dim, ids, scales, out_arg, m.cols)
            }
        }
    }
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Threads of a cube of the row lookups.
const ROW_THREADS: usize = 64;

/// `(row of the output, column)` of this unit; the column may be past the
/// row's end (the caller checks).
#[cube]
fn row_place() -> (usize, usize) {
    (
        CUBE_POS_Y as usize,
        CUBE_POS_X as usize * ROW_THREADS + UNIT_POS_X as usize,
    )
}

#[cube(launch)]
fn nibble_rows(
    ids: &Array<u32>,
    codes: &Array<u32>,
    scales: &Array<f32>,
    offsets: &Array<f32>,
    out: &mut Array<f32>,
    cols: usize,
) {
    let (i, c) = row_place();
    if c < cols {
        let j = ids[i] as usize * cols + c;
        let code = (codes[j / 8] >> (4 * (j % 8) as u32)) & 15u32;
        out[i * cols + c] = scales[j / BLOCK] * f32::cast_from(code) + offsets[j / BLOCK];
    }
}

#[cube(launch)]
fn byte_rows(
    ids: &Array<u32>,
    codes: &Array<u32>,
    scales: &Array<f32>,
    out: &mut Array<f32>,
    cols: usize,
) {
    let (i, c) = row_place();
    if c < cols {
        let j = ids[i] as usize * cols + c;
        out[i * cols + c] = scales[j / 16] * signed_byte(codes[j / 4], j % 4);
    }
}

#[cube(launch)]
fn float_rows(ids: &Array<u32>, values: &Array<f32>, out: &mut Array<f32>, cols: usize) {
    let (i, c) = row_place();
    if c < cols {
        out[i * cols + c] = values[ids[i] as usize * cols + c];
    }
}

/// `x [n, cols] → [n, m.rows]` on a CubeCL backend.
pub fn matmul<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    x: Tensor<CubeBackend<R, f32, I, BT>, 2>,
    m: &CubeMatrix<R>,
) -> Tensor<CubeBackend<R, f32, I, BT>, 2> {
    let x = x.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(m.forward(x)))
}

/// Where this unit works: `(column, part, first row of the cube)`.
#[cube]
fn unit_place() -> (usize, usize, usize) {
    let local = UNIT_POS_X as usize;
    (
        CUBE_POS_X as usize * COLUMNS + local / SPLIT,
        local % SPLIT,
        CUBE_POS_Y as usize * ROWS,
    )
}

/// Adds the cube's partial sums in thread order and writes each column's
/// outputs (see the module docs).
#[cube]
fn reduce_and_store(
    acc: &Array<f32>,
    out: &mut Array<f32>,
    n: usize,
    rows: usize,
    column: usize,
    part: usize,
    first_row: usize,
) {
    let mut partial = SharedMemory::<f32>::new(COLUMNS * SPLIT * ROWS);
    let local = UNIT_POS_X as usize;
    for r in 0..ROWS {
        if first_row + r < n {
            partial[r * COLUMNS * SPLIT + local] = acc[r];
        }
    }
    sync_cube();
    if part == 0 && column < rows {
        for r in 0..ROWS {
            let row = first_row + r;
            if row < n {
                let mut sum = 0.0f32;
                #[unroll]
                for p in 0..SPLIT {
                    sum += partial[r * COLUMNS * SPLIT + local + p];
                }
                out[row * rows + column] = sum;
            }
        }
    }
}

/// `ROWS` zeros.
#[cube]
fn zeros() -> Array<f32> {
    let mut acc = Array::<f32>::new(ROWS);
    #[unroll]
    for r in 0..ROWS {
        acc[r] = 0.0f32;
    }
    acc
}

/// 4-bit codes, a scale and an offset per 32 values.
#[cube(launch)]
fn nibble_matmul(
    x: &Array<f32>,
    codes: &Array<u32>,
    scales: &Array<f32>,
    offsets: &Array<f32>,
    out: &mut Array<f32>,
    n: usize,
    cols: usize,
    rows: usize,
) {
    let (column, part, first_row) = unit_place();
    let mut acc = zeros();
    if column < rows {
        let blocks = cols / BLOCK;
        for b in range_stepped(part, blocks, SPLIT) {
            let block = column * blocks + b;
            let (scale, offset) = (scales[block], offsets[block]);
            for r in 0..ROWS {
                let row = first_row + r;
                if row < n {
                    let base = row * cols + b * BLOCK;
                    let mut dot = 0.0f32;
                    let mut sum = 0.0f32;
                    #[unroll]
                    for w in 0..4usize {
                        let word = codes[block * 4 + w];
                        #[unroll]
                        for k in 0..8usize {
                            let v = x[base + w * 8 + k];
                            dot += f32::cast_from((word >> (4 * k as u32)) & 15u32) * v;
                            sum += v;
                        }
                    }
                    acc[r] += scale * dot + offset * sum;
                }
            }
        }
    }
    reduce_and_store(&acc, out, n, rows, column, part, first_row);
}

/// Signed 8-bit codes, a scale per 16 values.
#[cube(launch)]
fn byte_matmul(
    x: &Array<f32>,
    codes: &Array<u32>,
    scales: &Array<f32>,
    out: &mut Array<f32>,
    n: usize,
    cols: usize,
    rows: usize,
) {
    let (column, part, first_row) = unit_place();
    let mut acc = zeros();
    if column < rows {
        let blocks = cols / BLOCK;
        for b in range_stepped(part, blocks, SPLIT) {
            let block = column * blocks + b;
            let (low, high) = (scales[2 * block], scales[2 * block + 1]);
            for r in 0..ROWS {
                let row = first_row + r;
                if row < n {
                    let base = row * cols + b * BLOCK;
                    // Two halves of 16 values, one scale each.
                    let low_dot = byte_dot(x, codes, block * 8, base);
                    let high_dot = byte_dot(x, codes, block * 8 + 4, base + 16);
                    acc[r] += low * low_dot + high * high_dot;
                }
            }
        }
    }
    reduce_and_store(&acc, out, n, rows, column, part, first_row);
}

/// The dot product of the 16 signed 8-bit codes in words `word..word + 4`
/// with `x[at..at + 16]`, in order.
#[cube]
fn byte_dot(x: &Array<f32>, codes: &Array<u32>, word: usize, at: usize) -> f32 {
    let mut dot = 0.0f32;
    #[unroll]
    for w in 0..4usize {
        let packed = codes[word + w];
        #[unroll]
        for k in 0..4usize {
            dot += signed_byte(packed, k) * x[at + w * 4 + k];
        }
    }
    dot
}

/// Byte `k` (0..4) of `word` as a signed 8-bit code, in f32.
#[cube]
fn signed_byte(word: u32, k: usize) -> f32 {
    let byte = i32::cast_from((word >> (8 * k as u32)) & 255u32);
    // Sign-extend without relying on how a target shifts.
    f32::cast_from(byte - 256 * (byte / 128))
}

/// f32 weights (from F32 or F16 files).
#[cube(launch)]
fn float_matmul(
    x: &Array<f32>,
    weights: &Array<f32>,
    out: &mut Array<f32>,
    n: usize,
    cols: usize,
    rows: usize,
) {
    let (column, part, first_row) = unit_place();
    let mut acc = zeros();
    if column < rows {
        let blocks = cols / BLOCK;
        for b in range_stepped(part, blocks, SPLIT) {
            let start = column * cols + b * BLOCK;
            for r in 0..ROWS {
                let row = first_row + r;
                if row < n {
                    let base = row * cols + b * BLOCK;
                    let mut dot = 0.0f32;
                    #[unroll]
                    for j in 0..BLOCK {
                        dot += weights[start + j] * x[base + j];
                    }
                    acc[r] += dot;
                }
            }
        }
    }
    reduce_and_store(&acc, out, n, rows, column, part, first_row);
}
