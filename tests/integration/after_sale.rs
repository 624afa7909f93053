//! After the payment, in both engines and both stores (the conformance
//! backends): shipping and delivery by the carrier's signed notices,
//! refunds, returns and exchanges within their windows (whole days in the
//! drop's time zone), invoices, the operators' search, review and cancel,
//! and one event per change, read from the store.

use hyper::Method;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde_json::{json, Value};

use crate::conformance::{conformance, Backend};
use crate::support::*;

const DROP: &str = "shop";
const SKU: &str = "sku";

/// A drop on sale from twenty days before `now` to twenty days after, so
/// the clock may move across return windows while it sells.
async fn server_at(backend: &Backend, now: Timestamp) -> TestServer {
    let days = hours(24 * 20);
    let config = config_head("") + &window_drop(DROP, SKU, 20, 10, now - days, now + days);
    backend.start(&config, now).await
}

fn address_body() -> String {
    json!({"name": "张三", "phone": "13800138000", "region": "北京市",
           "detail": "海淀区清河中街68号", "default": true})
    .to_string()
}

/// A won order of `user`, paid online through an intent: its id.
async fn paid_order(s: &TestServer, user: &str) -> String {
    let won = s.http.reserve(DROP, SKU, 1, user).await;
    assert_eq!(won.status, 201, "{:?}", won.body);
    let id = won.body["id"].as_str().unwrap().to_owned();
    let listed = s.http.get("/api/v1/addresses", Some(&token(user))).await;
    if listed.body["addresses"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        let added = s
            .http
            .post("/api/v1/addresses", Some(&token(user)), &address_body())
            .await;
        assert_eq!(added.status, 201, "{:?}", added.body);
    }
    let intent = s
        .http
        .post(
            &format!("/api/v1/orders/{id}/pay"),
            Some(&token(user)),
            r#"{"method": "alipay"}"#,
        )
        .await;
    assert_eq!(intent.status, 200, "{:?}", intent.body);
    let notice = json!({"order_id": id, "transaction_id": format!("tx-{id}"),
                        "amount": intent.body["amount"], "method": "alipay"});
    let paid = s.http.notify_payment(&notice.to_string()).await;
    assert_eq!(paid.body["status"], "paid", "{:?}", paid.body);
    id
}

fn carrier(order: &str, event: &str, at: Timestamp, tracking: &str) -> String {
    json!({"order_id": order, "event": event, "at": at.to_string(),
           "carrier": "顺丰速运", "tracking_number": tracking})
    .to_string()
}

async fn ask(s: &TestServer, user: &str, order: &str, what: &str, body: Value) -> Reply {
    s.http
        .post(
            &format!("/api/v1/orders/{order}/{what}"),
            Some(&token(user)),
            &body.to_string(),
        )
        .await
}

async fn review(s: &TestServer, order: &str, what: &str, approve: bool) -> Reply {
    let body = json!({"approve": approve, "note": "checked"}).to_string();
    s.http
        .admin(
            Method::POST,
            &format!("/admin/v1/orders/{order}/{what}"),
            &body,
        )
        .await
}

fn refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(
        (reply.status, reply.error()),
        (status, code),
        "{:?}",
        reply.body
    );
}

async fn order_of(s: &TestServer, user: &str, order: &str) -> Value {
    s.http
        .get(&format!("/api/v1/orders/{order}"), Some(&token(user)))
        .await
        .body
}

async fn events_of(s: &TestServer, order: &str) -> Vec<String> {
    s.audit().await.event_types(order).await
}

