//! The one place that names concrete burn backends. Everything else in this
//! crate is generic over `B: Backend`.
//!
//! | feature | type | where |
//! |---|---|---|
//! | `cpu` (default) | [`Cpu`] = burn's `Flex` | native CPU: the host kernels (logits handed back as flex tensors); in a browser, flex's tensor ops |
//! | `cuda` | [`Cuda`] | NVIDIA GPUs (CUDA loaded at run time) |
//! | `webgpu` | [`WebGpu`] | browsers (wasm32) and native GPUs via wgpu (Vulkan, Metal) |
//!
//! Each backend also says which engine runs the model on it by default
//! ([`Backend::KERNELS`]): on a native CPU our own quantised kernels
//! (`shared-kernels`: weights kept in their GGUF formats, 8-bit activations,
//! integer dot products); on GPUs burn's tensor ops for everything but the
//! linear layers and embedding lookups, which run our CubeCL kernels
//! (`crate::cube`) on weights kept quantised on the device, f32 arithmetic
//! ([`Backend::DeviceMatrix`]); on the
//! browser's CPU burn's tensor ops throughout (weights dequantised to f32 at
//! load). On WebGPU the device must be initialised asynchronously first
//! ([`init_webgpu`]).

use burn::tensor::Tensor;
use shared_kernels::PlanarMatrix;

/// Which code runs the model's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// `shared-kernels` on the host CPU, on `threads` threads (`0`: one per
    /// core). Logits are handed back as tensors of the backend.
    Host {
        /// Threads a pass is spread over.
        threads: usize,
    },
    /// burn's tensor ops on the backend's device; the linear layers on the
    /// backend's own kernels where it has them ([`Backend::DeviceMatrix`]),
    /// else f32 weights and burn's matmul.
    Tensors,
}

impl Kernels {
    /// `self` on `threads` threads if it runs on the host (`0`: one per core).
    pub fn with_threads(self, threads: usize) -> Kernels {
        match self {
            Kernels::Host { .. } => Kernels::Host { threads },
            Kernels::Tensors => Kernels::Tensors,
        }
    }
}

/// A burn backend the model runs on.
pub trait Backend: burn::tensor::backend::Backend {
    /// The engine [`crate::model::Llama::load`] picks on this backend.
    const KERNELS: Kernels;

    /// Whether the backend's tensors live in host memory (the CPU backend),
    /// rather than in a device's.
    const HOST_MEMORY: bool;

    /// A weight matrix kept on the device in the form this backend's own
    /// kernels multiply (quantised); `Infallible` where there are none and
    /// the tensor engine multiplies f32 copies with burn's matmul.
    type DeviceMatrix: Clone + std::fmt::Debug + Send + Sync;

    /// Whether [`Backend::upload_matrix`] can succeed (else weights are not
    /// even converted for it).
    const HAS_DEVICE_MATRICES: bool;

    /// Uploads `m` for [`Backend::device_matmul`], or `None` if this backend
    /// has no kernels of its own.
    fn upload_matrix(m: &PlanarMatrix, device: &Self::Device) -> Option<Self::DeviceMatrix>;

    /// `x [n, m.cols] → [n, m.rows]`, each row's result independent of the
    /// others (batch-invariant).
    fn device_matmul(x: Tensor<Self, 2>, m: &Self::DeviceMatrix) -> Tensor<Self, 2>;

    /// Bytes `m` takes on the device.
    fn device_matrix_bytes(m: &Self::DeviceMatrix) -> usize;

    /// Rows `ids` of `m`, dequantised: `[ids.len(), m.cols]` (embedding
    /// lookups).
    fn device_rows(m: &Self::DeviceMatrix, ids: &[u32], device: &Self::Device) -> Tensor<Self, 2>;
}

