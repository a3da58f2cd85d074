//! A whole run: pairs grouped into units of equal length, each unit's patched runs through the
//! engine, results streamed into the sink; the manifest that describes the results directory;
//! shards of a run on several machines, and merging them.
use crate::backend::BackendSpec;
use crate::data::{Skipped, TokenizedPair};
use crate::engine::plan::max_rows_for_budget;
use crate::engine::{Engine, Layout, PatchSite};
use crate::model::{Gpt2, Gpt2Config};
use crate::sink::{self, ArraySpec, Sink};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
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
    pub shard: Option<Shard>,
}

/// Shard `index` of `count` (0-based) of a run: a contiguous range of its units of work, planned
/// over the whole dataset so each unit computes exactly as in the unsharded run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N`, K in 0..N.
    pub fn parse(s: &str) -> Result<Self> {
        let (k, n) = s.split_once('/').with_context(|| format!("--shard {s:?}: expected K/N, e.g. 0/8"))?;
        let shard = Self { index: k.trim().parse().context("--shard K")?, count: n.trim().parse().context("--shard N")? };
        if shard.count == 0 || shard.index >= shard.count {
            bail!("--shard {s}: K must be in 0..N");
        }
        Ok(shard)
    }

    /// From a scheduler: a Slurm job array (SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a Kubernetes
    /// Indexed Job (JOB_COMPLETION_INDEX, with `count` from --shards).
    pub fn from_env(count: Option<usize>) -> Result<Option<Self>> {
        let var = |name: &str| -> Result<Option<usize>> {
            std::env::var(name).ok().map(|v| v.trim().parse().with_context(|| format!("{name}={v} is not a number"))).transpose()
        };
        if let (Some(id), Some(n)) = (var("SLURM_ARRAY_TASK_ID")?, var("SLURM_ARRAY_TASK_COUNT")?) {
            let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            return Self::parse(&format!("{}/{}", id.saturating_sub(min), count.unwrap_or(n))).map(Some);
        }
        match (var("JOB_COMPLETION_INDEX")?, count) {
            (Some(i), Some(n)) => Self::parse(&format!("{i}/{n}")).map(Some),
            (Some(_), None) => bail!("JOB_COMPLETION_INDEX is set: give the number of shards with --shards N"),
            _ => Ok(None),
        }
    }

    pub fn units(&self, total: usize) -> std::ops::Range<usize> {
        self.index * total / self.count..(self.index + 1) * total / self.count
    }

    /// The shard's results directory inside the run's.
    pub fn dir_name(&self) -> String {
        format!("shard-{:04}-of-{:04}", self.index, self.count)
    }
}

/// Which of the whole run's pairs a shard holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// Indices, ascending, into the whole run's pairs of this shard's pairs (its array rows).
    pub pairs: Vec<usize>,
    pub pairs_total: usize,
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
    /// Pairs of the source left out, and why.
    pub skipped: Vec<Skipped>,
    pub shard: Option<ShardInfo>,
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
    sites.iter().map(|&s| layout.run_count(s, len)).sum()
}

