//! manifest.json: what a results directory holds and how to read it, and every file name a run
//! and its analysis write there.
use super::npy::Dtype;
use crate::backend::BackendSpec;
use crate::data::Skipped;
use crate::engine::{Ablation, Direction, Layout, Method, Metric, PatchSite, Runs};
use crate::model::{ModelConfig, SiteKind};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const MANIFEST: &str = "manifest.json";
pub const SUMMARY_JSON: &str = "summary.json";
pub const SUMMARY_CSV: &str = "summary.csv";
/// `analyze --compare`'s correlations with another run.
pub const COMPARE_JSON: &str = "compare.json";
/// The two baselines' metrics and the pairs' token lengths.
pub const BASELINE_CLEAN: &str = "baseline_clean.npy";
pub const BASELINE_CORRUPTED: &str = "baseline_corrupted.npy";
pub const LENGTHS: &str = "lengths.npy";
/// What `faithfulness` and `circuit` (by default) derive from an edges run, written into its directory.
pub const FAITHFULNESS_FILES: [&str; 6] =
    ["faithfulness.npy", "faithfulness.svg", "faithfulness.png", "faithfulness_circuit.json", "faithfulness_circuit.svg", "faithfulness.json"];
pub const CIRCUIT_FILES: [&str; 2] = ["circuit.json", "circuit.svg"];

/// The file of a site kind's ablation means.
pub fn ablation_means_file(kind: SiteKind) -> String {
    format!("{}.ablation_means.npy", kind.name())
}
/// The journal and the staged manifest of an unfinished run.
pub const PROGRESS: &str = "progress.json";
pub const STAGED_MANIFEST: &str = "manifest.json.partial";
/// What staged arrays end with until the run commits.
pub const PARTIAL: &str = ".partial";

/// Which of the whole run's cells a shard holds: its pairs, and of an edge run split by rows of
/// the graph, its edges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// Indices, ascending, into the whole run's pairs of this shard's pairs (its array rows).
    pub pairs: Vec<usize>,
    pub pairs_total: usize,
    /// The graph's edges [start, end) this shard computed for each of its pairs (the layout's
    /// `edges`); absent: every cell of its pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<[usize; 2]>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRef {
    pub id: u32,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairEntry {
    /// Line (JSONL, CSV) or row (Parquet) of the source the pair came from, 1-based.
    pub row: usize,
    pub length: usize,
    pub clean_tokens: Vec<u32>,
    pub corrupted_tokens: Vec<u32>,
    pub clean_strs: Vec<String>,
    pub corrupted_strs: Vec<String>,
    pub answer: TokenRef,
    pub distractor: TokenRef,
    #[serde(default)]
    pub positions: BTreeMap<String, usize>,
}

impl PairEntry {
    /// The pair as the engine runs it.
    pub fn tokenized(&self) -> crate::data::TokenizedPair {
        crate::data::TokenizedPair { row: self.row, clean: self.clean_tokens.clone(), corrupted: self.corrupted_tokens.clone(), answer: self.answer.id, distractor: self.distractor.id, positions: self.positions.clone() }
    }

