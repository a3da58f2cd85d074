//! A job's options as both front ends take them (`Options`), and the one place their defaults are
//! filled in (each options type's `plan` or `spec`): the patching jobs' `RunOptions` here, the
//! discovery jobs' beside their specs. A field is a command-line flag (dashes for underscores), a
//! TOML config's key and a Python keyword; each boolean also has its `--no-` flag. The CLI's argv
//! (clap), a config file (its keys read as the flags they name) and Python's keywords (JSON, serde)
//! all become the same value, and every value is parsed by the same function whichever way it
//! came, so a bad value gets the same message from either front end.
use crate::backend::{BackendKind, BackendSpec, DType};
use crate::data::{Columns, Pair, PairSource};
use crate::engine::{Ablation, Direction, Method, Metric, PatchSite};
use crate::jobs::patch::{parse_senders, path_sites, PatchSpec};
use crate::jobs::shard::Shard;
use crate::jobs::sweep::SweepSpec;
use anyhow::{bail, Context, Result};
use clap::{Args, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// The model a job loads when none is named.
pub const DEFAULT_MODEL: &str = "gpt2";
pub const DEFAULT_SITES: &str = "resid_pre,attn_out,mlp_out";
/// Patched runs rechecked after a run into a results directory.
pub const DEFAULT_VERIFY_ROWS: usize = 8;

/// Where a run's results go without --out: results/<the config file's name>, or results/run.
pub fn default_out(config: Option<&Path>) -> PathBuf {
    PathBuf::from("results").join(config.and_then(|c| c.file_stem()).unwrap_or("run".as_ref()))
}

/// Which patching job the options are for: what it sweeps (`--sites`, `--receivers`, every edge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Run,
    Path,
    Edges,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Run => "run",
            Job::Path => "path",
            Job::Edges => "edges",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "run" => Job::Run,
            "path" => Job::Path,
            "edges" => Job::Edges,
            other => bail!("{other} is not run, path or edges"),
        })
    }
}

/// Where the tensors run. In a TOML config: backend, device, dtype, fusion, threads.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendOptions {
    /// cpu (default), wgpu (Vulkan/Metal/DX12) or cuda; GPU backends are Cargo features.
    #[arg(long, value_parser = choice::<BackendKind>)]
    #[serde(deserialize_with = "by_name")]
    pub backend: Option<BackendKind>,
    /// GPU index.
    #[arg(long)]
    pub device: Option<usize>,
    /// Compute precision: f32 (default; exact products on cuda), tf32 (cuda: f32 values, TF32
    /// tensor-core products), f16 (wgpu, cuda), bf16 (cuda).
    #[arg(long, value_parser = choice::<DType>)]
    #[serde(deserialize_with = "by_name")]
    pub dtype: Option<DType>,
    /// Turn on burn's kernel fusion on GPU backends (off by default: burn 0.21's fusion has given
    /// wrong results; see docs/gpus.md).
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_fusion")]
    pub fusion: Option<bool>,
    #[arg(long, overrides_with = "fusion", hide = true)]
    #[serde(skip)]
    pub no_fusion: bool,
    /// CPU backend: worker threads [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BackendOptions {
    pub fn settle(&mut self) {
        fold(&mut self.fusion, &mut self.no_fusion);
    }

    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            kind: self.backend.unwrap_or(BackendKind::Cpu),
            device: self.device.unwrap_or(0),
            dtype: self.dtype.unwrap_or(DType::F32),
            fusion: self.fusion(),
        }
    }

    fn fusion(&self) -> bool {
        !self.no_fusion && self.fusion.unwrap_or(false)
    }

    /// The spec when one was given (else None: the run's own), with the CPU thread count set.
    pub fn given(&self) -> Result<Option<BackendSpec>> {
        self.configure()?;
        let given = self.backend.is_some() || self.device.is_some() || self.dtype.is_some() || self.fusion();
        Ok(given.then(|| self.spec()))
    }

    /// The spec, with the CPU thread count set: for work on no model file (`bench`).
    pub fn configure(&self) -> Result<BackendSpec> {
        if let Some(n) = self.threads {
            crate::backend::set_cpu_threads(n)?;
        }
        Ok(self.spec())
    }

    /// The model `model` loaded on this backend.
    pub fn load(&self, model: &str) -> Result<super::Model> {
        super::Model::load(model, self.spec(), self.threads)
    }
}

