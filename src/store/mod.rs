//! The order store: the durable record of every order, in SQLite (embedded,
//! the default) or PostgreSQL (production), chosen by `--database`. Both keep
//! the same schema (`migrations/`) and behave the same: every write goes
//! through a group-commit writer that commits many jobs per transaction, and
//! every transition out of `pending_payment` is one guarded statement.

mod postgres;
mod sqlite;
mod sqlite_store;
mod writer;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::domain::{IdempotencyKey, OrderId, SkuId, UserId};
use crate::order::{Order, OrderStatus};
use crate::payment::PaymentNotice;
use postgres::{PgSlot, PgStore};
use sqlite_store::{SqliteSlot, SqliteStore};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error("unreadable row in the order store: {0}")]
    Corrupt(String),
    #[error("the order writer has stopped")]
    Closed,
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
    /// The order collides with another stored order (the same idempotency
    /// key under another id) and was not stored.
    #[error("order {0} collides with a stored order")]
    Conflict(String),
    /// The connection died during the commit and the database could not be
    /// read back in time: the write may or may not be stored.
    #[error("the commit's outcome is unknown (the database connection was lost)")]
    OutcomeUnknown,
}

/// The embedded engine's claim to sell from an order store: its stock lives
/// in its memory, so a second embedded instance on the same store would
/// sell the same units again. SQLite: an exclusive lock on a file beside the
/// database; PostgreSQL: a session advisory lock. Either is released by the
/// operating system or the database the moment the process dies.
pub struct EngineLease {
    held: Arc<AtomicBool>,
    hold: std::sync::Mutex<Option<LeaseHold>>,
}

enum LeaseHold {
    /// The locked file: closing it releases the lock.
    File { _locked: std::fs::File },
    /// The task that keeps the lock's database session.
    Session(tokio::task::JoinHandle<()>),
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if let LeaseHold::Session(keeper) = self {
            keeper.abort();
        }
    }
}

impl EngineLease {
    fn file(file: std::fs::File) -> Self {
        Self {
            held: Arc::new(AtomicBool::new(true)),
            hold: std::sync::Mutex::new(Some(LeaseHold::File { _locked: file })),
        }
    }

    fn postgres(held: Arc<AtomicBool>, keeper: tokio::task::JoinHandle<()>) -> Self {
        Self {
            held,
            hold: std::sync::Mutex::new(Some(LeaseHold::Session(keeper))),
        }
    }

    /// Gives the lease up (a graceful stop): another instance may take it.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.hold.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// False once the lease is lost (the database restarted and another
    /// instance took it): this instance must not sell any more.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

/// How long a read may take before the caller gets 503 instead of waiting
/// on a stalled database.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on the reads that reconcile a round Redis may have lost.
pub const RECOVERY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An order with the idempotency key (and request fingerprint) that made it.
pub type Keyed = (Order, Option<(IdempotencyKey, String)>);

/// A stored order together with the idempotency key that created it.
pub struct StoredOrder {
    pub order: Order,
    pub idempotency: Option<(IdempotencyKey, String)>,
}

/// Every live order and every order made with an idempotency key, with the
/// key columns last: what the embedded engine rebuilds its books from.
pub(crate) fn snapshot_sql() -> String {
    format!(
        "SELECT {ORDER_COLUMNS}, idempotency_key, request_fingerprint FROM orders \
         WHERE status IN ('pending_payment', 'paid') OR idempotency_key IS NOT NULL"
    )
}

/// Every order of one round (`param` its id) with the key columns last:
/// what a round Redis may have lost is reconciled from.
pub(crate) fn round_orders_sql(param: &str) -> String {
    format!(
        "SELECT {ORDER_COLUMNS}, idempotency_key, request_fingerprint FROM orders WHERE round_id = {param}"
    )
}

impl StoredOrder {
    /// An order with the key columns it was stored with.
    pub(crate) fn new(
        order: Order,
        key: Option<String>,
        fingerprint: Option<String>,
    ) -> Result<Self, StoreError> {
        let idempotency = match (key, fingerprint) {
            (Some(key), Some(fingerprint)) => Some((
                IdempotencyKey::parse(&key).map_err(|e| StoreError::Corrupt(e.0))?,
                fingerprint,
            )),
            _ => None,
        };
        Ok(Self { order, idempotency })
    }
}

pub enum CancelOutcome {
    Cancelled(Order),
    /// No such order, or it belongs to someone else.
    NotFound,
    NotCancellable(Order),
}

pub enum PayOutcome {
    Paid(Order),
    /// The same transaction was recorded before; nothing changed.
    AlreadyRecorded(Order),
    TransactionUsedElsewhere,
    NotFound,
    AmountMismatch {
        due: Decimal,
    },
    /// Paid by another transaction, cancelled or expired already.
    NotPayable(Order),
    /// Pending but past `pay_by`: this notice expired it, its stock must return.
    ExpiredNow(Order),
}

/// What a payment notice does to an order found in the store: the rule
/// both backends apply inside their transaction.
// A refusal carries the order it refuses; the value lives for one match in
// the caller, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum PayStep {
    Refuse(PayOutcome),
    /// Too late: the order's fate is expiry, decided here, once.
    Expire,
    Pay,
}

