//! GPT-2 family models: configuration, weights, and the forward pass with activation sites over
//! ragged batches.
pub mod batch;
pub mod config;
pub mod gpt2;
pub mod hub;
pub mod sites;
pub mod weights;

pub use batch::Batch;
pub use config::Gpt2Config;
pub use gpt2::Gpt2;
pub use sites::{hook_segments, Cache, Hooks, NoHooks, Site, SiteKind};
