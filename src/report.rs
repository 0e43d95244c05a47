//! Per-namespace reports over a time window: what `hearth stats` prints and
//! `GET /_hearth/api/stats` serves. Built from `stats_hourly` (traffic) and the stored entries
//! and blobs (size, dedup and compression savings).

use crate::meta::{Counters, MetaStore, MetadataStore, StorageUsage};
use crate::time::{hour_bucket, unix_now};
use crate::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Traffic attributed to one token label ('' = anonymous).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LabelReport {
    pub hits: i64,
    pub misses: i64,
    pub writes: i64,
}

/// One namespace over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NamespaceReport {
    pub namespace: String,
    /// Lookups and writes: hits + misses + writes.
    pub requests: i64,
    pub hits: i64,
    pub misses: i64,
    /// Misses on keys never stored.
    pub misses_cold: i64,
    /// Misses on keys stored once and evicted: a sign the cache is too small.
    pub misses_evicted: i64,
    /// hits / (hits + misses); 0 without lookups.
    pub hit_rate: f64,
    pub writes: i64,
    pub conflicting_writes: i64,
    /// Rewrites with other bytes of the same meaning: not conflicts.
    pub same_meaning_writes: i64,
    pub errors: i64,
    pub bytes_served: i64,
    pub bytes_received: i64,
    /// What the namespace holds now (not windowed).
    pub entries: i64,
    pub stored_logical_bytes: i64,
    pub stored_unique_bytes: i64,
    pub stored_compressed_bytes: i64,
    /// logical - unique: bytes not stored twice thanks to content addressing.
    pub dedup_savings_bytes: i64,
    /// unique - compressed: bytes saved by zstd.
    pub compression_savings_bytes: i64,
    /// Traffic per token label.
    pub by_token_label: BTreeMap<String, LabelReport>,
}

impl NamespaceReport {
    fn add_traffic(&mut self, label: &str, c: &Counters) {
        self.hits += c.hits;
        self.misses += c.misses;
        self.misses_evicted += c.misses_evicted;
        self.writes += c.writes;
        self.conflicting_writes += c.conflicting_writes;
        self.same_meaning_writes += c.same_meaning_writes;
        self.errors += c.errors;
        self.bytes_served += c.bytes_served;
        self.bytes_received += c.bytes_received;
        let by_label = self.by_token_label.entry(label.to_string()).or_default();
        by_label.hits += c.hits;
        by_label.misses += c.misses;
        by_label.writes += c.writes;
    }

    fn set_storage(&mut self, usage: &StorageUsage) {
        self.entries = usage.entries;
        self.stored_logical_bytes = usage.logical_bytes;
        self.stored_unique_bytes = usage.unique_bytes;
        self.stored_compressed_bytes = usage.compressed_bytes;
        self.dedup_savings_bytes = usage.logical_bytes - usage.unique_bytes;
        self.compression_savings_bytes = usage.unique_bytes - usage.compressed_bytes;
    }

    fn finish(&mut self) {
        self.requests = self.hits + self.misses + self.writes;
        self.misses_cold = self.misses - self.misses_evicted;
        let lookups = self.hits + self.misses;
        self.hit_rate = if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        };
    }
}

/// Reports for every namespace with traffic in the last `since` (whole hours, rounded down to
/// the hour) or with stored entries, optionally only `namespace`. Ordered by name.
pub async fn namespace_reports(
    meta: &MetaStore,
    namespace: Option<&str>,
    since: Duration,
) -> Result<Vec<NamespaceReport>> {
    let since_hour = hour_bucket(unix_now() - since.as_secs() as i64);
    let mut reports: BTreeMap<String, NamespaceReport> = BTreeMap::new();
    for row in meta.stats(namespace, since_hour).await? {
        reports
            .entry(row.namespace.clone())
            .or_insert_with(|| NamespaceReport {
                namespace: row.namespace.clone(),
                ..Default::default()
            })
            .add_traffic(&row.token_label, &row.counters);
    }
    for usage in meta.namespace_usage(namespace).await? {
        reports
            .entry(usage.namespace.clone())
            .or_insert_with(|| NamespaceReport {
                namespace: usage.namespace.clone(),
                ..Default::default()
            })
            .set_storage(&usage.usage);
    }
    Ok(reports
        .into_values()
        .map(|mut r| {
            r.finish();
            r
        })
        .collect())
}

/// Bytes for people: `0 B`, `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// The reports as an aligned text table.
pub fn render_table(reports: &[NamespaceReport]) -> String {
    let header = [
        "NAMESPACE",
        "REQUESTS",
        "HIT RATE",
        "HITS",
        "MISSES",
        "COLD",
        "EVICTED",
        "WRITES",
        "CONFLICTS",
        "SAME MEANING",
        "ERRORS",
        "SERVED",
        "RECEIVED",
        "ENTRIES",
        "STORED",
        "DEDUP SAVED",
        "ZSTD SAVED",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone(),
                r.requests.to_string(),
                format!("{:.1}%", r.hit_rate * 100.0),
                r.hits.to_string(),
                r.misses.to_string(),
                r.misses_cold.to_string(),
                r.misses_evicted.to_string(),
                r.writes.to_string(),
                r.conflicting_writes.to_string(),
                r.same_meaning_writes.to_string(),
                r.errors.to_string(),
                human_bytes(r.bytes_served),
                human_bytes(r.bytes_received),
                r.entries.to_string(),
                human_bytes(r.stored_compressed_bytes),
                human_bytes(r.dedup_savings_bytes),
                human_bytes(r.compression_savings_bytes),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            // Names left-aligned, numbers right-aligned.
            if i == 0 {
                let _ = write!(text, "{cell:<w$}", w = widths[i]);
            } else {
                let _ = write!(text, "  {cell:>w$}", w = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if reports.is_empty() {
        out.push_str("(no namespaces with traffic or stored entries in this window)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn finish_derives_rates_and_classes() {
        let mut r = NamespaceReport::default();
        r.add_traffic(
            "ci",
            &Counters {
                hits: 3,
                misses: 1,
                misses_evicted: 1,
                writes: 2,
                ..Default::default()
            },
        );
        r.add_traffic(
            "",
            &Counters {
                misses: 2,
                ..Default::default()
            },
        );
        r.finish();
        assert_eq!((r.requests, r.misses_cold, r.misses_evicted), (8, 2, 1));
        assert!((r.hit_rate - 0.5).abs() < 1e-9);
        assert_eq!(
            r.by_token_label["ci"],
            LabelReport {
                hits: 3,
                misses: 1,
                writes: 2
            }
        );
        let table = render_table(&[r]);
        assert!(table.starts_with("NAMESPACE"));
        assert!(table.contains("50.0%"));
    }
}
