//! Choosing a burn backend at run time: `--backend cpu|wgpu|cuda`, `--device N`, `--dtype`,
//! `--fusion`. Work that runs on a backend implements `BackendTask` and is monomorphised per
//! backend type here, the only place that names concrete backends.
use anyhow::{bail, Result};
use burn::prelude::{Backend, Int, Tensor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod exact;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// f32 tensors, matrix products on the tensor cores in TF32 (cuda only): faster, and about
    /// 1e-3 relative error per product.
    Tf32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub kind: BackendKind,
    /// GPU index (ignored on cpu).
    pub device: usize,
    pub dtype: DType,
    /// burn's kernel fusion on the GPU backends: off unless asked for. burn 0.21's fusion has
    /// given wrong results here (docs/performance.md, "Which paths are verified").
    pub fusion: bool,
}

impl Default for BackendSpec {
    fn default() -> Self {
        Self { kind: BackendKind::Cpu, device: 0, dtype: DType::F32, fusion: false }
    }
}

/// The CPU backend: burn-flex (gemm's kernels, rayon threads). Measured faster than burn-ndarray
/// end to end (docs/performance.md, "How it is fast").
pub type Cpu = burn::backend::Flex;

/// Sets the CPU backend's worker threads (all cores by default). Once per process, before any
/// CPU work; the GPU backends ignore it.
pub fn set_cpu_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    // Each worker is an OS thread with its own stack: a count far past the cores only costs.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    crate::limits::at_most("--threads", threads, 8 * cores, &format!("eight workers for each of this machine's {cores} cores"))?;
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
        Ok(()) => Ok(()),
        // A second model in the same process (a notebook) may ask for the same count again.
        Err(_) if rayon::current_num_threads() == threads => Ok(()),
        Err(_) => bail!("--threads {threads}: the cpu backend's threads are set once per process, and are {} already", rayon::current_num_threads()),
    }
}

/// Creation options for float tensors in `B`'s own float type. burn 0.21 otherwise takes a
/// device's default dtype, fixed once per process by the first backend type that touches the
/// device: an f16 backend after an f32 one on the same GPU would silently compute in f32.
pub fn float_options<B: Backend>(device: &B::Device) -> burn::tensor::TensorCreationOptions<B> {
    (device, <B::FloatElem as burn::tensor::Element>::dtype()).into()
}

thread_local! {
    /// Whether f32 products may use TF32: set for the length of a `--dtype tf32` task.
    static TF32: Cell<bool> = const { Cell::new(false) };
}

/// `lhs @ rhs`, exact in f32 on every backend: on CUDA burn's own matmul would take f32 inputs as
/// TF32 (`exact.rs`), which only `--dtype tf32` allows.
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    if !TF32.get() {
        if let Some(out) = exact::cuda_matmul(&lhs, &rhs) {
            return out;
        }
    }
    lhs.matmul(rhs)
}

/// The matrix-product kernels the exact-f32 tuner excluded in this process (`exact.rs`): a run
/// records them in its manifest.
pub fn kernels_excluded() -> Vec<String> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    return exact::excluded();
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    Vec::new()
}

/// A tensor's shape, and its strides where the backend's kernels read them (cubecl's tensors:
/// wgpu and cuda without fusion), as `doctor` prints them.
pub fn layout<B: Backend, const D: usize>(t: &Tensor<B, D>) -> String {
    let prim: Box<dyn std::any::Any> = Box::new(t.clone().into_primitive().tensor());
    #[cfg(feature = "wgpu")]
    if let Some(c) = prim.downcast_ref::<burn_cubecl::tensor::CubeTensor<burn::backend::wgpu::WgpuRuntime>>() {
        return format!("{:?} strides {:?}", c.meta.shape().to_vec(), c.meta.strides().to_vec());
    }
    #[cfg(feature = "cuda")]
    if let Some(c) = prim.downcast_ref::<burn_cubecl::tensor::CubeTensor<cubecl::cuda::CudaRuntime>>() {
        return format!("{:?} strides {:?}", c.meta.shape().to_vec(), c.meta.strides().to_vec());
    }
    drop(prim);
    format!("{:?}", t.dims())
}

/// Work that runs on whichever backend the user chose.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

#[cfg(not(all(feature = "wgpu", feature = "cuda")))]
fn not_built<T>(kind: &str) -> Result<T> {
    bail!("this patchbay was built without the {kind} backend: rebuild with `cargo build --release --features {kind}`")
}

