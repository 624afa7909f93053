//! PostgreSQL: the connection pool, migrations, the engine lease, the
//! writer's task, and [`Sql`] for a connection. The writer task holds one
//! connection and runs the shared group commit (`writer.rs`); reads take
//! connections from the pool.
//!
//! Connections come from a maintained pool (deadpool-postgres), so a
//! database restarted under a running server is reconnected: a dead
//! connection is dropped and the next one is made afresh. A connection lost
//! while a batch commits leaves the commit's outcome unknown; the writer
//! then reads the batch's orders back before it reports anything, so a
//! committed order is never reported failed (and never undone).

use std::collections::HashSet;
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, GenericClient, NoTls};

use super::sql::{self, Column, Dialect, Insert, Row, Sql, Value};
use super::writer::{self, Job, Queue, Ran};
use super::{orders, EngineLease, StoreError, READ_TIMEOUT};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_orders.sql"),
    include_str!("../../migrations/postgres/0002_operations.sql"),
    include_str!("../../migrations/postgres/0003_recovery.sql"),
    include_str!("../../migrations/postgres/0004_order_states.sql"),
    include_str!("../../migrations/postgres/0005_orders_by_user.sql"),
    include_str!("../../migrations/postgres/0006_promotions.sql"),
    include_str!("../../migrations/postgres/0007_checkout.sql"),
    include_str!("../../migrations/postgres/0008_after_sale.sql"),
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

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own error (code, message) rather than "db error".
        match e.as_db_error() {
            Some(db) => StoreError::database(db.clone()),
            None => StoreError::database(e),
        }
    }
}

fn pg_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::database(e))?;
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
        .map_err(StoreError::database)
}

async fn connection(pool: &Pool) -> Result<Object, StoreError> {
    pool.get().await.map_err(StoreError::database)
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

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(text) => text.as_ref().to_sql(ty, out),
            // An integer parameter takes the width of the column it meets.
            Value::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                _ => n.to_sql(ty, out),
            },
        }
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty) || matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8)
    }

    to_sql_checked!();
}

fn value(row: &tokio_postgres::Row, i: usize) -> Result<Value<'static>, StoreError> {
    let ty = row.columns()[i].type_();
    Ok(match *ty {
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(i64::from).into(),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(i64::from).into(),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.into(),
        _ => row.try_get::<_, Option<String>>(i)?.into(),
    })
}

impl From<Option<i64>> for Value<'_> {
    fn from(n: Option<i64>) -> Self {
        n.map_or(Value::Null, Value::Int)
    }
}

impl From<Option<String>> for Value<'_> {
    fn from(text: Option<String>) -> Self {
        text.map_or(Value::Null, Value::from)
    }
}

fn refs<'a>(params: &'a [Value<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A PostgreSQL connection: the writer's transaction, or a pooled one.
pub(crate) struct PgDb<'a, C>(pub &'a C);

impl<C: GenericClient + Sync> Sql for PgDb<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn rows(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let rows = self.0.query(sql, &refs(params)).await?;
        rows.iter()
            .map(|row| {
                Ok(Row((0..row.len())
                    .map(|i| value(row, i))
                    .collect::<Result<_, StoreError>>()?))
            })
            .collect()
    }

    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        Ok(self.0.execute(sql, &refs(params)).await?)
    }

    async fn insert(
        &mut self,
        insert: &Insert,
        rows: Vec<Vec<Value<'_>>>,
    ) -> Result<Vec<bool>, StoreError> {
        // One array per column, every row in one statement.
        let arrays: Vec<Box<dyn ToSql + Sync + Send + '_>> = insert
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, column))| -> Box<dyn ToSql + Sync + Send + '_> {
                let cells = rows.iter().map(move |row| row.get(i));
                match column {
                    Column::Text => Box::new(
                        cells
                            .map(|v| match v {
                                Some(Value::Text(text)) => Some(text.as_ref()),
                                _ => None,
                            })
                            .collect::<Vec<Option<&str>>>(),
                    ),
                    Column::Int => Box::new(
                        cells
                            .map(|v| match v {
                                Some(Value::Int(n)) => Some(*n),
                                _ => None,
                            })
                            .collect::<Vec<Option<i64>>>(),
                    ),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let returned = self.0.query(&sql::postgres_insert(insert), &params).await?;
        let mut inserted: HashSet<String> = returned
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<_, _>>()?;
        // A key twice in one statement is one row: its first copy was
        // inserted, the second met it (as SQLite reports, row by row).
        Ok(rows
            .iter()
            .map(|row| matches!(row.first(), Some(Value::Text(key)) if inserted.remove(key.as_ref())))
            .collect())
    }
}