pub(crate) fn pay_step(order: &Order, notice: &PaymentNotice, now: Timestamp) -> PayStep {
    if order.status != OrderStatus::PendingPayment {
        return PayStep::Refuse(PayOutcome::NotPayable(order.clone()));
    }
    if now >= order.pay_by {
        return PayStep::Expire;
    }
    if notice.amount != order.deposit_due {
        return PayStep::Refuse(PayOutcome::AmountMismatch {
            due: order.deposit_due,
        });
    }
    PayStep::Pay
}

/// The columns of an order as both backends store them, as text but the quantity.
pub(crate) struct OrderColumns {
    pub id: String,
    pub drop_id: String,
    pub round_id: String,
    pub sku: String,
    pub user_id: String,
    pub quantity: i64,
    pub status: String,
    pub unit_price: String,
    pub amount_due: String,
    pub deposit_due: String,
    pub created_at: String,
    pub pay_by: String,
}

/// Column list matching `OrderColumns`, for SELECTs in either backend.
pub(crate) const ORDER_COLUMNS: &str =
    "id, drop_id, round_id, sku, user_id, quantity, status, unit_price, \
     amount_due, deposit_due, created_at, pay_by";

impl OrderColumns {
    pub fn into_order(self) -> Result<Order, StoreError> {
        let corrupt = |what: &str, value: &str| StoreError::Corrupt(format!("{what} {value:?}"));
        let time = |raw: &str| raw.parse().map_err(|_| corrupt("time", raw));
        let money = |raw: &str| crate::money::parse_amount(raw).map_err(|_| corrupt("amount", raw));
        let checked = |e: crate::domain::InvalidValue| StoreError::Corrupt(e.0);
        Ok(Order {
            id: OrderId::from_store(self.id),
            drop_id: crate::domain::DropId::parse(&self.drop_id).map_err(checked)?,
            round_id: self.round_id,
            sku: crate::domain::SkuId::parse(&self.sku).map_err(checked)?,
            user_id: UserId::parse(&self.user_id).map_err(checked)?,
            quantity: crate::domain::Quantity::new(self.quantity).map_err(checked)?,
            status: OrderStatus::parse(&self.status)
                .ok_or_else(|| corrupt("status", &self.status))?,
            unit_price: money(&self.unit_price)?,
            amount_due: money(&self.amount_due)?,
            deposit_due: money(&self.deposit_due)?,
            currency: crate::money::Currency::Cny,
            created_at: time(&self.created_at)?,
            pay_by: time(&self.pay_by)?,
        })
    }
}

/// UTC with milliseconds and a fixed width, so text order is time order.
/// Units an operator added to a SKU in a round (summed over restocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restock {
    pub round_id: String,
    pub sku: String,
    pub units: u64,
}

/// One operator restock as recorded: its id makes a retry add nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestockRecord {
    pub id: String,
    pub restock: Restock,
}

