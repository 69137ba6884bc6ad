//! What the shards send to the Redis thread: a bounded queue they never
//! wait on. A full queue hands the message back; the caller answers its
//! asker with a clear error (a query) or keeps the work for its next tick
//! (presence updates), so nothing grows without bound and nothing waits.

use crate::gateway::publish::tickets::Ticket;
use bytes::Bytes;
use shard::ConnId;

/// Messages waiting for the Redis thread, over all shards. At this depth
/// Redis is far behind (each message is one pipelined batch), and new
/// work is better refused than queued.
pub const QUEUE_MAX: usize = 4_096;
/// Users in one presence update at most.
pub const PRESENCE_BATCH_MAX: usize = 1_024;
/// Users in one history check at most (`ToRedis::Check`).
pub const CHECK_USERS_MAX: usize = 1_024;

pub enum ToRedis {
    /// Count `user`'s devices on every live host; the answer goes to
    /// `shard` as `Msg::PresenceAnswer` (or `Msg::RedisFailed`) with
    /// `ticket`.
    Presence {
        shard: usize,
        ticket: Ticket,
        user: String,
    },
    /// Store a push in each of `users`' histories (valid, distinct user
    /// IDs), hand this host's share to its shards and ring the other
    /// hosts' doorbells; the counts go to `shard` as `Msg::Pushed` (or
    /// `Msg::RedisFailed`) with `ticket`.
    Push {
        shard: usize,
        ticket: Ticket,
        users: Vec<String>,
        payload: Bytes,
    },
    /// Store a broadcast once per partition (`history::broadcast`), hand
    /// it to this host's shards and ring one doorbell per other live host;
    /// the counts (hosts reached) go to `shard` as `Msg::Pushed` (or
    /// `Msg::RedisFailed`) with `ticket`.
    Broadcast {
        shard: usize,
        ticket: Ticket,
        payload: Bytes,
    },
    /// Read `user`'s history (`history::resume`, after `since` = (epoch,
    /// seq) if given) for the device on `conn`: its welcome, or the repair
    /// of a gap. The answer goes to `shard` as `Msg::Resumed` with `conn`
    /// and `read`, which the shard matches against what the device still
    /// waits for.
    Resume {
        shard: usize,
        conn: ConnId,
        read: u64,
        user: String,
        since: Option<(u64, u64)>,
    },
    /// Read where each of `users`' histories stands (`history::check`: the
    /// partition's epoch and the user's newest seq) for `shard`'s periodic
    /// check; the answer goes to `shard` as `Msg::Checked` with `batch`.
    /// At most [`CHECK_USERS_MAX`] distinct users.
    Check {
        shard: usize,
        batch: u64,
        users: Vec<String>,
    },
    /// The devices each user now has on `shard` (0: none left).
    PresenceUpdate {
        shard: usize,
        devices: Vec<(String, u32)>,
    },
}

/// A shard's end of the queue to the Redis thread.
#[derive(Clone)]
pub struct RedisLink {
    tx: tokio::sync::mpsc::Sender<ToRedis>,
    answer_timeout_ms: u64,
    check_interval_ms: u64,
}

impl RedisLink {
    /// The link and the Redis thread's end. `redis_timeout_ms` bounds each
    /// Redis call of the thread; a shard waits somewhat longer for an
    /// answer ([`RedisLink::answer_timeout_ms`]). `check_interval_ms`: how
    /// often a shard starts a round of its history check
    /// (`redis_check_interval_ms`).
    pub fn bounded(
        redis_timeout_ms: u64,
        check_interval_ms: u64,
    ) -> (RedisLink, tokio::sync::mpsc::Receiver<ToRedis>) {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
        // The call's own timeout, time in the queue and in the shard's
        // inbox: an answer later than this is not coming.
        let answer_timeout_ms = redis_timeout_ms.saturating_mul(4) + 1_000;
        (
            RedisLink {
                tx,
                answer_timeout_ms,
                check_interval_ms,
            },
            rx,
        )
    }

    /// How long a shard waits for the Redis thread's answer to a read
    /// before it gives up on it.
    pub fn answer_timeout_ms(&self) -> u64 {
        self.answer_timeout_ms
    }

    /// The least time between the starts of two rounds of a shard's
    /// history check.
    pub fn check_interval_ms(&self) -> u64 {
        self.check_interval_ms
    }

    /// Queues `msg` without waiting; `Err(msg)` when the queue is full or
    /// the Redis thread has stopped.
    pub fn try_send(&self, msg: ToRedis) -> Result<(), ToRedis> {
        self.tx.try_send(msg).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(msg)
            | tokio::sync::mpsc::error::TrySendError::Closed(msg) => msg,
        })
    }
}
