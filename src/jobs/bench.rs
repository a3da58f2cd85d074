//! `bench`: a patching sweep on a random-weight model of a named shape (no download),
//! the default path (reuse, no-op runs skipped) beside `--no-skip` and `--no-reuse`: runs/s,
//! achieved TFLOP/s, and the fraction of the minimal-work roofline (the FLOPs of the runs that
//! must be computed, each from its own layer and position, at the backend's own measured rate for
//! the model's largest product, the MLP's [tokens, d] × [d, 4d]).
use crate::backend::{dispatch, float_options, matmul, BackendSpec, BackendTask};
use crate::engine::budget::run_flops;
use crate::engine::{Engine, Layout, Metric, PatchSite, Row};
use crate::model::{Transformer, ModelConfig};
use anyhow::Result;
use burn::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or a folder with a config.json.
    pub shape: String,
    pub pairs: usize,
    pub tokens: usize,
    pub sites: String,
    /// Patched runs per forward pass (None: all runs of the sweep in one batch, capped at 4096).
    pub max_rows: Option<usize>,
    /// Timed repetitions of each mode (after one warm-up); the best is reported.
    pub repeat: usize,
    /// Only the reuse path.
    pub reuse_only: bool,
    /// Compute the no-op runs too in the first mode.
    pub no_skip: bool,
    /// The position where corrupted prompts differ from clean ones.
    pub corrupt_at: usize,
}

/// Runs the benchmark on `backend` (whose cpu thread count is already set).
pub fn bench(spec: &BenchSpec, backend: BackendSpec) -> Result<BenchReport> {
    dispatch(&backend, Bench(spec, backend.clone()))
}

#[derive(Serialize, Clone)]
pub struct ModeResult {
    pub mode: &'static str,
    pub runs: usize,
    pub computed: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub runs_per_s: f64,
    pub tflops: f64,
    pub roofline_fraction: f64,
}

#[derive(Serialize)]
pub struct BenchReport {
    pub shape: String,
    pub backend: String,
    pub dtype: String,
    /// CPU worker threads (cpu backend only).
    pub threads: Option<usize>,
    pub pairs: usize,
    pub tokens: usize,
    pub corrupt_at: usize,
    pub sites: String,
    pub matmul_tflops: f64,
    pub minimal_work_tflop: f64,
    pub modes: Vec<ModeResult>,
    /// Max |first mode − other modes| over all results.
    pub max_abs_diff: Option<f32>,
}

struct Bench<'a>(&'a BenchSpec, BackendSpec);

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

impl BackendTask for Bench<'_> {
    type Output = BenchReport;
    fn run<B: Backend>(self, device: B::Device) -> Result<BenchReport> {
        let (a, spec) = (self.0, self.1);
        let config = ModelConfig::named(&a.shape)?;
        anyhow::ensure!(a.pairs >= 1, "--pairs must be at least 1");
        anyhow::ensure!(a.tokens >= 2 && a.tokens <= config.context, "--tokens {} must be in 2..={} (the model's context)", a.tokens, config.context);
        anyhow::ensure!(a.corrupt_at < a.tokens, "--corrupt-at {} must be below --tokens {}", a.corrupt_at, a.tokens);
        // Each pair's tokens and its results: a few values a layer and position.
        crate::limits::fits_memory("--pairs", a.pairs, a.tokens * (config.layers * (config.heads + 3) + 4) * 8)?;
        crate::limits::at_most("--repeat", a.repeat, 1000, "more timed repeats than any median needs")?;
        let model = Transformer::<B>::random(config.clone(), 0, &device);
        let sites = PatchSite::parse_list(&a.sites)?;
        let pairs = crate::data::random_pairs(a.pairs, a.tokens, config.vocab, 1, a.corrupt_at);
        let layout = Layout::of(&config, a.tokens);
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
        let cpu = matches!(spec.kind, crate::backend::BackendKind::Cpu);
        let matmul = matmul_rate::<B>(&device, [if cpu { 4096 } else { 16384 }, config.d_model, config.d_mlp]);
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
            let engine = Engine { model: &model, reuse, max_rows, skip, metric: Metric::LogitDiff, replacement: Default::default() };
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
        Ok(BenchReport {
            shape: a.shape.clone(),
            backend: format!("{:?}{}", spec.kind, if spec.fusion { " (fusion)" } else { "" }).to_lowercase(),
            dtype: format!("{:?}", spec.dtype).to_lowercase(),
            threads: cpu.then(rayon::current_num_threads),
            pairs: a.pairs,
            tokens: a.tokens,
            corrupt_at: a.corrupt_at,
            sites: a.sites.clone(),
            matmul_tflops: matmul / 1e12,
            minimal_work_tflop: minimal / 1e12,
            modes: results,
            max_abs_diff,
        })
    }
}

