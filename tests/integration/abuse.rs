//! Abuse a flash sale draws: one key fired a hundred times at once, one
//! account spread over many addresses, many accounts behind one address,
//! huge bodies and headers. Each ends in a clear refusal or exactly one
//! order, read back from the database, and the server serves on.

use std::time::Duration;

use hyper::Method;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use dropgate::EngineChoice;

use crate::support::*;

const DROP: &str = "abu";
const SKU: &str = "sku";

fn catalog(limits: &str, server_extra: &str) -> (String, Timestamp) {
    let now = Timestamp::now();
    let config = config_head_with_limits(limits, server_extra)
        + &window_drop(DROP, SKU, 1_000, 2, now - hours(1), now + hours(1));
    (config, now)
}

/// A server with the catalog above and every limit opened wide.
async fn open_server() -> TestServer {
    let (config, now) = catalog(OPEN_LIMITS, "");
    TestServer::start_with_clock(&config, now).await
}

async fn one_key_a_hundred_times(engine: EngineChoice) {
    let (config, now) = catalog(OPEN_LIMITS, "");
    let mut s = TestServer::start_with_engine(&config, now, &engine).await;
    let body = format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (http, body) = (s.http.clone(), body.clone());
            tokio::spawn(async move { http.reserve_keyed(DROP, "mallory", "k-100", &body).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let created = replies.iter().filter(|r| r.status == 201).count();
    let replayed = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, replayed), (1, 99), "one order, 99 replays");
    let first = &replies[0].body;
    assert!(
        replies.iter().all(|r| &r.body == first),
        "every answer carries the same order"
    );
    s.stop().await;
    assert_eq!(live_units(&s.db(), "abu@%"), 1, "one unit taken, once");
}

#[tokio::test]
async fn one_key_sent_a_hundred_times_at_once_makes_one_order() {
    one_key_a_hundred_times(EngineChoice::Embedded).await;
}

#[tokio::test]
async fn one_key_sent_a_hundred_times_at_once_makes_one_order_in_redis_mode() {
    let redis = RedisServer::start();
    one_key_a_hundred_times(redis.engine()).await;
}

/// A reserve as `user` arriving through the trusted proxy from `address`.
async fn reserve_from(s: &TestServer, user: &str, address: &str) -> Reply {
    let auth = format!("Bearer {}", token(user));
    let body = format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#);
    s.http
        .send(
            Method::POST,
            &format!("/api/v1/drops/{DROP}/reserve"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("x-forwarded-for", address),
            ],
            body.into_bytes(),
        )
        .await
}

/// A server behind a trusted proxy (this address) whose `bucket` ("per_user"
/// or "per_ip") lets 5 requests through, then 1 a second.
async fn behind_proxy_with_tight(bucket: &str) -> TestServer {
    let limits = OPEN_LIMITS
        .replace(
            &format!("{bucket}_rps = 10000000"),
            &format!("{bucket}_rps = 1"),
        )
        .replace(
            &format!("{bucket}_burst = 10000000"),
            &format!("{bucket}_burst = 5"),
        );
    let (config, now) = catalog(&limits, r#"trusted_proxies = ["127.0.0.1"]"#);
    TestServer::start_with_clock(&config, now).await
}

#[tokio::test]
async fn one_account_on_many_addresses_meets_its_shopper_limit() {
    let s = behind_proxy_with_tight("per_user").await;
    let mut statuses = Vec::new();
    for n in 0..40 {
        let reply = reserve_from(&s, "scalper", &format!("198.51.100.{n}")).await;
        if reply.status == 429 {
            assert_eq!(reply.body["layer"], "user");
        }
        statuses.push(reply.status);
    }
    // Five requests pass the shopper's bucket (the purchase limit of 2
    // answers the later ones with 409); new addresses do not buy more.
    let passed = statuses.iter().filter(|&&status| status != 429).count();
    assert_eq!(passed, 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&status| status == 201).count(), 2);
    assert_eq!(
        live_units(&s.db(), "abu@%"),
        2,
        "no more than the purchase limit"
    );
}

#[tokio::test]
async fn many_accounts_on_one_address_meet_the_address_limit() {
    let s = behind_proxy_with_tight("per_ip").await;
    let mut statuses = Vec::new();
    for n in 0..40 {
        let reply = reserve_from(&s, &format!("bot-{n}"), "203.0.113.7").await;
        if reply.status == 429 {
            assert_eq!(reply.body["layer"], "ip");
        }
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&status| status == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(live_units(&s.db(), "abu@%"), 5);
    // An honest shopper elsewhere is not held back by the bot farm.
    assert_eq!(reserve_from(&s, "honest", "192.0.2.1").await.status, 201);
}

/// Sends raw bytes and returns the status line, or None if the server
/// closed the connection without one.
async fn raw_status(s: &TestServer, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // The server may refuse and close before it has read everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .lines()
        .next()
        .map(str::to_owned)
        .filter(|line| !line.is_empty())
}

#[tokio::test]
async fn a_ten_megabyte_body_is_refused_and_changes_nothing() {
    let s = open_server().await;
    let body = format!(
        r#"{{"sku": "{SKU}", "quantity": 1, "pad": "{}"}}"#,
        "x".repeat(10 << 20)
    );
    let head = format!(
        "POST /api/v1/drops/{DROP}/reserve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token("mallory"),
        body.len()
    );
    let status = raw_status(&s, &[head.as_bytes(), body.as_bytes()].concat()).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    assert_eq!(live_units(&s.db(), "abu@%"), 0);
    assert_eq!(s.http.reserve(DROP, SKU, 1, "honest").await.status, 201);
}

/// A reserve whose body comes in `chunks` of chunked transfer encoding.
fn chunked_reserve(user: &str, chunks: &[&str]) -> String {
    let mut request = format!(
        "POST /api/v1/drops/{DROP}/reserve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        token(user)
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    request
}

#[tokio::test]
async fn a_body_in_several_chunks_is_read_whole() {
    let s = open_server().await;
    let body = format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#);
    let (a, rest) = body.split_at(5);
    let (b, c) = rest.split_at(9);
    let status = raw_status(&s, chunked_reserve("chunky", &[a, b, c]).as_bytes()).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 201 Created"));
    assert_eq!(live_units(&s.db(), "abu@%"), 1);
}

#[tokio::test]
async fn a_chunked_body_past_the_limit_is_refused_without_a_declared_length() {
    let s = open_server().await;
    // Three 8 KiB chunks: each under the 16 KiB limit, together over it.
    let pad = "x".repeat(8 << 10);
    let chunks = [
        &format!(r#"{{"sku": "{SKU}", "pad": ""#)[..],
        &pad,
        &pad,
        &pad,
        r#""}"#,
    ];
    let status = raw_status(&s, chunked_reserve("chunky", &chunks).as_bytes()).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    assert_eq!(live_units(&s.db(), "abu@%"), 0);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let s = open_server().await;
    let many: String = (0..200).map(|n| format!("X-Pad-{n}: {n}\r\n")).collect();
    let huge = format!("X-Pad: {}\r\n", "x".repeat(1 << 20));
    for headers in [many, huge] {
        let request = format!("GET /api/v1/drops HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let status = raw_status(&s, request.as_bytes()).await;
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
    }
    assert_eq!(s.http.get("/api/v1/drops", None).await.status, 200);
}
