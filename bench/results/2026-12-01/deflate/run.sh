#!/usr/bin/env bash
# Broadcast of a 2 KB JSON payload with permessage-deflate off and on:
# RUNS runs each, alternating off/on, each on a fresh release server
# (2 shards). Deflate on = `serve --deflate` and clients that offer it
# (`pushgate-bench --protocol pushgate-deflate`, the offer browsers send);
# off = the same server without the flag and clients that do not offer it.
# Bytes on the wire: the server's pushgate_ring_bytes_sent_total over each
# round (--server-admin), per client.
#
#   bench/results/2026-12-01/deflate/run.sh        # CONNS=5000 RUNS=3 ROUNDS=5
#
# Needs `cargo build --release -p pushgate -p pushgate-bench` first.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
BIN=${BIN:-target/release}
OUT=${OUT:-bench/results/2026-12-01/deflate}
CONNS=${CONNS:-5000}
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18480}
RUN_DIR=$(mktemp -d)
trap 'rm -rf "$RUN_DIR"' EXIT
mkdir -p "$OUT/raw"

wait_listen() {
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

for run in $(seq 1 "$RUNS"); do
    for mode in off on; do
        flags=()
        protocol=pushgate
        if [[ $mode == on ]]; then
            flags=(--deflate)
            protocol=pushgate-deflate
        fi
        rm -rf "$RUN_DIR/pg" && mkdir -p "$RUN_DIR/pg"
        "$BIN/pushgate" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$((PORT + 1))" \
            --shards 2 --run-dir "$RUN_DIR/pg" "${flags[@]}" >"$RUN_DIR/server.log" 2>&1 &
        pid=$!
        wait_listen "$PORT" "$pid" || { tail "$RUN_DIR/server.log" >&2; exit 1; }
        echo "== deflate $mode · run $run/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        "$BIN/pushgate-bench" broadcast --target "127.0.0.1:$PORT" \
            --server-name "pushgate-deflate-$mode" --server-pid "$pid" \
            --protocol "$protocol" --run-dir "$RUN_DIR/pg" \
            --conns "$CONNS" --payload-bytes 2048 --payload-json \
            --rounds "$ROUNDS" --warmup-rounds 1 \
            --server-admin "127.0.0.1:$((PORT + 1))" \
            --meta "run=$run" --meta "load1=$(cut -d' ' -f1 /proc/loadavg)" \
            --meta "time=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
            --json "$OUT/raw/broadcast-deflate-$mode-r$run.json"
        kill -INT "$pid"
        wait "$pid" || true
    done
done
