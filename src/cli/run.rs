//! `patchbay run`, `path` and `edges`: a config file and flags (the library's `RunOptions`) through the sweep.
use crate::engine::Method;
use crate::jobs::options::{default_out, Job, Options, RunOptions, RunPlan};
use crate::jobs::patch::patch;
use crate::jobs::Model;
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};

/// Every option can also be given in a TOML config (same names, underscores for dashes): the
/// command line's options override the file's, and every boolean has its negation
/// (`--no-overwrite`, `--reuse`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML config file.
    config: Option<PathBuf>,
    #[command(flatten)]
    options: RunOptions,
}

impl RunArgs {
    /// The library's run: the config's options under the command line's, every default filled in.
    pub fn plan(self, job: Job) -> Result<RunPlan> {
        let given = self.options.settled();
        let options = match &self.config {
            Some(path) => RunOptions::from_config(job.name(), path)?.overlaid(given)?,
            None => given,
        };
        options.plan(job, Some(default_out(self.config.as_deref())))
    }
}

pub fn run(plan: RunPlan) -> Result<()> {
    let model = Model::load(plan.model(), plan.backend.spec(), plan.backend.threads)?;
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
