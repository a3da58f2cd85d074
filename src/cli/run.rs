//! `patchbay run`: pairs from the command line, a TOML config or a pairs file, through the sweep.
use super::BackendArgs;
use crate::backend::{dispatch, BackendSpec, BackendTask};
use crate::data::{self, Pair, TokenizedPair};
use crate::engine::PatchSite;
use crate::model::weights::{load_model, ModelFiles};
use crate::sweep::{sweep, SweepSpec, SweepSummary};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use burn::prelude::Backend;
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_SITES: &str = "resid_pre,attn_out,mlp_out";

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
    /// Answer token (e.g. " Jones"): the metric is logit(answer) − logit(distractor).
    #[arg(long)]
    answer: Option<String>,
    #[arg(long)]
    distractor: Option<String>,
    /// JSONL file of pairs: {"clean", "corrupted", "answer", "distractor"} per line.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Comma-separated: resid_pre, resid_mid, resid_post, attn_out, mlp_out, z_all_pos, z_by_pos
    /// [default: resid_pre,attn_out,mlp_out].
    #[arg(long)]
    sites: Option<String>,
    /// Results directory [default: results/<config name>, or results/run].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Patched runs per forward pass [default: from the device's memory].
    #[arg(long)]
    max_rows: Option<usize>,
    /// Compute every patched run in full (for comparison; results agree within 1e-4).
    #[arg(long)]
    no_reuse: bool,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    resume: bool,
    /// Replace a finished run in --out.
    #[arg(long)]
    overwrite: bool,
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
            sites: self.sites.or(file.sites),
            out: self.out.or(file.out).or(Some(default_out)),
            max_rows: self.max_rows.or(file.max_rows),
            no_reuse: self.no_reuse || file.no_reuse,
            resume: self.resume || file.resume,
            overwrite: self.overwrite || file.overwrite,
            backend: self.backend.or(file.backend),
            config: self.config,
        })
    }

    fn pairs(&self, tok: &Tokenizer) -> Result<Vec<TokenizedPair>> {
        let inline = [&self.clean, &self.corrupted, &self.answer, &self.distractor];
        match (&self.pairs, inline.iter().all(|x| x.is_some()), inline.iter().any(|x| x.is_some())) {
            (Some(_), _, true) => bail!("give either --pairs FILE or --clean/--corrupted/--answer/--distractor, not both"),
            (Some(file), _, false) => read_pairs(file, tok),
            (None, true, _) => {
                let pair = Pair {
                    clean: self.clean.clone().unwrap(),
                    corrupted: self.corrupted.clone().unwrap(),
                    answer: self.answer.clone().unwrap(),
                    distractor: self.distractor.clone().unwrap(),
                };
                data::tokenize(&[pair], tok, "pair")
            }
            (None, false, _) => bail!("no pairs: give --pairs FILE, or all of --clean, --corrupted, --answer, --distractor"),
        }
    }
}

fn read_pairs(file: &Path, tok: &Tokenizer) -> Result<Vec<TokenizedPair>> {
    data::tokenize(&data::read_jsonl(file)?, tok, &file.display().to_string())
}

struct RunTask {
    files: ModelFiles,
    tokenizer: Tokenizer,
    pairs: Vec<TokenizedPair>,
    spec: SweepSpec,
    backend: BackendSpec,
}

impl BackendTask for RunTask {
    type Output = SweepSummary;
    fn run<B: Backend>(self, device: B::Device) -> Result<SweepSummary> {
        let model = load_model::<B>(&self.files, &device)?;
        sweep(&model, &self.files.id, &self.tokenizer, &self.pairs, &self.spec, &self.backend)
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let args = args.merged()?;
    let sites = PatchSite::parse_list(args.sites.as_deref().unwrap_or(DEFAULT_SITES))?;
    let files = ModelFiles::locate(args.model.as_deref().unwrap_or("gpt2"))?;
    let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
    let pairs = args.pairs(&tokenizer)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("results/run"));
    let spec = SweepSpec {
        sites,
        reuse: !args.no_reuse,
        max_rows: args.max_rows,
        out: out.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
    };
    let backend = args.backend.spec();
    let s = dispatch(&backend, RunTask { files, tokenizer, pairs, spec, backend: backend.clone() })?;
    println!(
        "wrote {}: {} pair(s), {} patched runs in {:.2} s ({:.0} runs/s) on {:?}; next: patchbay analyze {}",
        out.display(),
        s.pairs,
        s.runs,
        s.seconds,
        s.runs as f64 / s.seconds.max(1e-9),
        backend.kind,
        out.display()
    );
    Ok(())
}
