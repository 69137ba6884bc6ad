//! Messages between a process's gateway shards (over `shard`'s mesh).

use super::home::Counts;
use super::publish::tickets::Ticket;
use crate::push::wire::ShardStatus;
use crate::takeover::resends::RequestKey;
use crate::upgrade::{Since, Transport};
use bytes::Bytes;

pub enum Msg {
    /// A connection moving to its user's home shard, with its upgrade.
    Handoff(Box<Handed>),
    /// A device moved from another process (a live upgrade), with its
    /// state: the state of `shard::Ctx::adopt`, never sent between shards.
    Moved(Box<crate::takeover::wire::ConnectionRecord>),
    /// Deliver to these users (all homed on the receiving shard).
    Push {
        ticket: Ticket,
        users: Vec<String>,
        payload: Bytes,
        /// The publisher's name for the request, forwarded with it while
        /// a live upgrade forwards pushes (`takeover::resends`).
        origin: Option<RequestKey>,
    },
    /// Deliver to every connected user of the receiving shard.
    Broadcast {
        ticket: Ticket,
        payload: Bytes,
    },
    /// The counts of a `Push` / `Broadcast` part, back to the origin.
    Pushed {
        ticket: Ticket,
        counts: Counts,
    },
    StatusQuery {
        ticket: Ticket,
    },
    StatusPart {
        ticket: Ticket,
        status: ShardStatus,
    },
    PresenceQuery {
        ticket: Ticket,
        user: String,
    },
    PresenceAnswer {
        ticket: Ticket,
        online: bool,
        devices: u32,
    },
    /// From the Redis thread: a request it took could not be served.
    RedisFailed {
        ticket: Ticket,
        why: String,
    },
    /// From the Redis thread: a push stored in Redis for users with
    /// devices on this shard (several hosts; `cluster::gap` decides per
    /// device).
    Bell(Box<crate::cluster::doorbell::Bell>),
    /// From the Redis thread: a broadcast stored in Redis, for every user
    /// with devices on this shard (several hosts; one bell shared by every
    /// shard of the host).
    BroadcastBell(std::sync::Arc<crate::cluster::broadcast::BroadcastBell>),
    /// From the Redis thread: the read of a device's user history asked
    /// with `ToRedis::Resume` (its welcome, or a gap repair), or why it
    /// failed. Dropped unless `conn` (generation included) still waits for
    /// `read`.
    Resumed {
        conn: shard::ConnId,
        read: u64,
        result: Result<Box<crate::cluster::history::Resumed>, String>,
    },
    /// From the Redis thread: the answer to `ToRedis::Check` number `batch`
    /// (per user asked, in order: the partition's epoch and the user's
    /// newest seq, `None` if the partition's meta is gone), or why it
    /// failed. Dropped unless the shard still waits for `batch`.
    Checked {
        batch: u64,
        result: Result<Vec<Option<(u64, u64)>>, String>,
    },
    /// From the Redis thread: write every user with a device here to
    /// Redis's presence again (this host moved to a new instance name).
    PresenceResync,
}

/// An accepted upgrade on its way to the user's home shard.
pub struct Handed {
    pub user: String,
    /// The client came in on a sleeping-console listener.
    pub console: bool,
    /// WebSocket (with its accept key) or Server-Sent Events.
    pub transport: Transport,
    pub since: Option<Since>,
    /// Bytes that arrived right behind the request head (WebSocket frames;
    /// ignored on SSE).
    pub leftover: Vec<u8>,
}
