//! Generation (KV-cache decoding, greedy, sampled and steered), perplexity, candidates and going
//! backwards against HF transformers on the tiny fixture (tests/fixtures/make_generation_refs.py),
//! on every backend compiled in.
use burn::prelude::*;
use crate::common::*;
use patchbay::backend::{dispatch, BackendKind, BackendSpec, BackendTask, DType};
use patchbay::generate::sampling::Sampling;
use patchbay::generate::steer::{self, SteeringVector};
use patchbay::generate::{generate, perplexity, token_losses, KvCache, Memory, Options};
use patchbay::model::weights::load_located;
use patchbay::model::{NoHooks, Site, SiteKind, Transformer};
use std::path::PathBuf;
use std::process::Command;

const REFS: &str = "refs-generate.safetensors";
/// As in make_generation_refs.py.
const PROMPTS: [&str; 2] = ["Michelle Jones was a top-notch student. Michelle", "When Mary and John went to the store, John gave a drink to"];
const TEXTS: [&str; 3] = ["Michelle Jones was a top-notch student. Michelle", "The cat sat on the mat.", "Hi there"];
const NEW_TOKENS: usize = 10;

fn model<B: Backend>(device: &B::Device) -> Transformer<B> {
    load_located(tiny().to_str().unwrap(), device).unwrap()
}

fn ids(refs: &Refs, name: &str) -> Vec<u32> {
    refs.i32(name).0.into_iter().map(|t| t as u32).collect()
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn options(sampling: Sampling, num_sequences: usize, seed: u64, stop_at: Option<u32>, batch: usize) -> Options {
    Options { max_new_tokens: NEW_TOKENS, sampling, num_sequences, seed, stop_at: stop_at.into_iter().collect(), batch, steer: None }
}

/// Step by step, the KV cache's logits against the whole sequence's forward pass (greedy).
struct StepByStep;

impl BackendTask for StepByStep {
    /// (max |cached − full| over every step's logits, the greedy tokens)
    type Output = (f32, Vec<u32>);
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let m = model::<B>(&device);
        let refs = Refs::load_file(&tiny(), REFS);
        let mut seq = ids(&refs, "gen.prompt0");
        let mut cache = KvCache::new();
        let (mut worst, mut new) = (0.0f32, Vec::new());
        let mut step = seq.clone();
        for _ in 0..NEW_TOKENS {
            let cached = host(cache.step(&m, m.tokens(&[step])?, &mut NoHooks));
            let full = m.forward(m.tokens(&[seq.clone()])?, &mut NoHooks);
            let full = host(full.narrow(1, seq.len() - 1, 1));
            worst = worst.max(max_abs_diff(&cached, &full));
            let t = patchbay::generate::sampling::argmax(&cached) as u32;
            seq.push(t);
            new.push(t);
            step = vec![t];
        }
        assert_eq!(cache.len(), seq.len() - 1);
        Ok((worst, new))
    }
}

#[test]
fn kv_cache_steps_equal_the_full_forward_and_greedy_equals_hf_on_every_backend() {
    let refs = Refs::load_file(&tiny(), REFS);
    let tok = patchbay::tokenizer::Tokenizer::from_file(&tiny().join("tokenizer.json")).unwrap();
    for (i, p) in PROMPTS.iter().enumerate() {
        assert_eq!(tok.encode(p).unwrap(), ids(&refs, &format!("gen.prompt{i}")), "the references' prompt {i}");
    }
    let hf = ids(&refs, "gen.greedy0");
    for spec in backends() {
        let (worst, tokens) = dispatch(&spec, StepByStep).unwrap();
        eprintln!("{spec:?}: KV-cache logits vs the full forward {worst:.2e}, greedy {tokens:?}");
        assert!(worst < tolerance(&spec), "{spec:?}: the KV cache's logits differ from the full forward by {worst}");
        if spec.dtype == DType::F32 {
            assert_eq!(tokens, hf, "{spec:?}: greedy tokens differ from HF generate(do_sample=False)");
        }
    }
}

