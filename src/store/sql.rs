//! What the order store's shared statements need from a database, and the
//! few places where SQLite and PostgreSQL speak differently.
//!
//! Every statement of the store is written once (`orders.rs`), with `$1`,
//! `$2`… placeholders, and runs through [`Sql`]: SQLite and PostgreSQL each
//! implement it twice, for the writer's transaction and for reads.

use std::borrow::Cow;

use super::StoreError;

/// A parameter or a column value: the store keeps text and integers only.
/// Parameters borrow their text where they can: a new order's columns are
/// bound straight from the order, without copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Text(Cow<'a, str>),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Value<'_> {
    fn from(text: String) -> Self {
        Value::Text(Cow::Owned(text))
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(text: Option<&'a str>) -> Self {
        text.map_or(Value::Null, Value::from)
    }
}

/// One row of a result, in select-list order.
pub(crate) struct Row(pub Vec<Value<'static>>);

impl Row {
    fn corrupt(&self, i: usize, wanted: &str) -> StoreError {
        StoreError::Corrupt(format!("column {i}: {wanted} expected"))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.0.get(i) {
            Some(Value::Text(text)) => Ok(Some(text.to_string())),
            Some(Value::Null) => Ok(None),
            _ => Err(self.corrupt(i, "text")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.corrupt(i, "text"))
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => Err(self.corrupt(i, "integer")),
        }
    }
}

/// The type of a column in a bulk insert (PostgreSQL needs it for arrays).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Column {
    Text,
    Int,
}

/// Rows to insert into a table, skipping those that conflict with a stored
/// row; the first column is the key reported back for rows inserted.
pub(crate) struct Insert {
    pub table: &'static str,
    pub columns: &'static [(&'static str, Column)],
}

/// The two SQL dialects, and every difference between them that the shared
/// statements meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Locks the selected rows until the transaction ends. SQLite has one
    /// writer, which already excludes every other change.
    pub fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Like `lock_rows`, skipping rows another transaction holds (several
    /// instances sweep the same table).
    pub fn lock_free_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// A statement that serialises this transaction with every other one
    /// that takes the same key (`$1`, a text), until it ends; None where
    /// one writer already serialises every change (SQLite).
    pub fn lock_key(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => {
                Some("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS locked")
            }
        }
    }

    /// A subquery of the texts in a JSON array passed as `param`.
    pub fn texts_of(self, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value FROM json_each({param})"),
            Dialect::Postgres => {
                format!("SELECT json_array_elements_text(CAST(CAST({param} AS TEXT) AS json))")
            }
        }
    }

    /// A subquery of the integers in a JSON array passed as `param`.
    pub fn ints_of(self, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value FROM json_each({param})"),
            Dialect::Postgres => format!(
                "SELECT CAST(json_array_elements_text(CAST(CAST({param} AS TEXT) AS json)) AS BIGINT)"
            ),
        }
    }
}

/// A JSON array of texts, the parameter of [`Dialect::texts_of`].
pub(crate) fn text_list<'a>(texts: impl IntoIterator<Item = &'a str>) -> Value<'static> {
    let texts: Vec<&str> = texts.into_iter().collect();
    Value::from(serde_json::to_string(&texts).unwrap_or_else(|_| "[]".into()))
}

/// A database connection (in the writer: inside the batch's transaction).
/// Statements use `$n` placeholders; SQLite's implementation rewrites them.
// The store's futures are only awaited inside the crate, by code that knows
// the concrete type (and so whether the future is Send).
#[allow(async_fn_in_trait)]
pub(crate) trait Sql {
    fn dialect(&self) -> Dialect;

    async fn rows(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError>;

    /// Runs a statement; the number of rows it changed.
    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;

    /// Inserts `rows` into `insert.table`, skipping rows that conflict with
    /// a stored row; whether each row was inserted.
    async fn insert(
        &mut self,
        insert: &Insert,
        rows: Vec<Vec<Value<'_>>>,
    ) -> Result<Vec<bool>, StoreError>;

    /// True when the database gave the whole transaction up on its own
    /// (SQLite does on a full disk or an I/O error): the batch must fail.
    fn transaction_lost(&self) -> bool {
        false
    }

    /// Records an order event, inserted with the transaction's commit.
    /// Only the writer's transaction ([`super::event_rows::Recorded`])
    /// records: a change made anywhere else is a mistake, refused.
    fn record(&mut self, event: crate::events::NewEvent) -> Result<(), StoreError> {
        Err(StoreError::database(format!(
            "{} of order {} recorded outside the order writer",
            event.kind, event.order_id
        )))
    }
}

/// The placeholders `$1`, `$2`… as SQLite writes them (`?1`, `?2`…).
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

/// `INSERT … VALUES (?1, …) ON CONFLICT DO NOTHING`, run once per row.
pub(crate) fn sqlite_insert(insert: &Insert) -> String {
    let names: Vec<&str> = insert.columns.iter().map(|(name, _)| *name).collect();
    let slots: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        insert.table,
        names.join(", "),
        slots.join(", ")
    )
}

/// The same for PostgreSQL, every row in one statement: one array parameter
/// per column, unnested into rows; the first column of each row inserted
/// comes back.
pub(crate) fn postgres_insert(insert: &Insert) -> String {
    let names: Vec<&str> = insert.columns.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = insert
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, column))| match column {
            Column::Text => format!("${}::text[]", i + 1),
            Column::Int => format!("${}::int8[]", i + 1),
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({}) ON CONFLICT DO NOTHING RETURNING {}",
        insert.table,
        names.join(", "),
        arrays.join(", "),
        names[0]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Insert = Insert {
        table: "t",
        columns: &[("id", Column::Text), ("n", Column::Int)],
    };

    #[test]
    fn inserts_are_written_for_each_dialect() {
        assert_eq!(
            sqlite_insert(&T),
            "INSERT INTO t (id, n) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            postgres_insert(&T),
            "INSERT INTO t (id, n) SELECT * FROM UNNEST($1::text[], $2::int8[]) \
             ON CONFLICT DO NOTHING RETURNING id"
        );
    }

    #[test]
    fn a_text_list_is_a_json_array_even_with_quotes_inside() {
        assert_eq!(text_list(["a", "b\"c"]), Value::from(r#"["a","b\"c"]"#));
    }
}
