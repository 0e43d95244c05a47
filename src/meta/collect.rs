//! The queries of eviction and garbage collection, written once for both databases. Each costs
//! in proportion to what it returns or changes, never to the size of the store:
//! - eviction pages through one namespace's entries in least-recently-used order with a
//!   keyset (the index `entries_lru`), each with its blob's stored size and reference count;
//! - evicted entries go in one statement per namespace and batch, are remembered in one
//!   more, and the blobs they leave unreferenced are claimed in a third, in one transaction
//!   (on SQLite, the same as one script: [`super::sqlite_evict`]);
//! - blobs are claimed by their reference count (`blobs.refs`, kept by the migrations'
//!   triggers) and swept through an index of unreferenced blobs.
//!
//! Statements with lists of values run unprepared (`persistent(false)`: see
//! [`super::sql::push_hashes`]).

use super::sql::{BlobSql, CandidateSql, BLOB_COLUMNS, BLOB_RETURNING};
use super::{key_hash, BlobRow, Evicted, EvictionCandidate};
use crate::blob::BlobInfo;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// A namespace's entries after a position in least-recently-used order.
const LRU_PAGE: &str = "SELECT e.namespace, e.key, e.blob_hash, e.size, e.last_access_at, \
     b.stored_size AS blob_stored_size, b.refs AS blob_references \
     FROM entries e JOIN blobs b ON b.hash = e.blob_hash \
     WHERE e.namespace = $1 AND (e.last_access_at, e.key) > ($2, $3) \
     ORDER BY e.last_access_at, e.key LIMIT $4";

