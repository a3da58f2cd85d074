//! Circuit discovery after an edges run (`patchbay edges`): choosing a circuit from its scores
//! (`circuit`: EAP-IG's top-n, threshold and greedy selections, its Graph JSON, a drawing), and
//! the faithfulness curve of circuits of growing size (`faithfulness`: every circuit a row of
//! one batched evaluation, MIB's CPR and CMD areas).
use super::{counted, Model, Progress};
use crate::analysis::circuit::{self, Circuit, Selection};
use crate::analysis::plot::{lines_png, lines_svg, Lines};
use crate::backend::BackendSpec;
use crate::data::TokenizedPair;
use crate::engine::{CircuitEval, Graph, Metric, Replacement};
use crate::results::manifest::{is_own_file, CIRCUIT_FILES, FAITHFULNESS_FILES};
use crate::results::{self, npy, write_atomic, Manifest};
use anyhow::{bail, Context, Result};
use super::options::{fold, BackendOptions, Options};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// MIB's circuit sizes, as fractions of the graph's edges.
pub const MIB_FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

#[derive(Clone, Debug)]
pub struct CircuitSpec {
    /// A finished edges run.
    pub run: PathBuf,
    pub selection: Selection,
    /// Rank edges by |score| (EAP-IG's default), not by signed score.
    pub absolute: bool,
    /// Keep only edges on a path from the input to the logits (EAP-IG's default).
    pub prune: bool,
    /// The Graph JSON written [default: RUN/circuit.json]; the drawing beside it (.svg).
    pub out: Option<PathBuf>,
}

pub struct Chosen {
    pub circuit: Circuit,
    pub json: PathBuf,
    pub svg: PathBuf,
}

impl Selection {
    fn describe(self) -> String {
        match self {
            Selection::TopN(n) => format!("top {n}"),
            Selection::Threshold(t) => format!("score ≥ {t}"),
            Selection::Greedy(n) => format!("greedy {n}"),
        }
    }
}

/// The circuit `spec` picks from the run's edge scores, written as EAP-IG's Graph JSON and drawn.
pub fn circuit(spec: &CircuitSpec) -> Result<Chosen> {
    let json = spec.out.clone().unwrap_or_else(|| spec.run.join(CIRCUIT_FILES[0]));
    let svg = json.with_extension("svg");
    // No file another command writes (a run's array or manifest, its analysis) is replaced.
    for path in [&json, &svg] {
        let name = path.file_name().and_then(|n| n.to_str()).with_context(|| format!("--out {} is not a file name", json.display()))?;
        if is_own_file(name) && !CIRCUIT_FILES.contains(&name) {
            bail!("--out {}: {name} is a file of a patchbay run, not a circuit's; choose another name (circuit.json by default)", json.display());
        }
    }
    let parent = json.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // The directory written is held for the whole command, as every writer holds its output.
    let _lock = results::lock::exclusive(parent)?;
    let (m, scores) = Circuit::scores_of_run(&spec.run)?;
    let c = Circuit::select(Graph::of(&m.config), scores, spec.selection, spec.absolute, spec.prune)?;
    write_atomic(&json, &c.to_json(m.config.d_model, Some(m.identity()))?)?;
    let title = format!("{} of {} edges ({}{}) — {} — {}", c.edge_count(), c.graph.edges.len(), spec.selection.describe(), if spec.absolute { ", by |score|" } else { "" }, m.metric, m.model);
    write_atomic(&svg, circuit::svg(&c, &title).as_bytes())?;
    Ok(Chosen { circuit: c, json, svg })
}

#[derive(Clone, Debug)]
pub struct FaithfulnessSpec {
    /// A finished edges run: its scores, pairs, metric and ablation.
    pub run: PathBuf,
    /// Circuit sizes in edges [default: MIB's, 0.1 % to 100 % of the graph].
    pub sizes: Option<Vec<usize>>,
    /// Circuits in EAP-IG's Graph JSON (from `circuit` or EAP-IG's tooling) evaluated instead of
    /// chosen by size: the curve's points are their edge counts.
    pub circuits: Vec<PathBuf>,
    /// EAP-IG's greedy selection instead of the top n.
    pub greedy: bool,
    pub absolute: bool,
    pub prune: bool,
    /// (circuit, pair) rows per forward pass [default: from the memory budget].
    pub max_rows: Option<usize>,
    /// Where to evaluate [default: the run's backend].
    pub backend: Option<BackendSpec>,
    /// The circuit drawn (faithfulness_circuit.{json,svg}): the smallest whose faithfulness
    /// reaches this, else the most faithful.
    pub draw_at: f64,
    /// The directory faithfulness.{json,npy,png,svg} go into [default: the run's].
    pub out: Option<PathBuf>,
}

