//! The logit lens and direct logit attribution of each pair's clean run at its last position,
//! projected on the answer − distractor unembedding direction u = W_U[:, answer] − W_U[:, distractor],
//! as TransformerLens' `ActivationCache` computes them:
//! - `accumulated`: the residual stream before each block, halfway through it and after the last
//!   one (`accumulated_resid(incl_mid=True, apply_ln=True)`), each through the final norm with its own
//!   statistics (the logit lens): norm_final(x)·u; the last is the logit difference (before any
//!   final soft-cap, as every term here: they are linear in the logits);
//! - `components`: the token and position embeddings, then each layer's attn_out and mlp_out
//!   (`decompose_resid`), and `heads`: each head's write z·W_O (`stack_head_results`; through a
//!   post-norm its share at the norm's scale, `Block::head_shares`), each
//!   centred (a LayerNorm's; an RMSNorm centres nothing) and divided by the final norm's scale of the final residual stream (`apply_ln_to_stack`), then
//!   projected through its weight: ((c − mean c)/scale)·(w ⊙ u). Summed over the components,
//!   with the norm's bias term b·u, they give the logit difference exactly.
use crate::data::{self, TokenizedPair};
use crate::model::{Cache, Transformer, Site, SiteKind};
use anyhow::{ensure, Result};
use burn::prelude::*;

/// Per pair, row-major: `accumulated` [pairs, 2·layers + 1] (layers + 1 without resid_mid), `components` [pairs, 2·layers + 2],
/// `heads` [pairs, layers, heads]; the logit difference and the final norm's bias term b·u.
pub struct Attribution {
    pub layers: usize,
    /// `accumulated`'s entries' names.
    pub accumulated_labels: Vec<String>,
    pub heads_per_layer: usize,
    pub accumulated: Vec<f32>,
    pub components: Vec<f32>,
    pub heads: Vec<f32>,
    pub logit_diff: Vec<f32>,
    pub bias_term: Vec<f32>,
}

/// Names of `accumulated`'s entries, as TransformerLens labels them; without `mid` (a parallel
/// block has no resid_mid) the residual stream before each block and after the last.
pub fn accumulated_labels(layers: usize, mid: bool) -> Vec<String> {
    (0..layers).flat_map(|l| [format!("{l}_pre"), format!("{l}_mid")].into_iter().filter(move |n| mid || n.ends_with("pre"))).chain(["final_post".to_string()]).collect()
}

