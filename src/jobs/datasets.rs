//! Datasets made from a tokenizer: IOI prompt pairs, as a pairs file's records.
use crate::data::ioi::{self, Corruption};
use crate::data::Pair;
use crate::model::weights::locate_file;
use crate::results::outputs;
use crate::tokenizer::Tokenizer;
use super::options::{Options, OutOptions};
use anyhow::Result;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `ioi`'s options (`patchbay ioi`, Python's `Model.ioi`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IoiOptions {
    /// Pairs [default: 500].
    #[arg(long, value_parser = at_least_one)]
    pub n: Option<usize>,
    /// Seed of the draws [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// abc (all three names replaced by others) or s-flip (S2 replaced by IO) [default: abc].
    #[arg(long, value_parser = super::options::choice::<Corruption>)]
    #[serde(deserialize_with = "super::options::by_name")]
    pub corruption: Option<Corruption>,
    #[command(flatten)]
    #[serde(flatten)]
    pub output: OutOptions,
}

impl Options for IoiOptions {
    fn settled(mut self) -> Self {
        self.output.settle();
        self
    }
}

impl IoiOptions {
    /// The dataset these options ask for, every default filled in.
    pub fn spec(self) -> Result<IoiSpec> {
        let n = self.n.unwrap_or(500);
        anyhow::ensure!(n > 0, "--n: must be at least 1");
        Ok(IoiSpec { n, seed: self.seed.unwrap_or(0), corruption: self.corruption.unwrap_or(Corruption::Abc), overwrite: self.output.overwrite(), out: self.output.out })
    }
}

/// A count of one or more (a usage error on the command line, as clap's own checks are).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug)]
pub struct IoiSpec {
    pub n: usize,
    pub seed: u64,
    pub corruption: Corruption,
    /// A JSONL pairs file they are written to.
    pub out: Option<PathBuf>,
    pub overwrite: bool,
}

/// The tokenizer of `model` (a hub id or directory) alone, without its weights.
pub fn tokenizer_of(model: &str) -> Result<Tokenizer> {
    Tokenizer::from_file(&locate_file(model, "tokenizer.json")?)
}

/// `n` IOI pairs (BABA and ABBA templates) with named positions; names are single tokens of `tok`.
pub fn ioi(tok: &Tokenizer, spec: &IoiSpec) -> Result<Vec<Pair>> {
    // A pair is some 300 bytes as a Pair and as its JSON line.
    crate::limits::fits_memory("--n", spec.n, 1024)?;
    if let Some(out) = &spec.out {
        outputs::prepare_file(out, spec.overwrite)?;
    }
    let pairs = ioi::generate(spec.n, spec.seed, spec.corruption, tok)?;
    if let Some(out) = &spec.out {
        let lines: String = pairs.iter().map(|p| serde_json::to_string(p).map(|l| l + "\n")).collect::<Result<_, _>>()?;
        outputs::write_file(out, lines.as_bytes(), spec.overwrite)?;
    }
    Ok(pairs)
}
