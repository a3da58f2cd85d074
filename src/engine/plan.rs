//! The patch list: one row per patched run, (site, layer, position and/or head), laid out as the
//! result arrays are ([pairs, layers, positions(, heads)]).
use super::graph::{Edge, Graph, Node, Qkv};
use super::site::{PatchSite, Scope};
use crate::model::{ModelConfig, SiteKind};
use crate::data::TokenizedPair;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// The model dimensions the result arrays are laid out by. `positions` is the longest pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads, where fewer than `heads` (grouped attention): the k and v sites' head
    /// axis, as TransformerLens' `hook_k` / `hook_v` have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    /// Attention and the MLP side by side (GPT-NeoX): the edge graph's MLPs do not read their
    /// own layer's heads, and there is no resid_mid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel: bool,
    pub positions: usize,
    /// The sending heads [layer, head] of path sites that run (`path --senders`); None: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<[usize; 2]>>,
    /// The graph's edges [start, end) that the edges site runs (a shard of an edge run split by
    /// rows); None: all. The array keeps every edge's cell; the others stay NaN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<[usize; 2]>,
}

impl Layout {
    /// Every head sends (path sites).
    pub fn new(layers: usize, heads: usize, positions: usize) -> Self {
        Self { layers, heads, kv_heads: None, parallel: false, positions, senders: None, edges: None }
    }

    /// `model`'s layout for pairs of at most `positions` tokens.
    pub fn of(model: &ModelConfig, positions: usize) -> Self {
        Self { kv_heads: (model.kv_heads != model.heads).then_some(model.kv_heads), parallel: model.parallel, ..Self::new(model.layers, model.heads, positions) }
    }

    /// The edge graph of the model.
    pub fn graph(&self) -> Graph {
        Graph::new(self.layers, self.heads, self.parallel)
    }

    /// The head axis of `site`: the key/value heads for k and v, else every head.
    fn heads_of(&self, site: PatchSite) -> usize {
        match site.kind() {
            SiteKind::K | SiteKind::V => self.kv_heads.unwrap_or(self.heads),
            _ => self.heads,
        }
    }

    /// The shape of one pair's block of results for `site` (the array shape without its pair axis).
    pub fn per_pair(&self, site: PatchSite) -> Vec<usize> {
        if site.scope() == Scope::Edge {
            return vec![Graph::edge_count(self.layers, self.heads, self.parallel)];
        }
        let mut shape = vec![self.layers];
        if site.by_position() {
            shape.push(self.positions);
        }
        if site.by_src() {
            shape.push(self.positions);
        }
        if site.by_head() {
            shape.push(self.heads_of(site));
        }
        if site.scope() == Scope::Path {
            shape.extend([self.layers, self.heads]);
        }
        shape
    }

    fn sends(&self, layer: usize, head: usize) -> bool {
        self.senders.as_ref().is_none_or(|s| s.contains(&[layer, head]))
    }

    pub fn per_pair_len(&self, site: PatchSite) -> usize {
        self.per_pair(site).iter().product()
    }

    /// How many patched runs `rows(site, len)` gives.
    pub fn run_count(&self, site: PatchSite, len: usize) -> usize {
        let axis = |on: bool, n: usize| if on { n } else { 1 };
        if site.scope() == Scope::Edge {
            let [start, end] = self.edge_range();
            return end - start;
        }
        if site.is_path() {
            return self.path_rows(site).len();
        }
        self.layers * axis(site.by_position(), len) * axis(site.by_src(), len) * axis(site.by_head(), self.heads_of(site))
    }

    /// A path site's rows, whatever the pair: each sender's to every head of a later layer (to
    /// the logits: one), joining at the receiver's layer (to the logits: the last).
    fn path_rows(&self, site: PatchSite) -> Vec<Row> {
        let (l, h) = (self.layers, self.heads);
        let senders = (0..l).flat_map(|sl| (0..h).map(move |sh| (sl, sh))).filter(|&(sl, sh)| self.sends(sl, sh));
        let row = |sender: (usize, usize), layer, head, out| Row { pair: 0, site, layer, pos: None, src: None, head, sender: Some(sender), edge: None, from: 0, out };
        match site.scope() {
            Scope::PathToLogits => senders.map(|(sl, sh)| row((sl, sh), l - 1, None, sl * h + sh)).collect(),
            _ => senders.flat_map(|(sl, sh)| (sl + 1..l).flat_map(move |dl| (0..h).map(move |dh| row((sl, sh), dl, Some(dh), ((sl * h + sh) * l + dl) * h + dh)))).collect(),
        }
    }