pub fn dispatch<T: BackendTask>(spec: &BackendSpec, task: T) -> Result<T::Output> {
    match spec.kind {
        BackendKind::Cpu => match spec.dtype {
            DType::F32 => task.run::<Cpu>(Default::default()),
            other => bail!("the cpu backend computes in f32 only; --dtype {} needs --backend cuda (or wgpu for f16)", format!("{other:?}").to_lowercase()),
        },
        BackendKind::Wgpu => wgpu(spec, task),
        BackendKind::Cuda => cuda(spec, task),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu<T: BackendTask>(spec: &BackendSpec, task: T) -> Result<T::Output> {
    use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
    // Without an explicit --device, let wgpu pick (a GPU, or lavapipe on a machine without one).
    let device = match spec.device {
        0 => WgpuDevice::DefaultDevice,
        n => WgpuDevice::DiscreteGpu(n),
    };
    check_wgpu_adapter(spec.device)?;
    type Plain<F> = CubeBackend<WgpuRuntime, F, i32, u32>;
    match (spec.dtype, fused(spec)?) {
        (DType::F32, false) => task.run::<Plain<f32>>(device),
        (DType::F16, false) => task.run::<Plain<half::f16>>(device),
        #[cfg(feature = "fusion")]
        (DType::F32, true) => task.run::<burn_fusion::Fusion<Plain<f32>>>(device),
        #[cfg(feature = "fusion")]
        (DType::F16, true) => task.run::<burn_fusion::Fusion<Plain<half::f16>>>(device),
        (DType::Bf16, _) => bail!("--dtype bf16 is not supported on wgpu (WGSL has no bf16): use --dtype f16, or --backend cuda"),
        (DType::Tf32, _) => bail!("--dtype tf32 is a cuda mode (TF32 tensor cores): on wgpu use f32 or f16"),
        #[cfg(not(feature = "fusion"))]
        (_, true) => unreachable!("fused() is false without the fusion feature"),
    }
}

/// burn panics (in another thread, then on a closed channel) when wgpu finds no adapter: look
/// first, and say what to install.
#[cfg(feature = "wgpu")]
fn check_wgpu_adapter(device: usize) -> Result<()> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    // The graphics API burn's default wgpu device uses.
    let api = if cfg!(target_os = "macos") { wgpu::Backends::METAL } else { wgpu::Backends::VULKAN };
    let mut listing = std::pin::pin!(instance.enumerate_adapters(api));
    // Native wgpu answers at once; if it ever does not, let burn look for itself.
    let Poll::Ready(adapters) = listing.as_mut().poll(&mut Context::from_waker(Waker::noop())) else { return Ok(()) };
    let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(wgpu::Adapter::get_info).collect();
    if infos.is_empty() {
        bail!("--backend wgpu: no GPU adapter found (no {api:?} driver). Without a GPU, Mesa's lavapipe runs wgpu on the CPU: apt-get install mesa-vulkan-drivers libvulkan1");
    }
    let discrete = infos.iter().filter(|i| i.device_type == wgpu::DeviceType::DiscreteGpu).count();
    if device > 0 && device >= discrete {
        let names: Vec<String> = infos.iter().map(|i| format!("{} ({:?})", i.name, i.device_type)).collect();
        bail!("--device {device}: there are {discrete} discrete GPUs (adapters: {})", names.join(", "));
    }
    Ok(())
}

#[cfg(not(feature = "wgpu"))]
fn wgpu<T: BackendTask>(_: &BackendSpec, _: T) -> Result<T::Output> {
    not_built("wgpu")
}

#[cfg(feature = "cuda")]
fn cuda<T: BackendTask>(spec: &BackendSpec, task: T) -> Result<T::Output> {
    use burn::backend::cuda::CudaDevice;
    type Plain<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
    let device = CudaDevice::new(spec.device);
    let fused = fused(spec)?;
    if fused && spec.dtype == DType::F32 {
        bail!("--fusion on cuda computes f32 products in TF32 (burn's fused matmul): use --dtype tf32 --fusion, or drop --fusion for exact f32");
    }
    let tf32 = TF32.replace(spec.dtype == DType::Tf32);
    let out = match (spec.dtype, fused) {
        (DType::F32 | DType::Tf32, false) => task.run::<Plain<f32>>(device),
        (DType::F16, false) => task.run::<Plain<half::f16>>(device),
        (DType::Bf16, false) => task.run::<Plain<half::bf16>>(device),
        #[cfg(feature = "fusion")]
        (DType::F32 | DType::Tf32, true) => task.run::<burn_fusion::Fusion<Plain<f32>>>(device), // f32: refused above
        #[cfg(feature = "fusion")]
        (DType::F16, true) => task.run::<burn_fusion::Fusion<Plain<half::f16>>>(device),
        #[cfg(feature = "fusion")]
        (DType::Bf16, true) => task.run::<burn_fusion::Fusion<Plain<half::bf16>>>(device),
        #[cfg(not(feature = "fusion"))]
        (_, true) => unreachable!("fused() is false without the fusion feature"),
    };
    TF32.set(tf32);
    out
}

#[cfg(not(feature = "cuda"))]
fn cuda<T: BackendTask>(_: &BackendSpec, _: T) -> Result<T::Output> {
    not_built("cuda")
}

/// Whether to run the fused backend: asked for, which needs it compiled in.
#[allow(dead_code)] // unused when no GPU backend is compiled in
fn fused(spec: &BackendSpec) -> Result<bool> {
    if spec.fusion && !cfg!(feature = "fusion") {
        bail!("this patchbay was built without kernel fusion: rebuild with `--features fusion`, or drop --fusion");
    }
    Ok(spec.fusion)
}

/// Keys and values of the `len` positions before the ones being computed, from other runs: `k`
/// and `v` [runs, positions ≥ len, head, d_head], row r of the segment reading run `pairs[r]`
/// (also on the device, `pair_ids`). Lets a caller compute only a suffix of the sequence on top
/// of another run's prefix, without copying the prefix out first.
pub struct Prefix<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    pub pairs: Vec<usize>,
    pub pair_ids: Tensor<B, 1, Int>,
    pub len: usize,
}

impl<B: Backend> Prefix<B> {
    /// The rows' own prefix keys or values, [rows, head, len, d_head].
    pub fn rows(&self, t: &Tensor<B, 4>) -> Tensor<B, 4> {
        t.clone().select(0, self.pair_ids.clone()).narrow(1, 0, self.len).swap_dims(1, 2)
    }
}
