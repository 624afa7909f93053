//! Shopper endpoints: drops, reserve, and the caller's own orders.

use hyper::body::Incoming;
use hyper::header::{HeaderName, AUTHORIZATION};
use hyper::{Request, StatusCode};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::time::Instant;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::views::DropView;
use crate::app::App;
use crate::auth::Shopper;
use crate::domain::{IdempotencyKey, OrderId, Quantity};
use crate::engine::{ReserveAttempt, ReserveOutcome};
use crate::lifecycle::{self, Cancelled, Found};
use crate::money::Currency;
use crate::order::{Order, OrderStatus};
use crate::schedule::Phase;
use crate::telemetry;

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
    let mut drops = Vec::with_capacity(app.catalog().drops().len());
    for drop in app.catalog().drops() {
        drops.push(DropView::of(app, drop).await?);
    }
    Ok(json(StatusCode::OK, &json!({ "drops": drops })))
}

pub async fn get_drop(app: &App, drop_id: &str) -> Result<HttpResponse, ApiError> {
    let drop = app
        .catalog()
        .get(drop_id)
        .cloned()
        .ok_or_else(|| no_drop(drop_id))?;
    Ok(json(StatusCode::OK, &DropView::of(app, &drop).await?))
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
    let key = match req.headers().get(&IDEMPOTENCY_KEY) {
        None => None,
        Some(raw) => Some(IdempotencyKey::parse(raw.to_str().unwrap_or(""))?),
    };
    let bytes = read_body(req, &app.settings).await?;
    let body: ReserveBody = parse(&bytes)?;
    let quantity = Quantity::new(body.quantity)?;
    let sku = drop
        .sku(&body.sku)
        .ok_or_else(|| ApiError::NotFound(format!("no SKU {:?} in drop {drop_id:?}", body.sku)))?;
    if drop.presale && !body.accept_presale_terms {
        return Err(ApiError::InvalidRequest(
            "this is a presale drop: set accept_presale_terms to true".into(),
        ));
    }

    // Orders carry millisecond times, as the order store keeps them. Cut
    // rather than rounded: jiff's rounding took more instructions than
    // finding the round (callgrind).
    let now = app.clock.now();
    let now = Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now);
    let round = drop.round_at(now);
    match round.phase_at(now) {
        Phase::Upcoming => {
            return Err(ApiError::NotOpen {
                opens_at: round.opens_at,
            })
        }
        Phase::Closed => return Err(ApiError::Closed),
        Phase::Open => {}
    }
    // A request with a key may be the replay of a win, which only the
    // engine can recognise: the sold-out mark answers keyless ones alone.
    if key.is_none() && app.sold_out.refuses(&round.id, sku.id.as_str()) {
        return Err(ApiError::SoldOut);
    }
    // Admitted to the engine before the order is built, so a refusal here
    // costs no order id, prices or copies.
    let _in_flight = app.admission.enter_engine()?;
    let charges = sku.charges(quantity);
    let order = Order {
        id: OrderId::generate(),
        drop_id: drop.id.clone(),
        round_id: round.id.clone(),
        sku: sku.id.clone(),
        quantity,
        user_id: shopper.user,
        status: OrderStatus::PendingPayment,
        unit_price: charges.unit_price,
        amount_due: charges.amount_due,
        deposit_due: charges.deposit_due,
        currency: Currency::Cny,
        created_at: now,
        // pay_within is at most 30 days (checked in config), so this only
        // fails for a clock near the end of time.
        pay_by: now
            .checked_add(drop.pay_within)
            .map_err(|_| ApiError::Unavailable("the clock is out of range".into()))?,
    };
    let attempt = ReserveAttempt {
        order,
        opens_at: round.opens_at,
        closes_at: round.closes_at,
        allocated: sku.stock,
        per_user_limit: drop.per_user_limit,
        idempotency: key.map(|k| (k, format!("{}*{}", sku.id, quantity.get()))),
    };
    let started = Instant::now();
    let decided = app.engine.reserve(attempt).await;
    telemetry::engine_call("reserve", started.elapsed());
    match decided? {
        ReserveOutcome::Won(order) => {
            // A recheck that wins means stock came back: let everyone in.
            app.sold_out.clear(&order.round_id, order.sku.as_str());
            Ok(json(StatusCode::CREATED, &order))
        }
        ReserveOutcome::Replayed(order) => {
            Ok(json(StatusCode::OK, &as_it_is_now(app, order).await))
        }
        ReserveOutcome::SoldOut => {
            // Refused for one unit means none are left; refused for more
            // may leave a unit for someone asking for less.
            if quantity.get() == 1 {
                app.sold_out.mark(&round.id, sku.id.as_str());
            }
            Err(ApiError::SoldOut)
        }
        refusal => Err(ApiError::from_refusal(refusal)),
    }
}

/// A replayed order as the store has it now (paid, cancelled, …), not as
/// it was created; the engine's copy while the store lacks it or is down.
async fn as_it_is_now(app: &App, order: Order) -> Order {
    match app.store.get(order.id.clone()).await {
        Ok(Some(stored)) => stored,
        _ => order,
    }
}

pub async fn list_orders(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    let orders = app.store.list_for_user(shopper.user).await?;
    Ok(json(StatusCode::OK, &json!({ "orders": orders })))
}

fn no_order() -> ApiError {
    ApiError::NotFound("no such order".into())
}

/// The verified caller and the order id in the path; an id that cannot be
/// one of ours is answered like a missing order.
fn caller_and_order(
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
