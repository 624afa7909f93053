//! The statements of the `promotions` table: operators' promotions and the
//! ends of any promotion, which every instance rebuilds its live set from.

use jiff::Timestamp;

use super::orders::db_time;
use super::sql::Sql;
use super::StoreError;
use crate::promotions::StoredPromotion;

/// Records an operator's promotion unless its id is taken (ended or not);
/// false if it was.
pub async fn save<S: Sql>(
    db: &mut S,
    id: &str,
    definition: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = db
        .execute(
            "INSERT INTO promotions (id, definition, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
            &[id.into(), definition.into(), db_time(now).into()],
        )
        .await?;
    Ok(inserted == 1)
}

/// Ends a promotion (an operator's or a config file's); false if it had
/// ended already.
pub async fn end<S: Sql>(db: &mut S, id: &str, now: Timestamp) -> Result<bool, StoreError> {
    let at = db_time(now);
    let changed = db
        .execute(
            "INSERT INTO promotions (id, definition, created_at, ended_at) VALUES ($1, NULL, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET ended_at = $2 WHERE promotions.ended_at IS NULL",
            &[id.into(), at.as_str().into()],
        )
        .await?;
    Ok(changed == 1)
}

/// Every row, oldest first.
pub async fn all<S: Sql>(db: &mut S) -> Result<Vec<StoredPromotion>, StoreError> {
    let rows = db
        .rows(
            "SELECT id, definition, ended_at FROM promotions ORDER BY created_at, id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let ended_at = match row.opt_text(2)? {
                Some(raw) => Some(
                    raw.parse()
                        .map_err(|_| StoreError::Corrupt(format!("time {raw:?}")))?,
                ),
                None => None,
            };
            Ok(StoredPromotion {
                id: row.text(0)?,
                definition: row.opt_text(1)?,
                ended_at,
            })
        })
        .collect()
}
