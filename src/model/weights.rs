//! Checkpoint files: where a model's config.json, model.safetensors and tokenizer.json are (a local
//! directory, or the HF hub cache through hf-hub), and safetensors → burn parameters.
use super::gpt2::ParamSource;
use crate::backend::float_options;
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorInfo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// The three files a model needs.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named: a hub id or a directory.
    pub id: String,
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// `model` is a directory holding the three files, or a hub id (`gpt2`,
    /// `openai-community/gpt2-medium`) fetched into the HF cache (HF_HOME). With HF_HUB_OFFLINE=1
    /// only the cache is read.
    pub fn locate(model: &str) -> Result<Self> {
        Self::locate_with(model, &mut terminal_bar())
    }

    /// `locate`, with `watch(bytes_done, bytes_total)` following each download (an error it
    /// returns stops the download: how Python's Ctrl-C does).
    pub fn locate_with(model: &str, watch: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<Self> {
        let [config, weights, tokenizer]: [PathBuf; 3] = locate_files(model, &FILES, watch)?.try_into().expect("three files");
        Ok(Self { id: model.to_string(), config, weights, tokenizer })
    }

    /// The config.json read (`read`), as a config.
    pub fn config_of(&self, read: &ModelBytes) -> Result<super::Gpt2Config> {
        let text = std::str::from_utf8(&read.config).with_context(|| format!("{} is not UTF-8", self.config.display()))?;
        super::Gpt2Config::from_json(text).with_context(|| format!("in {}", self.config.display()))
    }

    /// The three files' bytes, each read once: the model is built from these bytes and their
    /// fingerprint hashes these bytes, so a file replaced while loading cannot give a run the
    /// fingerprint of other weights than it computed with.
    pub fn read(&self) -> Result<ModelBytes> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let (config, weights, tokenizer) = (read(&self.config)?, read(&self.weights)?, read(&self.tokenizer)?);
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        for bytes in [&config, &weights, &tokenizer] {
            hash.update(bytes);
            hash.update(&(bytes.len() as u64).to_le_bytes()); // where one file ends and the next begins
        }
        Ok(ModelBytes { config, weights, tokenizer, fingerprint: format!("{:016x}", hash.digest()) })
    }
}

/// A model's three files as read once (`ModelFiles::read`).
pub struct ModelBytes {
    pub config: Vec<u8>,
    pub weights: Vec<u8>,
    pub tokenizer: Vec<u8>,
    /// A hash of the three (xxh3, 64 bits, hex): a run records it, and resume, merge and verify
    /// refuse a model that is not the one it was made with.
    pub fingerprint: String,
}

/// One of the model's files (`config.json` or `tokenizer.json` for what needs no weights), found
/// as `ModelFiles::locate` finds the three, fetching only that one.
pub fn locate_file(model: &str, file: &str) -> Result<PathBuf> {
    Ok(locate_files(model, &[file], &mut terminal_bar())?.remove(0))
}

/// A download's progress as a bar on the terminal (none when stderr is not one).
pub fn terminal_bar() -> impl FnMut(u64, u64) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if total > 0 && done == total {
            bar.finish_and_clear();
        }
        Ok(())
    }
}

fn locate_files(model: &str, files: &[&str], watch: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<Vec<PathBuf>> {
    let dir = Path::new(model);
    if dir.is_dir() {
        files
            .iter()
            .map(|f| {
                let p = dir.join(f);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(not_found(format!("{} is missing: a model directory needs {}", p.display(), FILES.join(", "))))
                }
            })
            .collect()
    } else if model.starts_with(['.', '/']) || model.matches('/').count() > 1 {
        // Hub ids are `name` or `owner/name`: anything else was meant as a path.
        Err(not_found(format!("model directory {model} does not exist")))
    } else {
        super::hub::check_id(model)?;
        hub_files(model, files, watch)
    }
}

/// An error that says, to a caller who asks (Python's FileNotFoundError), that a file is not there.
fn not_found(message: String) -> anyhow::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, message).into()
}