/// `generate` on one backend: the given options over `prompts`.
struct Generate(Vec<Vec<u32>>, Options);

impl BackendTask for Generate {
    type Output = Vec<Vec<u32>>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        generate(&model::<B>(&device), &self.0, &self.1, &mut |_| Ok(()))
    }
}

fn f32_backends() -> Vec<BackendSpec> {
    // Fusion off only: the step-by-step test above covers fusion; lavapipe compiles slowly.
    backends().into_iter().filter(|s| s.dtype == DType::F32 && !s.fusion).collect()
}

#[test]
fn batched_generation_finishes_sequences_independently_and_sampling_is_reproducible() {
    let refs = Refs::load_file(&tiny(), REFS);
    let tok = patchbay::tokenizer::Tokenizer::from_file(&tiny().join("tokenizer.json")).unwrap();
    let prompts = vec![ids(&refs, "gen.prompt0"), ids(&refs, "gen.prompt1")];
    let hf = [ids(&refs, "gen.greedy0"), ids(&refs, "gen.greedy1")];
    let cpu = BackendSpec::default();
    // Greedy, both prompts (two lengths), two sequences each: HF's tokens for every sequence.
    let got = dispatch(&cpu, Generate(prompts.clone(), options(Sampling::GREEDY, 2, 0, None, 64))).unwrap();
    assert_eq!(got, vec![hf[0].clone(), hf[0].clone(), hf[1].clone(), hf[1].clone()]);

    // Two prompts of one length in one batch, stopping at a token the first emits early and the
    // second never does: the first ends there, the second runs on, each as when decoded alone.
    let other = tok.encode("Michelle Smith was a top-notch student. Michelle").unwrap();
    assert_eq!(other.len(), prompts[0].len());
    let pair = vec![prompts[0].clone(), other];
    let alone = dispatch(&cpu, Generate(pair.clone(), options(Sampling::GREEDY, 1, 0, None, 1))).unwrap();
    let stop = *alone[0].iter().take(4).find(|t| !alone[1].contains(t)).expect("a token only the first prompt's text has early");
    let cut = alone[0].iter().position(|&t| t == stop).unwrap() + 1;
    let stopped = dispatch(&cpu, Generate(pair, options(Sampling::GREEDY, 1, 0, Some(stop), 64))).unwrap();
    assert_eq!(stopped, vec![alone[0][..cut].to_vec(), alone[1].clone()]);

    // Sampled: the same seed gives the same streams on every run, batch size and backend; another
    // seed others.
    let sampled = Sampling { temperature: Some(1.0), top_k: Some(50), top_p: Some(0.9), freq_penalty: 0.5 };
    let want = dispatch(&cpu, Generate(prompts.clone(), options(sampled.clone(), 3, 3, None, 64))).unwrap();
    assert_eq!(want, dispatch(&cpu, Generate(prompts.clone(), options(sampled.clone(), 3, 3, None, 64))).unwrap());
    assert_eq!(want, dispatch(&cpu, Generate(prompts.clone(), options(sampled.clone(), 3, 3, None, 1))).unwrap());
    assert!(want[0] != want[1] && want[0] != hf[0], "sequences of one prompt differ, and from greedy: {want:?}");
    assert_ne!(want, dispatch(&cpu, Generate(prompts.clone(), options(sampled.clone(), 3, 4, None, 64))).unwrap());
    for spec in f32_backends().into_iter().filter(|s| s.kind != BackendKind::Cpu) {
        assert_eq!(want, dispatch(&spec, Generate(prompts.clone(), options(sampled.clone(), 3, 3, None, 64))).unwrap(), "{spec:?}");
    }
}

struct Losses(Vec<Vec<u32>>);

