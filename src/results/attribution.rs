//! A direct-logit-attribution directory (`patchbay attribute`): `attribution.json` (what was
//! computed, on which pairs, the labels of each axis) and its arrays. Written whole, each file
//! write-then-rename, the listing last: a directory with a listing holds all of it.
use super::{npy::read_own_f32, write_atomic, write_npy, PairEntry};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const LISTING: &str = "attribution.json";
pub const ACCUMULATED: &str = "accumulated.npy";
pub const COMPONENTS: &str = "components.npy";
pub const HEADS: &str = "heads.npy";
/// What `analyze` writes beside the arrays (its summary first).
pub const ANALYSIS: [&str; 7] = ["attribution_summary.json", "accumulated.png", "accumulated.svg", "components.png", "components.svg", "heads.png", "heads.svg"];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Listing {
    pub patchbay_version: String,
    pub model: String,
    pub prepend_bos: bool,
    /// What the arrays hold, in words.
    pub direction: String,
    pub layers: usize,
    pub heads: usize,
    /// Labels of accumulated.npy's second axis ([pairs, 2·layers + 1]) and components.npy's
    /// ([pairs, 2·layers + 2]); heads.npy is [pairs, layers, heads].
    pub accumulated_labels: Vec<String>,
    pub component_labels: Vec<String>,
    /// Per pair: logit(answer) − logit(distractor) at the last position, and the final norm's bias term b·u (0 for an RMSNorm),
    /// which with the components sums to it.
    pub logit_diff: Vec<f32>,
    pub bias_term: Vec<f32>,
    pub pairs: Vec<PairEntry>,
}

/// The arrays, row-major: accumulated [pairs, 2L+1], components [pairs, 2L+2], heads [pairs, L, H].
pub struct Arrays {
    pub accumulated: Vec<f32>,
    pub components: Vec<f32>,
    pub heads: Vec<f32>,
}

/// Whether `dir` holds an attribution (not a patching run).
pub fn is_attribution(dir: &Path) -> bool {
    dir.join(LISTING).exists()
}

pub fn write(dir: &Path, listing: &Listing, a: &Arrays, overwrite: bool) -> Result<()> {
    let _lock = super::lock::exclusive(dir)?;
    if !overwrite && (is_attribution(dir) || dir.join(super::MANIFEST).exists()) {
        bail!("{} already holds results: pass --overwrite to replace them, or choose another --out", dir.display());
    }
    let p = listing.pairs.len();
    // The listing goes last, and a replaced one first: never a listing beside other arrays, nor
    // the replaced result's analysis beside the new one.
    for old in [LISTING].iter().chain(&ANALYSIS) {
        super::remove_if_present(&dir.join(old))?;
    }
    write_npy(&dir.join(ACCUMULATED), &[p, listing.accumulated_labels.len()], &a.accumulated)?;
    write_npy(&dir.join(COMPONENTS), &[p, listing.component_labels.len()], &a.components)?;
    write_npy(&dir.join(HEADS), &[p, listing.layers, listing.heads], &a.heads)?;
    write_atomic(&dir.join(LISTING), &serde_json::to_vec_pretty(listing)?)
}

pub fn read(dir: &Path) -> Result<(Listing, Arrays)> {
    let path = dir.join(LISTING);
    let text = super::read_own(&path).with_context(|| format!("reading {}", path.display()))?;
    let listing: Listing = serde_json::from_slice(&text).with_context(|| format!("{} is not an attribution listing", path.display()))?;
    let p = listing.pairs.len();
    let array = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
        let (v, s) = read_own_f32(&dir.join(name))?;
        if s != shape {
            bail!("{} has shape {s:?}, {LISTING} says {shape:?}", dir.join(name).display());
        }
        Ok(v)
    };
    let arrays = Arrays {
        accumulated: array(ACCUMULATED, vec![p, listing.accumulated_labels.len()])?,
        components: array(COMPONENTS, vec![p, listing.component_labels.len()])?,
        heads: array(HEADS, vec![p, listing.layers, listing.heads])?,
    };
    Ok((listing, arrays))
}
