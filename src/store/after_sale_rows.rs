//! After-sale changes in the store: the order is locked, the policy
//! ([`crate::after_sale::decide`]) decides, and the decision is written
//! with its event in the same transaction.

use jiff::Timestamp;

use super::event_rows;
use super::orders::{after_sale_columns, locked, move_order, set_columns};
use super::sql::{Sql, Value};
use super::StoreError;
use crate::after_sale::{decide, Decision, Refusal, Request};
use crate::domain::{OrderId, UserId};
use crate::order::Order;
use crate::shipping::ShipPlan;

/// What an after-sale request did.
#[derive(Debug)]
pub enum AfterSaleOutcome {
    /// The order changed (moved, or recorded something): as it now is.
    Changed(Order),
    /// A repeat of something recorded before: nothing changed.
    Unchanged(Order),
    /// No such order (or, for a shopper's request, not theirs).
    NotFound,
    Refused(Refusal, Order),
}

/// Applies `request` to order `id`; `user` is the shopper asking, None
/// for operators, the carrier and the gateway.
pub async fn apply<S: Sql>(
    db: &mut S,
    id: &OrderId,
    user: Option<&UserId>,
    request: &Request,
    plan: &ShipPlan,
    now: Timestamp,
) -> Result<AfterSaleOutcome, StoreError> {
    let Some(order) = locked(db, id.as_str())
        .await?
        .filter(|o| user.is_none_or(|u| &o.user_id == u))
    else {
        return Ok(AfterSaleOutcome::NotFound);
    };
    if let Request::ConfirmRefund { refund_id, .. } = request {
        if refund_used_elsewhere(db, refund_id, id).await? {
            return Ok(AfterSaleOutcome::Refused(
                Refusal::RefundUsedElsewhere,
                order,
            ));
        }
    }
    Ok(match decide(&order, request, now, plan) {
        Decision::Move { to, order: next } => {
            let mut columns = after_sale_columns(&next);
            if let Request::ConfirmRefund { refund_id, .. } = request {
                columns.push(("refund_id", Value::from(refund_id.clone())));
            }
            match move_order(db, &order, to, now, &columns).await? {
                Some(moved) => AfterSaleOutcome::Changed(moved),
                // Locked above, so nothing can have moved it meanwhile.
                None => AfterSaleOutcome::Refused(Refusal::InvalidTransition(order.status), order),
            }
        }
        Decision::Record { order: next, event } => {
            match set_columns(db, &order, &after_sale_columns(&next)).await? {
                Some(changed) => {
                    event_rows::record(db, event, &changed, now)?;
                    AfterSaleOutcome::Changed(changed)
                }
                None => AfterSaleOutcome::Refused(Refusal::InvalidTransition(order.status), order),
            }
        }
        Decision::Unchanged => AfterSaleOutcome::Unchanged(order),
        Decision::Refuse(refusal) => AfterSaleOutcome::Refused(refusal, order),
    })
}

/// True when the gateway's refund id is recorded on another order.
async fn refund_used_elsewhere<S: Sql>(
    db: &mut S,
    refund_id: &str,
    id: &OrderId,
) -> Result<bool, StoreError> {
    let rows = db
        .rows(
            "SELECT id FROM orders WHERE refund_id = $1",
            &[refund_id.into()],
        )
        .await?;
    for row in rows {
        if row.text(0)? != id.as_str() {
            return Ok(true);
        }
    }
    Ok(false)
}
