//! Orders in PostgreSQL. One writer task holds a connection and commits
//! whatever jobs have queued in one transaction (group commit): all the
//! batch's new orders in one multi-row insert, each state change in a
//! savepoint of its own so one failure cannot sink the others. Reads take
//! connections from a pool.
//!
//! Connections come from a maintained pool (deadpool-postgres), so a
//! database restarted under a running server is reconnected: a dead
//! connection is dropped and the next one is made afresh. A connection lost
//! while a batch commits leaves the commit's outcome unknown; the writer
//! then reads the batch's orders back before it reports anything, so a
//! committed order is never reported failed (and never undone).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, GenericClient, NoTls, Row};

use super::{
    db_time, pay_step, restocks_sql, round_orders_sql, snapshot_sql, status_counts_sql,
    CancelOutcome, EngineLease, Keyed, OrderColumns, PayOutcome, PayStep, Restock, RestockRecord,
    StatusCounts, StoreError, StoredOrder, ORDER_COLUMNS, READ_TIMEOUT,
};
use crate::domain::{IdempotencyKey, OrderId, UserId};
use crate::order::{Order, OrderStatus};
use crate::payment::PaymentNotice;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_orders.sql"),
    include_str!("../../migrations/postgres/0002_operations.sql"),
    include_str!("../../migrations/postgres/0003_recovery.sql"),
];
/// Connections for reads; the writer and the engine lease hold one each on top.
const POOL_SIZE: usize = 8;
/// A connection attempt to a database that does not answer gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the writer keeps trying to read back a batch whose commit's
/// outcome is unknown before it reports the outcome as unknown.
const READ_BACK_FOR: Duration = Duration::from_secs(10);
/// The advisory lock the embedded engine holds while it sells from this
/// database: its stock lives in its memory, so a second one would resell.
const ENGINE_LEASE_LOCK: i64 = 0x6472_6f70_6761_7465; // "dropgate"
/// Jobs committed together at most; bounds the latency one commit adds.
const MAX_BATCH: usize = 2048;
/// Jobs that may wait for the writer; a full queue makes callers wait.
const QUEUE_DEPTH: usize = 64 * 1024;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(match e.as_db_error() {
            Some(db) => db.to_string(),
            None => e.to_string(),
        })
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
/// Sync because the writer holds the batch across awaits.
type Settle = Box<dyn FnOnce(&Result<(), StoreError>) + Send + Sync>;

enum Job {
    Insert {
        orders: Vec<Keyed>,
        settle: Option<Settle>,
        /// The ids not stored because they collide with another stored order.
        reply: Reply<HashSet<String>>,
    },
    Cancel {
        id: OrderId,
        user: UserId,
        now: Timestamp,
        reply: Reply<CancelOutcome>,
    },
    Pay {
        notice: PaymentNotice,
        now: Timestamp,
        reply: Reply<PayOutcome>,
    },
    Expire {
        now: Timestamp,
        max: usize,
        reply: Reply<Vec<Order>>,
    },
    Flush {
        reply: Reply<()>,
    },
}

/// What one job did inside the batch's transaction.
enum Done {
    Nothing,
    /// The ids of the batch's orders that collided with another stored
    /// order (the same idempotency key under another id) and were not stored.
    Inserted(Arc<HashSet<String>>),
    Cancel(CancelOutcome),
    Pay(PayOutcome),
    Expired(Vec<Order>),
}

#[derive(Clone)]
pub struct PgStore {
    jobs: mpsc::Sender<Job>,
    pool: Pool,
    url: String,
}

/// A place in the writer's queue; queueing with it cannot wait or be cancelled.
pub struct PgSlot(mpsc::OwnedPermit<Job>);

impl PgSlot {
    pub fn insert(
        self,
        order: Order,
        idempotency: Option<(IdempotencyKey, String)>,
        settle: impl FnOnce(&Result<(), StoreError>) + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> {
        let (reply, result) = oneshot::channel();
        self.0.send(Job::Insert {
            orders: vec![(order, idempotency)],
            settle: Some(Box::new(settle)),
            reply,
        });
        async move { result.await.map_err(|_| StoreError::Closed)?.map(|_| ()) }
    }
}

fn pg_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Database(e.to_string()))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

/// The pool: a connection found closed (the database restarted) is
/// dropped when taken, and a new one made; every wait is bounded.
fn pool(url: &str) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        pg_config(url)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE + 1)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(READ_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Database(e.to_string()))
}

