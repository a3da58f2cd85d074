//! Read-only passes over the model's insides: attention patterns (`patterns`) and the logit lens /
//! direct logit attribution (`attribute`), in memory or written into an output directory; the
//! model's circuit graph (`graph`).
use super::{counted, Model, Progress};
use crate::analysis::plot::{panels_png, panels_svg, Panels};
use crate::circuits::logit_attribution::{self, component_labels, Attribution};
use crate::circuits::patterns::{patterns as compute_patterns, Patterns};
use crate::circuits::viewer;
use crate::data::{self, Checks, PairSource, Skipped, TokenizedPair};
use crate::results::attribution::{self as files, Arrays, Listing};
use crate::results::outputs::PATTERN_FILES;
use crate::results::{npy, outputs, PairEntry};
use anyhow::{bail, Context, Result};
use super::options::{BosOption, Options, OutOptions, PairOptions, Pairs, StrictOption};
use clap::Args;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;

/// The circuit graph (EAP-IG's nodes and edges) of `model`, a hub id or directory: from its
/// config alone.
pub fn graph(model: &str) -> Result<crate::engine::Graph> {
    let c = crate::model::ModelConfig::from_json_file(&crate::model::weights::locate_file(model, "config.json")?)?;
    Ok(crate::engine::Graph::of(&c))
}

/// Prompts given as texts, or a pairs file's clean prompts.
#[derive(Clone, Debug)]
pub enum Prompts {
    Texts(Vec<String>),
    CleanOf(PairSource),
}

/// `patterns`' options (`patchbay patterns`, Python's `Model.patterns`); the prompts come beside
/// them, or from a pairs file's clean prompts.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PatternsOptions {
    /// A pairs file (.jsonl, .csv, .parquet; Python: also records): the patterns of its clean prompts.
    #[arg(long, value_parser = |s: &str| Ok::<_, String>(Pairs::File(PathBuf::from(s))))]
    pub pairs: Option<Pairs>,
    /// Layers, e.g. `0,3-5` (Python: also a list) [default: all].
    #[arg(long)]
    #[serde(deserialize_with = "index_list")]
    pub layers: Option<String>,
    /// Heads, e.g. `1,7` (Python: also a list) [default: all].
    #[arg(long)]
    #[serde(deserialize_with = "index_list")]
    pub heads: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
    /// Prompts per forward pass [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutOptions,
    /// Prompts the HTML viewer holds (patterns.npy holds every one) [default: 20].
    #[arg(long)]
    pub html_prompts: Option<usize>,
}

impl Options for PatternsOptions {
    fn settled(mut self) -> Self {
        self.bos.settle();
        self.output.settle();
        self
    }
}

impl PatternsOptions {
    /// The patterns of `texts` (or of the pairs' clean prompts) on `model`, every default filled in.
    pub fn spec(self, model: &Model, texts: Vec<String>) -> Result<PatternsSpec> {
        let prompts = match (self.pairs.clone(), texts.is_empty()) {
            (Some(_), false) => bail!("give prompts or --pairs, not both"),
            (Some(pairs), true) => Prompts::CleanOf(PairOptions { pairs: Some(pairs), ..Default::default() }.source()?),
            (None, false) => Prompts::Texts(texts),
            (None, true) => bail!("no prompts: give them, or --pairs"),
        };
        let c = &model.config;
        Ok(PatternsSpec {
            prompts,
            layers: self.layers.as_deref().map(|l| indices(l, c.layers, "layer")).transpose()?,
            heads: self.heads.as_deref().map(|h| indices(h, c.heads, "head")).transpose()?,
            prepend_bos: self.bos.prepend_bos(),
            batch: self.batch.unwrap_or(64),
            overwrite: self.output.overwrite(),
            out: self.output.out,
            html_prompts: self.html_prompts.unwrap_or(20),
        })
    }
}

/// Indices as `0,3-5` or as a list of numbers.
fn index_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Numbers(Vec<usize>),
    }
    Ok(Option::<Given>::deserialize(d)?.map(|g| match g {
        Given::Text(t) => t,
        Given::Numbers(n) => n.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
    }))
}

#[derive(Clone, Debug)]
pub struct PatternsSpec {
    pub prompts: Prompts,
    /// Layers and heads kept (None: all).
    pub layers: Option<Vec<usize>>,
    pub heads: Option<Vec<usize>>,
    pub prepend_bos: bool,
    /// Prompts a forward pass.
    pub batch: usize,
    /// Where patterns.npy, lengths.npy, patterns.json, the panels and the viewer go (None: nowhere).
    pub out: Option<PathBuf>,
    pub overwrite: bool,
    /// Prompts the HTML viewer holds.
    pub html_prompts: usize,
}