/// `verify`'s options (`patchbay verify`, Python's `pb.verify`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyOptions {
    /// How many patched runs to recompute (all of them when fewer) [default: 32].
    #[arg(long)]
    pub rows: Option<usize>,
    /// Where to recompute [default: the run's backend and dtype, without fusion; the CPU for a CUDA run].
    #[command(flatten)]
    #[serde(flatten)]
    pub backend: BackendOptions,
}

impl Options for VerifyOptions {
    fn settled(mut self) -> Self {
        self.backend.settle();
        self
    }
}

impl VerifyOptions {
    /// The rows to recheck and where (None: the run's own backend), every default filled in.
    pub fn spec(&self) -> Result<(usize, Option<BackendSpec>)> {
        Ok((self.rows.unwrap_or(32), self.backend.given()?))
    }
}

/// Every option of `run`, `path` and `edges`. None is "not given": `plan` says what it then is.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunOptions {
    /// Hub id or model directory [default: gpt2].
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub prompts: PairOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub bos: BosOption,
    /// Skip pairs whose clean and corrupted differ at more than N positions.
    #[arg(long)]
    pub max_diff: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub strict: StrictOption,
    /// Run shard K of N (0-based) into OUT/shard-K-of-N: a range of the pairs, or, for exact
    /// edges over fewer pairs than shards, a range of the graph's edges (whole batches of
    /// --max-rows) for every pair [default: from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT,
    /// or JOB_COMPLETION_INDEX with --shards, for a run into a results directory].
    #[arg(long)]
    pub shard: Option<String>,
    /// Number of shards, with a Kubernetes Indexed Job's JOB_COMPLETION_INDEX.
    #[arg(long)]
    pub shards: Option<usize>,
    /// run: comma-separated sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out; per head
    /// {z,q,k,v,pattern}_all_pos, {z,q,k,v,pattern}_by_pos, pattern_dest_src; or TransformerLens'
    /// groups block, heads_all_pos, heads_by_pos [default: resid_pre,attn_out,mlp_out].
    #[arg(long, value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub sites: Option<Vec<String>>,
    /// path: comma-separated receivers: q, k, v (every later head's query, key or value input),
    /// or resid_final (the final residual stream: the sender's direct effect on the logits)
    /// [default: q,k,v,resid_final].
    #[arg(long, value_delimiter = ',')]
    #[serde(deserialize_with = "list")]
    pub receivers: Option<Vec<String>>,
    /// path: sending heads as layer.head, e.g. `9.6,9.9,10.0` [default: all].
    #[arg(long, value_parser = heads_of)]
    #[serde(deserialize_with = "heads")]
    pub senders: Option<Heads>,
    /// What each run records at the last position: logit_diff (logit(answer) − logit(distractor)),
    /// logprob (log p(answer)), prob (p(answer)), logprob_diff (log p(answer) − log p(distractor))
    /// [default: logit_diff].
    #[arg(long, value_parser = choice::<Metric>)]
    #[serde(deserialize_with = "by_name")]
    pub metric: Option<Metric>,
    /// exact: every patched run computed; attribution (on edges: eap): each one's linear
    /// estimate (clean − corrupted activation) · gradient of the metric on the corrupted run, for
    /// every site from two forward passes and one backward pass per group of pairs; eap-ig: that
    /// gradient averaged over --ig-steps runs with interpolated token embeddings (EAP-IG); same
    /// arrays [default: exact].
    #[arg(long, value_parser = choice::<Method>)]
    #[serde(deserialize_with = "by_name")]
    pub method: Option<Method>,
    /// Integrated gradients' steps of --method eap-ig: gradients at the embeddings source +
    /// (k/N)·(corrupted − source), k = 0..N−1, as EAP-IG evaluates them [default: 5].
    #[arg(long)]
    pub ig_steps: Option<usize>,
    /// denoising: the corrupted run with the source's activation written in (what suffices to
    /// restore the clean behaviour); noising: the clean run with the corrupted run's (or the
    /// ablation's) written in (what the behaviour needs). Same metric, same baselines
    /// [default: denoising].
    #[arg(long, value_parser = choice::<Direction>)]
    #[serde(deserialize_with = "by_name")]
    pub direction: Option<Direction>,
    /// What a patch writes: resample (the other prompt's activation), zero, mean (per site and
    /// layer, over every position of every source prompt: the clean prompts when denoising, the
    /// corrupted ones when noising) or mean-positional (per position; pairs of one length). Only
    /// resample skips no-op runs [default: resample].
    #[arg(long, value_parser = choice::<Ablation>)]
    #[serde(deserialize_with = "by_name")]
    pub ablation: Option<Ablation>,
    /// Patched runs per forward pass; with --method attribution, pairs per forward and backward
    /// pass [default: from the device's memory].
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Compute every patched run in full (for comparison; results agree within 1e-4).
    #[arg(long, overrides_with = "reuse")]
    #[serde(skip)]
    pub no_reuse: bool,
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_reuse", hide = true)]
    pub reuse: Option<bool>,
    /// Compute the patched runs that provably equal the corrupted run too (patched before the
    /// first differing token, or at equal embeddings), instead of writing the corrupted baseline.
    #[arg(long, overrides_with = "skip")]
    #[serde(skip)]
    pub no_skip: bool,
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_skip", hide = true)]
    pub skip: Option<bool>,
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutOptions,
    /// Continue an interrupted run in --out.
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_resume")]
    pub resume: Option<bool>,
    #[arg(long, overrides_with = "resume", hide = true)]
    #[serde(skip)]
    pub no_resume: bool,
    /// After the run, recompute N of its patched runs, chosen at random, on the simplest path (one
    /// per forward pass, no reuse, no fusion) and fail, naming them, if any differs [default: 8;
    /// 0: off].
    #[arg(long)]
    pub verify: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub backend: BackendOptions,
}

