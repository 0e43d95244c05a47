//! Layered configuration: built-in defaults → TOML file (`--config`) → `HEARTH_*` environment →
//! command-line flags. Each layer only overrides what it sets. Unknown keys are errors.

use crate::size::ByteSize;
use crate::{Error, Result};
use clap::Args;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The effective configuration of a hearth process.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Directory holding the embedded SQLite database and the local blob store.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`. Default: `hearth.db` in the data dir.
    pub database_url: String,
    /// Where blobs live: `local` (the data dir) or `s3`.
    pub storage: StorageKind,
    /// S3 bucket (with `storage = "s3"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. `hearth/`.
    pub s3_prefix: String,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, Garage, R2); none for AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// Region; none takes it from the AWS environment or profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted stores.
    pub s3_path_style: bool,
    /// Largest accepted upload; larger PUTs get 413 before any byte is stored.
    pub max_body_size: ByteSize,
    /// Uploads handled at once; more get 503 with `Retry-After` instead of exhausting file
    /// descriptors and staging space.
    pub max_concurrent_uploads: u32,
    /// Storage budget of the blob store, in stored bytes (reported as
    /// `hearth_storage_budget_bytes`; garbage collection enforces it).
    pub max_size: ByteSize,
    /// Memory for hot blobs (and, when non-zero, a short-lived cache of hot entries).
    pub memory_cache_size: ByteSize,
    /// Free space kept on the data volume, for the database's writes (deletions, statistics,
    /// garbage collection) when uploads fill it: uploads get 507 below it, and on Btrfs also
    /// while free metadata space is under a quarter of it. 0 turns the check off; none: 5 % of the volume, at
    /// most 64 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_space: Option<ByteSize>,
    /// fsync each blob before it becomes visible (local storage). Off: faster uploads, and a
    /// power cut may cost the newest blobs (verified reads make them misses, never bad bytes).
    pub sync_writes: bool,
    /// zstd level for blobs that compress (1..=19); 0 stores everything raw.
    pub compression_level: i32,
    /// How often garbage collection (eviction to the budget and quotas, orphan sweeping) runs.
    #[serde(with = "human_duration")]
    pub gc_interval: Duration,
    /// Unreferenced blobs and unfinished uploads younger than this are never collected.
    #[serde(with = "human_duration")]
    pub gc_grace: Duration,
    /// How often batched hits, misses and access times are written to the database.
    #[serde(with = "human_duration")]
    pub stats_flush_interval: Duration,
    /// Size of the database connection pool.
    pub db_max_connections: u32,
    /// How long a request waits for a database connection before failing (never hang a client).
    #[serde(with = "human_duration")]
    pub db_acquire_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
    /// Longest a client may take to send its request headers, or stall while sending a body
    /// or reading a response; also how long an idle keep-alive connection stays open.
    #[serde(with = "human_duration")]
    pub client_timeout: Duration,
    /// `compact` (human) or `json` log lines on stderr.
    pub log_format: LogFormat,
}

/// Blob store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Local,
    S3,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Compact,
    Json,
}

/// Largest upload accepted by default. Rust rlibs of big crates reach hundreds of MiB.
const DEFAULT_MAX_BODY_SIZE: u64 = 1 << 30;
/// Enough for a busy CI fleet on one box; each upload holds a file descriptor and a few
/// 256 KiB buffers.
const DEFAULT_MAX_CONCURRENT_UPLOADS: u32 = 256;
/// sccache's own default for its local cache: fine for a laptop, raise it for a team.
const DEFAULT_MAX_SIZE: u64 = 10 << 30;
/// The grace period protects uploads between writing their blob and their entry (milliseconds
/// in practice); below a minute a slow database could let the sweep take one.
const MIN_GC_GRACE: Duration = Duration::from_secs(60);
/// zstd's own default: ~2× on object files at a few hundred MB/s per core.
const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// A crash loses at most this much of the hit/miss statistics.
const DEFAULT_STATS_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

