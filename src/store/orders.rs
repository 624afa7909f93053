//! Every statement of the order store, written once for both databases:
//! the row mapping, the reads, the insert of new orders and each state
//! change. An order moves only through [`move_order`], which asks the state
//! machine ([`crate::order_states`]) whether the move is allowed.

use std::collections::HashSet;

use jiff::fmt::temporal::DateTimePrinter;
use jiff::Timestamp;

use super::coupon_rows::give_back;
use super::event_rows;
use super::sql::{text_list, Column, Insert, Row, Sql, Value};
use super::{
    pay_step, CancelOutcome, Keyed, PayOutcome, PayStep, Restock, RestockRecord, StatusCounts,
    StoreError, StoredOrder,
};
use crate::after_sale::{AfterSale, StatusTimes};
use crate::domain::{DropId, IdempotencyKey, OrderId, Quantity, RoundId, SkuId, UserId};
use crate::events::NewEvent;
use crate::money::{parse_amount, Currency};
use crate::order::{Order, OrderStatus};
use crate::order_states::transition;
use crate::payment::{PaymentMethod, PaymentNotice};
use crate::pricing::Pricing;
use crate::shipping::ShipPlan;

/// The columns an order is read from, in this order (`order_from`).
pub(super) const ORDER_COLUMNS: &str =
    "id, drop_id, round_id, sku, user_id, quantity, status, unit_price, \
     amount_due, deposit_due, created_at, pay_by, list_amount, discounts, address, \
     payment_method, installments, payment_id, balance_from, balance_until, paid_amount, \
     coupon_id, ended_at, status_times, estimated_ship_date, tracking, refund, return_request, \
     no_reason_until, complete_at, invoice";
/// Where the key columns start in a keyed select.
const KEY_COLUMN: usize = 31;

/// A new order as inserted: its columns and the idempotency key's.
const NEW_ORDER: Insert = Insert {
    table: "orders",
    columns: &[
        ("id", Column::Text),
        ("drop_id", Column::Text),
        ("round_id", Column::Text),
        ("sku", Column::Text),
        ("user_id", Column::Text),
        ("quantity", Column::Int),
        ("status", Column::Text),
        ("unit_price", Column::Text),
        ("amount_due", Column::Text),
        ("deposit_due", Column::Text),
        ("currency", Column::Text),
        ("created_at", Column::Text),
        ("pay_by", Column::Text),
        ("idempotency_key", Column::Text),
        ("request_fingerprint", Column::Text),
        ("list_amount", Column::Text),
        ("discounts", Column::Text),
        ("balance_from", Column::Text),
        ("balance_until", Column::Text),
    ],
};

/// UTC with milliseconds and a fixed width, so text order is time order
/// (`2026-12-04T02:00:00.000Z`). Printed by jiff's RFC 3339 printer, which
/// costs a fraction of `strftime` on the writer's hot path.
pub fn db_time(t: Timestamp) -> String {
    const PRINTER: DateTimePrinter = DateTimePrinter::new().precision(Some(3));
    // The precision cuts, as the order's millisecond times already are.
    PRINTER.timestamp_to_string(&t)
}

