//! The waiting room: joining before the opening, the draw, admission as
//! allocation (holds, expiry), tickets bound to user and round, the
//! operator's live admit rate, and one queue shared by two instances
//! through Redis. Orders are counted from the store.

use std::time::Duration;

use hyper::Method;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::support::*;

const QUEUE_SECRET: &str = "test-queue-secret-of-at-least-32-bytes!!";

fn queued_config(stock: i64, limit: i64, opens: Timestamp, queue: &str) -> String {
    let head = config_head("").replace(
        "[limits]",
        &format!("queue_secret = \"{QUEUE_SECRET}\"\n[limits]"),
    );
    let drop = window_drop("q", "q-sku", stock, limit, opens, opens + hours(2)).replace(
        "[[drops.skus]]",
        &format!("queue = {{ {queue} }}\n[[drops.skus]]"),
    );
    head + &drop
}

/// A server whose drop `q` opens in an hour, with its clock `before` that.
async fn queued_server(
    stock: i64,
    limit: i64,
    queue: &str,
    before: SignedDuration,
) -> (TestServer, Timestamp) {
    let opens = Timestamp::now() + hours(1);
    let config = queued_config(stock, limit, opens, queue);
    (
        TestServer::start_with_clock(&config, opens - before).await,
        opens,
    )
}

async fn join(http: &Http, user: &str) -> Reply {
    http.post("/api/v1/drops/q/queue", Some(&token(user)), "")
        .await
}

async fn look(http: &Http, user: &str) -> Reply {
    http.get("/api/v1/drops/q/queue", Some(&token(user))).await
}

async fn reserve_with(http: &Http, user: &str, ticket: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = ticket.iter().map(|t| ("queue-ticket", *t)).collect();
    http.post_with(
        "/api/v1/drops/q/reserve",
        Some(&token(user)),
        &headers,
        r#"{"sku": "q-sku"}"#,
    )
    .await
}

