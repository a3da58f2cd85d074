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
//!
//! With a cache file (`PATCHBAY_EXACT_TUNE_CACHE` for CUDA), each key's checked choice and its
//! exclusions are kept for later processes on the same hardware with the same kernels, so that
//! a short GPU session neither compiles nor checks the candidates again.
use burn_cubecl::{kernel::matmul::init_matmul_output, ops::into_data_sync, tensor::CubeTensor, CubeRuntime};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulKind};
use cubek::matmul::launch::{launch_ref, MatmulAutotuneKey, Strategy};
use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

fn record_exclusion(line: String) {
    eprintln!("warning: {line}");
    EXCLUDED.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// The self-checking tuner: candidates[0], the naive kernel, is the reference and the fallback.
pub struct Tuner<R: CubeRuntime> {
    candidates: Vec<Candidate<R>>,
    chosen: Mutex<HashMap<MatmulAutotuneKey, usize>>,
    /// The cache file, and its entries for this hardware and these candidates once read.
    cache: Option<(PathBuf, Mutex<Option<Choices>>)>,
    tuned: std::sync::atomic::AtomicUsize,
}

type Choices = HashMap<MatmulAutotuneKey, Choice>;

/// A key's checked choice, as the cache file keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct Choice {
    key: MatmulAutotuneKey,
    kernel: String,
    excluded: Vec<String>,
}

/// One identity's choices in the cache file, valid only where the identity (hardware, candidates,
/// patchbay's version) is this process's. The file keeps every identity's set, so that runs on
/// two kinds of GPU sharing one file (an H100's and an H200's) do not tune each other's away.
#[derive(Serialize, Deserialize)]
struct CacheSet {
    identity: String,
    choices: Vec<Choice>,
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
        Self { candidates, chosen: Mutex::new(HashMap::new()), cache: None, tuned: Default::default() }
    }
}

impl<R: CubeRuntime> Tuner<R> {
    /// The default candidates and one more (tests inject a wrong kernel this way).
    pub fn with(mut self, candidate: Candidate<R>) -> Self {
        self.candidates.push(candidate);
        self
    }

    /// Keeps the checked choices in `path` (JSON) for later processes, and takes those an
    /// earlier one made on the same hardware with the same candidates.
    pub fn cached_at(mut self, path: PathBuf) -> Self {
        self.cache = Some((path, Mutex::new(None)));
        self
    }

