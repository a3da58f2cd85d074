//! The generic decoder every family loads into (`ModelConfig`): token (+ learned position)
//! embeddings, pre-norm blocks (causal self-attention with rotary or no positions, grouped keys
//! and values, scores scaled, soft-capped and windowed as the family does; an MLP plain or gated;
//! the two in sequence or in parallel, each optionally post-normed), a final norm, the unembedding
//! (tied or its own, its logits optionally soft-capped).
//! Parameters have generic names (`blocks.{l}.attn.qkv.weight`, ...) that each family's file maps
//! onto its checkpoint's. Generic over the burn backend; every activation site passes through `Hooks`.
use super::batch::{Batch, Padding};
use super::config::{Activation, ModelConfig, Norm as NormKind, Rotary};
use super::sites::{Hooks, Qkv, Site, SiteKind};
use crate::backend::{cpu, float_options, matmul, Prefix};
use anyhow::{bail, Result};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation::{gelu, sigmoid, silu, softmax};
use burn::tensor::{Distribution, IndexingUpdateOp};

/// `x @ w + b` for token rows `x` [tokens, k]: one 2-D product. Not burn's `module::linear`: on a
/// [batch, 1, k] input (a batched vector-matrix product against the broadcast weight) whose
/// producer is fused, burn 0.21's fused matmul gives wrong results — the last block's single
/// position and one-token suffixes hit it.
pub(crate) fn linear<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 2>, b: Option<&Tensor<B, 1>>) -> Tensor<B, 2> {
    cpu::linear(&x, w, b).unwrap_or_else(|| match b {
        Some(b) => matmul(x, w.clone()) + b.clone().unsqueeze(),
        None => matmul(x, w.clone()),
    })
}

/// GPT-2's tanh GELU, 0.5·x·(1 + tanh(u)) with u = √(2/π)(x + 0.044715x³), written as
/// x·sigmoid(2u): equal in exact arithmetic, and on the CPU one exp instead of burn's
/// `gelu_approximate` (a powf and a tanh, 9 passes over the MLP's widest tensor: 18 % of a sweep).
fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const C: f64 = 2.0 * 0.797_884_560_802_865_4; // 2·√(2/π)
    cpu::gelu_new(x).unwrap_or_else(|x| sigmoid(x.clone() * (x.clone() * x.clone() * (C * 0.044715) + C)) * x)
}

/// Where parameters come from: a checkpoint (through its family's names), or a random
/// initialisation. Names are generic; shapes are what the config implies (weights are [in, out]).
pub trait ParamSource<B: Backend> {
    fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>>;

    /// A linear layer's `{name}.weight` [inputs, outputs], and its `{name}.bias` when it has one.
    fn linear(&mut self, name: &str, [inputs, outputs]: [usize; 2], bias: bool) -> Result<(Tensor<B, 2>, Option<Tensor<B, 1>>)>
    where
        Self: Sized,
    {
        Ok((self.param(&format!("{name}.weight"), [inputs, outputs])?, bias.then(|| self.param(&format!("{name}.bias"), [outputs])).transpose()?))
    }
}

/// A LayerNorm or an RMSNorm over the last axis.
pub struct Norm<B: Backend> {
    kind: NormKind,
    weight: Tensor<B, 1>,
    /// LayerNorm's.
    bias: Option<Tensor<B, 1>>,
    eps: f64,
}

