//! The PostgreSQL store: for teams, and for several hearth replicas sharing one database.
//! Every statement has a server-side timeout so that a stuck database turns into errors,
//! never into hung clients.

use super::statement::Statement;
use super::stats_writes::Numbering;
use super::transaction_size::TransactionSize;
use super::writer_holds::{Held, Work, WriterHolds};
use super::{entry_write_error, Evicted, NewEntry, PoolSettings, PutOutcome, Rewrite};
use crate::blob::BlobInfo;
use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Longest any statement may run; the hot path's queries take well under a millisecond.
const STATEMENT_TIMEOUT: &str = "10s";

/// SQLSTATE of a transaction PostgreSQL aborted to break a deadlock.
const DEADLOCK_DETECTED: &str = "40P01";
/// Tries of an entry write that keeps racing with concurrent writes of its key.
const WRITE_ATTEMPTS: u32 = 5;

/// Metadata in PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// Connections of requests, or in a [`Self::background`] clone those of background work.
    pub(super) pool: PgPool,
    /// Connections of background work (metrics, garbage collection, statistics, the entry
    /// feed), so that a slow one never holds a connection a request waits for.
    background_pool: PgPool,
    pub(super) outage: std::sync::Arc<super::outage::OutageGuard>,
    /// How long each write held its connection.
    pub(super) holds: WriterHolds,
    /// Entries a background transaction deletes (eviction, a purge, a namespace's deletion):
    /// a whole batch of the collector's. PostgreSQL locks only the rows a transaction writes,
    /// so uploads of other keys never wait for it.
    pub(super) deletions: std::sync::Arc<TransactionSize>,
    /// Access times a transaction of the statistics flush writes.
    pub(super) accesses: std::sync::Arc<TransactionSize>,
    /// Blobs a statement of the collector claims or deletes the rows of: all it hands over.
    pub(super) blob_rows: std::sync::Arc<TransactionSize>,
}

impl PostgresStore {
    /// Rows a pruning statement deletes.
    pub(super) const PRUNED_PER_STATEMENT: usize = 500;
    /// Up to `$2` remembered evictions from before `$1`.
    pub(super) const PRUNE_EVICTED_KEYS: &'static str = "DELETE FROM evicted_keys WHERE (namespace, key_hash) IN \
         (SELECT namespace, key_hash FROM evicted_keys WHERE evicted_at < $1 LIMIT $2)";
    /// Up to `$2` logged entry changes from before `$1` (the log has no key: its rows'
    /// physical addresses, found through `entry_changes_changed_at`).
    pub(super) const PRUNE_ENTRY_CHANGES: &'static str = "DELETE FROM entry_changes WHERE ctid = ANY (ARRAY \
         (SELECT ctid FROM entry_changes WHERE changed_at < $1 LIMIT $2))";
    /// Up to `$2` entries written by the token `$1`, found through `entries_writer`.
    pub(super) const DELETE_TOKEN_ENTRIES: &'static str = "DELETE FROM entries WHERE (namespace, key) IN \
         (SELECT namespace, key FROM entries WHERE writer_token_id = $1 LIMIT $2)";
    /// Up to `$2` entries of the namespace `$1`, found through the primary key.
    pub(super) const DELETE_NAMESPACE_ENTRIES: &'static str = "DELETE FROM entries WHERE (namespace, key) IN \
         (SELECT namespace, key FROM entries WHERE namespace = $1 LIMIT $2)";

