//! Decoding and scoring text on a loaded model: generation (greedy, sampled, steered),
//! perplexity, candidate next tokens, going backwards (prepend) and steering vectors. Each job
//! takes texts, returns a report of token ids and strings, and writes its files (when given
//! `out`) through `results::outputs`.
use super::{counted, Model, Progress};
use crate::analysis::plot::{self, Grid};
use crate::generate::{self, candidates, prepend, steer, Memory, Options};
use crate::data::preview;
use crate::model::Site;
use crate::results::outputs::{CANDIDATE_FILES, PERPLEXITY_FILES};
use crate::results::{npy, outputs};
use anyhow::{bail, ensure, Context, Result};
use super::options::{fold, BosOption, Options as JobOptions, OutOptions};
use crate::generate::sampling::Sampling;
use crate::generate::steer::SteeringVector;
use crate::model::SiteKind;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Texts tokenized and checked against the model, an error naming the text by `origins[i]`
/// (`FILE line 3`; without one, `text 2`) and its start.
/// `need` is the fewest tokens a text may have, and what for.
pub fn tokenize(model: &Model, texts: &[String], origins: &[String], prepend_bos: bool, need: (usize, &str)) -> Result<Vec<Vec<u32>>> {
    if texts.is_empty() {
        bail!("no text: give it as an argument, or a JSONL file");
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = format!("{} ({:?})", origins.get(i).cloned().unwrap_or_else(|| format!("text {}", i + 1)), preview(t));
            let ids = model.tokenizer.encode_with(t, prepend_bos).with_context(|| name.clone())?;
            fits(model, &name, &ids, prepend_bos, 0)?;
            ensure!(ids.len() >= need.0, "{name} has {} token(s): {}", ids.len(), need.1);
            Ok(ids)
        })
        .collect()
}

/// That `ids` (of the text `name`; with `bos`, the BOS in front) fit the model's vocabulary, and
/// its context with `more` tokens still to come.
fn fits(model: &Model, name: &str, ids: &[u32], bos: bool, more: usize) -> Result<()> {
    let c = &model.config;
    let bos_note = if bos { " (the BOS in front included)" } else { "" };
    if ids.len().checked_add(more).is_none_or(|n| n > c.context) {
        let more = if more > 0 { format!(" and {more} to add") } else { String::new() };
        bail!("{name}: {} tokens{bos_note}{more} exceed the model's context of {} positions", ids.len(), c.context);
    }
    if let Some(at) = ids.iter().position(|&id| id as usize >= c.vocab) {
        let which = if bos && at == 0 { "the BOS token added in front" } else { "token" };
        bail!("{name}: {which} {:?} (id {}, position {at}) is outside the model's vocabulary of {}", model.tokenizer.token_str(ids[at]), ids[at], c.vocab);
    }
    Ok(())
}

/// `generate`'s options (`patchbay generate`, Python's `Model.generate`): how to decode; the
/// prompts, and a steering vector's values, come beside them.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// New tokens per sequence [default: 50].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Always the most likely token (no sampling; the penalties and filters do not apply).
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_greedy")]
    pub greedy: Option<bool>,
    #[arg(long, overrides_with = "greedy", hide = true)]
    #[serde(skip)]
    pub no_greedy: bool,
    /// Divides the logits before sampling [default: 1].
    // Floats may start with '-' (`--freq-penalty -0.5`), read as numbers, not flags.
    #[arg(long, allow_hyphen_values = true)]
    pub temperature: Option<f32>,
    /// Sample from the k most likely tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the most likely tokens that together reach this probability.
    #[arg(long, allow_hyphen_values = true)]
    pub top_p: Option<f32>,
    /// Subtracted from a token's logit once for every time it is in the sequence so far [default: 0].
    #[arg(long, allow_hyphen_values = true)]
    pub freq_penalty: Option<f32>,
    /// Sequences per prompt [default: 1].
    #[arg(long)]
    pub num_sequences: Option<usize>,
    /// Seed of the sampling: the same seed gives the same text on every run and backend [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// End a sequence at the model's EOS (config.json's `eos_token_id`s; GPT-2's `<|endoftext|>`).
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_stop_at_eos")]
    pub stop_at_eos: Option<bool>,
    #[arg(long, overrides_with = "stop_at_eos", hide = true)]
    #[serde(skip)]
    pub no_stop_at_eos: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
    /// Sequences decoded together [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    /// The site a steering vector is added to (resid_pre, attn_out, …), at every position of
    /// every step.
    #[arg(long)]
    pub steer_site: Option<String>,
    #[arg(long)]
    pub steer_layer: Option<usize>,
    /// The steering vector's coefficient [default: 1].
    #[arg(long, allow_hyphen_values = true)]
    pub coef: Option<f32>,
}

