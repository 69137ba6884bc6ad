#!/usr/bin/env bash
# Server RSS per idle device, WebSocket against Server-Sent Events: a fresh
# release server per run (2 shards, default ping interval), RUNS alternating
# runs of each transport with CONNS connections (idle-rss.mjs), results as
# JSON lines and a summary table in OUT.
#
#   sdk/bench/idle-rss.sh [--conns 10000] [--runs 3] [--port 18470] [--out DIR]
#
# Needs Node ≥ 20 (raw sockets only). Loopback only.
set -euo pipefail

CONNS=10000
RUNS=3
PORT=18470
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) CONNS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "idle-rss: unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/../.."
cargo build --release -p pushgate
BIN=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-$(mktemp -d /tmp/pushgate-idle-rss.XXXXXX)}
mkdir -p "$OUT"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret"
chmod 600 "$WORK/secret"

listening() {  # listening PORT: something listens on 127.0.0.1:PORT
    grep -q " 0100007F:$(printf '%04X' "$1") 00000000:0000 0A " /proc/net/tcp
}

start_server() {
    # Another server on the port would share it (SO_REUSEPORT) and take
    # some of the connections.
    if listening "$PORT"; then
        echo "idle-rss: 127.0.0.1:$PORT is taken; pick another --port" >&2
        exit 1
    fi
    rm -rf "$WORK/run"
    "$BIN/pushgate" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$((PORT + 1))" \
        --shards 2 --run-dir "$WORK/run" --secret-file "$WORK/secret" >>"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        listening "$PORT" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "idle-rss: nothing listens on 127.0.0.1:$PORT" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

: >"$OUT/runs.jsonl"
for ((run = 1; run <= RUNS; run++)); do
    for transport in websocket sse; do
        start_server
        line=$(node sdk/bench/idle-rss.mjs --target "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
            --secret-file "$WORK/secret" --transport "$transport" --conns "$CONNS")
        stop_server
        echo "run $run $transport: $line"
        echo "{\"run\":$run,${line#\{}" >>"$OUT/runs.jsonl"
    done
done

{
    echo "| transport | connections | bytes/connection (runs) |"
    echo "|---|---:|---|"
    for transport in websocket sse; do
        values=$(grep "\"transport\":\"$transport\"" "$OUT/runs.jsonl" |
            sed -n 's/.*"bytes_per_conn":\([-0-9.]*\).*/\1/p' | paste -sd' ' | sed 's/ / · /g')
        echo "| $transport | $CONNS | $values |"
    done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT"
