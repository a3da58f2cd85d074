//! Ragged batches: rows of different lengths computed together, for the generic forward.
use burn::prelude::*;
use std::sync::{Arc, OnceLock};

/// One tensor from row blocks (no copy for a single block).
fn cat_rows<B: Backend>(mut parts: Vec<Tensor<B, 2>>) -> Tensor<B, 2> {
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 0)
    }
}

/// A batch of segments that differ in length: segment g holds `shape[g] = [rows, positions]`.
/// Stored as one [Σ rows·positions, d] tensor, so that every per-token step (LayerNorm, each
/// linear layer, GELU, the residual adds) is one operation over every segment's tokens — one GEMM
/// per linear layer however many segments — and only attention runs per segment. The reuse
/// path's patched runs start at different positions: one segment per start. A plain forward pass
/// is one segment.
pub struct Batch<B: Backend> {
    pub x: Tensor<B, 2>,
    pub shape: Vec<[usize; 2]>,
    /// Where the segments' rows and tokens sit when attention runs over all of them at once
    /// (`Attention::padded`): made at the first layer that needs it, kept while the segments stay.
    pub(super) padding: Arc<OnceLock<Padding<B>>>,
}

/// A batch's rows padded to the sequence's whole length: each row's prefix run, [rows], and each
/// token's slot in [rows · length], [tokens, 1].
pub(super) struct Padding<B: Backend> {
    pub runs: Tensor<B, 1, Int>,
    pub slots: Tensor<B, 2, Int>,
}

impl<B: Backend> Batch<B> {
    pub fn new(x: Tensor<B, 2>, shape: Vec<[usize; 2]>) -> Self {
        Self { x, shape, padding: Arc::default() }
    }

    pub fn one(x: Tensor<B, 3>) -> Self {
        Self::from_parts(vec![vec![x]])
    }

    /// Segment g stacks the rows of `parts[g]`, tensors [rows, positions, d] of one length.
    pub fn from_parts(parts: Vec<Vec<Tensor<B, 3>>>) -> Self {
        let mut shape = Vec::with_capacity(parts.len());
        let mut flat = Vec::new();
        for segment in parts {
            let [_, s, _] = segment[0].dims();
            let mut rows = 0;
            for t in segment {
                let [n, ts, d] = t.dims();
                assert_eq!(ts, s, "a segment's parts share one length");
                rows += n;
                flat.push(t.reshape([n * s, d]));
            }
            shape.push([rows, s]);
        }
        Self::new(cat_rows(flat), shape)
    }

    pub(super) fn with(&self, x: Tensor<B, 2>) -> Self {
        Self { x, shape: self.shape.clone(), padding: self.padding.clone() }
    }

    /// The segments as [rows, positions, width] tensors, in order (views, not copies).
    pub fn segments(&self) -> Vec<Tensor<B, 3>> {
        let width = self.x.dims()[1];
        let mut offset = 0;
        self.shape
            .iter()
            .map(|&[n, s]| {
                let t = self.x.clone().narrow(0, offset, n * s).reshape([n, s, width]);
                offset += n * s;
                t
            })
            .collect()
    }

    /// The one segment of a plain forward pass, [rows, positions, d].
    pub fn into_one(self) -> Tensor<B, 3> {
        let [[n, s]] = self.shape[..] else { panic!("a batch of {} segments is not one tensor", self.shape.len()) };
        let d = self.x.dims()[1];
        self.x.reshape([n, s, d])
    }

    /// The last `keep` positions of every segment (all of them for None).
    pub fn last(self, keep: Option<usize>) -> Self {
        match keep {
            Some(k) if self.shape.iter().any(|&[_, s]| s != k) => {
                Self::from_parts(self.segments().into_iter().map(|t| vec![t.clone().narrow(1, t.dims()[1] - k, k)]).collect())
            }
            _ => self,
        }
    }
}
