//! `patchbay circuit` and `patchbay faithfulness`: circuits from an edges run.
use crate::jobs::discovery::{self, CircuitOptions, FaithfulnessOptions};
use crate::jobs::options::Options;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CircuitArgs {
    /// A finished edges run (`patchbay edges`).
    run: PathBuf,
    #[command(flatten)]
    options: CircuitOptions,
}

pub fn circuit(a: CircuitArgs) -> Result<()> {
    let c = discovery::circuit(&a.options.settled().spec(a.run)?)?;
    let nodes = c.circuit.nodes.iter().filter(|&&n| n).count();
    println!("wrote {} and {}: {} edges between {nodes} nodes, of {} edges", c.json.display(), c.svg.display(), c.circuit.edge_count(), c.circuit.graph.edges.len());
    Ok(())
}

#[derive(Args)]
pub struct FaithfulnessArgs {
    /// A finished edges run (`patchbay edges`): its scores, pairs, metric and ablation.
    run: PathBuf,
    #[command(flatten)]
    options: FaithfulnessOptions,
}

pub fn faithfulness(a: FaithfulnessArgs) -> Result<()> {
    let spec = a.options.settled().spec(a.run)?;
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
