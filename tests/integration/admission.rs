//! Admission control over real HTTP: each bucket answers 429 with a sane
//! `Retry-After` and recovers; a full in-flight cap answers 503; a greedy
//! shopper cannot starve honest ones; the keyed limiters stay small.

use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use hyper::Method;
use jiff::Timestamp;

use dropgate::admission::Admission;
use dropgate::config::Limits;
use dropgate::domain::UserId;

use crate::support::*;

const DROP: &str = "adm";
const SKU: &str = "sku";

fn limits(lines: &str) -> String {
    // Anything a test does not set stays out of its way.
    let mut all = String::from(lines);
    for (name, value) in [
        ("global_rps", 10_000_000),
        ("global_burst", 10_000_000),
        ("per_user_rps", 10_000_000),
        ("per_user_burst", 10_000_000),
        ("per_ip_rps", 10_000_000),
        ("per_ip_burst", 10_000_000),
        ("max_in_flight", 1_000_000),
    ] {
        if !lines.contains(name) {
            all.push_str(&format!("\n{name} = {value}"));
        }
    }
    all
}

async fn server_with(limit_lines: &str, server_extra: &str, stock: i64) -> TestServer {
    let now = Timestamp::now();
    let config = config_head_with_limits(&limits(limit_lines), server_extra)
        + &window_drop(DROP, SKU, stock, 2, now - hours(1), now + hours(1));
    TestServer::start_with_clock(&config, now).await
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

#[tokio::test]
async fn the_per_address_bucket_refuses_past_its_burst_and_recovers() {
    let s = server_with("per_ip_rps = 2\nper_ip_burst = 3", "", 10).await;
    for _ in 0..3 {
        assert_eq!(s.http.get("/api/v1/drops", None).await.status, 200);
    }
    let refused = s.http.get("/api/v1/drops", None).await;
    assert_eq!((refused.status, refused.error()), (429, "rate_limited"));
    assert_eq!(refused.body["layer"], "ip");
    // 2 per second: the next token is at most 500 ms away, rounded up to 1 s.
    assert_eq!(retry_after(&refused), 1);
    // Probes and scrapers are not shoppers.
    assert_eq!(s.http.get("/healthz", None).await.status, 200);
    assert_eq!(s.http.get("/metrics", None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.http.get("/api/v1/drops", None).await.status, 200);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    let get_as = |s: &TestServer, client: &'static str| {
        let http = s.http.clone();
        async move {
            http.send(
                Method::GET,
                "/api/v1/drops",
                &[("x-forwarded-for", client)],
                Vec::new(),
            )
            .await
            .status
        }
    };
    let trusting = server_with(
        "per_ip_rps = 1\nper_ip_burst = 1",
        r#"trusted_proxies = ["127.0.0.1"]"#,
        10,
    )
    .await;
    assert_eq!(get_as(&trusting, "203.0.113.1").await, 200);
    assert_eq!(get_as(&trusting, "203.0.113.1").await, 429);
    assert_eq!(
        get_as(&trusting, "203.0.113.2").await,
        200,
        "another client behind the proxy"
    );

    let wary = server_with("per_ip_rps = 1\nper_ip_burst = 1", "", 10).await;
    assert_eq!(get_as(&wary, "203.0.113.1").await, 200);
    assert_eq!(
        get_as(&wary, "203.0.113.2").await,
        429,
        "a client cannot pick its address"
    );
}

#[tokio::test]
async fn the_per_shopper_bucket_refuses_one_shopper_and_not_another() {
    let s = server_with("per_user_rps = 1\nper_user_burst = 3", "", 100).await;
    for _ in 0..3 {
        let status = s
            .http
            .get("/api/v1/orders", Some(&token("alice")))
            .await
            .status;
        assert_eq!(status, 200);
    }
    let refused = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(
        (refused.status, refused.body["layer"].as_str()),
        (429, Some("user"))
    );
    assert_eq!(retry_after(&refused), 1);
    assert_eq!(s.http.reserve(DROP, SKU, 1, "bob").await.status, 201);
    // Nothing was taken for the refused request.
    assert_eq!(s.http.remaining(DROP).await, 99);
}

#[tokio::test]
async fn the_global_bucket_guards_the_engine_and_not_the_round_gate() {
    let s = server_with("global_rps = 1\nglobal_burst = 2", "", 2).await;
    assert_eq!(s.http.reserve(DROP, SKU, 1, "a").await.status, 201);
    assert_eq!(s.http.reserve(DROP, SKU, 1, "b").await.status, 201);
    let refused = s.http.reserve(DROP, SKU, 1, "c").await;
    assert_eq!(
        (refused.status, refused.body["layer"].as_str()),
        (429, Some("global"))
    );
    assert_eq!(retry_after(&refused), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The token that came back finds the round sold out and marks it; after
    // that the mark answers without spending tokens the bucket does not have.
    assert_eq!(s.http.reserve(DROP, SKU, 1, "c").await.error(), "sold_out");
    for user in ["d", "e", "f"] {
        assert_eq!(s.http.reserve(DROP, SKU, 1, user).await.error(), "sold_out");
    }
}

#[tokio::test]
async fn a_full_in_flight_cap_answers_overloaded_with_retry_after() {
    // A stopped Redis holds the one engine call in flight for its timeout.
    let redis = RedisServer::start();
    let now = Timestamp::now();
    let config = config_head_with_limits(&limits("max_in_flight = 1"), "")
        + &window_drop(DROP, SKU, 10, 2, now - hours(1), now + hours(1));
    let s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    assert_eq!(s.http.reserve(DROP, SKU, 1, "warm").await.status, 201);
    redis.signal("-STOP");
    let http = s.http.clone();
    let stuck = tokio::spawn(async move { http.reserve(DROP, SKU, 1, "a").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = s.http.reserve(DROP, SKU, 1, "b").await;
    let stuck = stuck.await.unwrap();
    redis.signal("-CONT");
    assert_eq!((refused.status, refused.error()), (503, "overloaded"));
    assert_eq!(retry_after(&refused), 1);
    assert_eq!(stuck, 503, "the stalled call times out as unavailable");
    assert_eq!(s.http.reserve(DROP, SKU, 1, "c").await.status, 201);
}

/// One shopper firing 100 requests a second while 1,000 honest shoppers
/// try once each over the same 5 s. The global bucket (250/s) could not
/// carry both (300/s offered); the per-shopper bucket cuts the greedy one
/// to 5/s, so every honest shopper gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_greedy_shopper_cannot_starve_honest_ones() {
    let s = server_with(
        "global_rps = 250\nglobal_burst = 100\nper_user_rps = 5\nper_user_burst = 10",
        "",
        2000,
    )
    .await;
    let greedy = {
        let http = s.http.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut replies = Vec::new();
            for _ in 0..500 {
                tick.tick().await;
                let http = http.clone();
                replies.push(tokio::spawn(async move {
                    let r = http.reserve(DROP, SKU, 1, "greedy").await;
                    (r.status, r.body["layer"].as_str().map(str::to_owned))
                }));
            }
            let mut out = Vec::new();
            for r in replies {
                out.push(r.await.unwrap());
            }
            out
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut honest = Vec::new();
    for n in 0..1000 {
        tick.tick().await;
        let http = s.http.clone();
        honest.push(tokio::spawn(async move {
            http.reserve(DROP, SKU, 1, &format!("honest{n}"))
                .await
                .status
        }));
    }
    let mut honest_won = 0;
    for h in honest {
        let status = h.await.unwrap();
        assert_eq!(status, 201, "an honest shopper was turned away");
        honest_won += 1;
    }
    let greedy = greedy.await.unwrap();
    let by_user_bucket = greedy
        .iter()
        .filter(|(status, layer)| *status == 429 && layer.as_deref() == Some("user"))
        .count();
    assert_eq!(honest_won, 1000);
    // 500 tries in about 5 s, of which the bucket lets through its burst of
    // 10 plus 5 a second: the rest must have been its refusals.
    assert!(by_user_bucket >= 400, "per-user refusals: {by_user_bucket}");
    assert!(greedy.iter().filter(|(status, _)| *status == 201).count() <= 2);
}

#[tokio::test]
async fn a_put_to_the_limits_changes_the_running_server_at_once() {
    let s = server_with("per_ip_rps = 1\nper_ip_burst = 1", "", 10).await;
    assert_eq!(s.http.get("/api/v1/drops", None).await.status, 200);
    assert_eq!(s.http.get("/api/v1/drops", None).await.status, 429);
    let put = s
        .http
        .admin(
            Method::PUT,
            "/admin/v1/limits",
            r#"{"per_ip_rps": 1000, "per_ip_burst": 1000}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.body["per_ip_burst"], 1000);
    assert_eq!(
        put.body["per_user_rps"], 10_000_000,
        "fields not sent stay as they were"
    );
    for _ in 0..20 {
        assert_eq!(s.http.get("/api/v1/drops", None).await.status, 200);
    }
    let got = s.http.admin(Method::GET, "/admin/v1/limits", "").await;
    assert_eq!(got.body, put.body);
}

#[tokio::test]
async fn bad_limits_are_refused_and_change_nothing() {
    let s = server_with("per_ip_rps = 7", "", 10).await;
    let before = s.http.admin(Method::GET, "/admin/v1/limits", "").await;
    assert_eq!(before.status, 200);
    for body in [
        r#"{"per_ip_rps": 0}"#,
        r#"{"per_ip_rps": -5}"#,
        r#"{"global_rps": 10000001}"#,
        r#"{"max_in_flight": 99999999999}"#,
        r#"{"per_ip_rps": "fast"}"#,
        r#"{"per_ip_rps": 5, "per_ip_burst": 0}"#,
        r#"{"speed": 5}"#,
        r#"not json"#,
    ] {
        let put = s.http.admin(Method::PUT, "/admin/v1/limits", body).await;
        assert_eq!(
            (put.status, put.error()),
            (400, "invalid_request"),
            "{body}"
        );
    }
    let after = s.http.admin(Method::GET, "/admin/v1/limits", "").await;
    assert_eq!(after.body, before.body);
    assert_eq!(after.body["per_ip_rps"], 7);
}

#[tokio::test]
async fn admin_endpoints_refuse_missing_and_wrong_tokens() {
    let s = server_with("", "", 10).await;
    let calls = [
        (Method::GET, "/admin/v1/limits".to_owned(), ""),
        (
            Method::PUT,
            "/admin/v1/limits".to_owned(),
            r#"{"per_ip_rps": 1}"#,
        ),
        (Method::POST, "/admin/v1/drops".to_owned(), "{}"),
        (Method::GET, format!("/admin/v1/drops/{DROP}/stats"), ""),
        (
            Method::POST,
            format!("/admin/v1/drops/{DROP}/restock"),
            r#"{"sku": "sku", "units": 5}"#,
        ),
    ];
    let wrong = [
        None,
        Some("Bearer not-the-token".to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(ADMIN_TOKEN.to_owned()),
        Some(format!("Bearer {}", token("alice"))),
    ];
    for (method, path, body) in &calls {
        for auth in &wrong {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let reply = s
                .http
                .send(method.clone(), path, &headers, body.as_bytes().to_vec())
                .await;
            assert_eq!(
                (reply.status, reply.error()),
                (401, "unauthorized"),
                "{method} {path} {auth:?}"
            );
        }
    }
    // Nothing changed: the limit PUT and the restock were refused.
    let limits = s.http.admin(Method::GET, "/admin/v1/limits", "").await;
    assert_eq!(limits.body["per_ip_rps"], 10_000_000);
    assert_eq!(s.http.remaining(DROP).await, 10);
}

/// A million distinct shoppers pass the per-shopper bucket, 10,000 a
/// simulated second, with the upkeep's pruning every 5 s: the limiter
/// tracks at most the last few seconds' shoppers and the process's
/// resident memory grows by less than 64 MiB.
#[test]
fn memory_stays_flat_after_a_million_shoppers() {
    let clock = FakeRelativeClock::default();
    let admission = Admission::with_clock(Limits::default(), clock.clone());
    let users: Vec<UserId> = (0..10_000)
        .map(|n| UserId::parse(&format!("warm{n}")).unwrap())
        .collect();
    for user in &users {
        admission.check_user(user).unwrap();
    }
    admission.prune();
    let before = resident_bytes();
    let mut most_tracked = 0;
    for second in 0..100u32 {
        for n in 0..10_000u32 {
            let user = UserId::parse(&format!("u{second}-{n}")).unwrap();
            admission.check_user(&user).unwrap();
        }
        clock.advance(Duration::from_secs(1));
        if second % 5 == 4 {
            admission.prune();
        }
        most_tracked = most_tracked.max(admission.tracked_keys().1);
    }
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "most shoppers tracked at once: {most_tracked}; resident memory grew by {} KiB",
        grown >> 10
    );
    // Limits::default() refills a shopper's bucket of 10 at 5/s within 2 s.
    assert!(
        most_tracked <= 50_000,
        "tracked {most_tracked} shoppers at once"
    );
    assert!(
        grown < 64 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    let started = Instant::now();
    admission.prune();
    assert!(admission.tracked_keys().1 <= 20_000);
    assert!(started.elapsed() < Duration::from_secs(1));
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
