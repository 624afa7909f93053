//! The order's state machine, as data: every status, every transition
//! between them, and which transitions give the order's units back to the
//! round. Both order stores move an order only through [`transition`], so a
//! new status or transition is one change here (plus a migration that lets
//! the store's `status` column hold it).
//!
//! ```text
//! pending_payment ─pay(online)→ paid ─ship→ shipped ─deliver→ delivered ─15 days→ completed
//!       │  └pay(cash_on_delivery)→ awaiting_delivery ─deliver→ delivered (paid at the door)
//!       │  └pay deposit (presale)→ deposit_paid ─pay balance→ paid
//!       │                               └balance window passes→ forfeited
//!       ├cancel→ cancelled     └pay_by passes→ expired
//! paid | deposit_paid ─refund request→ refund_requested ─approve→ refunding ─gateway→ refunded
//!                                                       └reject→ (back to where it was)
//! delivered ─return request (≤7 days no_reason, ≤15 days quality)→ return_requested
//!       ─approve→ return_approved ─gateway refund→ returned   (exchange: → exchanged)
//! ```

use serde::{Deserialize, Serialize};

/// Declares the statuses once: the enum, its text forms and `ALL`.
macro_rules! statuses {
    ($($status:ident => $text:literal,)+) => {
        /// Where an order is in its life. The text form (`as_str`) is what
        /// the API shows and what the store's `status` column holds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum OrderStatus {
            $(#[serde(rename = $text)] $status,)+
        }

        impl OrderStatus {
            /// Every status, in the order of the diagram.
            pub const ALL: [OrderStatus; [$($text),+].len()] = [$(OrderStatus::$status,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(OrderStatus::$status => $text,)+
                }
            }
        }
    };
}

statuses! {
    PendingPayment => "pending_payment",
    Paid => "paid",
    AwaitingDelivery => "awaiting_delivery",
    DepositPaid => "deposit_paid",
    Shipped => "shipped",
    Delivered => "delivered",
    Completed => "completed",
    Cancelled => "cancelled",
    Expired => "expired",
    Forfeited => "forfeited",
    RefundRequested => "refund_requested",
    Refunding => "refunding",
    Refunded => "refunded",
    ReturnRequested => "return_requested",
    ReturnApproved => "return_approved",
    Returned => "returned",
    Exchanged => "exchanged",
}

use OrderStatus::*;

impl OrderStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// An order ends in exactly one of these (I5); nothing leaves them.
    pub fn is_final(self) -> bool {
        !TRANSITIONS.iter().any(|t| t.from == self)
    }

    /// Holds its units and counts toward the per-user limit: every status
    /// but those whose way in gave the units back.
    pub fn is_live(self) -> bool {
        !TRANSITIONS.iter().any(|t| t.to == self && t.returns_units)
    }
}

/// What moves an order: the name of an arrow in the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    PayOnline,
    PayCashOnDelivery,
    PayDeposit,
    PayBalance,
    Cancel,
    Expire,
    Forfeit,
    Ship,
    Deliver,
    Complete,
    RequestRefund,
    ApproveRefund,
    RejectRefund,
    ConfirmRefund,
    RequestReturn,
    ApproveReturn,
    RejectReturn,
    ConfirmReturn,
    Exchange,
}

impl Event {
    /// The type of the order event this move writes (`order.paid`, …):
    /// named after where the order goes, except for a refused refund or
    /// return, which goes back to where the order was.
    pub fn event_type(self) -> &'static str {
        match self {
            Event::PayOnline | Event::PayBalance => "order.paid",
            Event::PayCashOnDelivery => "order.awaiting_delivery",
            Event::PayDeposit => "order.deposit_paid",
            Event::Cancel => "order.cancelled",
            Event::Expire => "order.expired",
            Event::Forfeit => "order.forfeited",
            Event::Ship => "order.shipped",
            Event::Deliver => "order.delivered",
            Event::Complete => "order.completed",
            Event::RequestRefund => "order.refund_requested",
            Event::ApproveRefund => "order.refunding",
            Event::RejectRefund => "order.refund_rejected",
            Event::ConfirmRefund => "order.refunded",
            Event::RequestReturn => "order.return_requested",
            Event::ApproveReturn => "order.return_approved",
            Event::RejectReturn => "order.return_rejected",
            Event::ConfirmReturn => "order.returned",
            Event::Exchange => "order.exchanged",
        }
    }
}

/// One arrow of the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: OrderStatus,
    pub event: Event,
    pub to: OrderStatus,
    /// The order's units go back to the round's stock (exactly once; the
    /// store marks the release due in the transaction that moves it).
    pub returns_units: bool,
}

const fn arrow(from: OrderStatus, event: Event, to: OrderStatus) -> Transition {
    Transition {
        from,
        event,
        to,
        returns_units: false,
    }
}

