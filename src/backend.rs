//! Choosing a burn backend at run time: `--backend cpu|wgpu|cuda`, `--device N`, `--dtype`,
//! `--fusion`. Work that runs on a backend implements `BackendTask` and is monomorphised per
//! backend type here, the only place that names concrete backends.
use anyhow::{bail, Result};
use burn::prelude::Backend;
use serde::{Deserialize, Serialize};

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub kind: BackendKind,
    /// GPU index (ignored on cpu).
    pub device: usize,
    pub dtype: DType,
    /// burn's kernel fusion on the GPU backends: off unless asked for. burn 0.21's fusion has
    /// given wrong results here (README, "Which paths are verified").
    pub fusion: bool,
}

impl Default for BackendSpec {
    fn default() -> Self {
        Self { kind: BackendKind::Cpu, device: 0, dtype: DType::F32, fusion: false }
    }
}

/// Creation options for float tensors in `B`'s own float type. burn 0.21 otherwise takes a
/// device's default dtype, fixed once per process by the first backend type that touches the
/// device: an f16 backend after an f32 one on the same GPU would silently compute in f32.
pub fn float_options<B: Backend>(device: &B::Device) -> burn::tensor::TensorCreationOptions<B> {
    (device, <B::FloatElem as burn::tensor::Element>::dtype()).into()
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
            DType::F32 => task.run::<burn::backend::NdArray<f32>>(burn::backend::ndarray::NdArrayDevice::Cpu),
            other => bail!("the cpu backend computes in f32 only; --dtype {other:?} needs --backend cuda (or wgpu for f16)"),
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
    type Plain<F> = CubeBackend<WgpuRuntime, F, i32, u32>;
    match (spec.dtype, fused(spec)?) {
        (DType::F32, false) => task.run::<Plain<f32>>(device),
        (DType::F16, false) => task.run::<Plain<half::f16>>(device),
        #[cfg(feature = "fusion")]
        (DType::F32, true) => task.run::<burn_fusion::Fusion<Plain<f32>>>(device),
        #[cfg(feature = "fusion")]
        (DType::F16, true) => task.run::<burn_fusion::Fusion<Plain<half::f16>>>(device),
        (DType::Bf16, _) => bail!("--dtype bf16 is not supported on wgpu (WGSL has no bf16): use --dtype f16, or --backend cuda"),
        #[cfg(not(feature = "fusion"))]
        (_, true) => unreachable!("fused() is false without the fusion feature"),
    }
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
    match (spec.dtype, fused(spec)?) {
        (DType::F32, false) => task.run::<Plain<f32>>(device),
        (DType::F16, false) => task.run::<Plain<half::f16>>(device),
        (DType::Bf16, false) => task.run::<Plain<half::bf16>>(device),
        #[cfg(feature = "fusion")]
        (DType::F32, true) => task.run::<burn_fusion::Fusion<Plain<f32>>>(device),
        #[cfg(feature = "fusion")]
        (DType::F16, true) => task.run::<burn_fusion::Fusion<Plain<half::f16>>>(device),
        #[cfg(feature = "fusion")]
        (DType::Bf16, true) => task.run::<burn_fusion::Fusion<Plain<half::bf16>>>(device),
        #[cfg(not(feature = "fusion"))]
        (_, true) => unreachable!("fused() is false without the fusion feature"),
    }
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
