//! The GPT-2 forward pass against HF transformers / TransformerLens on the tiny random-weight
//! fixture: logits and every activation site, on every backend compiled in.
use burn::prelude::*;
use crate::common::*;
use patchbay::backend::{dispatch, BackendTask};
use patchbay::model::weights::{load_located, ModelFiles};
use patchbay::model::{Cache, Transformer, ModelConfig, Site, SiteKind};
use std::path::Path;

fn load<B: Backend>(dir: &Path, device: &B::Device) -> anyhow::Result<Transformer<B>> {
    load_located(dir.to_str().unwrap(), device)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// (what, max abs difference to the reference) for the logits and each site of each layer of the
/// fixture in the directory.
struct Fidelity(std::path::PathBuf);

impl BackendTask for Fidelity {
    type Output = Vec<(String, f32)>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let refs = Refs::load(&self.0);
        let model = load::<B>(&self.0, &device)?;
        let rows = refs.token_rows("tokens");
        let n_layer = model.config.layers;
        let sites: Vec<Site> = (0..n_layer).flat_map(|l| SiteKind::ALL.map(|k| Site::new(k, l))).collect();
        let mut cache = Cache::new(sites.clone());
        let logits = model.forward(model.tokens(&rows)?, &mut cache);
        // The backend's float type is the one computed in (burn 0.21 would otherwise fall back
        // to whatever float type first touched the device in this process).
        assert_eq!(logits.dtype(), <B::FloatElem as burn::tensor::Element>::dtype());
        let [p, t, v] = logits.dims();
        let (cols, _) = refs.i32("vocab_cols");
        let cols = Tensor::<B, 1, Int>::from_data(TensorData::new(cols.iter().map(|&c| c as i64).collect(), [cols.len()]), &device);
        assert_eq!(cache_len(&cache, n_layer), n_layer * SiteKind::ALL.len());
        let mut out = vec![
            ("logits_last".to_string(), max_abs_diff(&values(logits.clone().narrow(1, t - 1, 1).reshape([p, v])), &refs.f32("logits_last").0)),
            ("logits_cols".to_string(), max_abs_diff(&values(logits.select(2, cols)), &refs.f32("logits_cols").0)),
        ];
        for site in sites {
            let name = site.kind.hook_name(site.layer);
            let got = match site.kind {
                SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Z | SiteKind::Pattern => values(cache.heads(site).unwrap()),
                _ => values(cache.resid(site).unwrap()),
            };
            out.push((name.clone(), max_abs_diff(&got, &refs.f32(&name).0)));
        }
        // Again with no hook on attention's insides, which the cpu backend then computes in one
        // fused kernel (backend::cpu::attention).
        let resid = [SiteKind::ResidPre, SiteKind::ResidMid, SiteKind::AttnOut, SiteKind::MlpOut, SiteKind::ResidPost];
        let mut cache = Cache::new((0..n_layer).flat_map(|l| resid.map(|k| Site::new(k, l))));
        let logits = model.forward(model.tokens(&rows)?, &mut cache);
        out.push(("unhooked attention: logits_last".into(), max_abs_diff(&values(logits.narrow(1, t - 1, 1).reshape([p, v])), &refs.f32("logits_last").0)));
        for site in (0..n_layer).flat_map(|l| resid.map(|k| Site::new(k, l))) {
            let name = site.kind.hook_name(site.layer);
            out.push((format!("unhooked attention: {name}"), max_abs_diff(&values(cache.resid(site).unwrap()), &refs.f32(&name).0)));
        }
        Ok(out)
    }
}