/// The one row mapping: an order from the columns of `ORDER_COLUMNS`.
pub(super) fn order_from(row: &Row) -> Result<Order, StoreError> {
    let corrupt = |what: &str, value: &str| StoreError::Corrupt(format!("{what} {value:?}"));
    let checked = |e: crate::domain::InvalidValue| StoreError::Corrupt(e.0);
    let time = |i: usize| -> Result<Timestamp, StoreError> {
        let raw = row.text(i)?;
        raw.parse().map_err(|_| corrupt("time", &raw))
    };
    let money = |i: usize| {
        let raw = row.text(i)?;
        parse_amount(&raw).map_err(|_| corrupt("amount", &raw))
    };
    let opt_time = |i: usize| opt_time(row, i);
    let status = row.text(6)?;
    let amount_due = money(8)?;
    let deposit_due = money(9)?;
    // Orders without discounts (and orders from before prices had them)
    // keep neither column: their list amount is what is due.
    let pricing = match row.opt_text(12)? {
        None => Pricing::at_list(amount_due),
        Some(list) => Pricing {
            list_amount: parse_amount(&list).map_err(|_| corrupt("amount", &list))?,
            discounts: match row.opt_text(13)? {
                None => Vec::new(),
                Some(json) => {
                    serde_json::from_str(&json).map_err(|_| corrupt("discounts", &json))?
                }
            },
            amount_due,
        },
    };
    Ok(Order {
        id: OrderId::from_store(row.text(0)?),
        drop_id: DropId::parse(&row.text(1)?).map_err(checked)?,
        round_id: RoundId::parse(&row.text(2)?).map_err(checked)?,
        sku: SkuId::parse(&row.text(3)?).map_err(checked)?,
        user_id: UserId::parse(&row.text(4)?).map_err(checked)?,
        quantity: Quantity::new(row.int(5)?).map_err(checked)?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        unit_price: money(7)?,
        amount_due,
        deposit_due,
        currency: Currency::Cny,
        created_at: time(10)?,
        pay_by: time(11)?,
        pricing,
        address: match row.opt_text(14)? {
            None => None,
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| corrupt("address", &json))?),
        },
        payment_method: match row.opt_text(15)? {
            None => None,
            Some(raw) => Some(PaymentMethod::parse(&raw).ok_or_else(|| corrupt("method", &raw))?),
        },
        installments: match row.0.get(16) {
            Some(Value::Int(n)) => {
                Some(u32::try_from(*n).map_err(|_| corrupt("installments", &n.to_string()))?)
            }
            _ => None,
        },
        payment_id: row.opt_text(17)?,
        balance_due: opt_time(18)?.map(|_| amount_due - deposit_due),
        balance_from: opt_time(18)?,
        balance_until: opt_time(19)?,
        paid_amount: match row.opt_text(20)? {
            None => None,
            Some(raw) => Some(parse_amount(&raw).map_err(|_| corrupt("amount", &raw))?),
        },
        coupon_id: row.opt_text(21)?,
        after: after_sale_from(row, status.as_str())?,
    })
}

/// An optional time column.
fn opt_time(row: &Row, i: usize) -> Result<Option<Timestamp>, StoreError> {
    row.opt_text(i)?
        .map(|raw| {
            raw.parse()
                .map_err(|_| StoreError::Corrupt(format!("time {raw:?}")))
        })
        .transpose()
}

/// The after-sale columns of an order row (`ORDER_COLUMNS` 22 to 30).
fn after_sale_from(row: &Row, status: &str) -> Result<AfterSale, StoreError> {
    fn json<T: serde::de::DeserializeOwned>(
        row: &Row,
        i: usize,
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        row.opt_text(i)?
            .map(|raw| {
                serde_json::from_str(&raw)
                    .map_err(|_| StoreError::Corrupt(format!("{what} {raw:?}")))
            })
            .transpose()
    }
    let time = |i: usize| opt_time(row, i);
    let mut status_times = match row.opt_text(23)? {
        None => StatusTimes::default(),
        Some(raw) => StatusTimes::from_json(&raw)
            .ok_or_else(|| StoreError::Corrupt(format!("status times {raw:?}")))?,
    };
    // The sweeper ends orders in bulk: their end is the time they reached
    // their final status.
    if let (Some(ended), Some(status)) = (time(22)?, OrderStatus::parse(status)) {
        status_times.reach(status, ended);
    }
    Ok(AfterSale {
        status_times,
        estimated_ship_date: row
            .opt_text(24)?
            .map(|raw| {
                raw.parse()
                    .map_err(|_| StoreError::Corrupt(format!("date {raw:?}")))
            })
            .transpose()?,
        tracking: json(row, 25, "tracking")?.unwrap_or_default(),
        refund: json(row, 26, "refund")?,
        return_request: json(row, 27, "return")?,
        no_reason_return_until: time(28)?,
        quality_return_until: time(29)?,
        invoice: json(row, 30, "invoice")?,
    })
}

