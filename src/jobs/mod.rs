//! The library's front door: a model loaded once (`Model`: files, tokenizer, backend, dtype,
//! fusion, threads) and one job function per capability, each taking a spec and returning a typed
//! result. Every file a job writes goes through `results/`. The CLI (`cli/`) and the Python
//! package (`python/`) are two thin front ends over these: parse → spec → job → print or return.
/// Runs `body` on `model` (a `&Model`) on whichever backend type it was loaded on: the one
/// adapter from a job to the model (`Model::with`). A closure cannot be generic over the backend
/// type, so this writes out what it would be: a `ModelTask` holding the values the body uses
/// (`name: Type = value`, borrowing for `'a`), whose `run` is the body with `on` the model on its
/// backend (`on.model`, `on.autodiff()`). For example
/// `on_model!(model, |on| -> Vec<f32> { next_token(on.model, ids) }, ids: &'a [u32] = &ids)`.
macro_rules! on_model {
    ($model:expr, |$on:ident| -> $out:ty $body:block $(, $name:ident: $ty:ty = $value:expr)* $(,)?) => {{
        struct Task<'a> {
            $($name: $ty,)*
            _borrows: std::marker::PhantomData<&'a ()>,
        }
        impl $crate::jobs::ModelTask for Task<'_> {
            type Output = $out;
            fn run<B: burn::prelude::Backend>(self, $on: $crate::jobs::ModelOnBackend<'_, B>) -> anyhow::Result<$out> {
                let Task { $($name,)* .. } = self;
                $body
            }
        }
        $model.with(Task { $($name: $value,)* _borrows: std::marker::PhantomData })
    }};
}

pub mod bench;
pub mod circuits;
pub mod datasets;
pub mod discovery;
pub mod doctor;
pub mod inspect;
pub mod memory;
pub mod options;
pub mod patch;
pub mod shard;
pub mod sweep;
pub mod text;
pub mod verify;

use crate::backend::{dispatch, BackendSpec, BackendTask};
use crate::model::weights::{load_model, ModelFiles};
use crate::model::{Transformer, ModelConfig};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::prelude::Backend;
use std::any::Any;
use std::sync::OnceLock;

/// A `Transformer<B>` of whichever backend type `dispatch` chose, its type erased (and recovered
/// by the same choice).
type AnyTransformer = Box<dyn Any + Send + Sync>;

/// A model on a backend, loaded once and used by any number of jobs. Under Autodiff (attribution
/// patching) it is loaded a second time, on first use, and kept.
pub struct Model {
    pub files: ModelFiles,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub backend: BackendSpec,
    /// `ModelFiles::fingerprint`: which weights (and config, tokenizer) these are.
    pub fingerprint: String,
    /// A `Transformer<B>` of the backend type `backend` dispatches to.
    plain: AnyTransformer,
    /// A `Transformer<Autodiff<B>>`, when a job needed one.
    autodiff: OnceLock<AnyTransformer>,
}

/// Work on a loaded model, whichever backend it is on (written by `on_model!`).
pub trait ModelTask {
    type Output;
    fn run<B: Backend>(self, model: ModelOnBackend<'_, B>) -> Result<Self::Output>;
}

/// A task's view of the model: the backend's `Transformer`, and its Autodiff twin on request.
pub struct ModelOnBackend<'m, B: Backend> {
    pub model: &'m Transformer<B>,
    handle: &'m Model,
}

impl<'m, B: Backend> ModelOnBackend<'m, B> {
    pub fn autodiff(&self) -> Result<&'m Transformer<Autodiff<B>>> {
        let h = self.handle;
        if h.autodiff.get().is_none() {
            // The loaded model's own tensors, seen through Autodiff: no second read or copy.
            let model: AnyTransformer = Box::new(self.model.autodiff());
            let _ = h.autodiff.set(model);
        }
        h.autodiff.get().and_then(|m| m.downcast_ref()).context("internal error: the Autodiff model is of another backend")
    }
}

/// Builds the model from the files' bytes as read once (`ModelFiles::read`).
struct Load<'a>(&'a ModelFiles, ModelConfig, crate::model::weights::Weights);

impl BackendTask for Load<'_> {
    type Output = AnyTransformer;
    fn run<B: Backend>(self, device: B::Device) -> Result<AnyTransformer> {
        Ok(Box::new(load_model::<B>(self.0, self.1, self.2, &device)?))
    }
}

/// A `ModelTask` with the model it runs on, as a `BackendTask` for `dispatch`.
struct TaskOnModel<'m, T> {
    handle: &'m Model,
    task: T,
}

