//! A Llama-family transformer on burn, generic over the backend.
//!
//! [`Llama::forward_batch`] runs the new tokens of several sequences, each with
//! its own [`KvCache`], in one pass and returns logits for the positions each
//! asks for — every drafted position, so k drafts are checked in one pass.
//! [`Llama::forward`] is the same pass over one sequence. The pass is
//! *batch-invariant*: the logits of a position are bit for bit the same whether
//! it is computed alone, in a prompt, among k drafts or beside other sequences.
//! That is what makes speculative decoding lossless and continuous batching
//! invisible to each request, and it takes care:
//!
//! - Linear layers: on the CPU (the host engine, `shared-kernels`) and on GPUs
//!   (our CubeCL kernels, `crate::cube`) every row is reduced in one fixed
//!   order by construction. Where burn's matmul does the work (the browser's
//!   CPU), weights are stored `[in, out]` contiguously and every reduction is
//!   split into chunks of at most [`REDUCTION_CHUNK`] values, summed in a fixed
//!   order: GEMM kernels pick their code path by shape, but within one such
//!   chunk flex's row-vector and matrix paths reduce in the same order.
//! - Attention is computed position by position, each with exactly its own
//!   context: the same shapes, hence the same kernels, as one-token decoding.
//! - RMSNorm, RoPE, SwiGLU and softmax work row by row.
//! - Rows of different sequences meet only in the linear layers (row by row,
//!   as above); each sequence attends over its own cache.
//!
//! The test `tests/batch_invariance.rs` checks this bit for bit.
//!
//! # Shapes
//! `n` new tokens, hidden size `d`, `h` query heads and `g` key/value heads of
//! size `hd`, vocabulary `v`. Activations are `[n, d]`; logits `[n, v]`.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Int, Tensor, TensorData};
use thiserror::Error;

use crate::backend::{Backend, Kernels};
use crate::config::LlamaConfig;
use crate::gguf::{Gguf, GgufError, GgufSource};
use crate::host::{HostCache, HostItem, HostModel, SharedHostModel};
use shared_kernels::PlanarMatrix;

/// Longest reduction handed to one matrix product (see the module docs).
pub const REDUCTION_CHUNK: usize = 512;

/// What can go wrong loading or running the model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The file is not a usable model.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tensor with an unexpected shape.
    #[error("tensor {tensor} has dims {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Dims in the file.
        found: Vec<u64>,
        /// Dims the config implies.
        expected: Vec<u64>,
    },
    /// A forward pass with no tokens.
    #[error("no tokens to process")]
    Empty,
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The sequence would outgrow the model's context.
    #[error("context of {needed} tokens exceeds the model's {max}")]
    ContextFull {
        /// Length after this pass.
        needed: usize,
        /// The limit.
        max: usize,
    },
    /// A cache made for a model with another number of layers.
    #[error("a cache of {cache} layers used with a model of {model}")]
    CacheMismatch {
        /// Layers of the cache.
        cache: usize,
        /// Layers of the model.
        model: usize,
    },
    /// Item `index` of a batched pass is bad (nothing was run).
    #[error("sequence {index} of the batch: {source}")]
    InBatch {
        /// Position of the item in the batch.
        index: usize,
        /// What is wrong with it.
        source: Box<ModelError>,
    },
    /// Reading a tensor back from the device failed.
    #[error("reading a tensor from the device failed: {0}")]
    Readback(String),
    /// The host kernels refused a tensor or a shape.
    #[error("{tensor}: {source}")]
    Kernel {
        /// The tensor (or the step) concerned.
        tensor: String,
        /// What the kernels said.
        source: shared_kernels::KernelError,
    },
    /// A cache made for a model with other key/value heads.
    #[error("a cache of {cache} key/value values a position used with a model of {model}")]
    CacheShape {
        /// Values a position in the cache.
        cache: usize,
        /// Values a position in the model.
        model: usize,
    },
    /// A cache that holds positions computed by the other engine (host
    /// kernels vs tensor ops) of a model.
    #[error("a cache filled by another engine of the model")]
    CacheEngine,
}

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every new position (verification).
    All,
    /// Only the last (prefill before decoding, plain decoding).
    Last,
    /// None (a prefill chunk that is not the prompt's end).
    None,
    /// The positions from this index of the new tokens on (a verification
    /// round: the last context token and the drafts after it).
    From(usize),
}

