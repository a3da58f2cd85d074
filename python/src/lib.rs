//! `patchbay._native`: the library's jobs for Python. Arguments arrive as Python values or JSON,
//! results leave as JSON and raw little-endian f32 bytes that `patchbay/__init__.py` turns into
//! numpy arrays; nothing else happens here. The GIL is released while a job runs, progress and
//! Ctrl-C are checked at every batch, and no Rust panic reaches Python.
use anyhow::{bail, Context};
use patchbay::backend::{BackendKind, BackendSpec, DType};
use patchbay::data::{Columns, Pair, PairSource};
use patchbay::generate::sampling::Sampling;
use patchbay::generate::steer::SteeringVector;
use patchbay::jobs::text::{GenerateSpec, PrependSpec, SteerSpec, TextsSpec};
use patchbay::jobs::options::{default_out, Job, RunOptions, RunPlan};
use patchbay::jobs::{self, Model, Progress};
use patchbay::model::{Site, SiteKind};
use patchbay::results::Manifest;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// The error a job stopped with because the user interrupted it (its `PyErr` is kept aside).
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A library error as the Python exception a user expects, with the CLI's one-line message.
fn to_py(e: anyhow::Error) -> PyErr {
    let message = format!("{e:#}");
    let not_found = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound));
    if e.downcast_ref::<Interrupted>().is_some() {
        PyKeyboardInterrupt::new_err(message)
    } else if not_found {
        PyFileNotFoundError::new_err(message)
    } else {
        PyValueError::new_err(message)
    }
}

/// Runs `f` with the GIL released, turning a panic into an error: none may cross into Python
/// (pyo3's PanicException is a BaseException, which `except Exception` does not catch).
fn job<T: Send>(py: Python<'_>, progress: &mut PyProgress, f: impl FnOnce(&mut PyProgress) -> anyhow::Result<T> + Send) -> PyResult<T> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| f(&mut *progress))));
    if let Some(e) = progress.error.take() {
        return Err(e);
    }
    match out {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(PyRuntimeError::new_err(format!("internal error in patchbay (please report it): {what}")))
        }
    }
}

/// Progress for a Python callable `callback(event, *values)`: ("start", total, unit),
/// ("advance", n), ("note", text), ("finish",). Ctrl-C (and any exception the callback raises)
/// stops the job at the next batch and is raised once the job has returned.
struct PyProgress {
    callback: Option<Py<PyAny>>,
    error: Option<PyErr>,
}

impl PyProgress {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        Self { callback, error: None }
    }

    fn call(&mut self, args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>>) -> anyhow::Result<()> {
        if self.error.is_some() {
            return Err(Interrupted.into());
        }
        let result = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(cb) = &self.callback {
                cb.call1(py, args(py)?)?;
            }
            Ok(())
        });
        result.map_err(|e| {
            self.error = Some(e);
            Interrupted.into()
        })
    }
}

impl Progress for PyProgress {
    fn start(&mut self, total: u64, unit: &str) {
        let _ = self.call(|py| pyo3::types::PyTuple::new(py, ["start".into_pyobject(py)?.into_any(), total.into_pyobject(py)?.into_any(), unit.into_pyobject(py)?.into_any()]));
    }

    fn advance(&mut self, n: u64) -> anyhow::Result<()> {
        self.call(|py| pyo3::types::PyTuple::new(py, ["advance".into_pyobject(py)?.into_any(), n.into_pyobject(py)?.into_any()]))
    }

    fn note(&mut self, text: &str) {
        let _ = self.call(|py| pyo3::types::PyTuple::new(py, ["note", text]));
    }

    fn finish(&mut self) {
        let _ = self.call(|py| pyo3::types::PyTuple::new(py, ["finish"]));
    }
}

fn bytes<'py>(py: Python<'py>, values: &[f32]) -> Bound<'py, PyBytes> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    PyBytes::new(py, &raw)
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// A job's spec (JSON Python built from keywords): an error names the keyword at fault, not a
/// column of the JSON (`max_rows=-1: invalid value: integer `-1`, expected usize`).
fn parse<'a, T: Deserialize<'a>>(text: &'a str, what: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        match jobs::options::key_at(text, e.line(), e.column()) {
            Some(key) => PyValueError::new_err(format!("{what}: {key}=: {message}")),
            None => PyValueError::new_err(format!("{what}: {message}")),
        }
    })
}

