//! One conformance suite, run against both engines: the window, limits,
//! stock, idempotency, release exactly once, single fate, and a storm whose
//! invariants are checked from the database; each engine with each order
//! store (SQLite, PostgreSQL). Each test starts the servers it needs.

use std::collections::HashSet;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use dropgate::domain::{DropId, IdempotencyKey, OrderId, Quantity, SkuId, UserId};
use dropgate::engine::{Refused, ReserveAttempt, Reserved};
use dropgate::money::Currency;
use dropgate::order::{Order, OrderStatus};
use dropgate::EngineChoice;

use crate::support::*;

/// What a test runs against: an engine and an order store; holds the
/// servers it needs alive while it runs.
pub struct Backend {
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
    postgres: Option<PostgresServer>,
}

impl Backend {
    pub fn embedded() -> Self {
        Self {
            redis: None,
            cluster: None,
            postgres: None,
        }
    }

    pub fn redis() -> Self {
        Self {
            redis: Some(RedisServer::start()),
            ..Self::embedded()
        }
    }

    /// A three-master Redis Cluster (no replicas: the failover tests have them).
    pub fn redis_cluster() -> Self {
        Self {
            cluster: Some(RedisCluster::start(3, 0)),
            ..Self::embedded()
        }
    }

    pub fn redis_postgres() -> Self {
        Self {
            redis: Some(RedisServer::start()),
            postgres: Some(PostgresServer::start()),
            ..Self::embedded()
        }
    }

    pub fn embedded_postgres() -> Self {
        Self {
            postgres: Some(PostgresServer::start()),
            ..Self::embedded()
        }
    }

    fn choice(&self) -> EngineChoice {
        if let Some(cluster) = &self.cluster {
            return cluster.engine();
        }
        self.redis
            .as_ref()
            .map_or(EngineChoice::Embedded, RedisServer::engine)
    }

    /// A dropgate on this backend, serving `config` with the clock at `now`.
    pub async fn start(&self, config: &str, now: Timestamp) -> TestServer {
        match &self.postgres {
            Some(pg) => {
                TestServer::start_with_database(config, &pg.database(), now, &self.choice()).await
            }
            None => TestServer::start_with_engine(config, now, &self.choice()).await,
        }
    }
}

const DROP: &str = "conf";
const SKU: &str = "sku";

async fn server(backend: &Backend, stock: i64, limit: i64) -> TestServer {
    let now = Timestamp::now();
    let config =
        config_head("") + &window_drop(DROP, SKU, stock, limit, now - hours(1), now + hours(1));
    backend.start(&config, now).await
}

/// Stops the server (draining Redis's winners into the store) and opens its database.
async fn drained_db(server: &mut TestServer) -> Audit {
    server.stop().await;
    server.audit().await
}

fn attempt(user: &str, opens_at: Timestamp, closes_at: Timestamp) -> ReserveAttempt {
    attempt_for(DROP, user, opens_at, closes_at)
}

/// One unit of SKU `sku` in a test round of `drop`, for the engine directly.
pub fn attempt_for(
    drop: &str,
    user: &str,
    opens_at: Timestamp,
    closes_at: Timestamp,
) -> ReserveAttempt {
    let now = Timestamp::now();
    let round = format!("{drop}@window-test");
    ReserveAttempt {
        order: Order {
            id: OrderId::generate(),
            drop_id: DropId::parse(drop).unwrap(),
            round_id: dropgate::domain::RoundId::parse(&round).unwrap(),
            sku: SkuId::parse(SKU).unwrap(),
            quantity: Quantity::new(1).unwrap(),
            user_id: UserId::parse(user).unwrap(),
            status: OrderStatus::PendingPayment,
            unit_price: "1999.00".parse().unwrap(),
            amount_due: "1999.00".parse().unwrap(),
            deposit_due: "1999.00".parse().unwrap(),
            currency: Currency::Cny,
            created_at: now,
            pay_by: now + SignedDuration::from_mins(15),
            pricing: dropgate::pricing::Pricing::at_list("1999.00".parse().unwrap()),
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
        opens_at,
        closes_at,
        allocated: 10,
        per_user_limit: 2,
        idempotency: None::<(IdempotencyKey, String)>,
    }
}

async fn the_engine_holds_the_window_by_its_own_clock(backend: Backend) {
    let s = server(&backend, 10, 2).await;
    let now = Timestamp::now();
    let early = attempt("alice", now + hours(1), now + hours(2));
    assert!(matches!(
        s.engine().reserve(early).await.unwrap(),
        Err(Refused::NotOpen { .. })
    ));
    let late = attempt("alice", now - hours(2), now - hours(1));
    assert_eq!(
        s.engine().reserve(late).await.unwrap(),
        Err(Refused::Closed)
    );
    let open = attempt("alice", now - hours(1), now + hours(1));
    assert!(matches!(
        s.engine().reserve(open).await.unwrap(),
        Ok(Reserved::Won(_))
    ));
}

async fn a_shopper_gets_no_more_than_the_limit(backend: Backend) {
    let s = server(&backend, 10, 2).await;
    assert_eq!(s.http.reserve(DROP, SKU, 2, "alice").await.status, 201);
    let over = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!((over.status, over.error()), (409, "limit_exceeded"));
    assert_eq!(over.body["limit"], json!(2));
    assert_eq!(
        s.http.reserve(DROP, SKU, 3, "bob").await.error(),
        "limit_exceeded"
    );
    assert_eq!(s.http.remaining(DROP).await, 8);
}

async fn stock_runs_out_exactly(backend: Backend) {
    let s = server(&backend, 3, 2).await;
    assert_eq!(s.http.reserve(DROP, SKU, 2, "alice").await.status, 201);
    assert_eq!(
        s.http.reserve(DROP, SKU, 2, "bob").await.error(),
        "sold_out"
    );
    assert_eq!(s.http.reserve(DROP, SKU, 1, "bob").await.status, 201);
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "carol").await.error(),
        "sold_out"
    );
    assert_eq!(s.http.remaining(DROP).await, 0);
}

