//! Seq, epoch and history in Redis: what a device resumes from on any host.
//!
//! Per partition ([`super::partitions`], one Redis Cluster slot each):
//! - a meta hash ([`keys::partition_meta`]) with the partition's `seq`
//!   and `epoch`. Every push to users of the partition takes the next seq
//!   once, so a user's seqs strictly increase (with gaps: other users'
//!   pushes) whichever host took the push. The epoch is the Redis time
//!   when the hash was created; a hash lost with its node's data comes
//!   back with a new epoch, and a device resuming across the loss is told
//!   `recovered:false`, never replayed a wrong history.
//! - each push's payload once ([`keys::payload_prefix`] + seq), expiring
//!   after `retention_ms`: a 300-user push stores its bytes once per
//!   partition touched, not per recipient.
//! - per user a list of its seqs ([`keys::history`], at most
//!   `entries_max`, expiring `retention_ms` after its newest) and a meta
//!   hash ([`keys::user_meta`]: the epoch it belongs to, the user's newest
//!   seq, the highest seq the entry limit dropped), kept
//!   [`USER_META_TTL_MS`] so a resume after a long absence is judged, not
//!   guessed.
//!
//! One script call per partition touched per push ([`add`]): all calls
//! are in flight at once on the multiplexed connection(s), so a push costs
//! about one round trip per Redis node, whatever its recipient count. The
//! same call returns each recipient's previous seq (for gap repair on the
//! hosts that deliver) and its presence fields (where to ring).
//!
//! Durability (README, "Running several hosts"): a push is in Redis when
//! the script returned; a Redis failover may lose the last writes a
//! replica had not received. If that loses a partition's meta hash, the
//! new epoch says `recovered:false`; if the meta survives but the history
//! does not, the missing payloads or entries make the resume
//! `recovered:false` too.

use super::keys;
use super::partitions::Partitions;
use bytes::Bytes;
use redis::aio::ConnectionLike;
use redis::Script;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How long a user's history meta outlives its last push: a device that
/// resumes within this is told exactly whether it lost something; after
/// it, only a device that had seen nothing (`since` seq 0) is recovered.
pub const USER_META_TTL_MS: u64 = 7 * 24 * 3_600_000;
/// Recipients in one script call at most, so one call holds Redis for a
/// bounded time (about a millisecond); a partition's larger share takes
/// several calls (each its own seq).
pub const USERS_PER_CALL_MAX: usize = 512;

/// KEYS[1] partition meta, KEYS[2] payload prefix (for the slot: the
/// payload key is `KEYS[2] .. seq`, in the same slot by its tag), then
/// per recipient its history, user meta and presence keys. ARGV[1]
/// payload, ARGV[2] retention ms, ARGV[3] entries max, ARGV[4] user meta
/// TTL ms. Returns `{seq, epoch, {{previous seq, presence fields}…}}`.
const ADD_LUA: &str = r"
local function epoch_of(meta)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', meta, 'epoch', epoch)
  end
  return epoch
