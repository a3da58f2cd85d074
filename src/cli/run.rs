//! `patchbay run`: pairs from the command line, a TOML config or a pairs file, through the sweep.
use super::BackendArgs;
use crate::backend::{dispatch, BackendSpec, BackendTask};
use crate::data::{self, Checks, Columns, Pair, Skipped, TokenizedPair};
use crate::engine::{Method, Metric, PatchSite};
use crate::model::weights::{load_model, ModelFiles};
use crate::model::Gpt2Config;
use crate::sweep::{sweep, Shard, SweepModel, SweepSpec, SweepSummary};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use burn::prelude::Backend;
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_SITES: &str = "resid_pre,attn_out,mlp_out";
/// Patched runs `run` rechecks after it finishes (`--verify`).
const DEFAULT_VERIFY_ROWS: usize = 8;

/// Every option can also be given in a TOML config (same names, underscores for dashes); flags on
/// the command line override it.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunArgs {
    /// TOML config file.
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Hub id or model directory [default: gpt2].
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    clean: Option<String>,
    #[arg(long)]
    corrupted: Option<String>,
    /// Answer token (e.g. " Jones"), read by the metric. Without answer and distractor, the last
    /// differing token of clean and corrupted is predicted.
    #[arg(long)]
    answer: Option<String>,
    #[arg(long)]
    distractor: Option<String>,
    /// Pairs file: .jsonl, .csv or .parquet with columns clean, corrupted[, answer, distractor][, positions].
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Column names in the pairs file, e.g. `clean=prompt,corrupted=corrupted_prompt`.
    #[arg(long, value_parser = parse_columns)]
    columns: Option<Columns>,
    /// Put `<|endoftext|>` in front of every prompt, as TransformerLens does by default (ARENA's IOI
    /// numbers are computed so); named positions in the pairs file count without it.
    #[arg(long)]
    prepend_bos: bool,
    /// Skip pairs whose clean and corrupted differ at more than N positions.
    #[arg(long)]
    max_diff: Option<usize>,
    /// Fail on the first bad pair instead of skipping and listing it.
    #[arg(long)]
    strict: bool,
    /// Run shard K of N (0-based) into OUT/shard-K-of-N [default: from SLURM_ARRAY_TASK_ID and
    /// SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with --shards].
    #[arg(long)]
    shard: Option<String>,
    /// Number of shards, with a Kubernetes Indexed Job's JOB_COMPLETION_INDEX.
    #[arg(long)]
    shards: Option<usize>,
    /// Comma-separated sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out; per head
    /// {z,q,k,v,pattern}_all_pos, {z,q,k,v,pattern}_by_pos, pattern_dest_src; or TransformerLens'
    /// groups block, heads_all_pos, heads_by_pos [default: resid_pre,attn_out,mlp_out].
    #[arg(long)]
    sites: Option<String>,
    /// What each run records at the last position: logit_diff (logit(answer) − logit(distractor)),
    /// logprob (log p(answer)), prob (p(answer)), logprob_diff (log p(answer) − log p(distractor))
    /// [default: logit_diff].
    #[arg(long, value_enum)]
    metric: Option<Metric>,
    /// exact: every patched run computed; attribution: each one's linear estimate (clean −
    /// corrupted activation) · gradient of the metric on the corrupted run, for every site from
    /// two forward passes and one backward pass per group of pairs; same arrays [default: exact].
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Results directory [default: results/<config name>, or results/run].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Patched runs per forward pass; with --method attribution, pairs per forward and backward
    /// pass [default: from the device's memory].
    #[arg(long)]
    max_rows: Option<usize>,
    /// Compute every patched run in full (for comparison; results agree within 1e-4).
    #[arg(long)]
    no_reuse: bool,
    /// Compute the patched runs that provably equal the corrupted run too (patched before the
    /// first differing token, or at equal embeddings), instead of writing the corrupted baseline.
    #[arg(long)]
    no_skip: bool,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    resume: bool,
    /// Replace the run in --out (with --resume: only another run than this one).
    #[arg(long)]
    overwrite: bool,
    /// After the run, recompute N of its patched runs, chosen at random, on the simplest path (one
    /// per forward pass, no reuse, no fusion) and fail, naming them, if any differs [default: 8;
    /// 0: off].
    #[arg(long)]
    verify: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    backend: BackendArgs,
}