    /// The patched runs of one pair of `len` tokens at `site`, each with its index in the pair's
    /// block. Positions at or past `len` (padding of shorter pairs) have no run.
    pub fn rows(&self, site: PatchSite, len: usize) -> Vec<Row> {
        if site.scope() == Scope::Edge {
            return self.edge_rows();
        }
        if site.is_path() {
            return self.path_rows(site);
        }
        let axis = |on: bool, n: usize| -> Vec<Option<usize>> { if on { (0..n).map(Some).collect() } else { vec![None] } };
        let shape = self.per_pair(site);
        let mut rows = Vec::new();
        for layer in 0..self.layers {
            for &pos in &axis(site.by_position(), len) {
                for &src in &axis(site.by_src(), len) {
                    for &head in &axis(site.by_head(), self.heads_of(site)) {
                        // Row-major over the block's axes, those the site has.
                        let index = [Some(layer), pos, src, head].into_iter().flatten();
                        let out = index.zip(&shape).fold(0, |acc, (i, &n)| acc * n + i);
                        rows.push(Row { pair: 0, site, layer, pos, src, head, sender: None, edge: None, from: 0, out });
                    }
                }
            }
        }
        rows
    }

    /// The edges the edges site runs, [start, end) in the graph's order.
    pub fn edge_range(&self) -> [usize; 2] {
        self.edges.unwrap_or([0, Graph::edge_count(self.layers, self.heads, self.parallel)])
    }

    /// The graph's edges in `edge_range`, in its order, each joining at its receiver's layer (the
    /// logits': the last).
    fn edge_rows(&self) -> Vec<Row> {
        let graph = self.graph();
        let row = |(out, edge): (usize, &Edge)| {
            let (layer, head) = match edge.to {
                Node::Head { layer, head } => (layer, Some(head)),
                Node::Mlp(layer) => (layer, None),
                _ => (self.layers - 1, None),
            };
            Row { pair: 0, site: PatchSite::Edges, layer, pos: None, src: None, head, sender: None, edge: Some(*edge), from: 0, out }
        };
        let [start, end] = self.edge_range();
        graph.edges.iter().enumerate().skip(start).take(end - start).map(row).collect()
    }

    /// A pair's rows at `site` (`rows`), split into those to compute and, with `skip`, the
    /// no-ops (`Row::is_noop`), whose result is the corrupted run's.
    /// Path and edge rows start at the first differing position where no-ops are provable (the
    /// last position at the latest: the metric's).
    pub fn split_rows(&self, site: PatchSite, clean: &[u32], corrupted: &[u32], skip: bool) -> (Vec<Row>, Vec<Row>) {
        let from = if skip { first_difference(clean, corrupted).min(clean.len().saturating_sub(1)) } else { 0 };
        let rows = self.rows(site, clean.len()).into_iter().map(|r| if r.sender().is_some() { Row { from, ..r } } else { r });
        rows.partition(|r| !(skip && r.is_noop(clean, corrupted)))
    }

    /// Every row of `sites` for a batch of `pairs` (one length, within the layout), each with its
    /// site's index in `sites` and its pair's in `pairs`: those to compute, then the no-ops.
    pub fn batch_rows(&self, pairs: &[TokenizedPair], sites: &[PatchSite], skip: bool) -> Result<(Vec<(usize, Row)>, Vec<(usize, Row)>)> {
        ensure!(!pairs.is_empty(), "no pairs to run");
        let len = pairs[0].len();
        ensure!(pairs.iter().all(|p| p.len() == len), "a batch of pairs must share one length");
        ensure!(len <= self.positions, "pair of {len} tokens exceeds the layout's {} positions", self.positions);
        let (mut computed, mut noops) = (Vec::new(), Vec::new());
        for (si, &site) in sites.iter().enumerate() {
            for (pair, p) in pairs.iter().enumerate() {
                let (c, n) = self.split_rows(site, &p.clean, &p.corrupted, skip);
                computed.extend(c.into_iter().map(|r| (si, Row { pair, ..r })));
                noops.extend(n.into_iter().map(|r| (si, Row { pair, ..r })));
            }
        }
        Ok((computed, noops))
    }
}

/// One pair's results: the baselines, and per site its block of the site's array (NaN where a
/// position is past the pair's length).
#[derive(Clone, Debug, PartialEq)]
pub struct PairResult {
    pub clean: f32,
    pub corrupted: f32,
    pub sites: Vec<Vec<f32>>,
}

