//! The operators' API: admission limits read and changed live, drops created
//! while serving, round statistics, and stock added to a live round. Every
//! call needs `Authorization: Bearer <admin_token>`.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::views::DropView;
use crate::app::App;
use crate::catalog::{Drop, Sku};
use crate::config::{drop_from_json, Limits, MAX_RATE};
use crate::domain::{IdempotencyKey, OrderId, RoundId};
use crate::schedule::Phase;
use crate::store::{restocked_units, Restock};

/// Compares the bearer token with the admin token in constant time. Both
/// are hashed first so that not even their lengths leak through timing.
pub(super) fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(app.secrets.admin_token.as_bytes());
    // An empty or short admin token never gets this far: the configuration
    // refuses any secret under 32 bytes.
    if bool::from(given.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "an admin bearer token is needed".into(),
        ))
    }
}

pub fn get_limits(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    Ok(json(StatusCode::OK, &app.admission.limits()))
}

/// Any subset of the limits; the rest stay as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsChange {
    global_rps: Option<u32>,
    global_burst: Option<u32>,
    per_user_rps: Option<u32>,
    per_user_burst: Option<u32>,
    per_ip_rps: Option<u32>,
    per_ip_burst: Option<u32>,
    max_in_flight: Option<u32>,
}

impl LimitsChange {
    fn apply_to(self, current: Limits) -> Limits {
        Limits {
            global_rps: self.global_rps.unwrap_or(current.global_rps),
            global_burst: self.global_burst.unwrap_or(current.global_burst),
            per_user_rps: self.per_user_rps.unwrap_or(current.per_user_rps),
            per_user_burst: self.per_user_burst.unwrap_or(current.per_user_burst),
            per_ip_rps: self.per_ip_rps.unwrap_or(current.per_ip_rps),
            per_ip_burst: self.per_ip_burst.unwrap_or(current.per_ip_burst),
            max_in_flight: self.max_in_flight.unwrap_or(current.max_in_flight),
        }
    }
}

pub async fn put_limits(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let change: LimitsChange = parse(&read_body(req, &app.settings).await?)?;
    let limits = change
        .apply_to(app.admission.limits())
        .check()
        .map_err(|(field, message)| ApiError::InvalidRequest(format!("{field} {message}")))?;
    app.admission.set_limits(limits);
    tracing::info!(?limits, "admission limits changed");
    Ok(json(StatusCode::OK, &limits))
}

pub async fn create_drop(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let body = read_body(req, &app.settings).await?;
    let drop = drop_from_json(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if drop.queue.is_some() && app.secrets.queue_secret.is_none() {
        return Err(ApiError::InvalidRequest(
            "a drop with a queue needs auth.queue_secret (or DROPGATE_QUEUE_SECRET) set on every instance".into(),
        ));
    }
    if app.live_catalog().get(drop.id.as_str()).is_some() {
        return Err(ApiError::DropExists);
    }
    // Stored first, so that the drop survives a restart and other
    // instances load it; the store also settles a race between two creators.
    let definition = String::from_utf8_lossy(&body).into_owned();
    let saved = app
        .store
        .save_drop(drop.id.as_str().to_owned(), definition, app.clock.now())
        .await?;
    if !saved {
        return Err(ApiError::DropExists);
    }
    // The upkeep may have loaded the saved drop already; it is this one.
    let id = drop.id.as_str().to_owned();
    let drop = match app.live_catalog().add(drop) {
        Ok(drop) => drop,
        Err(_) => find_drop(app, &id)?,
    };
    tracing::info!(drop = %drop.id, "drop created by an operator");
    Ok(json(
        StatusCode::CREATED,
        &DropView::of(app, &drop, app.clock.now()).await?,
    ))
}

fn find_drop(app: &App, drop_id: &str) -> Result<std::sync::Arc<Drop>, ApiError> {
    app.live_catalog()
        .get(drop_id)
        .ok_or_else(|| ApiError::NotFound(format!("no drop {drop_id:?}")))
}

/// What one SKU of the current round has: allocated (catalog stock plus
/// the round's restocks), still for sale, and held by live orders.
async fn sku_stats(
    app: &App,
    round_id: &RoundId,
    sku: &Sku,
    restocks: &[Restock],
) -> Result<serde_json::Value, ApiError> {
    let allocated = sku.stock + restocked_units(restocks, sku.id.as_str());
    let remaining = app.engine.remaining(round_id, &sku.id, sku.stock).await?;
    Ok(json!({
        "allocated": allocated,
        "remaining": remaining,
        "sold": allocated.saturating_sub(remaining),
    }))
}

pub async fn stats(
    app: &App,
    drop_id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    let drop = find_drop(app, drop_id)?;
    let round = drop.round_at(app.clock.now());
    let restocks = app.store.restocks(Some(round.id.clone())).await?;
    let mut skus = BTreeMap::new();
    for sku in &drop.skus {
        skus.insert(
            sku.id.as_str().to_owned(),
            sku_stats(app, &round.id, sku, &restocks).await?,
        );
    }
    let orders = app.store.status_counts(round.id.clone()).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "round_id": round.id,
            "skus": skus,
            "orders": orders,
            "queue_lag": app.writer_lag(),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    sku: String,
    units: u64,
    /// Names this restock, so a retry (after a 503, say) adds nothing more.
    /// Without one, each request is a new restock.
    restock_id: Option<String>,
}

/// Adds units of one SKU to the drop's current (or next) round.
pub async fn restock(
    app: &App,
    drop_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let drop = find_drop(app, drop_id)?;
    let body: RestockBody = parse(&read_body(req, &app.settings).await?)?;
    if body.units == 0 || body.units > u64::from(MAX_RATE) {
        return Err(ApiError::InvalidRequest(format!(
            "units must be from 1 to {MAX_RATE}, not {}",
            body.units
        )));
    }
    let sku = drop
        .sku(&body.sku)
        .ok_or_else(|| ApiError::NotFound(format!("no SKU {:?} in drop {drop_id:?}", body.sku)))?;
    let now = app.clock.now();
    let round = drop.round_at(now);
    if round.phase_at(now) == Phase::Closed {
        return Err(ApiError::Closed);
    }
    let restock_id = match body.restock_id {
        Some(id) => IdempotencyKey::parse(&id)
            .map_err(|_| {
                ApiError::InvalidRequest("restock_id must be 1-64 visible ASCII characters".into())
            })?
            .as_str()
            .to_owned(),
        None => OrderId::generate().to_string(),
    };
    app.engine
        .restock(&round.id, &sku.id, body.units, &restock_id)
        .await?;
    app.sold_out.clear(&round.id, sku.id.as_str());
    tracing::info!(round = %round.id, sku = %sku.id, units = body.units, "restocked");
    let restocks = app.store.restocks(Some(round.id.clone())).await?;
    let stats = sku_stats(app, &round.id, sku, &restocks).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"round_id": round.id, "sku": sku.id.as_str(), "stock": stats}),
    ))
}
