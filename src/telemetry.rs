//! Metrics in Prometheus text format: counters and histograms recorded where
//! things happen, gauges read from the running app when `/metrics` is scraped.
//! README.md lists every metric with what it means.

use std::sync::OnceLock;
use std::time::Duration;

use dashmap::DashMap;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::App;
use crate::SeededHasher;

/// Latency buckets in seconds: fine below 10 ms, where a healthy reserve lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process-wide recorder. The `metrics` facade has one global recorder,
/// so every App in a process (tests start several) shares it.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("dropgate_order_writer_batch_size".into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, which nothing here does.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// A `&'static str` label value by its address and length (one string
/// may start where another, longer one does).
type Label = (usize, usize);

fn label(value: &'static str) -> Label {
    (value.as_ptr() as usize, value.len())
}

type Handles<K, V> = DashMap<K, V, SeededHasher>;

/// Handles of the per-request metrics, by the addresses of their label
/// values. Labels come from fixed sets of `&'static str`, so an address
/// names a value; a hit skips building and hashing the labelled key in the
/// `metrics` registry, which every request would otherwise do twice.
fn request_handles() -> &'static Handles<(Label, Label), (Counter, Histogram)> {
    static HANDLES: OnceLock<Handles<(Label, Label), (Counter, Histogram)>> = OnceLock::new();
    HANDLES.get_or_init(Handles::default)
}

fn engine_handles() -> &'static Handles<Label, Histogram> {
    static HANDLES: OnceLock<Handles<Label, Histogram>> = OnceLock::new();
    HANDLES.get_or_init(Handles::default)
}

/// One answered request: its endpoint, what became of it, and how long it took.
pub fn request(endpoint: &'static str, outcome: &'static str, took: Duration) {
    let key = (label(endpoint), label(outcome));
    let handles = request_handles();
    if let Some(found) = handles.get(&key) {
        found.0.increment(1);
        found.1.record(took.as_secs_f64());
        return;
    }
    let counter = counter!("dropgate_requests_total", "endpoint" => endpoint, "outcome" => outcome);
    let latency = histogram!("dropgate_request_duration_seconds", "endpoint" => endpoint);
    counter.increment(1);
    latency.record(took.as_secs_f64());
    handles.insert(key, (counter, latency));
}

/// One call into the inventory engine.
pub fn engine_call(call: &'static str, took: Duration) {
    let handles = engine_handles();
    let key = label(call);
    if let Some(found) = handles.get(&key) {
        found.record(took.as_secs_f64());
        return;
    }
    let latency = histogram!("dropgate_engine_call_duration_seconds", "call" => call);
    latency.record(took.as_secs_f64());
    handles.insert(key, latency);
}

/// Renders every metric, reading the gauges from `app` first.
/// One gauge pair per Redis server ever seen: up (1/0) and master (1/0).
/// A server no longer seen (a dead master dropped from the cluster's view,
/// a replica gone from its master's) is reported down, not left as it was.
fn redis_nodes(topology: &crate::engine::Topology) {
    static SEEN: OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for address in seen.iter() {
        if !topology.nodes.iter().any(|n| &n.address == address) {
            gauge!("dropgate_redis_node_up", "address" => address.clone()).set(0.0);
        }
    }
    for node in &topology.nodes {
        let up = if node.state == "up" { 1.0 } else { 0.0 };
        let master = if node.role == "master" { 1.0 } else { 0.0 };
        gauge!("dropgate_redis_node_up", "address" => node.address.clone()).set(up);
        gauge!("dropgate_redis_node_master", "address" => node.address.clone()).set(master);
        seen.insert(node.address.clone());
    }
    gauge!("dropgate_redis_topology", "kind" => topology.kind).set(1.0);
}

pub async fn render(app: &App) -> String {
    let now = app.clock.now();
    for drop in app.catalog().drops() {
        let round = drop.round_at(now);
        for sku in &drop.skus {
            // A backend that does not answer leaves the last value in place.
            if let Ok(left) = app.engine.remaining(&round.id, &sku.id, sku.stock).await {
                gauge!("dropgate_stock_remaining", "drop" => drop.id.as_str().to_owned(), "sku" => sku.id.as_str().to_owned())
                    .set(left as f64);
            }
        }
    }
    gauge!("dropgate_engine_in_flight").set(f64::from(app.admission.in_flight()));
    gauge!("dropgate_open_connections").set(app.open_connections() as f64);
    gauge!("dropgate_order_writer_lag").set(app.writer_lag() as f64);
    gauge!("dropgate_order_writer_dead_letters").set(app.dead_letters() as f64);
    if let Ok(rounds) = app.engine.rounds_held().await {
        gauge!("dropgate_engine_rounds").set(rounds as f64);
    }
    if let Some(topology) = app.engine.topology().await {
        redis_nodes(&topology);
    }
    let (ips, users) = app.admission.tracked_keys();
    gauge!("dropgate_limiter_keys", "layer" => "ip").set(ips as f64);
    gauge!("dropgate_limiter_keys", "layer" => "user").set(users as f64);
    let handle = recorder();
    handle.run_upkeep();
    handle.render()
}
