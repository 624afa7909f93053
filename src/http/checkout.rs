//! Checkout after the win: the shopper edits their pending order (the
//! delivery address), then asks to pay it (a payment intent).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::shopper::{caller_and_order, no_order};
use crate::app::App;
use crate::lifecycle;
use crate::money::with_cents;
use crate::payment_rules::{ChoiceRefused, PaymentChoice};
use crate::store::{EditOutcome, IntentOutcome};

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

/// `POST /api/v1/orders/{id}/pay`: the intent the gateway's notice must
/// match (its method and amount).
pub async fn pay(
    app: &App,
    order_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, &req)?;
    let body = read_body(req, &app.settings).await?;
    let choice: PaymentChoice = parse(&body)?;
    match lifecycle::pay_intent(app, id, shopper.user, choice).await? {
        IntentOutcome::Issued {
            order,
            payment_id,
            amount,
        } => Ok(json(
            StatusCode::OK,
            &json!({
                "payment_id": payment_id,
                "order_id": order.id,
                "amount": with_cents(amount).to_string(),
                "method": order.payment_method,
                "installments": order.installments,
                "order": order,
            }),
        )),
        IntentOutcome::NotFound => Err(no_order()),
        IntentOutcome::NotPayable(order) => Err(ApiError::NotPayable {
            status: order.status.as_str(),
        }),
        IntentOutcome::AddressRequired => Err(ApiError::AddressRequired),
        IntentOutcome::Refused(ChoiceRefused::MethodNotAllowed(message)) => {
            Err(ApiError::MethodNotAllowed(message))
        }
        IntentOutcome::Refused(ChoiceRefused::Invalid(message)) => {
            Err(ApiError::InvalidRequest(message))
        }
    }
}
