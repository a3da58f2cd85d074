//! `patchbay analyze`: raw patching results → normalized metrics ((patched − corrupted) /
//! (clean − corrupted): clean = 1, corrupted = 0), mean and standard error over pairs, a summary
//! (JSON and CSV), and a heatmap per site (PNG and SVG); by named position where pairs name them.
pub mod attribution;
pub mod circuit;
pub mod compare;
pub mod plot;

use crate::results::manifest::{heatmap_files, normalized_file, SUMMARY_CSV, SUMMARY_JSON};
use crate::results::{npy::read_own_f32, open_finished, Manifest, PairEntry, SiteEntry};
use anyhow::{bail, Result};
use plot::Grid;
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
    /// `Manifest::identity` of the run analyzed: an analysis beside another run is not its.
    pub run_identity: String,
    pub pairs: usize,
    pub excluded: Vec<Excluded>,
    pub sites: Vec<SiteSummary>,
    /// Per-position sites aggregated by named position, where every pair names its positions.
    pub by_name: Vec<SiteSummary>,
}

/// Mean, standard error (sample std / √n) and n of the values (all but NaN) of each column of a
/// [pairs, cells] array.
pub(crate) fn mean_sem(values: &[f32], cells: usize) -> (Vec<f32>, Vec<f32>, Vec<usize>) {
    let mut out = (vec![f32::NAN; cells], vec![f32::NAN; cells], vec![0; cells]);
    for j in 0..cells {
        // NaN is "no value" (past a pair's length, a pair left out); an infinity is a value, and
        // makes the mean infinite rather than being dropped from it.
        let col: Vec<f64> = values.iter().skip(j).step_by(cells).filter(|v| !v.is_nan()).map(|&v| v as f64).collect();
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

/// Each pair's (corrupted, clean − corrupted) baselines, None for a pair left out (listed).
pub(crate) fn scales(dir: &Path, m: &Manifest) -> Result<(Vec<Option<(f32, f32)>>, Vec<Excluded>)> {
    let (clean, _) = read_own_f32(&dir.join(&m.baseline_clean))?;
    let (corrupted, _) = read_own_f32(&dir.join(&m.baseline_corrupted))?;
    Ok(scales_of(m, &clean, &corrupted))
}

/// `scales` of the baselines given.
pub fn scales_of(m: &Manifest, clean: &[f32], corrupted: &[f32]) -> (Vec<Option<(f32, f32)>>, Vec<Excluded>) {
    let mut excluded = Vec::new();
    let scale = m
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (c, k) = (clean[i], corrupted[i]);
            if !c.is_finite() || !k.is_finite() {
                // Only finished runs are analyzed: a non-finite baseline is what the model computed.
                excluded.push(Excluded { row: p.row, reason: format!("a baseline is not finite (clean {c}, corrupted {k}): the model computed it so") });
                None
            } else if (c - k).abs() <= 1e-6 * c.abs().max(k.abs()).max(1.0) {
                excluded.push(Excluded { row: p.row, reason: format!("clean and corrupted baselines are equal ({c})") });
                None
            } else {
                Some((k, c - k))
            }
        })
        .collect();
    (scale, excluded)
}

/// A site's raw [pairs, cells] values normalized by each pair's baselines (NaN for a left-out pair).
pub fn normalize(raw: &[f32], cells: usize, scale: &[Option<(f32, f32)>]) -> Vec<f32> {
    raw.iter().enumerate().map(|(i, &v)| scale[i / cells].map_or(f32::NAN, |(k, d)| (v - k) / d)).collect()
}

/// Normalizes, summarizes and draws the finished run in `dir`, written as one set
/// (`outputs::write_set`: summary.json, with the run's identity, last) under the directory's
/// exclusive lock: two analyses at once cannot mix their files.
pub fn analyze(dir: &Path) -> Result<Summary> {
    let _lock = crate::results::lock::exclusive(dir)?;
    let m = open_finished(dir)?;
    if m.pairs.is_empty() {
        bail!("{} holds no pairs (an empty shard? merge the shards, then analyze the merged run)", dir.display());
    }
    let (scale, excluded) = scales(dir, &m)?;
    let mut sites = Vec::new();
    let mut by_name = Vec::new();
    let mut files = Vec::new();
    let named = named_positions(&m.pairs);
    for site in &m.sites {
        let (raw, shape) = read_own_f32(&dir.join(&site.file))?;
        let cells: usize = shape[1..].iter().product();
        let normalized = normalize(&raw, cells, &scale);
        files.push((normalized_file(&site.name), crate::results::npy::encode(&shape, &normalized)));
        let summary = site_summary(&m, site, &normalized);
        if let (Some(names), true) = (&named, site.axes.iter().any(|a| a == "position")) {
            by_name.push(aggregate_by_name(site, &summary, &normalized, &m.pairs, names));
        }
        sites.push(summary);
    }
    let summary = Summary { model: m.model.clone(), run_identity: m.identity(), pairs: m.pairs.len(), excluded, sites, by_name };
    files.push((SUMMARY_CSV.to_string(), csv(&summary).into_bytes()));
    for s in summary.sites.iter().chain(&summary.by_name) {
        let grid = grid(s, &m, summary.pairs - summary.excluded.len());
        let [png, svg] = heatmap_files(&s.name);
        files.push((svg, plot::svg(&grid).into_bytes()));
        files.push((png, plot::png(&grid)?));
    }
    let known = m.analysis_files();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    crate::results::outputs::write_set(dir, (SUMMARY_JSON, serde_json::to_vec_pretty(&summary)?), files, &known)?;
    Ok(summary)
}

