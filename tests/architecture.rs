//! The shape of the source tree: the top-level modules form no circle of imports (so the pipeline
//! reads one way), nor do the files of any folder, and the command line holds no model loading, tensor math or file writing (the
//! library's jobs do; the CLI parses, calls and prints).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's text without its unit tests (they may use anything).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("#[cfg(test)]").next().unwrap().to_string()
}

/// Top-level module → the top-level modules it names as `crate::X`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = code(&f);
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    graph
}

/// Every module reachable from `from`.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for d in graph.get(&m).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn no_two_top_level_modules_import_each_other_even_through_others() {
    let graph = imports();
    assert!(graph.len() >= 10 && graph["cli"].contains("jobs"), "the scan found the modules: {graph:?}");
    let circles: Vec<String> = graph.keys().filter(|m| reachable(&graph, m).contains(*m)).cloned().collect();
    assert!(circles.is_empty(), "modules on a circle of imports: {circles:?} (graph: {graph:?})");
}

/// Within each folder, file → the sibling files it names (`super::x::`, `crate::folder::x::`); a
/// folder's `mod.rs` gathers its files and is no node (its re-exports are the folder's face).
fn file_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let (Some(dir), Some(stem)) = (f.parent(), f.file_stem().map(|s| s.to_string_lossy().to_string())) else { continue };
        if stem == "mod" || dir == src {
            continue;
        }
        let folder = dir.strip_prefix(&src).unwrap().to_string_lossy().replace('/', "::");
        let siblings: BTreeSet<String> = files.iter().filter(|g| g.parent() == Some(dir)).filter_map(|g| g.file_stem()).map(|s| s.to_string_lossy().to_string()).filter(|s| s != "mod" && *s != stem).collect();
        let text = code(f);
        let deps = graph.entry(format!("{folder}/{stem}")).or_default();
        for prefix in ["super::".to_string(), format!("crate::{folder}::")] {
            for (i, _) in text.match_indices(&prefix) {
                let name: String = text[i + prefix.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if siblings.contains(&name) {
                    deps.insert(format!("{folder}/{name}"));
                }
            }
        }
    }
    graph
}

#[test]
fn no_two_files_of_a_folder_import_each_other_even_through_others() {
    let graph = file_imports();
    assert!(graph.get("engine/run").is_some_and(|d| d.contains("engine/plan")), "the scan found the files: {graph:?}");
    let circles: Vec<String> = graph.keys().filter(|m| reachable(&graph, m).contains(*m)).cloned().collect();
    assert!(circles.is_empty(), "files on a circle of imports: {circles:?}");
}

#[test]
fn the_command_line_loads_no_model_computes_no_tensor_and_writes_no_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    assert!(files.len() >= 5);
    let forbidden = ["load_model", "Transformer::", "burn::", "Tensor", "dispatch(", "write_atomic", "write_npy", "fs::write", "File::create", "create_dir", "remove_file"];
    for f in files {
        let text = code(&f);
        for word in forbidden {
            assert!(!text.contains(word), "{} uses {word}: that belongs in the library (jobs/, results/)", f.display());
        }
    }
}

/// The model seam: outside `src/model/` (and in the Python front end) no code names a family, its
/// config or its weights; they talk to `ModelConfig` and `Transformer` only. (Comments and
/// strings meant for users may name the field's models; the words below are code's.)
#[test]
fn nothing_outside_the_model_names_a_family_or_its_weights() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("python/src"), &mut files);
    let model = root.join("src/model");
    let outside: Vec<PathBuf> = files.into_iter().filter(|f| !f.starts_with(&model)).collect();
    assert!(outside.len() >= 40, "the scan found the sources: {}", outside.len());
    let mut found = Vec::new();
    for f in outside {
        let text: String = code(&f).lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        found.extend(family_names(&text).into_iter().map(|w| format!("{}: {w}", f.strip_prefix(root).unwrap().display())));
    }
    // The matcher itself: a type and a weight named in code are found; prose and longer names not.
    assert_eq!(family_names("let c: Gpt2Config = load(q_proj, Llama(\"llama\"));"), ["q_proj", "Gpt2", "Llama"]);
    assert!(family_names("about = \"GPT-2, Llama 3, Mistral, Gemma 2\"; x.n_layers; max_hidden_size").is_empty());
    assert!(found.is_empty(), "family names outside src/model/: {found:?}");
}