/// How edges are ranked and kept, as EAP-IG's selections do (a flag group of `circuit` and
/// `faithfulness`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ranking {
    /// Rank by signed score instead of |score|.
    #[arg(long, overrides_with = "absolute")]
    #[serde(skip)]
    pub no_absolute: bool,
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_absolute", hide = true)]
    pub absolute: Option<bool>,
    /// Keep edges off every input-to-logits path (EAP-IG prunes them by default).
    #[arg(long, overrides_with = "prune")]
    #[serde(skip)]
    pub no_prune: bool,
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_prune", hide = true)]
    pub prune: Option<bool>,
}

impl Ranking {
    fn settle(&mut self) {
        fold(&mut self.absolute, &mut self.no_absolute);
        fold(&mut self.prune, &mut self.no_prune);
    }

    /// (rank by |score|, prune), EAP-IG's defaults (both) filled in.
    fn choice(&self) -> (bool, bool) {
        (self.absolute.unwrap_or(true), self.prune.unwrap_or(true))
    }
}

/// `circuit`'s options (`patchbay circuit RUN`, Python's `Result.circuit`): one of EAP-IG's
/// selections.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitOptions {
    /// The N edges of highest |score| (EAP-IG's apply_topn).
    #[arg(long, value_name = "N")]
    pub top_n: Option<usize>,
    /// Every edge whose |score| is at least T (EAP-IG's apply_threshold).
    // (Values may start with '-': `--threshold -inf` is a number, not a flag.)
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub threshold: Option<f32>,
    /// N edges chosen greedily from the logits backwards: at each step the best edge into a node
    /// already in the circuit (EAP-IG's apply_greedy).
    #[arg(long, value_name = "N")]
    pub greedy: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub ranking: Ranking,
    /// The Graph JSON to write [default: RUN/circuit.json]; the drawing goes beside it (.svg).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Options for CircuitOptions {
    fn settled(mut self) -> Self {
        self.ranking.settle();
        self
    }
}

impl CircuitOptions {
    /// The circuit of edges run `run` these options choose, every default filled in.
    pub fn spec(self, run: PathBuf) -> Result<CircuitSpec> {
        let selection = match (self.top_n, self.threshold, self.greedy) {
            (Some(n), None, None) => Selection::TopN(n),
            (None, Some(t), None) => Selection::Threshold(t),
            (None, None, Some(n)) => Selection::Greedy(n),
            _ => bail!("give one of --top-n, --threshold or --greedy"),
        };
        let (absolute, prune) = self.ranking.choice();
        Ok(CircuitSpec { run, selection, absolute, prune, out: self.out })
    }
}

/// `faithfulness`' options (`patchbay faithfulness RUN`, Python's `Model.faithfulness`).
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaithfulnessOptions {
    /// Circuit sizes in edges, e.g. `10,20,50,100` [default: MIB's 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %,
    /// 5 %, 10 %, 20 %, 50 % and 100 % of the graph].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Evaluate these circuits (EAP-IG's Graph JSON, from `patchbay circuit` or EAP-IG's own
    /// tooling) instead of choosing them by size.
    #[arg(long, value_delimiter = ',')]
    pub circuits: Option<Vec<PathBuf>>,
    /// Choose each circuit greedily from the logits backwards (EAP-IG's apply_greedy) instead of
    /// the top N edges.
    #[arg(long, num_args = 0, default_missing_value = "true", overrides_with = "no_greedy")]
    pub greedy: Option<bool>,
    #[arg(long, overrides_with = "greedy", hide = true)]
    #[serde(skip)]
    pub no_greedy: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub ranking: Ranking,
    /// (circuit, pair) rows per forward pass [default: from the device's memory].
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Draw (faithfulness_circuit.svg, with its Graph JSON) the smallest circuit whose
    /// faithfulness reaches F, else the most faithful [default: 0.8].
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub draw_at: Option<f64>,
    /// The directory faithfulness.{json,npy,png,svg} go into [default: RUN].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to evaluate [default: the run's backend, or the model Python loaded].
    #[command(flatten)]
    #[serde(flatten)]
    pub backend: BackendOptions,
}

