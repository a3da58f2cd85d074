//! Sharding a run over machines: `--shard K/N` or a scheduler's index (Slurm, Kubernetes), the
//! shard's range of the run's units, its directory's name, and `merge`'s sources.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Shard `index` of `count` (0-based) of a run: a contiguous range of its units of work, planned
/// over the whole dataset so each unit computes exactly as in the unsharded run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N`, K in 0..N.
    pub fn parse(s: &str) -> Result<Self> {
        let (k, n) = s.split_once('/').with_context(|| format!("--shard {s:?}: expected K/N, e.g. 0/8"))?;
        let number = |v: &str, what: &str| v.trim().parse().with_context(|| format!("--shard {s}: {what} {v:?} is not a number"));
        Self::checked(number(k, "K")?, number(n, "N")?, || format!("--shard {s}"))
    }

    /// Shard `index` of `count`, or an error naming where the two came from (`source`).
    fn checked(index: usize, count: usize, source: impl Fn() -> String) -> Result<Self> {
        if count == 0 {
            bail!("{}: the number of shards must be at least 1", source());
        }
        if index >= count {
            bail!("{}: shard {index} does not exist among {count} shards (0..{count})", source());
        }
        Ok(Self { index, count })
    }

    /// From a scheduler: a Slurm job array (SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a Kubernetes
    /// Indexed Job (JOB_COMPLETION_INDEX, with `count` from --shards). Errors name the variables.
    pub fn from_env(count: Option<usize>) -> Result<Option<Self>> {
        let var = |name: &str| -> Result<Option<usize>> {
            std::env::var(name).ok().map(|v| v.trim().parse().with_context(|| format!("{name}={v} is not a number"))).transpose()
        };
        if let (Some(id), Some(n)) = (var("SLURM_ARRAY_TASK_ID")?, var("SLURM_ARRAY_TASK_COUNT")?) {
            let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count_from = count.map_or(format!("SLURM_ARRAY_TASK_COUNT={n}"), |c| format!("--shards {c}"));
            let source = || format!("SLURM_ARRAY_TASK_ID={id} (SLURM_ARRAY_TASK_MIN={min}) with {count_from}");
            if id < min {
                bail!("{}: the task id is below the array's first id", source());
            }
            return Self::checked(id - min, count.unwrap_or(n), source).map(Some);
        }
        match (var("JOB_COMPLETION_INDEX")?, count) {
            (Some(i), Some(n)) => Self::checked(i, n, || format!("JOB_COMPLETION_INDEX={i} with --shards {n}")).map(Some),
            (Some(_), None) => bail!("JOB_COMPLETION_INDEX is set: give the number of shards with --shards N"),
            (None, Some(n)) => bail!("--shards {n} needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) to pick this shard; by hand, give --shard K/{n}"),
            (None, None) => Ok(None),
        }
    }

    pub fn units(&self, total: usize) -> std::ops::Range<usize> {
        // In u128: index × total overflows usize for a huge --shards.
        let at = |k: usize| (k as u128 * total as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The shard's results directory inside the run's.
    pub fn dir_name(&self) -> String {
        format!("shard-{:04}-of-{:04}", self.index, self.count)
    }

    /// Whether `name` is a shard's directory name.
    pub fn is_dir_name(name: &str) -> bool {
        let parse = |n: &str| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit());
        name.strip_prefix("shard-").and_then(|r| r.split_once("-of-")).is_some_and(|(k, n)| parse(k) && parse(n))
    }

    /// Whether `dir` is a run directory holding shard directories (and no run of its own).
    pub fn is_parent(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| e.file_name().to_str().is_some_and(Self::is_dir_name))
    }
}

/// `merge`'s sources: shard directories as given, or the shard directories inside one run
/// directory (in order); with the merged run's default place (that run directory).
pub fn shards_of(sources: &[PathBuf]) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    match sources {
        [dir] if Shard::is_parent(dir) => {
            let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(Shard::is_dir_name))
                .collect();
            shards.sort();
            Ok((shards, Some(dir.clone())))
        }
        [] => bail!("give the shard directories, or the run directory holding them"),
        _ => Ok((sources.to_vec(), None)),
    }
}
