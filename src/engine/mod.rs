//! The inventory engine: the one place that decides reservations.
//!
//! Both engines (embedded and Redis) implement [`InventoryEngine`]: one
//! atomic step checks the window, the idempotency key, the per-user limit and
//! the stock, and hands the winner on durably; release returns a cancelled or
//! expired order's units exactly once.

mod embedded;
mod redis_batches;
mod redis_engine;
mod redis_keys;
mod redis_reconcile;
mod redis_sentinel;
mod redis_stock_cache;
mod redis_topology;
mod redis_writer;
mod round_book;

use async_trait::async_trait;
use jiff::Timestamp;

pub use embedded::EmbeddedEngine;
pub(crate) use redis_batches::next_batch;
pub use redis_engine::RedisEngine;
pub use redis_keys::RoundKeys;
pub use redis_topology::{NodeState, Redis, RedisConn};
pub use redis_writer::RedisOrderWriter;

use crate::domain::{IdempotencyKey, OrderId, RoundId, SkuId};
use crate::order::Order;
use crate::schedule::{phase, Phase};

/// One shopper's try for units of one SKU in one round.
#[derive(Debug, Clone)]
pub struct ReserveAttempt {
    /// The order this attempt becomes if it wins (status pending payment).
    pub order: Order,
    pub opens_at: Timestamp,
    pub closes_at: Timestamp,
    /// Units of the SKU allocated to the round.
    pub allocated: u64,
    pub per_user_limit: u32,
    /// The client's key and a fingerprint of what it asked for.
    pub idempotency: Option<(IdempotencyKey, String)>,
}

/// Says whether a round is over (see [`InventoryEngine::retire`]).
pub type Retired<'a> = dyn Fn(&RoundId) -> bool + Send + Sync + 'a;

/// What an engine decides for an attempt: a win, or why not.
pub type ReserveOutcome = Result<Reserved, Refused>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A new order, durable in the order store.
    Won(Order),
    /// The order an earlier request with the same key created.
    Replayed(Order),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotOpen {
        opens_at: Timestamp,
    },
    Closed,
    SoldOut,
    LimitExceeded {
        limit: u32,
    },
    /// The key was used before for a different request.
    IdempotencyMismatch,
}

impl ReserveAttempt {
    /// The window rule at the instant the engine decides.
    pub fn outside_window(&self, now: Timestamp) -> Option<Refused> {
        outside_window(self.opens_at, self.closes_at, now)
    }
}

/// The window rule (I6) at `now`: None while the round is open. The reserve
/// service applies it before the engine; engines apply it again inside
/// their atomic step.
pub fn outside_window(
    opens_at: Timestamp,
    closes_at: Timestamp,
    now: Timestamp,
) -> Option<Refused> {
    match phase(opens_at, closes_at, now) {
        Phase::Upcoming => Some(Refused::NotOpen { opens_at }),
        Phase::Closed => Some(Refused::Closed),
        Phase::Open => None,
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Redis, the order store or the engine itself could not decide; the
    /// cause is kept as the source (for the log, never for the client).
    #[error("inventory backend unavailable: {0}")]
    Unavailable(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
}

impl EngineError {
    /// An engine failure: a backend's error, or a description.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        EngineError::Unavailable(std::sync::Arc::from(cause.into()))
    }
}

/// How the engine's Redis is deployed, as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Topology {
    /// `single`, `cluster` or `sentinel`.
    pub kind: &'static str,
    /// Every server seen; empty when none answered.
    pub nodes: Vec<NodeState>,
}

#[async_trait]
pub trait InventoryEngine: Send + Sync + 'static {
    /// Decides an attempt in one atomic step; a win is durable on return.
    async fn reserve(&self, attempt: ReserveAttempt) -> Result<ReserveOutcome, EngineError>;

    /// Returns an order's units to its round, the first time only; true if
    /// this call returned them. The caller has already ended the order.
    async fn release(&self, order: &Order) -> Result<bool, EngineError>;

    /// Units of `sku` still for sale in `round_id`, out of `allocated`.
    async fn remaining(
        &self,
        round_id: &RoundId,
        sku: &SkuId,
        allocated: u64,
    ) -> Result<u64, EngineError>;

    /// Adds `units` of `sku` to a round for sale at once, recorded in the
    /// order store first so that a rebuilt round has them too. A restock
    /// sent again with the same `restock_id` (a retry) adds nothing more.
    async fn restock(
        &self,
        round_id: &RoundId,
        sku: &SkuId,
        units: u64,
        restock_id: &str,
    ) -> Result<(), EngineError>;

    /// A won order the order store may not hold yet (read-your-writes while
    /// the Redis order writer lags); the embedded engine writes before it answers.
    async fn recent_order(&self, _id: &OrderId) -> Result<Option<Order>, EngineError> {
        Ok(None)
    }

    /// True while the engine's backends answer.
    async fn ready(&self) -> bool;

    /// The Redis servers behind the engine and their state; none for the
    /// embedded engine.
    async fn topology(&self) -> Option<Topology> {
        None
    }

    /// Forgets every round `retired` says is over (`LiveCatalog::is_retired`):
    /// its books, its Redis keys, its place in the order writer's polling.
    /// A round whose winners are not all stored yet is kept for a later
    /// call. Returns how many rounds were forgotten.
    async fn retire(&self, retired: &Retired<'_>) -> Result<usize, EngineError>;

    /// Rounds the engine holds now (books in memory, or rounds listed in
    /// Redis): what retiring keeps from growing.
    async fn rounds_held(&self) -> Result<usize, EngineError>;

    /// Called once serving has stopped and the writer is flushed: gives up
    /// whatever claim the engine holds on shared state.
    fn shut_down(&self) {}
}
