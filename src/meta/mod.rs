//! The metadata store: namespaces, tokens, blobs, entries and statistics, behind one trait
//! ([`MetadataStore`]) with two sqlx implementations, SQLite (embedded default) and PostgreSQL
//! (teams, replicas). [`MetaStore`] dispatches between them so handlers carry no type parameters.
//!
//! Queries are runtime-checked (`query_as` + `FromRow`), not `query!`, which would need
//! offline data for two databases; the same SQL text serves both wherever the dialects agree.

mod collect;
mod outage;
mod postgres;
mod recount;
mod sql;
mod sqlite;
mod sqlite_batch;
mod sqlite_checkpoint;
mod sqlite_evict;
mod sqlite_readers;
mod sqlite_shm;
mod sqlite_writer;
mod statement;
mod stats_writes;
mod transaction_size;
mod usage;
mod writer_holds;
mod writer_lane;

pub use postgres::PostgresStore;
pub use recount::{Drift, TotalsCheck};
pub use sqlite::SqliteStore;
pub use writer_holds::{Work, WriterHolds};

use crate::blob::{BlobInfo, Encoding};
use crate::{Error, Result};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Pool settings shared by both databases.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Longest wait for a connection: a request fails rather than hang.
    pub acquire_timeout: Duration,
}

/// A namespace row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceRow {
    pub name: String,
    pub quota_bytes: Option<i64>,
    pub anonymous_read: bool,
    pub created_at: i64,
}

/// A token row. The secret's hash never leaves the metadata store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    pub id: i64,
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub scope: crate::auth::Scope,
    pub label: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A token to create.
#[derive(Clone, Debug)]
pub struct NewToken<'a> {
    pub namespace: Option<&'a str>,
    pub scope: crate::auth::Scope,
    pub secret_hash: &'a str,
    pub label: &'a str,
    pub now: i64,
}

/// Lifecycle of a blob row: `pending` while its upload is being published, `valid` once an
/// entry may point at it, `deleting` while garbage collection removes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobState {
    Pending,
    Valid,
    Deleting,
}

impl BlobState {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobState::Pending => "pending",
            BlobState::Valid => "valid",
            BlobState::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> Result<BlobState> {
        match s {
            "pending" => Ok(BlobState::Pending),
            "valid" => Ok(BlobState::Valid),
            "deleting" => Ok(BlobState::Deleting),
            other => Err(corrupt_row(format!("unknown blob state {other:?}"))),
        }
    }
}

/// A blob row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRow {
    pub info: BlobInfo,
    pub state: BlobState,
    pub created_at: i64,
    pub last_referenced_at: i64,
}

/// An entry with the blob it points at, as a GET needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub namespace: String,
    pub key: String,
    pub blob: BlobInfo,
    pub writer_token_id: Option<i64>,
    pub created_at: i64,
    pub last_access_at: i64,
    pub hit_count: i64,
}

/// Keys whose content changed on purpose (rewritten with other content or deleted; not
/// evicted), as logged in `entry_changes` for the servers that keep entries in memory.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct EntryChange {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    /// `None`: every key of the namespace.
    pub key: Option<String>,
}

/// What [`MetadataStore::evict_entries`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Entries that existed and are gone.
    pub entries: u64,
    /// Blobs left unreferenced, now `deleting`: their files are the caller's to delete.
    pub claimed: Vec<BlobInfo>,
}

/// An entry eviction may remove, in least-recently-used order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictionCandidate {
    pub namespace: String,
    pub key: String,
    pub blob_hash: String,
    pub size: i64,
    pub last_access_at: i64,
    /// Stored size of the entry's blob, and how many entries point at it (when listed).
    pub blob_stored_size: i64,
    pub blob_references: i64,
}

/// An entry to write.
#[derive(Clone, Debug)]
pub struct NewEntry<'a> {
    pub namespace: &'a str,
    pub key: &'a str,
    pub blob: &'a BlobInfo,
    pub writer_token_id: Option<i64>,
    pub now: i64,
}

/// What a PUT did to the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The key was new (HTTP 201).
    Created,
    /// The key existed (HTTP 204).
    Replaced(Rewrite),
}

