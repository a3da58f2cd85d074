//! `patchbay run`: pairs from the command line, a TOML config or a pairs file, through the sweep.
use super::BackendArgs;
use crate::data::{Columns, Pair, PairSource};
use crate::engine::{Ablation, Direction, Method, Metric, PatchSite};
use crate::jobs::patch::{parse_senders, patch, path_sites, PatchSpec, DEFAULT_SITES, DEFAULT_VERIFY_ROWS};
use crate::jobs::Model;
use crate::jobs::shard::Shard;
use crate::jobs::sweep::SweepSpec;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Every option can also be given in a TOML config (same names, underscores for dashes): its
/// options are arguments placed before the command line's, so a flag overrides it and every
/// boolean has its negation (`--no-overwrite`, `--reuse`).
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML config file.
    pub(super) config: Option<PathBuf>,
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
    /// Put the BOS in front of every prompt where the tokenizer puts none (GPT-2's `<|endoftext|>`), as TransformerLens does by default (ARENA's IOI
    /// numbers are computed so); named positions in the pairs file count without it.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// Skip pairs whose clean and corrupted differ at more than N positions.
    #[arg(long)]
    max_diff: Option<usize>,
    /// Fail on the first bad pair instead of skipping and listing it.
    #[arg(long, overrides_with = "no_strict")]
    strict: bool,
    #[arg(long, overrides_with = "strict", hide = true)]
    no_strict: bool,
    /// Run shard K of N (0-based) into OUT/shard-K-of-N: a range of the pairs, or, for exact
    /// edges over fewer pairs than shards, a range of the graph's edges (whole batches of
    /// --max-rows) for every pair [default:
    /// from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with --shards].
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
    /// exact: every patched run computed; attribution (on edges: eap): each one's linear
    /// estimate (clean − corrupted activation) · gradient of the metric on the corrupted run, for
    /// every site from two forward passes and one backward pass per group of pairs; eap-ig: that
    /// gradient averaged over --ig-steps runs with interpolated token embeddings (EAP-IG); same
    /// arrays [default: exact].
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Integrated gradients' steps of --method eap-ig: gradients at the embeddings source +
    /// (k/N)·(corrupted − source), k = 0..N−1, as EAP-IG evaluates them [default: 5].
    #[arg(long)]
    ig_steps: Option<usize>,
    /// denoising: the corrupted run with the source's activation written in (what suffices to
    /// restore the clean behaviour); noising: the clean run with the corrupted run's (or the
    /// ablation's) written in (what the behaviour needs). Same metric, same baselines
    /// [default: denoising].
    #[arg(long, value_enum)]
    direction: Option<Direction>,
    /// What a patch writes: resample (the other prompt's activation), zero, mean (per site and
    /// layer, over every position of every source prompt: the clean prompts when denoising, the
    /// corrupted ones when noising) or mean-positional (per position; pairs of one length). Only
    /// resample skips no-op runs [default: resample].
    #[arg(long, value_enum)]
    ablation: Option<Ablation>,
    /// Results directory [default: results/<config name>, or results/run].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Patched runs per forward pass; with --method attribution, pairs per forward and backward
    /// pass [default: from the device's memory].
    #[arg(long)]
    max_rows: Option<usize>,
    /// Compute every patched run in full (for comparison; results agree within 1e-4).
    #[arg(long, overrides_with = "reuse")]
    no_reuse: bool,
    #[arg(long, overrides_with = "no_reuse", hide = true)]
    reuse: bool,
    /// Compute the patched runs that provably equal the corrupted run too (patched before the
    /// first differing token, or at equal embeddings), instead of writing the corrupted baseline.
    #[arg(long, overrides_with = "skip")]
    no_skip: bool,
    #[arg(long, overrides_with = "no_skip", hide = true)]
    skip: bool,
    /// Continue an interrupted run in --out.
    #[arg(long, overrides_with = "no_resume")]
    resume: bool,
    #[arg(long, overrides_with = "resume", hide = true)]
    no_resume: bool,
    /// Replace the run in --out (with --resume: only another run than this one).
    #[arg(long, overrides_with = "no_overwrite")]
    overwrite: bool,
    #[arg(long, overrides_with = "overwrite", hide = true)]
    no_overwrite: bool,
    /// After the run, recompute N of its patched runs, chosen at random, on the simplest path (one
    /// per forward pass, no reuse, no fusion) and fail, naming them, if any differs [default: 8;
    /// 0: off].
    #[arg(long)]
    verify: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// A run as the library takes it: which model, where, and the sweep.
pub struct RunPlan {
    pub model: String,
    pub backend: BackendArgs,
    pub spec: PatchSpec,
}

impl RunArgs {
    /// The pairs: a file, or one pair given inline.
    fn source(&self) -> Result<PairSource> {
        let inline = self.clean.is_some() || self.corrupted.is_some() || self.answer.is_some() || self.distractor.is_some();
        match (&self.pairs, inline) {
            (Some(_), true) => bail!("give either --pairs FILE or --clean/--corrupted[/--answer/--distractor], not both"),
            (Some(path), false) => Ok(PairSource::File { path: path.clone(), columns: self.columns.clone().unwrap_or_default() }),
            (None, _) => {
                let (Some(clean), Some(corrupted)) = (&self.clean, &self.corrupted) else {
                    bail!("no pairs: give --pairs FILE, or --clean and --corrupted (with --answer and --distractor)")
                };
                if self.answer.is_some() != self.distractor.is_some() {
                    bail!("give both --answer and --distractor, or neither (then the last token where clean and corrupted differ is predicted)");
                }
                let pair = Pair { row: 1, clean: clean.clone(), corrupted: corrupted.clone(), answer: self.answer.clone(), distractor: self.distractor.clone(), ..Default::default() };
                Ok(PairSource::One(pair))
            }
        }
    }