impl Default for Config {
    fn default() -> Self {
        let data_dir = PathBuf::from("./hearth-data");
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: default_database_url(&data_dir),
            data_dir,
            storage: StorageKind::Local,
            s3_bucket: None,
            s3_prefix: String::new(),
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            max_body_size: ByteSize(DEFAULT_MAX_BODY_SIZE),
            max_concurrent_uploads: DEFAULT_MAX_CONCURRENT_UPLOADS,
            max_size: ByteSize(DEFAULT_MAX_SIZE),
            memory_cache_size: ByteSize(256 << 20),
            min_free_space: None,
            sync_writes: true,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            gc_interval: Duration::from_secs(300),
            gc_grace: Duration::from_secs(3600),
            stats_flush_interval: DEFAULT_STATS_FLUSH_INTERVAL,
            db_max_connections: 16,
            db_acquire_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            client_timeout: Duration::from_secs(60),
            log_format: LogFormat::Compact,
        }
    }
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("hearth.db").display())
}

/// One layer of configuration: every field optional. The TOML file has this shape.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigLayer {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub storage: Option<StorageKind>,
    pub s3_bucket: Option<String>,
    pub s3_prefix: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub max_body_size: Option<ByteSize>,
    pub max_concurrent_uploads: Option<u32>,
    pub max_size: Option<ByteSize>,
    pub memory_cache_size: Option<ByteSize>,
    pub min_free_space: Option<ByteSize>,
    pub sync_writes: Option<bool>,
    pub compression_level: Option<i32>,
    #[serde(default, deserialize_with = "human_duration::deserialize_opt")]
    pub gc_interval: Option<Duration>,
    #[serde(default, deserialize_with = "human_duration::deserialize_opt")]
    pub gc_grace: Option<Duration>,
    #[serde(default, deserialize_with = "human_duration::deserialize_opt")]
    pub stats_flush_interval: Option<Duration>,
    pub db_max_connections: Option<u32>,
    #[serde(default, deserialize_with = "human_duration::deserialize_opt")]
    pub db_acquire_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "human_duration::deserialize_opt")]
    pub shutdown_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "human_duration::deserialize_opt")]
    pub client_timeout: Option<Duration>,
    pub log_format: Option<LogFormat>,
}

