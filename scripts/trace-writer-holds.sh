#!/usr/bin/env bash
# Where the slow holds of SQLite's writer go: runs scripts/bench-scale.sh on SQLite with the
# server logging every hold of the writer over 10 ms (hearth::meta::writer_holds=debug) while
# the kernel traces the database threads (sched_switch with a kernel stack when one blocks,
# sched_wakeup, balance_dirty_pages), then sets each slow hold beside what the writer
# connection's thread did meanwhile (scripts/writer-holds.py): on a core, waiting for one,
# blocked in the kernel (and why: fsync, a read, dirty-page throttling) or asleep, waiting for
# the next statement. Needs root (tracefs). The trace goes into a 1.5 GiB-per-core ring buffer
# read only at the end: a reader during the run (cat trace_pipe) preempted the writer on every
# event and tripled the slow holds. Not part of CI.
#
#   scripts/trace-writer-holds.sh                   10^6 entries (SCALE_CHECKPOINTS=1000000)
#   SCALE_CHECKPOINTS=100000 scripts/trace-writer-holds.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tracefs=/sys/kernel/tracing
dir=${SCALE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/hearth-holds.XXXXXX")}
out=${HOLDS_TRACE:-$dir/kernel.trace}
threads='prev_comm ~ "sqlx-sqlite*" || prev_comm ~ "hearth-sqlite*"'

log() { echo "==> $*" >&2; }
mark() { python3 -c "import time; open('$tracefs/trace_marker', 'w').write('REALTIME %.6f\n' % time.time())"; }

# shellcheck disable=SC2317 # reached through the trap
reset_tracing() {
  echo 0 > $tracefs/tracing_on
  echo 0 > $tracefs/events/enable
  echo "!stacktrace if prev_state & 2 && ($threads)" > $tracefs/events/sched/sched_switch/trigger 2>/dev/null || true
  echo 0 > $tracefs/events/sched/sched_switch/filter
  echo 0 > $tracefs/events/sched/sched_wakeup/filter
  echo local > $tracefs/trace_clock
  echo 1410 > $tracefs/buffer_size_kb
}
trap reset_tracing EXIT

mountpoint -q $tracefs || mount -t tracefs nodev $tracefs
reset_tracing
echo > $tracefs/trace
# Monotonic time stamps; a marker with the wall clock at both ends converts the log's times.
echo mono > $tracefs/trace_clock
echo 1500000 > $tracefs/buffer_size_kb
echo "$threads || next_comm ~ \"sqlx-sqlite*\" || next_comm ~ \"hearth-sqlite*\"" > $tracefs/events/sched/sched_switch/filter
echo "stacktrace if prev_state & 2 && ($threads)" > $tracefs/events/sched/sched_switch/trigger
echo 'comm ~ "sqlx-sqlite*" || comm ~ "hearth-sqlite*"' > $tracefs/events/sched/sched_wakeup/filter
for event in sched/sched_switch sched/sched_wakeup writeback/balance_dirty_pages; do
  echo 1 > $tracefs/events/$event/enable
done

log "bench-scale on SQLite into $dir; tracing from the server's start"
SCALE_DIR=$dir SCALE_CHECKPOINTS=${SCALE_CHECKPOINTS:-1000000} \
  SCALE_RUST_LOG=hearth::meta::writer_holds=debug,warn \
  scripts/bench-scale.sh --db sqlite &
bench=$!
# The bulk fill runs in the bench's own process with the server stopped: trace from the
# server's first log line on.
while [ ! -s "$dir/sqlite/data.log" ] && kill -0 $bench 2>/dev/null; do sleep 0.2; done
echo 1 > $tracefs/tracing_on
mark
wait $bench
mark
echo 0 > $tracefs/tracing_on
cat $tracefs/trace > "$out"
log "kernel trace: $out ($(du -h "$out" | cut -f1))"
python3 scripts/writer-holds.py "$dir/sqlite/data.log" "$out"
