//! Reading circuits off the model: read-only passes over the `Cache` (attention patterns, the
//! logit lens and direct logit attribution), beside the patching engine.
pub mod logit_attribution;
pub mod patterns;
pub mod viewer;