/// Bytes the batch may use, and the largest single buffer, on this backend: on cpu a quarter of
/// the memory available now; on GPUs (whose free memory burn does not report) a budget that fits
/// 24 GiB cards, and wgpu's 128 MiB buffer limit (lavapipe's; conservative elsewhere).
fn memory_limits(backend: &BackendSpec) -> (usize, usize) {
    use crate::backend::BackendKind::*;
    const GIB: usize = 1 << 30;
    match backend.kind {
        Cpu => (available_memory().map_or(2 * GIB, |b| b / 4), usize::MAX),
        Wgpu => (4 * GIB, 128 << 20),
        Cuda => (16 * GIB, usize::MAX),
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `all` pairs (or the spec's shard of them); `skipped` is reported in the manifest.
pub fn sweep<B: Backend>(
    model: &Gpt2<B>,
    model_id: &str,
    tok: &Tokenizer,
    all: &[TokenizedPair],
    skipped: &[Skipped],
    spec: &SweepSpec,
    backend: &BackendSpec,
) -> Result<SweepSummary> {
    anyhow::ensure!(!all.is_empty(), "no pairs to run");
    let c = &model.config;
    // Laid out by the whole run's longest pair, so shards merge into the unsharded arrays.
    let positions = all.iter().map(TokenizedPair::len).max().unwrap();
    let layout = Layout { layers: c.n_layer, heads: c.n_head, positions };
    let (budget, buffer) = memory_limits(backend);
    // A resumed run batches as it did before it was cut, so its files come out byte-identical.
    let previous = if spec.resume { Manifest::read(&spec.out).ok().map(|m| m.max_rows) } else { None };
    let max_rows = spec.max_rows.or(previous).unwrap_or_else(|| max_rows_for_budget(c, positions, budget, buffer, !spec.reuse));
    let all_units = units(all, &layout, &spec.sites);
    let units = match spec.shard {
        Some(s) => &all_units[s.units(all_units.len())],
        None => &all_units[..],
    };
    // This run's array rows: its pairs in the whole run's order.
    let mut mine: Vec<usize> = units.iter().flatten().copied().collect();
    mine.sort_unstable();
    let row_of = |global: usize| mine.binary_search(&global).expect("a unit's pair is this run's");
    let pairs: Vec<TokenizedPair> = mine.iter().map(|&i| all[i].clone()).collect();
    let mut manifest = manifest(model, model_id, tok, &pairs, spec, backend, layout, max_rows);
    manifest.skipped = skipped.to_vec();
    manifest.shard = spec.shard.map(|s| ShardInfo { index: s.index, count: s.count, pairs: mine.clone(), pairs_total: all.len() });

    let mut arrays: Vec<ArraySpec> = manifest.sites.iter().map(|s| ArraySpec { name: s.name.clone(), shape: s.shape.clone() }).collect();
    arrays.extend(["baseline_clean", "baseline_corrupted"].map(|n| ArraySpec { name: n.into(), shape: vec![pairs.len()] }));
    let Some(mut sink) = Sink::create(&spec.out, &manifest, arrays, spec.resume, spec.overwrite)? else {
        eprintln!("{} is already complete: nothing to resume", spec.out.display());
        return Ok(SweepSummary { pairs: pairs.len(), runs: 0, seconds: 0.0 });
    };
    let lengths: Vec<i32> = pairs.iter().map(|p| p.len() as i32).collect();
    sink::write_npy(&spec.out.join(&manifest.lengths), &[pairs.len()], &lengths)?;

    let total: usize = pairs.iter().map(|p| runs_per_pair(&layout, &spec.sites, p.len())).sum();
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} {wide_bar} {human_pos}/{human_len} runs  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    let engine = Engine { model, reuse: spec.reuse, max_rows };
    let started = std::time::Instant::now();
    let mut ran = 0;
    for (u, unit) in units.iter().enumerate() {
        let unit_runs: usize = unit.iter().map(|&i| runs_per_pair(&layout, &spec.sites, all[i].len())).sum();
        if sink.is_done(u) {
            bar.inc(unit_runs as u64);
            continue;
        }
        let unit_pairs: Vec<TokenizedPair> = unit.iter().map(|&i| all[i].clone()).collect();
        let results = engine.run(&unit_pairs, &spec.sites, &layout, &mut |n| bar.inc(n as u64))?;
        for (&g, r) in unit.iter().zip(results) {
            let i = row_of(g);
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

/// Patched runs per unit of work (a unit is what resume and shards count in), whatever the
/// machine: the same dataset gives the same units everywhere.
const UNIT_RUNS: usize = 4096;

/// Pairs (by index) in units of one length, each about UNIT_RUNS patched runs.
fn units(pairs: &[TokenizedPair], layout: &Layout, sites: &[PatchSite]) -> Vec<Vec<usize>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    by_len
        .into_iter()
        .flat_map(|(len, idx)| {
            let per_unit = (UNIT_RUNS / runs_per_pair(layout, sites, len).max(1)).clamp(1, 256);
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
        skipped: Vec::new(),
        shard: None,
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

/// Combines finished shards of one run into `out`: arrays concatenated along the pair axis, equal
/// to the unsharded run's.
pub fn merge(shards: &[std::path::PathBuf], out: &std::path::Path) -> Result<Manifest> {
    let mut parts: Vec<(std::path::PathBuf, Manifest, ShardInfo)> = Vec::new();
    for dir in shards {
        if dir.join(sink::PROGRESS).exists() {
            bail!("{} is unfinished: run it again with --resume", dir.display());
        }
        let m = Manifest::read(dir)?;
        let info = m.shard.clone().with_context(|| format!("{} is not a shard (its manifest has no shard)", dir.display()))?;
        parts.push((dir.clone(), m, info));
    }
    parts.sort_by_key(|p| p.2.index);
    let count = parts.first().context("no shards to merge")?.2.count;
    let have: Vec<usize> = parts.iter().map(|p| p.2.index).collect();
    if have != (0..count).collect::<Vec<_>>() {
        bail!("shards {have:?} given, but the run has shards 0..{count}: each exactly once");
    }
    // Everything but the shard, its pairs and its batch size must be the same run. (Shards batched
    // alike, e.g. with one --max-rows, merge byte-identical to the unsharded run; otherwise equal
    // to float rounding.)
    let same = |m: &Manifest| Manifest { pairs: vec![], shard: None, sites: vec![], max_rows: 0, ..m.clone() };
    let mut merged = parts[0].1.clone();
    for (dir, m, info) in &parts[1..] {
        if same(m) != same(&merged) || info.pairs_total != parts[0].2.pairs_total {
            bail!("{} belongs to a different run than {}", dir.display(), parts[0].0.display());
        }
    }
    let total = parts[0].2.pairs_total;
    let mut slots: Vec<Option<PairEntry>> = vec![None; total];
    for (dir, m, info) in &parts {
        for (&g, p) in info.pairs.iter().zip(&m.pairs) {
            if g >= total || slots[g].replace(p.clone()).is_some() {
                bail!("{} claims pair {g} of {total}, which another shard holds or which does not exist", dir.display());
            }
        }
    }
    merged.pairs = slots.into_iter().enumerate().map(|(g, p)| p.with_context(|| format!("no shard holds pair {g}"))).collect::<Result<_>>()?;
    merged.shard = None;
    std::fs::create_dir_all(out)?;
    let files: Vec<String> = merged.sites.iter().map(|s| s.file.clone()).chain([merged.baseline_clean.clone(), merged.baseline_corrupted.clone()]).collect();
    for file in &files {
        let mut data = Vec::new();
        let mut shape = Vec::new();
        for (dir, _, info) in &parts {
            let (d, s) = sink::read_npy(&dir.join(file))?;
            let per_pair: usize = s[1..].iter().product();
            if data.is_empty() {
                data = vec![f32::NAN; total * per_pair];
            }
            for (k, &g) in info.pairs.iter().enumerate() {
                data[g * per_pair..][..per_pair].copy_from_slice(&d[k * per_pair..][..per_pair]);
            }
            shape = s;
        }
        shape[0] = total;
        sink::write_npy(&out.join(file), &shape, &data)?;
    }
    for site in &mut merged.sites {
        site.shape[0] = total;
    }
    let lengths: Vec<i32> = merged.pairs.iter().map(|p| p.length as i32).collect();
    sink::write_npy(&out.join(&merged.lengths), &[total], &lengths)?;
    // The manifest last: a directory with one is complete.
    sink::write_manifest(out, &merged)?;
    Ok(merged)
}
