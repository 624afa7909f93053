//! SQLite: opening the file with WAL and full sync, migrations, the engine
//! lease, the writer's thread, and [`Sql`] for a connection. Reads run on a
//! connection of their own beside the writer's (WAL lets them).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::sql::{self, Dialect, Insert, Row, Sql, Value};
use super::writer::{self, Job, Queue};
use super::{EngineLease, StoreError};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_orders.sql"),
    include_str!("../../migrations/sqlite/0002_operations.sql"),
    include_str!("../../migrations/sqlite/0003_recovery.sql"),
    include_str!("../../migrations/sqlite/0004_order_states.sql"),
    include_str!("../../migrations/sqlite/0005_orders_by_user.sql"),
    include_str!("../../migrations/sqlite/0006_promotions.sql"),
    include_str!("../../migrations/sqlite/0007_checkout.sql"),
    include_str!("../../migrations/sqlite/0008_after_sale.sql"),
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::database(e)
    }
}

/// Opens the database file, creating it and its schema when new.
fn open(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL makes every commit reach the disk before it returns: a 201 is
    // only sent after its order's commit, so this is what makes wins durable.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // 16 MiB of page cache keeps the index pages that every insert walks in
    // memory (measured: more than this made each commit slower).
    conn.pragma_update(None, "cache_size", -16_384)?;
    // Checkpoints copy the WAL into the database file with an fsync, in the
    // committing (writer) thread, stalling the orders waiting on it. Every
    // 4,096 pages (16 MiB) measured the best balance of throughput and tail
    // latency against 1,000 (default) and 16,384; see BENCHMARKS.md. A
    // checkpoint on its own thread was tried too: no faster, and under a
    // steady storm the WAL then grew without bound.
    conn.pragma_update(None, "wal_autocheckpoint", 4_096)?;

    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// SQLite's statements never wait on anything but the disk, so the store's
/// futures over a SQLite connection finish on their first poll: they are
/// run to the end here, on the calling (blocking) thread.
pub(crate) fn finish_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

fn value(raw: ValueRef<'_>) -> Result<Value<'static>, StoreError> {
    match raw {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Integer(n) => Ok(Value::Int(n)),
        ValueRef::Text(text) => Ok(Value::from(
            std::str::from_utf8(text)
                .map_err(|_| StoreError::Corrupt("text that is not UTF-8".into()))?
                .to_owned(),
        )),
        ValueRef::Real(_) | ValueRef::Blob(_) => Err(StoreError::Corrupt(
            "a column of a type never stored".into(),
        )),
    }
}

fn rows_of(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let width = row.as_ref().column_count();
        let values = (0..width)
            .map(|i| value(row.get_ref(i)?))
            .collect::<Result<_, StoreError>>()?;
        out.push(Row(values));
    }
    Ok(out)
}

/// A SQLite connection (the writer's, inside its transaction, or the reader's).
pub(crate) struct SqliteDb<'a>(&'a Connection);

impl Sql for SqliteDb<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn rows(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(&sql::sqlite_placeholders(sql))?;
        let rows = rows_of(stmt.query(rusqlite::params_from_iter(params))?);
        rows
    }

    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(&sql::sqlite_placeholders(sql))?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    async fn insert(
        &mut self,
        insert: &Insert,
        rows: Vec<Vec<Value<'_>>>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut stmt = self.0.prepare_cached(&sql::sqlite_insert(insert))?;
        rows.iter()
            .map(|row| Ok(stmt.execute(rusqlite::params_from_iter(row))? == 1))
            .collect()
    }

    fn transaction_lost(&self) -> bool {
        // Some errors (SQLITE_FULL, an I/O error, RAISE(ROLLBACK)) make
        // SQLite roll the whole transaction back on its own; the connection
        // is then in autocommit, and later statements would commit one by one.
        self.0.is_autocommit()
    }
}

#[derive(Clone)]
pub(crate) struct SqliteStore {
    path: PathBuf,
    /// One read connection; reads are short, and a std mutex is fine because
    /// it is only taken on blocking threads, never across an await.
    reader: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens the store and starts its writer thread on `queue`.
    pub fn open(path: &Path, queue: Queue) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::database(format!("{}: {e}", dir.display())))?;
        }
        let write_conn = open(path)?;
        let read_conn = open(path)?;
        std::thread::Builder::new()
            .name("order-writer".into())
            .spawn(move || run_writer(write_conn, queue))
            .map_err(StoreError::database)?;
        Ok(Self {
            path: path.to_owned(),
            reader: Arc::new(Mutex::new(read_conn)),
        })
    }

    /// Runs `read` on the read connection, on a blocking thread.
    pub async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteDb<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            read(&mut SqliteDb(&conn))
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// An exclusive lock on `<database>.lock`, which the operating system
    /// releases when this process exits or dies; None if another holds it.
    pub fn take_engine_lease(&self) -> Result<Option<EngineLease>, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let failed = |e: std::io::Error| {
            StoreError::database(format!("{}: {e}", lock_path.to_string_lossy()))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(EngineLease::file(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
        }
    }
}

