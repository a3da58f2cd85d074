//! GPT-2 family models: configuration, weights, and the forward pass with activation sites.
pub mod config;
pub mod gpt2;
pub mod sites;
pub mod weights;

pub use config::Gpt2Config;
pub use gpt2::{Batch, Gpt2};
pub use sites::{Cache, Hooks, NoHooks, Site, SiteKind};
