//! The command line: argument parsing and printing over the library. No tensor math here.
mod inspect;
mod run;

use crate::backend::{BackendKind, BackendSpec, DType};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "patchbay", version, about = "Batched activation patching on GPT-2-family models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize a prompt and show the model's top next tokens.
    Inspect(inspect::InspectArgs),
    /// Patch every (site, layer, position[, head]) of prompt pairs; write .npy results.
    Run(run::RunArgs),
    /// Normalize a run's results (clean = 1, corrupted = 0); summary and heatmaps.
    Analyze {
        /// A results directory written by `patchbay run`.
        out: PathBuf,
    },
}

/// Where the tensors run. In a TOML config: backend, device, dtype, no_fusion.
#[derive(Args, Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendArgs {
    /// cpu (default), wgpu (Vulkan/Metal/DX12) or cuda; GPU backends are Cargo features.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// GPU index.
    #[arg(long)]
    pub device: Option<usize>,
    /// Compute precision: f32 (default), f16, bf16 (cuda).
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// Turn off burn's kernel fusion on GPU backends.
    #[arg(long)]
    pub no_fusion: bool,
}

impl BackendArgs {
    /// Flags given on the command line win over the config file's.
    pub fn or(self, file: BackendArgs) -> Self {
        Self {
            backend: self.backend.or(file.backend),
            device: self.device.or(file.device),
            dtype: self.dtype.or(file.dtype),
            no_fusion: self.no_fusion || file.no_fusion,
        }
    }

    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            kind: self.backend.unwrap_or(BackendKind::Cpu),
            device: self.device.unwrap_or(0),
            dtype: self.dtype.unwrap_or(DType::F32),
            fusion: !self.no_fusion,
        }
    }
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Inspect(args) => inspect::inspect(args),
        Command::Run(args) => run::run(args),
        Command::Analyze { out } => {
            let s = crate::analysis::analyze(&out)?;
            for e in &s.excluded {
                eprintln!("excluded pair at row {}: {}", e.row, e.reason);
            }
            let names: Vec<&str> = s.sites.iter().chain(&s.by_name).map(|x| x.name.as_str()).collect();
            println!(
                "analyzed {} pair(s) ({} excluded) in {}: {}.normalized.npy, summary.json, summary.csv, heatmaps {}",
                s.pairs,
                s.excluded.len(),
                out.display(),
                s.sites.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join("/"),
                names.iter().map(|n| format!("{n}.png/.svg")).collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
    }
}