impl<B: Backend> Norm<B> {
    fn load(src: &mut impl ParamSource<B>, name: &str, width: usize, c: &ModelConfig) -> Result<Self> {
        let bias = match c.norm {
            NormKind::LayerNorm => Some(src.param(&format!("{name}.bias"), [width])?),
            NormKind::RmsNorm => None,
        };
        Ok(Self { kind: c.norm, weight: src.param(&format!("{name}.weight"), [width])?, bias, eps: c.eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight.clone().unsqueeze();
        match &self.bias {
            Some(bias) => {
                if let Some(y) = cpu::layer_norm(&x, &self.weight, bias, self.eps) {
                    return y;
                }
                let (var, mean) = x.clone().var_mean_bias(D - 1);
                (x - mean) / (var + self.eps).sqrt() * w + bias.clone().unsqueeze()
            }
            None => x.clone() / self.scale(x) * w,
        }
    }

    /// The divisor of `x`'s normalization over the last axis: √(var + eps) (biased variance), or
    /// RMSNorm's √(mean(x²) + eps).
    pub fn scale<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.kind {
            NormKind::LayerNorm => (x.var_bias(D - 1) + self.eps).sqrt(),
            NormKind::RmsNorm => ((x.clone() * x).mean_dim(D - 1) + self.eps).sqrt(),
        }
    }

    /// The gradient of the input `x` [.., d] given the output's `gy` (broadcast against it):
    /// LayerNorm (ĝ − mean ĝ − x̂·mean(ĝ·x̂)) / σ with ĝ = gy ⊙ w, x̂ = (x − μ)/σ, σ = √(var + eps);
    /// RMSNorm (ĝ − x̂·mean(ĝ·x̂)) / σ with x̂ = x/σ, σ = √(mean(x²) + eps).
    pub fn vjp<const D: usize>(&self, x: Tensor<B, D>, gy: Tensor<B, D>) -> Tensor<B, D> {
        let sigma = self.scale(x.clone());
        let xhat = if self.centres() { (x.clone() - x.mean_dim(D - 1)) / sigma.clone() } else { x / sigma.clone() };
        let g = gy * self.weight.clone().unsqueeze();
        let gx_mean = (g.clone() * xhat.clone()).mean_dim(D - 1);
        let g = if self.centres() { g.clone() - g.mean_dim(D - 1) } else { g };
        (g - xhat * gx_mean) / sigma
    }

    /// The output's change for an input change `dx` at `x` to first order (the Jacobian-vector
    /// product; `x` broadcast against `dx`): (ĝ − x̂·mean(ĝ·x̂)) / σ ⊙ w with ĝ = dx, centred for a
    /// LayerNorm, x̂ and σ as in `vjp`.
    pub fn jvp<const D: usize>(&self, x: Tensor<B, D>, dx: Tensor<B, D>) -> Tensor<B, D> {
        let sigma = self.scale(x.clone());
        let (xhat, dx) = match self.centres() {
            true => ((x.clone() - x.mean_dim(D - 1)) / sigma.clone(), dx.clone() - dx.mean_dim(D - 1)),
            false => (x / sigma.clone(), dx),
        };
        let along = (dx.clone() * xhat.clone()).mean_dim(D - 1);
        (dx - xhat * along) / sigma * self.weight.clone().unsqueeze()
    }

    /// Whether it subtracts the mean first (a LayerNorm): what TransformerLens' `apply_ln` centres.
    pub fn centres(&self) -> bool {
        self.kind == NormKind::LayerNorm
    }

    pub fn weight(&self) -> &Tensor<B, 1> {
        &self.weight
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn bias(&self) -> Option<&Tensor<B, 1>> {
        self.bias.as_ref()
    }
}

/// Rotary position embeddings' cos and sin of every position, [context, rotated dims], each
/// frequency twice (as HF's `cat((freqs, freqs))`), computed in f32 as HF computes them.
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    dims: usize,
}

impl<B: Backend> Rope<B> {
    fn new(r: &Rotary, context: usize, device: &B::Device) -> Self {
        let half = r.dims / 2;
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / (r.theta as f32).powf((2 * i) as f32 / r.dims as f32)).collect();
        // Llama 3 (transformers' `_compute_llama3_parameters`): long wavelengths divided by the
        // factor, short ones kept, the band between interpolated.
        let inv_freq: Vec<f32> = match &r.llama3 {
            None => inv_freq,
            Some(l) => {
                let (factor, low, high, old) = (l.factor as f32, l.low_freq_factor as f32, l.high_freq_factor as f32, l.original_context as f32);
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                inv_freq
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = (old / wavelen - low) / (high - low);
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium { (1.0 - smooth) * scaled / factor + smooth * scaled } else { scaled }
                    })
                    .collect()
            }
        };
        let angles: Vec<f32> = (0..context).flat_map(|p| (0..r.dims).map(move |j| (p as f32, j % half))).map(|(p, j)| p * inv_freq[j]).collect();
        let table = |f: fn(f32) -> f32| Tensor::<B, 2>::from_data(TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<f32>>(), [context, r.dims]), float_options::<B>(device));
        Self { cos: table(f32::cos), sin: table(f32::sin), dims: r.dims }
    }

    /// `x` [b, heads, s, d_head] at positions start.., its first `dims` rotated (x·cos +
    /// rotate_half(x)·sin).
    fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let [_, _, s, dh] = x.dims();
        let (cos, sin) = (self.cos.clone().narrow(0, start, s).unsqueeze::<4>(), self.sin.clone().narrow(0, start, s).unsqueeze::<4>());
        let half = self.dims / 2;
        let rot = x.clone().narrow(3, 0, self.dims);
        let turned = Tensor::cat(vec![-rot.clone().narrow(3, half, half), rot.clone().narrow(3, 0, half)], 3);
        let rotated = rot * cos + turned * sin;
        if self.dims == dh {
            rotated
        } else {
            Tensor::cat(vec![rotated, x.narrow(3, self.dims, dh - self.dims)], 3)
        }
    }
}

/// Causal self-attention: q|k|v from one product (`w_qkv` [d, (heads + 2·kv_heads)·d_head]),
/// an optional RMSNorm over each head's q and k, rotary or no positions, grouped key/value heads.
pub struct Attention<B: Backend> {
    pub(crate) w_qkv: Tensor<B, 2>,
    pub(crate) b_qkv: Option<Tensor<B, 1>>,
    pub(crate) w_o: Tensor<B, 2>,
    pub(crate) b_o: Option<Tensor<B, 1>>,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) d_head: usize,
    qk_norm: Option<[Norm<B>; 2]>,
    rope: Option<std::sync::Arc<Rope<B>>>,
    /// The scores' multiplier where it is not 1/√d_head.
    query_scale: Option<f64>,
    softcap: Option<f64>,
    /// This layer's sliding window: each query sees its last `window` keys.
    window: Option<usize>,
}