    pub fn new(p: &crate::data::TokenizedPair, tok: &crate::tokenizer::Tokenizer) -> Self {
        let token = |id| TokenRef { id, token: tok.token_str(id) };
        Self {
            row: p.row,
            length: p.len(),
            clean_tokens: p.clean.clone(),
            corrupted_tokens: p.corrupted.clone(),
            clean_strs: tok.token_strs(&p.clean),
            corrupted_strs: tok.token_strs(&p.corrupted),
            answer: token(p.answer),
            distractor: token(p.distractor),
            positions: p.positions.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteEntry {
    pub name: String,
    pub file: String,
    pub axes: Vec<String>,
    pub shape: Vec<usize>,
    /// TransformerLens hook patched, `{layer}` standing for the layer.
    pub hook: String,
    /// The `edge` axis' names (EAP-IG's, in its order), for the edges site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<String>,
}

/// The check of a finished run against the simplest path (`run --verify`, `patchbay verify`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Where the check ran (the run's backend and dtype, or the CPU for a CUDA run), without
    /// fusion, one row per forward pass, no reuse.
    pub backend: BackendSpec,
    pub rows: usize,
    #[serde(with = "named_float")]
    pub tolerance: f32,
    #[serde(with = "named_float")]
    pub max_abs_diff: f32,
    /// Rows that differed by more than the tolerance, e.g. `resid_pre[pair 3, layer 2, position 5]`.
    pub failed: Vec<String>,
    /// The failed patched runs and baselines, which every later check recomputes too: a recorded
    /// failure is cleared only by recomputing it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_cells: Vec<FailedCell>,
}

/// A value a check found wrong: cell `cell` of pair `pair` of the manifest's site `site`, or of
/// a baseline (`site` None; cell 0 clean, 1 corrupted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCell {
    pub site: Option<usize>,
    pub pair: usize,
    pub cell: usize,
}

/// A float JSON cannot hold as a number (NaN, ±inf) written as its name ("NaN", "inf", "-inf"),
/// so the manifest always parses; `null` (written so by earlier versions) reads as NaN.
mod named_float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f32(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Named {
        Number(f32),
        Name(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        match Option::<Named>::deserialize(d)? {
            Some(Named::Number(v)) => Ok(v),
            None => Ok(f32::NAN),
            Some(Named::Name(n)) => match n.as_str() {
                "NaN" => Ok(f32::NAN),
                "inf" => Ok(f32::INFINITY),
                "-inf" => Ok(f32::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("{other:?} is not a number (nor NaN, inf, -inf)"))),
            },
        }
    }
}

/// manifest.json: everything needed to read and interpret a results directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub patchbay_version: String,
    pub model: String,
    /// The model files' fingerprint (`ModelFiles::fingerprint`; empty in runs written before it).
    #[serde(default)]
    pub weights: String,
    pub config: ModelConfig,
    pub backend: BackendSpec,
    /// How the site arrays were computed (`run --method`): exact patched runs, or attribution
    /// patching's linear estimates of them. Runs written before there was a choice are exact.
    #[serde(default)]
    pub method: Method,
    /// EAP-IG's step count (`--method eap-ig --ig-steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ig_steps: Option<usize>,
    /// Exact runs only: rows joined at their layer and position from the corrupted run.
    pub reuse: bool,
    /// Provable no-op runs written as the corrupted baseline, not computed (`run --no-skip`
    /// turns it off). Runs before skipping existed computed everything.
    #[serde(default)]
    pub skip: bool,
    /// This run's (shard's) patched runs, computed and skipped.
    #[serde(default)]
    pub runs: Runs,
    /// Patched runs per forward pass (attribution: pairs per forward and backward pass).
    pub max_rows: usize,
    pub metric: String,
    /// Which metric the arrays hold (`--metric`); runs written before there was a choice hold logit_diff.
    #[serde(default)]
    pub metric_name: Metric,
    /// `run --prepend-bos`: every prompt starts with the BOS token; pairs' tokens and named
    /// positions include it.
    #[serde(default)]
    pub prepend_bos: bool,
    /// The BOS token in front of every prompt, whoever put it there (`--prepend-bos`, or the
    /// tokenizer's post-processor: Llama 3's); none when none is. Absent in runs before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos: Option<u32>,
    /// Which run patches are written into (`--direction`); runs before the choice denoised.
    #[serde(default)]
    pub direction: Direction,
    /// What patches write (`--ablation`); runs before the choice resampled.
    #[serde(default)]
    pub ablation: Ablation,
    /// A mean ablation's means, one array per site kind, with a hash of their values: part of the
    /// run's identity, so a resume, a shard or a check with other means is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ablation_means: Vec<MeansEntry>,
    pub layout: Layout,
    pub sites: Vec<SiteEntry>,
    /// [pairs] f32 files of the two baselines, and [pairs] int32 token lengths.
    pub baseline_clean: String,
    pub baseline_corrupted: String,
    pub lengths: String,
    /// Fingerprint of the whole run's pairs (all shards'), as tokenized.
    pub dataset: String,
    pub pairs: Vec<PairEntry>,
    /// Pairs of the source left out, and why.
    pub skipped: Vec<Skipped>,
    pub shard: Option<ShardInfo>,
    /// Not part of the run's identity: added after it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verification>,
    /// Matrix-product kernels the exact-f32 tuner excluded in the run's process because they
    /// disagreed with the naive kernel (`backend::exact`), one line each. Not part of the run's
    /// identity: added after it finishes, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels_excluded: Vec<String>,
}

