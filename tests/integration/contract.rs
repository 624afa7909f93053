//! The HTTP contract (openapi.yaml, the README): every shopper endpoint and every error code.

use hyper::Method;
use jiff::Timestamp;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

const SKU: &str = "p-8-256";

/// Three drops: one open, one upcoming, one closed; plus an open presale drop.
fn catalog(now: Timestamp) -> String {
    let mut config = config_head("max_body_bytes = 1024");
    config += &window_drop("open", SKU, 3, 2, now - hours(1), now + hours(1));
    config += &window_drop("later", SKU, 3, 2, now + hours(1), now + hours(2));
    config += &window_drop("over", SKU, 3, 2, now - hours(2), now - hours(1));
    config += &format!(
        r#"
[[drops]]
id = "pre"
product = "Presale Phone"
per_user_limit = 3
pay_within = "15m"
presale = true
balance_from = "48h"
balance_until = "96h"
opens_at = "{}"
closes_at = "{}"
[[drops.skus]]
id = "pre-16-512"
name = "16GB+512GB"
price = "6499.00"
deposit = "500.00"
stock = 10
"#,
        now - hours(1),
        now + hours(1)
    );
    config
}

async fn server() -> TestServer {
    let now = Timestamp::now();
    TestServer::start_with_clock(&catalog(now), now).await
}

fn reserve_path(drop: &str) -> String {
    format!("/api/v1/drops/{drop}/reserve")
}

#[tokio::test]
async fn health_readiness_and_time_answer() {
    let s = server().await;
    assert_eq!(s.http.get("/healthz", None).await.status, 200);
    assert_eq!(s.http.get("/readyz", None).await.status, 200);
    let time = s.http.get("/api/v1/time", None).await;
    assert_eq!(time.status, 200);
    let now: Timestamp = time.body["now"].as_str().unwrap().parse().unwrap();
    assert_eq!(now, s.clock.now());
    assert_eq!(
        time.body["unix_ms"].as_i64().unwrap(),
        s.clock.now().as_millisecond()
    );
}

#[tokio::test]
async fn drops_show_their_current_or_next_round_with_its_state() {
    let s = server().await;
    let list = s.http.get("/api/v1/drops", None).await;
    assert_eq!(list.status, 200);
    let states: Vec<(&str, &str)> = list.body["drops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap(),
                d["round"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("open", "open"),
            ("later", "upcoming"),
            ("over", "closed"),
            ("pre", "open")
        ]
    );

    let drop = s.http.get("/api/v1/drops/pre", None).await;
    assert_eq!(drop.status, 200);
    assert_eq!(drop.body["presale"], json!(true));
    assert_eq!(drop.body["per_user_limit"], json!(3));
    assert_eq!(drop.body["skus"][0]["price"], json!("6499.00"));
    assert_eq!(drop.body["skus"][0]["deposit"], json!("500.00"));
    assert_eq!(drop.body["skus"][0]["remaining"], json!(10));
    assert!(drop.body["round"]["id"]
        .as_str()
        .unwrap()
        .starts_with("pre@"));

    let missing = s.http.get("/api/v1/drops/nope", None).await;
    assert_eq!((missing.status, missing.error()), (404, "not_found"));
}

#[tokio::test]
async fn a_won_reservation_is_a_complete_order() {
    let s = server().await;
    let won = s.http.reserve("open", SKU, 2, "alice").await;
    assert_eq!(won.status, 201, "{:?}", won.body);
    let order = &won.body;
    assert_eq!(order["drop_id"], json!("open"));
    assert_eq!(order["sku"], json!(SKU));
    assert_eq!(order["quantity"], json!(2));
    assert_eq!(order["user_id"], json!("alice"));
    assert_eq!(order["status"], json!("pending_payment"));
    assert_eq!(order["unit_price"], json!("1999.00"));
    assert_eq!(order["amount_due"], json!("3998.00"));
    assert_eq!(order["deposit_due"], json!("3998.00"));
    assert_eq!(order["currency"], json!("CNY"));
    let created: Timestamp = order["created_at"].as_str().unwrap().parse().unwrap();
    let pay_by: Timestamp = order["pay_by"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        pay_by.duration_since(created),
        jiff::SignedDuration::from_mins(15)
    );

    // The order is readable at once, and is in the caller's list.
    let id = order["id"].as_str().unwrap();
    let read = s
        .http
        .get(&format!("/api/v1/orders/{id}"), Some(&token("alice")))
        .await;
    assert_eq!((read.status, &read.body), (200, order));
    let list = s.http.get("/api/v1/orders", Some(&token("alice"))).await;
    assert_eq!(list.body["orders"], json!([order]));
    let drop = s.http.get("/api/v1/drops/open", None).await;
    assert_eq!(drop.body["skus"][0]["remaining"], json!(1));
}