impl JobOptions for GenerateOptions {
    fn settled(mut self) -> Self {
        fold(&mut self.greedy, &mut self.no_greedy);
        fold(&mut self.stop_at_eos, &mut self.no_stop_at_eos);
        self.bos.settle();
        self
    }
}

impl GenerateOptions {
    /// Decoding `prompts` (each from `origins`, or none) on `model`, every default filled in;
    /// `vector` is a steering vector's values and shape, when one is given.
    pub fn spec(self, model: &Model, prompts: Vec<String>, origins: Vec<String>, vector: Option<(Vec<f32>, Vec<usize>)>) -> Result<GenerateSpec> {
        let greedy = self.greedy.unwrap_or(false);
        let sampled = [self.temperature.is_some(), self.top_k.is_some(), self.top_p.is_some(), self.freq_penalty.is_some()];
        if greedy && sampled.contains(&true) {
            bail!("--greedy takes no --temperature, --top-k, --top-p or --freq-penalty: it samples nothing");
        }
        let sampling = match greedy {
            true => Sampling::GREEDY,
            false => Sampling { temperature: Some(self.temperature.unwrap_or(1.0)), top_k: self.top_k, top_p: self.top_p, freq_penalty: self.freq_penalty.unwrap_or(0.0) },
        };
        let steer = match (vector, &self.steer_site, self.steer_layer) {
            (Some((values, shape)), Some(site), Some(layer)) => Some(SteeringVector { site: Site::new(SiteKind::parse(site)?, layer), values, shape, coef: self.coef.unwrap_or(1.0) }),
            (None, None, None) if self.coef.is_none() => None,
            (Some(_), _, _) => bail!("a steering vector needs --steer-site and --steer-layer"),
            _ => bail!("--steer-site, --steer-layer and --coef are options of a steering vector (--steer)"),
        };
        let stop_at = if self.stop_at_eos.unwrap_or(false) { model.tokenizer.eos()? } else { Vec::new() };
        let options = Options {
            max_new_tokens: self.max_new_tokens.unwrap_or(50),
            sampling,
            num_sequences: self.num_sequences.unwrap_or(1),
            seed: self.seed.unwrap_or(0),
            stop_at,
            batch: self.batch.unwrap_or(64),
            steer,
        };
        Ok(GenerateSpec { prompts, origins, prepend_bos: self.bos.prepend_bos(), options })
    }
}

#[derive(Debug)]
pub struct GenerateSpec {
    pub prompts: Vec<String>,
    /// Where each prompt came from, for errors (`FILE line 3`); empty: `text N`.
    pub origins: Vec<String>,
    pub prepend_bos: bool,
    pub options: Options,
}

/// One generated continuation: of prompt `prompt` (from 0), its `sequence`-th.
#[derive(Clone, Debug, Serialize)]
pub struct Sequence {
    pub prompt: usize,
    pub sequence: usize,
    pub prompt_text: String,
    /// The new tokens only.
    pub tokens: Vec<u32>,
    pub text: String,
}

