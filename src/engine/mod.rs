//! The patching engine: the sites a run patches (`site`), which patched runs exist and how the
//! results are laid out (`plan`), what a batch may hold (`budget`), running them batched (`run`),
//! estimating them all at once by attribution patching (`attribution`), what a patch writes into
//! which run (`ablation`), the edge graph circuit discovery scores (`graph`), and circuits of it
//! evaluated (`circuit`).
pub mod ablation;
pub mod attribution;
pub mod budget;
pub mod circuit;
pub mod graph;
pub mod metric;
pub mod plan;
pub mod run;
pub mod site;

pub use ablation::{Ablation, Direction, Means, Noising, Replacement};
pub use attribution::Attribution;
pub use circuit::CircuitEval;
pub use graph::{Edge, Graph, Node};
pub use metric::Metric;
pub use plan::{Layout, PairResult, Row, Runs};
pub use site::PatchSite;
pub use run::{EdgeBlocks, Engine};

use crate::data::TokenizedPair;
use serde::{Deserialize, Serialize};

/// How a run's patched results are computed (`run --method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// One (shortened) forward pass per patched run, batched.
    #[default]
    Exact,
    /// The linear estimate of every patched run from two forward passes and one backward pass
    /// per group of pairs (attribution patching; on edges, EAP).
    #[value(alias = "eap")]
    #[serde(alias = "eap")]
    Attribution,
    /// Attribution with integrated gradients over the token embeddings (EAP-IG's default
    /// variant): the gradient averaged over `ig_steps` interpolated runs.
    #[value(name = "eap-ig")]
    #[serde(rename = "eap-ig")]
    EapIg,
}

impl Method {
    /// The name `--method` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Attribution => "attribution",
            Self::EapIg => "eap-ig",
        }
    }
}

/// EAP-IG's step count when none is given (`--ig-steps`).
pub const DEFAULT_IG_STEPS: usize = 5;

/// Computes every row of `sites` for `pairs` (one length): exactly, or by attribution.
pub trait RowEngine {
    /// `progress` is told the skipped runs, then how many runs each finished batch held; an
    /// error from it stops the run.
    fn run(&self, pairs: &[TokenizedPair], sites: &[PatchSite], layout: &Layout, progress: &mut dyn FnMut(Runs) -> anyhow::Result<()>) -> anyhow::Result<Vec<PairResult>>;

    /// One patched run's value for `pair` alone (`row.pair` is ignored): what `verify` rechecks.
    fn one(&self, pair: TokenizedPair, row: Row, layout: &Layout) -> anyhow::Result<f32> {
        Ok(self.run(&[pair], &[row.site], layout, &mut |_| Ok(()))?[0].sites[0][row.out])
    }
}
