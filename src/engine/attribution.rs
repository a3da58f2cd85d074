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
//!
//! Edges (EAP, Syed et al. 2023, as hannamw/EAP-IG computes it): an edge u → v's estimate is
//! (source − corrupted output of u) · ∂metric/∂(v's input), summed over positions and the model
//! dimension, for every edge from the same passes. Integrated gradients (`ig_steps`, EAP-IG's
//! default variant, Hanna et al. 2024) average that gradient over runs with interpolated input
//! embeddings; with noising its points, differences and gradients are EAP-IG's own.
use super::ablation::Replacement;
use super::graph::{Edge, Node};
use super::metric::Metric;
use super::plan::{Layout, PairResult, Row, Runs};
use super::site::PatchSite;
use super::run::last_position_metric;
use super::RowEngine;
use crate::backend::{float_options, matmul};
use crate::data::TokenizedPair;
use crate::model::sites::rank4;
use crate::model::{Cache, Transformer, Hooks, Site, SiteKind};
use anyhow::{bail, ensure, Result};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use std::collections::{BTreeSet, HashMap};

pub struct Attribution<'m, B: AutodiffBackend> {
    pub model: &'m Transformer<B>,
    /// Pairs per forward and backward pass, at most.
    pub max_pairs: usize,
    /// Write the corrupted baseline for the provable no-op rows (their estimate is it too: the
    /// clean and corrupted activations are equal there).
    pub skip: bool,
    pub metric: Metric,
    /// What the patched slices are written from (resample: the clean run).
    pub replacement: Replacement,
    /// Integrated gradients (EAP-IG's variant, over the token embeddings): the gradient averaged
    /// over this many runs whose embeddings step from the source's towards the corrupted run's
    /// (EAP-IG's points: source + (k/n)·(corrupted − source), k = 0..n−1). None: the corrupted run's.
    pub ig_steps: Option<usize>,
}

/// Adds a zero leaf to each wanted activation of a plain forward pass and keeps both: the
/// activation (corrupted) and the leaf, whose gradient is the metric's derivative there. With
/// `input`, the token embeddings (`hook_embed`) are replaced by it first.
struct Leaves<B: AutodiffBackend> {
    want: Vec<Site>,
    input: Option<Tensor<B, 4>>,
    /// Per site, rank 4 as `Cache` stores it: the activation (no graph) and the leaf.
    acts: HashMap<Site, (Tensor<B::InnerBackend, 4>, Tensor<B, 4>)>,
}

