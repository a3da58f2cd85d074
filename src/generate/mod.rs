//! Generation, perplexity, candidate tokens, going backwards and steering: forward passes on top
//! of `model`, no patching. Decoding keeps
//! each layer's keys and values (`KvCache`): a step computes only the new token, attending to the
//! cached positions through the same prefix mechanism the patching engine's suffixes use.
pub mod candidates;
pub mod prepend;
pub mod sampling;
pub mod steer;

use crate::data::{self, Rng};
use crate::backend::Prefix;
use crate::model::{Batch, Cache, Transformer, Hooks, NoHooks, Site, SiteKind};
use anyhow::{ensure, Result};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use sampling::{next_token, Sampling};
use steer::SteeringVector;

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

/// The keys and values [rows, positions, heads, d_head] of every layer for the positions decoded
/// so far; a sliding-window layer holds only the last window − 1 of them, all a later query can see
/// (as HF's sliding-window cache).
pub struct KvCache<B: Backend> {
    k: Vec<Tensor<B, 4>>,
    v: Vec<Tensor<B, 4>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new() -> Self {
        Self { k: Vec::new(), v: Vec::new(), len: 0 }
    }

    /// Positions decoded.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Positions whose keys and values layer `layer` holds: the last of those decoded.
    pub fn held(&self, layer: usize) -> usize {
        self.k.get(layer).map_or(0, |k| k.dims()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `tokens` [rows, s] at positions len.. on top of the cache through `hooks` (e.g.
    /// steering), adds their keys and values (as the hooks left them) to it, and returns the
    /// logits of the last position, [rows, vocab].
    pub fn step(&mut self, model: &Transformer<B>, tokens: Tensor<B, 2, Int>, hooks: &mut impl Hooks<B>) -> Tensor<B, 2> {
        let [rows, s] = tokens.dims();
        let device = model.device();
        let ids = Tensor::<B, 1, Int>::arange(0..rows as i64, &device);
        let mut x = Batch::one(model.embed(tokens, self.len));
        for (l, block) in model.blocks.iter().enumerate() {
            let held = self.held(l);
            // Kept keys rotate from position 0 on: rotary scores depend only on the distance
            // between query and key, which a dropped start leaves as it was.
            let prefix = (self.len > 0).then(|| Prefix { k: self.k[l].clone(), v: self.v[l].clone(), pairs: (0..rows).collect(), pair_ids: ids.clone(), len: held });
            let (k, v) = (Site::new(SiteKind::K, l), Site::new(SiteKind::V, l));
            let mut new = Cache::new([k, v]);
            x = block.forward(x, l, &[prefix], None, &mut (&mut *hooks, &mut new));
            let (nk, nv) = (new.heads(k).expect("recorded"), new.heads(v).expect("recorded"));
            if self.len == 0 {
                self.k.push(nk);
                self.v.push(nv);
            } else {
                self.k[l] = Tensor::cat(vec![self.k[l].clone(), nk], 1);
                self.v[l] = Tensor::cat(vec![self.v[l].clone(), nv], 1);
            }
            // One key at least: a tensor of no positions is kept away from the backends.
            if let Some(keep) = model.config.window_of(l).map(|w| (w - 1).max(1)).filter(|&keep| keep < self.held(l)) {
                let from = self.held(l) - keep;
                self.k[l] = self.k[l].clone().narrow(1, from, keep);
                self.v[l] = self.v[l].clone().narrow(1, from, keep);
            }
        }
        self.len += s;
        model.unembed(x.into_one().narrow(1, s - 1, 1)).reshape([rows, model.config.vocab])
    }

    /// Keeps only `rows` (indices into the current rows) in the cache.
    pub fn retain(&mut self, rows: Tensor<B, 1, Int>) {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.clone().select(0, rows.clone());
        }
    }
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Sequences per prompt.
    pub num_sequences: usize,
    pub seed: u64,
    /// Stop a sequence after it emits one of these tokens (it is kept in the output).
    pub stop_at: Vec<u32>,
    /// Sequences decoded together.
    pub batch: usize,
    /// Added at its site at every position of every step.
    pub steer: Option<SteeringVector>,
}

/// The random stream of sequence `seq` of prompt `prompt`: independent of batching and backend.
fn stream(seed: u64, prompt: usize, seq: usize) -> Rng {
    let mut r = Rng(seed ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (seq as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next();
    r
}

/// The new tokens of `num_sequences` sequences per prompt (prompt-major), decoded with a KV
/// cache, sequences of one length together, each finishing on its own; `progress` is told how
/// many tokens each step produced.
pub fn generate<B: Backend>(model: &Transformer<B>, prompts: &[Vec<u32>], o: &Options, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Vec<Vec<u32>>> {
    let ctx = model.config.context;
    for (i, p) in prompts.iter().enumerate() {
        ensure!(!p.is_empty(), "prompt {} is empty", i + 1);
        ensure!(p.len().checked_add(o.max_new_tokens).is_some_and(|n| n <= ctx), "prompt {} has {} tokens: with {} new ones it exceeds the model's context of {ctx}", i + 1, p.len(), o.max_new_tokens);
    }
    let n = o.num_sequences.max(1);
    let mut out = vec![Vec::new(); prompts.len() * n];
    let device = model.device();
    let mut hooks = steer::hooks(model, o.steer.as_ref())?;
    for seqs in data::by_length((0..out.len()).map(|s| prompts[s / n].len())).values() {
        for chunk in seqs.chunks(o.batch.max(1)) {
            let mut rngs: Vec<Rng> = chunk.iter().map(|&s| stream(o.seed, s / n, s % n)).collect();
            let mut seen: Vec<Vec<u32>> = chunk.iter().map(|&s| prompts[s / n].clone()).collect();
            let mut active: Vec<usize> = (0..chunk.len()).collect();
            let mut cache = KvCache::new();
            let mut logits = cache.step(model, model.tokens(&seen)?, &mut hooks);
            for _ in 0..o.max_new_tokens {
                let v = model.config.vocab;
                let rows = host(logits);
                crate::limits::ensure_finite("the logits", &rows, |_| false)?;
                let mut next = Vec::with_capacity(active.len());
                for (r, &a) in active.iter().enumerate() {
                    let t = next_token(&rows[r * v..(r + 1) * v], &seen[a], &o.sampling, &mut rngs[a]);
                    seen[a].push(t);
                    out[chunk[a]].push(t);
                    next.push(t);
                }
                progress(active.len())?;
                let still: Vec<usize> = (0..active.len()).filter(|&r| !o.stop_at.contains(&next[r])).collect();
                if still.is_empty() || out[chunk[active[0]]].len() == o.max_new_tokens {
                    break;
                }
                if still.len() < active.len() {
                    cache.retain(Tensor::from_data(TensorData::new(still.iter().map(|&r| r as i64).collect::<Vec<_>>(), [still.len()]), &device));
                    active = still.iter().map(|&r| active[r]).collect();
                }
                let step: Vec<Vec<u32>> = active.iter().map(|&a| vec![*seen[a].last().expect("a token")]).collect();
                logits = cache.step(model, model.tokens(&step)?, &mut hooks);
            }
        }
    }
    Ok(out)
}

/// Each text's per-token loss: entry t is −log p(token t+1 | tokens ..=t), texts of one length
/// `batch` a forward pass; `progress` is told how many texts each pass finished.
pub fn token_losses<B: Backend>(model: &Transformer<B>, texts: &[Vec<u32>], batch: usize, memory: Memory, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Vec<Vec<f32>>> {
    for (i, t) in texts.iter().enumerate() {
        ensure!(t.len() >= 2, "text {} has {} token(s): perplexity needs at least 2 (a token to predict)", i + 1, t.len());
    }
    let mut out = vec![Vec::new(); texts.len()];
    for (len, idx) in data::by_length(texts.iter().map(Vec::len)) {
        for chunk in idx.chunks(memory.rows(batch, len, model.config.vocab)) {
            let b = chunk.len();
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| texts[i].clone()).collect();
            let logits = model.forward(model.tokens(&rows)?, &mut NoHooks).narrow(1, 0, len - 1);
            let next: Vec<Vec<u32>> = rows.iter().map(|r| r[1..].to_vec()).collect();
            let next = model.tokens(&next)?.unsqueeze_dim::<3>(2);
            let loss = host(log_softmax(logits, 2).gather(2, next).neg()); // [b, len − 1, 1]
            for (j, &i) in chunk.iter().enumerate() {
                out[i] = loss[j * (len - 1)..(j + 1) * (len - 1)].to_vec();
            }
            progress(b)?;
        }
    }
    Ok(out)
}

/// How much memory one forward pass may take: `budget` bytes in all, `buffer` bytes in one
/// tensor (lavapipe's buffers stop at 128 MiB). In the text commands the full-vocabulary logits
/// are the large term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Memory {
    pub budget: usize,
    pub buffer: usize,
}

impl Memory {
    /// Texts of `len` tokens one pass may hold: `batch`, or fewer where their logits, with the
    /// softmax's two temporaries beside them, would not fit; at least one.
    pub fn rows(&self, batch: usize, len: usize, vocab: usize) -> usize {
        let logits = (len * vocab * 4).max(1);
        batch.min(self.budget / (3 * logits)).min(self.buffer / logits).max(1)
    }
}

/// exp of the mean of a text's token losses.
pub fn perplexity(losses: &[f32]) -> f32 {
    (losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len() as f64).exp() as f32
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn a_pass_holds_as_many_texts_as_their_logits_allow() {
        let one = 1000 * 50257 * 4; // the logits of one text of 1,000 tokens
        let memory = Memory { budget: 3 * one * 10, buffer: usize::MAX };
        assert_eq!(memory.rows(64, 1000, 50257), 10);
        assert_eq!(memory.rows(4, 1000, 50257), 4);
        assert_eq!(Memory { budget: 0, buffer: usize::MAX }.rows(64, 1000, 50257), 1);
        // One logits tensor stays within a buffer (lavapipe's 128 MiB).
        assert_eq!(Memory { budget: usize::MAX, buffer: 128 << 20 }.rows(64, 32, 50257), (128 << 20) / (32 * 50257 * 4));
    }
}
