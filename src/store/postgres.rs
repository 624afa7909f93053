//! Orders in PostgreSQL. One writer task owns a connection and commits
//! whatever jobs have queued in one transaction (group commit): all the
//! batch's new orders in one multi-row insert, each state change in a
//! savepoint of its own so one failure cannot sink the others. Reads use a
//! second connection, which pipelines concurrent queries.

use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, GenericClient, NoTls, Row};

use super::{
    db_time, pay_step, restocks_sql, snapshot_sql, status_counts_sql, CancelOutcome, Keyed,
    OrderColumns, PayOutcome, PayStep, Restock, StatusCounts, StoreError, StoredOrder,
    ORDER_COLUMNS,
};
use crate::domain::{IdempotencyKey, OrderId, UserId};
use crate::order::{Order, OrderStatus};
use crate::payment::PaymentNotice;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_orders.sql"),
    include_str!("../../migrations/postgres/0002_operations.sql"),
];
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
        reply: Reply<()>,
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
    Cancel(CancelOutcome),
    Pay(PayOutcome),
    Expired(Vec<Order>),
}

#[derive(Clone)]
pub struct PgStore {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Client>,
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
        async move { result.await.map_err(|_| StoreError::Closed)? }
    }
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
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
        let mut writer = connect(url).await?;
        migrate(&mut writer).await?;
        let reader = Arc::new(connect(url).await?);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(writer, queue));
        Ok(Self { jobs, reader })
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

    pub async fn insert_many(&self, orders: Vec<Keyed>) -> Result<(), StoreError> {
        self.submit(|reply| Job::Insert {
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

    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(
            select(self.reader.as_ref(), "WHERE id = $1", &[&id.as_str()])
                .await?
                .pop(),
        )
    }

    pub async fn list_for_user(&self, user: UserId) -> Result<Vec<Order>, StoreError> {
        select(
            self.reader.as_ref(),
            "WHERE user_id = $1 ORDER BY id",
            &[&user.as_str()],
        )
        .await
    }

    pub async fn live_in_round(&self, round_id: String) -> Result<Vec<Order>, StoreError> {
        let live = "WHERE round_id = $1 AND status IN ('pending_payment', 'paid')";
        select(self.reader.as_ref(), live, &[&round_id]).await
    }

    pub async fn engine_snapshot(&self) -> Result<Vec<StoredOrder>, StoreError> {
        let rows = self.reader.query(&snapshot_sql(), &[]).await?;
        rows.iter()
            .map(|row| StoredOrder::new(order_from_row(row)?, row.try_get(12)?, row.try_get(13)?))
            .collect()
    }

    // Operators' writes are rare and each is one statement: they go straight
    // to the database rather than through the order writer's queue.
    pub async fn add_restock(&self, restock: Restock, now: Timestamp) -> Result<(), StoreError> {
        self.reader
            .execute(
                "INSERT INTO restocks (round_id, sku, units, created_at) VALUES ($1, $2, $3, $4)",
                &[
                    &restock.round_id,
                    &restock.sku,
                    &(restock.units as i64),
                    &db_time(now),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn restocks(&self, round_id: Option<String>) -> Result<Vec<Restock>, StoreError> {
        let rows = self
            .reader
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

    pub async fn status_counts(&self, round_id: String) -> Result<StatusCounts, StoreError> {
        let rows = self
            .reader
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
        let inserted = self
            .reader
            .execute(
                "INSERT INTO drops (id, definition, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &definition, &db_time(now)],
            )
            .await?;
        Ok(inserted == 1)
    }

    pub async fn saved_drops(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .reader
            .query("SELECT definition FROM drops ORDER BY created_at, id", &[])
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    pub async fn ping(&self) -> bool {
        self.reader.simple_query("SELECT 1").await.is_ok()
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

async fn run_writer(mut client: Client, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!("dropgate_order_writer_batch_size").record(batch.len() as f64);
        let results = match commit(&mut client, &batch).await {
            Ok(results) => results,
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "order writer commit failed");
                batch.iter().map(|_| Err(e.clone())).collect()
            }
        };
        for (job, result) in batch.drain(..).zip(results) {
            deliver(job, result);
        }
    }
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
    insert_orders(&tx, &new_orders).await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = match job {
            Job::Insert { .. } | Job::Flush { .. } => Ok(Done::Nothing),
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
        Job::Insert { settle, reply, .. } => {
            let result = result.map(|_| ());
            if let Some(settle) = settle {
                settle(&result);
            }
            let _ = reply.send(result);
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

/// All new orders of a batch in one statement; ids already stored are skipped.
async fn insert_orders(tx: &impl GenericClient, orders: &[&Keyed]) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
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
    tx.execute(
        "INSERT INTO orders (id, drop_id, round_id, sku, user_id, quantity, status, unit_price, amount_due, \
         deposit_due, currency, created_at, pay_by, idempotency_key, request_fingerprint) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
         $14::text[], $15::text[]) \
         ON CONFLICT (id) DO NOTHING",
        &[
            &ids, &drops, &rounds, &skus, &users, &quantities, &statuses, &prices, &dues, &deposits,
            &currencies, &created, &pay_by, &keys, &prints,
        ],
    )
    .await?;
    Ok(())
}

/// Moves a pending order to an end state; the row as it now is, if it moved.
async fn end(
    tx: &impl GenericClient,
    id: &OrderId,
    to: OrderStatus,
    now: Timestamp,
) -> Result<Option<Order>, StoreError> {
    let sql = format!(
        "UPDATE orders SET status = $2, ended_at = $3 WHERE id = $1 AND status = 'pending_payment' \
         RETURNING {ORDER_COLUMNS}"
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
        "UPDATE orders SET status = 'expired', ended_at = $1 WHERE id IN ( \
             SELECT id FROM orders WHERE status = 'pending_payment' AND pay_by <= $1 \
             ORDER BY pay_by LIMIT $2 FOR UPDATE SKIP LOCKED) \
         AND status = 'pending_payment' RETURNING {ORDER_COLUMNS}"
    );
    let rows = tx.query(&sql, &[&db_time(now), &(max as i64)]).await?;
    rows.iter().map(order_from_row).collect()
}