impl<B: Backend> Attention<B> {
    fn load(src: &mut impl ParamSource<B>, layer: usize, c: &ModelConfig, rope: Option<std::sync::Arc<Rope<B>>>) -> Result<Self> {
        let name = format!("blocks.{layer}.attn");
        let (d, inner, qkv) = (c.d_model, c.heads * c.d_head, (c.heads + 2 * c.kv_heads) * c.d_head);
        let qk_norm = match c.qk_norm {
            true => Some([Norm::load(src, &format!("{name}.q_norm"), c.d_head, c)?, Norm::load(src, &format!("{name}.k_norm"), c.d_head, c)?]),
            false => None,
        };
        let (w_qkv, b_qkv) = src.linear(&format!("{name}.qkv"), [d, qkv], c.qkv_bias)?;
        let (w_o, b_o) = src.linear(&format!("{name}.out"), [inner, d], c.out_bias)?;
        Ok(Self {
            w_qkv,
            b_qkv,
            w_o,
            b_o,
            heads: c.heads,
            kv_heads: c.kv_heads,
            d_head: c.d_head,
            qk_norm,
            rope,
            query_scale: c.query_scale,
            softcap: c.attn_softcap,
            window: c.window_of(layer),
        })
    }

    /// The CPU kernel's description of this attention (None for a LayerNorm over q and k, which
    /// it does not compute).
    fn spec(&self) -> Option<cpu::AttentionSpec<'_, B>> {
        if self.qk_norm.as_ref().is_some_and(|[q, _]| q.centres()) {
            return None;
        }
        Some(cpu::AttentionSpec {
            heads: self.heads,
            kv_heads: self.kv_heads,
            d_head: self.d_head,
            scale: self.query_scale.unwrap_or(1.0 / (self.d_head as f64).sqrt()) as f32,
            softcap: self.softcap.map(|c| c as f32),
            window: self.window,
            qk_norm: self.qk_norm.as_ref().map(|[q, k]| (q.weight(), k.weight(), q.eps())),
            rope: self.rope.as_ref().map(|r| (&r.cos, &r.sin)),
        })
    }

    /// The scores of positioned `q` [b, h, queries, dh] and grouped `k` [b, h, keys, dh]: q·kᵀ
    /// scaled, then soft-capped where the model caps them, [b, h, queries, keys].
    pub fn scores(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
        let s = match self.query_scale {
            None => scores(q, k),
            Some(scale) => matmul(q, k.swap_dims(2, 3)) * scale,
        };
        match self.softcap {
            Some(cap) => s.div_scalar(cap).tanh().mul_scalar(cap),
            None => s,
        }
    }

    /// The pattern of `scores` [b, h, queries, keys] (the queries the last of the keys' positions):
    /// causal, and within this layer's window.
    pub fn pattern(&self, scores: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.window {
            None => causal_softmax(scores),
            Some(w) => {
                let [b, h, queries, keys] = scores.dims();
                // Query i (at position i' = keys − queries + i) sees keys j with i' − w < j ≤ i'.
                let old = Tensor::<B, 2, Bool>::tril_mask([queries, keys], (keys - queries) as i64 - w as i64, &scores.device()).bool_not();
                causal_softmax(scores.mask_fill(old.unsqueeze::<4>().expand([b, h, queries, keys]), f32::NEG_INFINITY))
            }
        }
    }

    /// Where q (`i` 0), k (1) or v (2) starts in q|k|v, and its heads.
    fn part(&self, x: Qkv) -> (usize, usize) {
        match x {
            Qkv::Q => (0, self.heads),
            _ => ((self.heads + (x.index() - 1) * self.kv_heads) * self.d_head, self.kv_heads),
        }
    }

    /// The scores' inputs from hooked q [b, h, queries, dh] and k [b, kv, keys, dh] (the queries
    /// the last of the keys' positions): each head's norm, then the rotation at its positions.
    pub fn positioned(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (q, k) = match &self.qk_norm {
            Some([nq, nk]) => (nq.forward(q), nk.forward(k)),
            None => (q, k),
        };
        match &self.rope {
            Some(rope) => {
                let (queries, keys) = (q.dims()[2], k.dims()[2]);
                (rope.apply(q, keys - queries), rope.apply(k, 0))
            }
            None => (q, k),
        }
    }

    /// Keys or values [b, kv, pos, dh] for every query head, [b, h, pos, dh] (head i reads group
    /// i / (heads / kv_heads), as HF's `repeat_kv`).
    pub fn grouped(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, kv, s, dh] = t.dims();
        if kv == self.heads {
            return t;
        }
        let n = self.heads / kv;
        t.unsqueeze_dim::<5>(2).expand([b, kv, n, s, dh]).reshape([b, kv * n, s, dh])
    }

    /// The heads' outputs (TransformerLens' `z`) [b, queries, h, dh] of hooked q [b, h,
    /// queries, dh], k and v [b, kv, keys, dh], and the pattern [b, h, queries, keys] on its way
    /// (through `pattern`, the hook that may read or replace it).
    pub fn attend(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, pattern: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>) -> Tensor<B, 4> {
        let (q, k) = self.positioned(q, k);
        mix(pattern(self.pattern(self.scores(q, self.grouped(k)))), self.grouped(v))
    }

    /// Attention output of each segment's last `keep` positions (all for None); keys and values
    /// come from all of them and the segment's prefix. `x` is norm_attn's output.
    fn forward(&self, x: Batch<B>, layer: usize, prefixes: &[Option<Prefix<B>>], keep: Option<usize>, hooks: &mut impl Hooks<B>) -> Batch<B> {
        let qkv = x.with(linear(x.x.clone(), &self.w_qkv, self.b_qkv.as_ref()));
        let hooked = [SiteKind::Q, SiteKind::K, SiteKind::V, SiteKind::Pattern, SiteKind::Z, SiteKind::KHead, SiteKind::VHead].into_iter().any(|k| hooks.wants(Site::new(k, layer)));
        let fast = !hooked;
        let fused = fast.then(|| self.spec().and_then(|spec| cpu::attention(&qkv.x, &qkv.shape, prefixes, keep, &spec))).flatten();
        let kept = || qkv.shape.iter().map(|&[n, s]| [n, keep.unwrap_or(s).min(s)]).collect();
        let z = match fused.or_else(|| fast.then(|| self.padded(&qkv, prefixes, keep)).flatten()) {
            Some(z) => Batch::new(z, kept()),
            None => {
                let z = qkv.segments().into_iter().zip(prefixes).enumerate();
                Batch::from_parts(z.map(|(g, (qkv, prefix))| vec![self.heads(qkv, layer, g, prefix.as_ref(), keep, hooks)]).collect())
            }
        };
        z.with(linear(z.x.clone(), &self.w_o, self.b_o.as_ref()))
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
        let tokens = qkv.x.dims()[0];
        let dh = self.d_head;
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
        // [rows, heads (kv_heads for k and v), len, d_head] of q, k or v: the prefix run's, with
        // the computed positions written in.
        let padded = |x: Qkv, base: Option<&Tensor<B, 4>>| {
            let (start, n) = self.part(x);
            let own = qkv.x.clone().narrow(1, start, n * dh);
            let base = match base {
                Some(t) => t.clone().select(0, padding.runs.clone()).narrow(1, 0, len).reshape([rows * len, n * dh]),
                None => Tensor::zeros([rows * len, n * dh], float_options::<B>(&device)),
            };
            base.scatter_nd(padding.slots.clone(), own, IndexingUpdateOp::Assign).reshape([rows, len, n, dh]).swap_dims(1, 2)
        };
        let queries = keep.unwrap_or(len).min(len);
        let prefix = prefixes.iter().flatten().next();
        let q = padded(Qkv::Q, None).narrow(2, len - queries, queries);
        let (k, v) = (padded(Qkv::K, prefix.map(|p| &p.k)), padded(Qkv::V, prefix.map(|p| &p.v)));
        let z = self.attend(q, k, v, |pattern| pattern).reshape([rows * queries, self.heads * dh]);
        // Each row's last `keep` outputs (every output is a computed token's: the slots again).
        let outputs = match keep {
            None => padding.slots.clone().reshape([tokens]),
            Some(_) => ints(rows_of().flat_map(|(row, n, s)| (row..row + n).flat_map(move |r| (queries - queries.min(s)..queries).map(move |p| (r * queries + p) as i64))).collect()),
        };
        Some(z.select(0, outputs))
    }

    /// Row r's head `heads[r]` writing `z` [rows, pos, d_head] into the residual stream through its
    /// rows of W_O: [rows, pos, d] (TransformerLens' `result`; W_O's bias is in none).
    pub fn head_write(&self, z: Tensor<B, 3>, heads: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let d = self.w_o.dims()[1];
        matmul(z, self.w_o.clone().reshape([self.heads, self.d_head, d]).select(0, heads)) // [rows, pos, dh] @ [rows, dh, d]
    }

    /// Every head's write of `z` [P, s, H, dh] into the residual stream (W_O's rows, no bias):
    /// [P, H, s, d].
    pub fn head_writes(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = self.w_o.dims()[1];
        matmul(z.swap_dims(1, 2), self.w_o.clone().reshape([1, self.heads, self.d_head, d]))
    }

    /// The sublayer's output before any post-norm from the heads' outputs `z` [b, s, H, dh]:
    /// z·W_O + b_O, [b, s, d].
    pub fn output(&self, z: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, s, h, dh] = z.dims();
        linear(z.reshape([b * s, h * dh]), &self.w_o, self.b_o.as_ref()).reshape([b, s, self.w_o.dims()[1]])
    }

    /// W_O's bias, [d] (zeros when the family has none).
    pub fn out_bias(&self) -> Tensor<B, 1> {
        self.b_o.clone().unwrap_or_else(|| Tensor::zeros([self.w_o.dims()[1]], float_options::<B>(&self.w_o.device())))
    }

    /// The q, k or v weights of every head, [H, d, dh], and biases [H, dh]: a key/value head's
    /// repeated for each query head of its group.
    pub fn head_weights(&self, x: Qkv) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let (start, n) = self.part(x);
        let (d, dh) = (self.w_qkv.dims()[0], self.d_head);
        let groups = |t: Tensor<B, 3>| Tensor::<B, 1, Int>::arange(0..self.heads as i64, &t.device()).div_scalar((self.heads / n) as i64);
        let w = self.w_qkv.clone().narrow(1, start, n * dh).reshape([d, n, dh]).swap_dims(0, 1);
        let b = match &self.b_qkv {
            Some(b) => b.clone().narrow(0, start, n * dh).reshape([n, dh]),
            None => Tensor::zeros([n, dh], float_options::<B>(&w.device())),
        };
        let ids = groups(w.clone());
        (w.select(0, ids.clone()), b.select(0, ids))
    }

    /// Row r's head `heads[r]`'s query, key or value (`which`) of norm_attn's output `x`
    /// [rows, pos, d] (before its norm and rotation, as the q/k/v sites hold them): [rows, pos, d_head].
    fn head_input(&self, x: Tensor<B, 3>, which: Qkv, heads: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let (w, b) = self.head_weights(which);
        matmul(x, w.select(0, heads.clone())) + b.select(0, heads).unsqueeze_dim::<3>(1) // [rows, pos, d] @ [rows, d, dh]
    }

    /// One segment's heads, their outputs concatenated: [batch, keep, h·dh] from `qkv` [batch, pos, q|k|v].
    fn heads(&self, qkv: Tensor<B, 3>, layer: usize, segment: usize, prefix: Option<&Prefix<B>>, keep: Option<usize>, hooks: &mut impl Hooks<B>) -> Tensor<B, 3> {
        let [b, s, _] = qkv.dims();
        let keep = keep.unwrap_or(s);
        let mut split = |x: Qkv, kind: SiteKind, from: usize| hooks.hook(Site::new(kind, layer), segment, self.split(&qkv, x, from)).swap_dims(1, 2); // [b, h, pos, dh]
        let (q, k, v) = (split(Qkv::Q, SiteKind::Q, s - keep), split(Qkv::K, SiteKind::K, 0), split(Qkv::V, SiteKind::V, 0));
        // Each query head's own k and v, for a hook that writes one head's (paths, edges).
        let mut own = |t: Tensor<B, 4>, kind: SiteKind| match hooks.wants(Site::new(kind, layer)) {
            true => hooks.hook(Site::new(kind, layer), segment, self.grouped(t).swap_dims(1, 2)).swap_dims(1, 2),
            false => t,
        };
        let (mut k, mut v) = (own(k, SiteKind::KHead), own(v, SiteKind::VHead));
        if let Some(p) = prefix {
            let rows = |t: &Tensor<B, 4>, like: &Tensor<B, 4>| if like.dims()[1] == self.heads { self.grouped(p.rows(t)) } else { p.rows(t) };
            k = Tensor::cat(vec![rows(&p.k, &k), k], 2);
            v = Tensor::cat(vec![rows(&p.v, &v), v], 2);
        }
        let z = self.attend(q, k, v, |pattern| hooks.hook(Site::new(SiteKind::Pattern, layer), segment, pattern));
        let z = hooks.hook(Site::new(SiteKind::Z, layer), segment, z); // [b, keep, h, dh]
        z.reshape([b, keep, self.heads * self.d_head])
    }

    /// The queries, keys or values of positions `from`.. in `qkv` [b, pos, q|k|v]: [b, pos -
    /// from, heads (or kv_heads), d_head] (TransformerLens' layout).
    pub(crate) fn split(&self, qkv: &Tensor<B, 3>, x: Qkv, from: usize) -> Tensor<B, 4> {
        let [b, s, _] = qkv.dims();
        let (start, n) = self.part(x);
        qkv.clone().narrow(2, start, n * self.d_head).narrow(1, from, s - from).reshape([b, s - from, n, self.d_head])
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

/// `act(x W_in) W_out`, or gated: `W_in` holds gate|up, [d, 2·d_mlp], and the product is
/// `(act(x W_gate) ⊙ x W_up) W_out`.
pub struct Mlp<B: Backend> {
    pub(crate) w_in: Tensor<B, 2>,
    pub(crate) b_in: Option<Tensor<B, 1>>,
    pub(crate) w_out: Tensor<B, 2>,
    pub(crate) b_out: Option<Tensor<B, 1>>,
    activation: Activation,
    gated: bool,
}

impl<B: Backend> Mlp<B> {
    fn load(src: &mut impl ParamSource<B>, name: &str, c: &ModelConfig) -> Result<Self> {
        let (d, inner) = (c.d_model, c.d_mlp);
        let width = if c.gated_mlp { 2 * inner } else { inner };
        let (w_in, b_in) = src.linear(&format!("{name}.in"), [d, width], c.mlp_bias)?;
        let (w_out, b_out) = src.linear(&format!("{name}.out"), [inner, d], c.mlp_bias)?;
        Ok(Self {
            w_in,
            b_in,
            w_out,
            b_out,
            activation: c.activation,
            gated: c.gated_mlp,
        })
    }

    pub(crate) fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(self.activation(linear(x, &self.w_in, self.b_in.as_ref())), &self.w_out, self.b_out.as_ref())
    }

    /// The nonlinearity on `x W_in` [tokens, width]: [tokens, d_mlp].
    pub(crate) fn activation(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let act = |x: Tensor<B, 2>| match self.activation {
            Activation::GeluNew => gelu_new(x),
            Activation::Gelu => gelu(x),
            Activation::Silu => silu(x),
        };
        if !self.gated {
            return act(x);
        }
        let [tokens, width] = x.dims();
        act(x.clone().narrow(1, 0, width / 2)) * x.narrow(1, width / 2, width / 2).reshape([tokens, width / 2])
    }
}

