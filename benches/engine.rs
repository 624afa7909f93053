//! Each engine's reserve: durable wins uncontended and contended, and the
//! decision alone (a refusal). Embedded: each win committed to a real SQLite
//! file. Redis: a redis-server started here with `appendfsync always`, the
//! script's answer being the win (the order writer is not running).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use jiff::SignedDuration;
use rust_decimal::Decimal;

use dropgate::catalog::{Catalog, LiveCatalog};
use dropgate::clock::{Clock, SystemClock};
use dropgate::domain::{DropId, OrderId, Quantity, SkuId, UserId};
use dropgate::engine::{
    EmbeddedEngine, InventoryEngine, Redis, RedisEngine, Refused, ReserveAttempt, Reserved,
};
use dropgate::money::Currency;
use dropgate::order::{Order, OrderStatus};
use dropgate::store::OrderStore;

use crate::fixtures::bench_drop;
use crate::redis_client::start_redis_with;

fn attempt(user: &str, clock: &dyn Clock) -> ReserveAttempt {
    let now = clock.now();
    ReserveAttempt {
        order: Order {
            id: OrderId::generate(),
            drop_id: DropId::parse("bench").unwrap(),
            round_id: dropgate::domain::RoundId::parse("bench@20261127T020000Z").unwrap(),
            sku: SkuId::parse("sku").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            user_id: UserId::parse(user).unwrap(),
            status: OrderStatus::PendingPayment,
            unit_price: Decimal::new(199900, 2),
            amount_due: Decimal::new(199900, 2),
            deposit_due: Decimal::new(199900, 2),
            currency: Currency::Cny,
            created_at: now,
            pay_by: now + SignedDuration::from_mins(15),
            pricing: dropgate::pricing::Pricing::at_list(Decimal::new(199900, 2)),
            address: None,
            payment_method: None,
            installments: None,
            payment_id: None,
            balance_due: None,
            balance_from: None,
            balance_until: None,
            paid_amount: None,
            coupon_id: None,
            after: Default::default(),
        },
        opens_at: now - SignedDuration::from_hours(1),
        closes_at: now + SignedDuration::from_hours(24),
        allocated: u64::MAX / 2,
        per_user_limit: 1,
        idempotency: None,
    }
}

struct Bench {
    rt: tokio::runtime::Runtime,
    engine: Arc<dyn InventoryEngine>,
    clock: Arc<SystemClock>,
    next_user: AtomicU64,
    _dir: tempfile::TempDir,
}

/// The drop the attempts belong to, for the Redis engine's round set-up.
fn catalog() -> LiveCatalog {
    LiveCatalog::new(Catalog::new(vec![dropgate::catalog::Drop::clone(
        &bench_drop(),
    )]))
}

impl Bench {
    fn new(redis_url: Option<&str>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = OrderStore::open_sqlite(&dir.path().join("orders.db")).unwrap();
        let clock = Arc::new(SystemClock);
        let engine: Arc<dyn InventoryEngine> = match redis_url {
            None => Arc::new(
                rt.block_on(EmbeddedEngine::open(store, clock.clone(), Vec::new()))
                    .unwrap(),
            ),
            Some(url) => Arc::new(
                rt.block_on(async {
                    let redis = Redis::open(url).await?;
                    RedisEngine::open(&redis, catalog(), store, Default::default()).await
                })
                .unwrap(),
            ),
        };
        Self {
            rt,
            engine,
            clock,
            next_user: AtomicU64::new(0),
            _dir: dir,
        }
    }

    fn fresh_user(&self) -> String {
        format!("u{}", self.next_user.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `iters` winning reserves from `tasks` concurrent tasks.
    async fn win_many(&self, iters: u64, tasks: u64) -> Duration {
        let per_task = iters.div_ceil(tasks);
        let users: Vec<Vec<String>> = (0..tasks)
            .map(|_| (0..per_task).map(|_| self.fresh_user()).collect())
            .collect();
        let start = Instant::now();
        let mut handles = Vec::new();
        for batch in users {
            let engine = self.engine.clone();
            let clock = self.clock.clone();
            handles.push(tokio::spawn(async move {
                for user in batch {
                    let outcome = engine
                        .reserve(attempt(&user, clock.as_ref()))
                        .await
                        .unwrap();
                    assert!(matches!(outcome, Ok(Reserved::Won(_))));
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed()
    }
}

pub fn reserve(c: &mut Criterion) {
    reserve_with(c, "engine_reserve", &Bench::new(None));
    let (_redis, url) = start_redis_with("yes");
    reserve_with(c, "redis_engine_reserve", &Bench::new(Some(&url)));
}

fn reserve_with(c: &mut Criterion, name: &str, bench: &Bench) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 64, 512] {
        group.bench_with_input(
            BenchmarkId::new("durable_win", format!("{tasks}_concurrent")),
            &tasks,
            |b, &tasks| {
                b.to_async(&bench.rt)
                    .iter_custom(|iters| bench.win_many(iters, tasks));
            },
        );
    }

    // A shopper at the limit: the whole decision under the round lock, no disk.
    let holder = bench.fresh_user();
    let first = bench
        .rt
        .block_on(bench.engine.reserve(attempt(&holder, bench.clock.as_ref())))
        .unwrap();
    assert!(matches!(first, Ok(Reserved::Won(_))));
    group.bench_function(BenchmarkId::new("refused_at_limit", "uncontended"), |b| {
        b.to_async(&bench.rt).iter(|| async {
            let outcome = bench
                .engine
                .reserve(attempt(&holder, bench.clock.as_ref()))
                .await
                .unwrap();
            assert!(matches!(outcome, Err(Refused::LimitExceeded { .. })));
        });
    });
    group.finish();
}
