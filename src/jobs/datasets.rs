//! Datasets made from a tokenizer: IOI prompt pairs, as a pairs file's records.
use crate::data::ioi::{self, Corruption};
use crate::data::Pair;
use crate::model::weights::locate_file;
use crate::results::outputs;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::path::PathBuf;

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
