//! Storms: many shoppers at once against little stock; the invariants are
//! then checked from the SQLite file, not from the server's word.

use std::collections::HashSet;
use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::Semaphore;

use crate::support::*;

/// Client requests in flight at once: enough to contend, few enough for a
/// default descriptor limit (each costs a socket on both ends).
const IN_FLIGHT: usize = 1000;

struct StormResult {
    won: Vec<String>,
    statuses: Vec<(u16, String)>,
}

/// Every (user, copies) fires `copies` concurrent single-unit reservations.
async fn storm(
    server: &TestServer,
    drop: &'static str,
    users: usize,
    copies: usize,
) -> StormResult {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::with_capacity(users * copies);
    for user in 0..users {
        for _ in 0..copies {
            let http = server.http.clone();
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                http.reserve(drop, "sku", 1, &format!("user-{user}")).await
            }));
        }
    }
    let mut result = StormResult {
        won: Vec::new(),
        statuses: Vec::new(),
    };
    for task in tasks {
        let reply = task.await.unwrap();
        if reply.status == 201 {
            result
                .won
                .push(reply.body["id"].as_str().unwrap().to_owned());
        }
        result
            .statuses
            .push((reply.status, reply.error().to_owned()));
    }
    result
}

fn config(now: Timestamp) -> String {
    let mut config = config_head("");
    config += &window_drop("storm", "sku", 100, 2, now - hours(1), now + hours(1));
    config += &window_drop("storm5", "sku", 100, 2, now - hours(1), now + hours(1));
    config
}

fn assert_invariants(server: &TestServer, round_like: &str, result: &StormResult) {
    let db = server.db();
    assert_eq!(
        live_units(&db, round_like),
        100,
        "exactly the stock is sold"
    );
    assert!(max_units_per_user(&db) <= 2, "nobody above the limit");
    let rows = order_ids(&db);
    let won: HashSet<&String> = result.won.iter().collect();
    assert_eq!(won.len(), result.won.len(), "no order id answered twice");
    for id in &result.won {
        assert!(rows.contains(id), "201 order {id} is a row");
    }
    for (status, error) in &result.statuses {
        let expected = matches!(
            (*status, error.as_str()),
            (201, _) | (409, "sold_out") | (409, "limit_exceeded")
        );
        assert!(expected, "unexpected answer {status} {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_shoppers_against_a_hundred_units_sell_exactly_a_hundred() {
    let now = Timestamp::now();
    let server = TestServer::start_with_clock(&config(now), now).await;
    let result = storm(&server, "storm", 1000, 1).await;
    assert_eq!(result.won.len(), 100);
    assert_invariants(&server, "storm@%", &result);
    assert_eq!(server.http.remaining("storm").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shoppers_firing_five_requests_each_never_pass_their_limit() {
    let now = Timestamp::now();
    let server = TestServer::start_with_clock(&config(now), now).await;
    let result = storm(&server, "storm5", 1000, 5).await;
    assert_eq!(result.won.len(), 100);
    assert_invariants(&server, "storm5@%", &result);
}
