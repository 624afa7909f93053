//! Checkout after the win: delivery addresses and the edit of a pending
//! order, in both engines and both stores (the conformance backends), and
//! the address limit under racing instances.

use hyper::Method;
use jiff::Timestamp;
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

async fn edit_order(http: &Http, user: &str, order: &str, body: &str) -> Reply {
    let auth = format!("Bearer {}", token(user));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    http.send(
        Method::PATCH,
        &format!("/api/v1/orders/{order}"),
        &headers,
        body.as_bytes().to_vec(),
    )
    .await
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
        let refused = edit_order(&s.http, "alice", order, &body).await;
        assert_eq!((refused.status, refused.error()), (400, code), "{body}");
    }
    let edit = json!({ "address_id": home_id }).to_string();
    let bobs_address = add_address(&s.http, "bob", &address("王五", "浙江省", false)).await;
    let with_bobs = json!({ "address_id": bobs_address.body["id"] }).to_string();
    let refused = edit_order(&s.http, "alice", order, &with_bobs).await;
    assert_eq!(refused.status, 400, "another shopper's address");
    let not_bobs = edit_order(&s.http, "bob", order, &edit).await;
    assert_eq!((not_bobs.status, not_bobs.error()), (404, "not_found"));

    let edited = edit_order(&s.http, "alice", order, &edit).await;
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
    let refused = edit_order(&s.http, "alice", order, &late).await;
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

conformance!(
    addresses_are_checked_kept_and_deleted,
    a_pending_order_keeps_a_copy_of_its_address,
);

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
