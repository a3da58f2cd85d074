//! Decoding and scoring text on a loaded model: generation (greedy, sampled, steered),
//! perplexity, candidate next tokens, going backwards (prepend) and steering vectors.
use super::{Model, ModelTask, On, Progress};
use crate::generate::{self, candidates, prepend::Step, steer, Options};
use crate::model::Site;
use anyhow::Result;
use burn::prelude::Backend;

/// Each prompt's `num_sequences` continuations (token ids), prompt-major.
pub fn generate(model: &Model, prompts: &[Vec<u32>], options: &Options, progress: &mut dyn Progress) -> Result<Vec<Vec<u32>>> {
    progress.start((prompts.len() * options.num_sequences * options.max_new_tokens) as u64, "tokens");
    model.with(Decode { prompts, options, progress })
}

struct Decode<'a> {
    prompts: &'a [Vec<u32>],
    options: &'a Options,
    progress: &'a mut dyn Progress,
}

impl ModelTask for Decode<'_> {
    type Output = Vec<Vec<u32>>;
    fn run<B: Backend>(self, on: On<'_, B>) -> Result<Vec<Vec<u32>>> {
        let progress = self.progress;
        let out = generate::generate(on.model, self.prompts, self.options, &mut |n| progress.advance(n as u64))?;
        progress.finish();
        Ok(out)
    }
}

/// Each text's token losses (−log p of token t+1 given ..=t), `batch` texts a forward pass.
pub fn token_losses(model: &Model, texts: &[Vec<u32>], batch: usize, progress: &mut dyn Progress) -> Result<Vec<Vec<f32>>> {
    progress.start(texts.len() as u64, "texts");
    model.with(Score { texts, batch, progress })
}

struct Score<'a> {
    texts: &'a [Vec<u32>],
    batch: usize,
    progress: &'a mut dyn Progress,
}

impl ModelTask for Score<'_> {
    type Output = Vec<Vec<f32>>;
    fn run<B: Backend>(self, on: On<'_, B>) -> Result<Vec<Vec<f32>>> {
        let progress = self.progress;
        let out = generate::token_losses(on.model, self.texts, self.batch, &mut |n| progress.advance(n as u64))?;
        progress.finish();
        Ok(out)
    }
}

/// The top-`k` next tokens (id, probability) at each text's last position, or at every position.
pub fn candidates(model: &Model, texts: &[Vec<u32>], k: usize, all_positions: bool, batch: usize) -> Result<Vec<Vec<Vec<(u32, f32)>>>> {
    model.with(Candidates { texts, k, all_positions, batch })
}

struct Candidates<'a> {
    texts: &'a [Vec<u32>],
    k: usize,
    all_positions: bool,
    batch: usize,
}

impl ModelTask for Candidates<'_> {
    type Output = Vec<Vec<Vec<(u32, f32)>>>;
    fn run<B: Backend>(self, on: On<'_, B>) -> Result<Self::Output> {
        candidates::top_k(on.model, self.texts, self.k, self.all_positions, self.batch)
    }
}

/// The clean prompt's activation at `site` and `position` (negative: from the end) minus the
/// corrupted one's, with its shape.
pub fn steering_vector(model: &Model, clean: &[u32], corrupted: &[u32], site: Site, position: i64) -> Result<(Vec<f32>, Vec<usize>)> {
    model.with(MakeVector { clean, corrupted, site, position })
}

struct MakeVector<'a> {
    clean: &'a [u32],
    corrupted: &'a [u32],
    site: Site,
    position: i64,
}

impl ModelTask for MakeVector<'_> {
    type Output = (Vec<f32>, Vec<usize>);
    fn run<B: Backend>(self, on: On<'_, B>) -> Result<Self::Output> {
        steer::make(on.model, self.clean, self.corrupted, self.site, self.position)
    }
}

/// Going backwards: `n_tokens` tokens put in front of `text`, one a step, each the least
/// perplexing of `samples` drawn candidates.
pub struct PrependSpec {
    pub n_tokens: usize,
    pub samples: usize,
    pub seed: u64,
    /// Score every text with `<|endoftext|>` in front.
    pub score_bos: bool,
}

pub fn prepend(model: &Model, text: &[u32], spec: &PrependSpec, progress: &mut dyn Progress) -> Result<Vec<Step>> {
    progress.start(spec.n_tokens as u64, "steps");
    let bos = model.tokenizer.bos()?;
    model.with(Prepend { text, bos, spec, progress })
}

struct Prepend<'a> {
    text: &'a [u32],
    bos: u32,
    spec: &'a PrependSpec,
    progress: &'a mut dyn Progress,
}

impl ModelTask for Prepend<'_> {
    type Output = Vec<Step>;
    fn run<B: Backend>(self, on: On<'_, B>) -> Result<Vec<Step>> {
        let (s, progress) = (self.spec, self.progress);
        let steps = crate::generate::prepend::prepend(on.model, self.text, self.bos, s.n_tokens, s.samples, s.seed, s.score_bos, &mut |n| progress.advance(n as u64))?;
        progress.finish();
        Ok(steps)
    }
}