    /// Connects to the database named by `url`.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(Error::db("parsing the PostgreSQL URL"))?
            .application_name("hearth")
            .options([("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(Error::db("connecting to PostgreSQL"))?;
        let background_pool = PgPoolOptions::new()
            .max_connections(super::BACKGROUND_CONNECTIONS)
            .acquire_timeout(super::BACKGROUND_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(PostgresStore {
            outage: super::outage::guard_for(options),
            pool,
            background_pool,
            holds: WriterHolds::new(),
            deletions: std::sync::Arc::new(TransactionSize::fixed(500)),
            accesses: std::sync::Arc::new(TransactionSize::fixed(128)),
            blob_rows: std::sync::Arc::new(TransactionSize::fixed(500)),
        })
    }

    /// This store, on the connections of background work.
    pub(super) fn background(&self) -> PostgresStore {
        PostgresStore {
            pool: self.background_pool.clone(),
            ..self.clone()
        }
    }

    /// Whether writes queue for the writer: never on PostgreSQL, whose writers take no turns
    /// (its transaction sizes are fixed).
    pub(super) fn writer_contended(&self) -> bool {
        false
    }

    /// A connection for a write. PostgreSQL locks rows, not the database: writers need no
    /// queue of ours.
    pub(super) async fn writer(&self, work: Work) -> Result<Held<sqlx::pool::PoolConnection<sqlx::Postgres>>> {
        let conn = self.pool.acquire().await.map_err(Error::db("acquiring a connection"))?;
        Ok(Held::new(conn, &self.holds, work))
    }

    /// [`super::MetadataStore::evict_entries`]: transactions of [`Self::deletions`] entries,
    /// each whole (entries gone, keys remembered, blobs claimed).
    pub(super) async fn evict_in_parts(&self, entries: &[(String, String)], now: i64) -> Result<Evicted> {
        let mut evicted = Evicted::default();
        super::sql::in_sized_parts!(self, deletions, entries, |conn, part| {
            let done = super::collect::evict(&mut *conn, part, now).await?;
            evicted.entries += done.entries;
            evicted.claimed.extend(done.claimed);
        });
        Ok(evicted)
    }

    /// Each statement of a statistics part is numbered from `$1`.
    pub(super) const STATS_NUMBERING: Numbering = Numbering::EachFromOne;

    /// The statements of a statistics part, in one transaction; how long it held its connection.
    pub(super) async fn write_stats(&self, statements: Vec<Statement<'_>>) -> Result<Duration> {
        let context = "flushing statistics";
        let mut conn = self.writer(Work::Statistics).await?;
        let started = Instant::now();
        let mut tx = conn.begin().await.map_err(Error::db(context))?;
        for statement in &statements {
            statement.query().execute(&mut *tx).await.map_err(Error::db(context))?;
        }
        tx.commit().await.map_err(Error::db(context))?;
        Ok(started.elapsed())
    }

    /// [`super::MetadataStore::insert_pending_blob`].
    pub(super) async fn claim_blob(&self, info: &BlobInfo, now: i64) -> Result<bool> {
        let _held = self.holds.start(Work::Uploads);
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO blobs (hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at, meaning) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6) \
             ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at WHERE blobs.state = 'pending' \
             RETURNING state",
        )
        .bind(&info.hash)
        .bind(info.raw_size as i64)
        .bind(info.stored_size as i64)
        .bind(info.encoding.as_str())
        .bind(now)
        .bind(info.meaning.map(|m| m.to_hex()))
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("recording pending blob"))?;
        Ok(claimed.is_some())
    }

