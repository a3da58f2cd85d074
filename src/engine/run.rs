//! Running the exact engine's patched runs: baselines once per pair, then every row of a chunk
//! stacked into one batch per forward pass. (Attribution, circuits and the read-only passes
//! sequence their own model calls: `attribution`, `circuit`, `crate::circuits`, `crate::generate`.)
//!
//! With `reuse` (the default) a row does no work whose result it already knows: it joins the batch
//! at its patch layer from the corrupted run's residual stream there, computes only the positions
//! from its patch position on (earlier positions attend through the corrupted run's keys and
//! values), carries only the last position past the last block's keys and values, and unembeds
//! only the answer and distractor at the last position. Without it, every
//! row is a full forward pass from the embeddings with full logits at the last position.
//!
//! With `skip` (the default) a row that provably is the corrupted run (`Row::is_noop`: patched
//! before the first differing token, or at equal embeddings) is not computed: its result is the
//! corrupted baseline. Only a resample ablation keeps those rows no-ops (`ablation`).
use super::ablation::Replacement;
use super::metric::Metric;
use super::graph::Node;
use super::plan::{Layout, PairResult, Row, Runs};
use super::site::PatchSite;
use crate::data::TokenizedPair;
use crate::backend::Prefix;
use crate::model::{hook_segments, Batch, Cache, Transformer, Hooks, Qkv, Site, SiteKind};
use anyhow::Result;
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use std::collections::BTreeMap;

pub struct Engine<'m, B: Backend> {
    pub model: &'m Transformer<B>,
    pub reuse: bool,
    /// Patched runs stacked in one forward pass, at most.
    pub max_rows: usize,
    /// Write the corrupted baseline for the no-op rows instead of computing them.
    pub skip: bool,
    pub metric: Metric,
    /// What the patched slices are written from (resample: the clean run).
    pub replacement: Replacement,
}

/// How an edge run is batched: by pair and by block of `max_rows` of the graph's edges, in the
/// graph's order (which is by receiver layer). `Engine::rows_with` batches by these blocks and
/// `jobs::sweep` cuts a shard of the graph's rows at them, so that the shard batches every row
/// exactly as the whole run does and its values are the whole run's bit for bit (a product's
/// rounding may depend on how many rows it holds): the one place both read.
#[derive(Clone, Copy)]
pub struct EdgeBlocks(usize);

impl EdgeBlocks {
    pub fn new(max_rows: usize) -> Self {
        Self(max_rows.max(1))
    }

    /// The block edge `edge` is in.
    pub fn of(self, edge: usize) -> usize {
        edge / self.0
    }

    /// The blocks of a graph of `edges` edges.
    pub fn count(self, edges: usize) -> usize {
        edges.div_ceil(self.0)
    }

    /// The edges `[first, end)` of `blocks`, in a graph of `edges` edges.
    pub fn edges(self, blocks: std::ops::Range<usize>, edges: usize) -> [usize; 2] {
        [(blocks.start * self.0).min(edges), (blocks.end * self.0).min(edges)]
    }
}

/// The clean and corrupted runs of a group of pairs, cached where patched rows need them.
struct Baselines<B: Backend> {
    clean: Cache<B>,
    /// What patched rows write: the clean run's activations, zeros or means.
    source: Cache<B>,
    corrupted: Cache<B>,
    /// [pairs, 2]: answer and distractor ids.
    ids: Tensor<B, 2, Int>,
    len: usize,
}

