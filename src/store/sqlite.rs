//! SQLite specifics: opening with WAL and full sync, migrations, and the SQL
//! of every read and state change, each run on a connection it is handed.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{CancelOutcome, PayOutcome, StoreError};
use crate::domain::{DropId, IdempotencyKey, OrderId, Quantity, SkuId, UserId};
use crate::money::{parse_amount, Currency};
use crate::order::{Order, OrderStatus};
use crate::payment::PaymentNotice;

const MIGRATIONS: &[&str] = &[include_str!("../../migrations/sqlite/0001_orders.sql")];

const ORDER_COLUMNS: &str = "id, drop_id, round_id, sku, user_id, quantity, status, unit_price, \
     amount_due, deposit_due, created_at, pay_by";

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

/// UTC with milliseconds and a fixed width, so text order is time order.
pub fn db_time(t: Timestamp) -> String {
    format!(
        "{}.{:03}Z",
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_millisecond()
    )
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

fn order_from_row(row: &Row<'_>) -> Result<Order, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { Ok(row.get::<_, String>(i)?) };
    let time = |i: usize| -> Result<Timestamp, StoreError> {
        let raw = text(i)?;
        raw.parse().map_err(|_| corrupt("time", &raw))
    };
    let money = |i: usize| -> Result<rust_decimal::Decimal, StoreError> {
        let raw = text(i)?;
        parse_amount(&raw).map_err(|_| corrupt("amount", &raw))
    };
    let status = text(6)?;
    Ok(Order {
        id: OrderId::from_store(text(0)?),
        drop_id: DropId::parse(&text(1)?).map_err(|e| StoreError::Corrupt(e.0))?,
        round_id: text(2)?,
        sku: SkuId::parse(&text(3)?).map_err(|e| StoreError::Corrupt(e.0))?,
        user_id: UserId::parse(&text(4)?).map_err(|e| StoreError::Corrupt(e.0))?,
        quantity: Quantity::new(row.get(5)?).map_err(|e| StoreError::Corrupt(e.0))?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        unit_price: money(7)?,
        amount_due: money(8)?,
        deposit_due: money(9)?,
        currency: Currency::Cny,
        created_at: time(10)?,
        pay_by: time(11)?,
    })
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

pub fn live_in_round(conn: &Connection, round_id: &str) -> Result<Vec<Order>, StoreError> {
    query_orders(
        conn,
        "WHERE round_id = ?1 AND status IN ('pending_payment', 'paid')",
        [round_id],
    )
}

pub fn list_for_user(conn: &Connection, user: &UserId) -> Result<Vec<Order>, StoreError> {
    query_orders(conn, "WHERE user_id = ?1 ORDER BY id", [user.as_str()])
}

/// A stored order together with the idempotency key that created it.
pub struct StoredOrder {
    pub order: Order,
    pub idempotency: Option<(IdempotencyKey, String)>,
}

/// Everything the embedded engine needs to rebuild its books: every live
/// order (it holds stock) and every order made with an idempotency key.
pub fn engine_snapshot(conn: &Connection) -> Result<Vec<StoredOrder>, StoreError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS}, idempotency_key, request_fingerprint FROM orders \
         WHERE status IN ('pending_payment', 'paid') OR idempotency_key IS NOT NULL"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let key: Option<String> = row.get(12)?;
        let fingerprint: Option<String> = row.get(13)?;
        let idempotency = match (key, fingerprint) {
            (Some(k), Some(f)) => Some((
                IdempotencyKey::parse(&k).map_err(|e| StoreError::Corrupt(e.0))?,
                f,
            )),
            _ => None,
        };
        out.push(StoredOrder {
            order: order_from_row(row)?,
            idempotency,
        });
    }
    Ok(out)
}

/// Inserts an order; an order already stored (same id) is left as it is,
/// so the Redis order writer may deliver the same winner twice.
pub fn insert(
    conn: &Connection,
    order: &Order,
    idempotency: Option<&(IdempotencyKey, String)>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO orders (id, drop_id, round_id, sku, user_id, quantity, status, unit_price, \
         amount_due, deposit_due, currency, created_at, pay_by, idempotency_key, request_fingerprint) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
         ON CONFLICT (id) DO NOTHING",
    )?;
    stmt.execute(params![
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
    Ok(())
}

/// Moves a pending order to an end state; false when it was not pending.
fn end(
    conn: &Connection,
    id: &OrderId,
    to: OrderStatus,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE orders SET status = ?2, ended_at = ?3 WHERE id = ?1 AND status = 'pending_payment'",
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
    if order.status != OrderStatus::PendingPayment {
        return Ok(PayOutcome::NotPayable(order));
    }
    if now >= order.pay_by {
        // Too late: the order's fate is expiry, decided here, once.
        end(conn, &order.id, OrderStatus::Expired, now)?;
        return Ok(PayOutcome::ExpiredNow(Order {
            status: OrderStatus::Expired,
            ..order
        }));
    }
    if notice.amount != order.deposit_due {
        return Ok(PayOutcome::AmountMismatch {
            due: order.deposit_due,
        });
    }
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
