//! Bounds on the counts a user or a file gives (sequences, samples, steps, rows, pairs, layers),
//! checked before anything is allocated: each comes from this machine's memory or the model's
//! context, and a count beyond it is one line naming the option, its value and the bound, never
//! an abort of the process (a notebook's kernel with it).
use anyhow::{bail, Result};

/// MemAvailable from /proc/meminfo, in bytes.
pub fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `value` of `option` is at most `max` (`why`: what the bound is).
pub fn at_most(option: &str, value: usize, max: usize, why: &str) -> Result<()> {
    if value > max {
        bail!("{option} {value} is more than {max}, {why}");
    }
    Ok(())
}

/// `count` things of `bytes_each` bytes fit in half this machine's available memory.
pub fn fits_memory(option: &str, count: usize, bytes_each: usize) -> Result<()> {
    let memory = available_memory().unwrap_or(2 << 30) / 2;
    at_most(option, count, memory / bytes_each.max(1), &format!("what half of this machine's available memory ({} MiB) holds at {bytes_each} bytes each", memory >> 20))
}

/// The product of `factors`, or an error naming `what` when it overflows.
pub fn product(what: &str, factors: &[usize]) -> Result<usize> {
    factors.iter().try_fold(1usize, |a, &f| a.checked_mul(f)).ok_or_else(|| anyhow::anyhow!("{what}: {factors:?} multiply past any size this machine can hold"))
}

/// A job's output holds no infinity, and no NaN but where `padding(i)` says a NaN stands for
/// "no value" (past a prompt's length): a model made non-finite by its config or a steering
/// vector is an error naming it, not garbage written with exit status 0.
pub fn ensure_finite(what: &str, values: &[f32], padding: impl Fn(usize) -> bool) -> Result<()> {
    match values.iter().enumerate().find(|&(i, v)| v.is_infinite() || v.is_nan() && !padding(i)) {
        Some((i, v)) => bail!("{what} holds {v} at flat index {i}: the model's outputs are not finite (its config.json, weights or a steering vector make them overflow)"),
        None => Ok(()),
    }
}
