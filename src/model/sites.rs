//! Activation sites, named as TransformerLens names its hooks, and the hook mechanism the forward
//! pass calls at each of them: a hook may read an activation (cache it) or return a replacement.
use super::batch::Batch;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A head's query, key or value: which input of a head an edge feeds, and which of q, k, v a
/// weight or projection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qkv {
    Q,
    K,
    V,
}

impl Qkv {
    pub const ALL: [Qkv; 3] = [Qkv::Q, Qkv::K, Qkv::V];

    pub fn name(self) -> &'static str {
        match self {
            Qkv::Q => "q",
            Qkv::K => "k",
            Qkv::V => "v",
        }
    }

    /// Its place in q|k|v order.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    ResidPre,
    ResidMid,
    ResidPost,
    AttnOut,
    MlpOut,
    /// Per head, [batch, pos, head, d_head].
    Q,
    K,
    V,
    /// Head outputs before c_proj, [batch, pos, head, d_head].
    Z,
    /// Attention probabilities, [batch, head, query_pos, key_pos].
    Pattern,
    /// What the MLP alone reads (ln_2's input; TransformerLens' `hook_mlp_in`): the residual
    /// stream resid_mid in a plain run, so not among `ALL`; edge patching writes into it.
    MlpIn,
    /// Each query head's own k and v, [batch, pos, head, d_head]: under grouped attention its
    /// group's repeated (EAP-IG's `ungroup_grouped_query_attention`), else k and v themselves.
    /// Not among `ALL`: paths and edges write a receiving head's own k or v input here.
    KHead,
    VHead,
    /// The token embeddings alone, [batch, pos, d] (TransformerLens' `hook_embed`, layer 0;
    /// learned position embeddings are added after it): the graph's input node, as EAP-IG's is.
    /// Not among `ALL`.
    Embed,
}

impl SiteKind {
    pub const ALL: [SiteKind; 10] = [
        Self::ResidPre,
        Self::ResidMid,
        Self::ResidPost,
        Self::AttnOut,
        Self::MlpOut,
        Self::Q,
        Self::K,
        Self::V,
        Self::Z,
        Self::Pattern,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ResidPre => "resid_pre",
            Self::ResidMid => "resid_mid",
            Self::ResidPost => "resid_post",
            Self::AttnOut => "attn_out",
            Self::MlpOut => "mlp_out",
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::Z => "z",
            Self::Pattern => "pattern",
            Self::MlpIn => "mlp_in",
            Self::KHead => "k_head",
            Self::VHead => "v_head",
            Self::Embed => "embed",
        }
    }

    /// A kind by its name (`resid_pre`, `attn_out`, `z`, ...).
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            anyhow::anyhow!("unknown site {name:?}: expected one of {}", Self::ALL.map(Self::name).join(", "))
        })
    }

    /// A kind by its name, the internal ones (`mlp_in`, `k_head`, `v_head`, `embed`) included: for
    /// names patchbay itself wrote (a results directory's means).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().chain([Self::MlpIn, Self::KHead, Self::VHead, Self::Embed]).find(|k| k.name() == name)
    }

    /// TransformerLens' hook name, e.g. `blocks.3.hook_resid_pre`, `blocks.3.attn.hook_z`.
    pub fn hook_name(self, layer: impl std::fmt::Display) -> String {
        if self == Self::Embed {
            "hook_embed".into()
        } else if self.in_attention() {
            format!("blocks.{layer}.attn.hook_{}", self.name())
        } else {
            format!("blocks.{layer}.hook_{}", self.name())
        }
    }

    /// Whether the site is inside attention, per head (q, k, v, z, pattern), not residual-shaped.
    pub fn in_attention(self) -> bool {
        matches!(self, Self::Q | Self::K | Self::V | Self::Z | Self::Pattern | Self::KHead | Self::VHead)
    }
}

/// The rank-4 shape sites are stored in: residual-shaped [b, s, d] as [b, s, 1, d].
pub fn rank4(dims: &[usize]) -> [usize; 4] {
    let mut dims = dims.to_vec();
    if dims.len() == 3 {
        dims.insert(2, 1);
    }
    dims.try_into().expect("sites are rank 3 or 4")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    pub kind: SiteKind,
    pub layer: usize,
}

impl Site {
    pub fn new(kind: SiteKind, layer: usize) -> Self {
        Self { kind, layer }
    }
}

/// Called by the forward pass with every activation as it is computed, once per segment of the
/// batch (`model::Batch`; a plain forward pass has one); the returned tensor is the one the forward
/// continues with. Residual-shaped sites are rank 3, per-head sites rank 4.
pub trait Hooks<B: Backend> {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D>;

    /// Whether `hook` may read or replace `site`: residual-shaped sites are split into segments
    /// only for a hook that wants them.
    fn wants(&self, site: Site) -> bool;

    /// A residual-shaped site over the whole batch: `x` [tokens, d] stacks the segments of `shape`
    /// (`model::Batch`). By default each segment is hooked in turn; a hook that can change every
    /// segment at once overrides this (one operation instead of a split, a hook per segment and a
    /// concatenation of the whole batch).
    fn hook_batch(&mut self, site: Site, x: Tensor<B, 2>, shape: &[[usize; 2]]) -> Tensor<B, 2>
    where
        Self: Sized,
    {
        hook_segments(self, site, x, shape)
    }
}

