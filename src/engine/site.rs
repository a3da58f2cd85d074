//! The site vocabulary: what a patched run overwrites (`PatchSite`, TransformerLens' names and
//! groups), what each reads from the clean run, and the cells one row of it covers (`Scope`).
use crate::model::SiteKind;
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
    /// One head's queries (keys, values) at every position.
    QAllPos,
    KAllPos,
    VAllPos,
    /// One head's queries (keys, values) at one position.
    QByPos,
    KByPos,
    VByPos,
    /// One head's attention pattern, every destination position.
    PatternAllPos,
    /// One head's attention pattern from one destination position (its row of the pattern).
    PatternByPos,
    /// One entry of one head's attention pattern: destination position, source position.
    PatternDestSrc,
    /// Path patching (the IOI paper's): a sending head's clean-minus-corrupted write added to one
    /// later receiving head's query (key, value) input only, every other reader seeing the
    /// corrupted run (TransformerLens' `get_act_patch_direct_path`).
    PathQ,
    PathK,
    PathV,
    /// A sending head's clean-minus-corrupted write added to the final residual stream only: its
    /// direct effect through the final norm and the unembedding.
    PathResidFinal,
    /// Every edge of the circuit graph (`graph`, EAP-IG's): the sender's clean-minus-corrupted
    /// output (the token embeddings, a head's z·W_O, an MLP's output) added to the receiver's input alone (a
    /// head's q, k or v input, an MLP's input, the final residual stream).
    Edges,
}

/// Which cells of the activation at its layer one patched run overwrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// One position of a residual-shaped activation.
    Position,
    /// One head, every position.
    HeadAllPos,
    /// One head at one (destination) position.
    HeadByPos,
    /// One head's pattern entry at a (destination, source) pair of positions.
    HeadDestSrc,
    /// A (sender head, receiver head) edge.
    Path,
    /// A sender head to the logits.
    PathToLogits,
    /// An edge of the circuit graph.
    Edge,
}

/// Sites by the names of TransformerLens' functions that patch several at once: the
/// `get_act_patch_*_every` groups, in the order they stack them.
const GROUPS: [(&str, &[PatchSite]); 3] = [
    ("block", &[PatchSite::ResidPre, PatchSite::AttnOut, PatchSite::MlpOut]),
    ("heads_all_pos", &[PatchSite::ZAllPos, PatchSite::QAllPos, PatchSite::KAllPos, PatchSite::VAllPos, PatchSite::PatternAllPos]),
    ("heads_by_pos", &[PatchSite::ZByPos, PatchSite::QByPos, PatchSite::KByPos, PatchSite::VByPos, PatchSite::PatternByPos]),
];

