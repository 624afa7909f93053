//! Operators and orders: search, one order, cancel an unpaid one, review
//! refund and return requests, and the order events for pull consumers.
//! Operators see phones masked (`138****8000`); the consumers that need
//! the whole address read it from the events.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::authorize;
use super::after_sale::{answer, optional_text};
use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::listing::{limit, order_filter, order_page, query};
use super::shopper::no_order;
use crate::address::masked_phone;
use crate::after_sale;
use crate::app::App;
use crate::domain::OrderId;
use crate::lifecycle::{self, Found};
use crate::order::Order;

/// An order as operators see it: the phone masked.
fn operator_view(order: &Order) -> Value {
    let mut view = serde_json::to_value(order).unwrap_or(Value::Null);
    if let (Some(address), Value::Object(fields)) = (&order.address, &mut view) {
        if let Some(Value::Object(shown)) = fields.get_mut("address") {
            shown.insert("phone".into(), json!(masked_phone(&address.phone)));
        }
    }
    view
}

fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|_| no_order())
}

/// `GET /admin/v1/orders?user=&drop=&status=&limit=&after=`
pub async fn search(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    let params = query(req, &["user", "drop", "status", "limit", "after"])?;
    let filter = order_filter(&params)?;
    let limit = filter.limit;
    let orders = app.store.search(filter).await?;
    Ok(json(
        StatusCode::OK,
        &order_page(&orders, limit, operator_view),
    ))
}

/// `GET /admin/v1/orders/{id}`
pub async fn get(
    app: &App,
    raw_id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    match lifecycle::find_order(app, &order_id(raw_id)?).await? {
        Found::Stored(order) | Found::Fresh(order) => {
            Ok(json(StatusCode::OK, &operator_view(&order)))
        }
        Found::Missing => Err(no_order()),
    }
}

/// `POST /admin/v1/orders/{id}/cancel`: an unpaid order (a paid one is
/// refunded instead).
pub async fn cancel(
    app: &App,
    raw_id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    answer(app, order_id(raw_id)?, None, after_sale::Request::Cancel).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    approve: bool,
    note: Option<String>,
}

/// `POST /admin/v1/orders/{id}/refund` and `/return`: `{"approve", "note"}`.
pub async fn review(
    app: &App,
    raw_id: &str,
    req: Request<Incoming>,
    what: Reviewed,
) -> Result<HttpResponse, ApiError> {
    authorize(app, &req)?;
    let id = order_id(raw_id)?;
    let body = read_body(req, &app.settings).await?;
    let review: ReviewBody = parse(&body)?;
    let note = optional_text("note", review.note.as_deref())?;
    let request = match what {
        Reviewed::Refund => after_sale::Request::ReviewRefund {
            approve: review.approve,
            note,
        },
        Reviewed::Return => after_sale::Request::ReviewReturn {
            approve: review.approve,
            note,
        },
    };
    answer(app, id, None, request).await
}

/// What an operator reviews.
pub enum Reviewed {
    Refund,
    Return,
}

/// `GET /admin/v1/events?after=ID&limit=N`: events in commit order; a
/// consumer keeps the last id it handled and asks for what came after.
pub async fn events(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    authorize(app, req)?;
    let params = query(req, &["after", "limit"])?;
    let after = match params.get("after") {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "after must be an event id (0 or more), got {raw:?}"
            ))
        })?,
    };
    let limit = limit(&params)?;
    let events = app.store.events_after(after, limit).await?;
    let next = events.last().map_or(after, |e| e.id);
    Ok(json(
        StatusCode::OK,
        &json!({ "events": events, "next": next }),
    ))
}
