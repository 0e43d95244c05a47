//! Logging setup: one subscriber on stderr, filtered by `HEARTH_LOG` (or `RUST_LOG`),
//! compact for people or JSON for log shippers. Secrets and bodies are never logged.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(format: LogFormat) {
    let filter = std::env::var("HEARTH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed log write (stderr on a full disk) is not reported with `eprintln!`, which
        // panics when stderr cannot be written: a full log volume must not fail requests.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Compact => builder.compact().try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