impl Options for FaithfulnessOptions {
    fn settled(mut self) -> Self {
        fold(&mut self.greedy, &mut self.no_greedy);
        self.ranking.settle();
        fold(&mut self.backend.fusion, &mut self.backend.no_fusion);
        self
    }
}

impl FaithfulnessOptions {
    /// The faithfulness curve of edges run `run` these options ask for, every default filled in.
    pub fn spec(self, run: PathBuf) -> Result<FaithfulnessSpec> {
        if self.sizes.is_some() && self.circuits.is_some() {
            bail!("give --sizes or --circuits, not both");
        }
        let (absolute, prune) = self.ranking.choice();
        Ok(FaithfulnessSpec {
            run,
            sizes: self.sizes,
            circuits: self.circuits.unwrap_or_default(),
            greedy: self.greedy.unwrap_or(false),
            absolute,
            prune,
            max_rows: self.max_rows,
            backend: self.backend.given()?,
            draw_at: self.draw_at.unwrap_or(DEFAULT_DRAW_AT),
            out: self.out,
        })
    }
}

/// The faithfulness at which `faithfulness` draws a circuit, unless told: the share of the
/// behaviour IOI-scale circuit papers ask a circuit to recover.
pub const DEFAULT_DRAW_AT: f64 = 0.8;

/// The circuit of the curve that `faithfulness` writes and draws.
#[derive(Clone, Debug, Serialize)]
pub struct Drawn {
    /// Its index in `sizes`.
    pub index: usize,
    pub edges: usize,
    pub faithfulness: f64,
    /// Whether it reaches `draw_at` (else it is the most faithful circuit).
    pub reached: bool,
}

/// A faithfulness curve: per circuit size, the metric with only the circuit's edges from the
/// clean run (MIB: m(C)), normalized as (m(C) − m(∅)) / (m(N) − m(∅)), m(N) the whole graph's
/// (the clean run) and m(∅) the empty circuit's (every edge ablated).
#[derive(Clone, Debug, Serialize)]
pub struct Faithfulness {
    pub model: String,
    pub run: String,
    /// `Manifest::identity` of the run the curve is of: a curve beside another run is not its.
    pub run_identity: String,
    pub metric: String,
    pub ablation: String,
    pub selection: &'static str,
    pub absolute: bool,
    pub prune: bool,
    /// Edges asked for, ascending.
    pub sizes: Vec<usize>,
    /// `sizes` over the graph's edge count: the curve's x (MIB's).
    pub fractions: Vec<f64>,
    /// Edges left after pruning.
    pub edges: Vec<usize>,
    /// m(C), the mean over pairs.
    pub metric_mean: Vec<f64>,
    pub faithfulness: Vec<f64>,
    /// Standard error of `faithfulness` over pairs (of each pair's m(C) − m(∅), over the span).
    pub faithfulness_sem: Vec<f64>,
    pub whole_graph: f64,
    pub empty_circuit: f64,
    /// Area under the curve over `fractions` (trapezoids; MIB's circuit performance ratio).
    pub cpr: f64,
    /// Area between the curve and 1 (MIB's circuit–model difference).
    pub cmd: f64,
    pub draw_at: f64,
    pub drawn: Drawn,
    /// [sizes][pairs]: m(C) per pair (faithfulness.npy).
    #[serde(skip)]
    pub per_pair: Vec<Vec<f32>>,
    pub pairs: usize,
}

impl Faithfulness {
    /// Why `drawn` is the circuit drawn, in words.
    pub fn why_drawn(&self) -> String {
        if self.drawn.reached {
            format!("the smallest reaching {}", self.draw_at)
        } else {
            format!("none reaches {}: the most faithful", self.draw_at)
        }
    }
}

