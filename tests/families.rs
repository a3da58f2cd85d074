//! The Llama 3, Mistral, Qwen2 (2.5), Qwen3, GPT-NeoX (Pythia) and Gemma 2 families against HF transformers, on the checkpoints of
//! tests/fixtures/families (make_family_fixtures.py: random weights, tiny shapes, stored as the hub
//! stores them: hub and transformers-5 rope configs, F32 / BF16 / F16, one file or shards):
//! tokenization, logits and every TransformerLens site (against TransformerLens' own adapters too:
//! make_family_tl_refs.py), activation patching through the CLI (k and v
//! per key/value head), greedy generation with the KV cache, and perplexity and candidates from
//! the same logits as HF's.
use crate::common::*;
use burn::prelude::*;
use patchbay::backend::{dispatch, BackendSpec, BackendTask, DType};
use patchbay::generate::sampling::Sampling;
use patchbay::generate::{generate, Options};
use patchbay::model::weights::load_located;
use patchbay::model::{Cache, Site, SiteKind};
use std::path::{Path, PathBuf};

/// `mistral`: a Mistral-7B-v0.3-style config (no sliding window), Llama's computation.
const FAMILIES: [&str; 8] = ["llama", "llama-rope-parameters", "llama-tied", "mistral", "qwen2", "qwen3", "pythia", "gemma2"];
/// As in make_family_fixtures.py.
const PAIRS: [(&str, &str, &str, &str); 3] = [
    ("Michelle Jones was a top-notch student. Michelle", "Michelle Smith was a top-notch student. Michelle", " Jones", " Smith"),
    ("Jessica Smith was a top-notch student. Jessica", "Jessica Jones was a top-notch student. Jessica", " Smith", " Jones"),
    ("John Jones was a top-notch student. John", "Mary Jones was a top-notch student. John", " Jones", " Smith"),
];

