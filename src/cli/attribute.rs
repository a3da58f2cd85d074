//! `patchbay attribute`: the logit lens and direct logit attribution of each pair's clean run.
use crate::jobs::options::BackendOptions;
use crate::data::{Columns, PairSource};
use crate::jobs::circuits::{attribute, AttributeSpec};
use crate::results::attribution;
use anyhow::Result;
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
    /// Put the BOS in front of every prompt where the tokenizer puts none (GPT-2's `<|endoftext|>`), as TransformerLens does by default.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// Fail on the first bad pair instead of skipping and listing it.
    #[arg(long, overrides_with = "no_strict")]
    strict: bool,
    #[arg(long, overrides_with = "strict", hide = true)]
    no_strict: bool,
    #[arg(long)]
    out: PathBuf,
    /// Replace the results in --out.
    #[arg(long, overrides_with = "no_overwrite")]
    overwrite: bool,
    #[arg(long, overrides_with = "overwrite", hide = true)]
    no_overwrite: bool,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run(a: AttributeArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let spec = AttributeSpec {
        pairs: PairSource::File { path: a.pairs, columns: Columns::default() },
        prepend_bos: a.prepend_bos,
        strict: a.strict,
        batch: a.batch,
        out: Some(a.out.clone()),
        overwrite: a.overwrite,
    };
    let r = attribute(&model, &spec, &mut super::Bar::default())?;
    for s in &r.skipped {
        eprintln!("skipped {} {}: {}", r.row_unit, s.row, s.reason);
    }
    println!(
        "wrote the logit lens and direct logit attribution of {} pair(s) to {}: {}, {}, {}, {}; next: patchbay analyze {}",
        r.listing.pairs.len(),
        a.out.display(),
        attribution::ACCUMULATED,
        attribution::COMPONENTS,
        attribution::HEADS,
        attribution::LISTING,
        a.out.display()
    );
    Ok(())
}
