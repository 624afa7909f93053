//! What the pages stand on: the embedded pages and their ETags, the
//! storefront (`GET /api/v1/store`), the operator's live view
//! (`GET /admin/v1/live`), and the demo's stand-ins, present only with the
//! demo secrets. The pages themselves are driven in Chromium by
//! `tests/browser/test_pages.py`.

use dropgate::EngineChoice;
use hyper::Method;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::support::*;

const DROP: &str = "phone";
const SKU: &str = "p-8-256";

/// The config head with the demo's public secrets instead of the tests' own.
fn demo_config(drops: &str) -> String {
    let mut config = config_head("") + drops;
    for (secret, field) in [
        (JWT_SECRET, "jwt_secret"),
        (ADMIN_TOKEN, "admin_token"),
        (PAYMENT_SECRET, "payment_secret"),
        (LOGISTICS_SECRET, "logistics_secret"),
    ] {
        config = config.replace(secret, &format!("dropgate-demo-{field}-not-for-production"));
    }
    config
}

fn demo_admin() -> String {
    "Bearer dropgate-demo-admin_token-not-for-production".to_owned()
}

#[tokio::test]
async fn pages_are_served_with_an_etag_and_revalidated_without_a_body() {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let s = TestServer::start_with_clock(&config, now).await;
    for (path, kind, holds) in [
        ("/", "text/html", "/assets/shop.js"),
        ("/ops", "text/html", "/assets/ops.js"),
        ("/assets/shop.js", "text/javascript", "Idempotency-Key"),
        ("/assets/style.css", "text/css", "--accent"),
    ] {
        let page = s.http.send(Method::GET, path, &[], Vec::new()).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(
            page.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        assert_eq!(page.headers["cache-control"], "no-cache", "{path}");
        assert!(s.http.get_text(path).await.contains(holds), "{path}");
        let etag = page.headers["etag"].to_str().unwrap().to_owned();
        let again = s
            .http
            .send(Method::GET, path, &[("if-none-match", &etag)], Vec::new())
            .await;
        assert_eq!(
            (again.status, again.body.clone()),
            (304, Value::Null),
            "{path}"
        );
        let stale = s
            .http
            .send(
                Method::GET,
                path,
                &[("if-none-match", "\"old\"")],
                Vec::new(),
            )
            .await;
        assert_eq!(stale.status, 200, "{path}");
    }
    let missing = s.http.get("/assets/nope.js", None).await;
    assert_eq!((missing.status, missing.error()), (404, "not_found"));
}

#[tokio::test]
async fn with_real_secrets_there_is_no_demo_stand_in() {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let s = TestServer::start_with_clock(&config, now).await;
    let store = s.http.get("/api/v1/store", None).await;
    assert_eq!(store.status, 200);
    assert_eq!(
        store.body["demo"],
        json!({"sign_in": false, "gateway": false, "carrier": false, "admin_token": false})
    );
    for path in [
        "/demo/v1/sign-in",
        "/demo/v1/payments",
        "/demo/v1/refunds",
        "/demo/v1/logistics",
    ] {
        let refused = s.http.post(path, None, r#"{"name": "alice"}"#).await;
        assert_eq!(
            (refused.status, refused.error()),
            (404, "not_found"),
            "{path}"
        );
    }
    assert_eq!(s.http.get("/demo/gateway", None).await.status, 404);
    // Nothing was paid on the way.
    let order = s.http.reserve(DROP, SKU, 1, "alice").await;
    let notice = json!({"order_id": order.body["id"], "transaction_id": "t1", "amount": "1999.00", "method": "alipay"});
    let forged = s
        .http
        .post("/demo/v1/payments", None, &notice.to_string())
        .await;
    assert_eq!(forged.status, 404);
    let status: String = s
        .db()
        .query_row("SELECT status FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "pending_payment");
}

#[tokio::test]
async fn the_storefront_shows_promotions_payment_rules_and_regions() {
    let now = Timestamp::now();
    let config = config_head("")
        + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1))
        + r#"
[payments]
cod_max_amount = "1500.00"
installment_periods = [3, 6]
[[promotions]]
id = "fan-festival"
kind = "percent_off"
percent = 10
"#;
    let s = TestServer::start_with_clock(&config, now).await;
    let store = s.http.get("/api/v1/store", None).await.body;
    assert_eq!(store["promotions"][0]["id"], "fan-festival");
    assert_eq!(store["payments"][DROP]["cod_max_amount"], "1500.00");
    assert_eq!(
        store["payments"][DROP]["installment_periods"],
        json!([3, 6])
    );
    assert!(store["payments"][DROP]["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("cash_on_delivery")));
    assert_eq!(store["regions"].as_array().unwrap().len(), 31);
    assert!(store["regions"]
        .as_array()
        .unwrap()
        .contains(&json!("广西壮族自治区")));
}

#[tokio::test]
async fn the_live_view_counts_each_drops_outcomes_and_latencies() {
    live_view_counts(&EngineChoice::Embedded).await;
}

#[tokio::test]
async fn the_live_view_counts_each_drops_outcomes_and_latencies_in_redis_mode() {
    let redis = RedisServer::start();
    live_view_counts(&redis.engine()).await;
}

async fn live_view_counts(engine: &EngineChoice) {
    let now = Timestamp::now();
    let limits = OPEN_LIMITS
        .replace("per_user_rps = 10000000", "per_user_rps = 1")
        .replace("per_user_burst = 10000000", "per_user_burst = 3");
    let config = config_head_with_limits(&limits, "")
        + &window_drop(DROP, SKU, 1, 1, now - hours(1), now + hours(1))
        + &window_drop("other", "o-1", 9, 1, now - hours(1), now + hours(1));
    let s = TestServer::start_with_engine(&config, now, engine).await;
    assert_eq!(s.http.get("/admin/v1/live", None).await.status, 401);

    assert_eq!(s.http.reserve(DROP, SKU, 1, "alice").await.status, 201);
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "bob").await.error(),
        "sold_out"
    );
    // carol's bucket holds 3: the fourth request in the same second is refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(s.http.reserve(DROP, SKU, 1, "carol").await.status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(s.http.reserve("nope", SKU, 1, "dave").await.status, 404);

    let live = s.http.admin(Method::GET, "/admin/v1/live", "").await;
    assert_eq!(live.status, 200, "{:?}", live.body);
    let drops = live.body["drops"].as_array().unwrap();
    assert_eq!(
        drops.len(),
        2,
        "only the catalog's drops, not the unknown one"
    );
    let phone = drops.iter().find(|d| d["id"] == DROP).unwrap();
    assert_eq!(phone["skus"][0]["remaining"], 0);
    assert_eq!(phone["skus"][0]["stock"], 1);
    assert_eq!(phone["round"]["state"], "sold_out");
    let outcomes = &phone["reserve"]["outcomes"];
    assert_eq!(outcomes["won"], 1);
    assert_eq!(outcomes["rate_limited"], 1);
    assert_eq!(outcomes["sold_out"].as_u64().unwrap(), 4, "{outcomes}");
    let counted: u64 = phone["reserve"]["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 6, "every answered reserve has its latency counted");
    assert_eq!(
        phone["reserve"]["latency"].as_array().unwrap().len(),
        live.body["latency_buckets"].as_array().unwrap().len() + 1
    );
    let other = drops.iter().find(|d| d["id"] == "other").unwrap();
    assert_eq!(other["reserve"]["outcomes"]["won"], 0);
    assert_eq!(other["queue_figures"], Value::Null);
    // The writer's lag is a figure of the moment (a job may be in flight).
    assert!(live.body["order_writer_lag"].is_u64(), "{}", live.body);
}

#[tokio::test]
async fn the_demo_stand_ins_take_an_order_from_sign_in_to_refund() {
    let now = Timestamp::now();
    let config = demo_config(&window_drop(
        DROP,
        SKU,
        5,
        2,
        now - hours(1),
        now + hours(1),
    ));
    let s = TestServer::start_with_clock(&config, now).await;
    let store = s.http.get("/api/v1/store", None).await.body;
    assert_eq!(
        store["demo"],
        json!({"sign_in": true, "gateway": true, "carrier": true, "admin_token": true})
    );
    for bad in [
        r#"{"name": "王小明"}"#,
        r#"{"name": ""}"#,
        r#"{"nom": "a"}"#,
        "[]",
    ] {
        let refused = s.http.post("/demo/v1/sign-in", None, bad).await;
        assert_eq!(
            (refused.status, refused.error()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let signed = s
        .http
        .post(
            "/demo/v1/sign-in",
            None,
            r#"{"name": "alice", "student": true}"#,
        )
        .await;
    assert_eq!(signed.status, 201, "{:?}", signed.body);
    let token = signed.body["token"].as_str().unwrap().to_owned();
    assert_eq!(s.http.get("/demo/gateway", None).await.status, 200);

    let path = format!("/api/v1/drops/{DROP}/reserve");
    let one = json!({"sku": SKU, "quantity": 1}).to_string();
    let won = s.http.post(&path, Some(&token), &one).await;
    assert_eq!(won.status, 201, "{:?}", won.body);
    assert_eq!(won.body["user_id"], "alice");
    let id = won.body["id"].as_str().unwrap().to_owned();
    let address = json!({"name": "王小明", "phone": "13800138000", "region": "北京市", "detail": "海淀区 1 号", "default": true});
    assert_eq!(
        s.http
            .post("/api/v1/addresses", Some(&token), &address.to_string())
            .await
            .status,
        201
    );
    let intent = s
        .http
        .post(
            &format!("/api/v1/orders/{id}/pay"),
            Some(&token),
            r#"{"method": "alipay"}"#,
        )
        .await;
    assert_eq!(intent.status, 200, "{:?}", intent.body);
    let amount = intent.body["amount"].as_str().unwrap().to_owned();

    // The gateway's notice is checked as a signed one is: the wrong amount is refused.
    let wrong =
        json!({"order_id": id, "transaction_id": "demo-1", "amount": "0.01", "method": "alipay"});
    let refused = s
        .http
        .post("/demo/v1/payments", None, &wrong.to_string())
        .await;
    assert_eq!((refused.status, refused.error()), (400, "amount_mismatch"));
    let notice =
        json!({"order_id": id, "transaction_id": "demo-1", "amount": amount, "method": "alipay"});
    let paid = s
        .http
        .post("/demo/v1/payments", None, &notice.to_string())
        .await;
    assert_eq!(
        (paid.status, paid.body["status"].clone()),
        (200, json!("paid"))
    );

    let refund = s
        .http
        .post(
            &format!("/api/v1/orders/{id}/refund"),
            Some(&token),
            r#"{"reason": "changed my mind"}"#,
        )
        .await;
    assert_eq!(refund.status, 200, "{:?}", refund.body);
    let auth = demo_admin();
    let approve = s
        .http
        .send(
            Method::POST,
            &format!("/admin/v1/orders/{id}/refund"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            br#"{"approve": true}"#.to_vec(),
        )
        .await;
    assert_eq!(approve.body["status"], "refunding", "{:?}", approve.body);
    let confirm = json!({"order_id": id, "refund_id": "demo-refund-1", "amount": amount});
    let refunded = s
        .http
        .post("/demo/v1/refunds", None, &confirm.to_string())
        .await;
    assert_eq!(refunded.body["status"], "refunded", "{:?}", refunded.body);

    // The carrier: a second order, paid, shipped and delivered.
    let second = s.http.post(&path, Some(&token), &one).await;
    let second_id = second.body["id"].as_str().unwrap().to_owned();
    s.http
        .post(
            &format!("/api/v1/orders/{second_id}/pay"),
            Some(&token),
            r#"{"method": "wechat_pay"}"#,
        )
        .await;
    let due = second.body["amount_due"].as_str().unwrap();
    let notice = json!({"order_id": second_id, "transaction_id": "demo-2", "amount": due, "method": "wechat_pay"});
    assert_eq!(
        s.http
            .post("/demo/v1/payments", None, &notice.to_string())
            .await
            .status,
        200
    );
    for event in ["shipped", "delivered"] {
        let notice = json!({"order_id": second_id, "event": event, "at": Timestamp::now().to_string(), "carrier": "SF Express", "tracking_number": "SF123"});
        let moved = s
            .http
            .post("/demo/v1/logistics", None, &notice.to_string())
            .await;
        assert_eq!(moved.body["status"], event, "{:?}", moved.body);
    }

    // From the store: the first order refunded, the second delivered, both alice's.
    let rows: Vec<(String, String)> = s
        .db()
        .prepare("SELECT user_id, status FROM orders ORDER BY created_at")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            ("alice".into(), "refunded".into()),
            ("alice".into(), "delivered".into())
        ]
    );
}
