//! patchbay: activation patching and circuit discovery on decoder-only transformers (GPT-2,
//! Llama 3, Qwen2/2.5/3, Pythia, Gemma 2), every patched run of many prompt pairs stacked into
//! one batch per forward pass, results streamed to .npy.
//!
//! Pipeline: `data` (pairs) → `tokenizer` → `engine::plan` (patch rows) → `engine::run` (model
//! forward with patch sites, `model`) → `results` (.npy + manifest, one transaction; `jobs::sweep`
//! orchestrates a whole run, `jobs::verify` rechecks some of its rows) → `analysis`. Beside it,
//! `circuits` reads the model's insides directly (attention patterns, logit attribution), and `generate` decodes
//! text and scores its perplexity. `jobs` is the front door: a model loaded once and one job
//! function per capability, which the CLI (`cli`) and the Python package call. `limits` bounds the
//! counts users and files give, for every layer.
pub mod analysis;
pub mod backend;
pub mod circuits;
pub mod cli;
pub mod data;
pub mod engine;
pub mod generate;
pub mod jobs;
pub mod limits;
pub mod model;
pub mod results;
pub mod tokenizer;
