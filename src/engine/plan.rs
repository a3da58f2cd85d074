//! The patch list: one row per patched run, (site, layer, position and/or head), laid out as the
//! result arrays are ([pairs, layers, positions(, heads)]), and chunked under a memory budget.
use crate::model::{Gpt2Config, SiteKind};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// What a patched run overwrites, as TransformerLens' `patching.get_act_patch_*` define it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchSite {
    ResidPre,
    ResidMid,
    ResidPost,
    AttnOut,
    MlpOut,
    /// One head's output `z` at every position.
    ZAllPos,
    /// One head's output `z` at one position.
    ZByPos,
}

impl PatchSite {
    pub const ALL: [PatchSite; 7] =
        [Self::ResidPre, Self::ResidMid, Self::ResidPost, Self::AttnOut, Self::MlpOut, Self::ZAllPos, Self::ZByPos];

    pub fn name(self) -> &'static str {
        match self {
            Self::ZAllPos => "z_all_pos",
            Self::ZByPos => "z_by_pos",
            other => other.kind().name(),
        }
    }

    pub fn parse_list(list: &str) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(site) = Self::ALL.into_iter().find(|s| s.name() == name) else {
                let all: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                bail!("unknown site {name:?}: expected one of {}", all.join(", "));
            };
            if !out.contains(&site) {
                out.push(site);
            }
        }
        if out.is_empty() {
            bail!("no sites given");
        }
        Ok(out)
    }

    /// The model activation the patch overwrites.
    pub fn kind(self) -> SiteKind {
        match self {
            Self::ResidPre => SiteKind::ResidPre,
            Self::ResidMid => SiteKind::ResidMid,
            Self::ResidPost => SiteKind::ResidPost,
            Self::AttnOut => SiteKind::AttnOut,
            Self::MlpOut => SiteKind::MlpOut,
            Self::ZAllPos | Self::ZByPos => SiteKind::Z,
        }
    }

    fn by_position(self) -> bool {
        self != Self::ZAllPos
    }

    fn by_head(self) -> bool {
        matches!(self, Self::ZAllPos | Self::ZByPos)
    }

    /// Axis names of the result array.
    pub fn axes(self) -> Vec<&'static str> {
        let mut axes = vec!["pair", "layer"];
        if self.by_position() {
            axes.push("position");
        }
        if self.by_head() {
            axes.push("head");
        }
        axes
    }
}

/// The model dimensions the result arrays are laid out by. `positions` is the longest pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub layers: usize,
    pub heads: usize,
    pub positions: usize,
}

impl Layout {
    /// The shape of one pair's block of results for `site` (the array shape without its pair axis).
    pub fn per_pair(&self, site: PatchSite) -> Vec<usize> {
        let mut shape = vec![self.layers];
        if site.by_position() {
            shape.push(self.positions);
        }
        if site.by_head() {
            shape.push(self.heads);
        }
        shape
    }

    pub fn per_pair_len(&self, site: PatchSite) -> usize {
        self.per_pair(site).iter().product()
    }

    /// How many patched runs `rows(site, len)` gives.
    pub fn run_count(&self, site: PatchSite, len: usize) -> usize {
        self.layers * if site.by_position() { len } else { 1 } * if site.by_head() { self.heads } else { 1 }
    }

    /// The patched runs of one pair of `len` tokens at `site`, each with its index in the pair's
    /// block. Positions at or past `len` (padding of shorter pairs) have no run.
    pub fn rows(&self, site: PatchSite, len: usize) -> Vec<Row> {
        let positions: Vec<Option<usize>> = if site.by_position() { (0..len).map(Some).collect() } else { vec![None] };
        let heads: Vec<Option<usize>> = if site.by_head() { (0..self.heads).map(Some).collect() } else { vec![None] };
        let mut rows = Vec::new();
        for layer in 0..self.layers {
            for &pos in &positions {
                for &head in &heads {
                    let p = if site.by_position() { pos.unwrap() } else { 0 };
                    let h = head.unwrap_or(0);
                    let out = match (site.by_position(), site.by_head()) {
                        (true, true) => (layer * self.positions + p) * self.heads + h,
                        (true, false) => layer * self.positions + p,
                        (false, _) => layer * self.heads + h,
                    };
                    rows.push(Row { pair: 0, site, layer, pos, head, out });
                }
            }
        }
        rows
    }

    /// A pair's rows at `site` (`rows`), split into those to compute and, with `skip`, the
    /// no-ops (`Row::is_noop`), whose result is the corrupted run's.
    pub fn split_rows(&self, site: PatchSite, clean: &[u32], corrupted: &[u32], skip: bool) -> (Vec<Row>, Vec<Row>) {
        self.rows(site, clean.len()).into_iter().partition(|r| !(skip && r.is_noop(clean, corrupted)))
    }
}

/// One patched run: the pair (index into the batch's pairs), what is overwritten, and where its
/// result goes in the pair's block of the site's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub pair: usize,
    pub site: PatchSite,
    pub layer: usize,
    /// None: every position.
    pub pos: Option<usize>,
    /// None: the whole activation (residual-shaped sites).
    pub head: Option<usize>,
    pub out: usize,
}

