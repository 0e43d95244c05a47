#!/usr/bin/env bash
# usage: A_ENV="..." A_ARGS="..." B_ENV=... B_ARGS=... ab.sh loadgen-args...
set -u
BIN=${BIN:-/work/main/target/release/hearth}
LG=$(ls /work/main/target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
rm -rf /tmp/exp/a /tmp/exp/b; mkdir -p /tmp/exp/a /tmp/exp/b
env HEARTH_MAX_SIZE=0 HEARTH_LOG=warn ${A_ENV:-} $BIN serve --listen 127.0.0.1:18081 --data-dir /tmp/exp/a ${A_ARGS:-} >/tmp/exp/a.log 2>&1 & apid=$!
env HEARTH_MAX_SIZE=0 HEARTH_LOG=warn ${B_ENV:-} ${BIN_B:-$BIN} serve --listen 127.0.0.1:18082 --data-dir /tmp/exp/b ${B_ARGS:-} >/tmp/exp/b.log 2>&1 & bpid=$!
for p in 18081 18082; do for i in $(seq 100); do curl -sf http://127.0.0.1:$p/healthz >/dev/null && break; sleep 0.1; done; done
$LG --url http://127.0.0.1:18081/bench/ --name A --server-pid $apid --peer-url http://127.0.0.1:18082/bench/ --peer-name B --peer-pid $bpid "$@"
kill $apid $bpid; wait
