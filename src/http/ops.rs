//! Endpoints for operators and clients' clocks: liveness, readiness,
//! metrics, time.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;

use super::error::ApiError;
use super::json::{json, respond, HttpResponse};
use crate::app::App;
use crate::telemetry;

pub fn healthz() -> HttpResponse {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn readyz(app: &App) -> Result<HttpResponse, ApiError> {
    let (engine, database, topology) =
        tokio::join!(app.engine.ready(), app.store.ping(), app.engine.topology());
    let state = |up: bool| if up { "up" } else { "down" };
    let mut body = json!({"engine": state(engine), "database": state(database)});
    if let Some(topology) = topology {
        body["redis"] = json!(topology);
    }
    body["order_writer_lag"] = json!(app.writer_lag());
    // A 201 the writer could not store waits for an operator: say so here.
    body["dead_letters"] = json!(app.dead_letters());
    if engine && database {
        Ok(json(StatusCode::OK, &body))
    } else {
        Err(ApiError::Unavailable(format!("backends: {body}")))
    }
}

/// The server's clock, so countdowns in client apps agree with the engine.
pub fn time(app: &App) -> HttpResponse {
    let now = app.clock.now();
    json(
        StatusCode::OK,
        &json!({"now": now.to_string(), "unix_ms": now.as_millisecond()}),
    )
}

/// Every metric in Prometheus text format.
pub async fn metrics(app: &App) -> HttpResponse {
    let text = telemetry::render(app).await;
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(text),
    )
}
