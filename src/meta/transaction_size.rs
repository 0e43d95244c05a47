//! How many rows a background transaction takes on: as many as fit in a few milliseconds of
//! the writer, measured rather than fixed. A count fixed in advance suits one machine and one
//! load: on SQLite at 10^6 entries, 64 evictions held the writer ~6 ms on an idle 2-core VM
//! and 10–100 ms beside 32 uploads. So each kind of background work learns its rows per
//! transaction from what its last transactions took, aiming at half of the 10 ms a
//! background transaction may hold the writer, and at a fifth while writes queue for it.
//!
//! Why smaller while they queue: each millisecond of a part is one every queued write waits,
//! and on a machine whose cores are all busy, the longer a part runs the likelier the threads
//! doing it wait for a core while holding the writer. At 10^6 entries beside 32 uploads on 2
//! cores, parts aimed at 5 ms held the writer over 10 ms in 0.94 % of the collector's
//! transactions, parts aimed at 2 ms in 0.12 %; but alone (`hearth gc`, no one waiting) the
//! small parts evicted 18 % fewer entries a second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What a background transaction aims to take: half its 10 ms bound, room for the variance.
pub const TARGET: Duration = Duration::from_millis(5);
/// What it aims to take while writes queue for the writer.
pub const TARGET_CONTENDED: Duration = Duration::from_millis(2);

/// Rows per transaction for one kind of work, shared by the clones of a store.
#[derive(Debug)]
pub struct TransactionSize {
    rows: AtomicUsize,
    min: usize,
    max: usize,
}

impl TransactionSize {
    /// Starts at `initial` rows and adjusts between `min` and `max`.
    pub fn adaptive(initial: usize, min: usize, max: usize) -> TransactionSize {
        let min = min.max(1);
        let max = max.max(min);
        TransactionSize {
            rows: AtomicUsize::new(initial.clamp(min, max)),
            min,
            max,
        }
    }

    /// Always `rows` (PostgreSQL, whose writers do not queue on one connection).
    pub fn fixed(rows: usize) -> TransactionSize {
        TransactionSize::adaptive(rows, rows, rows)
    }

    /// Rows the next transaction should take on: fewer while writes queue for the writer
    /// (`contended`), as many as fit in [`TARGET_CONTENDED`] rather than [`TARGET`].
    pub fn rows(&self, contended: bool) -> usize {
        let rows = self.rows.load(Ordering::Relaxed);
        if !contended {
            return rows;
        }
        let scaled = rows as u128 * TARGET_CONTENDED.as_nanos() / TARGET.as_nanos();
        (scaled as usize).clamp(self.min, self.max)
    }

    /// The next part of `rest`: as many of its rows as the next transaction should take on.
    pub fn take<'a, T>(&self, rest: &mut &'a [T], contended: bool) -> &'a [T] {
        let (part, after) = rest.split_at(self.rows(contended).min(rest.len()));
        *rest = after;
        part
    }

    /// Learns from a transaction of `rows` rows that held the writer for `took`: down at once
    /// to what would have fit in [`TARGET`], up by at most a quarter per transaction (one slow
    /// transaction says more than one fast one).
    pub fn took(&self, rows: usize, took: Duration) {
        if rows == 0 {
            return;
        }
        let per_row = took.as_secs_f64().max(1e-9) / rows as f64;
        let fit = (TARGET.as_secs_f64() / per_row) as usize;
        let current = self.rows.load(Ordering::Relaxed);
        let next = if fit < current {
            fit
        } else {
            current + (fit - current).min(current / 4 + 1)
        };
        self.rows.store(next.clamp(self.min, self.max), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_transaction_shrinks_the_next_at_once_and_fast_ones_grow_it_gradually() {
        let size = TransactionSize::adaptive(64, 8, 512);
        // 64 rows in 20 ms: 16 fit in 5 ms.
        size.took(64, Duration::from_millis(20));
        assert_eq!(size.rows(false), 16);
        // 16 rows in 1 ms: 80 would fit; a quarter more at a time.
        size.took(16, Duration::from_millis(1));
        assert_eq!(size.rows(false), 21);
        for _ in 0..50 {
            let rows = size.rows(false);
            size.took(rows, Duration::from_micros(rows as u64 * 62));
        }
        assert_eq!(size.rows(false), 80, "what fits at 62 µs a row");
    }

    #[test]
    fn parts_are_taken_in_order_at_the_current_size() {
        let size = TransactionSize::fixed(2);
        let items = [1, 2, 3, 4, 5];
        let mut rest = &items[..];
        assert_eq!(size.take(&mut rest, false), &[1, 2]);
        assert_eq!(size.take(&mut rest, false), &[3, 4]);
        assert_eq!(size.take(&mut rest, false), &[5]);
        assert!(rest.is_empty());
        assert!(size.take(&mut rest, false).is_empty());
    }

    #[test]
    fn the_size_stays_within_its_bounds() {
        let size = TransactionSize::adaptive(64, 8, 512);
        size.took(64, Duration::from_secs(2));
        assert_eq!(size.rows(false), 8);
        for _ in 0..100 {
            size.took(size.rows(false), Duration::from_nanos(1));
        }
        assert_eq!(size.rows(false), 512);
        size.took(0, Duration::from_secs(5));
        assert_eq!(size.rows(false), 512, "an empty transaction says nothing");
        let fixed = TransactionSize::fixed(500);
        fixed.took(500, Duration::from_secs(1));
        assert_eq!(fixed.rows(false), 500);
    }

    #[test]
    fn while_writes_queue_a_part_aims_at_the_shorter_target() {
        let size = TransactionSize::adaptive(100, 8, 512);
        assert_eq!(size.rows(false), 100);
        assert_eq!(size.rows(true), 40, "2 ms of what fits in 5");
        let items: Vec<u32> = (0..100).collect();
        let mut rest = &items[..];
        assert_eq!(size.take(&mut rest, true).len(), 40);
        assert_eq!(rest.len(), 60);
        // A contended part teaches the cost per row as any part does: 40 rows in 1 ms, 200
        // would fit in 5 ms; a quarter more at a time.
        size.took(40, TARGET_CONTENDED / 2);
        assert_eq!(size.rows(false), 126);
        let small = TransactionSize::adaptive(10, 8, 512);
        assert_eq!(small.rows(true), 8, "never below the least");
        assert_eq!(TransactionSize::fixed(500).rows(true), 500, "a fixed size stays");
    }
}
