//! The embedded engine's record of one round: units sold per SKU, units held
//! per user, the live orders holding them, and the idempotency keys used.
//! Pure bookkeeping, no I/O: the engine calls it under the round's lock.

use std::collections::HashMap;

use tokio::sync::watch;

use super::{ReserveAttempt, ReserveOutcome};
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
    Replay(Order, watch::Receiver<Durability>),
    Refused(ReserveOutcome),
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
                    return Decision::Refused(ReserveOutcome::IdempotencyMismatch);
                }
                return Decision::Replay(earlier.order.clone(), earlier.durability.clone());
            }
        }
        let units = order.quantity.get();
        let held = self.held_by_user.get(&order.user_id).copied().unwrap_or(0);
        if u64::from(held) + u64::from(units) > u64::from(attempt.per_user_limit) {
            return Decision::Refused(ReserveOutcome::LimitExceeded {
                limit: attempt.per_user_limit,
            });
        }
        let sold = self.sold.get(&order.sku).copied().unwrap_or(0);
        if sold + u64::from(units) > attempt.allocated + self.restocked(&order.sku) {
            return Decision::Refused(ReserveOutcome::SoldOut);
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