#[test]
fn logits_and_sites_match_hf_on_every_backend_and_fixture_shape() {
    // Every row is printed before any failure is reported: a GPU session reads them all at once.
    let mut failures = Vec::new();
    for dir in fixture_dirs() {
        for spec in backends() {
            let diffs = dispatch(&spec, Fidelity(dir.clone())).unwrap();
            let tol = tolerance(&spec);
            let worst = diffs.iter().map(|d| d.1).fold(0.0, f32::max);
            eprintln!("{} {spec:?}: {} comparisons, max abs difference to HF {worst:.2e}", name(&dir), diffs.len());
            let bad: Vec<_> = diffs.iter().filter(|(_, d)| !(*d < tol)).collect();
            if !bad.is_empty() {
                failures.push(format!("{} {spec:?}: differs from HF by more than {tol}: {bad:?}", name(&dir)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn cache_len<B: Backend>(cache: &Cache<B>, n_layer: usize) -> usize {
    (0..n_layer).flat_map(|l| SiteKind::ALL.map(|k| Site::new(k, l))).filter(|&s| cache.heads(s).is_some()).count()
}

/// Tensors of the fixture checkpoint, by stored name.
fn fixture_tensors() -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect()
}

/// A model directory beside the fixture's, with a rewritten checkpoint.
fn write_checkpoint(name: &str, tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), dir.join(f)).unwrap();
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn hub_bare_names_with_mask_buffers_load_the_same_model() {
    type B = patchbay::backend::Cpu;
    let device = Default::default();
    let mut tensors: Vec<_> = fixture_tensors()
        .into_iter()
        .map(|(n, dt, s, d)| (n.strip_prefix("transformer.").unwrap().to_string(), dt, s, d))
        .collect();
    // The hub's gpt2 checkpoint carries causal-mask buffers h.N.attn.bias: they are ignored.
    for l in 0..3 {
        tensors.push((format!("h.{l}.attn.bias"), safetensors::Dtype::F32, vec![1, 1, 2, 2], vec![0; 16]));
    }
    let dir = write_checkpoint("bare", &tensors);
    let tokens = Refs::load(&tiny()).token_rows("tokens");
    let a = load::<B>(&tiny(), &device).unwrap();
    let b = load::<B>(&dir, &device).unwrap();
    let la = values(a.forward(a.tokens(&tokens).unwrap(), &mut patchbay::model::NoHooks));
    let lb = values(b.forward(b.tokens(&tokens).unwrap(), &mut patchbay::model::NoHooks));
    assert_eq!(la, lb);
}

#[test]
fn missing_tensor_and_wrong_shape_are_one_line_errors() {
    type B = patchbay::backend::Cpu;
    let device = Default::default();
    let tensors = fixture_tensors();
    let missing: Vec<_> = tensors.iter().filter(|t| t.0 != "transformer.h.1.mlp.c_fc.weight").cloned().collect();
    let err = load::<B>(&write_checkpoint("missing", &missing), &device).err().unwrap().to_string();
    assert!(err.contains("has no tensor h.1.mlp.c_fc.weight") && !err.contains('\n'), "{err}");

    let mut wrong = tensors.clone();
    let t = wrong.iter_mut().find(|t| t.0 == "transformer.h.0.attn.c_proj.weight").unwrap();
    t.2 = vec![8, 32]; // same bytes, transposed-looking shape
    let err = load::<B>(&write_checkpoint("shape", &wrong), &device).err().unwrap().to_string();
    assert!(err.contains("h.0.attn.c_proj.weight") && err.contains("[8, 32]") && err.contains("[16, 16]"), "{err}");
}

#[test]
fn missing_model_directory_file_is_named() {
    let dir = std::env::temp_dir().join(format!("patchbay-test-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = ModelFiles::locate(dir.to_str().unwrap()).unwrap_err().to_string();
    assert!(err.contains("config.json is missing"), "{err}");
}

#[test]
fn offline_hub_miss_says_which_file_and_how_to_provide_it() {
    // In a child process: the variables would reach every test of this binary.
    let home = std::env::temp_dir().join(format!("patchbay-test-hfhome-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(["inspect", "--model", "gpt2", "Hi"])
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("config.json of gpt2 is not in the HF cache") && err.contains("--model DIR"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn random_init_has_gpt2_shapes() {
    type B = patchbay::backend::Cpu;
    let mut c = ModelConfig::named("distilgpt2").unwrap();
    c.vocab = 100;
    c.context = 8;
    let m = Transformer::<B>::random(c, 0, &Default::default());
    let logits = m.forward(m.tokens(&[vec![1, 2, 3]]).unwrap(), &mut patchbay::model::NoHooks);
    assert_eq!(logits.dims(), [1, 3, 100]);
}

/// A stand-in for the hub: answers `/{repo}/resolve/{revision}/{file}` with the tiny fixture's
/// files as the hub does (ETag, X-Repo-Commit, ranges), for the repo `test/tiny`; 404 for other
/// repos; for `test/cut`, model.safetensors' body stops halfway and the connection closes.
/// Hostile repos: `test/etag` and `test/commit` send `../` in those headers, `test/hang` never
/// answers, `test/stall` stops halfway through a body and keeps the connection open, `test/long`
/// announces the file's size and sends bytes without end.
fn hub_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // One thread a connection: a hanging one must not hold up the others.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                // A client may ask for a range (`bytes=0-0`: the metadata; `bytes=N-`: from N on).
                let (mut start, mut last) = (0usize, None::<usize>);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some(range) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = range.trim().split_once('-').unwrap_or(("0", ""));
                        (start, last) = (a.parse().unwrap_or(0), b.parse().ok());
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let mut out = stream;
                let (repo, file) = match parts.as_slice() {
                    [org, name, "resolve", _, file] => (format!("{org}/{name}"), file.to_string()),
                    _ => (String::new(), String::new()),
                };
                let bytes = match repo.as_str() {
                    "test/tiny" | "test/cut" | "test/etag" | "test/commit" | "test/hang" | "test/stall" | "test/long" => std::fs::read(tiny().join(&file)).ok(),
                    _ => None,
                };
                let Some(bytes) = bytes else {
                    let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                };
                let forever = || std::thread::sleep(std::time::Duration::from_secs(600));
                if repo == "test/hang" {
                    forever();
                }
                let body = &bytes[start.min(bytes.len())..=last.unwrap_or(bytes.len() - 1).min(bytes.len() - 1)];
                let etag = if repo == "test/etag" { "../../../../escaped-etag".to_string() } else { format!("{file}-{}", bytes.len()) };
                let commit = if repo == "test/commit" { "../../../../escaped-commit" } else { "0123456789abcdef0123456789abcdef01234567" };
                let length = if repo == "test/long" { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {commit}\r\nContent-Range: bytes {start}-{}/{}\r\n{length}Connection: close\r\n\r\n",
                    start + body.len() - 1,
                    bytes.len(),
                );
                let _ = out.write_all(head.as_bytes());
                match repo.as_str() {
                    "test/cut" if file == "model.safetensors" && body.len() > 1 => drop(out.write_all(&body[..body.len() / 2])),
                    "test/stall" if body.len() > 1 => {
                        let _ = out.write_all(&body[..body.len() / 2]);
                        forever();
                    }
                    // Up to 4 GiB, until the client hangs up.
                    "test/long" => for _ in 0..(1 << 16) {
                        if out.write_all(&[7u8; 1 << 16]).is_err() {
                            break;
                        }
                    },
                    _ => drop(out.write_all(body)),
                }
            });
        }
    });
    address
}

#[test]
fn hub_downloads_fill_the_cache_honour_hf_endpoint_and_fail_in_one_line_leaving_nothing_partial() {
    let home = std::env::temp_dir().join(format!("patchbay-test-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let endpoint = hub_server();
    let inspect = |model: &str, offline: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"));
        cmd.args(["inspect", "--model", model, "--top-k", "5", "Michelle Jones was a top-notch student. Michelle"]).env("HF_HOME", &home).env("HF_ENDPOINT", &endpoint);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, local, stderr) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["inspect", "--model", tiny().to_str().unwrap(), "--top-k", "5", "Michelle Jones was a top-notch student. Michelle"]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(ok, "{stderr}");
    // The first run downloads into the cache; the files there are the fixture's, byte for byte.
    let (ok, stdout, stderr) = inspect("test/tiny", false);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, local);
    let snapshot = home.join("hub/models--test--tiny/snapshots/0123456789abcdef0123456789abcdef01234567");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(std::fs::read(snapshot.join(f)).unwrap(), std::fs::read(tiny().join(f)).unwrap(), "{f}");
    }
    // Offline, the cache alone serves it.
    let (ok, stdout, stderr) = inspect("test/tiny", true);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, local);
    // A repo the hub does not have: one line naming the file, the repo and the endpoint.
    let (ok, _, stderr) = inspect("test/missing", false);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("could not fetch config.json of test/missing from http://127.0.0.1") && stderr.contains("404"), "{stderr}");
    // A connection cut in the middle of model.safetensors: one line, and nothing partial left.
    let (ok, _, stderr) = inspect("test/cut", false);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("could not fetch model.safetensors of test/cut"), "{stderr}");
    let repo = home.join("hub/models--test--cut");
    // (The stand-in's ETag, the blob's name, starts with the file's name.)
    let partial = |p: &std::path::PathBuf| {
        let name = p.file_name().unwrap().to_string_lossy();
        // hf-hub's empty .lock files stay, as after any download.
        name.ends_with(".part") || name.starts_with("model.safetensors") && !name.ends_with(".lock")
    };
    let left: Vec<_> = walk(&repo).into_iter().filter(partial).collect();
    assert!(left.is_empty(), "partial files left in the cache: {left:?}");
    // `graph` needs the config alone and `ioi` the tokenizer alone: they do not ask for the cut
    // weights (which would fail as above).
    for args in [vec!["graph", "--model", "test/cut"], vec!["ioi", "--model", "test/cut", "--n", "2", "--out", home.join("ioi.jsonl").to_str().unwrap()]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay")).args(&args).env("HF_HOME", &home).env("HF_ENDPOINT", &endpoint).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&home);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_hostile_hub_mirror_writes_nothing_outside_hf_home_and_never_hangs() {
    let outer = std::env::temp_dir().join(format!("patchbay-test-hostile-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outer);
    let home = outer.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let endpoint = hub_server();
    // (repo, what the one-line error says)
    let cases = [
        ("test/etag", "sent ETag: \"../../../../escaped-etag\", which is not a plain name"),
        ("test/commit", "sent X-Repo-Commit: \"../../../../escaped-commit\", which is not a plain name"),
        ("test/hang", "timed out"),
        ("test/stall", "timed out"),
        ("test/long", "longer than the"),
    ];
    for (repo, says) in cases {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args(["inspect", "--model", repo, "--top-k", "5", "Michelle Jones was a top-notch student. Michelle"])
            .env("HF_HOME", &home)
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HUB_ETAG_TIMEOUT", "1")
            .env("HF_HUB_DOWNLOAD_TIMEOUT", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{repo}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{repo}: {stderr}");
        assert!(stderr.contains(says) && stderr.contains(&endpoint), "{repo}: {stderr}");
        // Within the timeouts (one second each), not the server's ten minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{repo} took {:?}", started.elapsed());
        let outside: Vec<_> = std::fs::read_dir(&outer).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(outside, vec![std::ffi::OsString::from("home")], "{repo}: written outside HF_HOME");
        let left: Vec<_> = walk(&home).into_iter().filter(|p| p.is_file() && !p.is_symlink()).collect();
        assert!(left.is_empty(), "{repo}: files left in the cache: {left:?}");
    }
    // A bad timeout is named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["graph", "--model", "test/tiny"]).env("HF_HOME", &home).env("HF_ENDPOINT", &endpoint).env("HF_HUB_DOWNLOAD_TIMEOUT", "-1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("HF_HUB_DOWNLOAD_TIMEOUT=\"-1\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&outer);
}
