//! The `patchbay` binary end to end on the tiny fixture: run (flags, config, pairs file) → .npy
//! files that equal TransformerLens' results → analyze; and the one-line errors of bad input.
use crate::common::*;
use patchbay::results::read_f32 as read_npy;
use std::path::{Path, PathBuf};
use std::process::Command;

fn patchbay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const CLEAN: &str = "Michelle Jones was a top-notch student. Michelle";

fn write_pairs(dir: &Path, lines: &[serde_json::Value]) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    path
}

#[test]
fn config_run_matches_transformer_lens_and_analyze_normalizes() {
    let dir = tmp("config");
    let out = dir.join("michelle");
    let config = root().join("configs/michelle.toml");
    let tiny = tiny();
    let (ok, stdout, stderr) = patchbay(&[
        "run",
        config.to_str().unwrap(),
        "--model",
        tiny.to_str().unwrap(),
        "--sites",
        "resid_pre,resid_mid,resid_post,attn_out,mlp_out,z_all_pos,z_by_pos",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 pair(s)"), "{stdout}");
    let refs = Refs::load(&tiny);
    for site in ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z_all_pos", "z_by_pos"] {
        let (got, shape) = read_npy(&out.join(format!("{site}.npy"))).unwrap();
        let (want, want_shape) = refs.f32(&format!("patch.{site}"));
        let per_pair: usize = want_shape[1..].iter().product();
        assert_eq!(shape[1..], want_shape[1..], "{site}");
        assert!(max_abs_diff(&got, &want[..per_pair]) < 1e-4, "{site}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["pairs"][0]["clean_strs"][1], " Jones");
    assert_eq!(manifest["sites"][0]["axes"], serde_json::json!(["pair", "layer", "position"]));
    assert!(!out.join("progress.json").exists() && !out.join("resid_pre.npy.partial").exists());

    let (ok, _, stderr) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let (clean, _) = read_npy(&out.join("baseline_clean.npy")).unwrap();
    let (corr, _) = read_npy(&out.join("baseline_corrupted.npy")).unwrap();
    let (raw, _) = read_npy(&out.join("resid_pre.npy")).unwrap();
    let (norm, _) = read_npy(&out.join("resid_pre.normalized.npy")).unwrap();
    let want: Vec<f32> = raw.iter().map(|v| (v - corr[0]) / (clean[0] - corr[0])).collect();
    assert!(max_abs_diff(&norm, &want) < 1e-6);
    // Layer 0 at the differing token restores the clean run; elsewhere at layer 0 nothing moves.
    assert!((norm[1] - 1.0).abs() < 1e-4 && norm[0].abs() < 1e-4, "{:?}", &norm[..11]);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["sites"][0]["n"][0], 1);
    assert!(std::fs::read(out.join("resid_pre.png")).unwrap().starts_with(b"\x89PNG"));
    assert!(std::fs::read_to_string(out.join("z_by_pos.svg")).unwrap().contains(" Jones"));
    assert!(std::fs::read_to_string(out.join("summary.csv")).unwrap().starts_with("site,layer,position,src_position,head,label,mean,sem,n\n"));

    // A finished run is not overwritten by accident.
    let (ok, _, stderr) = patchbay(&["run", config.to_str().unwrap(), "--model", tiny.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("already holds a finished run"), "{stderr}");
}

#[test]
fn pairs_file_errors_name_the_row_and_show_tokens() {
    let dir = tmp("errors");
    let tiny = tiny();
    let good = serde_json::json!({"clean": CLEAN, "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"});
    let longer = serde_json::json!({"clean": CLEAN, "corrupted": "Michelle Smithson-Jones was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"});
    let pairs = write_pairs(&dir, &[good.clone(), longer]);
    let (ok, _, stderr) = patchbay(&["run", "--strict", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("pairs.jsonl line 2") && stderr.contains("different lengths") && stderr.contains("\" Smith\""), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let multi = serde_json::json!({"clean": CLEAN, "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jonesberg", "distractor": " Smith"});
    let pairs = write_pairs(&dir, &[good, multi]);
    let (ok, _, stderr) = patchbay(&["run", "--strict", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    assert!(!ok && stderr.contains("line 2") && stderr.contains("answer") && stderr.contains("not a single token"), "{stderr}");

    std::fs::write(dir.join("bad.jsonl"), "{\"clean\": \"x\"}\n").unwrap();
    let (ok, _, stderr) = patchbay(&["run", "--model", tiny.to_str().unwrap(), "--pairs", dir.join("bad.jsonl").to_str().unwrap()]);
    assert!(!ok && stderr.contains("bad.jsonl line 1"), "{stderr}");

    let (ok, _, stderr) = patchbay(&["run", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--sites", "resid_pree"]);
    assert!(!ok && stderr.contains("unknown site \"resid_pree\""), "{stderr}");
}

#[test]
fn equal_baselines_are_excluded_from_normalization() {
    let dir = tmp("equal");
    let tiny = tiny();
    let good = serde_json::json!({"clean": CLEAN, "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"});
    let other = serde_json::json!({"clean": CLEAN, "corrupted": "Jessica Jones was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"});
    let pairs = write_pairs(&dir, &[good, other]);
    let out = dir.join("o");
    let (ok, _, stderr) = patchbay(&["run", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    // The second pair's corruption made to change nothing: its baselines are equal.
    let (clean, _) = read_npy(&out.join("baseline_clean.npy")).unwrap();
    let (mut corrupted, _) = read_npy(&out.join("baseline_corrupted.npy")).unwrap();
    corrupted[1] = clean[1];
    patchbay::results::write_npy(&out.join("baseline_corrupted.npy"), &[2], &corrupted).unwrap();
    let (ok, stdout, stderr) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok && stderr.contains("excluded pair at row 2: clean and corrupted baselines are equal"), "{stdout}{stderr}");
    let (norm, shape) = read_npy(&out.join("attn_out.normalized.npy")).unwrap();
    assert_eq!(shape, [2, 3, 11]);
    assert!(norm[..33].iter().all(|v| v.is_finite()) && norm[33..].iter().all(|v| v.is_nan()));
}

#[test]
fn backend_errors_are_clear() {
    let tiny = tiny();
    let (ok, _, stderr) = patchbay(&["inspect", "--model", tiny.to_str().unwrap(), "Hello", "--backend", "cpu", "--dtype", "bf16"]);
    assert!(!ok && stderr.contains("cpu backend computes in f32 only"), "{stderr}");
    if !cfg!(feature = "cuda") {
        let (ok, _, stderr) = patchbay(&["inspect", "--model", tiny.to_str().unwrap(), "Hello", "--backend", "cuda"]);
        assert!(!ok && stderr.contains("--features cuda"), "{stderr}");
    }
    if cfg!(feature = "wgpu") {
        let (ok, _, stderr) = patchbay(&["inspect", "--model", tiny.to_str().unwrap(), "Hello", "--backend", "wgpu", "--dtype", "bf16"]);
        assert!(!ok && stderr.contains("bf16 is not supported on wgpu"), "{stderr}");
    }
}

#[test]
fn inspect_prints_tokens_and_top_k_as_json() {
    let tiny = tiny();
    let (ok, stdout, stderr) = patchbay(&["inspect", "--model", tiny.to_str().unwrap(), CLEAN, "--top-k", "3", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 11);
    assert_eq!(v["tokens"][1]["token"], " Jones");
    let top = v["top_k"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    // The reference's highest logit at the last position is the top-1 token.
    let refs = Refs::load(&tiny);
    let (logits, _) = refs.f32("logits_last");
    let best = (0..50257).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
    assert_eq!(top[0]["id"], best);
    assert!(top[0]["prob"].as_f64().unwrap() >= top[1]["prob"].as_f64().unwrap());
}

#[test]
fn prepend_bos_runs_match_transformer_lens_and_are_recorded() {
    let dir = tmp("bos");
    let (out, tiny) = (dir.join("michelle"), tiny());
    let config = root().join("configs/michelle.toml");
    let (ok, _, stderr) = patchbay(&["run", config.to_str().unwrap(), "--model", tiny.to_str().unwrap(), "--prepend-bos", "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let refs = Refs::load_file(&tiny, BOS_REFS);
    for site in ["resid_pre", "attn_out", "mlp_out"] {
        let (got, shape) = read_npy(&out.join(format!("{site}.npy"))).unwrap();
        let (want, want_shape) = refs.f32(&format!("patch.{site}"));
        assert_eq!(shape[1..], want_shape[1..], "{site}: 12 positions, BOS included");
        assert!(max_abs_diff(&got, &want[..got.len()]) < 1e-4, "{site}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["prepend_bos"], true);
    assert_eq!(manifest["pairs"][0]["clean_strs"][0], "<|endoftext|>");
    let (ok, _, stderr) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(std::fs::read_to_string(out.join("resid_pre.svg")).unwrap().contains("endoftext"), "the BOS column is labelled");
    // A run without BOS is another run: --resume refuses to continue this one with it.
    let (ok, _, stderr) = patchbay(&["run", config.to_str().unwrap(), "--model", tiny.to_str().unwrap(), "--resume", "--out", out.to_str().unwrap()]);
    assert!(!ok, "{stderr}");
}

#[test]
fn inspect_with_bos_matches_hf_on_the_bos_prefixed_ids() {
    let tiny = tiny();
    let (ok, stdout, stderr) = patchbay(&["inspect", "--model", tiny.to_str().unwrap(), CLEAN, "--top-k", "5", "--json", "--prepend-bos"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let refs = Refs::load_file(&tiny, BOS_REFS);
    let ids: Vec<u64> = v["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let want: Vec<u64> = refs.token_rows("tokens")[0].iter().map(|&i| i as u64).collect();
    assert_eq!(ids, want, "<|endoftext|> then the prompt's tokens");
    assert_eq!(v["tokens"][0]["token"], "<|endoftext|>");
    // Probabilities: HF's logits at the last position of the BOS-prefixed prompt, softmaxed in f64.
    let (logits, _) = refs.f32("logits_last");
    let logits = &logits[..50257];
    let max = logits.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    for t in v["top_k"].as_array().unwrap() {
        let id = t["id"].as_u64().unwrap() as usize;
        let want = (logits[id] as f64 - max).exp() / z;
        assert!((t["prob"].as_f64().unwrap() - want).abs() < 1e-5, "token {id}: {} vs HF {want}", t["prob"]);
    }
}

#[test]
fn verify_rechecks_rows_records_them_and_names_the_rows_that_differ() {
    let dir = tmp("verify");
    let tiny = tiny();
    let out = dir.join("o");
    let args = ["run", "--model", tiny.to_str().unwrap(), "--clean", CLEAN, "--corrupted", "Michelle Smith was a top-notch student. Michelle"];
    let (ok, _, stderr) = patchbay(&[&args[..], &["--answer", " Jones", "--distractor", " Smith", "--sites", "resid_pre", "--out", out.to_str().unwrap()]].concat());
    assert!(ok && stderr.contains("verified 8 patched runs"), "{stderr}");
    let manifest = |dir: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap() };
    let v = &manifest(&out)["verify"];
    assert_eq!(v["rows"], 8);
    assert!(v["failed"].as_array().unwrap().is_empty() && v["max_abs_diff"].as_f64().unwrap() < 1e-4, "{v}");
    assert_eq!(v["backend"]["fusion"], false);

    // One value changed by 0.01 after the run: checking every row finds exactly it.
    let (mut values, shape) = read_npy(&out.join("resid_pre.npy")).unwrap();
    values[11 + 3] += 0.01; // layer 1, position 3 (not the row `--rows 1` draws)
    patchbay::results::write_npy(&out.join("resid_pre.npy"), &shape, &values).unwrap();
    let (ok, _, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1000"]);
    assert!(!ok && stderr.contains("verification failed (33 rows rechecked") && stderr.contains("resid_pre[layer 1, position 3]"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let v = &manifest(&out)["verify"];
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");
    let (ok, _, stderr) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok && stderr.contains("failed its verification"), "{stderr}");
    // A smaller check recomputes the recorded failure too: it is not replaced by a pass.
    let (ok, _, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1"]);
    assert!(!ok && stderr.contains("resid_pre[layer 1, position 3]"), "{stderr}");
    // Put back, it passes again, and the recomputed failure is cleared.
    values[11 + 3] -= 0.01;
    patchbay::results::write_npy(&out.join("resid_pre.npy"), &shape, &values).unwrap();
    let (ok, stdout, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1"]);
    assert!(ok && stdout.contains("verified 2 patched runs"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1000"]);
    assert!(ok && stdout.contains("verified 33 patched runs"), "{stdout}{stderr}");
    let (ok, _, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "0"]);
    assert!(!ok && stderr.contains("--rows must be at least 1"), "{stderr}");
    // The baselines and lengths.npy are checked too.
    for (file, at, by) in [("baseline_clean.npy", 0, 0.5f32), ("baseline_corrupted.npy", 0, -0.5)] {
        let (mut b, shape) = read_npy(&out.join(file)).unwrap();
        b[at] += by;
        patchbay::results::write_npy(&out.join(file), &shape, &b).unwrap();
        let (ok, _, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1"]);
        assert!(!ok && stderr.contains(&format!("{}[pair 0]", file.trim_end_matches(".npy"))), "{stderr}");
        b[at] -= by;
        patchbay::results::write_npy(&out.join(file), &shape, &b).unwrap();
    }
    patchbay::results::write_npy(&out.join("lengths.npy"), &[1], &[7i32]).unwrap();
    let (ok, _, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1"]);
    assert!(!ok && stderr.contains("lengths.npy[pair 0]: 7 written, the pair is 11 tokens"), "{stderr}");
    patchbay::results::write_npy(&out.join("lengths.npy"), &[1], &[11i32]).unwrap();
    // A NaN written where a value belongs fails the check, and the manifest stays readable:
    // the non-finite difference is named, not written as null.
    values[5] = f32::NAN;
    patchbay::results::write_npy(&out.join("resid_pre.npy"), &shape, &values).unwrap();
    let (ok, _, stderr) = patchbay(&["verify", out.to_str().unwrap(), "--rows", "1000"]);
    assert!(!ok && stderr.contains("NaN written"), "{stderr}");
    assert_eq!(manifest(&out)["verify"]["max_abs_diff"], "inf");
    let (ok, _, stderr) = patchbay(&["analyze", out.to_str().unwrap()]);
    assert!(ok && stderr.contains("failed its verification"), "{stderr}");
}

#[test]
fn metric_is_recorded_in_the_manifest_and_verified_with_the_same_metric() {
    let dir = tmp("metric");
    let tiny = tiny();
    let mut clean = Vec::new();
    for metric in ["logit_diff", "prob"] {
        let out = dir.join(metric);
        let args = ["run", "--model", tiny.to_str().unwrap(), "--clean", CLEAN, "--corrupted", "Michelle Smith was a top-notch student. Michelle"];
        let rest = ["--answer", " Jones", "--distractor", " Smith", "--sites", "resid_pre", "--metric", metric, "--out", out.to_str().unwrap()];
        let (ok, _, stderr) = patchbay(&[&args[..], &rest[..]].concat());
        // The recheck recomputes rows with the manifest's metric: with another one it would fail.
        assert!(ok && stderr.contains("verified 8 patched runs"), "{metric}: {stderr}");
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["metric_name"], metric);
        clean.push(read_npy(&out.join("baseline_clean.npy")).unwrap().0[0]);
    }
    assert!(clean[1] > 0.0 && clean[1] < 1.0 && (clean[0] - clean[1]).abs() > 1e-3, "{clean:?}");
    let (ok, _, stderr) = patchbay(&["run", "--model", tiny.to_str().unwrap(), "--clean", CLEAN, "--corrupted", CLEAN, "--metric", "logits"]);
    assert!(!ok && stderr.contains("logprob_diff"), "{stderr}");
}

/// The seed pairs of the tiny fixture as a pairs file.
fn seed_pairs(dir: &Path) -> PathBuf {
    let corrupted = ["Michelle Smith was a top-notch student. Michelle", "Jessica Jones was a top-notch student. Michelle", "Michelle Smith was a top-notch student. Jessica"];
    let lines: Vec<_> = corrupted.iter().map(|k| serde_json::json!({"clean": CLEAN, "corrupted": k, "answer": " Jones", "distractor": " Smith"})).collect();
    write_pairs(dir, &lines)
}

/// Pearson's r over the cells finite in both.
fn pearson(x: &[f32], y: &[f32]) -> f64 {
    let p: Vec<(f64, f64)> = x.iter().zip(y).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(&a, &b)| (a as f64, b as f64)).collect();
    let n = p.len() as f64;
    let (mx, my) = (p.iter().map(|a| a.0).sum::<f64>() / n, p.iter().map(|a| a.1).sum::<f64>() / n);
    let cov: f64 = p.iter().map(|(a, b)| (a - mx) * (b - my)).sum();
    let (vx, vy): (f64, f64) = (p.iter().map(|a| (a.0 - mx).powi(2)).sum(), p.iter().map(|a| (a.1 - my).powi(2)).sum());
    cov / (vx * vy).sqrt()
}

#[test]
fn attribution_runs_equal_pytorch_autograd_verify_and_compare_with_exact_runs() {
    let dir = tmp("attribution");
    let (tiny, pairs) = (tiny(), seed_pairs(&dir));
    let (attr, exact) = (dir.join("attr"), dir.join("exact"));
    let sites: Vec<&str> = patchbay::engine::PatchSite::ALL.iter().filter(|s| !s.is_path()).map(|s| s.name()).collect();
    let sites = sites.join(",");
    let run = |out: &Path, method: &str, sites: &str, extra: &[&str]| {
        let args = [&["run", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--method", method, "--sites", sites, "--out", out.to_str().unwrap()][..], extra].concat();
        patchbay(&args)
    };
    // The default check after the run recomputes rows one pair a pass.
    let (ok, stdout, stderr) = run(&attr, "attribution", &sites, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("estimated by attribution") && stderr.contains("verified 8 patched runs"), "{stdout}{stderr}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(attr.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["method"], "attribution");
    assert_eq!(manifest["verify"]["failed"], serde_json::json!([]));
    let refs = Refs::load_file(&tiny, "refs-attribution.safetensors");
    for site in sites.split(',') {
        let (got, shape) = read_npy(&attr.join(format!("{site}.npy"))).unwrap();
        let (want, want_shape) = refs.f32(&format!("attr.{site}"));
        assert_eq!(shape, want_shape, "{site}");
        assert!(max_abs_diff(&got, &want) < 1e-4, "{site}: {}", max_abs_diff(&got, &want));
    }

    let compared = "resid_pre,z_all_pos,pattern_by_pos";
    let (ok, _, stderr) = run(&exact, "exact", compared, &["--verify", "0"]);
    assert!(ok, "{stderr}");
    for d in [&attr, &exact] {
        let (ok, _, stderr) = patchbay(&["analyze", d.to_str().unwrap()]);
        assert!(ok, "{stderr}");
    }
    assert!(std::fs::read_to_string(attr.join("resid_pre.svg")).unwrap().contains("attribution patching estimate"));
    let (ok, stdout, stderr) = patchbay(&["analyze", attr.to_str().unwrap(), "--compare", exact.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resid_pre: r = "), "{stdout}");
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(attr.join("compare.json")).unwrap()).unwrap();
    assert_eq!(c["methods"], serde_json::json!(["attribution", "exact"]));
    let names: Vec<&str> = c["sites"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, compared.split(',').collect::<Vec<_>>(), "the shared sites, in the run's order");
    for s in c["sites"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let norm = |d: &Path| read_npy(&d.join(format!("{name}.normalized.npy"))).unwrap().0;
        let (a, e) = (norm(&attr), norm(&exact));
        let r = pearson(&e, &a);
        assert!((s["correlation"].as_f64().unwrap() - r).abs() < 1e-9, "{name}: {} vs {r}", s["correlation"]);
        assert_eq!(s["points"], a.iter().zip(&e).filter(|(x, y)| x.is_finite() && y.is_finite()).count());
        assert!(std::fs::read(attr.join(format!("{name}.compare.png"))).unwrap().starts_with(b"\x89PNG"));
        assert!(std::fs::read_to_string(attr.join(format!("{name}.compare.svg"))).unwrap().contains("exact ("));
    }

    // Bad combinations, each a one-line refusal.
    let other = dir.join("other");
    let (ok, _, stderr) = patchbay(&["run", "--model", tiny.to_str().unwrap(), "--clean", CLEAN, "--corrupted", "Michelle Smith was a top-notch student. Michelle", "--sites", "resid_pre", "--out", other.to_str().unwrap(), "--verify", "0"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = patchbay(&["analyze", attr.to_str().unwrap(), "--compare", other.to_str().unwrap()]);
    assert!(!ok && stderr.contains("runs of different pairs"), "{stderr}");
    let (ok, _, stderr) = patchbay(&["path", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--receivers", "q", "--method", "attribution", "--out", dir.join("p").to_str().unwrap()]);
    assert!(!ok && stderr.contains("not paths (path_q)"), "{stderr}");
    // Senders of the last layer (the tiny model has 3) reach no later head's q, k or v.
    let (ok, _, stderr) = patchbay(&["path", "--model", tiny.to_str().unwrap(), "--pairs", pairs.to_str().unwrap(), "--receivers", "resid_final,v", "--senders", "2.0,2.3", "--out", dir.join("p").to_str().unwrap()]);
    assert!(!ok && stderr.contains("--senders 2.0,2.3: heads of the last layer send to no later head, so path_v would hold no run"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (ok, _, stderr) = run(&dir.join("n"), "attribution", "resid_pre", &["--no-reuse"]);
    assert!(!ok && stderr.contains("--no-reuse is an option of --method exact"), "{stderr}");
    // An exact run is not resumed as an attribution run.
    let (ok, _, stderr) = run(&exact, "attribution", compared, &["--resume"]);
    assert!(!ok && stderr.contains("already holds a finished run, a different run"), "{stderr}");
}

#[test]
fn config_options_come_before_the_command_line_so_flags_and_their_negations_override_them() {
    let dir = tmp("config-override");
    let tiny = tiny();
    let out = dir.join("out");
    let config = dir.join("c.toml");
    let text = format!(
        "model = {:?}\nclean = {CLEAN:?}\ncorrupted = \"Michelle Smith was a top-notch student. Michelle\"\nsites = \"resid_pre\"\noverwrite = true\nverify = 0\nout = {:?}\n",
        tiny.to_str().unwrap(),
        out.to_str().unwrap()
    );
    std::fs::write(&config, &text).unwrap();
    let c = config.to_str().unwrap();
    for _ in 0..2 {
        let (ok, _, stderr) = patchbay(&["run", c]);
        assert!(ok, "overwrite = true replaces the first run: {stderr}");
    }
    let (ok, _, stderr) = patchbay(&["run", c, "--no-overwrite"]);
    assert!(!ok && stderr.contains("already holds a finished run") && stderr.trim().lines().count() == 1, "{stderr}");
    // A flag given after the config's wins: another site, same directory.
    let (ok, _, stderr) = patchbay(&["run", c, "--sites", "attn_out"]);
    assert!(ok && out.join("attn_out.npy").exists() && !out.join("resid_pre.npy").exists(), "{stderr}");
    std::fs::write(&config, format!("{text}colour = \"blue\"\n")).unwrap();
    let (ok, _, stderr) = patchbay(&["run", c]);
    assert!(!ok && stderr.contains("c.toml:8: `colour`: unknown option"), "{stderr}");
    // A value of the wrong type names the file, line and key.
    std::fs::write(&config, format!("{text}max_rows = \"many\"\n")).unwrap();
    let (ok, _, stderr) = patchbay(&["run", c]);
    assert!(!ok && stderr.contains("c.toml:8: `max_rows`: invalid value 'many' for '--max-rows") && stderr.trim().lines().count() == 1, "{stderr}");
    std::fs::write(&config, format!("{text}max_rows = [[8]]\n")).unwrap();
    let (ok, _, stderr) = patchbay(&["run", c]);
    assert!(!ok && stderr.contains("c.toml:8: `max_rows`: must be a string or a number, not array"), "{stderr}");
    std::fs::write(&config, format!("{text}[metric]\nkind = \"logit_diff\"\n")).unwrap();
    let (ok, _, stderr) = patchbay(&["run", c]);
    assert!(!ok && stderr.contains("c.toml:8: `metric`: must be a string, a number or a list, not a table"), "{stderr}");
    // A syntax error is one line naming the file, line and column.
    std::fs::write(&config, "max_rows = 8\nsites = = \"resid_pre\"\n").unwrap();
    let (ok, _, stderr) = patchbay(&["run", c]);
    assert!(!ok && stderr.contains("c.toml:2:") && stderr.trim().lines().count() == 1, "{stderr}");
}

/// Negative numbers are values, not flags; a TOML value of the wrong kind is named by its file,
/// line and key; every such error is one line.
#[test]
fn negative_numbers_and_bad_config_values_are_named_in_one_line() {
    let dir = tmp("messages");
    let tiny = tiny();
    let m = tiny.to_str().unwrap();
    let prompt = "Michelle Jones was a top-notch student. Michelle";
    // Meaningful negatives are taken: a frequency penalty below 0 rewards repeats.
    let (ok, _, stderr) = patchbay(&["generate", "--model", m, prompt, "--max-new-tokens", "2", "--freq-penalty", "-0.5"]);
    assert!(ok, "{stderr}");
    // Meaningless ones are refused by the option's own rule, not clap's "to pass '-0'" tip.
    let (ok, _, stderr) = patchbay(&["generate", "--model", m, prompt, "--max-new-tokens", "2", "--temperature", "-1"]);
    assert!(!ok && stderr.contains("--temperature must be above 0") && stderr.trim().lines().count() == 1, "{stderr}");
    let pairs = write_pairs(&dir, &[serde_json::json!({"clean": prompt, "corrupted": prompt.replace("Jones", "Smith"), "answer": " Jones", "distractor": " Smith"})]);
    let run = dir.join("edges");
    assert!(patchbay(&["edges", "--model", m, "--pairs", pairs.to_str().unwrap(), "--out", run.to_str().unwrap(), "--verify", "0"]).0);
    let (ok, _, stderr) = patchbay(&["circuit", run.to_str().unwrap(), "--threshold", "-inf"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = patchbay(&["faithfulness", run.to_str().unwrap(), "--sizes", "0,3", "--draw-at", "-1"]);
    assert!(ok, "{stderr}");
    // TOML: a negative count, a string for a boolean.
    for (line, says) in [("max_rows = -1", "'-1'"), ("overwrite = \"yes\"", "'yes'")] {
        let config = dir.join("run.toml");
        std::fs::write(&config, format!("model = \"{m}\"\npairs = \"{}\"\nsites = \"resid_pre\"\n{line}\n", pairs.display())).unwrap();
        let (ok, _, stderr) = patchbay(&["run", config.to_str().unwrap(), "--out", dir.join("out").to_str().unwrap()]);
        let key = line.split(' ').next().unwrap();
        assert!(!ok && stderr.contains(&format!("run.toml:4: `{key}`")) && stderr.contains(says) && stderr.trim().lines().count() == 1, "{line}: {stderr}");
    }
}

/// One spec for both front ends: the command line's flags and Python's keywords (the JSON
/// `Model.patch`, `.path` and `.edges` send) become the same `RunOptions` and the same plan for
/// every patching job, its defaults filled in one place (`RunOptions::plan`), and a bad value gets
/// the same message from either.
#[test]
fn the_command_line_and_python_keywords_make_the_same_spec() {
    use patchbay::engine::{Metric, PatchSite};
    use patchbay::jobs::options::{Job, Options, RunOptions};
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let cases: [(Job, &[&str], &str); 6] = [
        (Job::Run, &[], "{}"),
        (Job::Run, &["--clean", "a b", "--corrupted", "a c"], r#"{"clean": "a b", "corrupted": "a c"}"#),
        (
            Job::Run,
            &["--clean", "a b", "--corrupted", "a c", "--sites", "resid_pre,z_by_pos", "--no-reuse", "--metric", "logprob", "--direction", "noising", "--ablation", "mean-positional", "--max-rows", "3", "--out", "x", "--verify", "0", "--prepend-bos", "--strict", "--no-skip", "--model", "m"],
            r#"{"clean": "a b", "corrupted": "a c", "sites": ["resid_pre", "z_by_pos"], "reuse": false, "metric": "logprob", "direction": "noising", "ablation": "mean-positional", "max_rows": 3, "out": "x", "verify": 0, "prepend_bos": true, "strict": true, "skip": false, "model": "m"}"#,
        ),
        (
            Job::Run,
            &["--pairs", "p.jsonl", "--columns", "clean=prompt,corrupted=other", "--method", "eap-ig", "--ig-steps", "7", "--overwrite", "--resume", "--shard", "1/4"],
            r#"{"pairs": "p.jsonl", "columns": {"clean": "prompt", "corrupted": "other"}, "method": "eap-ig", "ig_steps": 7, "overwrite": true, "resume": true, "shard": "1/4"}"#,
        ),
        (Job::Path, &["--clean", "a", "--corrupted", "b", "--receivers", "q,resid_final", "--senders", "0.1,1.0"], r#"{"clean": "a", "corrupted": "b", "receivers": ["q", "resid_final"], "senders": [[0, 1], [1, 0]]}"#),
        (Job::Edges, &["--clean", "a", "--corrupted", "b", "--method", "eap", "--backend", "wgpu", "--fusion", "--threads", "2"], r#"{"clean": "a", "corrupted": "b", "method": "eap", "backend": "wgpu", "fusion": true, "threads": 2}"#),
    ];
    for (job, argv, json) in cases {
        let cli = RunOptions::from_args(job.name(), &args(argv)).unwrap();
        let python = RunOptions::from_json(json).unwrap();
        assert_eq!(cli, python, "{job:?} {argv:?}");
        for out in [None, Some(PathBuf::from("results/run"))] {
            let plan = |o: &RunOptions| format!("{:?}", o.clone().plan(job, out.clone()).map_err(|e| e.to_string()));
            assert_eq!(plan(&cli), plan(&python), "{job:?} {argv:?}");
        }
    }
    // The defaults, declared once: what a run is when only its pair is given.
    let plan = RunOptions::from_json(r#"{"clean": "a b", "corrupted": "a c"}"#).unwrap().plan(Job::Run, None).unwrap();
    let s = &plan.spec.sweep;
    assert_eq!(plan.model(), "gpt2");
    assert_eq!(s.sites, PatchSite::parse_list("resid_pre,attn_out,mlp_out").unwrap());
    assert_eq!((plan.spec.verify, s.reuse, s.skip, s.metric, s.prepend_bos, s.out.is_none()), (8, true, true, Metric::LogitDiff, false, true));
    // A bad value: the same message whichever front end it came through.
    let bad: [(Job, &[&str], &str, &str); 5] = [
        (Job::Run, &["--metric", "logits"], r#"{"metric": "logits"}"#, r#""logits" is not one of logit_diff, logprob, prob, logprob_diff"#),
        (Job::Path, &["--senders", "9"], r#"{"senders": "9"}"#, r#"--senders: "9" is not layer.head"#),
        (Job::Run, &["--columns", "colour=x"], r#"{"columns": {"colour": "x"}}"#, r#"unknown field "colour""#),
        (Job::Run, &["--clean", "a", "--corrupted", "b", "--receivers", "q"], r#"{"clean": "a", "corrupted": "b", "receivers": "q"}"#, "run takes no --receivers"),
        (Job::Edges, &["--clean", "a", "--corrupted", "b", "--sites", "resid_pre"], r#"{"clean": "a", "corrupted": "b", "sites": "resid_pre"}"#, "edges takes no --sites"),
    ];
    for (job, argv, json, message) in bad {
        let error = |r: anyhow::Result<RunOptions>| match r.and_then(|o| o.plan(job, None)) {
            Ok(_) => panic!("{argv:?} was taken"),
            Err(e) => format!("{e:#}"),
        };
        let (cli, python) = (error(RunOptions::from_args(job.name(), &args(argv))), error(RunOptions::from_json(json)));
        assert!(cli.contains(message) && python.contains(message), "{argv:?}: {cli:?} / {python:?}, not {message:?}");
    }
    let unknown = format!("{:#}", RunOptions::from_json(r#"{"colour": 1}"#).unwrap_err());
    assert!(unknown.starts_with("colour=: unknown option"), "{unknown}");
}

/// The discovery jobs' options, as `circuit` and `faithfulness` take them and as `Result.circuit`
/// and `Model.faithfulness` send them: the same options, the same spec, the same refusals.
#[test]
fn circuit_and_faithfulness_options_make_the_same_spec_from_either_front_end() {
    use patchbay::jobs::discovery::{CircuitOptions, FaithfulnessOptions};
    use patchbay::jobs::options::Options;
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    for (argv, json) in [(&["--top-n", "20"][..], r#"{"top_n": 20}"#), (&["--greedy", "5", "--no-absolute", "--no-prune", "--out", "c.json"], r#"{"greedy": 5, "absolute": false, "prune": false, "out": "c.json"}"#), (&["--threshold", "-0.5"], r#"{"threshold": -0.5}"#)] {
        let (cli, python) = (CircuitOptions::from_args("circuit", &args(argv)), CircuitOptions::from_json(json));
        let spec = |o: anyhow::Result<CircuitOptions>| format!("{:?}", o.and_then(|o| o.spec("run".into())).map_err(|e| e.to_string()));
        assert_eq!(spec(cli), spec(python), "{argv:?}");
    }
    let one = |r: anyhow::Result<CircuitOptions>| format!("{:#}", r.and_then(|o| o.spec("run".into())).unwrap_err());
    let (cli, python) = (one(CircuitOptions::from_args("circuit", &args(&["--top-n", "3", "--greedy", "3"]))), one(CircuitOptions::from_json(r#"{"top_n": 3, "greedy": 3}"#)));
    assert!(cli == python && cli == "give one of --top-n, --threshold or --greedy", "{cli} / {python}");
    let argv = args(&["--sizes", "10,20", "--greedy", "--no-prune", "--draw-at", "0.5", "--max-rows", "4", "--out", "o"]);
    let (cli, python) = (FaithfulnessOptions::from_args("faithfulness", &argv).unwrap(), FaithfulnessOptions::from_json(r#"{"sizes": [10, 20], "greedy": true, "prune": false, "draw_at": 0.5, "max_rows": 4, "out": "o"}"#).unwrap());
    assert_eq!(cli, python);
    let spec = cli.spec("run".into()).unwrap();
    assert_eq!((spec.sizes, spec.greedy, spec.absolute, spec.prune, spec.draw_at, spec.max_rows), (Some(vec![10, 20]), true, true, false, 0.5, Some(4)));
    let defaults = FaithfulnessOptions::from_json("{}").unwrap().spec("run".into()).unwrap();
    assert_eq!((defaults.greedy, defaults.absolute, defaults.prune, defaults.draw_at, defaults.circuits.len()), (false, true, true, 0.8, 0));
}

/// `generate`'s options: the flags and Python's keywords give the same decoding (sampling,
/// stopping, steering), its defaults filled in by `GenerateOptions::spec` alone, and the same
/// refusals.
#[test]
fn generate_options_make_the_same_spec_from_either_front_end() {
    use patchbay::backend::{BackendKind, BackendSpec, DType};
    use patchbay::jobs::options::Options;
    use patchbay::jobs::text::GenerateOptions;
    let model = patchbay::jobs::Model::load(tiny().to_str().unwrap(), BackendSpec { kind: BackendKind::Cpu, device: 0, dtype: DType::F32, fusion: false }, None).unwrap();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let vector = || Some((vec![1.0f32; 16], vec![16]));
    let cases: [(&[&str], &str, bool); 3] = [
        (&[], "{}", false),
        (&["--greedy", "--max-new-tokens", "5", "--stop-at-eos", "--prepend-bos", "--batch", "2"], r#"{"greedy": true, "max_new_tokens": 5, "stop_at_eos": true, "prepend_bos": true, "batch": 2}"#, false),
        (&["--temperature", "0.7", "--top-k", "4", "--top-p", "0.9", "--freq-penalty", "-0.5", "--num-sequences", "3", "--seed", "7", "--steer-site", "attn_out", "--steer-layer", "1", "--coef", "-2"], r#"{"temperature": 0.7, "top_k": 4, "top_p": 0.9, "freq_penalty": -0.5, "num_sequences": 3, "seed": 7, "steer_site": "attn_out", "steer_layer": 1, "coef": -2}"#, true),
    ];
    for (argv, json, steered) in cases {
        let (cli, python) = (GenerateOptions::from_args("generate", &args(argv)).unwrap(), GenerateOptions::from_json(json).unwrap());
        assert_eq!(cli, python, "{argv:?}");
        let spec = |o: GenerateOptions| format!("{:?}", o.spec(&model, vec!["a".into()], Vec::new(), if steered { vector() } else { None }).unwrap());
        assert_eq!(spec(cli), spec(python), "{argv:?}");
    }
    let defaults = GenerateOptions::default().spec(&model, vec!["a".into()], Vec::new(), None).unwrap();
    let o = &defaults.options;
    assert_eq!((o.max_new_tokens, o.num_sequences, o.seed, o.batch, o.sampling.temperature, o.sampling.freq_penalty, defaults.prepend_bos), (50, 1, 0, 64, Some(1.0), 0.0, false));
    let refused = |argv: &[&str], json: &str, vector: Option<(Vec<f32>, Vec<usize>)>| {
        let error = |o: anyhow::Result<GenerateOptions>| format!("{:#}", o.and_then(|o| o.spec(&model, vec!["a".into()], Vec::new(), vector.clone())).unwrap_err());
        (error(GenerateOptions::from_args("generate", &args(argv))), error(GenerateOptions::from_json(json)))
    };
    let (cli, python) = refused(&["--greedy", "--temperature", "0.5"], r#"{"greedy": true, "temperature": 0.5}"#, None);
    assert!(cli == python && cli.starts_with("--greedy takes no --temperature"), "{cli} / {python}");
    let (cli, python) = refused(&["--steer-site", "attn_out"], r#"{"steer_site": "attn_out"}"#, vector());
    assert!(cli == python && cli.contains("needs --steer-site and --steer-layer"), "{cli} / {python}");
}

/// The last jobs' options — `inspect`, `prepend`, `steer make`, `ioi` — from the flags and from
/// Python's keywords: the same options, the same spec (defaults filled in by the options type alone).
#[test]
fn inspect_prepend_steer_and_ioi_options_make_the_same_spec_from_either_front_end() {
    use patchbay::jobs::datasets::IoiOptions;
    use patchbay::jobs::inspect::InspectOptions;
    use patchbay::jobs::options::Options;
    use patchbay::jobs::text::{PrependOptions, SteerOptions};
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let (cli, python) = (InspectOptions::from_args("inspect", &args(&["--top-k", "7", "--prepend-bos"])).unwrap(), InspectOptions::from_json(r#"{"top_k": 7, "prepend_bos": true}"#).unwrap());
    assert_eq!(cli, python);
    let (cli, python) = (PrependOptions::from_args("prepend", &args(&["--n-tokens", "2", "--seed", "4"])).unwrap(), PrependOptions::from_json(r#"{"n_tokens": 2, "seed": 4}"#).unwrap());
    assert_eq!(cli, python);
    let spec = cli.spec("x".into());
    assert_eq!((spec.n_tokens, spec.samples, spec.seed, spec.score_bos), (2, 10, 4, false));
    let argv = args(&["--clean", "a", "--corrupted", "b", "--site", "attn_out", "--layer", "1", "--position", "-2", "--out", "v.npy", "--overwrite"]);
    let (cli, python) = (SteerOptions::from_args("steer", &argv).unwrap(), SteerOptions::from_json(r#"{"clean": "a", "corrupted": "b", "site": "attn_out", "layer": 1, "position": -2, "out": "v.npy", "overwrite": true}"#).unwrap());
    assert_eq!(cli, python);
    let spec = cli.spec().unwrap();
    assert_eq!((spec.site.layer, spec.position, spec.overwrite, spec.prepend_bos), (1, -2, true, false));
    let refused = format!("{:#}", SteerOptions::from_json(r#"{"clean": "a", "corrupted": "b", "site": "resid", "layer": 1}"#).unwrap().spec().unwrap_err());
    assert!(refused.contains("resid"), "{refused}");
    let (cli, python) = (IoiOptions::from_args("ioi", &args(&["--corruption", "s-flip", "--out", "p.jsonl"])).unwrap(), IoiOptions::from_json(r#"{"corruption": "s-flip", "out": "p.jsonl"}"#).unwrap());
    assert_eq!(cli, python);
    let spec = cli.spec().unwrap();
    assert_eq!((spec.n, spec.seed, spec.corruption), (500, 0, patchbay::data::ioi::Corruption::SFlip));
    for (argv, json) in [(&["--n", "0"][..], r#"{"n": 0}"#), (&["--corruption", "abba"][..], r#"{"corruption": "abba"}"#)] {
        let error = |o: anyhow::Result<IoiOptions>| format!("{:#}", o.and_then(|o| o.spec()).unwrap_err());
        let (cli, python) = (error(IoiOptions::from_args("ioi", &args(argv))), error(IoiOptions::from_json(json)));
        let message = if argv[1] == "0" { "must be at least 1" } else { r#""abba" is not one of abc, s-flip"# };
        assert!(cli.contains(message) && python.contains(message), "{cli} / {python}");
    }
}

/// `verify`: the flags and Python's keywords give the same options and the same spec (32 rows and
/// the run's own backend unless told, written once in `VerifyOptions::spec`).
#[test]
fn verify_options_make_the_same_spec_from_either_front_end() {
    use patchbay::backend::{BackendKind, DType};
    use patchbay::jobs::options::Options;
    use patchbay::jobs::options::VerifyOptions;
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let (cli, python) = (VerifyOptions::from_args("verify", &[]).unwrap(), VerifyOptions::from_json("{}").unwrap());
    assert_eq!(cli, python);
    assert_eq!(cli.spec().unwrap(), (32, None));
    let (cli, python) = (VerifyOptions::from_args("verify", &args(&["--rows", "5", "--dtype", "f16", "--backend", "wgpu"])).unwrap(), VerifyOptions::from_json(r#"{"rows": 5, "dtype": "f16", "backend": "wgpu"}"#).unwrap());
    assert_eq!(cli, python);
    let (rows, backend) = cli.spec().unwrap();
    let backend = backend.expect("given");
    assert_eq!((rows, backend.kind, backend.dtype), (5, BackendKind::Wgpu, DType::F16));
    let (cli, python) = (VerifyOptions::from_args("verify", &args(&["--dtype", "f17"])).unwrap_err(), VerifyOptions::from_json(r#"{"dtype": "f17"}"#).unwrap_err());
    assert!(cli.to_string().contains("f17") && format!("{python:#}").contains("dtype=") && format!("{python:#}").contains("f17"), "{cli} / {python:#}");
}

/// `patterns`, `attribute`, `perplexity` and `candidates`: the flags and Python's keywords give the
/// same options and the same spec.
#[test]
fn patterns_attribute_perplexity_and_candidates_options_make_the_same_spec_from_either_front_end() {
    use patchbay::backend::{BackendKind, BackendSpec, DType};
    use patchbay::jobs::circuits::{AttributeOptions, PatternsOptions};
    use patchbay::jobs::options::Options;
    use patchbay::jobs::text::{CandidatesOptions, PerplexityOptions};
    let model = patchbay::jobs::Model::load(tiny().to_str().unwrap(), BackendSpec { kind: BackendKind::Cpu, device: 0, dtype: DType::F32, fusion: false }, None).unwrap();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let argv = args(&["--layers", "0,2", "--heads", "1-3", "--prepend-bos", "--batch", "4", "--out", "p", "--html-prompts", "3"]);
    let (cli, python) = (PatternsOptions::from_args("patterns", &argv).unwrap(), PatternsOptions::from_json(r#"{"layers": [0, 2], "heads": "1-3", "prepend_bos": true, "batch": 4, "out": "p", "html_prompts": 3}"#).unwrap());
    let spec = |o: PatternsOptions| format!("{:?}", o.spec(&model, vec!["a b".into()]).unwrap());
    assert_eq!(spec(cli), spec(python));
    let defaults = PatternsOptions::default().spec(&model, vec!["a".into()]).unwrap();
    assert_eq!((defaults.layers, defaults.heads, defaults.batch, defaults.html_prompts, defaults.prepend_bos), (None, None, 64, 20, false));
    let argv = args(&["--pairs", "p.jsonl", "--columns", "clean=c", "--strict", "--no-prepend-bos", "--batch", "8", "--out", "o", "--overwrite"]);
    let (cli, python) = (AttributeOptions::from_args("attribute", &argv).unwrap(), AttributeOptions::from_json(r#"{"pairs": "p.jsonl", "columns": {"clean": "c"}, "strict": true, "prepend_bos": false, "batch": 8, "out": "o", "overwrite": true}"#).unwrap());
    assert_eq!(cli, python);
    assert_eq!(format!("{:?}", cli.spec().unwrap()), format!("{:?}", python.spec().unwrap()));
    let (cli, python) = (PerplexityOptions::from_args("perplexity", &args(&["--per-token", "--batch", "2"])).unwrap(), PerplexityOptions::from_json(r#"{"per_token": true, "batch": 2}"#).unwrap());
    assert_eq!(cli, python);
    let (cli, python) = (CandidatesOptions::from_args("candidates", &args(&["--top-k", "3", "--all-positions", "--out", "c"])).unwrap(), CandidatesOptions::from_json(r#"{"top_k": 3, "all_positions": true, "out": "c"}"#).unwrap());
    assert_eq!(cli, python);
    assert_eq!((cli.choice(), CandidatesOptions::default().choice()), ((3, true), (5, false)));
}
