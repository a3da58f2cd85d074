//! `patchbay inspect`: the token table and the top-k next-token table of one prompt.
use crate::jobs::options::BackendOptions;
use crate::jobs::inspect::inspect as job;
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// Hub id (downloaded into the HF cache) or a directory with config.json, model.safetensors, tokenizer.json.
    #[arg(long, default_value = "gpt2")]
    model: String,
    text: String,
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Put the BOS in front of the text where the tokenizer puts none (GPT-2's `<|endoftext|>`), as TransformerLens does by default.
    #[arg(long, overrides_with = "no_prepend_bos")]
    prepend_bos: bool,
    #[arg(long, overrides_with = "prepend_bos", hide = true)]
    no_prepend_bos: bool,
    /// Print JSON for scripts.
    #[arg(long, overrides_with = "no_json")]
    json: bool,
    #[arg(long, overrides_with = "json", hide = true)]
    no_json: bool,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let model = args.backend.load(&args.model)?;
    let report = job(&model, &args.text, args.top_k, args.prepend_bos)?;
    if args.json {
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
