//! The results directory, the one place that knows its files: `manifest.json` (what the run is
//! and how to read it), one .npy per array, `analyze`'s outputs; the transaction that writes a run
//! (`store`: staged files, a journal, commit, resume, overwrite); merging shards (`merge`); and the
//! other commands' outputs (`outputs`).
pub mod attribution;
pub mod lock;
pub mod manifest;
mod merge;
pub mod npy;
pub mod outputs;
mod store;

pub use manifest::{fingerprint, ArraySpec, FailedCell, Manifest, MeansEntry, PairEntry, ShardInfo, SiteEntry, TokenRef, Verification, MANIFEST};
pub use merge::merge;
pub use npy::{read_f32, read_i32};
pub use store::{begin, open_finished, run_in, update_finished, Array, Begin, Mode, Writer, PROGRESS};

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// The ending of `write_atomic`'s temporary files.
const TEMP_SUFFIX: &str = ".patchbay-tmp";

/// Writes `bytes` to `path` through a temporary file beside it (`.NAME.PID.patchbay-tmp`, a name no
/// other program or process uses) and a rename: never a half-written file, never another file clobbered.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.{}{TEMP_SUFFIX}", name.to_string_lossy(), std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all())).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk or a failed rename leaves nothing behind: the temporary file goes too.
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => store::sync_dir(dir),
        None => store::sync_dir(Path::new(".")),
    }
}

/// Removes a file; one that is not there is no error.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

/// Writes a complete f32 or i32 array (write-then-rename).
pub fn write_npy<T: npy::Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    write_atomic(path, &npy::encode(shape, data))
}

/// The ablation means `m` lists (None: its ablation has none), read from `dir` and checked against
/// their hashes; with `unfinished`, from the staged files of a run being written.
pub fn read_means(dir: &Path, m: &Manifest, unfinished: bool) -> Result<Option<crate::engine::Means>> {
    if !m.ablation.needs_means() {
        return Ok(None);
    }
    let mut means = crate::engine::Means { positional: m.ablation == crate::engine::Ablation::MeanPositional, kinds: Default::default() };
    for e in &m.ablation_means {
        let kind = crate::model::SiteKind::parse(&e.kind).with_context(|| format!("{}: ablation means", dir.join(MANIFEST).display()))?;
        let path = dir.join(if unfinished { format!("{}.partial", e.file) } else { e.file.clone() });
        let (values, shape) = read_f32(&path)?;
        if shape != e.shape || MeansEntry::hash(&values) != e.xxh3 {
            anyhow::bail!("{} does not hold the means the manifest lists (shape {shape:?}, hash {}; listed {:?}, {})", path.display(), MeansEntry::hash(&values), e.shape, e.xxh3);
        }
        means.kinds.insert(kind, (shape, values));
    }
    // Every kind the sites read needs its means: a missing one must not fall back to the clean run.
    for site in &m.sites {
        for kind in crate::engine::PatchSite::parse(&site.name)?.clean_reads() {
            if !means.kinds.contains_key(&kind) {
                anyhow::bail!("{}: the {} ablation lists no means of {} (site {})", dir.join(MANIFEST).display(), m.ablation.name(), kind.name(), site.name);
            }
        }
    }
    Ok(Some(means))
}