/// What a rewritten key held before, compared with what it holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// The same bytes.
    Identical,
    /// Other bytes with the same meaning ([`crate::meaning`]): the same members of an entry
    /// in another order, as deterministic builds write them.
    SameMeaning,
    /// Different content: a sign of a non-deterministic build or of cache poisoning.
    Conflicting,
}

impl Rewrite {
    /// Compares the blobs, each a hash and the meaning stored with it.
    pub fn between(old: (&str, Option<&str>), new: (&str, Option<&str>)) -> Rewrite {
        match (old, new) {
            ((old, _), (new, _)) if old == new => Rewrite::Identical,
            ((_, Some(old)), (_, Some(new))) if old == new => Rewrite::SameMeaning,
            _ => Rewrite::Conflicting,
        }
    }
}

/// Counters of one (namespace, hour, token label) bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub hits: i64,
    pub misses: i64,
    /// Misses on keys that were stored once and evicted (the rest were cold).
    pub misses_evicted: i64,
    pub writes: i64,
    pub bytes_served: i64,
    pub bytes_received: i64,
    pub errors: i64,
    pub conflicting_writes: i64,
    /// Rewrites with other bytes of the same meaning (not conflicts).
    pub same_meaning_writes: i64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.misses_evicted += other.misses_evicted;
        self.writes += other.writes;
        self.bytes_served += other.bytes_served;
        self.bytes_received += other.bytes_received;
        self.errors += other.errors;
        self.conflicting_writes += other.conflicting_writes;
        self.same_meaning_writes += other.same_meaning_writes;
    }
}

/// One row of `stats_hourly`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsRow {
    pub namespace: String,
    /// Start of the hour, Unix seconds.
    pub hour: i64,
    /// Who made the requests ('' = anonymous).
    pub token_label: String,
    pub counters: Counters,
}

/// Accumulated accesses to one entry since the last flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessUpdate {
    pub namespace: String,
    pub key: String,
    pub last_access_at: i64,
    pub hits: i64,
}

/// How much the store holds, in the three layers that show dedup and compression savings.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StorageUsage {
    pub entries: i64,
    pub blobs: i64,
    /// Sum of the sizes of all entries: what clients uploaded.
    pub logical_bytes: i64,
    /// Raw size of the distinct blobs entries point at: what is left after dedup.
    pub unique_bytes: i64,
    /// Stored size of those blobs: what is left after compression.
    pub compressed_bytes: i64,
    /// Stored size of every blob in the store, including blobs no entry points at any more
    /// (until garbage collection): what the storage budget applies to. For a namespace this
    /// equals `compressed_bytes`.
    pub physical_bytes: i64,
}

/// [`StorageUsage`] of one namespace (dedup counted within the namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceUsage {
    pub namespace: String,
    pub usage: StorageUsage,
}

/// Keys that missed in one statistics bucket, to be classified at flush time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissedKeys {
    pub namespace: String,
    pub hour: i64,
    pub token_label: String,
    /// [`key_hash`] of each missed key.
    pub key_hashes: Vec<i64>,
}

/// What the stats flusher writes in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsBatch {
    pub counters: Vec<StatsRow>,
    pub accesses: Vec<AccessUpdate>,
    /// Added to `misses_evicted` of the matching counters row for every hash found in
    /// `evicted_keys`.
    pub missed: Vec<MissedKeys>,
    /// `(token id, last used)`: when each token was last seen.
    pub token_uses: Vec<(i64, i64)>,
}