impl RunArgs {
    /// The config file's options under the command line's.
    fn merged(self) -> Result<Self> {
        let Some(path) = &self.config else { return Ok(self) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: RunArgs = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        let default_out = PathBuf::from("results").join(path.file_stem().unwrap_or_default());
        Ok(Self {
            model: self.model.or(file.model),
            clean: self.clean.or(file.clean),
            corrupted: self.corrupted.or(file.corrupted),
            answer: self.answer.or(file.answer),
            distractor: self.distractor.or(file.distractor),
            pairs: self.pairs.or(file.pairs),
            columns: self.columns.or(file.columns),
            prepend_bos: self.prepend_bos || file.prepend_bos,
            max_diff: self.max_diff.or(file.max_diff),
            strict: self.strict || file.strict,
            shard: self.shard.or(file.shard),
            shards: self.shards.or(file.shards),
            sites: self.sites.or(file.sites),
            metric: self.metric.or(file.metric),
            method: self.method.or(file.method),
            out: self.out.or(file.out).or(Some(default_out)),
            max_rows: self.max_rows.or(file.max_rows),
            no_reuse: self.no_reuse || file.no_reuse,
            no_skip: self.no_skip || file.no_skip,
            resume: self.resume || file.resume,
            overwrite: self.overwrite || file.overwrite,
            verify: self.verify.or(file.verify),
            backend: self.backend.or(file.backend),
            config: self.config,
        })
    }

    /// The pairs to run, checked against the model's context and vocabulary.
    fn pairs(&self, tok: &Tokenizer, model: &Gpt2Config) -> Result<(Vec<TokenizedPair>, Vec<Skipped>)> {
        let checks =
            Checks { max_diff: self.max_diff, context: Some(model.n_positions), vocab: Some(model.vocab_size), prepend_bos: self.prepend_bos };
        let inline = self.clean.is_some() || self.corrupted.is_some() || self.answer.is_some() || self.distractor.is_some();
        let (pairs, skipped) = match (&self.pairs, inline) {
            (Some(_), true) => bail!("give either --pairs FILE or --clean/--corrupted[/--answer/--distractor], not both"),
            (Some(file), false) => return pairs_file(file, &self.columns.clone().unwrap_or_default(), tok, checks, self.strict),
            (None, _) => {
                let (Some(clean), Some(corrupted)) = (&self.clean, &self.corrupted) else {
                    bail!("no pairs: give --pairs FILE, or --clean and --corrupted (with --answer and --distractor)")
                };
                if self.answer.is_some() != self.distractor.is_some() {
                    bail!("give both --answer and --distractor, or neither (then the last token where clean and corrupted differ is predicted)");
                }
                let pair = Pair {
                    row: 1,
                    clean: clean.clone(),
                    corrupted: corrupted.clone(),
                    answer: self.answer.clone(),
                    distractor: self.distractor.clone(),
                    ..Default::default()
                };
                data::tokenize(&[pair], tok, None, checks, true)?
            }
        };
        checked(pairs, skipped, "row")
    }
}

/// The pairs of a pairs file that pass `checks` (the others listed on stderr, or with `strict` an
/// error naming the first).
pub(super) fn pairs_file(file: &Path, columns: &Columns, tok: &Tokenizer, checks: Checks, strict: bool) -> Result<(Vec<TokenizedPair>, Vec<Skipped>)> {
    let pairs = data::read_pairs(file, columns)?;
    let (pairs, skipped) = data::tokenize(&pairs, tok, Some(file), checks, strict)?;
    checked(pairs, skipped, data::row_unit(file))
}

fn checked(pairs: Vec<TokenizedPair>, skipped: Vec<Skipped>, unit: &str) -> Result<(Vec<TokenizedPair>, Vec<Skipped>)> {
    for s in &skipped {
        eprintln!("skipped {unit} {}: {}", s.row, s.reason);
    }
    if pairs.is_empty() {
        bail!("no pair passed the checks ({} skipped)", skipped.len());
    }
    Ok((pairs, skipped))
}

fn parse_columns(s: &str) -> Result<Columns> {
    let mut c = Columns::default();
    for kv in s.split(',').filter(|kv| !kv.trim().is_empty()) {
        let (k, v) = kv.split_once('=').with_context(|| format!("--columns: {kv:?} is not NAME=COLUMN"))?;
        let slot = match k.trim() {
            "clean" => &mut c.clean,
            "corrupted" => &mut c.corrupted,
            "answer" => &mut c.answer,
            "distractor" => &mut c.distractor,
            "positions" => &mut c.positions,
            other => bail!("--columns: unknown field {other:?} (clean, corrupted, answer, distractor, positions)"),
        };
        *slot = v.trim().to_string();
    }
    Ok(c)
}

struct RunTask {
    method: Method,
    files: ModelFiles,
    tokenizer: Tokenizer,
    pairs: Vec<TokenizedPair>,
    skipped: Vec<Skipped>,
    spec: SweepSpec,
    backend: BackendSpec,
}

impl BackendTask for RunTask {
    type Output = SweepSummary;
    fn run<B: Backend>(self, device: B::Device) -> Result<SweepSummary> {
        let (id, tok, spec) = (&self.files.id, &self.tokenizer, &self.spec);
        match self.method {
            Method::Exact => {
                let model = load_model::<B>(&self.files, &device)?;
                sweep(SweepModel::Exact(&model), id, tok, &self.pairs, &self.skipped, spec, &self.backend)
            }
            Method::Attribution => {
                let model = load_model::<burn::backend::Autodiff<B>>(&self.files, &device)?;
                sweep(SweepModel::Attribution(&model), id, tok, &self.pairs, &self.skipped, spec, &self.backend)
            }
        }
    }
}

/// `patchbay path`: `run` with path sites, each sender's edges to the chosen receivers.
#[derive(Args, Debug)]
pub struct PathArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Comma-separated receivers: q, k, v (every later head's query, key or value input), or
    /// resid_final (the final residual stream: the sender's direct effect on the logits).
    #[arg(long)]
    receivers: String,
    /// Sending heads as layer.head, e.g. `9.6,9.9,10.0` [default: all].
    #[arg(long)]
    senders: Option<String>,
}

pub fn path(a: PathArgs) -> Result<()> {
    if a.run.sites.is_some() {
        bail!("path takes --receivers (q, k, v, resid_final), not --sites");
    }
    let mut sites = Vec::new();
    for r in a.receivers.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        match r {
            "q" | "k" | "v" | "resid_final" => sites.push(format!("path_{r}")),
            other => bail!("--receivers: unknown receiver {other:?} (q, k, v, resid_final)"),
        }
    }
    if sites.is_empty() {
        bail!("--receivers names no receiver (q, k, v, resid_final)");
    }
    let senders = a.senders.as_deref().map(parse_senders).transpose()?;
    run_with(RunArgs { sites: Some(sites.join(",")), ..a.run }, senders)
}

