//! GPT-2 (`model_type` `gpt2`): learned positions, LayerNorm, packed q|k|v (`c_attn`), GELU MLP,
//! unembedding tied to `wte`. HF stores its Conv1D weights [in, out], as the generic model does.
use super::{Family, Source};
use crate::model::config::{Activation, ModelConfig, Norm};
use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub struct Gpt2;

/// `config.json` as written by HF; older checkpoints carry `n_ctx` beside or instead of `n_positions`.
#[derive(Deserialize)]
struct HfConfig {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    activation_function: String,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
}
fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

impl Family for Gpt2 {
    fn name(&self) -> &'static str {
        "gpt2"
    }

    fn config(&self, json: serde_json::Value) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_value(json).context("not a GPT-2 config.json")?;
        let activation = match hf.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            other => bail!("activation_function {other:?} is not supported (gelu_new, gelu_pytorch_tanh, gelu)"),
        };
        if !hf.scale_attn_weights || hf.scale_attn_by_inverse_layer_idx {
            bail!("scale_attn_weights=false and scale_attn_by_inverse_layer_idx=true are not supported");
        }
        if hf.n_head == 0 || hf.n_embd % hf.n_head != 0 {
            bail!("n_embd {} is not a multiple of n_head {}", hf.n_embd, hf.n_head);
        }
        let n_positions = hf.n_positions.or(hf.n_ctx).context("config.json has neither n_positions nor n_ctx")?;
        let sizes = [("n_layer", hf.n_layer), ("n_embd", hf.n_embd), ("n_positions", n_positions), ("vocab_size", hf.vocab_size)];
        if let Some((name, _)) = sizes.iter().chain(&[("n_inner", hf.n_inner.unwrap_or(1))]).find(|(_, v)| *v == 0) {
            bail!("{name} is 0: a GPT-2 needs at least one of each");
        }
        if !(hf.layer_norm_epsilon.is_finite() && hf.layer_norm_epsilon > 0.0) {
            bail!("layer_norm_epsilon is {}: it must be a positive number", hf.layer_norm_epsilon);
        }
        Ok(shape(hf.n_layer, hf.n_head, hf.n_embd, hf.n_inner.unwrap_or(4 * hf.n_embd), n_positions, hf.vocab_size, hf.layer_norm_epsilon, activation))
    }

    fn source(&self, generic: &str) -> Source {
        const NAMES: [(&str, &str); 10] = [
            ("blocks.", "h."),
            ("norm_attn", "ln_1"),
            ("attn.qkv", "attn.c_attn"),
            ("attn.out", "attn.c_proj"),
            ("norm_mlp", "ln_2"),
            ("mlp.in", "mlp.c_fc"),
            ("mlp.out", "mlp.c_proj"),
            ("norm_final", "ln_f"),
            ("pos_embed", "wpe.weight"),
            ("embed", "wte.weight"),
        ];
        let mut name = generic.to_string();
        for (from, to) in NAMES {
            if let Some(i) = name.find(from) {
                name.replace_range(i..i + from.len(), to);
                if from.ends_with("embed") {
                    break; // `pos_embed` holds `embed`
                }
            }
        }
        Source::Same(name)
    }

    fn layer_prefix(&self, layer: usize) -> String {
        format!("h.{layer}.")
    }
}

#[allow(clippy::too_many_arguments)]
fn shape(layers: usize, heads: usize, d_model: usize, d_mlp: usize, context: usize, vocab: usize, eps: f64, activation: Activation) -> ModelConfig {
    ModelConfig {
        family: "gpt2".into(),
        layers,
        heads,
        kv_heads: heads,
        d_model,
        d_head: d_model / heads,
        d_mlp,
        vocab,
        context,
        norm: Norm::LayerNorm,
        eps,
        rotary: None,
        qkv_bias: true,
        out_bias: true,
        mlp_bias: true,
        qk_norm: false,
        activation,
        gated_mlp: false,
        tied: true,
        parallel: false,
        post_norms: false,
        embed_scale: None,
        query_scale: None,
        attn_softcap: None,
        final_softcap: None,
        window: None,
    }
}

/// The released GPT-2 shapes.
pub fn named(name: &str) -> Result<ModelConfig> {
    let (layers, heads, d_model) = match name {
        "gpt2" => (12, 12, 768),
        "gpt2-medium" => (24, 16, 1024),
        "gpt2-large" => (36, 20, 1280),
        "gpt2-xl" => (48, 25, 1600),
        "distilgpt2" => (6, 12, 768),
        other => bail!("unknown shape {other:?}: expected gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 or a folder with a config.json"),
    };
    Ok(shape(layers, heads, d_model, 4 * d_model, 1024, 50257, 1e-5, Activation::GeluNew))
}

#[cfg(test)]
mod tests {
    use crate::model::ModelConfig;

    #[test]
    fn reads_hub_config_with_n_ctx_and_n_positions() {
        // The hub's gpt2 config.json carries both names.
        let c = ModelConfig::from_json(
            r#"{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,"n_ctx":1024,"n_positions":1024,"vocab_size":50257,
               "activation_function":"gelu_new","layer_norm_epsilon":1e-05}"#,
        )
        .unwrap();
        assert_eq!(c, ModelConfig::named("gpt2").unwrap());
        assert_eq!(c.d_head, 64);
    }

    #[test]
    fn rejects_unsupported_activation_and_model_type() {
        let err = ModelConfig::from_json(r#"{"model_type":"gpt2","n_layer":1,"n_head":1,"n_embd":4,"n_positions":8,"vocab_size":9,"activation_function":"swish"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("swish"));
        let err = ModelConfig::from_json(r#"{"model_type":"mamba"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("\"mamba\" is not supported"));
    }

    #[test]
    fn maps_generic_names_onto_hf_names() {
        use super::super::{Family, Source};
        for (generic, hf) in [("embed", "wte.weight"), ("pos_embed", "wpe.weight"), ("blocks.3.attn.qkv.weight", "h.3.attn.c_attn.weight"), ("blocks.0.mlp.out.bias", "h.0.mlp.c_proj.bias"), ("norm_final.weight", "ln_f.weight")] {
            assert!(matches!(super::Gpt2.source(generic), Source::Same(name) if name == hf), "{generic}");
        }
    }
}