/// Polls `user`'s entry until `done` holds (admission steps come every 100 ms).
async fn wait_for(http: &Http, user: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let entry = look(http, user).await;
        if done(&entry.body) {
            return entry.body;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!(
        "{user}'s entry never got there: {:?}",
        look(http, user).await.body
    );
}

fn state(entry: &Value) -> &str {
    entry["state"].as_str().unwrap_or("")
}

fn orders_in_store(server: &TestServer) -> i64 {
    server
        .db()
        .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn the_draw_decides_who_buys_and_reserve_needs_the_callers_own_ticket() {
    let (mut server, opens) = queued_server(
        3,
        1,
        r#"opens_before = "10m", draw_window = "3s", admit_rate = 1000"#,
        SignedDuration::from_mins(20),
    )
    .await;
    let http = &server.http;

    let early = join(http, "early").await;
    assert_eq!(
        (early.status, early.error()),
        (409, "queue_not_open"),
        "{:?}",
        early.body
    );
    assert_eq!(look(http, "nobody").await.status, 409);

    server.clock.set(opens - SignedDuration::from_mins(5));
    let users: Vec<String> = (0..6).map(|i| format!("shopper-{i}")).collect();
    for user in &users {
        let first = join(http, user).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        assert_eq!(state(&first.body), "waiting");
        assert!(first.body["position"].is_null(), "no place before the draw");
        assert!(first.body["ticket"].is_null());
        assert_eq!(
            join(http, user).await.status,
            200,
            "joining again changes nothing"
        );
    }
    assert_eq!(look(http, "outsider").await.status, 404);
    // Before the opening and without a ticket: refused before anything else.
    let refused = reserve_with(http, "shopper-0", None).await;
    assert_eq!((refused.status, refused.error()), (403, "queue_required"));

    // The draw: three units, a limit of one, so three are admitted.
    server.clock.set(opens + SignedDuration::from_secs(4));
    // Admission runs in steps: look until all three holds are taken.
    let (mut admitted, mut waiting) = (Vec::new(), Vec::new());
    while admitted.len() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        admitted.clear();
        waiting.clear();
        for user in &users {
            let entry = look(http, user).await.body;
            match (state(&entry), entry["ticket"].as_str()) {
                ("admitted", Some(ticket)) => admitted.push((user.clone(), ticket.to_owned())),
                ("waiting", None) => waiting.push(entry["position"].as_u64().unwrap()),
                other => panic!("{user}: {other:?}"),
            }
        }
    }
    waiting.sort_unstable();
    assert_eq!(admitted.len(), 3);
    assert_eq!(waiting, [1, 2, 3], "the rest wait, in order");

    let (alice, alices_ticket) = &admitted[0];
    let (bob, _) = &admitted[1];
    // Someone else's ticket, a forged one, one for another round: refused.
    let stolen = reserve_with(http, bob, Some(alices_ticket)).await;
    assert_eq!((stolen.status, stolen.error()), (403, "queue_required"));
    let forged = format!(
        "{}.{}",
        (opens + hours(9)).as_millisecond(),
        "ab".repeat(32)
    );
    assert_eq!(reserve_with(http, alice, Some(&forged)).await.status, 403);
    assert_eq!(reserve_with(http, alice, Some("garbage")).await.status, 403);
    assert_eq!(orders_in_store(&server), 0, "refusals changed nothing");

    for (user, ticket) in &admitted {
        let won = reserve_with(http, user, Some(ticket)).await;
        assert_eq!(won.status, 201, "{user}: {:?}", won.body);
    }
    // Sold out and nothing held: the rest are told, not left waiting.
    let loser = users
        .iter()
        .find(|u| !admitted.iter().any(|(a, _)| a == *u))
        .unwrap();
    let told = wait_for(http, loser, |e| state(e) == "sold_out").await;
    assert!(told["ticket"].is_null());
    server.stop().await;
    assert_eq!(orders_in_store(&server), 3);
}

#[tokio::test]
async fn an_unused_ticket_expires_and_its_units_go_to_the_next_in_line() {
    let (mut server, opens) = queued_server(
        1,
        1,
        r#"draw_window = "1s", ticket_ttl = "1m", admit_rate = 100"#,
        SignedDuration::from_mins(1),
    )
    .await;
    let http = &server.http;
    for user in ["ann", "ben"] {
        assert_eq!(join(http, user).await.status, 201);
    }
    server.clock.set(opens + SignedDuration::from_secs(2));
    // One unit: whoever was drawn first is admitted, the other waits.
    let mut holder = None;
    while holder.is_none() {
        tokio::time::sleep(Duration::from_millis(30)).await;
        for user in ["ann", "ben"] {
            if state(&look(http, user).await.body) == "admitted" {
                holder = Some(user);
            }
        }
    }
    let holder = holder.unwrap();
    let other = if holder == "ann" { "ben" } else { "ann" };
    let held = look(http, holder).await.body;
    let ticket = held["ticket"].as_str().unwrap().to_owned();
    let behind = look(http, other).await.body;
    assert_eq!(
        (state(&behind), behind["position"].as_u64()),
        ("waiting", Some(1))
    );

    // The holder never buys: after the ticket's minute the unit passes on.
    server.clock.advance(SignedDuration::from_secs(61));
    let late = reserve_with(http, holder, Some(&ticket)).await;
    assert_eq!((late.status, late.error()), (403, "queue_required"));
    assert_eq!(state(&look(http, holder).await.body), "expired");
    let next = wait_for(http, other, |e| state(e) == "admitted").await;
    let won = reserve_with(http, other, next["ticket"].as_str()).await;
    assert_eq!(won.status, 201, "{:?}", won.body);

    // Joining again after expiry lines up at the back (nothing left now).
    let again = join(http, holder).await;
    assert_eq!(again.status, 201);
    wait_for(http, holder, |e| state(e) == "sold_out").await;
    server.stop().await;
    assert_eq!(orders_in_store(&server), 1);
}

#[tokio::test]
async fn an_operator_raises_the_admit_rate_live() {
    let (mut server, opens) = queued_server(
        100,
        1,
        r#"draw_window = "1s", admit_rate = 1"#,
        SignedDuration::from_mins(1),
    )
    .await;
    let http = server.http.clone();
    for i in 0..30 {
        assert_eq!(join(&http, &format!("fan-{i}")).await.status, 201);
    }
    server.clock.set(opens + SignedDuration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let admitted = |body: &Value| body["admitted"].as_u64().unwrap_or(0);
    let slow = http
        .admin(
            Method::PUT,
            "/admin/v1/drops/q/queue",
            r#"{"admit_rate": 1}"#,
        )
        .await;
    assert_eq!(slow.status, 200, "{:?}", slow.body);
    assert!(admitted(&slow.body) <= 2, "one a second: {:?}", slow.body);
    let bad = http
        .admin(
            Method::PUT,
            "/admin/v1/drops/q/queue",
            r#"{"admit_rate": 0}"#,
        )
        .await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"));
    let anon = http
        .send(
            Method::PUT,
            "/admin/v1/drops/q/queue",
            &[],
            br#"{"admit_rate": 5}"#.to_vec(),
        )
        .await;
    assert_eq!(anon.status, 401);

    let fast = http
        .admin(
            Method::PUT,
            "/admin/v1/drops/q/queue",
            r#"{"admit_rate": 1000}"#,
        )
        .await;
    assert_eq!(fast.status, 200);
    server.clock.advance(SignedDuration::from_secs(1));
    for i in 0..30 {
        wait_for(&http, &format!("fan-{i}"), |e| state(e) == "admitted").await;
    }
    let metrics = http.get_text("/metrics").await;
    assert!(
        metrics.contains("dropgate_queue_admit_rate{drop=\"q\"} 1000"),
        "{metrics}"
    );
    assert!(metrics.contains("dropgate_queue_admitted{drop=\"q\"} 30"));
    server.stop().await;
}

/// Two instances on one Redis: one queue. A shopper joins on one, is
/// admitted and buys on the other.
#[tokio::test]
async fn two_instances_share_one_queue_through_redis() {
    let redis = RedisServer::start();
    let opens = Timestamp::now() + SignedDuration::from_secs(2);
    let config = queued_config(10, 1, opens, r#"draw_window = "1s", admit_rate = 1000"#);
    let now = Timestamp::now();
    let mut a = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let mut b = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let users: Vec<String> = (0..4).map(|i| format!("pair-{i}")).collect();
    for user in &users {
        assert_eq!(join(&a.http, user).await.status, 201);
        let seen = look(&b.http, user).await;
        assert_eq!(
            (seen.status, state(&seen.body)),
            (200, "waiting"),
            "{:?}",
            seen.body
        );
        assert_eq!(
            join(&b.http, user).await.status,
            200,
            "already in, through the other instance"
        );
    }
    // Redis keeps the time of the draw; the instances' clocks follow the wall.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for server in [&a, &b] {
        server.clock.set(Timestamp::now());
    }
    for (i, user) in users.iter().enumerate() {
        let (joined_on, buys_on) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let entry = wait_for(&joined_on.http, user, |e| state(e) == "admitted").await;
        let won = reserve_with(&buys_on.http, user, entry["ticket"].as_str()).await;
        assert_eq!(won.status, 201, "{user}: {:?}", won.body);
    }
    assert_eq!(reserve_with(&b.http, "stranger", None).await.status, 403);
    a.stop().await;
    b.stop().await;
    // Each instance has a store of its own here; a winner goes to one.
    assert_eq!(orders_in_store(&a) + orders_in_store(&b), 4);
}

/// A queue that names no admit rate follows the server: with nothing
/// straining, it climbs from a tenth of `global_rps` to all of it.
#[tokio::test]
async fn without_an_admit_rate_the_queue_follows_what_the_server_sustains() {
    let opens = Timestamp::now() + hours(1);
    let limits =
        "global_rps = 1000\nglobal_burst = 1000\nper_user_rps = 1000\nper_user_burst = 1000\n\
        per_ip_rps = 100000\nper_ip_burst = 100000\nmax_in_flight = 1000";
    let config = config_head_with_limits(limits, "").replace(
        "[limits]",
        &format!("queue_secret = \"{QUEUE_SECRET}\"\n[limits]"),
    ) + &window_drop("q", "q-sku", 10, 1, opens, opens + hours(2)).replace(
        "[[drops.skus]]",
        "queue = { draw_window = \"1s\" }\n[[drops.skus]]",
    );
    let mut server =
        TestServer::start_with_clock(&config, opens - SignedDuration::from_mins(1)).await;
    assert_eq!(join(&server.http, "solo").await.status, 201);
    server.clock.set(opens + SignedDuration::from_secs(2));
    let mut rates = Vec::new();
    for _ in 0..100 {
        let metrics = server.http.get_text("/metrics").await;
        let rate = metrics
            .lines()
            .find_map(|l| l.strip_prefix("dropgate_queue_admit_rate{drop=\"q\"} "))
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(rate) = rate {
            rates.push(rate);
            if rate >= 1000.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rates.last(), Some(&1000.0), "{rates:?}");
    assert!(rates[0] < 500.0, "it started low: {rates:?}");
    server.stop().await;
}
