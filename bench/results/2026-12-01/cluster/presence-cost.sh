#!/usr/bin/env bash
# Redis memory per idle online user's presence: 100,000 hashes written with
# the key and field shape pushgate uses (`pushgate:p:{p<P>.<N>}:presence:<user>`,
# field `<host_id>/<instance>/<shard>` -> device count) into a fresh
# standalone redis-server; used_memory before and after.
#   bash bench/results/2026-12-01/cluster/presence-cost.sh > bench/results/2026-12-01/cluster/presence-cost.txt
set -euo pipefail
PORT=${PORT:-16391}
DIR=$(mktemp -d)
redis-server --port "$PORT" --save '' --appendonly no --dir "$DIR" --daemonize no >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
N=100000
redis-server --version
before=$(redis-cli -p "$PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}')
awk -v n=$N 'BEGIN { for (i = 0; i < n; i++) {
    key = sprintf("pushgate:p:{p%d.%d}:presence:user-%d", i % 128, 100 + i % 128, i)
    field = sprintf("host-a/%08x/%d", 3735928559, i % 2)
    printf "*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n1\r\n", length(key), key, length(field), field } }' \
    | redis-cli -p "$PORT" --pipe >/dev/null
after=$(redis-cli -p "$PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}')
keys=$(redis-cli -p "$PORT" dbsize)
echo "users (hashes): $keys"
echo "used_memory before: $before B, after: $after B"
echo "per idle online user: $(( (after - before) / N )) B"
echo "MEMORY USAGE of one: $(redis-cli -p "$PORT" memory usage 'pushgate:p:{p5.105}:presence:user-5') B"
