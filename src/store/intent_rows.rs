//! A payment intent: how the shopper will pay their pending order, checked
//! against the drop's payment rules on the locked order. Cash on delivery
//! needs no gateway: the order goes to `awaiting_delivery` at once.

use jiff::Timestamp;
use rust_decimal::Decimal;

use super::address_rows;
use super::orders::{locked_own, move_order, set_columns};
use super::sql::{Sql, Value};
use super::StoreError;
use crate::domain::{OrderId, UserId};
use crate::order::{Order, OrderStatus};
use crate::payment::PaymentMethod;
use crate::payment_rules::{check_choice, ChoiceRefused, PaymentChoice, PaymentRules, Stage};
use crate::shipping::ShipPlan;

/// What asking to pay did.
#[derive(Debug)]
pub enum IntentOutcome {
    /// The intent, for `amount`, that the gateway's notice must match; the
    /// order as it now is (awaiting delivery for cash on delivery).
    Issued {
        order: Order,
        payment_id: String,
        amount: Decimal,
    },
    /// No such order, or another shopper's.
    NotFound,
    /// Paid, cancelled, expired, or past `pay_by`.
    NotPayable(Order),
    /// No address on the order and no default address to copy.
    AddressRequired,
    Refused(ChoiceRefused),
}

/// What the shopper asked, and the rules of the order's drop.
#[derive(Debug, Clone)]
pub struct IntentRequest {
    pub choice: PaymentChoice,
    pub rules: PaymentRules,
    /// When the order is expected to ship once paid (cash on delivery is
    /// "paid" here: it ships at once).
    pub shipping: ShipPlan,
}

/// What may be paid on `order` at `now`, and how much: the whole order
/// or a presale's deposit before `pay_by`, a presale's balance in its
/// window; None when nothing may be paid now.
fn stage_at(order: &Order, now: Timestamp) -> Option<(Stage, Decimal)> {
    match order.status {
        OrderStatus::PendingPayment if now < order.pay_by => match order.balance_due {
            // No deposit once the balance can no longer be paid.
            Some(_) if order.balance_until.is_some_and(|until| now >= until) => None,
            Some(_) => Some((Stage::Deposit, order.deposit_due)),
            None => Some((Stage::Full, order.amount_due)),
        },
        OrderStatus::DepositPaid => {
            let (from, until) = (order.balance_from?, order.balance_until?);
            (from <= now && now < until).then_some((Stage::Balance, order.balance_due?))
        }
        _ => None,
    }
}

pub async fn issue<S: Sql>(
    db: &mut S,
    id: &OrderId,
    user: &UserId,
    request: &IntentRequest,
    now: Timestamp,
) -> Result<IntentOutcome, StoreError> {
    let Some(order) = locked_own(db, id, user).await? else {
        return Ok(IntentOutcome::NotFound);
    };
    let Some((stage, amount)) = stage_at(&order, now) else {
        return Ok(IntentOutcome::NotPayable(order));
    };
    if let Err(refused) = check_choice(&request.rules, request.choice, order.amount_due, stage) {
        return Ok(IntentOutcome::Refused(refused));
    }
    let address = match &order.address {
        Some(address) => address.clone(),
        None => match address_rows::find(db, user, None).await? {
            Some(default) => default.destination,
            None => return Ok(IntentOutcome::AddressRequired),
        },
    };
    let payment_id = uuid::Uuid::now_v7().to_string();
    let method = request.choice.method;
    let mut columns: Vec<(&str, Value<'_>)> = vec![
        ("payment_id", payment_id.as_str().into()),
        ("payment_method", method.as_str().into()),
        (
            "installments",
            request
                .choice
                .installments
                .map_or(Value::Null, |n| Value::Int(i64::from(n))),
        ),
        (
            "address",
            serde_json::to_string(&address).unwrap_or_default().into(),
        ),
    ];
    let moved = if method == PaymentMethod::CashOnDelivery {
        // On its way at once: it ships as if paid now.
        let ships = request.shipping.estimate(now, None).to_string();
        columns.push(("estimated_ship_date", ships.into()));
        move_order(db, &order, OrderStatus::AwaitingDelivery, now, &columns).await?
    } else {
        set_columns(db, &order, &columns).await?
    };
    Ok(match moved {
        Some(order) => IntentOutcome::Issued {
            amount,
            order,
            payment_id,
        },
        None => IntentOutcome::NotPayable(order),
    })
}
