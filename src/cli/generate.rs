//! `patchbay generate`, `patchbay perplexity` and `patchbay candidates`: decoding and scoring
//! text, batched.
use super::BackendArgs;
use crate::analysis::plot::{self, Grid};
use crate::data;
use crate::generate::candidates::{jaccard, py_repr};
use crate::generate::sampling::Sampling;
use crate::generate::steer::SteeringVector;
use crate::generate::{perplexity, Options};
use crate::jobs::text::{self, PrependSpec};
use crate::jobs::Model;
use crate::model::{Site, SiteKind};
use crate::results::{read_f32, remove_if_present, write_atomic, write_npy};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt (or give --prompts).
    prompt: Option<String>,
    /// Hub id or model directory.
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// A JSONL file of prompts, one {"prompt": "..."} (or {"text": ...}) a line: decoded batched.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// Always the most likely token (no sampling; the penalties and filters do not apply).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "freq_penalty"], overrides_with = "no_greedy")]
    greedy: bool,
    #[arg(long, overrides_with = "greedy", hide = true)]
    no_greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample from the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the most likely tokens that together reach this probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Subtracted from a token's logit once for every time it is in the sequence so far.
    #[arg(long, default_value_t = 0.0)]
    freq_penalty: f32,
    /// Sequences per prompt.
    #[arg(long, default_value_t = 1)]
    num_sequences: usize,
    /// Seed of the sampling: the same seed gives the same text on every run and backend.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// End a sequence at `<|endoftext|>`.
    #[arg(long, overrides_with = "no_stop_at_eos")]
    stop_at_eos: bool,
    #[arg(long, overrides_with = "stop_at_eos", hide = true)]
    no_stop_at_eos: bool,
    /// Put `<|endoftext|>` in front of every prompt, as TransformerLens does by default.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Print JSON for scripts.
    #[arg(long, overrides_with = "no_json")]
    json: bool,
    #[arg(long, overrides_with = "json", hide = true)]
    no_json: bool,
    /// A steering vector (.npy, from `patchbay steer make`): coef × it is added to --steer-site
    /// of --steer-layer at every position of every step.
    #[arg(long, requires_all = ["steer_site", "steer_layer"])]
    steer: Option<PathBuf>,
    #[arg(long, value_parser = SiteKind::parse, requires = "steer")]
    steer_site: Option<SiteKind>,
    #[arg(long, requires = "steer")]
    steer_layer: Option<usize>,
    /// The steering vector's coefficient.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, requires = "steer")]
    coef: f32,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Args)]
pub struct PerplexityArgs {
    /// Texts (or give --texts).
    texts: Vec<String>,
    /// A JSONL file of texts, one {"text": "..."} (or {"prompt": ...}) a line.
    #[arg(long = "texts")]
    file: Option<PathBuf>,
    /// Also each token's perplexity, exp of its loss.
    #[arg(long, overrides_with = "no_per_token")]
    per_token: bool,
    #[arg(long, overrides_with = "per_token", hide = true)]
    no_per_token: bool,
    /// Write perplexity.npy [texts], token_perplexity.npy [texts, longest − 1] (NaN past a text's
    /// end) and perplexity.json into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: TextArgs,
}

