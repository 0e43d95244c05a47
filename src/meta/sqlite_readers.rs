//! SQLite connections for reads, handed out without sqlx's pool. Each SQLite connection is a
//! thread of this process, and sqlx's pool pings that thread before handing a connection out
//! and again when it comes back: three thread round trips for one lookup, where one will do.
//! A connection to a local file does not go stale, so there is nothing for a ping to find.

use crate::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::ConnectOptions;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Up to `max` read connections, opened when first needed.
#[derive(Debug)]
pub struct ReaderPool {
    options: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Semaphore,
    max: usize,
    acquire_timeout: Duration,
}

/// A read connection; back to the pool when dropped. A query dropped half-way still runs to
/// its end on the connection's thread, before anything the next user sends.
pub struct Reader<'a> {
    conn: Option<SqliteConnection>,
    pool: &'a ReaderPool,
    _permit: SemaphorePermit<'a>,
}

impl ReaderPool {
    pub fn new(options: SqliteConnectOptions, max: usize, acquire_timeout: Duration) -> ReaderPool {
        ReaderPool {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max),
            max,
            acquire_timeout,
        }
    }

    /// A connection, waiting at most the acquire timeout for one to be free.
    pub async fn acquire(&self) -> Result<Reader<'_>> {
        let permit = match tokio::time::timeout(self.acquire_timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(closed()),
            Err(_) => return Err(Error::db("reading")(sqlx::Error::PoolTimedOut)),
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self
                .options
                .connect()
                .await
                .map_err(Error::db("opening an SQLite connection"))?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }

    /// Connections open.
    pub fn size(&self) -> u32 {
        (self.max - self.permits.available_permits() + self.idle_count()) as u32
    }

    /// Connections handed out.
    pub fn in_use(&self) -> u32 {
        (self.max - self.permits.available_permits()) as u32
    }

    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Refuses new readers and closes the idle connections.
    pub async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in idle {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

fn closed() -> Error {
    Error::db("reading")(sqlx::Error::PoolClosed)
}

impl Deref for Reader<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.pool.permits.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        }
    }
}
