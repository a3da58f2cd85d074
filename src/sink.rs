//! Results on disk: `manifest.json` and one f32 .npy per array, streamed as units of work finish.
//!
//! Arrays are created up front as `<name>.npy.partial` (NaN-filled, so unfinished cells read as
//! missing) and each finished unit's values are written in place; `progress.json` records the
//! finished units only after their data is synced, so a run killed at any moment (kill -9
//! included) resumes from its last finished unit. Complete arrays are renamed to `<name>.npy`.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
/// Present while a run is unfinished.
pub const PROGRESS: &str = "progress.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ArraySpec {
    pub fn file(&self) -> String {
        format!("{}.npy", self.name)
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

struct OpenArray {
    spec: ArraySpec,
    file: File,
    data_offset: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Progress {
    /// Fingerprint of the run the partial files belong to: a hash of its manifest.
    manifest: String,
    done: BTreeSet<usize>,
}

/// FNV-1a of the manifest's JSON: small enough to rewrite after every unit.
fn fingerprint(manifest: &serde_json::Value) -> String {
    let hash = manifest.to_string().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

pub struct Sink {
    dir: PathBuf,
    arrays: Vec<OpenArray>,
    progress: Progress,
}

/// Writes `bytes` to `path` through a temporary file and a rename: never a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// `dir/manifest.json`, keys sorted (through `serde_json::Value`) so equal manifests are equal files.
pub fn write_manifest(dir: &Path, manifest: &impl Serialize) -> Result<()> {
    write_atomic(&dir.join(MANIFEST), &serde_json::to_vec_pretty(&serde_json::to_value(manifest)?)?)
}

fn partial(dir: &Path, spec: &ArraySpec) -> PathBuf {
    dir.join(format!("{}.partial", spec.file()))
}

impl Sink {
    /// Opens `dir` for a run described by `manifest` (any serialisable description; equal
    /// manifests mean the same run). With `resume`, partial arrays of an interrupted run with the
    /// same manifest are continued; otherwise `dir` must not hold a run unless `overwrite`.
    /// None: `resume` found the same run already complete.
    pub fn create(dir: &Path, manifest: &impl Serialize, arrays: Vec<ArraySpec>, resume: bool, overwrite: bool) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let manifest = serde_json::to_value(manifest)?;
        let progress_path = dir.join(PROGRESS);
        let finished = dir.join(MANIFEST).exists() && !progress_path.exists();
        if resume && finished {
            let existing: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(MANIFEST))?)?;
            if existing != manifest {
                bail!("{} holds a different, finished run: choose another --out, or --overwrite it", dir.display());
            }
            return Ok(None);
        }
        if resume && progress_path.exists() {
            let progress: Progress = serde_json::from_slice(&std::fs::read(&progress_path)?)
                .with_context(|| format!("{} is damaged; rerun without --resume", progress_path.display()))?;
            if progress.manifest != fingerprint(&manifest) {
                bail!("{} holds a different run (model, pairs, sites or settings changed): rerun without --resume, or with the same inputs", dir.display());
            }
            let arrays = arrays.into_iter().map(|spec| Self::open_partial(dir, spec)).collect::<Result<_>>()?;
            return Ok(Some(Self { dir: dir.to_path_buf(), arrays, progress }));
        }
        if dir.join(MANIFEST).exists() && !resume && !overwrite {
            bail!("{} already holds a run: pass --resume to continue it, --overwrite to replace it, or choose another --out", dir.display());
        }
        write_manifest(dir, &manifest)?;
        let arrays = arrays.into_iter().map(|spec| Self::create_partial(dir, spec)).collect::<Result<_>>()?;
        let sink = Self { dir: dir.to_path_buf(), arrays, progress: Progress { manifest: fingerprint(&manifest), done: BTreeSet::new() } };
        sink.save_progress()?;
        Ok(Some(sink))
    }

    fn create_partial(dir: &Path, spec: ArraySpec) -> Result<OpenArray> {
        let path = partial(dir, &spec);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        encode_npy(std::io::BufWriter::new(&mut file), &spec.shape, std::iter::repeat_n(f32::NAN, spec.len()))?;
        let data_offset = file.metadata()?.len() - 4 * spec.len() as u64;
        Ok(OpenArray { spec, file, data_offset })
    }

    fn open_partial(dir: &Path, spec: ArraySpec) -> Result<OpenArray> {
        let path = partial(dir, &spec);
        let file = OpenOptions::new().read(true).write(true).open(&path)
            .with_context(|| format!("{} is missing; rerun without --resume", path.display()))?;
        let header = npyz::NpyFile::new(std::io::BufReader::new(&file))?;
        let shape: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
        if shape != spec.shape {
            bail!("{} has shape {:?}, expected {:?}; rerun without --resume", path.display(), shape, spec.shape);
        }
        let data_offset = file.metadata()?.len() - 4 * spec.len() as u64;
        Ok(OpenArray { spec, file, data_offset })
    }

    pub fn is_done(&self, unit: usize) -> bool {
        self.progress.done.contains(&unit)
    }

    /// Writes `values` into array `name` from flat element `offset` on.
    pub fn write(&mut self, name: &str, offset: usize, values: &[f32]) -> Result<()> {
        let a = self.arrays.iter_mut().find(|a| a.spec.name == name).with_context(|| format!("no array {name}"))?;
        if offset + values.len() > a.spec.len() {
            bail!("writing {} values at {offset} overruns {} of {} values", values.len(), a.spec.name, a.spec.len());
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        a.file.write_all_at(&bytes, a.data_offset + 4 * offset as u64)?;
        Ok(())
    }

    /// Marks `unit` finished once everything written so far is on disk.
    pub fn finish_unit(&mut self, unit: usize) -> Result<()> {
        for a in &self.arrays {
            a.file.sync_data()?;
        }
        self.progress.done.insert(unit);
        self.save_progress()
    }

    fn save_progress(&self) -> Result<()> {
        write_atomic(&self.dir.join(PROGRESS), &serde_json::to_vec(&self.progress)?)
    }

    /// Renames the complete arrays to their final names.
    pub fn finish(self) -> Result<()> {
        for a in &self.arrays {
            a.file.sync_all()?;
            std::fs::rename(partial(&self.dir, &a.spec), self.dir.join(a.spec.file()))?;
        }
        std::fs::remove_file(self.dir.join(PROGRESS))?;
        Ok(())
    }
}

/// An f32 array from a .npy file, with its shape.
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).with_context(|| format!("{} is not a .npy file", path.display()))?;
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let data = npy.into_vec::<f32>().with_context(|| format!("{} is not an f32 array", path.display()))?;
    Ok((data, shape))
}

/// Writes a complete array (write-then-rename).
pub fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let mut bytes = Vec::new();
    encode_npy(&mut bytes, shape, data.iter().copied())?;
    write_atomic(path, &bytes)
}

fn encode_npy<T: npyz::AutoSerialize>(out: impl Write, shape: &[usize], values: impl IntoIterator<Item = T>) -> Result<()> {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(&shape).writer(out).begin_nd()?;
    w.extend(values)?;
    w.finish()?;
    Ok(())
}
