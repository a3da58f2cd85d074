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
    /// Where it was read (not part of the pair): the 1-based line of a JSONL or CSV file (blank
    /// lines and the CSV header counted), the 1-based row of a Parquet file.
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

impl Columns {
    /// Names the column of `field` (clean, corrupted, answer, distractor, positions).
    pub fn set(&mut self, field: &str, column: &str) -> Result<()> {
        let slot = match field.trim() {
            "clean" => &mut self.clean,
            "corrupted" => &mut self.corrupted,
            "answer" => &mut self.answer,
            "distractor" => &mut self.distractor,
            "positions" => &mut self.positions,
            other => bail!("columns: unknown field {other:?} (clean, corrupted, answer, distractor, positions)"),
        };
        *slot = column.trim().to_string();
        Ok(())
    }
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

/// The texts of a JSONL file: each line's "prompt" or "text", then where it came from (`FILE line
/// N`: blank lines are skipped, so a text's line is not its number); errors name the line.
pub fn read_texts(path: &Path) -> Result<Vec<(String, String)>> {
    let body = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        match v.get("prompt").or_else(|| v.get("text")).and_then(|t| t.as_str()) {
            Some(t) => out.push((t.to_string(), at())),
            None => bail!("{}: no \"prompt\" or \"text\" string", at()),
        }
    }
    if out.is_empty() {
        bail!("{} holds no texts", path.display());
    }
    Ok(out)
}

/// Indices grouped by length, shortest first, in order within a length: texts of one length
/// batch into one forward pass without padding.
pub fn by_length(lengths: impl IntoIterator<Item = usize>) -> BTreeMap<usize, Vec<usize>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, len) in lengths.into_iter().enumerate() {
        groups.entry(len).or_default().push(i);
    }
    groups
}

/// Pairs from a .jsonl, .csv or .parquet file; a file without any is an error.
pub fn read_pairs(path: &Path, columns: &Columns) -> Result<Vec<Pair>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let (rows, unit) = match ext.as_str() {
        "jsonl" | "json" | "ndjson" => (read_jsonl(path)?, "line"),
        "csv" => (read_csv(path)?, "line"),
        "parquet" => (read_parquet(path)?, "row"),
        _ => bail!("{}: unknown pairs format (expected .jsonl, .csv or .parquet)", path.display()),
    };
    if rows.is_empty() {
        bail!("{} holds no pairs", path.display());
    }
    rows.into_iter().map(|(n, row)| to_pair(row, columns, n).with_context(|| format!("{} {unit} {n}", path.display()))).collect()
}

/// A row of a pairs file and where it is: its line (JSONL, CSV) or row (Parquet), 1-based.
type Row = (usize, BTreeMap<String, Field>);

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

/// A text file's bytes without a UTF-8 byte order mark.
fn read_text(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.strip_prefix(b"\xEF\xBB\xBF").map_or(bytes.clone(), <[u8]>::to_vec))
}

fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    read_text(path)?
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(n, line)| {
            let where_ = || format!("{} line {n}", path.display());
            let line = std::str::from_utf8(line).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", where_()))?;
            let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", where_()))?;
            let row = obj
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, Field::Text(s)),
                    other => (k, Field::Json(other)),
                })
                .collect();
            Ok((n, row))
        })
        .collect()
}

fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let mut reader = csv::Reader::from_reader(std::io::Cursor::new(read_text(path)?));
    let headers = reader.headers().with_context(|| format!("{} line 1: not a CSV header", path.display()))?.clone();
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(String::new(), |p| format!(" line {}", p.line()));
            anyhow::anyhow!("{}{line}: {e}", path.display())
        })?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        rows.push((line, headers.iter().zip(rec.iter()).map(|(h, v)| (h.to_string(), Field::Text(v.to_string()))).collect()));
    }
    Ok(rows)
}

fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field as P;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let rows = reader.get_row_iter(None)?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.with_context(|| format!("{} row {}", path.display(), i + 1))?;
            Ok((i + 1, row
                .get_column_iter()
                .map(|(name, f)| {
                    let v = match f {
                        P::Str(s) => Field::Text(s.clone()),
                        P::Null => Field::Json(serde_json::Value::Null),
                        other => Field::Text(other.to_string()),
                    };
                    (name.clone(), v)
                })
                .collect()))
        })
        .collect()
}

