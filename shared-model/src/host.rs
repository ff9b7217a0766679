//! The transformer on the host CPU, through `shared-kernels`.
//!
//! Weights stay in their GGUF block formats (a Q4_1 model takes in memory
//! what it takes on disk); each linear layer quantises its input rows to 8
//! bits and multiplies with integer dot products, reading each weight row once
//! per pass for all rows. Q, K and V are one matrix, and so are the gate and
//! up projections, when their formats agree. Attention runs over each
//! sequence's own cache of f16 keys and values (as llama.cpp keeps them),
//! row by row and head by head. Every operation computes
//! a row the same way whatever else is in the pass, so the pass is
//! batch-invariant like the tensor one (see `crate::model`), and the kernels'
//! SIMD paths equal their portable twins, so results do not depend on the CPU.
//!
//! The buffers of a pass are kept between passes: decoding allocates only the
//! logits it returns.

use std::sync::{Arc, Mutex};

use half::f16;
use half::slice::HalfFloatSliceExt;

use shared_kernels::ops::{self, Context, Heads};
use shared_kernels::{ActKind, Activations, Format, Isa, KernelError, Pool, QMatrix, matmul};

use crate::config::LlamaConfig;
use crate::gguf::{Gguf, GgufError, GgufSource};
use crate::model::{ModelError, load_tensor, rope_table_values};

/// Capacity of a fresh cache, in positions (doubles as it fills).
const INITIAL_CAPACITY: usize = 256;

/// The weights of one block.
#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    /// Q, K, V (one matrix when their formats agree).
    qkv: Vec<QMatrix>,
    wo: Vec<QMatrix>,
    ffn_norm: Vec<f32>,
    /// Gate and up (one matrix when their formats agree).
    gate_up: Vec<QMatrix>,
    down: Vec<QMatrix>,
}

/// The model's weights in host memory, and the threads that run it.
#[derive(Debug)]
pub(crate) struct HostModel {
    config: LlamaConfig,
    /// `[v, d]`: row `t` is token `t`'s embedding.
    embedding: QMatrix,
    /// `[v, d]`; `None`: tied to the embedding.
    output: Option<QMatrix>,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// `[context, hd/2]` each.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    pool: Arc<Pool>,
    isa: Isa,
    scratch: Mutex<Scratch>,
}

/// Buffers of a pass, reused by the next.
#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    gate_up: Vec<f32>,
    part: Vec<f32>,
    act: Activations,
}

/// One sequence's keys and values, `[g][capacity][hd]` per layer, in f16
/// (rounded to nearest even as they are stored): a decoding step reads the
/// whole cache, so at long contexts its size, not arithmetic, sets the pace.
#[derive(Debug, Clone)]
pub(crate) struct HostCache {
    layers: Vec<(Vec<f16>, Vec<f16>)>,
    capacity: usize,
    /// Values of one position in one layer (key/value heads × head size).
    kv_width: usize,
}

impl HostCache {
    /// An empty cache for `n_layer` layers of `kv_width` values a position.
    pub(crate) fn new(n_layer: usize, kv_width: usize) -> Self {
        HostCache {
            layers: vec![(Vec::new(), Vec::new()); n_layer],
            capacity: 0,
            kv_width,
        }
    }

    /// Values of one position in one layer.
    pub(crate) fn kv_width(&self) -> usize {
        self.kv_width
    }

    /// Layers held.
    pub(crate) fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Bytes one position takes across all layers, keys and values.
    pub(crate) fn bytes_per_position(&self) -> usize {
        Self::bytes_per_position_of(self.layers.len(), self.kv_width)
    }

    /// [`Self::bytes_per_position`] of a cache of `n_layer` layers of
    /// `kv_width` values a position.
    pub(crate) fn bytes_per_position_of(n_layer: usize, kv_width: usize) -> usize {
        n_layer * 2 * kv_width * std::mem::size_of::<f16>()
    }

