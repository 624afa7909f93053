//! The order a won reservation becomes, and its life: pending payment, then
//! exactly one of paid, cancelled or expired (invariant I5).

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{DropId, OrderId, Quantity, SkuId, UserId};
use crate::money::{as_cents_string, Currency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending_payment" => OrderStatus::PendingPayment,
            "paid" => OrderStatus::Paid,
            "cancelled" => OrderStatus::Cancelled,
            "expired" => OrderStatus::Expired,
            _ => return None,
        })
    }

    /// Live orders hold stock: pending payment or paid.
    pub fn is_live(self) -> bool {
        matches!(self, OrderStatus::PendingPayment | OrderStatus::Paid)
    }
}

/// Serialized as the API's `Order` (openapi.yaml); the Redis engine also carries it as JSON
/// from the reserve script to the order writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub drop_id: DropId,
    pub round_id: String,
    pub sku: SkuId,
    pub quantity: Quantity,
    pub user_id: UserId,
    pub status: OrderStatus,
    #[serde(with = "as_cents_string")]
    pub unit_price: Decimal,
    #[serde(with = "as_cents_string")]
    pub amount_due: Decimal,
    /// What is due now: the deposit on a presale drop, else the amount due.
    #[serde(with = "as_cents_string")]
    pub deposit_due: Decimal,
    pub currency: Currency,
    pub created_at: Timestamp,
    pub pay_by: Timestamp,
}