#[tokio::test]
async fn presale_orders_owe_the_deposit_and_need_the_terms_accepted() {
    let s = server().await;
    let path = reserve_path("pre");
    let refused = s
        .http
        .post(
            &path,
            Some(&token("bob")),
            r#"{"sku": "pre-16-512", "quantity": 2}"#,
        )
        .await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_request"));
    let body = r#"{"sku": "pre-16-512", "quantity": 2, "accept_presale_terms": true}"#;
    let won = s.http.post(&path, Some(&token("bob")), body).await;
    assert_eq!(won.status, 201);
    assert_eq!(won.body["amount_due"], json!("12998.00"));
    assert_eq!(won.body["deposit_due"], json!("1000.00"));
}

#[tokio::test]
async fn malformed_reservations_are_400_and_change_nothing() {
    let s = server().await;
    let path = reserve_path("open");
    let alice = token("alice");
    for body in [
        "{not json",
        "",
        r#"{"sku": 7, "quantity": 1}"#,
        r#"{"sku": "p-8-256", "quantity": "two"}"#,
        r#"{"sku": "p-8-256", "quantity": 1.5}"#,
        r#"{"sku": "p-8-256", "quantity": 0}"#,
        r#"{"sku": "p-8-256", "quantity": -1}"#,
        r#"{"sku": "p-8-256", "quantity": 99999999999999999999}"#,
        r#"{"sku": "p-8-256", "quantity": 1, "colour": "red"}"#,
        r#"{"quantity": 1}"#,
        r#"[1, 2]"#,
    ] {
        let reply = s.http.post(&path, Some(&alice), body).await;
        assert_eq!(
            (reply.status, reply.error()),
            (400, "invalid_request"),
            "body {body:?}"
        );
        assert!(!reply.body["message"].as_str().unwrap().is_empty());
    }
    let bad_key = s
        .http
        .post_with(
            &path,
            Some(&alice),
            &[("idempotency-key", "has space")],
            r#"{"sku": "p-8-256"}"#,
        )
        .await;
    assert_eq!((bad_key.status, bad_key.error()), (400, "invalid_request"));
    assert_eq!(order_ids(&s.db()).len(), 0);
}

#[tokio::test]
async fn unknown_drops_skus_and_paths_are_404() {
    let s = server().await;
    let alice = token("alice");
    let no_drop = s
        .http
        .post(&reserve_path("nope"), Some(&alice), r#"{"sku": "p-8-256"}"#)
        .await;
    assert_eq!((no_drop.status, no_drop.error()), (404, "not_found"));
    let no_sku = s
        .http
        .post(&reserve_path("open"), Some(&alice), r#"{"sku": "p-1-1"}"#)
        .await;
    assert_eq!((no_sku.status, no_sku.error()), (404, "not_found"));
    let no_path = s.http.get("/api/v2/whatever", None).await;
    assert_eq!((no_path.status, no_path.error()), (404, "not_found"));
    let wrong_method = s
        .http
        .send(Method::DELETE, "/api/v1/drops/open", &[], Vec::new())
        .await;
    assert_eq!(wrong_method.status, 404);
}

fn token_with(secret: &str, alg: Algorithm, claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn token_problems_are_401() {
    let s = server().await;
    let path = reserve_path("open");
    let body = r#"{"sku": "p-8-256"}"#;
    let exp_future = Timestamp::now().as_second() + 3600;
    let expired = token_with(
        JWT_SECRET,
        Algorithm::HS256,
        json!({"sub": "alice", "exp": Timestamp::now().as_second() - 3600}),
    );
    let forged = token_with(
        "not-the-secret",
        Algorithm::HS256,
        json!({"sub": "alice", "exp": exp_future}),
    );
    let hs512 = token_with(
        JWT_SECRET,
        Algorithm::HS512,
        json!({"sub": "alice", "exp": exp_future}),
    );
    let bad_sub = token_with(
        JWT_SECRET,
        Algorithm::HS256,
        json!({"sub": "al ice", "exp": exp_future}),
    );
    let no_exp = token_with(JWT_SECRET, Algorithm::HS256, json!({"sub": "alice"}));
    {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"alice","exp":{exp_future}}}"#))
        );
        let reply = s.http.post(&path, Some(&unsigned), body).await;
        assert_eq!((reply.status, reply.error()), (401, "unauthorized"));
    }
    for bad in [
        expired,
        forged,
        hs512,
        bad_sub,
        no_exp,
        "garbage".to_string(),
    ] {
        let reply = s.http.post(&path, Some(&bad), body).await;
        assert_eq!(
            (reply.status, reply.error()),
            (401, "unauthorized"),
            "token {bad}"
        );
    }
    let missing = s.http.post(&path, None, body).await;
    assert_eq!((missing.status, missing.error()), (401, "unauthorized"));
    let basic = s
        .http
        .post_with(
            &path,
            None,
            &[("authorization", "Basic YWxpY2U6eA==")],
            body,
        )
        .await;
    assert_eq!(basic.status, 401);
    assert_eq!(s.http.get("/api/v1/orders", None).await.status, 401);
    assert_eq!(order_ids(&s.db()).len(), 0);
}