impl Logits {
    /// The index of the first of `n` new positions that gets logits (`n`: none).
    fn first_row(self, n: usize) -> usize {
        match self {
            Logits::All => 0,
            Logits::Last => n.saturating_sub(1),
            Logits::None => n,
            Logits::From(i) => i.min(n),
        }
    }
}

/// One sequence's part of a batched forward pass.
#[derive(Debug)]
pub struct BatchItem<'a, B: Backend> {
    /// The next positions of the sequence.
    pub tokens: &'a [u32],
    /// Its cache; grows by `tokens.len()`.
    pub cache: &'a mut KvCache<B>,
    /// Which of the new positions need logits.
    pub logits: Logits,
}

/// A weight matrix of the tensor engine.
#[derive(Debug, Clone)]
enum Linear<B: Backend> {
    /// f32, stored `[in, out]`, pre-split along `in` into chunks of at most
    /// [`REDUCTION_CHUNK`] rows, multiplied by burn's matmul.
    Chunks(Vec<(usize, Tensor<B, 2>)>),
    /// In the backend's own form, multiplied by its own kernels.
    Device(B::DeviceMatrix),
}

impl<B: Backend> Linear<B> {
    /// Matrix `name` (`n_out` rows of `n_in` in the file): on the device in
    /// the backend's own form where it has one, else dequantised to f32.
    fn load<S: GgufSource>(
        gguf: &mut Gguf<S>,
        name: &str,
        n_in: usize,
        n_out: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        if B::HAS_DEVICE_MATRICES {
            let (format, bytes) = crate::host::matrix_bytes(gguf, name, n_in, n_out)?;
            // Rows that are not whole blocks of 32 stay on burn's matmul.
            if let Ok(planar) = PlanarMatrix::from_gguf(format, n_out, n_in, &bytes)
                && let Some(m) = B::upload_matrix(&planar, device)
            {
                return Ok(Linear::Device(m));
            }
        }
        let values = load_tensor(gguf, name, &[n_in, n_out])?;
        Ok(Self::from_gguf_rows(values, n_in, n_out, device))
    }

    /// From a GGUF-layout matrix (`out` rows of `in` values).
    fn from_gguf_rows(values: Vec<f32>, n_in: usize, n_out: usize, device: &B::Device) -> Self {
        let mut transposed = vec![0f32; values.len()];
        for (o, row) in values.chunks_exact(n_in).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                transposed[i * n_out + o] = v;
            }
        }
        Self::from_in_out(transposed, n_in, n_out, device)
    }

    /// From an `[in, out]` row-major matrix.
    fn from_in_out(values: Vec<f32>, n_in: usize, n_out: usize, device: &B::Device) -> Self {
        let chunks = (0..n_in)
            .step_by(REDUCTION_CHUNK)
            .map(|start| {
                let len = REDUCTION_CHUNK.min(n_in - start);
                let part = values[start * n_out..(start + len) * n_out].to_vec();
                (
                    start,
                    Tensor::from_data(TensorData::new(part, [len, n_out]), device),
                )
            })
            .collect();
        Linear::Chunks(chunks)
    }

    /// Bytes the matrix takes.
    fn bytes(&self) -> usize {
        match self {
            Linear::Chunks(chunks) => chunks
                .iter()
                .map(|(_, w)| w.shape().num_elements() * std::mem::size_of::<f32>())
                .sum(),
            Linear::Device(m) => B::device_matrix_bytes(m),
        }
    }

    /// Whether the backend's own kernels multiply it.
    fn on_device_kernels(&self) -> bool {
        matches!(self, Linear::Device(_))
    }

    /// `x [n, in] → [n, out]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let chunks = match self {
            Linear::Chunks(chunks) => chunks,
            Linear::Device(m) => return B::device_matmul(x, m),
        };
        let mut acc: Option<Tensor<B, 2>> = None;
        for (start, w) in chunks {
            let part = x.clone().narrow(1, *start, w.dims()[0]).matmul(w.clone());
            acc = Some(match acc {
                None => part,
                Some(a) => a + part,
            });
        }
        acc.unwrap_or_else(|| x.zeros_like())
    }
}

