//! Downloads from the HF hub, or a mirror named by `HF_ENDPOINT`, into the HF cache in the hub's
//! layout (`models--owner--name/blobs/ETAG`, `snapshots/COMMIT/FILE` linking to it, `refs/main`),
//! so hf-hub's `Cache` and HF's own libraries find the files offline.
//!
//! The server is untrusted input: its `ETag` and `X-Repo-Commit` headers become file names, so
//! each must be one plain name (hf-hub 0.4 joins them to the cache path as they come, so `../` in
//! either wrote outside HF_HOME, which is why this module replaces its download); every request
//! has connect and read timeouts (HF's `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT`, in
//! seconds, 10 by default as in huggingface_hub); a body is read no further than the size the
//! server announced; and `watch` is called after every chunk, so a caller can stop it (Ctrl-C in
//! Python). A failed download leaves nothing in the cache.
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The endpoint downloads come from: `HF_ENDPOINT` or the hub.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string()
}

/// Seconds from an HF environment variable, or `default`.
fn timeout(var: &str, default: u64) -> Result<Duration> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_secs(default)),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            _ => bail!("{var}={v:?} is not a number of seconds (above 0, at most a day)"),
        },
    }
}

/// One plain file name: letters, digits, `-`, `_` and `.`, not starting with `.` (so neither `.`
/// nor `..`), at most 255 bytes.
pub(super) fn is_plain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.starts_with('.') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A header that becomes a file name in the cache must be a plain name.
fn plain_name<'a>(value: &'a str, header: &str, endpoint: &str) -> Result<&'a str> {
    if !is_plain(value) {
        bail!("{endpoint} sent {header}: {value:?}, which is not a plain name (it would become a path in the HF cache)");
    }
    Ok(value)
}

/// A hub id is `name` or `owner/name`, each part a plain name.
pub fn check_id(id: &str) -> Result<()> {
    if id.split('/').count() > 2 || !id.split('/').all(is_plain) {
        bail!("{id:?} is not a hub id (`name` or `owner/name`) nor a directory");
    }
    Ok(())
}

