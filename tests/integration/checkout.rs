//! Checkout after the win: delivery addresses and the edit of a pending
//! order, in both engines and both stores (the conformance backends), and
//! the address limit under racing instances.

use hyper::Method;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use crate::conformance::{conformance, Backend};
use crate::support::*;

const DROP: &str = "shop";
const SKU: &str = "sku";

async fn server(backend: &Backend) -> TestServer {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 20, 2, now - hours(1), now + hours(1));
    backend.start(&config, now).await
}

fn address(name: &str, region: &str, default: bool) -> String {
    json!({
        "name": name, "phone": "13800138000", "region": region,
        "detail": "海淀区清河中街68号", "default": default
    })
    .to_string()
}

async fn add_address(http: &Http, user: &str, body: &str) -> Reply {
    http.post("/api/v1/addresses", Some(&token(user)), body)
        .await
}

async fn addresses_of(http: &Http, user: &str) -> Vec<Value> {
    let listed = http.get("/api/v1/addresses", Some(&token(user))).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    listed.body["addresses"].as_array().unwrap().clone()
}

async fn addresses_are_checked_kept_and_deleted(backend: Backend) {
    let s = server(&backend).await;
    let first = add_address(&s.http, "alice", &address("张三", "北京市", false)).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(
        first.body["default"], true,
        "the first address is the default"
    );
    assert_eq!(first.body["region"], "北京市");

    let good = address("张三", "北京市", false);
    for (bad, status, code) in [
        (
            good.replace("13800138000", "12800138000"),
            400,
            "invalid_request",
        ),
        (
            good.replace("13800138000", "1380013800"),
            400,
            "invalid_request",
        ),
        (good.replace("张三", " "), 400, "invalid_request"),
        (
            good.replace("\"default\"", "\"colour\""),
            400,
            "invalid_request",
        ),
        (r#"{"name": "张三"}"#.to_owned(), 400, "invalid_request"),
        ("not json".to_owned(), 400, "invalid_request"),
        (
            good.replace("北京市", "香港特别行政区"),
            422,
            "undeliverable",
        ),
        (good.replace("北京市", "台湾省"), 422, "undeliverable"),
    ] {
        let refused = add_address(&s.http, "alice", &bad).await;
        assert_eq!((refused.status, refused.error()), (status, code), "{bad}");
    }
    let unauthenticated = s.http.post("/api/v1/addresses", None, &good).await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(
        addresses_of(&s.http, "alice").await.len(),
        1,
        "nothing added"
    );

    let second = add_address(&s.http, "alice", &address("李四", "广西壮族自治区", true)).await;
    assert_eq!(second.body["default"], true);
    let listed = addresses_of(&s.http, "alice").await;
    assert_eq!(listed[0]["id"], second.body["id"], "the default first");
    assert_eq!(listed[1]["default"], false, "one default only");
    assert!(addresses_of(&s.http, "bob").await.is_empty());

    let path = format!("/api/v1/addresses/{}", second.body["id"].as_str().unwrap());
    let not_bobs = s
        .http
        .send(
            Method::DELETE,
            &path,
            &[("authorization", &format!("Bearer {}", token("bob")))],
            vec![],
        )
        .await;
    assert_eq!((not_bobs.status, not_bobs.error()), (404, "not_found"));
    let auth = format!("Bearer {}", token("alice"));
    let deleted = s
        .http
        .send(Method::DELETE, &path, &[("authorization", &auth)], vec![])
        .await;
    assert_eq!(deleted.status, 200);
    let again = s
        .http
        .send(Method::DELETE, &path, &[("authorization", &auth)], vec![])
        .await;
    assert_eq!(again.status, 404);
    let left = addresses_of(&s.http, "alice").await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0]["default"], true,
        "the newest remaining becomes the default"
    );

    for n in 1..20 {
        let added = add_address(
            &s.http,
            "alice",
            &address(&format!("收件人{n}"), "上海市", false),
        )
        .await;
        assert_eq!(added.status, 201, "address {n}: {:?}", added.body);
    }
    let over = add_address(&s.http, "alice", &good).await;
    assert_eq!((over.status, over.error()), (409, "too_many_addresses"));
    assert_eq!(addresses_of(&s.http, "alice").await.len(), 20);
}

