//! Checking a finished run against the simplest path: a few of its patched runs, chosen at random
//! (seeded), recomputed one row per forward pass, without reuse and without kernel fusion (an
//! attribution run: one pair per pass, no-op rows estimated too), and compared with what the run
//! wrote; so are the baselines of their pairs. Every pair's length in lengths.npy and the NaN
//! past it in every array are checked too, and that the derived sets beside the run (analysis,
//! faithfulness, circuit) are of this run. Cheap insurance for every backend, GPU and driver.
use crate::backend::{BackendKind, BackendSpec, DType};
use crate::data::{Rng, TokenizedPair};
use crate::engine::{Method, PatchSite, Replacement, Row};
use super::{Model, ModelOnBackend};
use crate::results::{self, npy, FailedCell, Manifest, Verification};
use super::sweep::SweepModel;
use anyhow::{bail, Result};
use burn::prelude::Backend;
use std::path::{Path, PathBuf};

/// How far a recomputed row may be from the run's value: absolute plus relative to the value.
/// The differences between the batched, reused path and the simplest one are rounding: about
/// 1e-6 in f32 on the fixtures; burn's fusion bug was 0.1 to 1.5.
pub fn tolerance(dtype: DType, value: f32) -> f32 {
    let (abs, rel) = match dtype {
        DType::F32 => (1e-3, 1e-4),
        DType::F16 | DType::Tf32 => (5e-2, 1e-2),
        DType::Bf16 => (1e-1, 2e-2),
    };
    abs + rel * value.abs()
}

/// Where a run is rechecked unless told: on its own backend and dtype, except CUDA runs, rechecked
/// on the CPU in f32 — cubecl's CUDA kernels were wrong on one fixture shape (docs/performance.md, "Which paths
/// are verified"), and a recheck on the same kernels would agree with them.
pub fn checker(run: &BackendSpec) -> BackendSpec {
    match run.kind {
        BackendKind::Cuda => BackendSpec::default(),
        _ => run.clone(),
    }
}

/// One checked row: where it is, and the run's value.
struct Sample {
    site: usize,
    pair: usize,
    row: Row,
    cell: usize,
}