impl RestockRecord {
    pub fn new(id: &str, round_id: &str, sku: &SkuId, units: u64) -> Self {
        Self {
            id: id.to_owned(),
            restock: Restock {
                round_id: round_id.to_owned(),
                sku: sku.as_str().to_owned(),
                units,
            },
        }
    }
}

/// Units restocked for `sku`, out of one round's restocks.
pub fn restocked_units(restocks: &[Restock], sku: &str) -> u64 {
    restocks
        .iter()
        .filter(|r| r.sku == sku)
        .map(|r| r.units)
        .sum()
}

/// A round's orders by status, for the operators' statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusCounts {
    pub pending_payment: u64,
    pub paid: u64,
    pub cancelled: u64,
    pub expired: u64,
}

impl StatusCounts {
    fn add(&mut self, status: &str, n: u64) {
        match status {
            "pending_payment" => self.pending_payment += n,
            "paid" => self.paid += n,
            "cancelled" => self.cancelled += n,
            "expired" => self.expired += n,
            other => tracing::warn!(status = other, "unknown order status in the store"),
        }
    }
}

/// Restocks summed per round and SKU; all rounds when the parameter is NULL.
fn restocks_sql(param: &str) -> String {
    format!(
        "SELECT round_id, sku, CAST(SUM(units) AS BIGINT) FROM restocks \
         WHERE {param} IS NULL OR round_id = {param} GROUP BY round_id, sku"
    )
}

fn status_counts_sql(param: &str) -> String {
    format!("SELECT status, COUNT(*) FROM orders WHERE round_id = {param} GROUP BY status")
}

pub fn db_time(t: Timestamp) -> String {
    format!(
        "{}.{:03}Z",
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_millisecond()
    )
}

/// A place in the writer's queue for one new order. Taken before the
/// engine decides, so that a win, once decided, is always queued: the
/// queueing can neither wait nor be cancelled by a client hanging up.
pub enum InsertSlot {
    Sqlite(SqliteSlot),
    Postgres(PgSlot),
}

/// The result of a queued insert, awaited after the queueing is done.
pub type Inserted = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

impl InsertSlot {
    /// Queues the order now (no await). `settle` runs once the commit is
    /// durable (`Ok`) or has failed, whether or not anyone awaits the result.
    pub fn insert(
        self,
        order: Order,
        idempotency: Option<(IdempotencyKey, String)>,
        settle: impl FnOnce(&Result<(), StoreError>) + Send + Sync + 'static,
    ) -> Inserted {
        match self {
            InsertSlot::Sqlite(slot) => Box::pin(slot.insert(order, idempotency, settle)),
            InsertSlot::Postgres(slot) => Box::pin(slot.insert(order, idempotency, settle)),
        }
    }
}

#[derive(Clone)]
pub enum OrderStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend this store is.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            OrderStore::Sqlite(store) => store.$method($($arg),*).await,
            OrderStore::Postgres(store) => store.$method($($arg),*).await,
        }
    };
}

/// Like `dispatch!`, for reads: gives up after [`READ_TIMEOUT`].
macro_rules! dispatch_read {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        tokio::time::timeout(READ_TIMEOUT, async { dispatch!($self.$method($($arg),*)) })
            .await
            .unwrap_or(Err(StoreError::TimedOut(READ_TIMEOUT)))
    };
}

