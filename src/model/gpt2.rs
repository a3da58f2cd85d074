//! GPT-2: token + position embeddings, pre-LN blocks (causal self-attention, MLP), ln_f, logits
//! tied to wte. Generic over the burn backend; every activation site passes through `Hooks`.
use super::batch::{Batch, Padding};
use super::config::{Activation, Gpt2Config};
use super::sites::{Hooks, Site, SiteKind};
use crate::backend::{cpu, float_options, matmul, Prefix};
use anyhow::{bail, Result};
use burn::prelude::*;
use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::{Distribution, IndexingUpdateOp};

/// `x @ w + b` for token rows `x` [tokens, k]: one 2-D product. Not burn's `module::linear`: on a
/// [batch, 1, k] input (a batched vector-matrix product against the broadcast weight) whose
/// producer is fused, burn 0.21's fused matmul gives wrong results — the last block's single
/// position and one-token suffixes hit it.
pub(crate) fn linear<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 2>, b: &Tensor<B, 1>) -> Tensor<B, 2> {
    cpu::linear(&x, w, Some(b)).unwrap_or_else(|| matmul(x, w.clone()) + b.clone().unsqueeze())
}

/// GPT-2's tanh GELU, 0.5·x·(1 + tanh(u)) with u = √(2/π)(x + 0.044715x³), written as
/// x·sigmoid(2u): equal in exact arithmetic, and on the CPU one exp instead of burn's
/// `gelu_approximate` (a powf and a tanh, 9 passes over the MLP's widest tensor: 18 % of a sweep).
fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const C: f64 = 2.0 * 0.797_884_560_802_865_4; // 2·√(2/π)
    cpu::gelu_new(x).unwrap_or_else(|x| sigmoid(x.clone() * (x.clone() * x.clone() * (C * 0.044715) + C)) * x)
}

/// Where parameters come from: a checkpoint, or a random initialisation. Names are HF's (without
/// the `transformer.` prefix); shapes are what the config implies (Conv1D weights are [in, out]).
pub trait ParamSource<B: Backend> {
    fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>>;
}