/// Whether a BOS goes in front of every prompt (a shared flag of every job that reads prompts).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BosOption {
    /// Put the BOS in front of every prompt where the tokenizer puts none (GPT-2's
    /// `<|endoftext|>`), as TransformerLens does by default (ARENA's IOI numbers are computed so);
    /// named positions in a pairs file count without it.
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_prepend_bos")]
    pub prepend_bos: Option<bool>,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    #[serde(skip)]
    pub no_prepend_bos: bool,
}

impl BosOption {
    pub fn settle(&mut self) {
        fold(&mut self.prepend_bos, &mut self.no_prepend_bos);
    }

    pub fn prepend_bos(&self) -> bool {
        self.prepend_bos.unwrap_or(false)
    }
}

/// Whether a bad pair fails the job (a shared flag of the jobs that read pairs).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StrictOption {
    /// Fail on the first bad pair instead of skipping and listing it.
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_strict")]
    pub strict: Option<bool>,
    #[arg(long, overrides_with = "strict", hide = true)]
    #[serde(skip)]
    pub no_strict: bool,
}

impl StrictOption {
    pub fn settle(&mut self) {
        fold(&mut self.strict, &mut self.no_strict);
    }

    pub fn strict(&self) -> bool {
        self.strict.unwrap_or(false)
    }
}

