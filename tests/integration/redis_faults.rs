//! Redis mode under faults: Redis killed with `appendfsync always`, Redis
//! restarted without persistence, Redis stalled with SIGSTOP, scripts
//! flushed, a winner delivered twice to the writer, two instances sharing
//! one Redis. Invariants are checked from the order store afterwards.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use redis::AsyncCommands;

use crate::support::*;

const DROP: &str = "flt";
const SKU: &str = "sku";

fn config(stock: i64) -> (String, Timestamp) {
    let now = Timestamp::now();
    (
        config_head("") + &window_drop(DROP, SKU, stock, 2, now - hours(1), now + hours(1)),
        now,
    )
}

/// Waits until the order writer has stored, acknowledged and trimmed every
/// entry of `stream`.
async fn wait_until_drained(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: usize = conn.xlen(stream).await.unwrap();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the writer never drained {stream}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn storm_until_sold_out(servers: Vec<Http>, won: Arc<Mutex<Vec<String>>>) {
    storm_drop_until_sold_out(DROP, SKU, servers, won).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_with_aof_always_loses_no_win_and_never_oversells() {
    let redis = RedisServer::start();
    let port = redis.port;
    let (config, now) = config(300);
    let mut s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let won = Arc::new(Mutex::new(Vec::new()));
    let storm = tokio::spawn(storm_until_sold_out(vec![s.http.clone()], won.clone()));
    while won.lock().unwrap().len() < 60 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dir = redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = RedisServer::start_on(
        port,
        dir,
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    storm.await.unwrap();
    s.stop().await;
    let won = won.lock().unwrap().clone();
    s.audit()
        .await
        .assert_sold_exactly(&won, "flt@%", 300, 2)
        .await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_lost_the_round_is_rebuilt_from_the_store() {
    let redis = RedisServer::start_in(tempfile::tempdir().unwrap(), &["--appendonly", "no"]);
    let port = redis.port;
    let (config, now) = config(10);
    let mut s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    for user in ["a", "b", "c"] {
        assert_eq!(s.http.reserve(DROP, SKU, 2, user).await.status, 201);
    }
    // Wait for the writer to store the six units, then lose all of Redis.
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_units(&s.db(), "flt@%") < 6 {
        assert!(
            Instant::now() < deadline,
            "the order writer never stored the wins"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = redis.kill();
    let redis = RedisServer::start_on(port, dir, &["--appendonly", "no"]);

    let mut reconnected = false;
    for _ in 0..50 {
        // Until the connection is back, the drop view answers 503.
        let drop = s.http.get(&format!("/api/v1/drops/{DROP}"), None).await;
        if drop.status == 200 && drop.body["skus"][0]["remaining"] == 4 {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reconnected, "the round was not rebuilt with 4 units left");
    assert_eq!(
        s.http.reserve(DROP, SKU, 1, "a").await.error(),
        "limit_exceeded"
    );
    let won = Arc::new(Mutex::new(Vec::new()));
    storm_until_sold_out(vec![s.http.clone()], won.clone()).await;
    assert_eq!(won.lock().unwrap().len(), 4);
    s.stop().await;
    assert_eq!(live_units(&s.db(), "flt@%"), 10, "nothing resold");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_redis_gets_a_fast_503_and_service_resumes() {
    let redis = RedisServer::start();
    let (config, now) = config(100);
    let s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    assert_eq!(s.http.reserve(DROP, SKU, 1, "before").await.status, 201);

    redis.signal("-STOP");
    let started = Instant::now();
    let stalled = s.http.reserve(DROP, SKU, 1, "during").await;
    let waited = started.elapsed();
    assert_eq!((stalled.status, stalled.error()), (503, "unavailable"));
    assert!(stalled.headers.contains_key("retry-after"));
    // The stated bound: a stalled Redis is answered within 2 s (timeouts are 0.5 s).
    assert!(waited < Duration::from_secs(2), "took {waited:?}");
    let ready = s.http.get("/readyz", None).await;
    assert_eq!(ready.status, 503, "readiness reports the stalled Redis");
    assert!(
        ready.body["message"]
            .as_str()
            .unwrap()
            .contains(r#""engine":"down""#),
        "{:?}",
        ready.body
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    redis.signal("-CONT");

    let mut recovered = false;
    for _ in 0..50 {
        if s.http.reserve(DROP, SKU, 1, "after").await.status == 201 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "reserve never succeeded after SIGCONT");
    assert_eq!(s.http.get("/readyz", None).await.status, 200);
}

#[tokio::test]
async fn scripts_keep_working_after_script_flush() {
    let redis = RedisServer::start();
    let (config, now) = config(10);
    let s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    assert_eq!(s.http.reserve(DROP, SKU, 1, "alice").await.status, 201);
    let mut conn = redis_conn(&redis).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(s.http.reserve(DROP, SKU, 1, "bob").await.status, 201);
    assert_eq!(s.http.remaining(DROP).await, 8);
}

#[tokio::test]
async fn a_winner_delivered_twice_is_one_row() {
    let redis = RedisServer::start();
    let (config, now) = config(10);
    let mut s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let won = s.http.reserve(DROP, SKU, 1, "alice").await;
    let id = won.body["id"].as_str().unwrap().to_owned();
    let round = won.body["round_id"].as_str().unwrap().to_owned();
    // What a writer that committed but died before XACK leaves behind: the
    // same winner in the stream once more.
    let mut conn = redis_conn(&redis).await;
    let stream = format!("dg:{{{round}}}:winners");
    let _: String = conn
        .xadd(
            &stream,
            "*",
            &[
                ("order", won.body.to_string().as_str()),
                ("key", ""),
                ("fingerprint", ""),
            ],
        )
        .await
        .unwrap();
    wait_until_drained(&mut conn, &stream).await;
    s.stop().await;
    let rows: i64 = s
        .db()
        .query_row("SELECT COUNT(*) FROM orders WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(order_ids(&s.db()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_redis_and_postgres_never_oversell() {
    let redis = RedisServer::start();
    let postgres = PostgresServer::start();
    let (config, now) = config(200);
    let database = postgres.database();
    let mut first = TestServer::start_with_database(&config, &database, now, &redis.engine()).await;
    let mut second =
        TestServer::start_with_database(&config, &database, now, &redis.engine()).await;
    let won = Arc::new(Mutex::new(Vec::new()));
    storm_until_sold_out(vec![first.http.clone(), second.http.clone()], won.clone()).await;
    first.stop().await;
    second.stop().await;
    let won = won.lock().unwrap().clone();
    first
        .audit()
        .await
        .assert_sold_exactly(&won, "flt@%", 200, 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_writers_unacknowledged_winners_are_claimed_by_a_live_one() {
    let redis = RedisServer::start();
    let now = Timestamp::now();
    let config = config_head(r#"claim_idle = "1s""#)
        + &window_drop(DROP, SKU, 10, 2, now - hours(1), now + hours(1));
    let mut first = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let won = first.http.reserve(DROP, SKU, 1, "alice").await;
    assert_eq!(won.status, 201);
    first.stop().await;

    // A script call's entry that a writer read and then died without
    // acknowledging: two wins whose orders are in the round's orders hash,
    // and one whose text is gone (kept aside, never stored).
    let round = won.body["round_id"].as_str().unwrap().to_owned();
    let stream = format!("dg:{{{round}}}:winners");
    let mut conn = redis_conn(&redis).await;
    let mut ghost_ids = Vec::new();
    for user in ["ghost1", "ghost2"] {
        let mut ghost = won.body.clone();
        ghost["id"] = serde_json::json!(dropgate::domain::OrderId::generate().to_string());
        ghost["user_id"] = serde_json::json!(user);
        let id = ghost["id"].as_str().unwrap().to_owned();
        let _: () = conn
            .hset(format!("dg:{{{round}}}:orders"), &id, ghost.to_string())
            .await
            .unwrap();
        ghost_ids.push(id);
    }
    let gone_id = dropgate::domain::OrderId::generate().to_string();
    let ids = format!("{}\n{}\n{gone_id}", ghost_ids[0], ghost_ids[1]);
    let _: String = conn
        .xadd(
            &stream,
            "*",
            &[
                ("ids", ids.as_str()),
                ("keys", "\n\n"),
                ("fingerprints", "\n\n"),
            ],
        )
        .await
        .unwrap();
    let _: i64 = conn
        .incr(format!("dg:{{{round}}}:unstored"), 3)
        .await
        .unwrap();
    let options = redis::streams::StreamReadOptions::default()
        .group("order-writers", "dead-writer")
        .count(10);
    let taken: redis::streams::StreamReadReply = conn
        .xread_options(&[&stream], &[">"], &options)
        .await
        .unwrap();
    assert_eq!(
        taken.keys[0].ids.len(),
        1,
        "the dead writer holds the entry"
    );

    let second = TestServer::start_on(&config, &first.db_path, now, &redis.engine()).await;
    // Until it is claimed, the stranded entry's three wins show as the
    // writer's lag.
    let mut seen = false;
    for _ in 0..30 {
        let lag = second.http.get("/readyz", None).await.body["order_writer_lag"].clone();
        if lag == serde_json::json!(3) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen,
        "readiness never showed the winner not yet stored as lag"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ghost_ids
        .iter()
        .all(|id| order_ids(&second.db()).contains(id))
    {
        assert!(
            Instant::now() < deadline,
            "the live writer never claimed the dead one's winner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Acknowledged and trimmed just after the commit that made the row visible.
    wait_until_drained(&mut conn, &stream).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lag = second.http.get("/readyz", None).await.body["order_writer_lag"].clone();
    assert_eq!(lag, serde_json::json!(0));
    let unstored: Option<i64> = conn.get(format!("dg:{{{round}}}:unstored")).await.unwrap();
    assert_eq!(unstored, Some(0), "no win left to store");
    // The win whose text was gone is kept aside on its own, not stored.
    let dead: redis::streams::StreamRangeReply = conn
        .xrange_all(format!("dg:{{{round}}}:dead"))
        .await
        .unwrap();
    assert_eq!(dead.ids.len(), 1);
    assert_eq!(dead.ids[0].get::<String>("id"), Some(gone_id.clone()));
    assert!(!order_ids(&second.db()).contains(&gone_id));
    assert_eq!(
        order_ids(&second.db()).len(),
        3,
        "alice's and the two ghosts'"
    );
}

/// In Redis mode the order store is off the reserve path: with every
/// PostgreSQL process stopped, shoppers keep winning (their wins wait in
/// Redis), a winner can read its order back, and once the database answers
/// again the writer stores every win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selling_goes_on_while_the_database_is_stalled() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let (config, now) = config(100);
    let mut s =
        TestServer::start_with_database(&config, &pg.database(), now, &redis.engine()).await;
    // The first reserve sets the round up from the store.
    let mut won = vec![s.http.reserve(DROP, SKU, 1, "first").await];

    pg.signal_all("-STOP");
    let started = Instant::now();
    for n in 0..20 {
        won.push(s.http.reserve(DROP, SKU, 1, &format!("stalled{n}")).await);
    }
    let selling = started.elapsed();
    let mine = won.last().unwrap();
    let read_back = s
        .http
        .get(
            &format!("/api/v1/orders/{}", mine.body["id"].as_str().unwrap()),
            Some(&token("stalled19")),
        )
        .await;
    pg.signal_all("-CONT");

    assert!(
        won.iter().all(|r| r.status == 201),
        "every reserve won while the database was stalled"
    );
    assert!(
        selling < Duration::from_secs(2),
        "20 reserves took {selling:?}"
    );
    assert_eq!(
        read_back.status, 200,
        "read-your-writes from Redis: {:?}",
        read_back.body
    );
    s.stop().await;
    let audit = s.audit().await;
    let rows = audit.order_ids().await;
    for reply in &won {
        assert!(
            rows.contains(reply.body["id"].as_str().unwrap()),
            "every 201 is a row"
        );
    }
    assert_eq!(audit.live_units("flt@%").await, 21);
}

/// `replica_acks = 1`: a win is answered only once a replica has it. With
/// the replica stalled (SIGSTOP) the win is answered 503 within the
/// timeout; once the replica is back, the retry with the same key gets the
/// same order, and the store holds it once.
#[tokio::test]
async fn with_replica_acks_a_win_waits_for_a_replica_and_a_retry_replays_it() {
    let master = RedisServer::start();
    let replica = RedisServer::start_in(
        tempfile::tempdir().unwrap(),
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
    );
    let mut conn = redis_conn(&replica).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never linked: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = Timestamp::now();
    let config = config_head("")
        + "[redis]\nreplica_acks = 1\nreplica_ack_timeout = \"300ms\"\n"
        + &window_drop(DROP, SKU, 5, 2, now - hours(1), now + hours(1));
    let mut server = TestServer::start_with_engine(&config, now, &master.engine()).await;
    let body = format!(r#"{{"sku": "{SKU}"}}"#);
    let first = server.http.reserve_keyed(DROP, "ann", "a1", &body).await;
    assert_eq!(first.status, 201, "{:?}", first.body);

    replica.signal("-STOP");
    let started = Instant::now();
    let stalled = server.http.reserve_keyed(DROP, "bob", "b1", &body).await;
    let waited = started.elapsed();
    replica.signal("-CONT");
    assert_eq!(
        (stalled.status, stalled.error()),
        (503, "unavailable"),
        "{:?}",
        stalled.body
    );
    assert!(
        waited >= Duration::from_millis(250),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");

    let retried = server.http.reserve_keyed(DROP, "bob", "b1", &body).await;
    assert_eq!(retried.status, 200, "a replay: {:?}", retried.body);
    let metrics = server.http.get_text("/metrics").await;
    assert!(
        metrics.contains("dropgate_redis_replica_ack_timeouts_total 1"),
        "{metrics}"
    );
    server.stop().await;
    let audit = server.audit().await;
    assert_eq!(
        audit.count_where("user_id = 'bob'").await,
        1,
        "bob's win stored once"
    );
    assert_eq!(audit.count_where("1 = 1").await, 2);
}
