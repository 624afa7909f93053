//! Order events pushed to a webhook: the real binary killed with SIGKILL
//! at random moments while orders change state, and a receiver (started
//! here, on loopback) that fails half of its deliveries. Afterwards every
//! change has exactly one event in the store, and the receiver has seen
//! every event at least once, in order per order, each signature valid.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::support::*;

const SECRET: &str = "test-webhook-secret-of-at-least-32-bytes";

/// One delivery as the receiver met it.
#[derive(Debug, Clone)]
struct Receipt {
    event_id: i64,
    order_id: String,
    signed: bool,
    acknowledged: bool,
}

/// A webhook receiver on loopback that fails the first delivery of every
/// event (500), so half of all deliveries fail and every event is retried.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Receipt>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receipts = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let seen = receipts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, count) = (seen.clone(), count.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, count) = (seen.clone(), count.clone());
                    async move {
                        let signature = req
                            .headers()
                            .get("x-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let id = event["id"].as_i64().unwrap_or(-1);
                        let acknowledged = !count.lock().unwrap().insert(id);
                        seen.lock().unwrap().push(Receipt {
                            event_id: event["id"].as_i64().unwrap_or(-1),
                            order_id: event["order_id"].as_str().unwrap_or("").to_owned(),
                            signed: dropgate::payment::signature_is_valid(
                                SECRET.as_bytes(),
                                &body,
                                signature.as_deref(),
                            ),
                            acknowledged,
                        });
                        let status = if acknowledged {
                            StatusCode::NO_CONTENT
                        } else {
                            StatusCode::INTERNAL_SERVER_ERROR
                        };
                        let mut answer = Response::new(Full::new(Bytes::new()));
                        *answer.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, receipts)
}

