//! Checkpoint files: where a model's config.json, weights (model.safetensors, or the shards
//! model.safetensors.index.json lists) and tokenizer.json are (a local directory, or the HF hub
//! cache), and safetensors → burn parameters under the family's names.
use super::families::{Family, Source};
use super::transformer::ParamSource;
use crate::backend::float_options;
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use std::collections::HashMap;
use xxhash_rust::xxh3::Xxh3;
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

    /// The files, each opened once. The weights are read twice from the page cache and never
    /// held as stored: first in file order, every byte hashed (the fingerprint) and every value
    /// checked finite; then tensor by tensor as the model takes them, converted and laid out
    /// straight into the model's values, each tensor's bytes hashed again and compared with the
    /// first reading, so that a file changed while loading is refused rather than give a run the
    /// fingerprint of other weights than it computed with. (Holding the values as stored until
    /// the model took them was a third of the fresh memory a BF16 load touched, and touching fresh
    /// memory is most of a load's time: docs/performance.md.)
    pub fn read(&self) -> Result<ModelBytes> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let (config, tokenizer) = (read(&self.config)?, read(&self.tokenizer)?);
        let mut hash = Xxh3::new();
        // Each file's bytes, then its length: where one file ends and the next begins.
        let whole = |bytes: &[u8], hash: &mut Xxh3| {
            hash.update(bytes);
            hash.update(&(bytes.len() as u64).to_le_bytes());
        };
        whole(&config, &mut hash);
        let mut weights = Weights { files: self.weights.clone(), open: Vec::new(), tensors: HashMap::new(), buffers: Default::default() };
        for path in &self.weights {
            let reading = || format!("reading {}", path.display());
            let file = std::fs::File::open(path).with_context(reading)?;
            let length = read_tensors(&file, weights.open.len(), &mut weights.tensors, &mut weights.buffers, &mut hash).with_context(reading)?;
            weights.open.push(file);
            hash.update(&length.to_le_bytes());
        }
        whole(&tokenizer, &mut hash);
        Ok(ModelBytes { config, weights, tokenizer, fingerprint: format!("{:016x}", hash.digest()) })
    }
}

/// A model's files as read once (`ModelFiles::read`).
pub struct ModelBytes {
    pub config: Vec<u8>,
    /// The tensors of the weights files (one, or each shard), read and checked, open for the
    /// model to take.
    pub weights: Weights,
    pub tokenizer: Vec<u8>,
    /// A hash of the three (xxh3, 64 bits, hex): a run records it, and resume, merge and verify
    /// refuse a model that is not the one it was made with.
    pub fingerprint: String,
}

/// The tensors of a model's weights files, by name (without `transformer.`).
pub struct Weights {
    files: Vec<PathBuf>,
    /// `files`, each opened once.
    open: Vec<std::fs::File>,
    tensors: HashMap<String, Stored>,
    /// The two pieces reading goes through (`in_pieces`).
    buffers: [Vec<u32>; 2],
}

/// Where a tensor's values are, as the first reading found them.
struct Stored {
    shape: Vec<usize>,
    dtype: Dtype,
    /// Which of `Weights::open`, and where its bytes begin there.
    file: usize,
    offset: u64,
    /// xxh3 of its bytes.
    hash: u64,
}

impl Stored {
    /// Its rows (the first axis) and the values in each.
    fn rows(&self) -> (usize, usize) {
        match self.shape.split_first() {
            Some((&rows, rest)) => (rows, rest.iter().product()),
            None => (1, 1),
        }
    }
}