pub struct Block<B: Backend> {
    pub(crate) norm_attn: Norm<B>,
    pub attn: Attention<B>,
    pub(crate) norm_mlp: Norm<B>,
    pub(crate) mlp: Mlp<B>,
    /// Norms on attention's and the MLP's outputs (Gemma 2).
    pub(crate) post_norms: Option<[Norm<B>; 2]>,
    /// The MLP reads the block's input, beside attention (GPT-NeoX).
    pub(crate) parallel: bool,
}

impl<B: Backend> Block<B> {
    fn load(src: &mut impl ParamSource<B>, layer: usize, c: &ModelConfig, rope: Option<std::sync::Arc<Rope<B>>>) -> Result<Self> {
        let norm = |src: &mut _, name: &str| Norm::load(src, &format!("blocks.{layer}.{name}"), c.d_model, c);
        Ok(Self {
            norm_attn: norm(src, "norm_attn")?,
            attn: Attention::load(src, layer, c, rope)?,
            norm_mlp: norm(src, "norm_mlp")?,
            mlp: Mlp::load(src, &format!("blocks.{layer}.mlp"), c)?,
            post_norms: c.post_norms.then(|| Ok::<_, anyhow::Error>([norm(src, "post_attn")?, norm(src, "post_mlp")?])).transpose()?,
            parallel: c.parallel,
        })
    }

