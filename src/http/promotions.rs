//! The operators' promotions: added, listed and ended while serving. A
//! change is stored first (so it reaches every instance within a second
//! and survives a restart), then applied here at once. Orders already won
//! keep the prices they were won at.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::admin::authorize;
use super::error::ApiError;
use super::json::{json, read_body, HttpResponse};
use crate::app::App;
use crate::promotions::from_json;

pub async fn create(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let body = read_body(req, &app.settings).await?;
    let (definition, promotion) = from_json(&body).map_err(|e| ApiError::InvalidRequest(e.0))?;
    if app.promotions.contains(&promotion.id) {
        return Err(ApiError::PromotionExists);
    }
    // Ids are never reused, ended ones' included: an order's discount
    // names its promotion for good.
    let stored = serde_json::to_string(&definition)
        .map_err(|e| ApiError::InvalidRequest(format!("the promotion cannot be stored: {e}")))?;
    let saved = app
        .store
        .save_promotion(promotion.id.clone(), stored, app.clock.now())
        .await?;
    if !saved {
        return Err(ApiError::PromotionExists);
    }
    app.reload_promotions().await?;
    tracing::info!(promotion = %promotion.id, "promotion added by an operator");
    Ok(json(StatusCode::CREATED, &definition))
}

pub async fn list(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    app.reload_promotions().await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "promotions": *app.promotions.definitions() }),
    ))
}

pub async fn end(app: &App, id: &str, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    // Another instance may have added or ended it within the last second.
    app.reload_promotions().await?;
    if !app.promotions.contains(id) {
        return Err(ApiError::NotFound(format!("no promotion {id:?} in force")));
    }
    let now = app.clock.now();
    app.store.end_promotion(id.to_owned(), now).await?;
    app.reload_promotions().await?;
    tracing::info!(promotion = %id, "promotion ended by an operator");
    Ok(json(StatusCode::OK, &json!({ "id": id, "ended_at": now })))
}
