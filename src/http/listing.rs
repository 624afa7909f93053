//! Paged listings: the query string (`limit`, `after` and filters, nothing
//! else), and the page as answered, with where the next one starts.

use std::collections::HashMap;

use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::domain::{DropId, OrderId, UserId};
use crate::order::{Order, OrderStatus};
use crate::store::OrderFilter;

/// Rows a page holds unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// The query's parameters; any not in `allowed`, or given twice, is refused.
pub fn query(
    req: &Request<Incoming>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let mut params = HashMap::new();
    let raw = req.uri().query().unwrap_or("");
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {key:?}; this endpoint takes {}",
                allowed.join(", ")
            )));
        }
        if params.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ApiError::InvalidRequest(format!("{key} is given twice")));
        }
    }
    Ok(params)
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("limit must be 1 to {MAX_LIMIT}, got {raw:?}"))
            }),
    }
}

/// The filter of an order listing: `status`, `after`, `limit`, and for
/// operators `user` and `drop`.
pub fn order_filter(params: &HashMap<String, String>) -> Result<OrderFilter, ApiError> {
    let bad =
        |field: &str, raw: &str| ApiError::InvalidRequest(format!("{field} {raw:?} is not valid"));
    Ok(OrderFilter {
        user: params
            .get("user")
            .map(|raw| UserId::parse(raw).map_err(|_| bad("user", raw)))
            .transpose()?,
        drop: params
            .get("drop")
            .map(|raw| DropId::parse(raw).map_err(|_| bad("drop", raw)))
            .transpose()?,
        status: params
            .get("status")
            .map(|raw| OrderStatus::parse(raw).ok_or_else(|| bad("status", raw)))
            .transpose()?,
        after: params
            .get("after")
            .map(|raw| OrderId::parse(raw).map_err(|_| bad("after", raw)))
            .transpose()?,
        limit: limit(params)?,
    })
}

/// A page of orders: `next` is the `after` of the next page, null on the last.
pub fn order_page(orders: &[Order], limit: usize, show: impl Fn(&Order) -> Value) -> Value {
    let next = (orders.len() == limit)
        .then(|| orders.last().map(|o| o.id.as_str().to_owned()))
        .flatten();
    json!({
        "orders": orders.iter().map(show).collect::<Vec<_>>(),
        "next": next,
    })
}