impl<T: ModelTask> BackendTask for TaskOnModel<'_, T> {
    type Output = T::Output;
    fn run<B: Backend>(self, _: B::Device) -> Result<T::Output> {
        // `dispatch` picks the backend type from the same spec it was loaded with.
        let model = self.handle.plain.downcast_ref::<Transformer<B>>().context("internal error: the model is of another backend")?;
        self.task.run(ModelOnBackend { model, handle: self.handle })
    }
}

impl Model {
    /// `model` is a hub id or a directory (`ModelFiles::locate`); `threads` sets the cpu backend's
    /// worker threads, once per process.
    pub fn load(model: &str, backend: BackendSpec, threads: Option<usize>) -> Result<Self> {
        Self::load_watched(model, backend, threads, &mut crate::model::weights::terminal_bar())
    }

    /// `load`, with `watch(bytes_done, bytes_total)` following any download instead of a bar on
    /// the terminal (an error it returns stops the download: how Python's Ctrl-C does).
    pub fn load_watched(model: &str, backend: BackendSpec, threads: Option<usize>, watch: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<Self> {
        if let Some(n) = threads {
            crate::backend::set_cpu_threads(n)?;
        }
        let files = ModelFiles::locate_with(model, watch)?;
        let read = files.read()?;
        let config = files.config_of(&read)?;
        let (bos, eos) = files.special_tokens(&read);
        let tokenizer = Tokenizer::from_bytes(&read.tokenizer, &files.tokenizer)?.with_context(config.context).with_special_tokens(bos, eos);
        let fingerprint = read.fingerprint;
        let plain = dispatch(&backend, Load(&files, config.clone(), read.weights))?;
        Ok(Self { files, config, tokenizer, backend, fingerprint, plain, autodiff: OnceLock::new() })
    }

    /// Runs `task` on the loaded model.
    pub fn with<T: ModelTask>(&self, task: T) -> Result<T::Output> {
        dispatch(&self.backend, TaskOnModel { handle: self, task })
    }

    /// What the user named the model: a hub id or a directory.
    pub fn id(&self) -> &str {
        &self.files.id
    }

    /// The model the run `m` in `dir` was computed with, on `backend`: `loaded` when it is that
    /// one there, else loaded into `own`; refused when its files are not the run's (fingerprint).
    pub fn of_run<'a>(dir: &std::path::Path, m: &crate::results::Manifest, backend: BackendSpec, loaded: Option<&'a Model>, own: &'a mut Option<Model>) -> Result<&'a Model> {
        let model = match loaded.filter(|l| l.backend == backend && l.id() == m.model) {
            Some(l) => l,
            None => own.insert(Model::load(&m.model, backend, None).with_context(|| format!("the model of {}", dir.display()))?),
        };
        // A run without a fingerprint could be checked against any model: refused, not trusted.
        if m.weights.is_empty() {
            anyhow::bail!("{}: the manifest records no fingerprint of the model files (weights): the run cannot be held to a model", dir.display());
        }
        if model.config != m.config {
            anyhow::bail!("{}: the manifest's config is not the one of {} (config.json): {:?} against {:?}", dir.display(), m.model, m.config, model.config);
        }
        if model.fingerprint != m.weights {
            anyhow::bail!(
                "{} is not the model {} was run with: its files' fingerprint is {}, the run's {} (the weights, config or tokenizer changed)",
                m.model,
                dir.display(),
                model.fingerprint,
                m.weights
            );
        }
        Ok(model)
    }
}

/// How a long job tells its front end how far it is: a terminal bar, a notebook's tqdm, nothing.
/// `advance` returning an error (the user pressed Ctrl-C) stops the job at the next batch;
/// a results directory is then left in a state `--resume` finishes.
pub trait Progress {
    /// A stage of `total` items named `unit` ("runs", "prompts") begins.
    fn start(&mut self, total: u64, unit: &str);
    /// `n` more items are done.
    fn advance(&mut self, n: u64) -> Result<()>;
    /// A remark shown beside the count (runs skipped as no-ops).
    fn note(&mut self, _text: &str) {}
    fn finish(&mut self) {}
}

/// `work` told to advance `progress` by each count of items it finishes, then the stage finished:
/// how every job passes its progress to the model's long loops.
pub fn counted<T>(progress: &mut dyn Progress, work: impl FnOnce(&mut dyn FnMut(usize) -> Result<()>) -> Result<T>) -> Result<T> {
    let out = work(&mut |n| progress.advance(n as u64))?;
    progress.finish();
    Ok(out)
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: u64, _: &str) {}
    fn advance(&mut self, _: u64) -> Result<()> {
        Ok(())
    }
}
