//! `doctor`: localizes a wrong backend in one run. Every step of every block (the layer norms,
//! the linear layers, the attention products, the softmax, the activation; the attention steps
//! also for the last position alone, as a sweep's last block runs them) and the unembedding run
//! on the CPU, chained as the forward pass runs them. Then each step runs again on the backend
//! under test from the CPU's inputs, so that a step's difference is its own and not what earlier
//! steps passed on: the first step beyond the dtype's tolerance is the faulty operation.
use super::Model;
use crate::backend::{layout, matmul, BackendSpec, DType};
use crate::model::transformer::{linear, mix};
use crate::model::{NoHooks, Qkv, Transformer};
use anyhow::{ensure, Result};
use burn::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct DoctorSpec {
    /// The backend under test; the reference is always the cpu backend in f32.
    pub backend: BackendSpec,
    /// The prompt; None: `positions` fixed pseudo-random token ids (any vocabulary size).
    pub text: Option<String>,
    pub positions: usize,
    /// Batch rows: the prompt's tokens, row r rotated by r (rows that differ, so a kernel that
    /// mixes up batch strides shows).
    pub rows: usize,
    /// Tests: add 1 to the first element of this step's output on the backend under test.
    pub inject_fault: Option<String>,
}

/// One step as the backend under test ran it.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// The block, or None for the steps after the last one (the final norm, the unembedding).
    pub block: Option<usize>,
    pub step: &'static str,
    /// The operands of a matrix product as the backend's kernel reads them: shape and strides.
    pub operands: Vec<String>,
    pub shape: Vec<usize>,
    pub max_abs_diff: f32,
    /// The largest |value| of the CPU's output: the scale the tolerance is relative to.
    pub max_abs: f32,
    pub differs: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Doctor {
    pub backend: BackendSpec,
    /// Relative to each step's largest |value|.
    pub tolerance: f32,
    pub steps: Vec<StepReport>,
    /// The whole forward pass on each backend, as a sweep sees it.
    pub logits_max_abs_diff: f32,
}

impl Doctor {
    /// The first step beyond the tolerance, in forward order.
    pub fn first_difference(&self) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.differs)
    }
}

/// A step's relative tolerance for a backend's precision (per step, from the CPU's inputs).
fn tolerance(spec: &BackendSpec) -> f32 {
    match spec.dtype {
        DType::F32 => 1e-4,
        DType::Tf32 => 1e-2,
        DType::F16 => 2e-2,
        DType::Bf16 => 6e-2,
    }
}

