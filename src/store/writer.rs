//! The group-commit writer: one thread owns the write connection and commits
//! whatever jobs have queued up in one transaction, so many reservations share
//! one fsync. Each job learns its result only after that commit.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Told the commit's outcome; sends the job's result to whoever waits on it.
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs one job's statements inside the batch's transaction.
type Job = Box<dyn FnOnce(&Connection) -> Deliver + Send>;

/// Jobs committed together at most; bounds the latency one commit adds.
const MAX_BATCH: usize = 2048;
/// Jobs that may wait for the writer; a full queue makes callers wait (backpressure).
const QUEUE_DEPTH: usize = 64 * 1024;

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread; it ends when every `Writer` handle is dropped.
    pub fn spawn(conn: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("order-writer".into())
            .spawn(move || run(conn, queue))?;
        Ok(Self { jobs })
    }

    /// Runs `job` in the next group commit and returns its result once that
    /// commit is on disk; a failed commit fails every job in it.
    pub async fn run<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let outcome = job(conn);
            Box::new(move |commit| {
                // The waiter may have gone away (client disconnected); the
                // row is committed all the same.
                let _ = reply.send(commit.and(outcome));
            })
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

fn run(mut conn: Connection, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&mut conn, &mut batch);
    }
}

fn commit(conn: &mut Connection, batch: &mut Vec<Job>) {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            // Dropping the jobs tells each waiter the store is unavailable.
            tracing::error!(error = %e, jobs = batch.len(), "order writer could not begin a transaction");
            batch.clear();
            return;
        }
    };
    let deliveries: Vec<Deliver> = batch.drain(..).map(|job| job(&tx)).collect();
    let committed = tx.commit().map_err(StoreError::from);
    if let Err(e) = &committed {
        tracing::error!(error = %e, jobs = deliveries.len(), "order writer commit failed");
    }
    for deliver in deliveries {
        deliver(committed.clone());
    }
}