#[derive(Debug, Clone)]
struct Block<B: Backend> {
    attn_norm: Tensor<B, 1>,
    wq: Linear<B>,
    wk: Linear<B>,
    wv: Linear<B>,
    wo: Linear<B>,
    ffn_norm: Tensor<B, 1>,
    w_gate: Linear<B>,
    w_up: Linear<B>,
    w_down: Linear<B>,
}

/// Keys and values of the positions a sequence has seen, per layer.
///
/// One cache per sequence; the model itself is shared. Each layer keeps one
/// buffer of `[g, capacity, hd]` that grows by doubling and is written in place,
/// so a decoding step copies only its own new keys and values.
/// [`KvCache::truncate`] rolls back rejected drafts by moving the end marker.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer: key and value buffers, `[g, capacity, hd]`; positions
    /// `len..capacity` are stale (the tensor engine).
    layers: Vec<Option<(Tensor<B, 3>, Tensor<B, 3>)>>,
    /// The same in host memory (the host engine), made by its first pass.
    host: Option<HostCache>,
    len: usize,
    /// Most positions this cache may ever hold (its memory budget).
    limit: usize,
    /// Bytes of one position across all layers, keys and values, in the
    /// tensor engine's buffers (the host engine's cache says its own).
    bytes_per_position: usize,
}

/// Capacity of a fresh layer buffer, in positions.
const INITIAL_CAPACITY: usize = 256;

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model of shape `config` that holds at most
    /// `limit` positions (capped at the model's context length).
    pub fn new(config: &LlamaConfig, limit: usize) -> Self {
        KvCache {
            layers: vec![None; config.n_layer],
            host: None,
            len: 0,
            limit: limit.min(config.context_length),
            bytes_per_position: kv_bytes_per_position(config),
        }
    }

    /// Most positions this cache may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Device memory the cache holds now, in bytes (its buffers' capacity,
    /// which grows by doubling up to [`KvCache::limit`]).
    pub fn allocated_bytes(&self) -> usize {
        if let Some(host) = &self.host {
            return host.capacity() * host.bytes_per_position();
        }
        let capacity = self
            .layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |(k, _)| k.dims()[1]);
        capacity * self.bytes_per_position
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes `keys`/`values` (`[g, n, hd]`) at positions `start..start + n` of
    /// `layer` and returns views of positions `0..start + n`.
    fn write(
        &mut self,
        layer: usize,
        start: usize,
        keys: Tensor<B, 3>,
        values: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let max_capacity = self.limit;
        let [g, n, hd] = keys.dims();
        let end = start + n;
        let (mut kb, mut vb) = match self.layers[layer].take() {
            Some((kb, vb)) if kb.dims()[1] >= end => (kb, vb),
            old => {
                // Grow by doubling (amortised O(1) per position), keeping what is valid.
                let capacity = end
                    .max(INITIAL_CAPACITY)
                    .next_power_of_two()
                    .min(max_capacity)
                    .max(end);
                let device = keys.device();
                let mut kb = Tensor::zeros([g, capacity, hd], &device);
                let mut vb = Tensor::zeros([g, capacity, hd], &device);
                if let Some((ok, ov)) = old
                    && start > 0
                {
                    kb = kb.slice_assign([0..g, 0..start, 0..hd], ok.narrow(1, 0, start));
                    vb = vb.slice_assign([0..g, 0..start, 0..hd], ov.narrow(1, 0, start));
                }
                (kb, vb)
            }
        };
        // The buffers are uniquely owned here, so backends write in place.
        kb = kb.slice_assign([0..g, start..end, 0..hd], keys);
        vb = vb.slice_assign([0..g, start..end, 0..hd], values);
        let views = (kb.clone().narrow(1, 0, end), vb.clone().narrow(1, 0, end));
        self.layers[layer] = Some((kb, vb));
        views
    }
}

/// The transformer with its weights, on a device or in host memory.
#[derive(Debug, Clone)]
pub struct Llama<B: Backend> {
    config: LlamaConfig,
    engine: Engine<B>,
    device: B::Device,
}

