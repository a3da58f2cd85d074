//! Every integration test, as modules of one binary: one build and link instead of eight, and one
//! process, so that each wgpu kernel is compiled once for all of them (lavapipe keeps no pipeline
//! cache between processes: a process pays about 0.6 s a kernel). Run one file's tests with a
//! filter: `cargo test --test suite engine_fidelity::`.
mod common;

mod architecture;
mod circuits;
mod cli;
mod datasets;
mod docs;
mod engine_fidelity;
mod families;
mod generate;
mod kernels;
mod model_fidelity;
mod results_dir;
mod tokenizer;
