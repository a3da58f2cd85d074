//! `patchbay._native`: the library's jobs for Python. Arguments arrive as Python values or JSON,
//! results leave as JSON and raw little-endian f32 bytes that `patchbay/__init__.py` turns into
//! numpy arrays; nothing else happens here. The GIL is released while a job runs, progress and
//! Ctrl-C are checked at every batch, and no Rust panic reaches Python.
use anyhow::{bail, Context};
use patchbay::backend::{BackendKind, BackendSpec, DType};
use patchbay::jobs::datasets::IoiOptions;
use patchbay::jobs::inspect::InspectOptions;
use patchbay::jobs::text::{CandidatesOptions, GenerateOptions, PerplexityOptions, PrependOptions, SteerOptions};
use patchbay::jobs::circuits::{AttributeOptions, PatternsOptions};
use patchbay::jobs::discovery::{CircuitOptions, FaithfulnessOptions};
use patchbay::jobs::options::{default_out, Job, Options, RunOptions, RunPlan};
use patchbay::jobs::{self, Model, Progress};
use patchbay::results::Manifest;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;
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
    out.unwrap_or_else(|panic| Err(panicked(panic))).map_err(to_py)
}

/// A panic as the error it reports (pyo3 would raise PanicException, which `except Exception`
/// does not catch).
fn panicked(panic: Box<dyn std::any::Any + Send>) -> anyhow::Error {
    let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
    anyhow::anyhow!("internal error in patchbay (please report it): {what}")
}

/// `f` (a job's options made into its spec, quick: the GIL kept), a panic turned into an error.
fn unwound<T>(f: impl FnOnce() -> anyhow::Result<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(panicked(panic))).map_err(to_py)
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

