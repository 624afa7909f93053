//! Promotions at the win: declared in the config file or added and ended
//! by operators while serving. A win is priced with what is in force at
//! that instant and keeps that price for good; a change made on one
//! instance reaches the others through the store.

use std::time::{Duration, Instant};

use hyper::Method;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use dropgate::auth;
use dropgate::domain::UserId;
use dropgate::upkeep::DROP_PICKUP;

use crate::support::*;

const DROP: &str = "base";
const SKU: &str = "sku";

/// The drop's SKU costs 1999.00 (see `window_drop`).
fn config_with_promotions(now: Timestamp) -> String {
    config_head("")
        + &window_drop(DROP, SKU, 50, 2, now - hours(1), now + hours(3))
        + &format!(
            r#"
[[promotions]]
id = "618"
kind = "percent_off"
percent = 5

[[promotions]]
id = "students"
kind = "student"
percent = 10
skus = ["{SKU}"]

[[promotions]]
id = "late-flash"
kind = "percent_off"
percent = 20
starts_at = "{}"
"#,
            now + hours(1)
        )
}

async fn reserve_as_student(http: &Http, user: &str) -> Reply {
    let token = auth::mint(JWT_SECRET, &UserId::parse(user).unwrap(), 3600, true);
    let body = format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#);
    http.post(
        &format!("/api/v1/drops/{DROP}/reserve"),
        Some(&token),
        &body,
    )
    .await
}

