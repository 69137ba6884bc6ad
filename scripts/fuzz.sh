#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 60).
#
#   scripts/fuzz.sh [SECONDS]
#
# With nightly and cargo-fuzz installed: builds the cargo-fuzz targets in
# fuzz/ (libFuzzer, AddressSanitizer, debug assertions), seeds each corpus
# with the valid inputs of tests/fuzz_smoke.rs, and runs each target with
# -max_total_time=SECONDS; prints the executions and any crash (its input is
# kept under fuzz/artifacts/<target>/). Without them (CI machines may have
# only stable and cannot fetch another toolchain) it says so and runs the
# stable smoke fuzzer (tests/fuzz_smoke.rs: the same target bodies, a
# PRNG-driven mutator) for SECONDS per target instead. Never installs a
# toolchain.
#
# Exit status: 0 when no target crashed; 1 on a crash (or a failed build).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]   (whole seconds per target, default 60)" >&2
    exit 2
fi
targets=(frame_reader client_frame_reader handshake push_decoder inflate tls_records tls_handshake)
# rustup must not download a toolchain behind our back.
export RUSTUP_AUTO_INSTALL=0

smoke_fallback() {
    local why=$1
    local seed=${FUZZ_SMOKE_SEED:-$(date +%s)}
    echo "== $why"
    echo "== falling back to the stable smoke fuzzer (tests/fuzz_smoke.rs): ${seconds}s per target, seed $seed"
    local log=target/fuzz-smoke.log status=0
    mkdir -p target
    FUZZ_SMOKE_SECONDS=$seconds FUZZ_SMOKE_SEED=$seed \
        cargo test --test fuzz_smoke -- --nocapture --test-threads "${#targets[@]}" >"$log" 2>&1 ||
        status=$?
    # Per target: "<target>: N inputs (seed …)", and any failure.
    grep -A1 -E '^[a-z_]+: |^first bytes|^replay|panicked|^test .*FAILED|^error' "$log" | grep -v '^--$' | sed 's/^/   /' || true
    if [[ $status -ne 0 ]]; then
        echo "== smoke fuzzer FAILED (exit $status, seed $seed); log: $log"
        exit 1
    fi
    local total=0 n
    while read -r n; do total=$((total + n)); done < <(sed -n 's/^[a-z_]*: \([0-9]*\) inputs.*/\1/p' "$log")
    echo "== total: $total executions over ${#targets[@]} targets (stable smoke fuzzer, no sanitizer)"
    echo "== smoke fuzzer: no crash"
    exit 0
}

have_nightly() {
    if command -v rustup >/dev/null 2>&1; then
        rustup toolchain list 2>/dev/null | grep -q '^nightly' || return 1
    fi
    cargo +nightly --version >/dev/null 2>&1
}

if ! have_nightly; then
    smoke_fallback "no nightly toolchain (cargo +nightly)"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    smoke_fallback "cargo-fuzz is not installed (cargo install cargo-fuzz)"
fi

echo "== toolchain: $(cargo +nightly --version); $(cargo +nightly fuzz --version)"
echo "== build"
(cd fuzz && cargo +nightly fuzz build)

# Seed corpora: the structured valid inputs the smoke fuzzer starts from.
seed_dir=target/fuzz-seeds
rm -rf "$seed_dir"
FUZZ_SEED_DIR="$PWD/$seed_dir" cargo test -q --test fuzz_smoke -- --ignored write_seed_corpus >/dev/null

log_dir=target/fuzz-logs
mkdir -p "$log_dir"
crashed=()
total=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    log=$log_dir/$target.log
    echo "== $target: ${seconds}s"
    status=0
    (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" "../$seed_dir/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1) >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    [[ -z $runs ]] && runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
    runs=${runs:-0}
    total=$((total + runs))
    if [[ $status -ne 0 ]]; then
        echo "   CRASH (exit $status) after $runs executions; log: $log"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|^Reproduce with' "$log" | sed 's/^/   /' || true
        crashed+=("$target")
    else
        echo "   $runs executions, corpus $(find "$corpus" -type f | wc -l) inputs, no crash"
    fi
done

echo "== total: $total executions over ${#targets[@]} targets"
if [[ ${#crashed[@]} -gt 0 ]]; then
    echo "== crashed: ${crashed[*]} (inputs under fuzz/artifacts/<target>/; replay: cd fuzz && cargo +nightly fuzz run <target> <file>)"
    exit 1
fi
echo "== no crash"
