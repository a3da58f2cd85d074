//! Checkpoint files: where a model's config.json, weights (model.safetensors, or the shards
//! model.safetensors.index.json lists) and tokenizer.json are (a local directory, or the HF hub
//! cache), and safetensors → burn parameters under the family's names.
use super::families::{Family, Source};
use super::transformer::ParamSource;
use crate::backend::float_options;
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
/// What a sharded checkpoint has instead of model.safetensors.
pub const INDEX: &str = "model.safetensors.index.json";

/// The files a model needs.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named: a hub id or a directory.
    pub id: String,
    pub config: PathBuf,
    /// model.safetensors, or the shards its index lists (in name order).
    pub weights: Vec<PathBuf>,
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
        let [config, tokenizer]: [PathBuf; 2] = locate_files(model, &[FILES[0], FILES[2]], watch)?.try_into().expect("two files");
        let weights = match locate_files(model, &[FILES[1]], watch) {
            Ok(one) => one,
            Err(whole) => match locate_files(model, &[INDEX], watch) {
                Ok(index) => locate_files(model, &shards(&index[0])?.iter().map(String::as_str).collect::<Vec<_>>(), watch)?,
                Err(_) => return Err(whole),
            },
        };
        Ok(Self { id: model.to_string(), config, weights, tokenizer })
    }

    /// The config.json read (`read`), as a config.
    pub fn config_of(&self, read: &ModelBytes) -> Result<super::ModelConfig> {
        let text = std::str::from_utf8(&read.config).with_context(|| format!("{} is not UTF-8", self.config.display()))?;
        super::ModelConfig::from_json(text).with_context(|| format!("in {}", self.config.display()))
    }

    /// config.json's `bos_token_id` and `eos_token_id` (one id or a list; either may be absent).
    pub fn special_tokens(&self, read: &ModelBytes) -> (Option<u32>, Vec<u32>) {
        let json: serde_json::Value = serde_json::from_slice(&read.config).unwrap_or_default();
        let id = |v: &serde_json::Value| v.as_u64().and_then(|i| u32::try_from(i).ok());
        let eos = match &json["eos_token_id"] {
            serde_json::Value::Array(ids) => ids.iter().filter_map(id).collect(),
            one => id(one).into_iter().collect(),
        };
        (id(&json["bos_token_id"]), eos)
    }

    /// The files, each read once: the model is built from what was read and the fingerprint
    /// hashes those same bytes, so a file replaced while loading cannot give a run the
    /// fingerprint of other weights than it computed with. The weights are read tensor by tensor
    /// into their values as stored (half precision stays half until the model takes it), never
    /// whole: no second copy of the model in memory.
    pub fn read(&self) -> Result<ModelBytes> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let (config, tokenizer) = (read(&self.config)?, read(&self.tokenizer)?);
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        // Each file's bytes, then its length: where one file ends and the next begins.
        let whole = |bytes: &[u8], hash: &mut xxhash_rust::xxh3::Xxh3| {
            hash.update(bytes);
            hash.update(&(bytes.len() as u64).to_le_bytes());
        };
        whole(&config, &mut hash);
        let mut weights = Weights { files: self.weights.clone(), tensors: HashMap::new() };
        for path in &self.weights {
            let length = read_tensors(path, &mut weights.tensors, &mut hash).with_context(|| format!("reading {}", path.display()))?;
            hash.update(&length.to_le_bytes());
        }
        whole(&tokenizer, &mut hash);
        Ok(ModelBytes { config, weights, tokenizer, fingerprint: format!("{:016x}", hash.digest()) })
    }
}

/// A model's files as read once (`ModelFiles::read`).
pub struct ModelBytes {
    pub config: Vec<u8>,
    /// Every tensor of the weights files (one, or each shard), as f32.
    pub weights: Weights,
    pub tokenizer: Vec<u8>,
    /// A hash of the three (xxh3, 64 bits, hex): a run records it, and resume, merge and verify
    /// refuse a model that is not the one it was made with.
    pub fingerprint: String,
}

/// The tensors of a model's weights files, by name (without `transformer.`).
pub struct Weights {
    files: Vec<PathBuf>,
    tensors: HashMap<String, Decoded>,
}

struct Decoded {
    shape: Vec<usize>,
    values: Stored,
}

/// A tensor's values as the file stores them (little-endian, as this machine holds them): half
/// precision is converted to f32 where the model takes it, in the same pass that lays it out, so
/// that the f32 values are written once.
enum Stored {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Bf16(Vec<u16>),
}

