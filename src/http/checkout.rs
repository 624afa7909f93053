//! Checkout after the win: the shopper edits their pending order (the
//! delivery address, a coupon), then asks to pay it (a payment intent).

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
use crate::order::Order;
use crate::payment_rules::{ChoiceRefused, PaymentChoice};
use crate::store::{CouponRefusal, EditOutcome, IntentOutcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderEdit {
    address_id: Option<String>,
    /// Absent: unchanged; null: taken off; an id: put on.
    #[serde(default, deserialize_with = "present")]
    coupon_id: Option<Option<String>>,
}

/// Tells a field sent as null (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /api/v1/orders/{id}`: the address, then the coupon; answers the
/// order as it now is.
pub async fn edit_order(
    app: &App,
    order_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, &req)?;
    let body = read_body(req, &app.settings).await?;
    let edit: OrderEdit = parse(&body)?;
    if edit.address_id.is_none() && edit.coupon_id.is_none() {
        return Err(ApiError::InvalidRequest(
            "nothing to change: send address_id or coupon_id".into(),
        ));
    }
    let mut edited = None;
    if let Some(address_id) = edit.address_id {
        let outcome = lifecycle::set_address(app, id.clone(), shopper.user.clone(), address_id);
        edited = Some(edited_order(outcome.await?)?);
    }
    if let Some(coupon_id) = edit.coupon_id {
        let outcome = lifecycle::set_coupon(app, id, shopper.user, coupon_id);
        edited = Some(edited_order(outcome.await?)?);
    }
    Ok(json(StatusCode::OK, &edited))
}

fn edited_order(outcome: EditOutcome) -> Result<Order, ApiError> {
    match outcome {
        EditOutcome::Edited(order) => Ok(order),
        EditOutcome::NotFound => Err(no_order()),
        EditOutcome::NotEditable(order) => Err(ApiError::NotEditable {
            status: order.status.as_str(),
        }),
        EditOutcome::Missing(what) => Err(ApiError::InvalidRequest(format!(
            "no such {what} among yours"
        ))),
        EditOutcome::Coupon(CouponRefusal::Unknown) => Err(ApiError::InvalidRequest(
            "no such coupon among yours".into(),
        )),
        EditOutcome::Coupon(CouponRefusal::Used) => Err(ApiError::CouponUsed),
        EditOutcome::Coupon(CouponRefusal::NotApplicable(message)) => {
            Err(ApiError::CouponNotApplicable(message))
        }
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
