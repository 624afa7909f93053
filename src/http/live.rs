//! `GET /admin/v1/live`: what the operator page shows every second, read
//! from memory and the engine, never from the order store. Per drop: its
//! round and units left per SKU (as shoppers see them), its queue's
//! figures, and its reserve outcomes and latency buckets as running totals
//! (the page shows their differences: rates and a p99 over the last
//! second). For the server: the order writer's lag, dead letters, requests
//! in the engine and open connections.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::admin::authorize;
use super::error::ApiError;
use super::json::{json, HttpResponse};
use super::views::DropView;
use crate::app::App;
use crate::telemetry::LATENCY_BUCKETS;
use crate::waiting_room::RoundQueue;

pub async fn live(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    let now = app.clock.now();
    let mut drops = Vec::new();
    for drop in app.catalog().drops() {
        let mut view = serde_json::to_value(DropView::of(app, drop, now).await?)
            .expect("drop views serialize");
        // What each SKU started the round with, beside what is left.
        if let Some(skus) = view["skus"].as_array_mut() {
            for (shown, sku) in skus.iter_mut().zip(&drop.skus) {
                shown["stock"] = json!(sku.stock);
            }
        }
        // A queue's figures while it runs (the map keeps a past round's).
        let running = RoundQueue::current(app, drop, now).is_some_and(|q| q.is_active(now));
        let figures = app.queue_figures.get(drop.id.as_str()).filter(|_| running);
        view["queue_figures"] = figures.map_or(Value::Null, |stats| {
            let mut figures = json!(*stats);
            figures["waiting"] = json!(stats.joined.saturating_sub(stats.admitted));
            figures
        });
        view["reserve"] = json!(app.reserve_tally.view(drop.id.as_str()));
        drops.push(view);
    }
    Ok(json(
        StatusCode::OK,
        &json!({
            "unix_ms": now.as_millisecond(),
            "latency_buckets": LATENCY_BUCKETS,
            "order_writer_lag": app.writer_lag(),
            "dead_letters": app.dead_letters(),
            "in_flight": app.admission.in_flight(),
            "open_connections": app.open_connections(),
            "limits": app.admission.limits(),
            "drops": drops,
        }),
    ))
}