/// What runs the arithmetic (see [`Kernels`]).
#[derive(Debug, Clone)]
enum Engine<B: Backend> {
    /// burn tensor ops on the backend's device, weights in f32.
    Tensors(Box<TensorWeights<B>>),
    /// `shared-kernels` on the host CPU, weights in their GGUF formats.
    Host(SharedHostModel),
}

/// The token embeddings of the tensor engine.
#[derive(Debug, Clone)]
enum Embedding<B: Backend> {
    /// f32 `[v, d]`, rows looked up by token id.
    Table(Tensor<B, 2>),
    /// In the backend's own form (with a tied output head, the head's own
    /// matrix: one copy on the device), rows dequantised as they are looked up.
    Device(B::DeviceMatrix),
}

/// The weights of the tensor engine, on the device: f32, or in the backend's
/// own (quantised) form for its own kernels.
#[derive(Debug, Clone)]
struct TensorWeights<B: Backend> {
    embedding: Embedding<B>,
    /// Whether the output head is the embedding matrix.
    tied: bool,
    blocks: Vec<Block<B>>,
    output_norm: Tensor<B, 1>,
    output: Linear<B>,
    /// `[context, hd/2]` each.
    rope_cos: Tensor<B, 2>,
    rope_sin: Tensor<B, 2>,
}

/// Where each row of a pass comes from: its token and position, and which
/// rows need logits.
struct Rows {
    /// Index of each item's first row.
    offsets: Vec<usize>,
    ids: Vec<i32>,
    positions: Vec<i32>,
    wanted: Vec<i32>,
}

impl Rows {
    fn of<B: Backend>(items: &[BatchItem<'_, B>]) -> Rows {
        let mut rows = Rows {
            offsets: Vec::with_capacity(items.len()),
            ids: Vec::new(),
            positions: Vec::new(),
            wanted: Vec::new(),
        };
        for item in items {
            let (n, start) = (item.tokens.len(), item.cache.len);
            let at = rows.ids.len();
            rows.offsets.push(at);
            let first = item.logits.first_row(n);
            rows.wanted.extend((at + first..at + n).map(|r| r as i32));
            rows.ids.extend(item.tokens.iter().map(|&t| t as i32));
            rows.positions.extend((start..start + n).map(|p| p as i32));
        }
        rows
    }
}

impl<B: Backend> Llama<B> {
    /// Loads a model from a GGUF file, on the engine the backend runs by
    /// default ([`Backend::KERNELS`]). `max_layers` keeps only the first
    /// blocks (a cheap draft model for tests).
    pub fn load<S: GgufSource>(
        gguf: &mut Gguf<S>,
        device: &B::Device,
        max_layers: Option<usize>,
    ) -> Result<Self, ModelError> {
        Self::load_with(gguf, device, max_layers, B::KERNELS)
    }

