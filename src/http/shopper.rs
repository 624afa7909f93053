//! Shopper endpoints: drops, reserve, and the caller's own orders.

use hyper::body::Incoming;
use hyper::header::{HeaderName, AUTHORIZATION};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use std::borrow::Cow;

use super::error::ApiError;
use super::json::{json, parse, read_body, respond, HttpResponse};
use super::listing;
use crate::app::App;
use crate::auth::Shopper;
use crate::domain::{IdempotencyKey, OrderId, Quantity};
use crate::lifecycle::{self, Cancelled, Found};
use crate::reserve::{self, Win};

/// Named once: a lookup by `&str` parses and checks the name every time.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Verifies the shopper's token, then spends a token from their bucket.
pub fn authenticate(app: &App, req: &Request<Incoming>) -> Result<Shopper, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let shopper = app
        .tokens
        .verify(header)
        .map_err(|e| ApiError::Unauthorized(e.0.to_owned()))?;
    app.admission.check_user(&shopper.user)?;
    Ok(shopper)
}

pub async fn list_drops(app: &App) -> Result<HttpResponse, ApiError> {
    let body = app.drop_views.list(app).await?;
    Ok(respond(StatusCode::OK, "application/json", body))
}

pub async fn get_drop(app: &App, drop_id: &str) -> Result<HttpResponse, ApiError> {
    let drop = app
        .catalog()
        .get(drop_id)
        .cloned()
        .ok_or_else(|| no_drop(drop_id))?;
    let body = app.drop_views.one(app, &drop).await?;
    Ok(respond(StatusCode::OK, "application/json", body))
}

fn no_drop(drop_id: &str) -> ApiError {
    ApiError::NotFound(format!("no drop {drop_id:?}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody<'a> {
    /// Borrowed from the body unless it holds escapes: no allocation.
    #[serde(borrow)]
    sku: Cow<'a, str>,
    #[serde(default = "one")]
    quantity: i64,
    #[serde(default)]
    accept_presale_terms: bool,
}

fn one() -> i64 {
    1
}

pub async fn reserve(
    app: &App,
    drop_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, &req)?;
    let drop = app
        .live_catalog()
        .get(drop_id)
        .ok_or_else(|| no_drop(drop_id))?;
    if drop.queue.is_some() {
        let round = drop.round_at(app.clock.now());
        super::queue::check_ticket(app, &drop, &round.id, &shopper.user, &req)?;
    }
    let key = match req.headers().get(&IDEMPOTENCY_KEY) {
        None => None,
        Some(raw) => Some(IdempotencyKey::parse(raw.to_str().unwrap_or(""))?),
    };
    let bytes = read_body(req, &app.settings).await?;
    let body: ReserveBody = parse(&bytes)?;
    let request = reserve::Request {
        user: shopper.user,
        sku: &body.sku,
        quantity: Quantity::new(body.quantity)?,
        accept_presale_terms: body.accept_presale_terms,
        key,
        student: shopper.student,
    };
    match reserve::reserve(app, &drop, request).await? {
        Win::New(order) => Ok(json(StatusCode::CREATED, &order)),
        Win::Replayed(order) => Ok(json(StatusCode::OK, &order)),
    }
}

/// `GET /api/v1/orders?status=&limit=&after=`: the shopper's orders,
/// oldest first, a page at a time.
pub async fn list_orders(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    let params = listing::query(req, &["status", "limit", "after"])?;
    let mut filter = listing::order_filter(&params)?;
    filter.user = Some(shopper.user);
    let limit = filter.limit;
    let orders = app.store.search(filter).await?;
    let page = listing::order_page(&orders, limit, |o| {
        serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
    });
    Ok(json(StatusCode::OK, &page))
}

pub(super) fn no_order() -> ApiError {
    ApiError::NotFound("no such order".into())
}

/// The verified caller and the order id in the path; an id that cannot be
/// one of ours is answered like a missing order.
pub(super) fn caller_and_order(
    app: &App,
    order_id: &str,
    req: &Request<Incoming>,
) -> Result<(Shopper, OrderId), ApiError> {
    let shopper = authenticate(app, req)?;
    let id = OrderId::parse(order_id).map_err(|_| no_order())?;
    Ok((shopper, id))
}

pub async fn get_order(
    app: &App,
    order_id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, req)?;
    // Read-your-writes: a win the Redis order writer has not stored yet is
    // read from the engine, also while the store does not answer.
    let order = match lifecycle::find_order(app, &id).await? {
        Found::Stored(order) | Found::Fresh(order) => Some(order),
        Found::Missing => None,
    };
    match order {
        // Another shopper's order is answered like a missing one, so ids cannot be probed.
        Some(order) if order.user_id == shopper.user => Ok(json(StatusCode::OK, &order)),
        _ => Err(no_order()),
    }
}

pub async fn cancel_order(
    app: &App,
    order_id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, req)?;
    match lifecycle::cancel(app, id, shopper.user).await? {
        Cancelled::Now(order) => Ok(json(StatusCode::OK, &order)),
        Cancelled::NotFound => Err(no_order()),
        Cancelled::NotCancellable(order) => Err(ApiError::NotCancellable {
            status: order.status.as_str(),
        }),
    }
}
