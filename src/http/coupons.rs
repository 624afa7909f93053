//! Coupons: operators create batches; shoppers claim coupons from them and
//! list theirs. A coupon goes on an order at checkout (`PATCH` the order).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use jiff::Timestamp;
use serde_json::{json, Value};

use super::admin::authorize;
use super::error::ApiError;
use super::json::{json, read_body, HttpResponse};
use super::shopper::authenticate;
use crate::app::App;
use crate::coupons::{from_json, BatchDefinition, CouponView};
use crate::store::{ClaimOutcome, CouponRow};

/// A batch as operators see it: its definition and how many were claimed.
fn batch_view(definition: &BatchDefinition, claimed: i64) -> Value {
    let mut view = serde_json::to_value(definition).unwrap_or_default();
    view["claimed"] = json!(claimed);
    view
}

pub async fn create_batch(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let body = read_body(req, &app.settings).await?;
    let (definition, batch) = from_json(&body).map_err(|e| ApiError::InvalidRequest(e.0))?;
    let stored = serde_json::to_string(&definition)
        .map_err(|e| ApiError::InvalidRequest(format!("the batch cannot be stored: {e}")))?;
    let saved = app
        .store
        .save_coupon_batch(batch, stored, app.clock.now())
        .await?;
    if !saved {
        return Err(ApiError::CouponBatchExists);
    }
    tracing::info!(batch = %definition.id, "coupon batch created by an operator");
    Ok(json(StatusCode::CREATED, &batch_view(&definition, 0)))
}

pub async fn list_batches(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    let batches: Vec<Value> = app
        .store
        .coupon_batches(None)
        .await?
        .iter()
        .map(|(definition, claimed)| batch_view(definition, *claimed))
        .collect();
    Ok(json(StatusCode::OK, &json!({ "batches": batches })))
}

fn view(coupon: CouponRow, now: Timestamp) -> CouponView {
    let expired = coupon
        .definition
        .parse()
        .map_or(true, |batch| now >= batch.valid_until);
    let status = match (&coupon.order_id, expired) {
        (Some(_), _) => "used",
        (None, true) => "expired",
        (None, false) => "available",
    };
    CouponView {
        id: coupon.id,
        batch: coupon.definition,
        status,
        order_id: coupon.order_id,
        claimed_at: coupon.claimed_at,
    }
}

pub async fn claim(
    app: &App,
    batch_id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    let no_batch = || ApiError::NotFound(format!("no coupon batch {batch_id:?}"));
    let (definition, _) = app
        .store
        .coupon_batches(Some(batch_id.to_owned()))
        .await?
        .pop()
        .ok_or_else(no_batch)?;
    let batch = definition
        .parse()
        .map_err(|e| ApiError::Unavailable(format!("stored batch unreadable: {}", e.0)))?;
    if batch.student_only && !shopper.student {
        return Err(ApiError::StudentOnly);
    }
    let now = app.clock.now();
    if now >= batch.valid_until {
        return Err(ApiError::CouponBatchExpired);
    }
    match app
        .store
        .claim_coupon(batch_id.to_owned(), shopper.user, now)
        .await?
    {
        ClaimOutcome::Claimed(coupon) => Ok(json(StatusCode::CREATED, &view(*coupon, now))),
        ClaimOutcome::NoSuchBatch => Err(no_batch()),
        ClaimOutcome::SoldOut => Err(ApiError::CouponsGone),
        ClaimOutcome::LimitExceeded { per_user } => Err(ApiError::CouponLimit { per_user }),
    }
}

pub async fn list(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    let now = app.clock.now();
    let coupons: Vec<CouponView> = app
        .store
        .coupons(shopper.user)
        .await?
        .into_iter()
        .map(|c| view(c, now))
        .collect();
    Ok(json(StatusCode::OK, &json!({ "coupons": coupons })))
}