    /// Attention's output `out` [.., d] as it joins the residual stream (through its post-norm,
    /// where the model has one): TransformerLens' `attn_out`.
    pub fn attn_out<const D: usize>(&self, out: Tensor<B, D>) -> Tensor<B, D> {
        match &self.post_norms {
            Some([post, _]) => post.forward(out),
            None => out,
        }
    }

    /// What a change `change` [.., d] of some heads' writes (z·W_O) adds to the residual stream
    /// while the sublayer's output before its post-norm is otherwise `pre` (broadcast against
    /// it): the change itself, or, where a norm follows attention (Gemma 2), post(pre + change)
    /// − post(pre), the change of the sublayer's output when only those heads change (`pre` is
    /// only computed there). A head's edge and path write; circuits (engine/circuit.rs) compute
    /// the same with post(pre) once per layer.
    pub fn head_change<const D: usize>(&self, change: Tensor<B, D>, pre: impl FnOnce() -> Tensor<B, D>) -> Tensor<B, D> {
        match &self.post_norms {
            Some([post, _]) => {
                let pre = pre();
                post.forward(pre.clone() + change) - post.forward(pre)
            }
            None => change,
        }
    }

    /// `head_change` to first order in `change`: through the post-norm's Jacobian at `pre` (EAP,
    /// EAP-IG).
    pub fn head_change_linear<const D: usize>(&self, change: Tensor<B, D>, pre: impl FnOnce() -> Tensor<B, D>) -> Tensor<B, D> {
        match &self.post_norms {
            Some([post, _]) => post.jvp(pre(), change),
            None => change,
        }
    }

