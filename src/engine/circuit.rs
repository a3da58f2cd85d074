//! Evaluating circuits (EAP-IG's `evaluate_graph`, MIB's faithfulness): the clean prompt's run in
//! which every edge outside the circuit is ablated — its receiver's input reads the sender's
//! source output (the corrupted prompt's, zeros or means: the run's ablation) in place of the
//! sender's own output in this run — with many circuits, each row of the batch its own edge mask.
//!
//! A receiver's input is its residual stream plus Σ over its ablated edges of (source − this
//! run's output of the sender); a head's q, k and v inputs are apart, each through the block's
//! first norm and the head's W_Q, W_K, W_V. Where a norm follows attention (Gemma 2), a layer's
//! ablated heads into one receiver count together: the change of the sublayer's output when they
//! alone take their source writes (`Block::head_change`), so that one ablated edge is the exact
//! edge and every edge ablated is the source run. Every edge in: the clean run. None: every receiver reads the source run's
//! residual stream (resample: the corrupted run).
use super::ablation::Replacement;
use super::graph::{Graph, Node};
use super::metric::Metric;
use super::run::last_position_metric;
use crate::backend::matmul;
use crate::data::{self, TokenizedPair};
use crate::model::{Cache, Qkv, Transformer, Site, SiteKind};
use anyhow::{ensure, Result};
use burn::prelude::*;

pub struct CircuitEval<'m, B: Backend> {
    pub model: &'m Transformer<B>,
    pub metric: Metric,
    /// What an ablated edge carries (resample: the corrupted prompt's sender output).
    pub replacement: Replacement,
    /// (circuit, pair) rows per forward pass, at most.
    pub max_rows: usize,
}

/// The clean run's embeddings [P, s, d] (position embeddings included) and token embeddings.
struct Clean<B: Backend> {
    embed: Tensor<B, 3>,
    tok: Tensor<B, 3>,
}

/// The source run's sender outputs of a group of pairs: the token embeddings [P, s, d], per layer the
/// heads' writes [P, H, s, d] and the MLP's output [P, s, d].
struct Sources<B: Backend> {
    input: Tensor<B, 3>,
    heads: Vec<Tensor<B, 4>>,
    mlps: Vec<Tensor<B, 3>>,
}