    /// The library's spec of this run, with path sites `path` (receivers, senders) instead of --sites.
    pub fn plan(self, path: Option<(Vec<PatchSite>, Option<Vec<[usize; 2]>>)>) -> Result<RunPlan> {
        let (sites, senders) = match path {
            Some(p) => p,
            None => (PatchSite::parse_list(self.sites.as_deref().unwrap_or(DEFAULT_SITES))?, None),
        };
        let shard = match (&self.shard, self.shards) {
            (Some(_), Some(_)) => bail!("give --shard K/N or --shards N (with JOB_COMPLETION_INDEX), not both"),
            (Some(s), None) => Some(Shard::parse(s)?),
            (None, n) => Shard::from_env(n)?,
        };
        let default_out = self.config.as_ref().map_or_else(|| PathBuf::from("results/run"), |c| PathBuf::from("results").join(c.file_stem().unwrap_or_default()));
        let spec = PatchSpec {
            pairs: self.source()?,
            max_diff: self.max_diff,
            strict: self.strict,
            method: self.method.unwrap_or_default(),
            ig_steps: self.ig_steps,
            verify: self.verify.unwrap_or(DEFAULT_VERIFY_ROWS),
            sweep: SweepSpec {
                sites,
                senders,
                reuse: !self.no_reuse,
                skip: !self.no_skip,
                metric: self.metric.unwrap_or_default(),
                direction: self.direction.unwrap_or_default(),
                ablation: self.ablation.unwrap_or_default(),
                prepend_bos: self.prepend_bos,
                max_rows: self.max_rows,
                out: Some(self.out.unwrap_or(default_out)),
                resume: self.resume,
                overwrite: self.overwrite,
                shard,
            },
        };
        Ok(RunPlan { model: self.model.unwrap_or_else(|| "gpt2".into()), backend: self.backend, spec })
    }
}

fn parse_columns(s: &str) -> Result<Columns> {
    let mut c = Columns::default();
    for kv in s.split(',').filter(|kv| !kv.trim().is_empty()) {
        let (k, v) = kv.split_once('=').with_context(|| format!("--columns: {kv:?} is not NAME=COLUMN"))?;
        c.set(k, v)?;
    }
    Ok(c)
}

/// `patchbay path`: `run` with path sites, each sender's edges to the chosen receivers.
#[derive(Args, Debug)]
pub struct PathArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Comma-separated receivers: q, k, v (every later head's query, key or value input), or
    /// resid_final (the final residual stream: the sender's direct effect on the logits).
    #[arg(long)]
    pub receivers: String,
    /// Sending heads as layer.head, e.g. `9.6,9.9,10.0` [default: all].
    #[arg(long)]
    pub senders: Option<String>,
}

impl PathArgs {
    pub fn plan(self) -> Result<RunPlan> {
        if self.run.sites.is_some() {
            bail!("path takes --receivers (q, k, v, resid_final), not --sites");
        }
        let sites = path_sites(&self.receivers)?;
        let senders = self.senders.as_deref().map(parse_senders).transpose()?;
        self.run.plan(Some((sites, senders)))
    }
}

/// `patchbay edges`: every edge of the circuit graph (`patchbay graph`) as a row of the sweep.
#[derive(Args, Debug)]
pub struct EdgesArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

impl EdgesArgs {
    pub fn plan(self) -> Result<RunPlan> {
        if self.run.sites.is_some() {
            bail!("edges scores every edge of the graph: it takes no --sites");
        }
        self.run.plan(Some((vec![PatchSite::Edges], None)))
    }
}

pub fn run(plan: RunPlan) -> Result<()> {
    let backend = plan.backend.spec();
    let model = Model::load(&plan.model, backend, plan.backend.threads)?;
    if let Some(s) = plan.spec.sweep.shard {
        eprintln!("shard {}/{} into {}", s.index, s.count, plan.spec.sweep.out.as_deref().unwrap_or(Path::new(".")).join(s.dir_name()).display());
    }
    let p = patch(&model, &plan.spec, &mut super::Bar::default())?;
    for s in &p.skipped {
        eprintln!("skipped {} {}: {}", p.row_unit, s.row, s.reason);
    }
    if let Some(v) = &p.verification {
        eprintln!(
            "verified {} patched runs on the simplest path ({:?}): max |difference| {:.1e} (tolerance {:.0e})",
            v.rows, v.backend.kind, v.max_abs_diff, v.tolerance
        );
    }
    let s = &p.summary;
    let out = p.out.as_deref().unwrap_or(Path::new("?")).display();
    let what = match plan.spec.method {
        Method::Exact => "patched runs computed",
        Method::Attribution => "patched runs estimated by attribution",
        Method::EapIg => "patched runs estimated by integrated gradients",
    };
    println!(
        "wrote {out}: {} pair(s), {} {what} in {:.2} s ({:.0} runs/s) on {:?}, {} skipped as no-ops; next: patchbay analyze {out}",
        s.pairs,
        s.runs.computed,
        s.seconds,
        s.runs.computed as f64 / s.seconds.max(1e-9),
        model.backend.kind,
        s.runs.skipped,
    );
    Ok(())
}
