//! The command line: argument parsing and printing over the library. No tensor math here.
mod attribute;
mod bench;
mod circuit;
mod doctor;
mod generate;
mod inspect;
mod patterns;
mod run;

use crate::backend::{BackendKind, BackendSpec, DType};
use crate::data::ioi::Corruption;
use crate::jobs::{Model, Progress};
use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "patchbay", version, about = "Batched activation patching on GPT-2-family models")]
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
    Path(run::PathArgs),
    /// Exact edge patching: every edge of the circuit graph (`patchbay graph`), the sender's
    /// clean-minus-corrupted output added to the receiver's input alone, as one row of the batched
    /// sweep; edges.npy [pairs, edges], the edge names in the manifest.
    #[command(args_override_self = true)]
    Edges(run::EdgesArgs),
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
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        n: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Corruption::Abc)]
        corruption: Corruption,
        /// Model whose tokenizer checks names are single tokens and places the named positions.
        #[arg(long, default_value = "gpt2")]
        model: String,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing --out file.
        #[arg(long, overrides_with = "no_overwrite")]
        overwrite: bool,
        #[arg(long, overrides_with = "overwrite", hide = true)]
        no_overwrite: bool,
    },
    /// Recheck random patched runs of a finished run on the simplest path (one row per forward
    /// pass, no reuse, no fusion); the result goes into its manifest.
    Verify {
        /// A results directory written by `patchbay run`.
        dir: PathBuf,
        /// How many patched runs to recompute (all of them when fewer).
        #[arg(long, default_value_t = 32)]
        rows: usize,
        /// Where to recompute [default: the run's backend and dtype, without fusion; the CPU for a CUDA run].
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// The model's computational graph as circuit discovery scores it (EAP-IG's convention): the
    /// input, every head, every MLP and the logits; an edge from every earlier writer to each
    /// head's q, k and v input, each MLP's input and the logits.
    Graph {
        /// Hub id or model directory (only its config.json is read).
        #[arg(long, default_value = "gpt2")]
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

/// Where the tensors run. In a TOML config: backend, device, dtype, fusion, threads.
#[derive(Args, Clone, Debug, Default)]
pub struct BackendArgs {
    /// cpu (default), wgpu (Vulkan/Metal/DX12) or cuda; GPU backends are Cargo features.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// GPU index.
    #[arg(long)]
    pub device: Option<usize>,
    /// Compute precision: f32 (default; exact products on cuda), tf32 (cuda: f32 values, TF32
    /// tensor-core products), f16 (wgpu, cuda), bf16 (cuda).
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// Turn on burn's kernel fusion on GPU backends (off by default: burn 0.21's fusion has given
    /// wrong results; see the README).
    #[arg(long, overrides_with = "no_fusion")]
    pub fusion: bool,
    #[arg(long, overrides_with = "fusion", hide = true)]
    pub no_fusion: bool,
    /// CPU backend: worker threads [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BackendArgs {
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            kind: self.backend.unwrap_or(BackendKind::Cpu),
            device: self.device.unwrap_or(0),
            dtype: self.dtype.unwrap_or(DType::F32),
            fusion: self.fusion,
        }
    }

    /// The spec when one was given (else None: the run's own), with the CPU thread count set.
    pub fn given(&self) -> Result<Option<BackendSpec>> {
        if let Some(n) = self.threads {
            crate::backend::set_cpu_threads(n)?;
        }
        let given = self.backend.is_some() || self.device.is_some() || self.dtype.is_some() || self.fusion;
        Ok(given.then(|| self.spec()))
    }

    /// The spec, with the CPU thread count set: for work on no model file (`bench`).
    pub fn configure(&self) -> Result<BackendSpec> {
        if let Some(n) = self.threads {
            crate::backend::set_cpu_threads(n)?;
        }
        Ok(self.spec())
    }

    /// The model `model` loaded on this backend.
    pub fn load(&self, model: &str) -> Result<Model> {
        Model::load(model, self.spec(), self.threads)
    }
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

/// One option of a TOML config: where it was written (`FILE:LINE: \`key\``), its flag, and the
/// command-line arguments it stands for.
pub struct ConfigOption {
    pub at: String,
    pub flag: String,
    pub args: Vec<String>,
}

/// A TOML config's options as command-line arguments, to be placed before the command line's
/// (ripgrep's way: the command line overrides the file, every boolean has its `--no-` form).
/// Keys are `command`'s long options with underscores for dashes; `columns` is a table.
pub fn config_args(path: &Path, command: &clap::Command) -> Result<Vec<ConfigOption>> {
    use toml::Spanned;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // FILE:LINE or FILE:LINE:COLUMN, as compilers write it.
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |s| {
            let before = &text[..s.start.min(text.len())];
            format!(":{}:{}", line(s.start), before.chars().rev().take_while(|&c| c != '\n').count() + 1)
        });
        let message: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        anyhow::anyhow!("{}{at}: {}", path.display(), message.join("; "))
    })?;
    let known: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    let mut options = Vec::new();
    for (key, value) in table {
        let at = format!("{}:{}: `{}`", path.display(), line(key.span().start), key.get_ref());
        let flag = key.get_ref().replace('_', "-");
        if !known.contains(&flag.as_str()) {
            bail!("{at}: unknown option (the options are the command's flags, with underscores for dashes)");
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => bail!("{at}: must be a string or a number, not {}", other.type_str()),
        };
        let args = match value.get_ref() {
            toml::Value::Boolean(true) => vec![format!("--{flag}")],
            toml::Value::Boolean(false) => vec![match flag.strip_prefix("no-") {
                Some(positive) => format!("--{positive}"),
                None => format!("--no-{flag}"),
            }],
            // `--flag=value`, one argument: a value starting with '-' stays a value, and a value a
            // boolean flag does not take is an error clap names by its flag (and so by this key).
            toml::Value::Array(items) => vec![format!("--{flag}={}", items.iter().map(scalar).collect::<Result<Vec<_>>>()?.join(","))],
            toml::Value::Table(t) if flag == "columns" => {
                let kv = t.iter().map(|(k, v)| Ok(format!("{k}={}", scalar(v)?))).collect::<Result<Vec<_>>>()?;
                vec![format!("--{flag}={}", kv.join(","))]
            }
            toml::Value::Table(_) => bail!("{at}: must be a string, a number or a list, not a table (only `columns` is a table)"),
            v => vec![format!("--{flag}={}", scalar(v)?)],
        };
        options.push(ConfigOption { at, flag, args });
    }
    Ok(options)
}

