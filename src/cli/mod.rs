//! The command line: argument parsing and printing over the library. No tensor math here.
mod attribute;
mod bench;
mod circuit;
mod doctor;
mod generate;
mod inspect;
mod patterns;
mod run;

use crate::jobs::options::{Job, Options, DEFAULT_MODEL};
use crate::jobs::Progress;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "patchbay", version, about = "Batched activation patching and circuit discovery on GPT-2, Llama 3, Mistral, Qwen2/2.5/3, Pythia and Gemma 2")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize a prompt and show the model's top next tokens.
    Inspect(inspect::InspectArgs),
    /// Patch every (site, layer, position[, head]) of prompt pairs; write .npy results.
    // A config's options come first, so an option given again (on the command line) wins.
    #[command(args_override_self = true)]
    Run(run::RunArgs),
    /// Path patching: each sending head's write into later heads' q, k or v input, or the logits.
    #[command(args_override_self = true)]
    Path(run::RunArgs),
    /// Exact edge patching: every edge of the circuit graph (`patchbay graph`), the sender's
    /// clean-minus-corrupted output added to the receiver's input alone, as one row of the batched
    /// sweep; edges.npy [pairs, edges], the edge names in the manifest.
    #[command(args_override_self = true)]
    Edges(run::RunArgs),
    /// Choose a circuit from an edges run's scores, as EAP-IG does; write it as EAP-IG's Graph JSON
    /// (RUN/circuit.json) and draw it (circuit.svg).
    Circuit(circuit::CircuitArgs),
    /// The faithfulness curve of an edges run's circuits of growing size: each evaluated with only
    /// its edges from the clean run (MIB's m(C)), many circuits a batch; CPR and CMD areas.
    Faithfulness(circuit::FaithfulnessArgs),
    /// Normalize a run's results (clean = 1, corrupted = 0); summary and heatmaps. Of an
    /// `attribute` directory: mean and standard error, line plots and the heads' heatmap.
    Analyze {
        /// A results directory written by `patchbay run` or `patchbay attribute`.
        out: PathBuf,
        /// Another run of the same pairs (e.g. `--method exact` beside an attribution run): per
        /// shared site, the correlation of the two and a scatter plot, written into OUT.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// Generate IOI prompt pairs (BABA and ABBA templates) as JSONL with named positions.
    Ioi {
        #[command(flatten)]
        options: crate::jobs::datasets::IoiOptions,
        /// Model whose tokenizer checks names are single tokens and places the named positions.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
    },
    /// Recheck random patched runs of a finished run on the simplest path (one row per forward
    /// pass, no reuse, no fusion); the result goes into its manifest.
    Verify {
        /// A results directory written by `patchbay run`.
        dir: PathBuf,
        #[command(flatten)]
        options: crate::jobs::options::VerifyOptions,
    },
    /// The model's computational graph as circuit discovery scores it (EAP-IG's convention): the
    /// input, every head, every MLP and the logits; an edge from every earlier writer to each
    /// head's q, k and v input, each MLP's input and the logits.
    Graph {
        /// Hub id or model directory (only its config.json is read).
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Print every edge's name, one a line, in EAP-IG's order (`input->a0.h0<q>`, `a0.h1->m0`, …).
        #[arg(long)]
        edges: bool,
    },
    /// Benchmark a sweep on a random-weight model of a named shape: reuse vs --no-reuse.
    Bench(bench::BenchArgs),
    /// Localize a wrong backend: each step of the forward pass (layer norms, linear layers,
    /// attention products, softmax) on --backend against the cpu, from the same inputs.
    Doctor(doctor::DoctorArgs),
    /// Generate text from prompts (greedy or sampled), with a KV cache, batched.
    Generate(generate::GenerateArgs),
    /// Going backwards: put the tokens in front of a text that make it least perplexing, one a
    /// step (sampled candidates, the lowest perplexity kept).
    Prepend(generate::PrependArgs),
    /// Steering vectors: `steer make` takes the difference of two prompts' activations at a site
    /// (use it with `generate --steer`).
    #[command(subcommand)]
    Steer(SteerCommand),
    /// Perplexity of texts, and of each of their tokens.
    Perplexity(generate::PerplexityArgs),
    /// The top-k candidate next tokens at each position, and the overlap of several prompts' pools.
    Candidates(generate::CandidatesArgs),
    /// Attention patterns of prompts: .npy, a per-head heatmap grid and an offline HTML viewer.
    Patterns(patterns::PatternsArgs),
    /// The logit lens and direct logit attribution of pairs' clean runs (embeddings, layers, heads).
    Attribute(attribute::AttributeArgs),
    /// Combine the shards of a run (`run --shard K/N`) into one result.
    Merge {
        /// Shard directories, or one run directory holding shard-K-of-N directories.
        sources: Vec<PathBuf>,
        /// Where the merged run goes [default: the run directory holding the shards].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace another run in --out.
        #[arg(long, overrides_with = "no_overwrite")]
        overwrite: bool,
        #[arg(long, overrides_with = "overwrite", hide = true)]
        no_overwrite: bool,
    },
}

#[derive(Subcommand)]
enum SteerCommand {
    /// The clean prompt's activation at a site minus the corrupted one's, as a .npy vector.
    Make(generate::SteerMakeArgs),
}

