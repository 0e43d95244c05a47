#!/usr/bin/env bash
# Benchmarks hearth with the in-repo load generator (benches/loadgen.rs): builds the release
# server and the bench, starts `hearth serve` on a free loopback port with a throw-away data
# directory (SQLite, or the database in $HEARTH_DATABASE_URL), and, as the peer measured in
# the same run, nginx with its WebDAV modules (what sccache's documentation suggests) on
# another loopback port with its own config and directory. Every cell runs against both, on
# the same object set, and the loadgen prints hearth ÷ nginx ratios. Servers are always
# stopped and their directories removed on exit. nginx (Debian's nginx-light with
# libnginx-mod-http-dav-ext) is installed with apt when missing.
#
#   scripts/bench.sh                      the quick matrix (~3 minutes on 2 cores)
#   scripts/bench.sh --full               every size x content x workload x concurrency (~6 min)
#   scripts/bench.sh --concurrency 16 --sizes 64KiB --workloads put
#                                         one loadgen run; unspecified lists keep the loadgen's
#                                         defaults (see --help below)
#   scripts/bench.sh --quick --json       extra arguments are appended to every quick pass
#
#   scripts/bench.sh --no-peer ...        hearth alone
#
# Environment: BENCH_DURATION (per cell, default 3s), BENCH_PORT (default: any free port),
# HEARTH_DATABASE_URL (passed through to the server; rows written there are not cleaned up),
# HEARTH_BENCH_ARGS (extra `hearth serve` flags, e.g. for an A/B of a setting).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "==> $*" >&2; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

mode=
extra=()
peer=nginx
for arg in "$@"; do
  case $arg in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --no-peer) peer= ;;
    -h | --help) mode=help ;;
    *) extra+=("$arg") ;;
  esac