pub struct LayerNorm<B: Backend> {
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    fn load(src: &mut impl ParamSource<B>, name: &str, c: &Gpt2Config) -> Result<Self> {
        Ok(Self {
            weight: src.param(&format!("{name}.weight"), [c.n_embd])?,
            bias: src.param(&format!("{name}.bias"), [c.n_embd])?,
            eps: c.layer_norm_epsilon,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(y) = cpu::layer_norm(&x, &self.weight, &self.bias, self.eps) {
            return y;
        }
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = (x - mean) / (var + self.eps).sqrt();
        x * self.weight.clone().unsqueeze() + self.bias.clone().unsqueeze()
    }

    /// The divisor of `x`'s normalization, √(var + eps) over the last axis (biased variance).
    pub fn scale<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        (x.var_bias(D - 1) + self.eps).sqrt()
    }

    pub fn weight(&self) -> &Tensor<B, 1> {
        &self.weight
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn bias(&self) -> &Tensor<B, 1> {
        &self.bias
    }
}

pub struct Attention<B: Backend> {
    pub(crate) c_attn_w: Tensor<B, 2>,
    pub(crate) c_attn_b: Tensor<B, 1>,
    pub(crate) c_proj_w: Tensor<B, 2>,
    pub(crate) c_proj_b: Tensor<B, 1>,
    pub(crate) n_head: usize,
}

impl<B: Backend> Attention<B> {
    fn load(src: &mut impl ParamSource<B>, name: &str, c: &Gpt2Config) -> Result<Self> {
        let d = c.n_embd;
        Ok(Self {
            c_attn_w: src.param(&format!("{name}.c_attn.weight"), [d, 3 * d])?,
            c_attn_b: src.param(&format!("{name}.c_attn.bias"), [3 * d])?,
            c_proj_w: src.param(&format!("{name}.c_proj.weight"), [d, d])?,
            c_proj_b: src.param(&format!("{name}.c_proj.bias"), [d])?,
            n_head: c.n_head,
        })
    }

    /// Attention output of each segment's last `keep` positions (all for None); keys and values
    /// come from all of them and the segment's prefix. `x` is ln_1's output.
    fn forward(&self, x: Batch<B>, layer: usize, prefixes: &[Option<Prefix<B>>], keep: Option<usize>, hooks: &mut impl Hooks<B>) -> Batch<B> {
        let qkv = x.with(linear(x.x.clone(), &self.c_attn_w, &self.c_attn_b));
        let hooked = [SiteKind::Q, SiteKind::K, SiteKind::V, SiteKind::Pattern, SiteKind::Z].into_iter().any(|k| hooks.wants(Site::new(k, layer)));
        let fused = (!hooked).then(|| cpu::attention(&qkv.x, &qkv.shape, prefixes, keep, self.n_head)).flatten();
        let kept = || qkv.shape.iter().map(|&[n, s]| [n, keep.unwrap_or(s).min(s)]).collect();
        let z = match fused.or_else(|| (!hooked).then(|| self.padded(&qkv, prefixes, keep)).flatten()) {
            Some(z) => Batch::new(z, kept()),
            None => {
                let z = qkv.segments().into_iter().zip(prefixes).enumerate();
                Batch::from_parts(z.map(|(g, (qkv, prefix))| vec![self.heads(qkv, layer, g, prefix.as_ref(), keep, hooks)]).collect())
            }
        };
        z.with(linear(z.x.clone(), &self.c_proj_w, &self.c_proj_b))
    }

    /// Every segment's attention at once, [Σ rows·keep, d] as `forward` stacks it, when the batch
    /// has several segments of one total length (prefix and own positions) and no hook inside
    /// attention: each row padded to that length — keys and values from its prefix run, its own
    /// positions written over them, queries zero before its first position (their outputs are
    /// dropped) — so that one launch sequence serves every segment instead of one per segment.
    /// Every prefix of a batch reads the same keys and values (one cached run per pair).
    fn padded(&self, qkv: &Batch<B>, prefixes: &[Option<Prefix<B>>], keep: Option<usize>) -> Option<Tensor<B, 2>> {
        let total = |g: usize| qkv.shape[g][1] + prefixes[g].as_ref().map_or(0, |p| p.len);
        let len = total(0);
        if qkv.shape.len() < 2 || (1..qkv.shape.len()).any(|g| total(g) != len) {
            return None;
        }
        let device = qkv.x.device();
        let [tokens, d3] = qkv.x.dims();
        let (d, h) = (d3 / 3, self.n_head);
        let rows: usize = qkv.shape.iter().map(|&[n, _]| n).sum();
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        // Row i of segment g is row i + (rows of segments before g); a token at position p of row r
        // sits at slot r · len + p.
        let rows_of = || qkv.shape.iter().scan(0, |row, &[n, s]| Some((std::mem::replace(row, *row + n), n, s)));
        let padding = qkv.padding.get_or_init(|| {
            let runs = rows_of().zip(prefixes).flat_map(|((_, n, _), p)| (0..n).map(move |r| p.as_ref().map_or(0, |p| p.pairs[r]) as i64));
            let slots = rows_of().flat_map(|(row, n, s)| (row..row + n).flat_map(move |r| (len - s..len).map(move |p| (r * len + p) as i64)));
            Padding { runs: ints(runs.collect()), slots: ints(slots.collect()).reshape([tokens, 1]) }
        });
        // [rows, heads, len, d_head] of q (`i` 0), k (1) or v (2): the prefix run's, with the
        // computed positions written in.
        let padded = |i: usize, base: Option<&Tensor<B, 4>>| {
            let own = qkv.x.clone().narrow(1, i * d, d);
            let base = match base {
                Some(t) => t.clone().select(0, padding.runs.clone()).narrow(1, 0, len).reshape([rows * len, d]),
                None => Tensor::zeros([rows * len, d], float_options::<B>(&device)),
            };
            base.scatter_nd(padding.slots.clone(), own, IndexingUpdateOp::Assign).reshape([rows, len, h, d / h]).swap_dims(1, 2)
        };
        let queries = keep.unwrap_or(len).min(len);
        let prefix = prefixes.iter().flatten().next();
        let q = padded(0, None).narrow(2, len - queries, queries);
        let (k, v) = (padded(1, prefix.map(|p| &p.k)), padded(2, prefix.map(|p| &p.v)));
        let z = mix(causal_softmax(scores(q, k)), v).reshape([rows * queries, d]);
        // Each row's last `keep` outputs (every output is a computed token's: the slots again).
        let outputs = match keep {
            None => padding.slots.clone().reshape([tokens]),
            Some(_) => ints(rows_of().flat_map(|(row, n, s)| (row..row + n).flat_map(move |r| (queries - queries.min(s)..queries).map(move |p| (r * queries + p) as i64))).collect()),
        };
        Some(z.select(0, outputs))
    }

    /// Row r's head `heads[r]` writing `z` [rows, pos, d_head] into the residual stream through its
    /// rows of c_proj: [rows, pos, d] (TransformerLens' `result`; c_proj's bias is in none).
    pub fn head_write(&self, z: Tensor<B, 3>, heads: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let dh = z.dims()[2];
        let (h, d) = (self.n_head, self.n_head * dh);
        matmul(z, self.c_proj_w.clone().reshape([h, dh, d]).select(0, heads)) // [rows, pos, dh] @ [rows, dh, d]
    }

    /// Row r's head `heads[r]`'s query (`which` 0), key (1) or value (2) of ln_1's output `x`
    /// [rows, pos, d]: [rows, pos, d_head].
    fn head_input(&self, x: Tensor<B, 3>, which: usize, heads: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let d = x.dims()[2];
        let (h, dh) = (self.n_head, d / self.n_head);
        let w = self.c_attn_w.clone().narrow(1, which * d, d).reshape([d, h, dh]).swap_dims(0, 1).select(0, heads.clone()); // [rows, d, dh]
        let b = self.c_attn_b.clone().narrow(0, which * d, d).reshape([h, dh]).select(0, heads).unsqueeze_dim::<3>(1); // [rows, 1, dh]
        matmul(x, w) + b
    }

    /// One segment's heads, their outputs concatenated: [batch, keep, d] from `qkv` [batch, pos, 3d].
    fn heads(&self, qkv: Tensor<B, 3>, layer: usize, segment: usize, prefix: Option<&Prefix<B>>, keep: Option<usize>, hooks: &mut impl Hooks<B>) -> Tensor<B, 3> {
        let [b, s, d3] = qkv.dims();
        let keep = keep.unwrap_or(s);
        let mut split = |i: usize, kind: SiteKind, from: usize| hooks.hook(Site::new(kind, layer), segment, self.split(&qkv, i, from)).swap_dims(1, 2); // [b, h, pos, dh]
        let (q, mut k, mut v) = (split(0, SiteKind::Q, s - keep), split(1, SiteKind::K, 0), split(2, SiteKind::V, 0));
        if let Some(p) = prefix {
            k = Tensor::cat(vec![p.rows(&p.k), k], 2);
            v = Tensor::cat(vec![p.rows(&p.v), v], 2);
        }
        let pattern = hooks.hook(Site::new(SiteKind::Pattern, layer), segment, causal_softmax(scores(q, k)));
        let z = hooks.hook(Site::new(SiteKind::Z, layer), segment, mix(pattern, v)); // [b, keep, h, dh]
        z.reshape([b, keep, d3 / 3])
    }

    /// The queries (`i` 0), keys (1) or values (2) of positions `from`.. in `qkv` [b, pos, 3d]:
    /// [b, pos - from, head, d_head] (TransformerLens' layout).
    pub(crate) fn split(&self, qkv: &Tensor<B, 3>, i: usize, from: usize) -> Tensor<B, 4> {
        let [b, s, d3] = qkv.dims();
        let d = d3 / 3;
        qkv.clone().narrow(2, i * d, d).narrow(1, from, s - from).reshape([b, s - from, self.n_head, d / self.n_head])
    }
}

/// Attention scores q·kᵀ/√d_head, [b, h, queries, keys], of `q` [b, h, queries, dh] and `k`
/// [b, h, keys, dh].
pub(crate) fn scores<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
    let dh = q.dims()[3];
    matmul(q, k.swap_dims(2, 3)) / (dh as f64).sqrt()
}

/// The attention pattern of `scores` [b, h, keep, total]: the queries are the last `keep` of
/// `total` positions, query i at position total - keep + i seeing keys 0..=total - keep + i.
pub(crate) fn causal_softmax<B: Backend>(scores: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, keep, total] = scores.dims();
    let future = Tensor::<B, 2, Bool>::tril_mask([keep, total], (total - keep) as i64, &scores.device()).unsqueeze::<4>().expand([b, h, keep, total]);
    softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3)
}

