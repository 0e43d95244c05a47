//! The SQL shared by both databases, and a macro that implements [`MetadataStore`] for a
//! store type given its sqlx database and the two places where the dialects differ.

use super::{BlobRow, BlobState, Counters, EntryRecord, NamespaceRow, StatsRow};
use crate::blob::BlobInfo;
use crate::Result;

#[derive(sqlx::FromRow)]
pub(super) struct NamespaceSql {
    name: String,
    quota_bytes: Option<i64>,
    anonymous_read: bool,
    created_at: i64,
}

impl From<NamespaceSql> for NamespaceRow {
    fn from(r: NamespaceSql) -> Self {
        NamespaceRow {
            name: r.name,
            quota_bytes: r.quota_bytes,
            anonymous_read: r.anonymous_read,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct BlobSql {
    hash: String,
    raw_size: i64,
    stored_size: i64,
    encoding: String,
    state: String,
    created_at: i64,
    last_referenced_at: i64,
    meaning: Option<String>,
}

impl BlobSql {
    pub(super) fn into_row(self) -> Result<BlobRow> {
        Ok(BlobRow {
            info: BlobInfo {
                hash: self.hash,
                raw_size: self.raw_size as u64,
                stored_size: self.stored_size as u64,
                encoding: super::parse_encoding(&self.encoding)?,
                meaning: super::parse_meaning(self.meaning.as_deref())?,
            },
            state: BlobState::parse(&self.state)?,
            created_at: self.created_at,
            last_referenced_at: self.last_referenced_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct EntrySql {
    namespace: String,
    key: String,
    blob_hash: String,
    raw_size: i64,
    stored_size: i64,
    encoding: String,
    meaning: Option<String>,
    writer_token_id: Option<i64>,
    created_at: i64,
    last_access_at: i64,
    hit_count: i64,
}

impl EntrySql {
    pub(super) fn into_record(self) -> Result<EntryRecord> {
        Ok(EntryRecord {
            namespace: self.namespace,
            key: self.key,
            blob: BlobInfo {
                hash: self.blob_hash,
                raw_size: self.raw_size as u64,
                stored_size: self.stored_size as u64,
                encoding: super::parse_encoding(&self.encoding)?,
                meaning: super::parse_meaning(self.meaning.as_deref())?,
            },
            writer_token_id: self.writer_token_id,
            created_at: self.created_at,
            last_access_at: self.last_access_at,
            hit_count: self.hit_count,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct StatsSql {
    namespace: String,
    hour: i64,
    token_label: String,
    hits: i64,
    misses: i64,
    misses_evicted: i64,
    writes: i64,
    bytes_served: i64,
    bytes_received: i64,
    errors: i64,
    conflicting_writes: i64,
    same_meaning_writes: i64,
}

impl From<StatsSql> for StatsRow {
    fn from(r: StatsSql) -> Self {
        StatsRow {
            namespace: r.namespace,
            hour: r.hour,
            token_label: r.token_label,
            counters: Counters {
                hits: r.hits,
                misses: r.misses,
                misses_evicted: r.misses_evicted,
                writes: r.writes,
                bytes_served: r.bytes_served,
                bytes_received: r.bytes_received,
                errors: r.errors,
                conflicting_writes: r.conflicting_writes,
                same_meaning_writes: r.same_meaning_writes,
            },
        }
    }
}

/// Remembers one evicted key (as its 64-bit hash).
pub(super) const RECORD_EVICTION: &str = "INSERT INTO evicted_keys (namespace, key_hash, evicted_at) \
     VALUES ($1, $2, $3) ON CONFLICT (namespace, key_hash) DO UPDATE SET evicted_at = excluded.evicted_at";

/// Bound parameters per `IN (…)` lookup, well under SQLite's and PostgreSQL's limits.
pub(super) const MAX_BINDS_PER_QUERY: usize = 500;

#[derive(sqlx::FromRow)]
pub(super) struct TokenSql {
    id: i64,
    namespace: Option<String>,
    scope: String,
    label: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    secret_hash: String,
}

impl TokenSql {
    pub(super) fn into_row(self) -> crate::Result<(super::TokenRow, String)> {
        let scope = self.scope.parse().map_err(super::corrupt_row)?;
        Ok((
            super::TokenRow {
                id: self.id,
                namespace: self.namespace,
                scope,
                label: self.label,
                created_at: self.created_at,
                last_used_at: self.last_used_at,
                revoked_at: self.revoked_at,
            },
            self.secret_hash,
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct CandidateSql {
    namespace: String,
    key: String,
    blob_hash: String,
    size: i64,
    last_access_at: i64,
    blob_stored_size: i64,
    blob_references: i64,
}

impl From<CandidateSql> for super::EvictionCandidate {
    fn from(r: CandidateSql) -> Self {
        super::EvictionCandidate {
            namespace: r.namespace,
            key: r.key,
            blob_hash: r.blob_hash,
            size: r.size,
            last_access_at: r.last_access_at,
            blob_stored_size: r.blob_stored_size,
            blob_references: r.blob_references,
        }
    }
}

/// Appends `(h1, h2, …)` binding each hash.
///
/// Statements with such a list differ with its length: they run unprepared
/// (`persistent(false)`), or every length seen would stay in the connection's statement
/// cache (on SQLite, megabytes of compiled programs that a soak run saw pile up).
pub(super) fn push_hashes<'a, DB: sqlx::Database>(q: &mut sqlx::QueryBuilder<DB>, hashes: &'a [String])
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push(" (");
    let mut list = q.separated(", ");
    for hash in hashes {
        list.push_bind(hash.as_str());
    }
    q.push(") ");
}

/// `RETURNING` the columns [`BlobSql`] reads.
pub(super) const BLOB_RETURNING: &str =
    " RETURNING hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at, meaning";

pub(super) const BLOB_COLUMNS: &str =
    "SELECT hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at, meaning FROM blobs";

pub(super) const TOKEN_COLUMNS: &str =
    "SELECT id, namespace, scope, label, created_at, last_used_at, revoked_at, secret_hash FROM tokens";

pub(super) const NAMESPACE_COLUMNS: &str = "SELECT name, quota_bytes, anonymous_read, created_at FROM namespaces";

pub(super) const LOOKUP_ENTRY: &str =
    "SELECT e.namespace, e.key, e.blob_hash, b.raw_size, b.stored_size, b.encoding, b.meaning, \
     e.writer_token_id, e.created_at, e.last_access_at, e.hit_count \
     FROM entries e JOIN blobs b ON b.hash = e.blob_hash \
     WHERE e.namespace = $1 AND e.key = $2 AND b.state = 'valid'";

pub(super) const STATS_COLUMNS: &str =
    "SELECT namespace, hour, token_label, hits, misses, misses_evicted, writes, bytes_served, \
     bytes_received, errors, conflicting_writes, same_meaning_writes FROM stats_hourly";

/// Runs `$statement` once for each part of `$items`, each in a turn of its own on the store's
/// writer (SQLite's one writer; a pool connection on PostgreSQL), as many rows at a time as the
/// store's `$size` says the next one should take on, and teaches `$size` what each took: so
/// that uploads queued for SQLite's writer get in between. Used in the collector's methods,
/// whose `self` is `$store`.
macro_rules! in_sized_parts {
    ($store:ident, $size:ident, $items:expr, |$conn:ident, $part:ident| $statement:block) => {{
        let mut rest = $items;
        while !rest.is_empty() {
            let $part = $store.$size.take(&mut rest, $store.writer_contended());
            let mut $conn = $store.writer($crate::meta::Work::Collection).await?;
            let started = std::time::Instant::now();
            $statement
            $store.$size.took($part.len(), started.elapsed());
        }
    }};
}
pub(super) use in_sized_parts;

/// Implements [`super::MetadataStore`] for `$store`, which has a `pool: sqlx::Pool<$db>`, a
/// `run_migrations` method, a `writer` method that serializes writes where that helps, and
/// the writes that run the way that suits its database: `claim_blob` and `write_entry`
/// ([`super::MetadataStore::insert_pending_blob`], [`super::MetadataStore::commit_entry`]),
/// `evict_in_parts` and `write_stats` (the statements of a statistics part, numbered as its
/// `STATS_NUMBERING` says; returns how long it held the writer).
/// Dialect differences:
/// - `$clock_ms`: the database's clock in milliseconds since the Unix epoch (also written by
///   the `entries_rewritten` trigger of the migrations).
macro_rules! impl_metadata_store {
    (
        $store:ty,
        clock_ms = $clock_ms:literal
    ) => {
        impl $store {
            /// Logs a change for the entry change feed: `(namespace, key)`, NULL for "every".
            const LOG_ENTRY_CHANGE: &'static str = concat!(
                "INSERT INTO entry_changes (changed_at, namespace, key) VALUES (",
                $clock_ms,
                ", $1, $2)"
            );

            /// Deletes the rows `delete` finds (`$1` the bound, `$2` how many at most) one
            /// statement of [`Self::PRUNED_PER_STATEMENT`] at a time, so that however many
            /// have piled up (a month after a large eviction), uploads queued for SQLite's
            /// writer get in between.
            async fn prune(&self, delete: &'static str, before: i64, context: &'static str) -> $crate::Result<u64> {
                let chunk = <$store>::PRUNED_PER_STATEMENT;
                let mut pruned = 0;
                loop {
                    let deleted = $crate::meta::writer_lane::run(async {
                        let mut conn = self.writer($crate::meta::Work::Collection).await?;
                        sqlx::query(delete)
                            .bind(before)
                            .bind(chunk as i64)
                            .execute(&mut *conn)
                            .await
                            .map_err($crate::Error::db(context))
                    })
                    .await?
                    .rows_affected();
                    pruned += deleted;
                    if deleted < chunk as u64 {
                        return Ok(pruned);
                    }
                }
            }
        }

        impl $crate::meta::MetadataStore for $store {
            async fn migrate(&self) -> $crate::Result<()> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err($crate::Error::db("ping"))?;
                Ok(())
            }

            async fn close(&self) {
                self.close_connections().await
            }

            async fn ensure_namespace(&self, name: &str, now: i64) -> $crate::Result<()> {
                let mut conn = self.writer($crate::meta::Work::Requests).await?;
                sqlx::query(
                    "INSERT INTO namespaces (name, quota_bytes, anonymous_read, created_at) \
                     VALUES ($1, NULL, FALSE, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err($crate::Error::db("creating namespace"))?;
                Ok(())
            }

            async fn create_namespace(&self, row: &$crate::meta::NamespaceRow) -> $crate::Result<bool> {
                let mut conn = self.writer($crate::meta::Work::Admin).await?;
                let done = sqlx::query(
                    "INSERT INTO namespaces (name, quota_bytes, anonymous_read, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&row.name)
                .bind(row.quota_bytes)
                .bind(row.anonymous_read)
                .bind(row.created_at)
                .execute(&mut *conn)
                .await
                .map_err($crate::Error::db("creating namespace"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn namespace(&self, name: &str) -> $crate::Result<Option<$crate::meta::NamespaceRow>> {
                let mut conn = self.reader().await?;
                let row: Option<$crate::meta::sql::NamespaceSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} WHERE name = $1",
                    $crate::meta::sql::NAMESPACE_COLUMNS
                )))
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err($crate::Error::db("reading namespace"))?;
                Ok(row.map(Into::into))
            }

            async fn list_namespaces(&self) -> $crate::Result<Vec<$crate::meta::NamespaceRow>> {
                let mut conn = self.reader().await?;
                let rows: Vec<$crate::meta::sql::NamespaceSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} ORDER BY name",
                    $crate::meta::sql::NAMESPACE_COLUMNS
                )))
                .fetch_all(&mut *conn)
                .await
                .map_err($crate::Error::db("listing namespaces"))?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn delete_namespace(&self, name: &str) -> $crate::Result<bool> {
                // Its entries go in transactions of a bounded size (sized by what the last ones
                // took), so that uploads queued for
                // SQLite's writer get in between; the last one deletes the namespace (and what
                // was uploaded to it meanwhile). Each logs the change, so that every server
                // forgets what it holds of the namespace in memory.
                $crate::meta::writer_lane::run(async {
                    loop {
                        let chunk = self.deletions.rows(self.writer_contended());
                        let mut conn = self.writer($crate::meta::Work::Admin).await?;
                        let started = std::time::Instant::now();
                        let mut tx = sqlx::Connection::begin(&mut *conn)
                            .await
                            .map_err($crate::Error::db("deleting namespace"))?;
                        let deleted = sqlx::query(<$store>::DELETE_NAMESPACE_ENTRIES)
                            .bind(name)
                            .bind(chunk as i64)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::Error::db("deleting namespace entries"))?
                            .rows_affected();
                        let last = deleted < chunk as u64;
                        let done = if last {
                            sqlx::query("DELETE FROM namespaces WHERE name = $1")
                                .bind(name)
                                .execute(&mut *tx)
                                .await
                                .map_err($crate::Error::db("deleting namespace"))?
                                .rows_affected()
                        } else {
                            0
                        };
                        sqlx::query(<$store>::LOG_ENTRY_CHANGE)
                            .bind(Some(name))
                            .bind(None::<&str>)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::Error::db("logging the namespace's deletion"))?;
                        tx.commit()
                            .await
                            .map_err($crate::Error::db("deleting namespace"))?;
                        self.deletions.took(deleted as usize, started.elapsed());
                        if last {
                            return Ok(done == 1);
                        }
                    }
                })
                .await
            }

            async fn blob(&self, hash: &str) -> $crate::Result<Option<$crate::meta::BlobRow>> {
                let mut conn = self.reader().await?;
                let row: Option<$crate::meta::sql::BlobSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} WHERE hash = $1",
                    $crate::meta::sql::BLOB_COLUMNS
                )))
                .bind(hash)
                .fetch_optional(&mut *conn)
                .await
                .map_err($crate::Error::db("reading blob"))?;
                row.map(|r| r.into_row()).transpose()
            }

            async fn insert_pending_blob(&self, info: &$crate::blob::BlobInfo, now: i64) -> $crate::Result<bool> {
                self.claim_blob(info, now).await
            }

            async fn commit_entry(
                &self,
                entry: &$crate::meta::NewEntry<'_>,
            ) -> $crate::Result<$crate::meta::PutOutcome> {
                self.write_entry(entry).await
            }

            async fn lookup(&self, namespace: &str, key: &str) -> $crate::Result<Option<$crate::meta::EntryRecord>> {
                let mut conn = self.reader().await?;
                let row: Option<$crate::meta::sql::EntrySql> = sqlx::query_as($crate::meta::sql::LOOKUP_ENTRY)
                    .bind(namespace)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::Error::db("looking up entry"))?;
                row.map(|r| r.into_record()).transpose()
            }

            async fn delete_entry(&self, namespace: &str, key: &str) -> $crate::Result<bool> {
                let mut conn = self.writer($crate::meta::Work::Requests).await?;
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err($crate::Error::db("deleting entry"))?;
                let done = sqlx::query("DELETE FROM entries WHERE namespace = $1 AND key = $2")
                    .bind(namespace)
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::db("deleting entry"))?;
                if done.rows_affected() == 1 {
                    sqlx::query(<$store>::LOG_ENTRY_CHANGE)
                        .bind(Some(namespace))
                        .bind(Some(key))
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::Error::db("logging the entry's deletion"))?;
                }
                tx.commit().await.map_err($crate::Error::db("deleting entry"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn forget_blob(&self, hash: &str) -> $crate::Result<u64> {
                let mut conn = self.writer($crate::meta::Work::Requests).await?;
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err($crate::Error::db("forgetting blob"))?;
                let removed = sqlx::query("DELETE FROM entries WHERE blob_hash = $1")
                    .bind(hash)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::db("forgetting blob entries"))?;
                sqlx::query("DELETE FROM blobs WHERE hash = $1")
                    .bind(hash)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::Error::db("forgetting blob"))?;
                tx.commit().await.map_err($crate::Error::db("forgetting blob"))?;
                Ok(removed.rows_affected())
            }

            async fn apply_stats(&self, batch: &$crate::meta::StatsBatch) -> $crate::Result<()> {
                if batch.is_empty() {
                    return Ok(());
                }
                // Classify misses first, on a reader, not the writer uploads wait for: a race
                // with a concurrent eviction only moves one miss between two classes.
                // (Only a flush's first part carries misses: the others take no reader.)
                let mut evicted: $crate::meta::stats_writes::EvictedMisses = std::collections::HashMap::new();
                if !batch.missed.is_empty() {
                    let mut conn = self.reader().await?;
                    for bucket in &batch.missed {
                        let mut found = std::collections::HashSet::new();
                        for chunk in bucket.key_hashes.chunks($crate::meta::sql::MAX_BINDS_PER_QUERY) {
                            let mut query =
                                sqlx::QueryBuilder::new("SELECT key_hash FROM evicted_keys WHERE namespace = ");
                            query.push_bind(&bucket.namespace).push(" AND key_hash IN (");
                            let mut list = query.separated(", ");
                            for hash in chunk {
                                list.push_bind(*hash);
                            }
                            query.push(")");
                            let hits: Vec<i64> = query
                                .build_query_scalar()
                                .persistent(false)
                                .fetch_all(&mut *conn)
                                .await
                                .map_err($crate::Error::db("classifying misses"))?;
                            found.extend(hits);
                        }
                        let count = bucket.key_hashes.iter().filter(|h| found.contains(*h)).count() as i64;
                        *evicted
                            .entry((
                                bucket.namespace.as_str(),
                                bucket.hour,
                                bucket.token_label.as_str(),
                            ))
                            .or_insert(0) += count;
                    }
                }
                let numbering = <$store>::STATS_NUMBERING;
                let statements = $crate::meta::stats_writes::statements(batch, &evicted, numbering);
                $crate::meta::writer_lane::run(async {
                    let held = self.write_stats(statements).await?;
                    self.accesses.took(batch.accesses.len(), held);
                    Ok(())
                })
                .await
            }

            async fn stats(
                &self,
                namespace: Option<&str>,
                since_hour: i64,
            ) -> $crate::Result<Vec<$crate::meta::StatsRow>> {
                let mut conn = self.reader().await?;
                let rows: Vec<$crate::meta::sql::StatsSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} WHERE hour >= $1 AND ($2 IS NULL OR namespace = $2) ORDER BY namespace, hour, token_label",
                    $crate::meta::sql::STATS_COLUMNS
                )))
                .bind(since_hour)
                .bind(namespace)
                .fetch_all(&mut *conn)
                .await
                .map_err($crate::Error::db("reading statistics"))?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn record_evictions(&self, namespace: &str, keys: &[&str], at: i64) -> $crate::Result<()> {
                $crate::meta::writer_lane::run(async {
                    let mut conn = self.writer($crate::meta::Work::Collection).await?;
                    let mut tx = sqlx::Connection::begin(&mut *conn)
                        .await
                        .map_err($crate::Error::db("recording evictions"))?;
                    for key in keys {
                        sqlx::query($crate::meta::sql::RECORD_EVICTION)
                            .bind(namespace)
                            .bind($crate::meta::key_hash(key))
                            .bind(at)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::Error::db("recording evictions"))?;
                    }
                    tx.commit()
                        .await
                        .map_err($crate::Error::db("recording evictions"))?;
                    Ok(())
                })
                .await
            }

            async fn lru_entries(
                &self,
                namespace: &str,
                after: Option<&$crate::meta::EvictionCandidate>,
                limit: i64,
            ) -> $crate::Result<Vec<$crate::meta::EvictionCandidate>> {
                let mut conn = self.reader().await?;
                $crate::meta::collect::lru_page(&mut *conn, namespace, after, limit).await
            }

            async fn evict_entries(
                &self,
                entries: &[(String, String)],
                now: i64,
            ) -> $crate::Result<$crate::meta::Evicted> {
                // Short transactions (sized by what the last ones took), so that uploads queued
                // for SQLite's one writer get in between; each is whole (entries gone, keys
                // remembered, blobs claimed). When a later one fails, the blobs the earlier ones
                // claimed stay `deleting` until the sweep of the next collection finishes them.
                $crate::meta::writer_lane::run(self.evict_in_parts(entries, now)).await
            }

            // The collector's statements over lists of blobs (up to a sweep's batch of 500)
            // go in parts sized by the clock, like eviction's, so that uploads queued for
            // SQLite's writer get in between. Each part stands alone: when a later one fails,
            // what the earlier ones claimed stays `deleting` for the next sweep, and rows not
            // yet deleted are deleted then.
            async fn claim_unreferenced_blobs(
                &self,
                hashes: &[String],
                referenced_before: Option<i64>,
            ) -> $crate::Result<Vec<$crate::blob::BlobInfo>> {
                $crate::meta::writer_lane::run(async {
                    let mut claimed = Vec::new();
                    $crate::meta::sql::in_sized_parts!(self, blob_rows, hashes, |conn, part| {
                        claimed.extend(
                            $crate::meta::collect::claim_unreferenced(&mut *conn, part, referenced_before).await?,
                        );
                    });
                    Ok(claimed)
                })
                .await
            }

            async fn claim_abandoned_blobs(
                &self,
                hashes: &[String],
                cutoff: i64,
            ) -> $crate::Result<Vec<$crate::blob::BlobInfo>> {
                $crate::meta::writer_lane::run(async {
                    let mut claimed = Vec::new();
                    $crate::meta::sql::in_sized_parts!(self, blob_rows, hashes, |conn, part| {
                        let mut q = sqlx::QueryBuilder::new(
                            "UPDATE blobs SET state = 'deleting' WHERE state = 'pending' AND created_at < ",
                        );
                        q.push_bind(cutoff).push(" AND hash IN");
                        $crate::meta::sql::push_hashes(&mut q, part);
                        q.push($crate::meta::sql::BLOB_RETURNING);
                        let rows: Vec<$crate::meta::sql::BlobSql> = q
                            .build_query_as()
                            .persistent(false)
                            .fetch_all(&mut *conn)
                            .await
                            .map_err($crate::Error::db("claiming abandoned blobs"))?;
                        for row in rows {
                            claimed.push(row.into_row()?.info);
                        }
                    });
                    Ok(claimed)
                })
                .await
            }

            async fn sweep_candidates(&self, cutoff: i64, limit: i64) -> $crate::Result<Vec<$crate::meta::BlobRow>> {
                let mut conn = self.reader().await?;
                $crate::meta::collect::sweep_candidates(&mut *conn, cutoff, limit).await
            }

            async fn delete_blob_rows(&self, hashes: &[String]) -> $crate::Result<u64> {
                $crate::meta::writer_lane::run(async {
                    let mut deleted = 0;
                    $crate::meta::sql::in_sized_parts!(self, blob_rows, hashes, |conn, part| {
                        let mut q = sqlx::QueryBuilder::new("DELETE FROM blobs WHERE state = 'deleting' AND hash IN");
                        $crate::meta::sql::push_hashes(&mut q, part);
                        let done = q
                            .build()
                            .persistent(false)
                            .execute(&mut *conn)
                            .await
                            .map_err($crate::Error::db("deleting blob rows"))?;
                        deleted += done.rows_affected();
                    });
                    Ok(deleted)
                })
                .await
            }

            async fn blobs_after(&self, after: &str, limit: i64) -> $crate::Result<Vec<$crate::meta::BlobRow>> {
                let mut conn = self.reader().await?;
                let rows: Vec<$crate::meta::sql::BlobSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} WHERE hash > $1 ORDER BY hash LIMIT $2",
                    $crate::meta::sql::BLOB_COLUMNS
                )))
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
                .map_err($crate::Error::db("listing blobs"))?;
                rows.into_iter().map(|r| r.into_row()).collect()
            }

            async fn prune_evicted_keys(&self, before: i64) -> $crate::Result<u64> {
                self.prune(<$store>::PRUNE_EVICTED_KEYS, before, "pruning evicted keys")
                    .await
            }

            async fn clock_ms(&self) -> $crate::Result<i64> {
                let mut conn = self.reader().await?;
                sqlx::query_scalar(concat!("SELECT ", $clock_ms))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err($crate::Error::db("reading the database clock"))
            }

            async fn entry_changes(&self, since_ms: i64) -> $crate::Result<Vec<$crate::meta::EntryChange>> {
                let mut conn = self.reader().await?;
                sqlx::query_as("SELECT DISTINCT namespace, key FROM entry_changes WHERE changed_at >= $1")
                    .bind(since_ms)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err($crate::Error::db("reading entry changes"))
            }

            async fn prune_entry_changes(&self, before_ms: i64) -> $crate::Result<u64> {
                self.prune(<$store>::PRUNE_ENTRY_CHANGES, before_ms, "pruning entry changes")
                    .await
            }

            async fn create_token(&self, token: &$crate::meta::NewToken<'_>) -> $crate::Result<i64> {
                let mut conn = self.writer($crate::meta::Work::Admin).await?;
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err($crate::Error::db("creating token"))?;
                // A write first (SQLite takes its write lock at once), then the checks.
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO tokens (namespace, scope, secret_hash, label, created_at) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(token.namespace)
                .bind(token.scope.as_str())
                .bind(token.secret_hash)
                .bind(token.label)
                .bind(token.now)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.is_foreign_key_violation() => $crate::Error::NotFound(format!(
                        "namespace {:?} does not exist",
                        token.namespace.unwrap_or_default()
                    )),
                    _ => $crate::Error::Database {
                        context: "creating token",
                        source: e,
                    },
                })?;
                let same_label: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE label = $1 AND revoked_at IS NULL")
                        .bind(token.label)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err($crate::Error::db("creating token"))?;
                if same_label > 1 {
                    return Err($crate::Error::Conflict(format!(
                        "an active token is already labelled {:?}",
                        token.label
                    )));
                }
                sqlx::query(
                    "INSERT INTO settings (name, value) VALUES ('secured', 'true') ON CONFLICT (name) DO NOTHING",
                )
                .execute(&mut *tx)
                .await
                .map_err($crate::Error::db("creating token"))?;
                tx.commit().await.map_err($crate::Error::db("creating token"))?;
                Ok(id)
            }

            async fn token_by_hash(
                &self,
                secret_hash: &str,
            ) -> $crate::Result<Option<($crate::meta::TokenRow, String)>> {
                let mut conn = self.reader().await?;
                let row: Option<$crate::meta::sql::TokenSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} WHERE secret_hash = $1",
                    $crate::meta::sql::TOKEN_COLUMNS
                )))
                .bind(secret_hash)
                .fetch_optional(&mut *conn)
                .await
                .map_err($crate::Error::db("reading token"))?;
                row.map(|r| r.into_row()).transpose()
            }

            async fn list_tokens(&self) -> $crate::Result<Vec<$crate::meta::TokenRow>> {
                let mut conn = self.reader().await?;
                let rows: Vec<$crate::meta::sql::TokenSql> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} ORDER BY id",
                    $crate::meta::sql::TOKEN_COLUMNS
                )))
                .fetch_all(&mut *conn)
                .await
                .map_err($crate::Error::db("listing tokens"))?;
                rows.into_iter()
                    .map(|r| r.into_row().map(|(row, _)| row))
                    .collect()
            }

            async fn revoke_token(&self, id: i64, now: i64) -> $crate::Result<bool> {
                let mut conn = self.writer($crate::meta::Work::Admin).await?;
                let done = sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::Error::db("revoking token"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn purge_token_entries(&self, id: i64) -> $crate::Result<u64> {
                // In transactions of a bounded size (sized by what the last ones took), so that
                // uploads queued for SQLite's writer get in between; each is whole, and a
                // failure leaves the rest for a retry.
                $crate::meta::writer_lane::run(async {
                    let mut purged = 0;
                    loop {
                        let chunk = self.deletions.rows(self.writer_contended());
                        let mut conn = self.writer($crate::meta::Work::Admin).await?;
                        let started = std::time::Instant::now();
                        let mut tx = sqlx::Connection::begin(&mut *conn)
                            .await
                            .map_err($crate::Error::db("purging token entries"))?;
                        let deleted = sqlx::query(<$store>::DELETE_TOKEN_ENTRIES)
                            .bind(id)
                            .bind(chunk as i64)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::Error::db("purging token entries"))?
                            .rows_affected();
                        if deleted == 0 {
                            return Ok(purged);
                        }
                        // The keys may be anywhere: every server forgets all it holds in memory.
                        sqlx::query(<$store>::LOG_ENTRY_CHANGE)
                            .bind(None::<&str>)
                            .bind(None::<&str>)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::Error::db("logging the purge"))?;
                        tx.commit()
                            .await
                            .map_err($crate::Error::db("purging token entries"))?;
                        self.deletions.took(deleted as usize, started.elapsed());
                        purged += deleted;
                        if deleted < chunk as u64 {
                            return Ok(purged);
                        }
                    }
                })
                .await
            }

            async fn secured(&self) -> $crate::Result<bool> {
                let mut conn = self.reader().await?;
                let found: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = 'secured'")
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::Error::db("reading the access mode"))?;
                Ok(found.is_some())
            }

            async fn storage_usage(&self) -> $crate::Result<$crate::meta::StorageUsage> {
                let mut conn = self.reader().await?;
                Ok($crate::meta::usage::read(&mut *conn, None).await?.store)
            }

            async fn namespace_usage(
                &self,
                namespace: Option<&str>,
            ) -> $crate::Result<Vec<$crate::meta::NamespaceUsage>> {
                let mut conn = self.reader().await?;
                Ok($crate::meta::usage::read(&mut *conn, namespace).await?.namespaces)
            }
        }
    };
}

pub(super) use impl_metadata_store;
