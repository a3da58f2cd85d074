//! The results directory as one transaction, through the `patchbay` binary: a run killed at any
//! file operation (strace's fault injection: SIGKILL at the Nth call of each file syscall) leaves
//! a directory that `analyze` refuses or reads correctly and that `--resume` finishes
//! byte-identical; overwrite, merge and damaged files never give wrong results with exit 0.
use crate::common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Out {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A clean failure: exit status 1 (not a panic's 101, not a signal) with a one-line message.
    fn refused(&self) -> bool {
        self.code == Some(1) && self.stderr.trim().lines().count() == 1
    }
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    // Mesa's Vulkan loader complains on stderr without a runtime dir.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    c.args(args).envs(env.iter().copied());
    c
}

fn run(mut c: Command) -> Out {
    let out = c.output().unwrap();
    Out { code: out.status.code(), signal: out.status.signal(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn patchbay(args: &[&str]) -> Out {
    run(command(args, &[]))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-results-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const CLEAN: &str = "Michelle Jones was a top-notch student. Michelle";

/// Three pairs of three lengths: three units of work.
fn three_pairs(dir: &Path) -> PathBuf {
    let pair = |clean: &str, corrupted: &str| serde_json::json!({"clean": clean, "corrupted": corrupted, "answer": " Jones", "distractor": " Smith"}).to_string();
    let lines = [
        pair(CLEAN, "Michelle Smith was a top-notch student. Michelle"),
        pair("Michelle Jones was a student. Michelle", "Michelle Smith was a student. Michelle"),
        pair("Michelle Jones was here. Michelle", "Michelle Smith was here. Michelle"),
    ];
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn run_args<'a>(pairs: &'a Path, out: &'a Path, sites: &'a str) -> Vec<&'a str> {
    vec!["run", "--model", s_static(&tiny()), "--pairs", s(pairs), "--sites", sites, "--out", s(out)]
}

/// The fixture path as a `&'static str` (it never changes within a test binary).
fn s_static(p: &Path) -> &'static str {
    Box::leak(p.to_str().unwrap().to_string().into_boxed_str())
}

/// The files of `dir` (none when it does not exist), by name.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<String> {
    files.iter().map(|f| f.0.clone()).collect()
}

/// `dir` holds exactly `want`'s files, byte for byte.
fn assert_same_files(dir: &Path, want: &[(String, Vec<u8>)], what: &str) {
    let got = files_of(dir);
    assert_eq!(names(&got), names(want), "{what}: files differ");
    let differ: Vec<&String> = got.iter().zip(want).filter(|(a, b)| a.1 != b.1).map(|(a, _)| &a.0).collect();
    assert!(differ.is_empty(), "{what}: {differ:?} differ from the uninterrupted run");
}

// ---------------------------------------------------------------------------------------------
// Kill -9 at every file operation (strace).

/// File syscalls a run makes on its results directory. Each is a kill point: SIGKILL on entry to
/// its Nth call, i.e. after every earlier operation and before this one.
const SYSCALLS: [&str; 7] = ["mkdir", "openat", "write", "pwrite64", "fsync", "rename", "unlink"];

fn strace_works() -> bool {
    let ok = Command::new("strace").args(["-f", "-qq", "-o", "/dev/null", "true"]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: strace is not installed or cannot trace here (CI installs it: apt-get install strace)");
    }
    ok
}

/// `args` under strace, restricted to operations on `dir` and the files named (plus their
/// partial and temporary names); with `fault` (syscall, n, action), strace's `action` at call n
/// of the syscall (`signal=KILL`, `error=ENOSPC`). The trace's calls per syscall.
fn traced(args: &[&str], dir: &Path, files: &[String], fault: Option<(&str, usize, &str)>, trace: &Path) -> (Out, Vec<(String, usize)>) {
    // Temporary names carry the writer's pid, so the command starts stopped, strace attaches to
    // it knowing the pid, and it continues into patchbay (exec keeps the pid).
    let mut sh = Command::new("sh");
    sh.args(["-c", "kill -STOP $$; exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_patchbay")]).args(args);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        sh.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let child = sh.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let proc_field = |file: &str, key: &str| -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default().trim().to_string()
    };
    while !proc_field("status", "State:").starts_with('T') {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", s(trace), "-e", &format!("trace={}", SYSCALLS.join(",")), "-p", &pid.to_string(), "-P", s(dir)]);
    for f in files {
        for name in [f.clone(), format!("{f}.partial"), format!(".{f}.{pid}.patchbay-tmp")] {
            c.args(["-P", s(&dir.join(name))]);
        }
    }
    if let Some((syscall, nth, action)) = fault {
        c.args(["-e", &format!("inject={syscall}:{action}:when={nth}")]);
    }
    let mut strace = c.spawn().unwrap();
    while proc_field("status", "TracerPid:").parse::<u32>().unwrap_or(0) == 0 {
        assert!(strace.try_wait().unwrap().is_none(), "strace could not attach to pid {pid}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(Command::new("kill").args(["-CONT", &pid.to_string()]).status().unwrap().success());
    let done = child.wait_with_output().unwrap();
    assert!(strace.wait().unwrap().success() || fault.is_some());
    let out = Out { code: done.status.code(), signal: done.status.signal(), stderr: String::from_utf8_lossy(&done.stderr).into_owned() };
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let counts = SYSCALLS
        .iter()
        .map(|&sc| (sc.to_string(), text.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|call| call.starts_with(&format!("{sc}(")))).count()))
        .collect();
    (out, counts)
}

/// Every file a results directory of `sites` may hold, for strace's path filter.
fn result_files(sites: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["manifest.json", "manifest.json.partial", "progress.json", "baseline_clean.npy", "baseline_corrupted.npy", "lengths.npy", "summary.json", "summary.csv"]
        .map(String::from)
        .to_vec();
    for site in sites {
        v.extend([".npy", ".normalized.npy", ".png", ".svg", ".by_name.png", ".by_name.svg"].map(|ext| format!("{site}{ext}")));
    }
    v
}

/// The run's own files in a directory listing: arrays and manifest, not `analyze`'s outputs, nor
/// the manifest's record of `--verify` (added after the run is finished).
fn run_files(files: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    without_checks(files.iter().filter(|f| f.0 == "manifest.json" || (f.0.ends_with(".npy") && !f.0.ends_with(".normalized.npy"))).cloned().collect())
}

/// Kills `args` (a run into `dir`, which `setup` prepares) at each file operation in turn. After
/// each kill, `analyze` (on a copy) refuses the directory or reads one of the `finished` runs
/// whole, and `finish` (the command a retry runs) completes it to exactly `want`. Returns the
/// number of kill points.
#[allow(clippy::too_many_arguments)]
fn kill_everywhere(
    name: &str,
    args: &[&str],
    finish: &[&str],
    dir: &Path,
    setup: &dyn Fn(),
    want: &[(String, Vec<u8>)],
    finished: &[Vec<(String, Vec<u8>)>],
    files: &[String],
) -> usize {
    let trace = dir.with_extension("trace");
    setup();
    let (out, counts) = traced(args, dir, files, None, &trace);
    assert!(out.ok(), "{name}: the traced run failed: {}", out.stderr);
    let mut points = 0;
    for (syscall, n) in counts {
        for nth in 1..=n {
            setup();
            let what = format!("{name}: killed at {syscall} #{nth}");
            let (out, _) = traced(args, dir, files, Some((&syscall, nth, "signal=KILL")), &trace);
            assert_eq!(out.signal, Some(9), "{what}: not killed ({:?}): {}", out.code, out.stderr);
            points += 1;
            let copy = dir.with_extension("copy");
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            for (file, bytes) in files_of(dir) {
                std::fs::write(copy.join(file), bytes).unwrap();
            }
            let analyzed = patchbay(&["analyze", s(&copy)]);
            if analyzed.ok() {
                // Only a finished run is analyzed: all of one run, nothing of another.
                let seen = run_files(&files_of(&copy));
                assert!(finished.iter().any(|f| run_files(f) == seen), "{what}: analyze read a mix or a part of runs: {:?}", names(&seen));
            } else {
                assert!(analyzed.refused(), "{what}: analyze did not refuse cleanly: {:?} {}", analyzed.code, analyzed.stderr);
            }
            let done = patchbay(finish);
            assert!(done.ok(), "{what}: the retry failed: {}", done.stderr);
            assert_same_files(dir, want, &what);
        }
    }
    points
}

#[test]
fn a_run_killed_at_any_file_operation_resumes_to_the_uninterrupted_result() {
    if !strace_works() {
        return;
    }
    let dir = tmp("kill");
    let pairs = three_pairs(&dir);
    let reference = dir.join("reference");
    assert!(patchbay(&run_args(&pairs, &reference, "resid_pre")).ok());
    let want = files_of(&reference);
    let out = dir.join("out");
    let args = run_args(&pairs, &out, "resid_pre");
    let resume: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let setup = || {
        let _ = std::fs::remove_dir_all(&out);
    };
    let points = kill_everywhere("fresh run", &args, &resume, &out, &setup, &want, std::slice::from_ref(&want), &result_files(&["resid_pre"]));
    eprintln!("fresh run: {points} kill points, each resumed byte-identical");
    assert!(points > 30, "only {points} kill points");
}

#[test]
fn an_overwrite_killed_at_any_file_operation_never_mixes_runs() {
    if !strace_works() {
        return;
    }
    let dir = tmp("overwrite");
    let pairs = three_pairs(&dir);
    // The old run: two sites, analyzed (heatmaps, summaries). The new one: another site.
    let old = dir.join("old");
    assert!(patchbay(&run_args(&pairs, &old, "resid_pre,attn_out")).ok());
    assert!(patchbay(&["analyze", s(&old)]).ok());
    let reference = dir.join("reference");
    assert!(patchbay(&run_args(&pairs, &reference, "mlp_out")).ok());
    let want = files_of(&reference);
    let out = dir.join("out");
    // A Slurm retry's command: continue this run if it is there, replace anything else.
    let args: Vec<&str> = run_args(&pairs, &out, "mlp_out").into_iter().chain(["--resume", "--overwrite"]).collect();
    let setup = || {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for (name, bytes) in files_of(&old) {
            std::fs::write(out.join(name), bytes).unwrap();
        }
    };
    let files = result_files(&["resid_pre", "attn_out", "mlp_out"]);
    let points = kill_everywhere("overwrite", &args, &args, &out, &setup, &want, &[want.clone(), files_of(&old)], &files);
    eprintln!("overwrite: {points} kill points, each finished to the new run alone");
}

// ---------------------------------------------------------------------------------------------
// Overwrite, resume and merge without kills.

#[test]
fn an_overwrite_that_meets_a_full_disk_leaves_the_old_result_or_no_listing() {
    if !strace_works() {
        return;
    }
    let dir = tmp("enospc");
    let tiny = tiny();
    let pairs = three_pairs(&dir);
    let first = dir.join("first.jsonl");
    let lines = std::fs::read_to_string(&pairs).unwrap();
    std::fs::write(&first, lines.lines().next().unwrap().to_string() + "\n").unwrap();
    let out = dir.join("out");
    let model = ["--model", s_static(&tiny)];
    // (command, the old result's arguments, the new one's, its listing: present only beside a whole result)
    let commands: [(&str, Vec<&str>, Vec<&str>, &str); 3] = [
        ("patterns", [&["patterns"][..], &model, &[CLEAN, "--layers", "0"]].concat(), [&["patterns"][..], &model, &[CLEAN, "Hello there", "--layers", "1-2"]].concat(), "patterns.json"),
        ("perplexity", [&["perplexity"][..], &model, &[CLEAN, "--per-token"]].concat(), [&["perplexity"][..], &model, &["Hello there", "A third text."]].concat(), "perplexity.json"),
        ("attribute", [&["attribute"][..], &model, &["--pairs", s(&first)]].concat(), [&["attribute"][..], &model, &["--pairs", s(&pairs)]].concat(), "attribution.json"),
    ];
    let trace = dir.join("trace");
    for (name, old, new, listing) in commands {
        let with_out = |args: &[&str], overwrite: bool| -> Vec<String> {
            let extra: &[&str] = if overwrite { &["--out", s(&out), "--overwrite"] } else { &["--out", s(&out)] };
            args.iter().chain(extra).map(|a| a.to_string()).collect()
        };
        let call = |args: &[String]| patchbay(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let setup = || {
            let _ = std::fs::remove_dir_all(&out);
            let r = call(&with_out(&old, false));
            assert!(r.ok(), "{name}: {}", r.stderr);
            if name == "attribute" {
                assert!(patchbay(&["analyze", s(&out)]).ok()); // its summary and plots must go too
            }
            files_of(&out)
        };
        let replaced = with_out(&new, true);
        let replaced: Vec<&str> = replaced.iter().map(String::as_str).collect();
        let before = setup();
        let done = call(&with_out(&new, true));
        assert!(done.ok(), "{name}: {}", done.stderr);
        let after = files_of(&out);
        let mut files: Vec<String> = names(&before).into_iter().chain(names(&after)).collect();
        files.dedup();
        setup();
        let (clean, counts) = traced(&replaced, &out, &files, None, &trace);
        assert!(clean.ok(), "{name}: {}", clean.stderr);
        let mut points = 0;
        for (syscall, n) in counts.into_iter().filter(|(sc, _)| ["write", "fsync", "rename"].contains(&sc.as_str())) {
            for nth in 1..=n {
                setup();
                let what = format!("{name}: ENOSPC at {syscall} #{nth}");
                let (r, _) = traced(&replaced, &out, &files, Some((&syscall, nth, "error=ENOSPC")), &trace);
                assert!(r.refused() && r.stderr.contains("No space left on device"), "{what}: {:?} {}", r.code, r.stderr);
                let left = files_of(&out);
                assert!(!names(&left).iter().any(|f| f.ends_with(".patchbay-tmp")), "{what}: a temporary file was left: {:?}", names(&left));
                if left.iter().any(|f| f.0 == listing) {
                    assert!(left == before || left == after, "{what}: a listing beside a mix of results: {:?}", names(&left));
                }
                points += 1;
                let retry = call(&with_out(&new, true));
                assert!(retry.ok(), "{what}: the retry failed: {}", retry.stderr);
                assert_same_files(&out, &after, &what);
            }
        }
        assert!(points >= 6, "{name}: only {points} fault points were traced");
    }
}

#[test]
fn a_finished_overwrite_leaves_nothing_of_the_old_run() {
    let dir = tmp("replace");
    let pairs = three_pairs(&dir);
    let out = dir.join("out");
    assert!(patchbay(&run_args(&pairs, &out, "resid_pre,attn_out,z_all_pos")).ok());
    assert!(patchbay(&["analyze", s(&out)]).ok());
    let again = patchbay(&run_args(&pairs, &out, "mlp_out"));
    assert!(again.refused() && again.stderr.contains("already holds a finished run") && again.stderr.contains("--overwrite"), "{}", again.stderr);
    let replaced: Vec<&str> = run_args(&pairs, &out, "mlp_out").into_iter().chain(["--overwrite"]).collect();
    assert!(patchbay(&replaced).ok());
    let reference = dir.join("reference");
    assert!(patchbay(&run_args(&pairs, &reference, "mlp_out")).ok());
    assert_same_files(&out, &files_of(&reference), "overwritten run");
}

#[test]
fn resume_refuses_damaged_or_foreign_state_with_a_way_out() {
    let dir = tmp("damaged");
    let pairs = three_pairs(&dir);
    let out = dir.join("out");
    let args = run_args(&pairs, &out, "resid_pre");
    let resume: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let overwrite: Vec<&str> = args.iter().copied().chain(["--overwrite"]).collect();
    let reference = dir.join("reference");
    assert!(patchbay(&run_args(&pairs, &reference, "resid_pre")).ok());

    // An unfinished run: a journal and partial arrays (what a kill in the second unit leaves).
    let unfinished = |dir: &Path| {
        let _ = std::fs::remove_dir_all(dir);
        let traced_dir = dir.to_path_buf();
        let trace = dir.with_extension("trace");
        if strace_works() {
            let (out, _) = traced(&run_args(&pairs, &traced_dir, "resid_pre"), &traced_dir, &result_files(&["resid_pre"]), Some(("pwrite64", 7, "signal=KILL")), &trace);
            assert_eq!(out.signal, Some(9), "{}", out.stderr);
            true
        } else {
            false
        }
    };
    if unfinished(&out) {
        let analyzed = patchbay(&["analyze", s(&out)]);
        assert!(analyzed.refused() && analyzed.stderr.contains("unfinished run") && analyzed.stderr.contains("--resume"), "{}", analyzed.stderr);
        assert!(!out.join("lengths.npy").exists(), "no final array while the run is unfinished");
        let again = patchbay(&args);
        assert!(again.refused() && again.stderr.contains("--resume continues it"), "{}", again.stderr);

        // A partial array a few bytes short, then hundreds short: named, never accepted.
        for cut in [3, 300] {
            assert!(unfinished(&out));
            let partial = out.join("resid_pre.npy.partial");
            let bytes = std::fs::read(&partial).unwrap();
            std::fs::write(&partial, &bytes[..bytes.len() - cut]).unwrap();
            let r = patchbay(&resume);
            assert!(r.refused() && r.stderr.contains("resid_pre.npy.partial") && r.stderr.contains("--overwrite"), "cut {cut}: {}", r.stderr);
        }
        // A damaged journal: --resume says so and how to start again; --overwrite does.
        assert!(unfinished(&out));
        std::fs::write(out.join("progress.json"), "{\"identity\": ").unwrap();
        let r = patchbay(&resume);
        assert!(r.refused() && r.stderr.contains("progress.json is damaged") && r.stderr.contains("--overwrite"), "{}", r.stderr);
        assert!(patchbay(&overwrite).ok());
        assert_same_files(&out, &files_of(&reference), "overwritten after a damaged journal");

        // Another run's unfinished directory is not continued with these inputs.
        assert!(unfinished(&out));
        let other: Vec<&str> = run_args(&pairs, &out, "mlp_out").into_iter().chain(["--resume"]).collect();
        let r = patchbay(&other);
        assert!(r.refused() && r.stderr.contains("unfinished run of other inputs"), "{}", r.stderr);
    }

    // A finished run: --resume accepts it as done; a different run's --resume is refused.
    let _ = std::fs::remove_dir_all(&out);
    assert!(patchbay(&args).ok());
    let r = patchbay(&resume);
    assert!(r.ok() && r.stderr.contains("already complete"), "{}", r.stderr);
    let other: Vec<&str> = run_args(&pairs, &out, "mlp_out").into_iter().chain(["--resume"]).collect();
    let r = patchbay(&other);
    assert!(r.refused() && r.stderr.contains("different run"), "{}", r.stderr);
    // A final array truncated after the run: --resume and analyze name it.
    let bytes = std::fs::read(out.join("resid_pre.npy")).unwrap();
    std::fs::write(out.join("resid_pre.npy"), &bytes[..bytes.len() - 3]).unwrap();
    let r = patchbay(&resume);
    assert!(r.refused() && r.stderr.contains("resid_pre.npy") && r.stderr.contains("truncated"), "{}", r.stderr);
    let r = patchbay(&["analyze", s(&out)]);
    assert!(r.refused() && r.stderr.contains("resid_pre.npy"), "{}", r.stderr);
}

#[test]
fn merge_refuses_to_clobber_runs_or_mix_datasets() {
    let dir = tmp("merge");
    let pairs = three_pairs(&dir);
    let sharded = dir.join("sharded");
    for k in 0..2 {
        let args: Vec<&str> = run_args(&pairs, &sharded, "resid_pre").into_iter().chain(["--shard", if k == 0 { "0/2" } else { "1/2" }]).collect();
        assert!(patchbay(&args).ok());
    }
    let shard0 = sharded.join("shard-0000-of-0002");
    let shard1 = sharded.join("shard-0001-of-0002");
    // Into one of the shards: refused.
    let r = patchbay(&["merge", s(&shard0), s(&shard1), "--out", s(&shard1)]);
    assert!(r.refused() && r.stderr.contains("is one of the shards"), "{}", r.stderr);
    // Over a finished run of something else: refused without --overwrite.
    let other = dir.join("other");
    assert!(patchbay(&run_args(&pairs, &other, "mlp_out")).ok());
    let r = patchbay(&["merge", s(&sharded), "--out", s(&other)]);
    assert!(r.refused() && r.stderr.contains("--overwrite"), "{}", r.stderr);
    assert!(patchbay(&["merge", s(&sharded), "--out", s(&other), "--overwrite"]).ok());
    let whole = dir.join("whole");
    assert!(patchbay(&run_args(&pairs, &whole, "resid_pre")).ok());
    // Equal but for the checks: the merged run carries its shards' (rows of each shard).
    assert_eq!(without_checks(files_of(&other)), without_checks(files_of(&whole)), "merged over another run");
    // Merging again into the same place is a no-op, not an error.
    assert!(patchbay(&["merge", s(&sharded), "--out", s(&other)]).ok());

    // Shards of another pairs file do not merge with these.
    let more = dir.join("more.jsonl");
    let mut text = std::fs::read_to_string(&pairs).unwrap();
    text.push_str(&serde_json::json!({"clean": CLEAN, "corrupted": "Jessica Jones was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"}).to_string());
    std::fs::write(&more, text + "\n").unwrap();
    let foreign = dir.join("foreign");
    let args: Vec<&str> = run_args(&more, &foreign, "resid_pre").into_iter().chain(["--shard", "1/2"]).collect();
    assert!(patchbay(&args).ok());
    let r = patchbay(&["merge", s(&shard0), s(&foreign.join("shard-0001-of-0002")), "--out", s(&dir.join("mixed"))]);
    assert!(r.refused() && r.stderr.contains("different runs"), "{}", r.stderr);
    // An unfinished or missing shard is named.
    let r = patchbay(&["merge", s(&shard0), s(&dir.join("nope")), "--out", s(&dir.join("m2"))]);
    assert!(r.refused() && r.stderr.contains("nope"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Bad input: one-line errors or skip-and-report, never a panic.

#[test]
fn analyze_refuses_empty_shards_and_arrays_that_disagree_with_the_manifest() {
    let dir = tmp("analyze");
    let pairs = three_pairs(&dir);
    // Three pairs make three units: one of four shards holds none.
    let shards = dir.join("s");
    let args: Vec<&str> = run_args(&pairs, &shards, "resid_pre").into_iter().chain(["--shard", "0/4"]).collect();
    let r = patchbay(&args);
    assert!(r.ok(), "{}", r.stderr);
    let r = patchbay(&["analyze", s(&dir.join("s/shard-0000-of-0004"))]);
    assert!(r.refused() && r.stderr.contains("holds no pairs"), "{}", r.stderr);

    let out = dir.join("out");
    assert!(patchbay(&run_args(&pairs, &out, "resid_pre")).ok());
    patchbay::results::write_npy(&out.join("resid_pre.npy"), &[2, 3, 11], &vec![0.0f32; 66]).unwrap();
    let r = patchbay(&["analyze", s(&out)]);
    assert!(r.refused() && r.stderr.contains("resid_pre.npy is not the F32 array of shape [3, 3, 11]"), "{}", r.stderr);
    let r = patchbay(&["analyze", s(&dir)]);
    assert!(r.refused() && r.stderr.contains("not a patchbay results directory"), "{}", r.stderr);
}

#[test]
fn bad_models_backends_and_flags_are_one_line_errors() {
    let dir = tmp("flags");
    let pairs = three_pairs(&dir);
    let tiny = tiny();
    // A config.json with no layers.
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny.join(f), model.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(tiny.join("config.json")).unwrap().replace("\"n_layer\": 3", "\"n_layer\": 0");
    std::fs::write(model.join("config.json"), config).unwrap();
    let r = patchbay(&["run", "--model", s(&model), "--pairs", s(&pairs), "--out", s(&dir.join("o"))]);
    assert!(r.refused() && r.stderr.contains("n_layer is 0"), "{}", r.stderr);
    // Fewer layers than the weights hold: refused, not the extra layers silently ignored.
    let config = std::fs::read_to_string(tiny.join("config.json")).unwrap().replace("\"n_layer\": 3", "\"n_layer\": 2");
    std::fs::write(model.join("config.json"), config).unwrap();
    let r = patchbay(&["inspect", "--model", s(&model), "Hello"]);
    assert!(r.refused() && r.stderr.contains("holds 3 layers but") && r.stderr.contains("says 2 layers"), "{}", r.stderr);
    // A NaN weight: refused at load, naming the tensor.
    std::fs::copy(tiny.join("config.json"), model.join("config.json")).unwrap();
    let mut w = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let n = w.len();
    w[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes()); // the last element of the last tensor
    std::fs::write(model.join("model.safetensors"), w).unwrap();
    let r = patchbay(&["run", "--model", s(&model), "--pairs", s(&pairs), "--out", s(&dir.join("o"))]);
    assert!(r.refused() && r.stderr.contains("holds NaN at flat index") && r.stderr.contains("must be finite"), "{}", r.stderr);

    let base = ["run", "--model", s(&tiny), "--clean", CLEAN, "--corrupted", "Michelle Smith was a top-notch student. Michelle"];
    let r = patchbay(&[&base[..], &["--answer", " Jones", "--out", s(&dir.join("a"))]].concat());
    assert!(r.refused() && r.stderr.contains("both --answer and --distractor"), "{}", r.stderr);
    let r = patchbay(&[&base[..], &["--distractor", " Smith", "--out", s(&dir.join("a"))]].concat());
    assert!(r.refused() && r.stderr.contains("both --answer and --distractor"), "{}", r.stderr);
    let r = patchbay(&[&base[..], &["--max-rows", "0", "--out", s(&dir.join("a"))]].concat());
    assert!(r.refused() && r.stderr.contains("--max-rows must be at least 1"), "{}", r.stderr);
    let r = patchbay(&[&base[..], &["--shards", "4", "--out", s(&dir.join("a"))]].concat());
    assert!(r.refused() && r.stderr.contains("JOB_COMPLETION_INDEX"), "{}", r.stderr);
    let r = patchbay(&[&base[..], &["--shards", "4", "--shard", "1/4", "--out", s(&dir.join("a"))]].concat());
    assert!(r.refused() && r.stderr.contains("not both"), "{}", r.stderr);
    let r = patchbay(&[&base[..], &["--shard", "3/2", "--out", s(&dir.join("a"))]].concat());
    assert!(r.refused() && r.stderr.contains("--shard 3/2: shard 3 does not exist among 2 shards"), "{}", r.stderr);
    // A shard picked by the scheduler's environment is reported by its variables, not as a flag.
    let r = run(command(&[&base[..], &["--out", s(&dir.join("a"))]].concat(), &[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "2")]));
    assert!(r.refused() && r.stderr.contains("SLURM_ARRAY_TASK_ID=3") && r.stderr.contains("SLURM_ARRAY_TASK_COUNT=2") && !r.stderr.contains("--shard"), "{}", r.stderr);

    if cfg!(feature = "wgpu") {
        // No Vulkan driver at all: a clear error, not burn's panic.
        let r = run(command(&["inspect", "--model", s(&tiny), "Hello", "--backend", "wgpu"], &[("VK_ICD_FILENAMES", "/nonexistent.json"), ("VK_DRIVER_FILES", "/nonexistent.json")]));
        assert!(r.refused() && r.stderr.contains("no GPU adapter found"), "{:?} {}", r.code, r.stderr);
        let r = patchbay(&["inspect", "--model", s(&tiny), "Hello", "--backend", "wgpu", "--device", "7"]);
        assert!(r.refused() && r.stderr.contains("--device 7"), "{:?} {}", r.code, r.stderr);
    }
}

#[test]
fn ioi_output_is_never_clobbered() {
    let dir = tmp("ioi");
    let out = dir.join("ioi.jsonl");
    let unrelated = dir.join("ioi.tmp");
    std::fs::write(&unrelated, "keep me").unwrap();
    let tiny = tiny();
    assert!(patchbay(&["ioi", "--n", "5", "--model", s(&tiny), "--out", s(&out)]).ok());
    assert_eq!(std::fs::read_to_string(&unrelated).unwrap(), "keep me");
    let first = std::fs::read(&out).unwrap();
    let r = patchbay(&["ioi", "--n", "7", "--model", s(&tiny), "--out", s(&out)]);
    assert!(r.refused() && r.stderr.contains("--overwrite"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), first);
    assert!(patchbay(&["ioi", "--n", "7", "--model", s(&tiny), "--out", s(&out), "--overwrite"]).ok());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 7);
    let r = patchbay(&["ioi", "--n", "0", "--model", s(&tiny), "--out", s(&dir.join("none.jsonl"))]);
    assert!(r.code == Some(2) && r.stderr.contains("--n"), "{}", r.stderr);
}

#[test]
fn pairs_files_name_lines_and_skip_what_the_model_cannot_run() {
    let dir = tmp("pairs");
    let tiny = tiny();
    let good = serde_json::json!({"clean": CLEAN, "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Smith"}).to_string();
    // Past the tiny model's 32-position context.
    let long_clean = format!("{} Michelle", "Michelle Jones was a top-notch student.".repeat(4));
    let long = serde_json::json!({"clean": long_clean, "corrupted": long_clean.replacen("Jones", "Smith", 1), "answer": " Jones", "distractor": " Smith"}).to_string();
    let same = serde_json::json!({"clean": CLEAN, "corrupted": CLEAN, "answer": " Jones", "distractor": " Smith"}).to_string();
    let twins = serde_json::json!({"clean": CLEAN, "corrupted": "Michelle Smith was a top-notch student. Michelle", "answer": " Jones", "distractor": " Jones"}).to_string();
    // A UTF-8 byte order mark, blank lines counted as lines.
    let text = format!("\u{feff}{good}\n\n{long}\n{same}\n\n{twins}\n");
    let file = dir.join("p.jsonl");
    std::fs::write(&file, text).unwrap();
    let out = dir.join("o");
    let r = patchbay(&["run", "--model", s(&tiny), "--pairs", s(&file), "--sites", "resid_pre", "--out", s(&out)]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(r.stderr.contains("skipped line 3: the clean prompt \"Michelle Jones was a top-notch student.M…\" is 41 tokens, longer than the model's context of 32 positions"), "{}", r.stderr);
    assert!(r.stderr.contains("skipped line 4: clean and corrupted are the same tokens"), "{}", r.stderr);
    assert!(r.stderr.contains("skipped line 6: answer and distractor are the same token"), "{}", r.stderr);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["pairs"][0]["row"], 1);
    assert_eq!(manifest["skipped"].as_array().unwrap().len(), 3);
    let r = patchbay(&["run", "--strict", "--model", s(&tiny), "--pairs", s(&file), "--out", s(&dir.join("strict"))]);
    assert!(r.refused() && r.stderr.contains("p.jsonl line 3") && r.stderr.contains("context of 32"), "{}", r.stderr);

    // Skip reasons stay short however long the prompt.
    let huge = format!("{} Michelle", "Michelle Jones was a top-notch student.".repeat(2000));
    let longer = serde_json::json!({"clean": huge, "corrupted": huge.replacen("Jones", "Jones Jones", 1), "answer": " Jones", "distractor": " Smith"}).to_string();
    std::fs::write(&file, format!("{good}\n{longer}\n")).unwrap();
    let r = patchbay(&["run", "--model", s(&tiny), "--pairs", s(&file), "--sites", "resid_pre", "--out", s(&dir.join("short"))]);
    let line = r.stderr.lines().find(|l| l.starts_with("skipped line 2")).unwrap_or_default();
    // (Refused before it is tokenized: longer than the context can hold.)
    assert!(r.ok() && line.contains("longer than the model's context can hold") && line.len() < 1000, "{}", &r.stderr[..r.stderr.len().min(2000)]);

    // Token ids past a model's vocabulary (a 512-token model under GPT-2's tokenizer).
    let small = fixtures().join("shapes/h4-dh16");
    std::fs::write(&file, format!("{good}\n")).unwrap();
    let r = patchbay(&["run", "--model", s(&small), "--pairs", s(&file), "--out", s(&dir.join("v"))]);
    assert!(r.code == Some(1) && r.stderr.contains("skipped line 1: the clean prompt \"Michelle Jones was a top-notch student. …\": token \"Michelle\" (id 48736, position 0) is outside the model's vocabulary of 512"), "{}", r.stderr);
    assert!(r.stderr.contains("no pair passed the checks (1 skipped)"), "{}", r.stderr);

    // Not UTF-8, empty, header-only: named.
    std::fs::write(&file, [good.as_bytes(), b"\n{\"clean\": \"\xff\"}\n"].concat()).unwrap();
    let r = patchbay(&["run", "--model", s(&tiny), "--pairs", s(&file), "--out", s(&dir.join("x"))]);
    assert!(r.refused() && r.stderr.contains("p.jsonl line 2: not UTF-8"), "{}", r.stderr);
    for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("header.csv", "clean,corrupted,answer,distractor\n")] {
        std::fs::write(dir.join(name), text).unwrap();
        let r = patchbay(&["run", "--model", s(&tiny), "--pairs", s(&dir.join(name)), "--out", s(&dir.join("x"))]);
        assert!(r.refused() && r.stderr.contains(&format!("{name} holds no pairs")), "{name}: {}", r.stderr);
    }
}

/// A process holding `dir`'s lock (flock(1), `shared` or exclusive) until it is released.
struct Holder {
    flock: std::process::Child,
    ready: PathBuf,
}

impl Holder {
    fn take(dir: &Path, shared: bool) -> Self {
        let ready = dir.with_extension("locked");
        let mode = if shared { "--shared" } else { "--exclusive" };
        // flock keeps the lock itself (-o: its command does not inherit it) while the file exists.
        let wait = format!("touch {0} && while [ -e {0} ]; do sleep 0.02; done", s(&ready));
        let flock = Command::new("flock").args([mode, "-o", s(dir), "sh", "-c", &wait]).spawn().unwrap();
        while !ready.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { flock, ready }
    }

    fn pid(&self) -> String {
        format!("pid {}", self.flock.id())
    }

    fn release(mut self) {
        std::fs::remove_file(&self.ready).unwrap();
        assert!(self.flock.wait().unwrap().success());
    }
}

#[test]
fn a_second_process_on_a_results_directory_fails_at_once_naming_the_holder() {
    let dir = tmp("lock");
    let pairs = three_pairs(&dir);
    let out = dir.join("run");
    let first = patchbay(&run_args(&pairs, &out, "resid_pre"));
    assert!(first.ok(), "{}", first.stderr);
    // A reader (merge's shards, --compare's other run, pb.open) holds it shared: a writer fails.
    let reader = Holder::take(&out, true);
    let pid = reader.pid();
    for args in [[&run_args(&pairs, &out, "attn_out")[..], &["--overwrite"]].concat(), run_args(&pairs, &out, "resid_pre").into_iter().chain(["--resume"]).collect()] {
        let second = patchbay(&args);
        assert!(second.refused() && second.stderr.contains("is in use by another process") && second.stderr.contains(&pid), "{}", second.stderr);
    }
    // analyze writes its outputs there, so it fails too; released, it runs.
    let analyzed = patchbay(&["analyze", s(&out)]);
    assert!(analyzed.refused() && analyzed.stderr.contains(&pid), "{}", analyzed.stderr);
    reader.release();
    assert!(patchbay(&["analyze", s(&out)]).ok());
    // A writer holds it exclusively: readers and writers fail, and nothing of the run changed.
    let after_analyze = files_of(&out);
    let writer = Holder::take(&out, false);
    let pid = writer.pid();
    for args in [vec!["analyze", s(&out)], vec!["verify", s(&out)], [&run_args(&pairs, &out, "attn_out")[..], &["--overwrite"]].concat()] {
        let other = patchbay(&args);
        assert!(other.refused() && other.stderr.contains(&pid), "{args:?}: {}", other.stderr);
    }
    let patterns = patchbay(&["patterns", "--model", s_static(&tiny()), CLEAN, "--out", s(&out)]);
    assert!(patterns.refused() && patterns.stderr.contains(&pid), "{}", patterns.stderr);
    writer.release();
    assert_eq!(files_of(&out), after_analyze, "a refused command changed the directory");
    // Released, the directory is usable again.
    let again = patchbay(&[&run_args(&pairs, &out, "resid_pre")[..], &["--resume"]].concat());
    assert!(again.ok(), "{}", again.stderr);
}

/// A run started in the background, returned once its journal is written (it is mid-run).
fn started(args: &[&str], out: &Path) -> std::process::Child {
    let child = command(args, &[]).spawn().unwrap();
    while !out.join(patchbay::results::PROGRESS).exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

#[test]
fn a_run_holds_its_directory_for_the_whole_command() {
    let dir = tmp("lock-run");
    let pairs = three_pairs(&dir);
    let out = dir.join("run");
    // Stopped mid-run (its journal is written), the run still holds the directory.
    let mut child = started(&[&run_args(&pairs, &out, "resid_pre,attn_out,z_by_pos")[..], &["--max-rows", "1"]].concat(), &out);
    let stop = |sig: &str| assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    stop("-STOP");
    let other = patchbay(&[&run_args(&pairs, &out, "resid_pre")[..], &["--overwrite"]].concat());
    let analyzed = patchbay(&["analyze", s(&out)]);
    stop("-CONT");
    let status = child.wait().unwrap();
    let pid = format!("pid {}", child.id());
    assert!(other.refused() && other.stderr.contains(&pid), "{}", other.stderr);
    assert!(analyzed.refused() && analyzed.stderr.contains(&pid), "{}", analyzed.stderr);
    assert!(status.success());
    let done = patchbay(&["analyze", s(&out)]);
    assert!(done.ok(), "{}", done.stderr);
}

#[test]
fn verify_finds_a_value_written_past_a_pairs_length() {
    let dir = tmp("padding");
    let pairs = three_pairs(&dir);
    let out = dir.join("run");
    assert!(patchbay(&run_args(&pairs, &out, "resid_pre")).ok());
    let (mut values, shape) = patchbay::results::read_f32(&out.join("resid_pre.npy")).unwrap();
    let lengths = patchbay::results::npy::read_own_i32(&out.join("lengths.npy")).unwrap().0;
    let (short, positions) = (lengths.iter().enumerate().min_by_key(|l| *l.1).unwrap().0, shape[2]);
    let cell = short * shape[1] * positions + positions - 1; // layer 0, the last position: past the pair
    assert!(values[cell].is_nan());
    values[cell] = 0.25;
    patchbay::results::write_npy(&out.join("resid_pre.npy"), &shape, &values).unwrap();
    let v = patchbay(&["verify", s(&out), "--rows", "1"]);
    assert!(v.refused() && v.stderr.contains(&format!("resid_pre[pair {short}]: cell {} lies past the pair's", positions - 1)) && v.stderr.contains("holds 0.25"), "{}", v.stderr);
}

#[test]
fn a_run_of_other_weights_at_the_same_path_is_never_resumed_merged_or_verified() {
    let dir = tmp("weights");
    let pairs = three_pairs(&dir);
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), model.join(f)).unwrap();
    }
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let base = ["run", "--model", s(&model), "--pairs", s(&pairs), "--sites", "resid_pre,attn_out,z_by_pos,q_by_pos,v_by_pos", "--out", s(out), "--max-rows", "1"];
        base.iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let run = |a: Vec<String>| patchbay(&a.iter().map(String::as_str).collect::<Vec<_>>());
    // Killed mid-run, then the weights file is replaced at the same path.
    let cut = dir.join("cut");
    let mut child = started(&args(&cut, &[]).iter().map(String::as_str).collect::<Vec<_>>(), &cut);
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = dir.join("finished");
    assert!(run(args(&finished, &[])).ok());
    let shards = dir.join("shards");
    for k in ["0/2", "1/2"] {
        if k == "1/2" {
            let mut w = std::fs::read(model.join("model.safetensors")).unwrap();
            let n = w.len();
            w[n - 2] ^= 0x40; // one weight, in the last tensor's data
            std::fs::write(model.join("model.safetensors"), w).unwrap();
        }
        assert!(run(args(&shards, &["--shard", k])).ok());
    }
    let resumed = run(args(&cut, &["--resume"]));
    // Each refusal says what differs: the weights.
    assert!(resumed.refused() && resumed.stderr.contains("unfinished run of other inputs (its weights (the model files' fingerprint) differ)"), "{}", resumed.stderr);
    let again = run(args(&finished, &["--resume"]));
    assert!(again.refused() && again.stderr.contains("a different run (its weights (the model files' fingerprint) differ)"), "{}", again.stderr);
    let verified = patchbay(&["verify", s(&finished)]);
    assert!(verified.refused() && verified.stderr.contains("is not the model") && verified.stderr.contains("fingerprint"), "{}", verified.stderr);
    let merged = patchbay(&["merge", s(&shards), "--out", s(&dir.join("merged"))]);
    assert!(merged.refused() && merged.stderr.contains("shards of different runs (made with other model files"), "{}", merged.stderr);
}