    /// [`Self::load`] on the engine `kernels` names.
    pub fn load_with<S: GgufSource>(
        gguf: &mut Gguf<S>,
        device: &B::Device,
        max_layers: Option<usize>,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        let mut config = LlamaConfig::from_metadata(&gguf.metadata)?;
        if let Some(max) = max_layers {
            config.n_layer = config.n_layer.min(max.max(1));
        }
        let engine = match kernels {
            Kernels::Host { threads } => Engine::Host(std::sync::Arc::new(HostModel::load(
                gguf, &config, threads,
            )?)),
            Kernels::Tensors => {
                Engine::Tensors(Box::new(TensorWeights::load(gguf, &config, device)?))
            }
        };
        Ok(Llama {
            config,
            engine,
            device: device.clone(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// What runs the model: the host kernels (with their thread count and
    /// instruction set) or the backend's tensor ops.
    pub fn engine_description(&self) -> String {
        match &self.engine {
            Engine::Host(h) => format!(
                "host kernels ({}, {} threads, {:.1} MiB of weights)",
                h.isa().name(),
                h.threads(),
                h.weight_bytes() as f64 / (1 << 20) as f64
            ),
            Engine::Tensors(t) => {
                let mib = t.weight_bytes() as f64 / (1 << 20) as f64;
                let linears = t.linears();
                let on_device = linears.iter().filter(|l| l.on_device_kernels()).count();
                if on_device == 0 {
                    format!("tensor ops (f32 weights, {mib:.1} MiB)")
                } else if on_device == linears.len() {
                    format!(
                        "tensor ops, linear layers on our GPU kernels ({mib:.1} MiB of weights)"
                    )
                } else {
                    // Rows that are not whole blocks of 32: burn's matmul,
                    // whose reduction order may depend on the batch.
                    format!(
                        "tensor ops, {on_device} of {} linear layers on our GPU kernels, the rest \
                         on burn's matmul ({mib:.1} MiB of weights)",
                        linears.len()
                    )
                }
            }
        }
    }

    /// Bytes of weight matrices a pass reads (the host engine keeps the
    /// file's formats; the tensor engine f32 or, on GPUs, planes of 4- or
    /// 8-bit codes). Norm vectors are left out.
    pub fn weight_bytes(&self) -> usize {
        match &self.engine {
            Engine::Host(h) => h.weight_bytes(),
            Engine::Tensors(t) => t.weight_bytes(),
        }
    }

    /// An empty cache for one sequence, as long as the model's context.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(&self.config, self.config.context_length)
    }

    /// An empty cache for one sequence of at most `limit` positions.
    pub fn new_cache_with_limit(&self, limit: usize) -> KvCache<B> {
        KvCache::new(&self.config, limit)
    }

    /// Runs `tokens` (the next positions of the sequence in `cache`) and
    /// returns logits for the positions `which` names, `[rows, v]`. The cache
    /// grows by `tokens.len()`. With [`Logits::None`] it returns `[0, v]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B>,
        which: Logits,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let mut item = [BatchItem {
            tokens,
            cache,
            logits: which,
        }];
        match self.forward_batch(&mut item) {
            Ok(Some(logits)) => Ok(logits),
            Ok(None) => Ok(Tensor::zeros([0, self.config.vocab_size], &self.device)),
            Err(ModelError::InBatch { source, .. }) => Err(*source),
            Err(e) => Err(e),
        }
    }

    /// One pass over the new tokens of several sequences. Returns the logits
    /// the items ask for, item after item, `[rows, v]` (`None` when no item
    /// asks for any). Every item is checked before anything runs: a bad one
    /// fails the call ([`ModelError::InBatch`]) and leaves every cache as it was.
    pub fn forward_batch(
        &self,
        items: &mut [BatchItem<'_, B>],
    ) -> Result<Option<Tensor<B, 2>>, ModelError> {
        if items.is_empty() {
            return Err(ModelError::Empty);
        }
        for (index, item) in items.iter().enumerate() {
            self.check(item).map_err(|source| ModelError::InBatch {
                index,
                source: Box::new(source),
            })?;
        }
        let logits = match &self.engine {
            Engine::Tensors(weights) => weights.forward_batch(&self.config, &self.device, items),
            Engine::Host(host) => {
                let (n_layer, kv_width) = (
                    self.config.n_layer,
                    self.config.n_head_kv * self.config.head_dim,
                );
                let mut host_items: Vec<HostItem<'_>> = items
                    .iter_mut()
                    .map(|item| {
                        let n = item.tokens.len();
                        HostItem {
                            tokens: item.tokens,
                            start: item.cache.len,
                            limit: item.cache.limit,
                            first_logits: item.logits.first_row(n),
                            cache: item
                                .cache
                                .host
                                .get_or_insert_with(|| HostCache::new(n_layer, kv_width)),
                        }
                    })
                    .collect();
                let values = host.forward(&mut host_items)?;
                let rows = values.len() / self.config.vocab_size;
                (rows > 0).then(|| {
                    Tensor::from_data(
                        TensorData::new(values, [rows, self.config.vocab_size]),
                        &self.device,
                    )
                })
            }
        };
        for item in items.iter_mut() {
            item.cache.len += item.tokens.len();
        }
        Ok(logits)
    }

    /// Whether `item` can run: tokens present and in the vocabulary, room in
    /// its cache, a cache of this model's shape and engine.
    fn check(&self, item: &BatchItem<'_, B>) -> Result<(), ModelError> {
        let c = &self.config;
        if item.tokens.is_empty() {
            return Err(ModelError::Empty);
        }
        if let Some(&id) = item.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::BadToken {
                id,
                vocab: c.vocab_size,
            });
        }
        let needed = item.cache.len + item.tokens.len();
        if needed > item.cache.limit {
            return Err(ModelError::ContextFull {
                needed,
                max: item.cache.limit,
            });
        }
        let layers = match &item.cache.host {
            Some(host) => host.n_layer(),
            None => item.cache.layers.len(),
        };
        if layers != c.n_layer {
            return Err(ModelError::CacheMismatch {
                cache: layers,
                model: c.n_layer,
            });
        }
        if let Some(host) = &item.cache.host
            && host.kv_width() != c.n_head_kv * c.head_dim
        {
            return Err(ModelError::CacheShape {
                cache: host.kv_width(),
                model: c.n_head_kv * c.head_dim,
            });
        }
        let filled_by_host = item.cache.host.is_some();
        let other_engine = match self.engine {
            Engine::Host(_) => !filled_by_host && item.cache.len > 0,
            Engine::Tensors(_) => filled_by_host,
        };
        if other_engine {
            return Err(ModelError::CacheEngine);
        }
        Ok(())
    }
}

impl<B: Backend> TensorWeights<B> {
    /// Every linear layer, the output head last.
    fn linears(&self) -> Vec<&Linear<B>> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down])
            .chain([&self.output])
            .collect()
    }

    /// Bytes of the weight matrices on the device (a tied embedding and
    /// head counted once when they share one matrix).
    fn weight_bytes(&self) -> usize {
        let linears: usize = self.linears().into_iter().map(Linear::bytes).sum();
        let embedding = match &self.embedding {
            Embedding::Table(t) => t.shape().num_elements() * std::mem::size_of::<f32>(),
            Embedding::Device(_) if self.tied => 0,
            Embedding::Device(m) => B::device_matrix_bytes(m),
        };
        linears + embedding
    }

    /// Loads the weights of `c`'s blocks onto `device`: in the backend's own
    /// form where it has one, else dequantised to f32.
    fn load<S: GgufSource>(
        gguf: &mut Gguf<S>,
        c: &LlamaConfig,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let (d, kv_dim) = (c.n_embd, c.n_head_kv * c.head_dim);
        let vector = |values: Vec<f32>| {
            let len = values.len();
            Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device)
        };

        let v = c.vocab_size;
        // Without its own output head the model ties it to the embeddings.
        let tied = gguf.tensor_info("output.weight").is_err();
        let table = |values: Vec<f32>| {
            Embedding::Table(Tensor::from_data(TensorData::new(values, [v, d]), device))
        };
        let (embedding, output) = if B::HAS_DEVICE_MATRICES {
            let embedding = Linear::load(gguf, "token_embd.weight", d, v, device)?;
            let output = if tied {
                embedding.clone()
            } else {
                Linear::load(gguf, "output.weight", d, v, device)?
            };
            let embedding = match embedding {
                Linear::Device(m) => Embedding::Device(m),
                Linear::Chunks(_) => table(load_tensor(gguf, "token_embd.weight", &[d, v])?),
            };
            (embedding, output)
        } else {
            let values = load_tensor(gguf, "token_embd.weight", &[d, v])?;
            let output = if tied {
                Linear::from_gguf_rows(values.clone(), d, v, device)
            } else {
                Linear::load(gguf, "output.weight", d, v, device)?
            };
            (table(values), output)
        };
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let mut linear = |t: &str, n_in: usize, n_out: usize| {
                Linear::load(gguf, &name(t), n_in, n_out, device)
            };
            let (wq, wk, wv, wo) = (
                linear("attn_q", d, d)?,
                linear("attn_k", d, kv_dim)?,
                linear("attn_v", d, kv_dim)?,
                linear("attn_output", d, d)?,
            );
            let (w_gate, w_up, w_down) = (
                linear("ffn_gate", d, c.n_ff)?,
                linear("ffn_up", d, c.n_ff)?,
                linear("ffn_down", c.n_ff, d)?,
            );
            blocks.push(Block {
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
                w_down,
                attn_norm: vector(load_tensor(gguf, &name("attn_norm"), &[d])?),
                ffn_norm: vector(load_tensor(gguf, &name("ffn_norm"), &[d])?),
            });
        }
        let output_norm = vector(load_tensor(gguf, "output_norm.weight", &[d])?);
        let (rope_cos, rope_sin) = rope_tables::<B>(c, device);
        Ok(TensorWeights {
            embedding,
            tied,
            blocks,
            output_norm,
            output,
            rope_cos,
            rope_sin,
        })
    }

    /// The pass of [`Llama::forward_batch`] in tensor ops (items checked;
    /// the caller advances the caches' lengths).
    fn forward_batch(
        &self,
        c: &LlamaConfig,
        device: &B::Device,
        items: &mut [BatchItem<'_, B>],
    ) -> Option<Tensor<B, 2>> {
        let Rows {
            offsets,
            ids,
            positions,
            wanted,
        } = Rows::of(items);
        let total = ids.len();
        let int = |values: Vec<i32>| {
            let len = values.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(values, [len]), device)
        };
        let positions = int(positions);
        let mut x = match &self.embedding {
            Embedding::Table(t) => t.clone().select(0, int(ids)),
            Embedding::Device(m) => {
                // Token ids were checked against the vocabulary.
                let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                B::device_rows(m, &ids, device)
            }
        };
        let cos = self.rope_cos.clone().select(0, positions.clone());
        let sin = self.rope_sin.clone().select(0, positions);

        for (layer, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(x.clone(), block.attn_norm.clone(), c.rms_eps);
            let q = rope(
                block
                    .wq
                    .forward(h.clone())
                    .reshape([total, c.n_head, c.head_dim]),
                &cos,
                &sin,
            );
            let k = rope(
                block
                    .wk
                    .forward(h.clone())
                    .reshape([total, c.n_head_kv, c.head_dim]),
                &cos,
                &sin,
            );
            let v = block
                .wv
                .forward(h)
                .reshape([total, c.n_head_kv, c.head_dim]);
            let mut attended = Vec::with_capacity(items.len());
            for (item, &offset) in items.iter_mut().zip(&offsets) {
                let (n, start) = (item.tokens.len(), item.cache.len);
                let (keys, values) = item.cache.write(
                    layer,
                    start,
                    k.clone().narrow(0, offset, n).swap_dims(0, 1),
                    v.clone().narrow(0, offset, n).swap_dims(0, 1),
                );
                attended.push(attention(
                    c,
                    q.clone().narrow(0, offset, n),
                    &keys,
                    &values,
                    start,
                ));
            }
            x = x + block.wo.forward(Tensor::cat(attended, 0));

            let h = rms_norm(x.clone(), block.ffn_norm.clone(), c.rms_eps);
            let gate = silu(block.w_gate.forward(h.clone()));
            x = x + block.w_down.forward(gate * block.w_up.forward(h));
        }
        if wanted.is_empty() {
            return None;
        }
        let x = if wanted.len() == total {
            x
        } else {
            x.select(0, int(wanted))
        };
        let x = rms_norm(x, self.output_norm.clone(), c.rms_eps);
        Some(self.output.forward(x))
    }
}

