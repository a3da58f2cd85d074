//! `patchbay bench`: a patching sweep on a random-weight model of a named shape (no download),
//! with and without reuse side by side: runs/s, achieved TFLOP/s, and the fraction of the
//! minimal-work roofline (the reuse path's FLOPs at the backend's own measured matmul rate).
use super::BackendArgs;
use crate::backend::{dispatch, float_options, BackendTask};
use crate::engine::plan::{run_flops, suffix_start};
use crate::engine::{Engine, Layout, PatchSite};
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
    /// Only the reuse path (skip the --no-reuse comparison).
    #[arg(long)]
    reuse_only: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Serialize, Clone)]
struct ModeResult {
    mode: &'static str,
    runs: usize,
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
    pairs: usize,
    tokens: usize,
    sites: String,
    matmul_tflops: f64,
    minimal_work_tflop: f64,
    modes: Vec<ModeResult>,
    /// Max |reuse − no-reuse| over all results.
    max_abs_diff: Option<f32>,
}

struct Bench(BenchArgs);

/// The backend's matmul rate (FLOP/s) on a square product, best of a few: the roofline.
fn matmul_rate<B: Backend>(device: &B::Device, n: usize) -> f64 {
    let a = Tensor::<B, 2>::random([n, n], burn::tensor::Distribution::Default, float_options::<B>(device));
    let b = Tensor::<B, 2>::random([n, n], burn::tensor::Distribution::Default, float_options::<B>(device));
    let _ = a.clone().matmul(b.clone()).sum().into_scalar();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = a.clone().matmul(b.clone()).sum().into_scalar();
            2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

impl BackendTask for Bench {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> Result<Report> {
        let a = self.0;
        let config = Gpt2Config::named(&a.shape)?;
        anyhow::ensure!(a.tokens >= 2 && a.tokens <= config.n_positions, "--tokens must be in 2..={}", config.n_positions);
        let model = Gpt2::<B>::random(config.clone(), 0, &device);
        let sites = PatchSite::parse_list(&a.sites)?;
        let pairs = crate::data::random_pairs(a.pairs, a.tokens, config.vocab_size, 1);
        let layout = Layout { layers: config.n_layer, heads: config.n_head, positions: a.tokens };
        let rows: Vec<_> = sites.iter().flat_map(|&s| layout.rows(s, a.tokens)).collect();
        let runs = rows.len() * pairs.len();
        let n = pairs.len() as f64;
        let t = a.tokens;
        // Executed work per mode, and the minimal work: from each row's own layer and position.
        let flops = |reuse: bool| -> f64 {
            n * rows
                .iter()
                .map(|r| if reuse { run_flops(&config, t, suffix_start(r, t), r.layer, true) } else { run_flops(&config, t, 0, 0, false) })
                .sum::<f64>()
        };
        let minimal = n * rows.iter().map(|r| run_flops(&config, t, r.first_pos(), r.layer, true)).sum::<f64>();
        let matmul = matmul_rate::<B>(&device, if matches!(a.backend.spec().kind, crate::backend::BackendKind::Cpu) { 512 } else { 4096 });
        let max_rows = a.max_rows.unwrap_or(runs.min(4096));
        let modes: Vec<bool> = if a.reuse_only { vec![true] } else { vec![true, false] };
        let mut results = Vec::new();
        let mut outputs = Vec::new();
        for reuse in modes {
            let engine = Engine { model: &model, reuse, max_rows };
            let out = engine.run(&pairs, &sites, &layout, &mut |_| {})?; // warm-up (autotune, kernels)
            let seconds = (0..a.repeat.max(1))
                .map(|_| {
                    let t = Instant::now();
                    engine.run(&pairs, &sites, &layout, &mut |_| {}).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .fold(f64::INFINITY, f64::min);
            results.push(ModeResult {
                mode: if reuse { "reuse" } else { "no-reuse" },
                runs,
                seconds,
                runs_per_s: runs as f64 / seconds,
                tflops: flops(reuse) / seconds / 1e12,
                roofline_fraction: minimal / seconds / matmul,
            });
            outputs.push(out.into_iter().flat_map(|p| p.sites.concat()).collect::<Vec<f32>>());
        }
        let max_abs_diff = (outputs.len() == 2).then(|| outputs[0].iter().zip(&outputs[1]).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max));
        let spec = a.backend.spec();
        Ok(Report {
            shape: a.shape,
            backend: format!("{:?}{}", spec.kind, if spec.fusion { " (fusion)" } else { "" }).to_lowercase(),
            dtype: format!("{:?}", spec.dtype).to_lowercase(),
            pairs: a.pairs,
            tokens: a.tokens,
            sites: a.sites,
            matmul_tflops: matmul / 1e12,
            minimal_work_tflop: minimal / 1e12,
            modes: results,
            max_abs_diff,
        })
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let (json, spec) = (args.json, args.backend.spec());
    let r = dispatch(&spec, Bench(args))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} shape, {} pairs × {} tokens, sites {}, {} {}; matmul roofline {:.3} TFLOP/s; minimal work {:.4} TFLOP",
        r.shape, r.pairs, r.tokens, r.sites, r.backend, r.dtype, r.matmul_tflops, r.minimal_work_tflop
    );
    println!("{:<9} {:>8} {:>10} {:>12} {:>9} {:>9}", "mode", "runs", "seconds", "runs/s", "TFLOP/s", "roofline");
    for m in &r.modes {
        println!("{:<9} {:>8} {:>10.4} {:>12.0} {:>9.3} {:>8.1}%", m.mode, m.runs, m.seconds, m.runs_per_s, m.tflops, 100.0 * m.roofline_fraction);
    }
    if let [reuse, full] = &r.modes[..] {
        println!("reuse is {:.2}× faster than no-reuse; results agree within {:.2e}", full.seconds / reuse.seconds, r.max_abs_diff.unwrap_or(0.0));
    }
    Ok(())
}