/// Flags shared by every subcommand. Each one also reads its `HEARTH_*` variable; a flag wins
/// over the variable, and both win over the config file.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "HEARTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, env = "HEARTH_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Data directory (SQLite database and blobs).
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Metadata database: sqlite://PATH or postgres://…
    #[arg(long, env = "HEARTH_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Blob store: local (the data dir) or s3.
    #[arg(long, env = "HEARTH_STORAGE", value_name = "KIND")]
    pub storage: Option<StorageKind>,
    /// S3 bucket.
    #[arg(long, env = "HEARTH_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(long, env = "HEARTH_S3_PREFIX", value_name = "PREFIX")]
    pub s3_prefix: Option<String>,
    /// Endpoint URL of an S3-compatible store.
    #[arg(long, env = "HEARTH_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "HEARTH_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing.
    #[arg(long, env = "HEARTH_S3_PATH_STYLE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Largest accepted upload, e.g. 1GiB.
    #[arg(long, env = "HEARTH_MAX_BODY_SIZE", value_name = "SIZE")]
    pub max_body_size: Option<ByteSize>,
    /// Uploads handled at once; more get 503 with Retry-After.
    #[arg(long, env = "HEARTH_MAX_CONCURRENT_UPLOADS", value_name = "N")]
    pub max_concurrent_uploads: Option<u32>,
    /// Storage budget of the blob store, e.g. 10GiB.
    #[arg(long, env = "HEARTH_MAX_SIZE", value_name = "SIZE")]
    pub max_size: Option<ByteSize>,
    /// Memory for hot blobs and entries, e.g. 256MiB; 0 turns the in-memory cache off.
    #[arg(long, env = "HEARTH_MEMORY_CACHE_SIZE", value_name = "SIZE")]
    pub memory_cache_size: Option<ByteSize>,
    /// Free space kept on the data volume for the database, e.g. 64MiB; uploads get 507 below
    /// it; 0 turns the check off. Default: 5 % of the volume, at most 64 MiB.
    #[arg(long, env = "HEARTH_MIN_FREE_SPACE", value_name = "SIZE")]
    pub min_free_space: Option<ByteSize>,
    /// fsync each blob before it becomes visible: true (default) or false.
    #[arg(long, env = "HEARTH_SYNC_WRITES", value_name = "BOOL")]
    pub sync_writes: Option<bool>,
    /// zstd level for compressible blobs, 0 to store everything raw.
    #[arg(long, env = "HEARTH_COMPRESSION_LEVEL", value_name = "LEVEL")]
    pub compression_level: Option<i32>,
    /// Interval between garbage collections, e.g. 5m.
    #[arg(long, env = "HEARTH_GC_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub gc_interval: Option<Duration>,
    /// Age below which unreferenced blobs and unfinished uploads are left alone, e.g. 1h.
    #[arg(long, env = "HEARTH_GC_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub gc_grace: Option<Duration>,
    /// Interval between statistics flushes, e.g. 5s.
    #[arg(long, env = "HEARTH_STATS_FLUSH_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stats_flush_interval: Option<Duration>,
    /// Database connection pool size.
    #[arg(long, env = "HEARTH_DB_MAX_CONNECTIONS", value_name = "N")]
    pub db_max_connections: Option<u32>,
    /// Longest wait for a database connection, e.g. 3s.
    #[arg(long, env = "HEARTH_DB_ACQUIRE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Option<Duration>,
    /// Grace period for in-flight requests at shutdown, e.g. 30s.
    #[arg(long, env = "HEARTH_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Longest a client may stall (headers, body, reading a response, idle keep-alive), e.g. 60s.
    #[arg(long, env = "HEARTH_CLIENT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub client_timeout: Option<Duration>,
    /// Log format.
    #[arg(long, env = "HEARTH_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl ConfigArgs {
    fn as_layer(&self) -> ConfigLayer {
        ConfigLayer {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            storage: self.storage,
            s3_bucket: self.s3_bucket.clone(),
            s3_prefix: self.s3_prefix.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            max_body_size: self.max_body_size,
            max_concurrent_uploads: self.max_concurrent_uploads,
            max_size: self.max_size,
            memory_cache_size: self.memory_cache_size,
            min_free_space: self.min_free_space,
            sync_writes: self.sync_writes,
            gc_interval: self.gc_interval,
            gc_grace: self.gc_grace,
            compression_level: self.compression_level,
            stats_flush_interval: self.stats_flush_interval,
            db_max_connections: self.db_max_connections,
            db_acquire_timeout: self.db_acquire_timeout,
            shutdown_timeout: self.shutdown_timeout,
            client_timeout: self.client_timeout,
            log_format: self.log_format,
        }
    }

    /// Builds the effective configuration from every layer.
    pub fn load(&self) -> Result<Config> {
        let file = match &self.config {
            Some(path) => ConfigLayer::from_file(path)?,
            None => ConfigLayer::default(),
        };
        Config::from_layers(&[file, self.as_layer()])
    }
}

impl ConfigLayer {
    /// Reads a TOML layer.
    pub fn from_file(path: &Path) -> Result<ConfigLayer> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        ConfigLayer::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses a TOML layer.
    pub fn from_toml(text: &str) -> Result<ConfigLayer> {
        toml::from_str(text).map_err(|e| Error::Config(e.message().to_string()))
    }
}