end
local epoch = epoch_of(KEYS[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local retention = tonumber(ARGV[2])
local entries_max = tonumber(ARGV[3])
local meta_ttl = tonumber(ARGV[4])
redis.call('SET', KEYS[2] .. seq, ARGV[1], 'PX', retention)
local out = {}
for i = 3, #KEYS, 3 do
  local history, user, presence = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local meta = redis.call('HMGET', user, 'epoch', 'last')
  local previous = 0
  if meta[1] == epoch then
    previous = tonumber(meta[2]) or 0
  else
    -- Another epoch's history (or none): it cannot be resumed from.
    redis.call('DEL', history, user)
    redis.call('HSET', user, 'epoch', epoch, 'floor', 0)
  end
  redis.call('HSET', user, 'last', seq)
  redis.call('PEXPIRE', user, meta_ttl)
  if redis.call('RPUSH', history, seq) > entries_max then
    redis.call('HSET', user, 'floor', redis.call('LPOP', history))
  end
  redis.call('PEXPIRE', history, retention)
  out[#out + 1] = {previous, redis.call('HGETALL', presence)}
end
return {seq, epoch, out}
";

/// KEYS[1] partition meta, KEYS[2] payload prefix, KEYS[3] history,
/// KEYS[4] user meta. ARGV[1] since epoch ('' without `since`), ARGV[2]
/// since seq. Returns `{epoch, last seq, recovered (-1 no since, 0, 1),
/// {{seq, payload}…}}` (the entries after `since`, oldest first).
const RESUME_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local meta = redis.call('HMGET', KEYS[4], 'epoch', 'last', 'floor')
local last, floor = 0, 0
if meta[1] == epoch then
  last = tonumber(meta[2]) or 0
  floor = tonumber(meta[3]) or 0
end
if ARGV[1] == '' then
  return {epoch, last, -1, {}}
end
local since = tonumber(ARGV[2])
if ARGV[1] ~= epoch or since < floor or since > last then
  return {epoch, last, 0, {}}
end
local entries = {}
local newest = since
for _, s in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  local n = tonumber(s)
  if n > since then
    local payload = redis.call('GET', KEYS[2] .. s)
    if not payload then
      return {epoch, last, 0, {}}
    end
    entries[#entries + 1] = {n, payload}
    newest = n
  end
end
-- The whole list expired (no push for the retention time) while the
-- meta says there were pushes after `since`: they are gone.
if newest ~= last then
  return {epoch, last, 0, {}}
end
return {epoch, last, 1, entries}
";

/// How long pushes are kept, as for the in-memory home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub retention_ms: u64,
    pub entries_max: usize,
}

/// One recipient of a stored push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub user: String,
    /// The user's seq before this push (0: none in this epoch). A shard
    /// that last delivered another seq to the user missed something.
    pub previous_seq: u64,
    /// The user's presence fields (`<host_id>/<instance>/<shard>` →
    /// devices), live or not: the caller filters by live instances.
    pub locations: Vec<(String, u32)>,
}

/// One script call's result: a push stored for users of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub partition: usize,
    pub epoch: u64,
    pub seq: u64,
    pub recipients: Vec<Recipient>,
}

/// What a device resuming (or just joining) is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    pub epoch: u64,
    /// The user's newest seq in this epoch (0: none).
    pub last_seq: u64,
    /// Only with `since`: was nothing after it lost?
    pub recovered: Option<bool>,
    /// When recovered: the pushes after `since`, oldest first.
    pub replay: Vec<(u64, Bytes)>,
}

/// The scripts, loaded once per process (redis-rs sends `EVALSHA` and
/// falls back to `EVAL` after a `NOSCRIPT`, e.g. on a new master).
pub struct Scripts {
    add: Script,
    resume: Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts {
            add: Script::new(ADD_LUA),
            resume: Script::new(RESUME_LUA),
        }
    }
}

fn parse_u64(what: &str, text: &str) -> redis::RedisResult<u64> {
    text.parse().map_err(|_| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected history script reply",
            format!("{what}: {text:?}"),
        ))
    })
}

/// Stores one push for `users` (valid user IDs, distinct): one script call
/// per partition touched (per [`USERS_PER_CALL_MAX`] users), all in flight
/// at once. Fails as a whole if any call fails; the calls that succeeded
/// have stored the push for their users (a retry stores it again, with a
/// new seq: at-least-once, de-duplicated by nobody — the caller answers
/// the push as failed and the publisher decides).
pub async fn add<C: ConnectionLike + Clone + Send + 'static>(
    conn: &C,
    scripts: &Arc<Scripts>,
    partitions: &Partitions,
    users: &[String],
    payload: Bytes,
    limits: HistoryLimits,
) -> redis::RedisResult<Vec<Stored>> {
    let mut by_partition: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for user in users {
        by_partition
            .entry(partitions.of(user))
            .or_default()
            .push(user.clone());
    }
    let meta_ttl_ms = USER_META_TTL_MS.max(limits.retention_ms);
    let mut calls = tokio::task::JoinSet::new();
    let mut order = 0usize;
    for (partition, mut share) in by_partition {
        let tag = partitions.tag(partition).to_owned();
        while !share.is_empty() {
            let rest = share.split_off(share.len().min(USERS_PER_CALL_MAX));
            let chunk = std::mem::replace(&mut share, rest);
            let (mut conn, scripts, payload, tag) =
                (conn.clone(), scripts.clone(), payload.clone(), tag.clone());
            calls.spawn(async move {
                let mut invocation = scripts.add.prepare_invoke();
                invocation
                    .key(keys::partition_meta(&tag))
                    .key(keys::payload_prefix(&tag));
                for user in &chunk {
                    invocation
                        .key(keys::history(&tag, user))
                        .key(keys::user_meta(&tag, user))
                        .key(keys::presence(&tag, user));
                }
                invocation
                    .arg(&payload[..])
                    .arg(limits.retention_ms)
                    .arg(limits.entries_max)
                    .arg(meta_ttl_ms);
                let reply: (u64, String, Vec<(u64, Vec<String>)>) =
                    invocation.invoke_async(&mut conn).await?;
                Ok::<_, redis::RedisError>((order, partition, chunk, reply))
            });
            order += 1;
        }
    }
    let mut stored = Vec::with_capacity(calls.len());
    while let Some(joined) = calls.join_next().await {
        let (order, partition, chunk, (seq, epoch, answers)) = joined.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "history script task ended",
                e.to_string(),
            ))
        })??;
        let recipients = chunk
            .into_iter()
            .zip(answers)
            .map(|(user, (previous_seq, fields))| {
                let locations = fields
                    .chunks_exact(2)
                    .map(|f| Ok((f[0].clone(), parse_u64("devices", &f[1])? as u32)))
                    .collect::<redis::RedisResult<_>>()?;
                Ok(Recipient {
                    user,
                    previous_seq,
                    locations,
                })
            })
            .collect::<redis::RedisResult<_>>()?;
        let epoch = parse_u64("epoch", &epoch)?;
        stored.push((
            order,
            Stored {
                partition,
                epoch,
                seq,
                recipients,
            },
        ));
    }
    // In partition order, whichever call answered first.
    stored.sort_unstable_by_key(|(order, _)| *order);
    Ok(stored.into_iter().map(|(_, s)| s).collect())
}