    /// [`super::MetadataStore::commit_entry`]: one transaction that marks the blob valid and
    /// inserts or replaces the entry. Locks are taken in one order, entry row first, then the
    /// blob rows by hash (the reference counts the migrations' triggers keep need the old
    /// blob's row too), so that concurrent uploads, evictions and garbage collection do not
    /// deadlock (PostgreSQL notices a deadlock only after `deadlock_timeout`, a second during
    /// which both hold their connections). A key first written by someone else between this
    /// transaction's first read and its insert starts it over (the entry row now exists and is
    /// locked first), and a transaction PostgreSQL still picks as a deadlock victim is retried.
    pub(super) async fn write_entry(&self, entry: &NewEntry<'_>) -> Result<PutOutcome> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_write_entry(entry).await {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) if attempts < WRITE_ATTEMPTS => {
                    tracing::debug!(attempts, "key written concurrently; writing the entry again");
                }
                Ok(None) => return Err(Error::Conflict("the key keeps being rewritten concurrently".into())),
                Err(Error::Database {
                    source: sqlx::Error::Database(db),
                    ..
                }) if attempts < WRITE_ATTEMPTS && db.code().as_deref() == Some(DEADLOCK_DETECTED) => {
                    tracing::debug!(attempts, "entry write chosen as a deadlock victim; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of [`Self::write_entry`]; `None` when it must start over.
    async fn try_write_entry(&self, entry: &NewEntry<'_>) -> Result<Option<PutOutcome>> {
        let _held = self.holds.start(Work::Uploads);
        let mut tx = self.pool.begin().await.map_err(Error::db("committing entry"))?;
        let previous: Option<String> =
            sqlx::query_scalar("SELECT blob_hash FROM entries WHERE namespace = $1 AND key = $2 FOR UPDATE")
                .bind(entry.namespace)
                .bind(entry.key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::db("reading previous entry"))?;
        let blobs: Vec<&str> = std::iter::once(entry.blob.hash.as_str())
            .chain(previous.as_deref())
            .collect();
        // The meanings tell a rewrite with the same meaning from a conflicting one.
        let meanings: HashMap<String, Option<String>> = sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT hash, meaning FROM blobs WHERE hash = ANY($1) ORDER BY hash FOR UPDATE",
        )
        .bind(&blobs)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db("locking blobs"))?
        .into_iter()
        .collect();
        let marked = sqlx::query(
            "UPDATE blobs SET state = 'valid', last_referenced_at = $2 WHERE hash = $1 AND state <> 'deleting'",
        )
        .bind(&entry.blob.hash)
        .bind(entry.now)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("marking blob valid"))?;
        if marked.rows_affected() == 0 {
            return Err(Error::BlobUnavailable(entry.blob.hash.clone()));
        }
        // Insert first, so that of two concurrent first writes exactly one is `Created`: a
        // SELECT cannot lock a row that does not exist yet, but the insert waits for a
        // concurrent one to commit and then finds the key taken.
        let inserted = sqlx::query(
            "INSERT INTO entries (namespace, key, blob_hash, size, writer_token_id, created_at, last_access_at, hit_count) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, 0) ON CONFLICT (namespace, key) DO NOTHING",
        )
        .bind(entry.namespace)
        .bind(entry.key)
        .bind(&entry.blob.hash)
        .bind(entry.blob.raw_size as i64)
        .bind(entry.writer_token_id)
        .bind(entry.now)
        .execute(&mut *tx)
        .await
        .map_err(|e| entry_write_error(e, entry.namespace))?;
        let outcome = if inserted.rows_affected() == 1 {
            PutOutcome::Created
        } else {
            let Some(old) = previous else {
                // First written by someone else since this transaction looked: the entry row
                // is not locked, and locking it now, after the blob rows, could deadlock with a
                // writer that holds it and waits for one of them. Start over, entry row first.
                return Ok(None);
            };
            // The row is locked since the first read: no one changed or deleted it since.
            sqlx::query(
                "UPDATE entries SET blob_hash = $3, size = $4, writer_token_id = $5, created_at = $6, \
                 last_access_at = $6 WHERE namespace = $1 AND key = $2",
            )
            .bind(entry.namespace)
            .bind(entry.key)
            .bind(&entry.blob.hash)
            .bind(entry.blob.raw_size as i64)
            .bind(entry.writer_token_id)
            .bind(entry.now)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("writing entry"))?;
            let meaning = |hash: &str| meanings.get(hash).cloned().flatten();
            PutOutcome::Replaced(Rewrite::between(
                (&old, meaning(&old).as_deref()),
                (&entry.blob.hash, meaning(&entry.blob.hash).as_deref()),
            ))
        };
        tx.commit().await.map_err(Error::db("committing entry"))?;
        Ok(Some(outcome))
    }

    /// A connection for a read.
    pub(super) async fn reader(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool.acquire().await.map_err(Error::db("acquiring a connection"))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub(super) async fn close_connections(&self) {
        self.pool.close().await;
        self.background_pool.close().await;
    }

    async fn run_migrations(&self) -> Result<()> {
        sqlx::migrate!("migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    /// Connections currently open.
    pub fn pool_size(&self) -> u32 {
        self.pool.size()
    }

    /// Connections currently checked out.
    pub fn pool_in_use(&self) -> u32 {
        self.pool.size().saturating_sub(self.pool.num_idle() as u32)
    }

    /// The underlying pool (tests use it to hold locks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

super::sql::impl_metadata_store!(
    PostgresStore,
    clock_ms = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
);