impl Stored {
    /// The flat index of the first value that is NaN or infinite (an exponent of all ones).
    fn first_non_finite(&self) -> Option<usize> {
        match self {
            Stored::F32(v) => first(v, |x: f32| !x.is_finite()),
            Stored::F16(v) => first(v, |b: u16| b & 0x7c00 == 0x7c00),
            Stored::Bf16(v) => first(v, |b: u16| b & 0x7f80 == 0x7f80),
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            Stored::F32(v) => v[i],
            Stored::F16(v) => half::f16::from_bits(v[i]).to_f32(),
            Stored::Bf16(v) => half::bf16::from_bits(v[i]).to_f32(),
        }
    }

    /// The values in f32 (F32's own, without a copy).
    fn into_f32(self) -> Vec<f32> {
        match self {
            Stored::F32(v) => v,
            Stored::F16(v) => converted(&v, |b| half::f16::from_bits(b).to_f32()),
            Stored::Bf16(v) => converted(&v, |b| half::bf16::from_bits(b).to_f32()),
        }
    }

    /// `transpose_rows` of these values, converted to f32 on the way.
    fn transpose_rows(&self, width: usize, out: &mut [f32], total: usize, cols: usize, row: impl Fn(usize) -> usize) {
        match self {
            Stored::F32(v) => transpose_rows(v, |x| x, width, out, total, cols, row),
            Stored::F16(v) => transpose_rows(v, |b| half::f16::from_bits(b).to_f32(), width, out, total, cols, row),
            Stored::Bf16(v) => transpose_rows(v, |b| half::bf16::from_bits(b).to_f32(), width, out, total, cols, row),
        }
    }
}

/// A safetensors header entry.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads safetensors file `path` in order — the header, then each
/// tensor, gaps included — into `tensors`, hashing every byte as read: its length in bytes.
fn read_tensors(path: &Path, tensors: &mut HashMap<String, Decoded>, hash: &mut xxhash_rust::xxh3::Xxh3) -> Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).context("not a safetensors file: shorter than its header's length")?;
    let header_len = u64::from_le_bytes(n);
    if header_len > length.saturating_sub(8) || header_len > 100 << 20 {
        bail!("not a safetensors file: a header of {header_len} bytes in a file of {length}");
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    hash.update(&n);
    hash.update(&header);
    let mut entries: Vec<(String, HeaderEntry)> = serde_json::from_slice::<HashMap<String, serde_json::Value>>(&header)
        .context("not a safetensors file: its header is not JSON")?
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| serde_json::from_value::<HeaderEntry>(v).map(|e| (name.clone(), e)).with_context(|| format!("tensor {name}: not a safetensors header entry")))
        .collect::<Result<_>>()?;
    entries.sort_by_key(|(_, e)| e.data_offsets[0]);
    let data = length - 8 - header_len;
    let mut at = 0u64;
    let mut buffer: Vec<u8> = Vec::new();
    // `bytes` more of the file through the buffer (grown, never shrunk: no memset per tensor).
    let chunk = |file: &mut std::fs::File, bytes: u64, buffer: &mut Vec<u8>, hash: &mut xxhash_rust::xxh3::Xxh3| -> Result<()> {
        let bytes = bytes as usize;
        if buffer.len() < bytes {
            buffer.resize(bytes, 0);
        }
        file.read_exact(&mut buffer[..bytes])?;
        hash.update(&buffer[..bytes]);
        Ok(())
    };
    for (name, e) in entries {
        let [begin, end] = e.data_offsets;
        let size = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => bail!("tensor {name} has dtype {other}; expected F32, F16 or BF16"),
        };
        let count = crate::limits::product(&format!("tensor {name}'s shape"), &e.shape)?;
        if begin < at || end > data || end - begin != count as u64 * size {
            bail!("tensor {name}: data_offsets {begin}..{end} do not fit its shape {:?} of {} in the file's {data} data bytes", e.shape, e.dtype);
        }
        if begin > at {
            chunk(&mut file, begin - at, &mut buffer, hash)?; // alignment padding, hashed as read
        }
        at = end;
        // Read straight into the tensor's values (safetensors stores little-endian, as this
        // machine holds them), a piece at a time, hashed while it is in the cache.
        let mut fill = |bytes: &mut [u8]| -> Result<()> {
            for piece in bytes.chunks_mut(1 << 20) {
                file.read_exact(piece)?;
                hash.update(piece);
            }
            Ok(())
        };
        let values = match e.dtype.as_str() {
            "F32" => {
                let mut v = fresh(count);
                fill(bytemuck::cast_slice_mut(&mut v))?;
                Stored::F32(v)
            }
            half_precision => {
                let mut v = fresh(count);
                fill(bytemuck::cast_slice_mut(&mut v))?;
                if half_precision == "F16" { Stored::F16(v) } else { Stored::Bf16(v) }
            }
        };
        // A NaN or infinite weight makes every result NaN or meaningless, silently.
        if let Some(i) = values.first_non_finite() {
            bail!("tensor {name} holds {} at flat index {i}: a model's weights must be finite", values.get(i));
        }
        let name = name.strip_prefix("transformer.").unwrap_or(&name).to_string();
        if tensors.insert(name.clone(), Decoded { shape: e.shape, values }).is_some() {
            bail!("tensor {name} is held a second time (another shard has it)");
        }
    }
    if at < data {
        chunk(&mut file, data - at, &mut buffer, hash)?;
    }
    Ok(length)
}

