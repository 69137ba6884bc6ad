#!/usr/bin/env bash
# Runs the test suite N times in a row while busy loops keep every core
# loaded, the way CI shares its machine: a test that needs prompt
# scheduling fails here first.
#
#   scripts/test-under-load.sh [--runs N] [--burners B] [-- cargo test args]
#
# Defaults: 5 runs, one busy loop per core. Prints one line per run (exit
# status, seconds, load average) and the failures; exits non-zero if any
# run failed. Logs: target/test-under-load/run-<i>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=5
BURNERS=$(nproc)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --burners) BURNERS="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "usage: $0 [--runs N] [--burners B] [-- cargo test args]" >&2; exit 2 ;;
    esac
done
LOGS=target/test-under-load
mkdir -p "$LOGS"
PIDS=()
cleanup() { [[ ${#PIDS[@]} -gt 0 ]] && kill "${PIDS[@]}" 2>/dev/null; }
trap cleanup EXIT
for _ in $(seq "$BURNERS"); do
    (while :; do :; done) &
    PIDS+=($!)
done
export PUSHGATE_INTEROP_REQUIRED=1 PUSHGATE_BROWSER_REQUIRED=1
failed=0
for run in $(seq "$RUNS"); do
    start=$(date +%s)
    cargo test --workspace --all-targets "$@" >"$LOGS/run-$run.log" 2>&1
    rc=$?
    echo "run $run: exit $rc, $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ $rc != 0 ]]; then
        failed=1
        grep -E "^test .* FAILED|panicked at" "$LOGS/run-$run.log" | head -5
    fi
done
exit "$failed"