async fn a_key_replays_its_order_and_refuses_another_body(backend: Backend) {
    let mut s = server(&backend, 10, 2).await;
    let body = r#"{"sku": "sku", "quantity": 1}"#;
    let first = s.http.reserve_keyed(DROP, "alice", "tap", body).await;
    assert_eq!(first.status, 201);
    let replay = s.http.reserve_keyed(DROP, "alice", "tap", body).await;
    assert_eq!((replay.status, &replay.body), (200, &first.body));
    let other = s
        .http
        .reserve_keyed(DROP, "alice", "tap", r#"{"sku": "sku", "quantity": 2}"#)
        .await;
    assert_eq!((other.status, other.error()), (422, "idempotency_mismatch"));
    assert_eq!(s.http.remaining(DROP).await, 9);
    let db = drained_db(&mut s).await;
    assert_eq!(db.order_ids().await.len(), 1);
}

async fn a_won_order_is_readable_at_once(backend: Backend) {
    let s = server(&backend, 10, 2).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    let id = won.body["id"].as_str().unwrap();
    let read = s
        .http
        .get(&format!("/api/v1/orders/{id}"), Some(&token("alice")))
        .await;
    assert_eq!((read.status, &read.body), (200, &won.body));
    let other = s
        .http
        .get(&format!("/api/v1/orders/{id}"), Some(&token("bob")))
        .await;
    assert_eq!(other.status, 404);
}

async fn cancelling_releases_the_units_once(backend: Backend) {
    let s = Arc::new(server(&backend, 2, 2).await);
    let id = s.http.reserve(DROP, SKU, 2, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cancels = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        let id = id.clone();
        cancels.push(tokio::spawn(async move {
            s.http.cancel(&id, "alice").await.status
        }));
    }
    let mut statuses = Vec::new();
    for cancel in cancels {
        statuses.push(cancel.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(s.http.remaining(DROP).await, 2);
    // Releasing again at the engine gives nothing back either.
    let order: Order = serde_json::from_value(
        s.http
            .get(&format!("/api/v1/orders/{id}"), Some(&token("alice")))
            .await
            .body,
    )
    .unwrap();
    assert!(!s.engine().release(&order).await.unwrap());
    assert_eq!(s.http.remaining(DROP).await, 2);
}

async fn an_order_has_one_fate(backend: Backend) {
    let mut s = server(&backend, 5, 2).await;
    let id = s.http.reserve(DROP, SKU, 1, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let notice =
        json!({"order_id": id, "transaction_id": "tx-1", "amount": "1999.00", "method": "alipay"})
            .to_string();
    let paid = s.http.notify_payment(&notice).await;
    assert_eq!(paid.body["status"], json!("paid"), "{:?}", paid.body);
    assert_eq!(s.http.cancel(&id, "alice").await.error(), "not_cancellable");
    s.clock.advance(SignedDuration::from_hours(1));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        s.http.remaining(DROP).await,
        4,
        "a paid order keeps its stock"
    );
    let db = drained_db(&mut s).await;
    assert_eq!(db.status_of(&id).await, "paid");
}

async fn a_storm_sells_exactly_the_stock(backend: Backend) {
    let mut s = server(&backend, 100, 2).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(500));
    let mut tasks = Vec::new();
    for user in 0..1000 {
        for _ in 0..2 {
            let http = s.http.clone();
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                http.reserve(DROP, SKU, 1, &format!("user-{user}")).await
            }));
        }
    }
    let mut won = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            201 => won.push(reply.body["id"].as_str().unwrap().to_owned()),
            409 => assert!(["sold_out", "limit_exceeded"].contains(&reply.error())),
            other => panic!("unexpected {other} {:?}", reply.body),
        }
    }
    assert_eq!(won.len(), 100);
    let db = drained_db(&mut s).await;
    assert_eq!(db.live_units("conf@%").await, 100);
    assert!(db.max_units_per_user().await <= 2);
    let rows = db.order_ids().await;
    let unique: HashSet<&String> = won.iter().collect();
    assert_eq!(unique.len(), 100);
    assert!(won.iter().all(|id| rows.contains(id)), "every 201 is a row");
}

