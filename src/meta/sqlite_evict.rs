//! Eviction on SQLite: each part of an eviction is one script, one trip to the connection's
//! thread while the writer is held.
//!
//! A part is several statements (the evicted keys remembered, the entries deleted, the blobs
//! they leave unreferenced claimed) in one transaction. Sent one by one, each statement was a
//! hand-off to the connection's thread and back, and each hand-off a wake-up that waits for a
//! core: beside 32 uploads on 2 cores, parts of a few milliseconds of SQLite's work held the
//! writer over 10 ms, while the uploads' batches, one script each, rarely did (see
//! [`super::sqlite_batch`]). So nothing in the script depends on an answer of the one before:
//! key hashes are computed beforehand, and the blobs of the entries about to go are noted in a
//! temporary table that the claim reads after the deletions.

use super::sql::BlobSql;
use super::sqlite_writer::WriterSlot;
use super::statement::{Statement, Value};
use super::{key_hash, Evicted};
use crate::{Error, Result};
use sqlx::{FromRow, Row};
use std::collections::BTreeMap;

/// Deletes the `(namespace, key)` entries, remembers those that existed as evicted at `now`
/// and claims the blobs they leave unreferenced, in one transaction, as
/// [`super::collect::evict`] does on PostgreSQL.
pub(super) async fn evict_part(slot: &mut WriterSlot, entries: &[(String, String)], now: i64) -> Result<Evicted> {
    if entries.is_empty() {
        return Ok(Evicted::default());
    }
    let rows = slot.run_script(&script(entries, now), "evicting entries").await?;
    let mut evicted = Evicted::default();
    for row in &rows {
        let tag: String = row.try_get(0).map_err(Error::db("evicting entries"))?;
        match tag.as_str() {
            "entry" => evicted.entries += 1,
            "blob" => {
                let blob = BlobSql::from_row(row).map_err(Error::db("claiming blobs for deletion"))?;
                evicted.claimed.push(blob.into_row()?.info);
            }
            _ => {}
        }
    }
    Ok(evicted)
}

/// The script of one part: `now` is `$1`, each namespace's statements share its parameters.
fn script(entries: &[(String, String)], now: i64) -> Statement<'_> {
    let mut body = Statement::numbered_from(1);
    let now = body.param(Value::Integer(now));
    let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (namespace, key) in entries {
        by_namespace.entry(namespace.as_str()).or_default().push(key.as_str());
    }
    let mut sql = String::from(
        "CREATE TEMP TABLE IF NOT EXISTS evicting_blobs (hash TEXT PRIMARY KEY) WITHOUT ROWID;
         DELETE FROM temp.evicting_blobs;",
    );
    for (namespace, keys) in by_namespace {
        let namespace = body.param(Value::Text(namespace));
        let (mut key_params, mut remembered) = (Vec::new(), Vec::new());
        for key in keys {
            let key_param = body.param(Value::Text(key));
            let hash_param = body.param(Value::Integer(key_hash(key)));
            remembered.push(format!("({key_param}, {hash_param})"));
            key_params.push(key_param);
        }
        let (keys, remembered) = (key_params.join(", "), remembered.join(", "));
        // `namespace = $n AND key IN (…)`: a seek of the primary key per key (see
        // `collect::evict`). The keys are remembered before they go, those that exist only.
        sql.push_str(&format!(
            "
             INSERT INTO evicted_keys (namespace, key_hash, evicted_at)
                 SELECT {namespace}, v.column2, {now} FROM (VALUES {remembered}) AS v
                 WHERE EXISTS (SELECT 1 FROM entries WHERE namespace = {namespace} AND key = v.column1)
                 ON CONFLICT (namespace, key_hash) DO UPDATE SET evicted_at = excluded.evicted_at;
             INSERT OR IGNORE INTO temp.evicting_blobs
                 SELECT blob_hash FROM entries WHERE namespace = {namespace} AND key IN ({keys});
             DELETE FROM entries WHERE namespace = {namespace} AND key IN ({keys}) RETURNING 'entry';"
        ));
    }
    // `+state`, `+refs`: a seek of the primary key per noted blob. Without them SQLite
    // walks the index of unreferenced blobs (every one awaiting collection) instead.
    sql.push_str(
        "
         UPDATE blobs SET state = 'deleting'
             WHERE +state = 'valid' AND +refs = 0 AND hash IN (SELECT hash FROM temp.evicting_blobs)
             RETURNING 'blob', hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at, meaning",
    );
    body.sql = sql;
    Statement::transaction(vec![body])
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions;
    use std::str::FromStr;

    /// Every statement of a part finds its rows through a primary key: a part costs what it
    /// evicts, however many entries and unreferenced blobs the store holds.
    #[tokio::test]
    async fn every_statement_of_a_part_seeks_its_rows() {
        let mut conn = SqliteConnectOptions::from_str("sqlite::memory:")
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::migrate!("migrations/sqlite")
            .run_direct(None, &mut conn, false)
            .await
            .unwrap();
        let entries = [("a", "k1"), ("a", "k2"), ("b", "k1")].map(|(n, k)| (n.to_owned(), k.to_owned()));
        let script = script(&entries, 7);
        let statements: Vec<&str> = script.sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
        assert_eq!(statements.len(), 3 + 3 * 2 + 2, "{}", script.sql);
        let mut plans = Vec::new();
        for statement in statements {
            if statement.starts_with("BEGIN") || statement.starts_with("COMMIT") {
                continue;
            }
            if statement.starts_with("CREATE") {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                continue;
            }
            let explain = format!("EXPLAIN QUERY PLAN {statement}");
            let steps: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            let plan: Vec<String> = steps.into_iter().map(|(.., detail)| detail).collect();
            plans.push(format!("{statement}\n    {}", plan.join("\n    ")));
        }
        let plans = plans.join("\n");
        for table in ["entries", "blobs", "evicted_keys", "evicting_blobs"] {
            assert!(!plans.contains(&format!("SCAN {table}")), "a scan of {table}:\n{plans}");
        }
        assert!(
            !plans.contains("blobs_unreferenced"),
            "the claim walks the unreferenced blobs:\n{plans}"
        );
        assert!(
            plans.contains("SEARCH blobs USING INDEX sqlite_autoindex_blobs_1 (hash=?)"),
            "{plans}"
        );
    }
}