/// Each prompt's `num_sequences` continuations, prompt-major.
pub fn generate(model: &Model, spec: &GenerateSpec, progress: &mut dyn Progress) -> Result<Vec<Sequence>> {
    let o = &spec.options;
    if let Some(t) = o.sampling.temperature.filter(|t| !(*t > 0.0)) {
        bail!("--temperature must be above 0, not {t} (for the most likely token every step, pass --greedy)");
    }
    if let Some(p) = o.sampling.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        bail!("--top-p must be in (0, 1], not {p}");
    }
    if o.num_sequences == 0 {
        bail!("--num-sequences must be at least 1");
    }
    if o.sampling.top_k == Some(0) {
        bail!("--top-k must be at least 1 (for the most likely token every step, pass --greedy)");
    }
    if !o.sampling.freq_penalty.is_finite() {
        bail!("--freq-penalty must be a finite number, not {}", o.sampling.freq_penalty);
    }
    if let Some(v) = &o.steer {
        if let Some(i) = v.values.iter().position(|x| !x.is_finite()) {
            bail!("the steering vector holds {} at flat index {i}: it must be finite", v.values[i]);
        }
        if !v.coef.is_finite() {
            bail!("--coef must be a finite number, not {}", v.coef);
        }
    }
    let context = model.config.context;
    crate::limits::at_most("--max-new-tokens", o.max_new_tokens, context, "the model's context")?;
    let sequences = crate::limits::product("--num-sequences × prompts", &[spec.prompts.len(), o.num_sequences])?;
    crate::limits::fits_memory("--num-sequences × prompts", sequences, 4 * (o.max_new_tokens + 1) + 256)?;
    let prompts = tokenize(model, &spec.prompts, &spec.origins, spec.prepend_bos, (1, "generation needs at least 1"))?;
    progress.start((sequences * o.max_new_tokens) as u64, "tokens");
    let out = on_model!(model, |on| -> Vec<Vec<u32>> { counted(progress, |advance| generate::generate(on.model, prompts, o, advance)) },
        prompts: &'a [Vec<u32>] = &prompts, o: &'a Options = o, progress: &'a mut dyn Progress = progress)?;
    let n = o.num_sequences;
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(s, tokens)| Sequence { prompt: s / n, sequence: s % n, prompt_text: spec.prompts[s / n].clone(), text: model.tokenizer.decode(&tokens), tokens })
        .collect())
}

/// What one forward pass of a text command may take on the model's backend (as a sweep's).
fn memory(model: &Model) -> Memory {
    let (budget, buffer) = super::memory::memory_limits(&model.backend);
    Memory { budget, buffer }
}

/// What `perplexity` and `candidates` share: the BOS, how texts are batched, the output.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextOptions {
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
    /// Texts per forward pass [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutOptions,
}

impl TextOptions {
    /// The spec of `texts` (each from `origins`, or none), every default filled in.
    pub fn spec(self, texts: Vec<String>, origins: Vec<String>) -> TextsSpec {
        TextsSpec { texts, origins, prepend_bos: self.bos.prepend_bos(), batch: self.batch.unwrap_or(64), overwrite: self.output.overwrite(), out: self.output.out }
    }
}

/// `perplexity`'s options (`patchbay perplexity`, Python's `Model.perplexity`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PerplexityOptions {
    /// Also each token's perplexity, exp of its loss.
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_per_token")]
    pub per_token: Option<bool>,
    #[arg(long, overrides_with = "per_token", hide = true)]
    #[serde(skip)]
    pub no_per_token: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub texts: TextOptions,
}

impl JobOptions for PerplexityOptions {
    fn settled(mut self) -> Self {
        fold(&mut self.per_token, &mut self.no_per_token);
        self.texts.bos.settle();
        self.texts.output.settle();
        self
    }
}

/// `candidates`' options (`patchbay candidates`, Python's `Model.candidates`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CandidatesOptions {
    /// Candidates per position [default: 5].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Every position's candidates, not only the last one's.
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_all_positions")]
    pub all_positions: Option<bool>,
    #[arg(long, overrides_with = "all_positions", hide = true)]
    #[serde(skip)]
    pub no_all_positions: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub texts: TextOptions,
}

impl JobOptions for CandidatesOptions {
    fn settled(mut self) -> Self {
        fold(&mut self.all_positions, &mut self.no_all_positions);
        self.texts.bos.settle();
        self.texts.output.settle();
        self
    }
}

impl CandidatesOptions {
    /// (top k, every position or the last) with the defaults filled in.
    pub fn choice(&self) -> (usize, bool) {
        (self.top_k.unwrap_or(5), self.all_positions.unwrap_or(false))
    }
}

/// What `perplexity` and `candidates` take: the texts, how they are batched, the output.
pub struct TextsSpec {
    pub texts: Vec<String>,
    /// Where each text came from, for errors (`FILE line 3`); empty: `text N`.
    pub origins: Vec<String>,
    pub prepend_bos: bool,
    /// Texts a forward pass.
    pub batch: usize,
    pub out: Option<PathBuf>,
    pub overwrite: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    pub text: String,
    pub tokens: Vec<u32>,
    pub perplexity: f32,
    /// Token t+1's perplexity given tokens ..=t, with its text (when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_token: Option<Vec<(String, f32)>>,
}