impl Config {
    /// Applies `layers` in order over the defaults, then validates.
    pub fn from_layers(layers: &[ConfigLayer]) -> Result<Config> {
        let mut config = Config::default();
        let mut database_url = None;
        for layer in layers {
            macro_rules! take {
                ($($field:ident),*) => { $( if let Some(v) = layer.$field.clone() { config.$field = v; } )* };
            }
            take!(
                listen,
                data_dir,
                storage,
                s3_prefix,
                s3_path_style,
                max_body_size,
                max_concurrent_uploads,
                max_size,
                memory_cache_size,
                sync_writes,
                gc_interval,
                gc_grace,
                compression_level,
                stats_flush_interval,
                db_max_connections,
                db_acquire_timeout,
                shutdown_timeout,
                client_timeout,
                log_format
            );
            for (value, target) in [
                (&layer.s3_bucket, &mut config.s3_bucket),
                (&layer.s3_endpoint, &mut config.s3_endpoint),
                (&layer.s3_region, &mut config.s3_region),
            ] {
                if value.is_some() {
                    *target = value.clone();
                }
            }
            if layer.min_free_space.is_some() {
                config.min_free_space = layer.min_free_space;
            }
            if let Some(url) = &layer.database_url {
                database_url = Some(url.clone());
            }
        }
        // The default database follows the data dir, whichever layer set it.
        config.database_url = database_url.unwrap_or_else(|| default_database_url(&config.data_dir));
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !(0..=19).contains(&self.compression_level) {
            return Err(Error::Config(format!(
                "compression-level must be between 0 and 19, got {}",
                self.compression_level
            )));
        }
        if self.max_concurrent_uploads == 0 {
            return Err(Error::Config("max-concurrent-uploads must be at least 1".into()));
        }
        if self.db_max_connections == 0 {
            return Err(Error::Config("db-max-connections must be at least 1".into()));
        }
        if self.storage == StorageKind::S3 && self.s3_bucket.as_deref().unwrap_or("").is_empty() {
            return Err(Error::Config("storage = \"s3\" needs s3-bucket".into()));
        }
        if self.gc_interval.is_zero() {
            return Err(Error::Config("gc-interval must be positive".into()));
        }
        if self.gc_grace < MIN_GC_GRACE {
            return Err(Error::Config(format!(
                "gc-grace must be at least {} (it protects uploads in flight)",
                humantime::format_duration(MIN_GC_GRACE)
            )));
        }
        if self.stats_flush_interval.is_zero() {
            return Err(Error::Config("stats-flush-interval must be positive".into()));
        }
        if self.client_timeout.is_zero() {
            return Err(Error::Config("client-timeout must be positive".into()));
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(Error::Config(format!(
                "database-url must start with sqlite:// or postgres://, got {}",
                redact_url(&self.database_url)
            )));
        }
        Ok(())
    }

    /// The configuration as TOML with secrets redacted, as `hearth print-config` shows it.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = redact_url(&self.database_url);
        toml::to_string_pretty(&shown).expect("config serializes")
    }
}

/// Replaces the password of a URL with `***`, keeping everything else readable.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

mod human_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_zero_config() {
        let c = Config::from_layers(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./hearth-data"));
        assert_eq!(c.database_url, "sqlite://./hearth-data/hearth.db");
    }

    #[test]
    fn later_layers_win_and_database_follows_data_dir() {
        let file = ConfigLayer::from_toml(
            "listen = \"0.0.0.0:9000\"\ndata-dir = \"/srv/hearth\"\nmax-body-size = \"2GiB\"\nstats-flush-interval = \"10s\"",
        )
        .unwrap();
        let flags = ConfigLayer {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::from_layers(&[file, flags]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.max_body_size, ByteSize(2 << 30));
        assert_eq!(c.stats_flush_interval, Duration::from_secs(10));
        assert_eq!(c.database_url, "sqlite:///srv/hearth/hearth.db");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(ConfigLayer::from_toml("lisen = \"x\"").is_err());
        assert!(ConfigLayer::from_toml("max-body-size = \"lots\"").is_err());
        let bad = ConfigLayer {
            compression_level: Some(42),
            ..Default::default()
        };
        assert!(Config::from_layers(&[bad]).is_err());
        let bad = ConfigLayer {
            database_url: Some("mysql://x".into()),
            ..Default::default()
        };
        assert!(Config::from_layers(&[bad]).is_err());
    }

    #[test]
    fn print_config_redacts_passwords() {
        let layer = ConfigLayer {
            database_url: Some("postgres://app:hunter2@db/hearth".into()),
            ..Default::default()
        };
        let text = Config::from_layers(&[layer]).unwrap().to_redacted_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://app:***@db/hearth"), "{text}");
    }
}