/// A pair as Python gives it (a dict, a DataFrame row).
#[derive(Deserialize)]
struct PairIn {
    clean: String,
    corrupted: String,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    distractor: Option<String>,
    #[serde(default)]
    positions: BTreeMap<String, usize>,
}

impl PairIn {
    fn pair(self, row: usize) -> Pair {
        Pair { row, clean: self.clean, corrupted: self.corrupted, answer: self.answer, distractor: self.distractor, positions: self.positions }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PairsIn {
    One(PairIn),
    Records(Vec<PairIn>),
    File { path: PathBuf, columns: Option<BTreeMap<String, String>> },
}

impl PairsIn {
    fn source(self) -> anyhow::Result<PairSource> {
        Ok(match self {
            PairsIn::One(p) => PairSource::One(p.pair(1)),
            PairsIn::Records(ps) => PairSource::Records(ps.into_iter().enumerate().map(|(i, p)| p.pair(i + 1)).collect()),
            PairsIn::File { path, columns } => {
                let mut c = Columns::default();
                for (k, v) in columns.unwrap_or_default() {
                    c.set(&k, &v)?;
                }
                PairSource::File { path, columns: c }
            }
        })
    }
}

/// `Model.patterns`' keywords.
#[derive(Deserialize)]
struct PatternsIn {
    prompts: Option<Vec<String>>,
    pairs: Option<PairsIn>,
    layers: Option<Vec<usize>>,
    heads: Option<Vec<usize>>,
    prepend_bos: bool,
    batch: usize,
    out: Option<PathBuf>,
    overwrite: bool,
    html_prompts: usize,
}

/// `Model.attribute`'s keywords.
#[derive(Deserialize)]
struct AttributeIn {
    pairs: PairsIn,
    prepend_bos: bool,
    strict: bool,
    batch: usize,
    out: Option<PathBuf>,
    overwrite: bool,
}

/// A steering vector given as numpy values (they come as bytes beside the JSON).
#[derive(Deserialize)]
struct SteerIn {
    shape: Vec<usize>,
    site: String,
    layer: usize,
    coef: f32,
}

/// `Model.generate`'s keywords.
#[derive(Deserialize)]
struct GenerateIn {
    prompts: Vec<String>,
    prepend_bos: bool,
    max_new_tokens: usize,
    greedy: bool,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    freq_penalty: f32,
    num_sequences: usize,
    seed: u64,
    stop_at_eos: bool,
    batch: usize,
    steer: Option<SteerIn>,
}

/// `Model.perplexity`'s and `Model.candidates`' keywords.
#[derive(Deserialize)]
struct TextsIn {
    texts: Vec<String>,
    prepend_bos: bool,
    batch: usize,
    out: Option<PathBuf>,
    overwrite: bool,
}

impl TextsIn {
    fn spec(self) -> TextsSpec {
        TextsSpec { texts: self.texts, origins: Vec::new(), prepend_bos: self.prepend_bos, batch: self.batch, out: self.out, overwrite: self.overwrite }
    }
}

/// A loaded model (`patchbay.load`).
#[pyclass(frozen, name = "Model", module = "patchbay._native")]
struct PyModel(Model);

fn enum_arg<T: clap::ValueEnum>(value: &str, what: &str) -> PyResult<T> {
    jobs::options::choice::<T>(value).map_err(|m| PyValueError::new_err(format!("{what}: {m}")))
}

#[pyfunction]
#[pyo3(signature = (model, backend, dtype, fusion, threads, device))]
fn load(py: Python<'_>, model: String, backend: &str, dtype: &str, fusion: bool, threads: Option<usize>, device: usize) -> PyResult<PyModel> {
    let spec = BackendSpec { kind: enum_arg::<BackendKind>(backend, "backend")?, device, dtype: enum_arg::<DType>(dtype, "dtype")?, fusion };
    let mut quiet = PyProgress::new(None);
    // A download checks for Ctrl-C after every chunk (and each read times out: HF_HUB_DOWNLOAD_TIMEOUT).
    job(py, &mut quiet, |p| Model::load_watched(&model, spec, threads, &mut |_, _| p.advance(0))).map(PyModel)
}

/// The arrays of a sweep (sites, then the clean and corrupted baselines) as (name, bytes).
type Arrays<'py> = Vec<(String, Bound<'py, PyBytes>)>;

#[pymethods]
impl PyModel {
    /// The hub id or directory the model was loaded from.
    #[getter]
    fn id(&self) -> String {
        self.0.id().to_string()
    }

