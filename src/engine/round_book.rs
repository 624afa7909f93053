//! The embedded engine's record of one round: units sold per SKU, units held
//! per user, the live orders holding them, and the idempotency keys used.
//! Pure bookkeeping, no I/O: the engine calls it under the round's lock.

use std::collections::HashMap;

use tokio::sync::watch;

use super::{Refused, ReserveAttempt};
use crate::domain::{IdempotencyKey, OrderId, SkuId, UserId};
use crate::order::Order;

/// Whether a reservation's order has reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Pending,
    Committed,
    /// The commit failed and the reservation was undone.
    Failed,
}

struct Holding {
    user: UserId,
    sku: SkuId,
    units: u32,
}

struct KeyedOrder {
    fingerprint: String,
    order: Order,
    durability: watch::Receiver<Durability>,
}

pub enum Decision {
    /// Units taken; the caller must commit the order and report the result.
    Taken(watch::Sender<Durability>),
    /// Boxed: a replay is rare, and a priced order would make every decision large.
    Replay(Box<Order>, watch::Receiver<Durability>),
    Refused(Refused),
}

#[derive(Default)]
pub struct RoundBook {
    sold: HashMap<SkuId, u64>,
    /// Units operators added to the round, on top of the catalog's stock.
    restocked: HashMap<SkuId, u64>,
    held_by_user: HashMap<UserId, u32>,
    live: HashMap<OrderId, Holding>,
    keys: HashMap<(UserId, IdempotencyKey), KeyedOrder>,
}

impl RoundBook {
    /// Checks key, limit and stock, in that order, and takes the units if all allow.
    pub fn reserve(&mut self, attempt: &ReserveAttempt) -> Decision {
        let order = &attempt.order;
        if let Some((key, fingerprint)) = &attempt.idempotency {
            if let Some(earlier) = self.keys.get(&(order.user_id.clone(), key.clone())) {
                if &earlier.fingerprint != fingerprint {
                    return Decision::Refused(Refused::IdempotencyMismatch);
                }
                return Decision::Replay(
                    Box::new(earlier.order.clone()),
                    earlier.durability.clone(),
                );
            }
        }
        let units = order.quantity.get();
        let held = self.held_by_user.get(&order.user_id).copied().unwrap_or(0);
        if u64::from(held) + u64::from(units) > u64::from(attempt.per_user_limit) {
            return Decision::Refused(Refused::LimitExceeded {
                limit: attempt.per_user_limit,
            });
        }
        let sold = self.sold.get(&order.sku).copied().unwrap_or(0);
        if sold + u64::from(units) > attempt.allocated + self.restocked(&order.sku) {
            return Decision::Refused(Refused::SoldOut);
        }
        let (durable, durability) = watch::channel(Durability::Pending);
        self.hold(order);
        if let Some((key, fingerprint)) = &attempt.idempotency {
            self.remember_key(order, key.clone(), fingerprint.clone(), durability);
        }
        Decision::Taken(durable)
    }

    /// Records an order read back from the order store at start.
    pub fn restore(&mut self, order: &Order, idempotency: Option<(IdempotencyKey, String)>) {
        if order.status.is_live() {
            self.hold(order);
        }
        if let Some((key, fingerprint)) = idempotency {
            let (_, committed) = watch::channel(Durability::Committed);
            self.remember_key(order, key, fingerprint, committed);
        }
    }

    /// Undoes a reservation whose commit failed, key included.
    pub fn undo(&mut self, order: &Order, key: Option<&IdempotencyKey>) {
        self.release(&order.id);
        if let Some(key) = key {
            self.keys.remove(&(order.user_id.clone(), key.clone()));
        }
    }

    /// Returns an order's units; false if it held none (already released).
    pub fn release(&mut self, id: &OrderId) -> bool {
        let Some(holding) = self.live.remove(id) else {
            return false;
        };
        if let Some(sold) = self.sold.get_mut(&holding.sku) {
            *sold -= u64::from(holding.units);
        }
        if let Some(held) = self.held_by_user.get_mut(&holding.user) {
            *held -= holding.units;
            if *held == 0 {
                self.held_by_user.remove(&holding.user);
            }
        }
        true
    }

