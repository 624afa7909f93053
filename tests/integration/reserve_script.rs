//! `lua/reserve.lua` called directly on a real redis-server: several
//! attempts in one call are decided in order, exactly as separate calls
//! would be, and an attempt sent twice (a call resent after its connection
//! dropped) is decided once; `lua/ack.lua` takes an entry's wins off the
//! writer's count once. Then, over HTTP, concurrent reserves share calls.

use redis::AsyncCommands;

use crate::support::*;

const SCRIPT: &str = include_str!("../../lua/reserve.lua");
const ROUND: &str = "scr@r1";

fn key(name: &str) -> String {
    format!("dg:{{{ROUND}}}:{name}")
}

/// One attempt's ten arguments: open window, limit 2.
fn attempt(user: &str, units: u32, idempotency: (&str, &str), order_id: &str) -> Vec<String> {
    vec![
        "0".into(),
        "99999999999999".into(),
        "sku".into(),
        units.to_string(),
        "2".into(),
        user.into(),
        idempotency.0.into(),
        idempotency.1.into(),
        order_id.into(),
        format!(r#"{{"id":"{order_id}","user_id":"{user}"}}"#),
    ]
}

/// One script call; `again` marks it as sent before (after a dropped connection).
async fn call_sent(
    conn: &mut redis::aio::MultiplexedConnection,
    attempts: &[Vec<String>],
    again: bool,
) -> Vec<(i64, String)> {
    let script = redis::Script::new(SCRIPT);
    let mut invocation = script.key(key("stock"));
    for name in ["held", "keys", "orders", "live", "winners", "unstored"] {
        invocation.key(key(name));
    }
    invocation
        .arg(attempts.len())
        .arg(if again { "1" } else { "0" });
    for a in attempts {
        invocation.arg(a);
    }
    let flat: Vec<redis::Value> = invocation.invoke_async(conn).await.unwrap();
    flat.chunks(2)
        .map(|pair| {
            (
                redis::from_redis_value(pair[0].clone()).unwrap(),
                redis::from_redis_value(pair[1].clone()).unwrap(),
            )
        })
        .collect()
}

async fn call(
    conn: &mut redis::aio::MultiplexedConnection,
    attempts: &[Vec<String>],
) -> Vec<(i64, String)> {
    call_sent(conn, attempts, false).await
}

async fn with_stock(redis: &RedisServer, units: i64) -> redis::aio::MultiplexedConnection {
    let mut conn = redis_conn(redis).await;
    let _: () = conn.hset(key("stock"), "sku", units).await.unwrap();
    conn
}

#[tokio::test]
async fn a_call_decides_its_attempts_in_order() {
    let redis = RedisServer::start();
    let mut conn = with_stock(&redis, 3).await;
    let answers = call(
        &mut conn,
        &[
            attempt("u1", 1, ("", ""), "o1"),
            attempt("u1", 2, ("", ""), "o2"),
            attempt("u2", 1, ("k", "f"), "o3"),
            attempt("u2", 1, ("k", "f"), "o4"),
            attempt("u2", 1, ("k", "g"), "o5"),
            attempt("u3", 1, ("", ""), "o6"),
            attempt("u4", 1, ("", ""), "o7"),
        ],
    )
    .await;
    let codes: Vec<i64> = answers.iter().map(|(code, _)| *code).collect();
    // won, over the limit, won, replay of o3, key reused, won (last unit), sold out
    assert_eq!(codes, [1, -4, 1, 2, -5, 1, -3]);
    assert!(answers[3].1.contains(r#""id":"o3""#), "{:?}", answers[3]);

    let left: i64 = conn.hget(key("stock"), "sku").await.unwrap();
    let held: Vec<i64> = redis::cmd("HMGET")
        .arg(key("held"))
        .arg(&["u1", "u2", "u3"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((left, held), (0, vec![1, 1, 1]));
    // One stream entry names the call's three wins, with their keys and
    // fingerprints, in order; the writer's count of wins to store is 3.
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(key("winners")).await.unwrap();
    assert_eq!(entries.ids.len(), 1);
    let entry = &entries.ids[0];
    let field = |name: &str| entry.get::<String>(name).unwrap();
    assert_eq!(
        (field("ids"), field("keys"), field("fingerprints")),
        ("o1\no3\no6".into(), "\nk\n".into(), "\nf\n".into())
    );
    let unstored: i64 = conn.get(key("unstored")).await.unwrap();
    assert_eq!(unstored, 3);
}

#[tokio::test]
async fn an_attempt_sent_twice_is_decided_once() {
    let redis = RedisServer::start();
    let mut conn = with_stock(&redis, 5).await;
    let first = call(&mut conn, &[attempt("u1", 1, ("", ""), "o1")]).await;
    let again = call_sent(&mut conn, &[attempt("u1", 1, ("", ""), "o1")], true).await;
    assert_eq!(first, again);
    assert_eq!(first[0].0, 1);

    let left: i64 = conn.hget(key("stock"), "sku").await.unwrap();
    let held: i64 = conn.hget(key("held"), "u1").await.unwrap();
    let unstored: i64 = conn.get(key("unstored")).await.unwrap();
    assert_eq!((left, held, unstored), (4, 1, 1));
    // The winner's entry names the order; its text is kept once, in the orders hash.
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(key("winners")).await.unwrap();
    assert_eq!(entries.ids.len(), 1);
    let entry = &entries.ids[0];
    assert_eq!(entry.get::<String>("ids").as_deref(), Some("o1"));
    assert!(!entry.map.contains_key("order"), "{:?}", entry.map);
    let text: String = conn.hget(key("orders"), "o1").await.unwrap();
    assert_eq!(text, attempt("u1", 1, ("", ""), "o1")[9]);
}

/// `lua/ack.lua`: an entry's wins come off the writer's count once, however
/// often the entry is acknowledged (a writer that claimed it from one
/// presumed dead, and the late one, both acknowledge it).
#[tokio::test]
async fn an_entry_acknowledged_twice_is_counted_off_once() {
    let redis = RedisServer::start();
    let mut conn = with_stock(&redis, 5).await;
    let mut won = call(&mut conn, &[attempt("u1", 1, ("", ""), "o1")]).await;
    won.extend(
        call(
            &mut conn,
            &[
                attempt("u2", 1, ("", ""), "o2"),
                attempt("u3", 1, ("", ""), "o3"),
            ],
        )
        .await,
    );
    assert!(won.iter().all(|(code, _)| *code == 1), "{won:?}");
    let _: () = conn
        .xgroup_create(key("winners"), "order-writers", "0")
        .await
        .unwrap();
    let options = redis::streams::StreamReadOptions::default().group("order-writers", "w1");
    let read: redis::streams::StreamReadReply = conn
        .xread_options(&[key("winners")], &[">"], &options)
        .await
        .unwrap();
    let entries: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(entries.len(), 2);
    let ack = redis::Script::new(include_str!("../../lua/ack.lua"));
    let acknowledge = |entry: &str, wins: usize| {
        let mut invocation = ack.key(key("winners"));
        invocation
            .key(key("unstored"))
            .arg("order-writers")
            .arg(entry)
            .arg(wins);
        invocation
    };
    let _: i64 = acknowledge(&entries[1], 2)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = acknowledge(&entries[1], 2)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let unstored: i64 = conn.get(key("unstored")).await.unwrap();
    assert_eq!(unstored, 1, "the second entry's two wins, taken off once");
    let _: i64 = acknowledge(&entries[0], 1)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let unstored: i64 = conn.get(key("unstored")).await.unwrap();
    let left: usize = conn.xlen(key("winners")).await.unwrap();
    assert_eq!((unstored, left), (0, 0));
}

#[tokio::test]
async fn concurrent_reserves_share_script_calls() {
    let redis = RedisServer::start();
    let now = jiff::Timestamp::now();
    let config =
        config_head("") + &window_drop("shr", "sku", 100_000, 1, now - hours(1), now + hours(1));
    let mut s = TestServer::start_with_engine(&config, now, &redis.engine()).await;
    let shoppers = 400;
    let requests: Vec<_> = (0..shoppers)
        .map(|n| {
            let http = s.http.clone();
            tokio::spawn(
                async move { http.reserve("shr", "sku", 1, &format!("u{n}")).await.status },
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    assert!(statuses.iter().all(|&status| status == 201), "{statuses:?}");

    let calls = redis_calls(&redis, "evalsha").await as usize;
    assert!(calls >= 1, "EVALSHA was called");
    assert!(
        calls < shoppers,
        "{shoppers} concurrent reserves took {calls} script calls"
    );
    s.stop().await;
    assert_eq!(live_units(&s.db(), "shr@%"), shoppers as i64);
}