    /// config.json as patchbay read it (`ModelConfig`), and the backend, as JSON.
    #[getter]
    fn config(&self) -> PyResult<String> {
        json(&self.0.config)
    }

    #[getter]
    fn backend(&self) -> PyResult<String> {
        json(&self.0.backend)
    }

    /// A patching job (`run`, `path`, `edges`) from its options as JSON, the library's
    /// `RunOptions` (the CLI's flags, underscores for dashes): (manifest JSON, arrays if in
    /// memory, skipped JSON, out dir).
    #[pyo3(signature = (job, options, progress=None))]
    fn patch<'py>(&self, py: Python<'py>, job: &str, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Option<Arrays<'py>>, String, Option<String>)> {
        let plan = (|| {
            let job = Job::parse(job)?;
            RunOptions::from_json(options)?.plan(job, None)
        })()
        .map_err(to_py)?;
        self.planned(py, plan, progress)
    }

    /// `patchbay faithfulness` from JSON keywords: (the curve as JSON, m(C) per size and pair).
    #[pyo3(signature = (spec, progress=None))]
    fn faithfulness<'py>(&self, py: Python<'py>, spec: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Bound<'py, PyBytes>)> {
        let input: FaithfulnessIn = parse(spec, "faithfulness")?;
        let mut progress = PyProgress::new(progress);
        let f = job(py, &mut progress, |pr| jobs::discovery::faithfulness(&input.spec(), Some(&self.0), pr))?;
        Ok((json(&f)?, bytes(py, &f.per_pair.concat())))
    }

    /// A patching job's TOML config with options over it (JSON), into the config's results
    /// directory as the CLI runs it.
    #[pyo3(signature = (job, config, options, progress=None))]
    fn run<'py>(&self, py: Python<'py>, job: &str, config: PathBuf, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Option<Arrays<'py>>, String, Option<String>)> {
        let plan = (|| {
            let job = Job::parse(job)?;
            RunOptions::from_config(job, &config)?.overlaid(RunOptions::from_json(options)?)?.plan(job, Some(default_out(Some(&config))))
        })()
        .map_err(to_py)?;
        self.planned(py, plan, progress)
    }

    /// Attention patterns: (listing JSON, values bytes [prompts, layers, heads, dest, src], HTML viewer).
    #[pyo3(signature = (spec, progress=None))]
    fn patterns<'py>(&self, py: Python<'py>, spec: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Bound<'py, PyBytes>, String)> {
        let a: PatternsIn = parse(spec, "patterns")?;
        let mut progress = PyProgress::new(progress);
        let r = job(py, &mut progress, |pr| {
            let prompts = match (a.prompts, a.pairs) {
                (Some(_), Some(_)) => bail!("give prompts or pairs=, not both"),
                (Some(t), None) => jobs::circuits::Prompts::Texts(t),
                (None, Some(p)) => jobs::circuits::Prompts::CleanOf(p.source()?),
                (None, None) => bail!("no prompts: give them, or pairs="),
            };
            let spec = jobs::circuits::PatternsSpec { prompts, layers: a.layers, heads: a.heads, prepend_bos: a.prepend_bos, batch: a.batch, out: a.out, overwrite: a.overwrite, html_prompts: a.html_prompts };
            jobs::circuits::patterns(&self.0, &spec, pr)
        })?;
        let p = &r.patterns;
        let listing = serde_json::json!({"shape": p.shape(), "layers": p.layers, "heads": p.heads, "lengths": p.lengths, "tokens": r.prompts, "strs": r.strs});
        Ok((json(&listing)?, bytes(py, &p.values), r.html))
    }

    /// Logit lens and DLA: (listing JSON, accumulated, components, heads bytes, skipped JSON).
    #[pyo3(signature = (spec, progress=None))]
    fn attribute<'py>(&self, py: Python<'py>, spec: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Arrays<'py>, String)> {
        let a: AttributeIn = parse(spec, "attribute")?;
        let mut progress = PyProgress::new(progress);
        let r = job(py, &mut progress, |pr| {
            let spec = jobs::circuits::AttributeSpec { pairs: a.pairs.source()?, prepend_bos: a.prepend_bos, strict: a.strict, batch: a.batch, out: a.out, overwrite: a.overwrite };
            jobs::circuits::attribute(&self.0, &spec, pr)
        })?;
        let arrays = [("accumulated", &r.arrays.accumulated), ("components", &r.arrays.components), ("heads", &r.arrays.heads)];
        let skipped: Vec<serde_json::Value> = r.skipped.iter().map(|s| serde_json::json!({"row": s.row, "unit": r.row_unit, "reason": s.reason})).collect();
        Ok((json(&r.listing)?, arrays.iter().map(|(n, a)| (n.to_string(), bytes(py, a))).collect(), json(&skipped)?))
    }

    /// Generated sequences as JSON; `steer` holds the steering vector's f32 values, if any.
    #[pyo3(signature = (spec, steer=None, progress=None))]
    fn generate(&self, py: Python<'_>, spec: &str, steer: Option<&[u8]>, progress: Option<Py<PyAny>>) -> PyResult<String> {
        let a: GenerateIn = parse(spec, "generate")?;
        let mut progress = PyProgress::new(progress);
        let seqs = job(py, &mut progress, |pr| {
            let sampling = if a.greedy { Sampling::GREEDY } else { Sampling { temperature: Some(a.temperature), top_k: a.top_k, top_p: a.top_p, freq_penalty: a.freq_penalty } };
            let steer = match (a.steer, steer) {
                (Some(v), Some(raw)) => Some(SteeringVector { site: Site::new(SiteKind::parse(&v.site)?, v.layer), values: floats(raw), shape: v.shape, coef: v.coef }),
                (None, None) => None,
                _ => bail!("a steering vector needs both its values and its site"),
            };
            let stop_at = if a.stop_at_eos { self.0.tokenizer.eos()? } else { Vec::new() };
            let options = patchbay::generate::Options { max_new_tokens: a.max_new_tokens, sampling, num_sequences: a.num_sequences, seed: a.seed, stop_at, batch: a.batch, steer };
            jobs::text::generate(&self.0, &GenerateSpec { prompts: a.prompts, origins: Vec::new(), prepend_bos: a.prepend_bos, options }, pr)
        })?;
        json(&seqs)
    }

    /// (scored texts JSON, token perplexities bytes [texts, width], width).
    #[pyo3(signature = (spec, per_token, progress=None))]
    fn perplexity<'py>(&self, py: Python<'py>, spec: &str, per_token: bool, progress: Option<Py<PyAny>>) -> PyResult<(String, Bound<'py, PyBytes>, usize)> {
        let a: TextsIn = parse(spec, "perplexity")?;
        let mut progress = PyProgress::new(progress);
        let p = job(py, &mut progress, |pr| jobs::text::perplexity(&self.0, &a.spec(), per_token, pr))?;
        Ok((json(&p.texts)?, bytes(py, &p.token_perplexity), p.width))
    }

    /// The candidates report as JSON.
    fn candidates(&self, py: Python<'_>, spec: &str, top_k: usize, all_positions: bool) -> PyResult<String> {
        let a: TextsIn = parse(spec, "candidates")?;
        let r = job(py, &mut PyProgress::new(None), |_| jobs::text::candidates(&self.0, &a.spec(), top_k, all_positions))?;
        json(&r)
    }

    /// A steering vector: (values bytes, shape).
    #[pyo3(signature = (clean, corrupted, site, layer, position, prepend_bos, out, overwrite))]
    #[allow(clippy::too_many_arguments)]
    fn steer<'py>(&self, py: Python<'py>, clean: String, corrupted: String, site: &str, layer: usize, position: i64, prepend_bos: bool, out: Option<PathBuf>, overwrite: bool) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
        let kind = SiteKind::parse(site).map_err(|e| PyValueError::new_err(format!("site={site:?}: {e}")))?;
        let spec = SteerSpec { clean, corrupted, site: Site::new(kind, layer), position, prepend_bos, out, overwrite };
        let (values, shape) = job(py, &mut PyProgress::new(None), |_| jobs::text::steering_vector(&self.0, &spec))?;
        Ok((bytes(py, &values), shape))
    }

    /// Going backwards: the steps as JSON.
    #[pyo3(signature = (text, n_tokens, samples, seed, prepend_bos, progress=None))]
    fn prepend(&self, py: Python<'_>, text: String, n_tokens: usize, samples: usize, seed: u64, prepend_bos: bool, progress: Option<Py<PyAny>>) -> PyResult<String> {
        let spec = PrependSpec { text, n_tokens, samples, seed, score_bos: prepend_bos };
        let steps = job(py, &mut PyProgress::new(progress), |pr| jobs::text::prepend(&self.0, &spec, pr))?;
        json(&steps)
    }

    /// IOI pairs from this model's tokenizer, as JSON records.
    #[pyo3(signature = (n, seed, corruption, out, overwrite))]
    fn ioi(&self, py: Python<'_>, n: usize, seed: u64, corruption: &str, out: Option<PathBuf>, overwrite: bool) -> PyResult<String> {
        let corruption = enum_arg::<patchbay::data::ioi::Corruption>(corruption, "corruption")?;
        let spec = jobs::datasets::IoiSpec { n, seed, corruption, out, overwrite };
        let pairs = job(py, &mut PyProgress::new(None), |_| {
            anyhow::ensure!(spec.n > 0, "n must be at least 1");
            jobs::datasets::ioi(&self.0.tokenizer, &spec)
        })?;
        json(&pairs)
    }

    /// (tokens, top_k) as JSON.
    fn inspect(&self, py: Python<'_>, text: String, top_k: usize, prepend_bos: bool) -> PyResult<String> {
        let r = job(py, &mut PyProgress::new(None), |_| jobs::inspect::inspect(&self.0, &text, top_k, prepend_bos))?;
        json(&r)
    }

    /// Token ids of a text.
    #[pyo3(signature = (text, prepend_bos=false))]
    fn tokenize(&self, text: &str, prepend_bos: bool) -> PyResult<Vec<u32>> {
        self.0.tokenizer.encode_with(text, prepend_bos).map_err(to_py)
    }

    /// The strings of token ids.
    fn token_strs(&self, ids: Vec<u32>) -> Vec<String> {
        self.0.tokenizer.token_strs(&ids)
    }

    fn decode(&self, ids: Vec<u32>) -> String {
        self.0.tokenizer.decode(&ids)
    }
}