/// The patterns, each prompt's token strings, and the offline viewer's HTML.
pub struct PatternsResult {
    pub patterns: Patterns,
    pub prompts: Vec<Vec<u32>>,
    pub strs: Vec<Vec<String>>,
    pub html: String,
}

#[derive(Serialize)]
struct PatternsListing<'a> {
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

/// `0,3-5` → [0, 3, 4, 5], each below `n`.
pub fn indices(spec: &str, n: usize, what: &str) -> Result<Vec<usize>> {
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

fn check_indices(given: &Option<Vec<usize>>, n: usize, what: &str) -> Result<Vec<usize>> {
    match given {
        None => Ok((0..n).collect()),
        Some(v) if v.is_empty() => bail!("{what}s: none given"),
        Some(v) => match v.iter().find(|&&i| i >= n) {
            Some(i) => bail!("{what} {i} does not exist (the model has {n} {what}s)"),
            None => Ok(v.clone()),
        },
    }
}

pub fn patterns(model: &Model, spec: &PatternsSpec, progress: &mut dyn Progress) -> Result<PatternsResult> {
    let (tok, config) = (&model.tokenizer, &model.config);
    let texts: Vec<(String, String)> = match &spec.prompts {
        Prompts::Texts(t) if t.is_empty() => bail!("no prompts: give them as arguments, or --pairs FILE"),
        Prompts::Texts(t) => t.iter().enumerate().map(|(i, t)| (format!("prompt {}", i + 1), t.clone())).collect(),
        Prompts::CleanOf(PairSource::File { path, columns }) => {
            let unit = data::row_unit(path);
            data::read_pairs(path, columns)?.into_iter().map(|p| (format!("{} {unit} {}", path.display(), p.row), p.clean)).collect()
        }
        Prompts::CleanOf(PairSource::One(p)) => vec![("the pair".into(), p.clean.clone())],
        Prompts::CleanOf(PairSource::Records(ps)) => ps.iter().map(|p| (format!("row {}", p.row), p.clean.clone())).collect(),
    };
    let mut prompts = Vec::with_capacity(texts.len());
    for (what, text) in &texts {
        let ids = tok.encode_with(text, spec.prepend_bos).with_context(|| format!("{what}: tokenizing"))?;
        if ids.is_empty() {
            bail!("{what} is empty");
        }
        if ids.len() > config.context {
            bail!("{what} is {} tokens, over the model's context of {}", ids.len(), config.context);
        }
        prompts.push(ids);
    }
    let layers = check_indices(&spec.layers, config.layers, "layer")?;
    let heads = check_indices(&spec.heads, config.heads, "head")?;
    let _lock = spec.out.as_deref().map(|out| outputs::prepare_dir(out, &PATTERN_FILES, spec.overwrite)).transpose()?;
    progress.start(prompts.len() as u64, "prompts");
    let p = on_model!(model, |on| -> Patterns { counted(progress, |advance| compute_patterns(on.model, prompts, layers, heads, batch, advance)) },
        prompts: &'a [Vec<u32>] = &prompts, layers: &'a [usize] = &layers, heads: &'a [usize] = &heads, batch: usize = spec.batch, progress: &'a mut dyn Progress = progress)?;
    // NaN stands past a prompt's length: [prompt, layer, head, dest, src].
    let per_prompt = p.layers.len() * p.heads.len() * p.positions * p.positions;
    let past = |i: usize| {
        let (prompt, within) = (i / per_prompt.max(1), i % per_prompt.max(1));
        let (dest, src) = (within / p.positions % p.positions, within % p.positions);
        dest >= p.lengths[prompt] || src > dest
    };
    crate::limits::ensure_finite("the attention patterns", &p.values, past)?;
    let strs: Vec<Vec<String>> = prompts.iter().map(|ids| tok.token_strs(ids)).collect();
    let html = viewer::html(&p, &strs, model.id(), spec.html_prompts);
    if let Some(out) = &spec.out {
        let lengths: Vec<i32> = p.lengths.iter().map(|&l| l as i32).collect();
        let listing = PatternsListing {
            model: model.id(),
            axes: ["prompt", "layer", "head", "dest_position", "src_position"],
            shape: p.shape(),
            layers: &p.layers,
            heads: &p.heads,
            prepend_bos: spec.prepend_bos,
            prompts: prompts.iter().zip(&strs).map(|(tokens, strs)| PromptEntry { tokens, strs }).collect(),
        };
        // The first prompt's patterns, a panel per layer and head.
        let panels = Panels {
            title: format!("attention patterns — {} — prompt 1 (destination down, source across)", model.id()),
            rows: p.layers.iter().map(|l| format!("L{l}")).collect(),
            cols: p.heads.iter().map(|h| format!("H{h}")).collect(),
            labels: strs[0].clone(),
            values: (0..p.layers.len()).flat_map(|l| (0..p.heads.len()).map(move |h| (l, h))).flat_map(|(l, h)| p.of(0, l, h).concat()).collect(),
        };
        let files = vec![
            (PATTERN_FILES[0].to_string(), npy::encode(&p.shape(), &p.values)),
            (PATTERN_FILES[1].to_string(), npy::encode(&[lengths.len()], &lengths)),
            (PATTERN_FILES[2].to_string(), panels_png(&panels)?),
            (PATTERN_FILES[3].to_string(), panels_svg(&panels).into_bytes()),
            (PATTERN_FILES[4].to_string(), html.clone().into_bytes()),
        ];
        outputs::write_dir(out, (PATTERN_FILES[5], serde_json::to_vec_pretty(&listing)?), files, &PATTERN_FILES[..5], spec.overwrite)?;
    }
    Ok(PatternsResult { patterns: p, prompts, strs, html })
}

/// `attribute`'s options (`patchbay attribute`, Python's `Model.attribute`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttributeOptions {
    #[command(flatten)]
    #[serde(flatten)]
    pub prompts: PairOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
    #[command(flatten)]
    #[serde(flatten)]
    pub strict: StrictOption,
    /// Pairs per forward pass [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutOptions,
}