    /// Units `user` holds in the round.
    pub fn held_by(&self, user: &UserId) -> u32 {
        self.held_by_user.get(user).copied().unwrap_or(0)
    }

    pub fn sold(&self, sku: &SkuId) -> u64 {
        self.sold.get(sku).copied().unwrap_or(0)
    }

    pub fn restocked(&self, sku: &SkuId) -> u64 {
        self.restocked.get(sku).copied().unwrap_or(0)
    }

    /// Adds units to the round (an operator's restock, or one read back at start).
    pub fn restock(&mut self, sku: SkuId, units: u64) {
        *self.restocked.entry(sku).or_default() += units;
    }

    fn hold(&mut self, order: &Order) {
        let units = order.quantity.get();
        *self.sold.entry(order.sku.clone()).or_default() += u64::from(units);
        *self.held_by_user.entry(order.user_id.clone()).or_default() += units;
        self.live.insert(
            order.id.clone(),
            Holding {
                user: order.user_id.clone(),
                sku: order.sku.clone(),
                units,
            },
        );
    }

    fn remember_key(
        &mut self,
        order: &Order,
        key: IdempotencyKey,
        fingerprint: String,
        durability: watch::Receiver<Durability>,
    ) {
        self.keys.insert(
            (order.user_id.clone(), key),
            KeyedOrder {
                fingerprint,
                order: order.clone(),
                durability,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::domain::{DropId, Quantity};
    use crate::money::Currency;
    use crate::order::OrderStatus;

    const SKU: &str = "sku-1";

    fn attempt(user: &str, units: u32, key: Option<(&str, &str)>) -> ReserveAttempt {
        let now = Timestamp::UNIX_EPOCH;
        ReserveAttempt {
            order: Order {
                id: OrderId::generate(),
                drop_id: DropId::parse("d").unwrap(),
                round_id: crate::domain::RoundId::parse("d@1").unwrap(),
                sku: SkuId::parse(SKU).unwrap(),
                quantity: Quantity::new(i64::from(units)).unwrap(),
                user_id: UserId::parse(user).unwrap(),
                status: OrderStatus::PendingPayment,
                unit_price: "1.00".parse().unwrap(),
                amount_due: "1.00".parse().unwrap(),
                deposit_due: "1.00".parse().unwrap(),
                currency: Currency::Cny,
                created_at: now,
                pay_by: now + SignedDuration::from_mins(15),
                pricing: crate::pricing::Pricing::at_list("1.00".parse().unwrap()),
                address: None,
                payment_method: None,
                installments: None,
                payment_id: None,
                balance_due: None,
                balance_from: None,
                balance_until: None,
                paid_amount: None,
                coupon_id: None,
                after: Default::default(),
            },
            opens_at: now,
            closes_at: now + SignedDuration::from_hours(1),
            allocated: 3,
            per_user_limit: 2,
            idempotency: key.map(|(k, f)| (IdempotencyKey::parse(k).unwrap(), f.to_owned())),
        }
    }

    fn sku() -> SkuId {
        SkuId::parse(SKU).unwrap()
    }

    fn taken(decision: Decision) -> watch::Sender<Durability> {
        match decision {
            Decision::Taken(durable) => durable,
            Decision::Replay(..) => panic!("taken expected, got a replay"),
            Decision::Refused(refused) => panic!("taken expected, got {refused:?}"),
        }
    }

    fn refused(decision: Decision) -> Refused {
        match decision {
            Decision::Refused(refused) => refused,
            _ => panic!("a refusal expected"),
        }
    }

    #[test]
    fn units_are_sold_up_to_the_stock_and_never_past_it() {
        let mut book = RoundBook::default();
        taken(book.reserve(&attempt("a", 2, None)));
        assert_eq!(
            refused(book.reserve(&attempt("b", 2, None))),
            Refused::SoldOut
        );
        taken(book.reserve(&attempt("b", 1, None)));
        assert_eq!(book.sold(&sku()), 3);
        assert_eq!(
            refused(book.reserve(&attempt("c", 1, None))),
            Refused::SoldOut
        );
    }

    #[test]
    fn the_limit_counts_every_unit_a_shopper_holds() {
        let mut book = RoundBook::default();
        taken(book.reserve(&attempt("a", 1, None)));
        let over = refused(book.reserve(&attempt("a", 2, None)));
        assert_eq!(over, Refused::LimitExceeded { limit: 2 });
        taken(book.reserve(&attempt("a", 1, None)));
        assert_eq!(
            refused(book.reserve(&attempt("a", 1, None))),
            Refused::LimitExceeded { limit: 2 }
        );
    }

    #[test]
    fn a_release_returns_units_and_limit_once() {
        let mut book = RoundBook::default();
        let first = attempt("a", 2, None);
        taken(book.reserve(&first));
        assert!(book.release(&first.order.id));
        assert!(
            !book.release(&first.order.id),
            "the second release returns nothing"
        );
        assert_eq!(book.sold(&sku()), 0);
        taken(book.reserve(&attempt("a", 2, None)));
    }

    #[test]
    fn a_key_replays_its_order_and_refuses_another_request() {
        let mut book = RoundBook::default();
        let first = attempt("a", 1, Some(("k", "sku-1*1")));
        taken(book.reserve(&first));
        match book.reserve(&attempt("a", 1, Some(("k", "sku-1*1")))) {
            Decision::Replay(order, _) => assert_eq!(order.id, first.order.id),
            _ => panic!("a replay expected"),
        }
        assert_eq!(book.sold(&sku()), 1, "a replay takes nothing");
        assert_eq!(
            refused(book.reserve(&attempt("a", 2, Some(("k", "sku-1*2"))))),
            Refused::IdempotencyMismatch
        );
        // The same key from another shopper is another request.
        taken(book.reserve(&attempt("b", 1, Some(("k", "sku-1*1")))));
    }

    #[test]
    fn an_undone_reservation_leaves_nothing_behind_key_included() {
        let mut book = RoundBook::default();
        let first = attempt("a", 2, Some(("k", "sku-1*2")));
        taken(book.reserve(&first));
        book.undo(&first.order, first.idempotency.as_ref().map(|(k, _)| k));
        assert_eq!(book.sold(&sku()), 0);
        // The key is free again: the retry is decided afresh.
        taken(book.reserve(&attempt("a", 2, Some(("k", "sku-1*2")))));
    }

    #[test]
    fn a_restock_adds_units_on_top_of_the_allocation() {
        let mut book = RoundBook::default();
        taken(book.reserve(&attempt("a", 2, None)));
        taken(book.reserve(&attempt("b", 1, None)));
        book.restock(sku(), 1);
        taken(book.reserve(&attempt("c", 1, None)));
        assert_eq!(
            refused(book.reserve(&attempt("d", 1, None))),
            Refused::SoldOut
        );
    }

    #[test]
    fn restored_orders_hold_units_only_while_live_and_keep_their_keys() {
        let mut book = RoundBook::default();
        let live = attempt("a", 2, Some(("k", "sku-1*2")));
        book.restore(&live.order, live.idempotency.clone());
        let mut ended = attempt("b", 1, None).order;
        ended.status = OrderStatus::Cancelled;
        book.restore(&ended, None);
        assert_eq!(book.sold(&sku()), 2);
        match book.reserve(&attempt("a", 2, Some(("k", "sku-1*2")))) {
            Decision::Replay(order, durability) => {
                assert_eq!(order.id, live.order.id);
                assert_eq!(*durability.borrow(), Durability::Committed);
            }
            _ => panic!("a replay expected"),
        }
    }
}
