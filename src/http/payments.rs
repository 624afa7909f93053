//! The payment gateway's notification that an order was paid.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::after_sale::signed_body;
use super::error::ApiError;
use super::json::{json, HttpResponse};
use crate::app::App;
use crate::lifecycle;
use crate::payment::parse_notice;
use crate::store::PayOutcome;

pub async fn notify(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let body = signed_body(req, app, &app.secrets.payment_secret).await?;
    apply(app, &body).await
}

/// Applies a payment notice whose signature holds (or that the demo's
/// stand-in gateway sent).
pub(super) async fn apply(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let notice = parse_notice(body)?;
    match lifecycle::pay(app, notice).await? {
        PayOutcome::Paid(order) | PayOutcome::AlreadyRecorded(order) => {
            Ok(json(StatusCode::OK, &order))
        }
        PayOutcome::NotFound => Err(ApiError::NotFound("no such order".into())),
        PayOutcome::AmountMismatch { due } => Err(ApiError::AmountMismatch {
            due: crate::money::with_cents(due).to_string(),
        }),
        PayOutcome::MethodMismatch { expected } => Err(ApiError::MethodMismatch {
            expected: expected.as_str(),
        }),
        PayOutcome::TransactionUsedElsewhere => Err(ApiError::DuplicateTransaction),
        PayOutcome::NotPayable(order) | PayOutcome::ExpiredNow(order) => {
            Err(ApiError::NotPayable {
                status: order.status.as_str(),
            })
        }
    }
}
