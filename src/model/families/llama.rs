//! Llama (`model_type` `llama`: Llama 2 and 3.x, `rope_type: llama3` included) and the models
//! stored as Llama is (`mistral` without a sliding window, `qwen2`, `qwen3`): RMSNorm, rotary
//! positions, grouped key/value heads, a gated SiLU MLP, `nn.Linear` weights ([out, in]) for q, k,
//! v, o, gate, up and down. Qwen2 adds biases to q, k and v; Qwen3 an RMSNorm over each head's q
//! and k, and a `head_dim` of its own.
use super::{Family, Source};
use crate::model::config::{Activation, Llama3Scaling, ModelConfig, Norm, Rotary};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

pub struct Llama(pub &'static str);

#[derive(Deserialize)]
struct HfConfig {
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    hidden_size: usize,
    head_dim: Option<usize>,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    #[serde(default = "silu")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    /// The hub's form; transformers 5 writes `rope_parameters` instead.
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    use_sliding_window: bool,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
}

fn silu() -> String {
    "silu".into()
}

impl Family for Llama {
    fn name(&self) -> &'static str {
        self.0
    }

    fn config(&self, json: Value) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_value(json).with_context(|| format!("not a {} config.json", self.0))?;
        if hf.hidden_act != "silu" {
            bail!("hidden_act {:?} is not supported for {} (silu)", hf.hidden_act, self.0);
        }
        // A sliding window changes which keys a query sees: refused rather than computed as full
        // attention (Mistral's is on unless null; Qwen's only with use_sliding_window).
        let window = match self.0 {
            "mistral" => hf.sliding_window.filter(|&w| w < hf.max_position_embeddings),
            _ => hf.sliding_window.filter(|_| hf.use_sliding_window),
        };
        if let Some(w) = window {
            bail!("sliding_window {w} (of a {}-position context): sliding-window attention is not implemented for {}", hf.max_position_embeddings, self.0);
        }
        if let Some(t) = hf.layer_types.iter().flatten().find(|t| *t != "full_attention") {
            bail!("layer_types holds {t:?}: only full_attention layers are implemented for {}", self.0);
        }
        let heads = hf.num_attention_heads;
        if heads == 0 {
            bail!("num_attention_heads is 0");
        }
        let d_head = hf.head_dim.unwrap_or(hf.hidden_size / heads);
        let rotary = rotary(hf.rope_theta, hf.rope_scaling.clone(), hf.rope_parameters.clone(), hf.partial_rotary_factor, d_head)?;
        let qwen2 = self.0 == "qwen2";
        Ok(ModelConfig {
            family: self.0.into(),
            layers: hf.num_hidden_layers,
            heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(heads),
            d_model: hf.hidden_size,
            d_head,
            d_mlp: hf.intermediate_size,
            vocab: hf.vocab_size,
            context: hf.max_position_embeddings,
            norm: Norm::RmsNorm,
            eps: hf.rms_norm_eps,
            rotary: Some(rotary),
            qkv_bias: hf.attention_bias || qwen2,
            out_bias: hf.attention_bias && !qwen2,
            mlp_bias: hf.mlp_bias,
            qk_norm: self.0 == "qwen3",
            activation: Activation::Silu,
            gated_mlp: true,
            tied: hf.tie_word_embeddings,
            parallel: false,
            post_norms: false,
            embed_scale: None,
            query_scale: None,
            attn_softcap: None,
            final_softcap: None,
            window: None,
        })
    }

    fn source(&self, generic: &str) -> Source {
        source(generic, &[("norm_mlp", "post_attention_layernorm")])
    }

    fn layer_prefix(&self, layer: usize) -> String {
        format!("model.layers.{layer}.")
    }
}