async fn a_paid_order_ships_is_delivered_invoiced_and_exchanged(backend: Backend) {
    let now = Timestamp::now();
    let s = server_at(&backend, now).await;
    let order = paid_order(&s, "alice").await;
    let paid = order_of(&s, "alice", &order).await;
    assert!(paid["paid_at"].is_string(), "{paid:?}");
    assert!(paid["estimated_ship_date"].is_string(), "{paid:?}");

    // Unsigned, wrongly signed and malformed notices change nothing.
    let shipped = carrier(&order, "shipped", now, "SF1001");
    let unsigned = s
        .http
        .post("/api/v1/logistics/notify", None, &shipped)
        .await;
    refused(&unsigned, 401, "unauthorized");
    let forged = s.http.notify_payment(&shipped).await;
    assert_eq!(
        forged.status, 400,
        "a payment-signed body is no carrier notice"
    );
    let wrong = s
        .http
        .post_with(
            "/api/v1/logistics/notify",
            None,
            &[("x-signature", "00ff")],
            &shipped,
        )
        .await;
    refused(&wrong, 401, "unauthorized");
    for bad in [
        carrier(&order, "lost", now, "SF1001"),
        carrier(&order, "shipped", now, ""),
        carrier(&order, "shipped", now + hours(1), "SF1001"),
        shipped.replace("顺丰速运", " "),
    ] {
        refused(&s.http.notify_logistics(&bad).await, 400, "invalid_request");
    }
    let unknown = carrier(
        "0190f0f0-0000-7000-8000-000000000000",
        "shipped",
        now,
        "SF1",
    );
    refused(&s.http.notify_logistics(&unknown).await, 404, "not_found");
    // Delivered before shipped is out of order.
    let early = s
        .http
        .notify_logistics(&carrier(&order, "delivered", now, "SF1001"))
        .await;
    refused(&early, 409, "invalid_transition");
    assert_eq!(early.body["status"], "paid");

    let on_its_way = s.http.notify_logistics(&shipped).await;
    assert_eq!(
        on_its_way.body["status"], "shipped",
        "{:?}",
        on_its_way.body
    );
    assert_eq!(on_its_way.body["tracking"][0]["tracking_number"], "SF1001");
    let again = s.http.notify_logistics(&shipped).await;
    assert_eq!(again.status, 200, "a repeated notice is answered");
    assert_eq!(again.body["status"], "shipped");
    // Shipped, it can no longer be refunded: it is returned once delivered.
    let late = ask(
        &s,
        "alice",
        &order,
        "refund",
        json!({"reason": "changed my mind"}),
    )
    .await;
    refused(&late, 409, "invalid_transition");
    let too_soon = ask(
        &s,
        "alice",
        &order,
        "invoice",
        json!({"title": "个人", "email": "alice@example.com"}),
    )
    .await;
    refused(&too_soon, 409, "invalid_transition");

    let delivered = s
        .http
        .notify_logistics(&carrier(&order, "delivered", now, "SF1001"))
        .await;
    assert_eq!(
        delivered.body["status"], "delivered",
        "{:?}",
        delivered.body
    );
    assert!(delivered.body["delivered_at"].is_string());
    assert!(delivered.body["no_reason_return_until"].is_string());
    // The shipped notice again, after delivery: still only a repeat.
    assert_eq!(
        s.http.notify_logistics(&shipped).await.body["status"],
        "delivered"
    );

    for bad in [
        json!({"title": "个人", "email": "not-an-address"}),
        json!({"title": " ", "email": "alice@example.com"}),
        json!({"title": "公司", "email": "a@example.com", "tax_id": "123"}),
        json!({"title": "公司", "email": "a@example.com", "bank": "x"}),
    ] {
        refused(
            &ask(&s, "alice", &order, "invoice", bad).await,
            400,
            "invalid_request",
        );
    }
    let invoice = json!({"title": "北京某某科技有限公司", "tax_id": "91110108MA01ABCD2X",
                         "email": "alice@example.com"});
    let invoiced = ask(&s, "alice", &order, "invoice", invoice.clone()).await;
    assert_eq!(invoiced.status, 200, "{:?}", invoiced.body);
    assert_eq!(invoiced.body["invoice"]["status"], "requested");
    refused(
        &ask(&s, "alice", &order, "invoice", invoice).await,
        409,
        "invoice_exists",
    );
    let not_hers = ask(
        &s,
        "bob",
        &order,
        "return",
        json!({"reason": "no_reason", "kind": "return"}),
    )
    .await;
    refused(&not_hers, 404, "not_found");

    // An exchange is for a quality problem.
    let bad_exchange = ask(
        &s,
        "alice",
        &order,
        "return",
        json!({"reason": "no_reason", "kind": "exchange"}),
    )
    .await;
    refused(&bad_exchange, 400, "invalid_request");
    let returning = ask(
        &s,
        "alice",
        &order,
        "return",
        json!({"reason": "no_reason", "kind": "return", "note": "不想要了"}),
    )
    .await;
    assert_eq!(
        returning.body["status"], "return_requested",
        "{:?}",
        returning.body
    );
    let rejected = review(&s, &order, "return", false).await;
    assert_eq!(rejected.body["status"], "delivered", "{:?}", rejected.body);
    let exchange = ask(
        &s,
        "alice",
        &order,
        "return",
        json!({"reason": "quality", "kind": "exchange", "note": "屏幕有坏点"}),
    )
    .await;
    assert_eq!(exchange.body["status"], "return_requested");
    assert_eq!(
        review(&s, &order, "return", true).await.body["status"],
        "return_approved"
    );
    // No refund for an exchange: the replacement ships instead.
    let refund = json!({"order_id": order, "refund_id": "rf-x", "amount": "1999.00"});
    refused(
        &s.http.notify_refund(&refund.to_string()).await,
        409,
        "invalid_transition",
    );
    let replacement = s
        .http
        .notify_logistics(&carrier(&order, "shipped", now, "SF2002"))
        .await;
    assert_eq!(
        replacement.body["status"], "exchanged",
        "{:?}",
        replacement.body
    );
    assert_eq!(replacement.body["tracking"].as_array().unwrap().len(), 3);
    refused(
        &review(&s, &order, "return", true).await,
        409,
        "invalid_transition",
    );

    assert_eq!(
        events_of(&s, &order).await,
        [
            "order.created",
            "order.paid",
            "order.shipped",
            "order.delivered",
            "order.invoice_requested",
            "order.return_requested",
            "order.return_rejected",
            "order.return_requested",
            "order.return_approved",
            "order.exchanged",
        ],
        "one event per change, none for refusals or repeats"
    );
}

