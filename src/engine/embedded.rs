//! The embedded engine: rounds kept in process, one lock per round, and the
//! group-commit order writer as the durability step (no Redis needed).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dashmap::DashMap;

use super::round_book::{Decision, Durability, RoundBook};
use super::{EngineError, InventoryEngine, ReserveAttempt, ReserveOutcome, Reserved, Retired};
use crate::clock::Clock;
use crate::domain::{RoundId, SkuId, UserId};
use crate::order::Order;
use crate::store::{EngineLease, OrderStore, RestockRecord, StoreError};

pub struct EmbeddedEngine {
    /// One book per round. The lock is a std mutex because it is held only
    /// for an in-memory decision and never across an await.
    rounds: DashMap<RoundId, Arc<Mutex<RoundBook>>>,
    store: OrderStore,
    clock: Arc<dyn Clock>,
    /// This engine's exclusive claim on the store: the stock lives in this
    /// process's memory, so no other embedded engine may sell from it.
    lease: EngineLease,
}

impl EmbeddedEngine {
    /// Takes the store's engine lease, then rebuilds the books of `rounds`
    /// (the rounds that may still change) from the store: sold units,
    /// holdings and keys, so a restart neither resells nor forgets. Rounds
    /// already over are not read at all. Refuses when another instance
    /// holds the lease.
    pub async fn open(
        store: OrderStore,
        clock: Arc<dyn Clock>,
        rounds: Vec<RoundId>,
    ) -> Result<Self, StoreError> {
        let lease = store.take_engine_lease().await?.ok_or_else(|| {
            StoreError::database(
                "another embedded-engine instance is selling from this order store \
                 (two would sell the same stock); stop it, or run several instances with --redis",
            )
        })?;
        let engine = Self {
            rounds: DashMap::new(),
            store,
            clock,
            lease,
        };
        for stored in engine.store.engine_snapshot(rounds.clone()).await? {
            let book = engine.book(&stored.order.round_id);
            lock(&book).restore(&stored.order, stored.idempotency);
        }
        for round in rounds {
            for restock in engine.store.restocks(Some(round)).await? {
                let sku = SkuId::parse(&restock.sku).map_err(|e| {
                    StoreError::Corrupt(format!("restock of SKU {:?}: {}", restock.sku, e.0))
                })?;
                lock(&engine.book(&restock.round_id)).restock(sku, restock.units);
            }
        }
        Ok(engine)
    }

    /// Units each of `users` holds in `round_id`: what a waiting room's
    /// tickets have used of their holds.
    pub fn holdings(&self, round_id: &RoundId, users: &[UserId]) -> Vec<u32> {
        match self.rounds.get(round_id).map(|b| b.clone()) {
            Some(book) => {
                let book = lock(&book);
                users.iter().map(|u| book.held_by(u)).collect()
            }
            None => vec![0; users.len()],
        }
    }

    fn book(&self, round_id: &RoundId) -> Arc<Mutex<RoundBook>> {
        if let Some(book) = self.rounds.get(round_id) {
            return book.clone();
        }
        self.rounds.entry(round_id.clone()).or_default().clone()
    }
}

fn unavailable(e: StoreError) -> EngineError {
    EngineError::unavailable(e)
}

fn lock(book: &Mutex<RoundBook>) -> std::sync::MutexGuard<'_, RoundBook> {
    // A panic while holding the lock cannot leave a book half-updated (its
    // updates do not panic part-way), so a poisoned lock is still sound.
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl InventoryEngine for EmbeddedEngine {
    async fn reserve(&self, attempt: ReserveAttempt) -> Result<ReserveOutcome, EngineError> {
        if !self.lease.is_held() {
            return Err(EngineError::unavailable(
                "this instance lost the order store's engine lease",
            ));
        }
        // The writer slot comes first: once units are taken below, the order
        // is queued without waiting, so no cancellation can strand them.
        let slot = self.store.insert_slot().await.map_err(unavailable)?;
        let book = self.book(&attempt.order.round_id);
        let decision = {
            let mut book = lock(&book);
            // The window is read under the round's lock, after any wait for
            // the slot: the decision happens at this instant (I6).
            match attempt.outside_window(self.clock.now()) {
                Some(refused) => Decision::Refused(refused),
                None => book.reserve(&attempt),
            }
        };
        match decision {
            Decision::Refused(refused) => Ok(Err(refused)),
            Decision::Replay(order, mut durability) => {
                let settled = durability
                    .wait_for(|d| *d != Durability::Pending)
                    .await
                    .map(|d| *d);
                match settled {
                    Ok(Durability::Committed) => Ok(Ok(Reserved::Replayed(*order))),
                    _ => Err(EngineError::unavailable(
                        "the first request with this key failed",
                    )),
                }
            }
            Decision::Taken(durable) => {
                let ReserveAttempt {
                    order, idempotency, ..
                } = attempt;
                let key = idempotency.as_ref().map(|(k, _)| k.clone());
                let won = order.clone();
                // Runs on the writer thread after the commit, even if this
                // request is gone: replays learn the outcome, and a failed
                // commit gives the units back.
                let settle = move |result: &Result<(), StoreError>| match result {
                    Ok(()) => {
                        durable.send_replace(Durability::Committed);
                    }
                    // Perhaps stored: the units stay taken (undersold until
                    // a restart rebuilds the books, never oversold).
                    Err(StoreError::OutcomeUnknown) => {
                        durable.send_replace(Durability::Failed);
                    }
                    Err(_) => {
                        lock(&book).undo(&won, key.as_ref());
                        durable.send_replace(Durability::Failed);
                    }
                };
                let won = order.clone();
                slot.insert(order, idempotency, settle)
                    .await
                    .map(|()| Ok(Reserved::Won(won)))
                    .map_err(unavailable)
            }
        }
    }

    async fn release(&self, order: &Order) -> Result<bool, EngineError> {
        let Some(book) = self.rounds.get(&order.round_id).map(|b| b.clone()) else {
            return Ok(false);
        };
        let released = lock(&book).release(&order.id);
        Ok(released)
    }

    async fn remaining(
        &self,
        round_id: &RoundId,
        sku: &SkuId,
        allocated: u64,
    ) -> Result<u64, EngineError> {
        let (sold, restocked) = match self.rounds.get(round_id).map(|b| b.clone()) {
            Some(book) => {
                let book = lock(&book);
                (book.sold(sku), book.restocked(sku))
            }
            None => (0, 0),
        };
        Ok((allocated + restocked).saturating_sub(sold))
    }

    async fn restock(
        &self,
        round_id: &RoundId,
        sku: &SkuId,
        units: u64,
        restock_id: &str,
    ) -> Result<(), EngineError> {
        // Stored first: a restart rebuilds the round with these units. A
        // restock id seen before is a retry: its units are in already.
        let record = RestockRecord::new(restock_id, round_id, sku, units);
        let new = self
            .store
            .add_restock(record, self.clock.now())
            .await
            .map_err(unavailable)?;
        if new {
            lock(&self.book(round_id)).restock(sku.clone(), units);
        }
        Ok(())
    }

    async fn retire(&self, retired: &Retired<'_>) -> Result<usize, EngineError> {
        let before = self.rounds.len();
        self.rounds.retain(|round, _| !retired(round));
        Ok(before - self.rounds.len())
    }

    async fn rounds_held(&self) -> Result<usize, EngineError> {
        Ok(self.rounds.len())
    }

    async fn ready(&self) -> bool {
        self.lease.is_held() && self.store.ping().await
    }

    fn shut_down(&self) {
        self.lease.release();
    }
}