    /// How many keys this tuner checked its candidates on (not those it found in its cache).
    pub fn tuned(&self) -> usize {
        self.tuned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `lhs @ rhs` in f32 by the kernel chosen for their key, choosing it on the first meeting.
    pub fn matmul(&self, lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> CubeTensor<R> {
        let key = MatmulAutotuneKey::generate(&lhs.client, lhs.meta.shape(), rhs.meta.shape(), lhs.meta.strides(), rhs.meta.strides(), lhs.dtype.into(), rhs.dtype.into(), lhs.dtype.into(), None, None);
        let known = self.chosen.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let index = known.unwrap_or_else(|| {
            let index = match self.cached(&key, &lhs.client) {
                Some(index) => index,
                None => {
                    let (index, excluded) = self.choose(&key, &lhs, &rhs);
                    self.tuned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.keep(Choice { key: key.clone(), kernel: self.candidates[index].name.clone(), excluded }, &lhs.client);
                    index
                }
            };
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

    /// What the cache files of this tuner are valid for.
    fn identity(&self, client: &cubecl::client::ComputeClient<R>) -> String {
        let names: Vec<&str> = self.candidates.iter().map(|c| c.name.as_str()).collect();
        format!("patchbay {} on {} {:?}; kernels {names:?}", env!("CARGO_PKG_VERSION"), R::name(client), client.properties().hardware)
    }

    /// The cache file's sets; none (with a warning, if `warn`) when it is unreadable.
    fn read_sets(path: &Path, warn: bool) -> Vec<CacheSet> {
        let parsed = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            read => read.map_err(|e| e.to_string()).and_then(|bytes| serde_json::from_slice::<Vec<CacheSet>>(&bytes).map_err(|e| e.to_string())),
        };
        parsed.unwrap_or_else(|e| {
            if warn {
                eprintln!("warning: the exact tuner's cache {} is not read ({e}): its kernels are checked again", path.display());
            }
            Vec::new()
        })
    }

    /// The choices of `identity`'s set, taken out of `sets`.
    fn take_set(sets: &mut Vec<CacheSet>, identity: &str) -> Choices {
        let own = sets.iter().position(|s| s.identity == identity).map(|i| sets.remove(i));
        own.map(|s| s.choices.into_iter().map(|c| (c.key.clone(), c)).collect()).unwrap_or_default()
    }

    /// The cached choice for `key`, its exclusions recorded again for this process's manifest.
    fn cached(&self, key: &MatmulAutotuneKey, client: &cubecl::client::ComputeClient<R>) -> Option<usize> {
        let (path, entries) = self.cache.as_ref()?;
        let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
        let choice = entries.get_or_insert_with(|| Self::take_set(&mut Self::read_sets(path, true), &self.identity(client))).get(key)?;
        let index = self.candidates.iter().position(|c| c.name == choice.kernel)?;
        for line in &choice.excluded {
            record_exclusion(format!("{line} (checked by an earlier process: {})", path.display()));
        }
        Some(index)
    }

    /// Adds a checked choice to the cache file (read again first, so that choices another
    /// process wrote meanwhile stay, of this identity and of others); a cache that cannot be
    /// written is only a warning.
    fn keep(&self, choice: Choice, client: &cubecl::client::ComputeClient<R>) {
        let Some((path, entries)) = &self.cache else { return };
        let identity = self.identity(client);
        let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut sets = Self::read_sets(path, false);
        let mut all = Self::take_set(&mut sets, &identity);
        all.insert(choice.key.clone(), choice);
        let mut choices: Vec<Choice> = all.values().cloned().collect();
        choices.sort_by_key(|c| format!("{:?}", c.key));
        sets.push(CacheSet { identity, choices });
        // A temporary file and a rename, so that a reader never sees half a cache (the backend
        // sits below `results`, whose write_atomic also syncs, which a cache need not).
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let written = serde_json::to_vec_pretty(&sets).map_err(std::io::Error::from).and_then(|bytes| {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("warning: the exact tuner's choices are not kept in {}: {e}", path.display());
        }
        *entries = Some(all);
    }

    /// Runs every candidate that applies on the real inputs, excludes those that disagree with
    /// the naive kernel, and returns the fastest of the rest with the exclusion lines.
    fn choose(&self, key: &MatmulAutotuneKey, lhs: &CubeTensor<R>, rhs: &CubeTensor<R>) -> (usize, Vec<String>) {
        let matvec = matches!(key.analysis.kind, MatmulKind::MatVec | MatmulKind::VecMat);
        let run = |c: &Candidate<R>| -> Result<(CubeTensor<R>, Duration), String> {
            let out = init_matmul_output(lhs, rhs, lhs.dtype);
            (c.launch)(lhs, rhs, &out)?;
            let took = time(|| (c.launch)(lhs, rhs, &out), &lhs.client)?;
            Ok((out, took))
        };
        let (reference, mut best) = run(&self.candidates[0]).expect("the naive matmul launches on every shape");
        let reference = values(reference);
        let (mut chosen, mut excluded) = (0, Vec::new());
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
                record_exclusion(line.clone());
                excluded.push(line);
                continue;
            }
            if took < best {
                (chosen, best) = (i, took);
            }
        }
        (chosen, excluded)
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
    static TUNER: LazyLock<Tuner<CudaRuntime>> = LazyLock::new(|| match std::env::var_os("PATCHBAY_EXACT_TUNE_CACHE") {
        Some(path) if !path.is_empty() => Tuner::default().cached_at(path.into()),
        _ => Tuner::default(),
    });
    let cuda = |t: &burn::prelude::Tensor<B, D>| (Box::new(t.clone().into_primitive().tensor()) as Box<dyn Any>).downcast::<Cuda>().ok();
    let (lhs, rhs) = (cuda(lhs)?, cuda(rhs)?);
    if lhs.dtype != DType::F32 {
        return None;
    }
    let out = (Box::new(TUNER.matmul(*lhs, *rhs)) as Box<dyn Any>).downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(burn::prelude::Tensor::from_primitive(TensorPrimitive::Float(*out)))
}
