//! Gemma 2 (`model_type` `gemma2`): Llama's names and layout (RMSNorm, rotary positions, grouped
//! key/value heads, a gated MLP) with GELU (tanh) gating, every RMSNorm weight stored as w for
//! (1 + w), a norm after each sublayer as well as before (`post_attention_layernorm`,
//! `post_feedforward_layernorm`; the MLP's input norm is `pre_feedforward_layernorm`), embeddings
//! times √d_model, scores scaled by `query_pre_attn_scalar`^-½ and soft-capped, sliding-window
//! layers alternating with global ones (local first, where config.json has no `layer_types`),
//! final logits soft-capped, and a tied unembedding.
use super::llama::{rotary, source};
use super::{Family, Source};
use crate::model::config::{Activation, ModelConfig, Norm, Window};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

pub struct Gemma2;

#[derive(Deserialize)]
struct HfConfig {
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    hidden_size: usize,
    head_dim: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    /// Gemma 2's own key; `hidden_act` beside it is Gemma 1's.
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    query_pre_attn_scalar: f64,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
}

fn yes() -> bool {
    true
}

impl Family for Gemma2 {
    fn name(&self) -> &'static str {
        "gemma2"
    }

    fn config(&self, json: Value) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_value(json).context("not a gemma2 config.json")?;
        let activation = match hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh") {
            "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            other => bail!("hidden_activation {other:?} is not supported for gemma2 (gelu_pytorch_tanh, gelu)"),
        };
        let layers = hf.num_hidden_layers;
        // transformers: without layer_types, even layers slide and odd ones are global.
        let types = hf.layer_types.clone().unwrap_or_else(|| (0..layers).map(|l| if l % 2 == 0 { "sliding_attention" } else { "full_attention" }.to_string()).collect());
        if types.len() != layers {
            bail!("layer_types lists {} layers, num_hidden_layers is {layers}", types.len());
        }
        if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention")) {
            bail!("layer_types holds {t:?}: gemma2 layers are sliding_attention or full_attention");
        }
        let sliding: Vec<usize> = (0..layers).filter(|&l| types[l] == "sliding_attention").collect();
        let window = match hf.sliding_window {
            Some(size) if !sliding.is_empty() => Some(Window { size, layers: sliding }),
            _ => None,
        };
        let rotary = rotary(hf.rope_theta, hf.rope_scaling, hf.rope_parameters, None, hf.head_dim)?;
        if rotary.llama3.is_some() {
            bail!("rope_type llama3 is not implemented for gemma2");
        }
        Ok(ModelConfig {
            family: "gemma2".into(),
            layers,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads,
            d_model: hf.hidden_size,
            d_head: hf.head_dim,
            d_mlp: hf.intermediate_size,
            vocab: hf.vocab_size,
            context: hf.max_position_embeddings,
            norm: Norm::RmsNorm,
            eps: hf.rms_norm_eps,
            rotary: Some(rotary),
            qkv_bias: hf.attention_bias,
            out_bias: hf.attention_bias,
            mlp_bias: false,
            qk_norm: false,
            activation,
            gated_mlp: true,
            tied: hf.tie_word_embeddings,
            parallel: false,
            post_norms: true,
            embed_scale: Some((hf.hidden_size as f64).sqrt()),
            query_scale: Some(hf.query_pre_attn_scalar.powf(-0.5)),
            attn_softcap: hf.attn_logit_softcapping,
            final_softcap: hf.final_logit_softcapping,
            window,
        })
    }

    fn source(&self, generic: &str) -> Source {
        let named = source(generic, &[("norm_mlp", "pre_feedforward_layernorm"), ("post_attn", "post_attention_layernorm"), ("post_mlp", "post_feedforward_layernorm")]);
        match named {
            // Every Gemma RMSNorm multiplies by (1 + w).
            Source::Same(name) if name.contains("norm.") || name.contains("layernorm.") => Source::PlusOne(name),
            other => other,
        }
    }

    fn layer_prefix(&self, layer: usize) -> String {
        format!("model.layers.{layer}.")
    }
}
