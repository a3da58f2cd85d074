//! `patchbay inspect`: the token table and the top-k next-token table of one prompt.
use crate::jobs::inspect::InspectOptions;
use crate::jobs::options::{BackendOptions, Options, DEFAULT_MODEL};
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// Hub id (downloaded into the HF cache) or a directory with config.json, model.safetensors, tokenizer.json.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    text: String,
    #[command(flatten)]
    options: InspectOptions,
    #[command(flatten)]
    json: super::JsonFlag,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let model = args.backend.load(&args.model)?;
    let report = args.options.settled().run(&model, &args.text)?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} tokens", report.tokens.len());
    println!("{:>8} {:>8}  token", "position", "id");
    for t in &report.tokens {
        println!("{:>8} {:>8}  {:?}", t.position, t.id, t.token);
    }
    println!("\ntop {} next tokens", report.top_k.len());
    println!("{:>4} {:>8}  {:<20} {:>11}", "rank", "index", "token", "probability");
    for t in &report.top_k {
        println!("{:>4} {:>8}  {:<20} {:>11.4}", t.rank, t.id, format!("{:?}", t.token), t.prob);
    }
    Ok(())
}