    /// Positions the buffers have room for.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `needed` positions (doubling, at most `limit`), keeping
    /// the first `len`.
    fn reserve(&mut self, needed: usize, len: usize, limit: usize, g: usize, hd: usize) {
        if needed <= self.capacity {
            return;
        }
        let mut capacity = self.capacity.max(INITIAL_CAPACITY);
        while capacity < needed {
            capacity *= 2;
        }
        let capacity = capacity.min(limit).max(needed);
        let old = self.capacity;
        for (keys, values) in &mut self.layers {
            for buffer in [keys, values] {
                let mut grown = vec![f16::ZERO; g * capacity * hd];
                for head in 0..g {
                    let from = &buffer[head * old * hd..(head * old + len) * hd];
                    grown[head * capacity * hd..(head * capacity + len) * hd].copy_from_slice(from);
                }
                *buffer = grown;
            }
        }
        self.capacity = capacity;
    }
}

/// One sequence's part of a pass.
pub(crate) struct HostItem<'a> {
    /// The next positions of the sequence.
    pub(crate) tokens: &'a [u32],
    /// Its cache.
    pub(crate) cache: &'a mut HostCache,
    /// Positions the cache holds before this pass.
    pub(crate) start: usize,
    /// Most positions the cache may hold.
    pub(crate) limit: usize,
    /// The first of the new positions that needs logits.
    pub(crate) first_logits: usize,
}

/// Matrix `name` (`n_out` rows of `n_in`) as the file stores it.
fn matrix<S: GgufSource>(
    gguf: &mut Gguf<S>,
    name: &str,
    n_in: usize,
    n_out: usize,
) -> Result<QMatrix, ModelError> {
    let (format, bytes) = matrix_bytes(gguf, name, n_in, n_out)?;
    QMatrix::new(format, n_out, n_in, bytes).map_err(|source| ModelError::Kernel {
        tensor: name.to_owned(),
        source,
    })
}

/// The blocks of matrix `name` (`n_out` rows of `n_in`, dims checked) in a
/// format the kernels take: the file's, or f32 for BF16.
pub(crate) fn matrix_bytes<S: GgufSource>(
    gguf: &mut Gguf<S>,
    name: &str,
    n_in: usize,
    n_out: usize,
) -> Result<(Format, Vec<u8>), ModelError> {
    let (info, bytes) = gguf.tensor_bytes(name)?;
    let expected = vec![n_in as u64, n_out as u64];
    if info.dims != expected {
        return Err(ModelError::Shape {
            tensor: name.to_owned(),
            found: info.dims,
            expected,
        });
    }
    let (format, bytes) = match info.ggml_type.kernel_format() {
        Some(format) => (format, bytes),
        None if info.ggml_type.can_dequantize() => {
            // No kernel for this format (BF16): multiply it as f32.
            let mut values = vec![0f32; n_in * n_out];
            crate::gguf::dequantize(info.ggml_type, &bytes, &mut values, name)?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (Format::F32, bytes)
        }
        None => {
            return Err(GgufError::UnsupportedType {
                tensor: name.to_owned(),
                ggml_type: info.ggml_type.name(),
            }
            .into());
        }
    };
    Ok((format, bytes))
}

/// `parts` as one stacked matrix when their formats agree, else as they are.
fn fused(parts: Vec<QMatrix>) -> Vec<QMatrix> {
    match QMatrix::stack(&parts) {
        Ok(one) => vec![one],
        Err(_) => parts,
    }
}

