//! A decoder-only model described without its family: the dims and the component choices of one
//! generic pre-norm block (TransformerLens' `HookedTransformerConfig` in spirit). Each family's file
//! under `families/` maps HF's `config.json` onto it; the rest of patchbay reads only this.
use super::families;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The MLP's nonlinearity: `act(x W_in) W_out`, or gated, `(act(x W_gate) ⊙ x W_up) W_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The tanh approximation (HF's `gelu_new`, `gelu_pytorch_tanh`).
    GeluNew,
    /// The exact (erf) GELU.
    Gelu,
    /// x·sigmoid(x) (Llama's, Qwen's gated MLP).
    Silu,
}

/// The norm before each sublayer and at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// (x − mean) / √(var + eps) · w + b (GPT-2).
    LayerNorm,
    /// x / √(mean(x²) + eps) · w (Llama, Qwen).
    RmsNorm,
}

/// Rotary position embeddings (instead of learned ones), rotated as Llama's `rotate_half` does:
/// the first half of the rotated dims against the second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotary {
    pub theta: f64,
    /// The dims of each head rotated, from the first (all of d_head but for GPT-NeoX).
    pub dims: usize,
    /// Llama 3's frequency scaling (`rope_type: llama3`).
    pub llama3: Option<Llama3Scaling>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct ModelConfig {
    /// HF's `model_type` of the checkpoint (`gpt2`, ...).
    pub family: String,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    pub d_model: usize,
    /// Each head's width; need not be d_model / heads.
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab: usize,
    /// The most positions a prompt may have.
    pub context: usize,
    pub norm: Norm,
    /// The norms' epsilon.
    pub eps: f64,
    /// None: learned position embeddings.
    pub rotary: Option<Rotary>,
    /// Biases on q, k, v; on the attention's output; on the MLP's layers.
    pub qkv_bias: bool,
    pub out_bias: bool,
    pub mlp_bias: bool,
    /// An RMSNorm over each head's q and k before the rotation (Qwen3).
    pub qk_norm: bool,
    pub activation: Activation,
    pub gated_mlp: bool,
    /// The unembedding is the token embeddings' transpose.
    pub tied: bool,
    /// Attention and the MLP both read the block's input and their outputs are added together
    /// (GPT-NeoX's `use_parallel_residual`): there is no resid_mid.
    pub parallel: bool,
    /// A norm on each sublayer's output before it joins the residual stream (Gemma 2's
    /// post-attention and post-feedforward norms).
    pub post_norms: bool,
    /// The token embeddings' multiplier (Gemma: √d_model).
    pub embed_scale: Option<f64>,
    /// The attention scores' multiplier where it is not 1/√d_head (Gemma 2:
    /// `query_pre_attn_scalar`^-½).
    pub query_scale: Option<f64>,
    /// `cap·tanh(x / cap)` on the attention scores before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// The same on the final logits (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Sliding-window attention on some layers (Gemma 2's local layers).
    pub window: Option<Window>,
}

/// Each query of `layers` sees only its last `size` keys, itself included (HF's sliding window).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub size: usize,
    pub layers: Vec<usize>,
}

/// What manifests hold: this struct's fields, or (written before the model seam) GPT-2's
/// `n_layer`, `n_head`, `n_embd`, `n_inner`, `n_positions`, `vocab_size`, `layer_norm_epsilon`;
/// what those lack is GPT-2's.
#[derive(Deserialize)]
struct Stored {
    #[serde(default = "gpt2")]
    family: String,
    #[serde(alias = "n_layer")]
    layers: usize,
    #[serde(alias = "n_head")]
    heads: usize,
    kv_heads: Option<usize>,
    #[serde(alias = "n_embd")]
    d_model: usize,
    d_head: Option<usize>,
    #[serde(alias = "n_inner")]
    d_mlp: usize,
    #[serde(alias = "vocab_size")]
    vocab: usize,
    #[serde(alias = "n_positions")]
    context: usize,
    norm: Option<Norm>,
    #[serde(alias = "layer_norm_epsilon")]
    eps: f64,
    #[serde(default)]
    rotary: Option<Rotary>,
    qkv_bias: Option<bool>,
    out_bias: Option<bool>,
    mlp_bias: Option<bool>,
    #[serde(default)]
    qk_norm: bool,
    activation: Activation,
    #[serde(default)]
    gated_mlp: bool,
    tied: Option<bool>,
    #[serde(default)]
    parallel: bool,
    #[serde(default)]
    post_norms: bool,
    #[serde(default)]
    embed_scale: Option<f64>,
    #[serde(default)]
    query_scale: Option<f64>,
    #[serde(default)]
    attn_softcap: Option<f64>,
    #[serde(default)]
    final_softcap: Option<f64>,
    #[serde(default)]
    window: Option<Window>,
}

