//! Choosing the next token from one row of logits, on the host. Greedy is the argmax of the raw
//! logits (the first of equal maxima, as `torch.argmax`). Sampling follows TransformerLens'
//! `sample_logits`: divide by the temperature, subtract `freq_penalty` × each token's count in
//! the sequence so far (prompt included), keep the top k (ties at the k-th value kept, as HF's
//! `TopKLogitsWarper`), then the smallest set of most likely tokens whose probability reaches
//! top_p (HF's `TopPLogitsWarper`: a token is kept while the mass above it is below top_p; at
//! least one), and draw from the softmax of what is left.
use crate::data::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// None: greedy.
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub freq_penalty: f32,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: None, top_k: None, top_p: None, freq_penalty: 0.0 };
}

/// The index of the largest value, the first of equal ones.
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// The next token after `seen` (the sequence so far) from its `logits`.
pub fn next_token(logits: &[f32], seen: &[u32], s: &Sampling, rng: &mut Rng) -> u32 {
    match s.temperature {
        None => argmax(logits) as u32,
        Some(t) => Draws::new(logits, seen, s, t).draw(rng),
    }
}

/// The tokens a sampled step may draw, most likely first, with their cumulative probabilities:
/// built once (a sort of the vocabulary) for any number of draws from the same logits.
pub struct Draws {
    order: Vec<usize>,
    /// cumulative[i]: the (unnormalized) mass of order[..=i].
    cumulative: Vec<f64>,
}

impl Draws {
    pub fn new(logits: &[f32], seen: &[u32], s: &Sampling, temperature: f32) -> Self {
        let mut l: Vec<f64> = logits.iter().map(|&x| x as f64 / temperature as f64).collect();
        if s.freq_penalty != 0.0 {
            for &id in seen {
                l[id as usize] -= s.freq_penalty as f64;
            }
        }
        // Candidates, most likely first (ties by id: the same order on every backend).
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        if let Some(k) = s.top_k.filter(|&k| k > 0 && k < order.len()) {
            let kth = l[order[k - 1]];
            order.retain(|&i| l[i] >= kth);
        }
        let max = l[order[0]];
        let mut p: Vec<f64> = order.iter().map(|&i| (l[i] - max).exp()).collect();
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
        if let Some(top_p) = s.top_p {
            let mut above = 0.0;
            let keep = p.iter().take_while(|&&x| {
                let k = above < top_p as f64;
                above += x;
                k
            });
            let n = keep.count().max(1);
            order.truncate(n);
            p.truncate(n);
        }
        let cumulative = p.iter().scan(0.0, |acc, &x| {
            *acc += x;
            Some(*acc)
        });
        Self { cumulative: cumulative.collect(), order }
    }

    /// One token: the first whose cumulative mass exceeds a uniform draw over the whole.
    pub fn draw(&self, rng: &mut Rng) -> u32 {
        let u = rng.uniform() * self.cumulative.last().expect("at least one candidate");
        let i = self.cumulative.partition_point(|&c| c <= u).min(self.order.len() - 1);
        self.order[i] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(logits: &[f32], s: &Sampling, n: usize) -> Vec<usize> {
        let mut rng = Rng(7);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[next_token(logits, &[], s, &mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_is_the_first_argmax_and_filters_keep_what_hf_keeps() {
        assert_eq!(next_token(&[1.0, 3.0, 3.0, 2.0], &[], &Sampling::GREEDY, &mut Rng(0)), 1);
        let logits = [0.0f32, 1.0, 2.0, 3.0]; // softmax ≈ 0.032, 0.087, 0.237, 0.644
        let s = |top_k, top_p| Sampling { temperature: Some(1.0), top_k, top_p, freq_penalty: 0.0 };
        let c = draws(&logits, &s(Some(2), None), 4000);
        assert!(c[0] == 0 && c[1] == 0 && c[2] > 0 && c[3] > c[2], "{c:?}");
        // top_p 0.8: 0.644 < 0.8, so the second (mass above it 0.644) is kept too, the third not.
        let c = draws(&logits, &s(None, Some(0.8)), 4000);
        assert!(c[0] == 0 && c[1] == 0 && c[2] > 0, "{c:?}");
        // top_p 0.5: only the most likely.
        assert_eq!(draws(&logits, &s(None, Some(0.5)), 100)[3], 100);
        // All four, in proportion: 0.644 of 20000 draws within a few standard deviations.
        let c = draws(&logits, &s(None, None), 20000);
        assert!((c[3] as f64 / 20000.0 - 0.6439).abs() < 0.02, "{c:?}");
        // A frequency penalty of 3 on token 3 seen once leaves token 2 the most likely.
        let pen = Sampling { temperature: Some(1.0), top_k: Some(1), top_p: None, freq_penalty: 3.0 };
        assert_eq!(next_token(&logits, &[3], &pen, &mut Rng(0)), 2);
    }
}