/// Shoppers that win, pay, and have their orders shipped and delivered,
/// until the server is gone.
async fn shoppers(addr: SocketAddr, life: usize) {
    let http = Http::new(addr);
    let mut workers = Vec::new();
    for worker in 0..8 {
        let http = http.clone();
        workers.push(tokio::spawn(async move {
            for n in 0.. {
                let user = format!("hook-{life}-{worker}-{n}");
                if !one_purchase(&http, &user).await {
                    return;
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

/// Wins an order and takes it as far as it goes: paid, shipped,
/// delivered, or cancelled for every fourth shopper. False once the
/// server stops answering.
async fn one_purchase(http: &Http, user: &str) -> bool {
    let reserve = r#"{"sku": "sku", "quantity": 1}"#;
    let auth = format!("Bearer {}", token(user));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let Some(won) = http
        .try_send(
            Method::POST,
            "/api/v1/drops/hooks/reserve",
            &headers,
            reserve.into(),
        )
        .await
    else {
        return false;
    };
    let Some(order) = won.body["id"].as_str().map(str::to_owned) else {
        // Refused (the server busy while it starts): try the next shopper.
        return true;
    };
    if user.ends_with('3') {
        let path = format!("/api/v1/orders/{order}/cancel");
        return http
            .try_send(Method::POST, &path, &headers, Vec::new())
            .await
            .is_some();
    }
    let now = Timestamp::now();
    let steps = [
        (
            "/api/v1/payments/notify",
            PAYMENT_SECRET,
            json!({"order_id": order, "transaction_id": format!("tx-{order}"), "amount": "1999.00", "method": "alipay"}),
        ),
        (
            "/api/v1/logistics/notify",
            LOGISTICS_SECRET,
            json!({"order_id": order, "event": "shipped", "at": now.to_string(), "carrier": "SF", "tracking_number": "SF1"}),
        ),
        (
            "/api/v1/logistics/notify",
            LOGISTICS_SECRET,
            json!({"order_id": order, "event": "delivered", "at": now.to_string(), "carrier": "SF", "tracking_number": "SF1"}),
        ),
    ];
    for (path, secret, body) in steps {
        let body = body.to_string();
        let signature = dropgate::payment::sign(secret.as_bytes(), body.as_bytes());
        let headers = [
            ("x-signature", signature.as_str()),
            ("content-type", "application/json"),
        ];
        if http
            .try_send(Method::POST, path, &headers, body.into_bytes())
            .await
            .is_none()
        {
            return false;
        }
    }
    true
}

/// The events of each order in the store, oldest first.
fn stored_events(db: &rusqlite::Connection) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut events: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let mut stmt = db
        .prepare("SELECT id, order_id, type FROM order_events ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, order, kind) = row.unwrap();
        events.entry(order).or_default().push((id, kind));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_survive_kill_9_and_reach_a_flaky_receiver_once_each_in_order() {
    let (hook, receipts) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let config = config_head("")
        + &window_drop(
            "hooks",
            "sku",
            100_000,
            100_000,
            now - hours(1),
            now + hours(1),
        )
        + &format!("\n[[webhooks]]\nurl = \"http://{hook}/events\"\nsecret = \"{SECRET}\"\n");
    let config_path = dir.path().join("dropgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let data_dir = dir.path().join("data");

    // Three lives, each ended by SIGKILL at a moment of its own.
    let mut seed = now.subsec_nanosecond() as u64;
    for life in 0..3 {
        let (mut child, addr) = spawn_dropgate(&config_path, &data_dir);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let lifetime = Duration::from_millis(300 + (seed >> 33) % 900);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(lifetime).await;
            child.kill().expect("SIGKILL delivered");
            child.wait().unwrap();
        });
        shoppers(addr, life).await;
        killer.await.unwrap();
    }

    // The last life runs until the receiver has every event.
    let (child, addr) = spawn_dropgate(&config_path, &data_dir);
    let child = Running::new(child);
    let db = open_db(&data_dir.join("orders.db"));
    let events = stored_events(&db);
    let ids: HashSet<i64> = events.values().flatten().map(|(id, _)| *id).collect();
    assert!(ids.len() > 50, "the lives made changes: {}", ids.len());
    let started = Instant::now();
    loop {
        let acknowledged: HashSet<i64> = receipts
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.acknowledged)
            .map(|r| r.event_id)
            .collect();
        if ids.is_subset(&acknowledged) {
            break;
        }
        let missing = ids.difference(&acknowledged).count();
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{missing} of {} events never acknowledged",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = Http::new(addr).get_text("/metrics").await;
    assert!(
        metrics.contains("dropgate_webhook_deliveries_total{"),
        "{metrics}"
    );
    assert!(metrics.contains("dropgate_webhook_lag_seconds{"));
    child.terminate();

    // Exactly one event per change: each order's events are the path its
    // status took, no more, none twice.
    let mut statuses: HashMap<String, String> = HashMap::new();
    let mut stmt = db.prepare("SELECT id, status FROM orders").unwrap();
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap() {
        let (id, status) = row.unwrap();
        statuses.insert(id, status);
    }
    let events = stored_events(&db);
    assert_eq!(events.len(), statuses.len(), "every order has its events");
    for (order, status) in &statuses {
        let path: &[&str] = match status.as_str() {
            "pending_payment" => &["order.created"],
            "cancelled" => &["order.created", "order.cancelled"],
            "paid" => &["order.created", "order.paid"],
            "shipped" => &["order.created", "order.paid", "order.shipped"],
            "delivered" => &[
                "order.created",
                "order.paid",
                "order.shipped",
                "order.delivered",
            ],
            other => panic!("unexpected status {other}"),
        };
        let kinds: Vec<&str> = events[order].iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(kinds, path, "order {order} ({status})");
    }

    // Every delivery signed; each order's events first acknowledged in order.
    let receipts = receipts.lock().unwrap().clone();
    assert!(
        receipts.iter().all(|r| r.signed),
        "every signature verifies"
    );
    let failed = receipts.iter().filter(|r| !r.acknowledged).count();
    assert!(
        failed * 2 >= receipts.len() - 10,
        "the receiver failed half: {failed}"
    );
    let mut first_acks: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut acked = HashSet::new();
    for r in receipts.iter().filter(|r| r.acknowledged) {
        if acked.insert(r.event_id) {
            first_acks
                .entry(r.order_id.as_str())
                .or_default()
                .push(r.event_id);
        }
    }
    for (order, ids) in first_acks {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "order {order} out of order: {ids:?}"
        );
    }
}