async fn refunds_are_asked_reviewed_and_confirmed_and_give_the_units_back(backend: Backend) {
    let now = Timestamp::now();
    let s = server_at(&backend, now).await;
    let coupons = json!({"id": "c100", "kind": "amount", "value": "100.00", "min_spend": "0.00",
        "valid_from": (now - hours(1)).to_string(), "valid_until": (now + hours(2)).to_string(),
        "total": 5, "per_user": 1});
    let created = s
        .http
        .admin(Method::POST, "/admin/v1/coupons", &coupons.to_string())
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let coupon = s
        .http
        .post("/api/v1/coupons/c100/claim", Some(&token("carol")), "")
        .await;
    let coupon = coupon.body["id"].as_str().unwrap().to_owned();

    let won = s.http.reserve(DROP, SKU, 1, "carol").await;
    let order = won.body["id"].as_str().unwrap().to_owned();
    let remaining = s.http.remaining(DROP).await;
    let edited = s
        .http
        .edit_order("carol", &order, &json!({"coupon_id": coupon}).to_string())
        .await;
    assert_eq!(edited.body["amount_due"], "1899.00", "{:?}", edited.body);
    s.http
        .post("/api/v1/addresses", Some(&token("carol")), &address_body())
        .await;
    let intent = s
        .http
        .post(
            &format!("/api/v1/orders/{order}/pay"),
            Some(&token("carol")),
            r#"{"method": "wechat_pay"}"#,
        )
        .await;
    let notice = json!({"order_id": order, "transaction_id": "tx-carol",
                        "amount": intent.body["amount"], "method": "wechat_pay"});
    assert_eq!(
        s.http.notify_payment(&notice.to_string()).await.body["status"],
        "paid"
    );

    refused(
        &ask(&s, "carol", &order, "refund", json!({"reason": " "})).await,
        400,
        "invalid_request",
    );
    refused(
        &ask(&s, "carol", &order, "refund", json!({})).await,
        400,
        "invalid_request",
    );
    refused(
        &ask(&s, "dave", &order, "refund", json!({"reason": "x"})).await,
        404,
        "not_found",
    );
    let asked = ask(&s, "carol", &order, "refund", json!({"reason": "买错了"})).await;
    assert_eq!(asked.body["status"], "refund_requested", "{:?}", asked.body);
    assert_eq!(
        asked.body["refund"]["amount"], "1899.00",
        "what was paid, not the coupon"
    );
    refused(
        &ask(&s, "carol", &order, "refund", json!({"reason": "again"})).await,
        409,
        "invalid_transition",
    );
    let unauthorized = s
        .http
        .post(
            &format!("/admin/v1/orders/{order}/refund"),
            None,
            r#"{"approve": true}"#,
        )
        .await;
    refused(&unauthorized, 401, "unauthorized");
    assert_eq!(
        review(&s, &order, "refund", false).await.body["status"],
        "paid"
    );
    ask(&s, "carol", &order, "refund", json!({"reason": "买错了"})).await;
    assert_eq!(
        review(&s, &order, "refund", true).await.body["status"],
        "refunding"
    );
    refused(
        &review(&s, &order, "refund", true).await,
        409,
        "invalid_transition",
    );

    let confirm = |amount: &str, refund_id: &str| {
        json!({"order_id": order, "refund_id": refund_id, "amount": amount}).to_string()
    };
    let unsigned = s
        .http
        .post(
            "/api/v1/payments/refund-notify",
            None,
            &confirm("1899.00", "rf-1"),
        )
        .await;
    refused(&unsigned, 401, "unauthorized");
    refused(
        &s.http.notify_refund(&confirm("1999.00", "rf-1")).await,
        400,
        "amount_mismatch",
    );
    let refunded = s.http.notify_refund(&confirm("1899.00", "rf-1")).await;
    assert_eq!(refunded.body["status"], "refunded", "{:?}", refunded.body);
    assert_eq!(
        s.http
            .notify_refund(&confirm("1899.00", "rf-1"))
            .await
            .status,
        200,
        "a repeat"
    );
    assert_eq!(
        s.http.remaining(DROP).await,
        remaining + 1,
        "refunded before shipping: back on sale"
    );
    // The coupon is spent: a refund does not give it back.
    let listed = s.http.get("/api/v1/coupons", Some(&token("carol"))).await;
    assert_eq!(
        listed.body["coupons"][0]["status"], "used",
        "{:?}",
        listed.body
    );

    // A refund id belongs to one order.
    let other = paid_order(&s, "erin").await;
    ask(&s, "erin", &other, "refund", json!({"reason": "x"})).await;
    review(&s, &other, "refund", true).await;
    let reused = json!({"order_id": other, "refund_id": "rf-1", "amount": "1999.00"});
    refused(
        &s.http.notify_refund(&reused.to_string()).await,
        409,
        "duplicate_refund",
    );

    // Unpaid orders are cancelled, not refunded; cash on delivery is paid at the door.
    let pending = s.http.reserve(DROP, SKU, 1, "frank").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(
        &ask(&s, "frank", &pending, "refund", json!({"reason": "x"})).await,
        409,
        "invalid_transition",
    );
    s.http
        .post("/api/v1/addresses", Some(&token("frank")), &address_body())
        .await;
    let cod = s
        .http
        .post(
            &format!("/api/v1/orders/{pending}/pay"),
            Some(&token("frank")),
            r#"{"method": "cash_on_delivery"}"#,
        )
        .await;
    assert_eq!(
        cod.body["order"]["status"], "awaiting_delivery",
        "{:?}",
        cod.body
    );
    assert!(cod.body["order"]["estimated_ship_date"].is_string());
    let at_door = s
        .http
        .notify_logistics(&carrier(&pending, "delivered", now, "JD77"))
        .await;
    assert_eq!(at_door.body["status"], "delivered", "{:?}", at_door.body);
    assert_eq!(at_door.body["paid_amount"], "1999.00");

    assert_eq!(
        events_of(&s, &order).await,
        [
            "order.created",
            "order.paid",
            "order.refund_requested",
            "order.refund_rejected",
            "order.refund_requested",
            "order.refunding",
            "order.refunded"
        ]
    );
}