/// The shard files a model.safetensors.index.json names (its `weight_map`'s values), each a plain
/// file name beside it: the index is a file from the hub, not a list of paths to trust.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index.display()))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        match file.as_str().filter(|f| super::hub::is_plain(f) && f.ends_with(".safetensors")) {
            Some(f) if !files.iter().any(|g| g == f) => files.push(f.to_string()),
            Some(_) => {}
            None => bail!("{}: tensor {tensor} is in {file}, which is not a .safetensors file beside the index", index.display()),
        }
    }
    if files.is_empty() {
        bail!("{}: its weight_map lists no tensor", index.display());
    }
    files.sort();
    Ok(files)
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


/// Parameters under their family's names (`Family::source`), from the weights as read: each
/// tensor taken once (its values move into the model). Accepts the hub's bare names
/// (`h.0.attn...`) and the `transformer.`-prefixed ones `save_pretrained` writes.
pub struct Safetensors<B: Backend> {
    family: &'static dyn Family,
    weights: Weights,
    /// The model's attention heads (how a weight laid out per head is cut).
    heads: usize,
    device: B::Device,
}

impl<B: Backend> Safetensors<B> {
    pub fn new(family: &'static dyn Family, weights: Weights, heads: usize, device: &B::Device) -> Self {
        Self { family, weights, heads, device: device.clone() }
    }

    /// The file named in an error: the one file, or the shards' folder.
    fn where_(&self) -> String {
        match self.weights.files.as_slice() {
            [one] => one.display().to_string(),
            all => format!("the {} shards in {}", all.len(), all.first().and_then(|f| f.parent()).unwrap_or(Path::new(".")).display()),
        }
    }

    /// Tensor `name`'s values in f32, taken out, stored in the generic model's `shape`.
    fn same(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (values, stored) = self.values(name)?;
        if stored != shape {
            bail!("tensor {name} in {} has shape {stored:?}, but config.json implies {shape:?}", self.where_());
        }
        Ok(values.into_f32())
    }

    /// Tensor `name`'s values as stored and its shape, taken out.
    fn values(&mut self, name: &str) -> Result<(Stored, Vec<usize>)> {
        let place = self.where_();
        let d = self.weights.tensors.remove(name).with_context(|| format!("{place} has no tensor {name} (nor transformer.{name})"))?;
        Ok((d.values, d.shape))
    }
}

impl<B: Backend> ParamSource<B> for Safetensors<B> {
    fn param<const D: usize>(&mut self, generic: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let file = self.where_();
        let values = match self.family.source(generic) {
            Source::Same(name) => self.same(&name, &shape)?,
            Source::PlusOne(name) => self.same(&name, &shape)?.into_iter().map(|w| 1.0 + w).collect(),
            // Each part [out_i, in] written transposed into its columns of [in, Σ out_i] (a bias:
            // its stretch of [Σ out_i]).
            Source::Parts(names) => {
                let (width, total) = if D == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
                let mut out = fresh(width * total);
                let mut col = 0;
                for name in &names {
                    let (values, stored) = self.values(name)?;
                    let rows = stored.first().copied().unwrap_or(0);
                    let expected: Vec<usize> = if D == 2 { vec![rows, width] } else { vec![rows] };
                    if stored != expected || col + rows > total {
                        bail!("tensor {name} in {file} has shape {stored:?}, which does not fit the {shape:?} that config.json implies for {}", names.join(" | "));
                    }
                    values.transpose_rows(width, &mut out[col..], total, rows, |r| r);
                    col += rows;
                }
                if col != total {
                    bail!("tensors {} in {file} hold {col} outputs, but config.json implies {total}", names.join(" | "));
                }
                out
            }
            // [3·d, in] rows of q, k, v per head, into q|k|v columns of [in, 3·d].
            Source::PerHead(name) => {
                let (width, total) = if D == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
                let (values, stored) = self.values(&name)?;
                let expected: Vec<usize> = if D == 2 { vec![total, width] } else { vec![total] };
                if stored != expected || total % (3 * self.heads) != 0 {
                    bail!("tensor {name} in {file} has shape {stored:?}, but config.json implies {expected:?} of {} heads' q, k and v", self.heads);
                }
                let (h, dh) = (self.heads, total / (3 * self.heads));
                let mut out = fresh(width * total);
                // Column c = part·h·dh + head·dh + j reads row head·3·dh + part·dh + j.
                values.transpose_rows(width, &mut out, total, total, |c| (c % (h * dh)) / dh * 3 * dh + c / (h * dh) * dh + c % dh);
                out
            }
        };
        Ok(Tensor::from_data(TensorData::new(values, shape), float_options::<B>(&self.device)))
    }
}