/// Where a job's files go (a shared flag group).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutOptions {
    /// The directory the job writes into [run, path, edges: results/<config name> or results/run
    /// on the command line; otherwise, and in Python, nothing is written without it].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace what --out already holds (a run: with --resume, only another run than this one).
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_overwrite")]
    pub overwrite: Option<bool>,
    #[arg(long, overrides_with = "overwrite", hide = true)]
    #[serde(skip)]
    pub no_overwrite: bool,
}

impl OutOptions {
    pub fn settle(&mut self) {
        fold(&mut self.overwrite, &mut self.no_overwrite);
    }

    pub fn overwrite(&self) -> bool {
        self.overwrite.unwrap_or(false)
    }
}

/// Where a job's prompt pairs come from: a pairs file (or Python's records), or one pair given
/// inline.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PairOptions {
    #[arg(long)]
    pub clean: Option<String>,
    #[arg(long)]
    pub corrupted: Option<String>,
    /// Answer token (e.g. " Jones"), read by the metric. Without answer and distractor, the last
    /// differing token of clean and corrupted is predicted.
    #[arg(long)]
    pub answer: Option<String>,
    #[arg(long)]
    pub distractor: Option<String>,
    /// Pairs file: .jsonl, .csv or .parquet with columns clean, corrupted[, answer, distractor][,
    /// positions] (Python: also a list of records).
    #[arg(long, value_parser = |s: &str| Ok::<_, String>(Pairs::File(PathBuf::from(s))))]
    pub pairs: Option<Pairs>,
    /// Column names in the pairs file, e.g. `clean=prompt,corrupted=corrupted_prompt` (a TOML
    /// table or Python dict: {clean = "prompt"}).
    #[arg(long, value_parser = columns_of)]
    #[serde(deserialize_with = "columns")]
    pub columns: Option<Columns>,
}

impl PairOptions {
    /// The pairs: a file, records, or one pair given inline.
    pub fn source(&self) -> Result<PairSource> {
        let inline = self.clean.is_some() || self.corrupted.is_some() || self.answer.is_some() || self.distractor.is_some();
        if self.columns.is_some() && !matches!(self.pairs, Some(Pairs::File(_))) {
            bail!("--columns names the columns of a pairs file (--pairs FILE)");
        }
        match (&self.pairs, inline) {
            (Some(_), true) => bail!("give either --pairs or --clean/--corrupted[/--answer/--distractor], not both"),
            (Some(Pairs::File(path)), false) => Ok(PairSource::File { path: path.clone(), columns: self.columns.clone().unwrap_or_default() }),
            (Some(Pairs::Records(pairs)), false) => Ok(PairSource::Records(pairs.iter().enumerate().map(|(i, p)| Pair { row: i + 1, ..p.clone() }).collect())),
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
}

/// Where a run's pairs are: a file (every front end), or records (Python's DataFrame or dicts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pairs {
    File(PathBuf),
    Records(Vec<Pair>),
}

/// Sending heads, [layer, head].
pub type Heads = Vec<[usize; 2]>;

/// A run as the library takes it: which model, on what, and the sweep.
#[derive(Debug)]
pub struct RunPlan {
    /// The model the options name, if they do (`model()`: the one to load).
    pub named_model: Option<String>,
    pub backend: BackendOptions,
    pub spec: PatchSpec,
}

impl RunPlan {
    pub fn model(&self) -> &str {
        self.named_model.as_deref().unwrap_or(DEFAULT_MODEL)
    }
}

/// A job's options: parsed from flags (`from_args`, a config file's too) or from JSON keywords
/// (`from_json`), one over the other (`overlaid`).
pub trait Options: Args + FromArgMatches + Serialize + DeserializeOwned + Default {
    /// Each `--no-x` folded into `x`: a given boolean is Some(value), as from JSON.
    fn settled(self) -> Self;