impl StatsBatch {
    /// The next part of this batch, taken out of it: at most `accesses` access records (the
    /// first part also carries the counters, misses and token uses); `None` once nothing is
    /// left. One transaction each, so that a flush after a busy interval does not hold
    /// SQLite's one writer for long; taken one at a time, so that each part is sized by what
    /// the transactions before it took.
    pub fn take_part(&mut self, accesses: usize) -> Option<StatsBatch> {
        if self.is_empty() {
            return None;
        }
        let after = self.accesses.split_off(self.accesses.len().min(accesses.max(1)));
        Some(StatsBatch {
            counters: std::mem::take(&mut self.counters),
            accesses: std::mem::replace(&mut self.accesses, after),
            missed: std::mem::take(&mut self.missed),
            token_uses: std::mem::take(&mut self.token_uses),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.accesses.is_empty() && self.missed.is_empty() && self.token_uses.is_empty()
    }
}

/// The 64-bit fingerprint under which an evicted key is remembered.
pub fn key_hash(key: &str) -> i64 {
    let digest = blake3::hash(key.as_bytes());
    i64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Every operation hearth performs on its metadata. Implemented once per database.
pub trait MetadataStore: Send + Sync {
    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    /// Round trip to the database, for `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
    /// Closes the pool, waiting for connections to be returned.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Creates the namespace with default settings if it does not exist (open mode).
    fn ensure_namespace(&self, name: &str, now: i64) -> impl Future<Output = Result<()>> + Send;
    /// Creates a namespace; `false` if it existed already.
    fn create_namespace(&self, row: &NamespaceRow) -> impl Future<Output = Result<bool>> + Send;
    fn namespace(&self, name: &str) -> impl Future<Output = Result<Option<NamespaceRow>>> + Send;
    fn list_namespaces(&self) -> impl Future<Output = Result<Vec<NamespaceRow>>> + Send;
    /// Deletes a namespace and its entries; `false` if it did not exist.
    fn delete_namespace(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    fn blob(&self, hash: &str) -> impl Future<Output = Result<Option<BlobRow>>> + Send;
    /// Records a blob about to be published, before its file appears (so GC knows of it).
    /// Returns `true` when the caller holds a fresh `pending` row and may publish the file:
    /// a new row, or an existing pending one whose age is reset (so that garbage collection,
    /// which only takes pending rows older than its grace period, leaves it alone). Returns
    /// `false` if the row is `valid` (nothing to publish) or `deleting` (wait for GC).
    fn insert_pending_blob(&self, info: &BlobInfo, now: i64) -> impl Future<Output = Result<bool>> + Send;
    /// In one transaction: marks the blob valid and points the key at it.
    /// Fails with [`Error::BlobUnavailable`] if the blob row is missing or being deleted.
    fn commit_entry(&self, entry: &NewEntry<'_>) -> impl Future<Output = Result<PutOutcome>> + Send;
    /// The entry and its (valid) blob.
    fn lookup(&self, namespace: &str, key: &str) -> impl Future<Output = Result<Option<EntryRecord>>> + Send;
    /// Deletes an entry; `false` if it did not exist.
    fn delete_entry(&self, namespace: &str, key: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Forgets a blob whose file is gone or corrupt: deletes every entry pointing at it and
    /// its row, in one transaction. Returns the number of entries removed.
    fn forget_blob(&self, hash: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Adds a batch of counters and access times, in one transaction.
    fn apply_stats(&self, batch: &StatsBatch) -> impl Future<Output = Result<()>> + Send;
    /// Statistics rows since `since_hour` (Unix seconds), optionally for one namespace.
    fn stats(&self, namespace: Option<&str>, since_hour: i64) -> impl Future<Output = Result<Vec<StatsRow>>> + Send;

    /// Remembers that `keys` of `namespace` were evicted at `at` (so later misses on them are
    /// classified as evicted rather than cold).
    fn record_evictions(&self, namespace: &str, keys: &[&str], at: i64) -> impl Future<Output = Result<()>> + Send;

    /// Creates a token and returns its id. Fails with [`Error::Conflict`] if an active token
    /// already has this label, or the namespace does not exist.
    fn create_token(&self, token: &NewToken<'_>) -> impl Future<Output = Result<i64>> + Send;
    /// The token whose secret hashes to `secret_hash`, revoked or not, with that hash.
    fn token_by_hash(&self, secret_hash: &str) -> impl Future<Output = Result<Option<(TokenRow, String)>>> + Send;
    /// Every token, oldest first.
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<TokenRow>>> + Send;
    /// Revokes a token; `false` if it does not exist or was revoked already.
    fn revoke_token(&self, id: i64, now: i64) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes every entry the token wrote, in one statement; returns how many.
    fn purge_token_entries(&self, id: i64) -> impl Future<Output = Result<u64>> + Send;
    /// True once a token was ever created (secured mode); revoking or deleting tokens does not
    /// reopen the server.
    fn secured(&self) -> impl Future<Output = Result<bool>> + Send;

    /// Up to `limit` entries of `namespace` in least-recently-used order (by last access, then
    /// key), after `after` (keyset paging; from the start when `None`); each with its blob's
    /// stored size and reference count, so that eviction plans without a query per entry.
    fn lru_entries(
        &self,
        namespace: &str,
        after: Option<&EvictionCandidate>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<EvictionCandidate>>> + Send;
    /// Deletes these `(namespace, key)` entries, remembers them as evicted and claims the blobs
    /// they leave unreferenced (as [`Self::claim_unreferenced_blobs`] without a cutoff), in
    /// one transaction.
    fn evict_entries(&self, entries: &[(String, String)], now: i64) -> impl Future<Output = Result<Evicted>> + Send;
    /// Marks the blobs `deleting` that are `valid`, that no entry points at, and (with
    /// `referenced_before`) were last referenced before that time; returns those it marked.
    /// Check and mark are one statement on the blob's row, whose reference count an upload
    /// committing a reference at the same moment updates first: the upload wins.
    fn claim_unreferenced_blobs(
        &self,
        hashes: &[String],
        referenced_before: Option<i64>,
    ) -> impl Future<Output = Result<Vec<BlobInfo>>> + Send;
    /// Marks the `pending` blobs created before `cutoff` (uploads that never finished)
    /// `deleting`; returns those it marked.
    fn claim_abandoned_blobs(
        &self,
        hashes: &[String],
        cutoff: i64,
    ) -> impl Future<Output = Result<Vec<BlobInfo>>> + Send;
    /// Blobs garbage collection should look at: valid ones no entry points at, last referenced
    /// before `cutoff`; pending ones created before `cutoff`; and `deleting` ones (a collection
    /// that was interrupted).
    fn sweep_candidates(&self, cutoff: i64, limit: i64) -> impl Future<Output = Result<Vec<BlobRow>>> + Send;
    /// Deletes the rows of `deleting` blobs once their files are gone; returns how many.
    fn delete_blob_rows(&self, hashes: &[String]) -> impl Future<Output = Result<u64>> + Send;
    /// Blob rows with a hash after `after`, in hash order (paging through the whole store).
    fn blobs_after(&self, after: &str, limit: i64) -> impl Future<Output = Result<Vec<BlobRow>>> + Send;
    /// Forgets evicted keys recorded before `before`.
    fn prune_evicted_keys(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;

    /// The database's clock, in milliseconds since the Unix epoch (the time of the entry
    /// change log, the same for every server sharing the database whatever their clocks).
    fn clock_ms(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Keys rewritten or deleted at or after `since_ms` (database clock); see
    /// [`EntryChange`].
    fn entry_changes(&self, since_ms: i64) -> impl Future<Output = Result<Vec<EntryChange>>> + Send;
    /// Forgets entry changes logged before `before_ms`.
    fn prune_entry_changes(&self, before_ms: i64) -> impl Future<Output = Result<u64>> + Send;

    /// What the whole store holds (valid blobs only).
    fn storage_usage(&self) -> impl Future<Output = Result<StorageUsage>> + Send;
    /// What each namespace holds, optionally only one, ordered by name.
    fn namespace_usage(&self, namespace: Option<&str>) -> impl Future<Output = Result<Vec<NamespaceUsage>>> + Send;
}

/// Connections reserved for background work, beside the requests' pool.
const BACKGROUND_CONNECTIONS: u32 = 3;
/// How long background work waits for one of its connections: it is in no hurry, and a wait
/// that long asks the outage probe whether the database still answers.
const BACKGROUND_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Advisory-lock key of garbage collection on PostgreSQL ("hearthgc" in ASCII).
const COLLECTION_LOCK_KEY: i64 = 0x6865_6172_7468_6763;
static LOCAL_COLLECTION: AtomicBool = AtomicBool::new(false);

/// Held while a garbage collection runs; see [`MetaStore::try_collection_lock`].
pub enum CollectionLock {
    Local,
    Postgres(Option<sqlx::pool::PoolConnection<sqlx::Postgres>>),
}

impl CollectionLock {
    /// Lets the next collection run.
    pub async fn release(mut self) {
        if let CollectionLock::Postgres(conn) = &mut self {
            if let Some(mut conn) = conn.take() {
                // The connection then closes (it was marked so): one reconnect per collection.
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(COLLECTION_LOCK_KEY)
                    .execute(&mut *conn)
                    .await;
            }
        }
    }
}

impl Drop for CollectionLock {
    fn drop(&mut self) {
        if let CollectionLock::Local = self {
            LOCAL_COLLECTION.store(false, Ordering::Release);
        }
    }
}

/// The configured metadata store.
#[derive(Clone, Debug)]
pub enum MetaStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl MetaStore {
    /// Connects to `url` (`sqlite://…` or `postgres://…`); fails fast when unreachable.
    pub async fn connect(url: &str, pool: &PoolSettings) -> Result<MetaStore> {
        if url.starts_with("sqlite:") {
            Ok(MetaStore::Sqlite(SqliteStore::connect(url, pool).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(MetaStore::Postgres(PostgresStore::connect(url, pool).await?))
        } else {
            Err(Error::Config(format!(
                "unsupported database URL {}",
                crate::config::redact_url(url)
            )))
        }
    }

    /// This store on the connections reserved for background work (metrics, garbage
    /// collection, statistics, the entry feed): however long their queries take, requests
    /// never wait for a connection they hold. Writes on SQLite still take turns on its one
    /// writer, in short transactions.
    pub fn background(&self) -> MetaStore {
        match self {
            MetaStore::Sqlite(s) => MetaStore::Sqlite(s.background()),
            MetaStore::Postgres(s) => MetaStore::Postgres(s.background()),
        }
    }

    /// Recounts the storage totals and blob reference counts from entries and blobs, and
    /// says where the kept ones differ (`hearth verify`; a full scan).
    pub async fn check_totals(&self) -> Result<TotalsCheck> {
        match self {
            MetaStore::Sqlite(s) => recount::check(&mut *s.reader().await?, false).await,
            MetaStore::Postgres(s) => recount::check(&mut *s.reader().await?, true).await,
        }
    }

    /// Rewrites the storage totals and blob reference counts from a recount (`hearth verify
    /// --repair`).
    pub async fn repair_totals(&self) -> Result<()> {
        match self {
            MetaStore::Sqlite(s) => recount::repair(&mut *s.writer(Work::Admin).await?, false).await,
            MetaStore::Postgres(s) => recount::repair(&mut *s.writer(Work::Admin).await?, true).await,
        }
    }

    /// Connections currently checked out of the pool.
    pub fn pool_in_use(&self) -> u32 {
        match self {
            MetaStore::Sqlite(s) => s.pool_in_use(),
            MetaStore::Postgres(s) => s.pool_in_use(),
        }
    }

    /// Access times the next transaction of the statistics flush should write.
    pub fn accesses_per_transaction(&self) -> usize {
        match self {
            MetaStore::Sqlite(s) => s.accesses.rows(s.writer_contended()),
            MetaStore::Postgres(s) => s.accesses.rows(s.writer_contended()),
        }
    }

    /// Connections currently open.
    pub fn pool_size(&self) -> u32 {
        match self {
            MetaStore::Sqlite(s) => s.pool_size(),
            MetaStore::Postgres(s) => s.pool_size(),
        }
    }

    /// Takes the store-wide garbage-collection lock, or `None` if another process holds it.
    /// PostgreSQL: a session advisory lock, so replicas collect one at a time. SQLite: a
    /// process-local flag (its single writer already serializes the rest).
    pub async fn try_collection_lock(&self) -> Result<Option<CollectionLock>> {
        match self {
            MetaStore::Sqlite(_) => {
                let free = LOCAL_COLLECTION.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
                Ok(free.is_ok().then_some(CollectionLock::Local))
            }
            MetaStore::Postgres(s) => {
                s.outage
                    .guard(async {
                        let mut conn = s
                            .pool()
                            .acquire()
                            .await
                            .map_err(Error::db("taking the collection lock"))?;
                        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                            .bind(COLLECTION_LOCK_KEY)
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(Error::db("taking the collection lock"))?;
                        // Dropped without release (a panic): the session ends and so does the lock.
                        conn.close_on_drop();
                        Ok(locked.then_some(CollectionLock::Postgres(Some(conn))))
                    })
                    .await
            }
        }
    }

    /// False while the database is known to be unreachable (calls fail fast meanwhile).
    pub fn available(&self) -> bool {
        match self {
            MetaStore::Sqlite(s) => !s.outage.is_open(),
            MetaStore::Postgres(s) => !s.outage.is_open(),
        }
    }

    /// How long writes held the writer (SQLite) or their connection (PostgreSQL).
    pub fn writer_holds(&self) -> &WriterHolds {
        match self {
            MetaStore::Sqlite(s) => &s.holds,
            MetaStore::Postgres(s) => &s.holds,
        }
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaStore::Sqlite(_) => "sqlite",
            MetaStore::Postgres(_) => "postgres",
        }
    }
}

/// Every call goes through the store's outage guard (see [`outage`]). The backend's future is
/// boxed: sqlx's query futures are kilobytes, and unboxed they would make every future that
/// might query (the request handler's included) that big, to be copied whole each time a
/// layer of the HTTP stack boxes it, even on requests the memory caches answer.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            MetaStore::Sqlite($store) => Box::pin($store.outage.guard($call)).await,
            MetaStore::Postgres($store) => Box::pin($store.outage.guard($call)).await,
        }
    };
}

impl MetadataStore for MetaStore {
    async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate())
    }
    async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping())
    }
    async fn close(&self) {
        match self {
            MetaStore::Sqlite(s) => {
                s.outage.shut_down();
                s.close().await
            }
            MetaStore::Postgres(s) => {
                s.outage.shut_down();
                s.close().await
            }
        }
    }
    async fn ensure_namespace(&self, name: &str, now: i64) -> Result<()> {
        dispatch!(self, s => s.ensure_namespace(name, now))
    }
    async fn create_namespace(&self, row: &NamespaceRow) -> Result<bool> {
        dispatch!(self, s => s.create_namespace(row))
    }
    async fn namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        dispatch!(self, s => s.namespace(name))
    }
    async fn list_namespaces(&self) -> Result<Vec<NamespaceRow>> {
        dispatch!(self, s => s.list_namespaces())
    }
    async fn delete_namespace(&self, name: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_namespace(name))
    }
    async fn blob(&self, hash: &str) -> Result<Option<BlobRow>> {
        dispatch!(self, s => s.blob(hash))
    }
    async fn insert_pending_blob(&self, info: &BlobInfo, now: i64) -> Result<bool> {
        dispatch!(self, s => s.insert_pending_blob(info, now))
    }
    async fn commit_entry(&self, entry: &NewEntry<'_>) -> Result<PutOutcome> {
        dispatch!(self, s => s.commit_entry(entry))
    }
    async fn lookup(&self, namespace: &str, key: &str) -> Result<Option<EntryRecord>> {
        dispatch!(self, s => s.lookup(namespace, key))
    }
    async fn delete_entry(&self, namespace: &str, key: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_entry(namespace, key))
    }
    async fn forget_blob(&self, hash: &str) -> Result<u64> {
        dispatch!(self, s => s.forget_blob(hash))
    }
    async fn apply_stats(&self, batch: &StatsBatch) -> Result<()> {
        dispatch!(self, s => s.apply_stats(batch))
    }
    async fn stats(&self, namespace: Option<&str>, since_hour: i64) -> Result<Vec<StatsRow>> {
        dispatch!(self, s => s.stats(namespace, since_hour))
    }
    async fn record_evictions(&self, namespace: &str, keys: &[&str], at: i64) -> Result<()> {
        dispatch!(self, s => s.record_evictions(namespace, keys, at))
    }
    async fn storage_usage(&self) -> Result<StorageUsage> {
        dispatch!(self, s => s.storage_usage())
    }
    async fn lru_entries(
        &self,
        namespace: &str,
        after: Option<&EvictionCandidate>,
        limit: i64,
    ) -> Result<Vec<EvictionCandidate>> {
        dispatch!(self, s => s.lru_entries(namespace, after, limit))
    }
    async fn evict_entries(&self, entries: &[(String, String)], now: i64) -> Result<Evicted> {
        dispatch!(self, s => s.evict_entries(entries, now))
    }
    async fn claim_unreferenced_blobs(
        &self,
        hashes: &[String],
        referenced_before: Option<i64>,
    ) -> Result<Vec<BlobInfo>> {
        dispatch!(self, s => s.claim_unreferenced_blobs(hashes, referenced_before))
    }
    async fn claim_abandoned_blobs(&self, hashes: &[String], cutoff: i64) -> Result<Vec<BlobInfo>> {
        dispatch!(self, s => s.claim_abandoned_blobs(hashes, cutoff))
    }
    async fn sweep_candidates(&self, cutoff: i64, limit: i64) -> Result<Vec<BlobRow>> {
        dispatch!(self, s => s.sweep_candidates(cutoff, limit))
    }
    async fn delete_blob_rows(&self, hashes: &[String]) -> Result<u64> {
        dispatch!(self, s => s.delete_blob_rows(hashes))
    }
    async fn blobs_after(&self, after: &str, limit: i64) -> Result<Vec<BlobRow>> {
        dispatch!(self, s => s.blobs_after(after, limit))
    }
    async fn prune_evicted_keys(&self, before: i64) -> Result<u64> {
        dispatch!(self, s => s.prune_evicted_keys(before))
    }
    async fn clock_ms(&self) -> Result<i64> {
        dispatch!(self, s => s.clock_ms())
    }
    async fn entry_changes(&self, since_ms: i64) -> Result<Vec<EntryChange>> {
        dispatch!(self, s => s.entry_changes(since_ms))
    }
    async fn prune_entry_changes(&self, before_ms: i64) -> Result<u64> {
        dispatch!(self, s => s.prune_entry_changes(before_ms))
    }
    async fn create_token(&self, token: &NewToken<'_>) -> Result<i64> {
        dispatch!(self, s => s.create_token(token))
    }
    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<(TokenRow, String)>> {
        dispatch!(self, s => s.token_by_hash(secret_hash))
    }
    async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        dispatch!(self, s => s.list_tokens())
    }
    async fn revoke_token(&self, id: i64, now: i64) -> Result<bool> {
        dispatch!(self, s => s.revoke_token(id, now))
    }
    async fn purge_token_entries(&self, id: i64) -> Result<u64> {
        dispatch!(self, s => s.purge_token_entries(id))
    }
    async fn secured(&self) -> Result<bool> {
        dispatch!(self, s => s.secured())
    }
    async fn namespace_usage(&self, namespace: Option<&str>) -> Result<Vec<NamespaceUsage>> {
        dispatch!(self, s => s.namespace_usage(namespace))
    }
}

/// The error of a failed entry insert: a missing namespace is [`Error::NotFound`].
fn entry_write_error(e: sqlx::Error, namespace: &str) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            Error::NotFound(format!("namespace {namespace:?} does not exist"))
        }
        _ => Error::Database {
            context: "writing entry",
            source: e,
        },
    }
}

fn corrupt_row(detail: String) -> Error {
    Error::Database {
        context: "decoding a row",
        source: sqlx::Error::Decode(detail.into()),
    }
}

fn parse_encoding(s: &str) -> Result<Encoding> {
    s.parse().map_err(corrupt_row)
}

fn parse_meaning(hex: Option<&str>) -> Result<Option<crate::meaning::Meaning>> {
    hex.map(|hex| crate::meaning::Meaning::from_hex(hex).ok_or_else(|| corrupt_row(format!("meaning {hex:?}"))))
        .transpose()
}
