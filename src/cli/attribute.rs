//! `patchbay attribute`: the logit lens and direct logit attribution of each pair's clean run.
use super::run::pairs_file;
use super::BackendArgs;
use crate::backend::{dispatch, BackendTask};
use crate::circuits::logit_attribution::{accumulated_labels, attribute, component_labels, Attribution};
use crate::data::{Checks, Columns, TokenizedPair};
use crate::model::weights::{load_model, ModelFiles};
use crate::model::Gpt2Config;
use crate::results::attribution::{self, Arrays, Listing};
use crate::results::PairEntry;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::prelude::Backend;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct AttributeArgs {
    /// Hub id or model directory.
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// Pairs file (.jsonl, .csv, .parquet): each pair's clean prompt, answer and distractor.
    #[arg(long)]
    pairs: PathBuf,
    /// Put `<|endoftext|>` in front of every prompt, as TransformerLens does by default.
    #[arg(long)]
    prepend_bos: bool,
    /// Fail on the first bad pair instead of skipping and listing it.
    #[arg(long)]
    strict: bool,
    #[arg(long)]
    out: PathBuf,
    /// Replace the results in --out.
    #[arg(long)]
    overwrite: bool,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

struct Run {
    files: ModelFiles,
    pairs: Vec<TokenizedPair>,
    batch: usize,
}

impl BackendTask for Run {
    type Output = Attribution;
    fn run<B: Backend>(self, device: B::Device) -> Result<Attribution> {
        let model = load_model::<B>(&self.files, &device)?;
        let bar = super::progress(self.pairs.len(), "pairs");
        let a = attribute(&model, &self.pairs, self.batch, &mut |n| bar.inc(n as u64))?;
        bar.finish_and_clear();
        Ok(a)
    }
}

pub fn run(a: AttributeArgs) -> Result<()> {
    let files = ModelFiles::locate(&a.model)?;
    let config = Gpt2Config::from_json_file(&files.config)?;
    let tok = Tokenizer::from_file(&files.tokenizer)?;
    let checks = Checks { max_diff: None, context: Some(config.n_positions), vocab: Some(config.vocab_size), prepend_bos: a.prepend_bos };
    let (pairs, _) = pairs_file(&a.pairs, &Columns::default(), &tok, checks, a.strict)?;
    let spec = a.backend.configure()?;
    let r = dispatch(&spec, Run { files: files.clone(), pairs: pairs.clone(), batch: a.batch })?;
    let listing = Listing {
        patchbay_version: env!("CARGO_PKG_VERSION").into(),
        model: files.id.clone(),
        prepend_bos: a.prepend_bos,
        direction: "the clean run's last position on u = W_U[:, answer] - W_U[:, distractor]: accumulated = ln_f(resid)·u (logit lens); \
                    components and heads = ((c - mean c) / ln_f scale of the final residual)·(ln_f.weight ⊙ u)"
            .into(),
        layers: r.layers,
        heads: r.heads_per_layer,
        accumulated_labels: accumulated_labels(r.layers),
        component_labels: component_labels(r.layers),
        logit_diff: r.logit_diff.clone(),
        bias_term: r.bias_term.clone(),
        pairs: pairs.iter().map(|p| PairEntry::new(p, &tok)).collect(),
    };
    attribution::write(&a.out, &listing, &Arrays { accumulated: r.accumulated, components: r.components, heads: r.heads }, a.overwrite)?;
    println!(
        "wrote the logit lens and direct logit attribution of {} pair(s) to {}: {}, {}, {}, {}; next: patchbay analyze {}",
        pairs.len(),
        a.out.display(),
        attribution::ACCUMULATED,
        attribution::COMPONENTS,
        attribution::HEADS,
        attribution::LISTING,
        a.out.display()
    );
    Ok(())
}
