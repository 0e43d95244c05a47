#!/usr/bin/env bash
# How hearth's costs grow with the number of entries, on both databases (benches/scale.rs):
# fills a fresh store through HTTP PUTs of small unique objects and, at each checkpoint,
# measures GET-hit/miss latency, PUT p99, a /metrics scrape, `hearth stats`, a GC run with
# nothing to evict, GET latency beside them, database and WAL size and RSS; then a restart and
# an eviction of 10 % of the entries. Prints one table per database, with the growth factor
# from the first checkpoint to the last, and writes every figure as a JSON line (one object per
# figure and checkpoint) to $SCALE_JSON (default target/bench-scale/DATE.jsonl), so that later
# runs can be compared. On PostgreSQL each fill is followed by VACUUM ANALYZE (what autovacuum
# would have done on a server filled over weeks). Nothing here is a test: it measures.
#
#   scripts/bench-scale.sh                      10^4, 10^5, 10^6 entries; SQLite and PostgreSQL
#   SCALE_CHECKPOINTS=10000,100000 scripts/bench-scale.sh
#   SCALE_DATABASES=sqlite scripts/bench-scale.sh
#
# Environment: SCALE_CHECKPOINTS (comma-separated, ascending), SCALE_DATABASES (sqlite,
# postgres), HEARTH_TEST_POSTGRES_URL (a server where a throw-away database is created;
# default postgres://postgres@127.0.0.1:5432/postgres), SCALE_DIR (where data goes; default a
# temp dir, removed at the end), SCALE_JSON (the JSON lines file, appended to). About 15 minutes per database at 10^6 on 2 cores, and 3 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

checkpoints=${SCALE_CHECKPOINTS:-10000,100000,1000000}
databases=${SCALE_DATABASES:-sqlite,postgres}
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
  args=(--hearth target/release/hearth --data-dir "$dir/data" --checkpoints "$checkpoints" --name "$db" --json "$json")
  if [ "$db" = postgres ]; then
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null
    psql "$pg_admin" -qc "CREATE DATABASE $pg_db" >/dev/null
    args+=(--database-url "${pg_admin%/*}/$pg_db")
  fi
  mkdir -p "$dir"
  log "$db: checkpoints $checkpoints"
  "$bench" "${args[@]}"
  [ -n "${SCALE_DIR:-}" ] || rm -rf "$dir"
done
log "figures as JSON lines: $json"
