#!/usr/bin/env bash
# Benchmarks pushgate against its peers (bench/peers/README.md), one server
# at a time on this machine, over loopback.
#
#   scripts/bench.sh [--scenario idle|idle-max|upgrade|broadcast|homing|latency|all]
#                    [--servers pushgate,tokio-tungstenite,tokio-tungstenite-4k,node-ws,socketio,uws]
#                    [--conns N] [--duration-s T] [--quick] [--out DIR] [--port P]
#
# Builds the release binaries, then for each scenario and server: starts the
# server, runs `pushgate-bench <scenario>` against it, stops it (a fresh
# server per run). Writes DIR/raw/<run>.json, then `pushgate-bench report`
# makes DIR/<scenario>.json, DIR/summary.md (ratios against pushgate) and
# DIR/*.svg charts. DIR defaults to bench/results/<date>.
#
# --quick: tiny sizes (a few hundred connections, seconds per scenario), the
# CI smoke test. The load generator and the server share the machine's
# cores; every result says so. Peers need scripts/bench-deps.sh first; a
# peer whose runtime is missing is skipped with a message.
#
# Loopback only: servers listen on 127.0.0.1, clients bind 127.0.0.2-60.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

ALL_SCENARIOS="idle idle-max upgrade broadcast homing latency"
ALL_SERVERS="pushgate,tokio-tungstenite,tokio-tungstenite-4k,node-ws,socketio,uws"
SCENARIOS=all
SERVERS=$ALL_SERVERS
CONNS=""
DURATION_S=""
QUICK=0
OUT=""
PORT=18080
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scenario) SCENARIOS="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --duration-s) DURATION_S="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $SCENARIOS == all ]] && SCENARIOS=$ALL_SCENARIOS
SCENARIOS=${SCENARIOS//,/ }
for s in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || { echo "bench: unknown scenario $s" >&2; exit 2; }
done
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
for s in "${SERVER_LIST[@]}"; do
    [[ ",$ALL_SERVERS," == *",$s,"* ]] || { echo "bench: unknown server $s" >&2; exit 2; }
done

# Sizes: full run / --quick.
if [[ $QUICK == 1 ]]; then
    IDLE_CONNS="300"; IDLE_FLAGS=(--warmup 50 --settle-ms 500)
    MAX_TARGET=400; MAX_BATCH=200
    UPGRADE_CONNS=300
    PUSH_CONNS=400; BROADCAST_ROUNDS=3; PUSH_DURATION_S=2; DRAIN_S=5
    RUN_TIMEOUT_S=60
else
    IDLE_CONNS="10000 19000"; IDLE_FLAGS=()
    MAX_TARGET=100000; MAX_BATCH=15000
    UPGRADE_CONNS=19000
    PUSH_CONNS=10000; BROADCAST_ROUNDS=5; PUSH_DURATION_S=10; DRAIN_S=15
    RUN_TIMEOUT_S=900
fi
if [[ -n $CONNS ]]; then
    IDLE_CONNS=$CONNS; UPGRADE_CONNS=$CONNS; PUSH_CONNS=$CONNS; MAX_TARGET=$CONNS
fi
[[ -n $DURATION_S ]] && PUSH_DURATION_S=$DURATION_S
# Shards for pushgate: one per core, as deployed; idle-max gives it 8 rings
# (each ring's fixed-file table is capped by the 20,000 open-file limit).
SHARDS=$(nproc)
MAX_SHARDS=8

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/release"
OUT=${OUT:-bench/results/$(date +%Y-%m-%d)}
mkdir -p "$OUT/raw" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
NODE_PEERS="$ROOT/bench/peers/node"

echo "== build (release)"
cargo build --release -p pushgate -p pushgate-bench

RUN_DIR=$(mktemp -d /tmp/pushgate-bench.XXXXXX)
SERVER_PID=""
EXTRA_PID=""
SERVER_SIGNAL=TERM
cleanup() {
    stop_server
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT

# Waits (bounded) for a listener on 127.0.0.1:$1 in /proc/net/tcp, without
# connecting: the server sees no stray connection before its baseline.
wait_listen() {
    local port_hex i pid=$2
    port_hex=$(printf '%04X' "$1")
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        grep -q " 0100007F:$port_hex 00000000:0000 0A " /proc/net/tcp && return 0
        sleep 0.1
    done
    return 1
}

# The process, its signal and what to wait for, by pid only.
stop_pid() {
    local pid=$1 signal=$2 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$signal" "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_server() {
    stop_pid "$SERVER_PID" "$SERVER_SIGNAL"
    stop_pid "$EXTRA_PID" TERM
    SERVER_PID=""
    EXTRA_PID=""
}

# What each server needs; returns 1 (with a message) to skip it.
available() {
    case "$1" in
        pushgate|tokio-tungstenite|tokio-tungstenite-4k) return 0 ;;
        node-ws|uws|socketio)
            if ! command -v node >/dev/null || [[ ! -d $NODE_PEERS/node_modules ]]; then
                echo "bench: skipping $1: Node peers not installed (run scripts/bench-deps.sh)"
                return 1
            fi
            if [[ $1 == socketio ]] && ! command -v redis-server >/dev/null; then
                echo "bench: skipping $1: no redis-server (run scripts/bench-deps.sh)"
                return 1
            fi
            ;;
    esac
}

protocol_of() {
    case "$1" in
        pushgate) echo pushgate ;;
        socketio) echo socketio ;;
        *) echo peer ;;
    esac
}

