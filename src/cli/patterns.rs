//! `patchbay patterns`: the attention patterns of prompts, to .npy, a per-head heatmap grid
//! (PNG/SVG) and an offline HTML viewer.
use crate::jobs::circuits::{patterns, PatternsOptions};
use crate::jobs::options::{BackendOptions, Options, DEFAULT_MODEL};
use crate::results::outputs::PATTERN_FILES;
use anyhow::{bail, Result};
use clap::Args;
use std::path::Path;

#[derive(Args)]
pub struct PatternsArgs {
    /// Prompts (or give --pairs).
    texts: Vec<String>,
    /// Hub id or model directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    options: PatternsOptions,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run(a: PatternsArgs) -> Result<()> {
    if a.options.output.out.is_none() {
        bail!("give --out DIR: where the patterns go");
    }
    let model = a.backend.load(&a.model)?;
    let spec = a.options.settled().spec(&model, a.texts)?;
    let r = patterns(&model, &spec, &mut super::Bar::default())?;
    println!(
        "wrote the patterns of {} prompt(s), {} layer(s) × {} head(s), to {}: {}",
        r.prompts.len(),
        r.patterns.layers.len(),
        r.patterns.heads.len(),
        spec.out.as_deref().unwrap_or(Path::new(".")).display(),
        PATTERN_FILES.join(", ")
    );
    Ok(())
}
