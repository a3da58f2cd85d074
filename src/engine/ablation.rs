//! What a patched run writes into its slice (the ablation) and which run it writes into (the
//! direction), as the ARENA IOI exercises and Heimersheim & Nanda (arXiv 2404.15255) name them.
//!
//! - Denoising (the default): the corrupted run with the source's activation written in — which
//!   components suffice to restore the clean behaviour. Noising: the clean run with it written in —
//!   which components the behaviour needs. The metric is the pair's logit(answer) −
//!   logit(distractor) either way, and the baselines are the same two runs.
//! - Resample (the default): the other prompt's activation. Zero: zeros. Mean: one vector per site
//!   kind and layer, the mean over every position of every source prompt of the run (a pattern's:
//!   the mean of its rows). Mean-positional: the mean over the source prompts at each position
//!   (pairs of one length). The source prompts are the clean ones when denoising, the corrupted ones
//!   when noising.
//!
//! The engine computes denoising only: noising is denoising of each pair with its prompts swapped
//! (answer and distractor kept) and its baselines swapped back (`Noising`). An ablation replaces
//! the source run's activations by zeros or means (`Replacement::source`), so every site, exact or by
//! attribution, reads one source. Only resample keeps `Row::is_noop` exact: zeros and means
//! differ from the base run before the first differing token too, so with them every row is
//! computed.
use super::plan::{Layout, PairResult, Row, Runs};
use super::site::PatchSite;
use super::RowEngine;
use crate::data::TokenizedPair;
use crate::model::sites::rank4;
use crate::model::{Cache, Hooks, ModelConfig, Site, SiteKind, Transformer};
use anyhow::{bail, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which run a patch is written into (`--direction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Into the corrupted run, from the clean one (what suffices).
    #[default]
    Denoising,
    /// Into the clean run, from the corrupted one (what is needed).
    Noising,
}

/// What a patch writes (`--ablation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ablation {
    /// The other prompt's activation.
    #[default]
    Resample,
    Zero,
    /// The mean over every position of every source prompt, per site kind and layer.
    Mean,
    /// The mean over the source prompts at each position (pairs of one length).
    MeanPositional,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Denoising => "denoising",
            Self::Noising => "noising",
        }
    }

    /// The prompt of `pair` whose activations are written in (and that means average).
    pub fn source(self, pair: &TokenizedPair) -> &[u32] {
        match self {
            Self::Denoising => &pair.clean,
            Self::Noising => &pair.corrupted,
        }
    }
}

impl Ablation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Resample => "resample",
            Self::Zero => "zero",
            Self::Mean => "mean",
            Self::MeanPositional => "mean-positional",
        }
    }

    pub fn needs_means(self) -> bool {
        matches!(self, Self::Mean | Self::MeanPositional)
    }

    /// Whether a provable no-op row (`Row::is_noop`) stays one: only when the source run agrees
    /// with the base run before the first differing token.
    pub fn keeps_noops(self) -> bool {
        self == Self::Resample
    }
}

/// What a patched row writes in place of the base run's activation: the ablation kind, and for
/// mean ablations the means.
#[derive(Clone, Debug, Default)]
pub struct Replacement {
    pub ablation: Ablation,
    pub means: Option<Arc<Means>>,
}

impl Replacement {
    /// Whether no-op rows are skipped, given `skip` was asked for.
    pub fn skips(&self, skip: bool) -> bool {
        skip && self.ablation.keeps_noops()
    }

    /// The activations patched rows read, as `clean` (the source prompts' run, [pairs, ...] per
    /// site) holds them: those, zeros, or the means broadcast over pairs (and positions).
    pub fn source<B: Backend>(&self, clean: &Cache<B>) -> Cache<B> {
        match (self.ablation, &self.means) {
            (Ablation::Resample, _) => clean.map(|_, t| t),
            (Ablation::Zero, _) => clean.map(|_, t| t.zeros_like()),
            (_, Some(means)) => clean.map(|site, t| means.broadcast(site, &t).unwrap_or(t)),
            (ablation, None) => panic!("{} ablation without its means", ablation.name()),
        }
    }
}