/// The families' names in `text`: their types as code uses a type (`Gpt2Config`, `Llama(..)`,
/// `GptNeox::`, `Gemma2;`; a user's "Llama 3" or "Gemma 2" is not one), and their modules, weights
/// and config keys as whole words (`.n_layers`, EAP-IG's Graph JSON, is not `.n_layer`).
fn family_names(text: &str) -> Vec<&'static str> {
    const TYPES: [&str; 8] = ["Gpt2", "GptNeox", "Gemma2", "Llama", "Mistral", "Qwen2", "Qwen3", "HfConfig"];
    const WORDS: [&str; 41] = [
        "gpt2::", "families::", "c_attn", "c_proj", "c_fc", ".wte", ".wpe", ".ln_1", ".ln_2", "ln_f(", ".n_layer", ".n_head", ".n_embd", ".n_positions",
        "llama::", "gpt_neox::", "gemma2::", "model_type", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "embed_in",
        "embed_out", "lm_head", "query_key_value", "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
        "rotary_pct", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "hidden_size", "use_parallel_residual", "query_pre_attn_scalar",
    ];
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let starts = |w: &str, i: usize| !w.starts_with(ident) || !text[..i].ends_with(ident);
    let word = |w: &str| text.match_indices(w).any(|(i, _)| starts(w, i) && !text[i + w.len()..].starts_with(ident));
    let typed = |w: &str| text.match_indices(w).any(|(i, _)| starts(w, i) && text[i + w.len()..].starts_with(|c: char| c.is_ascii_uppercase() || "(:<;{".contains(c)));
    WORDS.into_iter().filter(|w| word(w)).chain(TYPES.into_iter().filter(|w| typed(w))).collect()
}

/// The two front ends stand side by side on the library: the Python package's native module names
/// nothing of the command line (`patchbay::cli`), nor does the library outside `cli/` itself.
#[test]
fn neither_front_end_imports_the_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("python/src"), &mut files);
    sources(&root.join("src"), &mut files);
    let cli = root.join("src/cli");
    let outside: Vec<PathBuf> = files.into_iter().filter(|f| !f.starts_with(&cli) && **f != root.join("src/lib.rs") && **f != root.join("src/main.rs")).collect();
    assert!(outside.len() >= 40, "the scan found the sources: {}", outside.len());
    let found: Vec<String> = outside
        .iter()
        .filter(|f| ["patchbay::cli", "crate::cli", "super::cli"].iter().any(|w| code(f).contains(w)))
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(found.is_empty(), "files using the command line's module: {found:?}");
}

/// The string literals of `text`, include_str!'s paths (source files, not outputs) left out.
fn literals(text: &str) -> Vec<String> {
    let (mut out, mut current, mut open, mut escaped, mut prev) = (Vec::new(), String::new(), false, false, ' ');
    for c in text.chars() {
        if open {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    open = false;
                    out.push(std::mem::take(&mut current));
                }
                _ => {
                    escaped = false;
                    current.push(c);
                }
            }
        } else if c == '"' && prev != '\'' {
            open = true;
        }
        prev = c;
    }
    let assets: Vec<String> = text.split("include_str!(\"").skip(1).filter_map(|rest| rest.split('"').next()).map(String::from).collect();
    out.retain(|l| !assets.contains(l));
    out
}

/// The names of a results directory's files (and of every other command's output) are written
/// in `src/results/` alone: a literal that is a file name (`"summary.json"`,
/// `"{}.ablation_means.npy"`) anywhere else fails, but the model's own files.
#[test]
fn results_file_names_are_written_only_in_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("python/src"), &mut files);
    let results = root.join("src/results");
    let model_files = ["config.json", "tokenizer.json", "model.safetensors", "model.safetensors.index.json"];
    let is_file_name = |l: &str| {
        let ext = l.rsplit_once('.').map_or("", |(_, e)| e);
        ["npy", "json", "png", "svg", "csv", "html", "jsonl", "partial"].contains(&ext) && l.chars().all(|c| c.is_alphanumeric() || "_{}.-".contains(c))
    };
    let mut found = Vec::new();
    let mut scanned = 0;
    for f in files.iter().filter(|f| !f.starts_with(&results)) {
        let text: String = code(f).lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let names: Vec<String> = literals(&text).into_iter().filter(|l| is_file_name(l) && !model_files.contains(&l.as_str())).collect();
        scanned += 1;
        found.extend(names.into_iter().map(|n| format!("{}: {n:?}", f.strip_prefix(root).unwrap().display())));
    }
    assert!(scanned >= 40, "the scan found the sources: {scanned}");
    assert!(literals(r#"let a = "x.npy"; let b = '"'; let c = "say \"hi\"";"#) == ["x.npy", "say \"hi\""], "the literal scanner");
    assert!(found.is_empty(), "file names written outside src/results/: {found:?}");
}

/// Work on a loaded model is written once: every job hands its model work to `on_model!` (the
/// one `ModelTask` impl, in jobs/mod.rs), and each `BackendTask` impl is a different thing
/// (loading, a task on the loaded model, the benchmark).
#[test]
fn no_model_or_backend_task_impl_is_copied() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("python/src"), &mut files);
    let impls = |name: &str| -> Vec<String> {
        files
            .iter()
            .flat_map(|f| code(f).lines().filter(|l| l.contains(&format!("{name} for "))).map(|l| format!("{}: {}", f.strip_prefix(root).unwrap().display(), l.trim())).collect::<Vec<_>>())
            .collect()
    };
    let model = impls("ModelTask");
    assert!(model.len() == 1 && model[0].starts_with("src/jobs/mod.rs: impl $crate::jobs::ModelTask for Task"), "ModelTask impls: {model:#?}");
    let backend = impls("BackendTask");
    assert_eq!(backend.len(), 3, "BackendTask impls: {backend:#?}");
}