    /// Head writes `writes` [.., d] as shares of what attention adds to the residual stream, the
    /// post-norm's scale frozen at its value on `pre` (as TransformerLens freezes a norm's scale
    /// for direct attribution): where a norm follows attention, (w − mean w)/σ(pre) ⊙ γ (centred
    /// for a LayerNorm), summing over the heads to the sublayer's output less the norm's bias;
    /// else the writes themselves.
    pub fn head_shares<const D: usize>(&self, writes: Tensor<B, D>, pre: impl FnOnce() -> Tensor<B, D>) -> Tensor<B, D> {
        match &self.post_norms {
            Some([post, _]) => {
                let writes = if post.centres() { writes.clone() - writes.mean_dim(D - 1) } else { writes };
                writes / post.scale(pre()) * post.weight().clone().unsqueeze()
            }
            None => writes,
        }
    }

    /// The MLP's output of its input (before norm_mlp) `x` [tokens, d] as it joins the residual
    /// stream: TransformerLens' `mlp_out`.
    pub fn mlp_out(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let out = self.mlp.forward(self.norm_mlp.forward(x));
        match &self.post_norms {
            Some([_, post]) => post.forward(out),
            None => out,
        }
    }

    /// Row r's head `heads[r]`'s query, key or value (`which`) when it alone reads the
    /// residual stream `resid` [rows, pos, d] (TransformerLens' split q/k/v input): [rows, pos, d_head].
    pub fn head_input(&self, resid: Tensor<B, 3>, which: Qkv, heads: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        self.attn.head_input(self.norm_attn.forward(resid), which, heads)
    }

    /// The gradient at the residual stream `resid` [b, s, d] of each head's q, k and v input
    /// alone (each through norm_attn and its rows of W_Q, W_K, W_V), given the gradients of the
    /// q, k_head and v_head sites (each query head's own) [b, s, H, dh]: [b, 3H, s, d] in
    /// (head, q/k/v) order.
    pub fn head_inputs_vjp(&self, resid: Tensor<B, 3>, grads: [Tensor<B, 4>; 3]) -> Tensor<B, 4> {
        let a = &self.attn;
        let [b, s, d] = resid.dims();
        let back: Vec<Tensor<B, 4>> = grads
            .into_iter()
            .zip(Qkv::ALL)
            .map(|(g, x)| matmul(g.swap_dims(1, 2), a.head_weights(x).0.swap_dims(1, 2).unsqueeze::<4>())) // [b, H, s, dh] @ [1, H, dh, d]
            .collect();
        let back = Tensor::stack::<5>(back, 2).reshape([b, 3 * a.heads, s, d]);
        self.norm_attn.vjp(resid.reshape([b, 1, s, d]), back)
    }

