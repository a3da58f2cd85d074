//! `patchbay circuit` and `patchbay faithfulness`: circuits from an edges run.
use crate::jobs::options::BackendOptions;
use crate::analysis::circuit::Selection;
use crate::jobs::discovery::{self, CircuitSpec, FaithfulnessSpec};
use anyhow::Result;
use clap::{ArgGroup, Args};
use std::path::PathBuf;

#[derive(Args)]
#[command(group(ArgGroup::new("selection").required(true).args(["top_n", "threshold", "greedy"])))]
pub struct CircuitArgs {
    /// A finished edges run (`patchbay edges`).
    run: PathBuf,
    /// The N edges of highest |score| (EAP-IG's apply_topn).
    #[arg(long, value_name = "N")]
    top_n: Option<usize>,
    /// Every edge whose |score| is at least T (EAP-IG's apply_threshold).
    // (Values may start with '-': `--threshold -inf` is a number, not a flag.)
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    threshold: Option<f32>,
    /// N edges chosen greedily from the logits backwards: at each step the best edge into a node
    /// already in the circuit (EAP-IG's apply_greedy).
    #[arg(long, value_name = "N")]
    greedy: Option<usize>,
    /// Rank by signed score instead of |score|.
    #[arg(long, overrides_with = "absolute")]
    no_absolute: bool,
    #[arg(long, overrides_with = "no_absolute", hide = true)]
    absolute: bool,
    /// Keep edges off every input-to-logits path (EAP-IG prunes them by default).
    #[arg(long, overrides_with = "prune")]
    no_prune: bool,
    #[arg(long, overrides_with = "no_prune", hide = true)]
    prune: bool,
    /// The Graph JSON to write [default: RUN/circuit.json]; the drawing goes beside it (.svg).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn circuit(a: CircuitArgs) -> Result<()> {
    let selection = match (a.top_n, a.threshold, a.greedy) {
        (Some(n), _, _) => Selection::TopN(n),
        (_, Some(t), _) => Selection::Threshold(t),
        (_, _, Some(n)) => Selection::Greedy(n),
        _ => unreachable!("clap requires one selection"),
    };
    let c = discovery::circuit(&CircuitSpec { run: a.run, selection, absolute: !a.no_absolute, prune: !a.no_prune, out: a.out })?;
    let nodes = c.circuit.nodes.iter().filter(|&&n| n).count();
    println!("wrote {} and {}: {} edges between {nodes} nodes, of {} edges", c.json.display(), c.svg.display(), c.circuit.edge_count(), c.circuit.graph.edges.len());
    Ok(())
}

#[derive(Args)]
pub struct FaithfulnessArgs {
    /// A finished edges run (`patchbay edges`): its scores, pairs, metric and ablation.
    run: PathBuf,
    /// Circuit sizes in edges, e.g. `10,20,50,100` [default: MIB's 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %,
    /// 5 %, 10 %, 20 %, 50 % and 100 % of the graph].
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Evaluate these circuits (EAP-IG's Graph JSON, from `patchbay circuit` or EAP-IG's own
    /// tooling) instead of choosing them by size.
    #[arg(long, value_delimiter = ',', conflicts_with = "sizes")]
    circuits: Vec<PathBuf>,
    /// Choose each circuit greedily from the logits backwards (EAP-IG's apply_greedy) instead of
    /// the top N edges.
    #[arg(long, overrides_with = "no_greedy")]
    greedy: bool,
    #[arg(long, overrides_with = "greedy", hide = true)]
    no_greedy: bool,
    /// Rank by signed score instead of |score|.
    #[arg(long, overrides_with = "absolute")]
    no_absolute: bool,
    #[arg(long, overrides_with = "no_absolute", hide = true)]
    absolute: bool,
    /// Keep edges off every input-to-logits path.
    #[arg(long, overrides_with = "prune")]
    no_prune: bool,
    #[arg(long, overrides_with = "no_prune", hide = true)]
    prune: bool,
    /// (circuit, pair) rows per forward pass [default: from the device's memory].
    #[arg(long)]
    max_rows: Option<usize>,
    /// Draw (faithfulness_circuit.svg, with its Graph JSON) the smallest circuit whose
    /// faithfulness reaches F, else the most faithful.
    #[arg(long, value_name = "F", default_value_t = discovery::DEFAULT_DRAW_AT, allow_hyphen_values = true)]
    draw_at: f64,
    /// The directory faithfulness.{json,npy,png,svg} go into [default: RUN].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to evaluate [default: the run's backend].
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn faithfulness(a: FaithfulnessArgs) -> Result<()> {
    let spec = FaithfulnessSpec {
        run: a.run,
        sizes: a.sizes,
        circuits: a.circuits,
        greedy: a.greedy,
        absolute: !a.no_absolute,
        prune: !a.no_prune,
        max_rows: a.max_rows,
        backend: a.backend.given()?,
        draw_at: a.draw_at,
        out: a.out,
    };
    let f = discovery::faithfulness(&spec, None, &mut super::Bar::default())?;
    let out = spec.out.as_deref().unwrap_or(&spec.run).display().to_string();
    for ((n, e), v) in f.sizes.iter().zip(&f.edges).zip(&f.faithfulness) {
        println!("{n:>7} edges ({e} after pruning): faithfulness {v:.4}");
    }
    println!(
        "wrote {out}/faithfulness.json, .npy, .png, .svg: {} pair(s); whole graph {:.4}, empty circuit {:.4}; CPR {:.4}, CMD {:.4}",
        f.pairs, f.whole_graph, f.empty_circuit, f.cpr, f.cmd
    );
    println!("wrote {out}/faithfulness_circuit.json and .svg: {} edges, faithfulness {:.4} ({})", f.drawn.edges, f.drawn.faithfulness, f.why_drawn());
    Ok(())
}