impl PyModel {
    /// A patching job's plan run on this model (the one the options name, if they name one).
    fn planned<'py>(&self, py: Python<'py>, plan: RunPlan, progress: Option<Py<PyAny>>) -> PyResult<(String, Option<Arrays<'py>>, String, Option<String>)> {
        if let Some(named) = plan.named_model.as_ref().filter(|m| *m != self.0.id()) {
            return Err(PyValueError::new_err(format!("the options' model is {named:?} but this model is {:?}: load it with patchbay.load({named:?})", self.0.id())));
        }
        let mut progress = PyProgress::new(progress);
        let p = job(py, &mut progress, |pr| jobs::patch::patch(&self.0, &plan.spec, pr))?;
        self.patched(py, p)
    }

    fn patched<'py>(&self, py: Python<'py>, p: jobs::patch::Patched) -> PyResult<(String, Option<Arrays<'py>>, String, Option<String>)> {
        let m = &p.summary.manifest;
        let arrays = p.summary.arrays.as_ref().map(|arrays| {
            let names = m.sites.iter().map(|s| s.name.clone()).chain(["baseline_clean".to_string(), "baseline_corrupted".to_string()]);
            names.zip(arrays).map(|(n, a)| (n, bytes(py, a))).collect()
        });
        let skipped: Vec<serde_json::Value> = p.skipped.iter().map(|s| serde_json::json!({"row": s.row, "unit": p.row_unit, "reason": s.reason})).collect();
        Ok((json(m)?, arrays, json(&skipped)?, p.out.map(|o| o.display().to_string())))
    }
}

