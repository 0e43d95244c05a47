//! Prometheus metrics: one typed struct with its own registry, read by `GET /metrics`.
//!
//! Labels stay low-cardinality: HTTP metrics carry protocol, operation and status — never a
//! path or key; cache metrics carry the namespace, capped at [`MAX_NAMESPACE_LABELS`] distinct
//! values (the rest are reported as `_other`). Every metric is documented in docs/metrics.md,
//! and a test keeps that document, this file and the Grafana dashboard in agreement.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Request latency buckets, in seconds. Cache hits of small entries answer in well under a
/// millisecond on loopback; large uploads take seconds. sccache gives up on a lookup at 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Distinct namespace label values before further namespaces are folded into `_other`.
pub const MAX_NAMESPACE_LABELS: usize = 200;

/// Label value standing for every namespace beyond the cap.
pub const OTHER_NAMESPACE: &str = "_other";

/// Kinds of server-side error counted by `hearth_errors_total`.
pub const ERROR_KINDS: &[&str] = &["database", "storage", "corrupt_blob", "unavailable", "internal"];

/// Every metric hearth exports.
pub struct Metrics {
    registry: Registry,
    namespaces: Mutex<HashSet<String>>,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_writes: IntCounterVec,
    pub cache_conflicting_writes: IntCounterVec,
    pub cache_same_meaning_writes: IntCounterVec,
    pub cache_served_bytes: IntCounterVec,
    pub cache_received_bytes: IntCounterVec,
    pub errors: IntCounterVec,
    pub stored_bytes: IntGaugeVec,
    pub storage_budget_bytes: IntGauge,
    pub entries: IntGauge,
    pub blobs: IntGauge,
    pub stats_flush_lag: Gauge,
    pub stats_flush_failures: IntCounter,
    pub stats_dropped_accesses: IntCounter,
    pub db_pool_connections: IntGaugeVec,
    pub database_available: IntGauge,
    pub entry_feed_live: IntGauge,
    pub gc_runs: IntCounter,
    pub gc_duration: Gauge,
    pub evicted_entries: IntCounter,
    pub evicted_bytes: IntCounter,
    pub gc_freed_bytes: IntCounter,
    pub build_info: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "hearth_http_request_duration_seconds",
                "Time from request to response headers, by protocol and operation.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["protocol", "operation"],
        )
        .expect("valid metric");
        r.register(Box::new(http_request_duration.clone()))
            .expect("unique metric");
        let stats_flush_lag = Gauge::new(
            "hearth_stats_flush_lag_seconds",
            "Seconds since statistics were last written to the database.",
        )
        .expect("valid metric");
        r.register(Box::new(stats_flush_lag.clone())).expect("unique metric");
        let stats_flush_failures = IntCounter::new(
            "hearth_stats_flush_failures_total",
            "Statistics flushes that failed (their data is kept and retried).",
        )
        .expect("valid metric");
        r.register(Box::new(stats_flush_failures.clone()))
            .expect("unique metric");
        let stats_dropped_accesses = IntCounter::new(
            "hearth_stats_dropped_accesses_total",
            "Access-time records dropped because the database stayed unreachable too long.",
        )
        .expect("valid metric");
        r.register(Box::new(stats_dropped_accesses.clone()))
            .expect("unique metric");

        let metrics = Metrics {
            namespaces: Mutex::default(),
            http_requests: counter(
                &r,
                "hearth_http_requests_total",
                "HTTP requests by protocol, operation and status code.",
                &["protocol", "operation", "status"],
            ),
            http_request_duration,
            cache_hits: counter(
                &r,
                "hearth_cache_hits_total",
                "Cache lookups that found an entry.",
                &["namespace"],
            ),
            cache_misses: counter(
                &r,
                "hearth_cache_misses_total",
                "Cache lookups that found nothing.",
                &["namespace"],
            ),
            cache_writes: counter(&r, "hearth_cache_writes_total", "Entries stored.", &["namespace"]),
            cache_conflicting_writes: counter(
                &r,
                "hearth_cache_conflicting_writes_total",
                "Keys overwritten with different content (non-deterministic builds or cache poisoning).",
                &["namespace"],
            ),
            cache_same_meaning_writes: counter(
                &r,
                "hearth_cache_same_meaning_writes_total",
                "Keys overwritten with other bytes of the same meaning (an sccache entry's members in another order, a ccache entry's creation time).",
                &["namespace"],
            ),
            cache_served_bytes: counter(
                &r,
                "hearth_cache_served_bytes_total",
                "Bytes of entries served by cache hits.",
                &["namespace"],
            ),
            cache_received_bytes: counter(
                &r,
                "hearth_cache_received_bytes_total",
                "Bytes of entries received by writes.",
                &["namespace"],
            ),
            errors: counter(&r, "hearth_errors_total", "Server-side failures by kind.", &["kind"]),
            stored_bytes: gauge_vec(
                &r,
                "hearth_stored_bytes",
                "Stored bytes: logical (entries), unique (after dedup), compressed (after zstd), physical (whole store).",
                &["layer"],
            ),
            storage_budget_bytes: gauge(
                &r,
                "hearth_storage_budget_bytes",
                "Configured maximum physical size of the blob store (0 = unlimited).",
            ),
            entries: gauge(&r, "hearth_entries", "Entries (keys) stored, all namespaces."),
            blobs: gauge(&r, "hearth_blobs", "Distinct blobs stored."),
            stats_flush_lag,
            stats_flush_failures,
            stats_dropped_accesses,
            database_available: gauge(
                &r,
                "hearth_database_available",
                "1 while the database answers; 0 while it is unreachable and calls fail fast.",
            ),
            entry_feed_live: gauge(
                &r,
                "hearth_entry_feed_live",
                "1 while the entry change feed polls the database (hot keys trusted in memory for up to a minute); 0 when it does not (2 s).",
            ),
            db_pool_connections: gauge_vec(
                &r,
                "hearth_db_pool_connections",
                "Database pool connections by state (in_use, idle).",
                &["state"],
            ),
            gc_runs: plain_counter(&r, "hearth_gc_runs_total", "Completed garbage collections (eviction and sweep)."),
            gc_duration: {
                let g = Gauge::new("hearth_gc_duration_seconds", "Duration of the last garbage collection.")
                    .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            evicted_entries: plain_counter(
                &r,
                "hearth_evicted_entries_total",
                "Entries evicted to stay within the storage budget or a namespace quota.",
            ),
            evicted_bytes: plain_counter(&r, "hearth_evicted_bytes_total", "Logical bytes of evicted entries."),
            gc_freed_bytes: plain_counter(
                &r,
                "hearth_gc_freed_bytes_total",
                "Stored bytes freed by garbage collection (evicted entries' blobs and swept orphans).",
            ),
            build_info: gauge_vec(
                &r,
                "hearth_build_info",
                "Always 1; the labels describe the build.",
                &["version"],
            ),
            registry: r,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that must exist before the first event, so that dashboards show 0, not "no data".
        for kind in ERROR_KINDS {
            metrics.errors.with_label_values(&[kind]).inc_by(0);
        }
        for layer in ["logical", "unique", "compressed", "physical"] {
            metrics.stored_bytes.with_label_values(&[layer]).set(0);
        }
        metrics
    }

    /// The label for `namespace`, folding namespaces beyond the cap into `_other`.
    pub fn namespace_label<'a>(&self, namespace: &'a str) -> &'a str {
        let mut seen = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(namespace) {
            return namespace;
        }
        if seen.len() < MAX_NAMESPACE_LABELS {
            seen.insert(namespace.to_string());
            return namespace;
        }
        OTHER_NAMESPACE
    }

    /// Sets the storage gauges from a measurement.
    pub fn set_storage(&self, usage: &crate::meta::StorageUsage) {
        self.entries.set(usage.entries);
        self.blobs.set(usage.blobs);
        self.stored_bytes
            .with_label_values(&["logical"])
            .set(usage.logical_bytes);
        self.stored_bytes.with_label_values(&["unique"]).set(usage.unique_bytes);
        self.stored_bytes
            .with_label_values(&["compressed"])
            .set(usage.compressed_bytes);
        self.stored_bytes
            .with_label_values(&["physical"])
            .set(usage.physical_bytes);
    }

    /// Records a finished garbage collection: how long it took, the entries it evicted and
    /// their logical bytes, and the stored bytes it freed (evicted blobs and swept ones).
    pub fn record_gc(&self, took: Duration, evicted_entries: u64, evicted_bytes: u64, freed_bytes: u64) {
        self.gc_runs.inc();
        self.gc_duration.set(took.as_secs_f64());
        self.evicted_entries.inc_by(evicted_entries);
        self.evicted_bytes.inc_by(evicted_bytes);
        self.gc_freed_bytes.inc_by(freed_bytes);
    }

    /// Exports a metric kept elsewhere (the metadata store's writer holds).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry.register(collector).expect("unique metric");
    }

    /// Every metric in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_NAMESPACE_LABELS {
            assert_eq!(m.namespace_label(&format!("ns{i}")), format!("ns{i}"));
        }
        assert_eq!(m.namespace_label("one-too-many"), OTHER_NAMESPACE);
        assert_eq!(m.namespace_label("ns0"), "ns0");
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.cache_hits.with_label_values(&["team"]).inc();
        m.http_request_duration
            .with_label_values(&["webdav", "get"])
            .observe(0.002);
        let text = m.render();
        assert!(text.contains("hearth_cache_hits_total{namespace=\"team\"} 1"), "{text}");
        assert!(text.contains("# TYPE hearth_http_request_duration_seconds histogram"));
        assert!(
            text.contains(
                "hearth_http_request_duration_seconds_bucket{operation=\"get\",protocol=\"webdav\",le=\"0.0025\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("hearth_build_info{version="));
        // Pre-created so that dashboards show zero rather than "no data".
        assert!(text.contains("hearth_errors_total{kind=\"database\"} 0"), "{text}");
    }
}