/// The heads' outputs (TransformerLens' `z`) [b, keep, h, dh] of `pattern` [b, h, keep, total] and
/// values `v` [b, h, total, dh].
pub(crate) fn mix<B: Backend>(pattern: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    matmul(pattern, v).swap_dims(1, 2)
}

pub struct Mlp<B: Backend> {
    pub(crate) c_fc_w: Tensor<B, 2>,
    pub(crate) c_fc_b: Tensor<B, 1>,
    pub(crate) c_proj_w: Tensor<B, 2>,
    pub(crate) c_proj_b: Tensor<B, 1>,
    activation: Activation,
}

impl<B: Backend> Mlp<B> {
    fn load(src: &mut impl ParamSource<B>, name: &str, c: &Gpt2Config) -> Result<Self> {
        let (d, inner) = (c.n_embd, c.n_inner);
        Ok(Self {
            c_fc_w: src.param(&format!("{name}.c_fc.weight"), [d, inner])?,
            c_fc_b: src.param(&format!("{name}.c_fc.bias"), [inner])?,
            c_proj_w: src.param(&format!("{name}.c_proj.weight"), [inner, d])?,
            c_proj_b: src.param(&format!("{name}.c_proj.bias"), [d])?,
            activation: c.activation,
        })
    }

    pub(crate) fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(self.activation(linear(x, &self.c_fc_w, &self.c_fc_b)), &self.c_proj_w, &self.c_proj_b)
    }

    pub(crate) fn activation(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.activation {
            Activation::GeluNew => gelu_new(x),
            Activation::Gelu => gelu(x),
        }
    }
}