/// Means of activations over a run's source prompts, per site kind: `[layers, ...]` as
/// `{kind}.ablation_means.npy` holds them (mean: residual-shaped [layers, d], per head [layers,
/// heads, d_head], patterns [layers, heads, keys]; positional: [layers, positions, d], [layers,
/// positions, heads, d_head], [layers, heads, positions, positions]).
#[derive(Clone, Debug, PartialEq)]
pub struct Means {
    pub positional: bool,
    pub kinds: BTreeMap<SiteKind, (Vec<usize>, Vec<f32>)>,
}

/// Source tokens per pass of the means: fixed, so a run, its resume and its shards sum alike.
const MEAN_PASS_TOKENS: usize = 4096;

impl Means {
    /// A kind's means file shape for `layout` (positional means: pairs of `layout.positions`);
    /// k and v have the model's key/value heads.
    fn shape(kind: SiteKind, positional: bool, layout: &Layout, c: &ModelConfig) -> Vec<usize> {
        let (l, t, dh, d) = (layout.layers, layout.positions, c.d_head, c.d_model);
        let h = c.heads_of(kind);
        match (kind, positional) {
            (SiteKind::Pattern, false) => vec![l, h, t],
            (SiteKind::Pattern, true) => vec![l, h, t, t],
            (k, false) if k.in_attention() => vec![l, h, dh],
            (k, true) if k.in_attention() => vec![l, t, h, dh],
            (_, false) => vec![l, d],
            (_, true) => vec![l, t, d],
        }
    }

    /// The means of `kinds` over `prompts` (positional: all of `layout.positions` tokens), in
    /// forward passes of a fixed size; `progress` is told the prompts each pass covered.
    pub fn compute<B: Backend>(model: &Transformer<B>, prompts: &[&[u32]], kinds: &[SiteKind], positional: bool, layout: &Layout, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Self> {
        if positional && prompts.iter().any(|p| p.len() != layout.positions) {
            bail!("mean-positional means need prompts of one length");
        }
        let mut sums: BTreeMap<SiteKind, (Vec<usize>, Vec<f64>)> =
            kinds.iter().map(|&k| (k, { let s = Self::shape(k, positional, layout, &model.config); let n = s.iter().product(); (s, vec![0.0; n]) })).collect();
        let mut count = 0usize;
        for (len, idx) in crate::data::by_length(prompts.iter().map(|p| p.len())) {
            for chunk in idx.chunks((MEAN_PASS_TOKENS / len).max(1)) {
                let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].to_vec()).collect();
                let want = (0..layout.layers).flat_map(|l| kinds.iter().map(move |&k| Site::new(k, l))).collect();
                let mut hook = Sums { want, positional, sums: &mut sums, positions: layout.positions, failed: None };
                model.resid_final(model.tokens(&rows)?, &mut hook);
                if let Some(e) = hook.failed {
                    return Err(e);
                }
                count += if positional { rows.len() } else { rows.len() * len };
                progress(rows.len())?;
            }
        }
        let kinds = sums.into_iter().map(|(k, (shape, s))| (k, (shape, s.into_iter().map(|v| (v / count as f64) as f32).collect()))).collect();
        Ok(Self { positional, kinds })
    }

    /// `act`'s means at `site` broadcast to its shape (rank 4, as `Cache` holds it, the pairs'
    /// length at most the layout's), or None for a kind without means.
    fn broadcast<B: Backend>(&self, site: Site, act: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        let (shape, values) = self.kinds.get(&site.kind)?;
        let dims = act.dims();
        let per_layer: usize = shape[1..].iter().product();
        let data = values[site.layer * per_layer..][..per_layer].to_vec();
        let pattern = site.kind == SiteKind::Pattern;
        // The layer's means as a rank-4 tensor with unit axes where they broadcast.
        let (at, len) = (&shape[1..], if pattern { dims[3] } else { dims[1] });
        let four: [usize; 4] = match (pattern, self.positional, at.len()) {
            (true, false, _) => [1, at[0], 1, at[1]],
            (true, true, _) => [1, at[0], at[1], at[2]],
            (false, false, 1) => [1, 1, 1, at[0]],
            (false, false, _) => [1, 1, at[0], at[1]],
            (false, true, 2) => [1, at[0], 1, at[1]],
            (false, true, _) => [1, at[0], at[1], at[2]],
        };
        let t = Tensor::<B, 4>::from_data(TensorData::new(data, four), crate::backend::float_options::<B>(&act.device()));
        // The pairs' keys (patterns) or positions, of the layout's.
        let t = match (pattern, self.positional) {
            (true, false) => t.narrow(3, 0, len),
            (true, true) => t.narrow(2, 0, len).narrow(3, 0, len),
            (false, true) => t.narrow(1, 0, len),
            (false, false) => t,
        };
        Some(t.expand(dims))
    }
}

