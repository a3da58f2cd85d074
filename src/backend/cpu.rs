//! Fused kernels for the CPU backend (burn-flex) on the forward pass's hot path. burn runs every
//! tensor op as its own pass over memory into a fresh buffer: a linear layer's bias add is a
//! second pass over its output, GELU is seven passes, LayerNorm five, and attention copies each
//! head's strided q/k/v views, each segment's key/value prefix and each segment's output. Here
//! each is one pass (the bias is the product's starting value), and attention reads q, k and v
//! where they lie — the prefix straight from the corrupted run's cache — and writes every
//! segment's output into one buffer. Measured with `patchbay bench` (docs/performance.md, "How it is fast").
//!
//! Every function gives its input back (or None) on any other backend, or on a tensor these
//! kernels do not take (not f32), and the model then runs burn's ops: the GPU backends, fusion
//! and autodiff never come here.
use crate::backend::Prefix;
use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::any::Any;

/// `t`'s CPU tensor when `B` is the CPU backend and `t` is f32; `t` itself otherwise.
fn flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
    if std::any::TypeId::of::<B::FloatTensorPrimitive>() != std::any::TypeId::of::<FlexTensor>() {
        return Err(t);
    }
    let f = *(Box::new(t.into_primitive().tensor()) as Box<dyn Any>).downcast::<FlexTensor>().expect("checked type");
    if f.dtype() == DType::F32 {
        Ok(f)
    } else {
        Err(tensor(f))
    }
}

/// The tensor of a CPU tensor (only called where `B` is the CPU backend).
fn tensor<B: Backend, const D: usize>(f: FlexTensor) -> Tensor<B, D> {
    let p = *(Box::new(f) as Box<dyn Any>).downcast::<B::FloatTensorPrimitive>().expect("B is the CPU backend");
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn from_vec<B: Backend, const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    tensor(FlexTensor::from_data(TensorData::new(v, shape)))
}

/// A read-only f32 view: the storage, the element offset of index 0 and the strides.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    strides: Vec<isize>,
}

impl<'a> View<'a> {
    fn of(t: &'a FlexTensor) -> Self {
        Self { data: t.storage::<f32>(), offset: t.layout().start_offset(), strides: t.layout().strides().to_vec() }
    }

    /// `len` elements from `index` on along the last axis, which must be unit-stride.
    fn row(&self, index: &[usize], len: usize) -> &'a [f32] {
        debug_assert_eq!(self.strides.last(), Some(&1));
        let at = index.iter().zip(&self.strides).fold(self.offset as isize, |a, (&i, &s)| a + i as isize * s) as usize;
        &self.data[at..at + len]
    }
}

/// A contiguous view of `t` whose last axis is unit-stride (a copy only where it is not).
fn unit_last(t: FlexTensor) -> FlexTensor {
    if t.layout().strides().last() == Some(&1) {
        t
    } else {
        t.to_contiguous()
    }
}

/// Products at least this large (m·n·k) run on every thread, as burn-flex decides.
const PARALLEL_GEMM: usize = 192 * 192 * 192;

/// `x @ w (+ b)`: one gemm into an output that starts as the bias rows. `w` may be a strided view
/// (the tied unembedding reads the embeddings' transpose in place).
pub fn linear<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>, b: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
    let (x, w) = (flex(x.clone()).ok()?, flex(w.clone()).ok()?);
    let ([m, k], [_, n]) = (dims(&x), dims(&w));
    let mut out = vec![0.0f32; m * n];
    if let Some(b) = b {
        let b = unit_last(flex(b.clone()).ok()?);
        let bias = View::of(&b).row(&[0], n);
        out.par_chunks_mut(n).with_min_len(64).for_each(|row| row.copy_from_slice(bias));
    }
    let (xs, ws) = (x.layout().strides(), w.layout().strides());
    let parallelism = if m * n * k >= PARALLEL_GEMM { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the pointers cover [m, k], [k, n] and [m, n] at these strides: the views' own.
    unsafe {
        let xp = x.storage::<f32>().as_ptr().add(x.layout().start_offset());
        let wp = w.storage::<f32>().as_ptr().add(w.layout().start_offset());
        gemm::gemm(m, n, k, out.as_mut_ptr(), 1, n as isize, b.is_some(), xp, xs[1], xs[0], wp, ws[1], ws[0], 1.0f32, 1.0f32, false, false, false, parallelism);
    }
    Some(from_vec(out, [m, n]))
}

fn dims(t: &FlexTensor) -> [usize; 2] {
    let s = t.layout().shape();
    [s[0], s[1]]
}

