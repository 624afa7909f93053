//! Criterion benchmarks, one module per area. Run: `cargo bench --bench main`.

use criterion::{criterion_group, criterion_main};

mod engine;

criterion_group!(benches, engine::reserve);
criterion_main!(benches);
