//! Connection-level behaviour: header-read timeout, connection cap, and a
//! graceful shutdown that drains requests and flushes the order writer.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn config(now: Timestamp, server_extra: &str) -> String {
    config_head(server_extra)
        + &window_drop(
            "d",
            "sku",
            100_000,
            1_000_000,
            now - hours(1),
            now + hours(1),
        )
}

/// Reads until the peer closes or `limit` passes; returns what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn a_client_too_slow_with_its_headers_is_disconnected() {
    let now = Timestamp::now();
    let s =
        TestServer::start_with_clock(&config(now, r#"header_read_timeout = "300ms""#), now).await;
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.is_some(), "the server kept a half-sent request open");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!answer.unwrap().contains("200 OK"));

    // A prompt client on another connection is served as usual.
    assert_eq!(s.http.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_cap_frees_up() {
    let now = Timestamp::now();
    let s = TestServer::start_with_clock(&config(now, "max_connections = 2"), now).await;
    let first = TcpStream::connect(s.addr).await.unwrap();
    let second = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    let answer = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains(r#""error":"overloaded""#), "{answer}");

    drop((first, second));
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
    }
    assert!(served, "connections were never admitted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_requests_and_every_win_is_a_row() {
    let now = Timestamp::now();
    let mut s = TestServer::start_with_clock(&config(now, ""), now).await;
    let won = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut shoppers = Vec::new();
    for user in 0..200 {
        let http = s.http.clone();
        let won = won.clone();
        shoppers.push(tokio::spawn(async move {
            for _ in 0..50 {
                match http.try_reserve("d", "sku", 1, &format!("u{user}")).await {
                    Some(reply) if reply.status == 201 => won
                        .lock()
                        .unwrap()
                        .push(reply.body["id"].as_str().unwrap().to_owned()),
                    Some(reply) => assert_eq!(reply.status, 503, "{:?}", reply.body),
                    None => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stop().await;
    for shopper in shoppers {
        shopper.await.unwrap();
    }
    let won = won.lock().unwrap();
    assert!(!won.is_empty(), "the storm sold something before shutdown");
    let rows = order_ids(&open_db(&s.db_path));
    let lost: Vec<_> = won.iter().filter(|id| !rows.contains(*id)).collect();
    assert!(lost.is_empty(), "201s without rows: {lost:?}");
    assert_eq!(
        rows.len(),
        won.len(),
        "no row without a 201 after a graceful stop"
    );
}

#[tokio::test]
async fn a_store_that_cannot_commit_answers_503_and_gives_the_stock_back() {
    let now = Timestamp::now();
    let config = config_head("") + &window_drop("one", "sku", 1, 2, now - hours(1), now + hours(1));
    let s = TestServer::start_with_clock(&config, now).await;
    // Another connection holds the write lock past the writer's busy timeout.
    let blocker = s.db();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let refused = s.http.reserve("one", "sku", 1, "alice").await;
    assert_eq!((refused.status, refused.error()), (503, "unavailable"));
    assert_eq!(refused.headers["retry-after"], "1");
    blocker.execute_batch("ROLLBACK").unwrap();

    assert_eq!(
        s.http.remaining("one").await,
        1,
        "the failed win gave its unit back"
    );
    assert_eq!(s.http.reserve("one", "sku", 1, "alice").await.status, 201);
    assert_eq!(order_ids(&s.db()).len(), 1);
}

/// A database that stops answering (every PostgreSQL process stopped)
/// turns reads into a 503 within the read timeout instead of a hung
/// request, and reads work again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_answers_reads_with_503_in_bounded_time() {
    let pg = PostgresServer::start();
    let now = Timestamp::now();
    let config =
        config_head("") + &window_drop("stall", "sku", 5, 2, now - hours(1), now + hours(1));
    let s = TestServer::start_with_database(
        &config,
        &pg.database(),
        now,
        &dropgate::EngineChoice::Embedded,
    )
    .await;
    let won = s.http.reserve("stall", "sku", 1, "alice").await;
    assert_eq!(won.status, 201);
    let path = format!("/api/v1/orders/{}", won.body["id"].as_str().unwrap());

    pg.signal_all("-STOP");
    let bound = dropgate::store::READ_TIMEOUT + Duration::from_secs(1);
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(bound, s.http.get(&path, Some(&token("alice")))).await;
    let ready = tokio::time::timeout(bound, s.http.get("/readyz", None)).await;
    pg.signal_all("-CONT");
    let read = read.expect("the read answered within the bound");
    assert_eq!((read.status, read.error()), (503, "unavailable"));
    assert!(read.headers.contains_key("retry-after"));
    assert_eq!(ready.expect("readyz answered within the bound").status, 503);
    assert!(started.elapsed() < bound * 2);

    let again = s.http.get(&path, Some(&token("alice"))).await;
    assert_eq!(again.status, 200);
}