/// The terminal's progress bar (indicatif), for the library's long jobs.
#[derive(Default)]
pub struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total: u64, unit: &str) {
        let template = format!("{{elapsed_precise}} {{wide_bar}} {{human_pos}}/{{human_len}} {unit} {{msg}}  {{per_sec}}  ETA {{eta}}");
        let style = indicatif::ProgressStyle::with_template(&template).expect("valid template");
        self.0 = Some(indicatif::ProgressBar::new(total).with_style(style));
    }

    fn advance(&mut self, n: u64) -> Result<()> {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
        Ok(())
    }

    fn note(&mut self, text: &str) {
        if let Some(b) = &self.0 {
            b.set_message(text.to_string());
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

/// `--json` (and `--no-json`): print JSON for scripts instead of tables.
#[derive(clap::Args, Clone, Debug)]
pub struct JsonFlag {
    /// Print JSON for scripts.
    #[arg(long, overrides_with = "no_json")]
    pub json: bool,
    #[arg(long, overrides_with = "json", hide = true)]
    no_json: bool,
}

/// Whether `args` (without the program's name) is a command line the CLI takes: parsed as `main`
/// parses it, nothing run (what the documentation tests ask of every command line it shows).
pub fn parses(args: &[String]) -> Result<()> {
    Cli::try_parse_from(std::iter::once("patchbay".to_string()).chain(args.iter().cloned())).map(|_| ()).map_err(|e| anyhow::anyhow!("{}", e.render().to_string().lines().next().unwrap_or_default()))
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Inspect(args) => inspect::inspect(args),
        Command::Run(args) => run::run(args.plan(Job::Run)?),
        Command::Path(args) => run::run(args.plan(Job::Path)?),
        Command::Edges(args) => run::run(args.plan(Job::Edges)?),
        Command::Graph { model, edges } => {
            let g = crate::jobs::circuits::graph(&model)?;
            if edges {
                for e in &g.edges {
                    println!("{e}");
                }
            } else {
                let c = g.counts();
                println!(
                    "{model} ({} layers × {} heads): {} nodes, {} edges ({} into heads' q, k and v inputs, {} into MLPs, {} into the logits)",
                    g.layers, g.heads, c.nodes, c.edges, c.into_heads, c.into_mlps, c.into_logits
                );
            }
            Ok(())
        }
        Command::Circuit(args) => circuit::circuit(args),
        Command::Faithfulness(args) => circuit::faithfulness(args),
        Command::Bench(args) => bench::bench(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Patterns(args) => patterns::run(args),
        Command::Generate(args) => generate::run_generate(args),
        Command::Prepend(args) => generate::run_prepend(args),
        Command::Steer(SteerCommand::Make(args)) => generate::run_steer_make(args),
        Command::Perplexity(args) => generate::run_perplexity(args),
        Command::Candidates(args) => generate::run_candidates(args),
        Command::Attribute(args) => attribute::run(args),
        Command::Ioi { options, model } => {
            let spec = options.settled().spec()?;
            let Some(out) = spec.out.clone() else { anyhow::bail!("give --out FILE.jsonl: where the pairs go") };
            let tok = crate::jobs::datasets::tokenizer_of(&model)?;
            let pairs = crate::jobs::datasets::ioi(&tok, &spec)?;
            println!("wrote {} IOI pairs ({:?} corruption) to {}", pairs.len(), spec.corruption, out.display());
            Ok(())
        }
        Command::Merge { sources, out, overwrite, .. } => {
            let (shards, default_out) = crate::jobs::shard::shards_of(&sources)?;
            let Some(out) = out.or(default_out) else { anyhow::bail!("give --out for the merged run") };
            let m = crate::results::merge(&shards, &out, overwrite)?;
            println!("merged {} shards ({} pairs) into {}", shards.len(), m.pairs.len(), out.display());
            Ok(())
        }
        Command::Verify { dir, options } => {
            let (rows, backend) = options.spec()?;
            let v = crate::jobs::verify::verify(&dir, rows, backend, None)?;
            println!(
                "verified {} patched runs of {} on {:?} {:?}: max |difference| {:.1e}, within the tolerance {:.0e}",
                v.rows,
                dir.display(),
                v.backend.kind,
                v.backend.dtype,
                v.max_abs_diff,
                v.tolerance
            );
            Ok(())
        }
        Command::Analyze { out, compare: Some(other) } => {
            let c = crate::analysis::compare::compare(&out, &other)?;
            for s in &c.sites {
                println!(
                    "{}: r = {:.4} over {} normalized values, r of the means over pairs = {:.4}, max |difference| {:.3}",
                    s.name, s.correlation, s.points, s.correlation_of_means, s.max_abs_diff
                );
            }
            let names: Vec<String> = c.sites.iter().map(|s| format!("{}.compare.png/.svg", s.name)).collect();
            println!("compared {} with {} on {} pair(s): wrote compare.json, {}", out.display(), other.display(), c.pairs, names.join(", "));
            Ok(())
        }
        Command::Analyze { out, .. } if crate::results::attribution::is_attribution(&out) => {
            let files = crate::analysis::attribution::analyze(&out)?;
            println!("analyzed the attribution in {}: {}", out.display(), files.join(", "));
            Ok(())
        }
        Command::Analyze { out, .. } => {
            let s = crate::analysis::analyze(&out)?;
            if let Some(v) = crate::results::Manifest::read(&out)?.verify.filter(|v| !v.failed.is_empty()) {
                eprintln!("warning: this run failed its verification ({} rows rechecked): {}", v.rows, crate::jobs::verify::summary(&v.failed));
            }
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