// ---------------------------------------------------------------------------------------------
// Untrusted directories: a results directory from elsewhere names no file outside itself.

/// A manifest field set to `value` (a JSON pointer's last segment is the key or index).
fn set_field(manifest: &Path, pointer: &str, value: serde_json::Value) {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    match m.pointer_mut(pointer) {
        Some(v) => *v = value,
        // A field the manifest leaves out when empty (ablation_means).
        None => m[pointer.trim_start_matches('/')] = value,
    }
    std::fs::write(manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Puts `want`'s files back into `dir` (and nothing else of patchbay's).
fn restore(dir: &Path, want: &[(String, Vec<u8>)]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in want {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn manifest_and_journal_paths_never_reach_outside_the_directory() {
    let dir = tmp("untrusted");
    let pairs = three_pairs(&dir);
    let out = dir.join("run");
    let args = run_args(&pairs, &out, "resid_pre");
    assert!(patchbay(&args).ok());
    let pristine = files_of(&out);
    // Another run beside it, and a file outside both that nothing may read, write or delete.
    let other = dir.join("other");
    assert!(patchbay(&run_args(&pairs, &other, "resid_pre,mlp_out")).ok());
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim.npy");
    let precious = b"not patchbay's".to_vec();
    std::fs::write(&victim, &precious).unwrap();
    let untouched = || {
        assert_eq!(std::fs::read(&victim).unwrap(), precious, "the file outside was written");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "a file was made outside");
    };
    let overwrite: Vec<&str> = args.iter().copied().chain(["--overwrite"]).collect();
    let escapes = [s(&victim).to_string(), "../outside/victim.npy".to_string(), "../other/mlp_out.npy".to_string(), "../outside/evil".to_string()];
    for pointer in ["/sites/0/file", "/sites/0/name", "/baseline_clean", "/baseline_corrupted", "/lengths", "/ablation_means"] {
        for escape in &escapes {
            restore(&out, &pristine);
            let value = match pointer {
                "/ablation_means" => serde_json::json!([{"kind": "resid_pre", "file": escape, "shape": [1], "xxh3": "0"}]),
                _ => serde_json::json!(escape),
            };
            set_field(&out.join("manifest.json"), pointer, value);
            for cmd in [vec!["analyze", s(&out)], vec!["verify", s(&out), "--rows", "1"], vec!["run"].into_iter().chain(args[1..].iter().copied()).chain(["--resume"]).collect()] {
                let r = patchbay(&cmd);
                assert!(r.refused() && r.stderr.contains(escape.as_str()) && r.stderr.contains("manifest.json"), "{pointer} = {escape}, {}: {}", cmd[0], r.stderr);
            }
            // --overwrite replaces the run and removes nothing but its own files.
            let r = patchbay(&overwrite);
            assert!(r.ok(), "{pointer} = {escape}: {}", r.stderr);
            untouched();
            assert!(!dir.join("escape").exists() && !dir.join("evil.png").exists());
            assert_same_files(&out, &pristine, &format!("overwrite of a manifest with {pointer} = {escape}"));
        }
    }
    // The journal's list of files to remove: only files patchbay writes, in the directory.
    let id = patchbay::results::Manifest::read(&out).unwrap().identity();
    for escape in escapes.iter().map(String::as_str).chain(["notes.txt"]) {
        restore(&out, &pristine);
        std::fs::write(out.join("notes.txt"), "the user's").unwrap();
        std::fs::rename(out.join("manifest.json"), out.join("manifest.json.partial")).unwrap();
        let journal = serde_json::json!({"identity": id, "phase": "preparing", "units": 3, "done": [], "remove": [escape]});
        std::fs::write(out.join("progress.json"), journal.to_string()).unwrap();
        let r = patchbay(&args.iter().copied().chain(["--resume"]).collect::<Vec<_>>());
        assert!(r.refused() && r.stderr.contains(escape) && r.stderr.contains("progress.json") && r.stderr.contains("--overwrite"), "remove {escape}: {}", r.stderr);
        assert!(patchbay(&overwrite).ok());
        untouched();
        assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"the user's");
    }

    // Links: an array, the manifest or the journal that is a link into another run is refused by
    // every reader; a link planted as a staged array is replaced, its target never written.
    for name in ["resid_pre.npy", "baseline_clean.npy", "lengths.npy", "manifest.json"] {
        restore(&out, &pristine);
        std::fs::remove_file(out.join(name)).unwrap();
        std::os::unix::fs::symlink(other.join(name), out.join(name)).unwrap();
        for cmd in [vec!["analyze", s(&out)], vec!["verify", s(&out), "--rows", "1"]] {
            let r = patchbay(&cmd);
            assert!(r.refused() && r.stderr.contains("symbolic link") && r.stderr.contains(name), "{name}, {}: {}", cmd[0], r.stderr);
        }
        assert!(patchbay(&overwrite).ok());
        assert_same_files(&out, &pristine, &format!("overwrite of a linked {name}"));
    }
    let other_files = files_of(&other);
    for staged in ["resid_pre.npy.partial", "baseline_clean.npy.partial", "lengths.npy.partial", ".manifest.json.0.patchbay-tmp"] {
        restore(&out, &pristine);
        std::os::unix::fs::symlink(&victim, out.join(staged)).unwrap();
        assert!(patchbay(&overwrite).ok());
        untouched();
        assert_eq!(files_of(&other), other_files);
        assert!(!out.join("resid_pre.npy").is_symlink() && !out.join("lengths.npy").is_symlink());
    }
    // merge writes its output the same way.
    let sharded = dir.join("sharded");
    for k in ["0/2", "1/2"] {
        assert!(patchbay(&run_args(&pairs, &sharded, "resid_pre").into_iter().chain(["--shard", k]).collect::<Vec<_>>()).ok());
    }
    let merged = dir.join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    std::os::unix::fs::symlink(&victim, merged.join("resid_pre.npy.partial")).unwrap();
    let r = patchbay(&["merge", s(&sharded), "--out", s(&merged)]);
    assert!(r.ok(), "{}", r.stderr);
    untouched();
    assert!(!merged.join("resid_pre.npy").is_symlink());
}

#[test]
fn derived_outputs_belong_to_their_run_and_no_command_writes_another_commands_files() {
    let dir = tmp("derived");
    let pairs = three_pairs(&dir);
    let run = dir.join("edges");
    let tiny = s_static(&tiny());
    let edges = |pairs: &Path| vec!["edges", "--model", tiny, "--pairs", s_static(pairs), "--out", s_static(&run), "--verify", "0"];
    assert!(patchbay(&edges(&pairs)).ok());
    assert!(patchbay(&["circuit", s(&run), "--top-n", "5"]).ok());
    let r = patchbay(&["faithfulness", s(&run), "--sizes", "0,5", "--max-rows", "5"]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(patchbay(&["analyze", s(&run)]).ok());
    let derived = ["faithfulness.json", "faithfulness.npy", "faithfulness.svg", "faithfulness.png", "faithfulness_circuit.json", "faithfulness_circuit.svg", "circuit.json", "circuit.svg", "summary.json", "summary.csv", "edges.normalized.npy", "edges.png", "edges.svg"];
    for f in derived {
        assert!(run.join(f).is_file(), "{f}");
    }
    let identity = patchbay::results::Manifest::read(&run).unwrap().identity();
    for listing in ["faithfulness.json", "summary.json", "circuit.json", "faithfulness_circuit.json"] {
        let set: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join(listing)).unwrap()).unwrap();
        assert_eq!(set["run_identity"], serde_json::json!(identity), "{listing}");
    }
    let r = patchbay(&["verify", s(&run), "--rows", "1"]);
    assert!(r.ok(), "{}", r.stderr);
    // The sets copied beside another run are not its: verify names each (and refuses a set
    // whose listing is gone, its files left).
    let other = dir.join("other");
    let first = dir.join("first.jsonl");
    std::fs::write(&first, std::fs::read_to_string(&pairs).unwrap().lines().next().unwrap().to_string() + "\n").unwrap();
    assert!(patchbay(&["edges", "--model", tiny, "--pairs", s(&first), "--out", s(&other), "--verify", "0"]).ok());
    for f in derived {
        std::fs::copy(run.join(f), other.join(f)).unwrap();
    }
    let r = patchbay(&["verify", s(&other), "--rows", "1"]);
    let stale = std::fs::read_to_string(other.join("manifest.json")).unwrap();
    for listing in ["summary.json", "faithfulness.json", "circuit.json"] {
        assert!(r.refused() && stale.contains(&format!("{listing}: written for another run")), "{listing}: {}", r.stderr);
    }
    std::fs::remove_file(other.join("faithfulness.json")).unwrap();
    let r = patchbay(&["verify", s(&other), "--rows", "1"]);
    assert!(r.refused() && std::fs::read_to_string(other.join("manifest.json")).unwrap().contains("without its faithfulness.json"), "{}", r.stderr);

    // A NaN threshold selects nothing: refused by name.
    let r = patchbay(&["circuit", s(&run), "--threshold", "NaN"]);
    assert!(r.refused() && r.stderr.contains("--threshold"), "{}", r.stderr);
    // `circuit --out` onto a file a run owns: refused, nothing changed.
    let before = files_of(&run);
    for name in ["edges.npy", "manifest.json", "lengths.npy", "summary.json", "edges.json", "faithfulness.json"] {
        let r = patchbay(&["circuit", s(&run), "--top-n", "5", "--out", s(&run.join(name))]);
        assert!(r.refused() && r.stderr.contains("is a file of a patchbay run"), "{name}: {}", r.stderr);
    }
    assert_same_files(&run, &before, "after refused circuits");
    // Patterns into a run's directory, and a run into a patterns directory: refused, --overwrite or not.
    let r = patchbay(&["patterns", "--model", tiny, CLEAN, "--out", s(&run), "--overwrite"]);
    assert!(r.refused() && r.stderr.contains("holds a patchbay run"), "{}", r.stderr);
    assert_same_files(&run, &before, "after refused patterns");
    let patterns = dir.join("patterns");
    assert!(patchbay(&["patterns", "--model", tiny, CLEAN, "--out", s(&patterns)]).ok());
    let patterns_files = files_of(&patterns);
    for extra in [&[][..], &["--overwrite"][..]] {
        let r = patchbay(&[&run_args(&pairs, &patterns, "resid_pre")[..], extra].concat());
        assert!(r.refused() && r.stderr.contains("`patchbay patterns`"), "{}", r.stderr);
    }
    assert_same_files(&patterns, &patterns_files, "after refused runs");

    // faithfulness holds the directory it writes for the whole command: an overwrite of the run,
    // another curve or a circuit meanwhile fails at once naming it.
    let mut child = command(&["faithfulness", s(&run), "--sizes", "0,1,2,3,4,5,6,7,8", "--max-rows", "1"], &[]).spawn().unwrap();
    let pid = format!("pid {}", child.id());
    let waited = std::time::Instant::now();
    // Its exclusive flock, as the kernel lists it (a reader polling would take the lock itself).
    let holds = || std::fs::read_to_string("/proc/locks").unwrap().lines().any(|l| l.contains("FLOCK") && l.contains("WRITE") && l.split_whitespace().any(|w| w == child.id().to_string()));
    while !holds() {
        assert!(waited.elapsed().as_secs() < 60, "faithfulness never held {}", run.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stop = |sig: &str| assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    stop("-STOP");
    let attempts = [edges(&pairs).into_iter().chain(["--overwrite"]).collect::<Vec<_>>(), vec!["faithfulness", s(&run), "--sizes", "0"], vec!["circuit", s(&run), "--top-n", "3"], vec!["analyze", s(&run)]];
    let refused: Vec<Out> = attempts.iter().map(|a| patchbay(a)).collect();
    stop("-CONT");
    assert!(child.wait().unwrap().success());
    for (a, r) in attempts.iter().zip(&refused) {
        assert!(r.refused() && r.stderr.contains(&pid), "{}: {}", a[0], r.stderr);
    }

    // An overwrite of the run with one pair leaves nothing derived from the three-pair run.
    let one = dir.join("one.jsonl");
    std::fs::write(&one, std::fs::read_to_string(&pairs).unwrap().lines().next().unwrap().to_string() + "\n").unwrap();
    assert!(patchbay(&edges(&one).into_iter().chain(["--overwrite"]).collect::<Vec<_>>()).ok());
    for f in derived {
        assert!(!run.join(f).exists(), "{f} of the replaced run is still there");
    }
}

/// The fingerprint a run records is of the bytes its model was built from: each model file is
/// opened once (before, the fingerprint read the files again after loading, so files replaced in
/// between gave the old weights' results the new files' fingerprint).
#[test]
fn the_model_files_are_read_once_and_hashed_as_loaded() {
    if !strace_works() {
        eprintln!("strace does not run here: skipped");
        return;
    }
    let dir = tmp("read-once");
    let pairs = three_pairs(&dir);
    let trace = dir.join("trace");
    let out = dir.join("out");
    let args = run_args(&pairs, &out, "resid_pre");
    let status = Command::new("strace").args(["-f", "-e", "trace=openat", "-o", s(&trace), env!("CARGO_BIN_EXE_patchbay")]).args(&args).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let text = std::fs::read_to_string(&trace).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let path = format!("\"{}\"", tiny().join(file).display());
        let opens = text.lines().filter(|l| l.contains(&path) && !l.contains("= -1")).count();
        assert_eq!(opens, 1, "{file} opened {opens} times:\n{}", text.lines().filter(|l| l.contains(&path)).collect::<Vec<_>>().join("\n"));
    }
    let m = patchbay::results::Manifest::read(&dir.join("out")).unwrap();
    let files = patchbay::model::weights::ModelFiles::locate(s(&tiny())).unwrap();
    assert_eq!(m.weights, files.read().unwrap().fingerprint);
}

#[test]
fn merge_refuses_shards_of_other_sites_and_shards_that_misstate_their_pairs() {
    let dir = tmp("merge-sites");
    let pairs = three_pairs(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert!(patchbay(&run_args(&pairs, &a, "resid_pre").into_iter().chain(["--shard", "0/2"]).collect::<Vec<_>>()).ok());
    assert!(patchbay(&run_args(&pairs, &b, "resid_pre,mlp_out").into_iter().chain(["--shard", "1/2"]).collect::<Vec<_>>()).ok());
    let (a0, b1) = (a.join("shard-0000-of-0002"), b.join("shard-0001-of-0002"));
    let r = patchbay(&["merge", s(&a0), s(&b1), "--out", s(&dir.join("m"))]);
    assert!(r.refused() && r.stderr.contains("their sites differ"), "{}", r.stderr);
    // A shard whose manifest claims one more pair than it holds: refused, no panic.
    assert!(patchbay(&run_args(&pairs, &a, "resid_pre").into_iter().chain(["--shard", "1/2"]).collect::<Vec<_>>()).ok());
    let a1 = a.join("shard-0001-of-0002");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(a1.join("manifest.json")).unwrap()).unwrap();
    m["shard"]["pairs"].as_array_mut().unwrap().push(serde_json::json!(0));
    std::fs::write(a1.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let r = patchbay(&["merge", s(&a0), s(&a1), "--out", s(&dir.join("m2"))]);
    assert!(r.refused() && r.stderr.contains("shard lists"), "{}", r.stderr);
}

#[test]
fn a_config_whose_layer_norm_epsilon_is_not_positive_is_refused_naming_it() {
    let dir = tmp("epsilon");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), model.join(f)).unwrap();
    }
    for eps in [0.0, -1e-5] {
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(tiny().join("config.json")).unwrap()).unwrap();
        config["layer_norm_epsilon"] = serde_json::json!(eps);
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        for args in [vec!["inspect", "--model", s(&model), CLEAN], vec!["generate", "--model", s(&model), CLEAN]] {
            let r = patchbay(&args);
            assert!(r.refused() && r.stderr.contains("layer_norm_epsilon") && r.stderr.contains("config.json"), "{eps}, {}: {}", args[0], r.stderr);
        }
    }
}