/// The value types a safetensors file may hold here, little-endian as this machine holds them.
#[derive(Clone, Copy)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The index of the first of `bytes`' values that is NaN or infinite (an exponent of all
    /// ones), and that value.
    fn first_non_finite(self, bytes: &[u8]) -> Option<(usize, f32)> {
        let i = match self {
            Dtype::F32 => first(bytemuck::cast_slice::<u8, f32>(bytes), |x| !x.is_finite()),
            Dtype::F16 => first(bytemuck::cast_slice::<u8, u16>(bytes), |b| b & 0x7c00 == 0x7c00),
            Dtype::Bf16 => first(bytemuck::cast_slice::<u8, u16>(bytes), |b| b & 0x7f80 == 0x7f80),
        }?;
        let mut value = [0f32];
        self.convert(&bytes[i * self.size()..][..self.size()], &mut value);
        Some((i, value[0]))
    }

    /// `bytes`' values in f32, into the start of `out`, in chunks on every thread.
    fn convert(self, bytes: &[u8], out: &mut [f32]) {
        fn each<T: Copy + Sync>(values: &[T], out: &mut [f32], f32_of: impl Fn(T) -> f32 + Sync) {
            use rayon::prelude::*;
            out[..values.len()].par_chunks_mut(1 << 14).zip(values.par_chunks(1 << 14)).for_each(|(o, v)| o.iter_mut().zip(v).for_each(|(o, &v)| *o = f32_of(v)));
        }
        match self {
            Dtype::F32 => out[..bytes.len() / 4].copy_from_slice(bytemuck::cast_slice(bytes)),
            Dtype::F16 => each(bytemuck::cast_slice::<u8, u16>(bytes), out, |b| half::f16::from_bits(b).to_f32()),
            Dtype::Bf16 => each(bytemuck::cast_slice::<u8, u16>(bytes), out, bf16_to_f32),
        }
    }

    /// `bytes` holding rows of `width` values, each row r written converted as column `col(r)`
    /// of `out` [width, total]. Bands of `BAND` of `out`'s rows on every thread, each transposed
    /// a tile of `TILE` of the piece's rows at a time through a small array: the piece is read a
    /// row's `BAND` neighbouring values at a time and `out` written `TILE` neighbouring values at a
    /// time (reading down the piece's columns, one value a row, was a quarter of a BF16 load;
    /// tiles are twice as fast). The rows read are a cache-sized piece of the tensor.
    fn scatter(self, bytes: &[u8], width: usize, out: &mut [f32], total: usize, col: impl Fn(usize) -> usize + Sync) {
        fn each<T: Copy + Sync>(values: &[T], f32_of: impl Fn(T) -> f32 + Sync, width: usize, out: &mut [f32], total: usize, col: impl Fn(usize) -> usize + Sync) {
            use rayon::prelude::*;
            // Measured on 896 × 4864 BF16 (Qwen2.5-0.5B's MLP): 8 × 64 fastest of 8–64 each way.
            const BAND: usize = 8;
            const TILE: usize = 64;
            let rows = values.len() / width;
            out.par_chunks_mut(total * BAND).enumerate().for_each(|(b, band)| {
                let n = band.len() / total;
                let (mut tile, mut cols) = ([[0f32; TILE]; BAND], [0usize; TILE]);
                for first in (0..rows).step_by(TILE) {
                    let m = (rows - first).min(TILE);
                    for r in 0..m {
                        cols[r] = col(first + r);
                        for (k, &v) in values[(first + r) * width + b * BAND..][..n].iter().enumerate() {
                            tile[k][r] = f32_of(v);
                        }
                    }
                    let c = cols[0];
                    if cols[..m].iter().enumerate().all(|(r, &x)| x == c + r) {
                        (0..n).for_each(|k| band[k * total + c..][..m].copy_from_slice(&tile[k][..m]));
                    } else {
                        (0..n).for_each(|k| (0..m).for_each(|r| band[k * total + cols[r]] = tile[k][r]));
                    }
                }
            });
        }
        match self {
            Dtype::F32 => each(bytemuck::cast_slice::<u8, f32>(bytes), |x| x, width, out, total, col),
            Dtype::F16 => each(bytemuck::cast_slice::<u8, u16>(bytes), |b| half::f16::from_bits(b).to_f32(), width, out, total, col),
            Dtype::Bf16 => each(bytemuck::cast_slice::<u8, u16>(bytes), bf16_to_f32, width, out, total, col),
        }
    }
}

/// A BF16 value in f32: its bits are the f32's upper half, for every value (a shift the compiler
/// vectorizes, where `half`'s conversion tests each value for NaN).
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The pieces the files are read in: within the cache, and a few for a tensor's rows.
const PIECE: usize = 1 << 20;

/// A reusable buffer of at least `bytes`, aligned for any value type here.
fn piece(buffer: &mut Vec<u32>, bytes: usize) -> &mut [u8] {
    if buffer.len() * 4 < bytes {
        buffer.resize(bytes.div_ceil(4), 0);
    }
    &mut bytemuck::cast_slice_mut(buffer)[..bytes]
}