# start_server NAME SCENARIO: starts it on $PORT; sets SERVER_PID (and
# EXTRA_PID for socket.io's redis-server).
start_server() {
    local name=$1 scenario=$2 log="$OUT/logs/$1-$2.log" shards=$SHARDS
    SERVER_SIGNAL=TERM
    case "$name" in
        pushgate)
            [[ $scenario == idle-max ]] && shards=$MAX_SHARDS
            rm -rf "$RUN_DIR/pushgate" && mkdir -p "$RUN_DIR/pushgate"
            "$BIN/pushgate" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$((PORT + 1))" \
                --shards "$shards" --run-dir "$RUN_DIR/pushgate" >>"$log" 2>&1 &
            SERVER_PID=$!
            # SIGINT is pushgate's fast stop (SIGTERM drains at a fixed rate).
            SERVER_SIGNAL=INT
            ;;
        tokio-tungstenite)
            "$BIN/peer-tokio-tungstenite" --listen "127.0.0.1:$PORT" >>"$log" 2>&1 &
            SERVER_PID=$!
            ;;
        tokio-tungstenite-4k)
            "$BIN/peer-tokio-tungstenite" --listen "127.0.0.1:$PORT" --read-buffer-bytes 4096 >>"$log" 2>&1 &
            SERVER_PID=$!
            ;;
        node-ws)
            node "$NODE_PEERS/ws-server.mjs" --listen "127.0.0.1:$PORT" >>"$log" 2>&1 &
            SERVER_PID=$!
            ;;
        uws)
            node "$NODE_PEERS/uws-server.mjs" --listen "127.0.0.1:$PORT" >>"$log" 2>&1 &
            SERVER_PID=$!
            ;;
        socketio)
            local redis_port=$((PORT + 2))
            redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
                --daemonize no --loglevel warning >>"$OUT/logs/redis-$scenario.log" 2>&1 &
            EXTRA_PID=$!
            if ! wait_listen "$redis_port" "$EXTRA_PID"; then
                echo "bench: redis-server did not start; see $OUT/logs/redis-$scenario.log" >&2
                return 1
            fi
            node "$NODE_PEERS/socketio-server.mjs" --listen "127.0.0.1:$PORT" \
                --redis "127.0.0.1:$redis_port" >>"$log" 2>&1 &
            SERVER_PID=$!
            ;;
    esac
    if ! wait_listen "$PORT" "$SERVER_PID"; then
        echo "bench: $name did not start listening on 127.0.0.1:$PORT; its log:" >&2
        tail -n 20 "$log" >&2
        stop_server
        return 1
    fi
}