impl<B: Backend> CircuitEval<'_, B> {
    /// The metric of every circuit (an edge mask in `Graph`'s order) on every pair:
    /// [circuits][pairs]. `progress` is told how many rows each batch held.
    pub fn run(&self, pairs: &[TokenizedPair], circuits: &[Vec<bool>], progress: &mut dyn FnMut(usize) -> Result<()>) -> Result<Vec<Vec<f32>>> {
        let m = self.model;
        let graph = Graph::of(&m.config);
        ensure!(circuits.iter().all(|c| c.len() == graph.edges.len()), "a circuit masks the graph's {} edges", graph.edges.len());
        let masks = self.ablated(&graph, circuits);
        let mut out = vec![vec![f32::NAN; pairs.len()]; circuits.len()];
        for (_, group) in data::by_length(pairs.iter().map(TokenizedPair::len)) {
            let group_pairs: Vec<TokenizedPair> = group.iter().map(|&i| pairs[i].clone()).collect();
            let (clean, sources, ids) = self.sources(&group_pairs)?;
            let rows: Vec<(usize, usize)> = (0..circuits.len()).flat_map(|c| (0..group.len()).map(move |p| (c, p))).collect();
            for chunk in rows.chunks(self.max_rows.max(1)) {
                let metrics = self.rows(chunk, &masks, &clean, &sources, &ids);
                for (&(c, p), v) in chunk.iter().zip(metrics) {
                    out[c][group[p]] = v;
                }
                progress(chunk.len())?;
            }
        }
        Ok(out)
    }

    /// Per circuit, 1 where an edge exists and is ablated: [circuits, senders, receiver inputs]
    /// (senders: the input, then per layer its heads and MLP; receivers: per layer each head's q,
    /// k, v, then the MLP; last the logits).
    fn ablated(&self, graph: &Graph, circuits: &[Vec<bool>]) -> Tensor<B, 3> {
        let (l, h) = (graph.layers, graph.heads);
        let (u, v) = (1 + l * (h + 1), l * (3 * h + 1) + 1);
        let sender = |n: Node| match n {
            Node::Input => 0,
            Node::Head { layer, head } => 1 + layer * (h + 1) + head,
            Node::Mlp(layer) => 1 + layer * (h + 1) + h,
            Node::Logits => unreachable!("the logits send to nothing"),
        };
        let receiver = |e: &super::graph::Edge| match (e.to, e.qkv) {
            (Node::Head { layer, head }, Some(x)) => layer * (3 * h + 1) + 3 * head + x.index(),
            (Node::Mlp(layer), _) => layer * (3 * h + 1) + 3 * h,
            _ => v - 1,
        };
        let mut values = vec![0.0f32; circuits.len() * u * v];
        for (c, circuit) in circuits.iter().enumerate() {
            for (e, _) in graph.edges.iter().zip(circuit).filter(|(_, &kept)| !kept) {
                values[(c * u + sender(e.from)) * v + receiver(e)] = 1.0;
            }
        }
        Tensor::from_data(TensorData::new(values, [circuits.len(), u, v]), crate::backend::float_options::<B>(&self.model.device()))
    }

    /// The clean embeddings [P, s, d] and token embeddings (the input node's output), the source
    /// run's sender outputs, and the answer and distractor ids [P, 2] of pairs of one length.
    fn sources(&self, pairs: &[TokenizedPair]) -> Result<(Clean<B>, Sources<B>, Tensor<B, 2, Int>)> {
        let m = self.model;
        let layers = m.config.layers;
        let rows = |f: fn(&TokenizedPair) -> &Vec<u32>| m.tokens(&pairs.iter().map(|p| f(p).clone()).collect::<Vec<_>>());
        let clean = match m.embed_parts(rows(|p| &p.clean)?, 0) {
            (tok, Some(pos)) => Clean { embed: tok.clone() + pos, tok },
            (tok, None) => Clean { embed: tok.clone(), tok },
        };
        let want = (0..layers).flat_map(|l| [Site::new(SiteKind::Z, l), Site::new(SiteKind::MlpOut, l)]).chain([Site::new(SiteKind::Embed, 0)]);
        let mut cache = Cache::new(want);
        m.resid_final(rows(|p| &p.corrupted)?, &mut cache);
        let source = self.replacement.source(&cache);
        let sources = Sources {
            input: source.resid(Site::new(SiteKind::Embed, 0)).expect("cached"),
            heads: (0..layers).map(|l| head_writes(m, l, source.heads(Site::new(SiteKind::Z, l)).expect("cached"))).collect(),
            mlps: (0..layers).map(|l| source.resid(Site::new(SiteKind::MlpOut, l)).expect("cached")).collect(),
        };
        let ids = m.tokens(&pairs.iter().map(|p| vec![p.answer, p.distractor]).collect::<Vec<_>>())?;
        Ok((clean, sources, ids))
    }

    /// The metric of each (circuit, pair) row, in one forward pass.
    fn rows(&self, rows: &[(usize, usize)], masks: &Tensor<B, 3>, clean: &Clean<B>, src: &Sources<B>, ids: &Tensor<B, 2, Int>) -> Vec<f32> {
        let m = self.model;
        let device = m.device();
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let pairs = ints(rows.iter().map(|&(_, p)| p as i64).collect());
        let ablated = masks.clone().select(0, ints(rows.iter().map(|&(c, _)| c as i64).collect())); // [R, U, V]
        let [r, s, d] = [rows.len(), clean.embed.dims()[1], clean.embed.dims()[2]];
        let (h, dh) = (m.config.heads, m.config.d_head);
        let flat = |t: Tensor<B, 3>, k: usize| t.reshape([r, k, s * d]);
        // The mask's rows of the senders whose (source − own) outputs add into a receiver's
        // input, in the order `deltas` grows: every sender (the input, then per layer its heads
        // and its MLP); where a post-norm follows attention, the input and the MLPs alone, a
        // layer's heads counting together (`post`).
        let post_norms = m.config.post_norms;
        let linear_rows = match post_norms {
            true => ablated.clone().select(1, ints(std::iter::once(0).chain((0..m.config.layers).map(|l| (1 + l * (h + 1) + h) as i64)).collect())),
            false => ablated.clone(),
        };
        let head_rows = |l: usize| ablated.clone().narrow(1, 1 + l * (h + 1), h);
        // Each receiver input's change from its ablated edges, for receiver columns `cols`: [R,
        // cols, s·d]. The linear senders' (source − own) outputs `deltas` [R, k, s·d] add; per
        // post-normed layer so far, its ablated heads' (source − own) writes `results` [R, H,
        // s·d] change the sublayer's output together, post(pre + change) − post(pre)
        // (`Block::head_change`, with post(pre) `out` [R, 1, s, d] computed once).
        let ablation = |deltas: &Tensor<B, 3>, post: &[(usize, Tensor<B, 3>, Tensor<B, 4>, Tensor<B, 4>)], first_col: usize, cols: usize| {
            let mask = |rows: Tensor<B, 3>| rows.narrow(2, first_col, cols).swap_dims(1, 2);
            let linear = matmul(mask(linear_rows.clone().narrow(1, 0, deltas.dims()[1])), deltas.clone());
            post.iter().fold(linear, |sum, (l, results, pre, out)| {
                let change = matmul(mask(head_rows(*l)), results.clone()).reshape([r, cols, s, d]);
                sum + (m.blocks[*l].attn_out(pre.clone() + change) - out.clone()).reshape([r, cols, s * d])
            })
        };
        let mut x = clean.embed.clone().select(0, pairs.clone());
        let mut deltas = flat(src.input.clone().select(0, pairs.clone()) - clean.tok.clone().select(0, pairs.clone()), 1);
        let mut post = Vec::new();
        for (l, block) in m.blocks.iter().enumerate() {
            let col = l * (3 * h + 1);
            // Each head's q, k, v from its own input: [R, 3H, s, d] in (head, q/k/v) order.
            let inputs = x.clone().unsqueeze_dim::<4>(1) + ablation(&deltas, &post, col, 3 * h).reshape([r, 3 * h, s, d]);
            let normed = block.norm_attn.forward(inputs).reshape([r, h, 3, s, d]);
            let attn = &block.attn;
            let project = |x: Qkv| {
                let (w, b) = attn.head_weights(x); // [H, d, dh], [H, dh]
                matmul(normed.clone().narrow(2, x.index(), 1).reshape([r, h, s, d]), w.unsqueeze::<4>()) + b.reshape([1, h, 1, dh]) // [R, H, s, dh]
            };
            // Every head its own k and v input: H of them, grouped heads or not.
            let z = attn.attend(project(Qkv::Q), project(Qkv::K), project(Qkv::V), |pattern| pattern); // [R, s, H, dh]
            let writes = attn.head_writes(z); // [R, H, s, d]
            let pre = writes.clone().sum_dim(1).reshape([r, s, d]) + attn.out_bias().reshape([1, 1, d]);
            let out = block.attn_out(pre.clone());
            let mid = x.clone() + out.clone();
            // A parallel block's MLP reads the block's input (its own layer's heads send it no edge).
            let mlp_base = if block.parallel { x } else { mid.clone() };
            let results = (src.heads[l].clone().select(0, pairs.clone()) - writes).reshape([r, h, s * d]);
            if post_norms {
                post.push((l, results, pre.unsqueeze_dim::<4>(1), out.unsqueeze_dim::<4>(1)));
            } else {
                deltas = Tensor::cat(vec![deltas, results], 1);
            }
            let mlp_in = mlp_base + ablation(&deltas, &post, col + 3 * h, 1).reshape([r, s, d]);
            let mlp_out = block.mlp_out(mlp_in.reshape([r * s, d])).reshape([r, s, d]);
            x = mid + mlp_out.clone();
            deltas = Tensor::cat(vec![deltas, flat(src.mlps[l].clone().select(0, pairs.clone()) - mlp_out, 1)], 1);
        }
        let v = ablated.dims()[2];
        let last = x + ablation(&deltas, &post, v - 1, 1).reshape([r, s, d]);
        let metric = last_position_metric(m, self.metric, true, last, ids.clone().select(0, pairs));
        metric.into_data().convert::<f32>().to_vec().expect("f32 metric")
    }
}

/// Layer `l`'s heads' writes of `z` [P, s, H, dh] into the residual stream (z times each head's
/// rows of W_O, no bias): [P, H, s, d].
fn head_writes<B: Backend>(m: &Transformer<B>, l: usize, z: Tensor<B, 4>) -> Tensor<B, 4> {
    m.blocks[l].attn.head_writes(z)
}
