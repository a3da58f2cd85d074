//! Writing a results directory as one transaction, and opening a finished one.
//!
//! A run first stages its manifest (`manifest.json.partial`) and then writes `progress.json`, the
//! journal: from that moment the directory is an unfinished run that `--resume` continues, and
//! nothing of a run it replaces is visible any more. The journal moves through three phases:
//! - `preparing`: the replaced run's files (listed in the journal) are removed, then every array
//!   is created as `<file>.partial` (NaN-filled; lengths written);
//! - `running`: each finished unit's values are synced before the unit is added to `done`;
//! - `committing`: the partial arrays are renamed to their final names, the staged manifest to
//!   `manifest.json`, and the journal is removed.
//!
//! Every step of a phase can be repeated, so a run killed anywhere is finished by `--resume` with
//! the same inputs, byte-identical to an uninterrupted run. `manifest.json` without
//! `progress.json` is a finished run, the only state `analyze`, `merge` and `verify` read.
use super::manifest::{is_own_file, ArraySpec, Manifest, MANIFEST, PARTIAL, PROGRESS, STAGED_MANIFEST};
use super::lock::{self, Guard};
use super::npy::{self, ArrayFile, Dtype};
use super::write_atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn partial(file: &str) -> String {
    format!("{file}{PARTIAL}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Preparing,
    Running,
    Committing,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// `Manifest::identity` of the run being written.
    identity: String,
    phase: Phase,
    units: usize,
    done: BTreeSet<usize>,
    /// Files of the run being replaced, still to remove.
    remove: Vec<String>,
}

/// What a directory holds.
enum State {
    Empty,
    Finished(Manifest),
    Unfinished(Journal),
    /// Unreadable journal or manifest, and why.
    Damaged(String),
}

fn state(dir: &Path) -> State {
    let path = dir.join(PROGRESS);
    match super::read_own(&path) {
        Ok(bytes) => match serde_json::from_slice::<Journal>(&bytes) {
            // A journal lists files to remove: only ones patchbay itself names.
            Ok(journal) => match journal.remove.iter().find(|f| !is_own_file(f)) {
                Some(f) => State::Damaged(format!("{} lists {f:?} to remove, which is not a file patchbay writes", path.display())),
                None => State::Unfinished(journal),
            },
            Err(e) => State::Damaged(format!("{} is damaged ({e})", path.display())),
        },
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => State::Damaged(format!("{} cannot be read ({e})", path.display())),
        Err(_) if dir.join(MANIFEST).exists() => match Manifest::read(dir) {
            Ok(m) => State::Finished(m),
            Err(e) => State::Damaged(format!("{e:#}")),
        },
        Err(_) => State::Empty,
    }
}

/// How `begin` treats a directory that already holds a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mode {
    /// Continue the same run (same identity), or accept it as done when finished.
    pub resume: bool,
    /// Replace any other run (with `resume`: only a different one).
    pub overwrite: bool,
}

pub enum Begin {
    Write(Writer),
    /// The same run is finished (or was committing and is now).
    Finished,
}

/// The arrays a writer fills, by role.
#[derive(Clone, Copy, Debug)]
pub enum Array {
    /// The manifest's n-th site.
    Site(usize),
    BaselineClean,
    BaselineCorrupted,
    /// The manifest's n-th ablation means.
    Means(usize),
}

