//! SQLite specifics: opening with WAL and full sync, migrations, and the SQL
//! of every read and state change, each run on a connection it is handed.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    db_time, pay_step, restocks_sql, round_orders_sql, snapshot_sql, status_counts_sql,
    CancelOutcome, Keyed, OrderColumns, PayOutcome, PayStep, Restock, RestockRecord, StatusCounts,
    StoreError, StoredOrder, ORDER_COLUMNS,
};
use crate::domain::{IdempotencyKey, OrderId, UserId};
use crate::order::{Order, OrderStatus};
use crate::payment::PaymentNotice;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_orders.sql"),
    include_str!("../../migrations/sqlite/0002_operations.sql"),
    include_str!("../../migrations/sqlite/0003_recovery.sql"),
];

/// Opens the database file, creating it and its schema when new.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
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

fn order_from_row(row: &Row<'_>) -> Result<Order, StoreError> {
    OrderColumns {
        id: row.get(0)?,
        drop_id: row.get(1)?,
        round_id: row.get(2)?,
        sku: row.get(3)?,
        user_id: row.get(4)?,
        quantity: row.get(5)?,
        status: row.get(6)?,
        unit_price: row.get(7)?,
        amount_due: row.get(8)?,
        deposit_due: row.get(9)?,
        created_at: row.get(10)?,
        pay_by: row.get(11)?,
    }
    .into_order()
}

fn query_orders(
    conn: &Connection,
    sql_tail: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Order>, StoreError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders {sql_tail}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params)?;
    let mut orders = Vec::new();
    while let Some(row) = rows.next()? {
        orders.push(order_from_row(row)?);
    }
    Ok(orders)
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Order>, StoreError> {
    Ok(query_orders(conn, "WHERE id = ?1", [id])?.pop())
}

pub fn list_for_user(conn: &Connection, user: &UserId) -> Result<Vec<Order>, StoreError> {
    query_orders(conn, "WHERE user_id = ?1 ORDER BY id", [user.as_str()])
}

/// Everything the embedded engine needs to rebuild its books: every live
/// order (it holds stock) and every order made with an idempotency key.
pub fn engine_snapshot(conn: &Connection) -> Result<Vec<StoredOrder>, StoreError> {
    keyed_orders(conn, &snapshot_sql(), [])
}

/// Every order of one round with its key: what a round Redis may have lost
/// is reconciled from.
pub fn round_orders(conn: &Connection, round_id: &str) -> Result<Vec<StoredOrder>, StoreError> {
    keyed_orders(conn, &round_orders_sql("?1"), [round_id])
}

/// Orders with their key columns, from a query that selects them last.
fn keyed_orders(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredOrder>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(StoredOrder::new(
            order_from_row(row)?,
            row.get(12)?,
            row.get(13)?,
        )?);
    }
    Ok(out)
}

/// Inserts an order; an order already stored (same id) is left as it is,
/// so the Redis order writer may deliver the same winner twice. An order
/// that collides with another stored order (the same idempotency key under
/// another id) is not stored: `Conflict`, never a silent success.
pub fn insert(
    conn: &Connection,
    order: &Order,
    idempotency: Option<&(IdempotencyKey, String)>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO orders (id, drop_id, round_id, sku, user_id, quantity, status, unit_price, \
         amount_due, deposit_due, currency, created_at, pay_by, idempotency_key, request_fingerprint) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
         ON CONFLICT DO NOTHING",
    )?;
    let inserted = stmt.execute(params![
        order.id.as_str(),
        order.drop_id.as_str(),
        order.round_id,
        order.sku.as_str(),
        order.user_id.as_str(),
        order.quantity.get(),
        order.status.as_str(),
        order.unit_price.to_string(),
        order.amount_due.to_string(),
        order.deposit_due.to_string(),
        order.currency.as_str(),
        db_time(order.created_at),
        db_time(order.pay_by),
        idempotency.map(|(k, _)| k.as_str()),
        idempotency.map(|(_, f)| f.as_str()),
    ])?;
    if inserted == 0 && get(conn, order.id.as_str())?.is_none() {
        return Err(StoreError::Conflict(order.id.to_string()));
    }
    Ok(())
}