pub struct Block<B: Backend> {
    pub(crate) ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub(crate) ln_2: LayerNorm<B>,
    pub(crate) mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    fn load(src: &mut impl ParamSource<B>, layer: usize, c: &Gpt2Config) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::load(src, &format!("h.{layer}.ln_1"), c)?,
            attn: Attention::load(src, &format!("h.{layer}.attn"), c)?,
            ln_2: LayerNorm::load(src, &format!("h.{layer}.ln_2"), c)?,
            mlp: Mlp::load(src, &format!("h.{layer}.mlp"), c)?,
        })
    }

    /// Row r's head `heads[r]`'s query (`which` 0), key (1) or value (2) when it alone reads the
    /// residual stream `resid` [rows, pos, d] (TransformerLens' split q/k/v input): [rows, pos, d_head].
    pub fn head_input(&self, resid: Tensor<B, 3>, which: usize, heads: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        self.attn.head_input(self.ln_1.forward(resid), which, heads)
    }

    /// One block on `x`. A segment's `prefix` holds the keys and values of the positions before
    /// it. Only the last `keep` positions (all for None) go on past the keys and values: the last
    /// block's when only the last position's logits are read.
    pub fn forward(&self, x: Batch<B>, layer: usize, prefixes: &[Option<Prefix<B>>], keep: Option<usize>, hooks: &mut impl Hooks<B>) -> Batch<B> {
        let site = |kind| Site::new(kind, layer);
        let x = x.hook(site(SiteKind::ResidPre), hooks);
        let attn_out = self.attn.forward(x.with(self.ln_1.forward(x.x.clone())), layer, prefixes, keep, hooks);
        let attn_out = attn_out.hook(site(SiteKind::AttnOut), hooks);
        let x = x.last(keep);
        let x = x.with(x.x.clone() + attn_out.x).hook(site(SiteKind::ResidMid), hooks);
        let mlp_in = x.with(x.x.clone()).hook(site(SiteKind::MlpIn), hooks);
        let mlp_out = x.with(self.mlp.forward(self.ln_2.forward(mlp_in.x))).hook(site(SiteKind::MlpOut), hooks);
        x.with(x.x.clone() + mlp_out.x).hook(site(SiteKind::ResidPost), hooks)
    }
}

pub struct Gpt2<B: Backend> {
    pub config: Gpt2Config,
    pub(crate) wte: Tensor<B, 2>,
    wpe: Tensor<B, 2>,
    pub blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
}

impl<B: Backend> Gpt2<B> {
    pub fn load(config: Gpt2Config, src: &mut impl ParamSource<B>) -> Result<Self> {
        let c = &config;
        Ok(Self {
            wte: src.param("wte.weight", [c.vocab_size, c.n_embd])?,
            wpe: src.param("wpe.weight", [c.n_positions, c.n_embd])?,
            blocks: (0..c.n_layer).map(|l| Block::load(src, l, c)).collect::<Result<_>>()?,
            ln_f: LayerNorm::load(src, "ln_f", c)?,
            config,
        })
    }

    /// GPT-2's initialisation (normal, std 0.02; LayerNorm at identity), for benchmarks.
    pub fn random(config: Gpt2Config, seed: u64, device: &B::Device) -> Self {
        B::seed(device, seed);
        Self::load(config, &mut RandomInit { device: device.clone() }).expect("random init cannot fail")
    }

