//! The order store: the durable record of every order, in SQLite (embedded,
//! the default) or PostgreSQL (production), chosen by `--database`. Both keep
//! the same schema (`migrations/`) and run the same code: every statement is
//! written once (`orders.rs`) over the small [`sql::Sql`] interface each
//! database implements, and every write goes through the one group-commit
//! writer design (`writer.rs`), many jobs per transaction.

mod address_rows;
mod after_sale_rows;
mod coupon_rows;
mod event_rows;
mod intent_rows;
mod orders;
mod postgres;
mod promotion_rows;
mod sql;
mod sqlite;
mod webhook_rows;
mod writer;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};

use crate::address::Address;
use crate::coupons::{Batch, BatchDefinition};
use crate::domain::{IdempotencyKey, OrderId, RoundId, SkuId, UserId};
use crate::events;
use crate::order::{Order, OrderStatus};
use crate::payment::{PaymentMethod, PaymentNotice};
use crate::shipping::ShipPlan;
use postgres::{PgDb, PgStore};
use sqlite::{finish_now, SqliteStore};
use writer::{Job, Reply};

pub use address_rows::AddOutcome;
pub use after_sale_rows::AfterSaleOutcome;
pub use coupon_rows::{ClaimOutcome, CouponRefusal, CouponRow};
pub use intent_rows::{IntentOutcome, IntentRequest};
pub use orders::{db_time, EditOutcome, OrderFilter};
pub use webhook_rows::{Deliveries, Retry};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database (or the way to it) failed; the cause is kept as the source.
    #[error("database: {0}")]
    Database(#[source] Arc<dyn std::error::Error + Send + Sync>),
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
    /// Another instance changed what this change depended on after it was
    /// read; nothing was changed, and a retry reads the new state.
    #[error("raced with another change: {0}")]
    Raced(String),
    /// The connection died during the commit and the database could not be
    /// read back in time: the write may or may not be stored.
    #[error("the commit's outcome is unknown (the database connection was lost)")]
    OutcomeUnknown,
}

