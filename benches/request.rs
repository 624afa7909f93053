//! The steps of a reserve request before the engine: token verification
//! (full and remembered), the body, the current round (computed and
//! cached), and pricing.

use criterion::{black_box, BatchSize, BenchmarkId, Criterion, Throughput};
use jiff::Timestamp;

use dropgate::auth::{mint, TokenVerifier};
use dropgate::domain::{Quantity, UserId};

use crate::fixtures::{bench_drop, ReserveBody, BODY, SECRET};

pub fn steps(c: &mut Criterion) {
    let header = format!(
        "Bearer {}",
        mint(SECRET, &UserId::parse("shopper-1").unwrap(), 3600, false)
    );
    let the_drop = bench_drop();
    let sku = the_drop.sku("sku").expect("the SKU").clone();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));

    group.bench_function(BenchmarkId::new("jwt", "full"), |b| {
        b.iter_batched(
            || TokenVerifier::new(SECRET),
            |fresh| fresh.verify(Some(&header)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let remembering = TokenVerifier::new(SECRET);
    group.bench_function(BenchmarkId::new("jwt", "remembered"), |b| {
        b.iter(|| remembering.verify(Some(&header)).unwrap())
    });

    group.bench_function(BenchmarkId::new("parse", "reserve_body"), |b| {
        b.iter(|| serde_json::from_slice::<ReserveBody>(black_box(BODY)).unwrap())
    });

    let now = Timestamp::now();
    group.bench_function(BenchmarkId::new("round", "computed"), |b| {
        b.iter(|| the_drop.timing.round_at(&the_drop.id, black_box(now)))
    });
    group.bench_function(BenchmarkId::new("round", "cached"), |b| {
        b.iter(|| the_drop.round_at(black_box(now)))
    });

    let two = Quantity::new(2).unwrap();
    group.bench_function(BenchmarkId::new("pricing", "charges"), |b| {
        b.iter(|| sku.charges(black_box(two)))
    });
    group.finish();
}