/// The faithfulness curve of the run in `spec.run`, on `loaded` where it is the run's model there.
pub fn faithfulness(spec: &FaithfulnessSpec, loaded: Option<&Model>, progress: &mut dyn Progress) -> Result<Faithfulness> {
    if !spec.draw_at.is_finite() {
        bail!("--draw-at must be a number, not {}", spec.draw_at);
    }
    // The directory written is held from the start, so the curve written is of the run read, and
    // no other writer of it (an --overwrite, another faithfulness) runs meanwhile.
    let out_dir = spec.out.clone().unwrap_or_else(|| spec.run.clone());
    let _lock = results::lock::exclusive(&out_dir)?;
    let (m, scores) = Circuit::scores_of_run(&spec.run)?;
    let graph = Graph::of(&m.config);
    let total = graph.edges.len();
    let (sizes, circuits): (Vec<usize>, Vec<Circuit>) = if spec.circuits.is_empty() {
        let mut sizes = spec.sizes.clone().unwrap_or_else(|| MIB_FRACTIONS.iter().map(|f| (f * total as f64) as usize).collect());
        if sizes.is_empty() {
            bail!("--sizes names no circuit size");
        }
        sizes.sort_unstable();
        sizes.dedup();
        let selection = |n| if spec.greedy { Selection::Greedy(n) } else { Selection::TopN(n) };
        let circuits = sizes.iter().map(|&n| Circuit::select(graph.clone(), scores.clone(), selection(n), spec.absolute, spec.prune).map_err(|e| anyhow::anyhow!("--sizes: {e}"))).collect::<Result<_>>()?;
        (sizes, circuits)
    } else {
        if spec.sizes.is_some() {
            bail!("give --sizes or --circuits, not both");
        }
        let mut read: Vec<Circuit> = Vec::new();
        for path in &spec.circuits {
            let c = Circuit::from_json(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?, path)?;
            if c.graph != graph {
                bail!("{}: a circuit of a graph of {} layers × {} heads; {} ran a model of {} × {}", path.display(), c.graph.layers, c.graph.heads, spec.run.display(), graph.layers, graph.heads);
            }
            read.push(c);
        }
        read.sort_by_key(Circuit::edge_count);
        (read.iter().map(Circuit::edge_count).collect(), read)
    };
    let backend = spec.backend.clone().or_else(|| loaded.map(|l| l.backend.clone())).unwrap_or_else(|| m.backend.clone());
    let mut own = None;
    let model = Model::of_run(&spec.run, &m, backend, loaded, &mut own)?;
    let pairs: Vec<TokenizedPair> = m
        .pairs
        .iter()
        .map(results::PairEntry::tokenized)
        .collect();
    let replacement = Replacement { ablation: m.ablation, means: results::read_means(&spec.run, &m, false)?.map(std::sync::Arc::new) };
    // The whole graph and the empty circuit, then the sizes.
    let mut masks = vec![vec![true; total], vec![false; total]];
    masks.extend(circuits.iter().map(|c| c.edges.clone()));
    let positions = pairs.iter().map(TokenizedPair::len).max().unwrap_or(1);
    let max_rows = spec.max_rows.unwrap_or_else(|| max_rows_for_budget(&m, positions, &model.backend));
    if max_rows == 0 {
        bail!("--max-rows must be at least 1");
    }
    progress.start((masks.len() * pairs.len()) as u64, "circuit runs");
    let metrics = on_model!(model, |on| -> Vec<Vec<f32>> {
        let eval = CircuitEval { model: on.model, metric, replacement, max_rows };
        counted(progress, |advance| eval.run(pairs, masks, advance))
    }, pairs: &'a [TokenizedPair] = &pairs, masks: &'a [Vec<bool>] = &masks, metric: Metric = m.metric_name, replacement: Replacement = replacement,
        max_rows: usize = max_rows, progress: &'a mut dyn Progress = progress)?;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    let (whole, empty) = (mean(&metrics[0]), mean(&metrics[1]));
    let span = whole - empty;
    let per_pair = metrics[2..].to_vec();
    let metric_mean: Vec<f64> = per_pair.iter().map(|v| mean(v)).collect();
    let faithfulness: Vec<f64> = metric_mean.iter().map(|&x| (x - empty) / span).collect();
    // Over pairs, each pair's circuit metric less its own empty circuit's.
    let faithfulness_sem = per_pair.iter().map(|v| sem(&v.iter().zip(&metrics[1]).map(|(c, e)| c - e).collect::<Vec<_>>()) / span.abs()).collect();
    let fractions: Vec<f64> = sizes.iter().map(|&n| n as f64 / total as f64).collect();
    let drawn = match faithfulness.iter().position(|&v| v >= spec.draw_at) {
        Some(index) => (index, true),
        None => ((0..faithfulness.len()).max_by(|&a, &b| faithfulness[a].total_cmp(&faithfulness[b])).unwrap_or(0), false),
    };
    let drawn = Drawn { index: drawn.0, edges: circuits[drawn.0].edge_count(), faithfulness: faithfulness[drawn.0], reached: drawn.1 };
    let area = |f: &dyn Fn(f64) -> f64| fractions.windows(2).zip(faithfulness.windows(2)).map(|(x, y)| (x[1] - x[0]) * (f(y[0]) + f(y[1])) / 2.0).sum::<f64>();
    let out = Faithfulness {
        model: m.model.clone(),
        run: spec.run.display().to_string(),
        run_identity: m.identity(),
        metric: m.metric.clone(),
        ablation: m.ablation.name().into(),
        selection: match (spec.circuits.is_empty(), spec.greedy) {
            (false, _) => "given circuits",
            (true, true) => "greedy",
            (true, false) => "top-n",
        },
        absolute: spec.absolute,
        prune: spec.prune,
        edges: circuits.iter().map(Circuit::edge_count).collect(),
        cpr: area(&|y| y),
        cmd: area(&|y| (1.0 - y).abs()),
        sizes,
        fractions,
        metric_mean,
        faithfulness,
        faithfulness_sem,
        whole_graph: whole,
        empty_circuit: empty,
        draw_at: spec.draw_at,
        drawn,
        pairs: pairs.len(),
        per_pair,
    };
    write(&out, &circuits[out.drawn.index], &out_dir, &m)?;
    Ok(out)
}

fn sem(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
}

/// Rows a pass may hold: per row the senders' differences (the largest tensor) and a block's
/// working set, under the backend's budget and single-buffer limit.
fn max_rows_for_budget(m: &Manifest, positions: usize, backend: &BackendSpec) -> usize {
    let c = &m.config;
    let senders = 1 + c.layers * (c.heads + 1);
    let deltas = 4 * positions * c.d_model * senders;
    let per_row = 3 * deltas + 4 * positions * (c.d_model * (9 * c.heads + 12) + 2 * c.d_mlp + 3 * c.heads * positions);
    let (budget, buffer) = super::memory::memory_limits(backend);
    (budget / per_row).min(buffer / deltas.max(1)).clamp(1, 4096)
}

/// The curve's files as one set (`outputs::write_set`: faithfulness.json, which names the run's
/// identity, last), in `dir`, whose lock the caller holds.
fn write(f: &Faithfulness, drawn: &Circuit, dir: &Path, m: &Manifest) -> Result<()> {
    let pairs = f.pairs;
    let values: Vec<f32> = f.per_pair.iter().flatten().copied().collect();
    let lines = Lines {
        title: format!("faithfulness ({}, {} ablation) — CPR {:.3}, CMD {:.3} — {}", f.selection, f.ablation, f.cpr, f.cmd, m.model),
        y_title: "(m(circuit) − m(empty)) / (m(whole graph) − m(empty)), by edges kept".into(),
        labels: f.sizes.iter().zip(&f.edges).map(|(n, e)| if n == e { n.to_string() } else { format!("{n}→{e}") }).collect(),
        series: vec![("faithfulness".into(), f.faithfulness.iter().map(|&v| v as f32).collect(), f.faithfulness_sem.iter().map(|&v| v as f32).collect())],
    };
    let d = &f.drawn;
    let title = format!("{} of {} edges, faithfulness {:.3} ({}, {}) — {} — {}", d.edges, drawn.graph.edges.len(), d.faithfulness, f.selection, f.why_drawn(), m.metric, m.model);
    let [npy_file, svg, png, circuit_json, circuit_svg, listing] = FAITHFULNESS_FILES;
    let files = vec![
        (npy_file.to_string(), npy::encode(&[f.sizes.len(), pairs], &values)),
        (svg.to_string(), lines_svg(&lines).into_bytes()),
        (png.to_string(), lines_png(&lines)?),
        (circuit_json.to_string(), drawn.to_json(m.config.d_model, Some(m.identity()))?),
        (circuit_svg.to_string(), circuit::svg(drawn, &title).into_bytes()),
    ];
    results::outputs::write_set(dir, (listing, serde_json::to_vec_pretty(f)?), files, &FAITHFULNESS_FILES[..5])
}

