//! Routing: one match on method and path segments.

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::error::ApiError;
use super::json::{error, HttpResponse};
use super::{ops, payments, shopper};
use crate::app::App;

pub async fn handle(app: &App, req: Request<Incoming>) -> HttpResponse {
    route(app, req).await.unwrap_or_else(|e| error(&e))
}

async fn route(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["healthz"]) => Ok(ops::healthz()),
        (Method::GET, ["readyz"]) => ops::readyz(app).await,
        (Method::GET, ["api", "v1", "time"]) => Ok(ops::time(app)),
        (Method::GET, ["api", "v1", "drops"]) => shopper::list_drops(app).await,
        (Method::GET, ["api", "v1", "drops", drop]) => shopper::get_drop(app, drop).await,
        (Method::POST, ["api", "v1", "drops", drop, "reserve"]) => {
            shopper::reserve(app, drop, req).await
        }
        (Method::GET, ["api", "v1", "orders"]) => shopper::list_orders(app, &req).await,
        (Method::GET, ["api", "v1", "orders", order]) => shopper::get_order(app, order, &req).await,
        (Method::POST, ["api", "v1", "orders", order, "cancel"]) => {
            shopper::cancel_order(app, order, &req).await
        }
        (Method::POST, ["api", "v1", "payments", "notify"]) => payments::notify(app, req).await,
        _ => Err(ApiError::NotFound(format!("no endpoint {path}"))),
    }
}
