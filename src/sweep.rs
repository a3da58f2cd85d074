//! A whole run: pairs grouped into units of equal length, each unit's patched runs through the
//! engine, results streamed into the sink; the manifest that describes the results directory.
use crate::backend::BackendSpec;
use crate::data::TokenizedPair;
use crate::engine::plan::max_rows_for_budget;
use crate::engine::{Engine, Layout, PatchSite};
use crate::model::{Gpt2, Gpt2Config};
use crate::sink::{self, ArraySpec, Sink};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::prelude::Backend;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const METRIC: &str = "logit(answer) - logit(distractor) at the last position";

#[derive(Clone, Debug)]
pub struct SweepSpec {
    pub sites: Vec<PatchSite>,
    pub reuse: bool,
    /// Patched runs per forward pass; None chooses from the memory budget.
    pub max_rows: Option<usize>,
    pub out: PathBuf,
    pub resume: bool,
    pub overwrite: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRef {
    pub id: u32,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairEntry {
    /// 1-based row in the source the pair came from.
    pub row: usize,
    pub length: usize,
    pub clean_tokens: Vec<u32>,
    pub corrupted_tokens: Vec<u32>,
    pub clean_strs: Vec<String>,
    pub corrupted_strs: Vec<String>,
    pub answer: TokenRef,
    pub distractor: TokenRef,
    #[serde(default)]
    pub positions: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteEntry {
    pub name: String,
    pub file: String,
    pub axes: Vec<String>,
    pub shape: Vec<usize>,
    /// TransformerLens hook patched, `{layer}` standing for the layer.
    pub hook: String,
}

/// manifest.json: everything needed to read and interpret a results directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub patchbay_version: String,
    pub model: String,
    pub config: Gpt2Config,
    pub backend: BackendSpec,
    pub reuse: bool,
    pub max_rows: usize,
    pub metric: String,
    pub layout: Layout,
    pub sites: Vec<SiteEntry>,
    /// [pairs] f32 files of the two baselines, and [pairs] int32 token lengths.
    pub baseline_clean: String,
    pub baseline_corrupted: String,
    pub lengths: String,
    pub pairs: Vec<PairEntry>,
}

impl Manifest {
    pub fn read(dir: &std::path::Path) -> Result<Self> {
        use anyhow::Context;
        let path = dir.join(sink::MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a patchbay results directory (no manifest.json)", dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }
}

pub struct SweepSummary {
    pub pairs: usize,
    pub runs: usize,
    pub seconds: f64,
}

/// Patched runs per pair of `len` tokens over `sites`.
fn runs_per_pair(layout: &Layout, sites: &[PatchSite], len: usize) -> usize {
    sites.iter().map(|&s| layout.rows(s, len).len()).sum()
}

/// Bytes the batch may use, and the largest single buffer, on this backend.
fn memory_limits(backend: &BackendSpec) -> (usize, usize) {
    use crate::backend::BackendKind::*;
    const GIB: usize = 1 << 30;
    match backend.kind {
        Cpu => (2 * GIB, usize::MAX),
        Wgpu => (4 * GIB, 128 << 20),
        Cuda => (16 * GIB, usize::MAX),
    }
}

pub fn sweep<B: Backend>(
    model: &Gpt2<B>,
    model_id: &str,
    tok: &Tokenizer,
    pairs: &[TokenizedPair],
    spec: &SweepSpec,
    backend: &BackendSpec,
) -> Result<SweepSummary> {
    anyhow::ensure!(!pairs.is_empty(), "no pairs to run");
    let c = &model.config;
    let positions = pairs.iter().map(TokenizedPair::len).max().unwrap();
    let layout = Layout { layers: c.n_layer, heads: c.n_head, positions };
    let (budget, buffer) = memory_limits(backend);
    let max_rows = spec.max_rows.unwrap_or_else(|| max_rows_for_budget(c, positions, budget, buffer, !spec.reuse));
    let manifest = manifest(model, model_id, tok, pairs, spec, backend, layout, max_rows);

    let mut arrays: Vec<ArraySpec> = spec
        .sites
        .iter()
        .map(|&s| ArraySpec { name: s.name().into(), shape: [vec![pairs.len()], layout.per_pair(s)].concat() })
        .collect();
    arrays.extend(["baseline_clean", "baseline_corrupted"].map(|n| ArraySpec { name: n.into(), shape: vec![pairs.len()] }));
    let mut sink = Sink::create(&spec.out, &manifest, arrays, spec.resume, spec.overwrite)?;
    let lengths: Vec<i32> = pairs.iter().map(|p| p.len() as i32).collect();
    sink::write_npy(&spec.out.join(&manifest.lengths), &[pairs.len()], &lengths)?;

    let units = units(pairs, &layout, &spec.sites, max_rows);
    let total: usize = pairs.iter().map(|p| runs_per_pair(&layout, &spec.sites, p.len())).sum();
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} {wide_bar} {human_pos}/{human_len} runs  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    let engine = Engine { model, reuse: spec.reuse, max_rows };
    let started = std::time::Instant::now();
    let mut ran = 0;
    for (u, unit) in units.iter().enumerate() {
        let unit_runs: usize = unit.iter().map(|&i| runs_per_pair(&layout, &spec.sites, pairs[i].len())).sum();
        if sink.is_done(u) {
            bar.inc(unit_runs as u64);
            continue;
        }
        let unit_pairs: Vec<TokenizedPair> = unit.iter().map(|&i| pairs[i].clone()).collect();
        let results = engine.run(&unit_pairs, &spec.sites, &layout, &mut |n| bar.inc(n as u64))?;
        for (&i, r) in unit.iter().zip(results) {
            sink.write("baseline_clean", i, &[r.clean])?;
            sink.write("baseline_corrupted", i, &[r.corrupted])?;
            for (site, values) in spec.sites.iter().zip(&r.sites) {
                sink.write(site.name(), i * values.len(), values)?;
            }
        }
        sink.finish_unit(u)?;
        ran += unit_runs;
    }
    bar.finish_and_clear();
    sink.finish()?;
    Ok(SweepSummary { pairs: pairs.len(), runs: ran, seconds: started.elapsed().as_secs_f64() })
}

/// Pairs (by index) in units of one length, each about one batch of patched runs.
fn units(pairs: &[TokenizedPair], layout: &Layout, sites: &[PatchSite], max_rows: usize) -> Vec<Vec<usize>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    by_len
        .into_iter()
        .flat_map(|(len, idx)| {
            let per_unit = (max_rows / runs_per_pair(layout, sites, len).max(1)).clamp(1, 256);
            idx.chunks(per_unit).map(<[usize]>::to_vec).collect::<Vec<_>>()
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn manifest<B: Backend>(
    model: &Gpt2<B>,
    model_id: &str,
    tok: &Tokenizer,
    pairs: &[TokenizedPair],
    spec: &SweepSpec,
    backend: &BackendSpec,
    layout: Layout,
    max_rows: usize,
) -> Manifest {
    let token = |id| TokenRef { id, token: tok.token_str(id) };
    Manifest {
        patchbay_version: env!("CARGO_PKG_VERSION").into(),
        model: model_id.into(),
        config: model.config.clone(),
        backend: backend.clone(),
        reuse: spec.reuse,
        max_rows,
        metric: METRIC.into(),
        layout,
        sites: spec
            .sites
            .iter()
            .map(|&s| SiteEntry {
                name: s.name().into(),
                file: format!("{}.npy", s.name()),
                axes: s.axes().into_iter().map(String::from).collect(),
                shape: [vec![pairs.len()], layout.per_pair(s)].concat(),
                hook: s.kind().hook_name("{layer}"),
            })
            .collect(),
        baseline_clean: "baseline_clean.npy".into(),
        baseline_corrupted: "baseline_corrupted.npy".into(),
        lengths: "lengths.npy".into(),
        pairs: pairs
            .iter()
            .map(|p| PairEntry {
                row: p.row,
                length: p.len(),
                clean_tokens: p.clean.clone(),
                corrupted_tokens: p.corrupted.clone(),
                clean_strs: tok.token_strs(&p.clean),
                corrupted_strs: tok.token_strs(&p.corrupted),
                answer: token(p.answer),
                distractor: token(p.distractor),
                positions: p.positions.clone(),
            })
            .collect(),
    }
}
