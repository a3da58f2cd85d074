//! `patchbay attribute`: the logit lens and direct logit attribution of each pair's clean run.
use crate::jobs::circuits::{attribute, AttributeOptions};
use crate::jobs::options::{BackendOptions, Options, DEFAULT_MODEL};
use crate::results::attribution;
use anyhow::Result;
use clap::Args;
use std::path::Path;

#[derive(Args)]
pub struct AttributeArgs {
    /// Hub id or model directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    options: AttributeOptions,
    #[command(flatten)]
    backend: BackendOptions,
}

pub fn run(a: AttributeArgs) -> Result<()> {
    let spec = a.options.settled().spec()?;
    if spec.out.is_none() {
        anyhow::bail!("give --out DIR: where the arrays go");
    }
    let model = a.backend.load(&a.model)?;
    let r = attribute(&model, &spec, &mut super::Bar::default())?;
    for s in &r.skipped {
        eprintln!("skipped {} {}: {}", r.row_unit, s.row, s.reason);
    }
    let out = spec.out.as_deref().unwrap_or(Path::new("."));
    println!(
        "wrote the logit lens and direct logit attribution of {} pair(s) to {}: {}, {}, {}, {}; next: patchbay analyze {}",
        r.listing.pairs.len(),
        out.display(),
        attribution::ACCUMULATED,
        attribution::COMPONENTS,
        attribution::HEADS,
        attribution::LISTING,
        out.display()
    );
    Ok(())
}
