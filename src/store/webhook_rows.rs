//! Webhook delivery state in the store: how far each webhook has been
//! handed events (its cursor), the deliveries to retry (an order's later
//! events wait behind its earlier ones, so each order's events arrive in
//! order), and the lease that makes one instance the dispatcher.

use jiff::Timestamp;

use super::orders::db_time;
use super::sql::{text_list, Column, Insert, Sql, Value};
use super::StoreError;

/// A delivery to try again (or, with no attempts, one waiting behind an
/// earlier event of its order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub event_id: i64,
    pub order_id: String,
    pub attempts: i64,
    pub first_try_at: Timestamp,
    pub next_at: Timestamp,
    pub last_error: Option<String>,
}

/// What one dispatch round changes.
#[derive(Debug, Clone, Default)]
pub struct Deliveries {
    /// Every event up to this id has been delivered or queued.
    pub cursor: Option<i64>,
    /// New rows, and rows tried again (replaced whole).
    pub retries: Vec<Retry>,
    /// Delivered, or given up: their rows go.
    pub done: Vec<i64>,
}

const RETRIES: Insert = Insert {
    table: "webhook_retries",
    columns: &[
        ("webhook", Column::Text),
        ("event_id", Column::Int),
        ("order_id", Column::Text),
        ("attempts", Column::Int),
        ("first_try_at", Column::Text),
        ("next_at", Column::Text),
        ("last_error", Column::Text),
    ],
};

/// Records a dispatch round for `webhook`.
pub async fn save<S: Sql>(
    db: &mut S,
    webhook: &str,
    deliveries: &Deliveries,
) -> Result<(), StoreError> {
    let mut gone: Vec<i64> = deliveries.done.clone();
    gone.extend(deliveries.retries.iter().map(|r| r.event_id));
    if !gone.is_empty() {
        let sql = format!(
            "DELETE FROM webhook_retries WHERE webhook = $1 AND event_id IN ({})",
            db.dialect().ints_of("$2")
        );
        let ids = serde_json::to_string(&gone).unwrap_or_else(|_| "[]".into());
        db.execute(&sql, &[webhook.into(), ids.into()]).await?;
    }
    if !deliveries.retries.is_empty() {
        let rows = deliveries
            .retries
            .iter()
            .map(|r| {
                vec![
                    webhook.into(),
                    Value::Int(r.event_id),
                    r.order_id.as_str().into(),
                    Value::Int(r.attempts),
                    db_time(r.first_try_at).into(),
                    db_time(r.next_at).into(),
                    r.last_error.as_deref().into(),
                ]
            })
            .collect();
        db.insert(&RETRIES, rows).await?;
    }
    if let Some(cursor) = deliveries.cursor {
        // Never backwards: a dispatcher that stalled past its lease and
        // woke up must not undo the next one's progress.
        db.execute(
            "INSERT INTO webhook_cursors (webhook, after_id) VALUES ($1, $2) \
             ON CONFLICT (webhook) DO UPDATE SET after_id = excluded.after_id \
             WHERE webhook_cursors.after_id < excluded.after_id",
            &[webhook.into(), Value::Int(cursor)],
        )
        .await?;
    }
    Ok(())
}

/// Takes or renews lease `name` for `holder` until `until`; false while
/// another holder's lease runs.
pub async fn take_lease<S: Sql>(
    db: &mut S,
    name: &str,
    holder: &str,
    until: Timestamp,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let taken = db
        .execute(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE leases.holder = excluded.holder OR leases.until < $4",
            &[
                name.into(),
                holder.into(),
                db_time(until).into(),
                db_time(now).into(),
            ],
        )
        .await?;
    Ok(taken == 1)
}

/// Where `webhook` stands: its cursor (0 before its first delivery).
pub async fn cursor<S: Sql>(db: &mut S, webhook: &str) -> Result<i64, StoreError> {
    let rows = db
        .rows(
            "SELECT after_id FROM webhook_cursors WHERE webhook = $1",
            &[webhook.into()],
        )
        .await?;
    rows.first().map_or(Ok(0), |r| r.int(0))
}

fn retry_from(row: &super::sql::Row) -> Result<Retry, StoreError> {
    let time = |i: usize| -> Result<Timestamp, StoreError> {
        let raw = row.text(i)?;
        raw.parse()
            .map_err(|_| StoreError::Corrupt(format!("time {raw:?}")))
    };
    Ok(Retry {
        event_id: row.int(0)?,
        order_id: row.text(1)?,
        attempts: row.int(2)?,
        first_try_at: time(3)?,
        next_at: time(4)?,
        last_error: row.opt_text(5)?,
    })
}

/// Up to `max` retries due at `now` that are first in line for their
/// order (no earlier event of the order is still waiting).
pub async fn due<S: Sql>(
    db: &mut S,
    webhook: &str,
    now: Timestamp,
    max: usize,
) -> Result<Vec<Retry>, StoreError> {
    db.rows(
        "SELECT event_id, order_id, attempts, first_try_at, next_at, last_error \
         FROM webhook_retries r WHERE webhook = $1 AND next_at <= $2 \
         AND NOT EXISTS (SELECT 1 FROM webhook_retries p WHERE p.webhook = r.webhook \
                         AND p.order_id = r.order_id AND p.event_id < r.event_id) \
         ORDER BY event_id LIMIT $3",
        &[webhook.into(), db_time(now).into(), Value::Int(max as i64)],
    )
    .await?
    .iter()
    .map(retry_from)
    .collect()
}

/// Which of `orders` have events waiting for `webhook`.
pub async fn waiting_orders<S: Sql>(
    db: &mut S,
    webhook: &str,
    orders: &[String],
) -> Result<Vec<String>, StoreError> {
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT order_id FROM webhook_retries WHERE webhook = $1 AND order_id IN ({})",
        db.dialect().texts_of("$2")
    );
    db.rows(
        &sql,
        &[webhook.into(), text_list(orders.iter().map(String::as_str))],
    )
    .await?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

/// Deliveries waiting for `webhook`, and when the oldest of their events
/// happened (what the lag is measured from).
pub async fn backlog<S: Sql>(
    db: &mut S,
    webhook: &str,
) -> Result<(i64, Option<Timestamp>), StoreError> {
    let rows = db
        .rows(
            "SELECT CAST(COUNT(*) AS BIGINT), MIN(e.at) FROM webhook_retries r \
             JOIN order_events e ON e.id = r.event_id WHERE r.webhook = $1",
            &[webhook.into()],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok((0, None));
    };
    let oldest = row
        .opt_text(1)?
        .map(|raw| {
            raw.parse()
                .map_err(|_| StoreError::Corrupt(format!("time {raw:?}")))
        })
        .transpose()?;
    Ok((row.int(0)?, oldest))
}
