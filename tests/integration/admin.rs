//! The operators' API beyond limits: drops created while serving (kept
//! across restarts, seen by other instances), restocks kept across
//! restarts, and sold-out marks clearing across two instances.

use std::time::{Duration, Instant};

use hyper::Method;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use dropgate::sold_out::CLEAR_BOUND;
use dropgate::upkeep::DROP_PICKUP;

use crate::support::*;

const DROP: &str = "base";
const SKU: &str = "sku";

fn new_drop_json(id: &str, opens: Timestamp, closes: Timestamp) -> String {
    json!({
        "id": id,
        "product": "Redmi K90",
        "per_user_limit": 1,
        "pay_within": "10m",
        "opens_at": opens.to_string(),
        "closes_at": closes.to_string(),
        "skus": [{"id": "k90-black", "name": "12GB+256GB Black", "price": "2599.00", "stock": 3}]
    })
    .to_string()
}

#[tokio::test]
async fn an_operator_creates_a_drop_that_survives_a_restart() {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut s = TestServer::start_at(&config, &db, now).await;

    let body = new_drop_json("k90", now - hours(1), now + hours(1));
    let created = s.http.admin(Method::POST, "/admin/v1/drops", &body).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["id"], "k90");
    assert_eq!(created.body["skus"][0]["remaining"], 3);
    assert_eq!(
        s.http.reserve("k90", "k90-black", 1, "alice").await.status,
        201
    );
    let again = s.http.admin(Method::POST, "/admin/v1/drops", &body).await;
    assert_eq!((again.status, again.error()), (409, "drop_exists"));
    let config_drop = new_drop_json(DROP, now, now + hours(1));
    let clash = s
        .http
        .admin(Method::POST, "/admin/v1/drops", &config_drop)
        .await;
    assert_eq!((clash.status, clash.error()), (409, "drop_exists"));

    for bad in [
        "{}".to_owned(),
        "not json".to_owned(),
        body.replace("2599.00", "25.999"),
        body.replace(r#""stock":3"#, r#""stock":-1"#),
        new_drop_json("late", now + hours(2), now + hours(1)),
        body.replace("\"k90\"", "\"has space\""),
    ] {
        let refused = s.http.admin(Method::POST, "/admin/v1/drops", &bad).await;
        assert_eq!(
            (refused.status, refused.error()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let drops = s.http.get("/api/v1/drops", None).await;
    assert_eq!(drops.body["drops"].as_array().unwrap().len(), 2);

    s.stop().await;
    let s = TestServer::start_at(&config, &db, now).await;
    let reloaded = s.http.get("/api/v1/drops/k90", None).await;
    assert_eq!(reloaded.status, 200);
    assert_eq!(
        reloaded.body["skus"][0]["remaining"], 2,
        "the sale went on where it was"
    );
    assert_eq!(
        s.http.reserve("k90", "k90-black", 1, "alice").await.error(),
        "limit_exceeded"
    );
}

#[tokio::test]
async fn a_restock_survives_a_restart_of_the_embedded_engine() {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 1, 2, now - hours(1), now + hours(1));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut s = TestServer::start_at(&config, &db, now).await;
    assert_eq!(s.http.reserve(DROP, SKU, 1, "a").await.status, 201);
    let path = format!("/admin/v1/drops/{DROP}/restock");
    for bad in [
        r#"{"sku": "sku", "units": 0}"#,
        r#"{"sku": "sku", "units": -3}"#,
        r#"{"sku": "sku", "units": 1e9}"#,
        r#"{"sku": "sku"}"#,
    ] {
        let refused = s.http.admin(Method::POST, &path, bad).await;
        assert_eq!(
            (refused.status, refused.error()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let unknown = s
        .http
        .admin(Method::POST, &path, r#"{"sku": "nope", "units": 1}"#)
        .await;
    assert_eq!(unknown.status, 404);
    let ok = s
        .http
        .admin(Method::POST, &path, r#"{"sku": "sku", "units": 4}"#)
        .await;
    assert_eq!(ok.status, 200);
    s.stop().await;

    let s = TestServer::start_at(&config, &db, now).await;
    assert_eq!(s.http.remaining(DROP).await, 4);
    for user in ["b", "c", "d", "e"] {
        assert_eq!(s.http.reserve(DROP, SKU, 1, user).await.status, 201);
    }
    assert_eq!(s.http.reserve(DROP, SKU, 1, "f").await.error(), "sold_out");
    assert_eq!(
        live_units(&s.db(), "base@%"),
        5,
        "1 in the catalog + 4 restocked, all sold"
    );
}

#[tokio::test]
async fn a_closed_round_takes_no_restock() {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 1, 2, now - hours(2), now - hours(1));
    let s = TestServer::start_with_clock(&config, now).await;
    let path = format!("/admin/v1/drops/{DROP}/restock");
    let refused = s
        .http
        .admin(Method::POST, &path, r#"{"sku": "sku", "units": 4}"#)
        .await;
    assert_eq!((refused.status, refused.error()), (409, "closed"));
}

/// Polls `reserve` on `s` until it wins; fails if that takes longer than
/// the sold-out mark's stated bound after stock came back at `since`.
async fn wins_within_bound(s: &TestServer, user: &str, since: Instant) {
    loop {
        let reply = s.http.reserve(DROP, SKU, 1, user).await;
        if reply.status == 201 {
            return;
        }
        assert_eq!(reply.error(), "sold_out", "{:?}", reply.body);
        assert!(
            since.elapsed() < CLEAR_BOUND,
            "{user}: still sold out {:?} after stock came back",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two instances on one Redis and one PostgreSQL. B has marked the SKU
/// sold out; stock that comes back through A (a cancel, a restock, an
/// expiry) is on sale at B within the bound, and a drop created on A is
/// on sale at B within the pick-up time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sold_out_marks_clear_across_instances() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 1, 2, now - hours(1), now + hours(1));
    let a = TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;
    let b = TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;

    let won = a.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(won.status, 201);
    let sold_out_at_b = || async {
        assert_eq!(
            b.http.reserve(DROP, SKU, 1, "bob").await.error(),
            "sold_out"
        )
    };
    sold_out_at_b().await;
    let order = won.body["id"].as_str().unwrap();
    assert_eq!(a.http.cancel(order, "alice").await.status, 200);
    wins_within_bound(&b, "carol", Instant::now()).await;

    sold_out_at_b().await;
    let path = format!("/admin/v1/drops/{DROP}/restock");
    assert_eq!(
        a.http
            .admin(Method::POST, &path, r#"{"sku": "sku", "units": 1}"#)
            .await
            .status,
        200
    );
    wins_within_bound(&b, "dave", Instant::now()).await;

    // Expiry: wait until both orders are stored, then move both clocks past pay_by.
    sold_out_at_b().await;
    let audit = a.audit().await;
    let started = Instant::now();
    while audit.live_units("base@%").await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "orders never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.clock.advance(SignedDuration::from_mins(16));
    b.clock.advance(SignedDuration::from_mins(16));
    // The sweepers run every 50 ms; the bound starts once they have run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    wins_within_bound(&b, "erin", Instant::now()).await;

    let body = new_drop_json("k90", now - hours(1), now + hours(1));
    assert_eq!(
        a.http
            .admin(Method::POST, "/admin/v1/drops", &body)
            .await
            .status,
        201
    );
    let created = Instant::now();
    loop {
        let reply = b.http.reserve("k90", "k90-black", 1, "frank").await;
        if reply.status == 201 {
            break;
        }
        assert_eq!(reply.error(), "not_found");
        assert!(
            created.elapsed() < DROP_PICKUP * 2,
            "B never picked up the new drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