    /// `args` (the command's flags, without the program's and command's names) parsed as the
    /// command line is; an error is clap's first line.
    fn from_args(command: &'static str, args: &[String]) -> Result<Self> {
        let argv = [command.to_string()].into_iter().chain(args.iter().cloned());
        let matches = Self::augment_args(clap::Command::new(command)).try_get_matches_from(argv).map_err(|e| anyhow::anyhow!("{}", first_line(&e.render().to_string())))?;
        Ok(Self::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{}", first_line(&e.to_string())))?.settled())
    }

    /// Options given as JSON (Python's keywords): an object whose keys are the options. An error
    /// names the keyword at fault (`max_rows=: …`); one that is no option is refused by name.
    fn from_json(json: &str) -> Result<Self> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).context("the options are not a JSON object")?;
        // The options' names: clap's ids (the fields'), hidden `no_` forms left out.
        let known: Vec<String> = Self::augment_args(clap::Command::new("options")).get_arguments().map(|a| a.get_id().to_string()).filter(|id| !id.starts_with("no_")).collect();
        if let Some(key) = map.keys().find(|k| !known.contains(k)) {
            bail!("{key}=: unknown option (the options are: {})", known.join(", "));
        }
        let options: Self = serde_json::from_str(json).map_err(|e| anyhow::anyhow!("{}", json_error(json, &e)))?;
        Ok(options.settled())
    }

    /// A TOML config's options (its keys are the flags, underscores for dashes; `columns` a table).
    fn from_config(command: &'static str, path: &Path) -> Result<Self> {
        let options = config_args(path, &Self::augment_args(clap::Command::new(command)))?;
        let args: Vec<String> = options.iter().flat_map(|o| o.args.iter().cloned()).collect();
        // Parsed alone, so a value clap refuses is the file's: named by its line.
        Self::from_args(command, &args).map_err(|e| {
            let text = e.to_string();
            match options.iter().find(|o| text.contains(&format!("'--{}", o.flag)) || text.contains(&format!("'--no-{}", o.flag))) {
                Some(o) => anyhow::anyhow!("{}: {text}", o.at),
                None => e.context(format!("with the options of {}", path.display())),
            }
        })
    }

    /// These options with every option `over` gives replacing this one's (a config's options
    /// under the command line's, or Python's keywords).
    fn overlaid(self, over: Self) -> Result<Self> {
        let (serde_json::Value::Object(mut base), serde_json::Value::Object(over)) = (serde_json::to_value(self)?, serde_json::to_value(over)?) else {
            bail!("internal error: options are not an object");
        };
        base.extend(over.into_iter().filter(|(_, v)| !v.is_null()));
        Ok(serde_json::from_value(serde_json::Value::Object(base))?)
    }
}

/// `*no` folded into `*yes` (Some(false)) and cleared.
pub fn fold(yes: &mut Option<bool>, no: &mut bool) {
    if std::mem::take(no) {
        *yes = Some(false);
    }
}

impl Options for RunOptions {
    fn settled(mut self) -> Self {
        self.bos.settle();
        self.output.settle();
        self.backend.settle();
        self.strict.settle();
        fold(&mut self.reuse, &mut self.no_reuse);
        fold(&mut self.skip, &mut self.no_skip);
        fold(&mut self.resume, &mut self.no_resume);
        self
    }
}

impl RunOptions {
    /// What `job` sweeps: --sites, the path sites of --receivers, or every edge.
    fn sites(&self, job: Job) -> Result<(Vec<PatchSite>, Option<Heads>)> {
        let given = |what: &str, present: bool| if present { bail!("{} takes no --{what}", job.name()) } else { Ok(()) };
        match job {
            Job::Run => {
                given("receivers", self.receivers.is_some())?;
                given("senders", self.senders.is_some())?;
                Ok((PatchSite::parse_list(&self.sites.as_ref().map_or(DEFAULT_SITES.to_string(), |s| s.join(",")))?, None))
            }
            Job::Path => {
                given("sites (its sites are --receivers: q, k, v, resid_final)", self.sites.is_some())?;
                Ok((path_sites(&self.receivers.as_ref().map_or("q,k,v,resid_final".to_string(), |r| r.join(",")))?, self.senders.clone()))
            }
            Job::Edges => {
                given("sites (it scores every edge of the graph)", self.sites.is_some())?;
                given("receivers", self.receivers.is_some())?;
                given("senders", self.senders.is_some())?;
                Ok((vec![PatchSite::Edges], None))
            }
        }
    }