    /// One block on `x`. A segment's `prefix` holds the keys and values of the positions before
    /// it. Only the last `keep` positions (all for None) go on past the keys and values: the last
    /// block's when only the last position's logits are read.
    pub fn forward(&self, x: Batch<B>, layer: usize, prefixes: &[Option<Prefix<B>>], keep: Option<usize>, hooks: &mut impl Hooks<B>) -> Batch<B> {
        let site = |kind| Site::new(kind, layer);
        let x = x.hook(site(SiteKind::ResidPre), hooks);
        let attn_out = self.attn.forward(x.with(self.norm_attn.forward(x.x.clone())), layer, prefixes, keep, hooks);
        let attn_out = attn_out.with(self.attn_out(attn_out.x.clone())).hook(site(SiteKind::AttnOut), hooks);
        let x = x.last(keep);
        // In a parallel block the MLP reads the block's input and nothing is between the sublayers.
        let (mid, mlp_in) = match self.parallel {
            false => {
                let mid = x.with(x.x.clone() + attn_out.x.clone()).hook(site(SiteKind::ResidMid), hooks);
                (mid.x.clone(), mid)
            }
            true => (x.x.clone() + attn_out.x.clone(), x.with(x.x.clone())),
        };
        let mlp_in = mlp_in.hook(site(SiteKind::MlpIn), hooks);
        let mlp_out = x.with(self.mlp_out(mlp_in.x)).hook(site(SiteKind::MlpOut), hooks);
        x.with(mid + mlp_out.x).hook(site(SiteKind::ResidPost), hooks)
    }
}

pub struct Transformer<B: Backend> {
    pub config: ModelConfig,
    /// The token embeddings, [vocab, d] (TransformerLens' W_E); the unembedding when tied.
    pub(crate) w_e: Tensor<B, 2>,
    /// Learned position embeddings, [context, d] (none under rotary ones).
    w_pos: Option<Tensor<B, 2>>,
    /// An untied unembedding, [vocab, d] (HF's `lm_head.weight`).
    w_u: Option<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    norm_final: Norm<B>,
}

impl<B: Backend> Transformer<B> {
    pub fn load(config: ModelConfig, src: &mut impl ParamSource<B>) -> Result<Self> {
        let c = &config;
        let w_e = src.param("embed", [c.vocab, c.d_model])?;
        let rope = c.rotary.as_ref().map(|r| std::sync::Arc::new(Rope::new(r, c.context, &w_e.device())));
        Ok(Self {
            w_pos: c.rotary.is_none().then(|| src.param("pos_embed", [c.context, c.d_model])).transpose()?,
            w_u: (!c.tied).then(|| src.param("unembed", [c.vocab, c.d_model])).transpose()?,
            w_e,
            blocks: (0..c.layers).map(|l| Block::load(src, l, c, rope.clone())).collect::<Result<_>>()?,
            norm_final: Norm::load(src, "norm_final", c.d_model, c)?,
            config,
        })
    }

    /// GPT-2's initialisation (normal, std 0.02; norms at identity), for benchmarks.
    pub fn random(config: ModelConfig, seed: u64, device: &B::Device) -> Self {
        B::seed(device, seed);
        Self::load(config, &mut RandomInit { device: device.clone() }).expect("random init cannot fail")
    }

    pub fn device(&self) -> B::Device {
        self.w_e.device()
    }