/// Causal grouped-query attention, one new position at a time.
/// `q: [n, h, hd]`, `keys`/`values: [g, start + n, hd]` → `[n, h·hd]`.
fn attention<B: Backend>(
    c: &LlamaConfig,
    q: Tensor<B, 3>,
    keys: &Tensor<B, 3>,
    values: &Tensor<B, 3>,
    start: usize,
) -> Tensor<B, 2> {
    let [n, _, hd] = q.dims();
    let group = c.n_head / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let rows: Vec<Tensor<B, 2>> = (0..n)
        .map(|i| {
            let context = start + i + 1;
            // Query heads h·group .. h·group + group share key/value head h.
            let qi = q.clone().narrow(0, i, 1).reshape([c.n_head_kv, group, hd]);
            let k = keys.clone().narrow(1, 0, context);
            let v = values.clone().narrow(1, 0, context);
            let scores = qi.matmul(k.swap_dims(1, 2)).mul_scalar(scale);
            softmax(scores, 2).matmul(v).reshape([1, c.n_head * hd])
        })
        .collect();
    Tensor::cat(rows, 0)
}

impl<B: Backend> Llama<B> {
    /// Bytes of key/value cache one position takes (f16 on the host
    /// engine, f32 on the tensor engine).
    pub fn kv_bytes_per_position(&self) -> usize {
        match self.engine {
            Engine::Host(_) => HostCache::bytes_per_position_of(
                self.config.n_layer,
                self.config.n_head_kv * self.config.head_dim,
            ),
            Engine::Tensors(_) => kv_bytes_per_position(&self.config),
        }
    }

