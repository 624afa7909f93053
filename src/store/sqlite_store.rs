//! Orders in SQLite, written through the group-commit writer thread, read
//! on a separate connection (WAL lets reads run beside writes).

use std::path::Path;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::Connection;

use super::writer::{self, Writer};
use super::{
    sqlite, CancelOutcome, EngineLease, Keyed, PayOutcome, Restock, RestockRecord, StatusCounts,
    StoreError, StoredOrder,
};
use crate::domain::{IdempotencyKey, OrderId, UserId};
use crate::order::Order;
use crate::payment::PaymentNotice;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// A place in the writer's queue for one new order. Taken before the
/// engine decides, so that a win, once decided, is always queued: the
/// queueing can neither wait nor be cancelled by a client hanging up.
pub struct SqliteSlot(writer::Slot);

impl SqliteSlot {
    /// Queues the order. `settle` runs on the writer thread once the commit
    /// is on disk (`Ok`) or has failed, whether or not anyone awaits the result.
    pub fn insert(
        self,
        order: Order,
        idempotency: Option<(IdempotencyKey, String)>,
        settle: impl FnOnce(&Result<(), StoreError>) + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> {
        self.0.run(
            move |conn| sqlite::insert(conn, &order, idempotency.as_ref()),
            settle,
        )
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Writer,
    /// One read connection; reads are short, and a std mutex is fine because
    /// it is only taken on blocking threads, never across an await.
    reader: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        }
        let write_conn = sqlite::open(path)?;
        let read_conn = sqlite::open(path)?;
        let writer = Writer::spawn(write_conn).map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            reader: Arc::new(Mutex::new(read_conn)),
        })
    }

    /// An exclusive lock on `<database>.lock`, which the operating system
    /// releases when this process exits or dies; None if another holds it.
    pub fn take_engine_lease(&self) -> Result<Option<EngineLease>, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Database(format!("{}: {e}", lock_path.to_string_lossy())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(EngineLease::file(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Database(format!(
                "{}: {e}",
                lock_path.to_string_lossy()
            ))),
        }
    }

    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            query(&reader.lock().unwrap_or_else(|p| p.into_inner()))
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Takes a place in the writer's queue for an order not yet decided.
    pub async fn insert_slot(&self) -> Result<SqliteSlot, StoreError> {
        self.writer.slot().await.map(SqliteSlot)
    }

    /// Commits orders decided elsewhere (the Redis engine) in one group
    /// commit; orders already stored are skipped.
    pub async fn insert_many(&self, orders: Vec<Keyed>) -> Result<Vec<OrderId>, StoreError> {
        self.writer
            .run(move |conn| sqlite::insert_many(conn, &orders))
            .await
    }

    pub async fn cancel(
        &self,
        id: OrderId,
        user: UserId,
        now: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        self.writer
            .run(move |conn| sqlite::cancel(conn, &id, &user, now))
            .await
    }

    pub async fn pay(
        &self,
        notice: PaymentNotice,
        now: Timestamp,
    ) -> Result<PayOutcome, StoreError> {
        self.writer
            .run(move |conn| sqlite::pay(conn, &notice, now))
            .await
    }

    pub async fn expire_due(&self, now: Timestamp, max: usize) -> Result<Vec<Order>, StoreError> {
        self.writer
            .run(move |conn| sqlite::expire_due(conn, now, max))
            .await
    }

    /// Returns once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.writer.run(|_| Ok(())).await
    }

    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.read(move |conn| sqlite::get(conn, id.as_str())).await
    }

    pub async fn list_for_user(&self, user: UserId) -> Result<Vec<Order>, StoreError> {
        self.read(move |conn| sqlite::list_for_user(conn, &user))
            .await
    }

    pub async fn round_orders(&self, round_id: String) -> Result<Vec<StoredOrder>, StoreError> {
        self.read(move |conn| sqlite::round_orders(conn, &round_id))
            .await
    }

    pub async fn restock_ids(&self, round_id: String) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| sqlite::restock_ids(conn, &round_id))
            .await
    }

    pub async fn releases_due(&self, max: usize) -> Result<Vec<Order>, StoreError> {
        self.read(move |conn| sqlite::releases_due(conn, max)).await
    }

    pub async fn mark_released(&self, ids: Vec<OrderId>) -> Result<(), StoreError> {
        self.writer
            .run(move |conn| sqlite::mark_released(conn, &ids))
            .await
    }

    pub async fn engine_snapshot(&self) -> Result<Vec<StoredOrder>, StoreError> {
        self.read(sqlite::engine_snapshot).await
    }

    pub async fn add_restock(
        &self,
        record: RestockRecord,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.writer
            .run(move |conn| sqlite::add_restock(conn, &record, now))
            .await
    }

    pub async fn restocks(&self, round_id: Option<String>) -> Result<Vec<Restock>, StoreError> {
        self.read(move |conn| sqlite::restocks(conn, round_id.as_deref()))
            .await
    }

    pub async fn status_counts(&self, round_id: String) -> Result<StatusCounts, StoreError> {
        self.read(move |conn| sqlite::status_counts(conn, &round_id))
            .await
    }

    pub async fn save_drop(
        &self,
        id: String,
        definition: String,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.writer
            .run(move |conn| sqlite::save_drop(conn, &id, &definition, now))
            .await
    }

    pub async fn saved_drops(&self) -> Result<Vec<String>, StoreError> {
        self.read(sqlite::saved_drops).await
    }

    pub fn queued(&self) -> usize {
        self.writer.queued()
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }
}