/// The checks a pair must pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checks {
    /// Most positions where clean and corrupted may differ (None: any number).
    pub max_diff: Option<usize>,
    /// The model's context (n_positions) and vocabulary size, which every pair must fit.
    pub context: Option<usize>,
    pub vocab: Option<usize>,
    /// Put `<|endoftext|>` in front of both prompts, as TransformerLens does by default
    /// (`prepend_bos=True`); named positions (counted without it) shift by one.
    pub prepend_bos: bool,
}

/// Where a run's pairs come from.
#[derive(Clone, Debug, PartialEq)]
pub enum PairSource {
    /// A pairs file (.jsonl, .csv, .parquet) with these column names.
    File { path: std::path::PathBuf, columns: Columns },
    /// One pair given directly (the command line's --clean/--corrupted): a failed check is an error.
    One(Pair),
    /// Pairs given directly (a notebook's DataFrame or list of dicts), rows numbered from 1.
    Records(Vec<Pair>),
}

impl PairSource {
    /// What a skipped pair's `row` counts: a file's lines (or Parquet rows), or the given rows.
    pub fn row_unit(&self) -> &'static str {
        match self {
            PairSource::File { path, .. } => row_unit(path),
            _ => "row",
        }
    }
}

/// The pairs of `source` that pass `checks`, and those skipped (with `strict`, the first failure is
/// an error naming its row). No pair passing is an error that names the first skipped one.
pub fn load_pairs(source: &PairSource, tok: &Tokenizer, checks: Checks, strict: bool) -> Result<(Vec<TokenizedPair>, Vec<Skipped>)> {
    let (pairs, skipped, unit) = match source {
        PairSource::File { path, columns } => {
            let (p, s) = tokenize(&read_pairs(path, columns)?, tok, Some(path), checks, strict)?;
            (p, s, source.row_unit())
        }
        PairSource::One(pair) => {
            if pair.answer.is_some() != pair.distractor.is_some() {
                bail!("give both the answer and the distractor, or neither (then the last token where clean and corrupted differ is predicted)");
            }
            let (p, s) = tokenize(std::slice::from_ref(pair), tok, None, checks, true)?;
            (p, s, source.row_unit())
        }
        PairSource::Records(pairs) => {
            if pairs.is_empty() {
                bail!("no pairs given");
            }
            let (p, s) = tokenize(pairs, tok, None, checks, false)?;
            if let Some(first) = s.first().filter(|_| strict) {
                bail!("pair at row {}: {}", first.row, first.reason);
            }
            (p, s, source.row_unit())
        }
    };
    if pairs.is_empty() {
        let first = skipped.first().map_or(String::new(), |s| format!("; skipped {unit} {}: {}", s.row, s.reason));
        bail!("no pair passed the checks ({} skipped){first}", skipped.len());
    }
    Ok((pairs, skipped))
}

/// What a pair's `row` counts in a pairs file: lines of JSONL and CSV, rows of Parquet.
pub fn row_unit(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("parquet") => "row",
        _ => "line",
    }
}

/// Tokenizes pairs read from `source` (None: given on the command line). A pair failing a check
/// is skipped and listed, or with `strict` fails the run with an error naming where it is (e.g.
/// "pairs.jsonl line 7").
pub fn tokenize(pairs: &[Pair], tok: &Tokenizer, source: Option<&Path>, checks: Checks, strict: bool) -> Result<(Vec<TokenizedPair>, Vec<Skipped>)> {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for p in pairs {
        match tokenize_pair(p, tok, checks) {
            Ok(t) => ok.push(t),
            Err(e) if strict => {
                let at = source.map_or_else(|| "the pair".to_string(), |f| format!("{} {} {}", f.display(), row_unit(f), p.row));
                return Err(e.context(at));
            }
            Err(e) => skipped.push(Skipped { row: p.row, reason: format!("{e:#}") }),
        }
    }
    Ok((ok, skipped))
}