/// The manifest (JSON) of the finished run in `dir`, after checking every array is whole.
#[pyfunction]
fn open_finished(py: Python<'_>, dir: PathBuf) -> PyResult<String> {
    let m = job(py, &mut PyProgress::new(None), |_| patchbay::results::open_finished(&dir))?;
    // Through a Value, as manifest.json is written: its floats read back as the file's.
    serde_json::to_value(&m).map(|v| v.to_string()).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// A shared lock on a results directory, held while Python reads its files (`pb.open`): a writer
/// (another process's run, `--overwrite`, merge) cannot replace them meanwhile.
#[pyclass(module = "patchbay._native")]
struct ReadLock(Option<patchbay::results::lock::Guard>);

#[pymethods]
impl ReadLock {
    fn release(&mut self) {
        self.0 = None;
    }
}

#[pyfunction]
fn lock_shared(py: Python<'_>, dir: PathBuf) -> PyResult<ReadLock> {
    job(py, &mut PyProgress::new(None), |_| patchbay::results::lock::shared(&dir)).map(|g| ReadLock(Some(g)))
}

/// `patchbay verify`: rechecks `rows` random patched runs of a finished run on the simplest path
/// (on `backend`/`dtype`, or the run's own); the verification as JSON.
/// The circuit graph of `model` (`patchbay graph`): node and edge names in EAP-IG's order.
#[pyfunction]
fn graph(py: Python<'_>, model: String) -> PyResult<(Vec<String>, Vec<String>)> {
    let g = job(py, &mut PyProgress::new(None), |_| patchbay::jobs::circuits::graph(&model))?;
    Ok((g.nodes.iter().map(ToString::to_string).collect(), g.edges.iter().map(ToString::to_string).collect()))
}

/// `Model.faithfulness`'s keywords.
#[derive(Deserialize)]
struct FaithfulnessIn {
    run: PathBuf,
    sizes: Option<Vec<usize>>,
    circuits: Vec<PathBuf>,
    greedy: bool,
    absolute: bool,
    prune: bool,
    max_rows: Option<usize>,
    draw_at: f64,
    out: Option<PathBuf>,
}

impl FaithfulnessIn {
    fn spec(self) -> jobs::discovery::FaithfulnessSpec {
        let Self { run, sizes, circuits, greedy, absolute, prune, max_rows, draw_at, out } = self;
        jobs::discovery::FaithfulnessSpec { run, sizes, circuits, greedy, absolute, prune, max_rows, backend: None, draw_at, out }
    }
}

/// `patchbay circuit`: the chosen circuit's EAP-IG Graph JSON, its drawing (SVG) and where both went.
#[pyfunction]
#[pyo3(signature = (dir, top_n=None, threshold=None, greedy=None, absolute=true, prune=true, out=None))]
#[allow(clippy::too_many_arguments)]
fn circuit(py: Python<'_>, dir: PathBuf, top_n: Option<usize>, threshold: Option<f32>, greedy: Option<usize>, absolute: bool, prune: bool, out: Option<PathBuf>) -> PyResult<(String, String, String)> {
    use patchbay::analysis::circuit::Selection;
    let selection = match (top_n, threshold, greedy) {
        (Some(n), None, None) => Selection::TopN(n),
        (None, Some(t), None) => Selection::Threshold(t),
        (None, None, Some(n)) => Selection::Greedy(n),
        _ => return Err(PyValueError::new_err("give one of top_n=, threshold= or greedy=")),
    };
    let spec = jobs::discovery::CircuitSpec { run: dir, selection, absolute, prune, out };
    let c = job(py, &mut PyProgress::new(None), |_| jobs::discovery::circuit(&spec))?;
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())).map_err(to_py);
    Ok((read(&c.json)?, read(&c.svg)?, c.json.display().to_string()))
}