/// One patched run: the pair (index into the batch's pairs), what is overwritten, and where its
/// result goes in the pair's block of the site's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub pair: usize,
    pub site: PatchSite,
    pub layer: usize,
    /// None: every position. A pattern's destination position.
    pub pos: Option<usize>,
    /// A pattern entry's source position (pattern_dest_src only).
    pub src: Option<usize>,
    /// None: the whole activation (residual-shaped sites). A path's receiving head.
    pub head: Option<usize>,
    /// A path's sending head (layer, head).
    pub sender: Option<(usize, usize)>,
    /// An edge row's edge (its receiver is also `layer` and `head`).
    pub edge: Option<Edge>,
    /// Where a path's or edge's write can first be non-zero: before the pair's first differing
    /// token the source and corrupted runs agree, so the sender's write is zero and the run is
    /// the corrupted run there (0 where that is not provable: other ablations, `--no-skip`).
    pub from: usize,
    pub out: usize,
}

impl Row {
    /// The activation the row's patch is applied to: its site's, or an edge's receiver input.
    pub fn kind(&self) -> SiteKind {
        match self.edge.map(|e| (e.to, e.qkv)) {
            Some((Node::Head { .. }, Some(Qkv::Q))) => SiteKind::Q,
            Some((Node::Head { .. }, Some(Qkv::K))) => SiteKind::KHead,
            Some((Node::Head { .. }, _)) => SiteKind::VHead,
            Some((Node::Mlp(_), _)) => SiteKind::MlpIn,
            Some(_) => SiteKind::ResidPost,
            None => self.site.kind(),
        }
    }

    /// The node whose output a path or edge row writes (a path's sending head).
    pub fn sender(&self) -> Option<Node> {
        self.edge.map(|e| e.from).or(self.sender.map(|(layer, head)| Node::Head { layer, head }))
    }

    /// The first position the patch changes: positions before it equal the corrupted run.
    pub fn first_pos(&self) -> usize {
        self.pos.unwrap_or(self.from)
    }

    /// Whether this patched run provably is the corrupted run, from the pair's tokens alone (no
    /// float comparison), so that patching writes an activation over itself: attention is
    /// causal, so before the first differing position the clean and corrupted runs agree at every
    /// layer; at layer 0, resid_pre (the embeddings) and q, k, v (functions of one position's
    /// embedding) agree wherever the tokens do; and a pattern entry from a later source position
    /// is masked, 0 in every run. Sites over all positions (`*_all_pos`) are always computed.
    pub fn is_noop(&self, clean: &[u32], corrupted: &[u32]) -> bool {
        let Some(p) = self.pos else { return false };
        let local = matches!(self.site.kind(), SiteKind::ResidPre | SiteKind::Q | SiteKind::K | SiteKind::V);
        p < first_difference(clean, corrupted) || self.src.is_some_and(|s| s > p) || (local && self.layer == 0 && clean[p] == corrupted[p])
    }
}

/// The first position where two token rows differ (their length if they do not).
pub fn first_difference(clean: &[u32], corrupted: &[u32]) -> usize {
    clean.iter().zip(corrupted).position(|(a, b)| a != b).unwrap_or(clean.len().min(corrupted.len()))
}

/// Patched runs computed, and skipped as provable no-ops (`Row::is_noop`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    pub computed: usize,
    pub skipped: usize,
}

impl Runs {
    pub fn total(&self) -> usize {
        self.computed + self.skipped
    }

    /// A pair's runs at `sites`; with `skip`, its no-ops are counted as skipped.
    pub fn of_pair(layout: &Layout, sites: &[PatchSite], clean: &[u32], corrupted: &[u32], skip: bool) -> Self {
        let mut runs = Self::default();
        for &site in sites {
            let (computed, skipped) = layout.split_rows(site, clean, corrupted, skip);
            runs += Self { computed: computed.len(), skipped: skipped.len() };
        }
        runs
    }
}

