//! An order's life: idempotent replays, cancel, expiry, payment, restart.
//! Stock must come back exactly once for cancelled and expired orders.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::support::*;

const DROP: &str = "one";
const SKU: &str = "sku";

fn config(now: Timestamp, stock: i64) -> String {
    config_head("") + &window_drop(DROP, SKU, stock, 2, now - hours(1), now + hours(1))
}

async fn server(stock: i64) -> TestServer {
    let now = Timestamp::now();
    TestServer::start_with_clock(&config(now, stock), now).await
}

fn reserve_path() -> String {
    format!("/api/v1/drops/{DROP}/reserve")
}

fn status_in_db(server: &TestServer, id: &str) -> String {
    server
        .db()
        .query_row("SELECT status FROM orders WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
}

/// Waits for the sweeper (every 50 ms here) to give an order its fate.
async fn wait_for_status(server: &TestServer, id: &str, status: &str) {
    for _ in 0..100 {
        if status_in_db(server, id) == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("order {id} never became {status}");
}

async fn notify(server: &TestServer, body: &serde_json::Value) -> Reply {
    server.http.notify_payment(&body.to_string()).await
}

#[tokio::test]
async fn a_replayed_key_returns_the_same_order_with_200() {
    let s = server(10).await;
    let alice = token("alice");
    let key = [("idempotency-key", "buy-button-1")];
    let body = r#"{"sku": "sku", "quantity": 1}"#;
    let first = s
        .http
        .post_with(&reserve_path(), Some(&alice), &key, body)
        .await;
    assert_eq!(first.status, 201);
    let replay = s
        .http
        .post_with(&reserve_path(), Some(&alice), &key, body)
        .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body, first.body);
    // The key is the user's own: bob's identical key is a new order.
    let bob = s
        .http
        .post_with(&reserve_path(), Some(&token("bob")), &key, body)
        .await;
    assert_eq!(bob.status, 201);
    assert_ne!(bob.body["id"], first.body["id"]);
    assert_eq!(order_ids(&s.db()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_make_one_order() {
    let s = server(10).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = s.http.clone();
        tasks.push(tokio::spawn(async move {
            let alice = token("alice");
            let key = [("idempotency-key", "double-tap")];
            http.post_with(&reserve_path(), Some(&alice), &key, r#"{"sku": "sku"}"#)
                .await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert!(
            reply.status == 201 || reply.status == 200,
            "{}",
            reply.status
        );
        created += usize::from(reply.status == 201);
        ids.insert(reply.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1));
    assert_eq!(order_ids(&s.db()).len(), 1);
    assert_eq!(s.http.remaining(DROP).await, 9);
}

#[tokio::test]
async fn a_key_whose_first_request_was_refused_can_be_retried() {
    let s = server(1).await;
    let carol = token("carol");
    let key = [("idempotency-key", "retry-me")];
    let alice_order = s.http.reserve(DROP, SKU, 1, "alice").await;
    let refused = s
        .http
        .post_with(&reserve_path(), Some(&carol), &key, r#"{"sku": "sku"}"#)
        .await;
    assert_eq!(refused.error(), "sold_out");
    let id = alice_order.body["id"].as_str().unwrap();
    let cancel = s.http.cancel(id, "alice").await;
    assert_eq!(cancel.status, 200);
    let retried = s
        .http
        .post_with(&reserve_path(), Some(&carol), &key, r#"{"sku": "sku"}"#)
        .await;
    assert_eq!(retried.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_returns_the_stock_exactly_once() {
    let s = server(2).await;
    let won = s.http.reserve(DROP, SKU, 2, "alice").await;
    let id = won.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "bob").await.error(),
        "sold_out"
    );

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let http = s.http.clone();
        let path = format!("/api/v1/orders/{id}/cancel");
        tasks.push(tokio::spawn(async move {
            http.post(&path, Some(&token("alice")), "").await.status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(s.http.remaining(DROP).await, 2);
    assert_eq!(s.http.reserve(DROP, SKU, 2, "bob").await.status, 201);
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "carol").await.error(),
        "sold_out"
    );
    assert_eq!(live_units(&s.db(), "one@%"), 2);
}

#[tokio::test]
async fn an_unpaid_order_expires_at_pay_by_and_its_stock_returns_once() {
    let s = server(1).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    let id = won.body["id"].as_str().unwrap().to_owned();
    s.clock.advance(SignedDuration::from_mins(14));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        status_in_db(&s, &id),
        "pending_payment",
        "not before pay_by"
    );
    assert_eq!(s.http.remaining(DROP).await, 0);

    s.clock.advance(SignedDuration::from_mins(2));
    wait_for_status(&s, &id, "expired").await;
    assert_eq!(s.http.remaining(DROP).await, 1);
    // More sweeps and a late cancel change nothing.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let cancel = s.http.cancel(&id, "alice").await;
    assert_eq!((cancel.status, cancel.error()), (409, "not_cancellable"));
    assert_eq!(s.http.remaining(DROP).await, 1);
    assert_eq!(s.http.reserve(DROP, SKU, 1, "bob").await.status, 201);
    assert_eq!(s.http.remaining(DROP).await, 0);
}

#[tokio::test]
async fn a_signed_notification_marks_the_order_paid_once() {
    let s = server(5).await;
    let won = s.http.reserve(DROP, SKU, 2, "alice").await;
    let id = won.body["id"].as_str().unwrap();
    let notice =
        json!({"order_id": id, "transaction_id": "tx-1", "amount": "3998.00", "method": "alipay"});

    let paid = notify(&s, &notice).await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    assert_eq!(paid.body["status"], json!("paid"));
    let again = notify(&s, &notice).await;
    assert_eq!((again.status, &again.body), (200, &paid.body));

    // A paid order cannot be cancelled, never expires, and keeps its stock.
    let cancel = s.http.cancel(id, "alice").await;
    assert_eq!(cancel.error(), "not_cancellable");
    s.clock.advance(SignedDuration::from_hours(1));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(status_in_db(&s, id), "paid");
    assert_eq!(s.http.remaining(DROP).await, 3);
}

#[tokio::test]
async fn bad_notifications_are_refused_and_change_nothing() {
    let s = server(5).await;
    let id = s.http.reserve(DROP, SKU, 1, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let good = json!({"order_id": id, "transaction_id": "tx-9", "amount": "1999.00", "method": "wechat_pay"});

    let raw = good.to_string();
    let forged = dropgate::payment::sign(b"wrong-secret", raw.as_bytes());
    let reply = s
        .http
        .post_with(
            "/api/v1/payments/notify",
            None,
            &[("x-signature", &forged)],
            &raw,
        )
        .await;
    assert_eq!((reply.status, reply.error()), (401, "unauthorized"));
    let unsigned = s.http.post("/api/v1/payments/notify", None, &raw).await;
    assert_eq!(unsigned.status, 401);

    let wrong_amount = notify(
        &s,
        &json!({"order_id": id, "transaction_id": "tx-9", "amount": "1.00", "method": "alipay"}),
    )
    .await;
    assert_eq!(
        (wrong_amount.status, wrong_amount.error()),
        (400, "amount_mismatch")
    );
    let bad_method = notify(
        &s,
        &json!({"order_id": id, "transaction_id": "tx-9", "amount": "1999.00", "method": "paypal"}),
    )
    .await;
    assert_eq!(
        (bad_method.status, bad_method.error()),
        (400, "invalid_request")
    );
    let unknown = notify(&s, &json!({"order_id": "01a21e24-1f4e-7183-b085-4dd77e4b6735", "transaction_id": "tx-9", "amount": "1999.00", "method": "alipay"})).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(status_in_db(&s, &id), "pending_payment");

    // A transaction id that paid one order cannot pay another.
    assert_eq!(notify(&s, &good).await.status, 200);
    let other = s.http.reserve(DROP, SKU, 1, "bob").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reused = notify(&s, &json!({"order_id": other, "transaction_id": "tx-9", "amount": "1999.00", "method": "alipay"})).await;
    assert_eq!(
        (reused.status, reused.error()),
        (409, "duplicate_transaction")
    );
    assert_eq!(status_in_db(&s, &other), "pending_payment");
}

#[tokio::test]
async fn cancelled_and_expired_orders_cannot_be_paid() {
    let s = server(5).await;
    let alice = token("alice");
    let cancelled = s.http.reserve(DROP, SKU, 1, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.http
        .post(
            &format!("/api/v1/orders/{cancelled}/cancel"),
            Some(&alice),
            "",
        )
        .await;
    let paid = notify(&s, &json!({"order_id": cancelled, "transaction_id": "tx-c", "amount": "1999.00", "method": "alipay"})).await;
    assert_eq!((paid.status, paid.error()), (409, "not_payable"));
    assert_eq!(status_in_db(&s, &cancelled), "cancelled");

    let late = s.http.reserve(DROP, SKU, 1, "bob").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.http.remaining(DROP).await, 4);
    s.clock.advance(SignedDuration::from_mins(16));
    // Whether the sweeper or this notice ends it, the order expires once.
    let paid = notify(&s, &json!({"order_id": late, "transaction_id": "tx-l", "amount": "1999.00", "method": "alipay"})).await;
    assert_eq!((paid.status, paid.error()), (409, "not_payable"));
    wait_for_status(&s, &late, "expired").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(s.http.remaining(DROP).await, 5);
}

#[tokio::test]
async fn a_restart_rebuilds_stock_limits_and_keys_from_the_store() {
    let now = Timestamp::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut first = TestServer::start_at(&config(now, 5), &db, now).await;
    let keyed = first
        .http
        .reserve_keyed(DROP, "alice", "k1", r#"{"sku": "sku", "quantity": 2}"#)
        .await;
    assert_eq!(keyed.status, 201);
    let bob = first.http.reserve(DROP, SKU, 2, "bob").await;
    let bob_id = bob.body["id"].as_str().unwrap();
    first.http.cancel(bob_id, "bob").await;
    first.http.reserve(DROP, SKU, 1, "carol").await;
    first.stop().await;

    let second = TestServer::start_at(&config(now, 5), &db, now).await;
    assert_eq!(second.http.remaining(DROP).await, 2);
    assert_eq!(
        second.http.reserve(DROP, SKU, 1, "alice").await.error(),
        "limit_exceeded"
    );
    let replay = second
        .http
        .reserve_keyed(DROP, "alice", "k1", r#"{"sku": "sku", "quantity": 2}"#)
        .await;
    assert_eq!((replay.status, &replay.body), (200, &keyed.body));
    assert_eq!(second.http.reserve(DROP, SKU, 2, "bob").await.status, 201);
    assert_eq!(
        second.http.reserve(DROP, SKU, 1, "dave").await.error(),
        "sold_out"
    );
}