pub struct Perplexities {
    pub texts: Vec<Scored>,
    /// Each text's token perplexities, [texts, width = longest − 1], NaN past a text's end.
    pub token_perplexity: Vec<f32>,
    pub width: usize,
}

/// Each text's perplexity, and its tokens' (`per_token` puts them in the report too).
pub fn perplexity(model: &Model, spec: &TextsSpec, per_token: bool, progress: &mut dyn Progress) -> Result<Perplexities> {
    let ids = tokenize(model, &spec.texts, &spec.origins, spec.prepend_bos, (2, "perplexity needs at least 2 (a token to predict)"))?;
    let _lock = spec.out.as_deref().map(|out| outputs::prepare_dir(out, &PERPLEXITY_FILES, spec.overwrite)).transpose()?;
    progress.start(ids.len() as u64, "texts");
    let losses = on_model!(model, |on| -> Vec<Vec<f32>> { counted(progress, |advance| generate::token_losses(on.model, ids, batch, memory, advance)) },
        ids: &'a [Vec<u32>] = &ids, batch: usize = spec.batch, memory: Memory = memory(model), progress: &'a mut dyn Progress = progress)?;
    for (i, l) in losses.iter().enumerate() {
        crate::limits::ensure_finite(&format!("the loss of text {}", i + 1), l, |_| false)?;
    }
    let tok = &model.tokenizer;
    let texts: Vec<Scored> = spec
        .texts
        .iter()
        .zip(ids)
        .zip(&losses)
        .map(|((text, tokens), l)| Scored {
            text: text.clone(),
            perplexity: generate::perplexity(l),
            per_token: per_token.then(|| tokens[1..].iter().zip(l).map(|(&t, &x)| (tok.token_str(t), x.exp())).collect()),
            tokens,
        })
        .collect();
    let width = texts.iter().map(|s| s.tokens.len() - 1).max().unwrap_or(0);
    let token_perplexity: Vec<f32> = losses.iter().flat_map(|l| l.iter().map(|x| x.exp()).chain(std::iter::repeat(f32::NAN)).take(width)).collect();
    let p = Perplexities { texts, token_perplexity, width };
    if let Some(out) = &spec.out {
        let n = p.texts.len();
        let files = vec![
            (PERPLEXITY_FILES[0].to_string(), npy::encode(&[n], &p.texts.iter().map(|s| s.perplexity).collect::<Vec<_>>())),
            (PERPLEXITY_FILES[1].to_string(), npy::encode(&[n, width], &p.token_perplexity)),
        ];
        outputs::write_dir(out, (PERPLEXITY_FILES[2], serde_json::to_vec_pretty(&p.texts)?), files, &PERPLEXITY_FILES[..2], spec.overwrite)?;
    }
    Ok(p)
}


