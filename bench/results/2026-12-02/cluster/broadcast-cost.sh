#!/usr/bin/env bash
# Redis memory per stored broadcast, and per user recorded as "pushed since
# the last broadcast", written with the key shapes pushgate's scripts use
# (src/cluster/keys.rs, src/cluster/history.rs) into a fresh standalone
# redis-server; used_memory before and after.
# - 1,000 broadcasts with a 100-byte payload, each stored once per
#   partition (128): a payload key `pushgate:p:{<tag>}:push:<seq>` with a
#   PX expiry, its seq appended to `pushgate:p:{<tag>}:broadcasts`, the
#   partition meta's `bcast` field set.
# - 100,000 users pushed while online: one field user -> seq in
#   `pushgate:p:{<tag>}:since:<host>/<instance>/<shard>` (2 shards), the
#   field named in `pushgate:p:{<tag>}:since-fields`.
#   bash bench/results/2026-12-02/cluster/broadcast-cost.sh > bench/results/2026-12-02/cluster/broadcast-cost.txt
set -euo pipefail
PORT=${PORT:-16392}
DIR=$(mktemp -d)
redis-server --port "$PORT" --save '' --appendonly no --dir "$DIR" --daemonize no >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-server --version
used() { redis-cli -p "$PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
cmd() { # RESP encoding of one command from its arguments
    awk 'BEGIN { printf "*%d\r\n", ARGC - 1; for (i = 1; i < ARGC; i++) printf "$%d\r\n%s\r\n", length(ARGV[i]), ARGV[i] }' "$@"
}
PARTITIONS=128
BROADCASTS=1000
PAYLOAD=$(printf '{"type":"notice","text":"%s"}' "$(head -c 200 /dev/zero | tr '\0' 'x' | head -c 71)")
# The partition metas exist before (every push creates them).
for p in $(seq 0 $((PARTITIONS - 1))); do cmd HSET "pushgate:p:{p$p.$((100 + p))}:meta" epoch 1764633600123456 seq 0; done \
    | redis-cli -p "$PORT" --pipe >/dev/null
before=$(used)
awk -v b=$BROADCASTS -v parts=$PARTITIONS -v payload="$PAYLOAD" 'BEGIN {
  for (i = 1; i <= b; i++) for (p = 0; p < parts; p++) {
    tag = sprintf("p%d.%d", p, 100 + p)
    key = sprintf("pushgate:p:{%s}:push:%d", tag, i)
    printf "*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nPX\r\n$8\r\n60000000\r\n", length(key), key, length(payload), payload
    list = sprintf("pushgate:p:{%s}:broadcasts", tag)
    printf "*3\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n", length(list), list, length(i ""), i
    meta = sprintf("pushgate:p:{%s}:meta", tag)
    printf "*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$5\r\nbcast\r\n$%d\r\n%d\r\n", length(meta), meta, length(i ""), i
  } }' | redis-cli -p "$PORT" --pipe >/dev/null
after=$(used)
echo "payload: ${#PAYLOAD} B; $BROADCASTS broadcasts x $PARTITIONS partitions"
echo "used_memory before: $before B, after: $after B"
echo "per stored broadcast (all $PARTITIONS partitions): $(( (after - before) / BROADCASTS )) B"
echo "per partition copy: $(( (after - before) / BROADCASTS / PARTITIONS )) B"
echo "MEMORY USAGE of one payload key: $(redis-cli -p "$PORT" memory usage 'pushgate:p:{p5.105}:push:7') B"

N=100000
before=$(used)
awk -v n=$N -v parts=$PARTITIONS 'BEGIN { for (i = 0; i < n; i++) {
    tag = sprintf("p%d.%d", i % parts, 100 + i % parts)
    field = sprintf("host-a/%08x/%d", 3735928559, i % 2)
    key = sprintf("pushgate:p:{%s}:since:%s", tag, field)
    user = sprintf("user-%d", i)
    seq = 1000000 + i
    printf "*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n", length(key), key, length(user), user, length(seq ""), seq
    set = sprintf("pushgate:p:{%s}:since-fields", tag)
    printf "*3\r\n$4\r\nSADD\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(set), set, length(field), field
  } }' | redis-cli -p "$PORT" --pipe >/dev/null
after=$(used)
echo "users pushed since the last broadcast: $N (over $PARTITIONS partitions x 2 shards)"
echo "used_memory before: $before B, after: $after B"
echo "per user pushed since: $(( (after - before) / N )) B"