/// An arrow whose end gives the units back.
const fn releasing(from: OrderStatus, event: Event, to: OrderStatus) -> Transition {
    Transition {
        returns_units: true,
        ..arrow(from, event, to)
    }
}

/// Every allowed transition. A refund request is rejected back to where the
/// order was, so that event has one arrow per status it can come from.
pub const TRANSITIONS: &[Transition] = &[
    arrow(PendingPayment, Event::PayOnline, Paid),
    arrow(PendingPayment, Event::PayCashOnDelivery, AwaitingDelivery),
    arrow(PendingPayment, Event::PayDeposit, DepositPaid),
    releasing(PendingPayment, Event::Cancel, Cancelled),
    releasing(PendingPayment, Event::Expire, Expired),
    arrow(DepositPaid, Event::PayBalance, Paid),
    releasing(DepositPaid, Event::Forfeit, Forfeited),
    arrow(Paid, Event::Ship, Shipped),
    arrow(Shipped, Event::Deliver, Delivered),
    arrow(AwaitingDelivery, Event::Deliver, Delivered),
    arrow(Delivered, Event::Complete, Completed),
    arrow(Paid, Event::RequestRefund, RefundRequested),
    arrow(DepositPaid, Event::RequestRefund, RefundRequested),
    arrow(RefundRequested, Event::ApproveRefund, Refunding),
    arrow(RefundRequested, Event::RejectRefund, Paid),
    arrow(RefundRequested, Event::RejectRefund, DepositPaid),
    // Refunds are only requested before shipping, so a refunded order's
    // units were never sent: they go back.
    releasing(Refunding, Event::ConfirmRefund, Refunded),
    arrow(Delivered, Event::RequestReturn, ReturnRequested),
    arrow(ReturnRequested, Event::ApproveReturn, ReturnApproved),
    arrow(ReturnRequested, Event::RejectReturn, Delivered),
    arrow(ReturnApproved, Event::ConfirmReturn, Returned),
    // The replacement of an approved exchange ships: the exchange is done.
    arrow(ReturnApproved, Event::Exchange, Exchanged),
];

/// The transition from `from` to `to`, if the diagram has that arrow.
pub fn transition(from: OrderStatus, to: OrderStatus) -> Option<&'static Transition> {
    TRANSITIONS.iter().find(|t| t.from == from && t.to == to)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The diagram, written out by hand a second time as (from, to) pairs:
    /// the table above must allow exactly these.
    const DIAGRAM: &[(OrderStatus, OrderStatus)] = &[
        (PendingPayment, Paid),
        (PendingPayment, AwaitingDelivery),
        (PendingPayment, DepositPaid),
        (PendingPayment, Cancelled),
        (PendingPayment, Expired),
        (DepositPaid, Paid),
        (DepositPaid, Forfeited),
        (DepositPaid, RefundRequested),
        (Paid, Shipped),
        (Paid, RefundRequested),
        (AwaitingDelivery, Delivered),
        (Shipped, Delivered),
        (Delivered, Completed),
        (Delivered, ReturnRequested),
        (RefundRequested, Refunding),
        (RefundRequested, Paid),
        (RefundRequested, DepositPaid),
        (Refunding, Refunded),
        (ReturnRequested, ReturnApproved),
        (ReturnRequested, Delivered),
        (ReturnApproved, Returned),
        (ReturnApproved, Exchanged),
    ];

    #[test]
    fn every_pair_of_statuses_is_allowed_exactly_when_the_diagram_has_the_arrow() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(
                    transition(from, to).is_some(),
                    DIAGRAM.contains(&(from, to)),
                    "{} → {}",
                    from.as_str(),
                    to.as_str()
                );
            }
        }
    }

    #[test]
    fn units_go_back_on_cancelled_expired_forfeited_and_refunded_only() {
        for t in TRANSITIONS {
            assert_eq!(
                t.returns_units,
                matches!(t.to, Cancelled | Expired | Forfeited | Refunded),
                "{:?}",
                t
            );
        }
    }

    #[test]
    fn the_final_statuses_are_the_seven_an_order_ends_in() {
        let finals: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [Completed, Cancelled, Expired, Forfeited, Refunded, Returned, Exchanged]
        );
    }

    #[test]
    fn only_orders_that_gave_their_units_back_stop_holding_them() {
        let released: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| !s.is_live())
            .collect();
        assert_eq!(released, [Cancelled, Expired, Forfeited, Refunded]);
    }

    #[test]
    fn every_status_reads_back_from_its_text_and_nothing_else_does() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(OrderStatus::parse("PAID"), None);
        assert_eq!(OrderStatus::parse(""), None);
    }

    #[test]
    fn every_status_but_pending_payment_is_reached_by_some_arrow() {
        for status in OrderStatus::ALL {
            let reached = TRANSITIONS.iter().any(|t| t.to == status);
            assert_eq!(reached, status != PendingPayment, "{}", status.as_str());
        }
    }
}