impl OrderStore {
    pub fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(path).map(OrderStore::Sqlite)
    }

    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        PgStore::open(url).await.map(OrderStore::Postgres)
    }

    /// Takes the embedded engine's lease on this store; None if another
    /// instance holds it.
    pub async fn take_engine_lease(&self) -> Result<Option<EngineLease>, StoreError> {
        match self {
            OrderStore::Sqlite(store) => store.take_engine_lease(),
            OrderStore::Postgres(store) => store.take_engine_lease().await,
        }
    }

    /// Takes a place in the writer's queue for an order not yet decided.
    pub async fn insert_slot(&self) -> Result<InsertSlot, StoreError> {
        match self {
            OrderStore::Sqlite(store) => store.insert_slot().await.map(InsertSlot::Sqlite),
            OrderStore::Postgres(store) => store.insert_slot().await.map(InsertSlot::Postgres),
        }
    }

    /// Commits orders decided elsewhere (the Redis engine) in one group
    /// commit; orders already stored (same id) are left as they are. Returns
    /// the ids of orders that collide with another stored order (the same
    /// idempotency key under another id), which were not stored.
    pub async fn insert_many(&self, orders: Vec<Keyed>) -> Result<Vec<OrderId>, StoreError> {
        dispatch!(self.insert_many(orders))
    }

    pub async fn cancel(
        &self,
        id: OrderId,
        user: UserId,
        now: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        dispatch!(self.cancel(id, user, now))
    }

    pub async fn pay(
        &self,
        notice: PaymentNotice,
        now: Timestamp,
    ) -> Result<PayOutcome, StoreError> {
        dispatch!(self.pay(notice, now))
    }

    /// Expires up to `max` orders unpaid at `now` and returns them.
    pub async fn expire_due(&self, now: Timestamp, max: usize) -> Result<Vec<Order>, StoreError> {
        dispatch!(self.expire_due(now, max))
    }

    /// Returns once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        dispatch!(self.flush())
    }

    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        dispatch_read!(self.get(id))
    }

    pub async fn list_for_user(&self, user: UserId) -> Result<Vec<Order>, StoreError> {
        dispatch_read!(self.list_for_user(user))
    }

    /// Every order of one round, with its key: what a round Redis may have
    /// lost is reconciled from. Bounded like a read, but longer: it runs
    /// only when Redis lost state, and a big round has many orders.
    pub async fn round_orders(&self, round_id: String) -> Result<Vec<StoredOrder>, StoreError> {
        tokio::time::timeout(RECOVERY_READ_TIMEOUT, async {
            dispatch!(self.round_orders(round_id))
        })
        .await
        .unwrap_or(Err(StoreError::TimedOut(RECOVERY_READ_TIMEOUT)))
    }

    /// The ids of one round's restocks.
    pub async fn restock_ids(&self, round_id: String) -> Result<Vec<String>, StoreError> {
        dispatch_read!(self.restock_ids(round_id))
    }

    /// Up to `max` ended orders whose units the engine has not taken back.
    pub async fn releases_due(&self, max: usize) -> Result<Vec<Order>, StoreError> {
        dispatch_read!(self.releases_due(max))
    }

    /// Records that the engine has taken these orders' units back.
    pub async fn mark_released(&self, ids: Vec<OrderId>) -> Result<(), StoreError> {
        dispatch!(self.mark_released(ids))
    }

    /// Every live order and every order made with an idempotency key: what
    /// the embedded engine rebuilds its books from.
    pub async fn engine_snapshot(&self) -> Result<Vec<StoredOrder>, StoreError> {
        dispatch!(self.engine_snapshot())
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(READ_TIMEOUT, async { dispatch!(self.ping()) })
            .await
            .unwrap_or(false)
    }

    /// Records units an operator added to a round; false if a restock with
    /// this id was recorded before (a retry), which adds nothing.
    pub async fn add_restock(
        &self,
        record: RestockRecord,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        dispatch!(self.add_restock(record, now))
    }

    /// Restocks of one round, or of every round.
    pub async fn restocks(&self, round_id: Option<String>) -> Result<Vec<Restock>, StoreError> {
        dispatch_read!(self.restocks(round_id))
    }

    pub async fn status_counts(&self, round_id: String) -> Result<StatusCounts, StoreError> {
        dispatch_read!(self.status_counts(round_id))
    }

    /// Records a drop an operator created; false if its id is taken.
    pub async fn save_drop(
        &self,
        id: String,
        definition: String,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        dispatch!(self.save_drop(id, definition, now))
    }

    /// Every drop operators created, as the JSON they sent, oldest first.
    pub async fn saved_drops(&self) -> Result<Vec<String>, StoreError> {
        dispatch_read!(self.saved_drops())
    }

    /// Jobs waiting for (or in) the writer's next commit.
    pub fn queued(&self) -> usize {
        match self {
            OrderStore::Sqlite(store) => store.queued(),
            OrderStore::Postgres(store) => store.queued(),
        }
    }
}
