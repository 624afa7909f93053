//! The order a won reservation becomes. Its life (statuses and the moves
//! between them) is the state machine in [`crate::order_states`].

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::address::Destination;
use crate::after_sale::AfterSale;
use crate::domain::{DropId, OrderId, Quantity, RoundId, SkuId, UserId};
use crate::money::{as_cents_string, option_cents, Currency};
use crate::payment::PaymentMethod;
use crate::pricing::Pricing;

pub use crate::order_states::OrderStatus;

/// Serialized as the API's `Order` (openapi.yaml); the Redis engine also carries it as JSON
/// from the reserve script to the order writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub drop_id: DropId,
    pub round_id: RoundId,
    pub sku: SkuId,
    pub quantity: Quantity,
    pub user_id: UserId,
    pub status: OrderStatus,
    #[serde(with = "as_cents_string")]
    pub unit_price: Decimal,
    /// The price of the order as locked at the win, discounts taken
    /// (`pricing.amount_due`, repeated here as the API has always shown it).
    #[serde(with = "as_cents_string")]
    pub amount_due: Decimal,
    /// What is due now: the deposit on a presale drop, else the amount due.
    #[serde(with = "as_cents_string")]
    pub deposit_due: Decimal,
    pub currency: Currency,
    pub created_at: Timestamp,
    pub pay_by: Timestamp,
    /// How `amount_due` was reached: the list amount and each discount.
    pub pricing: Pricing,
    /// Where the order goes: a copy of the address chosen at checkout.
    /// Absent until then, and not written at all on the reserve path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Destination>,
    /// The method of the last payment intent (or of the payment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<PaymentMethod>,
    /// Interest-free periods chosen with `huabei` or `installment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installments: Option<u32>,
    /// The last payment intent, which the gateway's notice must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// A presale's balance (`amount_due` − `deposit_due`), paid in its window.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "option_cents"
    )]
    pub balance_due: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_from: Option<Timestamp>,
    /// Unpaid by then, the order is forfeited: the deposit is kept, the units go back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_until: Option<Timestamp>,
    /// The coupon on this order (its discount is in `pricing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<String>,
    /// What the gateway has confirmed paid: the deposit, then the whole amount.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "option_cents"
    )]
    pub paid_amount: Option<Decimal>,
    /// Shipping, refunds, returns, the invoice and the time of each status.
    /// Never part of a fresh win, so the Redis order writer, which reads
    /// wins back from JSON, has nothing to read here.
    #[serde(flatten, skip_deserializing)]
    pub after: AfterSale,
}