/// verify (and every reader, for what patchbay derives itself) refuses a manifest edited in any
/// field the results depend on.
#[test]
fn verify_refuses_a_manifest_edited_in_any_field_the_results_depend_on() {
    let dir = tmp("verify-fields");
    let pairs = three_pairs(&dir);
    let pair = |clean: &str| serde_json::json!({"clean": clean, "corrupted": CLEAN.replace("Jones", "Smith"), "answer": " Jones", "distractor": " Smith", "positions": {"name": 1}}).to_string();
    std::fs::write(&pairs, [pair(CLEAN), pair(CLEAN)].join("\n") + "\n").unwrap();
    let (run, edges) = (dir.join("run"), dir.join("edges"));
    assert!(patchbay(&run_args(&pairs, &run, "resid_pre").into_iter().chain(["--verify", "0"]).collect::<Vec<_>>()).ok());
    assert!(patchbay(&["edges", "--model", s_static(&tiny()), "--pairs", s(&pairs), "--out", s(&edges), "--verify", "0"]).ok());
    let (run_files, edges_files) = (files_of(&run), files_of(&edges));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(edges.join("manifest.json")).unwrap()).unwrap();
    let names = m["sites"][0]["edges"].clone();
    let (a, b) = (names[0].clone(), names[1].clone());
    // (directory, field, value, what the one-line refusal says)
    let cases: Vec<(&Path, &str, serde_json::Value, &str)> = vec![
        (&edges, "/sites/0/edges/0", b.clone(), "names edge 0"),
        (&edges, "/sites/0/edges/1", a, "names edge 1"),
        (&edges, "/sites/0/edges/0", serde_json::json!("input->a9.h9<q>"), "names edge 0"),
        (&edges, "/sites/0/edges", serde_json::json!(names.as_array().unwrap()[1..]), "the graph of"),
        (&run, "/pairs/0/positions/name", serde_json::json!(2), "dataset"),
        (&run, "/pairs/1/clean_tokens/1", serde_json::json!(11), "dataset"),
        (&run, "/prepend_bos", serde_json::json!(true), "do not start with the BOS token 50256"),
        (&run, "/bos", serde_json::json!(7), "do not start with the BOS token 7"),
        (&run, "/config/eps", serde_json::json!(0.5), "config"),
        (&run, "/config/layers", serde_json::json!(2), "config"),
        (&run, "/weights", serde_json::json!(""), "no fingerprint"),
        (&run, "/shard", serde_json::json!({"index": 0, "count": 2, "pairs": [0], "pairs_total": 3}), "shard"),
    ];
    for (at, pointer, value, says) in cases {
        restore(&run, &run_files);
        restore(&edges, &edges_files);
        set_field(&at.join("manifest.json"), pointer, value.clone());
        let r = patchbay(&["verify", s(at), "--rows", "2"]);
        assert!(r.refused() && r.stderr.contains(says), "{pointer} = {value}: {}", r.stderr);
    }
}

