//! One advisory lock per output directory, on the directory itself (flock: no file is added, and
//! the kernel drops it when the holder dies). A command that writes a directory holds it
//! exclusively, one that reads a finished run (analyze, verify, merge's shards, `--compare`)
//! shared, each for the whole command; a process that cannot take it fails at once, naming the
//! holder's pid. Within one process the locks nest (a run's own verification inside the run).
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// The locks this process holds: (device, inode) → (the open directory, exclusive, holders).
static HELD: Mutex<Option<HashMap<(u64, u64), (File, bool, usize)>>> = Mutex::new(None);

/// A held lock; dropping the last guard of a directory releases it.
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard(Option<(u64, u64)>);

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(key) = self.0 else { return };
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let map = held.get_or_insert_with(HashMap::new);
        if let Some(entry) = map.get_mut(&key) {
            entry.2 -= 1;
            if entry.2 == 0 {
                map.remove(&key); // closing the directory releases the flock
            }
        }
    }
}

/// The lock of a command that writes `dir` (created if missing).
pub fn exclusive(dir: &Path) -> Result<Guard> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    take(dir, true)
}

/// The lock of a command that reads `dir`; nothing to lock when it does not exist (the reader
/// then fails with its own message).
pub fn shared(dir: &Path) -> Result<Guard> {
    if !dir.is_dir() {
        return Ok(Guard(None));
    }
    take(dir, false)
}

fn take(dir: &Path, exclusive: bool) -> Result<Guard> {
    let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let meta = file.metadata().with_context(|| format!("reading {}", dir.display()))?;
    let key = (meta.dev(), meta.ino());
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let map = held.get_or_insert_with(HashMap::new);
    if let Some(entry) = map.get_mut(&key) {
        // This process holds it already (a job inside a job); a shared lock is not made exclusive.
        if exclusive && !entry.1 {
            bail!("{} is being read by this process: a write to it must wait until that read ends", dir.display());
        }
        entry.2 += 1;
        return Ok(Guard(Some(key)));
    }
    let taken = if exclusive { file.try_lock() } else { file.try_lock_shared() };
    match taken {
        Ok(()) => {
            map.insert(key, (file, exclusive, 1));
            Ok(Guard(Some(key)))
        }
        Err(TryLockError::WouldBlock) => {
            let who = holder(key).map_or("another process".to_string(), |pid| format!("another process (pid {pid})"));
            if exclusive {
                bail!("{} is in use by {who}: wait for it to finish, or choose another directory", dir.display())
            }
            bail!("{} is being written by {who}: wait for it to finish", dir.display())
        }
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", dir.display())),
    }
}

/// The pid of a process holding a flock on (device, inode), from Linux's /proc/locks
/// (`1: FLOCK ADVISORY WRITE 1234 08:01:5678 0 EOF`).
fn holder((dev, ino): (u64, u64)) -> Option<u32> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == "FLOCK")?;
        (fields.get(at + 4) == Some(&want.as_str())).then(|| fields.get(at + 3)?.parse().ok()).flatten()
    })
}
