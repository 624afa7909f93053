//! After the payment, for shoppers, the carrier and the gateway: refund,
//! return and invoice requests on the shopper's own orders; the carrier's
//! signed shipping and delivery notices; the gateway's signed refund
//! confirmations. Operators review in `admin_orders.rs`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::shopper::{caller_and_order, no_order};
use crate::after_sale::{self, LogisticsEvent, LogisticsNotice, Refusal, ReturnKind, ReturnReason};
use crate::app::App;
use crate::domain::{OrderId, UserId};
use crate::lifecycle;
use crate::money::{parse_amount, with_cents};
use crate::payment::{check_reference, signature_is_valid};
use crate::store::AfterSaleOutcome;

/// Longest free text a shopper or operator may attach (reason, note, title).
const MAX_TEXT_CHARS: usize = 500;

/// Free text, trimmed: present, and not longer than [`MAX_TEXT_CHARS`].
pub(super) fn text(field: &str, raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ApiError::InvalidRequest(format!(
            "{field} must not be empty"
        )));
    }
    if trimmed.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::InvalidRequest(format!(
            "{field} must be at most {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(trimmed.to_owned())
}

pub(super) fn optional_text(field: &str, raw: Option<&str>) -> Result<Option<String>, ApiError> {
    raw.filter(|r| !r.trim().is_empty())
        .map(|r| text(field, r))
        .transpose()
}

/// Applies the request and answers the order as it now is.
pub(super) async fn answer(
    app: &App,
    id: OrderId,
    user: Option<UserId>,
    request: after_sale::Request,
) -> Result<HttpResponse, ApiError> {
    match lifecycle::after_sale(app, id, user, request).await? {
        AfterSaleOutcome::Changed(order) | AfterSaleOutcome::Unchanged(order) => {
            Ok(json(StatusCode::OK, &order))
        }
        AfterSaleOutcome::NotFound => Err(no_order()),
        AfterSaleOutcome::Refused(refusal, _) => Err(match refusal {
            Refusal::InvalidTransition(status) => ApiError::InvalidTransition {
                status: status.as_str(),
            },
            Refusal::ReturnWindowClosed => ApiError::ReturnWindowClosed,
            Refusal::InvoiceExists => ApiError::InvoiceExists,
            Refusal::AmountMismatch { due } => ApiError::AmountMismatch {
                due: with_cents(due).to_string(),
            },
            Refusal::RefundUsedElsewhere => ApiError::DuplicateRefund,
            Refusal::Invalid(message) => ApiError::InvalidRequest(message),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundAsk {
    reason: String,
}

/// `POST /api/v1/orders/{id}/refund`: a paid order not yet shipped.
pub async fn request_refund(
    app: &App,
    order_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, &req)?;
    let body = read_body(req, &app.settings).await?;
    let ask: RefundAsk = parse(&body)?;
    let request = after_sale::Request::RequestRefund {
        reason: text("reason", &ask.reason)?,
    };
    answer(app, id, Some(shopper.user), request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnAsk {
    reason: ReturnReason,
    kind: ReturnKind,
    note: Option<String>,
}

/// `POST /api/v1/orders/{id}/return`: a delivered order, within its window.
pub async fn request_return(
    app: &App,
    order_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, &req)?;
    let body = read_body(req, &app.settings).await?;
    let ask: ReturnAsk = parse(&body)?;
    let request = after_sale::Request::RequestReturn {
        reason: ask.reason,
        kind: ask.kind,
        note: optional_text("note", ask.note.as_deref())?,
    };
    answer(app, id, Some(shopper.user), request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceAsk {
    title: String,
    tax_id: Option<String>,
    email: String,
}

/// `POST /api/v1/orders/{id}/invoice`: once delivered or completed.
pub async fn request_invoice(
    app: &App,
    order_id: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (shopper, id) = caller_and_order(app, order_id, &req)?;
    let body = read_body(req, &app.settings).await?;
    let ask: InvoiceAsk = parse(&body)?;
    let email = ask.email.trim();
    let plausible = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(name, host)| !name.is_empty() && host.contains('.'))
        && !email.contains(char::is_whitespace);
    if !plausible {
        return Err(ApiError::InvalidRequest(
            "email must be an address like name@example.com".into(),
        ));
    }
    let tax_id = optional_text("tax_id", ask.tax_id.as_deref())?;
    // A unified social credit code: 18 digits and capital letters.
    if let Some(tax_id) = &tax_id {
        if tax_id.len() != 18
            || !tax_id
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        {
            return Err(ApiError::InvalidRequest(
                "tax_id must be an 18-character unified social credit code".into(),
            ));
        }
    }
    let request = after_sale::Request::RequestInvoice {
        title: text("title", &ask.title)?,
        tax_id,
        email: email.to_owned(),
    };
    answer(app, id, Some(shopper.user), request).await
}

/// The body of a request signed with `secret` in `X-Signature`.
pub(super) async fn signed_body(
    req: Request<Incoming>,
    app: &App,
    secret: &str,
) -> Result<bytes::Bytes, ApiError> {
    let signature = req
        .headers()
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(req, &app.settings).await?;
    if !signature_is_valid(secret.as_bytes(), &body, signature.as_deref()) {
        return Err(ApiError::Unauthorized(
            "X-Signature does not match the body".into(),
        ));
    }
    Ok(body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogisticsBody {
    order_id: String,
    event: LogisticsEvent,
    at: jiff::Timestamp,
    carrier: String,
    tracking_number: String,
}

/// `POST /api/v1/logistics/notify`, signed with `logistics_secret`.
pub async fn logistics_notify(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let body = signed_body(req, app, &app.secrets.logistics_secret).await?;
    apply_logistics(app, &body).await
}

/// Applies a carrier's notice whose signature holds (or that the demo's
/// stand-in carrier sent).
pub(super) async fn apply_logistics(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let notice: LogisticsBody = parse(body)?;
    let id = OrderId::parse(&notice.order_id).map_err(|_| no_order())?;
    let tracking_number = notice.tracking_number.trim();
    if tracking_number.is_empty()
        || tracking_number.len() > 64
        || !tracking_number
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::InvalidRequest(
            "tracking_number must be 1-64 letters, digits or dashes".into(),
        ));
    }
    let request = after_sale::Request::Logistics(LogisticsNotice {
        event: notice.event,
        at: notice.at,
        carrier: text("carrier", &notice.carrier)?,
        tracking_number: tracking_number.to_owned(),
    });
    answer(app, id, None, request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundNotice {
    order_id: String,
    refund_id: String,
    amount: String,
}

/// `POST /api/v1/payments/refund-notify`, signed with `payment_secret`:
/// the gateway has paid a refund (or a return's) back.
pub async fn refund_notify(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let body = signed_body(req, app, &app.secrets.payment_secret).await?;
    apply_refund(app, &body).await
}

/// Applies a gateway's refund confirmation whose signature holds (or that
/// the demo's stand-in gateway sent).
pub(super) async fn apply_refund(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let notice: RefundNotice = parse(body)?;
    let id = OrderId::parse(&notice.order_id).map_err(|_| no_order())?;
    let refund_id = notice.refund_id.trim();
    check_reference("refund_id", refund_id)?;
    let request = after_sale::Request::ConfirmRefund {
        refund_id: refund_id.to_owned(),
        amount: parse_amount(&notice.amount)?,
    };
    answer(app, id, None, request).await
}
