//! After the payment: shipping and delivery (the carrier's notices),
//! refunds (asked by the shopper, reviewed by an operator, confirmed by the
//! gateway), returns and exchanges within their windows, and the invoice.
//!
//! [`decide`] is the whole policy, as a pure function of the order, the
//! request and the time: both order stores call it inside the transaction
//! that locked the order, then write what it decided.

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{as_cents_string, with_cents};
use crate::order::{Order, OrderStatus};
use crate::shipping::ShipPlan;

use OrderStatus::*;

/// A carrier's notice may be dated this far ahead of our clock (clock skew).
const NOTICE_SKEW: SignedDuration = SignedDuration::from_mins(5);

/// Everything an order gathers after the win, shown in the API's `Order`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AfterSale {
    /// When each status after `pending_payment` was first reached
    /// (`paid_at`, `shipped_at`, `delivered_at`, …).
    #[serde(flatten)]
    pub status_times: StatusTimes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_ship_date: Option<Date>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracking: Vec<TrackingEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund: Option<Refund>,
    #[serde(rename = "return", skip_serializing_if = "Option::is_none")]
    pub return_request: Option<ReturnRequest>,
    /// Set at delivery: returns without a reason are taken before this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_reason_return_until: Option<Timestamp>,
    /// Set at delivery: quality returns are taken before this; then the
    /// order completes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality_return_until: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<Invoice>,
}

/// When each status was reached, shown as `<status>_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusTimes(pub std::collections::BTreeMap<OrderStatus, Timestamp>);

impl StatusTimes {
    /// Records the first time `status` was reached; a status reached again
    /// (a refund rejected back to `paid`) keeps its first time.
    pub fn reach(&mut self, status: OrderStatus, at: Timestamp) {
        // Milliseconds, as every other time of an order.
        let at = Timestamp::from_millisecond(at.as_millisecond()).unwrap_or(at);
        self.0.entry(status).or_insert(at);
    }

    pub fn get(&self, status: OrderStatus) -> Option<Timestamp> {
        self.0.get(&status).copied()
    }

    /// The store's form: `{"paid": time, …}`.
    pub fn to_json(&self) -> String {
        let map: std::collections::BTreeMap<&str, Timestamp> =
            self.0.iter().map(|(s, t)| (s.as_str(), *t)).collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
    }

    pub fn from_json(json: &str) -> Option<Self> {
        let map: std::collections::BTreeMap<String, Timestamp> = serde_json::from_str(json).ok()?;
        map.into_iter()
            .map(|(s, t)| OrderStatus::parse(&s).map(|s| (s, t)))
            .collect::<Option<_>>()
            .map(StatusTimes)
    }
}

impl Serialize for StatusTimes {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = out.serialize_map(Some(self.0.len()))?;
        for (status, at) in &self.0 {
            map.serialize_entry(&format!("{}_at", status.as_str()), at)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogisticsEvent {
    Shipped,
    Delivered,
}

/// One notice of the carrier's, as the order keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingEvent {
    pub event: LogisticsEvent,
    pub at: Timestamp,
    pub carrier: String,
    pub tracking_number: String,
}

/// An operator's decision on a refund or a return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub reason: String,
    /// Where the order was when asked, and goes back to if refused.
    pub from: OrderStatus,
    /// What is paid back: what was paid (a coupon's value is never paid out).
    #[serde(with = "as_cents_string")]
    pub amount: Decimal,
    pub requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// The gateway's refund, once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnReason {
    NoReason,
    Quality,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnKind {
    Return,
    Exchange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRequest {
    pub reason: ReturnReason,
    pub kind: ReturnKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What a return pays back (an exchange pays nothing).
    #[serde(with = "as_cents_string")]
    pub amount: Decimal,
    pub requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `requested`: the invoicing system issues it from the event.
    pub status: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
    pub email: String,
    pub requested_at: Timestamp,
}

/// A carrier's notice, checked.
#[derive(Debug, Clone)]
pub struct LogisticsNotice {
    pub event: LogisticsEvent,
    pub at: Timestamp,
    pub carrier: String,
    pub tracking_number: String,
}

/// What someone asks of an order after the win.
#[derive(Debug, Clone)]
pub enum Request {
    Logistics(LogisticsNotice),
    /// The shopper asks for a refund of a paid order not yet shipped.
    RequestRefund {
        reason: String,
    },
    /// An operator's review of a refund request.
    ReviewRefund {
        approve: bool,
        note: Option<String>,
    },
    /// The gateway has paid a refund back (a refund, or a return's).
    ConfirmRefund {
        refund_id: String,
        amount: Decimal,
    },
    RequestReturn {
        reason: ReturnReason,
        kind: ReturnKind,
        note: Option<String>,
    },
    ReviewReturn {
        approve: bool,
        note: Option<String>,
    },
    RequestInvoice {
        title: String,
        tax_id: Option<String>,
        email: String,
    },
    /// An operator cancels an unpaid order.
    Cancel,
}

/// Why a request changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not allowed from the order's status (409 `invalid_transition`).
    InvalidTransition(OrderStatus),
    ReturnWindowClosed,
    InvoiceExists,
    AmountMismatch {
        due: Decimal,
    },
    /// The gateway's refund id is recorded on another order.
    RefundUsedElsewhere,
    /// The request itself is wrong (400).
    Invalid(String),
}

/// What a request does to an order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The order moves to `to`, changed as `order` shows.
    Move {
        to: OrderStatus,
        order: Box<Order>,
    },
    /// The order changes without moving; `event` names what happened.
    Record {
        order: Box<Order>,
        event: &'static str,
    },
    /// A repeat of something already recorded: nothing changes.
    Unchanged,
    Refuse(Refusal),
}