    /// The library's spec of these options for `job`, every default filled in; `default_out` is
    /// where results go without --out (the CLI's directory; None: in memory, Python's).
    pub fn plan(self, job: Job, default_out: Option<PathBuf>) -> Result<RunPlan> {
        let (sites, senders) = self.sites(job)?;
        let out = self.output.out.clone().or(default_out);
        let shard = match (&self.shard, self.shards) {
            (Some(_), Some(_)) => bail!("give --shard K/N or --shards N (with JOB_COMPLETION_INDEX), not both"),
            (Some(s), None) => Some(Shard::parse(s)?),
            // A scheduler's index shards a run into a directory, never one kept in memory.
            (None, n) if out.is_some() => Shard::from_env(n)?,
            (None, Some(n)) => bail!("--shards {n} is an option of a run into a results directory (--out)"),
            (None, None) => None,
        };
        let spec = PatchSpec {
            pairs: self.prompts.source()?,
            max_diff: self.max_diff,
            strict: self.strict.strict(),
            method: self.method.unwrap_or_default(),
            ig_steps: self.ig_steps,
            verify: self.verify.unwrap_or(DEFAULT_VERIFY_ROWS),
            sweep: SweepSpec {
                sites,
                senders,
                reuse: self.reuse.unwrap_or(true),
                skip: self.skip.unwrap_or(true),
                metric: self.metric.unwrap_or_default(),
                direction: self.direction.unwrap_or_default(),
                ablation: self.ablation.unwrap_or_default(),
                prepend_bos: self.bos.prepend_bos(),
                max_rows: self.max_rows,
                out,
                resume: self.resume.unwrap_or(false),
                overwrite: self.output.overwrite(),
                shard,
            },
        };
        Ok(RunPlan { named_model: self.model, backend: self.backend, spec })
    }
}

/// serde_json's error `e` on `text`, naming the keyword whose value is at fault (`max_rows=: …`)
/// rather than a line and column of JSON a user never wrote.
pub fn json_error(text: &str, e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    match key_at(text, e.line(), e.column()) {
        Some(key) => format!("{key}=: {message}"),
        None => message.to_string(),
    }
}

/// The last JSON key before line `line`, column `column` of `text` (serde_json's position of an
/// error): the option whose value is at fault.
fn key_at(text: &str, line: usize, column: usize) -> Option<String> {
    let offset = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum::<usize>() + column;
    let before = text.get(..offset.min(text.len()))?;
    let colon = before.rfind("\":")?;
    let start = before[..colon].rfind('"')?;
    Some(before[start + 1..colon].to_string())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string()
}

/// A value of `T` by its name (clap's `ValueEnum` names and aliases, any case): one message for
/// the command line, a config file and Python.
pub fn choice<T: clap::ValueEnum>(name: &str) -> Result<T, String> {
    T::from_str(name, true).map_err(|_| {
        let names: Vec<String> = T::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|p| p.get_name().to_string()).collect();
        format!("{name:?} is not one of {}", names.join(", "))
    })
}

/// An optional enum value by its name (`choice`), for serde.
pub fn by_name<'de, D: Deserializer<'de>, T: clap::ValueEnum>(d: D) -> Result<Option<T>, D::Error> {
    Option::<String>::deserialize(d)?.map(|s| choice(&s)).transpose().map_err(serde::de::Error::custom)
}

/// `clean=prompt,corrupted=corrupted_prompt` → the pairs file's column names.
pub fn columns_of(s: &str) -> Result<Columns, String> {
    let mut c = Columns::default();
    for kv in s.split(',').filter(|kv| !kv.trim().is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv:?} is not NAME=COLUMN"))?;
        c.set(k, v).map_err(|e| e.to_string())?;
    }
    Ok(c)
}

