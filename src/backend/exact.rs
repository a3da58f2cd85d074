//! Exact f32 matrix products on CUDA. cubecl's tensor-core matmuls read f32 inputs as TF32 (a
//! 10-bit mantissa: cubek-matmul's `adjust_dtypes`), and burn's autotune picks them for most
//! shapes: about 1e-3 relative error per product, over the 1e-4 patchbay promises against HF.
//! Here the same autotuner runs over cubek's kernels that multiply in f32 on the CUDA cores
//! only; `--dtype tf32` keeps burn's own choice.
use burn::prelude::{Backend, Tensor};
use burn::tensor::{DType, TensorPrimitive};
use burn_cubecl::{kernel::matmul::init_matmul_output, tensor::CubeTensor, CubeTuneId};
use cubecl::cuda::CudaRuntime;
use cubecl::tune::{local_tuner, LocalTuner, TuneGroup, Tunable, TunableSet};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulKind};
use cubek::matmul::launch::{launch_ref, MatmulAutotuneKey, Strategy};
use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;
use std::any::Any;

type Cuda = CubeTensor<CudaRuntime>;
type Inputs = (Cuda, Cuda, Cuda);

/// `lhs @ rhs` in exact f32 when `B` is the unfused CUDA backend in f32; `None` otherwise (other
/// backends, half precision, or the fused backend, whose tensors are not cubecl's).
pub fn matmul<B: Backend, const D: usize>(lhs: &Tensor<B, D>, rhs: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let cuda = |t: &Tensor<B, D>| (Box::new(t.clone().into_primitive().tensor()) as Box<dyn Any>).downcast::<Cuda>().ok();
    let (lhs, rhs) = (cuda(lhs)?, cuda(rhs)?);
    if lhs.dtype != DType::F32 {
        return None;
    }
    let out = (Box::new(tuned(*lhs, *rhs)) as Box<dyn Any>).downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*out)))
}

/// The candidates: burn's own naive, unit and matrix-vector kernels, without the accelerated ones.
/// As in burn's autotune, the matrix-vector kernels are tried on matrix-vector shapes only: on
/// general shapes some launch without error and compute something else.
fn tunables() -> TunableSet<MatmulAutotuneKey, Inputs, ()> {
    let any = TuneGroup::<MatmulAutotuneKey>::new("exact", |_| 1);
    let gemv = TuneGroup::<MatmulAutotuneKey>::new("exact-gemv", |key| if matches!(key.analysis.kind, MatmulKind::MatVec | MatmulKind::VecMat) { 2 } else { -1 });
    let mut all = vec![(Strategy::Naive, &any)]; // the fallback, first: it works on every shape
    for tile_size in [TileSizeSelection::MaxTileSize, TileSizeSelection::MinTileSize] {
        all.push((Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size })), &any));
        all.push((Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs { tile_size })), &any));
    }
    all.extend([
        (Strategy::SimpleVecMat(BlueprintStrategy::Inferred(().into())), &gemv),
        (Strategy::DoubleVecMat(BlueprintStrategy::Inferred(().into())), &gemv),
        (Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default())), &gemv),
        (Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default())), &gemv),
    ]);
    all.into_iter().fold(TunableSet::new(key, inputs), |set, (s, group)| set.with(Tunable::new(&s.to_string(), move |i| launch(&s, i)).group(group, |_| 0)))
}

fn launch(strategy: &Strategy, (lhs, rhs, out): Inputs) -> Result<(), String> {
    let dtype = lhs.dtype.into();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: dtype, rhs: dtype, out: dtype });
    let client = out.client.clone();
    let (lhs, rhs) = (InputBinding::new(lhs.binding(), dtype), InputBinding::new(rhs.binding(), dtype));
    launch_ref(strategy, &client, lhs, rhs, out.binding(), &mut dtypes).map_err(|e| format!("{e:?}"))
}

fn key((lhs, rhs, out): &Inputs) -> MatmulAutotuneKey {
    let (l, r) = (lhs.meta.shape(), rhs.meta.shape());
    MatmulAutotuneKey::generate(&lhs.client, l, r, lhs.meta.strides(), rhs.meta.strides(), lhs.dtype.into(), rhs.dtype.into(), out.dtype.into(), None, None)
}

fn inputs(_: &MatmulAutotuneKey, (lhs, rhs, out): &Inputs) -> Inputs {
    (lhs.clone(), rhs.clone(), out.copy())
}

fn tuned(lhs: Cuda, rhs: Cuda) -> Cuda {
    static TUNER: LocalTuner<MatmulAutotuneKey, CubeTuneId> = local_tuner!();
    let tunables = TUNER.init(tunables);
    let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
    let client = lhs.client.clone();
    TUNER.execute(&CubeTuneId::new(&client, &lhs.device), &client, tunables, (lhs, rhs, out.clone()));
    out
}