fn tokenize_pair(p: &Pair, tok: &Tokenizer, checks: Checks) -> Result<TokenizedPair> {
    if p.clean.is_empty() {
        bail!("the clean prompt is empty");
    }
    let mut clean = tok.encode_with(&p.clean, checks.prepend_bos)?;
    let mut corrupted = tok.encode_with(&p.corrupted, checks.prepend_bos)?;
    if clean.len() != corrupted.len() {
        bail!(
            "clean and corrupted tokenize to different lengths ({} vs {}): clean {}, corrupted {}",
            clean.len(),
            corrupted.len(),
            tok.show_short(&clean),
            tok.show_short(&corrupted)
        );
    }
    let diff: Vec<usize> = (0..clean.len()).filter(|&i| clean[i] != corrupted[i]).collect();
    if diff.is_empty() {
        bail!("clean and corrupted are the same tokens: nothing to patch");
    }
    if let Some(max) = checks.max_diff.filter(|&m| diff.len() > m) {
        let shown = if diff.len() > 20 { format!("{:?}…", &diff[..20]) } else { format!("{diff:?}") };
        bail!("clean and corrupted differ at {} positions {shown}, more than the {max} allowed: clean {}, corrupted {}", diff.len(), tok.show_short(&clean), tok.show_short(&corrupted));
    }
    let (answer, distractor) = match (&p.answer, &p.distractor) {
        (Some(a), Some(d)) => (tok.single_token(a).context("answer")?, tok.single_token(d).context("distractor")?),
        (Some(_), None) | (None, Some(_)) => bail!("give both answer and distractor, or neither (plain form)"),
        (None, None) => {
            // Plain form: predict the last differing token from the position before it.
            let &last = diff.last().expect("checked above");
            if last == 0 {
                bail!("the only differing token is the first: no position predicts it");
            }
            let pair = (clean[last], corrupted[last]);
            clean.truncate(last);
            corrupted.truncate(last);
            pair
        }
    };
    if answer == distractor {
        bail!("answer and distractor are the same token {answer} {:?}: the metric would be 0", tok.token_str(answer));
    }
    let shift = tok.lead(checks.prepend_bos);
    // Compared before the BOS shift, which must not wrap a huge position around to 0.
    if let Some((name, &pos)) = p.positions.iter().find(|(_, &pos)| pos >= clean.len() - shift) {
        bail!("named position {name}={pos} is past the {} tokens {}", clean.len() - shift, tok.show_short(&clean[shift..]));
    }
    let positions: BTreeMap<String, usize> = p.positions.iter().map(|(name, &pos)| (name.clone(), pos + shift)).collect();
    let bos_note = if shift > 0 { " (the BOS token in front included)" } else { "" };
    if let Some(context) = checks.context.filter(|&c| clean.len() > c) {
        bail!("the clean prompt {:?} is {} tokens{bos_note}, longer than the model's context of {context} positions", preview(&p.clean), clean.len());
    }
    if let Some(vocab) = checks.vocab {
        let texts = [("clean prompt", &p.clean, &clean[..]), ("corrupted prompt", &p.corrupted, &corrupted[..])];
        for (what, text, ids) in texts {
            if let Some(at) = ids.iter().position(|&id| id as usize >= vocab) {
                let which = if shift > 0 && at == 0 { "the BOS token in front" } else { "token" };
                bail!("the {what} {:?}: {which} {:?} (id {}, position {at}) is outside the model's vocabulary of {vocab}", preview(text), tok.token_str(ids[at]), ids[at]);
            }
        }
        for (what, id) in [("answer", answer), ("distractor", distractor)] {
            if id as usize >= vocab {
                bail!("the {what} token {:?} (id {id}) is outside the model's vocabulary of {vocab}", tok.token_str(id));
            }
        }
    }
    Ok(TokenizedPair { row: p.row, clean, corrupted, answer, distractor, positions })
}

/// A text's first 40 characters, for errors that name a prompt.
pub fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if text.chars().nth(40).is_some() {
        s.push('…');
    }
    s
}

/// A small deterministic generator (SplitMix64): the same seed gives the same dataset everywhere.
pub struct Rng(pub u64);

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

    /// Uniform in [0, 1), 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `k` distinct items of `from`.
    pub fn distinct<'a>(&mut self, from: &[&'a str], k: usize) -> Vec<&'a str> {
        let mut pool = from.to_vec();
        (0..k).map(|_| pool.swap_remove(self.below(pool.len()))).collect()
    }
}

/// `n` pairs of random tokens (corrupted at position `corrupt_at`, random answer and distractor), seeded:
/// inputs for benchmarks on random-weight models.
pub fn random_pairs(n: usize, len: usize, vocab: usize, seed: u64, corrupt_at: usize) -> Vec<TokenizedPair> {
    let mut rng = Rng(seed);
    let mut next = move || rng.below(vocab) as u32;
    (0..n)
        .map(|i| {
            let clean: Vec<u32> = (0..len).map(|_| next()).collect();
            let mut corrupted = clean.clone();
            // Another token at `corrupt_at` (a draw equal to the clean one would make the pair a no-op).
            corrupted[corrupt_at.min(len - 1)] = (clean[corrupt_at.min(len - 1)] + 1 + next() % (vocab as u32 - 1)) % vocab as u32;
            TokenizedPair { row: i + 1, clean, corrupted, answer: next(), distractor: next(), ..Default::default() }
        })
        .collect()
}
