//! Criterion benchmarks, one module per area. Run: `cargo bench --bench main`.

use criterion::{criterion_group, criterion_main};

mod admission;
mod engine;
mod redis_client;

criterion_group!(
    benches,
    admission::rejections,
    engine::reserve,
    redis_client::connections
);
criterion_main!(benches);