/// Every count option at 2^64−1 and 10^12 is one line naming it, checked before anything is
/// allocated (before, several aborted the process); so are a Graph JSON of 100000 layers, a
/// 50 MB prompt, a named position of 2^64−1 with a BOS in front, and a shape whose product wraps.
#[test]
fn every_count_is_bounded_before_anything_is_allocated() {
    let dir = tmp("counts");
    let tiny = s_static(&tiny());
    let pairs = three_pairs(&dir);
    let run = dir.join("edges");
    assert!(patchbay(&["edges", "--model", tiny, "--pairs", s(&pairs), "--out", s(&run), "--verify", "0"]).ok());
    let out = s_static(&dir.join("out"));
    for huge in [u64::MAX.to_string(), 1_000_000_000_000u64.to_string()] {
        let h = huge.as_str();
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["generate", "--model", tiny, CLEAN, "--max-new-tokens", "2", "--num-sequences", h], "--num-sequences"),
            (vec!["generate", "--model", tiny, CLEAN, "--max-new-tokens", h], "--max-new-tokens"),
            (vec!["doctor", "--model", tiny, "--rows", h], "--rows"),
            (vec!["doctor", "--model", tiny, "--positions", h], "--positions"),
            (vec!["bench", "--shape", tiny, "--pairs", h], "--pairs"),
            (vec!["prepend", "--model", tiny, CLEAN, "--samples", h], "--samples"),
            (vec!["prepend", "--model", tiny, CLEAN, "--n-tokens", h], "--n-tokens"),
            (vec!["circuit", s(&run), "--top-n", h], "edges asked for"),
            (vec!["faithfulness", s(&run), "--sizes", h], "--sizes"),
            (vec!["edges", "--model", tiny, "--pairs", s(&pairs), "--method", "eap-ig", "--ig-steps", h, "--out", out], "--ig-steps"),
            (vec!["ioi", "--model", tiny, "--n", h, "--out", out], "--n"),
            (vec!["candidates", "--model", tiny, CLEAN, "--top-k", h], "--top-k"),
        ];
        let run = s_static(&run);
        let more: Vec<(Vec<&str>, &str)> = vec![
            (vec!["bench", "--shape", tiny, "--pairs", "1", "--repeat", h], "--repeat"),
            (vec!["bench", "--shape", tiny, "--tokens", h], "--tokens"),
            (vec!["bench", "--shape", tiny, "--pairs", "1", "--corrupt-at", h], "--corrupt-at"),
            (vec!["inspect", "--model", tiny, "--threads", h, CLEAN], "--threads"),
            (vec!["circuit", run, "--greedy", h], "edges asked for"),
            (vec!["steer", "make", "--model", tiny, "--clean", CLEAN, "--corrupted", CLEAN, "--site", "resid_pre", "--layer", h, "--out", out], "layer"),
            (vec!["run", "--model", tiny, "--pairs", s(&pairs), "--sites", "resid_pre", "--shards", h, "--out", out], "--shards"),
        ];
        for (args, names) in cases.into_iter().chain(more) {
            let r = patchbay(&args);
            assert!(r.refused() && r.stderr.contains(names) && r.stderr.contains(h), "{args:?}: {:?} {}", r.code, r.stderr);
        }
        // Caps (at most this many per pass, per batch, to check): a huge one is no cap, and
        // nothing is sized by it.
        let caps: Vec<Vec<&str>> = vec![
            vec!["run", "--model", tiny, "--pairs", s(&pairs), "--sites", "resid_pre", "--out", out, "--overwrite", "--max-rows", h, "--max-diff", h, "--verify", h],
            vec!["verify", run, "--rows", h],
            vec!["faithfulness", run, "--sizes", "1", "--max-rows", h],
            vec!["attribute", "--model", tiny, "--pairs", s(&pairs), "--out", out, "--overwrite", "--batch", h],
            vec!["patterns", "--model", tiny, "--out", out, "--overwrite", "--batch", h, "--html-prompts", h, CLEAN],
            vec!["perplexity", "--model", tiny, "--batch", h, CLEAN],
            vec!["inspect", "--model", tiny, "--top-k", h, CLEAN],
            vec!["generate", "--model", tiny, "--max-new-tokens", "2", "--batch", h, "--top-k", h, CLEAN],
            vec!["bench", "--shape", tiny, "--pairs", "1", "--repeat", "1", "--max-rows", h],
        ];
        for args in caps {
            let r = patchbay(&args);
            assert!(r.ok(), "{args:?}: {:?} {}", r.code, r.stderr);
            let _ = std::fs::remove_dir_all(out);
        }
    }
    // A Graph JSON of 100000 layers.
    let graph = dir.join("graph.json");
    let mut g: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("circuit.json")).unwrap_or_default()).unwrap_or(serde_json::json!({}));
    if g.get("cfg").is_none() {
        assert!(patchbay(&["circuit", s(&run), "--top-n", "3"]).ok());
        g = serde_json::from_slice(&std::fs::read(run.join("circuit.json")).unwrap()).unwrap();
    }
    g["cfg"]["n_layers"] = serde_json::json!(100_000);
    std::fs::write(&graph, g.to_string()).unwrap();
    let r = patchbay(&["faithfulness", s(&run), "--circuits", s(&graph)]);
    assert!(r.refused() && r.stderr.contains("100000 layers"), "{}", r.stderr);
    // A 50 MB single-line prompt.
    let long = dir.join("long.jsonl");
    let text = "Michelle Jones ".repeat(50 << 20 >> 4);
    std::fs::write(&long, serde_json::json!({"clean": text, "corrupted": text, "answer": " Jones", "distractor": " Smith"}).to_string() + "\n").unwrap();
    let r = patchbay(&run_args(&long, &dir.join("long"), "resid_pre"));
    assert!(r.code == Some(1) && r.stderr.contains("longer than the model's context can hold"), "{:?} {}", r.code, r.stderr.chars().take(500).collect::<String>());
    assert!(r.stderr.len() < 1000, "a {}-byte message", r.stderr.len());
    // A named position of 2^64−1 with --prepend-bos does not wrap to position 0.
    let named = dir.join("named.jsonl");
    std::fs::write(&named, serde_json::json!({"clean": CLEAN, "corrupted": CLEAN.replace("Jones", "Smith"), "answer": " Jones", "distractor": " Smith", "positions": {"end": u64::MAX}}).to_string() + "\n").unwrap();
    let r = patchbay(&[&run_args(&named, &dir.join("named"), "resid_pre")[..], &["--prepend-bos", "--strict"]].concat());
    assert!(r.refused() && r.stderr.contains(&format!("end={}", u64::MAX)), "{}", r.stderr);
    // A manifest shape whose product wraps to 0.
    let wrapped = dir.join("wrapped");
    assert!(patchbay(&run_args(&pairs, &wrapped, "resid_pre")).ok());
    set_field(&wrapped.join("manifest.json"), "/sites/0/shape", serde_json::json!([3, 1u64 << 32, 1u64 << 32]));
    let r = patchbay(&["analyze", s(&wrapped)]);
    assert!(r.refused() && r.stderr.contains("multiply past"), "{}", r.stderr);
    // An infinite value is not dropped from the mean (NaN, "no value", is).
    assert!(patchbay(&run_args(&pairs, &wrapped, "resid_pre").into_iter().chain(["--overwrite"]).collect::<Vec<_>>()).ok());
    let (mut values, shape) = patchbay::results::read_f32(&wrapped.join("resid_pre.npy")).unwrap();
    values[0] = f32::INFINITY; // pair 0, layer 0, position 0
    patchbay::results::write_npy(&wrapped.join("resid_pre.npy"), &shape, &values).unwrap();
    assert!(patchbay(&["analyze", s(&wrapped)]).ok());
    let summary = std::fs::read_to_string(wrapped.join("summary.csv")).unwrap();
    let first = summary.lines().nth(1).unwrap();
    assert!(first.starts_with("resid_pre,0,0,") && first.contains("inf,NaN,3"), "{first}");
    // A finite but huge steering vector makes the logits overflow: refused, not garbage.
    let vector = dir.join("huge.npy");
    let width = serde_json::from_slice::<serde_json::Value>(&std::fs::read(Path::new(tiny).join("config.json")).unwrap()).unwrap()["n_embd"].as_u64().unwrap() as usize;
    patchbay::results::write_npy(&vector, &[width], &vec![3e38f32; width]).unwrap();
    let r = patchbay(&["generate", "--model", tiny, CLEAN, "--max-new-tokens", "2", "--steer", s(&vector), "--steer-site", "attn_out", "--steer-layer", "1", "--coef", "10"]);
    assert!(r.refused() && r.stderr.contains("not finite"), "{}", r.stderr);
}


/// A manifest written before the model seam stores GPT-2's own config fields (`n_layer`, `n_head`,
/// `n_embd`, …): it still reads, verifies and analyzes, as the same config.
#[test]
fn a_manifest_with_gpt2s_config_fields_still_reads() {
    let dir = tmp("legacy-config");
    let pairs = three_pairs(&dir);
    let run = dir.join("run");
    assert!(patchbay(&run_args(&pairs, &run, "resid_pre")).ok());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let c = &m["config"];
    let legacy = serde_json::json!({"n_layer": c["layers"], "n_head": c["heads"], "n_embd": c["d_model"], "n_inner": c["d_mlp"],
        "n_positions": c["context"], "vocab_size": c["vocab"], "layer_norm_epsilon": c["eps"], "activation": c["activation"]});
    set_field(&run.join("manifest.json"), "/config", legacy);
    assert_eq!(patchbay::results::Manifest::read(&run).unwrap().config, patchbay::model::ModelConfig::from_json_file(&tiny().join("config.json")).unwrap());
    for args in [vec!["verify", s(&run), "--rows", "2"], vec!["analyze", s(&run)]] {
        let r = patchbay(&args);
        assert!(r.ok(), "{args:?}: {}", r.stderr);
    }
}