/// A safetensors header entry.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads safetensors file `file` (number `index` of the weights) in order — the header, then
/// each tensor, gaps included — hashing every byte into `hash` and each tensor's into its own,
/// checking every value finite (pieces read through `buffers`), and records where each tensor is
/// in `tensors`: its length in bytes.
fn read_tensors(mut file: &std::fs::File, index: usize, tensors: &mut HashMap<String, Stored>, buffers: &mut [Vec<u32>; 2], hash: &mut Xxh3) -> Result<u64> {
    use std::io::Read;
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
    // `bytes` of the data from `from`, each piece hashed into the fingerprint and, beside that on
    // another thread, into `own` and seen by `check`.
    let mut pass = |from: u64, bytes: u64, own: &mut Xxh3, check: &mut (dyn FnMut(&[u8]) -> Result<()> + Send)| {
        in_pieces(file, 8 + header_len + from, bytes as usize, PIECE, buffers, |_, piece| {
            let ((), checked) = rayon::join(|| hash.update(piece), || {
                own.update(piece);
                check(piece)
            });
            checked
        })
    };
    for (name, e) in entries {
        let [begin, end] = e.data_offsets;
        let dtype = match e.dtype.as_str() {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            other => bail!("tensor {name} has dtype {other}; expected F32, F16 or BF16"),
        };
        let count = crate::limits::product(&format!("tensor {name}'s shape"), &e.shape)?;
        if begin < at || end > data || end.checked_sub(begin) != Some(count as u64 * dtype.size() as u64) {
            bail!("tensor {name}: data_offsets {begin}..{end} do not fit its shape {:?} of {} in the file's {data} data bytes", e.shape, e.dtype);
        }
        if begin > at {
            pass(at, begin - at, &mut Xxh3::new(), &mut |_| Ok(()))?; // alignment padding, hashed as read
        }
        at = end;
        // A NaN or infinite weight makes every result NaN or meaningless, silently.
        let (mut own, mut seen) = (Xxh3::new(), 0);
        pass(begin, end - begin, &mut own, &mut |piece| {
            if let Some((i, value)) = dtype.first_non_finite(piece) {
                bail!("tensor {name} holds {value} at flat index {}: a model's weights must be finite", seen + i);
            }
            seen += piece.len() / dtype.size();
            Ok(())
        })?;
        let name = name.strip_prefix("transformer.").unwrap_or(&name).to_string();
        let stored = Stored { shape: e.shape, dtype, file: index, offset: 8 + header_len + begin, hash: own.digest() };
        if tensors.insert(name.clone(), stored).is_some() {
            bail!("tensor {name} is held a second time (another shard has it)");
        }
    }
    if at < data {
        pass(at, data - at, &mut Xxh3::new(), &mut |_| Ok(()))?;
    }
    Ok(length)
}

impl Weights {
    /// Tensor `name`'s bytes read again, in pieces of whole rows: `each(first_row, bytes)`. The
    /// bytes are hashed and must be the ones the first reading hashed.
    fn reread(&mut self, name: &str, t: &Stored, mut each: impl FnMut(usize, &[u8]) + Send) -> Result<()> {
        let (rows, width) = t.rows();
        let row_bytes = (width * t.dtype.size()).max(1);
        let per_piece = (PIECE / row_bytes).max(1);
        let mut own = Xxh3::new();
        in_pieces(&self.open[t.file], t.offset, rows * width * t.dtype.size(), per_piece * row_bytes, &mut self.buffers, |done, piece| {
            rayon::join(|| own.update(piece), || each(done / row_bytes, piece));
            Ok(())
        })
        .with_context(|| format!("reading {}", self.files[t.file].display()))?;
        if own.digest() != t.hash {
            bail!("{} changed while it was being loaded (tensor {name}): load the model again", self.files[t.file].display());
        }
        Ok(())
    }
}

