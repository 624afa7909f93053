//! The statements of the `addresses` table: a shopper's delivery addresses,
//! at most one of them the default.

use super::orders::{db_time, edit_columns, locked_pending, EditOutcome};
use super::sql::{Row, Sql};
use super::StoreError;
use crate::address::{Address, Destination};
use crate::domain::{OrderId, UserId};

const ADDRESS_COLUMNS: &str = "id, name, phone, region, detail, is_default, created_at";

/// What adding an address did.
#[derive(Debug)]
pub enum AddOutcome {
    Added(Address),
    /// The shopper keeps `max` addresses already.
    TooMany,
}

fn address_from(row: &Row) -> Result<Address, StoreError> {
    let created = row.text(6)?;
    Ok(Address {
        id: row.text(0)?,
        destination: Destination {
            name: row.text(1)?,
            phone: row.text(2)?,
            region: row.text(3)?,
            detail: row.text(4)?,
        },
        default: row.int(5)? == 1,
        created_at: created
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("time {created:?}")))?,
    })
}

/// Adds an address unless the shopper has `max`; the first one, or one
/// sent as default, becomes the default.
pub async fn add<S: Sql>(
    db: &mut S,
    user: &UserId,
    address: &Address,
    max: usize,
) -> Result<AddOutcome, StoreError> {
    let user_id = user.as_str();
    // Two instances may add for one shopper at once: the lock makes the
    // second wait, and its count (a new statement) then sees the first's.
    if let Some(lock) = db.dialect().lock_key() {
        db.rows(lock, &[format!("addresses:{user_id}").into()])
            .await?;
    }
    let count = db
        .rows(
            "SELECT COUNT(*) FROM addresses WHERE user_id = $1",
            &[user_id.into()],
        )
        .await?
        .first()
        .map(|row| row.int(0))
        .transpose()?
        .unwrap_or(0);
    if count >= max as i64 {
        return Ok(AddOutcome::TooMany);
    }
    let default = address.default || count == 0;
    if default {
        db.execute(
            "UPDATE addresses SET is_default = 0 WHERE user_id = $1 AND is_default = 1",
            &[user_id.into()],
        )
        .await?;
    }
    let d = &address.destination;
    db.execute(
        &format!("INSERT INTO addresses ({ADDRESS_COLUMNS}, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
        &[
            address.id.as_str().into(),
            d.name.as_str().into(),
            d.phone.as_str().into(),
            d.region.as_str().into(),
            d.detail.as_str().into(),
            i64::from(default).into(),
            db_time(address.created_at).into(),
            user_id.into(),
        ],
    )
    .await?;
    Ok(AddOutcome::Added(Address {
        default,
        ..address.clone()
    }))
}

/// The shopper's addresses, the default first, then the newest.
pub async fn list<S: Sql>(db: &mut S, user: &UserId) -> Result<Vec<Address>, StoreError> {
    let sql = format!(
        "SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 \
         ORDER BY is_default DESC, created_at DESC, id DESC"
    );
    db.rows(&sql, &[user.as_str().into()])
        .await?
        .iter()
        .map(address_from)
        .collect()
}

/// One of the shopper's addresses: `id`, or the default when `id` is None.
pub async fn find<S: Sql>(
    db: &mut S,
    user: &UserId,
    id: Option<&str>,
) -> Result<Option<Address>, StoreError> {
    let rows = match id {
        Some(id) => {
            let sql =
                format!("SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND id = $2");
            db.rows(&sql, &[user.as_str().into(), id.into()]).await?
        }
        None => {
            let sql = format!(
                "SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND is_default = 1"
            );
            db.rows(&sql, &[user.as_str().into()]).await?
        }
    };
    rows.first().map(address_from).transpose()
}

/// Deletes one of the shopper's addresses; false if they have none with
/// this id. Deleting the default makes the newest remaining one the default.
pub async fn delete<S: Sql>(db: &mut S, user: &UserId, id: &str) -> Result<bool, StoreError> {
    let user_id = user.as_str();
    let deleted = db
        .rows(
            "DELETE FROM addresses WHERE user_id = $1 AND id = $2 RETURNING is_default",
            &[user_id.into(), id.into()],
        )
        .await?;
    let Some(row) = deleted.first() else {
        return Ok(false);
    };
    if row.int(0)? == 1 {
        db.execute(
            "UPDATE addresses SET is_default = 1 WHERE id = ( \
                 SELECT id FROM addresses WHERE user_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT 1)",
            &[user_id.into()],
        )
        .await?;
    }
    Ok(true)
}

/// Copies one of the shopper's addresses into their pending order.
pub async fn set_order_address<S: Sql>(
    db: &mut S,
    order: &OrderId,
    user: &UserId,
    address_id: &str,
) -> Result<EditOutcome, StoreError> {
    let order = match locked_pending(db, order, user).await? {
        Ok(order) => order,
        Err(refused) => return Ok(refused),
    };
    let Some(address) = find(db, user, Some(address_id)).await? else {
        return Ok(EditOutcome::Missing("address"));
    };
    let copy = serde_json::to_string(&address.destination).unwrap_or_default();
    edit_columns(db, order, &[("address", copy.into())]).await
}