done
if [ -z "$mode" ]; then
  if [ ${#extra[@]} -eq 0 ]; then mode=quick; else mode=custom; fi
fi

duration=${BENCH_DURATION:-3s}
namespace=bench
data_dir=
server_pid=
nginx_dir=
nginx_pid=

# shellcheck disable=SC2317 # reached through the trap below
cleanup() {
  local status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$data_dir" ]; then
    rm -rf "$data_dir"
  fi
  if [ -n "$nginx_pid" ] && kill -0 "$nginx_pid" 2>/dev/null; then
    kill -QUIT "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  if [ -n "$nginx_dir" ]; then
    rm -rf "$nginx_dir"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The executable of target $1 among cargo's JSON messages on stdin (`cargo bench` also builds
# the hearth binary, so the target name matters).
executable_of() {
  sed -n "/\"name\":\"$1\"/s/.*\"executable\":\"\([^\"]*\)\".*/\1/p" | tail -n 1
}

log "building hearth (release)"
hearth=$(cargo build --release --locked --bin hearth --message-format=json-render-diagnostics | executable_of hearth)
log "building the load generator (cargo bench --bench loadgen --no-run)"
loadgen=$(cargo bench --locked --bench loadgen --no-run --message-format=json-render-diagnostics | executable_of loadgen)
if [ ! -x "$hearth" ] || [ ! -x "$loadgen" ]; then
  echo "bench.sh: could not find the built binaries (hearth: '$hearth', loadgen: '$loadgen')" >&2
  exit 1
fi

if [ "$mode" = help ]; then
  usage
  echo
  "$loadgen" --help
  exit 0
fi

data_dir=$(mktemp -d "${TMPDIR:-/tmp}/hearth-bench.XXXXXX")
server_log=$data_dir/server.log
if [ -n "${HEARTH_DATABASE_URL:-}" ]; then
  database="\$HEARTH_DATABASE_URL (${HEARTH_DATABASE_URL%%:*})"
else
  database="SQLite in $data_dir"
fi
log "starting $hearth ($database)"
# Per-request logs are debug level: keep the server at info whatever the caller's HEARTH_LOG.
# JSON lines, so that the port and any warnings can be picked out of the log.
# No size budget: a full run PUTs tens of GiB, and eviction would turn the object set's
# get-hits into misses. The loadgen deletes what each cell PUT; a short grace lets the
# collection every 5 minutes remove those blobs (nginx deletes its files at once).
# Environment, not flags, so that HEARTH_BENCH_ARGS can still override them.
export HEARTH_MAX_SIZE=${HEARTH_MAX_SIZE:-0} HEARTH_GC_GRACE=${HEARTH_GC_GRACE:-1m}
# shellcheck disable=SC2086 # HEARTH_BENCH_ARGS is a list of flags
HEARTH_LOG=info "$hearth" serve --listen "127.0.0.1:${BENCH_PORT:-0}" --data-dir "$data_dir" --log-format json \
  ${HEARTH_BENCH_ARGS:-} >"$server_log" 2>&1 &
server_pid=$!

# With port 0 the kernel picks a free port; the server logs the one it got.
port=
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "bench.sh: the server exited during start-up:" >&2
    cat "$server_log" >&2
    exit 1
  fi
  port=$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$server_log" | head -n 1 | sed 's/.*://' || true)
  if [ -n "$port" ] && curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/healthz"; then
    break
  fi
  port=
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "bench.sh: the server did not become healthy within 30s:" >&2
  cat "$server_log" >&2
  exit 1
fi
url=http://127.0.0.1:$port/$namespace/
peer_args=()
if [ -n "$peer" ]; then
  # shellcheck source=scripts/nginx-peer.sh
  . scripts/nginx-peer.sh
  nginx_dir=$(mktemp -d "${TMPDIR:-/tmp}/nginx-bench.XXXXXX")
  start_nginx_peer "$nginx_dir" "$namespace"
  peer_args=(--peer-url "$peer_url" --peer-pid "$peer_pids" --peer-name nginx)
fi

log "server pid $server_pid at $url"
log "machine: $(nproc) cores, Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if revision=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || revision="$revision + uncommitted changes"
else
  revision="(not a git checkout)"
fi
log "hearth $revision, $(date -u +%Y-%m-%dT%H:%M:%SZ)"

status=0
run_loadgen() {
  log "loadgen --duration $duration $*"
  "$loadgen" --url "$url" --server-pid "$server_pid" ${peer_args[@]+"${peer_args[@]}"} \
    --duration "$duration" "$@" --bench || status=$?
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "bench.sh: the server died; its log:" >&2
    tail -n 50 "$server_log" >&2
    exit 1
  fi
}

case $mode in
  quick)
    # 64 KiB (the median sccache artifact) across every workload and concurrency; bigger and
    # mixed sizes at two concurrencies; compressible content for the write and read paths.
    run_loadgen --sizes 64KiB --content incompressible --workloads put,get-hit,get-miss,mixed \
      --concurrency 1,16,64 ${extra[@]+"${extra[@]}"}
    run_loadgen --sizes 1MiB,mix --content incompressible --workloads put,get-hit,mixed \
      --concurrency 1,16 ${extra[@]+"${extra[@]}"}
    run_loadgen --sizes 64KiB,1MiB --content compressible --workloads put,get-hit \
      --concurrency 1,16 ${extra[@]+"${extra[@]}"}
    ;;
  full)
    run_loadgen --sizes 64KiB,1MiB,mix --content incompressible,compressible \
      --workloads put,get-hit,get-miss,mixed --concurrency 1,16,64 ${extra[@]+"${extra[@]}"}
    ;;
  custom)
    run_loadgen "${extra[@]}"
    ;;
esac

warnings=$(grep -c -E '"level":"(WARN|ERROR)"' "$server_log" || true)
if [ "$warnings" -gt 0 ]; then
  log "the server logged $warnings warnings/errors; the first ones:"
  grep -E '"level":"(WARN|ERROR)"' "$server_log" | head -n 10 >&2
fi
log "data dir size at the end: $(du -sh "$data_dir" | cut -f1)"
exit "$status"