/// GPT-2's tanh GELU as x·sigmoid(2u), u = √(2/π)(x + 0.044715x³), in one pass (in place when
/// `x` is not shared).
pub fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    const C: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
    let shape = x.dims();
    let mut f = flex(x)?;
    let gelu = |v: &mut f32| {
        let x = *v;
        *v = x / (1.0 + (-(x * (x * x * (C * 0.044715) + C))).exp());
    };
    let whole = f.layout().contiguous_offsets() == Some((0, f.layout().num_elements())) && f.bytes().len() == 4 * f.layout().num_elements();
    match f.try_storage_mut::<f32>().filter(|_| whole) {
        Some(data) => {
            data.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(gelu));
            Ok(tensor(f))
        }
        None => {
            let mut v = unit_last(f).into_data().into_vec::<f32>().expect("f32");
            v.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(gelu));
            Ok(from_vec(v, shape))
        }
    }
}

/// LayerNorm over the last axis, each row in one pass: (x − mean)/√(var + eps)·w + b with the
/// biased variance, as burn's `var_mean_bias`.
pub fn layer_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, w: &Tensor<B, 1>, b: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, D>> {
    let shape = x.dims();
    let d = shape[D - 1];
    let x = flex(x.clone()).ok()?;
    let x = if x.layout().contiguous_offsets().is_some() { x } else { x.to_contiguous() };
    let (w, b) = (unit_last(flex(w.clone()).ok()?), unit_last(flex(b.clone()).ok()?));
    let (start, end) = x.layout().contiguous_offsets().expect("contiguous");
    let rows = &x.storage::<f32>()[start..end];
    let (w, b) = (View::of(&w).row(&[0], d), View::of(&b).row(&[0], d));
    let mut out = vec![0.0f32; rows.len()];
    out.par_chunks_mut(d).zip(rows.par_chunks(d)).with_min_len(16).for_each(|(o, x)| {
        let mean = x.iter().sum::<f32>() / d as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps as f32).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = (x - mean) * inv * w + b;
        }
    });
    Some(from_vec(out, shape))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler vectorizes these, not a single running sum.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// What a family's attention computes beyond q·kᵀ: grouped keys and values, each head's RMSNorm
/// over q and k, rotary positions, the scores' scale, soft-cap and sliding window.
pub struct AttentionSpec<'a, B: Backend> {
    pub heads: usize,
    pub kv_heads: usize,
    pub d_head: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Each query sees its last `window` keys.
    pub window: Option<usize>,
    /// RMSNorm weights over each head's q and k, and eps.
    pub qk_norm: Option<(&'a Tensor<B, 1>, &'a Tensor<B, 1>, f64)>,
    /// Rotary cos and sin of every position, [context, rotated dims] (each frequency twice).
    pub rope: Option<(&'a Tensor<B, 2>, &'a Tensor<B, 2>)>,
}