async fn connection(pool: &Pool) -> Result<Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Database(format!("no database connection: {e}")))
}

/// A connection of its own that holds the engine's advisory lock, or None
/// if another session holds it.
async fn lock_session(url: &str) -> Result<Option<Client>, StoreError> {
    let (client, connection) = pg_config(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the engine lease's connection ended");
        }
    });
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&ENGINE_LEASE_LOCK])
        .await?;
    Ok(row.try_get::<_, bool>(0)?.then_some(client))
}

/// Watches the lease's connection. A restarted database drops the lock with
/// the session: it is taken again on a new connection, and if another
/// instance took it meanwhile, this one has lost it for good.
async fn keep_lease(url: String, mut client: Client, held: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !client.is_closed() {
            continue;
        }
        held.store(false, Ordering::SeqCst);
        tracing::warn!("the database dropped the engine lease's session; taking the lease again");
        loop {
            match lock_session(&url).await {
                Ok(Some(again)) => {
                    client = again;
                    held.store(true, Ordering::SeqCst);
                    tracing::info!("engine lease taken again");
                    break;
                }
                Ok(None) => {
                    tracing::error!(
                        "another embedded-engine instance took this database's lease: this one no longer sells"
                    );
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        .await?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        let tx = client.transaction().await?;
        // Several instances may start together: one migrates, the others wait here.
        tx.batch_execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?;
        if done.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = pool(url)?;
        let mut conn = connection(&pool).await?;
        migrate(&mut conn).await?;
        drop(conn);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(pool.clone(), queue));
        Ok(Self {
            jobs,
            pool,
            url: url.to_owned(),
        })
    }

    /// Takes the embedded engine's lease on this database: a session
    /// advisory lock on a connection of its own, released by PostgreSQL the
    /// moment this process dies. None if another instance holds it.
    pub async fn take_engine_lease(&self) -> Result<Option<EngineLease>, StoreError> {
        let Some(client) = lock_session(&self.url).await? else {
            return Ok(None);
        };
        let held = Arc::new(AtomicBool::new(true));
        let keeper = tokio::spawn(keep_lease(self.url.clone(), client, held.clone()));
        Ok(Some(EngineLease::postgres(held, keeper)))
    }

    async fn submit<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn insert_slot(&self) -> Result<PgSlot, StoreError> {
        self.jobs
            .clone()
            .reserve_owned()
            .await
            .map(PgSlot)
            .map_err(|_| StoreError::Closed)
    }

    pub async fn insert_many(&self, orders: Vec<Keyed>) -> Result<Vec<OrderId>, StoreError> {
        let ids: Vec<OrderId> = orders.iter().map(|(o, _)| o.id.clone()).collect();
        let refused = self
            .submit(|reply| Job::Insert {
                orders,
                settle: None,
                reply,
            })
            .await?;
        Ok(ids
            .into_iter()
            .filter(|id| refused.contains(id.as_str()))
            .collect())
    }

    pub async fn cancel(
        &self,
        id: OrderId,
        user: UserId,
        now: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        self.submit(|reply| Job::Cancel {
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
        now: Timestamp,
    ) -> Result<PayOutcome, StoreError> {
        self.submit(|reply| Job::Pay { notice, now, reply }).await
    }

    pub async fn expire_due(&self, now: Timestamp, max: usize) -> Result<Vec<Order>, StoreError> {
        self.submit(|reply| Job::Expire { now, max, reply }).await
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.submit(|reply| Job::Flush { reply }).await
    }

    async fn orders_where(
        &self,
        tail: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Order>, StoreError> {
        select(&**connection(&self.pool).await?, tail, params).await
    }

    async fn keyed_where(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let rows = connection(&self.pool).await?.query(sql, params).await?;
        rows.iter()
            .map(|row| StoredOrder::new(order_from_row(row)?, row.try_get(12)?, row.try_get(13)?))
            .collect()
    }

    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(self
            .orders_where("WHERE id = $1", &[&id.as_str()])
            .await?
            .pop())
    }

    pub async fn list_for_user(&self, user: UserId) -> Result<Vec<Order>, StoreError> {
        self.orders_where("WHERE user_id = $1 ORDER BY id", &[&user.as_str()])
            .await
    }

    pub async fn round_orders(&self, round_id: String) -> Result<Vec<StoredOrder>, StoreError> {
        self.keyed_where(&round_orders_sql("$1"), &[&round_id])
            .await
    }

    pub async fn engine_snapshot(&self) -> Result<Vec<StoredOrder>, StoreError> {
        self.keyed_where(&snapshot_sql(), &[]).await
    }

    pub async fn releases_due(&self, max: usize) -> Result<Vec<Order>, StoreError> {
        self.orders_where("WHERE release_due = 1 LIMIT $1", &[&(max as i64)])
            .await
    }

    // Operators' writes and the release marks are rare single statements:
    // they go straight to the database rather than through the order
    // writer's queue. A release mark only clears a flag that the ending
    // transaction set and committed before the release was even tried.
    pub async fn mark_released(&self, ids: Vec<OrderId>) -> Result<(), StoreError> {
        let ids: Vec<&str> = ids.iter().map(OrderId::as_str).collect();
        connection(&self.pool)
            .await?
            .execute(
                "UPDATE orders SET release_due = 0 WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        Ok(())
    }

    pub async fn add_restock(
        &self,
        record: RestockRecord,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let restock = &record.restock;
        let inserted = connection(&self.pool)
            .await?
            .execute(
                "INSERT INTO restocks (round_id, sku, units, created_at, id) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
                &[
                    &restock.round_id,
                    &restock.sku,
                    &(restock.units as i64),
                    &db_time(now),
                    &record.id,
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    pub async fn restocks(&self, round_id: Option<String>) -> Result<Vec<Restock>, StoreError> {
        let rows = connection(&self.pool)
            .await?
            .query(&restocks_sql("$1::text"), &[&round_id])
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Restock {
                    round_id: row.try_get(0)?,
                    sku: row.try_get(1)?,
                    units: row.try_get::<_, i64>(2)? as u64,
                })
            })
            .collect()
    }

    pub async fn restock_ids(&self, round_id: String) -> Result<Vec<String>, StoreError> {
        let rows = connection(&self.pool)
            .await?
            .query(
                "SELECT id FROM restocks WHERE round_id = $1 AND id IS NOT NULL",
                &[&round_id],
            )
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    pub async fn status_counts(&self, round_id: String) -> Result<StatusCounts, StoreError> {
        let rows = connection(&self.pool)
            .await?
            .query(&status_counts_sql("$1"), &[&round_id])
            .await?;
        let mut counts = StatusCounts::default();
        for row in rows {
            counts.add(row.try_get(0)?, row.try_get::<_, i64>(1)? as u64);
        }
        Ok(counts)
    }

    pub async fn save_drop(
        &self,
        id: String,
        definition: String,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let inserted = connection(&self.pool)
            .await?
            .execute(
                "INSERT INTO drops (id, definition, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &definition, &db_time(now)],
            )
            .await?;
        Ok(inserted == 1)
    }

    pub async fn saved_drops(&self) -> Result<Vec<String>, StoreError> {
        let rows = connection(&self.pool)
            .await?
            .query("SELECT definition FROM drops ORDER BY created_at, id", &[])
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    pub async fn ping(&self) -> bool {
        match connection(&self.pool).await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}

fn order_from_row(row: &Row) -> Result<Order, StoreError> {
    OrderColumns {
        id: row.try_get(0)?,
        drop_id: row.try_get(1)?,
        round_id: row.try_get(2)?,
        sku: row.try_get(3)?,
        user_id: row.try_get(4)?,
        quantity: i64::from(row.try_get::<_, i32>(5)?),
        status: row.try_get(6)?,
        unit_price: row.try_get(7)?,
        amount_due: row.try_get(8)?,
        deposit_due: row.try_get(9)?,
        created_at: row.try_get(10)?,
        pay_by: row.try_get(11)?,
    }
    .into_order()
}

async fn select(
    client: &impl GenericClient,
    tail: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Order>, StoreError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders {tail}");
    client
        .query(&sql, params)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
}

async fn run_writer(pool: Pool, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer's own connection, taken from the pool and kept; replaced
    // when the database closed it (a restart).
    let mut held: Option<Object> = None;
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!("dropgate_order_writer_batch_size").record(batch.len() as f64);
        let results = write_batch(&pool, &mut held, &batch).await;
        for (job, result) in batch.drain(..).zip(results) {
            deliver(job, result);
        }
    }
}

/// Commits one batch and says what became of each job. A batch that meets
/// no connection fails at once (the callers answer 503) rather than waiting
/// for the database to come back.
async fn write_batch(
    pool: &Pool,
    held: &mut Option<Object>,
    batch: &[Job],
) -> Vec<Result<Done, StoreError>> {
    if held.as_ref().is_some_and(|client| client.is_closed()) {
        *held = None;
    }
    if held.is_none() {
        match connection(pool).await {
            Ok(client) => *held = Some(client),
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "order writer has no database connection");
                return batch.iter().map(|_| Err(e.clone())).collect();
            }
        }
    }
    let client = held.as_mut().expect("connected above");
    match commit(client, batch).await {
        Ok(results) => results,
        Err(e) if client.is_closed() => {
            // The connection died mid-batch: the commit may have happened.
            *held = None;
            tracing::warn!(error = %e, jobs = batch.len(), "connection lost during a commit; reading the batch back");
            read_back(pool, batch, e).await
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = batch.len(), "order writer commit failed");
            batch.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// Settles a batch whose commit's outcome is unknown from what the database
/// holds now: an insert whose orders are all stored succeeded. A state
/// change's outcome stays unknown (reported failed); the change itself
/// recorded any stock it owes (`release_due`), so nothing is lost either
/// way. If the database cannot be read in time, inserts are reported
/// `OutcomeUnknown`, which never undoes a reservation.
async fn read_back(pool: &Pool, batch: &[Job], cause: StoreError) -> Vec<Result<Done, StoreError>> {
    let ids: Vec<&str> = batch
        .iter()
        .flat_map(|job| match job {
            Job::Insert { orders, .. } => orders.iter().map(|(o, _)| o.id.as_str()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let deadline = tokio::time::Instant::now() + READ_BACK_FOR;
    let stored: Option<HashSet<String>> = loop {
        let attempt = async {
            let rows = connection(pool)
                .await?
                .query("SELECT id FROM orders WHERE id = ANY($1)", &[&ids])
                .await?;
            rows.iter()
                .map(|row| Ok(row.try_get::<_, String>(0)?))
                .collect::<Result<HashSet<String>, StoreError>>()
        };
        match attempt.await {
            Ok(stored) => break Some(stored),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => {
                tracing::error!(error = %e, "could not read back a batch whose commit is unknown");
                break None;
            }
        }
    };
    batch
        .iter()
        .map(|job| match (job, &stored) {
            (Job::Insert { orders, .. }, Some(stored))
                if orders.iter().all(|(o, _)| stored.contains(o.id.as_str())) =>
            {
                Ok(Done::Inserted(Arc::default()))
            }
            (Job::Insert { .. }, Some(_)) => Err(cause.clone()),
            (Job::Insert { .. }, None) => Err(StoreError::OutcomeUnknown),
            _ => Err(cause.clone()),
        })
        .collect()
}

/// Runs the batch in one transaction; per-job results, valid once committed.
async fn commit(
    client: &mut Client,
    batch: &[Job],
) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
    let mut tx = client.transaction().await?;
    let new_orders: Vec<&Keyed> = batch
        .iter()
        .flat_map(|job| match job {
            Job::Insert { orders, .. } => orders.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    let refused = Arc::new(insert_orders(&tx, &new_orders).await?);
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = match job {
            Job::Insert { .. } => Ok(Done::Inserted(refused.clone())),
            Job::Flush { .. } => Ok(Done::Nothing),
            transition => {
                let savepoint = tx.savepoint("job").await?;
                let result = transition_in(&savepoint, transition).await;
                match result {
                    Ok(_) => savepoint.commit().await?,
                    Err(_) => savepoint.rollback().await?,
                }
                result
            }
        };
        results.push(result);
    }
    tx.commit().await?;
    Ok(results)
}

async fn transition_in(tx: &impl GenericClient, job: &Job) -> Result<Done, StoreError> {
    match job {
        Job::Cancel { id, user, now, .. } => cancel(tx, id, user, *now).await.map(Done::Cancel),
        Job::Pay { notice, now, .. } => pay(tx, notice, *now).await.map(Done::Pay),
        Job::Expire { now, max, .. } => expire_due(tx, *now, *max).await.map(Done::Expired),
        Job::Insert { .. } | Job::Flush { .. } => Ok(Done::Nothing),
    }
}

fn deliver(job: Job, result: Result<Done, StoreError>) {
    let wrong = || StoreError::Corrupt("writer result of another kind".into());
    // A waiter that has gone away is no error: the commit stands.
    match job {
        Job::Insert {
            orders,
            settle,
            reply,
        } => {
            let refused = match result {
                Ok(Done::Inserted(refused)) => Ok(refused),
                Ok(_) => Err(wrong()),
                Err(e) => Err(e),
            };
            match settle {
                // One reservation of the embedded engine: not stored is a failure.
                Some(settle) => {
                    let result = refused.and_then(|refused| {
                        match orders.iter().find(|(o, _)| refused.contains(o.id.as_str())) {
                            Some((order, _)) => Err(StoreError::Conflict(order.id.to_string())),
                            None => Ok(HashSet::new()),
                        }
                    });
                    settle(&result.as_ref().map(|_| ()).map_err(Clone::clone));
                    let _ = reply.send(result);
                }
                None => {
                    let _ = reply.send(refused.map(|r| (*r).clone()));
                }
            }
        }
        Job::Flush { reply } => {
            let _ = reply.send(result.map(|_| ()));
        }
        Job::Cancel { reply, .. } => {
            let _ = reply.send(result.and_then(|d| {
                if let Done::Cancel(c) = d {
                    Ok(c)
                } else {
                    Err(wrong())
                }
            }));
        }
        Job::Pay { reply, .. } => {
            let _ = reply.send(result.and_then(|d| {
                if let Done::Pay(p) = d {
                    Ok(p)
                } else {
                    Err(wrong())
                }
            }));
        }
        Job::Expire { reply, .. } => {
            let _ = reply.send(result.and_then(|d| {
                if let Done::Expired(e) = d {
                    Ok(e)
                } else {
                    Err(wrong())
                }
            }));
        }
    }
}

/// All new orders of a batch in one statement; ids already stored are
/// skipped. Returns the ids that collided with another stored order (the
/// same idempotency key under another id) and so were not stored.
async fn insert_orders(
    tx: &impl GenericClient,
    orders: &[&Keyed],
) -> Result<HashSet<String>, StoreError> {
    if orders.is_empty() {
        return Ok(HashSet::new());
    }
    let text =
        |f: &dyn Fn(&Order) -> String| orders.iter().map(|(o, _)| f(o)).collect::<Vec<String>>();
    let ids = text(&|o| o.id.to_string());
    let drops = text(&|o| o.drop_id.to_string());
    let rounds = text(&|o| o.round_id.clone());
    let skus = text(&|o| o.sku.to_string());
    let users = text(&|o| o.user_id.to_string());
    let quantities: Vec<i32> = orders
        .iter()
        .map(|(o, _)| o.quantity.get() as i32)
        .collect();
    let statuses = text(&|o| o.status.as_str().to_owned());
    let prices = text(&|o| o.unit_price.to_string());
    let dues = text(&|o| o.amount_due.to_string());
    let deposits = text(&|o| o.deposit_due.to_string());
    let currencies = text(&|o| o.currency.as_str().to_owned());
    let created = text(&|o| db_time(o.created_at));
    let pay_by = text(&|o| db_time(o.pay_by));
    let keys: Vec<Option<&str>> = orders
        .iter()
        .map(|(_, k)| k.as_ref().map(|(k, _)| k.as_str()))
        .collect();
    let prints: Vec<Option<&str>> = orders
        .iter()
        .map(|(_, k)| k.as_ref().map(|(_, f)| f.as_str()))
        .collect();
    let inserted = tx
        .query(
            "INSERT INTO orders (id, drop_id, round_id, sku, user_id, quantity, status, unit_price, amount_due, \
             deposit_due, currency, created_at, pay_by, idempotency_key, request_fingerprint) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
             $14::text[], $15::text[]) \
             ON CONFLICT DO NOTHING RETURNING id",
            &[
                &ids, &drops, &rounds, &skus, &users, &quantities, &statuses, &prices, &dues, &deposits,
                &currencies, &created, &pay_by, &keys, &prints,
            ],
        )
        .await?;
    if inserted.len() == ids.len() {
        return Ok(HashSet::new());
    }
    // Skipped: already stored (a redelivery, fine) or colliding (refused).
    let inserted: HashSet<String> = inserted
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let skipped: Vec<&String> = ids.iter().filter(|id| !inserted.contains(*id)).collect();
    let present: HashSet<String> = tx
        .query("SELECT id FROM orders WHERE id = ANY($1)", &[&skipped])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    Ok(skipped
        .into_iter()
        .filter(|id| !present.contains(*id))
        .cloned()
        .collect())
}

/// Moves a pending order to an end state; the row as it now is, if it moved.
async fn end(
    tx: &impl GenericClient,
    id: &OrderId,
    to: OrderStatus,
    now: Timestamp,
) -> Result<Option<Order>, StoreError> {
    let sql = format!(
        "UPDATE orders SET status = $2, ended_at = $3, release_due = 1 \
         WHERE id = $1 AND status = 'pending_payment' RETURNING {ORDER_COLUMNS}"
    );
    let row = tx
        .query_opt(&sql, &[&id.as_str(), &to.as_str(), &db_time(now)])
        .await?;
    row.as_ref().map(order_from_row).transpose()
}

async fn cancel(
    tx: &impl GenericClient,
    id: &OrderId,
    user: &UserId,
    now: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(order) = select(tx, "WHERE id = $1 FOR UPDATE", &[&id.as_str()])
        .await?
        .pop()
    else {
        return Ok(CancelOutcome::NotFound);
    };
    if &order.user_id != user {
        return Ok(CancelOutcome::NotFound);
    }
    Ok(match end(tx, id, OrderStatus::Cancelled, now).await? {
        Some(cancelled) => CancelOutcome::Cancelled(cancelled),
        None => CancelOutcome::NotCancellable(order),
    })
}

async fn pay(
    tx: &impl GenericClient,
    notice: &PaymentNotice,
    now: Timestamp,
) -> Result<PayOutcome, StoreError> {
    let recorded = tx
        .query_opt(
            "SELECT id FROM orders WHERE transaction_id = $1",
            &[&notice.transaction_id],
        )
        .await?;
    if let Some(row) = recorded {
        // A gateway redelivers notifications: the same transaction is a no-op.
        let paid_id: String = row.try_get(0)?;
        if paid_id != notice.order_id.as_str() {
            return Ok(PayOutcome::TransactionUsedElsewhere);
        }
        let order = select(tx, "WHERE id = $1", &[&paid_id]).await?.pop();
        return order
            .map(PayOutcome::AlreadyRecorded)
            .ok_or(StoreError::Corrupt(paid_id));
    }
    let Some(order) = select(tx, "WHERE id = $1 FOR UPDATE", &[&notice.order_id.as_str()])
        .await?
        .pop()
    else {
        return Ok(PayOutcome::NotFound);
    };
    match pay_step(&order, notice, now) {
        PayStep::Refuse(outcome) => Ok(outcome),
        PayStep::Expire => Ok(match end(tx, &order.id, OrderStatus::Expired, now).await? {
            Some(expired) => PayOutcome::ExpiredNow(expired),
            None => PayOutcome::NotPayable(order),
        }),
        PayStep::Pay => {
            let sql = format!(
                "UPDATE orders SET status = 'paid', transaction_id = $2, payment_method = $3, paid_at = $4 \
                 WHERE id = $1 AND status = 'pending_payment' RETURNING {ORDER_COLUMNS}"
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                &order.id.as_str(),
                &notice.transaction_id,
                &notice.method.as_str(),
                &db_time(now),
            ];
            match tx.query_opt(&sql, &params).await? {
                Some(row) => Ok(PayOutcome::Paid(order_from_row(&row)?)),
                None => Ok(PayOutcome::NotPayable(order)),
            }
        }
    }
}

/// Expires up to `max` orders unpaid at `now`; rows another instance is
/// ending at the same moment are skipped, not waited for.
async fn expire_due(
    tx: &impl GenericClient,
    now: Timestamp,
    max: usize,
) -> Result<Vec<Order>, StoreError> {
    let sql = format!(
        "UPDATE orders SET status = 'expired', ended_at = $1, release_due = 1 WHERE id IN ( \
             SELECT id FROM orders WHERE status = 'pending_payment' AND pay_by <= $1 \
             ORDER BY pay_by LIMIT $2 FOR UPDATE SKIP LOCKED) \
         AND status = 'pending_payment' RETURNING {ORDER_COLUMNS}"
    );
    let rows = tx.query(&sql, &[&db_time(now), &(max as i64)]).await?;
    rows.iter().map(order_from_row).collect()
}
