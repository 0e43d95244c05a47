#!/usr/bin/env bash
# The real-client benchmark: a real, unmodified sccache (0.19, WebDAV backend) builds a real
# Rust project of 250+ crates (hearth itself, from `git archive HEAD`, offline against the
# local crates cache) through hearth and through nginx's WebDAV modules (the peer of
# scripts/bench.sh), in one run:
#
#   cold: empty cache, `cargo build` from scratch (every crate a miss, then a write)
#   warm: the same build again after `cargo clean` and a restarted sccache (hits)
#
# It prints the build times, hearth ÷ nginx ratios, sccache's hit/miss/write counts, and the
# HTTP requests each server saw per cache write (hearth: from its Prometheus metrics; nginx:
# from an access log of methods). Both servers run on loopback with throw-away directories.
#
#   scripts/bench-sccache.sh                 one cold and one warm build per server
#   BENCH_PROJECT=/path scripts/bench-sccache.sh   another Cargo project (built offline)
#
# Needs sccache 0.19 (HEARTH_TEST_SCCACHE, or the copy ./scripts/test.sh builds) and nginx
# (installed with apt when missing). Takes about 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { echo "==> $*" >&2; }

sccache=${HEARTH_TEST_SCCACHE:-${HEARTH_TOOLS_DIR:-$HOME/.cache/hearth-tools}/sccache-0.19.0/bin/sccache}
if [ ! -x "$sccache" ]; then
  echo "bench-sccache.sh: sccache not found at $sccache; run ./scripts/test.sh once (it builds it)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hearth-bench-sccache.XXXXXX")
hearth_pid=
nginx_pid=
# shellcheck disable=SC2317 # reached through the trap
cleanup() {
  local status=$?
  SCCACHE_SERVER_PORT=${sccache_port:-0} "$sccache" --stop-server >/dev/null 2>&1 || true
  [ -n "$hearth_pid" ] && kill -TERM "$hearth_pid" 2>/dev/null && wait "$hearth_pid" 2>/dev/null
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT

log "building hearth (release)"
cargo build --release --locked --bin hearth --quiet
hearth=$repo/target/release/hearth

project=${BENCH_PROJECT:-}
if [ -z "$project" ]; then
  project=$work/project
  mkdir -p "$project"
  git archive HEAD | tar -x -C "$project"
fi
crates=$(cd "$project" && cargo metadata --offline --format-version 1 2>/dev/null |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)["packages"]))')
log "project: $project ($crates packages)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HEARTH_LOG=warn "$hearth" serve --listen "127.0.0.1:$port" --data-dir "$work/hearth" >"$work/hearth.log" 2>&1 &
hearth_pid=$!
for _ in $(seq 1 100); do
  curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/readyz" && break
  sleep 0.1
done
hearth_url=http://127.0.0.1:$port/sccache/

# shellcheck source=scripts/nginx-peer.sh
. scripts/nginx-peer.sh
mkdir -p "$work/nginx"
NGINX_ACCESS_LOG=1 start_nginx_peer "$work/nginx" sccache
nginx_url=$peer_url

# Requests hearth has answered, by operation (from /metrics).
hearth_requests() {
  curl -sf --noproxy '*' "http://127.0.0.1:$port/metrics" | python3 -c '
import re, sys, collections
ops = collections.Counter()
for line in sys.stdin:
    m = re.match(r"hearth_http_requests_total\{(.*)\} (\S+)", line)
    if m and "protocol=\"webdav\"" in m.group(1):
        op = re.search(r"operation=\"([^\"]+)\"", m.group(1)).group(1)
        ops[op.upper()] += int(float(m.group(2)))
print(" ".join(f"{k}={v}" for k, v in sorted(ops.items())))'
}

nginx_requests() {
  awk '{n[$1]++} END {for (m in n) printf "%s=%d ", m, n[m]; print ""}' "$work/nginx/access.log" 2>/dev/null
}

# Counts of one line of `NAME=COUNT ...` for NAME.
count_of() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