    /// Token ids [batch, pos] as a tensor; ids and lengths are checked against the config.
    pub fn tokens(&self, rows: &[Vec<u32>]) -> Result<Tensor<B, 2, Int>> {
        let s = rows.first().map_or(0, Vec::len);
        if s == 0 || rows.iter().any(|r| r.len() != s) {
            bail!("a batch needs non-empty token rows of one length");
        }
        if s > self.config.context {
            bail!("{s} tokens exceed the model's context of {} positions", self.config.context);
        }
        if let Some(&id) = rows.iter().flatten().find(|&&id| id as usize >= self.config.vocab) {
            bail!("token id {id} is outside the model's vocabulary of {}", self.config.vocab);
        }
        let flat: Vec<i64> = rows.iter().flatten().map(|&id| id as i64).collect();
        Ok(Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [rows.len() * s]), &self.device()).reshape([rows.len(), s]))
    }

    /// Embeddings of `tokens` placed at positions start.. (start > 0 for a suffix).
    pub fn embed(&self, tokens: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        match self.embed_parts(tokens, start) {
            (tok, Some(pos)) => tok + pos,
            (tok, None) => tok,
        }
    }

    /// The token embeddings [batch, pos, d] and the learned position embeddings [1, pos, d] that
    /// `embed` adds (TransformerLens' `hook_embed` and `hook_pos_embed`; none under rotary ones).
    pub fn embed_parts(&self, tokens: Tensor<B, 2, Int>, start: usize) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [b, s] = tokens.dims();
        let tok = self.w_e.clone().select(0, tokens.reshape([b * s])).reshape([b, s, self.config.d_model]);
        let tok = match self.config.embed_scale {
            Some(scale) => tok * scale,
            None => tok,
        };
        (tok, self.w_pos.as_ref().map(|w| w.clone().narrow(0, start, s).unsqueeze::<3>()))
    }

    /// The unembedding's rows, [vocab, d]: its own, or the token embeddings (tied).
    pub fn w_u(&self) -> &Tensor<B, 2> {
        self.w_u.as_ref().unwrap_or(&self.w_e)
    }

    pub fn norm_final(&self) -> &Norm<B> {
        &self.norm_final
    }

    /// The unembedding's columns of `ids` [rows, k], [rows, k, d].
    pub fn unembedding(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [rows, k] = ids.dims();
        self.w_u().clone().select(0, ids.reshape([rows * k])).reshape([rows, k, self.config.d_model])
    }

    /// Logits [batch, pos, vocab] of the final residual stream.
    pub fn unembed(&self, resid: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = resid.dims();
        let x = self.norm_final.forward(resid).reshape([b * s, d]);
        // On the CPU, one gemm reading the unembedding's transpose in place (burn-flex's matmul
        // would copy it: 154 MB on GPT-2 small, half of a decoding step).
        let w = self.w_u().clone().transpose();
        self.softcap(cpu::linear(&x, &w, None).unwrap_or_else(|| matmul(x, w)).reshape([b, s, self.config.vocab]))
    }

    /// Logits through the final soft-cap, where the model has one (Gemma 2).
    pub fn softcap<const D: usize>(&self, logits: Tensor<B, D>) -> Tensor<B, D> {
        match self.config.final_softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        }
    }

    /// The logits of chosen tokens only: `resid` [rows, d] (one position per row), `ids` [rows, k]
    /// gives [rows, k]. Equal to gathering `unembed`'s output, at a fraction of its cost.
    pub fn logits_of(&self, resid: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [rows, k] = ids.dims();
        self.softcap((self.norm_final.forward(resid).unsqueeze_dim::<3>(1) * self.unembedding(ids)).sum_dim(2).reshape([rows, k]))
    }

    /// The whole forward pass: logits [batch, pos, vocab].
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, hooks: &mut impl Hooks<B>) -> Tensor<B, 3> {
        self.unembed(self.resid_final(tokens, hooks))
    }

    /// The residual stream after the last block, [batch, pos, d].
    pub fn resid_final(&self, tokens: Tensor<B, 2, Int>, hooks: &mut impl Hooks<B>) -> Tensor<B, 3> {
        let (tok, pos) = self.embed_parts(tokens, 0);
        let tok = Batch::one(tok).hook(Site::new(SiteKind::Embed, 0), hooks).into_one();
        let x = Batch::one(pos.map_or(tok.clone(), |pos| tok + pos));
        self.blocks.iter().enumerate().fold(x, |x, (l, block)| block.forward(x, l, &[None], None, hooks)).into_one()
    }
}

/// The same model on burn's Autodiff backend (attribution's gradients), sharing every tensor with
/// this one: no second read of the files, no second copy of the weights.
impl<B: Backend> Transformer<B> {
    pub fn autodiff(&self) -> Transformer<Autodiff<B>> {
        let rope = self.blocks.first().and_then(|b| b.attn.rope.as_ref()).map(|r| std::sync::Arc::new(Rope { cos: lift(&r.cos), sin: lift(&r.sin), dims: r.dims }));
        Transformer {
            config: self.config.clone(),
            w_e: lift(&self.w_e),
            w_pos: self.w_pos.as_ref().map(lift),
            w_u: self.w_u.as_ref().map(lift),
            blocks: self.blocks.iter().map(|b| b.autodiff(rope.clone())).collect(),
            norm_final: self.norm_final.autodiff(),
        }
    }
}

fn lift<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Tensor<Autodiff<B>, D> {
    Tensor::from_inner(t.clone())
}

impl<B: Backend> Norm<B> {
    fn autodiff(&self) -> Norm<Autodiff<B>> {
        Norm { kind: self.kind, weight: lift(&self.weight), bias: self.bias.as_ref().map(lift), eps: self.eps }
    }
}

impl<B: Backend> Block<B> {
    fn autodiff(&self, rope: Option<std::sync::Arc<Rope<Autodiff<B>>>>) -> Block<Autodiff<B>> {
        let a = &self.attn;
        let m = &self.mlp;
        Block {
            norm_attn: self.norm_attn.autodiff(),
            attn: Attention {
                w_qkv: lift(&a.w_qkv),
                b_qkv: a.b_qkv.as_ref().map(lift),
                w_o: lift(&a.w_o),
                b_o: a.b_o.as_ref().map(lift),
                heads: a.heads,
                kv_heads: a.kv_heads,
                d_head: a.d_head,
                qk_norm: a.qk_norm.as_ref().map(|[q, k]| [q.autodiff(), k.autodiff()]),
                rope,
                query_scale: a.query_scale,
                softcap: a.softcap,
                window: a.window,
            },
            norm_mlp: self.norm_mlp.autodiff(),
            mlp: Mlp { w_in: lift(&m.w_in), b_in: m.b_in.as_ref().map(lift), w_out: lift(&m.w_out), b_out: m.b_out.as_ref().map(lift), activation: m.activation, gated: m.gated },
            post_norms: self.post_norms.as_ref().map(|[a, m]| [a.autodiff(), m.autodiff()]),
            parallel: self.parallel,
        }
    }
}

struct RandomInit<B: Backend> {
    device: B::Device,
}

impl<B: Backend> ParamSource<B> for RandomInit<B> {
    fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let is_ln = name.contains("norm");
        let float = float_options::<B>(&self.device);
        Ok(match (is_ln, name.ends_with("weight")) {
            (true, true) => Tensor::ones(shape, float),
            (_, false) => Tensor::zeros(shape, float),
            (false, true) => Tensor::random(shape, Distribution::Normal(0.0, 0.02), float),
        })
    }
}