/// The amount due and the discounts, as `(source, amount)` pairs.
fn priced(order: &Value) -> (String, Vec<(String, String)>) {
    let pricing = &order["pricing"];
    let list = format!("{}.00", 1999 * order["quantity"].as_i64().unwrap());
    assert_eq!(pricing["list_amount"], list.as_str(), "{order}");
    assert_eq!(pricing["amount_due"], order["amount_due"], "{order}");
    let discounts = pricing["discounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["source"].as_str().unwrap().to_owned(),
                d["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (order["amount_due"].as_str().unwrap().to_owned(), discounts)
}

fn expect(amount: &str, discounts: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let discounts = discounts
        .iter()
        .map(|(s, a)| (s.to_string(), a.to_string()))
        .collect();
    (amount.to_owned(), discounts)
}

async fn order_of(http: &Http, id: &Value, user: &str) -> Value {
    let reply = http
        .get(
            &format!("/api/v1/orders/{}", id.as_str().unwrap()),
            Some(&token(user)),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

#[tokio::test]
async fn wins_are_priced_with_the_promotions_in_force_and_keep_that_price() {
    let now = Timestamp::now();
    let config = config_with_promotions(now);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut s = TestServer::start_at(&config, &db, now).await;

    let alice = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(alice.status, 201, "{:?}", alice.body);
    assert_eq!(
        priced(&alice.body),
        expect("1899.05", &[("promotion:618", "99.95")])
    );
    // Only the best percentage applies: the student's 10 % beats 618's 5 %.
    let bob = reserve_as_student(&s.http, "bob").await;
    assert_eq!(bob.status, 201, "{:?}", bob.body);
    assert_eq!(
        priced(&bob.body),
        expect("1799.10", &[("promotion:students", "199.90")])
    );

    // 满减 every 1000 off 100, added live, applies after the percentage.
    let full_reduction = json!({
        "id": "mfr", "kind": "full_reduction",
        "threshold": "1000.00", "off": "100.00", "repeat": true
    });
    let added = s
        .http
        .admin(
            Method::POST,
            "/admin/v1/promotions",
            &full_reduction.to_string(),
        )
        .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    assert_eq!(added.body, full_reduction);
    let carol = s.http.reserve(DROP, SKU, 2, "carol").await;
    assert_eq!(
        priced(&carol.body),
        expect(
            "3498.10",
            &[("promotion:618", "199.90"), ("promotion:mfr", "300.00")]
        )
    );

    // The time-boxed one starts an hour from now and is then the best.
    s.clock.advance(SignedDuration::from_mins(61));
    let dave = s.http.reserve(DROP, SKU, 1, "dave").await;
    assert_eq!(
        priced(&dave.body),
        expect(
            "1499.20",
            &[
                ("promotion:late-flash", "399.80"),
                ("promotion:mfr", "100.00")
            ]
        )
    );

    for ended in ["late-flash", "618"] {
        let reply = s
            .http
            .admin(Method::DELETE, &format!("/admin/v1/promotions/{ended}"), "")
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["id"], ended);
    }
    let erin = s.http.reserve(DROP, SKU, 1, "erin").await;
    assert_eq!(
        priced(&erin.body),
        expect("1899.00", &[("promotion:mfr", "100.00")])
    );
    let listed = s.http.admin(Method::GET, "/admin/v1/promotions", "").await;
    let ids: Vec<&str> = listed.body["promotions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["students", "mfr"]);

    // Orders won earlier keep their prices, also as stored across a restart;
    // the ends and the operator's promotion outlive the restart too.
    s.stop().await;
    let s = TestServer::start_at(&config, &db, now + SignedDuration::from_mins(62)).await;
    let alice_now = order_of(&s.http, &alice.body["id"], "alice").await;
    assert_eq!(priced(&alice_now), priced(&alice.body));
    let carol_now = order_of(&s.http, &carol.body["id"], "carol").await;
    assert_eq!(priced(&carol_now), priced(&carol.body));
    let frank = s.http.reserve(DROP, SKU, 1, "frank").await;
    assert_eq!(
        priced(&frank.body),
        expect("1899.00", &[("promotion:mfr", "100.00")])
    );
}

#[tokio::test]
async fn bad_promotions_are_refused_and_change_nothing() {
    let now = Timestamp::now();
    let mut s = TestServer::start_with_clock(&config_with_promotions(now), now).await;
    let before = s.http.admin(Method::GET, "/admin/v1/promotions", "").await;
    assert_eq!(before.status, 200);

    let good = json!({"id": "flash", "kind": "percent_off", "percent": 30});
    for bad in [
        "not json".to_owned(),
        "{}".to_owned(),
        json!({"id": "flash", "kind": "bogof", "percent": 30}).to_string(),
        json!({"id": "flash", "kind": "percent_off", "percent": 100}).to_string(),
        json!({"id": "flash", "kind": "percent_off", "percent": 30, "colour": "red"}).to_string(),
        json!({"id": "flash", "kind": "full_reduction", "threshold": "100.00", "off": "200.00"})
            .to_string(),
        json!({"id": "has space", "kind": "percent_off", "percent": 30}).to_string(),
    ] {
        let refused = s
            .http
            .admin(Method::POST, "/admin/v1/promotions", &bad)
            .await;
        assert_eq!(
            (refused.status, refused.error()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let path = "/admin/v1/promotions";
    let shopper = s
        .http
        .post(path, Some(&token("mallory")), &good.to_string())
        .await;
    assert_eq!((shopper.status, shopper.error()), (401, "unauthorized"));
    let after = s.http.admin(Method::GET, path, "").await;
    assert_eq!(after.body, before.body);
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(won.body["amount_due"], "1899.05");

    // Ids are never reused: a declared one, a live one, an ended one.
    let created = s.http.admin(Method::POST, path, &good.to_string()).await;
    assert_eq!(created.status, 201);
    for id in ["618", "flash"] {
        let again = good.to_string().replace("flash", id);
        let clash = s.http.admin(Method::POST, path, &again).await;
        assert_eq!((clash.status, clash.error()), (409, "promotion_exists"));
    }
    let ended = s
        .http
        .admin(Method::DELETE, "/admin/v1/promotions/flash", "")
        .await;
    assert_eq!(ended.status, 200);
    let reused = s.http.admin(Method::POST, path, &good.to_string()).await;
    assert_eq!((reused.status, reused.error()), (409, "promotion_exists"));
    for gone in ["flash", "no-such-promotion"] {
        let reply = s
            .http
            .admin(Method::DELETE, &format!("/admin/v1/promotions/{gone}"), "")
            .await;
        assert_eq!((reply.status, reply.error()), (404, "not_found"), "{gone}");
    }
    s.stop().await;
}

/// Waits until `instance` prices a win as `expected`, within twice the
/// pick-up time (instances reload promotions from the store each second).
async fn priced_within_pickup(instance: &TestServer, users: &mut u32, expected: &str) {
    let started = Instant::now();
    loop {
        *users += 1;
        let won = instance
            .http
            .reserve(DROP, SKU, 1, &format!("u{users}"))
            .await;
        assert_eq!(won.status, 201, "{:?}", won.body);
        if won.body["amount_due"] == expected {
            return;
        }
        assert!(
            started.elapsed() < DROP_PICKUP * 2,
            "never priced at {expected}: {:?}",
            won.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances on one Redis and one PostgreSQL: a promotion added on A
/// prices wins at B, one ended at B stops at A, and the stored orders
/// (written by the Redis order writer) carry their discounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_changed_on_one_instance_applies_on_the_other() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 500, 2, now - hours(1), now + hours(1));
    let a = TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;
    let b = TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;
    let mut users = 0;
    priced_within_pickup(&b, &mut users, "1999.00").await;

    let promotion = json!({"id": "mi-fan", "kind": "percent_off", "percent": 10});
    let added = a
        .http
        .admin(Method::POST, "/admin/v1/promotions", &promotion.to_string())
        .await;
    assert_eq!(added.status, 201);
    priced_within_pickup(&b, &mut users, "1799.10").await;
    let on_b = b
        .http
        .admin(Method::POST, "/admin/v1/promotions", &promotion.to_string())
        .await;
    assert_eq!((on_b.status, on_b.error()), (409, "promotion_exists"));

    let ended = b
        .http
        .admin(Method::DELETE, "/admin/v1/promotions/mi-fan", "")
        .await;
    assert_eq!(ended.status, 200);
    priced_within_pickup(&a, &mut users, "1999.00").await;

    // Stored by the Redis order writer, discounts included.
    let audit = a.audit().await;
    let discounted = "discounts LIKE '%promotion:mi-fan%' AND amount_due = '1799.10'";
    let started = Instant::now();
    while audit.count_where(discounted).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no discounted order reached the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
