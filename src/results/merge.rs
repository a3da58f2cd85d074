//! Combining the finished shards of one run into one results directory, equal to the unsharded
//! run's, written by the same transaction as a run.
use super::manifest::{FailedCell, Manifest, PairEntry, ShardInfo, SiteEntry, Verification};
use super::npy::read_own_f32;
use super::store::{begin, open_finished, Array, Begin, Mode};
use crate::engine::Runs;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Merges `shards` (directories of `run --shard K/N`, each finished) into `out`. `out` may hold
/// this merge already (done, or cut short: it is redone); another run there needs `overwrite`.
pub fn merge(shards: &[PathBuf], out: &Path, overwrite: bool) -> Result<Manifest> {
    let mut parts: Vec<(PathBuf, Manifest, ShardInfo)> = Vec::new();
    // Each shard is read under its shared lock, held until its arrays are copied.
    let mut locks = Vec::new();
    for dir in shards {
        locks.push(super::lock::shared(dir)?);
        let m = open_finished(dir).with_context(|| format!("shard {}", dir.display()))?;
        let info = m.shard.clone().with_context(|| format!("{} is not a shard (its manifest has no shard)", dir.display()))?;
        if same_dir(dir, out) {
            bail!("--out {} is one of the shards: merge into another directory", out.display());
        }
        parts.push((dir.clone(), m, info));
    }
    parts.sort_by_key(|p| p.2.index);
    let Some((first_dir, first, first_info)) = parts.first() else { bail!("no shards to merge") };
    let count = first_info.count;
    let have: Vec<usize> = parts.iter().map(|p| p.2.index).collect();
    if have != (0..count).collect::<Vec<_>>() {
        bail!("shards {have:?} given, but the run of {} has shards 0..{count}: each exactly once", first_dir.display());
    }
    // Everything but the shard, its pairs and its batch size must be the same run: model,
    // settings, sites and the whole run's dataset. (Shards batched alike, e.g. with one
    // --max-rows, merge byte-identical to the unsharded run; otherwise equal to float rounding.)
    // Sites are compared but for their pair count (a shard's own).
    let sites = |m: &Manifest| m.sites.iter().map(|s| SiteEntry { shape: s.shape[1..].to_vec(), ..s.clone() }).collect();
    let whole = |m: &Manifest| crate::engine::Layout { edges: None, ..m.layout.clone() };
    let same = |m: &Manifest| Manifest { pairs: vec![], shard: None, sites: sites(m), layout: whole(m), max_rows: 0, verify: None, runs: Runs::default(), kernels_excluded: vec![], ..m.clone() };
    for (dir, m, info) in &parts {
        if info.pairs.len() != m.pairs.len() || info.count != count || info.edges != m.layout.edges {
            bail!("{}: its manifest's shard lists {} pairs (edges {:?}) of {} shards, but it holds {} pairs (edges {:?}) of the {count} shards of {}", dir.display(), info.pairs.len(), info.edges, info.count, m.pairs.len(), m.layout.edges, first_dir.display());
        }
    }
    for (dir, m, info) in &parts[1..] {
        // Shards of the graph's rows are cut at blocks of max_rows edges: cut for other batches,
        // their ranges do not tile.
        if info.edges.is_some() && m.max_rows != first.max_rows {
            bail!("{} ran with --max-rows {}, {} with {}: a row-sharded edge run's shards are cut at its batches, so every shard needs the same --max-rows", dir.display(), m.max_rows, first_dir.display(), first.max_rows);
        }
        if same(m) != same(first) || info.pairs_total != first_info.pairs_total {
            let why = if m.dataset != first.dataset {
                "made from other pairs"
            } else if m.weights != first.weights {
                "made with other model files: their weights fingerprints differ"
            } else if m.ablation_means != first.ablation_means {
                "their ablation means differ: each shard computes them over the whole run, on its own backend"
            } else if sites(m) != sites(first) {
                "their sites differ"
            } else {
                "another model, sites or settings"
            };
            bail!("{} and {} are shards of different runs ({why})", dir.display(), first_dir.display());
        }
    }
    // Every (pair, edge) cell in exactly one shard: each pair's shards' edge ranges (all of them
    // for a shard split by pairs) tile the graph's edges without a gap or an overlap.
    let total = first_info.pairs_total;
    let edges = whole(first).edge_range()[1];
    let mut held: Vec<Vec<([usize; 2], usize)>> = vec![Vec::new(); total];
    for (dir, _, info) in &parts {
        if let Some([start, end]) = info.edges.filter(|&[start, end]| start > end || end > edges) {
            bail!("{} claims edges {start}..{end} of a graph of {edges}", dir.display());
        }
        for &g in &info.pairs {
            if g >= total {
                bail!("{} claims pair {g} of {total}, which does not exist", dir.display());
            }
            held[g].push((info.edges.unwrap_or([0, edges]), info.index));
        }
    }
    for (g, ranges) in held.iter_mut().enumerate() {
        ranges.sort();
        let mut at = [0, usize::MAX]; // the next edge due, and the shard that held the one before
        for &([start, end], k) in ranges.iter() {
            if start > at[0] {
                bail!("no shard holds edges {}..{start} of pair {g}", at[0]);
            }
            if start < at[0] {
                bail!("shards {} and {k} both hold pair {g} (edges {start}..{})", at[1], end.min(at[0]));
            }
            at = [end, k];
        }
        if at[0] < edges {
            bail!("no shard holds {} of pair {g}", if at[0] == 0 { "any cell".to_string() } else { format!("edges {}..{edges}", at[0]) });
        }
    }
    let mut slots: Vec<Option<PairEntry>> = vec![None; total];
    for (_, m, info) in &parts {
        for (&g, p) in info.pairs.iter().zip(&m.pairs) {
            slots[g].get_or_insert_with(|| p.clone());
        }
    }
    let mut merged = Manifest { shard: None, verify: merged_verification(&parts), ..first.clone() };
    merged.kernels_excluded = parts.iter().flat_map(|(_, m, _)| m.kernels_excluded.clone()).collect();
    merged.runs = Runs::default();
    for (_, m, _) in &parts {
        merged.runs += m.runs;
    }
    merged.pairs = slots.into_iter().map(|p| p.expect("every pair held: checked above")).collect();
    merged.layout = whole(first);
    for site in &mut merged.sites {
        site.shape[0] = total;
    }

    let Begin::Write(mut writer) = begin(out, &merged, 1, Mode { resume: true, overwrite })? else { return Ok(merged) };
    let arrays = (0..merged.sites.len()).map(Array::Site).chain([Array::BaselineClean, Array::BaselineCorrupted]);
    let files = merged.sites.iter().map(|s| &s.file).chain([&merged.baseline_clean, &merged.baseline_corrupted]);
    for (array, file) in arrays.zip(files) {
        for (dir, _, info) in &parts {
            let (data, shape) = read_own_f32(&dir.join(file))?;
            let per_pair: usize = shape[1..].iter().product();
            // A shard split by edges: its edges of the edges array; the baselines, every pair's,
            // from the shard with the first edges.
            let [start, end] = match info.edges {
                Some(range) if per_pair == edges => range,
                Some([0, _]) | None => [0, per_pair],
                Some(_) => continue,
            };
            for (k, &g) in info.pairs.iter().enumerate() {
                writer.write(array, g * per_pair + start, &data[k * per_pair + start..k * per_pair + end])?;
            }
        }
    }
    // Every shard's means are the whole run's (their hashes compared above): the first one's.
    for (i, e) in merged.ablation_means.iter().enumerate() {
        writer.write(Array::Means(i), 0, &read_own_f32(&first_dir.join(&e.file))?.0)?;
    }
    writer.finish_unit(0)?;
    writer.commit()?;
    Ok(merged)
}

/// The shards' checks as one, when every shard was checked: the rows of all, the worst
/// difference, each failed row named with its shard.
fn merged_verification(parts: &[(PathBuf, Manifest, ShardInfo)]) -> Option<Verification> {
    let checks: Vec<(&Verification, usize)> = parts.iter().map(|(_, m, info)| m.verify.as_ref().map(|v| (v, info.index))).collect::<Option<_>>()?;
    let (first, _) = checks[0];
    Some(Verification {
        backend: first.backend.clone(),
        rows: checks.iter().map(|(v, _)| v.rows).sum(),
        tolerance: checks.iter().map(|(v, _)| v.tolerance).fold(0.0, f32::max),
        max_abs_diff: checks.iter().map(|(v, _)| v.max_abs_diff).fold(0.0, f32::max),
        failed: checks.iter().flat_map(|(v, k)| v.failed.iter().map(move |f| format!("shard {k}: {f}"))).collect(),
        failed_cells: parts
            .iter()
            .zip(&checks)
            .flat_map(|((_, _, info), (v, _))| v.failed_cells.iter().map(|c| FailedCell { pair: info.pairs[c.pair], ..*c }))
            .collect(),
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