fn gpt2() -> String {
    "gpt2".into()
}

impl From<Stored> for ModelConfig {
    fn from(s: Stored) -> Self {
        Self {
            family: s.family,
            layers: s.layers,
            heads: s.heads,
            kv_heads: s.kv_heads.unwrap_or(s.heads),
            d_model: s.d_model,
            d_head: s.d_head.unwrap_or(s.d_model / s.heads.max(1)),
            d_mlp: s.d_mlp,
            vocab: s.vocab,
            context: s.context,
            norm: s.norm.unwrap_or(Norm::LayerNorm),
            eps: s.eps,
            rotary: s.rotary,
            qkv_bias: s.qkv_bias.unwrap_or(true),
            out_bias: s.out_bias.unwrap_or(true),
            mlp_bias: s.mlp_bias.unwrap_or(true),
            qk_norm: s.qk_norm,
            activation: s.activation,
            gated_mlp: s.gated_mlp,
            tied: s.tied.unwrap_or(true),
            parallel: s.parallel,
            post_norms: s.post_norms,
            embed_scale: s.embed_scale,
            query_scale: s.query_scale,
            attn_softcap: s.attn_softcap,
            final_softcap: s.final_softcap,
            window: s.window,
        }
    }
}

impl ModelConfig {
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    /// HF's `config.json`, by its `model_type`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let family = value.get("model_type").and_then(|t| t.as_str()).context("no model_type: not a HF config.json")?;
        let config = families::config(family, value.clone())?;
        config.check()?;
        Ok(config)
    }

    /// The shape of a folder's config.json, or a released model's by name, for benchmarks on
    /// random weights (no download; a small one where a GPU's buffers are small: lavapipe's 128 MiB).
    pub fn named(name: &str) -> Result<Self> {
        let folder = Path::new(name).join("config.json");
        if folder.is_file() {
            return Self::from_json_file(&folder);
        }
        families::named(name)
    }

    /// The head axis of a per-head site: the key/value heads for k and v (as TransformerLens'
    /// `hook_k` / `hook_v` hold them), every head for the others.
    pub fn heads_of(&self, kind: super::SiteKind) -> usize {
        match kind {
            super::SiteKind::K | super::SiteKind::V => self.kv_heads,
            _ => self.heads,
        }
    }

    /// A site kind the model has, or a one-line refusal: resid_mid of a parallel block.
    pub fn check_site(&self, kind: super::SiteKind) -> Result<()> {
        if kind == super::SiteKind::ResidMid && self.parallel {
            bail!("{} runs attention and the MLP side by side off each block's input: it has no resid_mid", self.family);
        }
        Ok(())
    }

    /// Layer `layer`'s sliding window, if it has one.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        self.window.as_ref().filter(|w| w.layers.contains(&layer)).map(|w| w.size)
    }

    /// What any family's config must hold for the model to compute finite values.
    fn check(&self) -> Result<()> {
        let sizes = [("layers", self.layers), ("heads", self.heads), ("kv_heads", self.kv_heads), ("d_model", self.d_model), ("d_head", self.d_head), ("d_mlp", self.d_mlp), ("vocab", self.vocab), ("context", self.context)];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("{name} is 0: a model needs at least one of each");
        }
        if let Some(r) = self.rotary.as_ref().filter(|r| r.dims == 0 || r.dims % 2 != 0 || r.dims > self.d_head) {
            bail!("{} rotary dims of a {}-wide head: they must be even and at most the head", r.dims, self.d_head);
        }
        if self.heads % self.kv_heads != 0 {
            bail!("{} heads do not divide into {} key/value heads", self.heads, self.kv_heads);
        }
        let positive = [("embedding scale", self.embed_scale), ("query scale", self.query_scale), ("attention soft-cap", self.attn_softcap), ("final soft-cap", self.final_softcap)];
        if let Some((name, Some(v))) = positive.iter().find(|(_, v)| v.is_some_and(|v| !(v.is_finite() && v > 0.0))) {
            bail!("the {name} is {v}: it must be a positive number");
        }
        if let Some(w) = self.window.as_ref().filter(|w| w.size == 0) {
            bail!("a sliding window of {} keys: it must hold at least one", w.size);
        }
        // A zero, negative or non-finite epsilon makes every norm NaN or infinite, silently.
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("the norms' epsilon is {}: it must be a positive number", self.eps);
        }
        Ok(())
    }
}
