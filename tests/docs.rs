//! The documentation runs. Every `patchbay …` command line that README.md and docs/*.md show in a
//! code block (and `cargo run -- …`, the same program) is one the CLI takes: parsed as `patchbay`
//! parses it, its placeholders (FILE, N, K/N, …) given values; a block marked `<!-- synopsis -->`
//! is grammar and a ```text block a printout, both left out. The blocks marked `<!-- runs in tests/docs.rs -->` run in full on the
//! tiny fixture, a page's blocks one command after the other in one directory (a later block may
//! read what an earlier one wrote), the hub's models replaced by the fixture: each must succeed.
use crate::common::*;
use std::path::PathBuf;
use std::process::Command;

/// The marker of a code block that runs.
const RUNS: &str = "<!-- runs in tests/docs.rs -->";
/// The marker of a synopsis: grammar (`[--flag N]`, `a | b`), not command lines. (A program's
/// printout is a ```text block, left out too.)
const SYNOPSIS: &str = "<!-- synopsis -->";

struct Line {
    /// `FILE:LINE`, for messages.
    at: String,
    /// The program's arguments.
    args: Vec<String>,
    /// In a block marked to run: which one (its first line).
    block: Option<String>,
}

/// The documentation's pages.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for p in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut docs = Vec::new();
    walk(&root().join("docs"), &mut docs);
    docs.sort();
    [vec![root().join("README.md")], docs].concat()
}

/// Shell words of `text` (quotes, backslash escapes; a `#` comment ends it).
fn words(text: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut escaped, mut any) = (Vec::new(), String::new(), None, false, false);
    for c in text.chars() {
        match (quote, c) {
            _ if escaped => {
                word.push(c);
                escaped = false;
            }
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some(_), '\\') if quote == Some('"') => escaped = true,
            (Some(_), _) => word.push(c),
            (None, '\\') => escaped = true,
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, '#') if word.is_empty() && !any => break,
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() || any {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if !word.is_empty() || any {
        out.push(word);
    }
    out
}

/// The `patchbay` invocations of one shell line: each `&&`/`;`-separated command that is
/// `patchbay ARGS` or `cargo run [--release] -- ARGS` (environment assignments before it dropped).
fn invocations(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for command in line.split("&&").flat_map(|c| c.split(';')).map(|c| c.split(" | ").next().unwrap_or(c)) {
        let mut w: Vec<String> = words(command).into_iter().skip_while(|w| w.contains('=') && !w.starts_with('-')).collect();
        if w.first().is_some_and(|p| p == "patchbay" || p.ends_with("/patchbay")) {
            w.remove(0);
            out.push(w);
        } else if w.len() > 2 && w[0] == "cargo" && w[1] == "run" {
            if let Some(i) = w.iter().position(|x| x == "--") {
                out.push(w[i + 1..].to_vec());
            }
        }
    }
    out
}

/// Every command line in a code block of the pages.
fn lines() -> Vec<Line> {
    let mut out = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(root()).unwrap().display().to_string();
        let (mut fenced, mut marked, mut block, mut synopsis, mut output) = (false, false, None::<String>, false, false);
        let mut pending = String::new();
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{name}:{}", i + 1);
            let trimmed = raw.trim();
            if trimmed.starts_with("```") {
                fenced = !fenced;
                block = (fenced && marked).then(|| at.clone());
                marked = false;
                output = fenced && trimmed == "```text";
                continue;
            }
            if output {
                continue;
            }
            let code = fenced || (raw.starts_with("    ") && !trimmed.starts_with('-') && !trimmed.starts_with('*'));
            if !code {
                if !trimmed.is_empty() {
                    marked = trimmed == RUNS;
                    synopsis = trimmed == SYNOPSIS;
                    block = None;
                }
                continue;
            }
            if synopsis {
                continue;
            }
            if !fenced && marked && block.is_none() {
                block = Some(at.clone()); // an indented block under the marker
            }
            // A trailing backslash continues the command on the next line.
            pending.push_str(trimmed.trim_end_matches('\\'));
            if trimmed.ends_with('\\') {
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending);
            for args in invocations(line.trim_start_matches("$ ")) {
                out.push(Line { at: at.clone(), args, block: block.clone() });
            }
        }
    }
    out
}

