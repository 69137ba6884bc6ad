#!/usr/bin/env bash
# Measures whether pushgate gives memory back when users and connections go:
# the server's RSS (/proc/PID/status VmRSS) and what it says it holds
# (/metrics), read at each step of a day in the life of a host.
#
#   scripts/measure-memory-return.sh [--conns N] [--offline-users M] [--shards S]
#       [--retention-ms R] [--label L] [--bin DIR] [--server-env VAR=VALUE]...
#       [--out FILE] [--port P]
#
# 1. baseline: a fresh release server (S shards, pings off, idle timeout 1 h,
#    mailbox retention R ms).
# 2. N connections (`pushgate-bench idle`, one distinct user each) held,
#    3 broadcasts (`pushgate push --all`), then the connections leave.
# 3. readings right after they left, after the retention time, +30 s, +60 s.
# 4. M distinct offline users get one push each (stored in their mailboxes,
#    `pushgate push --ndjson`), then readings after the retention, +30 s, +60 s.
#
# Defaults: N 100,000, M 500,000, S = ceil(N / 19,900) rounded up to a
# power of two (each ring's fixed-file table stays under a 20,000 open-file
# limit), R 5,000. --bin DIR runs DIR/pushgate and DIR/pushgate-bench instead
# of building this tree (to compare builds); --label names the run;
# --server-env passes an environment variable to the server only (e.g.
# MALLOC_ARENA_MAX=2). Writes one JSON report (default
# bench/results/<date>/memory-return/memory-return-<label>.json) and prints a table.
#
# Loopback only: the server listens on 127.0.0.1, clients bind 127.0.0.2-60.
set -euo pipefail

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
}

CONNS=100000
OFFLINE_USERS=500000
SHARDS=""
RETENTION_MS=5000
LABEL=""
BIN=""
OUT=""
PORT=18400
SERVER_ENV=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) CONNS="$2"; shift 2 ;;
        --offline-users) OFFLINE_USERS="$2"; shift 2 ;;
        --shards) SHARDS="$2"; shift 2 ;;
        --retention-ms) RETENTION_MS="$2"; shift 2 ;;
        --label) LABEL="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --server-env) SERVER_ENV+=("$2"); shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "measure-memory-return: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ -z $SHARDS ]]; then
    SHARDS=1
    while ((SHARDS * 19900 < CONNS)); do SHARDS=$((SHARDS * 2)); done
fi
# Users per push line: 1,000 names of ~14 bytes stay far below the 1 MiB
# push frame bound.
USERS_PER_PUSH=1000
# Bounds on the waits below, in tenths of a second.
PORT_WAIT_TENTHS=300
REPORT_WAIT_TENTHS=3000
GONE_WAIT_TENTHS=300
# How long the bench keeps its connections after measuring them: time for
# three broadcasts. The script waits for it to end (connections leave then).
HOLD_S=15
# Readings after each phase: seconds after its data should have expired.
LATER_S="30 60"

cd "$(dirname "$0")/.."
if [[ -z $BIN ]]; then
    cargo build --release -p pushgate -p pushgate-bench
    BIN=${CARGO_TARGET_DIR:-target}/release
    [[ -n $LABEL ]] || LABEL=this-tree
fi
[[ -n $LABEL ]] || LABEL=$(basename "$BIN")
DATE=$(date +%F)
[[ -n $OUT ]] || OUT="bench/results/$DATE/memory-return/memory-return-$LABEL.json"
mkdir -p "$(dirname "$OUT")"

