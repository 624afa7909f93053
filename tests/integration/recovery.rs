//! Recovery keeps every promise: Redis that lost or rolled back a round, a
//! release lost while Redis stalls, PostgreSQL restarted under a running
//! server, a body that never comes, unsafe start-up settings, two embedded
//! engines on one store. Faults are made as they happen (kill -9, restart
//! from an older snapshot, SIGSTOP, a fast shutdown of PostgreSQL), against
//! the real binary where the issue says so, and every invariant is read
//! back from the order store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use redis::AsyncCommands;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const DROP: &str = "rec";
const SKU: &str = "sku";

/// A config file for the binary: one window drop open for an hour.
fn write_config(
    dir: &std::path::Path,
    stock: i64,
    limit: i64,
    server_extra: &str,
) -> std::path::PathBuf {
    let now = Timestamp::now();
    let path = dir.join("dropgate.toml");
    let text = config_head(server_extra)
        + &window_drop(DROP, SKU, stock, limit, now - hours(1), now + hours(1));
    std::fs::write(&path, text).unwrap();
    path
}

fn keyed_body() -> String {
    format!(r#"{{"sku": "{SKU}", "quantity": 1}}"#)
}

/// Retries `reserve_keyed` through 503s (Redis or the database coming back).
async fn reserve_keyed_through_503(http: &Http, user: &str, key: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = http.reserve_keyed(DROP, user, key, &keyed_body()).await;
        if reply.status != 503 || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds, or fails with `what`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn stored_count(db: &std::path::Path) -> i64 {
    open_db(db)
        .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))
        .unwrap()
}

/// Item 1: Redis restarted without persistence after a keyed win was
/// stored. The replay gets its first order back (I4), the writer does not
/// stall, and the limit still counts the stored unit (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_key_after_redis_lost_the_round_gets_its_first_order_back() {
    let redis = RedisServer::start_in(tempfile::tempdir().unwrap(), &["--appendonly", "no"]);
    let port = redis.port;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 10, 2, "");
    let data = dir.path().join("data");
    let (child, addr) = spawn_dropgate_with(&config, &data, &["--redis".into(), redis.url()]);
    let child = Running::new(child);
    let http = Http::new(addr);
    let db = data.join("orders.db");

    let first = http.reserve_keyed(DROP, "alice", "K1", &keyed_body()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    eventually(
        "the win reaching the store",
        Duration::from_secs(5),
        || async { stored_count(&db) == 1 },
    )
    .await;

    let dir_of_redis = redis.kill();
    let redis = RedisServer::start_on(port, dir_of_redis, &["--appendonly", "no"]);

    let replay = reserve_keyed_through_503(&http, "alice", "K1").await;
    assert_eq!(replay.status, 200, "{:?}", replay.body);
    assert_eq!(
        replay.body["id"], first.body["id"],
        "the same order, not a second one"
    );

    let second = reserve_keyed_through_503(&http, "alice", "K2").await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    let third = reserve_keyed_through_503(&http, "alice", "K3").await;
    assert_eq!(
        (third.status, third.error()),
        (409, "limit_exceeded"),
        "the stored unit still counts against the limit"
    );
    eventually(
        "the writer storing the second win",
        Duration::from_secs(5),
        || async { stored_count(&db) == 2 },
    )
    .await;
    let ready = http.get("/readyz", None).await;
    assert_eq!(ready.body["order_writer_lag"], json!(0), "{:?}", ready.body);
    child.terminate();

    let audit = Audit::open(&dropgate::Database::Sqlite(db)).await;
    let won = vec![
        first.body["id"].as_str().unwrap().to_owned(),
        second.body["id"].as_str().unwrap().to_owned(),
    ];
    audit.assert_sold_exactly(&won, "rec@%", 2, 2).await;
    drop(redis);
}