/// The columns that hold an order's after-sale record (but its status
/// times, which every move writes), as `order` has them.
pub(super) fn after_sale_columns(order: &Order) -> Vec<(&'static str, Value<'static>)> {
    fn json<T: serde::Serialize>(value: &Option<T>) -> Value<'static> {
        value
            .as_ref()
            .and_then(|v| serde_json::to_string(v).ok())
            .into()
    }
    let after = &order.after;
    vec![
        (
            "estimated_ship_date",
            after.estimated_ship_date.map(|d| d.to_string()).into(),
        ),
        (
            "tracking",
            json(&Some(&after.tracking).filter(|t| !t.is_empty())),
        ),
        ("refund", json(&after.refund)),
        ("return_request", json(&after.return_request)),
        (
            "no_reason_until",
            after.no_reason_return_until.map(db_time).into(),
        ),
        (
            "complete_at",
            after.quality_return_until.map(db_time).into(),
        ),
        ("invoice", json(&after.invoice)),
        (
            "paid_amount",
            order.paid_amount.map(|a| a.to_string()).into(),
        ),
    ]
}

fn keyed_from(row: &Row) -> Result<StoredOrder, StoreError> {
    let order = order_from(row)?;
    let idempotency = match (row.opt_text(KEY_COLUMN)?, row.opt_text(KEY_COLUMN + 1)?) {
        (Some(key), Some(fingerprint)) => Some((
            IdempotencyKey::parse(&key).map_err(|e| StoreError::Corrupt(e.0))?,
            fingerprint,
        )),
        _ => None,
    };
    Ok(StoredOrder { order, idempotency })
}

async fn orders_where<S: Sql>(
    db: &mut S,
    tail: &str,
    params: &[Value<'_>],
) -> Result<Vec<Order>, StoreError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders {tail}");
    db.rows(&sql, params)
        .await?
        .iter()
        .map(order_from)
        .collect()
}

