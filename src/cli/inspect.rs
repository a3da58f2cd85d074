//! `patchbay inspect`: the token table and the top-k next-token table of one prompt.
use super::BackendArgs;
use crate::backend::{dispatch, BackendTask};
use crate::model::weights::{load_model, ModelFiles};
use crate::model::NoHooks;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct InspectArgs {
    /// Hub id (downloaded into the HF cache) or a directory with config.json, model.safetensors, tokenizer.json.
    #[arg(long, default_value = "gpt2")]
    model: String,
    text: String,
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Put `<|endoftext|>` in front of the text, as TransformerLens does by default.
    #[arg(long)]
    prepend_bos: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Serialize)]
struct TokenRow {
    position: usize,
    id: u32,
    token: String,
}

#[derive(Serialize)]
struct TopRow {
    rank: usize,
    id: u32,
    token: String,
    prob: f32,
}

#[derive(Serialize)]
struct Report {
    tokens: Vec<TokenRow>,
    top_k: Vec<TopRow>,
}

/// Next-token probabilities at the last position.
struct NextToken {
    files: ModelFiles,
    ids: Vec<u32>,
}

impl BackendTask for NextToken {
    type Output = Vec<f32>;
    fn run<B: Backend>(self, device: B::Device) -> Result<Vec<f32>> {
        let model = load_model::<B>(&self.files, &device)?;
        let logits = model.forward(model.tokens(&[self.ids.clone()])?, &mut NoHooks);
        let [_, s, v] = logits.dims();
        let probs = softmax(logits.narrow(1, s - 1, 1).reshape([v]), 0);
        Ok(probs.into_data().convert::<f32>().to_vec().expect("f32"))
    }
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let files = ModelFiles::locate(&args.model)?;
    let tok = Tokenizer::from_file(&files.tokenizer)?;
    anyhow::ensure!(!args.text.is_empty(), "the text is empty");
    let ids = tok.encode_with(&args.text, args.prepend_bos)?;
    let probs = dispatch(&args.backend.configure()?, NextToken { files, ids: ids.clone() })?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let report = Report {
        tokens: ids.iter().enumerate().map(|(position, &id)| TokenRow { position, id, token: tok.token_str(id) }).collect(),
        top_k: order
            .iter()
            .take(args.top_k)
            .enumerate()
            .map(|(r, &i)| TopRow { rank: r + 1, id: i as u32, token: tok.token_str(i as u32), prob: probs[i] })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} tokens", report.tokens.len());
    println!("{:>8} {:>8}  token", "position", "id");
    for t in &report.tokens {
        println!("{:>8} {:>8}  {:?}", t.position, t.id, t.token);
    }
    println!("\ntop {} next tokens", report.top_k.len());
    println!("{:>4} {:>8}  {:<20} {:>11}", "rank", "index", "token", "probability");
    for t in &report.top_k {
        println!("{:>4} {:>8}  {:<20} {:>11.4}", t.rank, t.id, format!("{:?}", t.token), t.prob);
    }
    Ok(())
}