/// Downloads `file` of the model repo `id` (revision main) into `cache`; its path there.
/// `watch(bytes_done, bytes_total)` is called ten times a second while the transfer runs on a
/// thread of its own, so an error it returns (Ctrl-C) stops the wait at once, even while a read
/// blocks; the transfer then stops at its next read and removes its partial file.
pub fn download(cache: &hf_hub::Cache, id: &str, file: &str, watch: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::{mpsc, Arc};
    check_id(id)?;
    let state = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false)));
    let (tx, rx) = mpsc::channel();
    let (cache, id, name, shared) = (cache.clone(), id.to_string(), file.to_string(), state.clone());
    std::thread::spawn(move || {
        let result = transfer(&cache, &id, &name, &mut |done, total| {
            shared.0.store(done, Relaxed);
            shared.1.store(total, Relaxed);
            if shared.2.load(Relaxed) {
                bail!("stopped");
            }
            Ok(())
        });
        let _ = tx.send(result);
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => {
                if result.is_ok() {
                    watch(state.0.load(Relaxed), state.1.load(Relaxed))?;
                }
                return result;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = watch(state.0.load(Relaxed), state.1.load(Relaxed)) {
                    state.2.store(true, Relaxed);
                    return Err(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("internal error: the download of {file} stopped without a result"),
        }
    }
}

fn transfer(cache: &hf_hub::Cache, id: &str, file: &str, watch: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<PathBuf> {
    let endpoint = endpoint();
    let connect = timeout("HF_HUB_ETAG_TIMEOUT", 10)?;
    let read = timeout("HF_HUB_DOWNLOAD_TIMEOUT", 10)?;
    let agent = |redirects| ureq::AgentBuilder::new().timeout_connect(connect).timeout_read(read).timeout_write(read).redirects(redirects).build();
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
    let url = format!("{endpoint}/{id}/resolve/main/{file}");
    let get = |agent: &ureq::Agent, url: &str, auth: bool| {
        let mut request = agent.get(url).set("user-agent", concat!("patchbay/", env!("CARGO_PKG_VERSION")));
        if let (true, Some(t)) = (auth, &token) {
            request = request.set("authorization", &format!("Bearer {t}"));
        }
        match request.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => bail!("{url}: {code} {}", r.status_text()),
            // (Its message names the URL.)
            Err(ureq::Error::Transport(t)) => bail!("{t}"),
        }
    };
    // The resolve URL answers with the file's metadata; for a large (LFS) file, with a redirect
    // to where its bytes are. Redirects within the endpoint (a renamed repo) are followed here.
    let mut response = get(&agent(0), &url, true)?;
    for _ in 0..5 {
        let Some(location) = response.header("location").filter(|_| (300..400).contains(&response.status())) else { break };
        if location.contains("://") {
            break;
        }
        let origin = endpoint.find("://").and_then(|i| endpoint[i + 3..].find('/').map(|j| &endpoint[..i + 3 + j])).unwrap_or(&endpoint);
        response = get(&agent(0), &format!("{origin}{location}"), true)?;
    }
    let header = |name: &str| response.header(name).map(str::to_string);
    let etag = header("x-linked-etag").or_else(|| header("etag")).with_context(|| format!("{url}: the server sent no ETag"))?;
    let etag = etag.trim().trim_start_matches("W/").replace('"', "");
    let commit = header("x-repo-commit").with_context(|| format!("{url}: the server sent no X-Repo-Commit"))?;
    let (etag, commit) = (plain_name(&etag, "ETag", &endpoint)?.to_string(), plain_name(commit.trim(), "X-Repo-Commit", &endpoint)?.to_string());
    // The size: the metadata's X-Linked-Size (an LFS file), else the body's range total or length.
    let linked_size = response.header("x-linked-size").and_then(|s| s.trim().parse::<u64>().ok());
    let announced = |r: &ureq::Response| -> Option<u64> {
        r.header("content-range").and_then(|c| c.rsplit('/').next()?.trim().parse().ok()).or_else(|| r.header("content-length")?.trim().parse().ok())
    };
    let body = match response.header("location").filter(|_| (300..400).contains(&response.status())) {
        // The bytes elsewhere (a CDN): no credentials sent there.
        Some(location) => get(&agent(5), &location.to_string(), false)?,
        None => response,
    };
    let size = linked_size.or_else(|| announced(&body)).with_context(|| format!("{url}: the server announced no size for the file"))?;

    let repo = cache.path().join(format!("models--{}", id.replace('/', "--")));
    let blob = repo.join("blobs").join(&etag);
    let part = blob.with_file_name(format!("{etag}.part"));
    std::fs::create_dir_all(repo.join("blobs")).with_context(|| format!("creating {}", repo.join("blobs").display()))?;
    let fetched = (|| {
        remove_stale(&part)?;
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&part).with_context(|| format!("creating {}", part.display()))?;
        // One byte past the announced size is enough to know the body is longer than announced.
        let mut reader = body.into_reader().take(size.saturating_add(1));
        let mut buf = vec![0u8; 1 << 16];
        let mut done = 0u64;
        watch(0, size)?;
        loop {
            let n = reader.read(&mut buf).with_context(|| format!("{url}: reading the body after {done} of {size} bytes"))?;
            if n == 0 {
                break;
            }
            done += n as u64;
            if done > size {
                bail!("{url}: the body is longer than the {size} bytes the server announced");
            }
            out.write_all(&buf[..n]).with_context(|| format!("writing {}", part.display()))?;
            watch(done, size)?;
        }
        if done < size {
            bail!("{url}: the body ended after {done} of the {size} bytes the server announced");
        }
        out.sync_all().with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, &blob).with_context(|| format!("renaming {}", part.display()))
    })();
    if let Err(e) = fetched {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    let snapshot = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snapshot).with_context(|| format!("creating {}", snapshot.display()))?;
    let pointer = snapshot.join(file);
    remove_stale(&pointer)?;
    std::os::unix::fs::symlink(Path::new("../../blobs").join(&etag), &pointer).with_context(|| format!("linking {}", pointer.display()))?;
    std::fs::create_dir_all(repo.join("refs")).with_context(|| format!("creating {}", repo.join("refs").display()))?;
    std::fs::write(repo.join("refs/main"), commit.as_bytes()).with_context(|| format!("writing {}", repo.join("refs/main").display()))?;
    Ok(pointer)
}

/// Removes what an earlier, killed download left under `path` (a link is removed, not followed).
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}
