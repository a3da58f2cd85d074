//! A whole run: pairs grouped into units of equal length, each unit's patched runs through the
//! engine, results written into the results directory's transaction; the manifest describing the
//! run; a shard's part of it (`shard`), batches sized by `memory`.
use crate::data::{self, Skipped, TokenizedPair};
use crate::engine::budget::{max_pairs_for_budget, max_rows_for_budget};
use crate::engine::{Ablation, Attribution, Direction, EdgeBlocks, Engine, Layout, Means, Method, Metric, Noising, PatchSite, RowEngine, Replacement, Runs};
use crate::model::{Transformer, ModelConfig};
use super::memory::{memory_limits, nominal_memory_limits};
use super::shard::Shard;
use super::{Model, ModelOnBackend, Progress};
use crate::model::SiteKind;
use crate::results::{self, Array, Begin, Manifest, MeansEntry, Mode, PairEntry, ShardInfo, SiteEntry, Writer};
use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::prelude::Backend;
use std::path::PathBuf;

/// The model a sweep runs, which fixes its method: attribution needs burn's Autodiff backend
/// over the chosen one.
pub enum SweepModel<'m, B: Backend> {
    Exact(&'m Transformer<B>),
    /// With integrated gradients' step count (EAP-IG).
    Attribution(&'m Transformer<Autodiff<B>>, Option<usize>),
}

impl<'m, B: Backend> SweepModel<'m, B> {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Exact(m) => &m.config,
            Self::Attribution(m, _) => &m.config,
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Self::Exact(_) => Method::Exact,
            Self::Attribution(_, None) => Method::Attribution,
            Self::Attribution(_, Some(_)) => Method::EapIg,
        }
    }

    pub fn ig_steps(&self) -> Option<usize> {
        match self {
            Self::Attribution(_, steps) => *steps,
            Self::Exact(_) => None,
        }
    }

    /// The model `method` needs: the plain one, or its Autodiff twin (EAP-IG: with `ig_steps`).
    pub fn of(on: &ModelOnBackend<'m, B>, method: Method, ig_steps: Option<usize>) -> Result<Self> {
        Ok(match method {
            Method::Exact => Self::Exact(on.model),
            Method::Attribution => Self::Attribution(on.autodiff()?, None),
            Method::EapIg => Self::Attribution(on.autodiff()?, Some(ig_steps.unwrap_or(crate::engine::DEFAULT_IG_STEPS))),
        })
    }

    /// Its row engine, batching `max_rows` patched runs (attribution: pairs) a pass, writing
    /// `replacement`'s source in `direction`.
    pub fn row_engine(&self, reuse: bool, skip: bool, metric: Metric, max_rows: usize, direction: Direction, replacement: Replacement) -> Box<dyn RowEngine + 'm> {
        let denoising: Box<dyn RowEngine + 'm> = match *self {
            Self::Exact(model) => Box::new(Engine { model, reuse, max_rows, skip, metric, replacement }),
            Self::Attribution(model, ig_steps) => Box::new(Attribution { model, max_pairs: max_rows, skip, metric, replacement, ig_steps }),
        };
        match direction {
            Direction::Denoising => denoising,
            Direction::Noising => Box::new(Noising(denoising)),
        }
    }

    /// `Means::compute` on this model.
    fn means(&self, prompts: &[&[u32]], kinds: &[SiteKind], positional: bool, layout: &Layout, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Means> {
        match self {
            Self::Exact(m) => Means::compute(*m, prompts, kinds, positional, layout, progress),
            Self::Attribution(m, _) => Means::compute(*m, prompts, kinds, positional, layout, progress),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    pub sites: Vec<PatchSite>,
    /// The sending heads [layer, head] of path sites; None: every head.
    pub senders: Option<Vec<[usize; 2]>>,
    pub reuse: bool,
    /// Write the corrupted baseline for provable no-op runs instead of computing them.
    pub skip: bool,
    pub metric: Metric,
    /// Which run patches go into, and what they write.
    pub direction: Direction,
    pub ablation: Ablation,
    /// The prompts were tokenized with `<|endoftext|>` in front (recorded in the manifest).
    pub prepend_bos: bool,
    /// Patched runs per forward pass; None chooses from the memory budget.
    pub max_rows: Option<usize>,
    /// The results directory; None keeps the arrays in memory (`SweepSummary::arrays`).
    pub out: Option<PathBuf>,
    pub resume: bool,
    pub overwrite: bool,
    pub shard: Option<Shard>,
}

pub struct SweepSummary {
    pub pairs: usize,
    /// Runs done by this invocation (a resumed run's earlier units excluded).
    pub runs: Runs,
    pub seconds: f64,
    pub manifest: Manifest,
    /// Without a results directory: the arrays, in the manifest's order (sites, then the clean
    /// and corrupted baselines).
    pub arrays: Option<Vec<Vec<f32>>>,
}

/// Patched runs per pair of `len` tokens over `sites`.
fn runs_per_pair(layout: &Layout, sites: &[PatchSite], len: usize) -> usize {
    sites.iter().map(|&s| layout.run_count(s, len)).sum()
}

/// Runs `all` pairs (or the spec's shard of them); `skipped` is reported in the manifest.
pub fn sweep<B: Backend>(model: SweepModel<B>, handle: &Model, all: &[TokenizedPair], skipped: &[Skipped], spec: &SweepSpec, progress: &mut dyn Progress) -> Result<SweepSummary> {
    let backend = &handle.backend;
    anyhow::ensure!(!all.is_empty(), "no pairs to run");
    let c = model.config();
    // Laid out by the whole run's longest pair, so shards merge into the unsharded arrays.
    let positions = all.iter().map(TokenizedPair::len).max().unwrap();
    let layout = Layout { senders: spec.senders.clone(), ..Layout::of(c, positions) };
    for site in &spec.sites {
        c.check_site(site.kind()).with_context(|| format!("--sites {}", site.name()))?;
    }
    let all_units = units(all, &layout, &spec.sites);
    // A shard takes a range of the units (pairs), or, where there are fewer units than shards, of
    // an exact edge run the graph's edges for every pair: at MIB's scale one pair is more rows than
    // a short job runs.
    let by_edges = spec.shard.is_some_and(|s| all_units.len() < s.count) && model.method() == Method::Exact && spec.sites.iter().all(|&s| s == PatchSite::Edges);
    // Shards of the graph batch alike wherever they run: their default batch is the backend's
    // nominal memory's, not this machine's free memory (the shards are cut at `EdgeBlocks`).
    let (budget, buffer) = if by_edges { nominal_memory_limits(backend) } else { memory_limits(backend) };
    // A resumed run batches as it did before it was cut, so its files come out byte-identical.
    let previous = spec.out.as_deref().filter(|_| spec.resume).and_then(results::run_in).map(|m| m.max_rows);
    let max_rows = spec.max_rows.or(previous).unwrap_or_else(|| match model.method() {
        Method::Exact => max_rows_for_budget(c, positions, budget, buffer, !spec.reuse),
        Method::Attribution | Method::EapIg => max_pairs_for_budget(c, positions, budget, buffer, spec.metric.needs_vocab()),
    });
    let means = match spec.ablation.needs_means() {
        true => Some(std::sync::Arc::new(ablation_means(&model, all, spec, &layout, progress)?)),
        false => None,
    };
    let layout = match spec.shard {
        Some(s) if by_edges => {
            let (edges, blocks) = (layout.run_count(PatchSite::Edges, positions), EdgeBlocks::new(max_rows));
            let count = blocks.count(edges);
            if count < s.count {
                bail!("--shard {}/{}: the graph's {edges} edges make {count} batches of --max-rows {max_rows}, fewer than the shards; use at most {count} shards or a smaller --max-rows", s.index, s.count);
            }
            Layout { edges: Some(blocks.edges(s.units(count), edges)), ..layout }
        }
        _ => layout,
    };
    let units = match spec.shard {
        Some(s) if !by_edges => &all_units[s.units(all_units.len())],
        _ => &all_units[..],
    };
    // This run's array rows: its pairs in the whole run's order.
    let mut mine: Vec<usize> = units.iter().flatten().copied().collect();
    mine.sort_unstable();
    let row_of = |global: usize| mine.binary_search(&global).expect("a unit's pair is this run's");
    let pairs: Vec<TokenizedPair> = mine.iter().map(|&i| all[i].clone()).collect();
    let mut manifest = manifest(&model, handle, &pairs, spec, layout.clone(), max_rows);
    manifest.dataset = results::fingerprint(&(all, skipped));
    manifest.skipped = skipped.to_vec();
    manifest.shard = spec.shard.map(|s| ShardInfo { index: s.index, count: s.count, pairs: mine.clone(), pairs_total: all.len(), edges: layout.edges });
    manifest.ablation_means = means.iter().flat_map(|m| m.kinds.iter()).map(|(k, (shape, v))| MeansEntry { kind: k.name().into(), file: crate::results::manifest::ablation_means_file(*k), shape: shape.clone(), xxh3: MeansEntry::hash(v) }).collect();
    let replacement = Replacement { ablation: spec.ablation, means: means.clone() };
    let skip = replacement.skips(spec.skip);
    let runs_of = |p: &TokenizedPair| Runs::of_pair(&layout, &spec.sites, &p.clean, &p.corrupted, skip);
    for p in &pairs {
        manifest.runs += runs_of(p);
    }

    let mut sink = match &spec.out {
        None => Sink::Memory(manifest.arrays().iter().take(manifest.sites.len() + 2).map(|a| vec![f32::NAN; a.shape.iter().product()]).collect()),
        Some(out) => match results::begin(out, &manifest, units.len(), Mode { resume: spec.resume, overwrite: spec.overwrite })? {
            Begin::Write(mut writer) => {
                // Written again on every resume: the same values (the manifest holds their hash).
                for (i, (_, (_, values))) in means.iter().flat_map(|m| m.kinds.iter()).enumerate() {
                    writer.write(Array::Means(i), 0, values)?;
                }
                Sink::Dir(writer)
            }
            Begin::Finished => {
                eprintln!("{} is already complete: nothing to resume", out.display());
                return Ok(SweepSummary { pairs: pairs.len(), runs: Runs::default(), seconds: 0.0, manifest, arrays: None });
            }
        },
    };

    // The count is every run, computed or skipped; the note, the skipped ones.
    progress.start(manifest.runs.total() as u64, "runs");
    let mut shown = Runs::default();
    let mut show = |r: Runs| {
        shown += r;
        if r.skipped > 0 {
            progress.note(&format!("({} no-ops skipped)", shown.skipped));
        }
        progress.advance(r.total() as u64)
    };
    let engine = model.row_engine(spec.reuse, spec.skip, spec.metric, max_rows, spec.direction, replacement);
    let started = std::time::Instant::now();
    let mut ran = Runs::default();
    for (u, unit) in units.iter().enumerate() {
        let mut unit_runs = Runs::default();
        for &i in unit {
            unit_runs += runs_of(&all[i]);
        }
        if sink.is_done(u) {
            show(unit_runs)?;
            continue;
        }
        let unit_pairs: Vec<TokenizedPair> = unit.iter().map(|&i| all[i].clone()).collect();
        let results = engine.run(&unit_pairs, &spec.sites, &layout, &mut show)?;
        for (&g, r) in unit.iter().zip(results) {
            let i = row_of(g);
            sink.write(Array::BaselineClean, i, &[r.clean])?;
            sink.write(Array::BaselineCorrupted, i, &[r.corrupted])?;
            for (si, values) in r.sites.iter().enumerate() {
                sink.write(Array::Site(si), i * values.len(), values)?;
            }
        }
        sink.finish_unit(u)?;
        ran += unit_runs;
    }
    progress.finish();
    let arrays = match sink {
        Sink::Dir(writer) => {
            writer.commit()?;
            manifest.kernels_excluded = crate::backend::kernels_excluded();
            if let (Some(out), false) = (&spec.out, manifest.kernels_excluded.is_empty()) {
                results::update_finished(out, &manifest)?;
            }
            None
        }
        Sink::Memory(arrays) => Some(arrays),
    };
    Ok(SweepSummary { pairs: pairs.len(), runs: ran, seconds: started.elapsed().as_secs_f64(), manifest, arrays })
}

/// The means a mean ablation writes, over every source prompt of the whole run (all shards'): read
/// back from the run being resumed when it holds them whole, else computed in one pass.
fn ablation_means<B: Backend>(model: &SweepModel<B>, all: &[TokenizedPair], spec: &SweepSpec, layout: &Layout, progress: &mut dyn Progress) -> Result<Means> {
    let positional = spec.ablation == Ablation::MeanPositional;
    if positional {
        if let Some(other) = all.iter().find(|p| p.len() != all[0].len()) {
            bail!(
                "--ablation mean-positional needs pairs of one length: the pair of row {} has {} tokens, that of row {} {} (use --ablation mean, or one template's pairs)",
                all[0].row,
                all[0].len(),
                other.row,
                other.len()
            );
        }
    }
    let mut kinds: Vec<SiteKind> = spec.sites.iter().flat_map(|s| s.clean_reads()).collect();
    kinds.sort();
    kinds.dedup();
    if let Some(means) = spec.out.as_deref().filter(|_| spec.resume).and_then(|dir| stored_means(dir, spec, &kinds)) {
        return Ok(means);
    }
    let prompts: Vec<&[u32]> = all.iter().map(|p| spec.direction.source(p)).collect();
    progress.start(prompts.len() as u64, "prompts (ablation means)");
    let means = super::counted(progress, |advance| model.means(&prompts, &kinds, positional, layout, advance))?;
    Ok(means)
}

/// The means of an earlier start of this run in `dir`, if they are there whole (the hashes listed).
fn stored_means(dir: &std::path::Path, spec: &SweepSpec, kinds: &[SiteKind]) -> Option<Means> {
    let m = results::run_in(dir)?;
    let listed: Vec<&str> = m.ablation_means.iter().map(|e| e.kind.as_str()).collect();
    if m.ablation != spec.ablation || m.direction != spec.direction || listed != kinds.iter().map(|k| k.name()).collect::<Vec<_>>() {
        return None;
    }
    results::read_means(dir, &m, false).or_else(|_| results::read_means(dir, &m, true)).ok().flatten()
}

/// Where a sweep's values go: a results directory's transaction, or arrays in memory (the
/// manifest's order: sites, then the clean and corrupted baselines).
enum Sink {
    Dir(Writer),
    Memory(Vec<Vec<f32>>),
}

impl Sink {
    fn is_done(&self, unit: usize) -> bool {
        matches!(self, Sink::Dir(w) if w.is_done(unit))
    }

    fn write(&mut self, array: Array, offset: usize, values: &[f32]) -> Result<()> {
        match self {
            Sink::Dir(w) => w.write(array, offset, values),
            Sink::Memory(arrays) => {
                let sites = arrays.len() - 2;
                let index = match array {
                    Array::Site(i) => i,
                    Array::BaselineClean => sites,
                    Array::BaselineCorrupted => sites + 1,
                    Array::Means(_) => return Ok(()),
                };
                arrays[index][offset..offset + values.len()].copy_from_slice(values);
                Ok(())
            }
        }
    }

    fn finish_unit(&mut self, unit: usize) -> Result<()> {
        match self {
            Sink::Dir(w) => w.finish_unit(unit),
            Sink::Memory(_) => Ok(()),
        }
    }
}

/// Patched runs per unit of work (a unit is what resume and shards count in), whatever the
/// machine: the same dataset gives the same units everywhere.
const UNIT_RUNS: usize = 4096;

/// Pairs (by index) in units of one length, each about UNIT_RUNS patched runs.
fn units(pairs: &[TokenizedPair], layout: &Layout, sites: &[PatchSite]) -> Vec<Vec<usize>> {
    data::by_length(pairs.iter().map(TokenizedPair::len))
        .into_iter()
        .flat_map(|(len, idx)| {
            let per_unit = (UNIT_RUNS / runs_per_pair(layout, sites, len).max(1)).clamp(1, 256);
            idx.chunks(per_unit).map(<[usize]>::to_vec).collect::<Vec<_>>()
        })
        .collect()
}

fn manifest<B: Backend>(model: &SweepModel<B>, handle: &Model, pairs: &[TokenizedPair], spec: &SweepSpec, layout: Layout, max_rows: usize) -> Manifest {
    Manifest {
        patchbay_version: env!("CARGO_PKG_VERSION").into(),
        model: handle.id().into(),
        weights: handle.fingerprint.clone(),
        config: model.config().clone(),
        backend: handle.backend.clone(),
        method: model.method(),
        ig_steps: model.ig_steps(),
        reuse: spec.reuse,
        skip: spec.skip,
        runs: Runs::default(),
        max_rows,
        metric: spec.metric.describe().into(),
        metric_name: spec.metric,
        prepend_bos: spec.prepend_bos,
        bos: (handle.tokenizer.lead(spec.prepend_bos) > 0).then(|| handle.tokenizer.bos().ok()).flatten(),
        direction: spec.direction,
        ablation: spec.ablation,
        ablation_means: vec![],
        layout: layout.clone(),
        sites: spec
            .sites
            .iter()
            .map(|&s| SiteEntry {
                name: s.name().into(),
                file: crate::results::manifest::site_file(s.name()),
                axes: s.axes().into_iter().map(String::from).collect(),
                shape: [vec![pairs.len()], layout.per_pair(s)].concat(),
                hook: match s {
                    PatchSite::Edges => "each edge's receiver input: blocks.{layer}.attn.hook_{q,k,v}_input (one head's), blocks.{layer}.hook_mlp_in, ln_final's input".into(),
                    _ => s.kind().hook_name("{layer}"),
                },
                edges: match s {
                    PatchSite::Edges => layout.graph().edges.iter().map(ToString::to_string).collect(),
                    _ => vec![],
                },
            })
            .collect(),
        baseline_clean: crate::results::manifest::BASELINE_CLEAN.into(),
        baseline_corrupted: crate::results::manifest::BASELINE_CORRUPTED.into(),
        lengths: crate::results::manifest::LENGTHS.into(),
        dataset: String::new(),
        skipped: Vec::new(),
        shard: None,
        verify: None,
        kernels_excluded: vec![],
        pairs: pairs.iter().map(|p| PairEntry::new(p, &handle.tokenizer)).collect(),
    }
}