# The arguments every scenario takes for server NAME.
server_args() {
    local name=$1
    local args=(--target "127.0.0.1:$PORT" --protocol "$(protocol_of "$name")"
        --server-name "$name" --server-pid "$SERVER_PID")
    [[ $name == pushgate ]] && args+=(--run-dir "$RUN_DIR/pushgate")
    printf '%s\n' "${args[@]}"
}

STATUS=0
RAN=()
# run NAME SCENARIO JSON ARGS...: one measured run against a fresh server.
run() {
    local name=$1 scenario=$2 json=$3
    shift 3
    echo
    echo "== $scenario · $name"
    start_server "$name" "$scenario" || { STATUS=1; return 0; }
    local common=()
    mapfile -t common < <(server_args "$name")
    if [[ $name == socketio && $scenario != idle && $scenario != idle-max ]]; then
        common+=(--server-extra-pids "$EXTRA_PID")
    fi
    local command=("$scenario")
    [[ $scenario == idle-max ]] && command=(idle --max)
    local rc=0
    timeout --signal=TERM "$RUN_TIMEOUT_S" \
        "$BIN/pushgate-bench" "${command[@]}" "${common[@]}" --json "$json" "$@" || rc=$?
    stop_server
    if [[ $rc != 0 ]]; then
        echo "bench: $scenario · $name exited $rc"
        STATUS=1
    fi
    RAN+=("$scenario·$name:$rc")
}

for scenario in $SCENARIOS; do
    for name in "${SERVER_LIST[@]}"; do
        available "$name" || continue
        case "$scenario" in
            idle)
                for n in $IDLE_CONNS; do
                    run "$name" idle "$OUT/raw/idle-$n-$name.json" --conns "$n" "${IDLE_FLAGS[@]}"
                done
                ;;
            idle-max)
                run "$name" idle-max "$OUT/raw/idle-max-$name.json" --conns "$MAX_TARGET" \
                    --batch "$MAX_BATCH" --handshake-timeout-ms 5000 \
                    --server-log "$OUT/logs/$name-idle-max.log"
                ;;
            upgrade)
                run "$name" upgrade "$OUT/raw/upgrade-$name.json" --conns "$UPGRADE_CONNS"
                ;;
            broadcast)
                run "$name" broadcast "$OUT/raw/broadcast-$name.json" --conns "$PUSH_CONNS" \
                    --rounds "$BROADCAST_ROUNDS"
                ;;
            homing)
                run "$name" homing "$OUT/raw/homing-$name.json" --conns "$PUSH_CONNS" \
                    --duration-s "$PUSH_DURATION_S" --drain-s "$DRAIN_S"
                ;;
            latency)
                homing_json="$OUT/raw/homing-$name.json"
                if [[ -f $homing_json ]]; then
                    rate=(--rate-from "$homing_json" --rate-fraction 0.5)
                else
                    echo "bench: no homing result for $name in $OUT; latency runs at 100 pushes/s"
                    rate=(--rate 100)
                fi
                run "$name" latency "$OUT/raw/latency-$name.json" --conns "$PUSH_CONNS" \
                    --duration-s "$PUSH_DURATION_S" --drain-s "$DRAIN_S" "${rate[@]}"
                ;;
        esac
    done
done

echo
echo "== report"
"$BIN/pushgate-bench" report --dir "$OUT" || STATUS=1
echo
cat "$OUT/summary.md" 2>/dev/null || true
echo
echo "runs (scenario·server:exit): ${RAN[*]:-none}"
echo "results in $OUT"
exit "$STATUS"