impl StoreError {
    /// A database failure: an error from the driver, or a description.
    pub fn database(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Database(Arc::from(cause.into()))
    }
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
    /// The order's payment intent is for another method.
    MethodMismatch {
        expected: PaymentMethod,
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
    /// Too late: the order ends here (expired unpaid, or forfeited with its
    /// deposit kept), decided once; its units go back.
    End(OrderStatus),
    /// Paid: the order moves to `to` (`paid`, or `deposit_paid` for a
    /// presale's deposit); `paid` is what has been paid in all.
    Pay {
        to: OrderStatus,
        paid: Decimal,
    },
}

/// What a payment notice does to an order: the deposit or whole amount of
/// a pending order before `pay_by`, a presale's balance in its window.
pub(crate) fn pay_step(order: &Order, notice: &PaymentNotice, now: Timestamp) -> PayStep {
    let (due, deadline, late, paid_to, paid) = match order.status {
        OrderStatus::PendingPayment => {
            let to = if order.balance_due.is_some() {
                OrderStatus::DepositPaid
            } else {
                OrderStatus::Paid
            };
            let due = order.deposit_due;
            // A presale's deposit is taken only while its balance can
            // still be paid; later, the unpaid order simply expires.
            let deadline = order
                .balance_until
                .map_or(order.pay_by, |until| until.min(order.pay_by));
            (due, deadline, OrderStatus::Expired, to, due)
        }
        OrderStatus::DepositPaid => {
            let (Some(balance), Some(from), Some(until)) =
                (order.balance_due, order.balance_from, order.balance_until)
            else {
                return PayStep::Refuse(PayOutcome::NotPayable(order.clone()));
            };
            if now < from {
                return PayStep::Refuse(PayOutcome::NotPayable(order.clone()));
            }
            (
                balance,
                until,
                OrderStatus::Forfeited,
                OrderStatus::Paid,
                order.amount_due,
            )
        }
        _ => return PayStep::Refuse(PayOutcome::NotPayable(order.clone())),
    };
    if now >= deadline {
        return PayStep::End(late);
    }
    if let (Some(_), Some(expected)) = (&order.payment_id, order.payment_method) {
        if notice.method != expected {
            return PayStep::Refuse(PayOutcome::MethodMismatch { expected });
        }
    }
    if notice.amount != due {
        return PayStep::Refuse(PayOutcome::AmountMismatch { due });
    }
    PayStep::Pay { to: paid_to, paid }
}

/// Units an operator added to a SKU in a round (summed over restocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restock {
    pub round_id: RoundId,
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
    pub fn new(id: &str, round_id: &RoundId, sku: &SkuId, units: u64) -> Self {
        Self {
            id: id.to_owned(),
            restock: Restock {
                round_id: round_id.clone(),
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

/// A round's orders by status, for the operators' statistics: every
/// status of the state machine, zero included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCounts(std::collections::BTreeMap<OrderStatus, u64>);

impl StatusCounts {
    fn add(&mut self, status: &str, n: u64) {
        match OrderStatus::parse(status) {
            Some(status) => *self.0.entry(status).or_default() += n,
            None => tracing::warn!(status, "unknown order status in the store"),
        }
    }

    pub fn get(&self, status: OrderStatus) -> u64 {
        self.0.get(&status).copied().unwrap_or(0)
    }
}

impl serde::Serialize for StatusCounts {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = out.serialize_map(Some(OrderStatus::ALL.len()))?;
        for status in OrderStatus::ALL {
            map.serialize_entry(status.as_str(), &self.get(status))?;
        }
        map.end()
    }
}

/// A place in the writer's queue for one new order. Taken before the
/// engine decides, so that a win, once decided, is always queued: the
/// queueing can neither wait nor be cancelled by a client hanging up.
pub struct InsertSlot(mpsc::OwnedPermit<Job>);

impl InsertSlot {
    /// Queues the order now (no await). `settle` runs once the commit is
    /// durable (`Ok`) or has failed, whether or not anyone awaits the result.
    pub fn insert(
        self,
        order: Order,
        idempotency: Option<(IdempotencyKey, String)>,
        settle: impl FnOnce(&Result<(), StoreError>) + Send + Sync + 'static,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, result) = oneshot::channel();
        self.0.send(Job::Insert {
            created: vec![events::created(&order)],
            orders: vec![(order, idempotency)],
            settle: Some(Box::new(settle)),
            reply,
        });
        async move { result.await.map_err(|_| StoreError::Closed)?.map(drop) }
    }
}

#[derive(Clone)]
pub struct OrderStore {
    /// The writer's queue: every write goes through it.
    jobs: mpsc::Sender<Job>,
    /// Where reads go.
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Runs one shared read (`$query`, a future over `$db`) on whichever
/// database this store is; gives up after [`READ_TIMEOUT`].
macro_rules! read {
    ($store:expr, $timeout:expr, |$db:ident| $query:expr) => {
        tokio::time::timeout($timeout, async move {
            match &$store.backend {
                Backend::Sqlite(sqlite) => sqlite.read(move |$db| finish_now($query)).await,
                Backend::Postgres(pg) => {
                    let conn = pg.connection().await?;
                    let $db = &mut PgDb(&**conn);
                    $query.await
                }
            }
        })
        .await
        .unwrap_or(Err(StoreError::TimedOut($timeout)))
    };
}

impl OrderStore {
    pub fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let (jobs, queue) = writer::queue();
        let backend = Backend::Sqlite(SqliteStore::open(path, queue)?);
        Ok(Self { jobs, backend })
    }

    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let (jobs, queue) = writer::queue();
        let backend = Backend::Postgres(PgStore::open(url, queue).await?);
        Ok(Self { jobs, backend })
    }

    /// Takes the embedded engine's lease on this store; None if another
    /// instance holds it.
    pub async fn take_engine_lease(&self) -> Result<Option<EngineLease>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.take_engine_lease(),
            Backend::Postgres(store) => store.take_engine_lease().await,
        }
    }

