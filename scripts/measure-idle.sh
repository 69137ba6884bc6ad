#!/usr/bin/env bash
# Measures what an idle authenticated WebSocket connection costs pushgate:
# user-space RSS, and the kernel's memory for the server's end (slab and
# socket buffers; see bench/src/kmem.rs). Starts a release server, runs
# `pushgate-bench idle` for each connection count, prints the results,
# stops the server.
#
#   scripts/measure-idle.sh [--shards S] [--conns "10000 19000"] [--port P] [--out DIR]
#   scripts/measure-idle.sh --over-fd-limit [--port P] [--out DIR]
#   scripts/measure-idle.sh --deflate [...]
#
# --out DIR: keep the runs' JSON reports and the printed summary there
# (default: a temporary directory, named at the start).
# --over-fd-limit: 8 shards and 40,000 connections, to show one server process
# holding more connections than its open-file limit (io_uring direct
# descriptors, one fixed-file table per ring). Prints `ulimit -n` and the
# server's open descriptors beside the connections held.
# --deflate: the server runs with --deflate and every client negotiates
# permessage-deflate (what a connection that did costs while idle).
#
# Loopback only: the server listens on 127.0.0.1, clients bind 127.0.0.2-60.
set -euo pipefail

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

SHARDS=2
CONNS="10000 19000"
PORT=8080
OVER_FD_LIMIT=0
DEFLATE=0
OUT=""
SHARDS_GIVEN=0
CONNS_GIVEN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --shards) SHARDS="$2"; SHARDS_GIVEN=1; shift 2 ;;
        --conns) CONNS="$2"; CONNS_GIVEN=1; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --over-fd-limit) OVER_FD_LIMIT=1; shift ;;
        --deflate) DEFLATE=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "measure-idle: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ $OVER_FD_LIMIT == 1 ]]; then
    [[ $SHARDS_GIVEN == 1 ]] || SHARDS=8
    [[ $CONNS_GIVEN == 1 ]] || CONNS=40000
fi
# How long the over-fd-limit run keeps its connections while we count the
# server's descriptors.
HOLD_S=10
# Bounds on the waits below, in tenths of a second.
PORT_WAIT_TENTHS=300
REPORT_WAIT_TENTHS=1200

cd "$(dirname "$0")/.."
cargo build --release -p pushgate -p pushgate-bench
BIN=${CARGO_TARGET_DIR:-target}/release

RUN_DIR="$(mktemp -d)"
if [[ -n "$OUT" ]]; then
    mkdir -p "$OUT"
    RESULTS="$(cd "$OUT" && pwd)"
else
    RESULTS="$(mktemp -d /tmp/pushgate-idle.XXXXXX)"
fi
# Everything printed from here on is also kept beside the reports.
exec > >(tee -a "$RESULTS/summary.txt") 2>&1
SERVER_PID=""
BENCH_PID=""
cleanup() {
    # Only what this script started, by pid.
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill "$BENCH_PID" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT

# A fresh server per connection count: a server that already held (and
# freed) connections keeps that memory in its allocator, and the next run
# would under-count what a connection costs.
start_server() {
    # Admin listener beside the client port, not the default 9090 another
    # server on this machine may hold.
    "$BIN/pushgate" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$((PORT + 1))" \
        --shards "$SHARDS" --run-dir "$RUN_DIR" $([[ $DEFLATE == 1 ]] && echo --deflate) \
        >>"$RESULTS/server.log" 2>&1 &
    SERVER_PID=$!
    # Waits for the listener in /proc/net/tcp (state 0A = LISTEN) rather than
    # connecting, so the server sees no stray connection before its baseline.
    local port_hex i
    port_hex="$(printf '%04X' "$PORT")"
    for ((i = 0; ; i++)); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "measure-idle: server exited during start-up; its log:" >&2
            tail -n 30 "$RESULTS/server.log" >&2
            exit 1
        fi
        grep -q " 0100007F:$port_hex 00000000:0000 0A " /proc/net/tcp && break
        if ((i >= PORT_WAIT_TENTHS)); then
            echo "measure-idle: nothing listens on 127.0.0.1:$PORT after 30 s" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "server pid $SERVER_PID, $SHARDS shards, 127.0.0.1:$PORT"
}

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    # Reap it so the port is free for the next one.
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

echo "results in $RESULTS"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) scripts/measure-idle.sh --shards $SHARDS --conns \"$CONNS\"$([[ $OVER_FD_LIMIT == 1 ]] && echo ' --over-fd-limit')$([[ $DEFLATE == 1 ]] && echo ' --deflate'); load $(cut -d' ' -f1-3 /proc/loadavg); $(uname -r); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