/// Item 4: Redis restarted from a snapshot older than the store. Nothing the
/// store holds is resold (I7), every 201 reaches the store (I3), and a key
/// used after the snapshot replays its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_from_an_older_snapshot_resells_nothing() {
    let redis = RedisServer::start_in(tempfile::tempdir().unwrap(), &["--appendonly", "no"]);
    let port = redis.port;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 60, 2, "");
    let data = dir.path().join("data");
    let (child, addr) = spawn_dropgate_with(&config, &data, &["--redis".into(), redis.url()]);
    let child = Running::new(child);
    let http = Http::new(addr);
    let db = data.join("orders.db");
    let mut won = Vec::new();
    for n in 0..10 {
        let reply = http.reserve(DROP, SKU, 1, &format!("early{n}")).await;
        assert_eq!(reply.status, 201);
        won.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    let mut conn = redis_conn(&redis).await;
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let mut after_snapshot = None;
    for n in 0..20 {
        let reply = http
            .reserve_keyed(DROP, &format!("later{n}"), "tap", &keyed_body())
            .await;
        assert_eq!(reply.status, 201);
        after_snapshot.get_or_insert_with(|| reply.body.clone());
        won.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    eventually("30 wins in the store", Duration::from_secs(5), || async {
        stored_count(&db) == 30
    })
    .await;

    let dir_of_redis = redis.kill();
    assert!(dir_of_redis.path().join("dump.rdb").exists());
    let redis = RedisServer::start_on(port, dir_of_redis, &["--appendonly", "no"]);

    let after_snapshot = after_snapshot.unwrap();
    let replay = reserve_keyed_through_503(&http, "later0", "tap").await;
    assert_eq!(
        (replay.status, &replay.body["id"]),
        (200, &after_snapshot["id"])
    );

    let won = Arc::new(Mutex::new(won));
    let mut shoppers = Vec::new();
    for shopper in 0..40 {
        let (http, won) = (http.clone(), won.clone());
        shoppers.push(tokio::spawn(async move {
            for n in 0..100 {
                let reply = http
                    .reserve(DROP, SKU, 1, &format!("storm{shopper}-{n}"))
                    .await;
                match (reply.status, reply.error()) {
                    (201, _) => won
                        .lock()
                        .unwrap()
                        .push(reply.body["id"].as_str().unwrap().to_owned()),
                    (409, "sold_out") => return,
                    (503, _) => tokio::time::sleep(Duration::from_millis(20)).await,
                    (status, error) => panic!("unexpected {status} {error}"),
                }
            }
        }));
    }
    for shopper in shoppers {
        shopper.await.unwrap();
    }
    let won = won.lock().unwrap().clone();
    assert_eq!(won.len(), 60, "exactly the stock was answered 201");
    child.terminate();
    let audit = Audit::open(&dropgate::Database::Sqlite(db)).await;
    audit.assert_sold_exactly(&won, "rec@%", 60, 2).await;
    drop(redis);
}

/// Item 5: a cancel while Redis is stopped answers 200 (the store ended the
/// order); the unit comes back once Redis answers again, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_lost_while_redis_stalls_is_applied_once_redis_answers() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 5, 1, "");
    let (child, addr) = spawn_dropgate_with(
        &config,
        &dir.path().join("data"),
        &["--redis".into(), redis.url()],
    );
    let child = Running::new(child);
    let http = Http::new(addr);
    let won = http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(won.status, 201);
    assert_eq!(http.remaining(DROP).await, 4);
    let db = dir.path().join("data").join("orders.db");
    eventually("the win in the store", Duration::from_secs(5), || async {
        stored_count(&db) == 1
    })
    .await;

    redis.signal("-STOP");
    let cancelled = http.cancel(won.body["id"].as_str().unwrap(), "alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.signal("-CONT");
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);

    eventually("the unit coming back", Duration::from_secs(5), || async {
        let drop = http.get(&format!("/api/v1/drops/{DROP}"), None).await;
        drop.status == 200 && drop.body["skus"][0]["remaining"] == json!(5)
    })
    .await;
    let again = http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(
        again.status, 201,
        "the limit no longer counts the cancelled unit: {:?}",
        again.body
    );
    // Exactly once: more sweeps change nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http.remaining(DROP).await, 4);
    child.terminate();
}