fn int_tensor<B: Backend>(values: impl IntoIterator<Item = usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = values.into_iter().map(|x| x as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

impl<B: Backend> Engine<'_, B> {
    /// Baselines and every patched run at `sites` for `pairs`, which must share one length.
    /// `progress` is told the skipped runs, then how many runs each finished batch held.
    pub fn run(&self, pairs: &[TokenizedPair], sites: &[PatchSite], layout: &Layout, progress: &mut dyn FnMut(Runs) -> Result<()>) -> Result<Vec<PairResult>> {
        let (rows, noops) = layout.batch_rows(pairs, sites, self.replacement.skips(self.skip))?;
        let base = self.baselines(pairs, sites)?;
        let clean = self.metric(base.clean.resid(Site::new(SiteKind::ResidPost, self.last_layer())).unwrap(), base.ids.clone());
        let corrupted = self.metric(base.corrupted.resid(Site::new(SiteKind::ResidPost, self.last_layer())).unwrap(), base.ids.clone());
        let mut results: Vec<PairResult> = (0..pairs.len())
            .map(|i| PairResult {
                clean: clean[i],
                corrupted: corrupted[i],
                sites: sites.iter().map(|&s| vec![f32::NAN; layout.per_pair_len(s)]).collect(),
            })
            .collect();

        for &(si, row) in &noops {
            results[row.pair].sites[si][row.out] = corrupted[row.pair];
        }
        progress(Runs { computed: 0, skipped: noops.len() })?;
        let batch: Vec<Row> = rows.iter().map(|(_, r)| *r).collect();
        let metrics = self.rows_with(&batch, &base, progress)?;
        for ((si, row), m) in rows.iter().zip(metrics) {
            results[row.pair].sites[*si][row.out] = m;
        }
        Ok(results)
    }

    /// The metric of each of `rows` (any mix of sites, layers, positions, heads) on `pairs`.
    pub fn run_rows(&self, pairs: &[TokenizedPair], rows: &[Row]) -> Result<Vec<f32>> {
        let sites: Vec<PatchSite> = rows.iter().map(|r| r.site).collect();
        let base = self.baselines(pairs, &sites)?;
        self.rows_with(rows, &base, &mut |_| Ok(()))
    }

    /// Rows in chunks of at most `max_rows`, ordered by the layer they join at (so that joining
    /// rows append and a chunk's rows are active over most of its layers); within a chunk, rows
    /// computed from the same position on (with reuse: the patch position) form one segment of
    /// the batch. One segment per position wastes no work: segments share every linear layer's
    /// product, only attention runs per segment (docs/performance.md, "How it is fast", measures
    /// it against wider segments).
    ///
    /// An edge run is batched by `EdgeBlocks` instead.
    fn rows_with(&self, rows: &[Row], base: &Baselines<B>, progress: &mut dyn FnMut(Runs) -> Result<()>) -> Result<Vec<f32>> {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        let chunks: Vec<&[usize]> = if rows.iter().all(|r| r.site == PatchSite::Edges) {
            let blocks = EdgeBlocks::new(self.max_rows);
            order.sort_by_key(|&i| (rows[i].pair, rows[i].out));
            order.chunk_by(|&a, &b| (rows[a].pair, blocks.of(rows[a].out)) == (rows[b].pair, blocks.of(rows[b].out))).collect()
        } else {
            order.sort_by_key(|&i| (self.join_layer(&rows[i]), self.start(&rows[i])));
            order.chunks(self.max_rows.max(1)).collect()
        };
        let mut out = vec![f32::NAN; rows.len()];
        for chunk in chunks {
            let batch: Vec<Row> = chunk.iter().map(|&i| rows[i]).collect();
            for (&i, m) in chunk.iter().zip(self.patched(&batch, base)) {
                out[i] = m;
            }
            progress(Runs { computed: chunk.len(), skipped: 0 })?;
        }
        Ok(out)
    }

    fn last_layer(&self) -> usize {
        self.model.config.layers - 1
    }

    fn join_layer(&self, row: &Row) -> usize {
        if self.reuse {
            row.layer
        } else {
            0
        }
    }

    /// The first position a row computes: its patch position with reuse, else 0.
    fn start(&self, row: &Row) -> usize {
        if self.reuse {
            row.first_pos()
        } else {
            0
        }
    }

    fn baselines(&self, pairs: &[TokenizedPair], sites: &[PatchSite]) -> Result<Baselines<B>> {
        let m = self.model;
        let layers = 0..m.config.layers;
        let last = Site::new(SiteKind::ResidPost, self.last_layer());
        let mut clean = Cache::new(layers.clone().flat_map(|l| sites.iter().flat_map(move |s| s.clean_reads().into_iter().map(move |k| Site::new(k, l)))).chain([last]));
        let clean_rows: Vec<Vec<u32>> = pairs.iter().map(|p| p.clean.clone()).collect();
        m.resid_final(m.tokens(&clean_rows)?, &mut clean);
        // The prefixes' keys and values, the residual stream rows join from, and for paths and
        // edges the senders' outputs.
        let mut corrupted_reads = vec![SiteKind::ResidPre, SiteKind::K, SiteKind::V];
        for kind in sites.iter().filter(|s| s.is_path()).flat_map(|s| s.clean_reads()) {
            if !corrupted_reads.contains(&kind) {
                corrupted_reads.push(kind);
            }
        }
        let mut corrupted = Cache::new(layers.flat_map(|l| corrupted_reads.iter().map(move |&k| Site::new(k, l))).chain([last]));
        let corrupted_rows: Vec<Vec<u32>> = pairs.iter().map(|p| p.corrupted.clone()).collect();
        m.resid_final(m.tokens(&corrupted_rows)?, &mut corrupted);
        let ids = m.tokens(&pairs.iter().map(|p| vec![p.answer, p.distractor]).collect::<Vec<_>>())?;
        let source = self.replacement.source(&clean);
        Ok(Baselines { clean, source, corrupted, ids, len: pairs[0].len() })
    }

    /// The metric of each row of `resid` [rows, pos, d] at the last position, on the host.
    fn metric(&self, resid: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Vec<f32> {
        let m = last_position_metric(self.model, self.metric, self.reuse, resid, ids);
        m.into_data().convert::<f32>().to_vec().expect("f32 metric")
    }

    /// One batch of rows, ordered by join layer; their metrics.
    fn patched(&self, rows: &[Row], base: &Baselines<B>) -> Vec<f32> {
        let device = self.model.device();
        let mut segments: Vec<Segment<B>> = Vec::new();
        let mut x: Option<Batch<B>> = None;
        for (layer, block) in self.model.blocks.iter().enumerate() {
            let joining: Vec<usize> = (0..rows.len()).filter(|&i| self.join_layer(&rows[i]) == layer).collect();
            if !joining.is_empty() {
                x = Some(self.join(x, &mut segments, rows, &joining, layer, base));
            }
            let Some(xl) = x.take() else { continue };
            let prefixes: Vec<Option<Prefix<B>>> = segments
                .iter()
                .map(|seg| {
                    (seg.start > 0).then(|| {
                        let kv = |kind| base.corrupted.heads(Site::new(kind, layer)).unwrap(); // [pairs, pos, head, d_head]
                        Prefix {
                            k: kv(SiteKind::K),
                            v: kv(SiteKind::V),
                            pairs: seg.rows.iter().map(|r| r.pair).collect(),
                            pair_ids: seg.pairs.clone(),
                            len: seg.start,
                        }
                    })
                })
                .collect();
            let keep = (self.reuse && layer == self.last_layer()).then_some(1);
            let mut hook = RowPatches { segments: &segments, len: base.len, source: &base.source, corrupted: &base.corrupted, model: self.model };
            x = Some(block.forward(xl, layer, &prefixes, keep, &mut hook));
        }
        let last = x.expect("every row joins by the last layer").last(Some(1)).x;
        let order: Vec<usize> = segments.iter().flat_map(|s| s.out.iter().copied()).collect();
        let ids = base.ids.clone().select(0, int_tensor::<B>(segments.iter().flat_map(|s| s.rows.iter().map(|r| r.pair)), &device));
        let metrics = self.metric(last.unsqueeze_dim(1), ids);
        let mut out = vec![f32::NAN; rows.len()];
        for (i, m) in order.into_iter().zip(metrics) {
            out[i] = m;
        }
        out
    }

    /// `x` with the rows `joining` added, from the corrupted run's residual stream at `layer`:
    /// each to the segment of its first computed position (segments stay ordered by it).
    fn join(&self, x: Option<Batch<B>>, segments: &mut Vec<Segment<B>>, rows: &[Row], joining: &[usize], layer: usize, base: &Baselines<B>) -> Batch<B> {
        let device = self.model.device();
        let resid = base.corrupted.resid(Site::new(SiteKind::ResidPre, layer)).unwrap();
        let mut by_start: BTreeMap<usize, (Vec<Tensor<B, 3>>, Vec<Row>, Vec<usize>)> = BTreeMap::new();
        let old = x.map(|x| x.segments()).unwrap_or_default();
        for (seg, t) in segments.drain(..).zip(old) {
            by_start.insert(seg.start, (vec![t], seg.rows, seg.out));
        }
        let mut joining_at: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in joining {
            joining_at.entry(self.start(&rows[i])).or_default().push(i);
        }
        for (start, new) in joining_at {
            let pairs = int_tensor::<B>(new.iter().map(|&i| rows[i].pair), &device);
            let (parts, seg_rows, out) = by_start.entry(start).or_default();
            parts.push(resid.clone().select(0, pairs).narrow(1, start, base.len - start));
            seg_rows.extend(new.iter().map(|&i| rows[i]));
            out.extend(new);
        }
        let mut parts = Vec::with_capacity(by_start.len());
        for (start, (p, seg_rows, out)) in by_start {
            let pairs = int_tensor::<B>(seg_rows.iter().map(|r| r.pair), &device);
            segments.push(Segment { start, rows: seg_rows, out, pairs });
            parts.push(p);
        }
        Batch::from_parts(parts)
    }
}

/// The metric at the last position of `resid` [rows, pos, d], [rows, 1]. With `two_logits`,
/// logit_diff unembeds the two tokens only; the others need the whole vocabulary's softmax.
pub(super) fn last_position_metric<B: Backend>(model: &Transformer<B>, metric: Metric, two_logits: bool, resid: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [rows, pos, d] = resid.dims();
    let last = resid.narrow(1, pos - 1, 1).reshape([rows, d]);
    let chosen = if two_logits && !metric.needs_vocab() {
        model.logits_of(last, ids)
    } else {
        let logits = model.unembed(last.unsqueeze_dim(1)).reshape([rows, model.config.vocab]);
        metric.scores(logits).gather(1, ids)
    };
    metric.of(chosen)
}

impl<B: Backend> super::RowEngine for Engine<'_, B> {
    fn run(&self, pairs: &[TokenizedPair], sites: &[PatchSite], layout: &Layout, progress: &mut dyn FnMut(Runs) -> Result<()>) -> Result<Vec<PairResult>> {
        Engine::run(self, pairs, sites, layout, progress)
    }

    /// Only the row itself, not its site's every row.
    fn one(&self, pair: TokenizedPair, row: Row, _: &Layout) -> Result<f32> {
        Ok(self.run_rows(&[pair], &[Row { pair: 0, ..row }])?[0])
    }
}

/// Rows of a batch that compute from the same position on: one segment of the model's `Batch`.
struct Segment<B: Backend> {
    start: usize,
    rows: Vec<Row>,
    /// Each row's index in the batch (where its metric goes).
    out: Vec<usize>,
    /// Each row's pair, on the device.
    pairs: Tensor<B, 1, Int>,
}

/// Overwrites, for each batch row patched at a site, that site's activation at the row's position
/// (and head, and pattern source) with the source's (the clean run's, zeros or means): only the
/// patched slices are gathered from the source and scattered into the batch, one index-based
/// write per patched site. Path rows instead add their sender's source-minus-corrupted write to
/// what their receiver reads.
struct RowPatches<'a, B: Backend> {
    segments: &'a [Segment<B>],
    /// The pairs' length: an activation of s positions covers positions len − s.. .
    len: usize,
    source: &'a Cache<B>,
    corrupted: &'a Cache<B>,
    model: &'a Transformer<B>,
}