pub fn doctor(model: &str, spec: &DoctorSpec, threads: Option<usize>) -> Result<Doctor> {
    ensure!(spec.rows > 0, "--rows must be at least 1");
    let cpu = Model::load(model, BackendSpec::default(), threads)?;
    let c = &cpu.config;
    crate::limits::at_most("--positions", spec.positions, c.context, "the model's context")?;
    // Every step's output of every row is kept: some 16 widths a layer, and the logits.
    let row_bytes = crate::limits::product("--rows", &[c.context.min(spec.positions.max(64)), c.layers * 16 * c.d_model + c.vocab, 4])?;
    crate::limits::fits_memory("--rows", spec.rows, row_bytes)?;
    let ids = match &spec.text {
        Some(text) => cpu.tokenizer.encode_with(text, false)?,
        None => (0..spec.positions).map(|i| ((i * 7919 + 104_729) % cpu.config.vocab) as u32).collect(),
    };
    ensure!(ids.len() >= 2, "doctor needs a prompt of at least 2 tokens, not {} (--text, --positions)", ids.len());
    let tokens: Vec<Vec<u32>> = (0..spec.rows).map(|r| (0..ids.len()).map(|i| ids[(i + r) % ids.len()]).collect()).collect();
    let trace = on_model!(cpu, |on| -> Trace { trace(on.model, tokens) }, tokens: &'a [Vec<u32>] = &tokens)?;
    let other = Model::load(model, spec.backend.clone(), None)?;
    let tol = tolerance(&spec.backend);
    let (outputs, logits) = on_model!(other, |on| -> Replayed { replay(on.model, trace, tokens, inject) },
        trace: &'a Trace = &trace, tokens: &'a [Vec<u32>] = &tokens, inject: Option<&'a str> = spec.inject_fault.as_deref())?;
    let steps = trace
        .entries
        .iter()
        .zip(outputs)
        .map(|(e, (out, operands))| {
            let want = &trace.values[e.output];
            let max_abs = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            let max_abs_diff = max_diff(&out.data, &want.data);
            StepReport { block: e.block, step: e.step.name(), operands, shape: want.shape.clone(), max_abs_diff, max_abs, differs: !(max_abs_diff <= tol * max_abs.max(1.0)) }
        })
        .collect();
    Ok(Doctor { backend: spec.backend.clone(), tolerance: tol, steps, logits_max_abs_diff: max_diff(&logits.data, &trace.logits.data) })
}

/// NaN where either side is (so a NaN is never "within tolerance").
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, |m, d| if d.is_nan() || m.is_nan() { f32::NAN } else { m.max(d) })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    NormAttn,
    Qkv,
    Scores { last: bool },
    Softmax { last: bool },
    Mix { last: bool },
    AttnOut,
    /// The norm on attention's output (Gemma 2).
    PostAttn,
    NormMlp,
    MlpIn,
    Activation,
    MlpOut,
    PostMlp,
    NormFinal,
    Unembed,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::NormAttn => "norm_attn",
            Step::Qkv => "attn.qkv (linear)",
            Step::Scores { last: false } => "attn.scores (q·kᵀ)",
            Step::Softmax { last: false } => "attn.softmax",
            Step::Mix { last: false } => "attn.z (pattern·v)",
            Step::Scores { last: true } => "attn.scores (q·kᵀ), last position",
            Step::Softmax { last: true } => "attn.softmax, last position",
            Step::Mix { last: true } => "attn.z (pattern·v), last position",
            Step::AttnOut => "attn.out (linear)",
            Step::PostAttn => "post_attn",
            Step::NormMlp => "norm_mlp",
            Step::MlpIn => "mlp.in (linear)",
            Step::Activation => "mlp.act",
            Step::MlpOut => "mlp.out (linear)",
            Step::PostMlp => "post_mlp",
            Step::NormFinal => "norm_final",
            Step::Unembed => "unembed (linear)",
        }
    }

    /// Whether `name` (a `--inject-fault` value) names this step: its name up to the first space.
    fn is(self, name: &str) -> bool {
        let full = self.name();
        full == name || full.split(' ').next() == Some(name) && !matches!(self, Step::Scores { last: true } | Step::Softmax { last: true } | Step::Mix { last: true })
    }
}

/// An array on the host.
#[derive(Clone, Debug)]
struct Host {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Host {
    fn of<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        Self { shape: t.dims().to_vec(), data: t.into_data().convert::<f32>().to_vec().expect("f32 data") }
    }

    fn on<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        let shape: [usize; D] = self.shape.clone().try_into().expect("a step's input of the rank it takes");
        Tensor::from_data(TensorData::new(self.data.clone(), shape).convert_dtype(<B::FloatElem as burn::tensor::Element>::dtype()), device)
    }

    fn add(&self, other: &Host) -> Host {
        Host { shape: self.shape.clone(), data: self.data.iter().zip(&other.data).map(|(a, b)| a + b).collect() }
    }
}

/// A step of the forward: which values it reads and which it writes.
struct Entry {
    block: Option<usize>,
    step: Step,
    inputs: Vec<usize>,
    output: usize,
}

/// The CPU's forward, step by step: every value, and the logits of the whole forward.
struct Trace {
    entries: Vec<Entry>,
    values: Vec<Host>,
    logits: Host,
}