    /// Reads `[n, v]` logits back to the host, one row per position.
    pub fn logits_to_rows(&self, logits: Tensor<B, 2>) -> Result<Vec<Vec<f32>>, ModelError> {
        let [_, v] = logits.dims();
        let data = logits
            .try_into_data()
            .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
        rows_of(data, v)
    }

    /// [`Self::logits_to_rows`], awaiting the device (WebGPU in a browser
    /// cannot block on a readback).
    pub async fn logits_to_rows_async(
        &self,
        logits: Tensor<B, 2>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let [_, v] = logits.dims();
        let data = logits
            .into_data_async()
            .await
            .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
        rows_of(data, v)
    }
}

/// `[n, v]` logits as `n` rows of `v`.
fn rows_of(data: burn::tensor::TensorData, v: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let flat = data
        .to_vec::<f32>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
    Ok(flat.chunks_exact(v).map(<[f32]>::to_vec).collect())
}

/// Keys and values of every layer in the tensor engine's buffers, f32.
fn kv_bytes_per_position(c: &LlamaConfig) -> usize {
    c.n_layer * 2 * c.n_head_kv * c.head_dim * std::mem::size_of::<f32>()
}

/// Dequantises tensor `name`, checking its GGUF dims.
pub(crate) fn load_tensor<S: GgufSource>(
    gguf: &mut Gguf<S>,
    name: &str,
    expected: &[usize],
) -> Result<Vec<f32>, ModelError> {
    let (dims, values) = gguf.tensor_f32(name)?;
    let expected: Vec<u64> = expected.iter().map(|&x| x as u64).collect();
    if dims != expected {
        return Err(ModelError::Shape {
            tensor: name.to_owned(),
            found: dims,
            expected,
        });
    }
    Ok(values)
}