/// `9.6,10.0` → [[9, 6], [10, 0]].
fn parse_senders(list: &str) -> Result<Vec<[usize; 2]>> {
    let mut out = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = s.split_once('.').and_then(|(l, h)| Some([l.trim().parse().ok()?, h.trim().parse().ok()?]));
        let Some(head) = parsed else { bail!("--senders: {s:?} is not layer.head, e.g. 9.9") };
        if !out.contains(&head) {
            out.push(head);
        }
    }
    if out.is_empty() {
        bail!("--senders names no head");
    }
    Ok(out)
}

pub fn run(args: RunArgs) -> Result<()> {
    run_with(args, None)
}

fn run_with(args: RunArgs, senders: Option<Vec<[usize; 2]>>) -> Result<()> {
    let args = args.merged()?;
    let sites = PatchSite::parse_list(args.sites.as_deref().unwrap_or(DEFAULT_SITES))?;
    if args.max_rows == Some(0) {
        bail!("--max-rows must be at least 1");
    }
    let method = args.method.unwrap_or_default();
    if method == Method::Attribution {
        if let Some(s) = sites.iter().find(|s| s.is_path()) {
            bail!("--method attribution estimates overwrites of one activation, not paths ({}): use --method exact", s.name());
        }
        if args.no_reuse {
            bail!("--no-reuse is an option of --method exact (attribution runs no patched forward passes)");
        }
    }
    let shard = match (&args.shard, args.shards) {
        (Some(_), Some(_)) => bail!("give --shard K/N or --shards N (with JOB_COMPLETION_INDEX), not both"),
        (Some(s), None) => Some(Shard::parse(s)?),
        (None, n) => Shard::from_env(n)?,
    };
    let files = ModelFiles::locate(args.model.as_deref().unwrap_or("gpt2"))?;
    let config = Gpt2Config::from_json_file(&files.config)?;
    let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
    let (pairs, skipped) = args.pairs(&tokenizer, &config)?;
    let mut out = args.out.clone().unwrap_or_else(|| PathBuf::from("results/run"));
    if let Some(s) = shard {
        out = out.join(s.dir_name());
        eprintln!("shard {}/{} of {} pairs into {}", s.index, s.count, pairs.len(), out.display());
    }
    if let Some([l, h]) = senders.iter().flatten().find(|[l, h]| *l >= config.n_layer || *h >= config.n_head) {
        bail!("--senders: head {l}.{h} does not exist (the model has {} layers of {} heads)", config.n_layer, config.n_head);
    }
    let spec = SweepSpec {
        sites,
        senders,
        reuse: !args.no_reuse,
        skip: !args.no_skip,
        metric: args.metric.unwrap_or_default(),
        prepend_bos: args.prepend_bos,
        max_rows: args.max_rows,
        out: out.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        shard,
    };
    let backend = args.backend.configure()?;
    let s = dispatch(&backend, RunTask { method, files, tokenizer, pairs, skipped, spec, backend: backend.clone() })?;
    let rows = args.verify.unwrap_or(DEFAULT_VERIFY_ROWS);
    if rows > 0 {
        let v = crate::verify::verify(&out, rows, None)?;
        eprintln!(
            "verified {} patched runs on the simplest path ({:?}): max |difference| {:.1e} (tolerance {:.0e})",
            v.rows, v.backend.kind, v.max_abs_diff, v.tolerance
        );
    }
    let what = match method {
        Method::Exact => "patched runs computed",
        Method::Attribution => "patched runs estimated by attribution",
    };
    println!(
        "wrote {}: {} pair(s), {} {what} in {:.2} s ({:.0} runs/s) on {:?}, {} skipped as no-ops; next: patchbay analyze {}",
        out.display(),
        s.pairs,
        s.runs.computed,
        s.seconds,
        s.runs.computed as f64 / s.seconds.max(1e-9),
        backend.kind,
        s.runs.skipped,
        out.display()
    );
    Ok(())
}