impl BackendTask for Losses {
    type Output = Vec<Vec<f32>>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        // Two texts a pass asked for, one allowed: batching by the memory budget changes nothing.
        token_losses(&model::<B>(&device), &self.0, 2, Memory { budget: 0, buffer: usize::MAX }, &mut |_| Ok(()))
    }
}

fn patchbay(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-generate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn perplexity_equals_hf_per_text_and_per_token() {
    let refs = Refs::load_file(&tiny(), REFS);
    let tok = patchbay::tokenizer::Tokenizer::from_file(&tiny().join("tokenizer.json")).unwrap();
    let texts: Vec<Vec<u32>> = (0..TEXTS.len()).map(|i| ids(&refs, &format!("ppl.ids{i}"))).collect();
    for (t, want) in TEXTS.iter().zip(&texts) {
        assert_eq!(&tok.encode(t).unwrap(), want);
    }
    let (hf_ppl, _) = refs.f32("ppl.perplexity");
    for spec in f32_backends() {
        let got = dispatch(&spec, Losses(texts.clone())).unwrap();
        for (i, l) in got.iter().enumerate() {
            let (want, _) = refs.f32(&format!("ppl.token_loss{i}"));
            assert!(max_abs_diff(l, &want) <= 1e-4, "{spec:?} text {i}: token losses {l:?} vs HF {want:?}");
            let rel = (perplexity(l) - hf_ppl[i]).abs() / hf_ppl[i];
            assert!(rel <= 1e-4, "{spec:?} text {i}: perplexity {} vs HF {} ({rel:.1e} relative)", perplexity(l), hf_ppl[i]);
        }
    }

    // The command: JSON with per-token values, the arrays in --out, and one-line errors.
    let out = tmp("ppl");
    let model = tiny();
    let (ok, log) = patchbay(&["perplexity", "--model", model.to_str().unwrap(), TEXTS[0], TEXTS[1], TEXTS[2], "--per-token", "--json", "--out", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let json: serde_json::Value = serde_json::from_str(&log[..log.rfind(']').unwrap() + 1]).unwrap();
    for i in 0..TEXTS.len() {
        let p = json[i]["perplexity"].as_f64().unwrap() as f32;
        assert!((p - hf_ppl[i]).abs() / hf_ppl[i] <= 1e-4, "text {i}: {p} vs {}", hf_ppl[i]);
        let per_token = json[i]["per_token"].as_array().unwrap();
        let (want, _) = refs.f32(&format!("ppl.token_loss{i}"));
        assert_eq!(per_token.len(), want.len());
        assert_eq!(per_token[0][0].as_str().unwrap(), tok.token_str(texts[i][1]));
        let p0 = per_token[0][1].as_f64().unwrap() as f32;
        assert!((p0 - want[0].exp()).abs() / want[0].exp() <= 1e-4);
    }
    let (pp, shape) = patchbay::results::read_f32(&out.join("perplexity.npy")).unwrap();
    assert_eq!(shape, vec![3]);
    assert!(pp.iter().zip(&hf_ppl).all(|(a, b)| (a - b).abs() / b <= 1e-4));
    let (tp, shape) = patchbay::results::read_f32(&out.join("token_perplexity.npy")).unwrap();
    assert_eq!(shape, vec![3, texts[0].len() - 1]);
    assert!(tp[2 * shape[1] + 1].is_nan() && !tp[2 * shape[1]].is_nan(), "padding past the 2-token text's one loss");
    let (ok, log) = patchbay(&["perplexity", "--model", model.to_str().unwrap(), "Hi"]);
    assert!(!ok && log.contains("text 1 (\"Hi\") has 1 token(s): perplexity needs at least 2"), "{log}");
    let file = out.join("t.jsonl");
    std::fs::write(&file, "{\"text\": \"Hi there\"}\n{\"txt\": 1}\n").unwrap();
    let (ok, log) = patchbay(&["perplexity", "--model", model.to_str().unwrap(), "--texts", file.to_str().unwrap()]);
    assert!(!ok && log.contains("t.jsonl line 2: no \"prompt\" or \"text\" string"), "{log}");
    // A text is named by its file's line (blank lines are skipped), the token or length at fault
    // shown: the tiny model's context is 32 positions.
    let long = "Michelle Jones was a top-notch student. ".repeat(4);
    std::fs::write(&file, format!("{{\"text\": \"Hi there\"}}\n\n{{\"text\": \"{long}\"}}\n")).unwrap();
    let (ok, log) = patchbay(&["perplexity", "--model", model.to_str().unwrap(), "--texts", file.to_str().unwrap()]);
    let n = tok.encode(&long).unwrap().len();
    let want = format!("t.jsonl line 3 (\"Michelle Jones was a top-notch student. …\"): {n} tokens exceed the model's context of 32 positions");
    assert!(!ok && log.contains(&want) && log.trim().lines().count() == 1, "{log}");
    // The shape fixtures' vocabulary is 512 ids: GPT-2's BOS (50256) is outside it.
    let small = fixtures().join("shapes/h4-dh16");
    let (ok, log) = patchbay(&["perplexity", "--model", small.to_str().unwrap(), "x+y", "--prepend-bos"]);
    let want = "text 1 (\"x+y\"): the BOS token added in front \"<|endoftext|>\" (id 50256, position 0) is outside the model's vocabulary of 512";
    assert!(!ok && log.contains(want), "{log}");
}

#[test]
fn generate_command_prints_hf_greedy_and_reproducible_samples() {
    let refs = Refs::load_file(&tiny(), REFS);
    let model = tiny();
    let m = model.to_str().unwrap();
    let run = |extra: &[&str]| {
        let (ok, log) = patchbay(&[&["generate", "--model", m, PROMPTS[0], "--max-new-tokens", "10", "--json"], extra].concat());
        assert!(ok, "{log}");
        let json: serde_json::Value = serde_json::from_str(&log[log.find('[').unwrap()..log.rfind(']').unwrap() + 1]).unwrap();
        json.as_array().unwrap().iter().map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    assert_eq!(run(&["--greedy"]), vec![ids(&refs, "gen.greedy0")]);
    let a = run(&["--seed", "5", "--num-sequences", "2", "--top-k", "20"]);
    assert_eq!(a.len(), 2);
    assert_eq!(a, run(&["--seed", "5", "--num-sequences", "2", "--top-k", "20", "--batch", "1"]));
    let (ok, log) = patchbay(&["generate", "--model", m, PROMPTS[0], "--max-new-tokens", "30"]);
    assert!(!ok && log.contains("exceeds the model's context of 32"), "{log}");
    let (ok, log) = patchbay(&["generate", "--model", m, PROMPTS[0], "--temperature", "0"]);
    assert!(!ok && log.contains("--greedy"), "{log}");
    // Options that would be ignored or poison every logit are refused in one line.
    for (flag, value, says) in [("--top-k", "0", "--top-k must be at least 1"), ("--freq-penalty", "nan", "--freq-penalty must be a finite number"), ("--num-sequences", "0", "--num-sequences must be at least 1")] {
        let (ok, log) = patchbay(&["generate", "--model", m, PROMPTS[0], flag, value]);
        assert!(!ok && log.contains(says) && log.trim().lines().count() == 1, "{flag} {value}: {log}");
    }
}

struct TopK(Vec<u32>);

impl BackendTask for TopK {
    type Output = Vec<Vec<Vec<(u32, f32)>>>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        patchbay::generate::candidates::top_k(&model::<B>(&device), &[self.0], 5, true, 8, Memory { budget: usize::MAX, buffer: usize::MAX })
    }
}

#[test]
fn candidates_are_hfs_top_k_and_pools_overlap_as_hf_computes() {
    let refs = Refs::load_file(&tiny(), REFS);
    let text = ids(&refs, "cand.ids");
    let (want_ids, want_probs) = (refs.i32("cand.top_ids").0, refs.f32("cand.top_probs").0);
    for spec in f32_backends() {
        let got = dispatch(&spec, TopK(text.clone())).unwrap();
        assert_eq!(got[0].len(), text.len(), "a table per position");
        let flat: Vec<(u32, f32)> = got[0].concat();
        assert_eq!(flat.iter().map(|c| c.0 as i32).collect::<Vec<_>>(), want_ids, "{spec:?}: the top-5 ids of every position");
        assert!(max_abs_diff(&flat.iter().map(|c| c.1).collect::<Vec<_>>(), &want_probs) <= 1e-5, "{spec:?}: probabilities");
    }
    // The command: the last position's table with repr-escaped tokens; the pools of a prompts file.
    let model = tiny();
    let m = model.to_str().unwrap();
    let tok = patchbay::tokenizer::Tokenizer::from_file(&tiny().join("tokenizer.json")).unwrap();
    let (ok, log) = patchbay(&["candidates", "--model", m, PROMPTS[1]]);
    assert!(ok, "{log}");
    let top = want_ids[(text.len() - 1) * 5] as u32;
    assert!(log.contains(&patchbay::generate::candidates::py_repr(&tok.token_str(top))), "{log}");
    let out = tmp("cand");
    let file = out.join("p.jsonl");
    let lines: Vec<String> = PROMPTS.iter().chain(&TEXTS).map(|t| serde_json::json!({ "prompt": t }).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (ok, log) = patchbay(&["candidates", "--model", m, "--prompts", file.to_str().unwrap(), "--top-k", "20", "--out", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let (j, shape) = patchbay::results::read_f32(&out.join("jaccard.npy")).unwrap();
    assert_eq!(shape, vec![5, 5]);
    assert!(max_abs_diff(&j, &refs.f32("cand.jaccard").0) <= 1e-6, "{j:?}");
    assert!(out.join("jaccard.png").exists() && out.join("candidates.json").exists());
    // The same directory again, one prompt: refused without --overwrite; with it, no Jaccard
    // matrix of the earlier run is left beside the new listing.
    let one = ["candidates", "--model", m, PROMPTS[1], "--out", out.to_str().unwrap()];
    let (ok, log) = patchbay(&one);
    assert!(!ok && log.contains("--overwrite"), "{log}");
    let (ok, log) = patchbay(&[&one[..], &["--overwrite"]].concat());
    assert!(ok, "{log}");
    let listing: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("candidates.json")).unwrap()).unwrap();
    assert_eq!(listing["texts"].as_array().unwrap().len(), 1);
    for stale in ["jaccard.npy", "jaccard.png", "jaccard.svg"] {
        assert!(!out.join(stale).exists(), "{stale} of the earlier run is still there");
    }
}

/// As in make_generation_refs.py.
const STEER: (&str, &str, usize, f32) = (" love", " hate", 1, -2.0);

/// A steering vector made on one backend, and greedy decoding of PROMPTS[0] steered with it.
struct Steered(SiteKind);

impl BackendTask for Steered {
    type Output = (Vec<f32>, Vec<u32>);
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let m = model::<B>(&device);
        let tok = patchbay::tokenizer::Tokenizer::from_file(&tiny().join("tokenizer.json"))?;
        let site = Site::new(self.0, STEER.2);
        let (values, shape) = steer::make(&m, &tok.encode(STEER.0)?, &tok.encode(STEER.1)?, site, -1)?;
        let prompt = tok.encode(PROMPTS[0])?;
        let o = Options { steer: Some(SteeringVector { site, values: values.clone(), shape, coef: STEER.3 }), ..options(Sampling::GREEDY, 1, 0, None, 8) };
        Ok((values, generate(&m, &[prompt], &o, &mut |_| Ok(()))?.remove(0)))
    }
}

#[test]
fn steering_vectors_and_steered_greedy_output_equal_an_hf_forward_hook() {
    let refs = Refs::load_file(&tiny(), REFS);
    for spec in f32_backends() {
        for (kind, name) in [(SiteKind::AttnOut, "attn_out"), (SiteKind::Z, "z")] {
            let (vec, tokens) = dispatch(&spec, Steered(kind)).unwrap();
            assert!(max_abs_diff(&vec, &refs.f32(&format!("steer.{name}.vec")).0) <= 1e-5, "{spec:?} {name}: the vector");
            assert_eq!(tokens, ids(&refs, &format!("steer.{name}.greedy")), "{spec:?} {name}: steered greedy tokens");
            assert_ne!(tokens, ids(&refs, "gen.greedy0"), "steering changes the output");
        }
    }
    // The commands: `steer make` writes the vector, `generate --steer` decodes with it.
    let m = tiny();
    let m = m.to_str().unwrap();
    let out = tmp("steer");
    let vec = out.join("vec.npy");
    let make = ["steer", "make", "--model", m, "--clean", STEER.0, "--corrupted", STEER.1, "--site", "attn_out", "--layer", "1", "--out", vec.to_str().unwrap()];
    let (ok, log) = patchbay(&make);
    assert!(ok, "{log}");
    let (got, shape) = patchbay::results::read_f32(&vec).unwrap();
    assert_eq!(shape, vec![16]);
    assert!(max_abs_diff(&got, &refs.f32("steer.attn_out.vec").0) <= 1e-5);
    let (ok, log) = patchbay(&make);
    assert!(!ok && log.contains("--overwrite"), "{log}");
    let steered = ["generate", "--model", m, PROMPTS[0], "--greedy", "--max-new-tokens", "10", "--json", "--steer", vec.to_str().unwrap(), "--steer-site", "attn_out", "--steer-layer", "1", "--coef", "-2"];
    let (ok, log) = patchbay(&steered);
    assert!(ok, "{log}");
    let json: serde_json::Value = serde_json::from_str(&log[log.find('[').unwrap()..]).unwrap();
    let tokens: Vec<u32> = json[0]["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    assert_eq!(tokens, ids(&refs, "steer.attn_out.greedy"));
    // A vector of another site's shape is refused in one line.
    let (ok, log) = patchbay(&[&steered[..10], &["--steer-site", "z", "--steer-layer", "1"]].concat());
    assert!(!ok && log.contains("shape [16]") && log.contains("blocks.1.attn.hook_z"), "{log}");
}

#[test]
fn prepend_goes_backwards_as_the_reference_does() {
    let refs = Refs::load_file(&tiny(), REFS);
    let m = tiny();
    let (ok, log) = patchbay(&["prepend", "--model", m.to_str().unwrap(), TEXTS[1], "--n-tokens", "3", "--samples", "8", "--seed", "1", "--json"]);
    assert!(ok, "{log}");
    let json: serde_json::Value = serde_json::from_str(&log[log.find('[').unwrap()..]).unwrap();
    let steps = json.as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let want_ppl = refs.f32("prep.ppl").0;
    for (i, s) in steps.iter().enumerate() {
        let tokens: Vec<u32> = s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(tokens, ids(&refs, &format!("prep.step{i}")), "step {}", i + 1);
        let p = s["perplexity"].as_f64().unwrap() as f32;
        assert!((p - want_ppl[i]).abs() <= 1e-4 * want_ppl[i], "step {}: {p} vs HF {}", i + 1, want_ppl[i]);
        let best = s["candidates"].as_array().unwrap().iter().map(|c| c[2].as_f64().unwrap() as f32).fold(f32::INFINITY, f32::min);
        assert_eq!(best, p, "the lowest-perplexity candidate is kept");
    }
    assert_eq!(ids(&refs, "prep.step0")[1..], ids(&refs, "prep.ids")[..]);
}
