#!/usr/bin/env bash
# Runs hearth's coverage-guided fuzz targets (fuzz/fuzz_targets, cargo-fuzz + libFuzzer) for a
# bounded time each. NOT part of CI: run it by hand, e.g. before a release or after touching
# path parsing, authentication or the WebDAV front-end.
#
#   scripts/fuzz.sh                        every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh dav_path auth_header   only these targets
#   FUZZ_SECONDS=600 scripts/fuzz.sh       longer
#   FUZZ_ARGS='-max_len=512' scripts/fuzz.sh   extra libFuzzer options for every target
#
# Targets: dav_path (request path → namespace and key), auth_header (Authorization header →
# secret), propfind (207 Multi-Status XML), http_request (the whole router, in process).
#
# Installs cargo-fuzz (pinned, once per machine) into ${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}
# with `cargo install`; needs the nightly toolchain (`rustup toolchain install nightly`).
# Builds in fuzz/target, grows the corpus in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>), and libFuzzer writes crashing inputs to fuzz/artifacts/<target>/.
# Prints one line per target (executions, coverage) and exits non-zero if any target crashed;
# reproduce one from the repository root with the command the failure report prints, run as
# `PATH=<tools dir>/cargo-fuzz-<version>/bin:$PATH cargo +nightly fuzz run -O <target> <input>`.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TOOLS_DIR=${HEARTH_TOOLS_DIR:-$HOME/.cache/hearth-tools}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# A single input running longer than this is reported as a hang.
FUZZ_INPUT_TIMEOUT=${FUZZ_INPUT_TIMEOUT:-30}
TOOLCHAIN=nightly

log() { echo "==> $*" >&2; }

case $FUZZ_SECONDS in
  '' | *[!0-9]* | 0) echo "FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'" >&2; exit 2 ;;
esac

ensure_cargo_fuzz() {
  local root=$TOOLS_DIR/cargo-fuzz-$CARGO_FUZZ_VERSION
  if ! { [ -x "$root/bin/cargo-fuzz" ] && "$root/bin/cargo-fuzz" --version | grep -q " $CARGO_FUZZ_VERSION\$"; }; then
    log "building cargo-fuzz $CARGO_FUZZ_VERSION (once per machine, into $root)"
    env -u RUSTC_WRAPPER -u CARGO_TARGET_DIR cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz \
      --root "$root" --quiet
  fi
  export PATH="$root/bin:$PATH"
}

ensure_nightly() {
  if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    echo "cargo-fuzz needs the $TOOLCHAIN toolchain: rustup toolchain install $TOOLCHAIN" >&2
    exit 2
  fi
}

ensure_nightly
ensure_cargo_fuzz
# The fuzz crate has its own target directory (fuzz/target) and lock file.
unset CARGO_TARGET_DIR

