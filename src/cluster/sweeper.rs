//! The presence sweeper: removes the presence fields a lapsed host
//! instance left behind for users nobody asks about.
//!
//! A reader deletes the dead fields it finds ([`super::presence::count`]),
//! but a user nobody asks about keeps them. So:
//!
//! - Whenever a host writes a user's presence field it also writes the user
//!   into its instance's index of that partition, one of 64 buckets,
//!   `pushgate:p:{<partition>}:written:<host_id>/<instance>:<bucket>` (a
//!   hash of user → shard, small enough for Redis's compact encoding; a
//!   count of 0 removes the user again). Same tag, so the same slot as the
//!   users' presence hashes: one script per partition reaches both.
//! - An instance that stops renewing itself stays in `pushgate:hosts` with
//!   a score in the past (the heartbeat no longer removes lapsed members;
//!   readers only count members whose score lies ahead). A clean stop, or
//!   a move to a new instance after an outage, sets the old member's score
//!   to 0: lapsed now, swept like a dead one.
//! - Every `interval` each host looks for the oldest lapsed instance; if
//!   there is one, the host that holds the sweep lock
//!   (`pushgate:sweeper`, taken with `SET NX PX`, renewed while it sweeps,
//!   lapsing after `lock_ttl_ms` if its holder dies) runs one step: per
//!   partition, one script takes whole index buckets until it has
//!   [`USERS_PER_PARTITION_STEP`] users (at least one bucket), deletes
//!   their fields of that instance (`HDEL` of the field the bucket names)
//!   and the buckets, all partitions in flight at once. When no bucket is
//!   left the instance leaves `pushgate:hosts`.
//!
//! Bound: one step per `interval` on the whole cluster, one script call
//! per partition, each at most 64 users plus one bucket (a bucket holds
//! about users ÷ 8,192: ≤ 128 up to a million users per host), so about
//! 16,000 users a step; a dead instance that had `U` users online is gone
//! after about `U / 8,192` steps (a million users: ~123 steps, 3 minutes
//! with the default 5 s TTL's 1.7 s interval). An instance is swept only after it lapsed, and a
//! lapsed instance name is never renewed again (its host moves to a new
//! instance, see `thread.rs`), so the sweep never races the owner's writes
//! — except a write that was already on its way; the owner marks that old
//! instance lapsed again when it moves, and it is swept again.

use super::connect::Conn;
use super::host_claim::{self, Renewed};
use super::keys;
use super::partitions::Partitions;
use redis::Script;
use std::time::Duration;

/// Users popped from one partition's index per step.
pub const USERS_PER_PARTITION_STEP: usize = 64;

/// The lock that makes one host at a time sweep.
pub const LOCK_KEY: &str = "pushgate:sweeper";

/// KEYS[1] hosts → the oldest lapsed instance (an empty list if none).
pub fn oldest_lapsed_script() -> Script {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 1)
",
    )
}

/// KEYS[1] the prefix of an instance's index buckets in one partition (for
/// the slot; bucket `b` is `KEYS[1] .. b`); ARGV[1] the partition's
/// presence key prefix, ARGV[2] the instance (`<host_id>/<instance>`),
/// ARGV[3] users to take at least (whole buckets), ARGV[4] buckets.
/// → {users taken, buckets left, fields deleted}.
///
/// The keys after KEYS[1] are not declared (their names come from the
/// index), but they carry its hash tag, so they live in its slot, which is
/// what Redis Cluster checks for a script's undeclared keys (the history
/// scripts name payload keys the same way).
pub fn sweep_script() -> Script {
    Script::new(
        r"
local want = tonumber(ARGV[3])
local users, left, deleted = 0, 0, 0
for b = 0, tonumber(ARGV[4]) - 1 do
  local index = KEYS[1] .. b
  if redis.call('EXISTS', index) == 1 then
    if users >= want then
      left = left + 1
    else
      local entries = redis.call('HGETALL', index)
      for i = 1, #entries, 2 do
        local field = ARGV[2] .. '/' .. entries[i + 1]
        deleted = deleted + redis.call('HDEL', ARGV[1] .. entries[i], field)
      end
      users = users + #entries / 2
      redis.call('DEL', index)
    end
  end
end
return {users, left, deleted}
",
    )
}

