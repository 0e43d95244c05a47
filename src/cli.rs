//! The command line: `serve`, `migrate`, `stats`, `gc`, `verify`, `namespace …`, `token …`, `print-config`,
//! `healthcheck`. Every subcommand that touches the database takes the same configuration
//! flags (each also readable from `HEARTH_*` and the config file), and works while a server
//! runs: a running server sees new or revoked tokens within a few seconds.

use crate::config::{Config, ConfigArgs};
use crate::meta::MetadataStore;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hearth",
    version,
    about = "A self-hosted, team-shared compilation cache for sccache and ccache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the cache server.
    Serve(ConfigArgs),
    /// Apply database migrations and exit.
    Migrate(ConfigArgs),
    /// Print hit rates, traffic and storage per namespace.
    Stats(StatsArgs),
    /// Evict to the storage budget and quotas, and delete unreferenced blobs, once.
    Gc(GcArgs),
    /// Check the blob directory against the database (orphans, missing and corrupt blobs).
    Verify(VerifyArgs),
    /// Create, list or delete namespaces.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Create, list or revoke access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the effective configuration (secrets redacted) as TOML.
    PrintConfig(ConfigArgs),
    /// Exit 0 if a running hearth answers its readiness check (for container health checks).
    Healthcheck(HealthcheckArgs),
}

#[derive(Args, Debug)]
struct HealthcheckArgs {
    /// Readiness URL to probe (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
    url: String,
}

#[derive(Args, Debug)]
struct StatsArgs {
    /// Only this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Time window, e.g. 1h, 24h, 7d (rounded down to whole hours).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args, Debug)]
struct GcArgs {
    /// Print what would be freed without changing anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Delete orphan and stale temp files; forget missing or corrupt blobs and their entries.
    #[arg(long)]
    repair: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand, Debug)]