/// What `perplexity` and `candidates` share: the model, how texts are batched, the output.
#[derive(Args)]
struct TextArgs {
    /// Hub id or model directory.
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// Put `<|endoftext|>` in front of every text, as TransformerLens does by default.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Print JSON for scripts.
    #[arg(long, overrides_with = "no_json")]
    json: bool,
    #[arg(long, overrides_with = "json", hide = true)]
    no_json: bool,
    /// Replace the results an --out directory already holds.
    #[arg(long, overrides_with = "no_overwrite")]
    overwrite: bool,
    #[arg(long, overrides_with = "overwrite", hide = true)]
    no_overwrite: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

impl TextArgs {
    /// The model's files and tokenizer, and the texts (arguments or a file) tokenized; refuses an
    /// --out directory that holds `listing` unless --overwrite.
    fn prepare(&self, args: Vec<String>, file: Option<&Path>, out: Option<&Path>, listing: &str) -> Result<(Model, Vec<String>, Vec<Vec<u32>>)> {
        let model = self.backend.load(&self.model)?;
        let (texts, ids) = texts_and_ids(args, file, &model.tokenizer, self.prepend_bos)?;
        if let Some(out) = out {
            if !self.overwrite && out.join(listing).exists() {
                bail!("{} already holds {listing}: pass --overwrite to replace it, or choose another --out", out.display());
            }
        }
        Ok((model, texts, ids))
    }
}

/// Texts from the arguments or a file (exactly one of them), tokenized; errors name the text.
fn texts_and_ids(args: Vec<String>, file: Option<&Path>, tok: &Tokenizer, prepend_bos: bool) -> Result<(Vec<String>, Vec<Vec<u32>>)> {
    let texts = match (file, args.is_empty()) {
        (Some(_), false) => bail!("give texts as arguments or in a file, not both"),
        (None, true) => bail!("no text: give it as an argument, or a JSONL file"),
        (Some(f), true) => data::read_texts(f)?,
        (None, false) => args,
    };
    let ids = texts.iter().enumerate().map(|(i, t)| tok.encode_with(t, prepend_bos).with_context(|| format!("text {}", i + 1))).collect::<Result<_>>()?;
    Ok((texts, ids))
}

#[derive(Serialize)]
struct Sequence<'a> {
    prompt: usize,
    sequence: usize,
    prompt_text: &'a str,
    tokens: &'a [u32],
    text: String,
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let tok = &model.tokenizer;
    let (texts, prompts) = texts_and_ids(a.prompt.into_iter().collect(), a.prompts.as_deref(), tok, a.prepend_bos)?;
    if !a.greedy && !(a.temperature > 0.0) {
        bail!("--temperature must be above 0 (for the most likely token every step, pass --greedy)");
    }
    if let Some(p) = a.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        bail!("--top-p must be in (0, 1], not {p}");
    }
    let sampling = if a.greedy { Sampling::GREEDY } else { Sampling { temperature: Some(a.temperature), top_k: a.top_k, top_p: a.top_p, freq_penalty: a.freq_penalty } };
    let options = Options {
        max_new_tokens: a.max_new_tokens,
        sampling,
        num_sequences: a.num_sequences.max(1),
        seed: a.seed,
        stop_at: if a.stop_at_eos { Some(tok.bos()?) } else { None },
        batch: a.batch,
        steer: match (&a.steer, a.steer_site, a.steer_layer) {
            (Some(path), Some(kind), Some(layer)) => {
                let (values, shape) = read_f32(path)?;
                Some(SteeringVector { site: Site::new(kind, layer), values, shape, coef: a.coef })
            }
            _ => None,
        },
    };
    let n = options.num_sequences;
    let out = text::generate(&model, &prompts, &options, &mut super::Bar::default())?;
    let seqs: Vec<Sequence> = out.iter().enumerate().map(|(s, t)| Sequence { prompt: s / n, sequence: s % n, prompt_text: &texts[s / n], tokens: t, text: tok.decode(t) }).collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&seqs)?);
        return Ok(());
    }
    for s in &seqs {
        if texts.len() > 1 || n > 1 {
            println!("--- prompt {}, sequence {} ---", s.prompt + 1, s.sequence + 1);
        }
        println!("{}{}", s.prompt_text, s.text);
    }
    Ok(())
}

#[derive(Serialize)]
struct Scored<'a> {
    text: &'a str,
    tokens: &'a [u32],
    perplexity: f32,
    /// Token t+1's perplexity given tokens ..=t, with its text.
    #[serde(skip_serializing_if = "Option::is_none")]
    per_token: Option<Vec<(String, f32)>>,
}

