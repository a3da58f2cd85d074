//! `patchbay generate`, `patchbay perplexity` and `patchbay candidates`: decoding and scoring
//! text, batched.
use crate::data;
use crate::generate::candidates::py_repr;
use crate::jobs::options::{BackendOptions, Options, DEFAULT_MODEL};
use crate::jobs::text::{self, CandidatesOptions, GenerateOptions, PerplexityOptions, PrependOptions, SteerOptions};
use crate::results::outputs::{CANDIDATE_FILES, PERPLEXITY_FILES};
use crate::results::read_f32;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt (or give --prompts).
    prompt: Option<String>,
    /// Hub id or model directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// A JSONL file of prompts, one {"prompt": "..."} (or {"text": ...}) a line: decoded batched.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// A steering vector (.npy, from `patchbay steer make`): coef × it is added to --steer-site
    /// of --steer-layer at every position of every step.
    #[arg(long)]
    steer: Option<PathBuf>,
    #[command(flatten)]
    options: GenerateOptions,
    #[command(flatten)]
    json: super::JsonFlag,
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
    #[command(flatten)]
    options: PerplexityOptions,
    #[command(flatten)]
    common: TextArgs,
}

/// What `perplexity` and `candidates` share on the command line: the model, JSON, the backend.
#[derive(Args)]
struct TextArgs {
    /// Hub id or model directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    json: super::JsonFlag,
    #[command(flatten)]
    backend: BackendOptions,
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
    let vector = a.steer.as_deref().map(read_f32).transpose()?;
    let (prompts, origins) = texts_of(a.prompt.into_iter().collect(), a.prompts.as_deref())?;
    let model = a.backend.load(&a.model)?;
    let spec = a.options.settled().spec(&model, prompts, origins, vector)?;
    let seqs = text::generate(&model, &spec, &mut super::Bar::default())?;
    if a.json.json {
        println!("{}", serde_json::to_string_pretty(&seqs)?);
        return Ok(());
    }
    for s in &seqs {
        if spec.prompts.len() > 1 || spec.options.num_sequences > 1 {
            println!("--- prompt {}, sequence {} ---", s.prompt + 1, s.sequence + 1);
        }
        println!("{}{}", s.prompt_text, s.text);
    }
    Ok(())
}

pub fn run_perplexity(a: PerplexityArgs) -> Result<()> {
    let c = &a.common;
    let (texts, origins) = texts_of(a.texts, a.file.as_deref())?;
    let options = a.options.settled();
    let per_token = options.per_token.unwrap_or(false);
    let spec = options.texts.spec(texts, origins);
    let model = c.backend.load(&c.model)?;
    let scored = text::perplexity(&model, &spec, per_token, &mut super::Bar::default())?.texts;
    if c.json.json {
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
    if let Some(out) = &spec.out {
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
    #[command(flatten)]
    options: CandidatesOptions,
    #[command(flatten)]
    common: TextArgs,
}

pub fn run_candidates(a: CandidatesArgs) -> Result<()> {
    let c = &a.common;
    let (texts, origins) = texts_of(a.text.into_iter().collect(), a.prompts.as_deref())?;
    let options = a.options.settled();
    let (top_k, all_positions) = options.choice();
    let spec = options.texts.spec(texts, origins);
    let model = c.backend.load(&c.model)?;
    let report = text::candidates(&model, &spec, top_k, all_positions)?;
    if c.json.json {
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
        println!("Jaccard similarity of the last positions' top-{top_k} sets:");
        for r in 0..n.min(20) {
            println!("  {}", j[r * n..(r + 1) * n].iter().take(20).map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" "));
        }
    }
    if let Some(out) = &spec.out {
        let written = if report.jaccard.is_some() { &CANDIDATE_FILES[..] } else { &CANDIDATE_FILES[3..] };
        println!("wrote {} to {}", written.join(", "), out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct SteerMakeArgs {
    /// Hub id or model directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    options: SteerOptions,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run_steer_make(a: SteerMakeArgs) -> Result<()> {
    let spec = a.options.settled().spec()?;
    let Some(out) = spec.out.clone() else { bail!("give --out FILE.npy: where the vector goes") };
    let model = a.backend.load(&a.model)?;
    let (values, shape) = text::steering_vector(&model, &spec)?;
    let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
    println!("wrote the {} steering vector {shape:?} (norm {norm:.4}) to {}", spec.site.kind.hook_name(spec.site.layer), out.display());
    Ok(())
}

#[derive(Args)]
pub struct PrependArgs {
    /// The text to go backwards from.
    text: String,
    /// Hub id or model directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    options: PrependOptions,
    #[command(flatten)]
    json: super::JsonFlag,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run_prepend(a: PrependArgs) -> Result<()> {
    let model = a.backend.load(&a.model)?;
    let spec = a.options.settled().spec(a.text);
    let steps = text::prepend(&model, &spec, &mut super::Bar::default())?;
    if a.json.json {
        println!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(());
    }
    println!("{:>4}  {:>12}  text", "step", "perplexity");
    for s in &steps {
        println!("{:>4}  {:>12.4}  {:?}", s.step, s.perplexity, s.text);
    }
    Ok(())
}