/// Llama's checkpoint names of the generic parameters; `norms` names a layer's norms where the
/// family's differ from Llama's `input_layernorm` (Gemma 2's MLP norm and post-norms).
pub(super) fn source(generic: &str, norms: &[(&str, &str)]) -> Source {
    let (layer, rest) = match generic.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
        Some((l, rest)) => (Some(l), rest),
        None => (None, generic),
    };
    let at = |name: &str| match layer {
        Some(l) => format!("model.layers.{l}.{name}"),
        None => name.to_string(),
    };
    let parts = |names: &[&str], kind: &str| Source::Parts(names.iter().map(|n| at(&format!("{n}.{kind}"))).collect());
    let (name, kind) = rest.rsplit_once('.').unwrap_or((rest, ""));
    if let Some((_, stored)) = norms.iter().find(|(generic, _)| *generic == name) {
        return Source::Same(at(&format!("{stored}.{kind}")));
    }
    match name {
        "embed" => Source::Same("model.embed_tokens.weight".into()),
        "unembed" => Source::Same("lm_head.weight".into()),
        "norm_final" => Source::Same(format!("model.norm.{kind}")),
        "norm_attn" => Source::Same(at(&format!("input_layernorm.{kind}"))),
        "attn.q_norm" | "attn.k_norm" => Source::Same(at(&format!("self_attn.{}.{kind}", &name[5..]))),
        "attn.qkv" => parts(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], kind),
        "attn.out" => parts(&["self_attn.o_proj"], kind),
        "mlp.in" => parts(&["mlp.gate_proj", "mlp.up_proj"], kind),
        "mlp.out" => parts(&["mlp.down_proj"], kind),
        _ => Source::Same(generic.into()),
    }
}

/// The rotation, from `rope_theta` / `rope_scaling` (the hub's files) or `rope_parameters`
/// (transformers 5), over `partial` of each head's dims: plain, or Llama 3's scaled frequencies;
/// any other `rope_type` refused.
pub(super) fn rotary(rope_theta: Option<f64>, rope_scaling: Option<Value>, rope_parameters: Option<Value>, partial: Option<f64>, d_head: usize) -> Result<Rotary> {
    let params = rope_parameters.or(rope_scaling).filter(|v| !v.is_null()).unwrap_or(Value::Null);
    let field = |name: &str| params.get(name).and_then(Value::as_f64);
    let theta = field("rope_theta").or(rope_theta).unwrap_or(10000.0);
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let llama3 = match kind {
        "default" => None,
        "llama3" => {
            let need = |name: &str| field(name).with_context(|| format!("rope_type llama3 without {name}"));
            Some(Llama3Scaling {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_context: need("original_max_position_embeddings")? as usize,
            })
        }
        other => bail!("rope_type {other:?} is not implemented (default, llama3)"),
    };
    let fraction = field("partial_rotary_factor").or(partial).unwrap_or(1.0);
    if !(theta.is_finite() && theta > 0.0) {
        bail!("rope_theta is {theta}: it must be a positive number");
    }
    Ok(Rotary { theta, dims: (d_head as f64 * fraction) as usize, llama3 })
}

#[cfg(test)]
mod tests {
    use crate::model::ModelConfig;

    const HUB: &str = r#"{"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"hidden_size":64,
        "intermediate_size":96,"vocab_size":512,"max_position_embeddings":128,"rms_norm_eps":1e-5,"hidden_act":"silu",
        "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32}}"#;

    #[test]
    fn both_rope_forms_give_one_config() {
        let hub = ModelConfig::from_json(HUB).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(HUB).unwrap();
        let mut params = v["rope_scaling"].clone();
        params["rope_theta"] = v["rope_theta"].clone();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_scaling");
        o.remove("rope_theta");
        o.insert("rope_parameters".into(), params);
        assert_eq!(ModelConfig::from_json(&v.to_string()).unwrap(), hub);
        let r = hub.rotary.unwrap();
        assert_eq!((r.theta, r.dims, r.llama3.unwrap().original_context), (500000.0, 16, 32));
        assert_eq!((hub.kv_heads, hub.d_head, hub.tied), (2, 16, false));
    }

    #[test]
    fn what_is_not_implemented_is_refused_by_name() {
        for (edit, named) in [
            (r#""rope_scaling":{"rope_type":"yarn","factor":4.0}"#, "rope_type \"yarn\""),
            (r#""hidden_act":"gelu""#, "hidden_act \"gelu\""),
            (r#""layer_types":["full_attention","sliding_attention"]"#, "sliding_attention"),
        ] {
            let key = edit.split(':').next().unwrap();
            let mut v: serde_json::Value = serde_json::from_str(HUB).unwrap();
            let e: serde_json::Value = serde_json::from_str(&format!("{{{edit}}}")).unwrap();
            v[key.trim_matches('"')] = e[key.trim_matches('"')].clone();
            let err = format!("{:#}", ModelConfig::from_json(&v.to_string()).unwrap_err());
            assert!(err.contains(named), "{err}");
        }
        let qwen = HUB.replace("\"llama\"", "\"qwen2\"").replace("\"hidden_act\"", "\"use_sliding_window\":true,\"sliding_window\":64,\"hidden_act\"");
        assert!(format!("{:#}", ModelConfig::from_json(&qwen).unwrap_err()).contains("sliding_window 64"));
    }
}
