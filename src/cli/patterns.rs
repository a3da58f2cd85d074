//! `patchbay patterns`: the attention patterns of prompts, to .npy, a per-head heatmap grid
//! (PNG/SVG) and an offline HTML viewer.
use crate::jobs::options::BackendOptions;
use crate::data::{Columns, PairSource};
use crate::jobs::circuits::{indices, patterns, PatternsSpec, Prompts, PATTERN_FILES};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PatternsArgs {
    /// Prompts (or give --pairs).
    texts: Vec<String>,
    /// Hub id or model directory.
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// A pairs file (.jsonl, .csv, .parquet): the patterns of its clean prompts.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Layers, e.g. `0,3-5` [default: all].
    #[arg(long)]
    layers: Option<String>,
    /// Heads, e.g. `1,7` [default: all].
    #[arg(long)]
    heads: Option<String>,
    /// Put the BOS in front of every prompt where the tokenizer puts none (GPT-2's `<|endoftext|>`), as TransformerLens does by default.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    #[arg(long)]
    out: PathBuf,
    /// Replace the patterns already in --out.
    #[arg(long, overrides_with = "no_overwrite")]
    overwrite: bool,
    #[arg(long, overrides_with = "overwrite", hide = true)]
    no_overwrite: bool,
    /// Prompts the HTML viewer holds (patterns.npy holds every one).
    #[arg(long, default_value_t = 20)]
    html_prompts: usize,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run(a: PatternsArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let prompts = match (a.pairs, a.texts.is_empty()) {
        (Some(_), false) => bail!("give prompts or --pairs FILE, not both"),
        (Some(path), true) => Prompts::CleanOf(PairSource::File { path, columns: Columns::default() }),
        (None, _) => Prompts::Texts(a.texts),
    };
    let c = &model.config;
    let spec = PatternsSpec {
        prompts,
        layers: a.layers.as_deref().map(|l| indices(l, c.layers, "layer")).transpose()?,
        heads: a.heads.as_deref().map(|h| indices(h, c.heads, "head")).transpose()?,
        prepend_bos: a.prepend_bos,
        batch: a.batch,
        out: Some(a.out.clone()),
        overwrite: a.overwrite,
        html_prompts: a.html_prompts,
    };
    let r = patterns(&model, &spec, &mut super::Bar::default())?;
    println!(
        "wrote the patterns of {} prompt(s), {} layer(s) × {} head(s), to {}: {}",
        r.prompts.len(),
        r.patterns.layers.len(),
        r.patterns.heads.len(),
        a.out.display(),
        PATTERN_FILES.join(", ")
    );
    Ok(())
}