async fn a_pending_order_keeps_a_copy_of_its_address(backend: Backend) {
    let s = server(&backend).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(won.status, 201);
    assert!(won.body.get("address").is_none(), "no address at the win");
    let order = won.body["id"].as_str().unwrap();
    let home = add_address(&s.http, "alice", &address("张三", "浙江省", false)).await;
    let home_id = home.body["id"].as_str().unwrap();

    for (body, code) in [
        ("{}".to_owned(), "invalid_request"),
        (
            r#"{"address_id": "no-such-address"}"#.to_owned(),
            "invalid_request",
        ),
        (r#"{"colour": "red"}"#.to_owned(), "invalid_request"),
        ("not json".to_owned(), "invalid_request"),
    ] {
        let refused = s.http.edit_order("alice", order, &body).await;
        assert_eq!((refused.status, refused.error()), (400, code), "{body}");
    }
    let edit = json!({ "address_id": home_id }).to_string();
    let bobs_address = add_address(&s.http, "bob", &address("王五", "浙江省", false)).await;
    let with_bobs = json!({ "address_id": bobs_address.body["id"] }).to_string();
    let refused = s.http.edit_order("alice", order, &with_bobs).await;
    assert_eq!(refused.status, 400, "another shopper's address");
    let not_bobs = s.http.edit_order("bob", order, &edit).await;
    assert_eq!((not_bobs.status, not_bobs.error()), (404, "not_found"));

    let edited = s.http.edit_order("alice", order, &edit).await;
    assert_eq!(edited.status, 200, "{:?}", edited.body);
    assert_eq!(edited.body["address"]["region"], "浙江省");
    assert_eq!(edited.body["address"]["name"], "张三");
    assert_eq!(edited.body["amount_due"], won.body["amount_due"]);

    // The order keeps its copy when the address is deleted.
    let auth = format!("Bearer {}", token("alice"));
    let path = format!("/api/v1/addresses/{home_id}");
    assert_eq!(
        s.http
            .send(Method::DELETE, &path, &[("authorization", &auth)], vec![])
            .await
            .status,
        200
    );
    let read = s
        .http
        .get(&format!("/api/v1/orders/{order}"), Some(&token("alice")))
        .await;
    assert_eq!(read.body["address"], edited.body["address"]);

    let other = add_address(&s.http, "alice", &address("张三", "江苏省", false)).await;
    assert_eq!(s.http.cancel(order, "alice").await.status, 200);
    let late = json!({ "address_id": other.body["id"] }).to_string();
    let refused = s.http.edit_order("alice", order, &late).await;
    assert_eq!(
        (refused.status, refused.error()),
        (409, "not_editable"),
        "a cancelled order cannot change"
    );
    let read = s
        .http
        .get(&format!("/api/v1/orders/{order}"), Some(&token("alice")))
        .await;
    assert_eq!(read.body["address"]["region"], "浙江省");
}

/// One shopper adding addresses through two instances at once keeps no
/// more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_instances_keep_the_address_limit() {
    let pg = PostgresServer::start();
    let redis = RedisServer::start();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let engine = redis.engine();
    let a = TestServer::start_with_database(&config, &pg.database(), now, &engine).await;
    let b = TestServer::start_with_database(&config, &pg.database(), now, &engine).await;
    let mut adds = Vec::new();
    for n in 0..30 {
        let http = if n % 2 == 0 {
            a.http.clone()
        } else {
            b.http.clone()
        };
        adds.push(tokio::spawn(async move {
            add_address(
                &http,
                "alice",
                &address(&format!("收件人{n}"), "北京市", n == 7),
            )
            .await
            .status
        }));
    }
    let mut statuses = Vec::new();
    for add in adds {
        statuses.push(add.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        10,
        "{statuses:?}"
    );
    let listed = addresses_of(&a.http, "alice").await;
    assert_eq!(listed.len(), 20);
    assert_eq!(listed.iter().filter(|a| a["default"] == true).count(), 1);
}

async fn pay_as(http: &Http, user: &str, order: &str, body: &str) -> Reply {
    http.post(
        &format!("/api/v1/orders/{order}/pay"),
        Some(&token(user)),
        body,
    )
    .await
}

fn notice(order: &str, transaction: &str, amount: &str, method: &str) -> String {
    json!({"order_id": order, "transaction_id": transaction, "amount": amount, "method": method})
        .to_string()
}

/// `[payments]` caps cash on delivery at 2500.00; the `strict` drop offers
/// Alipay and cash on delivery only, the latter up to 1000.00; `pre` is a
/// presale with a 500.00 deposit.
async fn payment_server(backend: &Backend) -> TestServer {
    let now = Timestamp::now();
    let (opens, closes) = (now - hours(1), now + hours(6));
    let config = config_head("")
        + "[payments]\ncod_max_amount = \"2500.00\"\n"
        + &window_drop(DROP, SKU, 20, 2, opens, closes)
        + &window_drop("strict", SKU, 20, 2, opens, closes).replace(
            "pay_within = \"15m\"",
            "pay_within = \"15m\"\npayment_methods = [\"alipay\", \"cash_on_delivery\"]\ncod_max_amount = \"1000.00\"",
        )
        + &window_drop("pre", SKU, 20, 2, opens, closes)
            .replace(
                "pay_within = \"15m\"",
                "pay_within = \"15m\"\npresale = true\nbalance_from = \"2h\"\nbalance_until = \"4h\"",
            )
            .replace("stock = 20", "stock = 20\ndeposit = \"500.00\"");
    backend.start(&config, now).await
}

async fn a_payment_intent_follows_the_rules_and_the_notice_must_match_it(backend: Backend) {
    let s = payment_server(&backend).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    let order = won.body["id"].as_str().unwrap();
    let alipay = r#"{"method": "alipay"}"#;
    let refused = pay_as(&s.http, "alice", order, alipay).await;
    assert_eq!((refused.status, refused.error()), (409, "address_required"));

    add_address(&s.http, "alice", &address("张三", "四川省", false)).await;
    for bad in [
        r#"{"method": "installment"}"#,
        r#"{"method": "installment", "installments": 5}"#,
        r#"{"method": "alipay", "installments": 3}"#,
        r#"{"method": "bitcoin"}"#,
        r#"{"method": "alipay", "colour": "red"}"#,
        "not json",
    ] {
        let refused = pay_as(&s.http, "alice", order, bad).await;
        assert_eq!(
            (refused.status, refused.error()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let first = pay_as(&s.http, "alice", order, alipay).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["amount"], "1999.00");
    assert_eq!(first.body["method"], "alipay");
    assert_eq!(
        first.body["order"]["address"]["region"], "四川省",
        "the default is copied"
    );
    // The shopper changes their mind: the new intent replaces the first.
    let huabei = pay_as(
        &s.http,
        "alice",
        order,
        r#"{"method": "huabei", "installments": 12}"#,
    )
    .await;
    assert_eq!(huabei.status, 200, "{:?}", huabei.body);
    assert_eq!(huabei.body["installments"], 12);
    assert_ne!(huabei.body["payment_id"], first.body["payment_id"]);

    let wrong_method = s
        .http
        .notify_payment(&notice(order, "tx-a1", "1999.00", "alipay"))
        .await;
    assert_eq!(
        (wrong_method.status, wrong_method.error()),
        (400, "method_mismatch")
    );
    let wrong_amount = s
        .http
        .notify_payment(&notice(order, "tx-a1", "1899.00", "huabei"))
        .await;
    assert_eq!(
        (wrong_amount.status, wrong_amount.error()),
        (400, "amount_mismatch")
    );
    let paid = s
        .http
        .notify_payment(&notice(order, "tx-a1", "1999.00", "huabei"))
        .await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    assert_eq!(paid.body["status"], "paid");
    assert_eq!(paid.body["payment_method"], "huabei");
    assert_eq!(paid.body["installments"], 12);
    let late = pay_as(&s.http, "alice", order, alipay).await;
    assert_eq!((late.status, late.error()), (409, "not_payable"));
    let stranger = pay_as(&s.http, "bob", order, alipay).await;
    assert_eq!((stranger.status, stranger.error()), (404, "not_found"));
}

async fn cash_on_delivery_is_capped_and_awaits_delivery(backend: Backend) {
    let s = payment_server(&backend).await;
    let cod = r#"{"method": "cash_on_delivery"}"#;
    for user in ["bob", "carol", "dave"] {
        add_address(&s.http, user, &address("收件人", "湖北省", true)).await;
    }
    // Two units: 3998.00, above the store's cap of 2500.00.
    let big = s.http.reserve(DROP, SKU, 2, "bob").await;
    let refused = pay_as(&s.http, "bob", big.body["id"].as_str().unwrap(), cod).await;
    assert_eq!(
        (refused.status, refused.error()),
        (409, "method_not_allowed")
    );

    let before = s.http.remaining(DROP).await;
    let small = s.http.reserve(DROP, SKU, 1, "carol").await;
    let order = small.body["id"].as_str().unwrap();
    let taken = pay_as(&s.http, "carol", order, cod).await;
    assert_eq!(taken.status, 200, "{:?}", taken.body);
    assert_eq!(taken.body["order"]["status"], "awaiting_delivery");
    assert_eq!(
        s.http.remaining(DROP).await,
        before - 1,
        "the unit stays sold"
    );
    let notified = s
        .http
        .notify_payment(&notice(order, "tx-c1", "1999.00", "cash_on_delivery"))
        .await;
    assert_eq!((notified.status, notified.error()), (409, "not_payable"));
    assert_eq!(
        s.http.cancel(order, "carol").await.error(),
        "not_cancellable"
    );

    // The strict drop: its own methods and cap.
    let strict = s.http.reserve("strict", SKU, 1, "dave").await;
    let strict_order = strict.body["id"].as_str().unwrap();
    for method in ["wechat_pay", "cash_on_delivery"] {
        let body = json!({ "method": method }).to_string();
        let refused = pay_as(&s.http, "dave", strict_order, &body).await;
        assert_eq!(
            (refused.status, refused.error()),
            (409, "method_not_allowed"),
            "{method}"
        );
    }
    assert_eq!(
        pay_as(&s.http, "dave", strict_order, r#"{"method": "alipay"}"#)
            .await
            .status,
        200
    );

    // A presale deposit is never paid on delivery; its intent is for the deposit.
    let pre = s
        .http
        .reserve_keyed(
            "pre",
            "bob",
            "k1",
            &format!(r#"{{"sku": "{SKU}", "accept_presale_terms": true}}"#),
        )
        .await;
    assert_eq!(pre.status, 201, "{:?}", pre.body);
    let pre_order = pre.body["id"].as_str().unwrap();
    let refused = pay_as(&s.http, "bob", pre_order, cod).await;
    assert_eq!(
        (refused.status, refused.error()),
        (409, "method_not_allowed")
    );
    let deposit = pay_as(&s.http, "bob", pre_order, r#"{"method": "wechat_pay"}"#).await;
    assert_eq!(deposit.body["amount"], "500.00");

    let db = s.audit().await;
    assert_eq!(
        db.count_where("status = 'awaiting_delivery' AND payment_method = 'cash_on_delivery'")
            .await,
        1
    );
}

/// Waits for the sweeper to move `order` to `status` (it runs every 50 ms).
async fn sweeps_to(s: &TestServer, order: &str, user: &str, status: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let read = s
            .http
            .get(&format!("/api/v1/orders/{order}"), Some(&token(user)))
            .await;
        if read.body["status"] == status {
            return read.body;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "never {status}: {:?}",
            read.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The `pre` drop opened an hour ago; its balance window is 2 h to 4 h
/// after the opening.
async fn a_presale_takes_the_deposit_then_the_balance_or_is_forfeited(backend: Backend) {
    let s = payment_server(&backend).await;
    let terms = format!(r#"{{"sku": "{SKU}", "quantity": 2, "accept_presale_terms": true}}"#);
    let won = s.http.reserve_keyed("pre", "bob", "k-bob", &terms).await;
    assert_eq!(won.status, 201, "{:?}", won.body);
    assert_eq!(won.body["amount_due"], "3998.00");
    assert_eq!(won.body["deposit_due"], "1000.00");
    assert_eq!(won.body["balance_due"], "2998.00");
    let created: Timestamp = won.body["created_at"].as_str().unwrap().parse().unwrap();
    let from: Timestamp = won.body["balance_from"].as_str().unwrap().parse().unwrap();
    let until: Timestamp = won.body["balance_until"].as_str().unwrap().parse().unwrap();
    assert_eq!(until.duration_since(from), SignedDuration::from_hours(2));
    // The round opened an hour before the win; the window starts 2 h after that.
    let to_window = from.duration_since(created);
    assert!(
        to_window > SignedDuration::from_mins(55) && to_window <= SignedDuration::from_mins(61),
        "{to_window}"
    );
    let order = won.body["id"].as_str().unwrap();
    add_address(&s.http, "bob", &address("收件人", "福建省", true)).await;

    let deposit = pay_as(&s.http, "bob", order, r#"{"method": "wechat_pay"}"#).await;
    assert_eq!(deposit.body["amount"], "1000.00");
    let paid = s
        .http
        .notify_payment(&notice(order, "tx-dep", "1000.00", "wechat_pay"))
        .await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    assert_eq!(paid.body["status"], "deposit_paid");
    assert_eq!(paid.body["paid_amount"], "1000.00");
    assert!(
        paid.body.get("payment_id").is_none(),
        "the deposit's intent is spent"
    );

    // Before the window: nothing to pay yet.
    let early = pay_as(&s.http, "bob", order, r#"{"method": "alipay"}"#).await;
    assert_eq!((early.status, early.error()), (409, "not_payable"));
    let early = s
        .http
        .notify_payment(&notice(order, "tx-bal", "2998.00", "alipay"))
        .await;
    assert_eq!((early.status, early.error()), (409, "not_payable"));

    s.clock.advance(SignedDuration::from_mins(61));
    let cod = pay_as(&s.http, "bob", order, r#"{"method": "cash_on_delivery"}"#).await;
    assert_eq!((cod.status, cod.error()), (409, "method_not_allowed"));
    let balance = pay_as(&s.http, "bob", order, r#"{"method": "alipay"}"#).await;
    assert_eq!(balance.status, 200, "{:?}", balance.body);
    assert_eq!(balance.body["amount"], "2998.00");
    let again = s
        .http
        .notify_payment(&notice(order, "tx-dep", "1000.00", "wechat_pay"))
        .await;
    assert_eq!(
        (again.status, &again.body["status"]),
        (200, &json!("deposit_paid")),
        "a redelivered deposit notice"
    );
    let short = s
        .http
        .notify_payment(&notice(order, "tx-bal", "1000.00", "alipay"))
        .await;
    assert_eq!((short.status, short.error()), (400, "amount_mismatch"));
    let done = s
        .http
        .notify_payment(&notice(order, "tx-bal", "2998.00", "alipay"))
        .await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.body["status"], "paid");
    assert_eq!(done.body["paid_amount"], "3998.00");

    // Carol pays her deposit but never the balance: forfeited, deposit kept, unit back.
    let carol = s
        .http
        .reserve_keyed("pre", "carol", "k-carol", &terms.replace("2,", "1,"))
        .await;
    let carols = carol.body["id"].as_str().unwrap();
    let kept = s
        .http
        .notify_payment(&notice(carols, "tx-carol", "500.00", "mi_wallet"))
        .await;
    assert_eq!(kept.body["status"], "deposit_paid", "{:?}", kept.body);
    let remaining = s.http.remaining("pre").await;
    s.clock.advance(SignedDuration::from_mins(180));
    let forfeited = sweeps_to(&s, carols, "carol", "forfeited").await;
    assert_eq!(forfeited["paid_amount"], "500.00");
    let started = std::time::Instant::now();
    while s.http.remaining("pre").await != remaining + 1 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the unit never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let late = s
        .http
        .notify_payment(&notice(carols, "tx-carol-2", "500.00", "mi_wallet"))
        .await;
    assert_eq!((late.status, late.error()), (409, "not_payable"));

    // Won after the window closed (the sale is still open): no deposit is
    // taken for a balance that can no longer be paid; the order expires.
    let erin = s
        .http
        .reserve_keyed("pre", "erin", "k-erin", &terms.replace("2,", "1,"))
        .await;
    let erins = erin.body["id"].as_str().unwrap();
    add_address(&s.http, "erin", &address("收件人", "福建省", true)).await;
    let intent = pay_as(&s.http, "erin", erins, r#"{"method": "alipay"}"#).await;
    assert_eq!((intent.status, intent.error()), (409, "not_payable"));
    let deposit = s
        .http
        .notify_payment(&notice(erins, "tx-erin", "500.00", "alipay"))
        .await;
    assert_eq!((deposit.status, deposit.error()), (409, "not_payable"));
    sweeps_to(&s, erins, "erin", "expired").await;

    let db = s.audit().await;
    assert_eq!(
        db.count_where("status = 'forfeited' AND paid_amount = '500.00'")
            .await,
        1
    );
    assert_eq!(
        db.count_where("status = 'paid' AND paid_amount = '3998.00'")
            .await,
        1
    );
}

conformance!(
    addresses_are_checked_kept_and_deleted,
    a_pending_order_keeps_a_copy_of_its_address,
    a_payment_intent_follows_the_rules_and_the_notice_must_match_it,
    cash_on_delivery_is_capped_and_awaits_delivery,
    a_presale_takes_the_deposit_then_the_balance_or_is_forfeited,
    coupons_are_claimed_within_their_counts_and_used_once,
);

fn batch(id: &str, kind: &str, value: &str, min_spend: &str, total: u64, per_user: u32) -> Value {
    let now = Timestamp::now();
    json!({
        "id": id, "kind": kind, "value": value, "min_spend": min_spend,
        "valid_from": (now - hours(1)).to_string(), "valid_until": (now + hours(2)).to_string(),
        "total": total, "per_user": per_user
    })
}

async fn claim(http: &Http, batch: &str, token: &str) -> Reply {
    http.post(&format!("/api/v1/coupons/{batch}/claim"), Some(token), "")
        .await
}

async fn coupon_status(http: &Http, user: &str, coupon: &str) -> String {
    let listed = http.get("/api/v1/coupons", Some(&token(user))).await;
    let coupons = listed.body["coupons"].as_array().unwrap();
    let found = coupons
        .iter()
        .find(|c| c["id"] == coupon)
        .expect("the coupon is listed");
    found["status"].as_str().unwrap().to_owned()
}

async fn coupons_are_claimed_within_their_counts_and_used_once(backend: Backend) {
    let s = payment_server(&backend).await;
    let c200 = batch("c200", "amount", "200.00", "1000.00", 3, 2);
    let created = s
        .http
        .admin(Method::POST, "/admin/v1/coupons", &c200.to_string())
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["claimed"], 0);
    let mut student = batch("stu", "percent", "10", "0.00", 5, 1);
    student["student_only"] = json!(true);
    assert_eq!(
        s.http
            .admin(Method::POST, "/admin/v1/coupons", &student.to_string())
            .await
            .status,
        201
    );
    let again = s
        .http
        .admin(Method::POST, "/admin/v1/coupons", &c200.to_string())
        .await;
    assert_eq!((again.status, again.error()), (409, "coupon_batch_exists"));
    let mut bad = c200.clone();
    bad["id"] = json!("bad");
    bad["per_user"] = json!(9);
    let refused = s
        .http
        .admin(Method::POST, "/admin/v1/coupons", &bad.to_string())
        .await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_request"));
    let shopper = s
        .http
        .post(
            "/admin/v1/coupons",
            Some(&token("mallory")),
            &bad.to_string(),
        )
        .await;
    assert_eq!(shopper.status, 401);

    let alice = token("alice");
    let first = claim(&s.http, "c200", &alice).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["status"], "available");
    let second = claim(&s.http, "c200", &alice).await;
    assert_eq!(second.status, 201);
    let third = claim(&s.http, "c200", &alice).await;
    assert_eq!((third.status, third.error()), (409, "limit_exceeded"));
    assert_eq!(claim(&s.http, "c200", &token("bob")).await.status, 201);
    let gone = claim(&s.http, "c200", &token("carol")).await;
    assert_eq!((gone.status, gone.error()), (409, "sold_out"));
    assert_eq!(claim(&s.http, "nope", &alice).await.status, 404);
    let not_student = claim(&s.http, "stu", &alice).await;
    assert_eq!(
        (not_student.status, not_student.error()),
        (403, "student_only")
    );
    let student_token = dropgate::auth::mint(
        JWT_SECRET,
        &dropgate::domain::UserId::parse("dave").unwrap(),
        3600,
        true,
    );
    assert_eq!(claim(&s.http, "stu", &student_token).await.status, 201);
    let listed = s.http.admin(Method::GET, "/admin/v1/coupons", "").await;
    assert_eq!(listed.body["batches"][0]["claimed"], 3);

    // On an order: 1999.00 − 200.00; single use; off and on again; back on cancel.
    let coupon = first.body["id"].as_str().unwrap();
    let one = s.http.reserve(DROP, SKU, 1, "alice").await;
    let two = s.http.reserve(DROP, SKU, 1, "alice").await;
    let (one, two) = (
        one.body["id"].as_str().unwrap(),
        two.body["id"].as_str().unwrap(),
    );
    let put = json!({ "coupon_id": coupon }).to_string();
    let priced = s.http.edit_order("alice", one, &put).await;
    assert_eq!(priced.status, 200, "{:?}", priced.body);
    assert_eq!(priced.body["amount_due"], "1799.00");
    assert_eq!(priced.body["coupon_id"], coupon);
    let discounts = priced.body["pricing"]["discounts"].as_array().unwrap();
    assert_eq!(discounts[0]["source"], format!("coupon:{coupon}"));
    assert_eq!(coupon_status(&s.http, "alice", coupon).await, "used");
    let twice = s.http.edit_order("alice", two, &put).await;
    assert_eq!((twice.status, twice.error()), (409, "coupon_used"));
    // Two checkouts at once, on two orders, with one free coupon: one wins.
    let second_coupon = second.body["id"].as_str().unwrap();
    let race = json!({ "coupon_id": second_coupon }).to_string();
    let (a, b) = tokio::join!(
        s.http.edit_order("alice", one, &race),
        s.http.edit_order("alice", two, &race)
    );
    let mut raced = [
        (a.status, a.error().to_owned()),
        (b.status, b.error().to_owned()),
    ];
    raced.sort();
    assert_eq!(
        raced,
        [(200, String::new()), (409, "coupon_used".to_owned())]
    );
    // Back to where it was: both off, the first coupon on order one.
    for order in [one, two] {
        let off = s
            .http
            .edit_order("alice", order, r#"{"coupon_id": null}"#)
            .await;
        assert_eq!(off.status, 200);
    }
    assert_eq!(s.http.edit_order("alice", one, &put).await.status, 200);
    assert_eq!(
        coupon_status(&s.http, "alice", second_coupon).await,
        "available"
    );
    let bobs = s.http.edit_order("bob", one, &put).await;
    assert_eq!(bobs.status, 404);
    let off = s
        .http
        .edit_order("alice", one, r#"{"coupon_id": null}"#)
        .await;
    assert_eq!(off.body["amount_due"], "1999.00");
    assert!(off.body.get("coupon_id").is_none());
    assert_eq!(coupon_status(&s.http, "alice", coupon).await, "available");
    assert_eq!(s.http.edit_order("alice", two, &put).await.status, 200);
    assert_eq!(s.http.cancel(two, "alice").await.status, 200);
    assert_eq!(
        coupon_status(&s.http, "alice", coupon).await,
        "available",
        "a cancel gives it back"
    );

    // Below the minimum spend after promotions: 1000.00 is needed, and the
    // strict drop's order is 1999.00, so use a batch that asks more.
    let big = batch("big", "amount", "50.00", "5000.00", 10, 1);
    s.http
        .admin(Method::POST, "/admin/v1/coupons", &big.to_string())
        .await;
    let big_coupon = claim(&s.http, "big", &alice).await;
    let too_small = json!({ "coupon_id": big_coupon.body["id"] }).to_string();
    let refused = s.http.edit_order("alice", one, &too_small).await;
    assert_eq!(
        (refused.status, refused.error()),
        (409, "coupon_not_applicable")
    );
    let unknown = s
        .http
        .edit_order("alice", one, r#"{"coupon_id": "no-such-coupon"}"#)
        .await;
    assert_eq!((unknown.status, unknown.error()), (400, "invalid_request"));

    // Paid with the coupon: the intent and the notice are for 1799.00.
    assert_eq!(s.http.edit_order("alice", one, &put).await.status, 200);
    add_address(&s.http, "alice", &address("张三", "北京市", true)).await;
    let intent = pay_as(&s.http, "alice", one, r#"{"method": "alipay"}"#).await;
    assert_eq!(intent.body["amount"], "1799.00");
    let paid = s
        .http
        .notify_payment(&notice(one, "tx-coupon", "1799.00", "alipay"))
        .await;
    assert_eq!(paid.body["status"], "paid", "{:?}", paid.body);
    assert_eq!(paid.body["paid_amount"], "1799.00");
    let late = s
        .http
        .edit_order("alice", one, r#"{"coupon_id": null}"#)
        .await;
    assert_eq!((late.status, late.error()), (409, "not_editable"));

    // An order that expires unpaid gives its coupon back.
    let bob_coupon = s
        .http
        .get("/api/v1/coupons", Some(&token("bob")))
        .await
        .body["coupons"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bobs_order = s.http.reserve(DROP, SKU, 1, "bob").await;
    let bobs_order = bobs_order.body["id"].as_str().unwrap();
    let on = json!({ "coupon_id": bob_coupon }).to_string();
    assert_eq!(s.http.edit_order("bob", bobs_order, &on).await.status, 200);
    s.clock.advance(SignedDuration::from_mins(16));
    sweeps_to(&s, bobs_order, "bob", "expired").await;
    assert_eq!(
        coupon_status(&s.http, "bob", &bob_coupon).await,
        "available"
    );
    let db = s.audit().await;
    assert_eq!(
        db.count_where(&format!("coupon_id = '{coupon}'")).await,
        2,
        "the paid order and the cancelled one"
    );

    // Past its batch's validity: unused coupons show expired, claims are refused.
    s.clock.advance(SignedDuration::from_hours(3));
    assert_eq!(coupon_status(&s.http, "bob", &bob_coupon).await, "expired");
    let late = claim(&s.http, "big", &token("erin")).await;
    assert_eq!((late.status, late.error()), (409, "coupon_expired"));
}

/// One coupon, two pending orders, two instances: every round of racing
/// checkouts puts it on exactly one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_checkouts_on_two_instances_use_a_coupon_once() {
    let pg = PostgresServer::start();
    let redis = RedisServer::start();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let a = TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;
    let b = TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;
    let one_off = batch("race", "amount", "10.00", "0.00", 1, 1);
    assert_eq!(
        a.http
            .admin(Method::POST, "/admin/v1/coupons", &one_off.to_string())
            .await
            .status,
        201
    );
    let coupon = claim(&b.http, "race", &token("alice")).await;
    let coupon = coupon.body["id"].as_str().unwrap().to_owned();
    let first = a.http.reserve(DROP, SKU, 1, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = b.http.reserve(DROP, SKU, 1, "alice").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = json!({ "coupon_id": coupon }).to_string();
    for round in 0..10 {
        let (ha, hb, pa, pb) = (a.http.clone(), b.http.clone(), put.clone(), put.clone());
        let (fa, fb) = (first.clone(), second.clone());
        let on_a = tokio::spawn(async move { ha.edit_order("alice", &fa, &pa).await });
        let on_b = tokio::spawn(async move { hb.edit_order("alice", &fb, &pb).await });
        let (ra, rb) = (on_a.await.unwrap(), on_b.await.unwrap());
        let mut statuses = [
            (ra.status, ra.error().to_owned()),
            (rb.status, rb.error().to_owned()),
        ];
        statuses.sort();
        assert_eq!(
            statuses,
            [(200, String::new()), (409, "coupon_used".to_owned())],
            "round {round}"
        );
        let db = a.audit().await;
        assert_eq!(
            db.count_where(&format!("coupon_id = '{coupon}'")).await,
            1,
            "round {round}"
        );
        let winner = if ra.status == 200 {
            (&a, &first)
        } else {
            (&b, &second)
        };
        let off = winner
            .0
            .http
            .edit_order("alice", winner.1, r#"{"coupon_id": null}"#)
            .await;
        assert_eq!(off.status, 200);
    }
}
