//! Prompt pairs: reading them from JSONL, CSV or Parquet, and tokenizing them with the checks
//! patching needs. A pair that fails a check is skipped and reported with its row (or fails the run
//! under `strict`).
pub mod ioi;

use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One clean/corrupted prompt pair as read. Without answer and distractor it is the plain form:
/// the tokens at the last place where the two differ are the answer (clean) and distractor
/// (corrupted), predicted from the position before.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// 1-based row in its source (where it was read, not part of the pair).
    #[serde(skip)]
    pub row: usize,
    pub clean: String,
    pub corrupted: String,
    pub answer: Option<String>,
    pub distractor: Option<String>,
    /// Named token positions (e.g. IO, S1, S2, end) for aggregating results by name.
    pub positions: BTreeMap<String, usize>,
}

/// Column names in pair files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    pub clean: String,
    pub corrupted: String,
    pub answer: String,
    pub distractor: String,
    /// A JSON object {name: token position}; in CSV and Parquet a JSON string.
    pub positions: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            clean: "clean".into(),
            corrupted: "corrupted".into(),
            answer: "answer".into(),
            distractor: "distractor".into(),
            positions: "positions".into(),
        }
    }
}

/// A pair as token ids, ready for the engine. The metric is read at its last position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizedPair {
    pub row: usize,
    pub clean: Vec<u32>,
    pub corrupted: Vec<u32>,
    pub answer: u32,
    pub distractor: u32,
    #[serde(default)]
    pub positions: BTreeMap<String, usize>,
}

impl TokenizedPair {
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }
}

/// A pair left out of a run, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub row: usize,
    pub reason: String,
}

/// Pairs from a .jsonl, .csv or .parquet file.
pub fn read_pairs(path: &Path, columns: &Columns) -> Result<Vec<Pair>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let rows: Vec<BTreeMap<String, Field>> = match ext.as_str() {
        "jsonl" | "json" | "ndjson" => read_jsonl(path)?,
        "csv" => read_csv(path)?,
        "parquet" => read_parquet(path)?,
        _ => bail!("{}: unknown pairs format (expected .jsonl, .csv or .parquet)", path.display()),
    };
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| to_pair(row, columns, i + 1).with_context(|| format!("{} row {}", path.display(), i + 1)))
        .collect()
}

/// A cell of a pairs file: text, or (JSONL) an object of named positions.
enum Field {
    Text(String),
    Json(serde_json::Value),
}

fn to_pair(mut row: BTreeMap<String, Field>, c: &Columns, row_no: usize) -> Result<Pair> {
    let mut text = |name: &str, required: bool| -> Result<Option<String>> {
        match row.remove(name) {
            Some(Field::Text(s)) => Ok(Some(s)),
            Some(Field::Json(serde_json::Value::Null)) | None if !required => Ok(None),
            Some(Field::Json(v)) => bail!("column {name:?} holds {v}, expected text"),
            None => bail!("no column {name:?}"),
        }
    };
    let clean = text(&c.clean, true)?.unwrap();
    let corrupted = text(&c.corrupted, true)?.unwrap();
    let answer = text(&c.answer, false)?.filter(|s| !s.is_empty());
    let distractor = text(&c.distractor, false)?.filter(|s| !s.is_empty());
    if answer.is_some() != distractor.is_some() {
        bail!("give both answer and distractor, or neither (plain form)");
    }
    let positions = match row.remove(&c.positions) {
        None => BTreeMap::new(),
        Some(Field::Text(s)) if s.trim().is_empty() => BTreeMap::new(),
        Some(Field::Text(s)) => serde_json::from_str(&s).with_context(|| format!("column {:?}: not a JSON object of positions", c.positions))?,
        Some(Field::Json(v)) => serde_json::from_value(v).with_context(|| format!("column {:?}: not an object of positions", c.positions))?,
    };
    Ok(Pair { row: row_no, clean, corrupted, answer, distractor, positions })
}

fn read_jsonl(path: &Path) -> Result<Vec<BTreeMap<String, Field>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let obj: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).with_context(|| format!("{} row {}: not a JSON object", path.display(), i + 1))?;
            Ok(obj
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, Field::Text(s)),
                    other => (k, Field::Json(other)),
                })
                .collect())
        })
        .collect()
}

fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, Field>>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    reader
        .records()
        .enumerate()
        .map(|(i, rec)| {
            let rec = rec.with_context(|| format!("{} row {}", path.display(), i + 1))?;
            Ok(headers.iter().zip(rec.iter()).map(|(h, v)| (h.to_string(), Field::Text(v.to_string()))).collect())
        })
        .collect()
}

fn read_parquet(path: &Path) -> Result<Vec<BTreeMap<String, Field>>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field as P;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let rows = reader.get_row_iter(None)?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.with_context(|| format!("{} row {}", path.display(), i + 1))?;
            Ok(row
                .get_column_iter()
                .map(|(name, f)| {
                    let v = match f {
                        P::Str(s) => Field::Text(s.clone()),
                        P::Null => Field::Json(serde_json::Value::Null),
                        other => Field::Text(other.to_string()),
                    };
                    (name.clone(), v)
                })
                .collect())
        })
        .collect()
}

/// The checks a pair must pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checks {
    /// Most positions where clean and corrupted may differ (None: any number).
    pub max_diff: Option<usize>,
}

/// Tokenizes pairs. A pair failing a check is skipped and listed, or with `strict` fails the run
/// with an error naming `source` and its row.
pub fn tokenize(pairs: &[Pair], tok: &Tokenizer, source: &str, checks: Checks, strict: bool) -> Result<(Vec<TokenizedPair>, Vec<Skipped>)> {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for p in pairs {
        match tokenize_pair(p, tok, checks) {
            Ok(t) => ok.push(t),
            Err(e) if strict => return Err(e.context(format!("{source} row {}", p.row))),
            Err(e) => skipped.push(Skipped { row: p.row, reason: format!("{e:#}") }),
        }
    }
    Ok((ok, skipped))
}

fn tokenize_pair(p: &Pair, tok: &Tokenizer, checks: Checks) -> Result<TokenizedPair> {
    let mut clean = tok.encode(&p.clean)?;
    let mut corrupted = tok.encode(&p.corrupted)?;
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
    let diff: Vec<usize> = (0..clean.len()).filter(|&i| clean[i] != corrupted[i]).collect();
    if let Some(max) = checks.max_diff.filter(|&m| diff.len() > m) {
        bail!("clean and corrupted differ at {} positions {:?}, more than the {max} allowed: clean {}, corrupted {}", diff.len(), diff, tok.show(&clean), tok.show(&corrupted));
    }
    let (answer, distractor) = match (&p.answer, &p.distractor) {
        (Some(a), Some(d)) => (tok.single_token(a).context("answer")?, tok.single_token(d).context("distractor")?),
        _ => {
            // Plain form: predict the last differing token from the position before it.
            let Some(&last) = diff.last() else { bail!("clean and corrupted are the same tokens: nothing to patch") };
            if last == 0 {
                bail!("the only differing token is the first: no position predicts it");
            }
            let pair = (clean[last], corrupted[last]);
            clean.truncate(last);
            corrupted.truncate(last);
            pair
        }
    };
    if let Some((name, &pos)) = p.positions.iter().find(|(_, &pos)| pos >= clean.len()) {
        bail!("named position {name}={pos} is past the {} tokens {}", clean.len(), tok.show(&clean));
    }
    Ok(TokenizedPair { row: p.row, clean, corrupted, answer, distractor, positions: p.positions.clone() })
}

/// A small deterministic generator (SplitMix64): the same seed gives the same dataset everywhere.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `k` distinct items of `from`.
    pub fn distinct<'a>(&mut self, from: &[&'a str], k: usize) -> Vec<&'a str> {
        let mut pool = from.to_vec();
        (0..k).map(|_| pool.swap_remove(self.below(pool.len()))).collect()
    }
}

/// `n` pairs of random tokens (corrupted at position 1, random answer and distractor), seeded:
/// inputs for benchmarks on random-weight models.
pub fn random_pairs(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<TokenizedPair> {
    let mut rng = Rng(seed);
    let mut next = move || rng.below(vocab) as u32;
    (0..n)
        .map(|i| {
            let clean: Vec<u32> = (0..len).map(|_| next()).collect();
            let mut corrupted = clean.clone();
            corrupted[1.min(len - 1)] = next();
            TokenizedPair { row: i + 1, clean, corrupted, answer: next(), distractor: next(), ..Default::default() }
        })
        .collect()
}
