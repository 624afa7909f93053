//! The group-commit writer: one thread owns the write connection and commits
//! whatever jobs have queued up in one transaction, so many reservations share
//! one fsync. Each job learns its result only after that commit.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Jobs committed together at most; bounds the latency one commit adds.
const MAX_BATCH: usize = 2048;
/// Jobs that may wait for the writer; a full queue makes callers wait for a
/// slot (backpressure) before they decide anything.
const QUEUE_DEPTH: usize = 64 * 1024;

/// A unit of work for the writer: statements run inside the batch's
/// transaction, then the commit's outcome is reported.
trait Job: Send {
    fn execute(&mut self, conn: &Connection);
    fn settle(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Queued<T, F, S> {
    statements: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    settle: S,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F, S> Job for Queued<T, F, S>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
    S: FnOnce(&Result<T, StoreError>) + Send,
{
    fn execute(&mut self, conn: &Connection) {
        if let Some(statements) = self.statements.take() {
            self.outcome = Some(statements(conn));
        }
    }

    fn settle(self: Box<Self>, commit: Result<(), StoreError>) {
        let not_run = Err(StoreError::Database("the batch was not run".into()));
        let result = commit.and(self.outcome.unwrap_or(not_run));
        (self.settle)(&result);
        // The waiter may have gone away (client hung up); settle ran anyway.
        let _ = self.reply.send(result);
    }
}

/// Runs every job in `tx` and commits. Some errors (SQLITE_FULL, an I/O
/// error) make SQLite roll the whole transaction back on its own; the
/// connection is then in autocommit, and a later job's statements would be
/// committed one by one while the batch is reported failed. So the batch
/// stops at the first job after which no transaction is open, and fails as
/// a whole: every job in it is reported failed and none of them is stored.
fn run_batch(tx: rusqlite::Transaction<'_>, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    for job in batch.iter_mut() {
        job.execute(&tx);
        if tx.is_autocommit() {
            return Err(StoreError::Database(
                "SQLite rolled the batch's transaction back".into(),
            ));
        }
    }
    tx.commit().map_err(StoreError::from)
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

/// A place in the writer's queue. Once held, queueing a job cannot wait or
/// be cancelled, so a decision taken after getting a slot is always written.
pub struct Slot(mpsc::OwnedPermit<Box<dyn Job>>);

impl Writer {
    /// Starts the writer thread; it ends when every `Writer` handle is dropped.
    pub fn spawn(conn: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("order-writer".into())
            .spawn(move || run(conn, queue))?;
        Ok(Self { jobs })
    }

    /// Jobs queued or being written now (reserved places included).
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    pub async fn slot(&self) -> Result<Slot, StoreError> {
        self.jobs
            .clone()
            .reserve_owned()
            .await
            .map(Slot)
            .map_err(|_| StoreError::Closed)
    }

    /// Runs `statements` in the next group commit; returns their result
    /// once that commit is on disk. A failed commit fails every job in it.
    pub async fn run<T, F>(&self, statements: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.slot().await?.run(statements, |_| {}).await
    }
}

impl Slot {
    /// Queues `statements`; `settle` runs on the writer thread with the
    /// final result whether or not anyone still awaits the returned future.
    pub fn run<T, F, S>(
        self,
        statements: F,
        settle: S,
    ) -> impl std::future::Future<Output = Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        S: FnOnce(&Result<T, StoreError>) + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.0.send(Box::new(Queued {
            statements: Some(statements),
            outcome: None,
            settle,
            reply,
        }));
        async move { result.await.map_err(|_| StoreError::Closed)? }
    }
}

fn run(mut conn: Connection, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        commit(&mut conn, &mut batch);
    }
}

fn commit(conn: &mut Connection, batch: &mut Vec<Box<dyn Job>>) {
    metrics::histogram!("dropgate_order_writer_batch_size").record(batch.len() as f64);
    let committed = match conn.transaction() {
        Ok(tx) => run_batch(tx, batch),
        Err(e) => Err(StoreError::from(e)),
    };
    if let Err(e) = &committed {
        tracing::error!(error = %e, jobs = batch.len(), "order writer commit failed");
    }
    for job in batch.drain(..) {
        job.settle(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(
        statements: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> (Box<dyn Job>, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, result) = oneshot::channel();
        let job = Queued {
            statements: Some(statements),
            outcome: None,
            settle: |_: &Result<(), StoreError>| {},
            reply,
        };
        (Box::new(job), result)
    }

    fn insert(n: i64) -> impl FnOnce(&Connection) -> Result<(), StoreError> + Send {
        move |conn| {
            conn.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
            Ok(())
        }
    }

    /// What SQLite does on SQLITE_FULL or an I/O error in some statements:
    /// it rolls the whole transaction back and leaves autocommit on.
    #[test]
    fn a_batch_whose_transaction_sqlite_rolled_back_fails_whole_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let (before, before_result) = queued(insert(1));
        let (rollback, rollback_result) = queued(|conn| {
            conn.execute_batch("ROLLBACK")?;
            Err(StoreError::Database("disk full".into()))
        });
        let (after, after_result) = queued(insert(2));
        let mut batch = vec![before, rollback, after];
        commit(&mut conn, &mut batch);

        for mut result in [before_result, rollback_result, after_result] {
            assert!(
                matches!(result.try_recv(), Ok(Err(_))),
                "every job is reported failed"
            );
        }
        let stored: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0, "no job of the failed batch is stored");
    }

    #[test]
    fn a_job_that_fails_alone_leaves_the_others_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let (good, good_result) = queued(insert(1));
        let (bad, bad_result) = queued(|conn| {
            conn.execute("INSERT INTO missing (n) VALUES (1)", [])?;
            Ok(())
        });
        let mut batch = vec![good, bad];
        commit(&mut conn, &mut batch);
        let (mut good_result, mut bad_result) = (good_result, bad_result);
        assert!(matches!(good_result.try_recv(), Ok(Ok(()))));
        assert!(matches!(bad_result.try_recv(), Ok(Err(_))));
        let stored: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 1);
    }
}
