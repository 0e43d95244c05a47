//! Starting and stopping a hearth server. [`start`] never binds its own port: it takes a
//! bound listener, so tests bind `127.0.0.1:0`. One cancellation token stops everything:
//! the HTTP server drains in-flight requests (up to `shutdown-timeout`), then the stats
//! flusher writes its last batch, then the database pool closes.

use crate::blob::{BlobStore, LocalStore};
use crate::cache::{Cache, WriteSettings};
use crate::config::Config;
use crate::http::{router, AppState};
use crate::meta::{MetaStore, MetadataStore, PoolSettings};
use crate::metrics::Metrics;
use crate::stats::{run_flusher, StatsRecorder};
use crate::time::unix_now;
use crate::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A server running in the background.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelling this token shuts the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The shared state (tests read the metadata store through it).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Waits until the server has stopped (after the token is cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// Shuts down gracefully and waits: in-flight requests finish, statistics are flushed.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Opens the metadata store (running migrations) and the blob store, and serves on `listener`.
pub async fn start(config: &Config, listener: TcpListener) -> Result<RunningServer> {
    let meta = open_metadata(config).await?;
    meta.migrate().await?;
    let blobs = open_blobs(config).await?;
    let metrics = Arc::new(Metrics::new());
    metrics.register(Box::new(meta.writer_holds().collector()));
    metrics.storage_budget_bytes.set(config.max_size.0 as i64);
    let stats = StatsRecorder::with_metrics(metrics.clone());
    let write = WriteSettings {
        max_body_size: config.max_body_size.0,
        compression_level: config.compression_level,
        memory_cache_bytes: config.memory_cache_size.0,
    };
    let gc_trigger = Arc::new(crate::gc::WriteTrigger::new(config.max_size.0));
    let state = Arc::new(AppState {
        cache: Cache::new(meta.clone(), blobs, stats.clone(), write).with_gc_trigger(gc_trigger.clone()),
        access: crate::access::AccessControl::new(meta.clone(), stats.clone()),
        metrics: metrics.clone(),
        uploads: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads as usize)),
        started_at: unix_now(),
    });
    let addr = listener
        .local_addr()
        .map_err(crate::Error::storage("reading the listen address"))?;
    let shutdown = CancellationToken::new();
    let flusher_stop = CancellationToken::new();
    let flusher = tokio::spawn(run_flusher(
        stats,
        meta.background(),
        config.stats_flush_interval,
        flusher_stop.clone(),
    ));
    if config.memory_cache_size.0 > 0 {
        tokio::spawn(crate::feed::run_feed(
            meta.background(),
            state.cache.hot().clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::gc::run_collector(
        meta.background(),
        state.cache.blobs().clone(),
        gc_settings(config, false),
        config.gc_interval,
        gc_trigger,
        metrics.clone(),
        shutdown.clone(),
    ));

    let app = router(state.clone());
    let grace = config.shutdown_timeout;
    let client_timeout = config.client_timeout;
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let server = crate::http::serve(listener, app, client_timeout, token.clone());
        let deadline = async {
            token.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = server => {}
            _ = deadline => {
                tracing::warn!(?grace, "shutdown grace period over; dropping remaining connections");
            }
        };
        flusher_stop.cancel();
        let _ = flusher.await;
        meta.close().await;
        Ok(())
    });
    Ok(RunningServer {
        addr,
        shutdown,
        task,
        state,
    })
}

/// Garbage-collection settings from the configuration.
pub fn gc_settings(config: &Config, dry_run: bool) -> crate::gc::GcSettings {
    crate::gc::GcSettings {
        max_size: config.max_size.0,
        grace: config.gc_grace,
        dry_run,
    }
}

/// Opens the configured blob store (S3 stages uploads in the data dir).
pub async fn open_blobs(config: &Config) -> Result<BlobStore> {
    let local = LocalStore::open(&config.data_dir)?.with_min_free_space(config.min_free_space.map(|s| s.0));
    Ok(match config.storage {
        crate::config::StorageKind::Local if config.sync_writes => BlobStore::Local(local),
        crate::config::StorageKind::Local => BlobStore::Local(local.without_sync()),
        crate::config::StorageKind::S3 => {
            let settings = crate::blob::S3Settings {
                bucket: config.s3_bucket.clone().unwrap_or_default(),
                prefix: config.s3_prefix.clone(),
                endpoint: config.s3_endpoint.clone(),
                region: config.s3_region.clone(),
                path_style: config.s3_path_style,
                operation_timeout: std::time::Duration::from_secs(30),
            };
            // Staged files are read once by the upload to S3 and removed: S3 keeps them safe.
            BlobStore::S3(crate::blob::S3Store::connect(&settings, local.without_sync()).await?)
        }
    })
}

/// Connects to the configured database.
pub async fn open_metadata(config: &Config) -> Result<MetaStore> {
    let pool = PoolSettings {
        max_connections: config.db_max_connections,
        acquire_timeout: config.db_acquire_timeout,
    };
    MetaStore::connect(&config.database_url, &pool).await
}

/// `hearth serve`: bind, start, log the address, run until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let server = start(&config, listener).await?;
    tracing::info!(
        database = %crate::config::redact_url(&config.database_url),
        data_dir = %config.data_dir.display(),
        "listening on http://{}",
        server.addr()
    );
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests and flushing statistics");
        token.cancel();
    });
    server.wait().await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
