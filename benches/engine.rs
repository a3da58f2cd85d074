//! CPU benchmark of a patching sweep, reuse vs no-reuse: `cargo bench --bench engine`.
//! A small random model (6 layers, d=256, 4 heads, 4096-token vocabulary) keeps a sample near a second.
use patchbay::backend::Cpu;
use criterion::{criterion_group, criterion_main, Criterion};
use patchbay::data::random_pairs;
use patchbay::engine::{Engine, Layout, Metric, PatchSite};
use patchbay::model::{Transformer, ModelConfig};

fn sweep(c: &mut Criterion) {
    type B = Cpu;
    let device = Default::default();
    let config = ModelConfig { layers: 6, heads: 4, kv_heads: 4, d_model: 256, d_head: 64, d_mlp: 1024, context: 64, vocab: 4096, ..ModelConfig::named("gpt2").unwrap() };
    let model = Transformer::<B>::random(config.clone(), 0, &device);
    let (pairs, tokens) = (2, 16);
    let pairs = random_pairs(pairs, tokens, config.vocab, 1, 1);
    let layout = Layout::new(config.layers, config.heads, tokens);
    let sites = [PatchSite::ResidPre, PatchSite::ZAllPos];
    let mut group = c.benchmark_group("6 layers d256, 2 pairs x 16 tokens, resid_pre + z_all_pos");
    group.sample_size(10);
    for reuse in [true, false] {
        let engine = Engine { model: &model, reuse, max_rows: 1024, skip: true, metric: Metric::LogitDiff, replacement: Default::default() };
        group.bench_function(if reuse { "reuse" } else { "no-reuse" }, |b| {
            b.iter(|| engine.run(&pairs, &sites, &layout, &mut |_| Ok(())).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, sweep);
criterion_main!(benches);