json_field() {  # json_field FILE NAME: a top-level number of a report
    sed -n "s/^  \"$2\": \([-+0-9.eE]*\),\{0,1\}\$/\1/p" "$1"
}

status=0
for n in $CONNS; do
    json="$RESULTS/idle-$n.json"
    echo
    echo "=== $n connections ==="
    start_server
    bench=("$BIN/pushgate-bench" idle --target "127.0.0.1:$PORT" --conns "$n"
        --server-pid "$SERVER_PID" --run-dir "$RUN_DIR" --json "$json")
    [[ $DEFLATE == 1 ]] && bench+=(--protocol pushgate-deflate)
    if [[ $OVER_FD_LIMIT == 0 ]]; then
        "${bench[@]}" || status=$?
    else
        "${bench[@]}" --hold-s "$HOLD_S" &
        BENCH_PID=$!
        # The report is written (atomically) once every connection is up
        # and measured; the connections stay open for HOLD_S after it.
        for ((i = 0; i < REPORT_WAIT_TENTHS; i++)); do
            [[ -f "$json" ]] && break
            kill -0 "$BENCH_PID" 2>/dev/null || break
            sleep 0.1
        done
        if [[ -f "$json" ]]; then
            held="$(json_field "$json" conns_established)"
            server_fds="$(ls "/proc/$SERVER_PID/fd" | wc -l)"
            server_limit="$(awk '/^Max open files/ {print $4}' "/proc/$SERVER_PID/limits")"
            echo
            echo "connections held      $held"
            echo "server open fds       $server_fds   (ls /proc/$SERVER_PID/fd | wc -l)"
            echo "ulimit -n             $(ulimit -n)   (server's soft limit: $server_limit)"
            if [[ -n "$held" && -n "$server_limit" ]] && ((held > server_limit)); then
                echo "=> one server process holds $held connections, more than its open-file limit of $server_limit"
            else
                echo "=> NOT shown: $held connections held, limit $server_limit"
                status=1
            fi
        fi
        wait "$BENCH_PID" || status=$?
        BENCH_PID=""
    fi
    stop_server
done

echo
printf '%-8s %-12s %-8s %-14s %-16s %-10s %-10s\n' conns established failed bytes/conn kernel_B/conn p99_ms conn/s
for n in $CONNS; do
    json="$RESULTS/idle-$n.json"
    [[ -f "$json" ]] || { printf '%-8s (no report)\n' "$n"; continue; }
    p99_us="$(sed -n 's/^    "p99": \([0-9]*\),\{0,1\}$/\1/p' "$json")"
    printf '%-8s %-12s %-8s %-14s %-16s %-10s %-10s\n' "$n" \
        "$(json_field "$json" conns_established)" "$(json_field "$json" conns_failed)" \
        "$(json_field "$json" server_rss_per_conn_bytes | awk '{ printf "%.1f", $1 }')" \
        "$(json_field "$json" kernel_per_conn_bytes | awk '{ printf "%.0f", $1 }')" \
        "$(awk -v us="${p99_us:-0}" 'BEGIN { printf "%.2f", us / 1000 }')" \
        "$(json_field "$json" connect_rate_per_s | cut -d. -f1)"
done
exit "$status"