#[pyfunction]
#[pyo3(signature = (dir, rows, backend=None, dtype=None))]
fn verify(py: Python<'_>, dir: PathBuf, rows: usize, backend: Option<&str>, dtype: Option<&str>) -> PyResult<String> {
    let kind = backend.map(|b| enum_arg::<BackendKind>(b, "backend")).transpose()?;
    let dtype = dtype.map(|d| enum_arg::<DType>(d, "dtype")).transpose()?;
    let given = (kind.is_some() || dtype.is_some()).then(|| BackendSpec { kind: kind.unwrap_or(BackendKind::Cpu), device: 0, dtype: dtype.unwrap_or(DType::F32), fusion: false });
    let v = job(py, &mut PyProgress::new(None), |_| jobs::verify::verify(&dir, rows, given, None))?;
    json(&v)
}

/// A result's manifest (its JSON as the library wrote it) and the site `site` of it, checked
/// against `values` floats of the site's array: what Python passes back is never trusted.
fn site_of<'a>(m: &'a Manifest, site: &str, values: usize) -> anyhow::Result<&'a patchbay::results::SiteEntry> {
    m.check()?;
    let entry = m.sites.iter().find(|s| s.name == site).with_context(|| format!("no site {site:?} in the manifest"))?;
    // (`check` has refused a shape whose product overflows.)
    let cells: usize = entry.shape.iter().product();
    if entry.shape.first() != Some(&m.pairs.len()) || cells != values || entry.axes.len() != entry.shape.len() {
        bail!("the manifest's site {site} has shape {:?} and axes {:?} for {} pairs and {values} values: not a whole array", entry.shape, entry.axes, m.pairs.len());
    }
    Ok(entry)
}