/// Item 6: PostgreSQL stopped fast and started again under a running
/// dropgate (embedded engine and Redis engine): it reconnects by itself,
/// and what it answered is what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_a_running_server_is_reconnected() {
    for redis in [None, Some(RedisServer::start())] {
        let mut pg = PostgresServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), 100, 2, "");
        let mut args = vec!["--database".to_owned(), pg.url()];
        if let Some(redis) = &redis {
            args.extend(["--redis".to_owned(), redis.url()]);
        }
        let (child, addr) = spawn_dropgate_with(&config, &dir.path().join("data"), &args);
        let child = Running::new(child);
        let http = Http::new(addr);
        let mut won = Vec::new();
        let first = http.reserve(DROP, SKU, 1, "before").await;
        assert_eq!(first.status, 201);
        won.push(first.body["id"].as_str().unwrap().to_owned());

        pg.restart_fast();

        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while won.len() < 6 {
            n += 1;
            let reply = http.reserve(DROP, SKU, 1, &format!("after{n}")).await;
            match reply.status {
                201 => won.push(reply.body["id"].as_str().unwrap().to_owned()),
                503 => {
                    assert!(
                        Instant::now() < deadline,
                        "never reconnected: {:?}",
                        reply.body
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                status => panic!("unexpected {status} {:?}", reply.body),
            }
        }
        let id = &won[5];
        let read = http
            .get(
                &format!("/api/v1/orders/{id}"),
                Some(&token(&format!("after{n}"))),
            )
            .await;
        assert_eq!(read.status, 200);
        eventually(
            "readiness after the restart",
            Duration::from_secs(5),
            || async { http.get("/readyz", None).await.status == 200 },
        )
        .await;
        child.terminate();
        let audit = Audit::open(&pg.database()).await;
        let rows = audit.order_ids().await;
        assert!(won.iter().all(|id| rows.contains(id)), "every 201 is a row");
        assert_eq!(audit.live_units("rec@%").await, won.len() as i64);
    }
}

/// Item 3: a client that declares a body and never sends it gets 408 and
/// loses the connection within `body_read_timeout`; others are served.
#[tokio::test]
async fn a_body_that_never_comes_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 5, 1, r#"body_read_timeout = "1s""#);
    let (child, addr) = spawn_dropgate_with(&config, &dir.path().join("data"), &[]);
    let child = Running::new(child);
    let mut stalled = Vec::new();
    for path in ["/api/v1/payments/notify", "/api/v1/drops/rec/reserve"] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            token("slow")
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        stalled.push(socket);
    }
    let started = Instant::now();
    for mut socket in stalled {
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection was still open after 5 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let http = Http::new(addr);
    assert_eq!(http.get("/healthz", None).await.status, 200);
    child.terminate();
}

/// Items 2 and 14: an empty or short secret stops start-up naming the
/// field, from the file or the environment; the demo's public secrets are
/// refused on an address other machines reach.
#[test]
fn unsafe_secrets_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 5, 1, "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(ADMIN_TOKEN, "")).unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dropgate"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let config = path.to_str().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, stderr) = run(&["serve", "--config", config, "--data-dir", data], &[]);
    assert!(!ok && stderr.contains("auth.admin_token"), "{stderr}");
    let (ok, stderr) = run(
        &["serve", "--config", config, "--data-dir", data],
        &[("DROPGATE_ADMIN_TOKEN", "short")],
    );
    assert!(
        !ok && stderr.contains("auth.admin_token") && stderr.contains("DROPGATE_ADMIN_TOKEN"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["serve", "--listen", "0.0.0.0:0", "--data-dir", data], &[]);
    assert!(!ok && stderr.contains("demo"), "{stderr}");
}

/// Item 7: a Redis error's text (here an out-of-memory refusal) is logged,
/// never sent to the client.
#[tokio::test]
async fn backend_error_text_never_reaches_a_client() {
    let redis = RedisServer::start();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 1, now - hours(1), now + hours(1));
    let s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let mut conn = redis_conn(&redis).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!((refused.status, refused.error()), (503, "unavailable"));
    let body = refused.body.to_string();
    assert!(
        !body.contains("OOM") && !body.contains("maxmemory"),
        "{body}"
    );
}

