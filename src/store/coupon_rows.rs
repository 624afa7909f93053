//! The statements of coupons: batches, claims, and the one coupon an order
//! uses. A coupon is taken by an order with one guarded update (`order_id
//! IS NULL`), so two checkouts racing for it — on one instance or two —
//! end with one winner; it is given back when its order is cancelled or
//! expires unpaid.

use jiff::Timestamp;

use super::orders::{db_time, edit_columns, locked_pending, EditOutcome};
use super::sql::{text_list, Row, Sql, Value};
use super::StoreError;
use crate::coupons::{Batch, BatchDefinition};
use crate::domain::{OrderId, UserId};
use crate::order::Order;
use crate::pricing::{with_coupon, without_coupon, Pricing};

/// A claimed coupon as stored, with its batch's definition.
#[derive(Debug, Clone)]
pub struct CouponRow {
    pub id: String,
    pub definition: BatchDefinition,
    pub order_id: Option<String>,
    pub claimed_at: Timestamp,
}

/// What a claim did.
#[derive(Debug)]
pub enum ClaimOutcome {
    /// Boxed: the refusals are a few bytes.
    Claimed(Box<CouponRow>),
    NoSuchBatch,
    SoldOut,
    LimitExceeded {
        per_user: u32,
    },
}

/// Why a coupon cannot go on an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponRefusal {
    /// The shopper has no such coupon.
    Unknown,
    /// It is on another order.
    Used,
    /// Out of its window, not for this SKU, or below its minimum spend.
    NotApplicable(String),
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn definition_of(raw: &str) -> Result<BatchDefinition, StoreError> {
    serde_json::from_str(raw).map_err(|_| corrupt("coupon batch definition"))
}

fn time_of(raw: &str) -> Result<Timestamp, StoreError> {
    raw.parse().map_err(|_| corrupt("coupon time"))
}