/// Where each of `users`' histories stands, for the shards' periodic
/// check (`gateway/history_check.rs`): per user, in order, the
/// partition's epoch and the user's newest seq in it (0: none in this
/// epoch), or `None` when the partition's meta hash is missing (Redis lost
/// it). Read only: one pipeline of `HMGET`s per partition touched (per
/// [`USERS_PER_CALL_MAX`] users), all in flight at once, so a batch costs
/// about one round trip per Redis node.
pub async fn check<C: ConnectionLike + Clone + Send + 'static>(
    conn: &C,
    partitions: &Partitions,
    users: &[String],
) -> redis::RedisResult<Vec<Option<(u64, u64)>>> {
    let mut by_partition: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, user) in users.iter().enumerate() {
        by_partition.entry(partitions.of(user)).or_default().push(i);
    }
    let mut calls = tokio::task::JoinSet::new();
    for (partition, share) in by_partition {
        let tag = partitions.tag(partition);
        for chunk in share.chunks(USERS_PER_CALL_MAX) {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(keys::partition_meta(tag))
                .arg("epoch");
            for &i in chunk {
                pipe.cmd("HMGET")
                    .arg(keys::user_meta(tag, &users[i]))
                    .arg("epoch")
                    .arg("last");
            }
            let (mut conn, chunk) = (conn.clone(), chunk.to_vec());
            calls.spawn(async move {
                let reply: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
                Ok::<_, redis::RedisError>((chunk, reply))
            });
        }
    }
    let mut out = vec![None; users.len()];
    while let Some(joined) = calls.join_next().await {
        let (chunk, reply) = joined.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "history check task ended",
                e.to_string(),
            ))
        })??;
        let mut replies = reply.into_iter();
        let epoch = replies.next().and_then(|r| r.into_iter().next().flatten());
        let Some(epoch) = epoch else {
            continue;
        };
        let epoch_value = parse_u64("epoch", &epoch)?;
        for (&i, meta) in chunk.iter().zip(replies) {
            let mut meta = meta.into_iter();
            let (user_epoch, last) = (meta.next().flatten(), meta.next().flatten());
            let last = match (user_epoch, last) {
                (Some(e), Some(last)) if e == epoch => parse_u64("last", &last)?,
                // No push in this epoch (or another epoch's leftovers).
                _ => 0,
            };
            out[i] = Some((epoch_value, last));
        }
    }
    Ok(out)
}

/// Where `user`'s history stands, and with `since` (epoch, seq) whether
/// nothing after it was lost and what to replay.
pub async fn resume<C: ConnectionLike>(
    conn: &mut C,
    scripts: &Scripts,
    partitions: &Partitions,
    user: &str,
    since: Option<(u64, u64)>,
) -> redis::RedisResult<Resumed> {
    let tag = partitions.tag(partitions.of(user));
    let mut invocation = scripts.resume.prepare_invoke();
    invocation
        .key(keys::partition_meta(tag))
        .key(keys::payload_prefix(tag))
        .key(keys::history(tag, user))
        .key(keys::user_meta(tag, user));
    match since {
        Some((epoch, seq)) => invocation.arg(epoch.to_string()).arg(seq),
        None => invocation.arg("").arg(0),
    };
    let (epoch, last_seq, recovered, entries): (String, u64, i64, Vec<(u64, Vec<u8>)>) =
        invocation.invoke_async(conn).await?;
    Ok(Resumed {
        epoch: parse_u64("epoch", &epoch)?,
        last_seq,
        recovered: match recovered {
            -1 => None,
            r => Some(r == 1),
        },
        replay: entries
            .into_iter()
            .map(|(seq, payload)| (seq, Bytes::from(payload)))
            .collect(),
    })
}
