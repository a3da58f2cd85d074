//! `patchbay generate`, `patchbay perplexity` and `patchbay candidates`: decoding and scoring
//! text, batched.
use crate::jobs::options::BackendOptions;
use crate::data;
use crate::generate::candidates::py_repr;
use crate::generate::sampling::Sampling;
use crate::generate::steer::SteeringVector;
use crate::generate::Options;
use crate::jobs::text::{self, GenerateSpec, PrependSpec, SteerSpec, TextsSpec, CANDIDATE_FILES, PERPLEXITY_FILES};
use crate::model::{Site, SiteKind};
use crate::results::read_f32;
use anyhow::{bail, Result};
use clap::Args;
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
    // Floats may start with '-' (`--freq-penalty -0.5`), read as numbers, not flags.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    temperature: f32,
    /// Sample from the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the most likely tokens that together reach this probability.
    #[arg(long, allow_hyphen_values = true)]
    top_p: Option<f32>,
    /// Subtracted from a token's logit once for every time it is in the sequence so far.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    freq_penalty: f32,
    /// Sequences per prompt.
    #[arg(long, default_value_t = 1)]
    num_sequences: usize,
    /// Seed of the sampling: the same seed gives the same text on every run and backend.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// End a sequence at the model's EOS (config.json's `eos_token_id`s; GPT-2's `<|endoftext|>`).
    #[arg(long, overrides_with = "no_stop_at_eos")]
    stop_at_eos: bool,
    #[arg(long, overrides_with = "stop_at_eos", hide = true)]
    no_stop_at_eos: bool,
    /// Put the BOS in front of every prompt where the tokenizer puts none (GPT-2's `<|endoftext|>`), as TransformerLens does by default.
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
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, requires = "steer")]
    coef: f32,
    #[command(flatten)]
    backend: BackendOptions,
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
    /// Put the BOS in front of every text where the tokenizer puts none (GPT-2's `<|endoftext|>`), as TransformerLens does by default.
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
    backend: BackendOptions,
}

impl TextArgs {
    fn spec(&self, texts: Vec<String>, file: Option<&Path>, out: Option<PathBuf>) -> Result<TextsSpec> {
        let (texts, origins) = texts_of(texts, file)?;
        Ok(TextsSpec { texts, origins, prepend_bos: self.prepend_bos, batch: self.batch, out, overwrite: self.overwrite })
    }
}

/// Texts from the arguments or a file (exactly one of them), and where each came from (a file's
/// `FILE line N`; none for arguments).
fn texts_of(args: Vec<String>, file: Option<&Path>) -> Result<(Vec<String>, Vec<String>)> {
    match (file, args.is_empty()) {
        (Some(_), false) => bail!("give texts as arguments or in a file, not both"),
        (Some(f), true) => Ok(data::read_texts(f)?.into_iter().unzip()),
        (None, _) => Ok((args, Vec::new())),
    }
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let sampling = if a.greedy { Sampling::GREEDY } else { Sampling { temperature: Some(a.temperature), top_k: a.top_k, top_p: a.top_p, freq_penalty: a.freq_penalty } };
    let steer = match (&a.steer, a.steer_site, a.steer_layer) {
        (Some(path), Some(kind), Some(layer)) => {
            let (values, shape) = read_f32(path)?;
            Some(SteeringVector { site: Site::new(kind, layer), values, shape, coef: a.coef })
        }
        _ => None,
    };
    let (prompts, origins) = texts_of(a.prompt.into_iter().collect(), a.prompts.as_deref())?;
    let model = a.backend.load(&a.model)?;
    let stop_at = if a.stop_at_eos { model.tokenizer.eos()? } else { Vec::new() };
    let options = Options { max_new_tokens: a.max_new_tokens, sampling, num_sequences: a.num_sequences, seed: a.seed, stop_at, batch: a.batch, steer };
    let spec = GenerateSpec { prompts, origins, prepend_bos: a.prepend_bos, options };
    let seqs = text::generate(&model, &spec, &mut super::Bar::default())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&seqs)?);
        return Ok(());
    }
    for s in &seqs {
        if spec.prompts.len() > 1 || a.num_sequences > 1 {
            println!("--- prompt {}, sequence {} ---", s.prompt + 1, s.sequence + 1);
        }
        println!("{}{}", s.prompt_text, s.text);
    }
    Ok(())
}

pub fn run_perplexity(a: PerplexityArgs) -> Result<()> {
    let c = &a.common;
    let spec = c.spec(a.texts, a.file.as_deref(), a.out.clone())?;
    let model = c.backend.load(&c.model)?;
    let scored = text::perplexity(&model, &spec, a.per_token, &mut super::Bar::default())?.texts;
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
        println!("wrote {} to {}", PERPLEXITY_FILES.join(", "), out.display());
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

pub fn run_candidates(a: CandidatesArgs) -> Result<()> {
    let c = &a.common;
    let spec = c.spec(a.text.into_iter().collect(), a.prompts.as_deref(), a.out.clone())?;
    let model = c.backend.load(&c.model)?;
    let report = text::candidates(&model, &spec, a.top_k, a.all_positions)?;
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
        let n = report.texts.len();
        println!("Jaccard similarity of the last positions' top-{} sets:", a.top_k);
        for r in 0..n.min(20) {
            println!("  {}", j[r * n..(r + 1) * n].iter().take(20).map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" "));
        }
    }
    if let Some(out) = &a.out {
        let written = if report.jaccard.is_some() { &CANDIDATE_FILES[..] } else { &CANDIDATE_FILES[3..] };
        println!("wrote {} to {}", written.join(", "), out.display());
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
    /// Put the BOS in front of both prompts where the tokenizer puts none (GPT-2's `<|endoftext|>`).
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
    backend: BackendOptions,
}

pub fn run_steer_make(a: SteerMakeArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let site = Site::new(a.site, a.layer);
    let spec = SteerSpec { clean: a.clean, corrupted: a.corrupted, site, position: a.position, prepend_bos: a.prepend_bos, out: Some(a.out.clone()), overwrite: a.overwrite };
    let (values, shape) = text::steering_vector(&model, &spec)?;
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
    /// Score every text with the BOS in front (GPT-2's `<|endoftext|>`), so the new first token's probability counts.
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
    backend: BackendOptions,
}

pub fn run_prepend(a: PrependArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let spec = PrependSpec { text: a.text, n_tokens: a.n_tokens, samples: a.samples, seed: a.seed, score_bos: a.prepend_bos };
    let steps = text::prepend(&model, &spec, &mut super::Bar::default())?;
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
