#!/usr/bin/env bash
# A bounded soak run: hearth (release, SQLite, throw-away data dir, a SOAK_MAX_SIZE budget,
# 2 GiB by default, collected every 30 s and whenever uploads call for it) under the loadgen's
# mixed workload (70 % GET hit, 20 % GET miss, 10 % PUT; realistic size mix) for SOAK_DURATION,
# sampling the server's RSS (and its parts), the bytes stored and open file descriptors
# every SOAK_INTERVAL. Resources must stay flat: after the warm-up (the first quarter, while the
# in-memory blob cache fills), the last samples may not exceed the warm-up's peak by more than
# SOAK_TOLERANCE_PCT percent (RSS) or 16 descriptors, and the store may never exceed its budget
# by more than 25 %. Exits non-zero when they do, or when any request failed.
#
#   scripts/soak.sh                         10 minutes at concurrency 16
#   SOAK_DURATION=30m SOAK_CONCURRENCY=64 scripts/soak.sh
#
# Not part of CI (it takes minutes and wants an otherwise idle machine).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${SOAK_DURATION:-10m}
interval=${SOAK_INTERVAL:-10}
concurrency=${SOAK_CONCURRENCY:-16}
tolerance=${SOAK_TOLERANCE_PCT:-10}
max_size=${SOAK_MAX_SIZE:-2GiB}

log() { echo "==> $*" >&2; }

data_dir=$(mktemp -d "${TMPDIR:-/tmp}/hearth-soak.XXXXXX")
server_pid=
loadgen_pid=
# shellcheck disable=SC2317 # reached through the trap
cleanup() {
  local status=$?
  [ -n "$loadgen_pid" ] && kill "$loadgen_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$data_dir"
  [ "$status" = 0 ] && rm -f "$data_dir.log" "$data_dir.loadgen" "$data_dir.samples"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT

executable_of() {
  sed -n "/\"name\":\"$1\"/s/.*\"executable\":\"\([^\"]*\)\".*/\1/p" | tail -n 1
}
log "building hearth and the load generator (release)"
hearth=$(cargo build --release --locked --bin hearth --message-format=json-render-diagnostics | executable_of hearth)
loadgen=$(cargo bench --locked --bench loadgen --no-run --message-format=json-render-diagnostics | executable_of loadgen)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A small budget and a short GC interval: the soak reaches the steady state of a full cache,
# with garbage collection evicting while the load goes on.
HEARTH_LOG=warn "$hearth" serve --listen "127.0.0.1:$port" --data-dir "$data_dir" \
  --max-size "$max_size" --gc-interval 30s >"$data_dir.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/readyz" && break
  sleep 0.1
done
# The budget in bytes as hearth understood SOAK_MAX_SIZE (its own size parser, not a copy here).
budget=$(curl -sf --noproxy '*' "http://127.0.0.1:$port/metrics" | awk '/^hearth_storage_budget_bytes / {print $2}')
[ -n "$budget" ] || { log "soak: could not read hearth_storage_budget_bytes"; exit 1; }

log "soak: mixed workload, size mix, concurrency $concurrency, for $duration (samples every ${interval}s)"
"$loadgen" --url "http://127.0.0.1:$port/soak/" --server-pid "$server_pid" --sizes mix \
  --content incompressible --workloads mixed --concurrency "$concurrency" --duration "$duration" --bench \
  >"$data_dir.loadgen" 2>&1 &
loadgen_pid=$!

samples=$data_dir.samples
: >"$samples"
started=$SECONDS
while kill -0 "$loadgen_pid" 2>/dev/null; do
  # VmRSS, and its parts: heap and stacks (anonymous), mapped files, shared memory.
  rss=$(awk '/^(VmRSS|RssAnon|RssFile|RssShmem):/ {printf "%s ", $2}' "/proc/$server_pid/status")
  # Stored bytes (what the budget counts), in KiB: file sizes, not du's blocks and directories.
  store=$(find "$data_dir/blobs" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print int(s / 1024)}')
  fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  echo "$((SECONDS - started)) $rss${store:-0} $fds" | tee -a "$samples" |
    awk '{printf "  t=%4ds  rss %6.1f MiB (anon %6.1f, file %5.1f, shmem %4.1f)  store %6.0f MiB  fds %4d\n",
      $1, $2 / 1024, $3 / 1024, $4 / 1024, $5 / 1024, $6 / 1024, $7}' >&2
  sleep "$interval"
done
loadgen_status=0
wait "$loadgen_pid" || loadgen_status=$?
loadgen_pid=
grep -E "^(hearth|  \.)|failed requests|FAILED" "$data_dir.loadgen" >&2 || true

python3 - "$samples" "$tolerance" "$budget" <<'PY'
import sys
rows = [tuple(int(x) for x in line.split()) for line in open(sys.argv[1]) if line.strip()]
tolerance = float(sys.argv[2])
budget = float(sys.argv[3])
if len(rows) < 8:
    sys.exit(f"soak: only {len(rows)} samples; run longer")
warm = rows[: max(2, len(rows) // 4)]
tail = rows[-max(2, len(rows) // 4):]
warm_rss, warm_fds = max(r[1] for r in warm), max(r[-1] for r in warm)
tail_rss, tail_fds = max(r[1] for r in tail), max(r[-1] for r in tail)
growth = (tail_rss - warm_rss) / warm_rss * 100
print(f"soak: {len(rows)} samples over {rows[-1][0]} s")
print(f"  RSS: warm-up peak {warm_rss / 1024:.1f} MiB, last quarter peak {tail_rss / 1024:.1f} MiB ({growth:+.1f} %)")
print(f"  fds: warm-up peak {warm_fds}, last quarter peak {tail_fds}")
# The store may overshoot its budget by what arrives between collections, not more.
store_peak = max(r[-2] for r in rows) * 1024
print(f"  store: peak {store_peak / 2**20:.0f} MiB stored for a budget of {budget / 2**20:.0f} MiB")
ok = growth <= tolerance and tail_fds <= warm_fds + 16 and store_peak <= budget * 1.25
print("  flat" if ok else "  NOT FLAT")
sys.exit(0 if ok else 1)
PY
exit "$loadgen_status"
