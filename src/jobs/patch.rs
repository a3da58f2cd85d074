//! Patching sweeps (`run`, `path`): pairs → every patched run → arrays in memory, or a results
//! directory through its transaction, rechecked by `verify` afterwards.
use super::{Model, Progress};
use crate::data::{self, Checks, PairSource, Skipped, TokenizedPair};
use crate::engine::{Method, PatchSite};
use crate::results::Verification;
use crate::jobs::sweep::{sweep, SweepModel, SweepSpec, SweepSummary};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// A sweep: which pairs, what to patch, how, and where the results go.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchSpec {
    pub pairs: PairSource,
    /// Skip pairs whose prompts differ at more than this many positions.
    pub max_diff: Option<usize>,
    /// A pair failing a check is an error, not skipped.
    pub strict: bool,
    pub method: Method,
    /// Integrated gradients' steps (`--method eap-ig`; None: `DEFAULT_IG_STEPS`).
    pub ig_steps: Option<usize>,
    /// Patched runs of a directory run rechecked on the simplest path afterwards (0: none).
    pub verify: usize,
    /// What to patch and how, and where the results go (`out`: the run's directory; a shard's
    /// is inside it).
    pub sweep: SweepSpec,
}

/// What a sweep did.
pub struct PatchReport {
    pub summary: SweepSummary,
    /// Pairs left out, with `row_unit` ("line", "row") saying what their rows count.
    pub skipped: Vec<Skipped>,
    pub row_unit: &'static str,
    /// The directory written (a shard's own), if any.
    pub out: Option<PathBuf>,
    pub verification: Option<Verification>,
}

/// Runs `spec` on `model`.
pub fn patch(model: &Model, patch: &PatchSpec, progress: &mut dyn Progress) -> Result<PatchReport> {
    let spec = &patch.sweep;
    if spec.max_rows == Some(0) {
        bail!("--max-rows must be at least 1");
    }
    if spec.sites.is_empty() {
        bail!("--sites names no site");
    }
    const MAX_IG_STEPS: usize = 10_000;
    match (patch.method, patch.ig_steps) {
        (Method::EapIg, Some(0)) => bail!("--ig-steps must be at least 1"),
        // Each step is a forward and backward pass of every pair: EAP-IG uses 5 to 100.
        (Method::EapIg, Some(n)) if n > MAX_IG_STEPS => bail!("--ig-steps {n} is more than {MAX_IG_STEPS}: each step is a forward and backward pass of every pair (EAP-IG uses 5 to 100)"),
        (Method::EapIg, _) => {}
        (_, Some(_)) => bail!("--ig-steps is an option of --method eap-ig"),
        (_, None) => {}
    }
    if patch.method != Method::Exact {
        if let Some(s) = spec.sites.iter().find(|&&s| s.is_path() && s != PatchSite::Edges) {
            bail!("--method {} estimates overwrites of one activation or edges, not paths ({}): use --method exact", patch.method.name(), s.name());
        }
        if !spec.reuse {
            bail!("--no-reuse is an option of --method exact ({} runs no patched forward passes)", patch.method.name());
        }
    }
    if spec.out.is_none() && (spec.resume || spec.overwrite || spec.shard.is_some()) {
        bail!("--resume, --overwrite and --shard are options of a run into a results directory (--out)");
    }
    let c = &model.config;
    if let Some([l, h]) = spec.senders.iter().flatten().find(|[l, h]| *l >= c.layers || *h >= c.heads) {
        bail!("--senders: head {l}.{h} does not exist (the model has {} layers of {} heads)", c.layers, c.heads);
    }
    // A head of the last layer sends to no later head: with only such senders, a path into q, k or
    // v would hold no run at all.
    if let Some(senders) = spec.senders.as_ref().filter(|s| s.iter().all(|[l, _]| l + 1 == c.layers)) {
        if let Some(site) = spec.sites.iter().find(|s| matches!(s, PatchSite::PathQ | PatchSite::PathK | PatchSite::PathV)) {
            let names: Vec<String> = senders.iter().map(|[l, h]| format!("{l}.{h}")).collect();
            bail!("--senders {}: heads of the last layer send to no later head, so {} would hold no run (their paths to the logits are --receivers resid_final)", names.join(","), site.name());
        }
    }
    let checks = Checks { max_diff: patch.max_diff, context: Some(c.context), vocab: Some(c.vocab), prepend_bos: spec.prepend_bos };
    let (pairs, skipped) = data::load_pairs(&patch.pairs, &model.tokenizer, checks, patch.strict)?;
    let out = match (&spec.out, spec.shard) {
        (Some(dir), Some(s)) => Some(dir.join(s.dir_name())),
        (dir, _) => dir.clone(),
    };
    // The whole command, the run and its verification, holds the directory.
    let _lock = out.as_deref().map(crate::results::lock::exclusive).transpose()?;
    let sweep_spec = SweepSpec { out: out.clone(), ..spec.clone() };
    let summary = on_model!(model, |on| -> SweepSummary { sweep(SweepModel::of(&on, method, ig_steps)?, model, pairs, skipped, spec, progress) },
        model: &'a Model = model, pairs: &'a [TokenizedPair] = &pairs, skipped: &'a [Skipped] = &skipped, spec: &'a SweepSpec = &sweep_spec,
        method: Method = patch.method, ig_steps: Option<usize> = patch.ig_steps, progress: &'a mut dyn Progress = progress)?;
    let verification = match &out {
        Some(dir) if patch.verify > 0 => Some(crate::jobs::verify::verify(dir, patch.verify, None, Some(model))?),
        _ => None,
    };
    Ok(PatchReport { summary, skipped, row_unit: patch.pairs.row_unit(), out, verification })
}

/// `q,k,v,resid_final` → the path sites `path_q`, … (each sender's edges to those receivers).
pub fn path_sites(receivers: &str) -> Result<Vec<PatchSite>> {
    let mut sites = Vec::new();
    for r in receivers.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        match r {
            "q" | "k" | "v" | "resid_final" => sites.push(PatchSite::parse(&format!("path_{r}"))?),
            other => bail!("--receivers: unknown receiver {other:?} (q, k, v, resid_final)"),
        }
    }
    if sites.is_empty() {
        bail!("--receivers names no receiver (q, k, v, resid_final)");
    }
    Ok(sites)
}

/// `9.6,10.0` → [[9, 6], [10, 0]].
pub fn parse_senders(list: &str) -> Result<Vec<[usize; 2]>> {
    let mut out = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = s.split_once('.').and_then(|(l, h)| Some([l.trim().parse().ok()?, h.trim().parse().ok()?]));
        let Some(head) = parsed else { bail!("--senders: {s:?} is not layer.head, e.g. 9.9") };
        if !out.contains(&head) {
            out.push(head);
        }
    }
    if out.is_empty() {
        bail!("--senders names no head");
    }
    Ok(out)
}
