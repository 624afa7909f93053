//! Criterion benchmarks, one module per area. Run: `cargo bench --bench main`.

use criterion::{criterion_group, criterion_main};

mod admission;
mod engine;
mod fixtures;
mod redis_client;
mod request;

criterion_group!(
    benches,
    admission::rejections,
    engine::reserve,
    redis_client::connections,
    request::steps
);
criterion_main!(benches);
