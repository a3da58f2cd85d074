//! The patching engine: which patched runs exist (`plan`) and running them batched (`run`).
pub mod metric;
pub mod plan;
pub mod run;

pub use metric::Metric;
pub use plan::{Layout, PatchSite, Row, Runs};
pub use run::{Engine, PairResult};