/// Rechecks `rows` random rows of the finished run in `dir` on `backend` (default: the run's own
/// backend and dtype), without fusion, and records the result in its manifest. A failed check is
/// recorded too, then returned as an error naming the rows.
///
/// `loaded` is used when it is the run's model on that backend (else the model is loaded).
pub fn verify(dir: &Path, rows: usize, backend: Option<BackendSpec>, loaded: Option<&Model>) -> Result<Verification> {
    if rows == 0 {
        bail!("--rows must be at least 1: a check of no rows shows nothing");
    }
    // Exclusive: a check writes its record into the manifest, and two checks at once would each
    // write over the other's (a one-row pass erasing a full check's failure).
    let _lock = if dir.is_dir() { Some(results::lock::exclusive(dir)?) } else { None };
    let mut manifest = results::open_finished(dir)?;
    let spec = BackendSpec { fusion: false, ..backend.unwrap_or_else(|| checker(&manifest.backend)) };
    let mut own = None;
    let model = Model::of_run(dir, &manifest, spec.clone(), loaded, &mut own)?;
    let check = Check { dir: dir.to_path_buf(), manifest: manifest.clone(), rows, spec: spec.clone() };
    let mut v = on_model!(model, |on| -> Verification { check.on(on) }, check: &'a Check = &check)?;
    v.failed.splice(0..0, derived_failures(dir, &manifest)?);
    v.failed.splice(0..0, layout_failures(dir, &manifest)?);
    v.failed.splice(0..0, manifest_failures(&manifest, model)?);
    manifest.verify = Some(v.clone());
    results::update_finished(dir, &manifest)?;
    if !v.failed.is_empty() {
        bail!("verification failed ({} rows rechecked on the simplest path: one row per forward pass, no reuse, no fusion, {:?} {:?}): {}", v.rows, spec.kind, spec.dtype, summary(&v.failed));
    }
    Ok(v)
}

struct Check {
    dir: PathBuf,
    manifest: Manifest,
    rows: usize,
    spec: BackendSpec,
}

impl Check {
    /// The sampled rows recomputed on `on`, one row per pass.
    fn on<B: Backend>(&self, on: ModelOnBackend<'_, B>) -> Result<Verification> {
        let m = &self.manifest;
        // One row per pass without reuse; an attribution run's estimate of one pair alone, its
        // no-op rows estimated too.
        let replacement = Replacement { ablation: m.ablation, means: results::read_means(&self.dir, m, false)?.map(std::sync::Arc::new) };
        let engine = SweepModel::of(&on, m.method, m.ig_steps)?.row_engine(false, false, m.metric_name, 1, m.direction, replacement);
        let baselines = |pair: TokenizedPair| engine.run(&[pair], &[], &m.layout, &mut |_| Ok(())).map(|r| (r[0].clean, r[0].corrupted));
        // An estimate is of a whole site at once (one pass for every edge): computed once per pair
        // and site, not once per sampled row (8 passes of 2.3 s each on a Qwen2.5-0.5B shape).
        let whole: std::cell::RefCell<std::collections::HashMap<(usize, PatchSite), Vec<f32>>> = Default::default();
        let recompute = |pair: TokenizedPair, row: Row| -> Result<f32> {
            if m.method == Method::Exact {
                return engine.one(pair, row, &m.layout);
            }
            let key = (pair.row, row.site);
            if let Some(values) = whole.borrow().get(&key) {
                return Ok(values[row.out]);
            }
            let values = engine.run(&[pair], &[row.site], &m.layout, &mut |_| Ok(()))?.swap_remove(0).sites.swap_remove(0);
            let value = values[row.out];
            whole.borrow_mut().insert(key, values);
            Ok(value)
        };
        self.check(&recompute, &baselines)
    }

    /// The sampled rows' stored values against `recompute(pair, row)`.
    fn check(&self, recompute: &dyn Fn(TokenizedPair, Row) -> Result<f32>, baselines: &dyn Fn(TokenizedPair) -> Result<(f32, f32)>) -> Result<Verification> {
        let m = &self.manifest;
        let sites: Vec<PatchSite> = m.sites.iter().map(|s| PatchSite::parse(&s.name)).collect::<Result<_>>()?;
        let previous: &[FailedCell] = m.verify.as_ref().map_or(&[], |v| &v.failed_cells);
        let mut samples = choose(m, &sites, self.rows);
        // What an earlier check found wrong is recomputed again, whatever this check draws.
        for c in previous.iter().filter(|c| c.site.is_some_and(|s| s < sites.len()) && c.pair < m.pairs.len()) {
            let si = c.site.unwrap_or_default();
            let found = m.layout.rows(sites[si], m.pairs[c.pair].length).into_iter().find(|r| r.out == c.cell);
            if let Some(row) = found.filter(|_| !samples.iter().any(|s| s.site == si && s.pair == c.pair && s.cell == c.cell)) {
                samples.push(Sample { site: si, pair: c.pair, row, cell: c.cell });
            }
        }
        let mut failed = Vec::new();
        let mut failed_cells = Vec::new();
        let mut max_abs_diff = 0f32;
        let mut tol = 0f32;
        // An f32 recheck of a half-precision or TF32 run allows the run's own rounding.
        let dtype = if self.spec.dtype == DType::F32 { m.backend.dtype } else { self.spec.dtype };
        let mut compare = |what: String, at: FailedCell, value: f32, again: f32| {
            let diff = (again - value).abs();
            let allowed = tolerance(dtype, value);
            tol = tol.max(allowed);
            max_abs_diff = if diff.is_nan() { f32::INFINITY } else { max_abs_diff.max(diff) };
            if !(diff <= allowed) {
                failed.push(format!("{what}: {value} written, {again} recomputed"));
                failed_cells.push(at);
            }
        };
        let token_pair = crate::results::PairEntry::tokenized;
        for (si, entry) in m.sites.iter().enumerate() {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.site == si).collect();
            if mine.is_empty() {
                continue;
            }
            let per_pair: usize = entry.shape[1..].iter().product();
            let cells: Vec<usize> = mine.iter().map(|s| s.pair * per_pair + s.cell).collect();
            let stored = npy::read_cells(&self.dir.join(&entry.file), &entry.shape, &cells)?;
            for (s, &value) in mine.iter().zip(&stored) {
                let p = &m.pairs[s.pair];
                let again = recompute(token_pair(p), s.row)?;
                compare(format!("{} (pair {}, row {})", describe(&entry.name, &s.row), s.pair, p.row), FailedCell { site: Some(si), pair: s.pair, cell: s.cell }, value, again);
            }
        }
        // The baselines of every sampled pair.
        let mut pairs: Vec<usize> = samples.iter().map(|s| s.pair).chain(previous.iter().filter(|c| c.site.is_none() && c.pair < m.pairs.len()).map(|c| c.pair)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let stored = |file: &str| npy::read_cells(&self.dir.join(file), &[m.pairs.len()], &pairs);
        let (clean, corrupted) = (stored(&m.baseline_clean)?, stored(&m.baseline_corrupted)?);
        for (i, &p) in pairs.iter().enumerate() {
            let (c, k) = baselines(token_pair(&m.pairs[p]))?;
            compare(format!("baseline_clean[pair {p}]"), FailedCell { site: None, pair: p, cell: 0 }, clean[i], c);
            compare(format!("baseline_corrupted[pair {p}]"), FailedCell { site: None, pair: p, cell: 1 }, corrupted[i], k);
        }
        Ok(Verification { backend: self.spec.clone(), rows: samples.len(), tolerance: tol, max_abs_diff, failed, failed_cells })
    }
}

/// What no forward pass is needed to check: lengths.npy holds every pair's length, and every
/// site's cells past a pair's length are NaN (a value there would be read as a result).
/// A check's findings for one line: the first few, and how many more the manifest records.
pub fn summary(failed: &[String]) -> String {
    const SHOWN: usize = 3;
    let more = match failed.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!("; and {n} more (manifest.json's verify.failed lists all {})", failed.len()),
    };
    failed.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join("; ") + &more
}

