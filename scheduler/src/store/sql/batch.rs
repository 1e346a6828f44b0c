//! Multi-row statements: one statement per chunk of rows rather than one per row, so a
//! reconcile that places or stops thousands of dynos pays a few round trips, not thousands.

use sqlx::Row;

use crate::store::StoreError;

/// Rows (or ids) per statement: with the dynos' 17 columns, 8,500 bound parameters, well
/// under SQLite's limit (32,766) and PostgreSQL's (65,535).
pub(super) const CHUNK: usize = 500;

/// `$first, …, $(first + n - 1)`: the placeholders of an `IN (…)` list.
pub(super) fn list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1, …, $c), ($(c+1), …, $2c), …`: the placeholders of `rows` rows of `columns` values.
pub(super) fn tuples(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", list(r * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sql` with each of `values` bound in order (`$1…$n`).
pub(super) fn bind_all<'q>(
    sql: &'q str,
    values: &'q [impl AsRef<str> + Sync],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    values
        .iter()
        .fold(sqlx::query(sql), |q, v| q.bind(v.as_ref()))
}

/// The first column of each row, as text.
pub(super) fn texts(rows: &[sqlx::any::AnyRow]) -> Result<Vec<String>, StoreError> {
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_on_from_the_first() {
        assert_eq!(list(1, 3), "$1, $2, $3");
        assert_eq!(list(4, 1), "$4");
        assert_eq!(tuples(2, 2), "($1, $2), ($3, $4)");
    }
}