async fn a_cancel_puts_a_sold_out_sku_back_on_sale_at_once(backend: Backend) {
    let s = server(&backend, 1, 2).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(won.status, 201);
    // The first refusal comes from the engine and marks the SKU; the second from the mark.
    for _ in 0..2 {
        assert_eq!(
            s.http.reserve(DROP, SKU, 1, "bob").await.error(),
            "sold_out"
        );
    }
    let order = won.body["id"].as_str().unwrap();
    assert_eq!(s.http.cancel(order, "alice").await.status, 200);
    // Well inside the mark's recheck time: only clearing it lets this through.
    assert_eq!(s.http.reserve(DROP, SKU, 1, "carol").await.status, 201);
}

async fn an_expiry_puts_a_sold_out_sku_back_on_sale_within_the_bound(backend: Backend) {
    let s = server(&backend, 1, 2).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "bob").await.error(),
        "sold_out"
    );
    // The sweeper expires what the store holds; in Redis mode the writer stores it first.
    let audit = s.audit().await;
    let id = won.body["id"].as_str().unwrap();
    let stored = std::time::Instant::now();
    while audit.stored_status(id).await.is_none() {
        assert!(
            stored.elapsed() < std::time::Duration::from_secs(5),
            "order never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.clock.advance(SignedDuration::from_mins(16));
    let advanced = std::time::Instant::now();
    loop {
        let reply = s.http.reserve(DROP, SKU, 1, "carol").await;
        if reply.status == 201 {
            break;
        }
        assert_eq!(reply.error(), "sold_out");
        assert!(
            advanced.elapsed() < dropgate::sold_out::CLEAR_BOUND,
            "still sold out {:?} after the order expired",
            advanced.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(audit.status_of(id).await, "expired");
}

async fn a_restock_is_on_sale_at_once_and_counted(backend: Backend) {
    let s = server(&backend, 1, 2).await;
    assert_eq!(s.http.reserve(DROP, SKU, 1, "alice").await.status, 201);
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "bob").await.error(),
        "sold_out"
    );
    let restocked = s
        .http
        .admin(
            hyper::Method::POST,
            &format!("/admin/v1/drops/{DROP}/restock"),
            &format!(r#"{{"sku": "{SKU}", "units": 2}}"#),
        )
        .await;
    assert_eq!(restocked.status, 200, "{:?}", restocked.body);
    assert_eq!(
        restocked.body["stock"],
        json!({"allocated": 3, "remaining": 2, "sold": 1})
    );
    assert_eq!(s.http.reserve(DROP, SKU, 1, "bob").await.status, 201);
    assert_eq!(s.http.remaining(DROP).await, 1);
    // The stats count orders from the store, which the Redis writer fills shortly.
    let started = std::time::Instant::now();
    let stats = loop {
        let stats = s
            .http
            .admin(
                hyper::Method::GET,
                &format!("/admin/v1/drops/{DROP}/stats"),
                "",
            )
            .await;
        if stats.body["orders"]["pending_payment"] == json!(2) {
            break stats;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            stats.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        stats.body["skus"][SKU],
        json!({"allocated": 3, "remaining": 1, "sold": 2})
    );
    // Every status of the state machine is counted, zero included.
    let mut expected = serde_json::Map::new();
    for status in dropgate::order::OrderStatus::ALL {
        let n = if status == OrderStatus::PendingPayment {
            2
        } else {
            0
        };
        expected.insert(status.as_str().to_owned(), json!(n));
    }
    assert_eq!(stats.body["orders"], serde_json::Value::Object(expected));
    assert!(stats.body["round_id"]
        .as_str()
        .unwrap()
        .starts_with("conf@"));
}

/// Found by `loadtest/drop-day.js`: the sold-out mark answered a replay of
/// the winning request as sold out instead of returning its order.
async fn a_replay_of_the_last_win_returns_its_order_after_sell_out(backend: Backend) {
    let s = server(&backend, 1, 2).await;
    let body = format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#);
    let won = s
        .http
        .reserve_keyed(DROP, "alice", "last-unit", &body)
        .await;
    assert_eq!(won.status, 201);
    for _ in 0..2 {
        assert_eq!(
            s.http.reserve(DROP, SKU, 1, "bob").await.error(),
            "sold_out"
        );
    }
    let replay = s
        .http
        .reserve_keyed(DROP, "alice", "last-unit", &body)
        .await;
    assert_eq!(replay.status, 200, "{:?}", replay.body);
    assert_eq!(replay.body, won.body);
    let keyed_late = s.http.reserve_keyed(DROP, "carol", "late", &body).await;
    assert_eq!(keyed_late.error(), "sold_out");
}

/// A replay answers the order as it is now, not as it was created.
async fn a_replay_answers_the_order_as_it_is_now(backend: Backend) {
    let s = server(&backend, 10, 2).await;
    let body = format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#);
    let won = s.http.reserve_keyed(DROP, "alice", "tap", &body).await;
    assert_eq!(won.status, 201);
    let id = won.body["id"].as_str().unwrap();
    assert_eq!(s.http.cancel(id, "alice").await.status, 200);
    let replay = s.http.reserve_keyed(DROP, "alice", "tap", &body).await;
    assert_eq!(replay.status, 200, "{:?}", replay.body);
    assert_eq!(replay.body["id"], won.body["id"]);
    assert_eq!(replay.body["status"], json!("cancelled"));
}

/// A restock sent again with the same id (a retry after a 503) adds once.
async fn a_restock_sent_twice_with_one_id_adds_once(backend: Backend) {
    let s = server(&backend, 1, 2).await;
    let path = format!("/admin/v1/drops/{DROP}/restock");
    let body = format!(r#"{{"sku": "{SKU}", "units": 2, "restock_id": "r-1"}}"#);
    for _ in 0..3 {
        let restocked = s.http.admin(hyper::Method::POST, &path, &body).await;
        assert_eq!(restocked.status, 200, "{:?}", restocked.body);
        assert_eq!(restocked.body["stock"]["allocated"], json!(3));
    }
    assert_eq!(s.http.remaining(DROP).await, 3);
    let other = format!(r#"{{"sku": "{SKU}", "units": 1, "restock_id": "r-2"}}"#);
    let restocked = s.http.admin(hyper::Method::POST, &path, &other).await;
    assert_eq!(restocked.body["stock"]["allocated"], json!(4));
    assert_eq!(s.http.remaining(DROP).await, 4);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        conformance!(@backend embedded_sqlite, embedded, $($test),*);
        conformance!(@backend redis_sqlite, redis, $($test),*);
        conformance!(@backend redis_postgres, redis_postgres, $($test),*);
        conformance!(@backend embedded_postgres, embedded_postgres, $($test),*);
    };
    (@backend $module:ident, $backend:ident, $($test:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::Backend::$backend()).await
                }
            )*
        }
    };
}

pub(crate) use conformance;

// The same suite on a three-master Redis Cluster, the third Redis topology.
macro_rules! on_a_cluster {
    ($($test:ident),* $(,)?) => {
        conformance!(@backend redis_cluster_sqlite, redis_cluster, $($test),*);
        conformance!($($test),*);
    };
}

on_a_cluster!(
    the_engine_holds_the_window_by_its_own_clock,
    a_shopper_gets_no_more_than_the_limit,
    stock_runs_out_exactly,
    a_key_replays_its_order_and_refuses_another_body,
    a_won_order_is_readable_at_once,
    cancelling_releases_the_units_once,
    an_order_has_one_fate,
    a_storm_sells_exactly_the_stock,
    a_cancel_puts_a_sold_out_sku_back_on_sale_at_once,
    an_expiry_puts_a_sold_out_sku_back_on_sale_within_the_bound,
    a_restock_is_on_sale_at_once_and_counted,
    a_replay_of_the_last_win_returns_its_order_after_sell_out,
    a_replay_answers_the_order_as_it_is_now,
    a_restock_sent_twice_with_one_id_adds_once,
);