impl<B: Backend> Hooks<B> for RowPatches<'_, B> {
    fn wants(&self, site: Site) -> bool {
        self.segments.iter().flat_map(|s| &s.rows).any(|r| r.layer == site.layer && r.kind() == site.kind)
    }

    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        let overwrites = self.rows_at(site, segment, false);
        let mut paths = self.rows_at(site, segment, true);
        let act = if overwrites.is_empty() { act } else { self.overwrite(site, &overwrites, act) };
        if paths.is_empty() {
            return act;
        }
        paths.sort_by_key(|(_, r)| r.sender());
        self.path(site, &paths, act)
    }

    /// Every segment's overwrites of a residual-shaped site in one write (paths go segment by
    /// segment).
    fn hook_batch(&mut self, site: Site, x: Tensor<B, 2>, shape: &[[usize; 2]]) -> Tensor<B, 2> {
        if (0..shape.len()).any(|g| self.segments[g].rows.iter().any(|r| r.layer == site.layer && r.kind() == site.kind && r.site.is_path())) {
            return hook_segments(self, site, x, shape);
        }
        let (mut to, mut from, mut offset) = (Vec::new(), Vec::new(), 0);
        for (g, &[n, s]) in shape.iter().enumerate() {
            let (t, f, _) = self.slices(site, &self.rows_at(site, g, false), [n, s, 1, x.dims()[1]]);
            to.extend(t.into_iter().map(|t| t + offset));
            from.extend(f);
            offset += n * s;
        }
        self.write(site, to, from, x)
    }
}