fn run_writer(mut conn: Connection, mut queue: Queue) {
    let mut batch = Vec::with_capacity(writer::MAX_BATCH);
    while queue.blocking_recv_many(&mut batch, writer::MAX_BATCH) > 0 {
        metrics::histogram!("dropgate_order_writer_batch_size").record(batch.len() as f64);
        commit(&mut conn, &mut batch);
    }
}

/// Runs one batch in one transaction and reports every job's outcome once
/// the commit is on disk (or has failed).
fn commit(conn: &mut Connection, jobs: &mut Vec<Job>) {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            tracing::error!(error = %e, jobs = jobs.len(), "order writer cannot begin a transaction");
            for job in jobs.drain(..) {
                job.not_run().report(Err(e.clone()));
            }
            return;
        }
    };
    let (ran, executed) = finish_now(writer::run_batch(&mut SqliteDb(&tx), jobs));
    // A failed batch is rolled back when `tx` is dropped.
    let committed = executed.and_then(|()| tx.commit().map_err(StoreError::from));
    if let Err(e) = &committed {
        tracing::error!(error = %e, jobs = ran.len(), "order writer commit failed");
    }
    for job in ran {
        job.report(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::created;
    use crate::order::OrderStatus;
    use crate::order_states::transition;
    use crate::store::event_rows::Recorded;
    use crate::store::{orders, RestockRecord};
    use tokio::sync::oneshot;

    fn restock(id: &str) -> (Job, oneshot::Receiver<Result<bool, StoreError>>) {
        let (reply, result) = oneshot::channel();
        let sku = crate::domain::SkuId::parse("sku-1").unwrap();
        let job = Job::AddRestock {
            record: RestockRecord::new(id, &crate::domain::RoundId::parse("d@1").unwrap(), &sku, 1),
            now: jiff::Timestamp::UNIX_EPOCH,
            reply,
        };
        (job, result)
    }

    fn restocks_stored(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM restocks", [], |r| r.get(0))
            .unwrap()
    }

    /// A trigger makes the restock with id `bad` fail as `how` says.
    fn failing(how: &str) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("orders.db")).unwrap();
        conn.execute_batch(&format!(
            "CREATE TRIGGER fail BEFORE INSERT ON restocks WHEN NEW.id = 'bad' \
             BEGIN SELECT RAISE({how}, 'refused by the test'); END;"
        ))
        .unwrap();
        (dir, conn)
    }

    /// What SQLite does on SQLITE_FULL or an I/O error in some statements:
    /// it rolls the whole transaction back and leaves autocommit on
    /// (RAISE(ROLLBACK) does exactly that).
    #[test]
    fn a_batch_whose_transaction_sqlite_rolled_back_fails_whole_and_stores_nothing() {
        let (_dir, mut conn) = failing("ROLLBACK");
        let (before, before_result) = restock("a");
        let (rollback, rollback_result) = restock("bad");
        let (after, after_result) = restock("b");
        commit(&mut conn, &mut vec![before, rollback, after]);

        for mut result in [before_result, rollback_result, after_result] {
            assert!(
                matches!(result.try_recv(), Ok(Err(_))),
                "every job is reported failed"
            );
        }
        assert_eq!(
            restocks_stored(&conn),
            0,
            "no job of the failed batch is stored"
        );
    }

    #[test]
    fn a_job_that_fails_alone_leaves_the_others_committed() {
        let (_dir, mut conn) = failing("ABORT");
        let (good, mut good_result) = restock("a");
        let (bad, mut bad_result) = restock("bad");
        let (after, mut after_result) = restock("b");
        commit(&mut conn, &mut vec![good, bad, after]);
        assert!(matches!(good_result.try_recv(), Ok(Ok(true))));
        assert!(matches!(bad_result.try_recv(), Ok(Err(_))));
        assert!(matches!(after_result.try_recv(), Ok(Ok(true))));
        assert_eq!(restocks_stored(&conn), 2);
    }

    fn pending_order() -> crate::order::Order {
        let now = jiff::Timestamp::UNIX_EPOCH;
        crate::order::Order {
            id: crate::domain::OrderId::generate(),
            drop_id: crate::domain::DropId::parse("d").unwrap(),
            round_id: crate::domain::RoundId::parse("d@1").unwrap(),
            sku: crate::domain::SkuId::parse("sku-1").unwrap(),
            quantity: crate::domain::Quantity::new(1).unwrap(),
            user_id: crate::domain::UserId::parse("alice").unwrap(),
            status: OrderStatus::PendingPayment,
            unit_price: "1.00".parse().unwrap(),
            amount_due: "1.00".parse().unwrap(),
            deposit_due: "1.00".parse().unwrap(),
            currency: crate::money::Currency::Cny,
            created_at: now,
            pay_by: now,
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
        }
    }

    /// Every pair of statuses, through the store's one move statement: the
    /// store moves an order exactly along the state machine's arrows, stores
    /// every status, ends final ones and marks released units as owed.
    #[test]
    fn the_store_moves_orders_along_the_state_machine_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("orders.db")).unwrap();
        let order = pending_order();
        let mut plain = SqliteDb(&conn);
        let mut db = Recorded::new(&mut plain);
        let keyed = (order.clone(), None);
        finish_now(orders::insert_orders(
            &mut db,
            &[&keyed],
            vec![created(&order)],
        ))
        .unwrap();
        let now = jiff::Timestamp::UNIX_EPOCH;
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                conn.execute(
                    "UPDATE orders SET status = ?1, ended_at = NULL, release_due = 0",
                    [from.as_str()],
                )
                .unwrap();
                let at = crate::order::Order {
                    status: from,
                    ..order.clone()
                };
                let events_before = db.mark();
                let moved = finish_now(orders::move_order(&mut db, &at, to, now, &[])).unwrap();
                let events = db.mark() - events_before;
                let (status, ended, owed): (String, Option<String>, i64) = conn
                    .query_row(
                        "SELECT status, ended_at, release_due FROM orders",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .unwrap();
                let pair = format!("{} → {}", from.as_str(), to.as_str());
                match transition(from, to) {
                    Some(arrow) => {
                        assert_eq!(moved.map(|o| o.status), Some(to), "{pair}");
                        assert_eq!(status, to.as_str(), "{pair}");
                        assert_eq!(ended.is_some(), to.is_final(), "{pair}");
                        assert_eq!(owed == 1, arrow.returns_units, "{pair}");
                        assert_eq!(events, 1, "{pair} records its event");
                    }
                    None => {
                        assert!(moved.is_none(), "{pair} is refused");
                        assert_eq!(status, from.as_str(), "{pair} changes nothing");
                        assert_eq!((ended, owed), (None, 0), "{pair} changes nothing");
                        assert_eq!(events, 0, "{pair} records no event");
                    }
                }
            }
        }
    }

    #[test]
    fn a_move_from_a_status_the_order_has_left_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("orders.db")).unwrap();
        let order = pending_order();
        let mut plain = SqliteDb(&conn);
        let mut db = Recorded::new(&mut plain);
        finish_now(orders::insert_orders(
            &mut db,
            &[&(order.clone(), None)],
            vec![created(&order)],
        ))
        .unwrap();
        let now = jiff::Timestamp::UNIX_EPOCH;
        let paid = finish_now(orders::move_order(
            &mut db,
            &order,
            OrderStatus::Paid,
            now,
            &[],
        ));
        assert!(paid.unwrap().is_some());
        // A second decision taken from the stale copy (still pending).
        let late = finish_now(orders::move_order(
            &mut db,
            &order,
            OrderStatus::Cancelled,
            now,
            &[],
        ));
        assert!(late.unwrap().is_none());
        let status: String = conn
            .query_row("SELECT status FROM orders", [], |r| r.get(0))
            .unwrap();
        assert_eq!(status, "paid");
    }

    /// "My orders" reads two partial indexes (unpaid, and the rest) so that
    /// a win writes only the small one: every status is listed all the same,
    /// oldest first, and neither half falls back to reading every order.
    #[test]
    fn a_shoppers_list_holds_every_status_through_the_two_user_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("orders.db")).unwrap();
        let mut plain = SqliteDb(&conn);
        let mut db = Recorded::new(&mut plain);
        let now = jiff::Timestamp::UNIX_EPOCH;
        let mut alices = Vec::new();
        for _ in 0..3 {
            let order = pending_order();
            finish_now(orders::insert_orders(
                &mut db,
                &[&(order.clone(), None)],
                vec![created(&order)],
            ))
            .unwrap();
            alices.push(order);
        }
        let bobs = crate::order::Order {
            id: crate::domain::OrderId::generate(),
            user_id: crate::domain::UserId::parse("bob").unwrap(),
            ..pending_order()
        };
        finish_now(orders::insert_orders(
            &mut db,
            &[&(bobs.clone(), None)],
            vec![created(&bobs)],
        ))
        .unwrap();
        for (order, to) in [
            (&alices[0], OrderStatus::Paid),
            (&alices[2], OrderStatus::Expired),
        ] {
            let moved = finish_now(orders::move_order(&mut db, order, to, now, &[]));
            assert!(moved.unwrap().is_some());
        }

        let alice = crate::domain::UserId::parse("alice").unwrap();
        let listed = finish_now(orders::list_for_user(&mut db, &alice)).unwrap();
        let seen: Vec<_> = listed.iter().map(|o| (o.id.clone(), o.status)).collect();
        let expected = vec![
            (alices[0].id.clone(), OrderStatus::Paid),
            (alices[1].id.clone(), OrderStatus::PendingPayment),
            (alices[2].id.clone(), OrderStatus::Expired),
        ];
        assert_eq!(seen, expected);

        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                orders::search_sql("id", true)
            ))
            .unwrap()
            .query_map(
                rusqlite::params!["alice", None::<String>, None::<String>, "", 50],
                |r| r.get(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("USING INDEX orders_unpaid_by_user"), "{plan}");
        assert!(plan.contains("USING INDEX orders_by_user"), "{plan}");
        assert!(!plan.contains("SCAN orders"), "{plan}");
    }
}
