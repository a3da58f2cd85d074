//! GPT-2 configuration as HF's `config.json` states it, and the named shapes of the family.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The MLP nonlinearity. HF GPT-2 uses `gelu_new` (tanh approximation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    GeluNew,
    Gelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub n_inner: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    pub layer_norm_epsilon: f64,
    pub activation: Activation,
}

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

impl Gpt2Config {
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text).context("not a GPT-2 config.json")?;
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
        // A zero, negative or non-finite epsilon makes every layer norm NaN or infinite, silently.
        if !(hf.layer_norm_epsilon.is_finite() && hf.layer_norm_epsilon > 0.0) {
            bail!("layer_norm_epsilon is {}: it must be a positive number", hf.layer_norm_epsilon);
        }
        Ok(Self {
            n_layer: hf.n_layer,
            n_head: hf.n_head,
            n_embd: hf.n_embd,
            n_inner: hf.n_inner.unwrap_or(4 * hf.n_embd),
            n_positions,
            vocab_size: hf.vocab_size,
            layer_norm_epsilon: hf.layer_norm_epsilon,
            activation,
        })
    }

    /// The released GPT-2 shapes, for benchmarks on random weights (no download), or the shape of
    /// a folder's config.json (a small one where a GPU's buffers are small: lavapipe's 128 MiB).
    pub fn named(name: &str) -> Result<Self> {
        let folder = Path::new(name).join("config.json");
        if folder.is_file() {
            return Self::from_json_file(&folder);
        }
        let (n_layer, n_head, n_embd) = match name {
            "gpt2" => (12, 12, 768),
            "gpt2-medium" => (24, 16, 1024),
            "gpt2-large" => (36, 20, 1280),
            "gpt2-xl" => (48, 25, 1600),
            "distilgpt2" => (6, 12, 768),
            other => bail!("unknown shape {other:?}: expected gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 or a folder with a config.json"),
        };
        Ok(Self {
            n_layer,
            n_head,
            n_embd,
            n_inner: 4 * n_embd,
            n_positions: 1024,
            vocab_size: 50257,
            layer_norm_epsilon: 1e-5,
            activation: Activation::GeluNew,
        })
    }

    pub fn d_head(&self) -> usize {
        self.n_embd / self.n_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hub_config_with_n_ctx_and_n_positions() {
        // The hub's gpt2 config.json carries both names.
        let c = Gpt2Config::from_json(
            r#"{"n_layer":12,"n_head":12,"n_embd":768,"n_ctx":1024,"n_positions":1024,"vocab_size":50257,
               "activation_function":"gelu_new","layer_norm_epsilon":1e-05}"#,
        )
        .unwrap();
        assert_eq!(c, Gpt2Config::named("gpt2").unwrap());
        assert_eq!(c.d_head(), 64);
    }

    #[test]
    fn rejects_unsupported_activation() {
        let err = Gpt2Config::from_json(r#"{"n_layer":1,"n_head":1,"n_embd":4,"n_positions":8,"vocab_size":9,"activation_function":"swish"}"#)
            .unwrap_err();
        assert!(format!("{err:#}").contains("swish"));
    }
}