/// `bytes` bytes of `file` from `offset`, in pieces of at most `size`, each handed to
/// `each(bytes_before_it, piece)` while the next is read into the other of `buffers`: copying a
/// piece out of the page cache takes about as long as hashing, checking or converting one, so
/// on two threads the two overlap.
fn in_pieces(file: &std::fs::File, offset: u64, bytes: usize, size: usize, buffers: &mut [Vec<u32>; 2], mut each: impl FnMut(usize, &[u8]) -> Result<()> + Send) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let [this, next] = buffers;
    // `held`: the bytes in `this`, the piece after the `done` ones.
    let (mut done, mut held) = (0, 0);
    while done < bytes {
        let n = (bytes - done - held).min(size);
        let at = offset + (done + held) as u64;
        let (read, handled) = rayon::join(|| file.read_exact_at(piece(next, n), at), || if held > 0 { each(done, piece(this, held)) } else { Ok(()) });
        handled?;
        read?;
        done += held;
        std::mem::swap(this, next);
        held = n;
    }
    Ok(())
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
        let t = self.take(name)?;
        if t.shape != shape {
            bail!("tensor {name} in {} has shape {:?}, but config.json implies {shape:?}", self.where_(), t.shape);
        }
        let width = t.rows().1;
        let mut out = fresh(t.shape.iter().product());
        self.weights.reread(name, &t, |row, bytes| t.dtype.convert(bytes, &mut out[row * width..]))?;
        Ok(out)
    }

    /// Where tensor `name` is, taken out.
    fn take(&mut self, name: &str) -> Result<Stored> {
        let place = self.where_();
        self.weights.tensors.remove(name).with_context(|| format!("{place} has no tensor {name} (nor transformer.{name})"))
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
                    let t = self.take(name)?;
                    let rows = t.shape.first().copied().unwrap_or(0);
                    let expected: Vec<usize> = if D == 2 { vec![rows, width] } else { vec![rows] };
                    if t.shape != expected || col + rows > total {
                        bail!("tensor {name} in {file} has shape {:?}, which does not fit the {shape:?} that config.json implies for {}", t.shape, names.join(" | "));
                    }
                    self.weights.reread(name, &t, |first, bytes| t.dtype.scatter(bytes, width, &mut out, total, |r| col + first + r))?;
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
                let t = self.take(&name)?;
                let expected: Vec<usize> = if D == 2 { vec![total, width] } else { vec![total] };
                if t.shape != expected || total % (3 * self.heads) != 0 {
                    bail!("tensor {name} in {file} has shape {:?}, but config.json implies {expected:?} of {} heads' q, k and v", t.shape, self.heads);
                }
                let (h, dh) = (self.heads, total / (3 * self.heads));
                let mut out = fresh(width * total);
                // Row r = head·3·dh + part·dh + j is column part·h·dh + head·dh + j.
                let col = |r: usize| (r % (3 * dh)) / dh * h * dh + r / (3 * dh) * dh + r % dh;
                self.weights.reread(&name, &t, |first, bytes| t.dtype.scatter(bytes, width, &mut out, total, |r| col(first + r)))?;
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

/// `n` zeroed values, in memory the kernel backs with 2 MiB pages where it can: a model's values
/// are written once into fresh memory, and touching fresh memory is most of a load
/// (docs/performance.md); in 2 MiB pages that is one fault per 2 MiB instead of 512.
fn fresh<T: bytemuck::Zeroable + Copy>(n: usize) -> Vec<T> {
    let v: Vec<T> = bytemuck::zeroed_vec(n);
    #[cfg(target_os = "linux")]
    if let bytes @ HUGE_PAGE.. = n * std::mem::size_of::<T>() {
        // The whole pages inside the allocation (not yet touched: zeroed by the kernel on first
        // write); advice only, so an error (no transparent huge pages) changes nothing.
        let start = (v.as_ptr() as usize).next_multiple_of(4096);
        let end = (v.as_ptr() as usize + bytes) / 4096 * 4096;
        // SAFETY: madvise only advises on pages of this live allocation; it moves no data.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    v
}

#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

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

#[cfg(test)]
mod tests {
    use super::Dtype;

    /// The tiled transposition against the plain loop it replaces: a width and a row count that
    /// are no multiples of the band and the tile, and GPT-NeoX's per-head column map (not
    /// contiguous), in every dtype.
    #[test]
    fn scatter_equals_the_plain_transposition() {
        let (width, rows, heads) = (13, 3 * 2 * 23, 2);
        let dh = rows / (3 * heads);
        let per_head = |r: usize| (r % (3 * dh)) / dh * heads * dh + r / (3 * dh) * dh + r % dh;
        let values: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.37).sin()).collect();
        let encoded: [(Dtype, Vec<u8>); 3] = [
            (Dtype::F32, bytemuck::cast_slice(&values).to_vec()),
            (Dtype::F16, values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect()),
            (Dtype::Bf16, values.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect()),
        ];
        for (dtype, bytes) in encoded {
            let mut stored = vec![0f32; rows * width];
            dtype.convert(&bytes, &mut stored);
            for (name, col) in [("contiguous", &(|r: usize| r) as &(dyn Fn(usize) -> usize + Sync)), ("per head", &per_head)] {
                let mut want = vec![f32::NAN; width * rows];
                (0..rows).for_each(|r| (0..width).for_each(|i| want[i * rows + col(r)] = stored[r * width + i]));
                let mut got = vec![f32::NAN; width * rows];
                // In two pieces of rows, as `Weights::reread` hands them over.
                let split = 40 * width * dtype.size();
                dtype.scatter(&bytes[..split], width, &mut got, rows, |r| col(r));
                dtype.scatter(&bytes[split..], width, &mut got, rows, |r| col(40 + r));
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
            }
        }
    }
}