fn columns<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Columns>, D::Error> {
    let map = Option::<std::collections::BTreeMap<String, String>>::deserialize(d)?;
    map.map(|m| columns_of(&m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))).transpose().map_err(serde::de::Error::custom)
}

/// `9.6,10.0` → [[9, 6], [10, 0]].
pub fn heads_of(s: &str) -> Result<Heads, String> {
    parse_senders(s).map_err(|e| e.to_string())
}

/// Names, as a list or one comma-separated string.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<List>::deserialize(d)?.map(|l| match l {
        List::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        List::Many(v) => v,
    }))
}

/// Heads as [[layer, head], ...], or as `layer.head` names (a list, or one comma-separated string).
fn heads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Heads>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Pairs(Vec<[usize; 2]>),
        Names(Vec<String>),
        Name(String),
    }
    let text = match Option::<Given>::deserialize(d)? {
        None => return Ok(None),
        Some(Given::Pairs(p)) => p.iter().map(|[l, h]| format!("{l}.{h}")).collect::<Vec<_>>().join(","),
        Some(Given::Names(n)) => n.join(","),
        Some(Given::Name(n)) => n,
    };
    heads_of(&text).map(Some).map_err(serde::de::Error::custom)
}

/// One option of a TOML config: where it was written (`FILE:LINE: \`key\``), its flag, and the
/// command-line arguments it stands for.
pub struct ConfigOption {
    pub at: String,
    pub flag: String,
    pub args: Vec<String>,
}

/// A TOML config's options as command-line arguments (ripgrep's way: the command line overrides
/// the file, every boolean has its `--no-` form). Keys are `command`'s long options with
/// underscores for dashes; `columns` is a table.
pub fn config_args(path: &Path, command: &clap::Command) -> Result<Vec<ConfigOption>> {
    use toml::Spanned;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // FILE:LINE or FILE:LINE:COLUMN, as compilers write it.
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |s| {
            let before = &text[..s.start.min(text.len())];
            format!(":{}:{}", line(s.start), before.chars().rev().take_while(|&c| c != '\n').count() + 1)
        });
        let message: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        anyhow::anyhow!("{}{at}: {}", path.display(), message.join("; "))
    })?;
    let known: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    let mut options = Vec::new();
    for (key, value) in table {
        let at = format!("{}:{}: `{}`", path.display(), line(key.span().start), key.get_ref());
        let flag = key.get_ref().replace('_', "-");
        if !known.contains(&flag.as_str()) {
            bail!("{at}: unknown option (the options are the command's flags, with underscores for dashes)");
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => bail!("{at}: must be a string or a number, not {}", other.type_str()),
        };
        let args = match value.get_ref() {
            toml::Value::Boolean(true) => vec![format!("--{flag}")],
            toml::Value::Boolean(false) => vec![match flag.strip_prefix("no-") {
                Some(positive) => format!("--{positive}"),
                None => format!("--no-{flag}"),
            }],
            // `--flag=value`, one argument: a value starting with '-' stays a value, and a value a
            // boolean flag does not take is an error clap names by its flag (and so by this key).
            toml::Value::Array(items) => vec![format!("--{flag}={}", items.iter().map(scalar).collect::<Result<Vec<_>>>()?.join(","))],
            toml::Value::Table(t) if flag == "columns" => {
                let kv = t.iter().map(|(k, v)| Ok(format!("{k}={}", scalar(v)?))).collect::<Result<Vec<_>>>()?;
                vec![format!("--{flag}={}", kv.join(","))]
            }
            toml::Value::Table(_) => bail!("{at}: must be a string, a number or a list, not a table (only `columns` is a table)"),
            v => vec![format!("--{flag}={}", scalar(v)?)],
        };
        options.push(ConfigOption { at, flag, args });
    }
    Ok(options)
}
