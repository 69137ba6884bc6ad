#!/usr/bin/env bash
# TLS measurements, side by side (bench/src/tls.rs):
#  1. idle: user-space RSS and the kernel's share per idle upgraded
#     connection, plain `listen` vs `tls_listen`, a fresh 2-shard server per
#     run (`pushgate-bench tls-idle`);
#  2. handshakes: TLS handshakes/s and server CPU per handshake, pushgate
#     with one shard vs uWebSockets.js SSLApp on one thread
#     (bench/peers/node/uws-tls-server.mjs), the same ECDSA P-256
#     certificate, the client offering only TLS 1.3 TLS_AES_128_GCM_SHA256
#     with X25519 (`pushgate-bench tls-handshakes`).
# Each is repeated, the servers alternating, and the load average is kept
# in every JSON report. Needs openssl (the test certificate) and, for uWS,
# scripts/bench-deps.sh.
#
#   scripts/measure-tls.sh [--conns N] [--repeats R] [--secs S] [--out DIR]
set -euo pipefail

CONNS=10000
REPEATS=3
SECS=10
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) CONNS="$2"; shift 2 ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --secs) SECS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "measure-tls: unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
cargo build --release -p pushgate -p pushgate-bench
BIN=${CARGO_TARGET_DIR:-target}/release
WORK="$(mktemp -d)"
if [[ -n "$OUT" ]]; then mkdir -p "$OUT"; RESULTS="$(cd "$OUT" && pwd)"; else RESULTS="$WORK/results"; mkdir -p "$RESULTS"; fi
exec > >(tee -a "$RESULTS/summary.txt") 2>&1

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# A leaf certificate (not a CA: webpki refuses a CA as an end entity).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 7 -subj /CN=localhost \
    -config <(printf '[req]\ndistinguished_name=dn\nx509_extensions=ext\n[dn]\n[ext]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n') \
    2>/dev/null

PLAIN_PORT=18180
TLS_PORT=18543
UWS_PORT=18544

start_pushgate() { # $1 = shards
    rm -rf "$WORK/run"
    NO_COLOR=1 "$BIN/pushgate" serve --listen "127.0.0.1:$PLAIN_PORT" --admin-listen 127.0.0.1:0 \
        --tls-listen "127.0.0.1:$TLS_PORT" --tls-cert-file "$WORK/cert.pem" --tls-key-file "$WORK/key.pem" \
        --run-dir "$WORK/run" --shards "$1" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do grep -q tls_addr= "$WORK/server.log" && return 0; sleep 0.1; done
    echo "pushgate did not start:"; cat "$WORK/server.log"; exit 1
}

echo "# TLS measurements, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## idle: $CONNS connections per run, fresh 2-shard server each"
for r in $(seq "$REPEATS"); do
    for mode in plain tls; do
        start_pushgate 2
        if [[ $mode == plain ]]; then
            args=(--target "127.0.0.1:$PLAIN_PORT" --plain)
        else
            args=(--target "127.0.0.1:$TLS_PORT" --cert "$WORK/cert.pem")
        fi
        "$BIN/pushgate-bench" tls-idle "${args[@]}" --conns "$CONNS" --server-pid "$SERVER_PID" \
            --run-dir "$WORK/run" --json "$RESULTS/idle-$mode-$r.json" >/dev/null
        stop_server
        python3 - "$RESULTS/idle-$mode-$r.json" "$mode" "$r" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
k = r["kernel"].get("server_end_per_conn_bytes")
print(f"run {sys.argv[3]} {sys.argv[2]:5}: {r['conns']} conns ({r['failed']} failed), user space "
      f"{r['user_space_per_conn_bytes']:.0f} B/conn, kernel (server end) "
      f"{'n/a' if k is None else f'{k:.0f}'} B/conn, load {r['loadavg']}")
EOF
    done
done

echo
echo "## handshakes: ${SECS}s per run, 2 client threads; pushgate 1 shard vs uWS.js SSLApp 1 thread"
for r in $(seq "$REPEATS"); do
    start_pushgate 1
    "$BIN/pushgate-bench" tls-handshakes --target "127.0.0.1:$TLS_PORT" --cert "$WORK/cert.pem" \
        --server-pid "$SERVER_PID" --server-name pushgate --secs "$SECS" \
        --json "$RESULTS/handshakes-pushgate-$r.json" >/dev/null
    stop_server
    (cd bench/peers/node && exec node uws-tls-server.mjs --listen "127.0.0.1:$UWS_PORT" \
        --cert "$WORK/cert.pem" --key "$WORK/key.pem") >"$WORK/uws.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do grep -q listening "$WORK/uws.log" && break; sleep 0.1; done
    "$BIN/pushgate-bench" tls-handshakes --target "127.0.0.1:$UWS_PORT" --cert "$WORK/cert.pem" \
        --server-pid "$SERVER_PID" --server-name uws-js-sslapp --secs "$SECS" \
        --json "$RESULTS/handshakes-uws-$r.json" >/dev/null
    stop_server
    for s in pushgate uws; do
        python3 - "$RESULTS/handshakes-$s-$r.json" "$r" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"run {sys.argv[2]} {r['server']:14}: {r['handshakes_per_s']:.0f} handshakes/s ({r['failed']} failed), "
      f"server CPU {r['server_cpu_us_per_handshake']:.0f} us each = {r['handshakes_per_s_per_core']:.0f}/s per core, "
      f"load {r['loadavg']}")
EOF
    done
done
echo
echo "results: $RESULTS"
