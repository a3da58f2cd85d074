//! The model: a family-neutral description (`ModelConfig`), the generic decoder it configures
//! (`Transformer`), one file per family mapping HF's files onto both, weights, the hub, and the
//! forward pass's activation sites over ragged batches.
pub mod batch;
pub mod config;
pub mod families;
pub mod hub;
pub mod sites;
pub mod transformer;
pub mod weights;

pub use batch::Batch;
pub use config::ModelConfig;
pub use sites::{hook_segments, Cache, Hooks, NoHooks, Qkv, Site, SiteKind};
pub use transformer::Transformer;
