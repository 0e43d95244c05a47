//! Wall-clock helpers: the metadata store keeps times as Unix seconds (BIGINT) in both databases.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The start of the hour containing `unix_secs`, the bucket of `stats_hourly`.
pub fn hour_bucket(unix_secs: i64) -> i64 {
    unix_secs - unix_secs.rem_euclid(3600)
}

/// The last second an HTTP date can express (31 Dec 9999); `httpdate` panics past it.
pub const MAX_HTTP_DATE: i64 = 253_402_300_799;

/// An HTTP date (`Last-Modified`, `getlastmodified`) for a Unix time, clamped to what the
/// format can express (a row written by hand must not turn every request into a panic).
pub fn http_date(unix_secs: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix_secs.clamp(0, MAX_HTTP_DATE) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_bucket_truncates() {
        assert_eq!(hour_bucket(7199), 3600);
        assert_eq!(hour_bucket(7200), 7200);
        assert_eq!(hour_bucket(0), 0);
    }

    #[test]
    fn http_date_is_rfc_1123() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // Found by the propfind fuzz target: this used to panic.
        assert_eq!(http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(http_date(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
