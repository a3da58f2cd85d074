//! `patchbay analyze`: raw patching results → normalized metrics ((patched − corrupted) /
//! (clean − corrupted): clean = 1, corrupted = 0), mean and standard error over pairs, a summary
//! (JSON and CSV), and a heatmap per site (PNG and SVG); by named position where pairs name them.
pub mod heatmap;

use crate::results::manifest::{heatmap_files, normalized_file, SUMMARY_CSV, SUMMARY_JSON};
use crate::results::{open_finished, read_f32, write_atomic, write_npy, Manifest, PairEntry, SiteEntry};
use anyhow::{bail, Result};
use heatmap::Grid;
use serde::Serialize;
use std::path::Path;

/// A pair left out of normalization.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Excluded {
    pub row: usize,
    pub reason: String,
}

/// Mean, standard error and count over pairs of one site's normalized metric, per cell.
#[derive(Clone, Debug, Serialize)]
pub struct SiteSummary {
    pub name: String,
    /// Axes and shape of one pair's block (the array's without the pair axis).
    pub axes: Vec<String>,
    pub shape: Vec<usize>,
    /// Column labels of the positions axis: tokens of the first pair, or position names.
    pub labels: Vec<String>,
    pub mean: Vec<f32>,
    pub sem: Vec<f32>,
    pub n: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub pairs: usize,
    pub excluded: Vec<Excluded>,
    pub sites: Vec<SiteSummary>,
    /// Per-position sites aggregated by named position, where every pair names its positions.
    pub by_name: Vec<SiteSummary>,
}

/// Mean, standard error (sample std / √n) and n of the finite values of each column of a
/// [pairs, cells] array.
fn mean_sem(values: &[f32], cells: usize) -> (Vec<f32>, Vec<f32>, Vec<usize>) {
    let mut out = (vec![f32::NAN; cells], vec![f32::NAN; cells], vec![0; cells]);
    for j in 0..cells {
        let col: Vec<f64> = values.iter().skip(j).step_by(cells).filter(|v| v.is_finite()).map(|&v| v as f64).collect();
        let n = col.len();
        out.2[j] = n;
        if n == 0 {
            continue;
        }
        let mean = col.iter().sum::<f64>() / n as f64;
        out.0[j] = mean as f32;
        if n > 1 {
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            out.1[j] = (var / n as f64).sqrt() as f32;
        }
    }
    out
}

pub fn analyze(dir: &Path) -> Result<Summary> {
    let m = open_finished(dir)?;
    if m.pairs.is_empty() {
        bail!("{} holds no pairs (an empty shard? merge the shards, then analyze the merged run)", dir.display());
    }
    let (clean, _) = read_f32(&dir.join(&m.baseline_clean))?;
    let (corrupted, _) = read_f32(&dir.join(&m.baseline_corrupted))?;
    let mut excluded = Vec::new();
    let scale: Vec<Option<(f32, f32)>> = m
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (c, k) = (clean[i], corrupted[i]);
            if !c.is_finite() || !k.is_finite() {
                excluded.push(Excluded { row: p.row, reason: "not computed (run unfinished?)".into() });
                None
            } else if (c - k).abs() <= 1e-6 * c.abs().max(k.abs()).max(1.0) {
                excluded.push(Excluded { row: p.row, reason: format!("clean and corrupted baselines are equal ({c})") });
                None
            } else {
                Some((k, c - k))
            }
        })
        .collect();

    let mut sites = Vec::new();
    let mut by_name = Vec::new();
    let named = named_positions(&m.pairs);
    for site in &m.sites {
        let (raw, shape) = read_f32(&dir.join(&site.file))?;
        let cells: usize = shape[1..].iter().product();
        let normalized: Vec<f32> = raw
            .iter()
            .enumerate()
            .map(|(i, &v)| scale[i / cells].map_or(f32::NAN, |(k, d)| (v - k) / d))
            .collect();
        write_npy(&dir.join(normalized_file(&site.name)), &shape, &normalized)?;
        let (mean, sem, n) = mean_sem(&normalized, cells);
        let first = &m.pairs[0];
        let labels = if site.axes.iter().any(|a| a == "position") {
            first.clean_strs.iter().enumerate().map(|(i, t)| format!("{i} {t}")).chain((first.length..m.layout.positions).map(|i| format!("{i}"))).collect()
        } else {
            vec![]
        };
        let summary = SiteSummary { name: site.name.clone(), axes: site.axes[1..].to_vec(), shape: shape[1..].to_vec(), labels, mean, sem, n };
        if let (Some(names), true) = (&named, site.axes.iter().any(|a| a == "position")) {
            by_name.push(aggregate_by_name(site, &summary, &normalized, &m.pairs, names));
        }
        sites.push(summary);
    }
    let summary = Summary { model: m.model.clone(), pairs: m.pairs.len(), excluded, sites, by_name };
    write_atomic(&dir.join(SUMMARY_JSON), &serde_json::to_vec_pretty(&summary)?)?;
    write_atomic(&dir.join(SUMMARY_CSV), csv(&summary).as_bytes())?;
    for s in summary.sites.iter().chain(&summary.by_name) {
        let grid = grid(s, &m, summary.pairs - summary.excluded.len());
        let [png, svg] = heatmap_files(&s.name);
        write_atomic(&dir.join(svg), heatmap::svg(&grid).as_bytes())?;
        write_atomic(&dir.join(png), &heatmap::png(&grid)?)?;
    }
    Ok(summary)
}