pub fn run_perplexity(a: PerplexityArgs) -> Result<()> {
    let c = &a.common;
    let (model, texts, ids) = c.prepare(a.texts, a.file.as_deref(), a.out.as_deref(), "perplexity.json")?;
    let tok = &model.tokenizer;
    let losses = text::token_losses(&model, &ids, c.batch, &mut super::Bar::default())?;
    let scored: Vec<Scored> = texts
        .iter()
        .zip(&ids)
        .zip(&losses)
        .map(|((text, tokens), l)| Scored {
            text,
            tokens,
            perplexity: perplexity(l),
            per_token: a.per_token.then(|| tokens[1..].iter().zip(l).map(|(&t, &x)| (tok.token_str(t), x.exp())).collect()),
        })
        .collect();
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let width = ids.iter().map(|t| t.len() - 1).max().unwrap_or(0);
        let per_token: Vec<f32> = losses.iter().flat_map(|l| l.iter().map(|x| x.exp()).chain(std::iter::repeat(f32::NAN)).take(width)).collect();
        write_npy(&out.join("perplexity.npy"), &[texts.len()], &scored.iter().map(|s| s.perplexity).collect::<Vec<_>>())?;
        write_npy(&out.join("token_perplexity.npy"), &[texts.len(), width], &per_token)?;
        write_atomic(&out.join("perplexity.json"), &serde_json::to_vec_pretty(&scored)?)?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&scored)?);
        return Ok(());
    }
    println!("{:>12}  {:>6}  text", "perplexity", "tokens");
    for s in &scored {
        println!("{:>12.4}  {:>6}  {:?}", s.perplexity, s.tokens.len(), s.text);
        for (t, p) in s.per_token.iter().flatten() {
            println!("{:>12.4}          {t:?}", p);
        }
    }
    if let Some(out) = &a.out {
        println!("wrote perplexity.npy, token_perplexity.npy, perplexity.json to {}", out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct CandidatesArgs {
    /// The text (or give --prompts).
    text: Option<String>,
    /// A JSONL file of prompts ({"prompt": ...} or {"text": ...} a line): each one's last-position
    /// pool, and the pools' pairwise Jaccard similarity.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// A table for every position (the next token after each), not only the last.
    #[arg(long, overrides_with = "no_all_positions")]
    all_positions: bool,
    #[arg(long, overrides_with = "all_positions", hide = true)]
    no_all_positions: bool,
    /// Write candidates.json, and for several prompts jaccard.npy [prompts, prompts] with its
    /// heatmap (jaccard.png, jaccard.svg), into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: TextArgs,
}

#[derive(Serialize)]
struct Candidate {
    rank: usize,
    id: u32,
    token: String,
    prob: f32,
}

#[derive(Serialize)]
struct Position {
    /// The candidates follow the token at this position.
    position: usize,
    token: String,
    candidates: Vec<Candidate>,
}

#[derive(Serialize)]
struct TextCandidates<'a> {
    text: &'a str,
    positions: Vec<Position>,
}

#[derive(Serialize)]
struct Report<'a> {
    texts: Vec<TextCandidates<'a>>,
    /// Row-major [texts, texts]: the Jaccard similarity of the last positions' top-k sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    jaccard: Option<Vec<f32>>,
}