/// Item 9: an entry the writer cannot read, and one that collides with a
/// stored order, are kept in the round's dead-letter stream, never deleted
/// unseen; readiness and the metrics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn winners_the_writer_cannot_store_are_kept_as_dead_letters() {
    let redis = RedisServer::start();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let won = s
        .http
        .reserve_keyed(DROP, "alice", "K", &keyed_body())
        .await;
    assert_eq!(won.status, 201);
    let round = won.body["round_id"].as_str().unwrap().to_owned();
    eventually("the win in the store", Duration::from_secs(5), || async {
        s.audit()
            .await
            .stored_status(won.body["id"].as_str().unwrap())
            .await
            .is_some()
    })
    .await;

    let mut conn = redis_conn(&redis).await;
    let stream = format!("dg:{{{round}}}:winners");
    let _: String = conn
        .xadd(
            &stream,
            "*",
            &[
                ("order", "{\"from\": \"a newer release\"}"),
                ("key", ""),
                ("fingerprint", ""),
            ],
        )
        .await
        .unwrap();
    let mut twin = won.body.clone();
    twin["id"] = json!(dropgate::domain::OrderId::generate().to_string());
    let _: String = conn
        .xadd(
            &stream,
            "*",
            &[
                ("order", twin.to_string().as_str()),
                ("key", "K"),
                ("fingerprint", "sku*1"),
            ],
        )
        .await
        .unwrap();

    let dead = format!("dg:{{{round}}}:dead");
    eventually("both entries kept aside", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let dead = dead.clone();
        async move { conn.xlen::<_, usize>(&dead).await.unwrap() == 2 }
    })
    .await;
    let left: usize = conn.xlen(&stream).await.unwrap();
    assert_eq!(left, 0, "the stream is not blocked");
    eventually(
        "readiness counting them",
        Duration::from_secs(2),
        || async { s.http.get("/readyz", None).await.body["dead_letters"] == json!(2) },
    )
    .await;
    let text = s.http.get_text("/metrics").await;
    assert!(
        text.contains("dropgate_order_writer_dead_letters 2"),
        "{text}"
    );
    // The winner that did reach the store is untouched.
    assert_eq!(s.audit().await.order_ids().await.len(), 1);
}

/// Item 11: the embedded engine decides at the instant it holds the round,
/// after any wait for a writer slot: a reserve that waited past `closes_at`
/// is refused as closed (I6).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_window_is_checked_after_the_wait_for_the_writer() {
    let now = Timestamp::now();
    let closes = now + jiff::SignedDuration::from_secs(60);
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), closes);
    let s = TestServer::start_with_clock(&config, now).await;
    // Every place in the writer's queue taken: the next reserve waits.
    let mut slots = Vec::new();
    while let Ok(slot) =
        tokio::time::timeout(Duration::from_millis(200), s.app.store.insert_slot()).await
    {
        slots.push(slot.unwrap());
    }
    let attempt = crate::conformance::attempt_for(DROP, "alice", now - hours(1), closes);
    let app = s.app.clone();
    let waiting = tokio::spawn(async move { app.engine.reserve(attempt).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the reserve waits for a writer slot"
    );
    s.clock.advance(jiff::SignedDuration::from_secs(120));
    slots.pop();
    let decided = waiting.await.unwrap().unwrap();
    assert_eq!(decided, Err(dropgate::engine::Refused::Closed));
}

/// Item 13: a second embedded engine on the same order store is refused
/// (SQLite and PostgreSQL); once the first stops, another may start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_embedded_engine_on_one_store_is_refused() {
    let pg = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    for database in [
        dropgate::Database::Sqlite(dir.path().join("orders.db")),
        pg.database(),
    ] {
        let mut first = TestServer::start_with_database(
            &config,
            &database,
            now,
            &dropgate::EngineChoice::Embedded,
        )
        .await;
        let parsed = dropgate::config::Config::from_toml(
            &config,
            dropgate::config::SecretSource::Environment,
        )
        .unwrap();
        let second = dropgate::App::open(
            parsed.clone(),
            &database,
            &dropgate::EngineChoice::Embedded,
            Arc::new(ManualClock::new(now)),
        )
        .await;
        let message = second
            .err()
            .expect("the second engine is refused")
            .to_string();
        assert!(
            message.contains("another embedded-engine instance"),
            "{message}"
        );
        first.stop().await;
        let third = dropgate::App::open(
            parsed,
            &database,
            &dropgate::EngineChoice::Embedded,
            Arc::new(ManualClock::new(now)),
        )
        .await;
        assert!(
            third.is_ok(),
            "after a graceful stop the store is free again"
        );
    }
}

