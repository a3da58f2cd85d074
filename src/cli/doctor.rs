//! `patchbay doctor`: a backend's forward against the cpu's, step by step, to name a faulty op.
use crate::jobs::options::{BackendOptions, DEFAULT_MODEL};
use crate::jobs::doctor::{doctor, DoctorSpec};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct DoctorArgs {
    /// Hub id (downloaded into the HF cache) or a directory with config.json, model.safetensors, tokenizer.json.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// The prompt whose forward pass is compared [default: --positions fixed pseudo-random tokens].
    #[arg(long)]
    text: Option<String>,
    /// Tokens of the default prompt.
    #[arg(long, default_value_t = 16)]
    positions: usize,
    /// Batch rows (the prompt's tokens, row r rotated by r places).
    #[arg(long, default_value_t = 4)]
    rows: usize,
    #[command(flatten)]
    json: super::JsonFlag,
    /// Tests: add 1 to one step's output on the backend under test (a step name, e.g. mlp.c_fc).
    #[arg(long, hide = true)]
    inject_fault: Option<String>,
    /// The backend under test (the reference is the cpu backend in f32).
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let spec = DoctorSpec { backend: args.backend.spec(), text: args.text, positions: args.positions, rows: args.rows, inject_fault: args.inject_fault };
    let report = doctor(&args.model, &spec, args.backend.threads)?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let b = &report.backend;
        println!("{:?} {:?}{} against cpu f32, each step from the cpu's inputs (tolerance {:.0e} of the step's largest |value|)", b.kind, b.dtype, if b.fusion { " fused" } else { "" }, report.tolerance);
        let name = |block: Option<usize>| block.map_or("final".to_string(), |l| format!("block {l}"));
        let mut blocks: Vec<Option<usize>> = report.steps.iter().map(|s| s.block).collect();
        blocks.dedup();
        for block in &blocks {
            let steps = report.steps.iter().filter(|s| s.block == *block);
            let worst = steps.clone().max_by(|a, b| (a.max_abs_diff / a.max_abs.max(1.0)).total_cmp(&(b.max_abs_diff / b.max_abs.max(1.0)))).expect("a block has steps");
            let verdict = if steps.clone().any(|s| s.differs) { "DIFFERS" } else { "ok" };
            println!("{:>8}  {verdict:<7}  largest difference {:.1e} in {}", name(*block), worst.max_abs_diff, worst.step);
        }
        println!("logits of the whole forward pass: max |difference| {:.1e}", report.logits_max_abs_diff);
        if let Some(first) = report.first_difference() {
            println!("\n{}, step by step:", name(first.block));
            println!("{:<36} {:>10} {:>10}  {:<22} operands (shape, strides)", "step", "max |Δ|", "max |cpu|", "output");
            for s in report.steps.iter().filter(|s| s.block == first.block) {
                let mark = if s.differs { "  <- differs" } else { "" };
                println!("{:<36} {:>10.1e} {:>10.1e}  {:<22} {}{mark}", s.step, s.max_abs_diff, s.max_abs, format!("{:?}", s.shape), s.operands.join(" @ "));
            }
        }
    }
    if let Some(first) = report.first_difference() {
        let at = first.block.map_or("after the last block".to_string(), |l| format!("block {l}"));
        bail!("{at}, step {}: max |difference| {:.1e} against the cpu, over the tolerance {:.0e} x {:.1e}", first.step, first.max_abs_diff, report.tolerance, first.max_abs.max(1.0));
    }
    Ok(())
}