mapfile -t all_targets < <(cargo "+$TOOLCHAIN" fuzz list --fuzz-dir fuzz)
if [ ${#all_targets[@]} -eq 0 ]; then
  echo "cargo fuzz list found no fuzz targets in fuzz/" >&2
  exit 2
fi
if [ $# -gt 0 ]; then
  targets=("$@")
  for target in "${targets[@]}"; do
    if ! printf '%s\n' "${all_targets[@]}" | grep -qx -- "$target"; then
      echo "unknown fuzz target '$target' (known: ${all_targets[*]})" >&2
      exit 2
    fi
  done
else
  targets=("${all_targets[@]}")
fi

log "building ${#targets[@]} fuzz target(s) with $(rustc "+$TOOLCHAIN" --version)"
for target in "${targets[@]}"; do
  cargo "+$TOOLCHAIN" fuzz build --fuzz-dir fuzz -O "$target"
done

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
state_dir=
# shellcheck disable=SC2317 # reached through the trap below
cleanup() {
  if [ -n "$state_dir" ]; then rm -rf "$state_dir"; fi
}
trap cleanup EXIT

# The first number after `name:` in libFuzzer's status line.
field() { sed -n "s/.*[[:space:]]$1: *\([0-9][0-9]*\).*/\1/p" <<<"$2" | head -n 1; }

summaries=()
failed=0
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  dirs=("$corpus")
  if [ -d "fuzz/seeds/$target" ]; then dirs+=("fuzz/seeds/$target"); fi
  # http_request keeps two servers' SQLite databases and blobs here; gone after the run.
  state_dir=$(mktemp -d "${TMPDIR:-/tmp}/hearth-fuzz-$target.XXXXXX")
  run_log=$logs/$target.log
  log "fuzzing $target for ${FUZZ_SECONDS}s (log: $run_log)"
  options=(-max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_INPUT_TIMEOUT" -print_final_stats=1)
  if [ "$target" = http_request ]; then
    # Its servers' caches grow from input to input, which libFuzzer's per-input leak check
    # would take for leaks and scan the whole heap for every time (4x slower).
    options+=(-detect_leaks=0)
  fi
  # shellcheck disable=SC2206 # split on purpose: several libFuzzer options
  options+=(${FUZZ_ARGS:-})
  status=0
  HEARTH_FUZZ_STATE_DIR=$state_dir cargo "+$TOOLCHAIN" fuzz run --fuzz-dir fuzz -O "$target" "${dirs[@]}" -- \
    "${options[@]}" >"$run_log" 2>&1 || status=$?
  rm -rf "$state_dir"
  state_dir=

  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run_log" | tail -n 1)
  per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$run_log" | tail -n 1)
  seconds=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$run_log" | tail -n 1)
  new_units=$(sed -n 's/^stat::new_units_added: *//p' "$run_log" | tail -n 1)
  # Coverage (edges) when the corpus was loaded, and at the end.
  inited=$(grep -E '^#[0-9]+[[:space:]]+INITED' "$run_log" | tail -n 1 || true)
  last=$(grep -E '^#[0-9]+[[:space:]]+(INITED|NEW|REDUCE|pulse|DONE)' "$run_log" | tail -n 1 || true)
  cov_start=$(field cov "$inited")
  cov_end=$(field cov "$last")
  features=$(field ft "$last")
  corpus_size=$(sed -n 's/.*[[:space:]]corp: *\([0-9][0-9]*\)\/.*/\1/p' <<<"$last" | head -n 1)
  coverage="coverage ${cov_end:-?} edges (+$((${cov_end:-0} - ${cov_start:-${cov_end:-0}})) this run), ${features:-?} features"
  if [ "$status" -eq 0 ]; then
    summary="$target: ok, ${executions:-?} executions in ${seconds:-$FUZZ_SECONDS}s (${per_second:-?}/s), $coverage, ${new_units:-0} new inputs (corpus ${corpus_size:-?})"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$run_log" | tail -n 1)
    # A panic's message is on the line after its location.
    reason=$(grep -m 1 -A 1 "panicked at" "$run_log" | tr '\n' ' ' ||
      grep -m 1 -E "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY:" "$run_log" || true)
    summary="$target: FAILED (exit $status) after ${executions:-?} executions: ${reason:-see the log}; input: ${artifact:-none saved}; log: $run_log"
    # What went wrong, and cargo-fuzz's account of the input (with its Debug form) and how to
    # reproduce and minimize it.
    {
      grep -A 12 -m 1 "panicked at" "$run_log" ||
        grep -B 1 -A 12 -m 1 -E "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)" "$run_log" || true
      sed -n '/^Failing input:/,/^Error: Fuzz target exited/p' "$run_log" | sed '$d'
    } >&2
  fi
  echo "$summary"
  summaries+=("$summary")
done

echo
echo "fuzzing summary (${FUZZ_SECONDS}s per target):"
printf '  %s\n' "${summaries[@]}"
exit "$failed"