/// Names of `components`' entries, as TransformerLens labels them.
pub fn component_labels(layers: usize) -> Vec<String> {
    ["embed".to_string(), "pos_embed".to_string()].into_iter().chain((0..layers).flat_map(|l| [format!("{l}_attn_out"), format!("{l}_mlp_out")])).collect()
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

/// The attribution of every pair's clean run, at most `batch` pairs (of one length) a forward
/// pass; `progress` is told how many pairs each pass finished.
pub fn attribute<B: Backend>(model: &Transformer<B>, pairs: &[TokenizedPair], batch: usize, progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Attribution> {
    ensure!(!pairs.is_empty(), "no pairs");
    let c = &model.config;
    let (nl, nh) = (c.layers, c.heads);
    let labels = accumulated_labels(nl, !c.parallel);
    let (na, nc) = (labels.len(), 2 * nl + 2);
    let mut out = Attribution {
        layers: nl,
        accumulated_labels: labels,
        heads_per_layer: nh,
        accumulated: vec![0.0; pairs.len() * na],
        components: vec![0.0; pairs.len() * nc],
        heads: vec![0.0; pairs.len() * nl * nh],
        logit_diff: vec![0.0; pairs.len()],
        bias_term: vec![0.0; pairs.len()],
    };
    let kinds: Vec<SiteKind> = [SiteKind::ResidPre, SiteKind::ResidMid, SiteKind::AttnOut, SiteKind::MlpOut, SiteKind::Z].into_iter().filter(|&k| k != SiteKind::ResidMid || !c.parallel).collect();
    let last_post = Site::new(SiteKind::ResidPost, nl - 1);
    let ln_f = model.norm_final();
    for (len, idx) in data::by_length(pairs.iter().map(TokenizedPair::len)) {
        for chunk in idx.chunks(batch.max(1)) {
            let b = chunk.len();
            let tokens = model.tokens(&chunk.iter().map(|&i| pairs[i].clean.clone()).collect::<Vec<_>>())?;
            let mut cache = Cache::new((0..nl).flat_map(|l| kinds.iter().map(move |&k| Site::new(k, l))).chain([last_post]));
            model.resid_final(tokens.clone(), &mut cache);
            // The last position of a residual-shaped site, [b, d].
            let last = |t: Tensor<B, 3>| -> Tensor<B, 2> {
                let d = t.dims()[2];
                t.narrow(1, len - 1, 1).reshape([b, d])
            };
            let ids = model.tokens(&chunk.iter().map(|&i| vec![pairs[i].answer, pairs[i].distractor]).collect::<Vec<_>>())?;
            let w_u = model.unembedding(ids); // [b, 2, d]
            let u = (w_u.clone().narrow(1, 0, 1) - w_u.narrow(1, 1, 1)).reshape([b, c.d_model]);
            let wu = u.clone() * ln_f.weight().clone().unsqueeze::<2>();
            let final_resid = last(cache.resid(last_post).expect("cached"));
            let scale = ln_f.scale(final_resid.clone()); // [b, 1]
            // ((x − mean x) / scale) · (w ⊙ u), for x [b, k, d] → [b, k] (an RMSNorm centres nothing).
            let direct = |x: Tensor<B, 3>| -> Tensor<B, 2> {
                let k = x.dims()[1];
                let centred = if ln_f.centres() { x.clone() - x.mean_dim(2) } else { x };
                (centred / scale.clone().unsqueeze_dim::<3>(1) * wu.clone().unsqueeze_dim::<3>(1)).sum_dim(2).reshape([b, k])
            };
            let lens = |x: Tensor<B, 2>| -> Tensor<B, 2> { (ln_f.forward(x) * u.clone()).sum_dim(1) };

            let mut accumulated = Vec::with_capacity(na);
            for l in 0..nl {
                accumulated.push(lens(last(cache.resid(Site::new(SiteKind::ResidPre, l)).expect("cached"))));
                if !c.parallel {
                    accumulated.push(lens(last(cache.resid(Site::new(SiteKind::ResidMid, l)).expect("cached"))));
                }
            }
            accumulated.push(lens(final_resid));
            let accumulated = host(Tensor::cat(accumulated, 1)); // [b, na]

            // Under rotary positions nothing is added for the position: its component is 0.
            let (tok, pos) = model.embed_parts(tokens, 0);
            let pos = pos.map_or_else(|| tok.zeros_like(), |p| p.expand([b, len, c.d_model]));
            let mut parts = vec![last(tok), last(pos)];
            for l in 0..nl {
                parts.push(last(cache.resid(Site::new(SiteKind::AttnOut, l)).expect("cached")));
                parts.push(last(cache.resid(Site::new(SiteKind::MlpOut, l)).expect("cached")));
            }
            let components = host(direct(Tensor::stack(parts, 1))); // [b, nc]

            let heads: Vec<Tensor<B, 3>> = (0..nl)
                .map(|l| {
                    let z = cache.heads(Site::new(SiteKind::Z, l)).expect("cached"); // [b, len, h, dh]
                    let [_, _, h, dh] = z.dims();
                    let each = Tensor::<B, 1, Int>::arange(0..h as i64, &model.device()).repeat_dim(0, b); // (pair, head) rows
                    let z = z.narrow(1, len - 1, 1);
                    let block = &model.blocks[l];
                    let writes = block.attn.head_write(z.clone().reshape([b * h, 1, dh]), each).reshape([b, h, c.d_model]);
                    block.head_shares(writes, || block.attn.output(z))
                })
                .collect();
            let heads = host(direct(Tensor::cat(heads, 1))); // [b, nl·nh]
            let bias = match ln_f.bias() {
                Some(bias) => host((bias.clone().unsqueeze::<2>() * u).sum_dim(1)), // [b, 1]
                None => vec![0.0; b],
            };

            for (j, &i) in chunk.iter().enumerate() {
                out.accumulated[i * na..(i + 1) * na].copy_from_slice(&accumulated[j * na..(j + 1) * na]);
                out.components[i * nc..(i + 1) * nc].copy_from_slice(&components[j * nc..(j + 1) * nc]);
                out.heads[i * nl * nh..(i + 1) * nl * nh].copy_from_slice(&heads[j * nl * nh..(j + 1) * nl * nh]);
                out.logit_diff[i] = accumulated[j * na + na - 1];
                out.bias_term[i] = bias[j];
            }
            progress(b)?;
        }
    }
    Ok(out)
}