/// `values` as little-endian bytes, written straight into the Python object (one copy).
fn bytes<'py>(py: Python<'py>, values: &[f32]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, 4 * values.len(), |raw| {
        raw.chunks_exact_mut(4).zip(values).for_each(|(b, v)| b.copy_from_slice(&v.to_le_bytes()));
        Ok(())
    })
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// JSON Python passes back (a manifest it was given): an error names the key at fault, not a
/// column of the JSON.
fn parse<'a, T: Deserialize<'a>>(text: &'a str, what: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("{what}: {}", jobs::options::json_error(text, &e))))
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
        let plan = unwound(|| {
            let job = Job::parse(job)?;
            RunOptions::from_json(options)?.plan(job, None)
        })?;
        self.planned(py, plan, progress)
    }

    /// `patchbay faithfulness` of edges run `run` from its options as JSON: (the curve as JSON, m(C) per size and pair).
    #[pyo3(signature = (run, options, progress=None))]
    fn faithfulness<'py>(&self, py: Python<'py>, run: PathBuf, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Bound<'py, PyBytes>)> {
        let spec = unwound(|| FaithfulnessOptions::from_json(options).and_then(|o| o.spec(run)))?;
        let mut progress = PyProgress::new(progress);
        let f = job(py, &mut progress, |pr| jobs::discovery::faithfulness(&spec, Some(&self.0), pr))?;
        Ok((json(&f)?, bytes(py, &f.per_pair.concat())?))
    }

    /// A patching job's TOML config with options over it (JSON), into the config's results
    /// directory as the CLI runs it.
    #[pyo3(signature = (job, config, options, progress=None))]
    fn run<'py>(&self, py: Python<'py>, job: &str, config: PathBuf, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Option<Arrays<'py>>, String, Option<String>)> {
        let plan = unwound(|| {
            let job = Job::parse(job)?;
            RunOptions::from_config(job.name(), &config)?.overlaid(RunOptions::from_json(options)?)?.plan(job, Some(default_out(Some(&config))))
        })?;
        self.planned(py, plan, progress)
    }

    /// The attention patterns of `prompts` (or of `patterns`' options' pairs; options as JSON):
    /// (listing JSON, values bytes [prompts, layers, heads, dest, src], HTML viewer).
    #[pyo3(signature = (prompts, options, progress=None))]
    fn patterns<'py>(&self, py: Python<'py>, prompts: Vec<String>, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Bound<'py, PyBytes>, String)> {
        let spec = unwound(|| PatternsOptions::from_json(options).and_then(|o| o.spec(&self.0, prompts)))?;
        let mut progress = PyProgress::new(progress);
        let r = job(py, &mut progress, |pr| jobs::circuits::patterns(&self.0, &spec, pr))?;
        let p = &r.patterns;
        let listing = serde_json::json!({"shape": p.shape(), "layers": p.layers, "heads": p.heads, "lengths": p.lengths, "tokens": r.prompts, "strs": r.strs});
        Ok((json(&listing)?, bytes(py, &p.values)?, r.html))
    }

    /// The logit lens and DLA with `attribute`'s options (JSON): (listing JSON, accumulated,
    /// components, heads bytes, skipped JSON).
    #[pyo3(signature = (options, progress=None))]
    fn attribute<'py>(&self, py: Python<'py>, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Arrays<'py>, String)> {
        let spec = unwound(|| AttributeOptions::from_json(options).and_then(|o| o.spec()))?;
        let mut progress = PyProgress::new(progress);
        let r = job(py, &mut progress, |pr| jobs::circuits::attribute(&self.0, &spec, pr))?;
        let arrays = [("accumulated", &r.arrays.accumulated), ("components", &r.arrays.components), ("heads", &r.arrays.heads)];
        let skipped: Vec<serde_json::Value> = r.skipped.iter().map(|s| serde_json::json!({"row": s.row, "unit": r.row_unit, "reason": s.reason})).collect();
        let arrays = arrays.iter().map(|(n, a)| Ok((n.to_string(), bytes(py, a)?))).collect::<PyResult<_>>()?;
        Ok((json(&r.listing)?, arrays, json(&skipped)?))
    }

    /// `prompts` decoded with `generate`'s options (JSON, the library's `GenerateOptions`); `steer`
    /// a steering vector's f32 values and shape, if any. The sequences as JSON.
    #[pyo3(signature = (prompts, options, steer=None, progress=None))]
    fn generate(&self, py: Python<'_>, prompts: Vec<String>, options: &str, steer: Option<(Vec<u8>, Vec<usize>)>, progress: Option<Py<PyAny>>) -> PyResult<String> {
        let spec = unwound(|| GenerateOptions::from_json(options).and_then(|o| o.spec(&self.0, prompts, Vec::new(), steer.map(|(raw, shape)| (floats(&raw), shape)))))?;
        let mut progress = PyProgress::new(progress);
        json(&job(py, &mut progress, |pr| jobs::text::generate(&self.0, &spec, pr))?)
    }

    /// `texts`' perplexities with `perplexity`'s options (JSON): (scored texts JSON, token
    /// perplexities bytes [texts, width], width).
    #[pyo3(signature = (texts, options, progress=None))]
    fn perplexity<'py>(&self, py: Python<'py>, texts: Vec<String>, options: &str, progress: Option<Py<PyAny>>) -> PyResult<(String, Bound<'py, PyBytes>, usize)> {
        let options = unwound(|| PerplexityOptions::from_json(options))?;
        let per_token = options.per_token.unwrap_or(false);
        let spec = options.texts.spec(texts, Vec::new());
        let mut progress = PyProgress::new(progress);
        let p = job(py, &mut progress, |pr| jobs::text::perplexity(&self.0, &spec, per_token, pr))?;
        Ok((json(&p.texts)?, bytes(py, &p.token_perplexity)?, p.width))
    }

    /// `texts`' candidate next tokens with `candidates`' options (JSON): the report as JSON.
    fn candidates(&self, py: Python<'_>, texts: Vec<String>, options: &str) -> PyResult<String> {
        let options = unwound(|| CandidatesOptions::from_json(options))?;
        let (top_k, all_positions) = options.choice();
        let spec = options.texts.spec(texts, Vec::new());
        json(&job(py, &mut PyProgress::new(None), |_| jobs::text::candidates(&self.0, &spec, top_k, all_positions))?)
    }

    /// A steering vector with `steer make`'s options (JSON): (values bytes, shape).
    fn steer<'py>(&self, py: Python<'py>, options: &str) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
        let spec = unwound(|| SteerOptions::from_json(options).and_then(|o| o.spec()))?;
        let (values, shape) = job(py, &mut PyProgress::new(None), |_| jobs::text::steering_vector(&self.0, &spec))?;
        Ok((bytes(py, &values)?, shape))
    }

    /// Going backwards from `text` with `prepend`'s options (JSON): the steps as JSON.
    #[pyo3(signature = (text, options, progress=None))]
    fn prepend(&self, py: Python<'_>, text: String, options: &str, progress: Option<Py<PyAny>>) -> PyResult<String> {
        let spec = unwound(|| PrependOptions::from_json(options).map(|o| o.spec(text)))?;
        json(&job(py, &mut PyProgress::new(progress), |pr| jobs::text::prepend(&self.0, &spec, pr))?)
    }

    /// IOI pairs from this model's tokenizer with `ioi`'s options (JSON), as JSON records.
    fn ioi(&self, py: Python<'_>, options: &str) -> PyResult<String> {
        let spec = unwound(|| IoiOptions::from_json(options).and_then(|o| o.spec()))?;
        json(&job(py, &mut PyProgress::new(None), |_| jobs::datasets::ioi(&self.0.tokenizer, &spec))?)
    }

    /// `text`'s tokens and next tokens with `inspect`'s options (JSON), as JSON.
    fn inspect(&self, py: Python<'_>, text: String, options: &str) -> PyResult<String> {
        let options = unwound(|| InspectOptions::from_json(options))?;
        json(&job(py, &mut PyProgress::new(None), |_| options.run(&self.0, &text))?)
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

    fn patched<'py>(&self, py: Python<'py>, p: jobs::patch::PatchReport) -> PyResult<(String, Option<Arrays<'py>>, String, Option<String>)> {
        let m = &p.summary.manifest;
        let arrays = p.summary.arrays.as_ref().map(|arrays| {
            let names = m.sites.iter().map(|s| s.name.clone()).chain(["baseline_clean".to_string(), "baseline_corrupted".to_string()]);
            names.zip(arrays).map(|(n, a)| Ok((n, bytes(py, a)?))).collect::<PyResult<_>>()
        });
        let arrays = arrays.transpose()?;
        let skipped: Vec<serde_json::Value> = p.skipped.iter().map(|s| serde_json::json!({"row": s.row, "unit": p.row_unit, "reason": s.reason})).collect();
        Ok((json(m)?, arrays, json(&skipped)?, p.out.map(|o| o.display().to_string())))
    }
}