#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    url: String,
}

impl PgStore {
    /// Connects, migrates, and starts the writer task on `queue`.
    pub async fn open(url: &str, queue: Queue) -> Result<Self, StoreError> {
        let pool = pool(url)?;
        let mut conn = connection(&pool).await?;
        migrate(&mut conn).await?;
        drop(conn);
        tokio::spawn(run_writer(pool.clone(), queue));
        Ok(Self {
            pool,
            url: url.to_owned(),
        })
    }

    /// A pooled connection for reads.
    pub async fn connection(&self) -> Result<Object, StoreError> {
        connection(&self.pool).await
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
}

async fn run_writer(pool: Pool, mut queue: Queue) {
    let mut batch = Vec::with_capacity(writer::MAX_BATCH);
    // The writer's own connection, taken from the pool and kept; replaced
    // when the database closed it (a restart).
    let mut held: Option<Object> = None;
    while queue.recv_many(&mut batch, writer::MAX_BATCH).await > 0 {
        metrics::histogram!("dropgate_order_writer_batch_size").record(batch.len() as f64);
        write_batch(&pool, &mut held, &mut batch).await;
    }
}

/// Commits one batch and reports what became of each job. A batch that
/// meets no connection fails at once (the callers answer 503) rather than
/// waiting for the database to come back.
async fn write_batch(pool: &Pool, held: &mut Option<Object>, jobs: &mut Vec<Job>) {
    if held.as_ref().is_some_and(|client| client.is_closed()) {
        *held = None;
    }
    if held.is_none() {
        match connection(pool).await {
            Ok(client) => *held = Some(client),
            Err(e) => {
                tracing::error!(error = %e, jobs = jobs.len(), "order writer has no database connection");
                return fail_all(jobs, &e);
            }
        }
    }
    let Some(client) = held.as_mut() else {
        return fail_all(jobs, &StoreError::Closed);
    };
    let (ran, committed) = commit(client, jobs).await;
    match committed {
        Err(e) if client.is_closed() => {
            // The connection died mid-batch: the commit may have happened.
            *held = None;
            tracing::warn!(error = %e, jobs = ran.len(), "connection lost during a commit; reading the batch back");
            read_back(pool, ran, e).await
        }
        committed => {
            if let Err(e) = &committed {
                tracing::error!(error = %e, jobs = ran.len(), "order writer commit failed");
            }
            for job in ran {
                job.report(committed.clone());
            }
        }
    }
}

/// Runs the batch in one transaction and commits it; every job, ready to
/// report, and the commit's outcome.
async fn commit(client: &mut Client, jobs: &mut Vec<Job>) -> (Vec<Ran>, Result<(), StoreError>) {
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return (jobs.drain(..).map(Job::not_run).collect(), Err(e.into())),
    };
    let (ran, executed) = writer::run_batch(&mut PgDb(&tx), jobs).await;
    let committed = match executed {
        Ok(()) => tx.commit().await.map_err(StoreError::from),
        // Dropping the transaction rolls it back.
        Err(e) => Err(e),
    };
    (ran, committed)
}

fn fail_all(jobs: &mut Vec<Job>, e: &StoreError) {
    for job in jobs.drain(..) {
        job.not_run().report(Err(e.clone()));
    }
}

/// Settles a batch whose commit's outcome is unknown from what the database
/// holds now: an insert whose orders are all stored succeeded. A state
/// change's outcome stays unknown (reported failed); the change itself
/// recorded any stock it owes (`release_due`), so nothing is lost either
/// way. If the database cannot be read in time, inserts are reported
/// `OutcomeUnknown`, which never undoes a reservation.
async fn read_back(pool: &Pool, ran: Vec<Ran>, cause: StoreError) {
    let ids: Vec<&str> = ran
        .iter()
        .flat_map(|job| job.new_orders.iter().flatten().map(|(o, _)| o.id.as_str()))
        .collect();
    let deadline = tokio::time::Instant::now() + READ_BACK_FOR;
    let stored: Option<HashSet<String>> = loop {
        let attempt = async {
            let conn = connection(pool).await?;
            orders::stored_ids(&mut PgDb(&**conn), &ids).await
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
    for job in ran {
        let outcome = match (&job.new_orders, &stored) {
            (Some(new), Some(stored))
                if new.iter().all(|(o, _)| stored.contains(o.id.as_str())) =>
            {
                Ok(())
            }
            (Some(_), None) => Err(StoreError::OutcomeUnknown),
            _ => Err(cause.clone()),
        };
        job.report(outcome);
    }
}