/// The forward of `tokens` on the model, step by step (`Trace`).
fn trace<B: Backend>(m: &Transformer<B>, tokens: &[Vec<u32>]) -> Result<Trace> {
    let device = m.device();
    let tokens = m.tokens(tokens)?;
    let logits = Host::of(m.forward(tokens.clone(), &mut NoHooks));
    let mut t = Trace { entries: Vec::new(), values: vec![Host::of(m.embed(tokens, 0))], logits };
    let step = |t: &mut Trace, block: Option<usize>, step: Step, inputs: Vec<usize>| {
        let ins: Vec<&Host> = inputs.iter().map(|&i| &t.values[i]).collect();
        let (out, _) = run_step(m, block, step, &ins, &device);
        t.values.push(out);
        let output = t.values.len() - 1;
        t.entries.push(Entry { block, step, inputs, output });
        output
    };
    let mut resid = 0;
    for l in 0..m.blocks.len() {
        let b = Some(l);
        let x = step(&mut t, b, Step::NormAttn, vec![resid]);
        let qkv = step(&mut t, b, Step::Qkv, vec![x]);
        let mut z = 0;
        for last in [false, true] {
            let s = step(&mut t, b, Step::Scores { last }, vec![qkv]);
            let p = step(&mut t, b, Step::Softmax { last }, vec![s]);
            let zz = step(&mut t, b, Step::Mix { last }, vec![p, qkv]);
            if !last {
                z = zz;
            }
        }
        let post_norms = m.blocks[l].post_norms.is_some();
        let mut attn_out = step(&mut t, b, Step::AttnOut, vec![z]);
        if post_norms {
            attn_out = step(&mut t, b, Step::PostAttn, vec![attn_out]);
        }
        let mid = t.values[resid].add(&t.values[attn_out]);
        t.values.push(mid);
        let mid = t.values.len() - 1;
        // A parallel block's MLP reads the block's input.
        let x = step(&mut t, b, Step::NormMlp, vec![if m.blocks[l].parallel { resid } else { mid }]);
        let h = step(&mut t, b, Step::MlpIn, vec![x]);
        let h = step(&mut t, b, Step::Activation, vec![h]);
        let mut mlp_out = step(&mut t, b, Step::MlpOut, vec![h]);
        if post_norms {
            mlp_out = step(&mut t, b, Step::PostMlp, vec![mlp_out]);
        }
        let post = t.values[mid].add(&t.values[mlp_out]);
        t.values.push(post);
        resid = t.values.len() - 1;
    }
    let x = step(&mut t, None, Step::NormFinal, vec![resid]);
    let composed = step(&mut t, None, Step::Unembed, vec![x]);
    // The steps compose to the model's own forward: a step wired to the wrong input (a parallel
    // block's MLP reading attention's output) would be doctor's error, not the backend's.
    let off = max_diff(&t.values[composed].data, &t.logits.data);
    let scale = t.logits.data.iter().fold(1f32, |m, v| m.max(v.abs()));
    ensure!(off <= 1e-4 * scale, "doctor's steps do not compose to the model's forward on the cpu (logits {off:.2e} apart): a bug in doctor, not in the backend");
    Ok(t)
}

/// Each step's output and its product's operands, and the logits of the whole forward.
type Replayed = (Vec<(Host, Vec<String>)>, Host);

/// Each of `trace`'s steps on another backend, from the trace's own inputs (a fault injected into
/// the step named `inject`).
fn replay<B: Backend>(m: &Transformer<B>, trace: &Trace, tokens: &[Vec<u32>], inject: Option<&str>) -> Result<Replayed> {
    let device = m.device();
    let logits = Host::of(m.forward(m.tokens(tokens)?, &mut NoHooks));
    let outputs = trace
        .entries
        .iter()
        .map(|e| {
            let ins: Vec<&Host> = e.inputs.iter().map(|&i| &trace.values[i]).collect();
            let (mut out, operands) = run_step(m, e.block, e.step, &ins, &device);
            if inject.is_some_and(|name| e.step.is(name)) {
                out.data[0] += 1.0;
            }
            (out, operands)
        })
        .collect();
    Ok((outputs, logits))
}