impl HostModel {
    /// Reads the weights of `config`'s blocks from `gguf`, keeping their
    /// formats; runs on `threads` threads (`0`: one per core).
    pub(crate) fn load<S: GgufSource>(
        gguf: &mut Gguf<S>,
        config: &LlamaConfig,
        threads: usize,
    ) -> Result<Self, ModelError> {
        let c = config;
        let (d, kv) = (c.n_embd, c.n_head_kv * c.head_dim);
        let embedding = matrix(gguf, "token_embd.weight", d, c.vocab_size)?;
        let output = if gguf.tensor_info("output.weight").is_ok() {
            Some(matrix(gguf, "output.weight", d, c.vocab_size)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let mut m = |t: &str, n_in, n_out| matrix(gguf, &name(t), n_in, n_out);
            let qkv = fused(vec![
                m("attn_q", d, d)?,
                m("attn_k", d, kv)?,
                m("attn_v", d, kv)?,
            ]);
            let wo = vec![m("attn_output", d, d)?];
            let gate_up = fused(vec![m("ffn_gate", d, c.n_ff)?, m("ffn_up", d, c.n_ff)?]);
            let down = vec![m("ffn_down", c.n_ff, d)?];
            blocks.push(Block {
                attn_norm: load_tensor(gguf, &name("attn_norm"), &[d])?,
                qkv,
                wo,
                ffn_norm: load_tensor(gguf, &name("ffn_norm"), &[d])?,
                gate_up,
                down,
            });
        }
        let output_norm = load_tensor(gguf, "output_norm.weight", &[d])?;
        let (rope_cos, rope_sin) = rope_table_values(c);
        let pool = Pool::shared(threads).map_err(|source| ModelError::Kernel {
            tensor: "(threads)".into(),
            source,
        })?;
        Ok(HostModel {
            config: c.clone(),
            embedding,
            output,
            blocks,
            output_norm,
            rope_cos,
            rope_sin,
            pool,
            isa: Isa::detect(),
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// Threads a pass runs on.
    pub(crate) fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The instruction set of the kernels.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of weights held.
    pub(crate) fn weight_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .flat_map(|b| b.qkv.iter().chain(&b.wo).chain(&b.gate_up).chain(&b.down))
            .map(QMatrix::bytes)
            .sum();
        blocks + self.embedding.bytes() + self.output.as_ref().map_or(0, QMatrix::bytes)
    }

    /// One pass over the items' new tokens (already checked by the caller).
    /// Returns the logits of the positions they ask for, item after item,
    /// `[rows, v]` row-major, and grows each cache by its tokens.
    pub(crate) fn forward(&self, items: &mut [HostItem<'_>]) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (d, hd, g) = (c.n_embd, c.head_dim, c.n_head_kv);
        let kv = g * hd;
        let half = hd / 2;
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;

        // Each row's position, and the rows that need logits.
        let mut positions = Vec::new();
        let mut wanted = Vec::new();
        for item in items.iter_mut() {
            let n = item.tokens.len();
            item.cache
                .reserve(item.start + n, item.start, item.limit, g, hd);
            wanted.extend(positions.len() + item.first_logits..positions.len() + n);
            positions.extend(item.start..item.start + n);
        }
        let total = positions.len();

        resize(&mut s.x, total * d);
        let tokens = items.iter().flat_map(|i| i.tokens.iter());
        for (row, &token) in s.x.chunks_exact_mut(d).zip(tokens) {
            self.embedding
                .dequantize_row(token as usize, row)
                .map_err(|source| kernel("token_embd.weight", source))?;
        }

        for (layer, block) in self.blocks.iter().enumerate() {
            let x = &s.x;
            let norm = |r: usize, row: &mut [f32]| {
                ops::rms_norm(&x[r * d..(r + 1) * d], &block.attn_norm, c.rms_eps, row);
            };
            self.project(&block.qkv, total, norm, &mut s.qkv, &mut s.part, &mut s.act)?;
            let width = d + 2 * kv;
            resize(&mut s.q, total * d);
            for (r, row) in s.qkv.chunks_exact_mut(width).enumerate() {
                let p = positions[r];
                let (cos, sin) = (
                    &self.rope_cos[p * half..(p + 1) * half],
                    &self.rope_sin[p * half..(p + 1) * half],
                );
                for head in row[..d + kv].chunks_exact_mut(hd) {
                    ops::rope(head, cos, sin);
                }
                s.q[r * d..(r + 1) * d].copy_from_slice(&row[..d]);
            }
            // This pass's keys and values into each sequence's cache.
            let mut r = 0;
            for item in items.iter_mut() {
                let capacity = item.cache.capacity;
                let (keys, values) = &mut item.cache.layers[layer];
                for p in item.start..item.start + item.tokens.len() {
                    let row = &s.qkv[r * width..(r + 1) * width];
                    for head in 0..g {
                        let at = (head * capacity + p) * hd;
                        keys[at..at + hd]
                            .convert_from_f32_slice(&row[d + head * hd..d + (head + 1) * hd]);
                        values[at..at + hd].convert_from_f32_slice(
                            &row[d + kv + head * hd..d + kv + (head + 1) * hd],
                        );
                    }
                    r += 1;
                }
            }
            let mut contexts = Vec::with_capacity(total);
            for item in items.iter() {
                let (keys, values) = &item.cache.layers[layer];
                contexts.extend(
                    (item.start..item.start + item.tokens.len()).map(|p| Context {
                        keys,
                        values,
                        capacity: item.cache.capacity,
                        len: p + 1,
                    }),
                );
            }
            resize(&mut s.attended, total * d);
            let heads = Heads {
                query: c.n_head,
                kv: g,
                dim: hd,
            };
            ops::attention(
                &self.pool,
                self.isa,
                heads,
                &s.q,
                &contexts,
                &mut s.attended,
            );
            let attended = &s.attended;
            let copy = |r: usize, row: &mut [f32]| {
                row.copy_from_slice(&attended[r * d..(r + 1) * d]);
            };
            self.project(
                &block.wo,
                total,
                copy,
                &mut s.projected,
                &mut s.part,
                &mut s.act,
            )?;
            ops::add(&mut s.x, &s.projected);

            let x = &s.x;
            let norm = |r: usize, row: &mut [f32]| {
                ops::rms_norm(&x[r * d..(r + 1) * d], &block.ffn_norm, c.rms_eps, row);
            };
            let gate_up = &mut s.gate_up;
            self.project(
                &block.gate_up,
                total,
                norm,
                gate_up,
                &mut s.part,
                &mut s.act,
            )?;
            let ff = c.n_ff;
            let gate_up = &s.gate_up;
            let silu = |r: usize, row: &mut [f32]| {
                let (gate, up) = gate_up[r * 2 * ff..(r + 1) * 2 * ff].split_at(ff);
                ops::silu_mul_into(self.isa, gate, up, row);
            };
            self.project(
                &block.down,
                total,
                silu,
                &mut s.projected,
                &mut s.part,
                &mut s.act,
            )?;
            ops::add(&mut s.x, &s.projected);
        }

        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let x = &s.x;
        let norm = |i: usize, row: &mut [f32]| {
            let r = wanted[i];
            ops::rms_norm(&x[r * d..(r + 1) * d], &self.output_norm, c.rms_eps, row);
        };
        let head = std::slice::from_ref(self.output.as_ref().unwrap_or(&self.embedding));
        let mut logits = Vec::new();
        self.project(
            head,
            wanted.len(),
            norm,
            &mut logits,
            &mut s.part,
            &mut s.act,
        )?;
        Ok(logits)
    }

    /// `x [m, in] → out [m, Σ outputs of parts]`, the parts' columns side by
    /// side, where `fill(r, row)` makes row `r` of `x` (a norm, an activation
    /// function: made and quantised on the threads, row by row).
    fn project(
        &self,
        parts: &[QMatrix],
        m: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        out: &mut Vec<f32>,
        part: &mut Vec<f32>,
        act: &mut Activations,
    ) -> Result<(), ModelError> {
        let n: usize = parts.iter().map(QMatrix::rows).sum();
        resize(out, m * n);
        let mut quantized: Option<ActKind> = None;
        let mut column = 0;
        for w in parts {
            let kind = w.format().activations();
            if quantized != Some(kind) {
                act.quantize_rows(&self.pool, self.isa, kind, m, w.cols(), &fill);
                quantized = Some(kind);
            }
            if parts.len() == 1 {
                return matmul(&self.pool, self.isa, w, act, out).map_err(|e| kernel("matmul", e));
            }
            resize(part, m * w.rows());
            matmul(&self.pool, self.isa, w, act, part).map_err(|e| kernel("matmul", e))?;
            for (dst, src) in out.chunks_exact_mut(n).zip(part.chunks_exact(w.rows())) {
                dst[column..column + w.rows()].copy_from_slice(src);
            }
            column += w.rows();
        }
        Ok(())
    }
}

/// Shared so that clones of a model share one set of weights and threads.
pub(crate) type SharedHostModel = Arc<HostModel>;

/// Sets `v`'s length to `len`, keeping its allocation.
fn resize(v: &mut Vec<f32>, len: usize) {
    v.resize(len, 0.0);
}

fn kernel(tensor: &str, source: KernelError) -> ModelError {
    ModelError::Kernel {
        tensor: tensor.to_owned(),
        source,
    }
}