impl PatchSite {
    pub const ALL: [PatchSite; 21] = [
        Self::ResidPre,
        Self::ResidMid,
        Self::ResidPost,
        Self::AttnOut,
        Self::MlpOut,
        Self::ZAllPos,
        Self::ZByPos,
        Self::QAllPos,
        Self::KAllPos,
        Self::VAllPos,
        Self::QByPos,
        Self::KByPos,
        Self::VByPos,
        Self::PatternAllPos,
        Self::PatternByPos,
        Self::PatternDestSrc,
        Self::PathQ,
        Self::PathK,
        Self::PathV,
        Self::PathResidFinal,
        Self::Edges,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ZAllPos => "z_all_pos",
            Self::ZByPos => "z_by_pos",
            Self::QAllPos => "q_all_pos",
            Self::KAllPos => "k_all_pos",
            Self::VAllPos => "v_all_pos",
            Self::QByPos => "q_by_pos",
            Self::KByPos => "k_by_pos",
            Self::VByPos => "v_by_pos",
            Self::PatternAllPos => "pattern_all_pos",
            Self::PatternByPos => "pattern_by_pos",
            Self::PatternDestSrc => "pattern_dest_src",
            Self::PathQ => "path_q",
            Self::PathK => "path_k",
            Self::PathV => "path_v",
            Self::PathResidFinal => "path_resid_final",
            Self::Edges => "edges",
            other => other.kind().name(),
        }
    }

    /// One site by its name.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let all: Vec<_> = Self::ALL.iter().map(|s| s.name()).chain(GROUPS.iter().map(|g| g.0)).collect();
            anyhow::anyhow!("unknown site {name:?}: expected one of {}", all.join(", "))
        })
    }

    /// Comma-separated site names and group names (`block`, `heads_all_pos`, `heads_by_pos`),
    /// each site once, in the order given.
    pub fn parse_list(list: &str) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let sites = match GROUPS.iter().find(|g| g.0 == name) {
                Some(g) => g.1.to_vec(),
                None => vec![Self::parse(name)?],
            };
            for site in sites {
                if !out.contains(&site) {
                    out.push(site);
                }
            }
        }
        if out.is_empty() {
            bail!("no sites given");
        }
        Ok(out)
    }

    /// The model activation the patch overwrites (a path: the receiver's q, k, v, or the final
    /// residual stream; edges: the logits' receiver, other rows' differ: `Row::kind`).
    pub fn kind(self) -> SiteKind {
        match self {
            Self::ResidPre => SiteKind::ResidPre,
            Self::ResidMid => SiteKind::ResidMid,
            Self::ResidPost => SiteKind::ResidPost,
            Self::AttnOut => SiteKind::AttnOut,
            Self::MlpOut => SiteKind::MlpOut,
            Self::ZAllPos | Self::ZByPos => SiteKind::Z,
            Self::QAllPos | Self::QByPos | Self::PathQ => SiteKind::Q,
            Self::KAllPos | Self::KByPos => SiteKind::K,
            Self::VAllPos | Self::VByPos => SiteKind::V,
            Self::PathK => SiteKind::KHead,
            Self::PathV => SiteKind::VHead,
            Self::PatternAllPos | Self::PatternByPos | Self::PatternDestSrc => SiteKind::Pattern,
            Self::PathResidFinal | Self::Edges => SiteKind::ResidPost,
        }
    }

    /// Whether the site is a path (a sender's write to one receiver), not an overwrite.
    pub fn is_path(self) -> bool {
        matches!(self.scope(), Scope::Path | Scope::PathToLogits | Scope::Edge)
    }

    /// The clean run's activations the patch reads, at every layer: the one it overwrites, or the
    /// senders' outputs (heads' z; for edges also the input node's, the token embeddings, and the
    /// MLPs' outputs).
    pub fn clean_reads(self) -> Vec<SiteKind> {
        match self.scope() {
            Scope::Edge => vec![SiteKind::Embed, SiteKind::Z, SiteKind::MlpOut],
            _ if self.is_path() => vec![SiteKind::Z],
            _ => vec![self.kind()],
        }
    }

    pub(super) fn scope(self) -> Scope {
        match self {
            Self::ResidPre | Self::ResidMid | Self::ResidPost | Self::AttnOut | Self::MlpOut => Scope::Position,
            Self::ZAllPos | Self::QAllPos | Self::KAllPos | Self::VAllPos | Self::PatternAllPos => Scope::HeadAllPos,
            Self::ZByPos | Self::QByPos | Self::KByPos | Self::VByPos | Self::PatternByPos => Scope::HeadByPos,
            Self::PatternDestSrc => Scope::HeadDestSrc,
            Self::PathQ | Self::PathK | Self::PathV => Scope::Path,
            Self::PathResidFinal => Scope::PathToLogits,
            Self::Edges => Scope::Edge,
        }
    }

    pub(super) fn by_position(self) -> bool {
        matches!(self.scope(), Scope::Position | Scope::HeadByPos | Scope::HeadDestSrc)
    }

    pub(super) fn by_src(self) -> bool {
        self.scope() == Scope::HeadDestSrc
    }

    pub(super) fn by_head(self) -> bool {
        !matches!(self.scope(), Scope::Position | Scope::Edge)
    }

    /// Axis names of the result array; `position` is the destination position of a pattern; a
    /// path's `layer` and `head` are its sender's.
    pub fn axes(self) -> Vec<&'static str> {
        if self.scope() == Scope::Edge {
            return vec!["pair", "edge"];
        }
        let mut axes = vec!["pair", "layer"];
        if self.by_position() {
            axes.push("position");
        }
        if self.by_src() {
            axes.push("src_position");
        }
        if self.by_head() {
            axes.push("head");
        }
        if self.scope() == Scope::Path {
            axes.extend(["receiver_layer", "receiver_head"]);
        }
        axes
    }
}