/// Starts, continues or replaces the run `manifest` (of `units` units of work) in `dir`.
pub fn begin(dir: &Path, manifest: &Manifest, units: usize, mode: Mode) -> Result<Begin> {
    let guard = lock::exclusive(dir)?;
    super::outputs::refuse_other_results(dir)?;
    // Held exclusively, the directory's temporary files are of processes that died.
    remove_stale_temporaries(dir)?;
    let id = manifest.identity();
    let here = dir.display();
    match state(dir) {
        State::Empty => {
            if mode.resume {
                eprintln!("{here}: no run to resume there, starting it");
            }
            start(dir, manifest, units, Vec::new(), guard)
        }
        State::Finished(old) if mode.resume && old.identity() == id => {
            check_arrays(dir, &old).with_context(|| format!("{here} holds this run, finished but damaged; --overwrite runs it again"))?;
            Ok(Begin::Finished)
        }
        State::Finished(_) if mode.overwrite => start(dir, manifest, units, own_files_in(dir), guard),
        State::Finished(old) => {
            let what = if old.identity() == id { "this very run (--resume accepts it as done)".to_string() } else { format!("a different run (its {} differ)", old.differences(manifest)) };
            bail!("{here} already holds a finished run, {what} of {} on {} pair(s): --overwrite replaces it, or choose another --out", old.model, old.pairs.len())
        }
        State::Unfinished(j) if mode.resume && j.identity == id => resume(dir, manifest, j, guard),
        State::Unfinished(_) if mode.overwrite => start(dir, manifest, units, own_files_in(dir), guard),
        State::Unfinished(_) if mode.resume => {
            let differ = read_staged(dir).map_or_else(|_| "model, pairs, sites or settings".to_string(), |staged| staged.differences(manifest));
            bail!("{here} holds an unfinished run of other inputs (its {differ} differ): rerun with its inputs, or --overwrite to replace it")
        }
        State::Unfinished(j) => bail!("{here} holds an unfinished run ({} of {} units done): --resume continues it, --overwrite replaces it", j.done.len(), j.units),
        State::Damaged(_) if mode.overwrite => start(dir, manifest, units, own_files_in(dir), guard),
        State::Damaged(why) => bail!("{why}: the run in {here} cannot be continued; --overwrite starts it again"),
    }
}

/// Temporary files of `write_atomic` left by a killed process: nothing refers to them.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(super::TEMP_SUFFIX)) {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// What `--overwrite` removes: every file in `dir` that some patchbay command writes there (the
/// replaced run's arrays, staged files, analysis and everything derived from it), found by
/// name, never by what a manifest or journal says. The transaction's own files are handled by
/// `start` and `prepare`.
fn own_files_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_own_file(n) && ![MANIFEST, STAGED_MANIFEST, PROGRESS].contains(&n.as_str()))
        .collect();
    out.sort();
    out
}

fn read_staged(dir: &Path) -> Result<Manifest> {
    let path = dir.join(STAGED_MANIFEST);
    let bytes = super::read_own(&path).with_context(|| format!("reading {}", path.display()))?;
    Manifest::parse(&bytes, &path).with_context(|| format!("{} is damaged", path.display()))
}

fn start(dir: &Path, manifest: &Manifest, units: usize, remove: Vec<String>, guard: Guard) -> Result<Begin> {
    write_atomic(&dir.join(STAGED_MANIFEST), &manifest_bytes(manifest)?)?;
    let journal = Journal { identity: manifest.identity(), phase: Phase::Preparing, units, done: BTreeSet::new(), remove };
    save(dir, &journal)?;
    prepare(dir, manifest, journal, guard)
}

/// `manifest.json`'s bytes: keys sorted (through `serde_json::Value`), so equal manifests are
/// equal files.
pub(super) fn manifest_bytes(m: &Manifest) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(&serde_json::to_value(m)?)?)
}

fn save(dir: &Path, journal: &Journal) -> Result<()> {
    write_atomic(&dir.join(PROGRESS), &serde_json::to_vec(journal)?)
}

/// Removes what a replaced run left (its manifest last seen here is never this run's: this
/// run's is staged until it commits), then creates this run's partial arrays.
fn prepare(dir: &Path, manifest: &Manifest, mut journal: Journal, guard: Guard) -> Result<Begin> {
    for name in journal.remove.iter().map(String::as_str).chain([MANIFEST]) {
        super::remove_if_present(&dir.join(name))?;
    }
    let mut arrays = Vec::new();
    for spec in manifest.arrays() {
        let file = ArrayFile::create(&dir.join(partial(&spec.file)), spec.dtype, &spec.shape)?;
        if spec.dtype == Dtype::I32 {
            let lengths: Vec<[u8; 4]> = manifest.pairs.iter().map(|p| (p.length as i32).to_le_bytes()).collect();
            file.write_at(0, &lengths)?;
        }
        file.sync()?;
        arrays.push((spec, file));
    }
    sync_dir(dir)?;
    journal.phase = Phase::Running;
    journal.remove.clear();
    save(dir, &journal)?;
    Ok(Begin::Write(Writer { dir: dir.to_path_buf(), manifest: manifest.clone(), arrays, journal, _lock: guard }))
}