impl Options for AttributeOptions {
    fn settled(mut self) -> Self {
        self.bos.settle();
        self.output.settle();
        self.strict.settle();
        self
    }
}

impl AttributeOptions {
    /// The attribution these options ask for, every default filled in.
    pub fn spec(self) -> Result<AttributeSpec> {
        Ok(AttributeSpec {
            pairs: self.prompts.source()?,
            prepend_bos: self.bos.prepend_bos(),
            strict: self.strict.strict(),
            batch: self.batch.unwrap_or(64),
            overwrite: self.output.overwrite(),
            out: self.output.out,
        })
    }
}

#[derive(Clone, Debug)]
pub struct AttributeSpec {
    pub pairs: PairSource,
    pub prepend_bos: bool,
    pub strict: bool,
    /// Pairs a forward pass.
    pub batch: usize,
    /// Where the arrays and attribution.json go (None: nowhere).
    pub out: Option<PathBuf>,
    pub overwrite: bool,
}

pub struct Attributed {
    pub listing: Listing,
    pub arrays: Arrays,
    pub skipped: Vec<Skipped>,
    pub row_unit: &'static str,
}

/// The logit lens and direct logit attribution of each pair's clean run.
pub fn attribute(model: &Model, spec: &AttributeSpec, progress: &mut dyn Progress) -> Result<Attributed> {
    let c = &model.config;
    let checks = Checks { max_diff: None, context: Some(c.context), vocab: Some(c.vocab), prepend_bos: spec.prepend_bos };
    let (pairs, skipped) = data::load_pairs(&spec.pairs, &model.tokenizer, checks, spec.strict)?;
    progress.start(pairs.len() as u64, "pairs");
    let r = on_model!(model, |on| -> Attribution { counted(progress, |advance| logit_attribution::attribute(on.model, pairs, batch, advance)) },
        pairs: &'a [TokenizedPair] = &pairs, batch: usize = spec.batch, progress: &'a mut dyn Progress = progress)?;
    for (what, values) in [("accumulated", &r.accumulated), ("components", &r.components), ("heads", &r.heads)] {
        crate::limits::ensure_finite(&format!("the attribution's {what}"), values, |_| false)?;
    }
    let listing = Listing {
        patchbay_version: env!("CARGO_PKG_VERSION").into(),
        model: model.id().into(),
        prepend_bos: spec.prepend_bos,
        direction: "the clean run's last position on u = W_U[:, answer] - W_U[:, distractor]: accumulated = norm_final(resid)·u (logit lens); \
                    components and heads = ((c - mean c) / norm_final's scale of the final residual)·(norm_final.weight ⊙ u), uncentred under an RMSNorm"
            .into(),
        layers: r.layers,
        heads: r.heads_per_layer,
        accumulated_labels: r.accumulated_labels.clone(),
        component_labels: component_labels(r.layers),
        logit_diff: r.logit_diff.clone(),
        bias_term: r.bias_term.clone(),
        pairs: pairs.iter().map(|p| PairEntry::new(p, &model.tokenizer)).collect(),
    };
    let arrays = Arrays { accumulated: r.accumulated, components: r.components, heads: r.heads };
    if let Some(out) = &spec.out {
        files::write(out, &listing, &arrays, spec.overwrite)?;
    }
    Ok(Attributed { listing, arrays, skipped, row_unit: spec.pairs.row_unit() })
}