#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub rank: usize,
    pub id: u32,
    pub token: String,
    pub prob: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Position {
    /// The candidates follow the token at this position.
    pub position: usize,
    pub token: String,
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TextCandidates {
    pub text: String,
    pub positions: Vec<Position>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CandidatesReport {
    pub texts: Vec<TextCandidates>,
    /// Row-major [texts, texts]: the Jaccard similarity of the last positions' top-k sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jaccard: Option<Vec<f32>>,
}

/// The `top_k` next tokens at each text's last position (every position with `all_positions`),
/// and for several texts the pairwise Jaccard similarity of their last positions' pools.
pub fn candidates(model: &Model, spec: &TextsSpec, top_k: usize, all_positions: bool) -> Result<CandidatesReport> {
    crate::limits::at_most("--top-k", top_k, model.config.vocab, "the model's vocabulary size")?;
    let ids = tokenize(model, &spec.texts, &spec.origins, spec.prepend_bos, (1, "candidates need at least 1"))?;
    let _lock = spec.out.as_deref().map(|out| outputs::prepare_dir(out, &CANDIDATE_FILES, spec.overwrite)).transpose()?;
    let found = on_model!(model, |on| -> Vec<Vec<Vec<(u32, f32)>>> { candidates::top_k(on.model, ids, top_k, all_positions, batch, memory) },
        ids: &'a [Vec<u32>] = &ids, top_k: usize = top_k, all_positions: bool = all_positions, batch: usize = spec.batch, memory: Memory = memory(model))?;
    let probs: Vec<f32> = found.iter().flatten().flatten().map(|c| c.1).collect();
    crate::limits::ensure_finite("the candidates' probabilities", &probs, |_| false)?;
    let tok = &model.tokenizer;
    let texts = spec
        .texts
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
            TextCandidates { text: text.clone(), positions }
        })
        .collect();
    let last_pools = || found.iter().map(|p| p.last().map(|c| c.iter().map(|c| c.0).collect()).unwrap_or_default()).collect::<Vec<_>>();
    let report = CandidatesReport { texts, jaccard: (spec.texts.len() > 1).then(|| candidates::jaccard(&last_pools())) };
    if let Some(out) = &spec.out {
        let mut files = Vec::new();
        if let Some(j) = &report.jaccard {
            let n = spec.texts.len();
            let labels: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            let grid = Grid {
                title: format!("Jaccard similarity of the prompts' top-{top_k} next tokens"),
                row_title: "prompt".into(),
                col_title: "prompt".into(),
                rows: labels.clone(),
                cols: labels,
                values: j.clone(),
            };
            files.push((CANDIDATE_FILES[0].to_string(), npy::encode(&[n, n], j)));
            files.push((CANDIDATE_FILES[1].to_string(), plot::png(&grid)?));
            files.push((CANDIDATE_FILES[2].to_string(), plot::svg(&grid).into_bytes()));
        }
        outputs::write_dir(out, (CANDIDATE_FILES[3], serde_json::to_vec_pretty(&report)?), files, &CANDIDATE_FILES[..3], spec.overwrite)?;
    }
    Ok(report)
}

/// A steering vector: the clean prompt's activation at `site` and `position` (negative: from
/// the end) minus the corrupted one's.
/// `steer make`'s options (`patchbay steer make`, Python's `Model.steer`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SteerOptions {
    /// The prompt whose activation the vector points towards.
    #[arg(long, required = true)]
    pub clean: Option<String>,
    /// The prompt it points away from.
    #[arg(long, required = true)]
    pub corrupted: Option<String>,
    /// resid_pre, resid_mid, resid_post, attn_out, mlp_out ([d_model]) or q, k, v, z ([heads, d_head]).
    #[arg(long, required = true)]
    pub site: Option<String>,
    #[arg(long, required = true)]
    pub layer: Option<usize>,
    /// The position to take; negative counts from each prompt's end [default: -1].
    #[arg(long, allow_negative_numbers = true)]
    pub position: Option<i64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutOptions,
}

impl JobOptions for SteerOptions {
    fn settled(mut self) -> Self {
        self.bos.settle();
        self.output.settle();
        self
    }
}

impl SteerOptions {
    /// The steering vector these options ask for, every default filled in.
    pub fn spec(self) -> Result<SteerSpec> {
        let given = |v: Option<String>, what: &str| v.with_context(|| format!("give --{what}"));
        let (clean, corrupted, site) = (given(self.clean, "clean")?, given(self.corrupted, "corrupted")?, given(self.site, "site")?);
        let layer = self.layer.context("give --layer")?;
        Ok(SteerSpec {
            clean,
            corrupted,
            site: Site::new(SiteKind::parse(&site)?, layer),
            position: self.position.unwrap_or(-1),
            prepend_bos: self.bos.prepend_bos(),
            overwrite: self.output.overwrite(),
            out: self.output.out,
        })
    }
}

#[derive(Debug)]
pub struct SteerSpec {
    pub clean: String,
    pub corrupted: String,
    pub site: Site,
    pub position: i64,
    pub prepend_bos: bool,
    /// The .npy file it is written to.
    pub out: Option<PathBuf>,
    pub overwrite: bool,
}