/// One site kind's ablation means (`engine::Means`): `[layers, ...]`, f32.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeansEntry {
    /// The site kind (`resid_pre`, `z`, `pattern`, ...).
    pub kind: String,
    pub file: String,
    pub shape: Vec<usize>,
    /// xxh3 (64 bits, hex) of the values' little-endian bytes.
    pub xxh3: String,
}

impl MeansEntry {
    pub fn hash(values: &[f32]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
    }
}

/// An array of a run: file name, element type and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArraySpec {
    pub file: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// FNV-1a of a value's JSON (keys sorted by serde_json's map): equal values, equal fingerprints.
pub fn fingerprint(value: &impl Serialize) -> String {
    let json = serde_json::to_value(value).expect("serialisable").to_string();
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let bytes = super::read_own(&path).with_context(|| format!("{} is not a patchbay results directory (no {MANIFEST})", dir.display()))?;
        Self::parse(&bytes, &path)
    }

    /// A manifest from the bytes of `path`, refused when it names a file patchbay would not
    /// write: a results directory is untrusted input, and its manifest must not make patchbay
    /// read, write or delete anything but the run's own files.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).with_context(|| format!("reading {}", path.display()))?;
        m.check().with_context(|| format!("{}", path.display()))?;
        Ok(m)
    }

    /// What the manifest says that patchbay derives itself: every file it names is the one of a
    /// site patchbay knows, and the edges site's names are the graph's, in its order.
    pub fn check(&self) -> Result<()> {
        let mismatch = |field: &str, got: &str, want: &str| {
            anyhow::anyhow!("{field} is {got:?}, not {want:?}: a results directory's files are named by patchbay, not by its manifest")
        };
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.sites {
            let site = PatchSite::parse(&s.name).map_err(|_| anyhow::anyhow!("site {:?} is not a site patchbay knows", s.name))?;
            if !seen.insert(site.name()) {
                anyhow::bail!("site {} is listed twice", s.name);
            }
            if s.file != site_file(site.name()) {
                return Err(mismatch(&format!("site {}'s file", s.name), &s.file, &site_file(site.name())));
            }
            crate::limits::product(&format!("site {}'s shape", s.name), &s.shape)?;
            if site == PatchSite::Edges {
                self.check_edge_names(s)?;
            }
        }
        for (field, got, want) in [("baseline_clean", &self.baseline_clean, BASELINE_CLEAN), ("baseline_corrupted", &self.baseline_corrupted, BASELINE_CORRUPTED), ("lengths", &self.lengths, LENGTHS)] {
            if got != want {
                return Err(mismatch(field, got, want));
            }
        }
        let mut kinds = std::collections::BTreeSet::new();
        for e in &self.ablation_means {
            let kind = SiteKind::parse(&e.kind).map_err(|_| anyhow::anyhow!("ablation means of {:?}: not a site kind patchbay knows", e.kind))?;
            if !kinds.insert(kind) {
                anyhow::bail!("ablation means of {} are listed twice", e.kind);
            }
            if e.file != ablation_means_file(kind) {
                return Err(mismatch(&format!("ablation means {}'s file", e.kind), &e.file, &ablation_means_file(kind)));
            }
        }
        Ok(())
    }

    /// The edges site names every edge of the model's graph, in EAP-IG's order (a list renamed,
    /// swapped or cut would label the scores wrongly).
    fn check_edge_names(&self, s: &SiteEntry) -> Result<()> {
        let (layers, heads) = (self.config.layers, self.config.heads);
        let graph = crate::engine::Graph::bounded(layers, heads, self.config.parallel, "config")?;
        let total = graph.edges.len();
        if s.edges.len() != total || s.shape.get(1) != Some(&total) {
            anyhow::bail!("site edges names {} edges and has shape {:?}; the graph of {layers} layers × {heads} heads has {total}", s.edges.len(), s.shape);
        }
        if let Some((i, (name, edge))) = s.edges.iter().zip(&graph.edges).enumerate().find(|(_, (n, e))| **n != e.to_string()) {
            anyhow::bail!("site edges names edge {i} {name:?}, but the graph's edge {i} is {edge}: the names are not the graph's");
        }
        Ok(())
    }

    /// The fields in which `other` is another run than this one (`weights`, `pairs`, `sites`,
    /// `config`, ...), as a list for a message.
    pub fn differences(&self, other: &Manifest) -> String {
        let (a, b) = (serde_json::to_value(self).unwrap_or_default(), serde_json::to_value(other).unwrap_or_default());
        let empty = serde_json::Map::new();
        let (a, b) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| !["verify", "kernels_excluded"].contains(&k.as_str()) && a.get(*k) != b.get(*k)).collect();
        keys.sort();
        keys.dedup();
        let named: Vec<String> = keys.iter().map(|k| if k.as_str() == "weights" { "weights (the model files' fingerprint)".to_string() } else { k.to_string() }).collect();
        named.join(", ")
    }

    /// What makes two runs the same run: everything but the verification record and the
    /// kernels excluded on the way.
    pub fn identity(&self) -> String {
        fingerprint(&Self { verify: None, kernels_excluded: vec![], ..self.clone() })
    }

    /// Every array the run writes, sites first.
    pub fn arrays(&self) -> Vec<ArraySpec> {
        let pairs = self.pairs.len();
        let mut out: Vec<ArraySpec> = self.sites.iter().map(|s| ArraySpec { file: s.file.clone(), dtype: Dtype::F32, shape: s.shape.clone() }).collect();
        for file in [&self.baseline_clean, &self.baseline_corrupted] {
            out.push(ArraySpec { file: file.clone(), dtype: Dtype::F32, shape: vec![pairs] });
        }
        out.push(ArraySpec { file: self.lengths.clone(), dtype: Dtype::I32, shape: vec![pairs] });
        out.extend(self.ablation_means.iter().map(|m| ArraySpec { file: m.file.clone(), dtype: Dtype::F32, shape: m.shape.clone() }));
        out
    }

    /// What `analyze` writes for this run besides its listing, summary.json (`--compare`'s files
    /// are its own).
    pub fn analysis_files(&self) -> Vec<String> {
        let mut out = vec![SUMMARY_CSV.to_string()];
        for s in &self.sites {
            out.push(normalized_file(&s.name));
            for name in [s.name.clone(), format!("{}.by_name", s.name)] {
                out.extend(heatmap_files(&name));
            }
        }
        out
    }
}

