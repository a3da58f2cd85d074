//! Attribution patching: the linear estimate of every patched run at once. Where the exact engine
//! computes the metric of the corrupted run with a slice S of one activation a overwritten by the
//! clean run's, attribution estimates it as
//!
//! ```text
//! metric(corrupted) + Σ_S (a_clean − a_corrupted) · ∂metric/∂a   (on the corrupted run)
//! ```
//!
//! With another ablation a_clean is its source (zeros, means), and noising swaps the two runs
//! (`ablation`), as for exact runs.
//!
//! From one clean forward pass, one corrupted forward pass and one backward pass per group of
//! pairs (burn's Autodiff backend), whatever the number of sites: each activation site gets a zero
//! leaf added to it (`a + δ`), so ∂metric/∂δ is the total derivative at that site with every later
//! site still on the gradient's path. Same rows, same result layout as the exact engine.
use super::ablation::Patching;
use super::metric::Metric;
use super::plan::{Layout, PatchSite, Row, Runs};
use super::run::{last_position_metric, PairResult};
use super::Patcher;
use crate::backend::float_options;
use crate::data::TokenizedPair;
use crate::model::sites::rank4;
use crate::model::{Cache, Gpt2, Hooks, Site, SiteKind};
use anyhow::{bail, ensure, Result};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use std::collections::{BTreeSet, HashMap};

pub struct Attribution<'m, B: AutodiffBackend> {
    pub model: &'m Gpt2<B>,
    /// Pairs per forward and backward pass, at most.
    pub max_pairs: usize,
    /// Write the corrupted baseline for the provable no-op rows (their estimate is it too: the
    /// clean and corrupted activations are equal there).
    pub skip: bool,
    pub metric: Metric,
    /// What the patched slices are written from (resample: the clean run).
    pub patching: Patching,
}

/// Adds a zero leaf to each wanted activation of a plain forward pass and keeps both: the
/// activation (corrupted) and the leaf, whose gradient is the metric's derivative there.
struct Leaves<B: AutodiffBackend> {
    want: Vec<Site>,
    /// Per site, rank 4 as `Cache` stores it: the activation (no graph) and the leaf.
    acts: HashMap<Site, (Tensor<B::InnerBackend, 4>, Tensor<B, 4>)>,
}

impl<B: AutodiffBackend> Hooks<B> for Leaves<B> {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        assert_eq!(segment, 0, "attribution runs plain forward passes (one segment)");
        let dims = act.dims();
        let leaf = Tensor::<B, 4>::zeros(rank4(&dims), float_options::<B>(&act.device())).require_grad();
        self.acts.insert(site, (act.clone().reshape(rank4(&dims)).inner(), leaf.clone()));
        act + leaf.reshape(dims)
    }

    fn wants(&self, site: Site) -> bool {
        self.want.contains(&site)
    }
}

/// One site kind's (clean − corrupted) · gradient at every layer, on the host, reduced as far as
/// every row of the kind allows: [pairs, layers, positions] residual-shaped, [pairs, layers,
/// positions, heads] per head (summed over d_head), [pairs, layers, heads, dest, src] patterns.
struct Terms {
    values: Vec<f32>,
    /// The shape after the pair axis.
    shape: Vec<usize>,
}

impl Terms {
    fn at(&self, pair: usize, index: &[usize]) -> f64 {
        let i = index.iter().zip(&self.shape).fold(pair, |acc, (&i, &n)| acc * n + i);
        self.values[i] as f64
    }
}

