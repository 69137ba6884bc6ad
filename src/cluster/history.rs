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
//! - broadcasts ([`broadcast`]) once per partition, not per user: the
//!   partition's next seq, the payload once, the seq in the partition's
//!   broadcast list ([`keys::broadcasts`], at most `entries_max`, expiring
//!   `retention_ms` after the newest) and the meta's `bcast` (newest) and
//!   `bfloor` (highest dropped). Every user of the partition has them: a
//!   user's newest seq is its own or `bcast`, whichever is later, and a
//!   resume merges its own entries with the broadcasts after `since`.
//! - per presence field, the users pushed since the partition's last
//!   broadcast ([`keys::since_broadcast_prefix`]): the next broadcast's
//!   doorbell names them, so a shard knows each device's previous seq
//!   without a read per user (see `super::broadcast`).
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

use super::broadcast::merge_by_seq;
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

/// The partition's epoch, created from the Redis time when its meta hash
/// is missing (shared by every script).
const EPOCH_LUA: &str = r"
local function epoch_of(meta)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', meta, 'epoch', epoch)
  end
  return epoch
end
";

/// KEYS[1] partition meta, KEYS[2] payload prefix (for the slot: the
/// payload key is `KEYS[2] .. seq`, in the same slot by its tag), KEYS[3]
/// the since-broadcast prefix, KEYS[4] the since-broadcast fields set,
/// then per recipient its history, user meta and presence keys. ARGV[1]
/// payload, ARGV[2] retention ms, ARGV[3] entries max, ARGV[4] user meta
/// TTL ms, then each recipient's user ID. Returns `{seq, epoch, {{previous
/// seq, presence fields}…}}`; a recipient's previous seq is its newest
/// push or the partition's newest broadcast, whichever is later.
const ADD_LUA: &str = r"
local epoch = epoch_of(KEYS[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local bcast = tonumber(redis.call('HGET', KEYS[1], 'bcast')) or 0
local retention = tonumber(ARGV[2])
local entries_max = tonumber(ARGV[3])
local meta_ttl = tonumber(ARGV[4])
redis.call('SET', KEYS[2] .. seq, ARGV[1], 'PX', retention)
local out = {}
for i = 5, #KEYS, 3 do
  local history, user, presence = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local name = ARGV[4 + (i - 2) / 3]
  local meta = redis.call('HMGET', user, 'epoch', 'last')
  local own = 0
  if meta[1] == epoch then
    own = tonumber(meta[2]) or 0
  else
    -- Another epoch's history (or none): it cannot be resumed from.
    redis.call('DEL', history, user)
    redis.call('HSET', user, 'epoch', epoch, 'floor', 0)
  end
  redis.call('HSET', user, 'last', seq)
  redis.call('PEXPIRE', user, meta_ttl)
  local n = redis.call('RPUSH', history, seq)
  if n == 1 and own > 0 then
    -- The list had expired (no push for the retention time): every
    -- entry up to the user's last is gone.
    redis.call('HSET', user, 'floor', own)
  elseif n > entries_max then
    redis.call('HSET', user, 'floor', redis.call('LPOP', history))
  end
  redis.call('PEXPIRE', history, retention)
  local fields = redis.call('HGETALL', presence)
  for j = 1, #fields, 2 do
    -- Where the user has devices now: the next broadcast's doorbell to
    -- that host names this push as the user's newest.
    local since = KEYS[3] .. fields[j]
    redis.call('HSET', since, name, seq)
    redis.call('PEXPIRE', since, meta_ttl)
    redis.call('SADD', KEYS[4], fields[j])
  end
  if #fields > 0 then
    redis.call('PEXPIRE', KEYS[4], meta_ttl)
  end
  out[#out + 1] = {math.max(own, bcast), fields}
end
return {seq, epoch, out}
";

/// KEYS[1] partition meta, KEYS[2] payload prefix, KEYS[3] broadcasts,
/// KEYS[4] since-broadcast prefix, KEYS[5] since-broadcast fields. ARGV[1]
/// payload, ARGV[2] retention ms, ARGV[3] entries max. Returns `{seq,
/// epoch, previous broadcast seq, {{presence field, {user, seq, …}}…}}`:
/// the users pushed since the previous broadcast, per presence field
/// (read and deleted: the next broadcast starts from this one).
const BROADCAST_LUA: &str = r"
local epoch = epoch_of(KEYS[1])
local previous = tonumber(redis.call('HGET', KEYS[1], 'bcast')) or 0
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local retention = tonumber(ARGV[2])
local entries_max = tonumber(ARGV[3])
redis.call('SET', KEYS[2] .. seq, ARGV[1], 'PX', retention)
local n = redis.call('RPUSH', KEYS[3], seq)
local dropped = 0
if n == 1 then
  -- The list had expired: every broadcast up to the previous is gone.
  dropped = previous
elseif n > entries_max then
  dropped = tonumber(redis.call('LPOP', KEYS[3]))
end
if dropped > (tonumber(redis.call('HGET', KEYS[1], 'bfloor')) or 0) then
  redis.call('HSET', KEYS[1], 'bfloor', dropped)
end
redis.call('PEXPIRE', KEYS[3], retention)
redis.call('HSET', KEYS[1], 'bcast', seq)
local since = {}
for _, field in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local key = KEYS[4] .. field
  since[#since + 1] = {field, redis.call('HGETALL', key)}
  redis.call('DEL', key)
end
redis.call('DEL', KEYS[5])
return {seq, epoch, previous, since}
";

/// KEYS[1] partition meta, KEYS[2] payload prefix, KEYS[3] history,
/// KEYS[4] user meta, KEYS[5] the partition's broadcasts. ARGV[1] since
/// epoch ('' without `since`), ARGV[2] since seq. Returns `{epoch, last
/// seq, recovered (-1 no since, 0, 1), {{seq, payload}…}, {{seq,
/// payload}…}}`: the user's own entries after `since` and the partition's
/// broadcasts after it, each oldest first (merged by the caller). The
/// user's last seq and floor are its own or the broadcasts', whichever is
/// later.
const RESUME_LUA: &str = r"
local epoch = epoch_of(KEYS[1])
local partition = redis.call('HMGET', KEYS[1], 'bcast', 'bfloor')
local last = tonumber(partition[1]) or 0
local floor = tonumber(partition[2]) or 0
local meta = redis.call('HMGET', KEYS[4], 'epoch', 'last', 'floor')
if meta[1] == epoch then
  last = math.max(last, tonumber(meta[2]) or 0)
  floor = math.max(floor, tonumber(meta[3]) or 0)
end
if ARGV[1] == '' then
  return {epoch, last, -1, {}, {}}
end
local since = tonumber(ARGV[2])
if ARGV[1] ~= epoch or since < floor or since > last then
  return {epoch, last, 0, {}, {}}
end
local newest = since
local function after(list)
  local entries = {}
  for _, s in ipairs(redis.call('LRANGE', list, 0, -1)) do
    local n = tonumber(s)
    if n > since then
      local payload = redis.call('GET', KEYS[2] .. s)
      if not payload then
        return nil
      end
      entries[#entries + 1] = {n, payload}
      newest = math.max(newest, n)
    end
  end
  return entries
end
local own = after(KEYS[3])
local all = after(KEYS[5])
-- A payload gone (retention), or a whole list expired while the metas
-- say there were pushes after `since`: they are lost.
if not own or not all or newest ~= last then
  return {epoch, last, 0, {}, {}}
end
return {epoch, last, 1, own, all}
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
    broadcast: Script,
    resume: Script,
    /// One call at a time per partition (by index modulo the table's
    /// size), in the order the calls were made: a partition's seq is taken
    /// inside the script, so two pushes to one user must reach Redis in
    /// the order their publisher sent them. Calls started one after the
    /// other can otherwise be reordered on the way (the cluster client
    /// routes each request as its own future), which gave later pushes
    /// lower seqs (the `cluster` bench counted it). tokio's `Mutex` is
    /// FIFO; different partitions still run all at once.
    partition_turns: Vec<tokio::sync::Mutex<()>>,
}

/// Size of [`Scripts::partition_turns`]: the default partition count, so
/// each partition has its own turn unless more are configured.
const PARTITION_TURNS: usize = crate::cluster::partitions::PARTITIONS_DEFAULT;

impl Default for Scripts {
    fn default() -> Scripts {
        let with_epoch = |body: &str| Script::new(&format!("{EPOCH_LUA}{body}"));
        Scripts {
            add: with_epoch(ADD_LUA),
            broadcast: with_epoch(BROADCAST_LUA),
            resume: with_epoch(RESUME_LUA),
            partition_turns: (0..PARTITION_TURNS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }
}

impl Scripts {
    /// Waits for `partition`'s turn (see `partition_turns`).
    async fn turn(&self, partition: usize) -> tokio::sync::MutexGuard<'_, ()> {
        self.partition_turns[partition % PARTITION_TURNS]
            .lock()
            .await
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
                let _turn = scripts.turn(partition).await;
                let mut invocation = scripts.add.prepare_invoke();
                invocation
                    .key(keys::partition_meta(&tag))
                    .key(keys::payload_prefix(&tag))
                    .key(keys::since_broadcast_prefix(&tag))
                    .key(keys::since_broadcast_fields(&tag));
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
                for user in &chunk {
                    invocation.arg(user);
                }
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
/// it); a user's newest seq is its own newest push or the partition's
/// newest broadcast, whichever is later. Read only: one pipeline of
/// `HMGET`s per partition touched (per
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
                .arg("epoch")
                .arg("bcast");
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
        let mut partition_meta = replies.next().unwrap_or_default().into_iter();
        let Some(epoch) = partition_meta.next().flatten() else {
            continue;
        };
        let epoch_value = parse_u64("epoch", &epoch)?;
        // Every user of the partition has its newest broadcast.
        let broadcast_seq = match partition_meta.next().flatten() {
            Some(seq) => parse_u64("bcast", &seq)?,
            None => 0,
        };
        for (&i, meta) in chunk.iter().zip(replies) {
            let mut meta = meta.into_iter();
            let (user_epoch, last) = (meta.next().flatten(), meta.next().flatten());
            let last = match (user_epoch, last) {
                (Some(e), Some(last)) if e == epoch => parse_u64("last", &last)?,
                // No push in this epoch (or another epoch's leftovers).
                _ => 0,
            };
            out[i] = Some((epoch_value, last.max(broadcast_seq)));
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
        .key(keys::user_meta(tag, user))
        .key(keys::broadcasts(tag));
    match since {
        Some((epoch, seq)) => invocation.arg(epoch.to_string()).arg(seq),
        None => invocation.arg("").arg(0),
    };
    type Entries = Vec<(u64, Vec<u8>)>;
    let (epoch, last_seq, recovered, own, broadcasts): (String, u64, i64, Entries, Entries) =
        invocation.invoke_async(conn).await?;
    let bytes = |entries: Entries| entries.into_iter().map(|(seq, p)| (seq, Bytes::from(p)));
    Ok(Resumed {
        epoch: parse_u64("epoch", &epoch)?,
        last_seq,
        recovered: match recovered {
            -1 => None,
            r => Some(r == 1),
        },
        replay: merge_by_seq(bytes(own), bytes(broadcasts)),
    })
}

/// A broadcast stored in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBroadcast {
    pub partition: usize,
    pub epoch: u64,
    pub seq: u64,
    /// The partition's broadcast before this one (0: none in this epoch).
    pub previous_seq: u64,
    /// Users of the partition pushed since that broadcast while they had
    /// devices somewhere: per presence field, each user's newest seq.
    pub pushed_since: Vec<(String, Vec<(String, u64)>)>,
}

/// Stores one broadcast: one script call per partition (each takes the
/// partition's next seq once, keeps the payload once and appends the seq
/// to the partition's broadcast list), all in flight at once. Fails as a
/// whole if any call fails; the partitions whose call succeeded have it
/// (their devices get it at the next doorbell, check or resume).
pub async fn broadcast<C: ConnectionLike + Clone + Send + 'static>(
    conn: &C,
    scripts: &Arc<Scripts>,
    partitions: &Partitions,
    payload: Bytes,
    limits: HistoryLimits,
) -> redis::RedisResult<Vec<StoredBroadcast>> {
    let mut calls = tokio::task::JoinSet::new();
    for partition in 0..partitions.count() {
        let tag = partitions.tag(partition).to_owned();
        let (mut conn, scripts, payload) = (conn.clone(), scripts.clone(), payload.clone());
        calls.spawn(async move {
            let _turn = scripts.turn(partition).await;
            let mut invocation = scripts.broadcast.prepare_invoke();
            invocation
                .key(keys::partition_meta(&tag))
                .key(keys::payload_prefix(&tag))
                .key(keys::broadcasts(&tag))
                .key(keys::since_broadcast_prefix(&tag))
                .key(keys::since_broadcast_fields(&tag))
                .arg(&payload[..])
                .arg(limits.retention_ms)
                .arg(limits.entries_max);
            let reply: (u64, String, u64, Vec<(String, Vec<String>)>) =
                invocation.invoke_async(&mut conn).await?;
            Ok::<_, redis::RedisError>((partition, reply))
        });
    }
    let mut stored = Vec::with_capacity(calls.len());
    while let Some(joined) = calls.join_next().await {
        let (partition, (seq, epoch, previous_seq, since)) = joined.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "broadcast script task ended",
                e.to_string(),
            ))
        })??;
        let pushed_since = since
            .into_iter()
            .map(|(field, pairs)| {
                let users = pairs
                    .chunks_exact(2)
                    .map(|p| Ok((p[0].clone(), parse_u64("seq", &p[1])?)))
                    .collect::<redis::RedisResult<_>>()?;
                Ok((field, users))
            })
            .collect::<redis::RedisResult<_>>()?;
        stored.push(StoredBroadcast {
            partition,
            epoch: parse_u64("epoch", &epoch)?,
            seq,
            previous_seq,
            pushed_since,
        });
    }
    stored.sort_unstable_by_key(|s| s.partition);
    Ok(stored)
}