    /// Takes a place in the writer's queue for an order not yet decided.
    pub async fn insert_slot(&self) -> Result<InsertSlot, StoreError> {
        self.jobs
            .clone()
            .reserve_owned()
            .await
            .map(InsertSlot)
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a job for the writer; its result once its commit is known.
    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits orders decided elsewhere (the Redis engine) in one group
    /// commit; orders already stored (same id) are left as they are. Returns
    /// the ids of orders that collide with another stored order (the same
    /// idempotency key under another id), which were not stored.
    pub async fn insert_many(&self, orders: Vec<Keyed>) -> Result<Vec<OrderId>, StoreError> {
        self.write(|reply| Job::Insert {
            created: orders
                .iter()
                .map(|(order, _)| events::created(order))
                .collect(),
            orders,
            settle: None,
            reply,
        })
        .await
    }

    pub async fn cancel(
        &self,
        id: OrderId,
        user: UserId,
        now: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        self.write(|reply| Job::Cancel {
            id,
            user,
            now,
            reply,
        })
        .await
    }

    pub async fn pay(
        &self,
        notice: PaymentNotice,
        shipping: ShipPlan,
        now: Timestamp,
    ) -> Result<PayOutcome, StoreError> {
        self.write(|reply| Job::Pay {
            notice,
            shipping,
            now,
            reply,
        })
        .await
    }

    /// Applies an after-sale request to an order, with its event.
    pub async fn after_sale(
        &self,
        id: OrderId,
        user: Option<UserId>,
        request: crate::after_sale::Request,
        shipping: ShipPlan,
        now: Timestamp,
    ) -> Result<AfterSaleOutcome, StoreError> {
        self.write(|reply| Job::AfterSale {
            id,
            user,
            request,
            shipping,
            now,
            reply,
        })
        .await
    }

    /// Expires up to `max` orders unpaid at `now` and returns them.
    pub async fn expire_due(&self, now: Timestamp, max: usize) -> Result<Vec<Order>, StoreError> {
        self.write(|reply| Job::Expire { now, max, reply }).await
    }

    /// Returns once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|reply| Job::Flush { reply }).await
    }

    /// Records that the engine has taken these orders' units back.
    pub async fn mark_released(&self, ids: Vec<OrderId>) -> Result<(), StoreError> {
        self.write(|reply| Job::MarkReleased { ids, reply }).await
    }

    /// Records units an operator added to a round; false if a restock with
    /// this id was recorded before (a retry), which adds nothing.
    pub async fn add_restock(
        &self,
        record: RestockRecord,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(|reply| Job::AddRestock { record, now, reply })
            .await
    }