/// The position names shared by every pair, ordered by their position in the first pair.
fn named_positions(pairs: &[PairEntry]) -> Option<Vec<String>> {
    let first = pairs.first()?;
    let mut names: Vec<(usize, String)> = first.positions.iter().map(|(n, &p)| (p, n.clone())).collect();
    if names.is_empty() || !pairs.iter().all(|p| names.iter().all(|(_, n)| p.positions.contains_key(n))) {
        return None;
    }
    names.sort();
    Some(names.into_iter().map(|(_, n)| n).collect())
}

/// [pairs, layers, positions(, heads)] normalized values → [layers, names(, heads)] over pairs.
fn aggregate_by_name(site: &SiteEntry, per_pos: &SiteSummary, normalized: &[f32], pairs: &[PairEntry], names: &[String]) -> SiteSummary {
    let (layers, positions) = (per_pos.shape[0], per_pos.shape[1]);
    let heads: usize = per_pos.shape[2..].iter().product();
    let cells = layers * names.len() * heads;
    let mut gathered = vec![f32::NAN; pairs.len() * cells];
    for (p, pair) in pairs.iter().enumerate() {
        for (ni, name) in names.iter().enumerate() {
            let pos = pair.positions[name];
            for l in 0..layers {
                for h in 0..heads {
                    gathered[p * cells + (l * names.len() + ni) * heads + h] =
                        normalized[p * layers * positions * heads + (l * positions + pos) * heads + h];
                }
            }
        }
    }
    let (mean, sem, n) = mean_sem(&gathered, cells);
    let mut shape = per_pos.shape.clone();
    shape[1] = names.len();
    SiteSummary { name: format!("{}.by_name", site.name), axes: per_pos.axes.clone(), shape, labels: names.to_vec(), mean, sem, n }
}

/// One row per cell: site, layer, position, head, label, mean, sem, n.
fn csv(s: &Summary) -> String {
    let mut out = String::from("site,layer,position,head,label,mean,sem,n\n");
    for site in s.sites.iter().chain(&s.by_name) {
        let has = |a: &str| site.axes.iter().position(|x| x == a);
        for (j, ((mean, sem), n)) in site.mean.iter().zip(&site.sem).zip(&site.n).enumerate() {
            // Unravel j over the block's shape.
            let mut idx = vec![0; site.shape.len()];
            let mut rem = j;
            for (d, &size) in site.shape.iter().enumerate().rev() {
                idx[d] = rem % size;
                rem /= size;
            }
            let get = |a: &str| has(a).map_or(String::new(), |d| idx[d].to_string());
            let label = has("position").and_then(|d| site.labels.get(idx[d])).cloned().unwrap_or_default();
            out += &format!("{},{},{},{},\"{}\",{},{},{}\n", site.name, get("layer"), get("position"), get("head"), label.replace('"', "\"\""), mean, sem, n);
        }
    }
    out
}

/// The heatmap of a site's mean: layers down, positions (or heads) across; z_by_pos puts each
/// (layer, head) on its own row.
fn grid(s: &SiteSummary, m: &Manifest, n: usize) -> Grid {
    let layers = s.shape[0];
    let by_pos = s.axes.iter().any(|a| a == "position");
    let by_head = s.axes.iter().any(|a| a == "head");
    let title = format!("{} — normalized patching metric, mean over {n} pair(s) — {}", s.name, m.model);
    let (rows, cols, col_title): (Vec<String>, Vec<String>, &str) = match (by_pos, by_head) {
        (true, false) => ((0..layers).map(|l| format!("{l}")).collect(), s.labels.clone(), "position"),
        (false, true) => ((0..layers).map(|l| format!("{l}")).collect(), (0..s.shape[1]).map(|h| format!("H{h}")).collect(), "head"),
        _ => {
            let heads = s.shape[2];
            ((0..layers).flat_map(|l| (0..heads).map(move |h| format!("L{l}H{h}"))).collect(), s.labels.clone(), "position")
        }
    };
    // z_by_pos is stored [layer, position, head]; its grid is [layer·head, position].
    let values = if by_pos && by_head {
        let (positions, heads) = (s.shape[1], s.shape[2]);
        (0..layers)
            .flat_map(|l| (0..heads).flat_map(move |h| (0..positions).map(move |p| (l * positions + p) * heads + h)))
            .map(|i| s.mean[i])
            .collect()
    } else {
        s.mean.clone()
    };
    Grid { title, row_title: if by_pos && by_head { "layer.head" } else { "layer" }.into(), col_title: col_title.into(), rows, cols, values }
}