/// The finished run in `dir`, read by the library under its shared lock: (the manifest as JSON,
/// each array as (name, shape, f32 bytes), the pairs' lengths as i32 bytes).
#[pyfunction]
fn open_run<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<(String, Vec<(String, Vec<usize>, Bound<'py, PyBytes>)>, Bound<'py, PyBytes>)> {
    let run = job(py, &mut PyProgress::new(None), |_| patchbay::results::read_finished(&dir))?;
    // Through a Value, as manifest.json is written: its floats read back as the file's.
    let manifest = serde_json::to_value(&run.manifest).map(|v| v.to_string()).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let arrays = run.arrays.iter().map(|(name, shape, values)| Ok((name.clone(), shape.clone(), bytes(py, values)?))).collect::<PyResult<_>>()?;
    let lengths: Vec<u8> = run.lengths.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((manifest, arrays, PyBytes::new(py, &lengths)))
}

/// The circuit graph of `model` (`patchbay graph`): node and edge names in EAP-IG's order.
#[pyfunction]
fn graph(py: Python<'_>, model: String) -> PyResult<(Vec<String>, Vec<String>)> {
    let g = job(py, &mut PyProgress::new(None), |_| patchbay::jobs::circuits::graph(&model))?;
    Ok((g.nodes.iter().map(ToString::to_string).collect(), g.edges.iter().map(ToString::to_string).collect()))
}

/// `patchbay circuit` of edges run `dir` from its options as JSON: the chosen circuit's EAP-IG
/// Graph JSON, its drawing (SVG) and where both went.
#[pyfunction]
fn circuit(py: Python<'_>, dir: PathBuf, options: &str) -> PyResult<(String, String, String)> {
    let spec = unwound(|| CircuitOptions::from_json(options).and_then(|o| o.spec(dir)))?;
    let c = job(py, &mut PyProgress::new(None), |_| jobs::discovery::circuit(&spec))?;
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())).map_err(to_py);
    Ok((read(&c.json)?, read(&c.svg)?, c.json.display().to_string()))
}

/// `patchbay verify` of a finished run with `verify`'s options (JSON): the verification as JSON.
#[pyfunction]
fn verify(py: Python<'_>, dir: PathBuf, options: &str) -> PyResult<String> {
    let (rows, backend) = unwound(|| jobs::options::VerifyOptions::from_json(options)?.spec())?;
    json(&job(py, &mut PyProgress::new(None), |_| jobs::verify::verify(&dir, rows, backend, None))?)
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
    Ok((bytes(py, &normalized)?, included))
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
    m.add_function(wrap_pyfunction!(open_run, m)?)?;
    m.add_function(wrap_pyfunction!(graph, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(circuit, m)?)?;
    m.add_function(wrap_pyfunction!(normalize, m)?)?;
    m.add_function(wrap_pyfunction!(heatmap, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MODEL", jobs::options::DEFAULT_MODEL)?;
    Ok(())
}