/// Inserts orders decided elsewhere; returns the ids that collided with
/// another stored order and so were not stored.
pub fn insert_many(conn: &Connection, orders: &[Keyed]) -> Result<Vec<OrderId>, StoreError> {
    let mut refused = Vec::new();
    for (order, key) in orders {
        match insert(conn, order, key.as_ref()) {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => refused.push(order.id.clone()),
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Moves a pending order to an end state; false when it was not pending.
/// The order then owes its units back (`release_due`) until the engine has
/// taken them.
fn end(
    conn: &Connection,
    id: &OrderId,
    to: OrderStatus,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE orders SET status = ?2, ended_at = ?3, release_due = 1 \
         WHERE id = ?1 AND status = 'pending_payment'",
        params![id.as_str(), to.as_str(), db_time(now)],
    )?;
    Ok(changed == 1)
}

pub fn cancel(
    conn: &Connection,
    id: &OrderId,
    user: &UserId,
    now: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(order) = get(conn, id.as_str())?.filter(|o| &o.user_id == user) else {
        return Ok(CancelOutcome::NotFound);
    };
    if !end(conn, id, OrderStatus::Cancelled, now)? {
        return Ok(CancelOutcome::NotCancellable(order));
    }
    Ok(CancelOutcome::Cancelled(Order {
        status: OrderStatus::Cancelled,
        ..order
    }))
}

pub fn pay(
    conn: &Connection,
    notice: &PaymentNotice,
    now: Timestamp,
) -> Result<PayOutcome, StoreError> {
    let recorded: Option<String> = conn
        .query_row(
            "SELECT id FROM orders WHERE transaction_id = ?1",
            [&notice.transaction_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(paid_id) = recorded {
        // A gateway redelivers notifications: the same transaction is a no-op.
        return Ok(match paid_id == notice.order_id.as_str() {
            true => PayOutcome::AlreadyRecorded(
                get(conn, &paid_id)?.ok_or(StoreError::Corrupt(paid_id))?,
            ),
            false => PayOutcome::TransactionUsedElsewhere,
        });
    }
    let Some(order) = get(conn, notice.order_id.as_str())? else {
        return Ok(PayOutcome::NotFound);
    };
    match pay_step(&order, notice, now) {
        PayStep::Refuse(outcome) => Ok(outcome),
        PayStep::Expire => {
            end(conn, &order.id, OrderStatus::Expired, now)?;
            Ok(PayOutcome::ExpiredNow(Order {
                status: OrderStatus::Expired,
                ..order
            }))
        }
        PayStep::Pay => {
            conn.execute(
                "UPDATE orders SET status = 'paid', transaction_id = ?2, payment_method = ?3, paid_at = ?4 \
                 WHERE id = ?1 AND status = 'pending_payment'",
                params![order.id.as_str(), notice.transaction_id, notice.method.as_str(), db_time(now)],
            )?;
            Ok(PayOutcome::Paid(Order {
                status: OrderStatus::Paid,
                ..order
            }))
        }
    }
}

/// Expires up to `max` orders unpaid at `now` and returns them.
pub fn expire_due(conn: &Connection, now: Timestamp, max: usize) -> Result<Vec<Order>, StoreError> {
    let due = query_orders(
        conn,
        "WHERE status = 'pending_payment' AND pay_by <= ?1 ORDER BY pay_by LIMIT ?2",
        params![db_time(now), max],
    )?;
    let mut expired = Vec::with_capacity(due.len());
    for order in due {
        if end(conn, &order.id, OrderStatus::Expired, now)? {
            expired.push(Order {
                status: OrderStatus::Expired,
                ..order
            });
        }
    }
    Ok(expired)
}

/// Records a restock; false if one with its id was recorded before.
pub fn add_restock(
    conn: &Connection,
    record: &RestockRecord,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let restock = &record.restock;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO restocks (round_id, sku, units, created_at, id) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            restock.round_id,
            restock.sku,
            restock.units as i64,
            db_time(now),
            record.id,
        ])?;
    Ok(inserted == 1)
}

pub fn restock_ids(conn: &Connection, round_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM restocks WHERE round_id = ?1 AND id IS NOT NULL")?;
    let rows = stmt.query_map([round_id], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Ended orders whose units the engine has not taken back yet.
pub fn releases_due(conn: &Connection, max: usize) -> Result<Vec<Order>, StoreError> {
    query_orders(conn, "WHERE release_due = 1 LIMIT ?1", [max])
}

/// Records that the engine has taken back these orders' units.
pub fn mark_released(conn: &Connection, ids: &[OrderId]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("UPDATE orders SET release_due = 0 WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id.as_str()])?;
    }
    Ok(())
}

pub fn restocks(conn: &Connection, round_id: Option<&str>) -> Result<Vec<Restock>, StoreError> {
    let mut stmt = conn.prepare_cached(&restocks_sql("?1"))?;
    let rows = stmt.query_map([round_id], |row| {
        Ok(Restock {
            round_id: row.get(0)?,
            sku: row.get(1)?,
            units: row.get::<_, i64>(2)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn status_counts(conn: &Connection, round_id: &str) -> Result<StatusCounts, StoreError> {
    let mut stmt = conn.prepare_cached(&status_counts_sql("?1"))?;
    let rows = stmt.query_map([round_id], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut counts = StatusCounts::default();
    for row in rows {
        let (status, n) = row?;
        counts.add(&status, n as u64);
    }
    Ok(counts)
}

/// Records a drop unless its id is taken; false if it was.
pub fn save_drop(
    conn: &Connection,
    id: &str,
    definition: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO drops (id, definition, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![id, definition, db_time(now)])?;
    Ok(inserted == 1)
}

pub fn saved_drops(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT definition FROM drops ORDER BY created_at, id")?;
    let rows = stmt.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