impl<B: Backend> RowPatches<'_, B> {
    /// The rows of `segment` patched at `site`: (index in the segment, row), paths or overwrites.
    fn rows_at(&self, site: Site, segment: usize, paths: bool) -> Vec<(usize, &Row)> {
        let here = |r: &Row| r.layer == site.layer && r.kind() == site.kind && r.site.is_path() == paths;
        self.segments[segment].rows.iter().enumerate().filter(|(_, r)| here(r)).collect()
    }

    /// The rows' (index in the segment, row) slices of `act` at `site`, from the source.
    fn overwrite<const D: usize>(&self, site: Site, rows: &[(usize, &Row)], act: Tensor<B, D>) -> Tensor<B, D> {
        // Axes: [rows, positions, d] residual-shaped, [rows, positions, heads, d_head] per head,
        // [rows, heads, queries, keys] for the pattern (whose rows are keys long: the pair's length).
        let dims = act.dims();
        let pattern = site.kind == SiteKind::Pattern;
        let (n, s, h, e) = match (D, pattern) {
            (3, _) => (dims[0], dims[1], 1, dims[2]),
            (_, false) => (dims[0], dims[1], dims[2], dims[3]),
            (_, true) => (dims[0], dims[2], dims[1], dims[3]),
        };
        let (to, from, width) = self.slices(site, rows, [n, s, h, e]);
        self.write(site, to, from, act.reshape([n * s * h * e / width, width])).reshape(dims)
    }

    /// Where the rows' slices go in an activation of axes [n, s, h, e] (see `overwrite`) and come
    /// from in the source's, in units of a slice of e values, or of one value where a row
    /// patches one pattern entry; with the unit's width (e or 1).
    fn slices(&self, site: Site, rows: &[(usize, &Row)], [_, s, h, e]: [usize; 4]) -> (Vec<usize>, Vec<usize>, usize) {
        let pattern = site.kind == SiteKind::Pattern;
        let (len, first) = (self.len, self.len - s);
        // The slice (row or pair, position, head) of e values, in the batch and in the source.
        let to_slice = |i: usize, p: usize, hd: usize| if pattern { (i * h + hd) * s + p - first } else { (i * s + p - first) * h + hd };
        let from_slice = |pair: usize, p: usize, hd: usize| if pattern { (pair * h + hd) * len + p } else { (pair * len + p) * h + hd };
        // A pattern entry is one value of its slice: where a row patches one, every index is a value's.
        let single = rows.iter().any(|(_, r)| r.src.is_some());
        let (mut to, mut from) = (Vec::new(), Vec::new());
        for &(i, r) in rows {
            // A patch before the first computed position cannot reach the metric from here (the
            // last block computes the last position only).
            let positions = match r.pos {
                Some(p) if p < first => continue,
                Some(p) => p..p + 1,
                None => first..len,
            };
            let heads = r.head.map_or(0..h, |hd| hd..hd + 1);
            for p in positions {
                for hd in heads.clone() {
                    let (t, f) = (to_slice(i, p, hd), from_slice(r.pair, p, hd));
                    match (r.src, single) {
                        (Some(src), _) => {
                            to.push(t * e + src);
                            from.push(f * e + src);
                        }
                        (None, true) => {
                            to.extend((0..e).map(|j| t * e + j));
                            from.extend((0..e).map(|j| f * e + j));
                        }
                        (None, false) => {
                            to.push(t);
                            from.push(f);
                        }
                    }
                }
            }
        }
        (to, from, if single { 1 } else { e })
    }

    /// `act` [units, width] with units `to` replaced by the source's units `from` at `site`.
    fn write(&self, site: Site, to: Vec<usize>, from: Vec<usize>, act: Tensor<B, 2>) -> Tensor<B, 2> {
        if to.is_empty() {
            return act;
        }
        let device = act.device();
        let width = act.dims()[1];
        let source = self.source.heads(site).expect("the source holds every patched site");
        let source_len = source.dims().iter().product::<usize>();
        let values = source.reshape([source_len / width, width]).select(0, int_tensor::<B>(from, &device));
        let m = to.len();
        let to = int_tensor::<B>(to, &device).reshape([m, 1]);
        act.scatter_nd(to, values, IndexingUpdateOp::Assign)
    }

    /// Path and edge rows, ordered by sender: at a receiver's q, k or v, the receiving head's input
    /// is computed from the corrupted residual stream plus the sender's write; at an MLP's input or
    /// the final residual stream the write is added to it. A head's write is `Block::head_change`
    /// of its source-minus-corrupted z·W_O.
    fn path<const D: usize>(&self, site: Site, rows: &[(usize, &Row)], act: Tensor<B, D>) -> Tensor<B, D> {
        let dims = act.dims();
        let device = act.device();
        let (n, s) = (dims[0], dims[1]);
        let first = self.len - s;
        let r = rows.len();
        let pairs = || int_tensor::<B>(rows.iter().map(|(_, row)| row.pair), &device);
        // Each row's sender's source-minus-corrupted write at the computed positions, [r, s, d],
        // one product per sending layer of heads; an MLP's or the embeddings' change as it is.
        let mut writes = Vec::new();
        let group_of = |row: &Row| match row.sender().expect("path and edge rows have senders") {
            Node::Head { layer, .. } => (1, layer),
            Node::Mlp(layer) => (2, layer),
            _ => (0, 0),
        };
        for group in rows.chunk_by(|a, b| group_of(a.1) == group_of(b.1)) {
            let ids = int_tensor::<B>(group.iter().map(|(_, row)| row.pair), &device);
            let delta = |kind, layer| {
                let at = |c: &Cache<B>| c.resid(Site::new(kind, layer)).expect("both runs cache the senders' outputs").select(0, ids.clone()).narrow(1, first, s);
                at(self.source) - at(self.corrupted)
            };
            match group[0].1.sender().expect("sender") {
                Node::Head { layer: sl, .. } => {
                    let z = |c: &Cache<B>| c.heads(Site::new(SiteKind::Z, sl)).expect("both runs cache the senders' z").select(0, ids.clone()).narrow(1, first, s);
                    let delta = z(self.source) - z(self.corrupted); // [g, s, h, dh]
                    let [g, _, h, dh] = delta.dims();
                    let head = |row: &Row| match row.sender() {
                        Some(Node::Head { head, .. }) => head,
                        other => unreachable!("a head group holds heads, not {other:?}"),
                    };
                    let own: Vec<usize> = group.iter().enumerate().flat_map(|(j, (_, row))| (0..s).map(move |p| (j * s + p) * h + head(row))).collect();
                    let delta = delta.reshape([g * s * h, dh]).select(0, int_tensor::<B>(own, &device)).reshape([g, s, dh]);
                    let heads = int_tensor::<B>(group.iter().map(|(_, row)| head(row)), &device);
                    let block = &self.model.blocks[sl];
                    // Through a post-norm, the change of the sublayer's output with every other head corrupted.
                    writes.push(block.head_change(block.attn.head_write(delta, heads), || block.attn.output(z(self.corrupted))));
                }
                Node::Mlp(layer) => writes.push(delta(SiteKind::MlpOut, layer)),
                _ => writes.push(delta(SiteKind::Embed, 0)),
            }
        }
        let writes = Tensor::cat(writes, 0);
        let d = writes.dims()[2];
        let which = match site.kind {
            SiteKind::Q => Qkv::Q,
            SiteKind::KHead => Qkv::K,
            SiteKind::VHead => Qkv::V,
            SiteKind::ResidPost | SiteKind::MlpIn => {
                let to = int_tensor::<B>(rows.iter().flat_map(|&(i, _)| (0..s).map(move |p| i * s + p)), &device).reshape([r * s, 1]);
                return act.reshape([n * s, d]).scatter_nd(to, writes.reshape([r * s, d]), IndexingUpdateOp::Add).reshape(dims);
            }
            other => unreachable!("paths and edges end at q, k, v, an MLP's input or the final residual stream, not {other:?}"),
        };
        let h = dims[2];
        let resid = self.corrupted.resid(Site::new(SiteKind::ResidPre, site.layer)).expect("cached").select(0, pairs()).narrow(1, first, s);
        let heads: Vec<usize> = rows.iter().map(|(_, row)| row.head.expect("receivers are heads")).collect();
        let values = self.model.blocks[site.layer].head_input(resid + writes, which, int_tensor::<B>(heads.iter().copied(), &device)); // [r, s, dh]
        let dh = values.dims()[2];
        let to = rows.iter().zip(&heads).flat_map(|(&(i, _), &hd)| (0..s).map(move |p| (i * s + p) * h + hd));
        let to = int_tensor::<B>(to, &device).reshape([r * s, 1]);
        act.reshape([n * s * h, dh]).scatter_nd(to, values.reshape([r * s, dh]), IndexingUpdateOp::Assign).reshape(dims)
    }
}
