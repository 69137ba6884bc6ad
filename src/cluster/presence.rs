//! Cluster-wide presence in Redis: where each user's devices are.
//!
//! - Each user has one hash, `pushgate:p:{<partition>}:presence:<user>`,
//!   with a field
//!   per host instance and shard that holds devices of the user:
//!   `<host_id>/<instance>/<shard>` → device count. A shard writes only its
//!   own fields, batched (see `PresenceOutbox`), so a connect costs one
//!   pipelined `HSET` and no read.
//! - A field counts only while its host instance is live: listed in
//!   `pushgate:hosts` (a sorted set scored by the Redis time at which each
//!   instance lapses, renewed by every heartbeat). A host that dies
//!   vanishes from presence within `redis_host_ttl_ms` plus one heartbeat
//!   interval, without anyone rewriting its users' hashes; the fields it
//!   left are deleted by the next reader that finds them dead, or by the
//!   sweeper.
//! - Each write also keeps the instance's index of the users it wrote
//!   (per partition, in buckets: `keys::presence_index`), so the fields a dead
//!   instance left for users nobody asks about are swept
//!   ([`super::sweeper`]); lapsed instances stay in `pushgate:hosts` until
//!   swept.
//! - Cost: O(hosts) per heartbeat, not O(users); one small hash per online
//!   user and one compact hash entry per user in its host's index
//!   (measured in the README).

use super::connect::Conn;
use super::keys;
use super::partitions::Partitions;
use redis::{AsyncCommands, Script};
use std::collections::{HashMap, HashSet};

/// KEYS[1] hosts; ARGV[1] `<host_id>/<instance>`; ARGV[2] TTL ms.
/// Renews this instance and returns every live one (Redis's clock, so
/// hosts' clocks need not agree). Lapsed members stay for the sweeper,
/// which removes each once its fields are gone.
pub fn heartbeat_script() -> Script {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
",
    )
}

/// Marks `instance` lapsed now (a clean stop, or a move to a new
/// instance): it stops counting at once and the sweeper removes what it
/// left.
pub async fn mark_lapsed(conn: &mut Conn, instance: &str) -> redis::RedisResult<()> {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(keys::HOSTS_KEY).arg(0).arg(instance);
    zadd.query_async(conn).await
}

/// KEYS[1] hosts → every live instance.
pub fn live_script() -> Script {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
",
    )
}

/// Live instances, as last read from Redis.
pub type Live = HashSet<String>;

/// Reads the live instances now.
pub async fn read_live(conn: &mut Conn) -> redis::RedisResult<Live> {
    let members: Vec<String> = live_script()
        .key(keys::HOSTS_KEY)
        .invoke_async(conn)
        .await?;
    Ok(members.into_iter().collect())
}

/// Writes one shard's device counts (0 deletes the field) and keeps the
/// instance's index of its users with them, one pipeline per Redis
/// Cluster slot (standalone: one in all), all in flight at once.
pub async fn write(
    conn: &Conn,
    partitions: &Partitions,
    instance: &str,
    shard: usize,
    devices: &[(String, u32)],
) -> redis::RedisResult<()> {
    let field = keys::presence_field(instance, shard);
    let cluster = matches!(conn, Conn::Cluster(_));
    let mut by_slot: HashMap<u16, redis::Pipeline> = HashMap::new();
    for (user, count) in devices {
        let tag = partitions.tag(partitions.of(user));
        let key = keys::presence(tag, user);
        let index = keys::presence_index(tag, instance, index_bucket(partitions, user));
        let slot = if cluster {
            keys::slot(key.as_bytes())
        } else {
            0
        };
        let pipe = by_slot.entry(slot).or_default();
        if *count > 0 {
            pipe.hset(key, &field, *count).ignore();
            pipe.hset(index, user, shard).ignore();
        } else {
            pipe.hdel(key, &field).ignore();
            pipe.hdel(index, user).ignore();
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for (_, pipe) in by_slot {
        let mut conn = conn.clone();
        calls.spawn(async move { pipe.query_async::<()>(&mut conn).await });
    }
    let mut result = Ok(());
    while let Some(done) = calls.join_next().await {
        if let Ok(Err(e)) = done {
            result = Err(e);
        }
    }
    result
}

/// The bucket of `user` in its partition's presence index: hash bits the
/// partition did not use.
pub fn index_bucket(partitions: &Partitions, user: &str) -> usize {
    let hash = crate::route::user_hash(user);
    ((hash / partitions.count() as u64) % keys::PRESENCE_INDEX_BUCKETS as u64) as usize
}

/// A user's devices on every live host: (online, devices). Fields of
/// instances not in `live` make it read the live set again (a host may
/// have started since); those still dead are deleted.
pub async fn count(
    conn: &mut Conn,
    partitions: &Partitions,
    user: &str,
    live: &Live,
) -> redis::RedisResult<(bool, u32)> {
    let key = keys::presence(partitions.tag(partitions.of(user)), user);
    let fields: HashMap<String, u32> = conn.hgetall(&key).await?;
    let is_live =
        |live: &Live, field: &str| keys::instance_of_field(field).is_some_and(|i| live.contains(i));
    let fresh;
    let live = if fields.keys().all(|f| is_live(live, f)) {
        live
    } else {
        fresh = read_live(conn).await?;
        let dead: Vec<&String> = fields.keys().filter(|f| !is_live(&fresh, f)).collect();
        if !dead.is_empty() {
            let _: () = conn.hdel(&key, dead).await?;
        }
        &fresh
    };
    let devices: u32 = fields
        .iter()
        .filter(|(f, _)| is_live(live, f))
        .map(|(_, n)| *n)
        .sum();
    Ok((devices > 0, devices))
}