/// `x · w / sqrt(mean(x²) + eps)`, row by row.
fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f32) -> Tensor<B, 2> {
    let mean_square = (x.clone() * x.clone()).mean_dim(1);
    x * mean_square.add_scalar(eps).sqrt().recip() * weight.unsqueeze::<2>()
}

/// Rotary position embedding on adjacent pairs `(x[2i], x[2i+1])`, the layout
/// GGUF stores llama's Q/K in. `x: [n, heads, hd]`, `cos`/`sin: [n, hd/2]`.
fn rope<B: Backend>(x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
    let [n, heads, hd] = x.dims();
    let pairs = x.reshape([n, heads, hd / 2, 2]);
    let even = pairs.clone().narrow(3, 0, 1);
    let odd = pairs.narrow(3, 1, 1);
    let cos = cos.clone().reshape([n, 1, hd / 2, 1]);
    let sin = sin.clone().reshape([n, 1, hd / 2, 1]);
    let rotated_even = even.clone() * cos.clone() - odd.clone() * sin.clone();
    let rotated_odd = even * sin + odd * cos;
    Tensor::cat(vec![rotated_even, rotated_odd], 3).reshape([n, heads, hd])
}

/// `cos(p·θ_i)` and `sin(p·θ_i)` with `θ_i = base^(−2i/hd)`, computed in
/// f64, for every position of the context: `[context, hd/2]` each, row-major.
pub(crate) fn rope_table_values(c: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.head_dim / 2;
    let mut cos = Vec::with_capacity(c.context_length * half);
    let mut sin = Vec::with_capacity(c.context_length * half);
    for p in 0..c.context_length {
        for i in 0..half {
            let theta = f64::from(c.rope_base).powf(-2.0 * i as f64 / c.head_dim as f64);
            let angle = p as f64 * theta;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// [`rope_table_values`] as tensors on `device`.
fn rope_tables<B: Backend>(c: &LlamaConfig, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (cos, sin) = rope_table_values(c);
    let shape = [c.context_length, c.head_dim / 2];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}
