#!/usr/bin/env bash
# The real-client benchmark: a real, unmodified sccache (0.19, WebDAV backend) builds a real
# Rust project of 250+ crates (hearth itself, from `git archive HEAD`, offline against the
# local crates cache) through hearth and through nginx's WebDAV modules (the peer of
# scripts/bench.sh), in one run:
#
#   cold: empty cache, `cargo build` from scratch (every crate a miss, then a write)
#   warm: the same build again after `cargo clean` and a restarted sccache (hits)
#
# A first build without sccache warms the page cache (sources, toolchain), so that the first
# measured build pays no more for that than the others. Then BENCH_ROUNDS rounds (default 2),
# each with a fresh, empty cache on both servers: cold on both, then warm on both, the order
# of the two servers alternating from round to round.
#
# It prints every build's time, the mean hearth ÷ nginx ratios, sccache's hit/miss/write
# counts, and the HTTP requests each server saw per cache write in the first round (hearth:
# from its Prometheus metrics; nginx: from an access log of methods). Both servers run on
# loopback with throw-away directories.
#
#   scripts/bench-sccache.sh                 2 rounds
#   BENCH_ROUNDS=3 scripts/bench-sccache.sh
#   BENCH_PROJECT=/path scripts/bench-sccache.sh   another Cargo project (built offline)
#   HEARTH_BENCH_ARGS="--sync-writes false" scripts/bench-sccache.sh   extra `hearth serve` flags
#
# Next to each build's time it prints the CPU time the cache server used meanwhile: on a
# machine the compiler keeps busy, that is what the server takes from the build.
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
# Packages `cargo build` compiles (normal and build dependencies, for this machine).
crates=$(cd "$project" && cargo tree --offline --locked --prefix none -e normal,build | sed 's/ (\*)$//' | sort -u | wc -l)
log "project: $project ($crates packages)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086 # HEARTH_BENCH_ARGS is a list of flags
HEARTH_LOG=warn "$hearth" serve --listen "127.0.0.1:$port" --data-dir "$work/hearth" ${HEARTH_BENCH_ARGS:-} \
  >"$work/hearth.log" 2>&1 &
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

# CPU seconds (user + system) the processes in the comma-separated list $1 have used so far.
cpu_seconds() {
  local ticks=0 pid
  for pid in ${1//,/ }; do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  python3 -c "print(f'{$ticks / $(getconf CLK_TCK):.2f}')"
}

# Counts of one line of `NAME=COUNT ...` for NAME.
count_of() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

results=()
build() { # server-name endpoint phase round
  local name=$1 endpoint=$2 phase=$3 round=$4
  sccache_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local sccache_dir=$work/sccache-$name-$phase-$round
  mkdir -p "$sccache_dir"
  export SCCACHE_SERVER_PORT=$sccache_port SCCACHE_DIR=$sccache_dir SCCACHE_IDLE_TIMEOUT=0 \
    SCCACHE_WEBDAV_ENDPOINT=$endpoint SCCACHE_CONF=/dev/null SCCACHE_ERROR_LOG=$work/sccache-$name-$phase-$round.log
  "$sccache" --start-server >/dev/null
  (cd "$project" && cargo clean --quiet --target-dir "$work/target")
  local server_pids=$hearth_pid
  [ "$name" = nginx ] && server_pids=$nginx_pid,$peer_pids
  local before=$SECONDS started cpu_before
  cpu_before=$(cpu_seconds "$server_pids")
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
  # After the stop: sccache finishes its uploads first.
  local server_cpu
  server_cpu=$(python3 -c "print(f'{$(cpu_seconds "$server_pids") - $cpu_before:.2f}')")
  unset SCCACHE_WEBDAV_ENDPOINT
  local summary
  summary=$(echo "$stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
hits = sum(v for v in s["cache_hits"]["counts"].values())
misses = sum(v for v in s["cache_misses"]["counts"].values())
writes, write_errors, read_errors = s["cache_writes"], s["cache_write_errors"], s["cache_read_errors"]
seconds = lambda d: d["secs"] + d["nanos"] / 1e9
# What the compile jobs waited for the server: sccache answers a compilation only after its
# cache write has finished, and times each write and each hit read itself.
write_s, hit_s = seconds(s["cache_write_duration"]), seconds(s["cache_read_hit_duration"])
print(f"hits={hits} misses={misses} writes={writes} write_errors={write_errors} read_errors={read_errors} "
      f"write_wait={write_s:.2f} hit_wait={hit_s:.2f}")')
  log "$name $phase (round $round): ${seconds}s, server CPU ${server_cpu}s, $summary ($((SECONDS - before))s wall)"
  results+=("$name $phase $round $seconds server_cpu=$server_cpu $summary")
}

rounds=${BENCH_ROUNDS:-2}
log "sccache $("$sccache" --version | cut -d' ' -f2) | hearth at $hearth_url | nginx at $nginx_url | $rounds rounds"
log "warm-up build without sccache (page cache)"
(cd "$project" && cargo build --offline --locked --quiet --target-dir "$work/target")

hearth_before=$(hearth_requests)
for round in $(seq 1 "$rounds"); do
  # A namespace (hearth) and a directory (nginx) of its own: every round starts cold.
  servers=("hearth ${hearth_url}r$round/" "nginx ${nginx_url}r$round/")
  if [ $((round % 2)) -eq 0 ]; then servers=("${servers[1]}" "${servers[0]}"); fi
  for phase in cold warm; do
    for server in "${servers[@]}"; do
      read -r name endpoint <<<"$server"
      build "$name" "$endpoint" "$phase" "$round"
      if [ "$round $phase" = "1 cold" ]; then
        case $name in
          hearth) hearth_cold=$(hearth_requests) ;;
          nginx) nginx_cold=$(nginx_requests) ;;
        esac
      fi
    done
  done