/// A head's q or k at position `p` as the scores read it: RMSNorm'd (x·w/√(mean(x²) + eps), as
/// HF's), then its first dims rotated (x·cos + rotate_half(x)·sin).
fn position(x: &[f32], p: usize, norm: Option<(&[f32], f32)>, rope: Option<(&View, &View, usize)>, out: &mut [f32]) {
    match norm {
        Some((w, eps)) => {
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps).sqrt();
            for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
                *o = w * (x * inv);
            }
        }
        None => out.copy_from_slice(x),
    }
    if let Some((cos, sin, dims)) = rope {
        let (cos, sin, half) = (cos.row(&[p, 0], dims), sin.row(&[p, 0], dims), dims / 2);
        for i in 0..half {
            let (a, b) = (out[i], out[i + half]);
            out[i] = a * cos[i] - b * sin[i];
            out[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/// Causal self-attention of a ragged batch (`model::Batch`), from `qkv` [tokens, (heads +
/// 2·kv_heads)·d_head] (the qkv projection's output, segment after segment) to the heads'
/// outputs `z` [Σ rows·keep, heads·d_head]: segment g's rows of `shape[g][1]` positions, of which
/// the last `keep` (all for None) are queries, attending to their own positions and to
/// `prefixes[g]`'s keys and values before them (as the q/k/v sites hold them: before norm and
/// rotation).
pub fn attention<B: Backend>(qkv: &Tensor<B, 2>, shape: &[[usize; 2]], prefixes: &[Option<Prefix<B>>], keep: Option<usize>, spec: &AttentionSpec<B>) -> Option<Tensor<B, 2>> {
    let qkv = flex(qkv.clone()).ok()?;
    let qkv = if qkv.layout().contiguous_offsets().is_some() { qkv } else { qkv.to_contiguous() };
    let mut kv = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        kv.push(match p {
            Some(p) => Some((unit_last(flex(p.k.clone()).ok()?), unit_last(flex(p.v.clone()).ok()?), &p.pairs, p.len)),
            None => None,
        });
    }
    let norm = match spec.qk_norm {
        Some((q, k, eps)) => Some((unit_last(flex(q.clone()).ok()?), unit_last(flex(k.clone()).ok()?), eps as f32)),
        None => None,
    };
    let rope = match spec.rope {
        Some((cos, sin)) => Some((unit_last(flex(cos.clone()).ok()?), unit_last(flex(sin.clone()).ok()?))),
        None => None,
    };
    let (heads, kvh, dh) = (spec.heads, spec.kv_heads, spec.d_head);
    let (d, width, group) = (heads * dh, (heads + 2 * kvh) * dh, heads / kvh);
    let (start, end) = qkv.layout().contiguous_offsets().expect("contiguous");
    let qkv = &qkv.storage::<f32>()[start..end];
    let views: Vec<Option<(View, View, &Vec<usize>, usize)>> = kv.iter().map(|p| p.as_ref().map(|(k, v, pairs, len)| (View::of(k), View::of(v), *pairs, *len))).collect();
    let norms = norm.as_ref().map(|(q, k, eps)| (View::of(q).row(&[0], dh), View::of(k).row(&[0], dh), *eps));
    let rope = rope.as_ref().map(|(c, s)| (View::of(c), View::of(s), c.layout().shape()[1]));
    let moved = norms.is_some() || rope.is_some();

    // One job per (segment, row): its `keep` output positions, all heads.
    let mut jobs = Vec::new();
    let (mut token, mut rows_out) = (0, 0);
    for (g, &[n, s]) in shape.iter().enumerate() {
        let k = keep.unwrap_or(s).min(s);
        for r in 0..n {
            jobs.push((g, r, token + r * s, s, k));
        }
        token += n * s;
        rows_out += n * k;
    }
    let mut out = vec![0.0f32; rows_out * d];
    let mut chunks = Vec::with_capacity(jobs.len());
    let mut rest = out.as_mut_slice();
    for &(_, _, _, _, k) in &jobs {
        let (mine, tail) = rest.split_at_mut(k * d);
        chunks.push(mine);
        rest = tail;
    }
    jobs.into_par_iter().zip(chunks).for_each(|((g, r, first, s, k), out)| {
        let prefix = views[g].as_ref();
        let before = prefix.map_or(0, |p| p.3);
        let token = |j: usize| &qkv[(first + j) * width..(first + j + 1) * width];
        // Key (`which` 1) or value (2) of KV head `h` at position j, as the q/k/v sites hold it.
        let raw = |j: usize, which: usize, h: usize| -> &[f32] {
            match prefix {
                Some((kp, vp, pairs, _)) if j < before => (if which == 1 { kp } else { vp }).row(&[pairs[r], j, h, 0], dh),
                _ => &token(j - before)[(heads + (which - 1) * kvh + h) * dh..][..dh],
            }
        };
        // The row's keys as the scores read them, [kv_heads, positions, d_head], where a norm or
        // rotation moves them.
        let positioned: Vec<f32> = match moved {
            false => Vec::new(),
            true => {
                let mut keys = vec![0.0f32; kvh * (before + s) * dh];
                for (i, key) in keys.chunks_mut(dh).enumerate() {
                    let (h, j) = (i / (before + s), i % (before + s));
                    position(raw(j, 1, h), j, norms.map(|n| (n.1, n.2)), rope.as_ref().map(|(c, s, n)| (c, s, *n)), key);
                }
                keys
            }
        };
        let key = |j: usize, h: usize| -> &[f32] {
            match moved {
                true => &positioned[(h * (before + s) + j) * dh..][..dh],
                false => raw(j, 1, h),
            }
        };
        let mut scores = vec![0.0f32; before + s];
        let mut q = vec![0.0f32; dh];
        for h in 0..heads {
            let kh = h / group;
            for i in 0..k {
                let at = before + s - k + i; // the query's position
                position(&token(at - before)[h * dh..(h + 1) * dh], at, norms.map(|n| (n.0, n.2)), rope.as_ref().map(|(c, s, n)| (c, s, *n)), &mut q);
                let from = spec.window.map_or(0, |w| (at + 1).saturating_sub(w));
                let seen = &mut scores[from..at + 1];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in seen.iter_mut().enumerate() {
                    let x = dot(&q, key(from + j, kh)) * spec.scale;
                    *sc = match spec.softcap {
                        Some(cap) => (x / cap).tanh() * cap,
                        None => x,
                    };
                    max = max.max(*sc);
                }
                let mut sum = 0.0;
                for sc in seen.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let z = &mut out[i * d + h * dh..i * d + (h + 1) * dh];
                for (j, &p) in seen.iter().enumerate() {
                    let p = p / sum;
                    for (z, &v) in z.iter_mut().zip(raw(from + j, 2, kh)) {
                        *z += p * v;
                    }
                }
            }
        }
    });
    Some(from_vec(out, [rows_out, d]))
}