fn offline() -> bool {
    // hf-hub does not read HF_HUB_OFFLINE itself.
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn hub_files(id: &str, files: &[&str], watch: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<Vec<PathBuf>> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_string());
    if offline() {
        return files
            .iter()
            .map(|f| {
                cached.get(f).with_context(|| {
                    format!(
                        "HF_HUB_OFFLINE is set and {f} of {id} is not in the HF cache at {}: download it once online, \
                         or pass --model DIR with {}",
                        cache.path().display(),
                        FILES.join(", ")
                    )
                })
            })
            .collect();
    }
    let endpoint = super::hub::endpoint();
    files
        .iter()
        .map(|f| {
            let f = *f;
            if let Some(p) = cached.get(f) {
                return Ok(p);
            }
            let fetched = super::hub::download(&cache, id, f, watch).and_then(|p| complete(&p).map(|()| p));
            fetched.map_err(|e| {
                anyhow::anyhow!(
                    "could not fetch {f} of {id} from {endpoint} ({e:#}); without network, fill the cache at {} \
                     (HF_HOME) or pass --model DIR with {}",
                    cache.path().display(),
                    FILES.join(", ")
                )
            })
        })
        .collect()
}

/// Checks a downloaded file is whole (hf-hub keeps what a cut connection delivered when the
/// transfer ends without an error): safetensors' header and data add up to the file's size;
/// JSON parses. A file that is not is removed from the cache.
fn complete(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let whole = if path.extension().is_some_and(|e| e == "safetensors") {
        safetensors::SafeTensors::deserialize(&bytes).is_ok()
    } else {
        serde_json::from_slice::<serde_json::Value>(&bytes).is_ok()
    };
    if whole {
        return Ok(());
    }
    for p in [std::fs::canonicalize(path).ok(), Some(path.to_path_buf())].into_iter().flatten() {
        let _ = std::fs::remove_file(p);
    }
    anyhow::bail!("the download ended after {} bytes, short of a whole file", bytes.len())
}


/// Parameters read from a model.safetensors file. Accepts the hub's bare names (`h.0.attn...`)
/// and the `transformer.`-prefixed ones `save_pretrained` writes; F32, F16 and BF16 tensors.
pub struct Safetensors<B: Backend> {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
    device: B::Device,
}

impl<B: Backend> Safetensors<B> {
    pub fn open(path: &Path, device: &B::Device) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(path, bytes, device)
    }

    /// The parameters in `bytes`, read from `path` (named in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>, device: &B::Device) -> Result<Self> {
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))?;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (name.strip_prefix("transformer.").unwrap_or(&name).to_string(), info.clone()))
            .collect();
        Ok(Self { path: path.to_path_buf(), bytes, data_start: 8 + header_len, tensors, device: device.clone() })
    }
}

impl<B: Backend> ParamSource<B> for Safetensors<B> {
    fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let file = self.path.display();
        let info = self.tensors.get(name).with_context(|| format!("{file} has no tensor {name} (nor transformer.{name})"))?;
        if info.shape != shape {
            bail!("tensor {name} in {file} has shape {:?}, but config.json implies {:?}", info.shape, shape);
        }
        let raw = &self.bytes[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!("tensor {name} in {file} has dtype {other:?}; expected F32, F16 or BF16"),
        };
        // A NaN or infinite weight makes every result NaN or meaningless, silently.
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("tensor {name} in {file} holds {} at flat index {i}: a model's weights must be finite", values[i]);
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), float_options::<B>(&self.device)))
    }
}

/// The model of `files` on `device`, from `config` and the weights' bytes as read (`ModelFiles::read`).
pub fn load_model<B: Backend>(files: &ModelFiles, config: super::Gpt2Config, weights: Vec<u8>, device: &B::Device) -> Result<super::Gpt2<B>> {
    let mut weights = Safetensors::from_bytes(&files.weights, weights, device)?;
    // Layers beyond config.json's would be ignored without a word: a config of another model.
    let extra = format!("h.{}.", config.n_layer);
    if weights.tensors.keys().any(|k| k.starts_with(&extra)) {
        let layers = (config.n_layer..).take_while(|l| weights.tensors.keys().any(|k| k.starts_with(&format!("h.{l}.")))).count() + config.n_layer;
        bail!("{} holds {layers} layers but {} says n_layer = {}: they are not one model", files.weights.display(), files.config.display(), config.n_layer);
    }
    super::Gpt2::load(config, &mut weights)
}