/// `run` or `path` arguments (without the program and command names) → the library's run, with
/// a named config file's options placed before them.
pub fn plan(command: &str, args: &[String]) -> Result<run::RunPlan> {
    let parse = |argv: &[String]| -> Result<Command> {
        let argv = ["patchbay".to_string(), command.to_string()].into_iter().chain(argv.iter().cloned());
        Cli::try_parse_from(argv).map(|c| c.command).map_err(|e| anyhow::anyhow!("{}", e.render().to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string()))
    };
    let first = parse(args)?;
    let config = match &first {
        Command::Run(a) => a.config.clone(),
        Command::Path(a) => a.run.config.clone(),
        Command::Edges(a) => a.run.config.clone(),
        _ => bail!("{command} is not run, path or edges"),
    };
    let command_line = match config {
        None => first,
        Some(path) => {
            let sub = Cli::command().find_subcommand(command).cloned().expect("run, path and edges are subcommands");
            let options = config_args(&path, &sub)?;
            let all: Vec<String> = options.iter().flat_map(|o| o.args.iter().cloned()).chain(args.iter().cloned()).collect();
            // The command line parsed alone, so the file's options are at fault: name the one clap names.
            parse(&all).map_err(|e| {
                let text = e.to_string();
                match options.iter().find(|o| text.contains(&format!("'--{}", o.flag)) || text.contains(&format!("'--no-{}", o.flag))) {
                    Some(o) => anyhow::anyhow!("{}: {text}", o.at),
                    None => e.context(format!("with the options of {}", path.display())),
                }
            })?
        }
    };
    match command_line {
        Command::Run(a) => a.plan(None),
        Command::Path(a) => a.plan(),
        Command::Edges(a) => a.plan(),
        _ => unreachable!("parsed as {command}"),
    }
}

pub fn main() -> Result<()> {
    // Parsed once here for --help and usage errors; run and path again with their config's options.
    match Cli::parse().command {
        Command::Inspect(args) => inspect::inspect(args),
        Command::Run(_) | Command::Path(_) | Command::Edges(_) => {
            let argv: Vec<String> = std::env::args().collect();
            run::run(plan(&argv[1], &argv[2..])?)
        }
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
        Command::Ioi { n, seed, corruption, model, out, overwrite, .. } => {
            let tok = crate::jobs::datasets::tokenizer_of(&model)?;
            let spec = crate::jobs::datasets::IoiSpec { n: n as usize, seed, corruption, out: Some(out.clone()), overwrite };
            let pairs = crate::jobs::datasets::ioi(&tok, &spec)?;
            println!("wrote {} IOI pairs ({corruption:?} corruption) to {}", pairs.len(), out.display());
            Ok(())
        }
        Command::Merge { sources, out, overwrite, .. } => {
            let (shards, default_out) = crate::jobs::shard::shards_of(&sources)?;
            let Some(out) = out.or(default_out) else { anyhow::bail!("give --out for the merged run") };
            let m = crate::results::merge(&shards, &out, overwrite)?;
            println!("merged {} shards ({} pairs) into {}", shards.len(), m.pairs.len(), out.display());
            Ok(())
        }
        Command::Verify { dir, rows, backend } => {
            let v = crate::jobs::verify::verify(&dir, rows, backend.given()?, None)?;
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
