//! Prompt pairs: the Pair type, reading them from files, and tokenizing them with the checks
//! patching needs (equal lengths, single-token answers), with errors naming the row.
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One clean/corrupted prompt pair and the two tokens whose logit difference is the metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub clean: String,
    pub corrupted: String,
    pub answer: String,
    pub distractor: String,
}

/// A pair as token ids. `row` is its 1-based row in the source (file line, or CLI/config order).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizedPair {
    pub row: usize,
    pub clean: Vec<u32>,
    pub corrupted: Vec<u32>,
    pub answer: u32,
    pub distractor: u32,
    /// Named token positions (e.g. IO, S1, S2, end) for aggregating results by name.
    #[serde(default)]
    pub positions: std::collections::BTreeMap<String, usize>,
}

impl TokenizedPair {
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }
}

/// Pairs from a JSONL file, one object per line with fields clean, corrupted, answer, distractor.
pub fn read_jsonl(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{} row {}: not a pair ({{clean, corrupted, answer, distractor}})", path.display(), i + 1))
        })
        .collect()
}

/// Tokenizes pairs, checking what patching needs; `source` names where they came from in errors.
pub fn tokenize(pairs: &[Pair], tok: &Tokenizer, source: &str) -> Result<Vec<TokenizedPair>> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| tokenize_pair(p, tok).with_context(|| format!("{source} row {}", i + 1)).map(|mut t| {
            t.row = i + 1;
            t
        }))
        .collect()
}

fn tokenize_pair(p: &Pair, tok: &Tokenizer) -> Result<TokenizedPair> {
    let clean = tok.encode(&p.clean)?;
    let corrupted = tok.encode(&p.corrupted)?;
    if clean.is_empty() {
        bail!("the clean prompt is empty");
    }
    if clean.len() != corrupted.len() {
        bail!(
            "clean and corrupted tokenize to different lengths ({} vs {}): clean {}, corrupted {}",
            clean.len(),
            corrupted.len(),
            tok.show(&clean),
            tok.show(&corrupted)
        );
    }
    let answer = tok.single_token(&p.answer).context("answer")?;
    let distractor = tok.single_token(&p.distractor).context("distractor")?;
    Ok(TokenizedPair { row: 0, clean, corrupted, answer, distractor, ..Default::default() })
}