/// The whole after-sale policy: what `request` does to `order` at `now`,
/// with the order's drop shipping as `plan`.
pub fn decide(order: &Order, request: &Request, now: Timestamp, plan: &ShipPlan) -> Decision {
    let invalid = || Decision::Refuse(Refusal::InvalidTransition(order.status));
    let mut next = order.clone();
    let moved = |to: OrderStatus, next: Order| Decision::Move {
        to,
        order: Box::new(next),
    };
    match request {
        Request::Logistics(notice) => logistics(order, notice, now, plan),
        Request::RequestRefund { reason } => {
            let refundable = match order.status {
                Paid => true,
                // A deposit comes back only before the balance can be paid.
                DepositPaid => order.balance_from.is_some_and(|from| now < from),
                _ => false,
            };
            if !refundable {
                return invalid();
            }
            next.after.refund = Some(Refund {
                reason: reason.clone(),
                from: order.status,
                amount: with_cents(order.paid_amount.unwrap_or(order.deposit_due)),
                requested_at: now,
                review: None,
                refund_id: None,
            });
            moved(RefundRequested, next)
        }
        Request::ReviewRefund { approve, note } => {
            let (RefundRequested, Some(refund)) = (order.status, next.after.refund.as_mut()) else {
                return invalid();
            };
            refund.review = Some(Review {
                approved: *approve,
                note: note.clone(),
                at: now,
            });
            let to = if *approve { Refunding } else { refund.from };
            moved(to, next)
        }
        Request::ConfirmRefund { refund_id, amount } => {
            confirm_refund(order, refund_id, *amount).unwrap_or_else(invalid)
        }
        Request::RequestReturn { reason, kind, note } => {
            if order.status != Delivered {
                return invalid();
            }
            if *kind == ReturnKind::Exchange && *reason != ReturnReason::Quality {
                return Decision::Refuse(Refusal::Invalid(
                    "an exchange is for a quality problem: send reason \"quality\"".into(),
                ));
            }
            let until = match reason {
                ReturnReason::NoReason => order.after.no_reason_return_until,
                ReturnReason::Quality => order.after.quality_return_until,
            };
            if until.is_none_or(|until| now >= until) {
                return Decision::Refuse(Refusal::ReturnWindowClosed);
            }
            let amount = match kind {
                ReturnKind::Return => paid_in_full(order),
                ReturnKind::Exchange => Decimal::ZERO,
            };
            next.after.return_request = Some(ReturnRequest {
                reason: *reason,
                kind: *kind,
                note: note.clone(),
                amount: with_cents(amount),
                requested_at: now,
                review: None,
                refund_id: None,
            });
            moved(ReturnRequested, next)
        }
        Request::ReviewReturn { approve, note } => {
            let (ReturnRequested, Some(asked)) = (order.status, next.after.return_request.as_mut())
            else {
                return invalid();
            };
            asked.review = Some(Review {
                approved: *approve,
                note: note.clone(),
                at: now,
            });
            moved(if *approve { ReturnApproved } else { Delivered }, next)
        }
        Request::RequestInvoice {
            title,
            tax_id,
            email,
        } => {
            if !matches!(order.status, Delivered | Completed) {
                return invalid();
            }
            if order.after.invoice.is_some() {
                return Decision::Refuse(Refusal::InvoiceExists);
            }
            next.after.invoice = Some(Invoice {
                status: "requested".into(),
                title: title.clone(),
                tax_id: tax_id.clone(),
                email: email.clone(),
                requested_at: now,
            });
            Decision::Record {
                order: Box::new(next),
                event: "order.invoice_requested",
            }
        }
        Request::Cancel => {
            if order.status != PendingPayment {
                return invalid();
            }
            moved(Cancelled, next)
        }
    }
}

