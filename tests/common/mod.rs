//! Shared by the integration tests: fixture paths, reference arrays, the backends to test on.
use patchbay::backend::{BackendKind, BackendSpec, DType};
use std::path::PathBuf;

/// The repository: CARGO_MANIFEST_DIR at run time (cargo sets it; benches/gpu.sh sets it for test
/// binaries built on another machine), else where the tests were built.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The seed-pair fixture: the committed tiny model (the Michelle pairs, full GPT-2 vocabulary), or
/// PATCHBAY_FIXTURE_DIR (e.g. the real gpt2 shape made by `make_fixtures.py --shape gpt2`, too
/// large to commit).
pub fn tiny() -> PathBuf {
    std::env::var_os("PATCHBAY_FIXTURE_DIR").map_or_else(|| fixtures().join("tiny"), PathBuf::from)
}

/// Every reference fixture: `tiny()` and the shape matrix (tests/fixtures/shapes/*: d_head 4, 16,
/// 64; n_head 1, 4, 12; n_positions 32 to 1024; pairs of 5 to 40 tokens); PATCHBAY_FIXTURE_DIR
/// alone when set.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![tiny()];
    if std::env::var_os("PATCHBAY_FIXTURE_DIR").is_none() {
        let mut shapes: Vec<PathBuf> = std::fs::read_dir(fixtures().join("shapes")).unwrap().map(|e| e.unwrap().path()).collect();
        shapes.sort();
        dirs.extend(shapes);
    }
    dirs
}

/// A fixture directory's short name, for messages.
pub fn name(dir: &std::path::Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// Arrays from a refs.safetensors written by tests/fixtures/make_fixtures.py.
pub struct Refs {
    bytes: Vec<u8>,
}

/// The references of the prompts with `<|endoftext|>` in front (`make_fixtures.py --prepend-bos`).
pub const BOS_REFS: &str = "refs-bos.safetensors";

impl Refs {
    pub fn load(dir: &std::path::Path) -> Self {
        Self::load_file(dir, "refs.safetensors")
    }

    pub fn load_file(dir: &std::path::Path, file: &str) -> Self {
        Self { bytes: std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("fixture {file} in {}: {e}", dir.display())) }
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).unwrap_or_else(|_| panic!("no ref {name}"))
    }

    pub fn has(&self, name: &str) -> bool {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).is_ok()
    }

    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let v = self.view(name);
        (v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), v.shape().to_vec())
    }

    pub fn i32(&self, name: &str) -> (Vec<i32>, Vec<usize>) {
        let v = self.view(name);
        (v.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect(), v.shape().to_vec())
    }

    pub fn u8(&self, name: &str) -> (Vec<u8>, Vec<usize>) {
        let v = self.view(name);
        (v.data().to_vec(), v.shape().to_vec())
    }

    /// Rows of a [rows, len] int array as token ids.
    pub fn token_rows(&self, name: &str) -> Vec<Vec<u32>> {
        let (v, shape) = self.i32(name);
        v.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
    }
}

/// Max |a − b| over the cells where both are numbers; a cell NaN in one and not the other counts
/// as infinitely far.
pub fn max_abs_diff_nan(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| if x.is_nan() && y.is_nan() { 0.0 } else { (x - y).abs() }).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// Every backend compiled in: cpu, and wgpu without and with fusion, in f32 and f16 (lavapipe on
/// CI). PATCHBAY_TEST_BACKENDS chooses, e.g. `cpu,cuda,cuda-fusion,cuda-bf16` on a CUDA machine:
/// a kind, then optionally `-fusion` and a dtype.
pub fn backends() -> Vec<BackendSpec> {
    let wanted = std::env::var("PATCHBAY_TEST_BACKENDS").unwrap_or_else(|_| {
        let mut all = vec!["cpu"];
        if cfg!(feature = "wgpu") {
            all.extend(["wgpu", "wgpu-fusion", "wgpu-f16", "wgpu-fusion-f16"]);
        }
        all.join(",")
    });
    wanted
        .split(',')
        .map(|name| {
            let mut parts = name.trim().split('-');
            let kind = match parts.next().unwrap() {
                "cpu" => BackendKind::Cpu,
                "wgpu" => BackendKind::Wgpu,
                "cuda" => BackendKind::Cuda,
                other => panic!("unknown backend {other} in PATCHBAY_TEST_BACKENDS"),
            };
            let mut spec = BackendSpec { kind, device: 0, dtype: DType::F32, fusion: false };
            for flag in parts {
                match flag {
                    "fusion" => spec.fusion = true,
                    "f16" => spec.dtype = DType::F16,
                    "bf16" => spec.dtype = DType::Bf16,
                    "tf32" => spec.dtype = DType::Tf32,
                    other => panic!("unknown backend option {other} in PATCHBAY_TEST_BACKENDS"),
                }
            }
            spec
        })
        .collect()
}

/// The acceptance bar against the f32 references: 1e-4 in f32, 5e-2 in half precision.
pub fn tolerance(spec: &BackendSpec) -> f32 {
    if spec.dtype == DType::F32 {
        1e-4
    } else {
        5e-2
    }
}

/// Result-directory files (name, bytes) with the manifest's `verify` record left out: which rows
/// a run's check recomputed is not part of its results (merged shards carry each shard's).
pub fn without_checks(files: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    files
        .into_iter()
        .map(|(name, bytes)| {
            if name != "manifest.json" {
                return (name, bytes);
            }
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("verify");
            (name, v.to_string().into_bytes())
        })
        .collect()
}

/// The fixture's pairs (`tokens`, `corrupted`, `answer`, `distractor`), as the engine takes them.
pub fn fixture_pairs(refs: &Refs) -> Vec<patchbay::data::TokenizedPair> {
    let (clean, corrupted) = (refs.token_rows("tokens"), refs.token_rows("corrupted"));
    let (answer, distractor) = (refs.i32("answer").0, refs.i32("distractor").0);
    (0..clean.len())
        .map(|i| patchbay::data::TokenizedPair {
            row: i + 1,
            clean: clean[i].clone(),
            corrupted: corrupted[i].clone(),
            answer: answer[i] as u32,
            distractor: distractor[i] as u32,
            ..Default::default()
        })
        .collect()
}
