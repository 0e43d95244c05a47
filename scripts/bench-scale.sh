#!/usr/bin/env bash
# How hearth's costs grow with the number of entries, on both databases (benches/scale.rs):
# fills a fresh store with small unique objects and, at each checkpoint,
# measures GET-hit/miss latency, PUT p99, a /metrics scrape, `hearth stats`, a GC run with
# nothing to evict, GET latency beside them, database and WAL size and RSS; then a restart and
# an eviction of 10 % of the entries. Prints one table per database, with the growth factor
# from the first checkpoint to the last, and writes every figure as a JSON line (one object per
# figure and checkpoint) to $SCALE_JSON (default target/bench-scale/DATE.jsonl), so that later
# runs can be compared. On PostgreSQL each fill is followed by VACUUM ANALYZE (what autovacuum
# would have done on a server filled over weeks). Nothing here is a test: it measures.
#
#   scripts/bench-scale.sh                      10^4, 10^5, 10^6 entries; SQLite and PostgreSQL
#   scripts/bench-scale.sh --entries 100000 --db sqlite
#   scripts/bench-scale.sh --fill http         every entry an HTTP PUT (default: bulk)
#   scripts/bench-scale.sh --fresh-fan-out     the blob store's 65,536 fan-out directories made
#                                              by the uploads, as on a new server (default:
#                                              made before the fill, see benches/scale.rs)
#
# --entries N: fill up to N (default 10^6), measuring at 10^4, 10^5, 10^6 below it and at N.
# --db sqlite|postgres: one database (default both). --fill bulk|http: bulk (the default)
# stores all but the last 10,000 entries of each stretch through hearth's cache core in the
# bench's own process with the server stopped (what a PUT writes, several times faster), the
# rest through HTTP; http makes every entry a PUT. Latency figures always come from HTTP.
#
# Environment: SCALE_CHECKPOINTS (comma-separated, ascending; instead of --entries),
# SCALE_DATABASES (sqlite,postgres; instead of --db), HEARTH_TEST_POSTGRES_URL (a server where a throw-away database is created;
# default postgres://postgres@127.0.0.1:5432/postgres), SCALE_DIR (where data goes; default a
# temp dir, removed at the end), SCALE_JSON (the JSON lines file, appended to). About 15 minutes per database at 10^6 on 2 cores, and 3 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

entries=1000000
databases=${SCALE_DATABASES:-sqlite,postgres}
fill=bulk
fan_out=()
while [ $# -gt 0 ]; do
  case $1 in
    --entries) entries=$2; shift 2 ;;
    --db) databases=$2; shift 2 ;;
    --fill) fill=$2; shift 2 ;;
    --fresh-fan-out) fan_out=(--fresh-fan-out); shift ;;
    *) echo "usage: $0 [--entries N] [--db sqlite|postgres] [--fill bulk|http] [--fresh-fan-out]" >&2; exit 2 ;;
  esac
done
if [ -z "${SCALE_CHECKPOINTS:-}" ]; then
  checkpoints=
  for n in 10000 100000 1000000; do
    [ "$n" -lt "$entries" ] && checkpoints+=$n,
  done
  checkpoints+=$entries
else
  checkpoints=$SCALE_CHECKPOINTS
fi
pg_admin=${HEARTH_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
root=${SCALE_DIR:-$(mktemp -d)}
pg_db=hearth_scale_$$
json=${SCALE_JSON:-target/bench-scale/$(date -u +%Y%m%dT%H%M%SZ).jsonl}
mkdir -p "$(dirname "$json")"

log() { echo "==> $*" >&2; }

# shellcheck disable=SC2317 # reached through the trap below
cleanup() {
  if [[ $databases == *postgres* ]]; then
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  [ -n "${SCALE_DIR:-}" ] || rm -rf "$root"
}
trap cleanup EXIT

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
log "building hearth and the scale bench (release)"
cargo build --release --locked --quiet --bin hearth
cargo bench --locked --bench scale --no-run --quiet
bench=$(find target/release/deps -maxdepth 1 -type f -executable -name 'scale-*' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)

log "disk: $(df -h "$root" | awk 'NR==2 {print $1, $2, "on", $6}'), $(nproc) cores"
for db in ${databases//,/ }; do
  dir=$root/$db
  args=(--hearth target/release/hearth --data-dir "$dir/data" --checkpoints "$checkpoints" --name "$db" --json "$json" --fill "$fill" "${fan_out[@]}")
  if [ "$db" = postgres ]; then
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null
    psql "$pg_admin" -qc "CREATE DATABASE $pg_db" >/dev/null
    args+=(--database-url "${pg_admin%/*}/$pg_db")
  fi
  mkdir -p "$dir"
  log "$db: checkpoints $checkpoints, $fill fill"
  "$bench" "${args[@]}"
  [ -n "${SCALE_DIR:-}" ] || rm -rf "$dir"
done
log "figures as JSON lines: $json"