/// One step of `block` (None: after the last block) on inputs from the host: its output, and its
/// matrix product's operands as the backend holds them.
fn run_step<B: Backend>(m: &Transformer<B>, block: Option<usize>, step: Step, ins: &[&Host], device: &B::Device) -> (Host, Vec<String>) {
    let blk = block.map(|l| &m.blocks[l]);
    let blk = || blk.expect("a block's step");
    let t3 = |i: usize| ins[i].on::<B, 3>(device);
    let linear3 = |x: Tensor<B, 3>, w: &Tensor<B, 2>, b: Option<&Tensor<B, 1>>| {
        let [rows, s, k] = x.dims();
        let x = x.reshape([rows * s, k]);
        let operands = vec![layout(&x), layout(w)];
        (Host::of(linear(x, w, b).reshape([rows, s, w.dims()[1]])), operands)
    };
    let last_from = |qkv: &Tensor<B, 3>, last: bool| if last { qkv.dims()[1] - 1 } else { 0 };
    match step {
        Step::NormAttn => (Host::of(blk().norm_attn.forward(t3(0))), vec![]),
        Step::NormMlp => (Host::of(blk().norm_mlp.forward(t3(0))), vec![]),
        Step::PostAttn | Step::PostMlp => {
            let [post_attn, post_mlp] = blk().post_norms.as_ref().expect("post-norm steps are traced where there are post-norms");
            (Host::of(if step == Step::PostAttn { post_attn } else { post_mlp }.forward(t3(0))), vec![])
        }
        Step::NormFinal => (Host::of(m.norm_final().forward(t3(0))), vec![]),
        Step::Qkv => linear3(t3(0), &blk().attn.w_qkv, blk().attn.b_qkv.as_ref()),
        Step::AttnOut => linear3(t3(0), &blk().attn.w_o, blk().attn.b_o.as_ref()),
        Step::MlpIn => linear3(t3(0), &blk().mlp.w_in, blk().mlp.b_in.as_ref()),
        Step::MlpOut => linear3(t3(0), &blk().mlp.w_out, blk().mlp.b_out.as_ref()),
        Step::Activation => {
            let x = t3(0);
            let [rows, s, k] = x.dims();
            let y = blk().mlp.activation(x.reshape([rows * s, k]));
            let width = y.dims()[1];
            (Host::of(y.reshape([rows, s, width])), vec![])
        }
        Step::Scores { last } => {
            let qkv = t3(0);
            let attn = &blk().attn;
            let (q, k) = attn.positioned(attn.split(&qkv, Qkv::Q, last_from(&qkv, last)).swap_dims(1, 2), attn.split(&qkv, Qkv::K, 0).swap_dims(1, 2));
            let k = attn.grouped(k);
            let operands = vec![layout(&q), layout(&k.clone().swap_dims(2, 3))];
            (Host::of(attn.scores(q, k)), operands)
        }
        Step::Softmax { .. } => (Host::of(blk().attn.pattern(ins[0].on::<B, 4>(device))), vec![]),
        Step::Mix { .. } => {
            let (pattern, qkv) = (ins[0].on::<B, 4>(device), t3(1));
            let v = blk().attn.grouped(blk().attn.split(&qkv, Qkv::V, 0).swap_dims(1, 2));
            let operands = vec![layout(&pattern), layout(&v)];
            let z = mix(pattern, v);
            let [b, keep, h, dh] = z.dims();
            (Host::of(z.reshape([b, keep, h * dh])), operands)
        }
        Step::Unembed => {
            let x = t3(0);
            let [rows, s, d] = x.dims();
            let (x, w) = (x.reshape([rows * s, d]), m.w_u().clone().transpose());
            let operands = vec![layout(&x), layout(&w)];
            (Host::of(m.softcap(matmul(x, w).reshape([rows, s, m.config.vocab]))), operands)
        }
    }
}