/// Mean, standard error and count over pairs of a site's normalized [pairs, ...] values.
pub fn site_summary(m: &Manifest, site: &SiteEntry, normalized: &[f32]) -> SiteSummary {
    let cells: usize = site.shape[1..].iter().product();
    let (mean, sem, n) = mean_sem(normalized, cells);
    let labels = match m.pairs.first() {
        Some(first) if site.axes.iter().any(|a| a == "position") => {
            first.clean_strs.iter().enumerate().map(|(i, t)| format!("{i} {t}")).chain((first.length..m.layout.positions).map(|i| format!("{i}"))).collect()
        }
        _ if site.axes.iter().any(|a| a == "edge") => site.edges.clone(),
        _ => vec![],
    };
    SiteSummary { name: site.name.clone(), axes: site.axes[1..].to_vec(), shape: site.shape[1..].to_vec(), labels, mean, sem, n }
}

/// The heatmap `analyze` draws of a site, from its normalized values over `included` pairs.
pub fn site_heatmap(m: &Manifest, site: &SiteEntry, normalized: &[f32], included: usize) -> Grid {
    grid(&site_summary(m, site, normalized), m, included)
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

/// Row-major index of `idx` in `shape`, and back.
fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

fn unravel(mut j: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        idx[d] = j % n;
        j /= n;
    }
    idx
}

/// Whether a block axis counts token positions (a pattern's destination and source too).
fn is_position(axis: &str) -> bool {
    axis == "position" || axis == "src_position"
}

/// [pairs, layers, positions(, src positions)(, heads)] normalized values → the same with every
/// position axis indexed by name, over pairs.
fn aggregate_by_name(site: &SiteEntry, per_pos: &SiteSummary, normalized: &[f32], pairs: &[PairEntry], names: &[String]) -> SiteSummary {
    let shape = &per_pos.shape;
    let named: Vec<bool> = per_pos.axes.iter().map(|a| is_position(a)).collect();
    let out_shape: Vec<usize> = shape.iter().zip(&named).map(|(&n, &p)| if p { names.len() } else { n }).collect();
    let (cells, out_cells): (usize, usize) = (shape.iter().product(), out_shape.iter().product());
    let mut gathered = vec![f32::NAN; pairs.len() * out_cells];
    for (p, pair) in pairs.iter().enumerate() {
        let pos: Vec<usize> = names.iter().map(|n| pair.positions[n]).collect();
        for j in 0..out_cells {
            let idx: Vec<usize> = unravel(j, &out_shape).into_iter().zip(&named).map(|(i, &p)| if p { pos[i] } else { i }).collect();
            gathered[p * out_cells + j] = normalized[p * cells + ravel(&idx, shape)];
        }
    }
    let (mean, sem, n) = mean_sem(&gathered, out_cells);
    SiteSummary { name: format!("{}.by_name", site.name), axes: per_pos.axes.clone(), shape: out_shape, labels: names.to_vec(), mean, sem, n }
}

/// One row per cell: site, layer, position, src_position, head, label, mean, sem, n; the label
/// names the position (a pattern's destination).
fn csv(s: &Summary) -> String {
    let mut out = String::from("site,layer,position,src_position,head,label,mean,sem,n\n");
    for site in s.sites.iter().chain(&s.by_name) {
        let has = |a: &str| site.axes.iter().position(|x| x == a);
        for (j, ((mean, sem), n)) in site.mean.iter().zip(&site.sem).zip(&site.n).enumerate() {
            let idx = unravel(j, &site.shape);
            let get = |a: &str| has(a).map_or(String::new(), |d| idx[d].to_string());
            let label = has("position").or(has("edge")).and_then(|d| site.labels.get(idx[d])).cloned().unwrap_or_default();
            out += &format!(
                "{},{},{},{},{},\"{}\",{},{},{}\n",
                site.name,
                get("layer"),
                get("position"),
                get("src_position"),
                get("head"),
                label.replace('"', "\"\""),
                mean,
                sem,
                n
            );
        }
    }
    out
}

