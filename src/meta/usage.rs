//! What the store holds, read from `storage_totals`: a few rows per namespace that the
//! migrations' triggers keep exact in the transaction of every change to entries and blobs. So
//! `/metrics`, `hearth stats`, the admin API and garbage collection cost O(namespaces) however
//! many entries there are (the scans this replaced took 6 s at 10^6 entries on SQLite).
//!
//! Rows are summed over stripes on read: PostgreSQL writes each connection's changes to a
//! stripe of its own, so that concurrent uploads never wait for one another's totals row.

use super::{NamespaceUsage, StorageUsage};
use crate::{Error, Result};

/// Totals of one namespace, or of the whole store (namespace `''`), summed over stripes.
/// SUM is cast because PostgreSQL widens BIGINT sums to NUMERIC.
const TOTALS: &str = "SELECT namespace, CAST(SUM(entries) AS BIGINT) AS entries, \
     CAST(SUM(logical_bytes) AS BIGINT) AS logical_bytes, CAST(SUM(blobs) AS BIGINT) AS blobs, \
     CAST(SUM(unique_bytes) AS BIGINT) AS unique_bytes, CAST(SUM(compressed_bytes) AS BIGINT) AS compressed_bytes, \
     CAST(SUM(physical_bytes) AS BIGINT) AS physical_bytes \
     FROM storage_totals WHERE ($1 IS NULL OR namespace = $1 OR namespace = '') \
     GROUP BY namespace ORDER BY namespace";

#[derive(sqlx::FromRow)]
pub(super) struct TotalsSql {
    namespace: String,
    entries: i64,
    logical_bytes: i64,
    blobs: i64,
    unique_bytes: i64,
    compressed_bytes: i64,
    physical_bytes: i64,
}

/// The store's totals and those of its namespaces, as read in one statement (one snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// The whole store; its entries and logical bytes are those of the namespaces read.
    pub store: StorageUsage,
    /// Namespaces holding entries, ordered by name.
    pub namespaces: Vec<NamespaceUsage>,
}

/// Reads the totals of the store and of every namespace, or of `namespace` only.
pub(super) async fn read<'c, E, DB>(conn: E, namespace: Option<&str>) -> Result<Totals>
where
    E: sqlx::Executor<'c, Database = DB>,
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> TotalsSql: sqlx::FromRow<'r, DB::Row>,
{
    let rows: Vec<TotalsSql> = sqlx::query_as(TOTALS)
        .bind(namespace)
        .fetch_all(conn)
        .await
        .map_err(Error::db("reading storage totals"))?;
    Ok(assemble(rows))
}

pub(super) fn assemble(rows: Vec<TotalsSql>) -> Totals {
    let mut totals = Totals::default();
    for row in rows {
        if row.namespace.is_empty() {
            totals.store.blobs = row.blobs;
            totals.store.unique_bytes = row.unique_bytes;
            totals.store.compressed_bytes = row.compressed_bytes;
            totals.store.physical_bytes = row.physical_bytes;
            continue;
        }
        totals.store.entries += row.entries;
        totals.store.logical_bytes += row.logical_bytes;
        // A namespace whose entries are all gone keeps its (zero) rows: not listed.
        if row.entries == 0 {
            continue;
        }
        totals.namespaces.push(NamespaceUsage {
            namespace: row.namespace,
            usage: StorageUsage {
                entries: row.entries,
                blobs: row.blobs,
                logical_bytes: row.logical_bytes,
                unique_bytes: row.unique_bytes,
                compressed_bytes: row.compressed_bytes,
                // A namespace's blobs are stored in it once each (dedup counted within it).
                physical_bytes: row.compressed_bytes,
            },
        });
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(namespace: &str, entries: i64, blobs: i64, bytes: i64) -> TotalsSql {
        TotalsSql {
            namespace: namespace.into(),
            entries,
            logical_bytes: bytes * 2,
            blobs,
            unique_bytes: bytes,
            compressed_bytes: bytes / 2,
            physical_bytes: if namespace.is_empty() { bytes } else { 0 },
        }
    }

    #[test]
    fn store_figures_come_from_the_store_row_and_the_namespaces() {
        let totals = assemble(vec![row("", 0, 5, 1000), row("a", 3, 2, 100), row("gone", 0, 0, 0)]);
        assert_eq!(
            totals.store,
            StorageUsage {
                entries: 3,
                blobs: 5,
                logical_bytes: 200,
                unique_bytes: 1000,
                compressed_bytes: 500,
                physical_bytes: 1000,
            }
        );
        assert_eq!(totals.namespaces.len(), 1, "namespaces without entries are not listed");
        assert_eq!(totals.namespaces[0].usage.physical_bytes, 50);
    }
}