impl Row {
    /// The first position the patch changes: positions before it equal the corrupted run.
    pub fn first_pos(&self) -> usize {
        self.pos.unwrap_or(0)
    }

    /// Whether this patched run provably is the corrupted run, from the pair's tokens alone (no
    /// float comparison): attention is causal, so before the first differing position the clean
    /// and corrupted runs agree at every layer; and layer 0's resid_pre (the embeddings) agrees
    /// wherever the tokens do. Patching there writes an activation over itself. Sites over all
    /// positions (z_all_pos) are always computed.
    pub fn is_noop(&self, clean: &[u32], corrupted: &[u32]) -> bool {
        let Some(p) = self.pos else { return false };
        p < first_difference(clean, corrupted) || (self.site == PatchSite::ResidPre && self.layer == 0 && clean[p] == corrupted[p])
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

/// Rows that fit a memory budget and a single-buffer limit (wgpu caps one buffer, at 128 MiB on
/// lavapipe). Per row: the residual-sized tensors of one block, its MLP hidden layer and attention
/// pattern, and (without reuse) the last position's full logits, the largest single tensor.
pub fn max_rows_for_budget(config: &Gpt2Config, positions: usize, budget_bytes: usize, max_buffer_bytes: usize, full_logits: bool) -> usize {
    let logits = if full_logits { 4 * config.vocab_size } else { 0 };
    let mlp = 4 * positions * config.n_inner;
    let pattern = 4 * config.n_head * positions * positions;
    let per_row = 4 * positions * 8 * config.n_embd + 2 * mlp + 3 * pattern + logits;
    let largest = logits.max(mlp).max(pattern);
    (budget_bytes / per_row).min(max_buffer_bytes / largest).clamp(1, 1 << 16)
}

/// Floating-point operations of one run of a pair of `len` tokens computed from layer
/// `first_layer` and position `start` on. With `reuse`, the last block carries only the last
/// position past its keys and values and two logits are read; without, every block computes every
/// position and the last position is unembedded over the whole vocabulary. Multiply-adds count 2.
pub fn run_flops(config: &Gpt2Config, len: usize, start: usize, first_layer: usize, reuse: bool) -> f64 {
    let (d, inner) = (config.n_embd as f64, config.n_inner as f64);
    let s = (len - start) as f64;
    let blocks = (config.n_layer - first_layer) as f64;
    // Per computed position: c_attn (q, k, v), then attention over `len` keys, c_proj and the MLP.
    let qkv = 2.0 * d * 3.0 * d;
    let rest = 4.0 * len as f64 * d + 2.0 * d * (d + 2.0 * inner);
    if reuse {
        (blocks - 1.0) * s * (qkv + rest) + s * qkv + rest + 4.0 * d
    } else {
        blocks * s * (qkv + rest) + 2.0 * d * config.vocab_size as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noops_are_the_positions_before_the_first_difference_and_equal_embeddings() {
        let layout = Layout { layers: 2, heads: 3, positions: 6 };
        // Tokens differ at positions 2 and 4.
        let (clean, corrupted) = ([1, 2, 3, 4, 5, 6], [1, 2, 9, 4, 8, 6]);
        assert_eq!(first_difference(&clean, &corrupted), 2);
        let noop = |site, layer, pos| Row { pair: 0, site, layer, pos, head: None, out: 0 }.is_noop(&clean, &corrupted);
        for site in PatchSite::ALL.into_iter().filter(|s| s.by_position()) {
            assert!(noop(site, 1, Some(1)) && !noop(site, 1, Some(2)) && !noop(site, 1, Some(3)), "{site:?}");
        }
        assert!(noop(PatchSite::ResidPre, 0, Some(3)) && noop(PatchSite::ResidPre, 0, Some(5)) && !noop(PatchSite::ResidPre, 0, Some(4)));
        assert!(!noop(PatchSite::ResidPre, 1, Some(3)) && !noop(PatchSite::AttnOut, 0, Some(3)) && !noop(PatchSite::ZAllPos, 0, None));
        // resid_pre: 2 layers × 6 positions, of which layer 0 skips 0, 1, 3, 5 and layer 1 skips 0, 1.
        let runs = Runs::of_pair(&layout, &[PatchSite::ResidPre, PatchSite::ZAllPos], &clean, &corrupted, true);
        assert_eq!(runs, Runs { computed: 6 + 6, skipped: 6 });
        assert_eq!(Runs::of_pair(&layout, &[PatchSite::ResidPre], &clean, &corrupted, false), Runs { computed: 12, skipped: 0 });
    }

    #[test]
    fn run_count_is_the_number_of_rows_and_each_row_has_its_own_cell() {
        let layout = Layout { layers: 3, heads: 4, positions: 11 };
        for site in PatchSite::ALL {
            for len in [1, 7, 11] {
                let rows = layout.rows(site, len);
                assert_eq!(layout.run_count(site, len), rows.len(), "{site:?} len {len}");
                let mut cells: Vec<usize> = rows.iter().map(|r| r.out).collect();
                cells.sort_unstable();
                cells.dedup();
                assert_eq!(cells.len(), rows.len());
                assert!(cells.iter().all(|&c| c < layout.per_pair_len(site)));
            }
        }
    }
}
