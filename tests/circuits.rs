//! Reading circuits: attention patterns against TransformerLens' `cache["pattern", layer]`, the
//! `patterns` command's files, and its HTML viewer in a real browser (headless Chromium).
use burn::prelude::*;
use crate::common::*;
use patchbay::backend::{dispatch, BackendTask, DType};
use patchbay::circuits::patterns::patterns;
use patchbay::model::weights::load_located;
use patchbay::model::{Transformer, ModelConfig};
use patchbay::results::{npy::read_own_i32 as read_i32, read_f32};
use std::path::{Path, PathBuf};
use std::process::Command;

fn model<B: Backend>(dir: &Path, device: &B::Device) -> Transformer<B> {
    load_located(dir.to_str().unwrap(), device).unwrap()
}

/// Max |patchbay − TL| over the fixture's clean prompts and, for batching by length and padding,
/// their prefixes of length 1 and ⌈t/2⌉: attention is causal, so a prefix's pattern is the top-left
/// block of the whole prompt's. Some layers and heads only, in a chosen order.
struct AgainstTl(PathBuf);

impl BackendTask for AgainstTl {
    type Output = f32;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<f32> {
        let refs = Refs::load(&self.0);
        let m = model::<B>(&self.0, &device);
        let (l, h) = (m.config.layers, m.config.heads);
        let full = refs.token_rows("tokens");
        let t = full[0].len();
        let mut prompts = full.clone();
        prompts.extend(full.iter().map(|p| p[..t.div_ceil(2)].to_vec()));
        prompts.push(full[0][..1].to_vec());
        let layers: Vec<usize> = (0..l).rev().collect();
        let heads: Vec<usize> = (0..h).filter(|x| x % 2 == 0).chain((0..h).filter(|x| x % 2 == 1)).collect();
        // Two prompts a pass: batches cut within a length.
        let p = patterns(&m, &prompts, &layers, &heads, 2, &mut |_| Ok(()))?;
        assert_eq!(p.shape(), [prompts.len(), l, h, t, t]);
        let mut worst = 0f32;
        for (i, prompt) in prompts.iter().enumerate() {
            let (k, src) = (prompt.len(), i % full.len());
            for (li, &layer) in layers.iter().enumerate() {
                let (tl, shape) = refs.f32(&format!("blocks.{layer}.attn.hook_pattern")); // [P, H, T, T]
                assert_eq!(shape, [full.len(), h, t, t]);
                for (hi, &head) in heads.iter().enumerate() {
                    let rows = p.of(i, li, hi);
                    assert_eq!(rows.len(), k);
                    for (d, row) in rows.iter().enumerate() {
                        let want = &tl[((src * h + head) * t + d) * t..][..k];
                        worst = worst.max(max_abs_diff(row, want));
                    }
                    // Past a prompt's length: NaN padding.
                    let start = ((i * l + li) * h + hi) * t * t;
                    assert!(p.values[start..start + t * t].iter().enumerate().all(|(j, v)| (j / t < k && j % t < k) != v.is_nan()));
                }
            }
        }
        Ok(worst)
    }
}

#[test]
fn patterns_match_transformer_lens_on_every_fixture_shape() {
    for dir in fixture_dirs() {
        for spec in backends().into_iter().filter(|s| s.dtype == DType::F32) {
            let worst = dispatch(&spec, AgainstTl(dir.clone())).unwrap();
            eprintln!("{} {spec:?}: patterns within {worst:.2e} of TransformerLens", name(&dir));
            assert!(worst <= 1e-5, "{} {spec:?}: patterns differ from TransformerLens by {worst}", name(&dir));
        }
    }
}

fn patchbay(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-circuits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PROMPTS: [&str; 2] = ["Michelle Jones was a top-notch student. Michelle", "When Mary and John went to the store, John gave a drink to"];

/// Headless Chromium, as Debian installs it; None (the test says so and passes) where it is not.
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        eprintln!("no Chromium installed (apt-get install chromium): the HTML viewer is not opened in a browser here");
    }
    found
}

