//! `patchbay patterns`: the attention patterns of prompts, to .npy, a per-head heatmap grid
//! (PNG/SVG) and an offline HTML viewer.
use super::BackendArgs;
use crate::analysis::plot::{panels_png, panels_svg, Panels};
use crate::backend::{dispatch, BackendTask};
use crate::circuits::patterns::{patterns, Patterns};
use crate::circuits::viewer;
use crate::data::{self, Columns};
use crate::model::weights::{load_model, ModelFiles};
use crate::model::Gpt2Config;
use crate::results::{write_atomic, write_npy};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use burn::prelude::Backend;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// What `patterns` writes into --out.
pub const FILES: [&str; 6] = ["patterns.npy", "lengths.npy", "patterns.json", "patterns.png", "patterns.svg", "patterns.html"];

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
    /// Put `<|endoftext|>` in front of every prompt, as TransformerLens does by default.
    #[arg(long)]
    prepend_bos: bool,
    #[arg(long)]
    out: PathBuf,
    /// Replace the patterns already in --out.
    #[arg(long)]
    overwrite: bool,
    /// Prompts the HTML viewer holds (patterns.npy holds every one).
    #[arg(long, default_value_t = 20)]
    html_prompts: usize,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

/// `0,3-5` → [0, 3, 4, 5], each below `n`; None → 0..n.
fn indices(spec: Option<&str>, n: usize, what: &str) -> Result<Vec<usize>> {
    let Some(spec) = spec else { return Ok((0..n).collect()) };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| s.trim().parse::<usize>().with_context(|| format!("--{what}s {spec:?}: {s:?} is not a {what} number"));
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(part)?, parse(part)?),
        };
        if a > b || b >= n {
            bail!("--{what}s {spec:?}: {part} is outside the model's {what}s 0..{}", n - 1);
        }
        for i in a..=b {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    if out.is_empty() {
        bail!("--{what}s {spec:?} names no {what}");
    }
    Ok(out)
}

#[derive(Serialize)]
struct Listing<'a> {
    model: &'a str,
    /// Axes of patterns.npy.
    axes: [&'static str; 5],
    shape: [usize; 5],
    layers: &'a [usize],
    heads: &'a [usize],
    prepend_bos: bool,
    prompts: Vec<PromptEntry<'a>>,
}

#[derive(Serialize)]
struct PromptEntry<'a> {
    tokens: &'a [u32],
    strs: &'a [String],
}

struct Run {
    files: ModelFiles,
    prompts: Vec<Vec<u32>>,
    layers: Vec<usize>,
    heads: Vec<usize>,
    batch: usize,
}

impl BackendTask for Run {
    type Output = Patterns;
    fn run<B: Backend>(self, device: B::Device) -> Result<Patterns> {
        let model = load_model::<B>(&self.files, &device)?;
        let bar = super::progress(self.prompts.len(), "prompts");
        let p = patterns(&model, &self.prompts, &self.layers, &self.heads, self.batch, &mut |n| bar.inc(n as u64))?;
        bar.finish_and_clear();
        Ok(p)
    }
}

pub fn run(a: PatternsArgs) -> Result<()> {
    let files = ModelFiles::locate(&a.model)?;
    let config = Gpt2Config::from_json_file(&files.config)?;
    let tok = Tokenizer::from_file(&files.tokenizer)?;
    let texts: Vec<(String, String)> = match (&a.pairs, a.texts.is_empty()) {
        (Some(_), false) => bail!("give prompts or --pairs FILE, not both"),
        (None, true) => bail!("no prompts: give them as arguments, or --pairs FILE"),
        (None, false) => a.texts.iter().enumerate().map(|(i, t)| (format!("prompt {}", i + 1), t.clone())).collect(),
        (Some(file), true) => {
            let unit = data::row_unit(file);
            data::read_pairs(file, &Columns::default())?.into_iter().map(|p| (format!("{} {unit} {}", file.display(), p.row), p.clean)).collect()
        }
    };
    let mut prompts = Vec::with_capacity(texts.len());
    for (what, text) in &texts {
        let ids = tok.encode_with(text, a.prepend_bos).with_context(|| format!("{what}: tokenizing"))?;
        if ids.is_empty() {
            bail!("{what} is empty");
        }
        if ids.len() > config.n_positions {
            bail!("{what} is {} tokens, over the model's context of {}", ids.len(), config.n_positions);
        }
        prompts.push(ids);
    }
    let layers = indices(a.layers.as_deref(), config.n_layer, "layer")?;
    let heads = indices(a.heads.as_deref(), config.n_head, "head")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if !a.overwrite {
        if let Some(f) = FILES.iter().find(|f| a.out.join(f).exists()) {
            bail!("{} already holds {f}: pass --overwrite to replace it, or choose another --out", a.out.display());
        }
    }
    let spec = a.backend.configure()?;
    let p = dispatch(&spec, Run { files: files.clone(), prompts: prompts.clone(), layers, heads, batch: a.batch })?;

    let strs: Vec<Vec<String>> = prompts.iter().map(|ids| tok.token_strs(ids)).collect();
    let lengths: Vec<i32> = p.lengths.iter().map(|&l| l as i32).collect();
    write_npy(&a.out.join("patterns.npy"), &p.shape(), &p.values)?;
    write_npy(&a.out.join("lengths.npy"), &[lengths.len()], &lengths)?;
    let listing = Listing {
        model: &files.id,
        axes: ["prompt", "layer", "head", "dest_position", "src_position"],
        shape: p.shape(),
        layers: &p.layers,
        heads: &p.heads,
        prepend_bos: a.prepend_bos,
        prompts: prompts.iter().zip(&strs).map(|(tokens, strs)| PromptEntry { tokens, strs }).collect(),
    };
    write_atomic(&a.out.join("patterns.json"), &serde_json::to_vec_pretty(&listing)?)?;
    // The first prompt's patterns, a panel per layer and head.
    let panels = Panels {
        title: format!("attention patterns — {} — prompt 1 (destination down, source across)", files.id),
        rows: p.layers.iter().map(|l| format!("L{l}")).collect(),
        cols: p.heads.iter().map(|h| format!("H{h}")).collect(),
        labels: strs[0].clone(),
        values: (0..p.layers.len()).flat_map(|l| (0..p.heads.len()).map(move |h| (l, h))).flat_map(|(l, h)| p.of(0, l, h).concat()).collect(),
    };
    write_atomic(&a.out.join("patterns.svg"), panels_svg(&panels).as_bytes())?;
    write_atomic(&a.out.join("patterns.png"), &panels_png(&panels)?)?;
    write_atomic(&a.out.join("patterns.html"), viewer::html(&p, &strs, &files.id, a.html_prompts).as_bytes())?;
    println!(
        "wrote the patterns of {} prompt(s), {} layer(s) × {} head(s), to {}: {}",
        prompts.len(),
        p.layers.len(),
        p.heads.len(),
        a.out.display(),
        FILES.join(", ")
    );
    Ok(())
}