/// Local noon of `days` days before today, in Shanghai, and that date.
fn shanghai_day(days_before: i64) -> Date {
    let tz = TimeZone::get("Asia/Shanghai").unwrap();
    Timestamp::now().to_zoned(tz).date() - days_before.days()
}

fn shanghai(date: Date, hour: i8, minute: i8) -> Timestamp {
    let tz = TimeZone::get("Asia/Shanghai").unwrap();
    date.at(hour, minute, 0, 0)
        .to_zoned(tz)
        .unwrap()
        .timestamp()
}

/// Returns are counted in whole days in the drop's time zone from the day
/// after delivery: delivered at 23:59 or at 00:01, day 7 is in and day 8
/// out for a return without reason; day 15 in and day 16 out for quality.
async fn return_windows_close_at_day_boundaries_in_the_drops_time_zone(backend: Backend) {
    let today = shanghai_day(0);
    let start = shanghai(today - 17.days(), 9, 0);
    let s = server_at(&backend, start).await;
    let cases = [
        // (delivered on, at, reason, accepted)
        (7, (23, 59), "no_reason", true),
        (7, (0, 1), "no_reason", true),
        (8, (23, 59), "no_reason", false),
        (8, (0, 1), "no_reason", false),
        (15, (23, 59), "quality", true),
        (15, (0, 1), "quality", true),
        (8, (0, 1), "quality", true),
    ];
    let mut orders = Vec::new();
    for (i, (days, _, _, _)) in cases.iter().enumerate() {
        s.clock.set(start);
        let user = format!("shopper{i}");
        let order = paid_order(&s, &user).await;
        let shipped = carrier(&order, "shipped", start, &format!("SF{i}"));
        assert_eq!(
            s.http.notify_logistics(&shipped).await.body["status"],
            "shipped"
        );
        orders.push((user, order, *days));
    }
    let late = paid_order(&s, "late").await;
    s.http
        .notify_logistics(&carrier(&late, "shipped", start, "SF99"))
        .await;
    for ((user, order, days), (_, (h, m), _, _)) in orders.iter().zip(&cases) {
        let at = shanghai(today - days.days(), *h, *m);
        s.clock.set(at);
        let delivered = s
            .http
            .notify_logistics(&carrier(order, "delivered", at, &format!("D{user}")))
            .await;
        assert_eq!(
            delivered.body["status"], "delivered",
            "{user}: {:?}",
            delivered.body
        );
    }
    let at = shanghai(today - 16.days(), 23, 59);
    s.clock.set(at);
    s.http
        .notify_logistics(&carrier(&late, "delivered", at, "DL"))
        .await;

    // Today, late in the afternoon: more than 7 × 24 h after a delivery at
    // 00:01 seven days ago, and less than 8 × 24 h after one at 23:59.
    s.clock.set(shanghai(today, 17, 0));
    for ((user, order, days), (_, (h, m), reason, accepted)) in orders.iter().zip(&cases) {
        let asked = ask(
            &s,
            user,
            order,
            "return",
            json!({"reason": reason, "kind": "return"}),
        )
        .await;
        let case = format!("delivered {days} days ago at {h}:{m:02}, {reason}");
        if *accepted {
            assert_eq!(
                asked.body["status"], "return_requested",
                "{case}: {:?}",
                asked.body
            );
        } else {
            refused(&asked, 409, "return_window_closed");
        }
    }
    // Past every window, the sweeper completes the order; nothing comes back.
    let completed = wait_for_status(&s, "late", &late, "completed").await;
    assert!(completed["completed_at"].is_string(), "{completed:?}");
    let asked = ask(
        &s,
        "late",
        &late,
        "return",
        json!({"reason": "quality", "kind": "return"}),
    )
    .await;
    refused(&asked, 409, "invalid_transition");
    assert_eq!(
        events_of(&s, &late).await.last().unwrap(),
        "order.completed"
    );
}

