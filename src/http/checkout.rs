//! Checkout after the win: the shopper edits their pending order (the
//! delivery address) before paying.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::shopper::{caller_and_order, no_order};
use crate::app::App;
use crate::lifecycle;
use crate::store::EditOutcome;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderEdit {
    address_id: Option<String>,
}

/// `PATCH /api/v1/orders/{id}`: answers the order as it now is.
pub async fn edit_order(
    app: &App,
    order_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, &req)?;
    let body = read_body(req, &app.settings).await?;
    let edit: OrderEdit = parse(&body)?;
    let Some(address_id) = edit.address_id else {
        return Err(ApiError::InvalidRequest(
            "nothing to change: send address_id".into(),
        ));
    };
    match lifecycle::set_address(app, id, shopper.user, address_id).await? {
        EditOutcome::Edited(order) => Ok(json(StatusCode::OK, &order)),
        EditOutcome::NotFound => Err(no_order()),
        EditOutcome::NotEditable(order) => Err(ApiError::NotEditable {
            status: order.status.as_str(),
        }),
        EditOutcome::Missing(what) => Err(ApiError::InvalidRequest(format!(
            "no such {what} among yours"
        ))),
    }
}