/// `analyze`'s normalization of a site's raw values: (normalized bytes, pairs included).
#[pyfunction]
fn normalize<'py>(py: Python<'py>, manifest: &str, site: &str, raw: &[u8], clean: &[u8], corrupted: &[u8]) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    let m: Manifest = parse(manifest, "manifest")?;
    let (normalized, included) = job(py, &mut PyProgress::new(None), |_| {
        let (raw, clean, corrupted) = (floats(raw), floats(clean), floats(corrupted));
        let entry = site_of(&m, site, raw.len())?;
        if clean.len() != m.pairs.len() || corrupted.len() != m.pairs.len() {
            bail!("{} clean and {} corrupted baselines for {} pairs", clean.len(), corrupted.len(), m.pairs.len());
        }
        let (scale, excluded) = patchbay::analysis::scales_of(&m, &clean, &corrupted);
        let cells: usize = entry.shape[1..].iter().product();
        Ok((patchbay::analysis::normalize(&raw, cells, &scale), m.pairs.len() - excluded.len()))
    })?;
    Ok((bytes(py, &normalized), included))
}

/// The heatmap `analyze` draws of a site, from its normalized values: (SVG, PNG bytes).
#[pyfunction]
fn heatmap<'py>(py: Python<'py>, manifest: &str, site: &str, normalized: &[u8], included: usize) -> PyResult<(String, Bound<'py, PyBytes>)> {
    let m: Manifest = parse(manifest, "manifest")?;
    let (svg, png) = job(py, &mut PyProgress::new(None), |_| {
        let values = floats(normalized);
        let entry = site_of(&m, site, values.len())?;
        if included > m.pairs.len() {
            bail!("{included} pairs included of {}", m.pairs.len());
        }
        let grid = patchbay::analysis::site_heatmap(&m, entry, &values, included);
        Ok((patchbay::analysis::plot::svg(&grid), patchbay::analysis::plot::png(&grid)?))
    })?;
    Ok((svg, PyBytes::new(py, &png)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(open_finished, m)?)?;
    m.add_class::<ReadLock>()?;
    m.add_function(wrap_pyfunction!(lock_shared, m)?)?;
    m.add_function(wrap_pyfunction!(graph, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(circuit, m)?)?;
    m.add_function(wrap_pyfunction!(normalize, m)?)?;
    m.add_function(wrap_pyfunction!(heatmap, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
