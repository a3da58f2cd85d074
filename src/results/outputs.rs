//! The outputs of the commands that are not patching runs (patterns, perplexity, candidates, a
//! steering vector, a pairs file): a directory of files written whole, or one file. Each file is
//! written then renamed; a directory's listing (the file whose presence says it holds a result) is
//! removed first and written last, so no listing ever sits beside another result's arrays.
use super::lock::{self, Guard};
use super::manifest::{MANIFEST, PROGRESS, STAGED_MANIFEST};
use super::{remove_if_present, write_atomic};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Creates and locks `dir` (exclusively, until the guard is dropped), refusing it when it holds
/// any of `files` and `overwrite` is off. Jobs call it before computing, so a refusal costs
/// nothing, and keep the guard until their files are written.
pub fn prepare_dir(dir: &Path, files: &[&str], overwrite: bool) -> Result<Guard> {
    let guard = lock::exclusive(dir)?;
    // One kind of result a directory: these files would sit among a run's (whose lengths.npy
    // the patterns' would replace), and its --overwrite would remove them.
    if let Some(f) = [MANIFEST, STAGED_MANIFEST, PROGRESS].iter().find(|f| dir.join(f).exists()) {
        bail!("{} holds a patchbay run ({f}): choose another --out (this command's files go in a directory of their own)", dir.display());
    }
    if !overwrite {
        if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            bail!("{} already holds {f}: pass --overwrite to replace it, or choose another --out", dir.display());
        }
    }
    Ok(guard)
}

/// Writes `files` (name, contents) and then `listing` into `dir`, after removing the listing and
/// every name of `known` (all the files this kind of result can hold) that this one does not
/// write: what is left is one whole result.
pub fn write_dir(dir: &Path, listing: (&str, Vec<u8>), files: Vec<(String, Vec<u8>)>, known: &[&str], overwrite: bool) -> Result<()> {
    let mut names: Vec<&str> = known.to_vec();
    names.push(listing.0);
    let _lock = prepare_dir(dir, &names, overwrite)?;
    write_set(dir, listing, files, known)
}

/// `write_dir`'s writing alone, for a caller that holds `dir`'s lock: the listing removed first
/// and written last, so a set cut short has no listing.
pub fn write_set(dir: &Path, listing: (&str, Vec<u8>), files: Vec<(String, Vec<u8>)>, known: &[&str]) -> Result<()> {
    remove_if_present(&dir.join(listing.0))?;
    for stale in known.iter().filter(|k| !files.iter().any(|(f, _)| f == *k)) {
        remove_if_present(&dir.join(stale))?;
    }
    for (name, bytes) in &files {
        write_atomic(&dir.join(name), bytes)?;
    }
    write_atomic(&dir.join(listing.0), &listing.1)
}

/// Refuses `path` when it exists and `overwrite` is off; creates its folder.
pub fn prepare_file(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        bail!("{} exists: pass --overwrite to replace it, or choose another --out", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// One output file, written whole.
pub fn write_file(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    prepare_file(path, overwrite)?;
    write_atomic(path, bytes)
}

/// What `patterns` writes into its output directory; the last is its listing (written last).
pub const PATTERN_FILES: [&str; 6] = ["patterns.npy", "lengths.npy", "patterns.png", "patterns.svg", "patterns.html", "patterns.json"];
/// What `perplexity` writes into `out`; the last is its listing.
pub const PERPLEXITY_FILES: [&str; 3] = ["perplexity.npy", "token_perplexity.npy", "perplexity.json"];
/// What `candidates` writes into `out`; the last is its listing (a single prompt writes no
/// Jaccard matrix).
pub const CANDIDATE_FILES: [&str; 4] = ["jaccard.npy", "jaccard.png", "jaccard.svg", "candidates.json"];

/// The listing (the file whose presence says a directory holds a result) of each command that
/// writes a directory of its own, and the command: a run is not written among them.
pub const LISTINGS: [(&str, &str); 4] = [(PATTERN_FILES[5], "patterns"), (PERPLEXITY_FILES[2], "perplexity"), (CANDIDATE_FILES[3], "candidates"), (super::attribution::LISTING, "attribute")];

/// Refuses `dir` for a run when it holds another command's result.
pub fn refuse_other_results(dir: &Path) -> Result<()> {
    match LISTINGS.iter().find(|(listing, _)| dir.join(listing).exists()) {
        Some((listing, command)) => bail!("{} holds the result of `patchbay {command}` ({listing}): a run goes in a directory of its own; choose another --out", dir.display()),
        None => Ok(()),
    }
}
