//! The PostgreSQL store: for teams, and for several hearth replicas sharing one database.
//! Every statement has a server-side timeout so that a stuck database turns into errors,
//! never into hung clients.

use super::PoolSettings;
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

    /// PostgreSQL locks rows, not the database: writers need no queue of ours.
    pub(super) async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
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
    lock_entry = " FOR UPDATE",
    newest_access = "GREATEST(last_access_at, $3)",
    // GREATEST ignores NULL in PostgreSQL.
    newest_used = "GREATEST(last_used_at, $2)"
);
