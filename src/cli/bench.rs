//! `patchbay bench`: a patching sweep on a random-weight model of a named shape (no download),
//! the default path (reuse, no-op runs skipped) beside `--no-skip` and `--no-reuse`: runs/s,
//! achieved TFLOP/s, and the fraction of the minimal-work roofline (the FLOPs of the runs that
//! must be computed, each from its own layer and position, at the backend's own measured rate for
//! the model's largest product, the MLP's [tokens, d] × [d, 4d]).
use super::BackendArgs;
use crate::backend::{dispatch, float_options, matmul, BackendTask};
use crate::engine::plan::run_flops;
use crate::engine::{Engine, Layout, Metric, PatchSite, Row};
use crate::model::{Gpt2, Gpt2Config};
use anyhow::Result;
use burn::prelude::*;
use clap::Args;
use serde::Serialize;
use std::time::Instant;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// gpt2, gpt2-medium, gpt2-large, gpt2-xl or distilgpt2.
    #[arg(long, default_value = "gpt2")]
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
    #[arg(long, overrides_with = "no_json")]
    json: bool,
    #[arg(long, overrides_with = "json", hide = true)]
    no_json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Serialize, Clone)]
struct ModeResult {
    mode: &'static str,
    runs: usize,
    computed: usize,
    skipped: usize,
    seconds: f64,
    runs_per_s: f64,
    tflops: f64,
    roofline_fraction: f64,
}

#[derive(Serialize)]
struct Report {
    shape: String,
    backend: String,
    dtype: String,
    /// CPU worker threads (cpu backend only).
    threads: Option<usize>,
    pairs: usize,
    tokens: usize,
    corrupt_at: usize,
    sites: String,
    matmul_tflops: f64,
    minimal_work_tflop: f64,
    modes: Vec<ModeResult>,
    /// Max |first mode − other modes| over all results.
    max_abs_diff: Option<f32>,
}

struct Bench(BenchArgs);

/// The backend's matmul rate (FLOP/s) on an [m, k] × [k, n] product, best of a few: the roofline.
fn matmul_rate<B: Backend>(device: &B::Device, [m, k, n]: [usize; 3]) -> f64 {
    let a = Tensor::<B, 2>::random([m, k], burn::tensor::Distribution::Default, float_options::<B>(device));
    let b = Tensor::<B, 2>::random([k, n], burn::tensor::Distribution::Default, float_options::<B>(device));
    let _ = matmul(a.clone(), b.clone()).sum().into_scalar();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = matmul(a.clone(), b.clone()).sum().into_scalar();
            2.0 * (m * k * n) as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

impl BackendTask for Bench {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> Result<Report> {
        let a = self.0;
        let config = Gpt2Config::named(&a.shape)?;
        anyhow::ensure!(a.tokens >= 2 && a.tokens <= config.n_positions, "--tokens must be in 2..={}", config.n_positions);
        anyhow::ensure!(a.corrupt_at < a.tokens, "--corrupt-at must be below --tokens");
        let model = Gpt2::<B>::random(config.clone(), 0, &device);
        let sites = PatchSite::parse_list(&a.sites)?;
        let pairs = crate::data::random_pairs(a.pairs, a.tokens, config.vocab_size, 1, a.corrupt_at);
        let layout = Layout::new(config.n_layer, config.n_head, a.tokens);
        let t = a.tokens;
        // Every pair's rows (pairs differ only in tokens at `corrupt_at`: the same rows are no-ops).
        let rows: Vec<Row> = sites.iter().flat_map(|&s| layout.rows(s, t)).collect();
        let (clean, corrupted) = (&pairs[0].clean, &pairs[0].corrupted);
        let needed: Vec<Row> = rows.iter().copied().filter(|r| !r.is_noop(clean, corrupted)).collect();
        let runs = rows.len() * pairs.len();
        let n = pairs.len() as f64;
        // Executed work of a mode, and the minimal work: each needed row from its own layer and position.
        let flops = |reuse: bool, skip: bool| -> f64 {
            let computed = if skip { &needed } else { &rows };
            n * computed
                .iter()
                .map(|r| if reuse { run_flops(&config, t, r.first_pos(), r.layer, true) } else { run_flops(&config, t, 0, 0, false) })
                .sum::<f64>()
        };
        let minimal = n * needed.iter().map(|r| run_flops(&config, t, r.first_pos(), r.layer, true)).sum::<f64>();
        let cpu = matches!(a.backend.spec().kind, crate::backend::BackendKind::Cpu);
        let matmul = matmul_rate::<B>(&device, [if cpu { 4096 } else { 16384 }, config.n_embd, config.n_inner]);
        let max_rows = a.max_rows.unwrap_or(runs.min(4096));
        // (name, reuse, skip): the fast path first, then what it is compared with.
        let mut modes = vec![if a.no_skip { ("reuse --no-skip", true, false) } else { ("reuse", true, true) }];
        if !a.reuse_only {
            if !a.no_skip {
                modes.push(("reuse --no-skip", true, false));
            }
            modes.push(("no-reuse --no-skip", false, false));
        }
        let mut results = Vec::new();
        let mut outputs = Vec::new();
        for (mode, reuse, skip) in modes {
            let engine = Engine { model: &model, reuse, max_rows, skip, metric: Metric::LogitDiff };
            let out = engine.run(&pairs, &sites, &layout, &mut |_| Ok(()))?; // warm-up (autotune, kernels)
            let seconds = (0..a.repeat.max(1))
                .map(|_| {
                    let t = Instant::now();
                    engine.run(&pairs, &sites, &layout, &mut |_| Ok(())).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .fold(f64::INFINITY, f64::min);
            let computed = if skip { needed.len() } else { rows.len() } * pairs.len();
            results.push(ModeResult {
                mode,
                runs,
                computed,
                skipped: runs - computed,
                seconds,
                runs_per_s: runs as f64 / seconds,
                tflops: flops(reuse, skip) / seconds / 1e12,
                roofline_fraction: minimal / seconds / matmul,
            });
            outputs.push(out.into_iter().flat_map(|p| p.sites.concat()).collect::<Vec<f32>>());
        }
        let max_abs_diff =
            (outputs.len() > 1).then(|| outputs[1..].iter().flat_map(|o| o.iter().zip(&outputs[0]).map(|(x, y)| (x - y).abs())).fold(0.0, f32::max));
        let spec = a.backend.spec();
        Ok(Report {
            shape: a.shape,
            backend: format!("{:?}{}", spec.kind, if spec.fusion { " (fusion)" } else { "" }).to_lowercase(),
            dtype: format!("{:?}", spec.dtype).to_lowercase(),
            threads: cpu.then(rayon::current_num_threads),
            pairs: a.pairs,
            tokens: a.tokens,
            corrupt_at: a.corrupt_at,
            sites: a.sites,
            matmul_tflops: matmul / 1e12,
            minimal_work_tflop: minimal / 1e12,
            modes: results,
            max_abs_diff,
        })
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let (json, spec) = (args.json, args.backend.configure()?);
    let r = dispatch(&spec, Bench(args))?;
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