    /// Records a drop an operator created; false if its id is taken.
    pub async fn save_drop(
        &self,
        id: String,
        definition: String,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(|reply| Job::SaveDrop {
            id,
            definition,
            now,
            reply,
        })
        .await
    }

    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::get(db, &id))
    }

    pub async fn list_for_user(&self, user: UserId) -> Result<Vec<Order>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::list_for_user(db, &user))
    }

    /// Orders matching `filter`, oldest first (shoppers' and operators' listings).
    pub async fn search(&self, filter: OrderFilter) -> Result<Vec<Order>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::search(db, &filter))
    }

    /// Up to `limit` order events after `after`, oldest first.
    pub async fn events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::events::StoredEvent>, StoreError> {
        read!(self, READ_TIMEOUT, |db| event_rows::after(db, after, limit))
    }

    /// Every order of one round, with its key: what a round Redis may have
    /// lost is reconciled from. Bounded like a read, but longer: it runs
    /// only when Redis lost state, and a big round has many orders.
    pub async fn round_orders(&self, round_id: RoundId) -> Result<Vec<StoredOrder>, StoreError> {
        read!(self, RECOVERY_READ_TIMEOUT, |db| orders::round_orders(
            db, &round_id
        ))
    }

    /// The ids of one round's restocks.
    pub async fn restock_ids(&self, round_id: RoundId) -> Result<Vec<String>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::restock_ids(db, &round_id))
    }

    /// Up to `max` ended orders whose units the engine has not taken back.
    pub async fn releases_due(&self, max: usize) -> Result<Vec<Order>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::releases_due(db, max))
    }

    /// Every live order and every order made with an idempotency key in
    /// `rounds`: what the embedded engine rebuilds its books from.
    /// Unbounded: it runs once, at start-up, before anything is served.
    pub async fn engine_snapshot(
        &self,
        rounds: Vec<RoundId>,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        read!(self, Duration::MAX, |db| orders::engine_snapshot(
            db, &rounds
        ))
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        let answered: Result<_, StoreError> =
            read!(self, READ_TIMEOUT, |db| sql::Sql::rows(db, "SELECT 1", &[]));
        answered.is_ok()
    }

    /// Restocks of one round, or of every round.
    pub async fn restocks(&self, round_id: Option<RoundId>) -> Result<Vec<Restock>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::restocks(
            db,
            round_id.as_ref()
        ))
    }

    pub async fn status_counts(&self, round_id: RoundId) -> Result<StatusCounts, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::status_counts(
            db, &round_id
        ))
    }

    /// Every drop operators created, as the JSON they sent, oldest first.
    pub async fn saved_drops(&self) -> Result<Vec<String>, StoreError> {
        read!(self, READ_TIMEOUT, |db| orders::saved_drops(db))
    }

    /// Records an operator's promotion; false if its id is taken.
    pub async fn save_promotion(
        &self,
        id: String,
        definition: String,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(|reply| Job::SavePromotion {
            id,
            definition,
            now,
            reply,
        })
        .await
    }

    /// Ends a promotion for every instance; false if it had ended already.
    pub async fn end_promotion(&self, id: String, now: Timestamp) -> Result<bool, StoreError> {
        self.write(|reply| Job::EndPromotion { id, now, reply })
            .await
    }

    /// Operators' promotions and the ends of any promotion.
    pub async fn stored_promotions(
        &self,
    ) -> Result<Vec<crate::promotions::StoredPromotion>, StoreError> {
        read!(self, READ_TIMEOUT, |db| promotion_rows::all(db))
    }

    /// Adds a shopper's address unless they keep the most allowed already.
    pub async fn add_address(
        &self,
        user: UserId,
        address: Address,
    ) -> Result<AddOutcome, StoreError> {
        self.write(|reply| Job::AddAddress {
            user,
            address,
            reply,
        })
        .await
    }

    /// Deletes one of the shopper's addresses; false if they have none with this id.
    pub async fn delete_address(&self, user: UserId, id: String) -> Result<bool, StoreError> {
        self.write(|reply| Job::DeleteAddress { user, id, reply })
            .await
    }

    pub async fn addresses(&self, user: UserId) -> Result<Vec<Address>, StoreError> {
        read!(self, READ_TIMEOUT, |db| address_rows::list(db, &user))
    }

    /// Copies one of the shopper's addresses into their pending order.
    pub async fn set_order_address(
        &self,
        id: OrderId,
        user: UserId,
        address_id: String,
    ) -> Result<EditOutcome, StoreError> {
        self.write(|reply| Job::SetOrderAddress {
            id,
            user,
            address_id,
            reply,
        })
        .await
    }

    /// Issues a payment intent for the shopper's pending order (cash on
    /// delivery moves it to awaiting delivery at once).
    pub async fn pay_intent(
        &self,
        id: OrderId,
        user: UserId,
        request: IntentRequest,
        now: Timestamp,
    ) -> Result<IntentOutcome, StoreError> {
        self.write(|reply| Job::PayIntent {
            id,
            user,
            request,
            now,
            reply,
        })
        .await
    }

    /// Records a coupon batch; false if its id is taken.
    pub async fn save_coupon_batch(
        &self,
        batch: Batch,
        definition: String,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(|reply| Job::SaveCouponBatch {
            batch,
            definition,
            now,
            reply,
        })
        .await
    }

    /// Every batch's definition and claimed count, or only `id`'s.
    pub async fn coupon_batches(
        &self,
        id: Option<String>,
    ) -> Result<Vec<(BatchDefinition, i64)>, StoreError> {
        read!(self, READ_TIMEOUT, |db| coupon_rows::batches(
            db,
            id.as_deref()
        ))
    }

    /// Claims a coupon of a batch for a shopper, within its counts.
    pub async fn claim_coupon(
        &self,
        batch_id: String,
        user: UserId,
        now: Timestamp,
    ) -> Result<ClaimOutcome, StoreError> {
        let coupon_id = uuid::Uuid::now_v7().to_string();
        self.write(|reply| Job::ClaimCoupon {
            batch_id,
            user,
            coupon_id,
            now,
            reply,
        })
        .await
    }

    pub async fn coupons(&self, user: UserId) -> Result<Vec<CouponRow>, StoreError> {
        read!(self, READ_TIMEOUT, |db| coupon_rows::for_user(
            db, &user, None
        ))
    }

    /// Puts a coupon on the shopper's pending order, or takes it off.
    pub async fn set_order_coupon(
        &self,
        id: OrderId,
        user: UserId,
        coupon_id: Option<String>,
        now: Timestamp,
    ) -> Result<EditOutcome, StoreError> {
        self.write(|reply| Job::SetOrderCoupon {
            id,
            user,
            coupon_id,
            now,
            reply,
        })
        .await
    }

    /// The events with these ids that are still kept, oldest first.
    pub async fn events_by_ids(
        &self,
        ids: Vec<i64>,
    ) -> Result<Vec<crate::events::StoredEvent>, StoreError> {
        read!(self, READ_TIMEOUT, |db| event_rows::by_ids(db, &ids))
    }

    /// The highest event id (0 when there is none).
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        read!(self, READ_TIMEOUT, |db| event_rows::last_id(db))
    }

    /// Deletes up to `max` events older than `before` that no webhook
    /// still has to retry; how many went.
    pub async fn prune_events(&self, before: Timestamp, max: usize) -> Result<u64, StoreError> {
        self.write(|reply| Job::PruneEvents { before, max, reply })
            .await
    }

    /// How far `webhook` has been handed events.
    pub async fn webhook_cursor(&self, webhook: String) -> Result<i64, StoreError> {
        read!(self, READ_TIMEOUT, |db| webhook_rows::cursor(db, &webhook))
    }

    /// Retries due for `webhook`, first in line for their order.
    pub async fn retries_due(
        &self,
        webhook: String,
        now: Timestamp,
        max: usize,
    ) -> Result<Vec<Retry>, StoreError> {
        read!(self, READ_TIMEOUT, |db| webhook_rows::due(
            db, &webhook, now, max
        ))
    }

    /// Which of `orders` have events waiting for `webhook`.
    pub async fn waiting_orders(
        &self,
        webhook: String,
        orders: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        read!(self, READ_TIMEOUT, |db| webhook_rows::waiting_orders(
            db, &webhook, &orders
        ))
    }

    /// Deliveries waiting for `webhook`, and the time of the oldest's event.
    pub async fn webhook_backlog(
        &self,
        webhook: String,
    ) -> Result<(i64, Option<Timestamp>), StoreError> {
        read!(self, READ_TIMEOUT, |db| webhook_rows::backlog(db, &webhook))
    }

    /// Records one dispatch round of `webhook`.
    pub async fn save_deliveries(
        &self,
        webhook: String,
        deliveries: Deliveries,
    ) -> Result<(), StoreError> {
        self.write(|reply| Job::SaveDeliveries {
            webhook,
            deliveries,
            reply,
        })
        .await
    }

    /// Takes or renews lease `name` for `holder` until `until`.
    pub async fn take_lease(
        &self,
        name: &'static str,
        holder: String,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(|reply| Job::TakeLease {
            name,
            holder,
            until,
            now,
            reply,
        })
        .await
    }

    /// Jobs waiting for (or in) the writer's next commit.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }
}