pub fn run_candidates(a: CandidatesArgs) -> Result<()> {
    let c = &a.common;
    let (model, texts, ids) = c.prepare(a.text.into_iter().collect(), a.prompts.as_deref(), a.out.as_deref(), "candidates.json")?;
    let tok = &model.tokenizer;
    let found = text::candidates(&model, &ids, a.top_k, a.all_positions, c.batch)?;
    let report = Report {
        texts: texts
            .iter()
            .zip(&ids)
            .zip(&found)
            .map(|((text, ids), per_pos)| {
                let first = ids.len() - per_pos.len();
                let positions = per_pos
                    .iter()
                    .enumerate()
                    .map(|(j, c)| Position {
                        position: first + j,
                        token: tok.token_str(ids[first + j]),
                        candidates: c.iter().enumerate().map(|(r, &(id, prob))| Candidate { rank: r + 1, id, token: tok.token_str(id), prob }).collect(),
                    })
                    .collect();
                TextCandidates { text, positions }
            })
            .collect(),
        jaccard: (texts.len() > 1).then(|| jaccard(&found.iter().map(|p| p.last().expect("a position").iter().map(|c| c.0).collect()).collect::<Vec<_>>())),
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // An earlier result's listing goes first, then its arrays, so no listing ever sits beside
        // arrays of another run (a single prompt writes no Jaccard matrix).
        for old in ["candidates.json", "jaccard.npy", "jaccard.png", "jaccard.svg"] {
            remove_if_present(&out.join(old))?;
        }
        if let Some(j) = &report.jaccard {
            let n = texts.len();
            write_npy(&out.join("jaccard.npy"), &[n, n], j)?;
            let labels: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            let grid = Grid {
                title: format!("Jaccard similarity of the prompts' top-{} next tokens", a.top_k),
                row_title: "prompt".into(),
                col_title: "prompt".into(),
                rows: labels.clone(),
                cols: labels,
                values: j.clone(),
            };
            write_atomic(&out.join("jaccard.svg"), plot::svg(&grid).as_bytes())?;
            write_atomic(&out.join("jaccard.png"), &plot::png(&grid)?)?;
        }
        write_atomic(&out.join("candidates.json"), &serde_json::to_vec_pretty(&report)?)?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for (i, t) in report.texts.iter().enumerate() {
        if report.texts.len() > 1 {
            println!("--- prompt {}: {:?}", i + 1, t.text);
        }
        for p in &t.positions {
            println!("after position {} {}:", p.position, py_repr(&p.token));
            for c in &p.candidates {
                println!("  {:>3}  {:<24} {:>8.4}", c.rank, py_repr(&c.token), c.prob);
            }
        }
    }
    if let Some(j) = &report.jaccard {
        let n = texts.len();
        println!("Jaccard similarity of the last positions' top-{} sets:", a.top_k);
        for r in 0..n.min(20) {
            println!("  {}", j[r * n..(r + 1) * n].iter().take(20).map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" "));
        }
    }
    if let Some(out) = &a.out {
        println!("wrote candidates.json{} to {}", if report.jaccard.is_some() { ", jaccard.npy, jaccard.png, jaccard.svg" } else { "" }, out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct SteerMakeArgs {
    /// Hub id or model directory.
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// The prompt whose activation the vector points towards.
    #[arg(long)]
    clean: String,
    /// The prompt it points away from.
    #[arg(long)]
    corrupted: String,
    /// resid_pre, resid_mid, resid_post, attn_out, mlp_out ([d_model]) or q, k, v, z ([heads, d_head]).
    #[arg(long, value_parser = SiteKind::parse)]
    site: SiteKind,
    #[arg(long)]
    layer: usize,
    /// The position to take; negative counts from each prompt's end.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    position: i64,
    /// Put `<|endoftext|>` in front of both prompts.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// The vector's .npy file.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long, overrides_with = "no_overwrite")]
    overwrite: bool,
    #[arg(long, overrides_with = "overwrite", hide = true)]
    no_overwrite: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run_steer_make(a: SteerMakeArgs) -> Result<()> {
    super::output_file(&a.out, a.overwrite)?;
    let model = a.backend.load(&a.model)?;
    let tok = &model.tokenizer;
    let clean = tok.encode_with(&a.clean, a.prepend_bos).context("--clean")?;
    let corrupted = tok.encode_with(&a.corrupted, a.prepend_bos).context("--corrupted")?;
    let (values, shape) = text::steering_vector(&model, &clean, &corrupted, Site::new(a.site, a.layer), a.position)?;
    write_npy(&a.out, &shape, &values)?;
    let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
    println!("wrote the {} steering vector {shape:?} (norm {norm:.4}) to {}", a.site.hook_name(a.layer), a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct PrependArgs {
    /// The text to go backwards from.
    text: String,
    /// Hub id or model directory.
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// Tokens to put in front, one a step.
    #[arg(long, default_value_t = 3)]
    n_tokens: usize,
    /// Candidate first tokens drawn each step (repeats are scored once).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Seed of the candidates' draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Score every text with `<|endoftext|>` in front, so the new first token's probability counts.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// Print JSON for scripts.
    #[arg(long, overrides_with = "no_json")]
    json: bool,
    #[arg(long, overrides_with = "json", hide = true)]
    no_json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Serialize)]
struct PrependStep {
    step: usize,
    text: String,
    tokens: Vec<u32>,
    perplexity: f32,
    /// Each candidate first token's (id, token, perplexity of its text).
    candidates: Vec<(u32, String, f32)>,
}

pub fn run_prepend(a: PrependArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let tok = &model.tokenizer;
    let text = tok.encode(&a.text)?;
    let spec = PrependSpec { n_tokens: a.n_tokens, samples: a.samples, seed: a.seed, score_bos: a.prepend_bos };
    let steps: Vec<PrependStep> = text::prepend(&model, &text, &spec, &mut super::Bar::default())?
        .into_iter()
        .enumerate()
        .map(|(i, s)| PrependStep {
            step: i + 1,
            text: tok.decode(&s.tokens),
            perplexity: s.perplexity,
            candidates: s.candidates.iter().map(|&(id, p)| (id, tok.token_str(id), p)).collect(),
            tokens: s.tokens,
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(());
    }
    println!("{:>4}  {:>12}  text", "step", "perplexity");
    for s in &steps {
        println!("{:>4}  {:>12.4}  {:?}", s.step, s.perplexity, s.text);
    }
    Ok(())
}