/// Up to `limit` entries of `namespace` in least-recently-used order (oldest access first,
/// then by key), after `after` (from the start when `None`).
pub(super) async fn lru_page<'c, E, DB>(
    conn: E,
    namespace: &str,
    after: Option<&EvictionCandidate>,
    limit: i64,
) -> Result<Vec<EvictionCandidate>>
where
    E: sqlx::Executor<'c, Database = DB>,
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> CandidateSql: sqlx::FromRow<'r, DB::Row>,
{
    let (at, key) = after.map_or((i64::MIN, ""), |a| (a.last_access_at, a.key.as_str()));
    let rows: Vec<CandidateSql> = sqlx::query_as(LRU_PAGE)
        .bind(namespace)
        .bind(at)
        .bind(key)
        .bind(limit)
        .fetch_all(conn)
        .await
        .map_err(Error::db("listing eviction candidates"))?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Deletes the `(namespace, key)` entries, remembers those that existed as evicted at `now`
/// and claims the blobs they leave unreferenced (see [`claim_unreferenced`]), in one
/// transaction: a blob's row is written once for the reference it loses and its claim.
/// PostgreSQL's way; SQLite's is [`super::sqlite_evict::evict_part`].
pub(super) async fn evict<C, DB>(conn: &mut C, entries: &[(String, String)], now: i64) -> Result<Evicted>
where
    C: sqlx::Connection<Database = DB>,
    DB: sqlx::Database<Connection = C> + sqlx::database::HasStatementCache,
    for<'e> &'e mut C: sqlx::Executor<'e, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB> + Default,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> (String, String, String): sqlx::FromRow<'r, DB::Row>,
    for<'r> BlobSql: sqlx::FromRow<'r, DB::Row>,
{
    if entries.is_empty() {
        return Ok(Evicted::default());
    }
    let context = "evicting entries";
    let mut tx = conn.begin().await.map_err(Error::db(context))?;
    // One statement per namespace, `namespace = $1 AND key IN (…)`: both databases plan it as
    // a seek of the primary key (SQLite 3.40 planned `(namespace, key) IN (VALUES …)` as a
    // scan of every entry).
    let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (namespace, key) in entries {
        by_namespace.entry(namespace.as_str()).or_default().push(key.as_str());
    }
    let mut deleted: Vec<(String, String, String)> = Vec::with_capacity(entries.len());
    for (namespace, keys) in by_namespace {
        let list: Vec<String> = (0..keys.len()).map(|i| format!("${}", i + 2)).collect();
        let delete = format!(
            "DELETE FROM entries WHERE namespace = $1 AND key IN ({}) RETURNING namespace, key, blob_hash",
            list.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(&*delete)).bind(namespace);
        for key in keys {
            query = query.bind(key);
        }
        deleted.extend(
            query
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::db(context))?,
        );
    }
    // One row per key: PostgreSQL refuses an upsert that meets the same row twice.
    let remembered: BTreeSet<(&str, i64)> = deleted
        .iter()
        .map(|(namespace, key, _)| (namespace.as_str(), key_hash(key)))
        .collect();
    if !remembered.is_empty() {
        let rows: Vec<String> = (0..remembered.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        let record = format!(
            "INSERT INTO evicted_keys (namespace, key_hash, evicted_at) VALUES {} \
             ON CONFLICT (namespace, key_hash) DO UPDATE SET evicted_at = excluded.evicted_at",
            rows.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(&*record));
        for (namespace, hash) in &remembered {
            query = query.bind(*namespace).bind(*hash).bind(now);
        }
        query
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("recording evictions"))?;
    }
    let hashes: Vec<String> = deleted
        .iter()
        .map(|(_, _, hash)| hash.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let claimed = claim_unreferenced(&mut *tx, &hashes, None).await?;
    tx.commit().await.map_err(Error::db(context))?;
    Ok(Evicted {
        entries: deleted.len() as u64,
        claimed,
    })
}

/// Marks the blobs `deleting` that are `valid` and unreferenced (and, with
/// `referenced_before`, were last referenced before it); returns those it marked. The check
/// and the mark are one statement on the blob's own row: PostgreSQL re-checks a row an upload
/// is committing a reference to once that upload is done, and finds its count.
pub(super) async fn claim_unreferenced<'c, E, DB>(
    conn: E,
    hashes: &[String],
    referenced_before: Option<i64>,
) -> Result<Vec<BlobInfo>>
where
    E: sqlx::Executor<'c, Database = DB>,
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    DB::Arguments: sqlx::IntoArguments<DB> + Default,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> BlobSql: sqlx::FromRow<'r, DB::Row>,
{
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = (0..hashes.len()).map(|i| format!("${}", i + 2)).collect();
    let claim = format!(
        "UPDATE blobs SET state = 'deleting' WHERE state = 'valid' AND refs = 0 \
         AND ($1 IS NULL OR last_referenced_at < $1) AND hash IN ({}){BLOB_RETURNING}",
        list.join(", ")
    );
    let mut query = sqlx::query_as::<_, BlobSql>(sqlx::AssertSqlSafe(&*claim)).bind(referenced_before);
    for hash in hashes {
        query = query.bind(hash.as_str());
    }
    let rows = query
        .persistent(false)
        .fetch_all(conn)
        .await
        .map_err(Error::db("claiming blobs for deletion"))?;
    rows.into_iter().map(|r| Ok(r.into_row()?.info)).collect()
}

/// Blobs garbage collection should look at, through the index of unreferenced blobs: valid
/// ones last referenced before `cutoff`, pending ones created before it, and `deleting` ones
/// (a collection that was interrupted). In no order: each batch is claimed or removed before
/// the next is read, and an `ORDER BY hash` made SQLite walk the primary key, all 10^6 blobs,
/// to find none (2 s) instead of the small index.
pub(super) async fn sweep_candidates<'c, E, DB>(conn: E, cutoff: i64, limit: i64) -> Result<Vec<BlobRow>>
where
    E: sqlx::Executor<'c, Database = DB>,
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> BlobSql: sqlx::FromRow<'r, DB::Row>,
{
    let rows: Vec<BlobSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{BLOB_COLUMNS} WHERE refs = 0 AND ((state = 'valid' AND last_referenced_at < $1) \
         OR (state = 'pending' AND created_at < $1) OR state = 'deleting') LIMIT $2"
    )))
    .bind(cutoff)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(Error::db("listing unreferenced blobs"))?;
    rows.into_iter().map(|r| r.into_row()).collect()
}
