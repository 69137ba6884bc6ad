#!/usr/bin/env bash
# Redis memory per idle online user's presence with the sweeper's index:
# 100,000 users written as pushgate writes them — the presence hash
# (`pushgate:p:{p<P>.<N>}:presence:<user>`, field
# `<host_id>/<instance>/<shard>` -> device count) and the user's member in
# its host instance's index of the partition
# (`pushgate:p:{p<P>.<N>}:written:<host_id>/<instance>:<bucket>`, a hash
# of user -> shard, 64 buckets per partition) — into a
# fresh standalone redis-server; used_memory before, after the hashes, and
# after the indexes.
#   bash bench/results/2026-12-02/cluster/presence-cost.sh > bench/results/2026-12-02/cluster/presence-cost.txt
set -euo pipefail
PORT=${PORT:-16392}
DIR=$(mktemp -d)
redis-server --port "$PORT" --save '' --appendonly no --dir "$DIR" --daemonize no >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
N=100000
used() { redis-cli -p "$PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
redis-server --version
before=$(used)
awk -v n=$N 'BEGIN { for (i = 0; i < n; i++) {
    key = sprintf("pushgate:p:{p%d.%d}:presence:user-%d", i % 128, 100 + i % 128, i)
    field = sprintf("host-a/%08x/%d", 3735928559, i % 2)
    printf "*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n1\r\n", length(key), key, length(field), field } }' \
    | redis-cli -p "$PORT" --pipe >/dev/null
hashes=$(used)
awk -v n=$N 'BEGIN { for (i = 0; i < n; i++) {
    key = sprintf("pushgate:p:{p%d.%d}:written:host-a/%08x:%d", i % 128, 100 + i % 128, 3735928559, int(i / 128) % 64)
    member = sprintf("user-%d", i)
    printf "*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n%d\r\n", length(key), key, length(member), member, i % 2 } }' \
    | redis-cli -p "$PORT" --pipe >/dev/null
after=$(used)
echo "users: $N, keys: $(redis-cli -p "$PORT" dbsize) (hashes + 128 × 64 index buckets)"
echo "encoding of a bucket: $(redis-cli -p "$PORT" object encoding "pushgate:p:{p5.105}:written:host-a/deadbeef:0")"
echo "used_memory before: $before B, after the hashes: $hashes B, after the indexes: $after B"
echo "presence hash per user: $(( (hashes - before) / N )) B"
echo "index member per user: $(( (after - hashes) / N )) B"
echo "per idle online user, both: $(( (after - before) / N )) B"
