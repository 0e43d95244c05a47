//! `hearth verify`'s check of the storage totals: the figures the migrations' triggers keep
//! (`storage_totals`, `blobs.refs`) against a full recount of entries and blobs, and the
//! repair that rewrites them from that recount. Nothing else scans the store this way: the
//! recount costs what the scans the totals replaced cost, which an administrator's check may.

use super::usage::{self, Totals};
use super::{NamespaceUsage, StorageUsage};
use crate::{Error, Result};
use serde::Serialize;

/// The store's figures as a full scan counts them (namespace `''`). Its entries and logical
/// bytes are the sums of the namespaces' (as for the kept totals: [`usage::assemble`]), so
/// they are not counted here a second time.
const STORE: &str = "SELECT '' AS namespace, \
     CAST(0 AS BIGINT) AS entries, CAST(0 AS BIGINT) AS logical_bytes, \
     (SELECT COUNT(*) FROM blobs) AS blobs, \
     (SELECT CAST(COALESCE(SUM(raw_size), 0) AS BIGINT) FROM blobs \
      WHERE hash IN (SELECT blob_hash FROM entries)) AS unique_bytes, \
     (SELECT CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) FROM blobs \
      WHERE hash IN (SELECT blob_hash FROM entries)) AS compressed_bytes, \
     (SELECT CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) FROM blobs) AS physical_bytes";

/// Each namespace's figures as a full scan counts them; a blob shared by two namespaces counts
/// in both.
const NAMESPACES: &str = "SELECT l.namespace, l.entries, l.logical_bytes, u.blobs, u.unique_bytes, \
     u.compressed_bytes, CAST(0 AS BIGINT) AS physical_bytes FROM \
     (SELECT namespace, COUNT(*) AS entries, CAST(SUM(size) AS BIGINT) AS logical_bytes \
      FROM entries GROUP BY namespace) l \
     JOIN (SELECT d.namespace, COUNT(*) AS blobs, CAST(SUM(b.raw_size) AS BIGINT) AS unique_bytes, \
      CAST(SUM(b.stored_size) AS BIGINT) AS compressed_bytes \
      FROM (SELECT DISTINCT namespace, blob_hash FROM entries) d JOIN blobs b ON b.hash = d.blob_hash \
      GROUP BY d.namespace) u ON u.namespace = l.namespace \
     ORDER BY l.namespace";

/// Blobs whose kept reference count is not the number of entries pointing at them.
const MISCOUNTED_BLOBS: &str = "SELECT COUNT(*) FROM blobs \
     WHERE refs <> (SELECT COUNT(*) FROM entries WHERE entries.blob_hash = blobs.hash)";

/// The repair, statement by statement: reference counts, then the totals from scratch (the
/// same figures the migration that introduced them started from).
const REPAIR: &[&str] = &[
    "UPDATE blobs SET refs = (SELECT COUNT(*) FROM entries WHERE entries.blob_hash = blobs.hash) \
     WHERE refs <> (SELECT COUNT(*) FROM entries WHERE entries.blob_hash = blobs.hash)",
    "DELETE FROM storage_totals",
    "INSERT INTO storage_totals (namespace, stripe, entries, logical_bytes, blobs, unique_bytes, compressed_bytes) \
     SELECT namespace, 0, SUM(entries), SUM(logical_bytes), SUM(blobs), SUM(unique_bytes), SUM(compressed_bytes) FROM ( \
         SELECT namespace, COUNT(*) AS entries, SUM(size) AS logical_bytes, 0 AS blobs, 0 AS unique_bytes, \
                0 AS compressed_bytes FROM entries GROUP BY namespace \
         UNION ALL \
         SELECT d.namespace, 0, 0, COUNT(*), SUM(b.raw_size), SUM(b.stored_size) \
         FROM (SELECT DISTINCT namespace, blob_hash FROM entries) d JOIN blobs b ON b.hash = d.blob_hash \
         GROUP BY d.namespace \
     ) t GROUP BY namespace",
    "INSERT INTO storage_totals (namespace, stripe, blobs, unique_bytes, compressed_bytes, physical_bytes) \
     SELECT '', 0, COUNT(*), COALESCE(SUM(CASE WHEN refs > 0 THEN raw_size END), 0), \
            COALESCE(SUM(CASE WHEN refs > 0 THEN stored_size END), 0), COALESCE(SUM(stored_size), 0) \
     FROM blobs",
];

/// One figure the kept totals have wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The namespace, or `""` for the whole store.
    pub namespace: String,
    pub figure: &'static str,
    pub kept: i64,
    pub counted: i64,
}

/// What a recount found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TotalsCheck {
    /// Figures that differ from the recount (none when the totals are exact).
    pub drift: Vec<Drift>,
    /// Blobs whose reference count differs from the entries pointing at them.
    pub miscounted_blobs: i64,
}

