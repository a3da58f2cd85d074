//! `patchbay bench`: the arguments and the table of `jobs::bench` (a sweep on a random-weight
//! model of a named shape: the default path beside `--no-skip` and `--no-reuse`).
use crate::jobs::options::{BackendOptions, DEFAULT_MODEL};
use crate::jobs::bench::{bench as job, BenchSpec};
use anyhow::Result;
use clap::Args;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or a folder whose config.json gives the shape.
    #[arg(long, default_value = DEFAULT_MODEL)]
    shape: String,
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    #[arg(long, default_value = "resid_pre")]
    sites: String,
    /// Patched runs per forward pass [default: all runs of the sweep in one batch, capped at 4096].
    #[arg(long)]
    max_rows: Option<usize>,
    /// Timed repetitions of each mode (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Only the reuse path (skip the --no-skip and --no-reuse comparisons).
    #[arg(long, overrides_with = "no_reuse_only")]
    reuse_only: bool,
    #[arg(long, overrides_with = "reuse_only", hide = true)]
    no_reuse_only: bool,
    /// Compute the no-op runs too in the first mode (they are skipped by default).
    #[arg(long, overrides_with = "skip")]
    no_skip: bool,
    #[arg(long, overrides_with = "no_skip", hide = true)]
    skip: bool,
    /// The position where corrupted prompts differ from clean ones: runs patched before it are
    /// no-ops, skipped.
    #[arg(long, default_value_t = 1)]
    corrupt_at: usize,
    #[command(flatten)]
    json: super::JsonFlag,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let a = &args;
    let spec = BenchSpec {
        shape: a.shape.clone(),
        pairs: a.pairs,
        tokens: a.tokens,
        sites: a.sites.clone(),
        max_rows: a.max_rows,
        repeat: a.repeat,
        reuse_only: a.reuse_only,
        no_skip: a.no_skip,
        corrupt_at: a.corrupt_at,
    };
    let (json, r) = (a.json.json, job(&spec, a.backend.configure()?)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} shape, {} pairs × {} tokens corrupted at position {}, sites {}, {} {}{}; matmul roofline {:.3} TFLOP/s; minimal work {:.4} TFLOP",
        r.shape,
        r.pairs,
        r.tokens,
        r.corrupt_at,
        r.sites,
        r.backend,
        r.dtype,
        r.threads.map_or(String::new(), |t| format!(", {t} threads")),
        r.matmul_tflops,
        r.minimal_work_tflop
    );
    println!("{:<20} {:>8} {:>8} {:>10} {:>12} {:>9} {:>9}", "mode", "runs", "skipped", "seconds", "runs/s", "TFLOP/s", "roofline");
    for m in &r.modes {
        println!(
            "{:<20} {:>8} {:>8} {:>10.4} {:>12.0} {:>9.3} {:>8.1}%",
            m.mode,
            m.runs,
            m.skipped,
            m.seconds,
            m.runs_per_s,
            m.tflops,
            100.0 * m.roofline_fraction
        );
    }
    if let [first, others @ ..] = &r.modes[..] {
        for o in others {
            println!("{} is {:.2}× faster than {}", first.mode, o.seconds / first.seconds, o.mode);
        }
        if let Some(d) = r.max_abs_diff {
            println!("results of every mode agree within {d:.2e}");
        }
    }
    Ok(())
}
