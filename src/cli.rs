//! The command line: `serve`, `migrate`, `stats`, `print-config`. Every subcommand takes the
//! same configuration flags (each also readable from `HEARTH_*` and the config file).

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

#[derive(Clone, Copy, Debug, ValueEnum)]
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
    let args = match &cli.command {
        Command::Serve(a) | Command::Migrate(a) | Command::PrintConfig(a) => a,
        Command::Stats(s) => &s.config,
        Command::Healthcheck(_) => unreachable!("handled above"),
    };
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

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let meta = crate::server::open_metadata(config).await?;
    meta.migrate().await?;
    meta.close().await;
    eprintln!("hearth: {} database is up to date", meta.kind());
    Ok(())
}