done

echo
echo "== sccache $("$sccache" --version | cut -d' ' -f2), $crates packages, $(nproc) cores, $rounds rounds =="
printf '%-8s %-5s %5s %9s  %s\n' server phase round seconds "sccache counters"
for r in "${results[@]}"; do
  read -r name phase round seconds rest <<<"$r"
  printf '%-8s %-5s %5s %9s  %s\n' "$name" "$phase" "$round" "$seconds" "$rest"
done
python3 - "${results[@]}" <<'PY'
import sys
# What a build of each phase waits for: the counter, and its name in the output.
waited_for = {"cold": ("write_wait", "writes"), "warm": ("hit_wait", "hit reads")}
times, cpu, waits = {}, {}, {}
for line in sys.argv[1:]:
    name, phase, round_, seconds, server_cpu = line.split()[:5]
    fields = dict(f.split("=") for f in line.split()[5:])
    times.setdefault((name, phase), []).append(float(seconds))
    cpu.setdefault((name, phase), []).append(float(server_cpu.split("=")[1]))
    waits.setdefault((name, phase), []).append(float(fields[waited_for[phase][0]]))
mean = lambda values: sum(values) / len(values)
for phase in ("cold", "warm"):
    h, n = times[("hearth", phase)], times[("nginx", phase)]
    ratios = [a / b for a, b in zip(h, n)]
    print(f"{phase}: hearth {mean(h):.1f} s, nginx {mean(n):.1f} s (means); "
          f"hearth ÷ nginx = {sum(h) / sum(n):.3f} (per round: {', '.join(f'{r:.3f}' for r in ratios)}); "
          f"server CPU per build: hearth {mean(cpu[('hearth', phase)]):.1f} s, nginx {mean(cpu[('nginx', phase)]):.1f} s")
    print(f"  {phase}: time the compile jobs waited for {waited_for[phase][1]}, "
          f"summed over jobs (sccache's own timing), per build: "
          + ", ".join(f"{name} {mean(waits[(name, phase)]):.2f} s" for name in ("hearth", "nginx")))
PY
writes_of() { for r in "${results[@]}"; do read -r n p rd _ rest <<<"$r"; [ "$n $p $rd" = "$1 cold 1" ] && count_of "$rest" writes; done; }
echo "hearth requests during its first cold build: before [$hearth_before] after [$hearth_cold]"
echo "nginx requests during its first cold build: [$nginx_cold]"
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
