//! Order events in the store: recorded by each change inside the writer's
//! transaction and inserted with it (I8), read by pull consumers and the
//! webhook dispatcher, and pruned after the retention period.
//!
//! Ids must increase in commit order, or a consumer reading `after=ID`
//! could pass an event committed later with a smaller id. SQLite commits
//! one transaction at a time; on PostgreSQL several instances commit at
//! once, so a batch's events are inserted last, under a transaction lock
//! held until its commit: ids are taken in the order commits happen.

use jiff::Timestamp;

use super::orders::db_time;
use super::sql::{Column, Dialect, Insert, Row, Sql, Value};
use super::StoreError;
use crate::events::{NewEvent, StoredEvent};
use crate::order::Order;

const EVENTS: Insert = Insert {
    table: "order_events",
    columns: &[
        ("order_id", Column::Text),
        ("type", Column::Text),
        ("at", Column::Text),
        ("body", Column::Text),
    ],
};

/// Events per multi-row insert on SQLite (4 parameters each).
const SQLITE_CHUNK: usize = 64;

/// `INSERT INTO order_events … VALUES (…), (…), …` for [`SQLITE_CHUNK`] rows.
fn sqlite_chunk_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows: Vec<String> = (0..SQLITE_CHUNK)
            .map(|r| {
                let n = r * 4;
                format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
            })
            .collect();
        format!(
            "INSERT INTO order_events (order_id, type, at, body) VALUES {}",
            rows.join(", ")
        )
    })
}

/// The writer's transaction, collecting the events of its changes; they
/// are inserted together just before the commit ([`Recorded::insert_events`]).
pub(crate) struct Recorded<'a, S> {
    db: &'a mut S,
    events: Vec<NewEvent>,
}

impl<'a, S: Sql> Recorded<'a, S> {
    pub fn new(db: &'a mut S) -> Self {
        Self {
            db,
            events: Vec::new(),
        }
    }

    /// How many events are recorded: a job's savepoint notes it, and
    /// [`Recorded::forget_since`] drops what a failed job recorded.
    pub fn mark(&self) -> usize {
        self.events.len()
    }

    pub fn forget_since(&mut self, mark: usize) {
        self.events.truncate(mark);
    }

    /// Inserts every recorded event, in the order recorded.
    pub async fn insert_events(&mut self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        if let Some(lock) = self.db.dialect().lock_key() {
            self.db.rows(lock, &["order_events".into()]).await?;
        }
        let rows: Vec<Vec<Value<'_>>> = self
            .events
            .drain(..)
            .map(|e| {
                vec![
                    Value::from(e.order_id),
                    e.kind.into(),
                    db_time(e.at).into(),
                    e.body.into(),
                ]
            })
            .collect();
        if self.db.dialect() == Dialect::Postgres {
            // One statement already: every row in arrays.
            return self.db.insert(&EVENTS, rows).await.map(drop);
        }
        // SQLite inserts a row per statement; a win's event rides on the
        // reserve path, so whole chunks go in one multi-row statement.
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Value<'_>>> = rows.by_ref().take(SQLITE_CHUNK).collect();
            if chunk.len() < SQLITE_CHUNK {
                self.db.insert(&EVENTS, chunk).await?;
                break;
            }
            let params: Vec<Value<'_>> = chunk.into_iter().flatten().collect();
            self.db.execute(sqlite_chunk_sql(), &params).await?;
        }
        Ok(())
    }
}

impl<S: Sql> Sql for Recorded<'_, S> {
    fn dialect(&self) -> super::sql::Dialect {
        self.db.dialect()
    }

    async fn rows(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        self.db.rows(sql, params).await
    }

    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        self.db.execute(sql, params).await
    }

    async fn insert(
        &mut self,
        insert: &Insert,
        rows: Vec<Vec<Value<'_>>>,
    ) -> Result<Vec<bool>, StoreError> {
        self.db.insert(insert, rows).await
    }

    fn transaction_lost(&self) -> bool {
        self.db.transaction_lost()
    }

    fn record(&mut self, event: NewEvent) -> Result<(), StoreError> {
        self.events.push(event);
        Ok(())
    }
}

/// Records that `order` (as it now is) went through `kind` at `at`.
pub(super) fn record<S: Sql>(
    db: &mut S,
    kind: &'static str,
    order: &Order,
    at: Timestamp,
) -> Result<(), StoreError> {
    db.record(NewEvent::of(kind, order, at))
}

const EVENT_COLUMNS: &str = "id, order_id, type, at, body";

fn event_from(row: &Row) -> Result<StoredEvent, StoreError> {
    let at = row.text(3)?;
    let body = row.text(4)?;
    let order_id = row.text(1)?;
    Ok(StoredEvent {
        id: row.int(0)?,
        kind: row.text(2)?,
        at: at
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("event time {at:?}")))?,
        order: serde_json::from_str(&body)
            .map_err(|_| StoreError::Corrupt(format!("event body of {order_id}")))?,
        order_id,
    })
}

/// Up to `limit` events after `after`, oldest first.
pub async fn after<S: Sql>(
    db: &mut S,
    after: i64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let sql =
        format!("SELECT {EVENT_COLUMNS} FROM order_events WHERE id > $1 ORDER BY id LIMIT $2");
    db.rows(&sql, &[Value::Int(after), Value::Int(limit as i64)])
        .await?
        .iter()
        .map(event_from)
        .collect()
}

/// The events with these ids, oldest first (those still kept).
pub async fn by_ids<S: Sql>(db: &mut S, ids: &[i64]) -> Result<Vec<StoredEvent>, StoreError> {
    let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM order_events WHERE id IN ({}) ORDER BY id",
        db.dialect().ints_of("$1")
    );
    db.rows(&sql, &[list.into()])
        .await?
        .iter()
        .map(event_from)
        .collect()
}

/// The highest event id, 0 when there is none.
pub async fn last_id<S: Sql>(db: &mut S) -> Result<i64, StoreError> {
    let rows = db
        .rows(
            "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM order_events",
            &[],
        )
        .await?;
    rows.first().map_or(Ok(0), |r| r.int(0))
}

/// Deletes up to `max` events older than `before` that no webhook still
/// has to retry; how many went.
pub async fn prune<S: Sql>(db: &mut S, before: Timestamp, max: usize) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM order_events WHERE id IN ( \
             SELECT id FROM order_events WHERE at < $1 \
             AND id NOT IN (SELECT event_id FROM webhook_retries) \
             ORDER BY id LIMIT $2)",
        &[db_time(before).into(), Value::Int(max as i64)],
    )
    .await
}