/// What a returned order pays back: what was paid, at the door too.
fn paid_in_full(order: &Order) -> Decimal {
    order.paid_amount.unwrap_or(order.amount_due)
}

fn logistics(order: &Order, notice: &LogisticsNotice, now: Timestamp, plan: &ShipPlan) -> Decision {
    if notice.at > now + NOTICE_SKEW {
        return Decision::Refuse(Refusal::Invalid(
            "at is in the future: a notice reports what has happened".into(),
        ));
    }
    let entry = TrackingEvent {
        event: notice.event,
        at: notice.at,
        carrier: notice.carrier.clone(),
        tracking_number: notice.tracking_number.clone(),
    };
    // Carriers send their notices again: the same event of the same
    // parcel changes nothing, whatever the order has become since.
    let repeat = order
        .after
        .tracking
        .iter()
        .any(|t| t.event == entry.event && t.tracking_number == entry.tracking_number);
    if repeat {
        return Decision::Unchanged;
    }
    let exchange_approved = order
        .after
        .return_request
        .as_ref()
        .is_some_and(|r| r.kind == ReturnKind::Exchange);
    let to = match (notice.event, order.status) {
        (LogisticsEvent::Shipped, Paid) => Shipped,
        // The replacement of an approved exchange leaves the warehouse.
        (LogisticsEvent::Shipped, ReturnApproved) if exchange_approved => Exchanged,
        (LogisticsEvent::Delivered, Shipped | AwaitingDelivery) => Delivered,
        _ => return Decision::Refuse(Refusal::InvalidTransition(order.status)),
    };
    let mut next = order.clone();
    next.after.tracking.push(entry);
    if to == Delivered {
        let (no_reason, quality) = plan.return_windows(notice.at);
        next.after.no_reason_return_until = Some(no_reason);
        next.after.quality_return_until = Some(quality);
        if order.status == AwaitingDelivery {
            // Cash on delivery is paid at the door.
            next.paid_amount = Some(order.amount_due);
        }
    }
    Decision::Move {
        to,
        order: Box::new(next),
    }
}

/// The gateway's refund: of a refund being paid back, or of an approved
/// return; the amount must be what is owed, and a repeat changes nothing.
fn confirm_refund(order: &Order, refund_id: &str, amount: Decimal) -> Option<Decision> {
    let confirmed = |id: &Option<String>| id.as_deref() == Some(refund_id);
    let mut next = order.clone();
    match order.status {
        Refunded
            if order
                .after
                .refund
                .as_ref()
                .is_some_and(|r| confirmed(&r.refund_id)) =>
        {
            Some(Decision::Unchanged)
        }
        Returned
            if order
                .after
                .return_request
                .as_ref()
                .is_some_and(|r| confirmed(&r.refund_id)) =>
        {
            Some(Decision::Unchanged)
        }
        Refunding => {
            let refund = next.after.refund.as_mut()?;
            if amount != refund.amount {
                return Some(Decision::Refuse(Refusal::AmountMismatch {
                    due: refund.amount,
                }));
            }
            refund.refund_id = Some(refund_id.to_owned());
            Some(Decision::Move {
                to: Refunded,
                order: Box::new(next),
            })
        }
        ReturnApproved => {
            let asked = next.after.return_request.as_mut()?;
            if asked.kind != ReturnKind::Return {
                return None;
            }
            if amount != asked.amount {
                return Some(Decision::Refuse(Refusal::AmountMismatch {
                    due: asked.amount,
                }));
            }
            asked.refund_id = Some(refund_id.to_owned());
            Some(Decision::Move {
                to: Returned,
                order: Box::new(next),
            })
        }
        _ => None,
    }
}
