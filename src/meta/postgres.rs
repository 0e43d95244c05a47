//! The PostgreSQL store: for teams, and for several hearth replicas sharing one database.
//! Every statement has a server-side timeout so that a stuck database turns into errors,
//! never into hung clients.

use super::{entry_write_error, NewEntry, PoolSettings, PutOutcome};
use crate::blob::BlobInfo;
use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;

/// Longest any statement may run; the hot path's queries take well under a millisecond.
const STATEMENT_TIMEOUT: &str = "10s";

/// Metadata in PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pub(super) pool: PgPool,
    pub(super) outage: std::sync::Arc<super::outage::OutageGuard>,
}

impl PostgresStore {
    /// Connects to the database named by `url`.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(Error::db("parsing the PostgreSQL URL"))?
            .application_name("hearth")
            .options([("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(Error::db("connecting to PostgreSQL"))?;
        Ok(PostgresStore {
            outage: super::outage::guard_for(&pool),
            pool,
        })
    }

    /// A connection for a write. PostgreSQL locks rows, not the database: writers need no
    /// queue of ours.
    pub(super) async fn writer(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool.acquire().await.map_err(Error::db("acquiring a connection"))
    }

    /// [`super::MetadataStore::insert_pending_blob`].
    pub(super) async fn claim_blob(&self, info: &BlobInfo, now: i64) -> Result<bool> {
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO blobs (hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $5) \
             ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at WHERE blobs.state = 'pending' \
             RETURNING state",
        )
        .bind(&info.hash)
        .bind(info.raw_size as i64)
        .bind(info.stored_size as i64)
        .bind(info.encoding.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("recording pending blob"))?;
        Ok(claimed.is_some())
    }

    /// [`super::MetadataStore::commit_entry`]: one transaction that marks the blob valid and
    /// inserts or replaces the entry, locking the entry row it replaces.
    pub(super) async fn write_entry(&self, entry: &NewEntry<'_>) -> Result<PutOutcome> {
        let mut tx = self.pool.begin().await.map_err(Error::db("committing entry"))?;
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
        let outcome = loop {
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
            if inserted.rows_affected() == 1 {
                break PutOutcome::Created;
            }
            let previous: Option<(String,)> =
                sqlx::query_as("SELECT blob_hash FROM entries WHERE namespace = $1 AND key = $2 FOR UPDATE")
                    .bind(entry.namespace)
                    .bind(entry.key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(Error::db("reading previous entry"))?;
            // Deleted by a concurrent transaction in between: insert again.
            let Some((old,)) = previous else { continue };
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
            break PutOutcome::Replaced {
                conflicting: old != entry.blob.hash,
            };
        };
        tx.commit().await.map_err(Error::db("committing entry"))?;
        Ok(outcome)
    }

    /// A connection for a read.
    pub(super) async fn reader(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool.acquire().await.map_err(Error::db("acquiring a connection"))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub(super) async fn close_connections(&self) {
        self.pool.close().await
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
    newest_access = "GREATEST(last_access_at, $3)",
    // GREATEST ignores NULL in PostgreSQL.
    newest_used = "GREATEST(last_used_at, $2)",
    clock_ms = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
);