impl TotalsCheck {
    pub fn is_exact(&self) -> bool {
        self.drift.is_empty() && self.miscounted_blobs == 0
    }
}

/// Reads the kept totals and recounts them, in one read transaction (`postgres`: a
/// repeatable-read one), so that writes meanwhile never show up as drift.
pub(super) async fn check<C, DB>(conn: &mut C, postgres: bool) -> Result<TotalsCheck>
where
    C: sqlx::Connection<Database = DB>,
    DB: sqlx::Database<Connection = C>,
    for<'e> &'e mut C: sqlx::Executor<'e, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> usage::TotalsSql: sqlx::FromRow<'r, DB::Row>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
{
    let context = "recounting storage totals";
    let mut tx = conn.begin().await.map_err(Error::db(context))?;
    if postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(Error::db(context))?;
    }
    let kept = usage::read(&mut *tx, None).await?;
    let mut rows: Vec<usage::TotalsSql> = sqlx::query_as(STORE)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    rows.extend(
        sqlx::query_as::<_, usage::TotalsSql>(NAMESPACES)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(context))?,
    );
    let (miscounted_blobs,): (i64,) = sqlx::query_as(MISCOUNTED_BLOBS)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    tx.commit().await.map_err(Error::db(context))?;
    Ok(TotalsCheck {
        drift: compare(&kept, &usage::assemble(rows)),
        miscounted_blobs,
    })
}

/// Rewrites the reference counts and the totals from a recount, in one transaction that keeps
/// writers out meanwhile (`postgres`: by a table lock; SQLite has one writer anyway).
pub(super) async fn repair<C, DB>(conn: &mut C, postgres: bool) -> Result<()>
where
    C: sqlx::Connection<Database = DB>,
    DB: sqlx::Database<Connection = C>,
    for<'e> &'e mut C: sqlx::Executor<'e, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let context = "repairing storage totals";
    let mut tx = conn.begin().await.map_err(Error::db(context))?;
    if postgres {
        sqlx::query("LOCK TABLE entries, blobs IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(Error::db(context))?;
    }
    for statement in REPAIR {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&mut *tx)
            .await
            .map_err(Error::db(context))?;
    }
    tx.commit().await.map_err(Error::db(context))
}

/// Every figure of the store and of each namespace (either side's) that differs.
fn compare(kept: &Totals, counted: &Totals) -> Vec<Drift> {
    let mut drift = Vec::new();
    let mut push = |namespace: &str, kept: &StorageUsage, counted: &StorageUsage| {
        for ((figure, k), (_, c)) in figures(kept).into_iter().zip(figures(counted)) {
            if k != c {
                drift.push(Drift {
                    namespace: namespace.to_string(),
                    figure,
                    kept: k,
                    counted: c,
                });
            }
        }
    };
    push("", &kept.store, &counted.store);
    let find = |list: &[NamespaceUsage], name: &str| {
        list.iter()
            .find(|n| n.namespace == name)
            .map(|n| n.usage.clone())
            .unwrap_or_default()
    };
    let mut names: Vec<&str> = kept
        .namespaces
        .iter()
        .chain(&counted.namespaces)
        .map(|n| n.namespace.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        push(name, &find(&kept.namespaces, name), &find(&counted.namespaces, name));
    }
    drift
}

fn figures(u: &StorageUsage) -> [(&'static str, i64); 6] {
    [
        ("entries", u.entries),
        ("logical_bytes", u.logical_bytes),
        ("blobs", u.blobs),
        ("unique_bytes", u.unique_bytes),
        ("compressed_bytes", u.compressed_bytes),
        ("physical_bytes", u.physical_bytes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(entries: i64, bytes: i64) -> StorageUsage {
        StorageUsage {
            entries,
            blobs: entries,
            logical_bytes: bytes,
            unique_bytes: bytes,
            compressed_bytes: bytes,
            physical_bytes: bytes,
        }
    }

    #[test]
    fn drift_names_each_figure_that_differs_on_either_side() {
        let kept = Totals {
            store: usage(3, 300),
            namespaces: vec![NamespaceUsage {
                namespace: "a".into(),
                usage: usage(3, 300),
            }],
        };
        let mut counted = kept.clone();
        assert!(compare(&kept, &counted).is_empty());
        counted.store.entries = 4;
        counted.namespaces.push(NamespaceUsage {
            namespace: "b".into(),
            usage: usage(1, 0),
        });
        let drift = compare(&kept, &counted);
        assert_eq!(
            drift,
            vec![
                Drift {
                    namespace: "".into(),
                    figure: "entries",
                    kept: 3,
                    counted: 4
                },
                Drift {
                    namespace: "b".into(),
                    figure: "entries",
                    kept: 0,
                    counted: 1
                },
                Drift {
                    namespace: "b".into(),
                    figure: "blobs",
                    kept: 0,
                    counted: 1
                },
            ]
        );
    }
}