/// The vector's values and shape ([d_model], or [heads, d_head] for q, k, v, z).
pub fn steering_vector(model: &Model, spec: &SteerSpec) -> Result<(Vec<f32>, Vec<usize>)> {
    if let Some(out) = &spec.out {
        outputs::prepare_file(out, spec.overwrite)?;
    }
    let [clean, corrupted] = [("--clean", &spec.clean), ("--corrupted", &spec.corrupted)]
        .map(|(flag, text)| tokenize(model, std::slice::from_ref(text), &[flag.into()], spec.prepend_bos, (1, "a steering vector needs at least 1")).map(|mut t| t.remove(0)));
    let (clean, corrupted) = (clean?, corrupted?);
    let (values, shape) = on_model!(model, |on| -> (Vec<f32>, Vec<usize>) { steer::make(on.model, clean, corrupted, site, position) },
        clean: &'a [u32] = &clean, corrupted: &'a [u32] = &corrupted, site: Site = spec.site, position: i64 = spec.position)?;
    crate::limits::ensure_finite("the steering vector", &values, |_| false)?;
    if let Some(out) = &spec.out {
        outputs::write_file(out, &npy::encode(&shape, &values), spec.overwrite)?;
    }
    Ok((values, shape))
}

/// Going backwards: `n_tokens` tokens put in front of `text`, one a step, each the least
/// perplexing of `samples` drawn candidates.
/// `prepend`'s options (`patchbay prepend`, Python's `Model.prepend`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrependOptions {
    /// Tokens to put in front, one a step [default: 3].
    #[arg(long)]
    pub n_tokens: Option<usize>,
    /// Candidate first tokens drawn each step (repeats are scored once) [default: 10].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Seed of the candidates' draws [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    // --prepend-bos: every text is scored with the BOS in front, so the new first token's
    // probability counts.
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
}

impl JobOptions for PrependOptions {
    fn settled(mut self) -> Self {
        self.bos.settle();
        self
    }
}

impl PrependOptions {
    /// Going backwards from `text`, every default filled in.
    pub fn spec(self, text: String) -> PrependSpec {
        PrependSpec { text, n_tokens: self.n_tokens.unwrap_or(3), samples: self.samples.unwrap_or(10), seed: self.seed.unwrap_or(0), score_bos: self.bos.prepend_bos() }
    }
}

pub struct PrependSpec {
    pub text: String,
    pub n_tokens: usize,
    pub samples: usize,
    pub seed: u64,
    /// Score every text with `<|endoftext|>` in front.
    pub score_bos: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrependStep {
    pub step: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub perplexity: f32,
    /// Each candidate first token's (id, token, perplexity of its text).
    pub candidates: Vec<(u32, String, f32)>,
}

pub fn prepend(model: &Model, spec: &PrependSpec, progress: &mut dyn Progress) -> Result<Vec<PrependStep>> {
    let tok = &model.tokenizer;
    // Each candidate is a draw from the whole vocabulary and a forward pass: more candidates than
    // tokens draw nothing new.
    crate::limits::at_most("--samples", spec.samples, model.config.vocab, "the model's vocabulary size")?;
    crate::limits::at_most("--n-tokens", spec.n_tokens, model.config.context, "the model's context")?;
    let text = tok.encode(&spec.text)?;
    let bos = tok.bos()?;
    let name = format!("the text ({:?})", preview(&spec.text));
    fits(model, &name, &[spec.score_bos.then_some(bos).as_slice(), &text].concat(), spec.score_bos, spec.n_tokens)?;
    progress.start(spec.n_tokens as u64, "steps");
    let steps = on_model!(model, |on| -> Vec<prepend::Step> {
        counted(progress, |advance| prepend::prepend(on.model, text, bos, s.n_tokens, s.samples, s.seed, s.score_bos, memory, advance))
    }, text: &'a [u32] = &text, bos: u32 = bos, memory: Memory = memory(model), s: &'a PrependSpec = spec, progress: &'a mut dyn Progress = progress)?;
    for (i, step) in steps.iter().enumerate() {
        let scores: Vec<f32> = step.candidates.iter().map(|c| c.1).chain([step.perplexity]).collect();
        crate::limits::ensure_finite(&format!("step {}'s perplexities", i + 1), &scores, |_| false)?;
    }
    Ok(steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| PrependStep {
            step: i + 1,
            text: tok.decode(&s.tokens),
            perplexity: s.perplexity,
            candidates: s.candidates.iter().map(|&(id, p)| (id, tok.token_str(id), p)).collect(),
            tokens: s.tokens,
        })
        .collect())
}