/// The heatmap of a site's mean: layers down and positions (or heads) across; a site by head and
/// position has a row per head, named `layer.head` as the IOI paper names them (9.9), and a
/// pattern's (destination, source) entries are its columns, the masked ones (source after
/// destination, never patched) left out; a path site has a row per sender and a column per receiver,
/// and the edges site one per sender node and receiver input (EAP-IG's score matrix).
fn grid(s: &SiteSummary, m: &Manifest, n: usize) -> Grid {
    use crate::engine::graph::{Node, Qkv};
    let layers = s.shape[0];
    let has = |a: &str| s.axes.iter().any(|x| x == a);
    let what = match m.method {
        crate::engine::Method::Exact => "normalized patching metric",
        crate::engine::Method::Attribution => "attribution patching estimate, normalized",
        crate::engine::Method::EapIg => "integrated-gradients estimate, normalized",
    };
    let title = format!("{} — {what} ({}, {} ablation), mean over {n} pair(s) — {}", s.name, m.direction.name(), m.ablation.name(), m.model);
    let heads = if has("head") { s.shape[s.axes.iter().position(|a| a == "head").expect("has a head axis")] } else { 1 };
    let by_head = || (0..layers).flat_map(|l| (0..heads).map(move |h| format!("{l}.{h}"))).collect::<Vec<_>>();
    let layer_rows = || (0..layers).map(|l| l.to_string()).collect::<Vec<_>>();
    if has("edge") {
        // EAP-IG's score matrix: a row per sender, a column per receiver input, empty where no edge.
        let g = crate::engine::Graph::of(&m.config);
        let senders: Vec<Node> = g.nodes.iter().copied().filter(|n| *n != Node::Logits).collect();
        let inputs: Vec<(Node, Option<Qkv>)> = (0..g.layers)
            .flat_map(|l| Qkv::ALL.into_iter().flat_map(move |x| (0..g.heads).map(move |h| (Node::Head { layer: l, head: h }, Some(x)))).chain([(Node::Mlp(l), None)]))
            .chain([(Node::Logits, None)])
            .collect();
        let mut values = vec![f32::NAN; senders.len() * inputs.len()];
        for (e, &v) in g.edges.iter().zip(&s.mean) {
            let row = senders.iter().position(|&n| n == e.from).expect("a sender of the graph");
            let col = inputs.iter().position(|&i| i == (e.to, e.qkv)).expect("a receiver of the graph");
            values[row * inputs.len() + col] = v;
        }
        let label = |(n, x): &(Node, Option<Qkv>)| x.map_or(n.to_string(), |x| format!("{n}<{}>", x.name()));
        return Grid { title, row_title: "sender".into(), col_title: "receiver input".into(), rows: senders.iter().map(Node::to_string).collect(), cols: inputs.iter().map(label).collect(), values };
    }
    if has("receiver_layer") {
        // A path's [sender layer, sender head, receiver layer, receiver head]: senders down.
        let heads = by_head();
        return Grid { title, row_title: "sender".into(), col_title: "receiver".into(), rows: heads.clone(), cols: heads, values: s.mean.clone() };
    }
    let (row_title, rows, col_title, cols, values) = match (has("position"), has("src_position"), has("head")) {
        (true, false, false) => ("layer", layer_rows(), "position", s.labels.clone(), s.mean.clone()),
        (false, _, true) => ("layer", layer_rows(), "head", (0..heads).map(|h| format!("H{h}")).collect(), s.mean.clone()),
        (true, false, true) => {
            // Stored [layer, position, head]; drawn [layer.head, position].
            let positions = s.shape[1];
            let values = (0..layers).flat_map(|l| (0..heads).flat_map(move |h| (0..positions).map(move |p| (l * positions + p) * heads + h)));
            ("layer.head", by_head(), "position", s.labels.clone(), values.map(|i| s.mean[i]).collect())
        }
        (true, true, true) => {
            // Stored [layer, dest, src, head]; drawn [layer.head, (dest, src ≤ dest)].
            let t = s.shape[1];
            let entries: Vec<(usize, usize)> = (0..t).flat_map(|d| (0..=d).map(move |src| (d, src))).collect();
            let values = (0..layers).flat_map(|l| (0..heads).flat_map(move |h| (0..t).flat_map(move |d| (0..=d).map(move |src| ((l * t + d) * t + src) * heads + h))));
            let label = |p: usize| s.labels.get(p).map_or(p.to_string(), |l| l.split(' ').next().unwrap_or_default().to_string());
            let cols = entries.iter().map(|&(d, src)| format!("{}←{}", label(d), label(src))).collect();
            ("layer.head", by_head(), "destination←source position", cols, values.map(|i| s.mean[i]).collect())
        }
        _ => unreachable!("a site's axes are one of the four layouts"),
    };
    Grid { title, row_title: row_title.into(), col_title: col_title.into(), rows, cols, values }
}