results=()
build() { # server-name endpoint phase
  local name=$1 endpoint=$2 phase=$3
  sccache_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local sccache_dir=$work/sccache-$name-$phase
  mkdir -p "$sccache_dir"
  export SCCACHE_SERVER_PORT=$sccache_port SCCACHE_DIR=$sccache_dir SCCACHE_IDLE_TIMEOUT=0 \
    SCCACHE_WEBDAV_ENDPOINT=$endpoint SCCACHE_CONF=/dev/null SCCACHE_ERROR_LOG=$work/sccache-$name-$phase.log
  "$sccache" --start-server >/dev/null
  (cd "$project" && cargo clean --quiet --target-dir "$work/target")
  local before=$SECONDS started
  started=$(date +%s.%N)
  (cd "$project" && RUSTC_WRAPPER=$sccache CARGO_INCREMENTAL=0 cargo build --offline --locked --quiet \
    --target-dir "$work/target") || {
    echo "bench-sccache.sh: the $phase build through $name failed" >&2
    exit 1
  }
  local seconds
  seconds=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
  local stats
  stats=$("$sccache" --show-stats --stats-format json)
  "$sccache" --stop-server >/dev/null 2>&1 || true
  unset SCCACHE_WEBDAV_ENDPOINT
  local summary
  summary=$(echo "$stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
hits = sum(v for v in s["cache_hits"]["counts"].values())
misses = sum(v for v in s["cache_misses"]["counts"].values())
writes, write_errors, read_errors = s["cache_writes"], s["cache_write_errors"], s["cache_read_errors"]
print(f"hits={hits} misses={misses} writes={writes} write_errors={write_errors} read_errors={read_errors}")')
  log "$name $phase: ${seconds}s, $summary ($((SECONDS - before))s wall)"
  results+=("$name $phase $seconds $summary")
}

log "sccache $("$sccache" --version | cut -d' ' -f2) | hearth at $hearth_url | nginx at $nginx_url"
hearth_before=$(hearth_requests)
build hearth "$hearth_url" cold
hearth_cold=$(hearth_requests)
build nginx "$nginx_url" cold
nginx_cold=$(nginx_requests)
build hearth "$hearth_url" warm
build nginx "$nginx_url" warm

echo
echo "== sccache $("$sccache" --version | cut -d' ' -f2), $crates packages, $(nproc) cores =="
printf '%-8s %-5s %9s  %s\n' server phase seconds "sccache counters"
for r in "${results[@]}"; do
  read -r name phase seconds rest <<<"$r"
  printf '%-8s %-5s %9s  %s\n' "$name" "$phase" "$seconds" "$rest"
done
seconds_of() { for r in "${results[@]}"; do read -r n p s _ <<<"$r"; [ "$n $p" = "$1 $2" ] && echo "$s"; done; }
for phase in cold warm; do
  echo "$phase: hearth ÷ nginx build time = $(python3 -c "print(f'{$(seconds_of hearth $phase) / $(seconds_of nginx $phase):.3f}')")"
done
writes_of() { for r in "${results[@]}"; do read -r n p _ rest <<<"$r"; [ "$n $p" = "$1 cold" ] && count_of "$rest" writes; done; }
echo "hearth requests during its cold build: before [$hearth_before] after [$hearth_cold]"
echo "nginx requests during its cold build: [$nginx_cold]"
python3 - "$hearth_before" "$hearth_cold" "$nginx_cold" "$(writes_of hearth)" "$(writes_of nginx)" <<'PY'
import sys
def parse(text):
    return {k: int(v) for k, v in (p.split("=") for p in text.split() if "=" in p)}
before, after, nginx = parse(sys.argv[1]), parse(sys.argv[2]), parse(sys.argv[3])
hearth = {k: after.get(k, 0) - before.get(k, 0) for k in after}
for name, counts, writes in (("hearth", hearth, int(sys.argv[4])), ("nginx", nginx, int(sys.argv[5]))):
    # Requests caused by writes: everything but the reads (GET) of the cold build's lookups.
    per_write = (sum(counts.values()) - counts.get("GET", 0)) / max(writes, 1)
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{name}: {writes} writes, {per_write:.2f} non-GET requests per write ({detail})")
PY
