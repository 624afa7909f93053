//! Order events: one per status change (and one for the win and for an
//! invoice request), written in the transaction of the change (I8), read
//! by pull consumers (`GET /admin/v1/events`) and pushed to webhooks
//! (`webhooks.rs`). SMS and e-mail senders, the ERP and the invoicing
//! system consume them; `order.paid` and `order.deposit_paid` carry the
//! estimated ship date in their order.

use jiff::Timestamp;
use serde::Serialize;

use crate::order::Order;

/// The event a win writes, with the order's insert.
pub const CREATED: &str = "order.created";

/// A win's `order.created` event. Rendered where the order is decided, so
/// that the order writer's one thread, which every win waits on, does not
/// spend its time serializing.
pub fn created(order: &Order) -> NewEvent {
    NewEvent::of(CREATED, order, order.created_at)
}

/// An event recorded in a transaction, inserted with its commit.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub order_id: String,
    pub kind: &'static str,
    pub at: Timestamp,
    /// The order as the change left it, as the API shows it.
    pub body: String,
}

impl NewEvent {
    pub fn of(kind: &'static str, order: &Order, at: Timestamp) -> Self {
        Self {
            order_id: order.id.as_str().to_owned(),
            kind,
            at,
            // An order always serializes: every field is plain data.
            body: serde_json::to_string(order).unwrap_or_default(),
        }
    }
}

/// An event as stored and delivered.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// Increasing in commit order: `after=` this id reads what came next.
    pub id: i64,
    pub order_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: Timestamp,
    pub order: serde_json::Value,
}