RUN_DIR="$(mktemp -d)"
WORK="$(mktemp -d /tmp/pushgate-memory.XXXXXX)"
SERVER_PID=""
BENCH_PID=""
cleanup() {
    # Only what this script started, by pid.
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill "$BENCH_PID" 2>/dev/null || true
    fi
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT
echo "work files in $WORK"

ADMIN="127.0.0.1:$((PORT + 1))"
env "${SERVER_ENV[@]}" "$BIN/pushgate" serve --listen "127.0.0.1:$PORT" --admin-listen "$ADMIN" \
    --shards "$SHARDS" --connections-per-shard-max 19900 --ping-interval-ms 0 \
    --idle-timeout-ms 3600000 --mailbox-retention-ms "$RETENTION_MS" \
    --run-dir "$RUN_DIR" >>"$WORK/server.log" 2>&1 &
SERVER_PID=$!
port_hex="$(printf '%04X' "$PORT")"
for ((i = 0; ; i++)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "measure-memory-return: server exited during start-up; its log:" >&2
        tail -n 30 "$WORK/server.log" >&2
        exit 1
    fi
    grep -q " 0100007F:$port_hex 00000000:0000 0A " /proc/net/tcp && break
    if ((i >= PORT_WAIT_TENTHS)); then
        echo "measure-memory-return: nothing listens on 127.0.0.1:$PORT after 30 s" >&2
        exit 1
    fi
    sleep 0.1
done
echo "server pid $SERVER_PID, $SHARDS shards, 127.0.0.1:$PORT, label $LABEL"

T0=$(date +%s.%N)
READINGS="$WORK/readings.jsonl"
: >"$READINGS"
metric() {  # metric NAME: the sum over shards of a /metrics series
    awk -v n="pushgate_$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }' \
        "$WORK/metrics.txt"
}
# reading STEP: appends one line of readings and prints it.
reading() {
    local rss_kib t
    rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
    t=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    curl -s -m 5 "http://$ADMIN/metrics" >"$WORK/metrics.txt" || : >"$WORK/metrics.txt"
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    printf '{"step":"%s","t_s":%s,"rss_bytes":%d,"devices_online":%s,"users_stored":%s,"mailbox_entries":%s,"stored_bytes":%s,"overloaded":%s,"load_1m":%s}\n' \
        "$1" "$t" $((rss_kib * 1024)) "$(metric devices_online)" "$(metric users_stored)" \
        "$(metric mailbox_entries)" "$(metric stored_bytes)" "$(metric overloaded)" "$load" \
        | tee -a "$READINGS"
}

sleep 1
reading baseline
# Where the resident pages are, for a closer look (left in the work files).
cp "/proc/$SERVER_PID/smaps" "$WORK/smaps-baseline.txt"

# --- connections: held, three broadcasts, gone ---
"$BIN/pushgate-bench" idle --target "127.0.0.1:$PORT" --conns "$CONNS" \
    --server-pid "$SERVER_PID" --run-dir "$RUN_DIR" --json "$WORK/idle.json" \
    --hold-s "$HOLD_S" >"$WORK/bench.log" 2>&1 &
BENCH_PID=$!
for ((i = 0; i < REPORT_WAIT_TENTHS; i++)); do
    [[ -f "$WORK/idle.json" ]] && break
    kill -0 "$BENCH_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -f "$WORK/idle.json" ]]; then
    echo "measure-memory-return: the bench did not report; its log:" >&2
    tail -n 30 "$WORK/bench.log" >&2
    exit 1
fi
reading connected
payload='{"notice":"maintenance window at 03:00 UTC, expect a short reconnect","n":%d}'
for k in 1 2 3; do
    # shellcheck disable=SC2059
    "$BIN/pushgate" push --run-dir "$RUN_DIR" --all "$(printf "$payload" "$k")" >>"$WORK/push.log"
    sleep 1
done
reading broadcast
if ! kill -0 "$BENCH_PID" 2>/dev/null; then
    echo "measure-memory-return: the bench ended before the broadcasts were done" >&2
    exit 1
fi
wait "$BENCH_PID" || true
BENCH_PID=""
# The gauges follow the shards' ticks: wait until every device is gone.
for ((i = 0; i < GONE_WAIT_TENTHS; i++)); do
    curl -s -m 5 "http://$ADMIN/metrics" >"$WORK/metrics.txt" || true
    [[ $(metric devices_online) == 0 ]] && break
    sleep 0.1
done
reading conns_gone
sleep $(((RETENTION_MS + 999) / 1000 + 3))
reading conns_expired
last=0
for s in $LATER_S; do
    sleep $((s - last))
    last=$s
    reading "conns_expired_plus_${s}s"
done

# --- offline users: stored, then expired ---
awk -v m="$OFFLINE_USERS" -v per="$USERS_PER_PUSH" 'BEGIN {
    for (i = 0; i < m; i += per) {
        line = "{\"users\":["
        for (j = i; j < i + per && j < m; j++) line = line (j > i ? "," : "") "\"offline-" j "\""
        print line "],\"data\":{\"mail\":\"you have a new message waiting\",\"batch\":" i "}}"
    }
}' >"$WORK/offline.ndjson"
"$BIN/pushgate" push --run-dir "$RUN_DIR" --ndjson <"$WORK/offline.ndjson" >"$WORK/offline-push.log"
stored=$(awk -F'"stored":' '{ split($2, a, ","); s += a[1] } END { printf "%d", s }' "$WORK/offline-push.log")
echo "offline users stored: $stored of $OFFLINE_USERS"
for ((i = 0; i < GONE_WAIT_TENTHS; i++)); do
    curl -s -m 5 "http://$ADMIN/metrics" >"$WORK/metrics.txt" || true
    (($(metric users_stored) >= stored)) && break
    sleep 0.1
done
reading offline_stored
sleep $(((RETENTION_MS + 999) / 1000 + 3))
reading offline_expired
last=0
for s in $LATER_S; do
    sleep $((s - last))
    last=$s
    reading "offline_expired_plus_${s}s"
done

cp "/proc/$SERVER_PID/smaps" "$WORK/smaps-end.txt"
trims=$(grep -c "gave memory back" "$WORK/server.log" || true)
established=$(sed -n 's/^  "conns_established": \([0-9]*\),\{0,1\}$/\1/p' "$WORK/idle.json")
{
    printf '{\n  "scenario": "memory-return",\n  "label": "%s",\n  "date": "%s",\n' "$LABEL" "$DATE"
    printf '  "machine": "%s, %s CPUs, %s kB RAM",\n' "$(uname -sr)" "$(nproc)" \
        "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
    printf '  "command": "scripts/measure-memory-return.sh --conns %s --offline-users %s --shards %s --retention-ms %s --label %s",\n' \
        "$CONNS" "$OFFLINE_USERS" "$SHARDS" "$RETENTION_MS" "$LABEL"
    printf '  "server_env": "%s",\n' "${SERVER_ENV[*]:-}"
    printf '  "conns": %s,\n  "conns_established": %s,\n  "offline_users": %s,\n  "offline_stored": %s,\n' \
        "$CONNS" "${established:-0}" "$OFFLINE_USERS" "$stored"
    printf '  "shards": %s,\n  "retention_ms": %s,\n  "trim_log_lines": %s,\n' "$SHARDS" "$RETENTION_MS" "$trims"
    printf '  "readings": [\n'
    sed 's/^/    /; $!s/$/,/' "$READINGS"
    printf '  ],\n'
    # The server's own account of each time it gave memory back.
    printf '  "give_backs": [\n'
    { grep "gave memory back" "$WORK/server.log" || true; } | sed 's/\x1b\[[0-9;]*m//g' \
        | awk '{ line = "{\"at\":\"" $1 "\""
                 for (i = 2; i <= NF; i++) if (split($i, kv, "=") == 2) line = line ",\"" kv[1] "\":" kv[2]
                 print line "}" }' | sed 's/^/    /; $!s/$/,/'
    printf '  ]\n}\n'
} >"$OUT"
echo
echo "report: $OUT"
printf '%-30s %8s %10s %10s %12s %12s\n' step t_s rss_MB devices users_stored mailbox
sed 's/[{}"]//g' "$READINGS" | awk -F, '{
    for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
    printf "%-30s %8s %10.1f %10s %12s %12s\n", v["step"], v["t_s"], v["rss_bytes"] / 1e6,
        v["devices_online"], v["users_stored"], v["mailbox_entries"]
}'
