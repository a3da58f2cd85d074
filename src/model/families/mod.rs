//! One file per model family: how HF's `config.json` and weight names map onto the generic
//! decoder (`ModelConfig`, `transformer::Transformer`). Nothing outside `model/` names a family.
mod gemma2;
mod gpt2;
mod gpt_neox;
mod llama;

use super::config::ModelConfig;
use anyhow::{bail, Result};

/// Where one of the generic model's parameters is in a family's checkpoint.
pub enum Source {
    /// One tensor, stored as the generic model holds it (GPT-2's Conv1D weights are [in, out]).
    Same(String),
    /// `nn.Linear` weights [out, in] (or their biases [out]), transposed to [in, out] and joined
    /// along the output: q|k|v, gate|up.
    Parts(Vec<String>),
    /// One fused q|k|v `nn.Linear` weight (or bias) whose rows hold each head's q, k and v
    /// together (GPT-NeoX's `query_key_value`), regrouped into q|k|v and transposed.
    PerHead(String),
    /// A norm weight stored as w for a norm that multiplies by (1 + w) (Gemma).
    PlusOne(String),
}

/// A family's mapping: its `config.json`, and the checkpoint name of each generic parameter
/// (`embed`, `blocks.{l}.attn.qkv.weight`, ...; see `Transformer::load`).
pub trait Family: Sync {
    /// HF's `model_type`.
    fn name(&self) -> &'static str;
    fn config(&self, json: serde_json::Value) -> Result<ModelConfig>;
    fn source(&self, generic: &str) -> Source;
    /// The start of layer `layer`'s names in the checkpoint: weights of a layer past the config's
    /// are refused (a config of another model).
    fn layer_prefix(&self, layer: usize) -> String;
}

const FAMILIES: [&dyn Family; 7] = [&gpt2::Gpt2, &llama::Llama("llama"), &llama::Llama("mistral"), &llama::Llama("qwen2"), &llama::Llama("qwen3"), &gpt_neox::GptNeox, &gemma2::Gemma2];

/// The family of `model_type`, refused in one line when patchbay does not implement it.
pub fn of(model_type: &str) -> Result<&'static dyn Family> {
    match FAMILIES.iter().find(|f| f.name() == model_type) {
        Some(f) => Ok(*f),
        None => bail!("model_type {model_type:?} is not supported (patchbay implements {})", FAMILIES.map(|f| f.name()).join(", ")),
    }
}

/// `model_type`'s config.json as the generic description.
pub fn config(model_type: &str, json: serde_json::Value) -> Result<ModelConfig> {
    of(model_type)?.config(json)
}

/// A released model's shape by name (random weights for benchmarks).
pub fn named(name: &str) -> Result<ModelConfig> {
    gpt2::named(name)
}