/// A site's array.
pub fn site_file(site: &str) -> String {
    format!("{site}.npy")
}

/// Whether `name` is a file some patchbay command writes into a results directory (a run's, its
/// analysis', its staged files, what is derived from it): the only files `--overwrite` removes
/// and a journal may list for removal. Names come from the sites patchbay knows, never from a file.
pub fn is_own_file(name: &str) -> bool {
    use std::sync::OnceLock;
    static OWN: OnceLock<std::collections::BTreeSet<String>> = OnceLock::new();
    let own = OWN.get_or_init(|| {
        let mut out: std::collections::BTreeSet<String> = [MANIFEST, STAGED_MANIFEST, PROGRESS, SUMMARY_JSON, SUMMARY_CSV, COMPARE_JSON, BASELINE_CLEAN, BASELINE_CORRUPTED, LENGTHS]
            .into_iter()
            .chain(FAITHFULNESS_FILES)
            .chain(CIRCUIT_FILES)
            .map(String::from)
            .collect();
        for site in PatchSite::ALL.map(PatchSite::name) {
            out.insert(site_file(site));
            out.insert(normalized_file(site));
            out.extend(compare_files(site));
            out.extend(heatmap_files(site));
            out.extend(heatmap_files(&format!("{site}.by_name")));
        }
        out.extend(SiteKind::ALL.into_iter().map(ablation_means_file));
        out
    });
    own.contains(name.strip_suffix(PARTIAL).unwrap_or(name))
}

/// `analyze`'s normalized array of a site.
pub fn normalized_file(site: &str) -> String {
    format!("{site}.normalized.npy")
}

/// `analyze --compare`'s scatter plot of a site: PNG and SVG.
pub fn compare_files(site: &str) -> [String; 2] {
    [format!("{site}.compare.png"), format!("{site}.compare.svg")]
}

/// `analyze`'s heatmap of a summary (a site, or a site by named position): PNG and SVG.
pub fn heatmap_files(name: &str) -> [String; 2] {
    [format!("{name}.png"), format!("{name}.svg")]
}