/// Read bandwidth of `device`'s memory in GB/s: the best of 5 rounds of
/// summing four 64 MiB tensors on it (256 MiB read, past any GPU's cache; one
/// tensor stays within every adapter's binding limit, 128 MiB on some). What
/// `oracle bench` sets a GPU's decode limit by.
#[cfg(not(target_arch = "wasm32"))]
pub fn device_read_bandwidth<B: Backend>(device: &B::Device) -> f64 {
    const PART: usize = 64 << 20;
    const PARTS: usize = 4;
    let parts: Vec<Tensor<B, 1>> = (0..PARTS)
        .map(|i| Tensor::<B, 1>::full([PART / 4], i as f32, device))
        .collect();
    // The first sums compile the kernels.
    for p in &parts {
        p.clone().sum().into_data();
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for p in &parts {
            std::hint::black_box(p.clone().sum().into_data());
        }
        best = best.max((PART * PARTS) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The CPU backend.
#[cfg(feature = "cpu")]
pub type Cpu = burn::backend::Flex;

/// Natively the CPU runs our kernels. In a browser (wasm32) it keeps burn's
/// tensor ops for now: the kernels' portable path has no wasm SIMD yet, and
/// the browser tests compare the tab's CPU and WebGPU logits with each other
/// and with the f32 reference at f32 tolerances.
#[cfg(feature = "cpu")]
impl Backend for Cpu {
    const KERNELS: Kernels = if cfg!(target_arch = "wasm32") {
        Kernels::Tensors
    } else {
        Kernels::Host { threads: 0 }
    };
    const HOST_MEMORY: bool = true;
    type DeviceMatrix = std::convert::Infallible;
    const HAS_DEVICE_MATRICES: bool = false;

    fn upload_matrix(_: &PlanarMatrix, _: &Self::Device) -> Option<Self::DeviceMatrix> {
        None
    }

    fn device_matmul(_: Tensor<Self, 2>, m: &Self::DeviceMatrix) -> Tensor<Self, 2> {
        match *m {}
    }

    fn device_matrix_bytes(m: &Self::DeviceMatrix) -> usize {
        match *m {}
    }

    fn device_rows(m: &Self::DeviceMatrix, _: &[u32], _: &Self::Device) -> Tensor<Self, 2> {
        match *m {}
    }
}

/// burn's CubeCL backends (CUDA, WebGPU) in f32 run the tensor engine with our
/// own kernels for the linear layers (`crate::cube`): weights stay quantised
/// on the device and every row is reduced in one fixed order.
#[cfg(any(feature = "cuda", feature = "webgpu"))]
impl<R, I, BT> Backend for burn_cubecl::CubeBackend<R, f32, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    const KERNELS: Kernels = Kernels::Tensors;
    const HOST_MEMORY: bool = false;
    type DeviceMatrix = crate::cube::CubeMatrix<R>;
    const HAS_DEVICE_MATRICES: bool = true;

    fn upload_matrix(m: &PlanarMatrix, device: &Self::Device) -> Option<Self::DeviceMatrix> {
        Some(crate::cube::CubeMatrix::upload(m, device))
    }

    fn device_matmul(x: Tensor<Self, 2>, m: &Self::DeviceMatrix) -> Tensor<Self, 2> {
        crate::cube::matmul(x, m)
    }

    fn device_matrix_bytes(m: &Self::DeviceMatrix) -> usize {
        m.bytes()
    }

    fn device_rows(m: &Self::DeviceMatrix, ids: &[u32], device: &Self::Device) -> Tensor<Self, 2> {
        crate::cube::rows(m, ids, device)
    }
}

/// The CPU device.
#[cfg(feature = "cpu")]
pub fn cpu_device() -> burn::backend::flex::FlexDevice {
    burn::backend::flex::FlexDevice
}

/// The CUDA backend, f32.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// CUDA device `index`.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice::new(index)
}

/// The WebGPU backend, f32.
#[cfg(feature = "webgpu")]
pub type WebGpu = burn::backend::WebGpu<f32, i32>;

/// What the WebGPU adapter the model runs on says about itself.
#[cfg(feature = "webgpu")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebGpuInfo {
    /// The adapter's name (e.g. `SwiftShader Device (Subzero)`), else its vendor.
    pub adapter: String,
    /// The graphics API wgpu drives it through (`BrowserWebGpu` in a browser).
    pub api: String,
    /// Whether the adapter offers `shader-f16`.
    pub shader_f16: bool,
    /// The largest storage buffer one binding may cover, bytes.
    pub max_storage_buffer_binding_size: u64,
}

/// The graphics API under wgpu: the browser's WebGPU in a tab; natively,
/// whichever of Vulkan or Metal the machine has.
#[cfg(all(feature = "webgpu", target_arch = "wasm32"))]
type GraphicsApi = burn::backend::wgpu::graphics::WebGpu;
#[cfg(all(feature = "webgpu", not(target_arch = "wasm32")))]
type GraphicsApi = burn::backend::wgpu::graphics::AutoGraphicsApi;

/// Sets up the default WebGPU device. Must complete before any tensor is made
/// on it; in a browser the synchronous setup would panic.
#[cfg(feature = "webgpu")]
pub async fn init_webgpu() -> (burn::backend::wgpu::WgpuDevice, WebGpuInfo) {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let setup =
        burn::backend::wgpu::init_setup_async::<GraphicsApi>(&device, Default::default()).await;
    let info = setup.adapter.get_info();
    let adapter = if info.name.is_empty() {
        info.vendor.to_string()
    } else {
        info.name.clone()
    };
    // burn does not re-export wgpu's `Features`; its Debug form names each flag.
    let features = format!("{:?}", setup.adapter.features());
    let info = WebGpuInfo {
        adapter,
        api: format!("{:?}", setup.backend),
        shader_f16: features.contains("SHADER_F16"),
        max_storage_buffer_binding_size: setup.adapter.limits().max_storage_buffer_binding_size,
    };
    (device, info)
}

/// Sets up the default wgpu device natively (a GPU through Vulkan or Metal, or a software Vulkan such as Mesa's lavapipe), blocking until ready.
#[cfg(all(feature = "webgpu", not(target_arch = "wasm32")))]
pub fn wgpu_device() -> (burn::backend::wgpu::WgpuDevice, WebGpuInfo) {
    futures::executor::block_on(init_webgpu())
}