#[tokio::test]
async fn the_round_says_no_with_409_and_a_reason() {
    let s = server().await;
    let not_open = s.http.reserve("later", SKU, 1, "alice").await;
    assert_eq!((not_open.status, not_open.error()), (409, "not_open"));
    let opens_at: Timestamp = not_open.body["opens_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(opens_at, s.clock.now() + hours(1));

    let closed = s.http.reserve("over", SKU, 1, "alice").await;
    assert_eq!((closed.status, closed.error()), (409, "closed"));

    assert_eq!(s.http.reserve("open", SKU, 2, "alice").await.status, 201);
    let limit = s.http.reserve("open", SKU, 1, "alice").await;
    assert_eq!((limit.status, limit.error()), (409, "limit_exceeded"));
    assert_eq!(limit.body["limit"], json!(2));

    assert_eq!(s.http.reserve("open", SKU, 1, "bob").await.status, 201);
    let sold_out = s.http.reserve("open", SKU, 1, "carol").await;
    assert_eq!((sold_out.status, sold_out.error()), (409, "sold_out"));
    let drop = s.http.get("/api/v1/drops/open", None).await;
    assert_eq!(drop.body["round"]["state"], json!("sold_out"));
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let s = server().await;
    let big = format!(r#"{{"sku": "p-8-256", "pad": "{}"}}"#, "x".repeat(4096));
    let reply = s
        .http
        .post(&reserve_path("open"), Some(&token("alice")), &big)
        .await;
    assert_eq!((reply.status, reply.error()), (413, "payload_too_large"));
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(order_ids(&s.db()).len(), 0);
}

#[tokio::test]
async fn a_reused_idempotency_key_with_another_body_is_422() {
    let s = server().await;
    let path = reserve_path("open");
    let alice = token("alice");
    let key = [("idempotency-key", "tap-1")];
    let first = s
        .http
        .post_with(
            &path,
            Some(&alice),
            &key,
            r#"{"sku": "p-8-256", "quantity": 1}"#,
        )
        .await;
    assert_eq!(first.status, 201);
    let other = s
        .http
        .post_with(
            &path,
            Some(&alice),
            &key,
            r#"{"sku": "p-8-256", "quantity": 2}"#,
        )
        .await;
    assert_eq!((other.status, other.error()), (422, "idempotency_mismatch"));
    assert_eq!(order_ids(&s.db()).len(), 1);
}

#[tokio::test]
async fn nobody_sees_or_cancels_another_shoppers_order() {
    let s = server().await;
    let won = s.http.reserve("open", SKU, 1, "alice").await;
    let id = won.body["id"].as_str().unwrap();
    let mallory = token("mallory");
    let peek = s
        .http
        .get(&format!("/api/v1/orders/{id}"), Some(&mallory))
        .await;
    assert_eq!((peek.status, peek.error()), (404, "not_found"));
    let cancel = s.http.cancel(id, "mallory").await;
    assert_eq!((cancel.status, cancel.error()), (404, "not_found"));
    assert_eq!(
        s.http.get("/api/v1/orders", Some(&mallory)).await.body["orders"],
        json!([])
    );
    let junk = s.http.get("/api/v1/orders/not-an-id", Some(&mallory)).await;
    assert_eq!(junk.status, 404);
    let status: String = s
        .db()
        .query_row("SELECT status FROM orders WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "pending_payment");
}

#[tokio::test]
async fn cancel_only_applies_to_pending_orders() {
    let s = server().await;
    let id = s.http.reserve("open", SKU, 2, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancelled = s.http.cancel(&id, "alice").await;
    assert_eq!(cancelled.status, 200);
    assert_eq!(cancelled.body["status"], json!("cancelled"));
    let again = s.http.cancel(&id, "alice").await;
    assert_eq!((again.status, again.error()), (409, "not_cancellable"));
}
