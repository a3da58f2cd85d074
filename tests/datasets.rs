//! Datasets at scale: pair file formats, the plain form, skipped pairs, variable lengths, the IOI
//! generator, and long runs (kill -9 + --resume, shards + merge) — through the `patchbay` binary.
use crate::common::*;
use patchbay::data::{self, ioi, Checks, Columns};
use patchbay::results::read_f32 as read_npy;
use patchbay::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::Command;

fn patchbay(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tok() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("gpt2/tokenizer.json")).unwrap()
}

fn pairs_file(name: &str) -> PathBuf {
    fixtures().join("pairs").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn i32_npy(path: &Path) -> Vec<i32> {
    npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap().into_vec().unwrap()
}

#[test]
fn parquet_and_csv_with_mapped_columns_read_the_same_pairs() {
    let t = tok();
    let parquet = data::read_pairs(&pairs_file("pairs.parquet"), &Columns::default()).unwrap();
    let columns = Columns { clean: "prompt".into(), corrupted: "corrupt".into(), answer: "good".into(), distractor: "bad".into(), ..Default::default() };
    let csv = data::read_pairs(&pairs_file("pairs.csv"), &columns).unwrap();
    assert_eq!(parquet.len(), 3);
    assert_eq!(parquet[1].positions["S2"], 9);
    let (a, skipped) = data::tokenize(&parquet, &t, None, Checks::default(), true).unwrap();
    let (b, _) = data::tokenize(&csv, &t, None, Checks::default(), true).unwrap();
    assert!(skipped.is_empty());
    let strip = |v: Vec<data::TokenizedPair>| v.into_iter().map(|p| (p.clean, p.corrupted, p.answer, p.distractor)).collect::<Vec<_>>();
    assert_eq!(strip(a.clone()), strip(b));
    assert_eq!((a[0].answer, a[0].distractor), (5437, 4176));
    // Without the mapping the CSV's columns are not found: an error naming file and row.
    let err = data::read_pairs(&pairs_file("pairs.csv"), &Columns::default()).unwrap_err();
    assert!(format!("{err:#}").contains("pairs.csv line 2") && format!("{err:#}").contains("no column \"clean\""), "{err:#}");
}

#[test]
fn plain_form_predicts_the_last_differing_token() {
    let t = tok();
    let pairs = data::read_pairs(&pairs_file("plain.csv"), &Columns::default()).unwrap();
    let (tp, _) = data::tokenize(&pairs, &t, None, Checks::default(), true).unwrap();
    for (p, raw) in tp.iter().zip(&pairs) {
        let full = t.encode(&raw.clean).unwrap();
        // The prompt stops before the last differing token, which is the answer ('.' vs '!').
        assert_eq!(t.token_str(p.answer), ".");
        assert_eq!(t.token_str(p.distractor), "!");
        assert_eq!(full[p.len()], p.answer);
        assert_eq!(&full[..p.len()], &p.clean[..]);
        assert_ne!(p.clean, p.corrupted, "the earlier '!' still differs");
    }
}

#[test]
fn bad_pairs_are_skipped_and_listed_or_fail_with_strict() {
    let dir = tmp("skip");
    let lines = [
        r#"{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"}"#,
        r#"{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "Michelle Smith Jones was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"}"#,
        r#"{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "Jessica Smith was a top-notch student. Jessica", "answer": " Jones", "distractor": " Smith"}"#,
    ];
    let file = dir.join("p.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dir.join("o");
    let (ok, log) = patchbay(&["run", "--model", s(&tiny()), "--pairs", s(&file), "--max-diff", "2", "--out", s(&out)]);
    assert!(ok, "{log}");
    assert!(log.contains("skipped line 2: clean and corrupted tokenize to different lengths"), "{log}");
    assert!(log.contains("skipped line 3: clean and corrupted differ at 3 positions"), "{log}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["skipped"].as_array().unwrap().len(), 2);
    assert_eq!(manifest["pairs"].as_array().unwrap().len(), 1);
    let (ok, log) = patchbay(&["run", "--strict", "--model", s(&tiny()), "--pairs", s(&file), "--out", s(&dir.join("o2"))]);
    assert!(!ok && log.contains("p.jsonl line 2") && log.contains("different lengths"), "{log}");
}

#[test]
fn variable_lengths_pad_with_nan_and_match_single_pair_runs() {
    let dir = tmp("lengths");
    let out = dir.join("all");
    let (ok, log) = patchbay(&["run", "--model", s(&tiny()), "--pairs", s(&pairs_file("pairs.parquet")), "--sites", "resid_pre,z_by_pos", "--out", s(&out)]);
    assert!(ok, "{log}");
    let lengths = i32_npy(&out.join("lengths.npy"));
    let max = *lengths.iter().max().unwrap() as usize;
    assert!(lengths.iter().any(|&l| l as usize != max), "the fixture mixes lengths: {lengths:?}");
    let (all, shape) = read_npy(&out.join("resid_pre.npy")).unwrap();
    assert_eq!(shape, [3, 3, max]);
    let t = tok();
    let pairs = data::read_pairs(&pairs_file("pairs.parquet"), &Columns::default()).unwrap();
    for (i, p) in pairs.iter().enumerate() {
        let one = dir.join(format!("one{i}"));
        let (ok, log) = patchbay(&[
            "run", "--model", s(&tiny()), "--clean", &p.clean, "--corrupted", &p.corrupted, "--answer", p.answer.as_deref().unwrap(),
            "--distractor", p.distractor.as_deref().unwrap(), "--sites", "resid_pre", "--out", s(&one),
        ]);
        assert!(ok, "{log}");
        let (single, _) = read_npy(&one.join("resid_pre.npy")).unwrap();
        let len = t.encode(&p.clean).unwrap().len();
        assert_eq!(len, lengths[i] as usize);
        for layer in 0..3 {
            let block = &all[(i * 3 + layer) * max..][..max];
            assert!(max_abs_diff(&block[..len], &single[layer * len..][..len]) < 1e-5, "pair {i} layer {layer}");
            assert!(block[len..].iter().all(|v| v.is_nan()), "pair {i}: NaN past its length");
        }
    }
    let (ok, log) = patchbay(&["analyze", s(&out)]);
    assert!(ok, "{log}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    // The first pair names {name, end}, the others not: no by-name aggregation.
    assert!(summary["by_name"].as_array().unwrap().is_empty());
    // The last position only exists in the longest pair: its mean is over one pair.
    assert_eq!(summary["sites"][0]["n"][max - 1], 1);
}

#[test]
fn ioi_pairs_are_deterministic_with_single_token_names_at_their_named_positions() {
    let t = tok();
    let a = ioi::generate(60, 7, ioi::Corruption::Abc, &t).unwrap();
    assert_eq!(a, ioi::generate(60, 7, ioi::Corruption::Abc, &t).unwrap());
    assert_ne!(a, ioi::generate(60, 8, ioi::Corruption::Abc, &t).unwrap());
    let flip = ioi::generate(60, 7, ioi::Corruption::SFlip, &t).unwrap();
    let (ta, _) = data::tokenize(&a, &t, None, Checks::default(), true).unwrap();
    let (tf, _) = data::tokenize(&flip, &t, None, Checks::default(), true).unwrap();
    let mut templates = std::collections::HashSet::new();
    for (p, f) in ta.iter().zip(&tf) {
        let pos = &p.positions;
        assert_eq!(p.clean[pos["IO"]], p.answer);
        assert_eq!(p.clean[pos["S1"]], p.distractor);
        assert_eq!(p.clean[pos["S2"]], p.distractor);
        assert_eq!(pos["S1+1"], pos["S1"] + 1);
        assert_eq!(pos["end"], p.len() - 1);
        let diff: Vec<usize> = (0..p.len()).filter(|&i| p.clean[i] != p.corrupted[i]).collect();
        let mut names = vec![pos["IO"], pos["S1"], pos["S2"]];
        names.sort();
        assert_eq!(diff, names, "abc replaces exactly the three names");
        let diff: Vec<usize> = (0..f.len()).filter(|&i| f.clean[i] != f.corrupted[i]).collect();
        assert_eq!(diff, [pos["S2"]]);
        assert_eq!(f.corrupted[pos["S2"]], f.answer, "s-flip puts IO at S2");
        templates.insert((pos["IO"] < pos["S1"], p.len()));
    }
    assert!(templates.iter().any(|t| t.0) && templates.iter().any(|t| !t.0), "BABA and ABBA both appear");
}

#[test]
fn ioi_sweep_of_500_prompts_aggregates_by_named_position() {
    let dir = tmp("ioi");
    let file = dir.join("ioi.jsonl");
    let (ok, log) = patchbay(&["ioi", "--n", "500", "--seed", "0", "--model", s(&tiny()), "--out", s(&file)]);
    assert!(ok, "{log}");
    let config = root().join("configs/ioi.toml");
    let out = dir.join("results");
    let (ok, log) = patchbay(&["run", s(&config), "--model", s(&tiny()), "--pairs", s(&file), "--out", s(&out)]);
    assert!(ok && log.contains("500 pair(s)"), "{log}");
    let (ok, log) = patchbay(&["analyze", s(&out)]);
    assert!(ok, "{log}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let by_name = summary["by_name"].as_array().unwrap();
    assert_eq!(by_name.len(), 3, "resid_pre, attn_out, mlp_out by name");
    let labels: Vec<&str> = by_name[0]["labels"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for name in ["IO", "S1", "S1+1", "S2", "end"] {
        assert!(labels.contains(&name), "{labels:?}");
    }
    // resid_pre at layer 0 where tokens agree (S1+1, end) changes nothing: exactly 0 for every pair.
    let mean = by_name[0]["mean"].as_array().unwrap();
    for name in ["S1+1", "end"] {
        let j = labels.iter().position(|l| *l == name).unwrap();
        assert!(mean[j].as_f64().unwrap().abs() < 1e-4, "{name}: {}", mean[j]);
    }
    assert!(out.join("resid_pre.by_name.png").exists() && out.join("z_all_pos.png").exists());
}

/// Asserts two results directories hold the same files, byte for byte.
fn assert_same_files(a: &Path, b: &Path) {
    assert_same_files_but_checks(a, b, false)
}

/// The same, but with `ignore_checks` the manifests' `verify` records (which rows were
/// rechecked depends on how the run was split) are left out of the comparison.
fn assert_same_files_but_checks(a: &Path, b: &Path, ignore_checks: bool) {
    let strip = |f: Vec<(String, Vec<u8>)>| if ignore_checks { without_checks(f) } else { f };
    let (fa, fb) = (strip(files_of(a)), strip(files_of(b)));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb));
    let differ: Vec<&String> = fa.iter().zip(&fb).filter(|(x, y)| x.1 != y.1).map(|(x, _)| &x.0).collect();
    assert!(differ.is_empty(), "{} and {} differ in {differ:?}", a.display(), b.display());
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn killed_run_resumes_to_byte_identical_results() {
    let dir = tmp("resume");
    let file = dir.join("ioi.jsonl");
    assert!(patchbay(&["ioi", "--n", "400", "--model", s(&tiny()), "--out", s(&file)]).0);
    // As TransformerLens patches, and noising by mean ablation: its means are read back on resume.
    for (name, how) in [("", &[][..]), ("noising-mean-", &["--direction", "noising", "--ablation", "mean"][..])] {
        killed_and_resumed(&dir.join(name.to_string() + "x"), &file, how);
    }
}

fn killed_and_resumed(dir: &Path, file: &Path, how: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let args = |out: &Path| -> Vec<String> {
        ["run", "--model", s(&tiny()), "--pairs", s(file), "--sites", "resid_pre,z_all_pos", "--max-rows", "64", "--out", s(out)]
            .iter()
            .chain(how)
            .map(|a| a.to_string())
            .collect()
    };
    let whole = dir.join("whole");
    assert!(patchbay(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>()).0);

    let cut = dir.join("cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(args(&cut)).spawn().unwrap();
    // Kill -9 once a few units are on disk, in the middle of later ones.
    let progress = cut.join("progress.json");
    let started = std::time::Instant::now();
    loop {
        let done = std::fs::read(&progress).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()).map_or(0, |v| v["done"].as_array().unwrap().len());
        if done >= 3 {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "the run never got going");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(progress.exists() && !cut.join("resid_pre.npy").exists(), "the run was cut before finishing");
    assert!(cut.join("resid_pre.npy.partial").exists());
    if !how.is_empty() {
        assert!(cut.join("resid_pre.ablation_means.npy.partial").exists() && cut.join("z.ablation_means.npy.partial").exists());
    }

    if !how.is_empty() {
        // Another ablation is another run: never resumed into this one.
        let other: Vec<String> = args(&cut).into_iter().map(|a| if a == "mean" { "zero".into() } else { a }).chain(["--resume".into()]).collect();
        let (ok, log) = patchbay(&other.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!ok && log.contains("unfinished run of other inputs"), "{log}");
    }
    let resume: Vec<String> = args(&cut).into_iter().chain(["--resume".to_string()]).collect();
    let (ok, log) = patchbay(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{log}");
    assert_same_files(&whole, &cut);
    // Resuming a finished run (a requeued job) succeeds and changes nothing.
    let (ok, log) = patchbay(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok && log.contains("already complete"), "{log}");
    assert_same_files(&whole, &cut);
}

#[test]
fn shards_merge_into_the_unsharded_run() {
    let dir = tmp("shard");
    let file = dir.join("ioi.jsonl");
    assert!(patchbay(&["ioi", "--n", "50", "--model", s(&tiny()), "--out", s(&file)]).0);
    let model = tiny();
    let base = ["run", "--model", s(&model), "--pairs", s(&file), "--sites", "resid_pre,z_by_pos"];
    sharded_and_merged(&dir, &base);
    // Noising by mean ablation: each shard computes the whole run's means, and checks its rows with them.
    let means = dir.join("means");
    let base: Vec<&str> = base.iter().copied().chain(["--direction", "noising", "--ablation", "mean"]).collect();
    sharded_and_merged(&means, &base);
    // Shards with other means (here: a shard's listed hash edited) are not one run.
    let shard = means.join("sharded").join("shard-0001-of-0003");
    let m = std::fs::read_to_string(shard.join("manifest.json")).unwrap();
    let listed = serde_json::from_str::<serde_json::Value>(&m).unwrap()["ablation_means"][0]["xxh3"].as_str().unwrap().to_string();
    std::fs::write(shard.join("manifest.json"), m.replace(&listed, "0000000000000000")).unwrap();
    let (ok, log) = patchbay(&["merge", s(&means.join("sharded")), "--out", s(&means.join("mixed"))]);
    assert!(!ok && log.contains("ablation means differ"), "{log}");
    let (ok, log) = patchbay(&["verify", s(&shard)]);
    assert!(!ok && log.contains("resid_pre.ablation_means.npy does not hold the means the manifest lists"), "{log}");
    // A manifest that lists no means for a kind its sites read is refused, not run as resample.
    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["ablation_means"].as_array_mut().unwrap().remove(0);
    std::fs::write(shard.join("manifest.json"), v.to_string()).unwrap();
    let (ok, log) = patchbay(&["verify", s(&shard)]);
    assert!(!ok && log.contains("the mean ablation lists no means of resid_pre (site resid_pre)"), "{log}");
}

/// An exact edge run of fewer pairs than shards is split by rows of the graph: each shard computes
/// its third of the edges for every pair, and the merge, which checks that every (pair, edge) cell
/// is held exactly once, equals the unsharded run bit for bit (shards are cut at whole batches of
/// --max-rows, so each row is computed in the batch it has unsharded). The last shard takes its
/// index from Slurm's array variables, as a job array runs it.
#[test]
fn an_edge_run_shards_by_rows_of_the_graph_and_merges_into_the_unsharded_run() {
    let dir = tmp("shard-edges");
    let file = dir.join("ioi.jsonl");
    assert!(patchbay(&["ioi", "--n", "2", "--model", s(&tiny()), "--out", s(&file)]).0);
    let model = tiny();
    // 262 edges in batches of 32: 9 blocks, 3 to a shard.
    let base = ["edges", "--model", s(&model), "--pairs", s(&file), "--max-rows", "32"];
    let (whole, sharded) = (dir.join("whole"), dir.join("sharded"));
    assert!(patchbay(&[&base[..], &["--out", s(&whole)]].concat()).0);
    for k in 0..2 {
        let (ok, log) = patchbay(&[&base[..], &["--shard", &format!("{k}/3"), "--out", s(&sharded)]].concat());
        assert!(ok, "{log}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args([&base[..], &["--out", s(&sharded)]].concat()).env("SLURM_ARRAY_TASK_ID", "2").env("SLURM_ARRAY_TASK_COUNT", "3").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, log) = patchbay(&["merge", s(&sharded)]);
    assert!(ok, "{log}");
    let npy = |d: &Path, f: &str| -> Vec<f32> { npyz::NpyFile::new(std::fs::File::open(d.join(f)).unwrap()).unwrap().into_vec().unwrap() };
    for f in ["baseline_clean.npy", "baseline_corrupted.npy"] {
        assert_eq!(npy(&sharded, f), npy(&whole, f), "{f}");
    }
    // Every cell computed, bit for bit the unsharded run's: each shard batched its rows as it did.
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let (merged, want) = (npy(&sharded, "edges.npy"), npy(&whole, "edges.npy"));
    assert!(merged.iter().all(|v| v.is_finite()), "every cell computed");
    assert_eq!(bits(merged), bits(want), "the merged edges are the unsharded run's bit for bit");
    let manifest = |shard: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(shard.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest(&sharded)["layout"], manifest(&whole)["layout"]);
    let edges = manifest(&sharded)["sites"][0]["shape"][1].as_u64().unwrap();
    assert_eq!(edges, 262);
    let ranges: Vec<[u64; 2]> = (0..3).map(|k| serde_json::from_value(manifest(&sharded.join(format!("shard-000{k}-of-0003")))["shard"]["edges"].clone()).unwrap()).collect();
    assert_eq!(ranges, [[0, 96], [96, 192], [192, 262]]);
    // Fewer batches than shards: refused in one line.
    let (ok, log) = patchbay(&["edges", "--model", s(&model), "--pairs", s(&file), "--max-rows", "200", "--shard", "0/3", "--out", s(&dir.join("few"))]);
    assert!(!ok && log.trim().lines().last().unwrap().contains("make 2 batches of --max-rows 200, fewer than the shards"), "{log}");
    // A shard whose edges reach into the next one's, or stop short of them: refused, naming the cells.
    let shard = sharded.join("shard-0001-of-0003");
    let original = std::fs::read_to_string(shard.join("manifest.json")).unwrap();
    let past = format!("claims edges {}..{} of a graph of {edges}", ranges[1][0], edges + 1);
    for (end, says) in [(ranges[1][1] + 1, format!("shards 1 and 2 both hold pair 0 (edges {}..{})", ranges[1][1], ranges[1][1] + 1)), (ranges[1][1] - 1, format!("no shard holds edges {}..{} of pair 0", ranges[1][1] - 1, ranges[1][1])), (edges + 1, past)] {
        let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
        m["shard"]["edges"][1] = end.into();
        m["layout"]["edges"][1] = end.into();
        std::fs::write(shard.join("manifest.json"), m.to_string()).unwrap();
        let (ok, log) = patchbay(&["merge", s(&sharded), "--out", s(&dir.join("bad"))]);
        assert!(!ok && log.contains(&says) && log.trim().lines().count() == 1, "{log}");
    }
    // A shard that ran with another --max-rows: refused, naming both.
    let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
    m["max_rows"] = 16.into();
    std::fs::write(shard.join("manifest.json"), m.to_string()).unwrap();
    let (ok, log) = patchbay(&["merge", s(&sharded), "--out", s(&dir.join("bad"))]);
    assert!(!ok && log.contains("ran with --max-rows 16") && log.contains("with 32") && log.trim().lines().count() == 1, "{log}");
    std::fs::write(shard.join("manifest.json"), original).unwrap();
    // A shard missing, or given twice: refused.
    let (s0, s2) = (sharded.join("shard-0000-of-0003"), sharded.join("shard-0002-of-0003"));
    for given in [vec![s(&s0), s(&s2)], vec![s(&s0), s(&shard), s(&shard), s(&s2)]] {
        let (ok, log) = patchbay(&[&["merge"][..], &given[..], &["--out", s(&dir.join("bad"))]].concat());
        assert!(!ok && log.contains("each exactly once"), "{log}");
    }
}

fn sharded_and_merged(dir: &Path, base: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let whole = dir.join("whole");
    assert!(patchbay(&[&base[..], &["--out", s(&whole)]].concat()).0);
    let sharded = dir.join("sharded");
    for k in 0..2 {
        let (ok, log) = patchbay(&[&base[..], &["--shard", &format!("{k}/3"), "--out", s(&sharded)]].concat());
        assert!(ok, "{log}");
    }
    // The third shard from a Slurm array's environment.
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args([&base[..], &["--out", s(&sharded)]].concat())
        .env("SLURM_ARRAY_TASK_ID", "3")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sharded.join("shard-0002-of-0003").join("manifest.json").exists());
    let (ok, log) = patchbay(&["merge", s(&sharded)]);
    assert!(ok, "{log}");
    assert_same_files_but_checks(&sharded, &whole, true);
    // The merged run carries the shards' checks (8 rows each by default), all passed.
    let check = |dir: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()["verify"].clone();
    let merged = check(&sharded);
    assert_eq!(merged["rows"], 24, "{merged}");
    assert_eq!(merged["failed"].as_array().unwrap().len(), 0, "{merged}");
    assert_eq!(check(&whole)["rows"], 8);
}

#[test]
fn jobs_from_the_environment_and_partial_merges_are_refused() {
    let dir = tmp("shard-env");
    let file = dir.join("ioi.jsonl");
    assert!(patchbay(&["ioi", "--n", "50", "--model", s(&tiny()), "--out", s(&file)]).0);
    let model = tiny();
    let base = ["run", "--model", s(&model), "--pairs", s(&file), "--sites", "resid_pre"];
    let sharded = dir.join("sharded");
    assert!(patchbay(&[&base[..], &["--shard", "0/3", "--out", s(&sharded)]].concat()).0);
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args([&base[..], &["--out", s(&dir.join("k8s"))]].concat()).env("JOB_COMPLETION_INDEX", "1").output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--shards N"));
    let (ok, log) = patchbay(&["merge", s(&sharded.join("shard-0000-of-0003")), "--out", s(&dir.join("m"))]);
    assert!(!ok && log.contains("shards [0] given") && log.contains("has shards 0..3"), "{log}");
}

/// Mean ablation over 100 IOI pairs of several lengths — each head's z replaced at every position by
/// its mean over every position of every clean prompt — against PyTorch forward hooks on HF GPT-2
/// (tests/fixtures/make_ablation_refs.py), with the means patchbay recorded.
#[test]
fn mean_ablation_over_100_ioi_pairs_matches_pytorch() {
    let dir = tmp("ioi100");
    let out = dir.join("out");
    let (ok, log) = patchbay(&["run", "--model", s(&tiny()), "--pairs", s(&pairs_file("ioi100.jsonl")), "--sites", "z_all_pos", "--ablation", "mean", "--out", s(&out)]);
    assert!(ok, "{log}");
    let refs = Refs::load_file(&tiny(), "refs-ablation.safetensors");
    for (file, reference) in [
        ("z_all_pos.npy", "ioi100.denoising.mean.z_all_pos"),
        ("z.ablation_means.npy", "ioi100.means.z"),
        ("baseline_clean.npy", "ioi100.baseline_clean"),
        ("baseline_corrupted.npy", "ioi100.baseline_corrupted"),
    ] {
        let (got, shape) = read_npy(&out.join(file)).unwrap();
        let (want, want_shape) = refs.f32(reference);
        assert_eq!(shape, want_shape, "{file}");
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "{file}: differs from PyTorch by {diff}");
    }
}

/// Noising with resample ablation is, by definition, denoising of the pairs with clean and corrupted
/// swapped (answer and distractor kept): on every site and path, the same arrays; the baselines
/// are the same two runs under their own names, so analyze's normalization (clean = 1) holds.
#[test]
fn noising_by_resampling_is_denoising_with_the_prompts_swapped() {
    let dir = tmp("noising");
    let file = dir.join("ioi.jsonl");
    assert!(patchbay(&["ioi", "--n", "4", "--model", s(&tiny()), "--out", s(&file)]).0);
    let swapped: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let clean = v["clean"].take();
            v["clean"] = v["corrupted"].take();
            v["corrupted"] = clean;
            v.to_string()
        })
        .collect();
    let swapped_file = dir.join("swapped.jsonl");
    std::fs::write(&swapped_file, swapped.join("\n")).unwrap();
    let sites = patchbay::engine::PatchSite::ALL.iter().filter(|s| !s.is_path()).map(|s| s.name()).collect::<Vec<_>>().join(",");
    for (command, what) in [("run", ["--sites", sites.as_str()]), ("path", ["--receivers", "q,k,v,resid_final"])] {
        let run = |name: &str, pairs: &Path, extra: &[&str]| {
            let out = dir.join(format!("{command}-{name}"));
            let (ok, log) = patchbay(&[&[command, "--model", s(&tiny()), "--pairs", s(pairs), "--out", s(&out)], &what[..], extra].concat());
            assert!(ok, "{log}");
            files_of(&out).into_iter().filter(|f| f.0.ends_with(".npy")).collect::<std::collections::BTreeMap<_, _>>()
        };
        let noising = run("noising", &file, &["--direction", "noising"]);
        let denoising = run("swapped", &swapped_file, &[]);
        assert_eq!(noising.keys().collect::<Vec<_>>(), denoising.keys().collect::<Vec<_>>());
        for (name, bytes) in &noising {
            let other = match name.as_str() {
                "baseline_clean.npy" => "baseline_corrupted.npy",
                "baseline_corrupted.npy" => "baseline_clean.npy",
                n => n,
            };
            assert!(bytes == &denoising[other], "{command}: {name} of the noising run differs from {other} of the swapped pairs' denoising run");
        }
        let plain = run("denoising", &file, &[]);
        assert!(plain["baseline_clean.npy"] == noising["baseline_clean.npy"], "{command}: the baselines are the same two runs");
        assert!(plain.iter().any(|(n, b)| !n.starts_with("baseline") && n != "lengths.npy" && noising[n] != *b), "{command}: noising differs from denoising");
    }
    let (ok, log) = patchbay(&["analyze", s(&dir.join("run-noising"))]);
    assert!(ok, "{log}");
    let svg = std::fs::read_to_string(dir.join("run-noising").join("resid_pre.svg")).unwrap();
    assert!(svg.contains("noising, resample ablation"), "the heatmap's title names the direction and ablation");
}

#[test]
fn skipped_no_op_runs_equal_computing_them_on_every_site() {
    let dir = tmp("noop");
    // Lengths 8 to 14; first differences at 0, 1, 4 and the last position; pair 0 has equal
    // tokens after its difference (layer 0's resid_pre is a no-op there too).
    let lines = [
        r#"{"clean": "Alice went to the park. She", "corrupted": "Bob went to the park. She", "answer": " was", "distractor": " is"}"#,
        r#"{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"}"#,
        r#"{"clean": "When Mary and John went to the store, John gave a drink to", "corrupted": "When Mary and John went to the store, Mary gave a drink to", "answer": " Mary", "distractor": " John"}"#,
        r#"{"clean": "Michelle Jones was a top-notch student. Michelle", "corrupted": "Michelle Jones was a top-notch student. Jessica", "answer": " Jones", "distractor": " Smith"}"#,
    ];
    let file = dir.join("p.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let sites = patchbay::engine::PatchSite::ALL.map(|s| s.name()).join(",");
    let sites = sites.as_str();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let (ok, log) = patchbay(&[&["run", "--model", s(&tiny()), "--pairs", s(&file), "--sites", sites, "--out", s(&out)], extra].concat());
        assert!(ok, "{log}");
        out
    };
    let (skip, all, skip_plain, all_plain) = (run("skip", &[]), run("all", &["--no-skip"]), run("skip-plain", &["--no-reuse"]), run("all-plain", &["--no-reuse", "--no-skip"]));
    let manifest = |d: &Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
    let m = manifest(&skip);
    let pairs = m["pairs"].as_array().unwrap();
    let tokens = |p: &serde_json::Value, k: &str| p[k].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let firsts: Vec<usize> = pairs.iter().map(|p| patchbay::engine::plan::first_difference(&tokens(p, "clean_tokens"), &tokens(p, "corrupted_tokens"))).collect();
    let lengths: Vec<usize> = pairs.iter().map(|p| p["length"].as_u64().unwrap() as usize).collect();
    assert_eq!((firsts[0], firsts[1], firsts[3]), (0, 1, lengths[3] - 1), "{firsts:?}");
    assert!(firsts[2] > 1 && firsts[2] < lengths[2] - 1 && lengths[0] != lengths[2], "{firsts:?} {lengths:?}");
    let (corrupted, _) = read_npy(&skip.join("baseline_corrupted.npy")).unwrap();
    let (layers, heads) = (3, 4);
    let mut skipped = 0;
    for site in sites.split(',') {
        let (a, shape) = read_npy(&skip.join(format!("{site}.npy"))).unwrap();
        let (b, _) = read_npy(&all.join(format!("{site}.npy"))).unwrap();
        let (c, _) = read_npy(&skip_plain.join(format!("{site}.npy"))).unwrap();
        let (d, _) = read_npy(&all_plain.join(format!("{site}.npy"))).unwrap();
        // NaN (past a shorter pair's length) must be NaN in both.
        let diff = |x: &[f32], y: &[f32]| {
            assert!(x.iter().zip(y).all(|(p, q)| p.is_nan() == q.is_nan()), "{site}: padding differs");
            let keep = |v: &[f32]| v.iter().copied().filter(|f| !f.is_nan()).collect::<Vec<f32>>();
            max_abs_diff(&keep(x), &keep(y))
        };
        assert!(diff(&a, &b) <= 1e-6, "{site}: skip vs --no-skip {}", diff(&a, &b));
        assert!(diff(&c, &d) <= 1e-6, "{site}: skip vs --no-skip without reuse {}", diff(&c, &d));
        assert!(diff(&a, &d) <= 1e-5, "{site}: reuse vs the plain path {}", diff(&a, &d));
        // The no-op cells, found from the tokens here: the corrupted baseline, exactly when
        // skipped, and as computed. A cell's indices follow the manifest's axes.
        let entry = m["sites"].as_array().unwrap().iter().find(|e| e["name"] == site).unwrap();
        let axes: Vec<&str> = entry["axes"].as_array().unwrap()[2..].iter().map(|a| a.as_str().unwrap()).collect();
        let per_pair: usize = shape[1..].iter().product();
        let cells = per_pair / layers;
        let local = ["resid_pre", "q_by_pos", "k_by_pos", "v_by_pos"].contains(&site);
        for (i, p) in pairs.iter().enumerate() {
            let (clean, corr) = (tokens(p, "clean_tokens"), tokens(p, "corrupted_tokens"));
            for layer in 0..layers {
                for cell in 0..cells {
                    let (mut rest, mut at) = (cell, std::collections::HashMap::new());
                    for (a, &n) in axes.iter().zip(&shape[2..]).rev() {
                        at.insert(*a, rest % n);
                        rest /= n;
                    }
                    let (Some(&pos), src) = (at.get("position"), at.get("src_position").copied()) else { continue };
                    assert!(at.get("head").is_none_or(|&h| h < heads));
                    let in_pair = pos < lengths[i] && src.is_none_or(|s| s < lengths[i]);
                    let noop = || pos < firsts[i] || src.is_some_and(|s| s > pos) || (local && layer == 0 && clean[pos] == corr[pos]);
                    if in_pair && noop() {
                        let k = i * per_pair + layer * cells + cell;
                        skipped += 1;
                        assert_eq!(a[k], corrupted[i], "{site} pair {i} layer {layer} cell {cell}");
                        assert!((b[k] - corrupted[i]).abs() <= 1e-6, "{site} pair {i} layer {layer} cell {cell}: computed {} vs {}", b[k], corrupted[i]);
                    }
                }
            }
        }
    }
    assert!(skipped > 0);
    let runs = |d: &Path| (manifest(d)["runs"]["computed"].as_u64().unwrap() as usize, manifest(d)["runs"]["skipped"].as_u64().unwrap() as usize);
    let (computed, skipped_run) = runs(&skip);
    assert_eq!(skipped_run, skipped);
    assert_eq!(runs(&all), (computed + skipped, 0));
    assert_eq!(runs(&skip_plain), (computed, skipped));
}
