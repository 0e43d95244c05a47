#!/usr/bin/env bash
# Runs hearth's whole test suite. Installs and starts what the tests need when it is missing:
#   - PostgreSQL (Debian package), reachable at $HEARTH_TEST_POSTGRES_URL;
#   - ccache (Debian package);
#   - Prometheus, for the dashboard test, and docker-compose, which validates the compose file
#     without a container engine (Debian packages);
#   - btrfs-progs (Debian package), for the full-volume test on a loop-mounted Btrfs;
#   - moto, an S3-compatible server (PyPI, in a virtualenv in the tools directory), started on a
#     free loopback port for the S3 storage tests and stopped at the end;
#   - sccache 0.19.0, built once per machine with `cargo install` into a cache directory
#     outside the clone (${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}).
# Then: rustfmt check, clippy with warnings denied, and `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

SCCACHE_VERSION=0.19.0
TOOLS_DIR=${HEARTH_TOOLS_DIR:-$HOME/.cache/hearth-tools}

log() { echo "==> $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=
apt_install() {
  if [ -z "$APT_UPDATED" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

postgres_answers() {
  psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}

ensure_postgres() {
  local url=${HEARTH_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  if ! command -v psql >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  if ! postgres_answers "$url"; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$version" ]; then
      log "creating a PostgreSQL cluster"
      version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      as_root pg_createcluster "$version" main
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
      pg_isready -h 127.0.0.1 -p 5432 -q && break
      sleep 0.5
    done
  fi
  if ! postgres_answers "$url"; then
    # A stock cluster wants a password over TCP: give the superuser one, through the socket.
    log "setting a password for the postgres role"
    as_root su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\""
    url=postgres://postgres:postgres@127.0.0.1:5432/postgres
  fi
  postgres_answers "$url" || { echo "PostgreSQL is not reachable at $url" >&2; exit 1; }
  export HEARTH_TEST_POSTGRES_URL=$url
  # Databases left behind by interrupted runs.
  psql "$url" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'hearth\\_test\\_%'" |
    while read -r db; do psql "$url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true; done
}

ensure_ccache() {
  if ! command -v ccache >/dev/null; then
    log "installing ccache"
    apt_install ccache
  fi
  export HEARTH_TEST_CCACHE=${HEARTH_TEST_CCACHE:-$(command -v ccache)}
}

ensure_prometheus_and_compose() {
  local missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  export HEARTH_TEST_PROMETHEUS=${HEARTH_TEST_PROMETHEUS:-$(command -v prometheus)}
}

ensure_btrfs_progs() {
  if ! command -v mkfs.btrfs >/dev/null; then
    log "installing btrfs-progs"
    apt_install btrfs-progs
  fi
}

MOTO_VERSION=5.2.5
ensure_s3_server() {
  local venv=$TOOLS_DIR/moto-$MOTO_VERSION
  if [ ! -x "$venv/bin/moto_server" ]; then
    log "installing moto $MOTO_VERSION (S3-compatible server for the tests) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "${TMPDIR:-/tmp}/hearth-test-moto.log" 2>&1 &
  MOTO_PID=$!
  trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
  python3 - "$port" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit("the S3 test server did not start")
PY
  export HEARTH_TEST_S3_ENDPOINT=http://127.0.0.1:$port
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
}

ensure_sccache() {
  local root=$TOOLS_DIR/sccache-$SCCACHE_VERSION
  local bin=$root/bin/sccache
  if ! { [ -x "$bin" ] && "$bin" --version | grep -q "$SCCACHE_VERSION"; }; then
    log "building sccache $SCCACHE_VERSION (once per machine, into $root)"
    env -u RUSTC_WRAPPER -u CARGO_TARGET_DIR cargo install sccache --version "$SCCACHE_VERSION" --locked \
      --no-default-features --features webdav --root "$root" --quiet
  fi
  export HEARTH_TEST_SCCACHE=$bin
}

ensure_postgres
ensure_ccache
ensure_prometheus_and_compose
ensure_btrfs_progs
ensure_sccache
ensure_s3_server
# The end-to-end tests talk to servers on loopback only.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export NO_PROXY=127.0.0.1,localhost

log "rustfmt"
cargo fmt --all -- --check
log "clippy"
cargo clippy --locked --all-targets -- -D warnings
log "tests"
cargo test --locked
