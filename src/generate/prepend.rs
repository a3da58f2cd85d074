//! "Going backwards": find tokens to put in front of a text that make it least perplexing. Each
//! step draws `samples` candidate first tokens from the model's own distribution of a text's
//! first token (its next-token distribution after `<|endoftext|>` alone, seeded), puts each in
//! front of the current text, scores the candidates in one batch, keeps the lowest perplexity and
//! repeats from there.
use super::sampling::{Draws, Sampling};
use super::{perplexity, token_losses, Memory};
use crate::data::Rng;
use crate::model::{Transformer, NoHooks};
use anyhow::{ensure, Result};
use std::collections::HashSet;
use burn::prelude::*;

/// One step: the text chosen (without the `<|endoftext|>` scored in front of it, if any), its
/// perplexity, and every candidate first token with the perplexity its text had.
#[derive(Clone, Debug)]
pub struct Step {
    pub tokens: Vec<u32>,
    pub perplexity: f32,
    pub candidates: Vec<(u32, f32)>,
}

/// `n_tokens` steps back from `text`. `bos` is `<|endoftext|>`; with `score_bos` every text is
/// scored with it in front, so the new first token's own probability counts too.
pub fn prepend<B: Backend>(model: &Transformer<B>, text: &[u32], bos: u32, n_tokens: usize, samples: usize, seed: u64, score_bos: bool, memory: Memory, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Vec<Step>> {
    ensure!(!text.is_empty(), "the text is empty");
    ensure!(samples > 0, "--samples must be at least 1");
    ensure!(
        text.len().checked_add(n_tokens).and_then(|n| n.checked_add(score_bos as usize)).is_some_and(|n| n <= model.config.context),
        "--n-tokens {n_tokens}: the text has {} tokens, and with {n_tokens} more it exceeds the model's context of {}",
        text.len(),
        model.config.context
    );
    let first = model.forward(model.tokens(&[vec![bos]])?, &mut NoHooks).into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    let draws = Draws::new(&first, &[], &Sampling::GREEDY, 1.0);
    let mut rng = Rng(seed);
    let mut current = text.to_vec();
    let mut steps = Vec::with_capacity(n_tokens);
    for _ in 0..n_tokens {
        let (mut candidates, mut seen) = (Vec::new(), HashSet::new());
        for _ in 0..samples {
            let t = draws.draw(&mut rng);
            if seen.insert(t) {
                candidates.push(t);
            }
        }
        let texts: Vec<Vec<u32>> = candidates.iter().map(|&c| score_bos.then_some(bos).into_iter().chain([c]).chain(current.iter().copied()).collect()).collect();
        let scores: Vec<f32> = token_losses(model, &texts, texts.len(), memory, &mut |_| Ok(()))?.iter().map(|l| perplexity(l)).collect();
        // The lowest perplexity, the first drawn of equal ones.
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] < scores[b] { i } else { b });
        current.insert(0, candidates[best]);
        steps.push(Step { tokens: current.clone(), perplexity: scores[best], candidates: candidates.into_iter().zip(scores).collect() });
        progress(1)?;
    }
    Ok(steps)
}