/// `Hooks::hook_batch`'s default: each segment hooked in turn, then stacked again.
pub fn hook_segments<B: Backend>(hooks: &mut impl Hooks<B>, site: Site, x: Tensor<B, 2>, shape: &[[usize; 2]]) -> Tensor<B, 2> {
    let batch = Batch::new(x, shape.to_vec());
    Batch::from_parts(batch.segments().into_iter().enumerate().map(|(g, t)| vec![hooks.hook(site, g, t)]).collect()).x
}

impl<B: Backend> Batch<B> {
    /// The batch through `hooks` at `site`; nothing is split or copied where no hook wants it.
    pub(super) fn hook(self, site: Site, hooks: &mut impl Hooks<B>) -> Self {
        if !hooks.wants(site) {
            return self;
        }
        let x = hooks.hook_batch(site, self.x.clone(), &self.shape);
        self.with(x)
    }
}

/// The plain forward pass.
pub struct NoHooks;

impl<B: Backend> Hooks<B> for NoHooks {
    fn hook<const D: usize>(&mut self, _site: Site, _segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        act
    }

    fn wants(&self, _site: Site) -> bool {
        false
    }
}

/// Records the activations of chosen sites in a plain (one-segment) forward pass. Tensors are
/// reference counted: caching keeps the activation alive, it does not copy it.
pub struct Cache<B: Backend> {
    want: Vec<Site>,
    acts: HashMap<Site, Tensor<B, 4>>,
}

impl<B: Backend> Cache<B> {
    pub fn new(want: impl IntoIterator<Item = Site>) -> Self {
        Self { want: want.into_iter().collect(), acts: HashMap::new() }
    }

    /// Residual-shaped activation [batch, pos, d].
    pub fn resid(&self, site: Site) -> Option<Tensor<B, 3>> {
        self.acts.get(&site).map(|t| {
            let [b, s, _, d] = t.dims();
            t.clone().reshape([b, s, d])
        })
    }

    /// Per-head activation, as the site defines its axes.
    pub fn heads(&self, site: Site) -> Option<Tensor<B, 4>> {
        self.acts.get(&site).cloned()
    }

    /// The same sites with each activation replaced by `f(site, activation)`.
    pub fn map(&self, f: impl Fn(Site, Tensor<B, 4>) -> Tensor<B, 4>) -> Self {
        Self { want: self.want.clone(), acts: self.acts.iter().map(|(&s, t)| (s, f(s, t.clone()))).collect() }
    }
}

impl<B: Backend> Hooks<B> for Cache<B> {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        assert_eq!(segment, 0, "a Cache records plain forward passes (one segment)");
        if self.want.contains(&site) {
            self.acts.insert(site, act.clone().reshape(rank4(&act.dims())));
        }
        act
    }

    fn wants(&self, site: Site) -> bool {
        self.want.contains(&site)
    }
}

/// Two hooks in turn: the second sees what the first returned (e.g. steering, then recording the
/// steered activation).
impl<B: Backend, H1: Hooks<B>, H2: Hooks<B>> Hooks<B> for (H1, H2) {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        let act = if self.0.wants(site) { self.0.hook(site, segment, act) } else { act };
        if self.1.wants(site) {
            self.1.hook(site, segment, act)
        } else {
            act
        }
    }

    fn wants(&self, site: Site) -> bool {
        self.0.wants(site) || self.1.wants(site)
    }

    fn hook_batch(&mut self, site: Site, x: Tensor<B, 2>, shape: &[[usize; 2]]) -> Tensor<B, 2> {
        let x = if self.0.wants(site) { self.0.hook_batch(site, x, shape) } else { x };
        if self.1.wants(site) {
            self.1.hook_batch(site, x, shape)
        } else {
            x
        }
    }
}

/// An optional hook: none is the plain forward pass.
impl<B: Backend, H: Hooks<B>> Hooks<B> for Option<H> {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Some(h) => h.hook(site, segment, act),
            None => act,
        }
    }

    fn wants(&self, site: Site) -> bool {
        self.as_ref().is_some_and(|h| h.wants(site))
    }

    fn hook_batch(&mut self, site: Site, x: Tensor<B, 2>, shape: &[[usize; 2]]) -> Tensor<B, 2> {
        match self {
            Some(h) => h.hook_batch(site, x, shape),
            None => x,
        }
    }
}

impl<B: Backend, H: Hooks<B>> Hooks<B> for &mut H {
    fn hook<const D: usize>(&mut self, site: Site, segment: usize, act: Tensor<B, D>) -> Tensor<B, D> {
        (**self).hook(site, segment, act)
    }

    fn wants(&self, site: Site) -> bool {
        (**self).wants(site)
    }

    fn hook_batch(&mut self, site: Site, x: Tensor<B, 2>, shape: &[[usize; 2]]) -> Tensor<B, 2> {
        (**self).hook_batch(site, x, shape)
    }
}