fn headless(chromium: &Path, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-weight`s of the token spans in the element with `id` of a dumped DOM.
fn weights(dom: &str, id: &str) -> Vec<f32> {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let end = start + dom[start..].find("</div>").unwrap();
    dom[start..end].split("data-weight=\"").skip(1).map(|s| s[..s.find('"').unwrap()].parse().unwrap()).collect()
}

#[test]
fn patterns_command_writes_arrays_grid_and_a_viewer_that_a_browser_renders() {
    let out = tmp("cli");
    let tiny = tiny();
    let (ok, log) = patchbay(&["patterns", "--model", tiny.to_str().unwrap(), PROMPTS[0], PROMPTS[1], "--layers", "1-2", "--heads", "0,2", "--out", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    for f in ["patterns.npy", "lengths.npy", "patterns.json", "patterns.png", "patterns.svg", "patterns.html"] {
        assert!(out.join(f).exists(), "{f} missing: {log}");
    }
    let (values, shape) = read_f32(&out.join("patterns.npy")).unwrap();
    let (lengths, _) = read_i32(&out.join("lengths.npy")).unwrap();
    let tok = patchbay::tokenizer::Tokenizer::from_file(&tiny.join("tokenizer.json")).unwrap();
    let want: Vec<i32> = PROMPTS.iter().map(|p| tok.encode(p).unwrap().len() as i32).collect();
    let t = want[1] as usize;
    assert_eq!((lengths.clone(), shape.clone()), (want, vec![2, 2, 2, t, t]));
    // Prompt 0 is the fixture's first clean prompt: its patterns are TransformerLens'.
    let refs = Refs::load(&tiny);
    let at = |p: usize, li: usize, hi: usize, d: usize, s: usize| values[(((p * 2 + li) * 2 + hi) * t + d) * t + s];
    for (li, layer) in [1, 2].into_iter().enumerate() {
        let (tl, _) = refs.f32(&format!("blocks.{layer}.attn.hook_pattern"));
        for (hi, head) in [0, 2].into_iter().enumerate() {
            for d in 0..11 {
                for s in 0..11 {
                    let want = tl[((head) * 11 + d) * 11 + s];
                    assert!((at(0, li, hi, d, s) - want).abs() <= 1e-5, "layer {layer} head {head} {d}→{s}");
                }
            }
        }
    }
    // Every destination's weights sum to 1 over its sources, none after it.
    for d in 0..t {
        let row: Vec<f32> = (0..t).map(|s| at(1, 0, 1, d, s)).collect();
        assert!((row[..=d].iter().sum::<f32>() - 1.0).abs() < 1e-5 && row[d + 1..].iter().all(|&w| w == 0.0), "{row:?}");
    }
    // Refuses to clobber, replaces with --overwrite; bad layers and heads are one-line errors.
    let (ok, log) = patchbay(&["patterns", "--model", tiny.to_str().unwrap(), PROMPTS[0], "--out", out.to_str().unwrap()]);
    assert!(!ok && log.contains("--overwrite"), "{log}");
    let (ok, log) = patchbay(&["patterns", "--model", tiny.to_str().unwrap(), PROMPTS[0], "--layers", "3", "--out", out.to_str().unwrap(), "--overwrite"]);
    assert!(!ok && log.contains("outside the model's layers 0..2"), "{log}");

    let Some(chromium) = chromium() else { return };
    let profile = tmp("chromium-profile");
    // The view in the hash: prompt 1, second layer (2), second head (2), hovering token 6.
    let url = format!("file://{}#prompt=1&layer=1&head=1&token=6", out.join("patterns.html").display());
    let dom = headless(&chromium, &profile, &["--virtual-time-budget=5000", "--dump-dom", &url]);
    assert!(dom.contains("layer 2, head 2 (prompt 1)"), "title not rendered: {}", &dom[..dom.len().min(2000)]);
    let to = weights(&dom, "to");
    let from = weights(&dom, "from");
    assert_eq!((to.len(), from.len()), (t, t), "one span per token of prompt 1");
    for s in 0..t {
        assert!((to[s] - at(1, 1, 1, 6, s)).abs() <= 2e-6, "what token 6 attends to, at {s}: {} vs {}", to[s], at(1, 1, 1, 6, s));
        assert!((from[s] - at(1, 1, 1, s, 6)).abs() <= 2e-6, "what attends to token 6, from {s}");
    }
    // A screenshot: the page draws (a heatmap's blues, not a blank page; the masked cells are grey).
    let shot = out.join("viewer.png");
    headless(&chromium, &profile, &["--window-size=1000,900", &format!("--screenshot={}", shot.display()), &url]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut img = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut img).unwrap();
    let px = info.color_type.samples();
    let blue = img[..info.buffer_size()].chunks(px).filter(|p| p[2] as i32 - p[0] as i32 > 25).count();
    assert!(blue > 2000, "the screenshot shows no heatmap ({blue} blue pixels)");
}

/// (what, max |patchbay − TransformerLens|) for the logit lens, the components and the heads, and
/// how far the components with ln_f's bias term are from the logit difference.
struct Attribution(PathBuf, &'static str);

impl BackendTask for Attribution {
    type Output = Vec<(&'static str, f32)>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let refs = Refs::load_file(&self.0, self.1);
        let m = model::<B>(&self.0, &device);
        // The pairs of the references with BOS are their own; the others are refs.safetensors'.
        let pairs = fixture_pairs(&Refs::load_file(&self.0, if self.1 == BOS_REFS { BOS_REFS } else { "refs.safetensors" }));
        // One pair a pass and all at once.
        let one = patchbay::circuits::logit_attribution::attribute(&m, &pairs, 1, &mut |_| Ok(()))?;
        let a = patchbay::circuits::logit_attribution::attribute(&m, &pairs, 64, &mut |_| Ok(()))?;
        let nc = 2 * m.config.layers + 2;
        let sums: Vec<f32> = (0..pairs.len()).map(|p| a.components[p * nc..(p + 1) * nc].iter().sum::<f32>() + a.bias_term[p]).collect();
        Ok(vec![
            ("accumulated", max_abs_diff(&a.accumulated, &refs.f32("dla.accumulated").0)),
            ("components", max_abs_diff(&a.components, &refs.f32("dla.components").0)),
            ("heads", max_abs_diff(&a.heads, &refs.f32("dla.heads").0)),
            // Before the final soft-cap where the model has one (Gemma 2): dla.logit_diff.
            ("logit difference vs the clean baseline", max_abs_diff(&a.logit_diff, &refs.f32(if refs.has("dla.logit_diff") { "dla.logit_diff" } else { "baseline_clean" }).0)),
            ("components + ln_f bias term vs logit difference", max_abs_diff(&sums, &a.logit_diff)),
            ("batch of one vs all", max_abs_diff(&one.heads, &a.heads).max(max_abs_diff(&one.accumulated, &a.accumulated))),
        ])
    }
}

#[test]
fn logit_lens_and_direct_attribution_match_transformer_lens_and_sum_to_the_logit_difference() {
    let mut cases: Vec<_> = fixture_dirs().into_iter().map(|d| (patchbay::backend::BackendSpec::default(), d, "refs.safetensors")).collect();
    cases.push((patchbay::backend::BackendSpec::default(), tiny(), BOS_REFS));
    // The Llama 3 and Qwen families (make_family_capability_refs.py: an RMSNorm is not centred, and
    // rotary positions leave the position component zero).
    for family in ["llama", "llama-tied", "qwen2", "qwen3", "pythia", "gemma2"] {
        cases.push((patchbay::backend::BackendSpec::default(), fixtures().join("families").join(family), "refs-capabilities.safetensors"));
    }
    cases.extend(backends().into_iter().filter(|s| s.dtype == DType::F32 && s.kind != patchbay::backend::BackendKind::Cpu).map(|s| (s, tiny(), "refs.safetensors")));
    for (spec, dir, refs) in cases {
        let diffs = dispatch(&spec, Attribution(dir.clone(), refs)).unwrap();
        eprintln!("{} {refs} {spec:?}: {diffs:?}", name(&dir));
        assert!(diffs.iter().all(|(_, d)| *d <= 1e-4), "{} {refs} {spec:?}: {diffs:?}", name(&dir));
    }
}

#[test]
fn attribute_command_writes_arrays_and_analyze_draws_them() {
    let dir = tmp("attribute");
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        r#"{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"}
{"clean": "When Mary and John went to the store, John gave a drink to", "corrupted": "When Mary and John went to the store, Mary gave a drink to", "answer": " Mary", "distractor": " John"}
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let tiny = tiny();
    let (ok, log) = patchbay(&["attribute", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let (acc, shape) = read_f32(&out.join("accumulated.npy")).unwrap();
    assert_eq!(shape, [2, 7]);
    // The first pair is the fixture's: its logit lens is TransformerLens'.
    assert!(max_abs_diff(&acc[..7], &Refs::load(&tiny).f32("dla.accumulated").0[..7]) <= 1e-4);
    assert_eq!(read_f32(&out.join("heads.npy")).unwrap().1, [2, 3, 4]);
    let (ok, log) = patchbay(&["attribute", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!ok && log.contains("--overwrite"), "{log}");
    let (ok, log) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    for f in ["attribution_summary.json", "accumulated.png", "accumulated.svg", "components.png", "components.svg", "heads.png", "heads.svg"] {
        assert!(out.join(f).exists(), "{f}: {log}");
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("attribution_summary.json")).unwrap()).unwrap();
    assert!(s["max_sum_error"].as_f64().unwrap() < 1e-4, "{s}");
    assert_eq!(s["components"]["labels"][2], "0_attn_out");
    // Replaced, nothing of the earlier result's analysis is left beside the new arrays.
    let (ok, log) = patchbay(&["attribute", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", out.to_str().unwrap(), "--overwrite"]);
    assert!(ok, "{log}");
    for f in patchbay::results::attribution::ANALYSIS {
        assert!(!out.join(f).exists(), "{f} of the replaced result is still there");
    }
}

/// `patchbay graph` on every fixture shape and on GPT-2 small's config.json, against the counts
/// EAP-IG's `Graph.from_model` gives (its `prev_index`: a head of layer l reads the 1 + l·(H+1)
/// nodes before its layer, q, k and v apart; an MLP those and its own layer's heads; the logits
/// every one of the 1 + L·(H+1)); and the edge list, in EAP-IG's names.
#[test]
fn graph_counts_equal_eap_igs_on_every_fixture_shape_and_gpt2_small() {
    let eap = |l: usize, h: usize| -> usize { (0..l).map(|i| 3 * h * (1 + i * (h + 1)) + 1 + i * (h + 1) + h).sum::<usize>() + 1 + l * (h + 1) };
    let small = tmp("graph");
    std::fs::write(
        small.join("config.json"),
        r#"{"activation_function": "gelu_new", "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257, "layer_norm_epsilon": 1e-05}"#,
    )
    .unwrap();
    for dir in fixture_dirs().into_iter().chain([small.clone()]) {
        let c = ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
        let (ok, out) = patchbay(&["graph", "--model", dir.to_str().unwrap()]);
        assert!(ok, "{out}");
        let (nodes, edges) = (2 + c.layers * (c.heads + 1), eap(c.layers, c.heads));
        assert!(out.contains(&format!("{nodes} nodes, {edges} edges")), "{}: {out}", dir.display());
        let (ok, list) = patchbay(&["graph", "--model", dir.to_str().unwrap(), "--edges"]);
        assert!(ok && list.lines().count() == edges, "{}", dir.display());
    }
    let (_, out) = patchbay(&["graph", "--model", small.to_str().unwrap()]);
    assert!(out.contains("158 nodes, 32491 edges (31320 into heads' q, k and v inputs, 1014 into MLPs, 157 into the logits)"), "{out}");
    let (_, list) = patchbay(&["graph", "--model", small.to_str().unwrap(), "--edges"]);
    let list: Vec<&str> = list.lines().collect();
    assert_eq!((list[0], list[36], list[list.len() - 1]), ("input->a0.h0<q>", "input->m0", "m11->logits"));
    for name in ["a0.h1->a2.h3<q>", "m0->m4", "input->logits", "a3.h7->m3", "m2->a3.h0<v>"] {
        assert!(list.contains(&name), "{name}");
    }
    let (ok, out) = patchbay(&["graph", "--model", tmp("no-config").to_str().unwrap()]);
    assert!(!ok && out.contains("config.json") && out.lines().count() == 1, "{out}");
}

/// `patchbay edges`: edges.npy [pairs, edges] through the results transaction (checked by its
/// default verify), equal to the PyTorch per-edge loop; the edge names in the manifest are
/// `graph --edges`'; analyze draws EAP-IG's sender × receiver-input matrix.
#[test]
fn edges_command_writes_every_edge_named_and_analyze_draws_the_score_matrix() {
    let dir = tmp("edges");
    let tiny = tiny();
    let refs = Refs::load_file(&tiny, "refs-edges.safetensors");
    let pairs = dir.join("pairs.jsonl");
    let seed = ["Michelle Smith was a top-notch student. Michelle", "Jessica Jones was a top-notch student. Michelle", "Michelle Smith was a top-notch student. Jessica"];
    let lines: Vec<String> = seed.iter().map(|c| format!(r#"{{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "{c}", "answer": " Jones", "distractor": " Smith"}}"#)).collect();
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let (ok, log) = patchbay(&["edges", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let (got, shape) = read_f32(&out.join("edges.npy")).unwrap();
    let (want, want_shape) = refs.f32("edges");
    assert_eq!(shape, want_shape);
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "edges.npy differs from the PyTorch loop by {diff}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let (_, list) = patchbay(&["graph", "--model", tiny.to_str().unwrap(), "--edges"]);
    let names: Vec<&str> = manifest["sites"][0]["edges"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, list.lines().collect::<Vec<_>>());
    assert_eq!(manifest["sites"][0]["axes"], serde_json::json!(["pair", "edge"]));
    let (ok, log) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let svg = std::fs::read_to_string(out.join("edges.svg")).unwrap();
    assert!(svg.contains("receiver input") && (svg.contains("a1.h2&lt;k&gt;") || svg.contains("a1.h2<k>")), "the matrix names the receivers' inputs");
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.contains("\"input->a0.h0<q>\""), "the summary names each edge");
    // EAP-IG through the CLI (its default verify recomputes rows pair by pair): the arrays hold the
    // corrupted baseline plus the estimate (make_eap_refs.py), and compare against the exact run.
    let ig = dir.join("ig");
    let (ok, log) = patchbay(&["edges", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--method", "eap-ig", "--ig-steps", "5", "--out", ig.to_str().unwrap()]);
    assert!(ok && log.contains("estimated by integrated gradients"), "{log}");
    let (got, _) = read_f32(&ig.join("edges.npy")).unwrap();
    let (base, _) = read_f32(&ig.join("baseline_corrupted.npy")).unwrap();
    let estimate: Vec<f32> = got.chunks(names.len()).zip(&base).flat_map(|(row, b)| row.iter().map(move |v| v - b)).collect();
    let diff = max_abs_diff(&estimate, &Refs::load_file(&tiny, "refs-eap.safetensors").f32("eap_ig5.denoising").0);
    assert!(diff < 1e-4, "EAP-IG through the CLI differs from PyTorch autograd by {diff}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(ig.join("manifest.json")).unwrap()).unwrap();
    assert_eq!((m["method"].as_str(), m["ig_steps"].as_u64()), (Some("eap-ig"), Some(5)));
    let (ok, log) = patchbay(&["analyze", ig.to_str().unwrap(), "--compare", out.to_str().unwrap()]);
    assert!(ok && log.contains("edges: r = "), "{log}");
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(ig.join("compare.json")).unwrap()).unwrap();
    assert_eq!(c["methods"], serde_json::json!(["eap-ig", "exact"]));
    assert_eq!(c["sites"][0]["points"], 3 * names.len());
    let refusals: [&[&str]; 3] = [&["--sites", "resid_pre"], &["--method", "eap", "--ig-steps", "3"], &["--method", "eap-ig", "--ig-steps", "0"]];
    for (extra, why) in refusals.into_iter().zip(["takes no --sites", "--ig-steps is an option of --method eap-ig", "--ig-steps must be at least 1"]) {
        let (ok, log) = patchbay(&[&["edges", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", dir.join("x").to_str().unwrap()][..], extra].concat());
        assert!(!ok && log.contains(why), "{log}");
    }
}

/// `patchbay circuit` and `patchbay faithfulness` on an exact edges run: the circuit's scores are
/// each edge's mean effect, its JSON is EAP-IG's, and the faithfulness curve runs from the empty
/// circuit (the corrupted run) to the whole graph (the clean run), the areas its trapezoids; a
/// circuit written by `circuit` evaluates as the same size chosen by `faithfulness`.
#[test]
fn circuit_and_faithfulness_commands() {
    let dir = tmp("faithfulness");
    let tiny = tiny();
    let pairs = dir.join("pairs.jsonl");
    let seed = ["Michelle Smith was a top-notch student. Michelle", "Jessica Jones was a top-notch student. Michelle", "Michelle Smith was a top-notch student. Jessica"];
    let lines: Vec<String> = seed.iter().map(|c| format!(r#"{{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "{c}", "answer": " Jones", "distractor": " Smith"}}"#)).collect();
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let run = dir.join("run");
    let (ok, log) = patchbay(&["edges", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", run.to_str().unwrap(), "--verify", "0"]);
    assert!(ok, "{log}");
    let (edges, shape) = read_f32(&run.join("edges.npy")).unwrap();
    let (corrupted, _) = read_f32(&run.join("baseline_corrupted.npy")).unwrap();
    let (clean, _) = read_f32(&run.join("baseline_clean.npy")).unwrap();
    let n = shape[1];
    let score = |e: usize| (0..3).map(|p| edges[p * n + e] - corrupted[p]).sum::<f32>() / 3.0;

    let (ok, log) = patchbay(&["circuit", run.to_str().unwrap(), "--top-n", "20"]);
    assert!(ok && log.contains("circuit.json"), "{log}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("circuit.json")).unwrap()).unwrap();
    let names: Vec<String> = json["edges"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), n);
    let (_, list) = patchbay(&["graph", "--model", tiny.to_str().unwrap(), "--edges"]);
    for (e, name) in list.lines().enumerate() {
        let got = json["edges"][name]["score"].as_f64().unwrap() as f32;
        assert!((got - score(e)).abs() < 1e-5, "{name}: {got} vs {}", score(e));
    }
    let kept = json["edges"].as_object().unwrap().values().filter(|e| e["in_graph"] == true).count();
    assert!(kept > 0 && kept <= 20, "{kept}");
    assert_eq!(json["nodes"]["logits"]["in_graph"], true);
    assert!(std::fs::read_to_string(run.join("circuit.svg")).unwrap().contains("logits"));
    let greedy = dir.join("greedy.json");
    let (ok, log) = patchbay(&["circuit", run.to_str().unwrap(), "--greedy", "12", "--no-prune", "--out", greedy.to_str().unwrap()]);
    assert!(ok, "{log}");
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(&greedy).unwrap()).unwrap();
    assert_eq!(g["edges"].as_object().unwrap().values().filter(|e| e["in_graph"] == true).count(), 12);

    let (ok, log) = patchbay(&["faithfulness", run.to_str().unwrap(), "--sizes", &format!("0,5,20,{n}"), "--max-rows", "5"]);
    assert!(ok, "{log}");
    let f: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("faithfulness.json")).unwrap()).unwrap();
    let mean = |v: &[f32]| v.iter().sum::<f32>() as f64 / v.len() as f64;
    assert!((f["whole_graph"].as_f64().unwrap() - mean(&clean)).abs() < 1e-4, "{}", f["whole_graph"]);
    assert!((f["empty_circuit"].as_f64().unwrap() - mean(&corrupted)).abs() < 1e-4, "{}", f["empty_circuit"]);
    let curve: Vec<f64> = f["faithfulness"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(curve[0].abs() < 1e-6 && (curve[3] - 1.0).abs() < 1e-5, "{curve:?}");
    let x: Vec<f64> = [0.0, 5.0, 20.0, n as f64].iter().map(|s| s / n as f64).collect();
    let area = |g: &dyn Fn(f64) -> f64| (0..3).map(|i| (x[i + 1] - x[i]) * (g(curve[i]) + g(curve[i + 1])) / 2.0).sum::<f64>();
    assert!((f["cpr"].as_f64().unwrap() - area(&|y| y)).abs() < 1e-9 && (f["cmd"].as_f64().unwrap() - area(&|y| (1.0 - y).abs())).abs() < 1e-9);
    let (per_pair, shape) = read_f32(&run.join("faithfulness.npy")).unwrap();
    assert_eq!(shape, [4, 3]);
    assert!(std::fs::read(run.join("faithfulness.png")).unwrap().starts_with(b"\x89PNG"));
    // Drawn: the smallest circuit reaching --draw-at (0.8 by default), its JSON the circuit's.
    let drawn = curve.iter().position(|&v| v >= 0.8).unwrap();
    assert_eq!((f["drawn"]["index"].as_u64(), f["drawn"]["reached"].as_bool()), (Some(drawn as u64), Some(true)), "{}", f["drawn"]);
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("faithfulness_circuit.json")).unwrap()).unwrap();
    assert_eq!(d["edges"].as_object().unwrap().values().filter(|e| e["in_graph"] == true).count() as u64, f["edges"][drawn].as_u64().unwrap());
    assert!(std::fs::read_to_string(run.join("faithfulness_circuit.svg")).unwrap().contains("logits"));
    // The top-20 circuit written by `circuit`, evaluated from its JSON: the same runs.
    let out = dir.join("given");
    let (ok, log) = patchbay(&["faithfulness", run.to_str().unwrap(), "--circuits", run.join("circuit.json").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let (given, _) = read_f32(&out.join("faithfulness.npy")).unwrap();
    assert!(max_abs_diff(&given, &per_pair[6..9]) < 1e-5, "{given:?} vs {:?}", &per_pair[6..9]);
    for (args, why) in [(vec!["--sizes", "100000"], "100000 edges asked for"), (vec!["--sizes", "5", "--circuits", "x.json"], "give --sizes or --circuits, not both"), (vec!["--draw-at", "nan"], "--draw-at must be a number")] {
        let (ok, log) = patchbay(&[&["faithfulness", run.to_str().unwrap()][..], &args].concat());
        assert!(!ok && log.contains(why), "{log}");
    }
    let (ok, log) = patchbay(&["circuit", dir.to_str().unwrap(), "--top-n", "3"]);
    assert!(!ok, "{log}");
}