impl std::ops::AddAssign for Runs {
    fn add_assign(&mut self, other: Self) {
        self.computed += other.computed;
        self.skipped += other.skipped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noops_are_the_positions_before_the_first_difference_equal_embeddings_and_masked_entries() {
        let layout = Layout::new(2, 3, 6);
        // Tokens differ at positions 2 and 4.
        let (clean, corrupted) = ([1, 2, 3, 4, 5, 6], [1, 2, 9, 4, 8, 6]);
        assert_eq!(first_difference(&clean, &corrupted), 2);
        let at = |site, layer, pos, src| Row { pair: 0, site, layer, pos, src, head: Some(0), sender: None, edge: None, from: 0, out: 0 }.is_noop(&clean, &corrupted);
        let noop = |site, layer, pos| at(site, layer, pos, None);
        for site in PatchSite::ALL.into_iter().filter(|s| s.by_position() && !s.by_src()) {
            assert!(noop(site, 1, Some(1)) && !noop(site, 1, Some(2)) && !noop(site, 1, Some(3)), "{site:?}");
        }
        // Layer 0: the embeddings and each position's own q, k, v agree where the tokens do.
        for site in [PatchSite::ResidPre, PatchSite::QByPos, PatchSite::KByPos, PatchSite::VByPos] {
            assert!(noop(site, 0, Some(3)) && noop(site, 0, Some(5)) && !noop(site, 0, Some(4)), "{site:?}");
            assert!(!noop(site, 1, Some(3)), "{site:?} past layer 0");
        }
        for site in [PatchSite::AttnOut, PatchSite::ZByPos, PatchSite::PatternByPos] {
            assert!(!noop(site, 0, Some(3)), "{site:?} mixes positions");
        }
        for site in PatchSite::ALL.into_iter().filter(|s| !s.by_position()) {
            assert!(!noop(site, 0, None), "{site:?} covers every position");
        }
        // A pattern entry: masked (source after destination), or a destination before the difference.
        let entry = |dest, src| at(PatchSite::PatternDestSrc, 1, Some(dest), Some(src));
        assert!(entry(3, 4) && entry(1, 0) && !entry(3, 3) && !entry(3, 0) && !entry(5, 2));
        // resid_pre: 2 layers × 6 positions, of which layer 0 skips 0, 1, 3, 5 and layer 1 skips 0, 1.
        let runs = Runs::of_pair(&layout, &[PatchSite::ResidPre, PatchSite::ZAllPos], &clean, &corrupted, true);
        assert_eq!(runs, Runs { computed: 6 + 6, skipped: 6 });
        assert_eq!(Runs::of_pair(&layout, &[PatchSite::ResidPre], &clean, &corrupted, false), Runs { computed: 12, skipped: 0 });
        // pattern_dest_src: 2 layers × 3 heads × 36 entries; computed where src ≤ dest and dest ≥ 2.
        let runs = Runs::of_pair(&layout, &[PatchSite::PatternDestSrc], &clean, &corrupted, true);
        assert_eq!(runs, Runs { computed: 2 * 3 * (3 + 4 + 5 + 6), skipped: 2 * 3 * 36 - 2 * 3 * 18 });
    }

    #[test]
    fn groups_expand_as_transformer_lens_stacks_them_and_names_round_trip() {
        let names = |list| PatchSite::parse_list(list).unwrap().into_iter().map(PatchSite::name).collect::<Vec<_>>().join(",");
        assert_eq!(names("block"), "resid_pre,attn_out,mlp_out");
        assert_eq!(names("heads_all_pos"), "z_all_pos,q_all_pos,k_all_pos,v_all_pos,pattern_all_pos");
        assert_eq!(names("heads_by_pos"), "z_by_pos,q_by_pos,k_by_pos,v_by_pos,pattern_by_pos");
        assert_eq!(names("attn_out, block ,pattern_dest_src"), "attn_out,resid_pre,mlp_out,pattern_dest_src");
        for site in PatchSite::ALL {
            assert_eq!(PatchSite::parse(site.name()).unwrap(), site);
        }
        let err = PatchSite::parse_list("resid_pre,q").unwrap_err().to_string();
        assert!(err.contains("unknown site \"q\"") && err.contains("q_by_pos") && err.contains("heads_all_pos"), "{err}");
    }

    #[test]
    fn run_count_is_the_number_of_rows_and_each_row_has_its_own_cell() {
        let layout = Layout::new(3, 4, 11);
        for site in PatchSite::ALL {
            for len in [1, 7, 11] {
                let rows = layout.rows(site, len);
                assert_eq!(layout.run_count(site, len), rows.len(), "{site:?} len {len}");
                let mut cells: Vec<usize> = rows.iter().map(|r| r.out).collect();
                cells.sort_unstable();
                cells.dedup();
                assert_eq!(cells.len(), rows.len());
                assert!(cells.iter().all(|&c| c < layout.per_pair_len(site)));
                // The cell is the row's (layer, position, src, head) in the block's row-major order;
                // a path's is its (sender layer, sender head[, receiver layer, receiver head]).
                let strides: Vec<usize> = layout.per_pair(site).iter().rev().scan(1, |acc, &n| { let s = *acc; *acc *= n; Some(s) }).collect();
                for r in &rows {
                    let index: Vec<usize> = match (r.sender, site.scope()) {
                        (_, Scope::Edge) => vec![r.out],
                        (Some((sl, sh)), Scope::Path) => vec![sl, sh, r.layer, r.head.unwrap()],
                        (Some((sl, sh)), _) => vec![sl, sh],
                        (None, _) => [Some(r.layer), r.pos, r.src, r.head].into_iter().flatten().collect(),
                    };
                    assert_eq!(index.len(), strides.len(), "{site:?}: one index per axis");
                    assert_eq!(r.out, index.iter().zip(strides.iter().rev()).map(|(i, s)| i * s).sum::<usize>(), "{site:?} {r:?}");
                }
            }
        }
    }
}