fn dir(name: &str) -> PathBuf {
    fixtures().join("families").join(name)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// The backends to check on: the CPU, and wgpu in f32 without fusion (lavapipe on CI).
fn f32_backends() -> Vec<BackendSpec> {
    backends().into_iter().filter(|s| s.dtype == DType::F32 && !s.fusion).collect()
}

/// (what, max |patchbay − reference|, max |reference|) for the logits and every site of every
/// layer, against a reference file: HF's forward hooks (refs.safetensors) or TransformerLens' own
/// adapter run with `run_with_cache` (refs-tl.safetensors, make_family_tl_refs.py).
struct Forward(PathBuf, &'static str);

impl BackendTask for Forward {
    type Output = Vec<(String, f32, f32)>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let refs = Refs::load_file(&self.0, self.1);
        let model = load_located::<B>(self.0.to_str().unwrap(), &device)?;
        let layers = model.config.layers;
        // A parallel block (GPT-NeoX) has no resid_mid, and its references none.
        let kinds: Vec<SiteKind> = SiteKind::ALL.into_iter().filter(|k| *k != SiteKind::ResidMid || !model.config.parallel).collect();
        let mut cache = Cache::new((0..layers).flat_map(|l| kinds.iter().map(move |&k| Site::new(k, l))));
        let logits = model.forward(model.tokens(&refs.token_rows("tokens"))?, &mut cache);
        let compare = |what: String, got: Vec<f32>, want: Vec<f32>| {
            assert_eq!(got.len(), want.len(), "{what}: {} values, the reference has {}", got.len(), want.len());
            (what, max_abs_diff(&got, &want), want.iter().fold(0f32, |m, v| m.max(v.abs())))
        };
        let mut out = vec![compare("logits".into(), values(logits), refs.f32("logits").0)];
        for l in 0..layers {
            for &kind in &kinds {
                let name = kind.hook_name(l);
                out.push(compare(name.clone(), values(cache.heads(Site::new(kind, l)).expect("cached")), refs.f32(&name).0));
            }
        }
        Ok(out)
    }
}

#[test]
fn logits_and_every_site_equal_hf_transformers_and_transformer_lens() {
    for spec in f32_backends() {
        for family in FAMILIES {
            let files = ["refs.safetensors", "refs-tl.safetensors"].into_iter().filter(|f| dir(family).join(f).is_file());
            for file in files {
                for (what, diff, scale) in dispatch(&spec, Forward(dir(family), file)).unwrap() {
                    assert!(diff <= 1e-4 * scale.max(1.0), "{family} on {spec:?}: {what} differs from {file} by {diff} (values up to {scale})");
                }
            }
        }
    }
}

/// A parallel block (GPT-NeoX) has no resid_mid: asking for it is refused in one line.
#[test]
fn resid_mid_of_a_parallel_block_is_refused_by_name() {
    let tmp = std::env::temp_dir().join(format!("patchbay-families-parallel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(["run", "--model", dir("pythia").to_str().unwrap(), "--pairs", pairs_file(&tmp).to_str().unwrap(), "--sites", "resid_pre,resid_mid"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("--sites resid_mid") && stderr.contains("no resid_mid"), "{stderr}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Half-precision weights stay half until the model takes them; a NaN or infinite one is still
/// refused at load, naming the tensor and the index (its exponent bits: F16's and BF16's differ).
#[test]
fn a_non_finite_half_precision_weight_is_refused_by_name() {
    for (family, bits, shown) in [("gemma2", 0x7f80u16, "inf"), ("pythia", 0x7e00, "NaN")] {
        let tmp = std::env::temp_dir().join(format!("patchbay-families-nonfinite-{family}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(dir(family).join(f), tmp.join(f)).unwrap();
        }
        let mut w = std::fs::read(dir(family).join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&w).unwrap();
        let (name, view) = st.tensors().into_iter().max_by_key(|(_, v)| v.data().as_ptr() as usize).unwrap();
        let at = view.data().as_ptr() as usize - w.as_ptr() as usize + 2 * 3; // its fourth value
        w[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        std::fs::write(tmp.join("model.safetensors"), &w).unwrap();
        let err = format!("{:#}", load_located::<patchbay::backend::Cpu>(tmp.to_str().unwrap(), &Default::default()).err().expect("refused"));
        assert!(err.contains(&format!("tensor {name} holds {shown} at flat index 3")) && !err.contains('\n'), "{family}: {err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[test]
fn a_weights_file_changed_while_loading_is_refused() {
    use patchbay::model::weights::{load_model, ModelFiles};
    let tmp = std::env::temp_dir().join(format!("patchbay-families-changed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(dir("llama").join(f), tmp.join(f)).unwrap();
    }
    let files = ModelFiles::locate(tmp.to_str().unwrap()).unwrap();
    let read = files.read().unwrap();
    // Between the first reading (the fingerprint) and the model taking the values: one bit of the
    // last tensor's first value, rewritten in place.
    let mut w = std::fs::read(tmp.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&w).unwrap();
    let (name, view) = st.tensors().into_iter().max_by_key(|(_, v)| v.data().as_ptr() as usize).unwrap();
    let at = view.data().as_ptr() as usize - w.as_ptr() as usize;
    w[at] ^= 1;
    std::fs::write(tmp.join("model.safetensors"), &w).unwrap();
    let config = files.config_of(&read).unwrap();
    let err = format!("{:#}", load_model::<patchbay::backend::Cpu>(&files, config, read.weights, &Default::default()).err().expect("refused"));
    assert!(err.contains("changed while it was being loaded") && err.contains(&format!("tensor {name}")) && !err.contains('\n'), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn prompts_tokenize_as_hf_tokenizer_does_bos_included_for_llama_and_gemma() {
    for family in ["llama", "qwen2", "pythia", "gemma2"] {
        let model = patchbay::jobs::Model::load(dir(family).to_str().unwrap(), BackendSpec::default(), None).unwrap();
        let refs = Refs::load(&dir(family));
        for (i, (clean, corrupted, ..)) in PAIRS.iter().enumerate() {
            assert_eq!(model.tokenizer.encode(clean).unwrap(), refs.token_rows("tokens")[i], "{family}: {clean}");
            assert_eq!(model.tokenizer.encode(corrupted).unwrap(), refs.token_rows("corrupted")[i], "{family}: {corrupted}");
            // TransformerLens' prepend_bos adds the BOS a tokenizer does not put there itself.
            let bos = model.tokenizer.encode_with(clean, true).unwrap();
            let tokens = refs.token_rows("tokens")[i].clone();
            let want = match family {
                "llama" | "gemma2" => tokens,
                "qwen2" => [vec![510], tokens].concat(),
                _ => [vec![0], tokens].concat(), // Pythia's <|endoftext|>, config.json's bos_token_id
            };
            assert_eq!(bos, want, "{family}: prepend_bos");
        }
        let eos = match family {
            "llama" => 511,
            "qwen2" => 510,
            "pythia" => 0,
            _ => 1, // Gemma's <eos>
        };
        assert_eq!(model.tokenizer.eos().unwrap(), vec![eos], "{family}");
    }
}

fn pairs_file(out: &Path) -> PathBuf {
    let path = out.join("pairs.jsonl");
    let lines: Vec<String> = PAIRS.iter().map(|(c, k, a, d)| serde_json::json!({"clean": c, "corrupted": k, "answer": a, "distractor": d}).to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn activation_patching_equals_patching_in_hf() {
    for family in FAMILIES {
        let tmp = std::env::temp_dir().join(format!("patchbay-families-{family}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let out = tmp.join("run");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args(["run", "--model", dir(family).to_str().unwrap(), "--pairs", pairs_file(&tmp).to_str().unwrap(), "--sites", "resid_pre,z_all_pos,q_all_pos,k_all_pos,v_all_pos", "--out", out.to_str().unwrap(), "--verify", "4"])
            .output()
            .unwrap();
        assert!(status.status.success(), "{family}: {}", String::from_utf8_lossy(&status.stderr));
        let refs = Refs::load(&dir(family));
        // The manifest names the BOS in front of every prompt: Llama 3's tokenizer puts one there.
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        let bos = match family {
            "gemma2" => serde_json::json!(2),
            f if f.starts_with("llama") || f == "mistral" => serde_json::json!(510),
            _ => serde_json::Value::Null,
        };
        assert_eq!(manifest["bos"], bos, "{family}");
        // k and v per key/value head, as TransformerLens' hook_k and hook_v hold them.
        let sites = ["resid_pre", "z_all_pos", "q_all_pos", "k_all_pos", "v_all_pos"].map(|s| (format!("{s}.npy"), format!("patch.{s}")));
        let baselines = ["baseline_clean", "baseline_corrupted"].map(|s| (format!("{s}.npy"), s.to_string()));
        for (file, reference) in sites.iter().chain(&baselines) {
            let (got, shape) = patchbay::results::read_f32(&out.join(file)).unwrap();
            let reference = reference.as_str();
            let (want, want_shape) = refs.f32(reference);
            assert_eq!(shape, want_shape, "{family}: {file}");
            // Within 1e-4 of the metric's scale past 1 (f32 rounding grows with the logits: Gemma 2's
            // reach its soft-cap of 30).
            let (diff, scale) = (max_abs_diff(&got, &want), want.iter().fold(1f32, |m, v| m.max(v.abs())));
            assert!(diff <= 1e-4 * scale, "{family}: {file} differs from HF's {reference} by {diff} (values up to {scale})");
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

struct Greedy(PathBuf, Vec<Vec<u32>>);

impl BackendTask for Greedy {
    type Output = Vec<Vec<u32>>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let model = load_located::<B>(self.0.to_str().unwrap(), &device)?;
        let options = Options { max_new_tokens: 8, sampling: Sampling::GREEDY, num_sequences: 1, seed: 0, stop_at: Vec::new(), batch: 2, steer: None };
        generate(&model, &self.1, &options, &mut |_| Ok(()))
    }
}

#[test]
fn greedy_generation_with_the_kv_cache_equals_hf_generate() {
    for spec in f32_backends() {
        for family in FAMILIES {
            let refs = Refs::load(&dir(family));
            let want: Vec<Vec<u32>> = refs.token_rows("generate.greedy");
            let got = dispatch(&spec, Greedy(dir(family), refs.token_rows("tokens"))).unwrap();
            assert_eq!(got, want, "{family} on {spec:?}");
        }
    }
}

/// Decoding step by step with the KV cache, a prompt, then one token, then three at once: (the
/// worst |cached − full forward| of the logits of every step's positions, and what each layer held
/// after each step).
struct Steps(PathBuf, Vec<u32>);

impl BackendTask for Steps {
    type Output = (f32, Vec<Vec<usize>>);
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        use patchbay::generate::KvCache;
        use patchbay::model::NoHooks;
        let model = load_located::<B>(self.0.to_str().unwrap(), &device)?;
        let full = values(model.forward(model.tokens(&[self.1.clone()])?, &mut NoHooks));
        let vocab = model.config.vocab;
        let (mut cache, mut worst, mut held, mut at) = (KvCache::new(), 0f32, Vec::new(), 0);
        for n in [self.1.len() - 4, 1, 3] {
            let last = values(cache.step(&model, model.tokens(&[self.1[at..at + n].to_vec()])?, &mut NoHooks));
            at += n;
            worst = worst.max(max_abs_diff(&last, &full[(at - 1) * vocab..at * vocab]));
            held.push((0..model.config.layers).map(|l| cache.held(l)).collect());
        }
        Ok((worst, held))
    }
}

/// The KV cache gives the full forward's logits at every step (rotary positions counted from the
/// cache's first key), while Gemma 2's sliding-window layers (local first, a window of 4 in the
/// fixture) hold only the 3 positions a later query can see.
#[test]
fn kv_cache_steps_equal_the_full_forward_and_windowed_layers_hold_only_the_window() {
    // Fused too: burn 0.21's fused kernels have been wrong on shapes the unfused ones get right.
    for spec in backends().into_iter().filter(|s| s.dtype == DType::F32) {
        for family in ["llama", "gemma2"] {
            let tokens = Refs::load(&dir(family)).token_rows("tokens").remove(0);
            let (worst, held) = dispatch(&spec, Steps(dir(family), tokens.clone())).unwrap();
            assert!(worst < 1e-4, "{family} on {spec:?}: the cached logits differ from the full forward by {worst}");
            let seen = [tokens.len() - 4, tokens.len() - 3, tokens.len()];
            let want: Vec<Vec<usize>> = seen.iter().map(|&n| (0..held[0].len()).map(|l| if family == "gemma2" && l % 2 == 0 { n.min(3) } else { n }).collect()).collect();
            assert_eq!(held, want, "{family} on {spec:?}: positions held per layer after each step");
        }
    }
}

/// Per-token losses and every position's top 5 of the clean prompts.
struct Text(PathBuf, Vec<Vec<u32>>);

impl BackendTask for Text {
    type Output = (Vec<Vec<f32>>, Vec<Vec<Vec<(u32, f32)>>>);
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        use patchbay::generate::{candidates, token_losses, Memory};
        let model = load_located::<B>(self.0.to_str().unwrap(), &device)?;
        let memory = Memory { budget: usize::MAX, buffer: usize::MAX };
        Ok((token_losses(&model, &self.1, 2, memory, &mut |_| Ok(()))?, candidates::top_k(&model, &self.1, 5, true, 2, memory)?))
    }
}

/// `perplexity`'s token losses and `candidates`' top 5 at every position, against HF's logits of
/// the clean prompts (refs `logits`, log-softmaxed here in f64).
#[test]
fn perplexity_and_candidates_follow_hfs_logits() {
    for spec in f32_backends() {
        for family in ["llama", "llama-tied", "qwen2", "qwen3", "pythia", "gemma2"] {
            let refs = Refs::load(&dir(family));
            let tokens = refs.token_rows("tokens");
            let (logits, shape) = refs.f32("logits");
            let (t, v) = (shape[1], shape[2]);
            let (losses, top) = dispatch(&spec, Text(dir(family), tokens.clone())).unwrap();
            for (p, row) in tokens.iter().enumerate() {
                for pos in 0..t {
                    let l: Vec<f64> = logits[(p * t + pos) * v..][..v].iter().map(|&x| x as f64).collect();
                    let max = l.iter().cloned().fold(f64::MIN, f64::max);
                    let log_z = max + l.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                    let mut order: Vec<usize> = (0..v).collect();
                    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
                    let want: Vec<(u32, f32)> = order[..5].iter().map(|&i| (i as u32, (l[i] - log_z).exp() as f32)).collect();
                    let got = &top[p][pos];
                    assert_eq!(got.iter().map(|c| c.0).collect::<Vec<_>>(), want.iter().map(|c| c.0).collect::<Vec<_>>(), "{family} {spec:?}: pair {p} position {pos}'s top 5");
                    // Within 1e-4: Gemma 2's logits reach its soft-cap of 30, and f32 rounding with them.
                    assert!(max_abs_diff(&got.iter().map(|c| c.1).collect::<Vec<_>>(), &want.iter().map(|c| c.1).collect::<Vec<_>>()) <= 1e-4, "{family} {spec:?}: probabilities");
                    if pos + 1 < t {
                        let want = (log_z - l[row[pos + 1] as usize]) as f32;
                        assert!((losses[p][pos] - want).abs() <= 1e-4 * want.abs().max(1.0), "{family} {spec:?}: pair {p} token {}'s loss {} vs HF's {want}", pos + 1, losses[p][pos]);
                    }
                }
            }
        }
    }
}

/// The graphs of the released models, from their config.json as the hub holds it: the edge counts
/// issue 45 and MIB give (Qwen2.5-0.5B 179,749; Gemma-2-2B 74,218; Llama-3.1-8B 1,592,881), and
/// EAP-IG's rule counted in closed form for the others (each head's q, k, v input and each MLP
/// reads every earlier writer, a parallel MLP none of its own layer's heads; the logits read all).
#[test]
fn the_released_models_graphs_have_eap_igs_edge_counts() {
    use patchbay::engine::Graph;
    use patchbay::model::ModelConfig;
    let rule = |l: usize, h: usize, parallel: bool| -> usize {
        let before = |layer: usize| 1 + layer * (h + 1);
        (0..l).map(|layer| 3 * h * before(layer) + before(layer) + if parallel { 0 } else { h }).sum::<usize>() + before(l)
    };
    let released = [
        ("Qwen2.5-0.5B", r#"{"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,"bos_token_id":151643,"eos_token_id":151643,"hidden_act":"silu","hidden_size":896,"initializer_range":0.02,"intermediate_size":4864,"max_position_embeddings":32768,"max_window_layers":24,"model_type":"qwen2","num_attention_heads":14,"num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,"rope_theta":1000000.0,"sliding_window":32768,"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.40.1","use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#, Some(179_749)),
        ("Gemma-2-2B", r#"{"architectures":["Gemma2ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"attn_logit_softcapping":50.0,"bos_token_id":2,"cache_implementation":"hybrid","eos_token_id":1,"final_logit_softcapping":30.0,"head_dim":256,"hidden_act":"gelu_pytorch_tanh","hidden_activation":"gelu_pytorch_tanh","hidden_size":2304,"initializer_range":0.02,"intermediate_size":9216,"max_position_embeddings":8192,"model_type":"gemma2","num_attention_heads":8,"num_hidden_layers":26,"num_key_value_heads":4,"pad_token_id":0,"query_pre_attn_scalar":256,"rms_norm_eps":1e-06,"rope_theta":10000.0,"sliding_window":4096,"torch_dtype":"float32","transformers_version":"4.42.4","use_cache":true,"vocab_size":256000}"#, Some(74_218)),
        ("Llama-3.1-8B", r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":128001,"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,"max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.43.0.dev0","use_cache":true,"vocab_size":128256}"#, Some(1_592_881)),
        ("Llama-3.2-1B", r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":128001,"head_dim":64,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,"intermediate_size":8192,"max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,"num_key_value_heads":8,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.45.0.dev0","use_cache":true,"vocab_size":128256}"#, None),
        ("Pythia-160m", r#"{"architectures":["GPTNeoXForCausalLM"],"bos_token_id":0,"eos_token_id":0,"hidden_act":"gelu","hidden_size":768,"initializer_range":0.02,"intermediate_size":3072,"layer_norm_eps":1e-05,"max_position_embeddings":2048,"model_type":"gpt_neox","num_attention_heads":12,"num_hidden_layers":12,"rotary_emb_base":10000,"rotary_pct":0.25,"tie_word_embeddings":false,"torch_dtype":"float16","transformers_version":"4.24.0","use_cache":true,"use_parallel_residual":true,"vocab_size":50304}"#, None),
    ];
    for (name, json, given) in released {
        let c = ModelConfig::from_json(json).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let edges = Graph::of(&c).edges.len();
        assert_eq!(edges, rule(c.layers, c.heads, c.parallel), "{name}: EAP-IG's rule");
        if let Some(given) = given {
            assert_eq!(edges, given, "{name}: the count MIB gives");
        }
        eprintln!("{name}: {} layers × {} heads, {edges} edges", c.layers, c.heads);
    }
}

/// `prepend_bos` on a tokenizer whose post-processor adds no BOS, with no `<|endoftext|>` and no
/// `bos_token_id` in config.json, fails in one line saying so; with config.json's it uses that.
#[test]
fn prepend_bos_without_any_bos_is_refused_in_one_line() {
    use patchbay::tokenizer::Tokenizer;
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir("llama").join("tokenizer.json")).unwrap()).unwrap();
    json["post_processor"] = serde_json::Value::Null;
    let bytes = serde_json::to_vec(&json).unwrap();
    let tokenizer = || Tokenizer::from_bytes(&bytes, Path::new("tokenizer.json")).unwrap();
    let text = "Michelle Jones was a top-notch student. Michelle";
    let plain = tokenizer().encode(text).unwrap();
    assert_eq!(tokenizer().encode_with(text, false).unwrap(), plain);
    let err = format!("{:#}", tokenizer().encode_with(text, true).err().expect("no BOS to prepend"));
    assert!(err.contains("no <|endoftext|> token") && err.contains("bos_token_id") && !err.contains('\n'), "{err}");
    let with_config = tokenizer().with_special_tokens(Some(511), vec![]);
    assert_eq!(with_config.encode_with(text, true).unwrap(), [vec![511], plain].concat());
}