/// What the manifest says of the run that the model and the pairs' tokens contradict: the
/// dataset's fingerprint (when the run holds every pair of it), the shard's pairs, the BOS the
/// pairs start with under `prepend_bos`.
fn manifest_failures(m: &Manifest, model: &Model) -> Result<Vec<String>> {
    let mut failed = Vec::new();
    let all = match &m.shard {
        None => true,
        Some(s) => {
            let consistent = s.index < s.count && s.pairs.len() == m.pairs.len() && s.pairs.windows(2).all(|w| w[0] < w[1]) && s.pairs.iter().all(|&p| p < s.pairs_total);
            if !consistent {
                failed.push(format!("shard: {} of {} shards, {} pairs listed of {} for {} pairs held: not a shard's description", s.index, s.count, s.pairs.len(), s.pairs_total, m.pairs.len()));
            }
            s.pairs_total == m.pairs.len()
        }
    };
    let pairs: Vec<TokenizedPair> = m.pairs.iter().map(crate::results::PairEntry::tokenized).collect();
    if all && crate::results::fingerprint(&(&pairs, &m.skipped)) != m.dataset {
        failed.push("dataset: the pairs' tokens, rows and named positions are not the ones the run was made from (their fingerprint differs)".into());
    }
    if m.prepend_bos || m.bos.is_some() {
        let bos = match m.bos {
            Some(id) => id,
            None => model.tokenizer.bos()?,
        };
        if let Some((i, _)) = pairs.iter().enumerate().find(|(_, p)| p.clean.first() != Some(&bos) || p.corrupted.first() != Some(&bos)) {
            failed.push(format!("bos: pair {i}'s prompts do not start with the BOS token {bos}"));
        }
    }
    Ok(failed)
}

fn layout_failures(dir: &Path, m: &Manifest) -> Result<Vec<String>> {
    let mut failed = Vec::new();
    let (lengths, _) = npy::read_own_i32(&dir.join(&m.lengths))?;
    for (p, (&l, pair)) in lengths.iter().zip(&m.pairs).enumerate() {
        if l as usize != pair.length {
            failed.push(format!("{}[pair {p}]: {l} written, the pair is {} tokens", m.lengths, pair.length));
        }
    }
    for entry in &m.sites {
        let site = PatchSite::parse(&entry.name)?;
        let (values, _) = npy::read_own_f32(&dir.join(&entry.file))?;
        let per_pair: usize = entry.shape[1..].iter().product();
        for (p, pair) in m.pairs.iter().enumerate() {
            let mut real = vec![false; per_pair];
            for row in m.layout.rows(site, pair.length) {
                real[row.out] = true;
            }
            let cells = &values[p * per_pair..(p + 1) * per_pair];
            if let Some(cell) = (0..per_pair).find(|&c| !real[c] && !cells[c].is_nan()) {
                failed.push(format!("{}[pair {p}]: cell {cell} lies past the pair's {} tokens but holds {}, not NaN", entry.name, pair.length, cells[cell]));
            }
        }
    }
    Ok(failed)
}

