//! The cost model: rows and pairs a batch may hold under a memory budget, and a run's
//! floating-point operations (`bench`'s roofline).
use crate::model::ModelConfig;

/// Rows that fit a memory budget and a single-buffer limit (wgpu caps one buffer, at 128 MiB on
/// lavapipe). Per row: the residual-sized tensors of one block, its MLP hidden layer and attention
/// pattern, and (without reuse) the last position's full logits, the largest single tensor.
pub fn max_rows_for_budget(config: &ModelConfig, positions: usize, budget_bytes: usize, max_buffer_bytes: usize, full_logits: bool) -> usize {
    let logits = if full_logits { 4 * config.vocab } else { 0 };
    let mlp = 4 * positions * config.d_mlp;
    let pattern = 4 * config.heads * positions * positions;
    let per_row = 4 * positions * 8 * config.d_model + 2 * mlp + 3 * pattern + logits;
    let largest = logits.max(mlp).max(pattern);
    (budget_bytes / per_row).min(max_buffer_bytes / largest).clamp(1, 1 << 16)
}

/// Pairs one attribution pass may hold: its backward pass keeps every layer's activations, and
/// their gradients, alive — about three times a block's working set per layer and pair.
pub fn max_pairs_for_budget(config: &ModelConfig, positions: usize, budget_bytes: usize, max_buffer_bytes: usize, full_logits: bool) -> usize {
    max_rows_for_budget(config, positions, budget_bytes / (3 * config.layers).max(1), max_buffer_bytes, full_logits)
}

/// Floating-point operations of one run of a pair of `len` tokens computed from layer
/// `first_layer` and position `start` on. With `reuse`, the last block carries only the last
/// position past its keys and values and two logits are read; without, every block computes every
/// position and the last position is unembedded over the whole vocabulary. Multiply-adds count 2.
pub fn run_flops(config: &ModelConfig, len: usize, start: usize, first_layer: usize, reuse: bool) -> f64 {
    let (d, inner) = (config.d_model as f64, config.d_mlp as f64);
    let s = (len - start) as f64;
    let blocks = (config.layers - first_layer) as f64;
    // Per computed position: the q, k, v projections, attention over `len` keys, W_O and the MLP.
    let qkv = 2.0 * d * 3.0 * d;
    let rest = 4.0 * len as f64 * d + 2.0 * d * (d + 2.0 * inner);
    if reuse {
        (blocks - 1.0) * s * (qkv + rest) + s * qkv + rest + 4.0 * d
    } else {
        blocks * s * (qkv + rest) + 2.0 * d * config.vocab as f64
    }
}