/// A placeholder's stand-in: a number where the docs' names say one (N, K/N, F, T), else a word.
fn stand_in(word: &str) -> Option<String> {
    let name = word.trim_matches(|c| c == '<' || c == '>');
    let upper = !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c == '/') && name.chars().any(|c| c.is_ascii_uppercase());
    if !(upper || word.starts_with('<') && word.ends_with('>')) {
        return None;
    }
    Some(match name {
        "N" | "K" | "ROWS" => "2".into(),
        "K/N" => "0/2".into(),
        "F" | "T" => "0.5".into(),
        _ => "x".into(),
    })
}

#[test]
fn every_command_line_in_the_docs_is_one_the_cli_takes() {
    let lines = lines();
    assert!(lines.len() >= 30, "the scan found {} command lines", lines.len());
    let mut broken = Vec::new();
    for l in &lines {
        let args: Vec<String> = l.args.iter().map(|w| stand_in(w).unwrap_or_else(|| w.clone())).collect();
        // `--flag=VALUE` with a placeholder value.
        let args: Vec<String> = args.into_iter().map(|w| match w.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => stand_in(value).map_or(w.clone(), |v| format!("{flag}={v}")),
            _ => w,
        }).collect();
        if let Err(e) = patchbay::cli::parses(&args) {
            broken.push(format!("{}: patchbay {}: {e}", l.at, args.join(" ")));
        }
    }
    assert!(broken.is_empty(), "command lines the CLI does not take:\n{}", broken.join("\n"));
}

#[test]
fn the_marked_examples_run_on_the_fixture() {
    let lines = lines();
    let marked: Vec<&Line> = lines.iter().filter(|l| l.block.is_some()).collect();
    let blocks: std::collections::BTreeSet<&String> = marked.iter().filter_map(|l| l.block.as_ref()).collect();
    assert!(blocks.len() >= 5, "blocks marked {RUNS}: {}", blocks.len());
    let tiny = tiny();
    let page_of = |l: &Line| l.at.split(':').next().unwrap().to_string();
    let mut pages: Vec<String> = marked.iter().map(|l| page_of(l)).collect();
    pages.dedup();
    for page in pages {
        let dir = std::env::temp_dir().join(format!("patchbay-docs-{}-{}", page.replace(['/', '.'], "-"), std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The repository's files where the docs name them (configs/, tests/fixtures/).
        for shared in ["configs", "tests"] {
            std::os::unix::fs::symlink(root().join(shared), dir.join(shared)).unwrap();
        }
        for l in marked.iter().filter(|l| page_of(l) == page) {
            let mut args: Vec<String> = l.args.iter().map(|w| if is_hub_id(w) { tiny.display().to_string() } else { w.clone() }).collect();
            // A command that loads a model and names none (a config's gpt2): the fixture.
            let with_model = [args.clone(), vec!["--model".into(), tiny.display().to_string()]].concat();
            if !args.iter().any(|a| a == "--model") && patchbay::cli::parses(&with_model).is_ok() {
                args = with_model;
            }
            let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(&args).current_dir(&dir).env("HF_HUB_OFFLINE", "1").output().unwrap();
            assert!(out.status.success(), "{}: patchbay {} failed:\n{}{}", l.at, args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A hub id the docs load (`gpt2`, `Qwen/Qwen2.5-0.5B`, `openai-community/gpt2-medium`, …).
fn is_hub_id(word: &str) -> bool {
    word == "gpt2" || ["openai-community/", "Qwen/", "meta-llama/", "google/", "EleutherAI/"].iter().any(|o| word.starts_with(o))
}