async fn wait_for_status(s: &TestServer, user: &str, order: &str, status: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let read = order_of(s, user, order).await;
        if read["status"] == status {
            return read;
        }
        assert!(started.elapsed().as_secs() < 5, "never {status}: {read:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A shopper asks for a refund while the carrier reports the parcel
/// shipped: one of the two wins, the other is refused, never both.
async fn a_refund_racing_a_shipping_notice_ends_in_exactly_one(backend: Backend) {
    let now = Timestamp::now();
    let s = server_at(&backend, now).await;
    let mut orders = Vec::new();
    for i in 0..10 {
        orders.push(paid_order(&s, &format!("racer{}", i % 5)).await);
    }
    for (i, order) in orders.iter().enumerate() {
        let user = format!("racer{}", i % 5);
        let shipped = carrier(order, "shipped", now, &format!("SF{i}"));
        let (refund, ship) = tokio::join!(
            ask(&s, &user, order, "refund", json!({"reason": "race"})),
            s.http.notify_logistics(&shipped)
        );
        let status = s.audit().await.status_of(order).await;
        match (refund.status, ship.status) {
            (200, 409) => assert_eq!(status, "refund_requested"),
            (409, 200) => assert_eq!(status, "shipped"),
            other => panic!(
                "both or neither: {other:?} {:?} {:?}",
                refund.body, ship.body
            ),
        }
        assert_eq!(
            events_of(&s, order).await.len(),
            3,
            "created, paid, and one of the two: {:?}",
            events_of(&s, order).await
        );
    }
}

async fn operators_search_see_masked_phones_and_cancel_unpaid_orders(backend: Backend) {
    let now = Timestamp::now();
    let s = server_at(&backend, now).await;
    let paid = paid_order(&s, "gina").await;
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(
            s.http.reserve(DROP, SKU, 1, "gina").await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    s.http.reserve(DROP, SKU, 1, "hank").await;
    // In Redis mode wins reach the store through the order writer.
    let started = std::time::Instant::now();
    while s.audit().await.count_where("1 = 1").await < 5 {
        assert!(
            started.elapsed().as_secs() < 5,
            "the wins never reached the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let page = s
        .http
        .admin(Method::GET, "/admin/v1/orders?user=gina&limit=2", "")
        .await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let first: Vec<&str> = page.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [paid.as_str(), pending[0].as_str()], "oldest first");
    let next = page.body["next"].as_str().unwrap();
    let rest = s
        .http
        .admin(
            Method::GET,
            &format!("/admin/v1/orders?user=gina&limit=2&after={next}"),
            "",
        )
        .await;
    assert_eq!(rest.body["orders"].as_array().unwrap().len(), 2);
    let last = s
        .http
        .admin(
            Method::GET,
            &format!("/admin/v1/orders?user=gina&limit=2&after={}", pending[2]),
            "",
        )
        .await;
    assert_eq!(
        (
            last.body["orders"].as_array().unwrap().len(),
            &last.body["next"]
        ),
        (0, &Value::Null)
    );
    let by_status = s
        .http
        .admin(
            Method::GET,
            &format!("/admin/v1/orders?drop={DROP}&status=paid"),
            "",
        )
        .await;
    let shown = &by_status.body["orders"][0];
    assert_eq!(
        (
            by_status.body["orders"].as_array().unwrap().len(),
            shown["id"].as_str()
        ),
        (1, Some(paid.as_str()))
    );
    assert_eq!(
        shown["address"]["phone"], "138****8000",
        "operators see phones masked"
    );
    let one = s
        .http
        .admin(Method::GET, &format!("/admin/v1/orders/{paid}"), "")
        .await;
    assert_eq!(one.body["address"]["phone"], "138****8000");
    for bad in [
        "status=sent",
        "limit=0",
        "limit=501",
        "after=../x",
        "colour=red",
        "user=a&user=b",
    ] {
        let reply = s
            .http
            .admin(Method::GET, &format!("/admin/v1/orders?{bad}"), "")
            .await;
        refused(&reply, 400, "invalid_request");
    }
    let anonymous = s.http.get("/admin/v1/orders", None).await;
    refused(&anonymous, 401, "unauthorized");

    // The shopper's own list pages and filters the same way.
    let mine = s
        .http
        .get(
            "/api/v1/orders?status=pending_payment&limit=2",
            Some(&token("gina")),
        )
        .await;
    let ids: Vec<&str> = mine.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [pending[0].as_str(), pending[1].as_str()]);
    assert_eq!(mine.body["orders"][0]["address"], Value::Null);
    refused(
        &s.http
            .get("/api/v1/orders?user=hank", Some(&token("gina")))
            .await,
        400,
        "invalid_request",
    );

    let remaining = s.http.remaining(DROP).await;
    let cancelled = s
        .http
        .admin(
            Method::POST,
            &format!("/admin/v1/orders/{}/cancel", pending[0]),
            "",
        )
        .await;
    assert_eq!(
        cancelled.body["status"], "cancelled",
        "{:?}",
        cancelled.body
    );
    assert_eq!(s.http.remaining(DROP).await, remaining + 1);
    let paid_cancel = s
        .http
        .admin(Method::POST, &format!("/admin/v1/orders/{paid}/cancel"), "")
        .await;
    refused(&paid_cancel, 409, "invalid_transition");
    assert_eq!(paid_cancel.body["status"], "paid");

    // Pull consumers read every event once, in order, page after page.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = s
            .http
            .admin(
                Method::GET,
                &format!("/admin/v1/events?after={after}&limit=3"),
                "",
            )
            .await;
        let events = page.body["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        for e in &events {
            assert!(e["id"].as_i64().unwrap() > after);
            after = e["id"].as_i64().unwrap();
            seen.push((
                e["order_id"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            ));
        }
        assert_eq!(page.body["next"], after);
    }
    let created = seen.iter().filter(|(_, t)| t == "order.created").count();
    assert_eq!(created, 5, "{seen:?}");
    assert!(seen.contains(&(pending[0].clone(), "order.cancelled".into())));
    let paid_event = s
        .http
        .admin(Method::GET, "/admin/v1/events?limit=500", "")
        .await;
    let paid_event = paid_event.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "order.paid")
        .unwrap()
        .clone();
    assert!(
        paid_event["order"]["estimated_ship_date"].is_string(),
        "the SMS says when it ships"
    );
    assert_eq!(
        paid_event["order"]["address"]["phone"], "13800138000",
        "consumers get what they need"
    );
    refused(
        &s.http
            .admin(Method::GET, "/admin/v1/events?after=-1", "")
            .await,
        400,
        "invalid_request",
    );
}

/// A presale's deposit is refunded on request before the balance window
/// opens, not after.
async fn a_deposit_is_refunded_only_before_the_balance_window(backend: Backend) {
    let now = Timestamp::now();
    let config = config_head("")
        + &window_drop("pre", SKU, 20, 2, now - hours(1), now + hours(6))
            .replace("pay_within = \"15m\"",
                "pay_within = \"15m\"\npresale = true\nbalance_from = \"2h\"\nbalance_until = \"4h\"")
            .replace("stock = 20", "stock = 20\ndeposit = \"500.00\"");
    let s = backend.start(&config, now).await;
    let terms = format!(r#"{{"sku": "{SKU}", "accept_presale_terms": true}}"#);
    let mut orders = Vec::new();
    for user in ["ivy", "jack"] {
        let won = s
            .http
            .reserve_keyed("pre", user, &format!("k-{user}"), &terms)
            .await;
        let order = won.body["id"].as_str().unwrap().to_owned();
        let notice = json!({"order_id": order, "transaction_id": format!("dep-{user}"),
                            "amount": "500.00", "method": "alipay"});
        let paid = s.http.notify_payment(&notice.to_string()).await;
        assert_eq!(paid.body["status"], "deposit_paid", "{:?}", paid.body);
        assert!(paid.body["estimated_ship_date"].is_string());
        orders.push(order);
    }
    let asked = ask(&s, "ivy", &orders[0], "refund", json!({"reason": "不要了"})).await;
    assert_eq!(asked.body["refund"]["amount"], "500.00", "{:?}", asked.body);
    assert_eq!(
        review(&s, &orders[0], "refund", false).await.body["status"],
        "deposit_paid"
    );
    s.clock.advance(SignedDuration::from_hours(2));
    let too_late = ask(
        &s,
        "jack",
        &orders[1],
        "refund",
        json!({"reason": "不要了"}),
    )
    .await;
    refused(&too_late, 409, "invalid_transition");
}

/// One order delivered twice in one commit (the Redis order writer and a
/// payment that stored the win ahead of it can meet in one batch) is one
/// row and one `order.created` event (I8).
async fn an_order_stored_twice_in_one_commit_has_one_created_event(backend: Backend) {
    let now = Timestamp::now();
    let s = server_at(&backend, now).await;
    let won = s.http.reserve(DROP, SKU, 1, "twice").await;
    let mut copy = won.body.clone();
    let id = dropgate::domain::OrderId::generate();
    copy["id"] = json!(id.as_str());
    copy["user_id"] = json!("twice-again");
    let order: dropgate::order::Order = serde_json::from_value(copy).unwrap();
    let refused = s
        .app
        .store
        .insert_many(vec![(order.clone(), None), (order, None)])
        .await
        .unwrap();
    assert!(refused.is_empty());
    assert_eq!(events_of(&s, id.as_str()).await, ["order.created"]);
}

conformance!(
    an_order_stored_twice_in_one_commit_has_one_created_event,
    a_paid_order_ships_is_delivered_invoiced_and_exchanged,
    refunds_are_asked_reviewed_and_confirmed_and_give_the_units_back,
    return_windows_close_at_day_boundaries_in_the_drops_time_zone,
    a_refund_racing_a_shipping_notice_ends_in_exactly_one,
    operators_search_see_masked_phones_and_cancel_unpaid_orders,
    a_deposit_is_refunded_only_before_the_balance_window,
);