/// What one step did to one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub users: u64,
    pub fields_deleted: u64,
    /// Index buckets of the instance still there.
    pub left: u64,
}

/// The oldest lapsed instance, if any.
pub async fn oldest_lapsed(conn: &mut Conn) -> redis::RedisResult<Option<String>> {
    let lapsed: Vec<String> = oldest_lapsed_script()
        .key(keys::HOSTS_KEY)
        .invoke_async(conn)
        .await?;
    Ok(lapsed.into_iter().next())
}

/// Takes or renews the sweep lock for `holder`: true if it is ours.
pub async fn hold_lock(conn: &mut Conn, holder: &str, ttl_ms: u64) -> redis::RedisResult<bool> {
    let script = host_claim::renew_script();
    let mut invocation = script.key(LOCK_KEY);
    invocation.arg(holder).arg(ttl_ms);
    let reply = invocation.invoke_async::<(i64, String)>(conn).await?;
    Ok(!matches!(Renewed::from_reply(reply), Renewed::Lost { .. }))
}

/// One step over `instance`: every partition's script in flight at once.
pub async fn step(
    conn: &Conn,
    partitions: &Partitions,
    instance: &str,
) -> redis::RedisResult<Step> {
    let script = sweep_script();
    let mut calls = tokio::task::JoinSet::new();
    for p in 0..partitions.count() {
        let tag = partitions.tag(p);
        let index = keys::presence_index_prefix(tag, instance);
        let presence_prefix = keys::presence(tag, "");
        let instance = instance.to_owned();
        let (script, mut conn) = (script.clone(), conn.clone());
        calls.spawn(async move {
            let mut invocation = script.key(index);
            invocation
                .arg(presence_prefix)
                .arg(instance)
                .arg(USERS_PER_PARTITION_STEP)
                .arg(keys::PRESENCE_INDEX_BUCKETS);
            invocation.invoke_async::<(u64, u64, u64)>(&mut conn).await
        });
    }
    let mut done = Step::default();
    let mut result = Ok(());
    while let Some(call) = calls.join_next().await {
        match call {
            Ok(Ok((users, left, deleted))) => {
                done.users += users;
                done.left += left;
                done.fields_deleted += deleted;
            }
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(redis::RedisError::from(std::io::Error::other(e))),
        }
    }
    result.map(|()| done)
}

/// Removes a swept instance from the live hosts' set.
pub async fn forget(conn: &mut Conn, instance: &str) -> redis::RedisResult<()> {
    let mut zrem = redis::cmd("ZREM");
    zrem.arg(keys::HOSTS_KEY).arg(instance);
    zrem.query_async(conn).await
}

/// The sweeper's loop, for the Redis thread: every `interval`, at most one
/// step (see the module's doc). Errors are counted by the caller's
/// `on_error` and tried again at the next interval.
pub async fn run(
    mut conn: Conn,
    partitions: &Partitions,
    holder: String,
    interval: Duration,
    timeout: Duration,
    lock_ttl_ms: u64,
    on_error: impl Fn(),
) {
    // The instance being swept and what was deleted from it so far (for
    // the log line at the end).
    let mut current: Option<(String, Step)> = None;
    loop {
        tokio::time::sleep(interval).await;
        let one = async {
            let Some(instance) = oldest_lapsed(&mut conn).await? else {
                return Ok(None);
            };
            if !hold_lock(&mut conn, &holder, lock_ttl_ms).await? {
                return Ok(None);
            }
            let done = step(&conn, partitions, &instance).await?;
            if done.left == 0 {
                forget(&mut conn, &instance).await?;
            }
            Ok::<_, redis::RedisError>(Some((instance, done)))
        };
        let (instance, done) = match tokio::time::timeout(timeout * 4, one).await {
            Ok(Ok(Some(swept))) => swept,
            Ok(Ok(None)) => continue,
            _ => {
                on_error();
                continue;
            }
        };
        let total = match current.take() {
            Some((name, mut total)) if name == instance => {
                total.users += done.users;
                total.fields_deleted += done.fields_deleted;
                total
            }
            _ => Step { left: 0, ..done },
        };
        if done.left == 0 {
            tracing::info!(
                %instance,
                users = total.users,
                fields_deleted = total.fields_deleted,
                "Redis: swept the presence a lapsed host instance left"
            );
        } else {
            current = Some((instance, total));
        }
    }
}