/// Records a batch; false if its id is taken.
pub async fn save_batch<S: Sql>(
    db: &mut S,
    batch: &Batch,
    definition: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = db
        .execute(
            "INSERT INTO coupon_batches (id, definition, total, per_user, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            &[
                batch.id.as_str().into(),
                definition.into(),
                Value::Int(batch.total as i64),
                Value::Int(i64::from(batch.per_user)),
                db_time(now).into(),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Every batch's definition and how many were claimed, oldest first; or
/// only the one named `id`.
pub async fn batches<S: Sql>(
    db: &mut S,
    id: Option<&str>,
) -> Result<Vec<(BatchDefinition, i64)>, StoreError> {
    let rows = match id {
        Some(id) => {
            db.rows(
                "SELECT definition, claimed FROM coupon_batches WHERE id = $1",
                &[id.into()],
            )
            .await?
        }
        None => {
            db.rows(
                "SELECT definition, claimed FROM coupon_batches ORDER BY created_at, id",
                &[],
            )
            .await?
        }
    };
    rows.iter()
        .map(|row| Ok((definition_of(&row.text(0)?)?, row.int(1)?)))
        .collect()
}

/// Claims one coupon of `batch_id` for `user`, within the batch's total and
/// per-shopper counts.
pub async fn claim<S: Sql>(
    db: &mut S,
    batch_id: &str,
    user: &UserId,
    coupon_id: &str,
    now: Timestamp,
) -> Result<ClaimOutcome, StoreError> {
    // The batch's row, locked: claims of one batch take turns, so the
    // counts below are exact across instances.
    let sql = format!(
        "SELECT definition, total, per_user, claimed FROM coupon_batches WHERE id = $1{}",
        db.dialect().lock_rows()
    );
    let rows = db.rows(&sql, &[batch_id.into()]).await?;
    let Some(row) = rows.first() else {
        return Ok(ClaimOutcome::NoSuchBatch);
    };
    let (definition, total, per_user, claimed) =
        (row.text(0)?, row.int(1)?, row.int(2)?, row.int(3)?);
    if claimed >= total {
        return Ok(ClaimOutcome::SoldOut);
    }
    let held = db
        .rows(
            "SELECT COUNT(*) FROM coupons WHERE user_id = $1 AND batch_id = $2",
            &[user.as_str().into(), batch_id.into()],
        )
        .await?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    if held >= per_user {
        return Ok(ClaimOutcome::LimitExceeded {
            per_user: u32::try_from(per_user).unwrap_or(u32::MAX),
        });
    }
    db.execute(
        "UPDATE coupon_batches SET claimed = claimed + 1 WHERE id = $1",
        &[batch_id.into()],
    )
    .await?;
    db.execute(
        "INSERT INTO coupons (id, batch_id, user_id, claimed_at) VALUES ($1, $2, $3, $4)",
        &[
            coupon_id.into(),
            batch_id.into(),
            user.as_str().into(),
            db_time(now).into(),
        ],
    )
    .await?;
    Ok(ClaimOutcome::Claimed(Box::new(CouponRow {
        id: coupon_id.to_owned(),
        definition: definition_of(&definition)?,
        order_id: None,
        claimed_at: now,
    })))
}

const COUPON_COLUMNS: &str = "c.id, b.definition, c.order_id, c.claimed_at";

fn coupon_from(row: &Row) -> Result<CouponRow, StoreError> {
    Ok(CouponRow {
        id: row.text(0)?,
        definition: definition_of(&row.text(1)?)?,
        order_id: row.opt_text(2)?,
        claimed_at: time_of(&row.text(3)?)?,
    })
}

/// The shopper's coupons, newest first; or only the one named `id`.
pub async fn for_user<S: Sql>(
    db: &mut S,
    user: &UserId,
    id: Option<&str>,
) -> Result<Vec<CouponRow>, StoreError> {
    let from = "FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id WHERE c.user_id = $1";
    let rows = match id {
        Some(id) => {
            let sql = format!("SELECT {COUPON_COLUMNS} {from} AND c.id = $2");
            db.rows(&sql, &[user.as_str().into(), id.into()]).await?
        }
        None => {
            let sql = format!("SELECT {COUPON_COLUMNS} {from} ORDER BY c.claimed_at DESC, c.id");
            db.rows(&sql, &[user.as_str().into()]).await?
        }
    };
    rows.iter().map(coupon_from).collect()
}

/// Puts one of the shopper's coupons on their pending order (replacing any
/// other), or takes the order's coupon off (`coupon_id` None); the amounts
/// are recomputed from the prices locked at the win, and an open payment
/// intent is dropped (its amount no longer holds).
pub async fn set_order_coupon<S: Sql>(
    db: &mut S,
    order_id: &OrderId,
    user: &UserId,
    coupon_id: Option<&str>,
    now: Timestamp,
) -> Result<EditOutcome, StoreError> {
    let order = match locked_pending(db, order_id, user).await? {
        Ok(order) => order,
        Err(refused) => return Ok(refused),
    };
    let pricing = match coupon_id {
        None => without_coupon(&order.pricing),
        Some(id) => {
            let Some(coupon) = for_user(db, user, Some(id)).await?.pop() else {
                return Ok(EditOutcome::Coupon(CouponRefusal::Unknown));
            };
            if coupon
                .order_id
                .as_deref()
                .is_some_and(|o| o != order.id.as_str())
            {
                return Ok(EditOutcome::Coupon(CouponRefusal::Used));
            }
            let batch = coupon
                .definition
                .parse()
                .map_err(|_| corrupt("coupon batch definition"))?;
            if !batch.applies(&order.sku, now) {
                return Ok(EditOutcome::Coupon(CouponRefusal::NotApplicable(
                    "this coupon is not valid now or not for this product".into(),
                )));
            }
            match with_coupon(&order.pricing, &batch.terms(id)) {
                Ok(pricing) => pricing,
                Err(refused) => {
                    return Ok(EditOutcome::Coupon(CouponRefusal::NotApplicable(
                        refused.to_string(),
                    )))
                }
            }
        }
    };
    give_back(db, &[order.id.as_str()]).await?;
    if let Some(id) = coupon_id {
        let taken = db
            .execute(
                "UPDATE coupons SET order_id = $1, used_at = $2 \
                 WHERE id = $3 AND user_id = $4 AND order_id IS NULL",
                &[
                    order.id.as_str().into(),
                    db_time(now).into(),
                    id.into(),
                    user.as_str().into(),
                ],
            )
            .await?;
        if taken != 1 {
            // Another instance's checkout took it after our read: fail the
            // job (its savepoint undoes the give-back); a retry sees it used.
            return Err(StoreError::Raced(format!(
                "coupon {id} was taken meanwhile"
            )));
        }
    }
    let columns = repriced(&order, &pricing, coupon_id);
    edit_columns(db, order, &columns).await
}

/// The order's money columns for a new pricing: what is due, the deposit
/// (a presale's never above what is due), the discounts.
fn repriced<'a>(
    order: &Order,
    pricing: &Pricing,
    coupon_id: Option<&'a str>,
) -> Vec<(&'static str, Value<'a>)> {
    let deposit_due = if order.balance_due.is_some() {
        order.deposit_due.min(pricing.amount_due)
    } else {
        pricing.amount_due
    };
    let discounted = !pricing.discounts.is_empty();
    vec![
        ("amount_due", pricing.amount_due.to_string().into()),
        ("deposit_due", deposit_due.to_string().into()),
        (
            "list_amount",
            if discounted {
                pricing.list_amount.to_string().into()
            } else {
                Value::Null
            },
        ),
        (
            "discounts",
            if discounted {
                serde_json::to_string(&pricing.discounts)
                    .unwrap_or_default()
                    .into()
            } else {
                Value::Null
            },
        ),
        ("coupon_id", coupon_id.into()),
        ("payment_id", Value::Null),
    ]
}

/// Frees the coupons of these orders (cancelled, expired, or changing coupon).
pub async fn give_back<S: Sql>(db: &mut S, order_ids: &[&str]) -> Result<(), StoreError> {
    if order_ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE coupons SET order_id = NULL, used_at = NULL WHERE order_id IN ({})",
        db.dialect().texts_of("$1")
    );
    db.execute(&sql, &[text_list(order_ids.iter().copied())])
        .await?;
    Ok(())
}
