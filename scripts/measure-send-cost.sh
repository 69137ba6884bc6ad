#!/usr/bin/env bash
# Measures what a delivery costs the kernel and the server: runs one
# pushgate-bench scenario (homing at saturation, or latency at a fixed
# rate) against a fresh release server and reports TCP segments per
# delivery (nstat TcpOutSegs delta: on loopback each segment is counted
# once; both directions, so client ACKs are included), sendmsg per
# delivery (pushgate_ring_sends_total), and samples of each shard's loop
# busy share and send-coalescing window once a second.
#
#   scripts/measure-send-cost.sh [--scenario homing|latency] [--rate PUSHES_PER_S]
#                                [--coalesce-ms MS] [--conns N] [--duration-s S] [--port P]
#
# Loopback only; the load generator shares the cores (compare runs with
# each other on one machine and day).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=homing RATE=300 COALESCE_MS=40 CONNS=10000 DURATION_S=10 PORT=18650
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scenario) SCENARIO="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --coalesce-ms) COALESCE_MS="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --duration-s) DURATION_S="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
done
command -v nstat >/dev/null || { echo "needs nstat (iproute2)" >&2; exit 1; }
cargo build --release -q -p pushgate -p pushgate-bench
BIN=target/release
RUN_DIR=$(mktemp -d)
ADMIN=$((PORT + 1))
"$BIN/pushgate" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --shards 2 \
    --run-dir "$RUN_DIR" --send-coalesce-ms-max "$COALESCE_MS" >"$RUN_DIR/log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$RUN_DIR"' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
metrics() { curl -s "127.0.0.1:$ADMIN/metrics"; }
sum() { awk -v m="$1" '$1 ~ "^pushgate_"m"[{ ]" {s += $2} END {print s + 0}'; }
(
    for _ in $(seq $((DURATION_S + 2))); do
        sleep 1
        metrics | awk '/^pushgate_ring_loop_busy_permille/ {b = b " " $2}
                       /^pushgate_ring_send_coalesce_ms/ {w = w " " $2}
                       END {print "busy‰" b "   window ms" w}'
    done
) >"$RUN_DIR/samples" &
SAMPLER=$!
nstat -n >/dev/null
extra=()
[[ $SCENARIO == latency ]] && extra=(--rate "$RATE")
"$BIN/pushgate-bench" "$SCENARIO" --target "127.0.0.1:$PORT" --protocol pushgate --server-name pushgate \
    --server-pid "$SERVER" --run-dir "$RUN_DIR" --conns "$CONNS" --duration-s "$DURATION_S" \
    --drain-s 5 --json "$RUN_DIR/result.json" "${extra[@]}" | grep -E "pushgate $SCENARIO|deliveries/s offered"
segments=$(nstat -z TcpOutSegs | awk '/TcpOutSegs/ {print $2}')
wait "$SAMPLER" 2>/dev/null || true
m=$(metrics)
sends=$(sum ring_sends_total <<<"$m")
deliveries=$(sum deliveries_total <<<"$m")
awk -v s="$sends" -v t="$segments" -v d="$deliveries" -v w="$COALESCE_MS" 'BEGIN {
    printf "send_coalesce_ms_max %s: %d deliveries, %.3f sendmsg and %.3f TCP segments per delivery\n", w, d, s / d, t / d }'
echo "per second, shard 0 and 1:"
cat "$RUN_DIR/samples"
