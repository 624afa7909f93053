//! Rounds that are over are forgotten: after a thousand daily rounds the
//! engine holds about one, in memory (embedded) and in Redis (the order
//! writer's polling with it), a restart reads only the current round, and
//! units of an order ended after its round retired do not come back.

use jiff::{SignedDuration, Timestamp};

use crate::support::{config_head, redis_calls, redis_conn, RedisServer, TestServer};

const DROP: &str = "daily";
const SKU: &str = "daily-sku";
const ROUNDS: i64 = 1000;

/// A drop that opens every day at 10:00 UTC for an hour.
fn daily_config() -> String {
    config_head("")
        + &format!(
            r#"
[[drops]]
id = "{DROP}"
product = "Daily Phone"
per_user_limit = 2
pay_within = "15m"
schedule = {{ days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], at = "10:00", time_zone = "UTC", duration = "1h" }}
[[drops.skus]]
id = "{SKU}"
name = "8GB+256GB"
price = "1999.00"
stock = 100
"#
        )
}

fn opening(day: i64) -> Timestamp {
    let first: Timestamp = "2026-01-05T10:00:30Z".parse().unwrap();
    first + SignedDuration::from_hours(24 * day)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .map_or(0, |v| v.parse().unwrap())
}

/// Sells one unit in each of `days` daily rounds, retiring as upkeep does.
async fn sell_daily(s: &TestServer, days: std::ops::Range<i64>) {
    for day in days {
        s.clock.set(opening(day));
        // Keyed: every key ever used was once read back at every start.
        let body = format!(r#"{{"sku": "{SKU}"}}"#);
        let (user, key) = (format!("u{}", day % 7), format!("k{day}"));
        let reply = s.http.reserve_keyed(DROP, &user, &key, &body).await;
        assert_eq!(reply.status, 201, "day {day}: {:?}", reply.body);
        if day % 50 == 49 {
            s.app.store.flush().await.unwrap();
            s.app.retire_rounds().await.unwrap();
        }
    }
}

/// Retires until the engine holds at most `most` rounds (the Redis writer
/// must store a round's winners before it may go); returns what it holds.
async fn settle_to(s: &TestServer, most: usize) -> usize {
    let started = std::time::Instant::now();
    loop {
        s.app.retire_rounds().await.unwrap();
        let held = s.app.engine.rounds_held().await.unwrap();
        if held <= most || started.elapsed() > std::time::Duration::from_secs(10) {
            return held;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_retired_rounds_leave_one_book_and_a_restart_reads_one_round() {
    let config = daily_config();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut s = TestServer::start_at(&config, &db, opening(0)).await;
    sell_daily(&s, 0..50).await;
    assert!(settle_to(&s, 1).await <= 1);
    let rss_after_50 = rss_kib();
    sell_daily(&s, 50..ROUNDS).await;
    assert_eq!(settle_to(&s, 1).await, 1, "only the current round is held");
    eprintln!(
        "embedded: test process RSS {rss_after_50} KiB after 50 rounds, {} KiB after {ROUNDS}",
        rss_kib()
    );
    // Every order expired unpaid once its round had retired (the sweeper
    // runs as the clock moves): no release is left owed, and none brought
    // a retired round back into the engine.
    s.clock.set(opening(ROUNDS));
    dropgate::lifecycle::expire_due(&s.app).await.unwrap();
    let mut expired = 0;
    for user in 0..7 {
        let user = dropgate::domain::UserId::parse(&format!("u{user}")).unwrap();
        let orders = s.app.store.list_for_user(user).await.unwrap();
        expired += orders
            .iter()
            .filter(|o| o.status.as_str() == "expired")
            .count() as i64;
    }
    assert_eq!(expired, ROUNDS);
    assert!(s.app.store.releases_due(10).await.unwrap().is_empty());
    assert!(s.app.engine.rounds_held().await.unwrap() <= 1);
    // One more round, whose buyer reaches the limit, then a restart in it.
    sell_daily(&s, ROUNDS..ROUNDS + 1).await;
    let buyer = format!("u{}", ROUNDS % 7);
    assert_eq!(s.http.reserve(DROP, SKU, 1, &buyer).await.status, 201);
    s.stop().await;

    let restarted = TestServer::start_at(&config, &db, opening(ROUNDS)).await;
    assert_eq!(
        restarted.app.engine.rounds_held().await.unwrap(),
        1,
        "start-up reads only the round that may still change"
    );
    // That round's orders and keys were read back.
    assert_eq!(
        restarted.http.reserve(DROP, SKU, 1, &buyer).await.error(),
        "limit_exceeded"
    );
    let body = format!(r#"{{"sku": "{SKU}"}}"#);
    let replay = restarted
        .http
        .reserve_keyed(DROP, &buyer, &format!("k{ROUNDS}"), &body)
        .await;
    assert_eq!(replay.status, 200, "{:?}", replay.body);
}

/// Sets up each day's round in Redis as a stats read does (the Redis
/// engine sells by Redis's own clock, so the test cannot move its rounds
/// by the server's clock), retiring as upkeep does.
async fn set_up_daily(s: &TestServer, days: std::ops::Range<i64>) {
    let sku = dropgate::domain::SkuId::parse(SKU).unwrap();
    for day in days {
        s.clock.set(opening(day));
        let round = s
            .app
            .live_catalog()
            .get(DROP)
            .unwrap()
            .round_at(opening(day));
        let left = s.app.engine.remaining(&round.id, &sku, 100).await.unwrap();
        assert_eq!(left, 100, "day {day}");
        if day % 50 == 49 {
            s.app.retire_rounds().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_retired_rounds_leave_redis_and_the_writer_with_one_round() {
    let redis = RedisServer::start();
    let s = TestServer::start_with_engine(&daily_config(), opening(0), &redis.engine()).await;
    let mut conn = redis_conn(&redis).await;

    set_up_daily(&s, 0..50).await;
    assert!(settle_to(&s, 1).await <= 1);
    let keys_early: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    let before = redis_calls(&redis, "xreadgroup").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let early = redis_calls(&redis, "xreadgroup").await - before;

    set_up_daily(&s, 50..ROUNDS).await;
    assert_eq!(
        settle_to(&s, 1).await,
        1,
        "only the current round is listed"
    );
    let keys_late: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    let before = redis_calls(&redis, "xreadgroup").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let late = redis_calls(&redis, "xreadgroup").await - before;
    eprintln!(
        "redis: {keys_early} keys and {early} XREADGROUP/s after 50 rounds, \
         {keys_late} keys and {late} XREADGROUP/s after {ROUNDS}; test process RSS {} KiB",
        rss_kib()
    );
    // At most one round's keys apart (the writer may not have made the
    // current round's stream yet at one of the two counts).
    let one_round = 9;
    assert!(
        keys_late <= keys_early + one_round,
        "{keys_late} keys against {keys_early}"
    );
    assert!(
        late <= early * 2 + 20,
        "the writer reads as few streams per pass: {late}/s against {early}/s"
    );
}
