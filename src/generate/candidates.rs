//! Candidate next tokens: each position's top-k (token, probability), and how much the pools of
//! several prompts overlap (pairwise Jaccard similarity of their top-k sets).
use super::Memory;
use crate::data;
use crate::model::{Transformer, NoHooks};
use anyhow::{ensure, Result};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use std::collections::HashSet;

/// Per text, per position (every one, or the last only), the `k` most likely next tokens with
/// their probabilities, most likely first (ties by id); texts of one length `batch` a pass, fewer
/// where their logits would not fit in `memory`.
pub fn top_k<B: Backend>(model: &Transformer<B>, texts: &[Vec<u32>], k: usize, all_positions: bool, batch: usize, memory: Memory) -> Result<Vec<Vec<Vec<(u32, f32)>>>> {
    ensure!(k > 0, "--top-k must be at least 1");
    let v = model.config.vocab;
    let mut out = vec![Vec::new(); texts.len()];
    for (i, t) in texts.iter().enumerate() {
        ensure!(!t.is_empty(), "text {} is empty", i + 1);
    }
    for (len, idx) in data::by_length(texts.iter().map(Vec::len)) {
        for chunk in idx.chunks(memory.rows(batch, len, v)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| texts[i].clone()).collect();
            let logits = model.forward(model.tokens(&rows)?, &mut NoHooks);
            let (from, n) = if all_positions { (0, len) } else { (len - 1, 1) };
            let probs: Vec<f32> = softmax(logits.narrow(1, from, n), 2).into_data().convert::<f32>().to_vec().expect("f32");
            for (j, &i) in chunk.iter().enumerate() {
                out[i] = (0..n).map(|p| best(&probs[(j * n + p) * v..(j * n + p + 1) * v], k)).collect();
            }
        }
    }
    Ok(out)
}

fn best(p: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    let k = k.min(p.len());
    order.select_nth_unstable_by(k - 1, |&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    order.into_iter().map(|i| (i as u32, p[i])).collect()
}

/// |A ∩ B| / |A ∪ B| for every pair of token sets, row-major [n, n].
pub fn jaccard(sets: &[Vec<u32>]) -> Vec<f32> {
    let sets: Vec<HashSet<u32>> = sets.iter().map(|s| s.iter().copied().collect()).collect();
    sets.iter()
        .flat_map(|a| sets.iter().map(move |b| a.intersection(b).count() as f32 / a.union(b).count().max(1) as f32))
        .collect()
}

/// A token's text as Python's `repr` writes it (`' Jones'`, `'\n'`): whitespace is visible.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_escapes_as_python_and_jaccard_is_intersection_over_union() {
        assert_eq!(py_repr(" Jones"), "' Jones'");
        assert_eq!(py_repr("\n\n"), "'\\n\\n'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("'\""), "'\\'\"'");
        assert_eq!(py_repr("\u{1}"), "'\\x01'");
        assert_eq!(jaccard(&[vec![1, 2, 3], vec![2, 3, 4], vec![9]]), vec![1.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(best(&[0.1, 0.5, 0.5, 0.2], 3), vec![(1, 0.5), (2, 0.5), (3, 0.2)]);
    }
}
