//! GPT-NeoX (`model_type` `gpt_neox`: Pythia): LayerNorm, partial rotary positions (`rotary_pct`
//! of each head's dims, rotated as `rotate_half`), attention and the MLP in parallel off the
//! block's input (`use_parallel_residual`), exact GELU, biases everywhere, an untied unembedding
//! (`embed_out`). Its fused `query_key_value` weight [3·d, d] holds each head's q, k and v rows
//! together (head 0's q, k, v, then head 1's, …), not three blocks.
use super::llama::rotary;
use super::{Family, Source};
use crate::model::config::{Activation, ModelConfig, Norm};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

pub struct GptNeox;

#[derive(Deserialize)]
struct HfConfig {
    num_hidden_layers: usize,
    num_attention_heads: usize,
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "yes")]
    use_parallel_residual: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    attention_bias: bool,
    /// The hub's names; transformers 5 writes `partial_rotary_factor` and `rope_theta` (or
    /// `rope_parameters`).
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
}

fn gelu() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

impl Family for GptNeox {
    fn name(&self) -> &'static str {
        "gpt_neox"
    }

    fn config(&self, json: Value) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_value(json).context("not a gpt_neox config.json")?;
        let activation = match hf.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            other => bail!("hidden_act {other:?} is not supported for gpt_neox (gelu, gelu_new)"),
        };
        let heads = hf.num_attention_heads;
        if heads == 0 || hf.hidden_size % heads != 0 {
            bail!("hidden_size {} is not a multiple of num_attention_heads {heads}", hf.hidden_size);
        }
        let d_head = hf.hidden_size / heads;
        // transformers' default share of rotated dims for GPT-NeoX is a quarter.
        let partial = hf.rotary_pct.or(hf.partial_rotary_factor).or(Some(0.25));
        let rotary = rotary(hf.rotary_emb_base.or(hf.rope_theta), hf.rope_scaling, hf.rope_parameters, partial, d_head)?;
        if rotary.llama3.is_some() {
            bail!("rope_type llama3 is not implemented for gpt_neox");
        }
        Ok(ModelConfig {
            family: "gpt_neox".into(),
            layers: hf.num_hidden_layers,
            heads,
            kv_heads: heads,
            d_model: hf.hidden_size,
            d_head,
            d_mlp: hf.intermediate_size,
            vocab: hf.vocab_size,
            context: hf.max_position_embeddings,
            norm: Norm::LayerNorm,
            eps: hf.layer_norm_eps,
            rotary: Some(rotary),
            qkv_bias: hf.attention_bias,
            out_bias: hf.attention_bias,
            mlp_bias: true,
            qk_norm: false,
            activation,
            gated_mlp: false,
            tied: hf.tie_word_embeddings,
            parallel: hf.use_parallel_residual,
            post_norms: false,
            embed_scale: None,
            query_scale: None,
            attn_softcap: None,
            final_softcap: None,
            window: None,
        })
    }

    fn source(&self, generic: &str) -> Source {
        let (layer, rest) = match generic.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
            Some((l, rest)) => (Some(l), rest),
            None => (None, generic),
        };
        let at = |name: &str| match layer {
            Some(l) => format!("gpt_neox.layers.{l}.{name}"),
            None => format!("gpt_neox.{name}"),
        };
        let (name, kind) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let linear = |stored: &str| Source::Parts(vec![at(&format!("{stored}.{kind}"))]);
        match name {
            "embed" => Source::Same(at("embed_in.weight")),
            "unembed" => Source::Same("embed_out.weight".into()),
            "norm_final" => Source::Same(at(&format!("final_layer_norm.{kind}"))),
            "norm_attn" => Source::Same(at(&format!("input_layernorm.{kind}"))),
            "norm_mlp" => Source::Same(at(&format!("post_attention_layernorm.{kind}"))),
            "attn.qkv" => Source::PerHead(at(&format!("attention.query_key_value.{kind}"))),
            "attn.out" => linear("attention.dense"),
            "mlp.in" => linear("mlp.dense_h_to_4h"),
            "mlp.out" => linear("mlp.dense_4h_to_h"),
            _ => Source::Same(generic.into()),
        }
    }

    fn layer_prefix(&self, layer: usize) -> String {
        format!("gpt_neox.layers.{layer}.")
    }
}