/// What beside the run is not of it: a derived set (analyze's, faithfulness', circuit's) whose
/// listing names another run's identity (a directory put together by hand), or whose files sit
/// without their listing (a set cut short). Both are reported, not removed: they are the user's.
fn derived_failures(dir: &Path, m: &Manifest) -> Result<Vec<String>> {
    use crate::results::manifest::{CIRCUIT_FILES, FAITHFULNESS_FILES, SUMMARY_JSON};
    let analysis = m.analysis_files();
    let (faithfulness, circuit) = (FAITHFULNESS_FILES.split_last().expect("a listing"), CIRCUIT_FILES.split_first().expect("a listing"));
    let sets: [(&str, Vec<&str>, &str); 3] = [
        (SUMMARY_JSON, analysis.iter().map(String::as_str).collect(), "analyze"),
        (faithfulness.0, faithfulness.1.to_vec(), "faithfulness"),
        (circuit.0, circuit.1.to_vec(), "circuit"),
    ];
    let identity = m.identity();
    let mut failed = Vec::new();
    for (listing, files, command) in sets {
        let path = dir.join(listing);
        if path.exists() {
            let bytes = results::read_own(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            // A listing without an identity predates it (or is EAP-IG's own circuit): not judged.
            if let Some(other) = crate::analysis::circuit::run_identity_of(&bytes).filter(|id| *id != identity) {
                failed.push(format!("{listing}: written for another run (run_identity {other}, this run's {identity}): rerun `patchbay {command}` or remove its files"));
            }
        } else if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            failed.push(format!("{f}: a file of `patchbay {command}`'s set without its {listing} (cut short, or left by another run): rerun `patchbay {command}` or remove it"));
        }
    }
    Ok(failed)
}

/// `resid_pre[layer 2, position 5]`, `z_all_pos[layer 1, head 3]`.
fn describe(site: &str, row: &Row) -> String {
    let mut at = vec![format!("layer {}", row.layer)];
    at.extend(row.pos.map(|p| format!("position {p}")));
    at.extend(row.src.map(|p| format!("source position {p}")));
    at.extend(row.head.map(|h| format!("head {h}")));
    format!("{site}[{}]", at.join(", "))
}

/// Up to `n` distinct patched runs of the run, uniformly over all of them (seeded: the same run
/// checks the same rows).
fn choose(m: &Manifest, sites: &[PatchSite], n: usize) -> Vec<Sample> {
    let all: Vec<(usize, usize, usize)> = sites
        .iter()
        .enumerate()
        .flat_map(|(si, &site)| m.pairs.iter().enumerate().map(move |(p, pair)| (si, p, m.layout.run_count(site, pair.length))))
        .collect();
    let total: usize = all.iter().map(|a| a.2).sum();
    let mut rng = Rng(0x7e51_f1ed);
    let mut picks: Vec<usize> = if n >= total { (0..total).collect() } else { (0..n).map(|_| rng.below(total)).collect() };
    picks.sort_unstable();
    picks.dedup();
    let mut out = Vec::new();
    let (mut start, mut next) = (0, picks.iter().peekable());
    for &(si, p, count) in &all {
        let rows: Vec<Row> = if next.peek().is_some_and(|&&k| k < start + count) { m.layout.rows(sites[si], m.pairs[p].length) } else { Vec::new() };
        while let Some(&&k) = next.peek().filter(|&&&k| k < start + count) {
            let row = rows[k - start];
            out.push(Sample { site: si, pair: p, row, cell: row.out });
            next.next();
        }
        start += count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_runs_are_rechecked_on_the_cpu_in_f32_others_on_their_own_backend() {
        let cuda = BackendSpec { kind: BackendKind::Cuda, device: 1, dtype: DType::Bf16, fusion: true };
        assert_eq!(checker(&cuda), BackendSpec::default());
        let wgpu = BackendSpec { kind: BackendKind::Wgpu, device: 0, dtype: DType::F16, fusion: true };
        assert_eq!(checker(&wgpu), wgpu);
    }
}