impl<B: AutodiffBackend> Hooks<B> for Leaves<B> {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        assert_eq!(segment, 0, "attribution runs plain forward passes (one segment)");
        let dims = act.dims();
        let act = match self.input.take() {
            Some(input) if site == Site::new(SiteKind::Embed, 0) => input.reshape(dims),
            other => {
                self.input = other;
                act
            }
        };
        let leaf = Tensor::<B, 4>::zeros(rank4(&dims), float_options::<B>(&act.device())).require_grad();
        self.acts.insert(site, (act.clone().reshape(rank4(&dims)).inner(), leaf.clone()));
        act + leaf.reshape(dims)
    }

    fn wants(&self, site: Site) -> bool {
        self.want.contains(&site) || (self.input.is_some() && site == Site::new(SiteKind::Embed, 0))
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
    fn group(&self, pairs: &[TokenizedPair], sites: &[PatchSite], rows: &[Row]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let m = self.model;
        let layers = m.config.layers;
        let all = |kinds: &[SiteKind]| -> Vec<Site> { (0..layers).flat_map(|l| kinds.iter().map(move |&k| Site::new(k, l))).collect() };
        // The overwritten sites' kinds; edges read their senders' outputs and their receivers' gradients.
        let kinds: Vec<SiteKind> = sites.iter().filter(|s| !s.is_path()).map(|s| s.kind()).collect::<BTreeSet<_>>().into_iter().collect();
        let edges = sites.contains(&PatchSite::Edges);
        let mut reads = all(&kinds);
        let mut want = reads.clone();
        if edges {
            reads.extend(all(&PatchSite::Edges.clean_reads()));
            want.extend(all(&[SiteKind::Embed, SiteKind::ResidPre, SiteKind::Z, SiteKind::MlpOut, SiteKind::Q, SiteKind::KHead, SiteKind::VHead, SiteKind::MlpIn]));
            want.push(Site::new(SiteKind::ResidPost, layers - 1));
        }
        if self.ig_steps.is_some() {
            reads.push(Site::new(SiteKind::Embed, 0));
            want.push(Site::new(SiteKind::Embed, 0));
        }
        let ids = m.tokens(&pairs.iter().map(|p| vec![p.answer, p.distractor]).collect::<Vec<_>>())?;
        let mut clean = Cache::new(reads);
        let clean_rows: Vec<Vec<u32>> = pairs.iter().map(|p| p.clean.clone()).collect();
        let clean_metric = last_position_metric(m, self.metric, true, m.resid_final(m.tokens(&clean_rows)?, &mut clean), ids.clone());
        let source = self.replacement.source(&clean);
        let corrupted_rows: Vec<Vec<u32>> = pairs.iter().map(|p| p.corrupted.clone()).collect();
        let corrupted_tokens = m.tokens(&corrupted_rows)?;
        let mut leaves = Leaves { want: want.clone(), input: None, acts: HashMap::new() };
        let corrupted_metric = last_position_metric(m, self.metric, true, m.resid_final(corrupted_tokens.clone(), &mut leaves), ids.clone());
        let inner = |s: Site| source.heads(s).expect("the source holds every site").inner();
        // ∂metric/∂(each wanted activation), and for edges ∂metric/∂(each receiver's input): on
        // the corrupted run, or (integrated gradients) the mean over the runs whose token
        // embeddings are source + (k/n)·(corrupted − source), k < n (EAP-IG's points, at its
        // input node).
        // Edges: the (source − corrupted write) · gradient terms [pairs, senders, receivers]. They
        // are linear in the receivers' gradients, so the passes' gradients are summed and
        // multiplied once; where a norm follows attention (Gemma 2) a head's write goes through
        // that norm's Jacobian at each pass, so each pass's terms are taken and summed instead.
        let per_pass = m.config.post_norms;
        let pass = |step: &Leaves<B>, metric| -> Result<(Grads<B>, Option<Tensor<B::InnerBackend, 3>>)> {
            let (g, r) = self.gradients(step, metric, edges)?;
            Ok((g, r.map(|r| if per_pass { self.edge_terms(&leaves, step, &inner, r) } else { r })))
        };
        let (grads, edge_terms) = match self.ig_steps {
            None => pass(&leaves, corrupted_metric.clone())?,
            Some(n) => {
                let start = Site::new(SiteKind::Embed, 0);
                let (from, to) = (inner(start), leaves.acts[&start].0.clone());
                let mut sum: Option<(Grads<B>, Option<Tensor<B::InnerBackend, 3>>)> = None;
                for k in 0..n {
                    let point = from.clone() + (to.clone() - from.clone()) * (k as f64 / n as f64);
                    let mut step = Leaves { want: want.clone(), input: Some(Tensor::from_inner(point)), acts: HashMap::new() };
                    let metric = last_position_metric(m, self.metric, true, m.resid_final(corrupted_tokens.clone(), &mut step), ids.clone());
                    let (g, r) = pass(&step, metric)?;
                    sum = Some(match sum {
                        None => (g, r),
                        Some((mut gs, rs)) => {
                            for (site, t) in g {
                                let total = gs.remove(&site).map_or(t.clone(), |s| s + t);
                                gs.insert(site, total);
                            }
                            (gs, rs.zip(r).map(|(a, b)| a + b))
                        }
                    });
                }
                let (g, r) = sum.expect("at least one step");
                (g.into_iter().map(|(s, t)| (s, t / n as f64)).collect(), r.map(|t| t / n as f64))
            }
        };
        let mut terms: HashMap<SiteKind, Terms> = HashMap::new();
        for &kind in &kinds {
            let per_layer: Vec<Tensor<B::InnerBackend, 4>> = (0..layers)
                .map(|l| {
                    let site = Site::new(kind, l);
                    (inner(site) - leaves.acts[&site].0.clone()) * grads[&site].clone()
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
        let edge_terms = edge_terms.map(|t| if per_pass { t } else { self.edge_terms(&leaves, &leaves, &inner, t) }).map(host_terms).transpose()?;
        let read = |t: &Tensor<B, 2>| t.clone().into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("reading the metric: {e:?}"));
        let (clean, corrupted) = (read(&clean_metric)?, read(&corrupted_metric)?);
        let len = pairs[0].len();
        let estimates = rows
            .iter()
            .map(|r| {
                let term = match (r.edge, &edge_terms) {
                    (Some(e), Some(t)) => t.at(r.pair, &[sender_index(e.from, m.config.heads), receiver_index(&e, m.config.heads, layers)]),
                    _ => estimate(&terms[&r.site.kind()], r, len),
                };
                corrupted[r.pair] + term as f32
            })
            .collect();
        Ok((clean, corrupted, estimates))
    }

    /// ∂metric/∂(each leaf) of one pass, zeros where the site cannot reach the metric; with
    /// `edges`, also ∂metric/∂(each receiver's input) [pairs, receivers, positions·d] in
    /// `receiver_index`'s order. A head's q (k, v) input is the residual stream before the block's
    /// norm as that input alone reads it (`Block::head_inputs_vjp`).
    fn gradients(&self, leaves: &Leaves<B>, metric: Tensor<B, 2>, edges: bool) -> Result<(Grads<B>, Option<Tensor<B::InnerBackend, 3>>)> {
        // Pairs are independent rows of the batch: the gradient of the sum is each pair's own.
        let grads = metric.sum().backward();
        let grads: HashMap<Site, Tensor<B::InnerBackend, 4>> = leaves.acts.iter().map(|(&site, (act, leaf))| (site, leaf.grad(&grads).unwrap_or_else(|| act.zeros_like()))).collect();
        if !edges {
            return Ok((grads, None));
        }
        let m = self.model;
        let mut receivers = Vec::with_capacity(m.config.layers + 1);
        for (l, block) in m.blocks.iter().enumerate() {
            let [b, s, h, _] = grads[&Site::new(SiteKind::Q, l)].dims();
            let d = leaves.acts[&Site::new(SiteKind::ResidPre, l)].0.dims()[3];
            // On the autodiff model's weights, untracked: the gradients are plain values.
            let site = |kind| Tensor::<B, 4>::from_inner(grads[&Site::new(kind, l)].clone());
            let x = Tensor::<B, 3>::from_inner(leaves.acts[&Site::new(SiteKind::ResidPre, l)].0.clone().reshape([b, s, d]));
            receivers.push(block.head_inputs_vjp(x, [site(SiteKind::Q), site(SiteKind::KHead), site(SiteKind::VHead)]).inner().reshape([b, 3 * h, s * d]));
            receivers.push(flat(grads[&Site::new(SiteKind::MlpIn, l)].clone()));
        }
        receivers.push(flat(grads[&Site::new(SiteKind::ResidPost, m.config.layers - 1)].clone()));
        Ok((grads, Some(Tensor::cat(receivers, 1))))
    }

    /// Every (sender, receiver input) pair's (source − corrupted output) · ∂metric/∂input on one
    /// pass, summed over positions and the model dimension: [pairs, senders, receivers] in
    /// `sender_index` and `receiver_index`'s order. A sender's output: the token embeddings, a
    /// head's z times its rows of W_O (`Block::head_change_linear` of it at the pass's output of
    /// that attention sublayer, through its post-norm where it has one), an MLP's output.
    /// `leaves`: the corrupted run; `pass`: the run the gradients `receivers` are of.
    fn edge_terms(&self, leaves: &Leaves<B>, pass: &Leaves<B>, source: &dyn Fn(Site) -> Tensor<B::InnerBackend, 4>, receivers: Tensor<B::InnerBackend, 3>) -> Tensor<B::InnerBackend, 3> {
        let m = self.model;
        let (layers, heads) = (m.config.layers, m.config.heads);
        let delta = |s: Site| source(s) - leaves.acts[&s].0.clone();
        let mut senders = vec![flat(delta(Site::new(SiteKind::Embed, 0)))];
        for (l, block) in m.blocks.iter().enumerate() {
            let z = Site::new(SiteKind::Z, l);
            let dz = delta(z); // [b, s, h, dh]
            let [b, s, h, _] = dz.dims();
            // On the autodiff model's weights, untracked: plain values.
            let writes = block.attn.head_writes(Tensor::<B, 4>::from_inner(dz)); // [b, h, s, d]
            let pre = || block.attn.output(Tensor::from_inner(pass.acts[&z].0.clone())).unsqueeze_dim::<4>(1);
            let writes = block.head_change_linear(writes, pre).inner();
            let d = writes.dims()[3];
            senders.push(writes.reshape([b, h, s * d]));
            senders.push(flat(delta(Site::new(SiteKind::MlpOut, l))));
        }
        let t = matmul(Tensor::cat(senders, 1), receivers.swap_dims(1, 2)); // [b, U, V]
        debug_assert_eq!(t.dims()[1..], [1 + layers * (heads + 1), layers * (3 * heads + 1) + 1]);
        t
    }
}

/// Per wanted site, the gradient of a pass or their mean.
type Grads<B> = HashMap<Site, Tensor<<B as AutodiffBackend>::InnerBackend, 4>>;

/// Edge terms [pairs, senders, receivers] on the host.
fn host_terms<B: Backend>(t: Tensor<B, 3>) -> Result<Terms> {
    let shape = t.dims()[1..].to_vec();
    let values = t.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("reading edge attribution terms: {e:?}"))?;
    Ok(Terms { values, shape })
}

/// A residual-shaped activation [pairs, s, 1, d] as one sender or receiver: [pairs, 1, s·d].
fn flat<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, s, _, d] = t.dims();
    t.reshape([b, 1, s * d])
}