impl<B: AutodiffBackend> Attribution<'_, B> {
    /// Every computed row's estimate on one group of pairs of one length, and the baselines.
    fn group(&self, pairs: &[TokenizedPair], kinds: &[SiteKind], rows: &[Row]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let m = self.model;
        let layers = m.config.n_layer;
        let want: Vec<Site> = (0..layers).flat_map(|l| kinds.iter().map(move |&k| Site::new(k, l))).collect();
        let ids = m.tokens(&pairs.iter().map(|p| vec![p.answer, p.distractor]).collect::<Vec<_>>())?;
        let mut clean = Cache::new(want.clone());
        let clean_rows: Vec<Vec<u32>> = pairs.iter().map(|p| p.clean.clone()).collect();
        let clean_metric = last_position_metric(m, self.metric, true, m.resid_final(m.tokens(&clean_rows)?, &mut clean), ids.clone());
        let source = self.patching.source(&clean);
        let mut leaves = Leaves { want, acts: HashMap::new() };
        let corrupted_rows: Vec<Vec<u32>> = pairs.iter().map(|p| p.corrupted.clone()).collect();
        let corrupted_metric = last_position_metric(m, self.metric, true, m.resid_final(m.tokens(&corrupted_rows)?, &mut leaves), ids);
        // Pairs are independent rows of the batch: the gradient of the sum is each pair's own.
        let grads = corrupted_metric.clone().sum().backward();
        let mut terms: HashMap<SiteKind, Terms> = HashMap::new();
        for &kind in kinds {
            let per_layer: Vec<Tensor<B::InnerBackend, 4>> = (0..layers)
                .map(|l| {
                    let site = Site::new(kind, l);
                    let (corrupted, leaf) = &leaves.acts[&site];
                    let delta = source.heads(site).expect("the source holds every site").inner() - corrupted.clone();
                    // No gradient: the site cannot reach the metric.
                    match leaf.grad(&grads) {
                        Some(g) => delta * g,
                        None => delta.zeros_like(),
                    }
                })
                .collect();
            // [pairs, layers, ...] in one transfer per kind.
            let t = Tensor::stack::<5>(per_layer, 1);
            let t = if kind == SiteKind::Pattern { t } else { t.sum_dim(4) };
            let dims = t.dims();
            let values = t.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("reading attribution terms: {e:?}"))?;
            // Residual-shaped activations are stored [.., positions, 1, d]: drop the unit head axis.
            let shape = match kind {
                SiteKind::Pattern => dims[1..].to_vec(),
                k if k.in_attention() => dims[1..4].to_vec(),
                _ => dims[1..3].to_vec(),
            };
            terms.insert(kind, Terms { values, shape });
        }
        let read = |t: &Tensor<B, 2>| t.clone().into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("reading the metric: {e:?}"));
        let (clean, corrupted) = (read(&clean_metric)?, read(&corrupted_metric)?);
        let len = pairs[0].len();
        let estimates = rows.iter().map(|r| corrupted[r.pair] + estimate(&terms[&r.site.kind()], r, len) as f32).collect();
        Ok((clean, corrupted, estimates))
    }
}

/// Σ over the row's slice of (clean − corrupted) · gradient, from its kind's terms.
fn estimate(t: &Terms, r: &Row, len: usize) -> f64 {
    let (p, l) = (r.pair, r.layer);
    let positions: Vec<usize> = r.pos.map_or_else(|| (0..len).collect(), |p| vec![p]);
    match (r.site.kind(), r.head) {
        (SiteKind::Pattern, Some(h)) => {
            // Masked entries (source after destination) are 0 in both runs: their terms are 0.
            let sources: Vec<usize> = r.src.map_or_else(|| (0..len).collect(), |s| vec![s]);
            positions.iter().flat_map(|&d| sources.iter().map(move |&s| t.at(p, &[l, h, d, s]))).sum()
        }
        (_, Some(h)) => positions.iter().map(|&pos| t.at(p, &[l, pos, h])).sum(),
        (_, None) => positions.iter().map(|&pos| t.at(p, &[l, pos])).sum(),
    }
}

impl<B: AutodiffBackend> Patcher for Attribution<'_, B> {
    fn run(&self, pairs: &[TokenizedPair], sites: &[PatchSite], layout: &Layout, progress: &mut dyn FnMut(Runs) -> Result<()>) -> Result<Vec<PairResult>> {
        ensure!(!pairs.is_empty(), "no pairs to run");
        if let Some(s) = sites.iter().find(|s| s.is_path()) {
            bail!("--method attribution estimates overwrites of one activation; {} is a path (use --method exact)", s.name());
        }
        let kinds: Vec<SiteKind> = sites.iter().map(|s| s.kind()).collect::<BTreeSet<_>>().into_iter().collect();
        let mut results = Vec::with_capacity(pairs.len());
        for group in pairs.chunks(self.max_pairs.max(1)) {
            let (rows, noops) = layout.batch_rows(group, sites, self.patching.skips(self.skip))?;
            let mut blocks: Vec<Vec<Vec<f32>>> = vec![sites.iter().map(|&s| vec![f32::NAN; layout.per_pair_len(s)]).collect(); group.len()];
            progress(Runs { computed: 0, skipped: noops.len() })?;
            let batch: Vec<Row> = rows.iter().map(|(_, r)| *r).collect();
            let (clean, corrupted, estimates) = self.group(group, &kinds, &batch)?;
            for (si, r) in noops {
                blocks[r.pair][si][r.out] = corrupted[r.pair];
            }
            for ((si, r), v) in rows.iter().zip(estimates) {
                blocks[r.pair][*si][r.out] = v;
            }
            results.extend(blocks.into_iter().enumerate().map(|(i, sites)| PairResult { clean: clean[i], corrupted: corrupted[i], sites }));
            progress(Runs { computed: rows.len(), skipped: 0 })?;
        }
        Ok(results)
    }
}