enum NamespaceCommand {
    /// Create a namespace.
    Create {
        /// Namespace name: 1-64 characters of [A-Za-z0-9._-].
        name: String,
        /// Storage quota of the namespace, e.g. 50GiB.
        #[arg(long, value_name = "SIZE")]
        quota: Option<crate::size::ByteSize>,
        /// Let requests without a token read (never write) this namespace.
        #[arg(long)]
        anonymous_read: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List namespaces.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete a namespace with all its entries and tokens.
    Delete {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; its secret is printed once, alone on the last line of stdout.
    Create {
        /// The namespace the token is limited to.
        #[arg(long, value_name = "NS", required_unless_present = "all", conflicts_with = "all")]
        namespace: Option<String>,
        /// Valid for every namespace.
        #[arg(long)]
        all: bool,
        /// read (GET/HEAD/PROPFIND), write (also PUT/MKCOL/DELETE) or admin (also the admin API).
        #[arg(long, value_parser = |s: &str| s.parse::<crate::auth::Scope>())]
        scope: crate::auth::Scope,
        /// Who holds it, e.g. ci or alice-laptop (statistics are attributed to it).
        #[arg(long)]
        label: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Revoke a token by id or label.
    Revoke {
        /// Token id or label.
        token: String,
        /// Also delete every entry this token wrote.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl Command {
    /// The configuration flags of subcommands that need a configuration.
    fn config_args(&self) -> Option<&ConfigArgs> {
        match self {
            Command::Serve(a) | Command::Migrate(a) | Command::PrintConfig(a) => Some(a),
            Command::Stats(s) => Some(&s.config),
            Command::Gc(g) => Some(&g.config),
            Command::Verify(v) => Some(&v.config),
            Command::Namespace(
                NamespaceCommand::Create { config, .. }
                | NamespaceCommand::List { config, .. }
                | NamespaceCommand::Delete { config, .. },
            ) => Some(config),
            Command::Token(
                TokenCommand::Create { config, .. }
                | TokenCommand::List { config, .. }
                | TokenCommand::Revoke { config, .. },
            ) => Some(config),
            Command::Healthcheck(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Parses the command line and runs the subcommand. Errors are one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Healthcheck(args) = &cli.command {
        return match crate::healthcheck::probe(&args.url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hearth: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli
        .command
        .config_args()
        .expect("every other subcommand has a configuration");
    let config = match args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hearth: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::PrintConfig(_) = cli.command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    crate::telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => crate::server::run(config).await,
            Command::Migrate(_) => migrate(&config).await,
            Command::Stats(args) => stats(&config, &args).await,
            Command::Gc(args) => gc(&config, &args).await,
            Command::Verify(args) => verify(&config, &args).await,
            Command::Namespace(action) => namespace(&config, action).await,
            Command::Token(action) => token(&config, action).await,
            Command::PrintConfig(_) | Command::Healthcheck(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stats(config: &Config, args: &StatsArgs) -> anyhow::Result<()> {
    let meta = crate::server::open_metadata(config).await?;
    meta.migrate().await?;
    let reports = crate::report::namespace_reports(&meta, args.namespace.as_deref(), args.since).await?;
    meta.close().await;
    match args.format {
        Format::Table => print!("{}", crate::report::render_table(&reports)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    Ok(())
}

/// Opens the (migrated) metadata store for a CLI command.
async fn open(config: &Config) -> anyhow::Result<crate::meta::MetaStore> {
    let meta = crate::server::open_metadata(config).await?;
    meta.migrate().await?;
    Ok(meta)
}

fn when(unix: Option<i64>) -> String {
    match unix {
        Some(t) => crate::time::http_date(t),
        None => "-".into(),
    }
}

async fn namespace(config: &Config, action: NamespaceCommand) -> anyhow::Result<()> {
    let meta = open(config).await?;
    let result = async {
        match action {
            NamespaceCommand::Create {
                name,
                quota,
                anonymous_read,
                ..
            } => {
                let row = crate::admin::create_namespace(&meta, &name, quota.map(|q| q.0), anonymous_read).await?;
                eprintln!("hearth: created namespace {}", row.name);
            }
            NamespaceCommand::List { format, .. } => {
                let rows = meta.list_namespaces().await?;
                if format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!("{:<32} {:>12} {:>14}  CREATED", "NAMESPACE", "QUOTA", "ANONYMOUS READ");
                    for r in rows {
                        let quota = r
                            .quota_bytes
                            .map(crate::report::human_bytes)
                            .unwrap_or_else(|| "-".into());
                        let anon = if r.anonymous_read { "yes" } else { "no" };
                        println!("{:<32} {quota:>12} {anon:>14}  {}", r.name, when(Some(r.created_at)));
                    }
                }
            }
            NamespaceCommand::Delete { name, .. } => {
                crate::admin::delete_namespace(&meta, &name).await?;
                eprintln!("hearth: deleted namespace {name} with its entries and tokens");
            }
        }
        anyhow::Ok(())
    }
    .await;
    meta.close().await;
    result
}

async fn token(config: &Config, action: TokenCommand) -> anyhow::Result<()> {
    let meta = open(config).await?;
    let result = async {
        match action {
            TokenCommand::Create {
                namespace,
                scope,
                label,
                ..
            } => {
                let created = crate::admin::create_token(&meta, namespace.as_deref(), scope, &label).await?;
                let t = &created.token;
                println!(
                    "token {} ({}, {} scope, {}); the secret is shown only now:",
                    t.id,
                    t.label,
                    t.scope,
                    t.namespace
                        .as_deref()
                        .map(|n| format!("namespace {n}"))
                        .unwrap_or_else(|| "all namespaces".into())
                );
                println!("{}", created.secret);
            }
            TokenCommand::List { format, .. } => {
                let tokens = meta.list_tokens().await?;
                if format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&tokens)?);
                } else {
                    println!(
                        "{:>5}  {:<24} {:<6} {:<24} {:<30} {:<30}",
                        "ID", "LABEL", "SCOPE", "NAMESPACE", "LAST USED", "REVOKED"
                    );
                    for t in tokens {
                        println!(
                            "{:>5}  {:<24} {:<6} {:<24} {:<30} {:<30}",
                            t.id,
                            t.label,
                            t.scope.as_str(),
                            t.namespace.as_deref().unwrap_or("(all)"),
                            when(t.last_used_at),
                            when(t.revoked_at)
                        );
                    }
                }
            }
            TokenCommand::Revoke { token, purge, .. } => {
                let revoked = crate::admin::revoke_token(&meta, &token, purge).await?;
                eprintln!("hearth: revoked token {} ({})", revoked.token.id, revoked.token.label);
                if purge {
                    eprintln!("hearth: purged {} entries it wrote", revoked.purged_entries);
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    meta.close().await;
    result
}

async fn gc(config: &Config, args: &GcArgs) -> anyhow::Result<()> {
    let meta = open(config).await?;
    let blobs = crate::server::open_blobs(config).await?;
    let settings = crate::server::gc_settings(config, args.dry_run);
    let report = crate::gc::collect_exclusively(&meta, &blobs, &settings).await;
    meta.close().await;
    let Some(report) = report? else {
        anyhow::bail!("another hearth is collecting garbage right now; try again later");
    };
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if report.dry_run { "would free" } else { "freed" };
    let bytes = crate::report::human_bytes;
    println!(
        "stored: {} of a {} budget{}",
        bytes(report.stored_bytes_before),
        if report.budget_bytes == 0 {
            "unlimited".to_string()
        } else {
            bytes(report.budget_bytes as i64)
        },
        if report.dry_run {
            String::new()
        } else {
            format!(", now {}", bytes(report.stored_bytes_after))
        },
    );
    println!(
        "eviction {verb} {} in {} blobs by evicting {} entries ({} logical)",
        bytes(report.freed_bytes),
        report.freed_blobs,
        report.evicted_entries,
        bytes(report.evicted_bytes)
    );
    let mut by_namespace: Vec<_> = report.evicted_by_namespace.iter().collect();
    by_namespace.sort();
    for (namespace, entries) in by_namespace {
        println!("  {namespace}: {entries} entries");
    }
    println!(
        "sweeping {verb} {} in {} unreferenced blobs or unfinished uploads",
        bytes(report.swept_bytes),
        report.swept_blobs
    );
    Ok(())
}

async fn verify(config: &Config, args: &VerifyArgs) -> anyhow::Result<()> {
    let meta = open(config).await?;
    let store = crate::server::open_blobs(config).await?;
    let report = crate::reconcile::verify(&meta, &store, args.repair).await;
    meta.close().await;
    let report = report?;
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("checked {} blobs", report.checked_blobs);
        for (what, items) in [
            ("orphan file", report.orphan_files.clone()),
            ("missing blob", report.missing_blobs.clone()),
            ("corrupt blob", report.corrupt_blobs.clone()),
            (
                "stale temp file",
                report
                    .stale_temp_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            ),
        ] {
            for item in items {
                println!("{what}: {item}");
            }
        }
        for d in &report.totals.drift {
            let namespace = if d.namespace.is_empty() {
                "(the store)"
            } else {
                &d.namespace
            };
            println!(
                "storage totals: {namespace} {}: kept {}, counted {}",
                d.figure, d.kept, d.counted
            );
        }
        if report.totals.miscounted_blobs > 0 {
            println!(
                "storage totals: {} blobs with a wrong reference count",
                report.totals.miscounted_blobs
            );
        }
        if report.is_clean() {
            println!("the store and the database agree");
        } else if report.repaired {
            println!(
                "repaired; {} entries of missing or corrupt blobs forgotten",
                report.forgotten_entries
            );
        } else {
            println!("run `hearth verify --repair` to fix these");
        }
    }
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let meta = crate::server::open_metadata(config).await?;
    meta.migrate().await?;
    meta.close().await;
    eprintln!("hearth: {} database is up to date", meta.kind());
    Ok(())
}
