//! The steps of a reserve request before the engine: token verification
//! (full and remembered), the body, the current round (computed and
//! cached), and pricing.

use criterion::{black_box, BatchSize, BenchmarkId, Criterion, Throughput};
use jiff::Timestamp;

use dropgate::auth::{mint, TokenVerifier};
use dropgate::domain::UserId;
use dropgate::pricing::price_at_win;

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

    // The price locked at a win: with no promotion, and with a festival
    // percentage, a student one and a 满减 live (the reserve path's cost).
    let promotions: Vec<_> = [
        r#"{"id": "618", "kind": "percent_off", "percent": 5}"#,
        r#"{"id": "student", "kind": "student", "percent": 10}"#,
        r#"{"id": "every-1000", "kind": "full_reduction", "threshold": "1000.00", "off": "100.00", "repeat": true}"#,
    ]
    .iter()
    .map(|json| dropgate::promotions::from_json(json.as_bytes()).unwrap().1)
    .collect();
    for (name, live) in [("none", &promotions[..0]), ("three", &promotions[..])] {
        group.bench_function(BenchmarkId::new("price_at_win", name), |b| {
            b.iter(|| price_at_win(sku.price, black_box(2), &sku.id, true, live, now))
        });
    }
    group.finish();
}