async fn keyed_where<S: Sql>(
    db: &mut S,
    tail: &str,
    params: &[Value<'_>],
) -> Result<Vec<StoredOrder>, StoreError> {
    let sql =
        format!("SELECT {ORDER_COLUMNS}, idempotency_key, request_fingerprint FROM orders {tail}");
    db.rows(&sql, params)
        .await?
        .iter()
        .map(keyed_from)
        .collect()
}

async fn texts<S: Sql>(
    db: &mut S,
    sql: &str,
    params: &[Value<'_>],
) -> Result<Vec<String>, StoreError> {
    db.rows(sql, params)
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect()
}

pub async fn get<S: Sql>(db: &mut S, id: &OrderId) -> Result<Option<Order>, StoreError> {
    Ok(orders_where(db, "WHERE id = $1", &[id.as_str().into()])
        .await?
        .pop())
}

/// Which orders a listing shows: the filters set, after `after` (an
/// order id: ids sort in time order), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub user: Option<UserId>,
    pub drop: Option<DropId>,
    pub status: Option<OrderStatus>,
    pub after: Option<OrderId>,
    pub limit: usize,
}

/// Orders matching `filter`, oldest first. A shopper's orders are held by
/// two partial indexes: unpaid orders (few: at most the stock of the
/// rounds on sale) and the rest (every order ever). A win lands only in
/// the small one, so a reserve's insert costs the same with five million
/// orders stored as with none; the big one is written when the order is
/// paid, cancelled or expires.
pub async fn search<S: Sql>(db: &mut S, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
    let sql = search_sql(ORDER_COLUMNS, filter.user.is_some());
    let params = [
        filter.user.as_ref().map(UserId::as_str).into(),
        filter.drop.as_ref().map(DropId::as_str).into(),
        filter.status.map(OrderStatus::as_str).into(),
        filter.after.as_ref().map_or("", OrderId::as_str).into(),
        Value::Int(i64::try_from(filter.limit).unwrap_or(i64::MAX)),
    ];
    db.rows(&sql, &params)
        .await?
        .iter()
        .map(order_from)
        .collect()
}

/// Every order of one shopper, oldest first.
pub async fn list_for_user<S: Sql>(db: &mut S, user: &UserId) -> Result<Vec<Order>, StoreError> {
    let filter = OrderFilter {
        user: Some(user.clone()),
        limit: usize::MAX,
        ..OrderFilter::default()
    };
    search(db, &filter).await
}

/// The statement behind [`search`], selecting `columns`; parameters: user,
/// drop, status, after, limit. With a user, each half's condition is its
/// partial index's, word for word, or the index is not used.
pub(crate) fn search_sql(columns: &str, by_user: bool) -> String {
    let rest = "AND (CAST($2 AS TEXT) IS NULL OR drop_id = $2) \
                AND (CAST($3 AS TEXT) IS NULL OR status = $3) AND id > $4";
    if by_user {
        format!(
            "SELECT {columns} FROM orders WHERE user_id = $1 AND status = 'pending_payment' {rest} \
             UNION ALL \
             SELECT {columns} FROM orders WHERE user_id = $1 AND status <> 'pending_payment' {rest} \
             ORDER BY id LIMIT $5"
        )
    } else {
        format!(
            "SELECT {columns} FROM orders WHERE CAST($1 AS TEXT) IS NULL {rest} ORDER BY id LIMIT $5"
        )
    }
}

/// Every order of one round with its key: what a round Redis may have lost
/// is reconciled from.
pub async fn round_orders<S: Sql>(
    db: &mut S,
    round_id: &RoundId,
) -> Result<Vec<StoredOrder>, StoreError> {
    keyed_where(db, "WHERE round_id = $1", &[round_id.as_str().into()]).await
}

/// Every live order (it holds stock) and every order made with an
/// idempotency key, in `rounds`: what the embedded engine rebuilds its
/// books from.
pub async fn engine_snapshot<S: Sql>(
    db: &mut S,
    rounds: &[RoundId],
) -> Result<Vec<StoredOrder>, StoreError> {
    let released: Vec<&str> = OrderStatus::ALL
        .into_iter()
        .filter(|s| !s.is_live())
        .map(OrderStatus::as_str)
        .collect();
    let tail = format!(
        "WHERE round_id IN ({}) AND (status NOT IN ({}) OR idempotency_key IS NOT NULL)",
        db.dialect().texts_of("$1"),
        db.dialect().texts_of("$2")
    );
    let rounds = text_list(rounds.iter().map(RoundId::as_str));
    keyed_where(db, &tail, &[rounds, text_list(released)]).await
}

/// Ended orders whose units the engine has not taken back yet.
pub async fn releases_due<S: Sql>(db: &mut S, max: usize) -> Result<Vec<Order>, StoreError> {
    orders_where(
        db,
        "WHERE release_due = 1 LIMIT $1",
        &[Value::Int(max as i64)],
    )
    .await
}

/// Inserts new orders; an order already stored (same id) is left as it is,
/// so the Redis order writer may deliver the same winner twice. Returns the
/// ids of orders that collide with another stored order (the same
/// idempotency key under another id): those are not stored. `created` holds
/// each order's `order.created` event, in the same order; only those of the
/// orders stored now are recorded.
pub async fn insert_orders<S: Sql>(
    db: &mut S,
    orders: &[&Keyed],
    created: Vec<NewEvent>,
) -> Result<HashSet<String>, StoreError> {
    if orders.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = orders
        .iter()
        .map(|(order, key)| {
            let discounted = Some(&order.pricing).filter(|p| !p.discounts.is_empty());
            vec![
                order.id.as_str().into(),
                order.drop_id.as_str().into(),
                order.round_id.as_str().into(),
                order.sku.as_str().into(),
                order.user_id.as_str().into(),
                Value::Int(i64::from(order.quantity.get())),
                order.status.as_str().into(),
                order.unit_price.to_string().into(),
                order.amount_due.to_string().into(),
                order.deposit_due.to_string().into(),
                order.currency.as_str().into(),
                db_time(order.created_at).into(),
                db_time(order.pay_by).into(),
                key.as_ref().map(|(k, _)| k.as_str()).into(),
                key.as_ref().map(|(_, f)| f.as_str()).into(),
                discounted.map(|p| p.list_amount.to_string()).into(),
                discounted
                    .map(|p| serde_json::to_string(&p.discounts).unwrap_or_default())
                    .into(),
                order.balance_from.map(db_time).into(),
                order.balance_until.map(db_time).into(),
            ]
        })
        .collect();
    let inserted = db.insert(&NEW_ORDER, rows).await?;
    for (event, _) in created.into_iter().zip(&inserted).filter(|(_, new)| **new) {
        db.record(event)?;
    }
    if inserted.iter().all(|row| *row) {
        return Ok(HashSet::new());
    }
    // Skipped: already stored (a redelivery, fine) or colliding (refused).
    let skipped: Vec<&str> = orders
        .iter()
        .zip(&inserted)
        .filter(|(_, inserted)| !**inserted)
        .map(|((o, _), _)| o.id.as_str())
        .collect();
    let present = stored_ids(db, &skipped).await?;
    Ok(skipped
        .into_iter()
        .filter(|id| !present.contains(*id))
        .map(str::to_owned)
        .collect())
}

/// The columns a move to `to` sets, as SQL: the status, the end time of a
/// final status (`now_param`), and the release an order that gives its units
/// back owes the engine (cleared once the engine has taken them, retried
/// until then).
fn move_columns(to: OrderStatus, returns_units: bool, now_param: &str) -> String {
    let mut set = String::from("status = '") + to.as_str() + "'";
    if to.is_final() {
        set += &format!(", ended_at = {now_param}");
    }
    if returns_units {
        set += ", release_due = 1";
    }
    set
}

/// Moves `order` to `to` if the state machine allows it and the stored
/// order is still where `order` says: the order as it now is, or None when
/// the move is not allowed or another change came first. `also` sets more
/// columns (name, value).
pub async fn move_order<S: Sql>(
    db: &mut S,
    order: &Order,
    to: OrderStatus,
    now: Timestamp,
    also: &[(&str, Value<'_>)],
) -> Result<Option<Order>, StoreError> {
    let Some(step) = transition(order.status, to) else {
        return Ok(None);
    };
    let mut params: Vec<Value<'_>> = vec![order.id.as_str().into(), order.status.as_str().into()];
    let mut set = move_columns(to, step.returns_units, "$3");
    if to.is_final() {
        params.push(db_time(now).into());
    }
    let mut times = order.after.status_times.clone();
    times.reach(to, now);
    let times = [("status_times", Value::from(times.to_json()))];
    for (column, value) in also.iter().chain(&times) {
        params.push(value.clone());
        set += &format!(", {column} = ${}", params.len());
    }
    let sql =
        format!("UPDATE orders SET {set} WHERE id = $1 AND status = $2 RETURNING {ORDER_COLUMNS}");
    let moved = db
        .rows(&sql, &params)
        .await?
        .first()
        .map(order_from)
        .transpose()?;
    if let Some(moved) = &moved {
        event_rows::record(db, step.event.event_type(), moved, now)?;
        if gives_coupon_back(moved) {
            give_back(db, &[moved.id.as_str()]).await?;
        }
    }
    Ok(moved)
}

/// An order cancelled or expired unpaid gives its coupon back; a paid,
/// refunded or forfeited one does not.
fn gives_coupon_back(order: &Order) -> bool {
    order.coupon_id.is_some()
        && matches!(order.status, OrderStatus::Cancelled | OrderStatus::Expired)
}

/// What an edit of an order at checkout did.
#[derive(Debug)]
pub enum EditOutcome {
    Edited(Order),
    /// No such order, or another shopper's.
    NotFound,
    /// The order is past pending payment: it can no longer change.
    NotEditable(Order),
    /// The change needs something the shopper does not have (say, the address).
    Missing(&'static str),
    /// The coupon cannot go on this order.
    Coupon(super::CouponRefusal),
}

/// Sets `columns` of a pending order locked by [`locked_pending`]: the
/// order as it now is.
pub(super) async fn edit_columns<S: Sql>(
    db: &mut S,
    order: Order,
    columns: &[(&str, Value<'_>)],
) -> Result<EditOutcome, StoreError> {
    Ok(match set_columns(db, &order, columns).await? {
        Some(edited) => EditOutcome::Edited(edited),
        None => EditOutcome::NotEditable(order),
    })
}

/// One of `user`'s orders, locked, while it is pending payment; otherwise
/// what an edit of it answers (another shopper's order is not found).
pub(super) async fn locked_pending<S: Sql>(
    db: &mut S,
    id: &OrderId,
    user: &UserId,
) -> Result<Result<Order, EditOutcome>, StoreError> {
    Ok(match locked_own(db, id, user).await? {
        None => Err(EditOutcome::NotFound),
        Some(order) if order.status != OrderStatus::PendingPayment => {
            Err(EditOutcome::NotEditable(order))
        }
        Some(order) => Ok(order),
    })
}

/// One of `user`'s orders, locked until the transaction ends.
pub(super) async fn locked_own<S: Sql>(
    db: &mut S,
    id: &OrderId,
    user: &UserId,
) -> Result<Option<Order>, StoreError> {
    Ok(locked(db, id.as_str())
        .await?
        .filter(|o| &o.user_id == user))
}

/// Sets `columns` of an order still in the status it was read in: the
/// order as it now is, or None if its status has changed.
pub(super) async fn set_columns<S: Sql>(
    db: &mut S,
    order: &Order,
    columns: &[(&str, Value<'_>)],
) -> Result<Option<Order>, StoreError> {
    let mut params: Vec<Value<'_>> = vec![order.id.as_str().into(), order.status.as_str().into()];
    let mut set = Vec::with_capacity(columns.len());
    for (column, value) in columns {
        params.push(value.clone());
        set.push(format!("{column} = ${}", params.len()));
    }
    let sql = format!(
        "UPDATE orders SET {} WHERE id = $1 AND status = $2 RETURNING {ORDER_COLUMNS}",
        set.join(", ")
    );
    db.rows(&sql, &params)
        .await?
        .first()
        .map(order_from)
        .transpose()
}

/// The order, locked until the transaction ends.
pub(super) async fn locked<S: Sql>(db: &mut S, id: &str) -> Result<Option<Order>, StoreError> {
    let tail = format!("WHERE id = $1{}", db.dialect().lock_rows());
    Ok(orders_where(db, &tail, &[id.into()]).await?.pop())
}

pub async fn cancel<S: Sql>(
    db: &mut S,
    id: &OrderId,
    user: &UserId,
    now: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(order) = locked_own(db, id, user).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    Ok(
        match move_order(db, &order, OrderStatus::Cancelled, now, &[]).await? {
            Some(cancelled) => CancelOutcome::Cancelled(cancelled),
            None => CancelOutcome::NotCancellable(order),
        },
    )
}

pub async fn pay<S: Sql>(
    db: &mut S,
    notice: &PaymentNotice,
    shipping: &ShipPlan,
    now: Timestamp,
) -> Result<PayOutcome, StoreError> {
    // A presale's deposit and balance are two transactions of one order.
    let recorded = texts(
        db,
        "SELECT id FROM orders WHERE transaction_id = $1 \
         UNION ALL SELECT id FROM orders WHERE balance_transaction_id = $1",
        &[notice.transaction_id.as_str().into()],
    )
    .await?;
    if let Some(paid_id) = recorded.into_iter().next() {
        // A gateway redelivers notifications: the same transaction is a no-op.
        if paid_id != notice.order_id.as_str() {
            return Ok(PayOutcome::TransactionUsedElsewhere);
        }
        let order = get(db, &notice.order_id).await?;
        return order
            .map(PayOutcome::AlreadyRecorded)
            .ok_or(StoreError::Corrupt(paid_id));
    }
    let Some(order) = locked(db, notice.order_id.as_str()).await? else {
        return Ok(PayOutcome::NotFound);
    };
    let (to, also) = match pay_step(&order, notice, now) {
        PayStep::Refuse(outcome) => return Ok(outcome),
        PayStep::End(to) => (to, vec![]),
        PayStep::Pay { to, paid } => {
            let transaction = if order.status == OrderStatus::DepositPaid {
                "balance_transaction_id"
            } else {
                "transaction_id"
            };
            let mut also: Vec<(&str, Value<'_>)> = vec![
                (transaction, notice.transaction_id.as_str().into()),
                ("payment_method", notice.method.as_str().into()),
                ("paid_amount", paid.to_string().into()),
                ("paid_at", db_time(now).into()),
            ];
            if to == OrderStatus::DepositPaid {
                // The deposit's intent is spent: the balance takes its own.
                also.push(("payment_id", Value::Null));
                also.push(("installments", Value::Null));
            }
            // What the confirmation SMS says; a deposit ships no sooner
            // than the balance can be paid.
            let not_before = order
                .balance_from
                .filter(|_| to == OrderStatus::DepositPaid);
            let ships = shipping.estimate(now, not_before).to_string();
            also.push(("estimated_ship_date", ships.into()));
            (to, also)
        }
    };
    Ok(match move_order(db, &order, to, now, &also).await? {
        Some(moved) if to.is_final() => PayOutcome::ExpiredNow(moved),
        Some(paid) => PayOutcome::Paid(paid),
        None => PayOutcome::NotPayable(order),
    })
}

/// The deadlines the sweeper enforces: a status, the column holding its
/// deadline, and where an order still there at the deadline goes.
const DEADLINES: [(OrderStatus, &str, OrderStatus); 3] = [
    (OrderStatus::PendingPayment, "pay_by", OrderStatus::Expired),
    (
        OrderStatus::DepositPaid,
        "balance_until",
        OrderStatus::Forfeited,
    ),
    // Every return window has closed: the order is complete.
    (
        OrderStatus::Delivered,
        "complete_at",
        OrderStatus::Completed,
    ),
];

/// Ends up to `max` orders past their deadline at `now` (unpaid ones
/// expire, presales with the balance unpaid are forfeited) and returns
/// them; rows another instance is ending at the same moment are skipped,
/// not waited for.
pub async fn expire_due<S: Sql>(
    db: &mut S,
    now: Timestamp,
    max: usize,
) -> Result<Vec<Order>, StoreError> {
    let mut ended = Vec::new();
    for (from, deadline, to) in DEADLINES {
        let left = max - ended.len();
        if left == 0 {
            break;
        }
        let Some(step) = transition(from, to) else {
            continue;
        };
        let returns_units = step.returns_units;
        let sql = format!(
            "UPDATE orders SET {} WHERE id IN ( \
                 SELECT id FROM orders WHERE status = $3 AND {deadline} <= $1 \
                 ORDER BY {deadline} LIMIT $2{}) \
             AND status = $3 RETURNING {ORDER_COLUMNS}",
            move_columns(to, returns_units, "$1"),
            db.dialect().lock_free_rows()
        );
        let params = [
            db_time(now).into(),
            Value::Int(left as i64),
            from.as_str().into(),
        ];
        for row in db.rows(&sql, &params).await? {
            let order = order_from(&row)?;
            event_rows::record(db, step.event.event_type(), &order, now)?;
            ended.push(order);
        }
    }
    let coupons_back: Vec<&str> = ended
        .iter()
        .filter(|o| gives_coupon_back(o))
        .map(|o| o.id.as_str())
        .collect();
    give_back(db, &coupons_back).await?;
    Ok(ended)
}

/// Records that the engine has taken back these orders' units.
pub async fn mark_released<S: Sql>(db: &mut S, ids: &[OrderId]) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE orders SET release_due = 0 WHERE id IN ({})",
        db.dialect().texts_of("$1")
    );
    db.execute(&sql, &[text_list(ids.iter().map(OrderId::as_str))])
        .await?;
    Ok(())
}

/// Records a restock; false if one with its id was recorded before.
pub async fn add_restock<S: Sql>(
    db: &mut S,
    record: &RestockRecord,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let restock = &record.restock;
    let inserted = db
        .execute(
            "INSERT INTO restocks (round_id, sku, units, created_at, id) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
            &[
                restock.round_id.as_str().into(),
                restock.sku.as_str().into(),
                Value::Int(restock.units as i64),
                db_time(now).into(),
                record.id.as_str().into(),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

pub async fn restock_ids<S: Sql>(
    db: &mut S,
    round_id: &RoundId,
) -> Result<Vec<String>, StoreError> {
    texts(
        db,
        "SELECT id FROM restocks WHERE round_id = $1 AND id IS NOT NULL",
        &[round_id.as_str().into()],
    )
    .await
}

/// Restocks summed per round and SKU; of every round when `round_id` is None.
pub async fn restocks<S: Sql>(
    db: &mut S,
    round_id: Option<&RoundId>,
) -> Result<Vec<Restock>, StoreError> {
    let rows = db
        .rows(
            "SELECT round_id, sku, CAST(SUM(units) AS BIGINT) FROM restocks \
             WHERE CAST($1 AS TEXT) IS NULL OR round_id = CAST($1 AS TEXT) GROUP BY round_id, sku",
            &[round_id.map(RoundId::as_str).into()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Restock {
                round_id: RoundId::parse(&row.text(0)?).map_err(|e| StoreError::Corrupt(e.0))?,
                sku: row.text(1)?,
                units: row.int(2)? as u64,
            })
        })
        .collect()
}

pub async fn status_counts<S: Sql>(
    db: &mut S,
    round_id: &RoundId,
) -> Result<StatusCounts, StoreError> {
    let rows = db
        .rows(
            "SELECT status, COUNT(*) FROM orders WHERE round_id = $1 GROUP BY status",
            &[round_id.as_str().into()],
        )
        .await?;
    let mut counts = StatusCounts::default();
    for row in rows {
        counts.add(&row.text(0)?, row.int(1)? as u64);
    }
    Ok(counts)
}

/// Records a drop unless its id is taken; false if it was.
pub async fn save_drop<S: Sql>(
    db: &mut S,
    id: &str,
    definition: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = db
        .execute(
            "INSERT INTO drops (id, definition, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
            &[id.into(), definition.into(), db_time(now).into()],
        )
        .await?;
    Ok(inserted == 1)
}

/// Every drop operators created, as the JSON they sent, oldest first.
pub async fn saved_drops<S: Sql>(db: &mut S) -> Result<Vec<String>, StoreError> {
    texts(
        db,
        "SELECT definition FROM drops ORDER BY created_at, id",
        &[],
    )
    .await
}

/// Which of `ids` are stored (a batch whose commit's outcome is unknown is
/// read back with this).
pub async fn stored_ids<S: Sql>(db: &mut S, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
    let sql = format!(
        "SELECT id FROM orders WHERE id IN ({})",
        db.dialect().texts_of("$1")
    );
    Ok(texts(db, &sql, &[text_list(ids.iter().copied())])
        .await?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_have_one_width_and_sort_as_text_in_time_order() {
        let times = [
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05.007Z",
            "2026-01-02T03:04:05.12Z",
            "2026-12-31T23:59:59.999999Z",
        ];
        let printed: Vec<String> = times.iter().map(|t| db_time(t.parse().unwrap())).collect();
        assert_eq!(
            printed,
            [
                "2026-01-02T03:04:05.000Z",
                "2026-01-02T03:04:05.007Z",
                "2026-01-02T03:04:05.120Z",
                "2026-12-31T23:59:59.999Z",
            ]
        );
    }
}
