//! Exact f32 matrix products on cubecl runtimes. cubecl's tensor-core matmuls read f32 inputs as
//! TF32 (a 10-bit mantissa: cubek-matmul's `adjust_dtypes`), and burn's autotune picks them for
//! most shapes: about 1e-3 relative error per product, over the 1e-4 patchbay promises against HF.
//! Here patchbay's own tuner chooses among cubek's kernels that multiply in f32 on the CUDA cores
//! only (CUDA uses it for `--dtype f32`; `--dtype tf32` keeps burn's own choice).
//!
//! The tuner trusts no kernel unchecked: some cubek kernels launch without error on shapes they
//! were not made for and compute something else. The first time a shape key is met, every
//! candidate runs on the real inputs and is compared with the naive kernel's output; one that
//! disagrees is excluded for that key (one warning line, and `excluded()` lists it for the run's
//! manifest), and the fastest of the others is kept for the rest of the process.
use burn_cubecl::{kernel::matmul::init_matmul_output, ops::into_data_sync, tensor::CubeTensor, CubeRuntime};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulKind};
use cubek::matmul::launch::{launch_ref, MatmulAutotuneKey, Strategy};
use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Launches a kernel writing `lhs @ rhs` into `out` (allocated, contiguous).
type Launch<R> = Box<dyn Fn(&CubeTensor<R>, &CubeTensor<R>, &CubeTensor<R>) -> Result<(), String> + Send + Sync>;

/// A kernel the tuner may choose.
pub struct Candidate<R: CubeRuntime> {
    pub name: String,
    /// Matrix-vector kernels are tried on matrix-vector shapes only, as in burn's autotune.
    matvec_only: bool,
    launch: Launch<R>,
}

impl<R: CubeRuntime> Candidate<R> {
    fn cubek(strategy: Strategy, matvec_only: bool) -> Self {
        let name = strategy.to_string();
        Self { name, matvec_only, launch: Box::new(move |lhs, rhs, out| launch(&strategy, lhs, rhs, out)) }
    }

    /// A deliberately wrong kernel, for tests of the check: the naive kernel with its operands
    /// swapped, which launches on square shapes and computes `rhs @ lhs`. It does no work beyond
    /// the naive kernel's, so it is never slower than the right answer.
    #[doc(hidden)]
    pub fn wrong_for_tests() -> Self {
        Self { name: "wrong-for-tests".into(), matvec_only: false, launch: Box::new(|lhs, rhs, out| launch(&Strategy::Naive, rhs, lhs, out)) }
    }
}

fn launch<R: CubeRuntime>(strategy: &Strategy, lhs: &CubeTensor<R>, rhs: &CubeTensor<R>, out: &CubeTensor<R>) -> Result<(), String> {
    let dtype = lhs.dtype.into();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: dtype, rhs: dtype, out: dtype });
    let (l, r) = (InputBinding::new(lhs.clone().binding(), dtype), InputBinding::new(rhs.clone().binding(), dtype));
    launch_ref(strategy, &out.client, l, r, out.clone().binding(), &mut dtypes).map_err(|e| format!("{e:?}"))
}

/// Kernels excluded so far in this process, one line each (kernel, shapes, how far off).
static EXCLUDED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The kernels the self-check excluded in this process, for a run's manifest.
pub fn excluded() -> Vec<String> {
    EXCLUDED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The self-checking tuner: candidates[0], the naive kernel, is the reference and the fallback.
pub struct Tuner<R: CubeRuntime> {
    candidates: Vec<Candidate<R>>,
    chosen: Mutex<HashMap<MatmulAutotuneKey, usize>>,
}

impl<R: CubeRuntime> Default for Tuner<R> {
    /// burn's own naive, unit and matrix-vector kernels, without the accelerated ones.
    fn default() -> Self {
        let mut candidates = vec![Candidate::cubek(Strategy::Naive, false)];
        for tile_size in [TileSizeSelection::MaxTileSize, TileSizeSelection::MinTileSize] {
            candidates.push(Candidate::cubek(Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size })), false));
            candidates.push(Candidate::cubek(Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs { tile_size })), false));
        }
        candidates.extend([
            Candidate::cubek(Strategy::SimpleVecMat(BlueprintStrategy::Inferred(().into())), true),
            Candidate::cubek(Strategy::DoubleVecMat(BlueprintStrategy::Inferred(().into())), true),
            Candidate::cubek(Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default())), true),
            Candidate::cubek(Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default())), true),
        ]);
        Self { candidates, chosen: Mutex::new(HashMap::new()) }
    }
}

impl<R: CubeRuntime> Tuner<R> {
    /// The default candidates and one more (tests inject a wrong kernel this way).
    pub fn with(mut self, candidate: Candidate<R>) -> Self {
        self.candidates.push(candidate);
        self
    }

