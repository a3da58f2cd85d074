//! Attention patterns of many prompts, as TransformerLens' `cache["pattern", layer]`: one plain
//! forward pass per batch of prompts of one length, the chosen layers' patterns cached.
use crate::data;
use crate::model::{Cache, Transformer, Site, SiteKind};
use anyhow::{ensure, Result};
use burn::prelude::*;

/// Patterns `[prompts, layers, heads, dest, src]` of the chosen layers and heads, laid out by the
/// longest prompt: NaN past a prompt's length.
pub struct Patterns {
    pub layers: Vec<usize>,
    pub heads: Vec<usize>,
    pub lengths: Vec<usize>,
    pub positions: usize,
    pub values: Vec<f32>,
}

impl Patterns {
    pub fn shape(&self) -> [usize; 5] {
        [self.lengths.len(), self.layers.len(), self.heads.len(), self.positions, self.positions]
    }

    /// Prompt p's pattern of the i-th chosen layer and j-th chosen head, [dest][src] rows of the
    /// prompt's own length.
    pub fn of(&self, p: usize, i: usize, j: usize) -> Vec<&[f32]> {
        let t = self.positions;
        let start = ((p * self.layers.len() + i) * self.heads.len() + j) * t * t;
        (0..self.lengths[p]).map(|d| &self.values[start + d * t..start + d * t + self.lengths[p]]).collect()
    }
}

/// The patterns of `prompts` (token ids), at most `batch` prompts a forward pass; `progress` is
/// told how many prompts each pass finished.
pub fn patterns<B: Backend>(model: &Transformer<B>, prompts: &[Vec<u32>], layers: &[usize], heads: &[usize], batch: usize, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Patterns> {
    let c = &model.config;
    ensure!(!prompts.is_empty(), "no prompts");
    if let Some(l) = layers.iter().find(|&&l| l >= c.layers) {
        anyhow::bail!("layer {l} does not exist: the model has layers 0..{}", c.layers - 1);
    }
    if let Some(h) = heads.iter().find(|&&h| h >= c.heads) {
        anyhow::bail!("head {h} does not exist: the model has heads 0..{}", c.heads - 1);
    }
    let positions = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let (nl, nh, t) = (layers.len(), heads.len(), positions);
    let per_prompt = nl * nh * t * t;
    let mut values = vec![f32::NAN; prompts.len() * per_prompt];
    let head_ids = Tensor::<B, 1, Int>::from_data(TensorData::new(heads.iter().map(|&h| h as i64).collect(), [nh]), &model.device());
    for (len, idx) in data::by_length(lengths.iter().copied()) {
        for chunk in idx.chunks(batch.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let mut cache = Cache::new(layers.iter().map(|&l| Site::new(SiteKind::Pattern, l)));
            model.resid_final(model.tokens(&rows)?, &mut cache);
            for (li, &l) in layers.iter().enumerate() {
                let pattern = cache.heads(Site::new(SiteKind::Pattern, l)).expect("cached").select(1, head_ids.clone()); // [b, heads, len, len]
                let data: Vec<f32> = pattern.into_data().convert::<f32>().to_vec().expect("f32 pattern");
                for (b, &p) in chunk.iter().enumerate() {
                    for hj in 0..nh {
                        for d in 0..len {
                            let from = ((b * nh + hj) * len + d) * len;
                            let to = p * per_prompt + ((li * nh + hj) * t + d) * t;
                            values[to..to + len].copy_from_slice(&data[from..from + len]);
                        }
                    }
                }
            }
            progress(chunk.len())?;
        }
    }
    Ok(Patterns { layers: layers.to_vec(), heads: heads.to_vec(), lengths, positions, values })
}