/// A sender's row in `edge_terms`: the input, then per layer its heads and its MLP.
fn sender_index(node: Node, heads: usize) -> usize {
    match node {
        Node::Input => 0,
        Node::Head { layer, head } => 1 + layer * (heads + 1) + head,
        Node::Mlp(layer) => 1 + layer * (heads + 1) + heads,
        Node::Logits => unreachable!("the logits send to nothing"),
    }
}

/// A receiver input's column in `edge_terms`: per layer each head's q, k, v, then the MLP; last the logits.
fn receiver_index(edge: &Edge, heads: usize, layers: usize) -> usize {
    match (edge.to, edge.qkv) {
        (Node::Head { layer, head }, Some(x)) => layer * (3 * heads + 1) + 3 * head + x.index(),
        (Node::Mlp(layer), _) => layer * (3 * heads + 1) + 3 * heads,
        _ => layers * (3 * heads + 1),
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

impl<B: AutodiffBackend> RowEngine for Attribution<'_, B> {
    fn run(&self, pairs: &[TokenizedPair], sites: &[PatchSite], layout: &Layout, progress: &mut dyn FnMut(Runs) -> Result<()>) -> Result<Vec<PairResult>> {
        ensure!(!pairs.is_empty(), "no pairs to run");
        if let Some(s) = sites.iter().find(|&&s| s.is_path() && s != PatchSite::Edges) {
            bail!("--method attribution estimates overwrites of one activation or edges; {} is a path (use --method exact)", s.name());
        }
        let mut results = Vec::with_capacity(pairs.len());
        for group in pairs.chunks(self.max_pairs.max(1)) {
            let (rows, noops) = layout.batch_rows(group, sites, self.replacement.skips(self.skip))?;
            let mut blocks: Vec<Vec<Vec<f32>>> = vec![sites.iter().map(|&s| vec![f32::NAN; layout.per_pair_len(s)]).collect(); group.len()];
            progress(Runs { computed: 0, skipped: noops.len() })?;
            let batch: Vec<Row> = rows.iter().map(|(_, r)| *r).collect();
            let (clean, corrupted, estimates) = self.group(group, sites, &batch)?;
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