fn resume(dir: &Path, manifest: &Manifest, journal: Journal, guard: Guard) -> Result<Begin> {
    let staged = if journal.phase == Phase::Committing && !dir.join(STAGED_MANIFEST).exists() { Manifest::read(dir) } else { read_staged(dir) };
    let damaged = |what: String| format!("{what}: the run in {} cannot be continued; --overwrite starts it again", dir.display());
    match staged {
        Ok(m) if m.identity() == journal.identity => {}
        Ok(_) => bail!(damaged(format!("the staged manifest in {} is not the journal's run", dir.display()))),
        Err(e) => bail!(damaged(format!("{e:#}"))),
    }
    match journal.phase {
        Phase::Preparing => prepare(dir, manifest, journal, guard),
        Phase::Running => {
            let arrays = manifest
                .arrays()
                .into_iter()
                .map(|spec| {
                    let file = ArrayFile::open(&dir.join(partial(&spec.file)), spec.dtype, &spec.shape).map_err(|e| anyhow::anyhow!(damaged(format!("{e:#}"))))?;
                    Ok((spec, file))
                })
                .collect::<Result<_>>()?;
            Ok(Begin::Write(Writer { dir: dir.to_path_buf(), manifest: manifest.clone(), arrays, journal, _lock: guard }))
        }
        Phase::Committing => {
            commit(dir, manifest)?;
            Ok(Begin::Finished)
        }
    }
}

/// A run being written: values go into the partial arrays, unit by unit.
pub struct Writer {
    dir: PathBuf,
    manifest: Manifest,
    arrays: Vec<(ArraySpec, ArrayFile)>,
    journal: Journal,
    /// The directory's exclusive lock, until the run is committed or abandoned.
    _lock: Guard,
}

impl Writer {
    pub fn is_done(&self, unit: usize) -> bool {
        self.journal.done.contains(&unit)
    }

    /// Writes `values` into `array` from flat element `offset` on.
    pub fn write(&mut self, array: Array, offset: usize, values: &[f32]) -> Result<()> {
        let sites = self.manifest.sites.len();
        let index = match array {
            Array::Site(i) if i < sites => i,
            Array::Site(i) => bail!("the run has {sites} sites, not {}", i + 1),
            Array::BaselineClean => sites,
            Array::BaselineCorrupted => sites + 1,
            // After the lengths.
            Array::Means(i) if i < self.manifest.ablation_means.len() => sites + 3 + i,
            Array::Means(i) => bail!("the run has {} ablation means, not {}", self.manifest.ablation_means.len(), i + 1),
        };
        let (spec, file) = &self.arrays[index];
        let bytes: Vec<[u8; 4]> = values.iter().map(|v| v.to_le_bytes()).collect();
        file.write_at(offset, &bytes).with_context(|| format!("writing {}", partial(&spec.file)))
    }

    /// Marks `unit` finished once everything written so far is on disk.
    pub fn finish_unit(&mut self, unit: usize) -> Result<()> {
        for (_, file) in &self.arrays {
            file.sync()?;
        }
        self.journal.done.insert(unit);
        save(&self.dir, &self.journal)
    }

    /// Makes the run visible: arrays and manifest under their final names, journal removed.
    pub fn commit(mut self) -> Result<()> {
        let missing = (0..self.journal.units).filter(|u| !self.journal.done.contains(u)).count();
        if missing > 0 {
            bail!("{} units of the run in {} are not finished", missing, self.dir.display());
        }
        for (_, file) in &self.arrays {
            file.sync()?;
        }
        self.journal.phase = Phase::Committing;
        save(&self.dir, &self.journal)?;
        drop(self.arrays);
        commit(&self.dir, &self.manifest)
    }
}