/// The index of the first of `values` that is `bad`: chunks on every thread, each tested in one
/// loop without an early exit, which the compiler vectorizes (rayon's `position_first` per element
/// was 70 % of a load, `any` 20 %).
fn first<T: Copy + Sync>(values: &[T], bad: impl Fn(T) -> bool + Sync) -> Option<usize> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let chunk = values.par_chunks(CHUNK).position_first(|c| c.iter().fold(false, |seen, &v| seen | bad(v)))?;
    values[chunk * CHUNK..].iter().position(|&v| bad(v)).map(|i| chunk * CHUNK + i)
}

/// `n` zeroed values, in memory the kernel backs with 2 MiB pages where it can. A model's values
/// are all written into fresh memory once; in 4 KiB pages the faults, zeroing and charging of
/// those pages were 40 % of loading a BF16 checkpoint (`perf record`, docs/performance.md).
fn fresh<T: bytemuck::Zeroable + Copy>(n: usize) -> Vec<T> {
    let v: Vec<T> = bytemuck::zeroed_vec(n);
    let bytes = n * std::mem::size_of::<T>();
    #[cfg(target_os = "linux")]
    if bytes >= HUGE_PAGE {
        // The whole pages inside the allocation (not yet touched: zeroed by the kernel on first
        // write); advice only, so an error (no transparent huge pages) changes nothing.
        let start = (v.as_ptr() as usize).next_multiple_of(4096);
        let end = (v.as_ptr() as usize + bytes) / 4096 * 4096;
        // SAFETY: madvise only advises on pages of this live allocation; it moves no data.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    v
}

const HUGE_PAGE: usize = 2 << 20;

/// `values` converted to f32 by `f32_of`, in chunks on every thread.
fn converted<T: Copy + Sync>(values: &[T], f32_of: impl Fn(T) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = fresh(values.len());
    out.par_chunks_mut(1 << 16).zip(values.par_chunks(1 << 16)).for_each(|(o, v)| o.iter_mut().zip(v).for_each(|(o, &v)| *o = f32_of(v)));
    out
}

/// Rows `row(c)` of `values` [rows, width], converted by `f32_of`, written as columns c < `cols`
/// of `out` [width, total] (each row start offset by the caller), in tiles so that the strided
/// reads stay within the cache; bands of `out`'s rows on every thread. (Moving each tile through
/// a buffer, to read and write both in contiguous stretches, measured 7 % slower.)
fn transpose_rows<T: Copy + Sync>(values: &[T], f32_of: impl Fn(T) -> f32 + Sync, width: usize, out: &mut [f32], total: usize, cols: usize, row: impl Fn(usize) -> usize) {
    use rayon::prelude::*;
    const TILE: usize = 64;
    let rows: Vec<usize> = (0..cols).map(row).collect();
    out.par_chunks_mut(TILE * total).enumerate().for_each(|(band, out)| {
        let i0 = band * TILE;
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for i in i0..(i0 + TILE).min(width) {
                let at = (i - i0) * total;
                out[at + c0..at + c1].iter_mut().zip(&rows[c0..c1]).for_each(|(t, &r)| *t = f32_of(values[r * width + i]));
            }
        }
    });
}

/// The model of `files` on `device`, from `config` and the weights' bytes as read (`ModelFiles::read`).
pub fn load_model<B: Backend>(files: &ModelFiles, config: super::ModelConfig, weights: Weights, device: &B::Device) -> Result<super::Transformer<B>> {
    let family = super::families::of(&config.family)?;
    let mut weights = Safetensors::new(family, weights, config.heads, device);
    // Layers beyond config.json's would be ignored without a word: a config of another model.
    let holds = |l: usize| weights.weights.tensors.keys().any(|k| k.starts_with(&family.layer_prefix(l)));
    if holds(config.layers) {
        let layers = (config.layers..).take_while(|&l| holds(l)).count() + config.layers;
        bail!("{} holds {layers} layers but {} says {} layers: they are not one model", weights.where_(), files.config.display(), config.layers);
    }
    super::Transformer::load(config, &mut weights)
}

/// The model `model` (a directory or hub id) on `device`, its files read once: `load_model` of
/// `ModelFiles::locate`'s files.
pub fn load_located<B: Backend>(model: &str, device: &B::Device) -> Result<super::Transformer<B>> {
    let files = ModelFiles::locate(model)?;
    let read = files.read()?;
    let config = files.config_of(&read)?;
    load_model(&files, config, read.weights, device)
}