/// A TCP proxy in front of PostgreSQL that, once armed, cuts the connection
/// that carries the server's answer to the `COMMIT` of a transaction that
/// inserted orders, before the client reads it: the commit happened, and
/// the client only knows that it lost the line.
struct CommitCutter {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl CommitCutter {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let armed_here = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                tokio::spawn(Self::pipe(client, server, armed_here.clone()));
            }
        });
        Self { port, armed }
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        armed: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering;
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        // Whether this connection's client has sent an insert of orders.
        let inserted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inserting = inserted.clone();
        let upstream = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if buf[..n].windows(18).any(|w| w == b"INSERT INTO orders") {
                    inserting.store(true, Ordering::SeqCst);
                }
                if to_server.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let commit_answered = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
            if commit_answered
                && inserted.swap(false, Ordering::SeqCst)
                && armed.swap(false, Ordering::SeqCst)
            {
                upstream.abort();
                return; // both sockets drop here: the answer never arrives
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        upstream.abort();
    }
}

/// Item 6, "commit unknown": the connection dies after PostgreSQL committed
/// a reservation's order but before dropgate heard so. The writer reads the
/// batch back: the win is answered 201, the order stays, and its unit is
/// never given back (which would sell it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_whose_answer_was_lost_is_read_back_not_undone() {
    let pg = PostgresServer::start();
    let cutter = CommitCutter::start(pg.port).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cutter.port);
    let database = dropgate::Database::Postgres(url);
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 3, 1, now - hours(1), now + hours(1));
    let mut s =
        TestServer::start_with_database(&config, &database, now, &dropgate::EngineChoice::Embedded)
            .await;

    cutter
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    assert!(
        !cutter.armed.load(std::sync::atomic::Ordering::SeqCst),
        "a commit's answer was cut"
    );
    assert_eq!(
        won.status, 201,
        "the stored win is answered as a win: {:?}",
        won.body
    );
    assert_eq!(s.http.remaining(DROP).await, 2, "its unit stays sold");
    for user in ["bob", "carol", "dave", "erin"] {
        s.http.reserve(DROP, SKU, 1, user).await;
    }
    s.stop().await;
    let audit = Audit::open(&pg.database()).await;
    assert_eq!(
        audit.live_units("rec@%").await,
        3,
        "exactly the stock, nothing sold twice"
    );
    assert_eq!(
        audit.status_of(won.body["id"].as_str().unwrap()).await,
        "pending_payment"
    );
}

/// An instance that starts while Redis stays up reconciles nothing (the
/// rounds were reconciled under this very Redis process), so a rolling
/// restart never fences a round that other instances are selling; after a
/// Redis restart exactly one reconciliation happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_changed_redis_is_reconciled() {
    let redis = RedisServer::start_in(tempfile::tempdir().unwrap(), &["--appendonly", "no"]);
    let port = redis.port;
    let now = Timestamp::now();
    let config = config_head("") + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let first = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    assert_eq!(first.http.reserve(DROP, SKU, 1, "alice").await.status, 201);
    let fences = redis_calls(&redis, "del").await;
    assert!(fences >= 1, "the first start reconciled the live round");
    let second = TestServer::start_on(&config, &first.db_path, now, &redis.engine()).await;
    assert_eq!(second.http.reserve(DROP, SKU, 1, "bob").await.status, 201);
    assert_eq!(
        redis_calls(&redis, "del").await,
        fences,
        "nothing fenced or rebuilt"
    );

    eventually("both wins in the store", Duration::from_secs(5), || async {
        first.audit().await.order_ids().await.len() == 2
    })
    .await;
    let dir = redis.kill();
    let redis = RedisServer::start_on(port, dir, &["--appendonly", "no"]);
    eventually(
        "the round reconciled after the restart",
        Duration::from_secs(5),
        || async {
            let drop = first.http.get(&format!("/api/v1/drops/{DROP}"), None).await;
            drop.status == 200
                && drop.body["skus"][0]["remaining"] == json!(3)
                && redis_calls(&redis, "set").await >= 1
        },
    )
    .await;
    // The second instance's connections find Redis gone once (503, retried).
    let carol = reserve_keyed_through_503(&second.http, "carol", "c").await;
    assert_eq!(carol.status, 201, "{:?}", carol.body);
    // Another instance's sale shows in this one's drop view within 250 ms.
    eventually(
        "the first instance sees carol's unit go",
        Duration::from_secs(1),
        || async { first.http.remaining(DROP).await == 2 },
    )
    .await;
}
