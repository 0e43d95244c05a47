#!/usr/bin/env bash
# Repeatable CPU cost per request: runs `hearth serve` under valgrind's callgrind and counts
# the instructions it executes for a fixed sequence of requests from the load generator, one
# at a time. Unlike wall-clock benchmarks, the count does not depend on what else the machine
# is doing, so two builds can be compared exactly (an A/B of a change):
#
#   scripts/instructions.sh                         this checkout's release build
#   HEARTH_BIN=/other/target/release/hearth scripts/instructions.sh   another build
#   INSTRUCTIONS_OPS=500 scripts/instructions.sh    requests per workload (default 200)
#
# For each workload (PUT, GET-miss, GET-hit from the memory cache, GET-hit from disk) a fresh
# server runs the requests; the instructions of a server that only starts and stops are
# subtracted, and the rest divided by the number of requests. User space only: the kernel's
# share (system calls, thread switches) is not counted; see docs/performance.md.
# valgrind is installed with apt when missing. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "==> $*" >&2; }
ops=${INSTRUCTIONS_OPS:-200}

if ! command -v valgrind >/dev/null; then
  log "installing valgrind (apt)"
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi
executable_of() {
  sed -n "/\"name\":\"$1\"/s/.*\"executable\":\"\([^\"]*\)\".*/\1/p" | tail -n 1
}
hearth=${HEARTH_BIN:-}
if [ -z "$hearth" ]; then
  log "building hearth (release)"
  hearth=$(cargo build --release --locked --bin hearth --message-format=json-render-diagnostics | executable_of hearth)
fi
loadgen=$(cargo bench --locked --bench loadgen --no-run --message-format=json-render-diagnostics | executable_of loadgen)

work=$(mktemp -d "${TMPDIR:-/tmp}/hearth-instructions.XXXXXX")
server_pid=
# shellcheck disable=SC2317 # reached through the trap
cleanup() {
  local status=$?
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

# Instructions (Ir) of one server run: start, the loadgen arguments given (none: no requests),
# graceful stop.
instructions() {
  local name=$1 serve_args=$2
  shift 2
  local dir=$work/$name port out=$work/$name.callgrind
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # shellcheck disable=SC2086 # serve_args is a list of flags
  HEARTH_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" --trace-children=no \
    "$hearth" serve --listen "127.0.0.1:$port" --data-dir "$dir" --stats-flush-interval 1h --gc-interval 1h \
    $serve_args >"$work/$name.log" 2>&1 &
  server_pid=$!
  local ready=
  for _ in $(seq 1 600); do
    curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/readyz" && ready=1 && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    log "hearth under valgrind did not become ready ($name); its log:"
    cat "$work/$name.log" >&2
    kill -TERM "$server_pid" 2>/dev/null
    return 1
  fi
  if [ $# -gt 0 ]; then
    "$loadgen" --url "http://127.0.0.1:$port/ins/" --concurrency 1 --ops "$ops" --duration 10m \
      --set-bytes 1MiB --keep-written "$@" --bench >"$work/$name.loadgen" 2>&1 || {
      cat "$work/$name.loadgen" >&2
      return 1
    }
  fi
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
  sed -n 's/^summary: *//p' "$out"
}

log "hearth: $hearth; $ops requests per workload, one at a time, 64 KiB incompressible"
idle=$(instructions idle "")
put=$(instructions put "" --workloads put --sizes 64KiB)
putz=$(instructions putz "" --workloads put --sizes 64KiB --content compressible)
miss=$(instructions miss "" --workloads get-miss --sizes 64KiB)
hit=$(instructions hit "" --workloads get-hit --sizes 64KiB)
disk=$(instructions disk "--memory-cache-size 0" --workloads get-hit --sizes 64KiB)
# The loadgen adds a probe and a warm-up request per run, and the get-hit runs PUT their
# object set (16 keys) first; a run of the set alone measures that part.
set_only=$(instructions set "" --workloads get-hit --sizes 64KiB --ops 0)
python3 - "$ops" "$idle" "$put" "$putz" "$miss" "$hit" "$disk" "$set_only" <<'PY'
import sys
ops = int(sys.argv[1])
idle, put, putz, miss, hit, disk, set_only = (int(x) for x in sys.argv[2:])
print(f"instructions per request (user space, callgrind), {ops} requests each:")
print(f"  PUT 64 KiB              {(put - idle) / ops:>12,.0f}")
print(f"  PUT 64 KiB compressible {(putz - idle) / ops:>12,.0f}")
print(f"  GET miss                {(miss - idle) / ops:>12,.0f}")
print(f"  GET hit, memory cache   {(hit - set_only) / ops:>12,.0f}")
print(f"  GET hit, from disk      {(disk - set_only) / ops:>12,.0f}")
print(f"  (server start and stop  {idle:>12,})")
PY