/// The committing phase, from wherever it stopped.
fn commit(dir: &Path, manifest: &Manifest) -> Result<()> {
    let damaged = |e: anyhow::Error| anyhow::anyhow!("{e:#}: the run in {} cannot be finished; --overwrite starts it again", dir.display());
    for spec in manifest.arrays() {
        let (from, to) = (dir.join(partial(&spec.file)), dir.join(&spec.file));
        if from.exists() {
            npy::validate(&from, spec.dtype, &spec.shape).map_err(damaged)?;
            std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        } else {
            npy::validate(&to, spec.dtype, &spec.shape).map_err(damaged)?;
        }
    }
    if dir.join(STAGED_MANIFEST).exists() {
        std::fs::rename(dir.join(STAGED_MANIFEST), dir.join(MANIFEST)).with_context(|| format!("renaming {STAGED_MANIFEST} in {}", dir.display()))?;
    }
    sync_dir(dir)?;
    std::fs::remove_file(dir.join(PROGRESS)).with_context(|| format!("removing {}", dir.join(PROGRESS).display()))?;
    sync_dir(dir)
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// The manifest of the run in `dir`, finished or not, if it can be read.
pub fn run_in(dir: &Path) -> Option<Manifest> {
    match state(dir) {
        State::Finished(m) => Some(m),
        State::Unfinished(_) => read_staged(dir).or_else(|_| Manifest::read(dir)).ok(),
        _ => None,
    }
}

/// The manifest of the finished run in `dir`, after checking every array it lists is there, whole
/// and of its shape.
pub fn open_finished(dir: &Path) -> Result<Manifest> {
    let here = dir.display();
    match state(dir) {
        State::Empty => bail!("{here} is not a patchbay results directory (no {MANIFEST})"),
        State::Damaged(why) => bail!("{why}"),
        State::Unfinished(j) => bail!(
            "{here} holds an unfinished run ({} of {} units done): finish it by running the same `patchbay run` with --resume",
            j.done.len(),
            j.units
        ),
        State::Finished(m) => {
            check_arrays(dir, &m)?;
            Ok(m)
        }
    }
}

/// A finished run as read: its manifest, every site's array and the baselines (by name: the
/// site's, `baseline_clean`, `baseline_corrupted`), and the pairs' lengths.
pub struct Finished {
    pub manifest: Manifest,
    pub arrays: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub lengths: Vec<i32>,
}

/// The finished run in `dir`, read whole under its shared lock (a writer in another process
/// fails at once rather than replacing arrays between the check and the reads), each file
/// through the manifest and never through a link.
pub fn read_finished(dir: &Path) -> Result<Finished> {
    let _lock = super::lock::shared(dir)?;
    let manifest = open_finished(dir)?;
    let named = manifest.sites.iter().map(|s| (s.name.clone(), &s.file));
    let baselines = [("baseline_clean".to_string(), &manifest.baseline_clean), ("baseline_corrupted".to_string(), &manifest.baseline_corrupted)];
    let arrays = named
        .chain(baselines)
        .map(|(name, file)| npy::read_own_f32(&dir.join(file)).map(|(values, shape)| (name, shape, values)))
        .collect::<Result<Vec<_>>>()?;
    let (lengths, _) = npy::read_own_i32(&dir.join(&manifest.lengths))?;
    Ok(Finished { manifest, arrays, lengths })
}

fn check_arrays(dir: &Path, m: &Manifest) -> Result<()> {
    for site in &m.sites {
        if site.shape.first() != Some(&m.pairs.len()) {
            bail!("{}: site {} has shape {:?} for {} pairs", dir.join(MANIFEST).display(), site.name, site.shape, m.pairs.len());
        }
    }
    m.arrays().iter().try_for_each(|a| npy::validate(&dir.join(&a.file), a.dtype, &a.shape))
}

/// Rewrites the manifest of the finished run in `dir` with `m`, which must be the same run (a
/// verification record added).
pub fn update_finished(dir: &Path, m: &Manifest) -> Result<()> {
    let old = open_finished(dir)?;
    if old.identity() != m.identity() {
        bail!("{} now holds a different run", dir.display());
    }
    write_atomic(&dir.join(MANIFEST), &manifest_bytes(m)?)
}