    pub fn device(&self) -> B::Device {
        self.wte.device()
    }

    /// Token ids [batch, pos] as a tensor; ids and lengths are checked against the config.
    pub fn tokens(&self, rows: &[Vec<u32>]) -> Result<Tensor<B, 2, Int>> {
        let s = rows.first().map_or(0, Vec::len);
        if s == 0 || rows.iter().any(|r| r.len() != s) {
            bail!("a batch needs non-empty token rows of one length");
        }
        if s > self.config.n_positions {
            bail!("{s} tokens exceed the model's context of {} positions", self.config.n_positions);
        }
        if let Some(&id) = rows.iter().flatten().find(|&&id| id as usize >= self.config.vocab_size) {
            bail!("token id {id} is outside the model's vocabulary of {}", self.config.vocab_size);
        }
        let flat: Vec<i64> = rows.iter().flatten().map(|&id| id as i64).collect();
        Ok(Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [rows.len() * s]), &self.device()).reshape([rows.len(), s]))
    }

    /// Embeddings of `tokens` placed at positions start.. (start > 0 for a suffix).
    pub fn embed(&self, tokens: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        let [tok, pos] = self.embed_parts(tokens, start);
        tok + pos
    }

    /// The token embeddings [batch, pos, d] and the position embeddings [1, pos, d] that `embed`
    /// adds (TransformerLens' `hook_embed` and `hook_pos_embed`).
    pub fn embed_parts(&self, tokens: Tensor<B, 2, Int>, start: usize) -> [Tensor<B, 3>; 2] {
        let [b, s] = tokens.dims();
        let tok = self.wte.clone().select(0, tokens.reshape([b * s])).reshape([b, s, self.config.n_embd]);
        [tok, self.wpe.clone().narrow(0, start, s).unsqueeze::<3>()]
    }

    pub fn ln_f(&self) -> &LayerNorm<B> {
        &self.ln_f
    }

    /// The unembedding's columns of `ids` [rows, k] (tied: wte's rows), [rows, k, d].
    pub fn unembedding(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [rows, k] = ids.dims();
        self.wte.clone().select(0, ids.reshape([rows * k])).reshape([rows, k, self.config.n_embd])
    }

    /// Logits [batch, pos, vocab] of the final residual stream.
    pub fn unembed(&self, resid: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = resid.dims();
        let x = self.ln_f.forward(resid).reshape([b * s, d]);
        // On the CPU, one gemm reading wte's transpose in place (burn-flex's matmul would copy it:
        // 154 MB on GPT-2 small, half of a decoding step).
        let w = self.wte.clone().transpose();
        cpu::linear(&x, &w, None).unwrap_or_else(|| matmul(x, w)).reshape([b, s, self.config.vocab_size])
    }

    /// The logits of chosen tokens only: `resid` [rows, d] (one position per row), `ids` [rows, k]
    /// gives [rows, k]. Equal to gathering `unembed`'s output, at a fraction of its cost.
    pub fn logits_of(&self, resid: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [rows, k] = ids.dims();
        (self.ln_f.forward(resid).unsqueeze_dim::<3>(1) * self.unembedding(ids)).sum_dim(2).reshape([rows, k])
    }

    /// The whole forward pass: logits [batch, pos, vocab].
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, hooks: &mut impl Hooks<B>) -> Tensor<B, 3> {
        self.unembed(self.resid_final(tokens, hooks))
    }

    /// The residual stream after the last block, [batch, pos, d].
    pub fn resid_final(&self, tokens: Tensor<B, 2, Int>, hooks: &mut impl Hooks<B>) -> Tensor<B, 3> {
        let x = Batch::one(self.embed(tokens, 0));
        self.blocks.iter().enumerate().fold(x, |x, (l, block)| block.forward(x, l, &[None], None, hooks)).into_one()
    }
}

struct RandomInit<B: Backend> {
    device: B::Device,
}

impl<B: Backend> ParamSource<B> for RandomInit<B> {
    fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let is_ln = name.contains("ln_");
        let float = float_options::<B>(&self.device);
        Ok(match (is_ln, name.ends_with("weight")) {
            (true, true) => Tensor::ones(shape, float),
            (_, false) => Tensor::zeros(shape, float),
            (false, true) => Tensor::random(shape, Distribution::Normal(0.0, 0.02), float),
        })
    }
}
