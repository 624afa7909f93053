//! What turning a request away costs at each admission layer, in the order
//! the request path meets them (ARCHITECTURE.md): each case runs every check up to
//! and including the one that refuses, as a request would.
//!
//! - `ip`: the per-address bucket, before anything is parsed;
//! - `user`: plus the token (remembered after its first verification) and
//!   the per-shopper bucket;
//! - `round_state`: plus the body, the current round and the sold-out mark;
//! - `global`: plus the in-flight cap and the global bucket, the last stop
//!   before the engine.
//!
//! HTTP parsing and the socket are the same for every layer and are left
//! out; `loadtest/run soldout` measures a whole refused request over HTTP.

use std::net::IpAddr;

use criterion::{BenchmarkId, Criterion, Throughput};
use governor::clock::FakeRelativeClock;
use jiff::Timestamp;

use dropgate::admission::Admission;
use dropgate::auth::{mint, TokenVerifier};
use dropgate::config::Limits;
use dropgate::domain::UserId;
use dropgate::sold_out::SoldOutMarks;

use crate::fixtures::{bench_drop, ReserveBody, BODY, SECRET};

/// Limits where one layer is exhausted and the ones before it are wide open.
fn limits(ip: u32, user: u32, global: u32) -> Limits {
    Limits {
        global_rps: global,
        global_burst: global,
        per_user_rps: user,
        per_user_burst: user,
        per_ip_rps: ip,
        per_ip_burst: ip,
        max_in_flight: 1_000_000,
    }
}

pub fn rejections(c: &mut Criterion) {
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let verifier = TokenVerifier::new(SECRET);
    let user = UserId::parse("shopper-1").unwrap();
    let header = format!("Bearer {}", mint(SECRET, &user, 3600, false));
    let the_drop = bench_drop();
    let marks = SoldOutMarks::default();
    let round = the_drop.round_at(Timestamp::now());
    marks.mark(&round.id, "sku");
    const WIDE: u32 = 10_000_000;

    let mut group = c.benchmark_group("rejection");
    group.throughput(Throughput::Elements(1));

    // Refusing buckets run on a clock that never moves, so they stay empty
    // however long criterion runs; passing ones are wide and real.
    let exhausted = |l: Limits| Admission::with_clock(l, FakeRelativeClock::default());
    let open = Admission::new(limits(WIDE, WIDE, WIDE));

    let by_ip = exhausted(limits(1, WIDE, WIDE));
    let _ = by_ip.check_ip(ip);
    group.bench_function(BenchmarkId::new("layer", "ip"), |b| {
        b.iter(|| by_ip.check_ip(ip).expect_err("refused"))
    });

    let by_user = exhausted(limits(WIDE, 1, WIDE));
    let _ = by_user.check_user(&user);
    group.bench_function(BenchmarkId::new("layer", "user"), |b| {
        b.iter(|| {
            open.check_ip(ip).unwrap();
            let shopper = verifier.verify(Some(&header)).unwrap();
            by_user.check_user(&shopper.user).expect_err("refused")
        })
    });

    // The checks a request passes before the round gate: address, token,
    // shopper; then its body and the current round.
    let up_to_the_gate = || {
        open.check_ip(ip).unwrap();
        let shopper = verifier.verify(Some(&header)).unwrap();
        open.check_user(&shopper.user).unwrap();
        let body: ReserveBody = serde_json::from_slice(BODY).unwrap();
        (the_drop.round_at(Timestamp::now()), body.sku)
    };

    group.bench_function(BenchmarkId::new("layer", "round_state"), |b| {
        b.iter(|| {
            let (round, sku) = up_to_the_gate();
            // Every 250 ms one request rechecks with the engine, which
            // says sold out again; the mark is renewed as it would be.
            if !marks.refuses(&round.id, &sku) {
                marks.mark(&round.id, &sku);
            }
        })
    });

    let by_global = exhausted(limits(WIDE, WIDE, 1));
    drop(by_global.enter_engine());
    let unmarked = SoldOutMarks::default();
    group.bench_function(BenchmarkId::new("layer", "global"), |b| {
        b.iter(|| {
            let (round, sku) = up_to_the_gate();
            assert!(!unmarked.refuses(&round.id, &sku));
            by_global.enter_engine().err().expect("refused")
        })
    });

    group.finish();
}
