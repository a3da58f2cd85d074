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

pub use manifest::{fingerprint, ArraySpec, FailedCell, Manifest, MeansEntry, PairEntry, ShardInfo, SiteEntry, TokenRef, Verification, MANIFEST, PROGRESS};
pub use merge::merge;
pub use npy::read_f32;
pub use store::{begin, open_finished, read_finished, run_in, update_finished, Array, Begin, Finished, Mode, Writer};

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
    // Created new: a link planted under the temporary name is removed, never written through.
    remove_if_present(&tmp)?;
    let written = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all())).and_then(|_| std::fs::rename(&tmp, path));
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

/// Opens a file of a results directory, for reading (and writing with `write`), refusing a
/// symbolic link or anything but a regular file: a directory that came from elsewhere must not
/// make patchbay read or write another run's files, or any other, through its names.
pub fn open_own(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO planted under an array's name is refused below instead of blocking the open.
    let file = std::fs::OpenOptions::new().read(true).write(write).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other(format!("{} is a symbolic link: the files of a results directory must be its own", path.display()))
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

/// The whole of a results directory's file (`open_own`).
pub fn read_own(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_own(path, false)?.read_to_end(&mut bytes)?;
    Ok(bytes)
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
        let kind = crate::model::SiteKind::named(&e.kind).with_context(|| format!("{}: ablation means of an unknown site {:?}", dir.join(MANIFEST).display(), e.kind))?;
        let path = dir.join(if unfinished { format!("{}.partial", e.file) } else { e.file.clone() });
        let (values, shape) = npy::read_own_f32(&path)?;
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
