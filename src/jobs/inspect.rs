//! `inspect`: a prompt's tokens and the model's most likely next tokens.
use super::Model;
use crate::model::{NoHooks, Transformer};
use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use super::options::{BosOption, Options};
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
pub struct TokenRow {
    pub position: usize,
    pub id: u32,
    pub token: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopRow {
    pub rank: usize,
    pub id: u32,
    pub token: String,
    pub prob: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub tokens: Vec<TokenRow>,
    pub top_k: Vec<TopRow>,
}

/// `inspect`'s options (`patchbay inspect`, Python's `Model.inspect`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InspectOptions {
    /// Next tokens listed [default: 20].
    #[arg(long)]
    pub top_k: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
}

impl Options for InspectOptions {
    fn settled(mut self) -> Self {
        self.bos.settle();
        self
    }
}

impl InspectOptions {
    /// The tokens of `text` and its most likely next tokens, with these options' defaults filled in.
    pub fn run(&self, model: &Model, text: &str) -> Result<Inspection> {
        inspect(model, text, self.top_k.unwrap_or(20), self.bos.prepend_bos())
    }
}

/// The tokens of `text` and the `top_k` most likely next tokens after it (ties by id).
pub fn inspect(model: &Model, text: &str, top_k: usize, prepend_bos: bool) -> Result<Inspection> {
    anyhow::ensure!(!text.is_empty(), "the text is empty");
    let tok = &model.tokenizer;
    let ids = tok.encode_with(text, prepend_bos)?;
    let probs = on_model!(model, |on| -> Vec<f32> { next_token(on.model, ids) }, ids: &'a [u32] = &ids)?;
    crate::limits::ensure_finite("the next token's probabilities", &probs, |_| false)?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    Ok(Inspection {
        tokens: ids.iter().enumerate().map(|(position, &id)| TokenRow { position, id, token: tok.token_str(id) }).collect(),
        top_k: order
            .iter()
            .take(top_k)
            .enumerate()
            .map(|(r, &i)| TopRow { rank: r + 1, id: i as u32, token: tok.token_str(i as u32), prob: probs[i] })
            .collect(),
    })
}

/// Next-token probabilities at the last position of `ids`.
fn next_token<B: Backend>(model: &Transformer<B>, ids: &[u32]) -> Result<Vec<f32>> {
    let logits = model.forward(model.tokens(&[ids.to_vec()])?, &mut NoHooks);
    let [_, s, v] = logits.dims();
    let probs = softmax(logits.narrow(1, s - 1, 1).reshape([v]), 0);
    Ok(probs.into_data().convert::<f32>().to_vec().expect("f32"))
}