/// Adds each wanted site's activations, summed over prompts (and positions), to the host sums.
struct Sums<'a> {
    want: Vec<Site>,
    positional: bool,
    sums: &'a mut BTreeMap<SiteKind, (Vec<usize>, Vec<f64>)>,
    positions: usize,
    failed: Option<anyhow::Error>,
}

impl<B: Backend> Hooks<B> for Sums<'_> {
    fn hook<const D: usize>(&mut self, site: Site, _segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        if !self.want.contains(&site) {
            return act;
        }
        let dims = act.dims();
        let t = act.clone().reshape(rank4(&dims));
        let pattern = site.kind == SiteKind::Pattern;
        // [1, s|1, h, e], or for patterns [1, h, q|1, k].
        let t = match (pattern, self.positional) {
            (_, true) => t.sum_dim(0),
            (false, false) => t.sum_dim(0).sum_dim(1),
            (true, false) => t.sum_dim(0).sum_dim(2),
        };
        let [_, a, b, c] = t.dims();
        let values = match t.into_data().convert::<f32>().to_vec::<f32>() {
            Ok(v) => v,
            Err(e) => {
                self.failed.get_or_insert(anyhow::anyhow!("reading the {} sums: {e:?}", site.kind.hook_name(site.layer)));
                return act;
            }
        };
        let (shape, sums) = self.sums.get_mut(&site.kind).expect("a wanted kind has sums");
        let per_layer: usize = shape[1..].iter().product();
        let layer = &mut sums[site.layer * per_layer..][..per_layer];
        if pattern && !self.positional {
            // [h, keys] of this pass's length into [h, positions].
            for hd in 0..a {
                for k in 0..c {
                    layer[hd * self.positions + k] += values[(hd * b) * c + k] as f64;
                }
            }
        } else {
            for (s, v) in layer.iter_mut().zip(values) {
                *s += v as f64;
            }
        }
        act
    }

    fn wants(&self, site: Site) -> bool {
        self.want.contains(&site)
    }
}

/// Noising by a denoising row engine: each pair's prompts swapped (answer and distractor kept), the
/// baselines swapped back.
pub struct Noising<'m>(pub Box<dyn RowEngine + 'm>);

fn swapped(p: &TokenizedPair) -> TokenizedPair {
    TokenizedPair { clean: p.corrupted.clone(), corrupted: p.clean.clone(), ..p.clone() }
}

impl RowEngine for Noising<'_> {
    fn run(&self, pairs: &[TokenizedPair], sites: &[PatchSite], layout: &Layout, progress: &mut dyn FnMut(Runs) -> Result<()>) -> Result<Vec<PairResult>> {
        let pairs: Vec<TokenizedPair> = pairs.iter().map(swapped).collect();
        let results = self.0.run(&pairs, sites, layout, progress)?;
        Ok(results.into_iter().map(|r| PairResult { clean: r.corrupted, corrupted: r.clean, ..r }).collect())
    }

    fn one(&self, pair: TokenizedPair, row: Row, layout: &Layout) -> Result<f32> {
        self.0.one(swapped(&pair), row, layout)
    }
}