    /// `lhs @ rhs` in f32 by the kernel chosen for their key, choosing it on the first meeting.
    pub fn matmul(&self, lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> CubeTensor<R> {
        let key = MatmulAutotuneKey::generate(&lhs.client, lhs.meta.shape(), rhs.meta.shape(), lhs.meta.strides(), rhs.meta.strides(), lhs.dtype.into(), rhs.dtype.into(), lhs.dtype.into(), None, None);
        let known = self.chosen.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let index = known.unwrap_or_else(|| {
            let index = self.choose(&key, &lhs, &rhs);
            self.chosen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, index);
            index
        });
        let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
        if (self.candidates[index].launch)(&lhs, &rhs, &out).is_err() {
            // A kernel that launched while tuning refuses a shape of the same key: the naive one
            // takes every shape.
            (self.candidates[0].launch)(&lhs, &rhs, &out).expect("the naive matmul launches on every shape");
        }
        out
    }

    /// Runs every candidate that applies on the real inputs, excludes those that disagree with
    /// the naive kernel, and returns the fastest of the rest.
    fn choose(&self, key: &MatmulAutotuneKey, lhs: &CubeTensor<R>, rhs: &CubeTensor<R>) -> usize {
        let matvec = matches!(key.analysis.kind, MatmulKind::MatVec | MatmulKind::VecMat);
        let run = |c: &Candidate<R>| -> Result<(CubeTensor<R>, Duration), String> {
            let out = init_matmul_output(lhs, rhs, lhs.dtype);
            (c.launch)(lhs, rhs, &out)?;
            let took = time(|| (c.launch)(lhs, rhs, &out), &lhs.client)?;
            Ok((out, took))
        };
        let (reference, mut best) = run(&self.candidates[0]).expect("the naive matmul launches on every shape");
        let reference = values(reference);
        let mut chosen = 0;
        for (i, c) in self.candidates.iter().enumerate().skip(1) {
            if c.matvec_only && !matvec {
                continue;
            }
            let Ok((out, took)) = run(c) else { continue }; // does not launch on this shape
            if let Some(off) = disagreement(&values(out), &reference) {
                let line = format!(
                    "matmul kernel {} excluded for {:?} @ {:?} (strides {:?}, {:?}): {off}",
                    c.name,
                    lhs.meta.shape(),
                    rhs.meta.shape(),
                    lhs.meta.strides(),
                    rhs.meta.strides()
                );
                eprintln!("warning: {line}");
                EXCLUDED.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                continue;
            }
            if took < best {
                (chosen, best) = (i, took);
            }
        }
        chosen
    }
}

/// The mean of three launches' wall time, after the warm-up launch the check made.
fn time<R: CubeRuntime>(launch: impl Fn() -> Result<(), String>, client: &cubecl::client::ComputeClient<R>) -> Result<Duration, String> {
    let sync = || cubecl::future::block_on(client.sync()).map_err(|e| format!("{e:?}"));
    sync()?;
    let start = Instant::now();
    for _ in 0..3 {
        launch()?;
    }
    sync()?;
    Ok(start.elapsed() / 3)
}

fn values<R: CubeRuntime>(t: CubeTensor<R>) -> Vec<f32> {
    into_data_sync(t).into_vec::<f32>().expect("an f32 matmul output")
}

/// Why `out` is not `reference` up to f32 rounding in another summation order (relative to the
/// largest magnitude, so that near-zero entries do not count), or None.
fn disagreement(out: &[f32], reference: &[f32]) -> Option<String> {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let (at, diff) = out.iter().zip(reference).map(|(a, b)| (a - b).abs()).enumerate().fold((0, 0f32), |(i, m), (j, d)| if !(d <= m) { (j, d) } else { (i, m) });
    // NaN compares false: a NaN difference is kept and reported.
    (!(diff <= 1e-4 * scale)).then(|| format!("max |Δ| {diff:e} at element {at} against the naive kernel (largest |value| {scale:e})"))
}

/// `lhs @ rhs` by the process's checked tuner when `B` is the unfused CUDA backend in f32; `None`
/// otherwise (other backends, half precision, or the fused backend, whose tensors are not cubecl's).
#[cfg(feature = "cuda")]
pub fn cuda_matmul<B: burn::prelude::Backend, const D: usize>(lhs: &burn::prelude::Tensor<B, D>, rhs: &burn::prelude::Tensor<B, D>) -> Option<burn::prelude::Tensor<B, D>> {
    use burn::tensor::{DType, TensorPrimitive};
    use cubecl::cuda::CudaRuntime;
    use std::any::Any;
    use std::sync::LazyLock;
    type Cuda = CubeTensor<CudaRuntime>;
    static TUNER: LazyLock<Tuner<CudaRuntime>> = LazyLock::new(Tuner::default);
    let cuda = |t: &burn::prelude::Tensor<B, D>| (Box::new(t.clone().into_primitive().tensor()) as Box<dyn Any>).downcast::<Cuda>().ok();
    let (lhs, rhs) = (cuda(lhs)?, cuda(rhs)?);
    if lhs.dtype != DType::F32 {
        return None;
    }
    let out = (Box::new(TUNER.matmul(*lhs, *rhs)) as Box<dyn Any>).downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(burn::prelude::Tensor::from_primitive(TensorPrimitive::Float(*out)))
}
