//! The gateway: implements `shard::App`. It never touches a socket;
//! everything goes through `Ctx`.
//!
//! - `session`: WebSocket clients — upgrade, handoff to the home shard,
//!   welcome and replay, frames, liveness.
//! - `publish`: backends on the per-shard Unix sockets — requests in,
//!   replies out (in request order), fan-out to other shards.
//! - `deliver`: the home shard's side — seq, mailbox, sending to devices,
//!   expiry, presence.

mod admin;
mod deliver;
mod drain;
mod publish;
mod session;
mod stats;

pub use stats::GatewayStats;

use crate::auth::Secret;
use crate::control::Control;
use crate::liveness::Liveness;
use crate::mailbox::Mailbox;
use crate::push::wire::ShardStatus;
use crate::upgrade::Since;
use crate::users::{UserIndex, Users};
use crate::ws::handshake::HandshakeLimits;
use crate::ws::reader::{FrameReader, ReaderLimits};
use bytes::Bytes;
use shard::{App, CloseReason, ConnId, Ctx};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Listener numbers, in the order `server` configures them.
pub const CLIENT_LISTENER: usize = 0;
pub const PUSH_LISTENER: usize = 1;
pub const ADMIN_LISTENER: usize = 2;
/// Present only when `console_listen` is configured.
pub const CONSOLE_LISTENER: usize = 3;

/// Caps that refuse new client connections (503) before they cost more.
#[derive(Clone, Copy, Debug)]
pub struct OverloadLimits {
    /// Client connections per shard (`connections_max` / shards).
    pub connections_per_shard_max: u64,
    /// Upgrades in progress per shard.
    pub handshakes_max: usize,
    /// New client connections per second per shard; 0 = unlimited.
    pub accepts_per_shard_per_s: f64,
}

/// Settings shared by every shard's gateway.
pub struct GatewayShared {
    pub secret: Secret,
    pub handshake_limits: HandshakeLimits,
    pub reader_limits: ReaderLimits,
    pub liveness: Liveness,
    pub handshake_timeout_ms: u64,
    /// Identifies this process's mailbox generation (changes on restart).
    pub epoch: u64,
    /// Unix time in ms when the runtime's monotonic clock read 0; tokens
    /// are checked against it plus `Ctx::now_ms`.
    pub clock_unix_base_ms: u64,
    pub mailbox_retention_ms: u64,
    pub mailbox_entries_max: usize,
    pub push_frame_bytes_max: usize,
    /// Liveness of the sleeping-console profile (`liveness` is the browser's).
    pub console_liveness: Liveness,
    /// Per listener number: does it use the sleeping-console profile?
    pub console_listeners: Vec<bool>,
    pub limits: OverloadLimits,
    pub drain_rate_per_s: u32,
    pub control: Arc<Control>,
    /// What the client listener serves besides `/ws`.
    pub site: crate::upgrade::Site,
    /// One per shard, indexed by shard.
    pub stats: Arc<[GatewayStats]>,
}

/// Identifies a request waiting for other shards, on its origin shard.
pub type Ticket = u64;

/// Messages between gateway shards.
pub enum Msg {
    /// A connection moving to its user's home shard, with its upgrade.
    Handoff(Box<Handed>),
    /// Deliver to these users (all homed on the receiving shard).
    Push {
        ticket: Ticket,
        users: Vec<String>,
        payload: Bytes,
    },
    /// Deliver to every connected user of the receiving shard.
    Broadcast {
        ticket: Ticket,
        payload: Bytes,
    },
    /// The counts of a `Push` / `Broadcast` part, back to the origin.
    Pushed {
        ticket: Ticket,
        delivered: u32,
        stored: u32,
        rejected: u32,
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
}

pub struct Handed {
    user: String,
    /// The client came in on a sleeping-console listener.
    console: bool,
    accept_key: String,
    since: Option<Since>,
    /// WebSocket bytes that arrived right behind the request head.
    leftover: Vec<u8>,
}

/// Per-connection state, indexed by `ConnId::index`: 16 bytes, and an idle
/// open connection holds no heap memory here.
struct Slot {
    /// The user's index when open; `VACANT`, `HANDSHAKE` or `PUBLISHER`.
    user: u32,
    /// Low 32 bits of `now_ms` when the last byte arrived (wrapping).
    last_rx_ms: u32,
    /// Work in progress: a request head that arrived in pieces, a frame
    /// reader with a frame or message mid-way, or a publisher's state.
    pending: Option<Box<Pending>>,
}

const VACANT: u32 = u32::MAX;
const HANDSHAKE: u32 = u32::MAX - 1;
const PUBLISHER: u32 = u32::MAX - 2;
const ADMIN: u32 = u32::MAX - 3;

enum Pending {
    Head(Vec<u8>),
    /// An open connection with work in progress: a frame or message
    /// mid-way, and/or a replay not finished (`replay_after` = the last seq
    /// sent; live pushes wait in the mailbox until the replay catches up).
    Open {
        frames: FrameReader,
        replay_after: Option<u64>,
    },
    Publisher(publish::Publisher),
}

impl Slot {
    const fn vacant() -> Slot {
        Slot {
            user: VACANT,
            last_rx_ms: 0,
            pending: None,
        }
    }
}

/// A push stored in mailboxes, to expire from them together.
struct Expiry {
    at_ms: u64,
    /// Weak: a push every mailbox has already evicted (by count) must not
    /// stay allocated until its retention time.
    push: std::rc::Weak<crate::mailbox::StoredPush>,
    recipients: Vec<UserIndex>,
}

pub struct Gateway {
    shared: Arc<GatewayShared>,
    slots: Vec<Slot>,
    users: Users,
    /// Connections still in the upgrade (few, short-lived).
    handshakes: HashSet<ConnId>,
    /// The last seq assigned on this shard: every push gets the next one,
    /// so seqs are strictly increasing for every user homed here.
    seq: u64,
    /// The highest seq any forgotten user may have lost; a user created
    /// anew starts its floor here, so an old resume is never "recovered"
    /// by mistake.
    forgotten_floor_seq: u64,
    expiries: VecDeque<Expiry>,
    /// Broadcasts, kept once per shard (not in every user's mailbox) and
    /// merged with a user's mailbox when a device resumes.
    broadcasts: Mailbox,
    /// The highest broadcast seq dropped from `broadcasts`.
    broadcast_floor_seq: u64,
    /// Users whose last device left, to forget after the retention time.
    departures: VecDeque<(u64, UserIndex)>,
    tickets: HashMap<Ticket, publish::Waiting>,
    next_ticket: Ticket,
    /// Users with at least one device, and their devices.
    users_online: u64,
    devices_online: u64,
    /// Entries in all mailboxes of this shard, and mailboxes not empty.
    mailbox_entries: u64,
    mailboxes_nonempty: u64,
    /// One bit per connection index: sleeping-console profile.
    console_bits: Vec<u64>,
    shard_id: usize,
    drain: drain::DrainState,
    /// Token bucket of the accept rate limit.
    accept_tokens: f64,
    accept_refilled_at_ms: u64,
}

fn full_ms(now_ms: u64, low: u32) -> u64 {
    now_ms - (now_ms as u32).wrapping_sub(low) as u64
}

impl Gateway {
    pub fn new(shared: Arc<GatewayShared>, shard_id: usize) -> Gateway {
        Gateway {
            accept_tokens: shared.limits.accepts_per_shard_per_s,
            shared,
            slots: Vec::new(),
            users: Users::default(),
            handshakes: HashSet::new(),
            seq: 0,
            forgotten_floor_seq: 0,
            expiries: VecDeque::new(),
            broadcasts: Mailbox::default(),
            broadcast_floor_seq: 0,
            departures: VecDeque::new(),
            tickets: HashMap::new(),
            next_ticket: 1,
            users_online: 0,
            devices_online: 0,
            mailbox_entries: 0,
            mailboxes_nonempty: 0,
            console_bits: Vec::new(),
            shard_id,
            drain: drain::DrainState::default(),
            accept_refilled_at_ms: 0,
        }
    }

    fn stats(&self) -> &GatewayStats {
        &self.shared.stats[self.shard_id]
    }

    fn set_console(&mut self, conn: ConnId, console: bool) {
        let (word, bit) = (conn.index() / 64, conn.index() % 64);
        if word >= self.console_bits.len() {
            if !console {
                return;
            }
            self.console_bits.resize(word + 1, 0);
        }
        if console {
            self.console_bits[word] |= 1 << bit;
        } else {
            self.console_bits[word] &= !(1 << bit);
        }
    }

    fn liveness(&self, conn: ConnId) -> Liveness {
        let (word, bit) = (conn.index() / 64, conn.index() % 64);
        let console = self
            .console_bits
            .get(word)
            .is_some_and(|w| w & (1 << bit) != 0);
        if console {
            self.shared.console_liveness
        } else {
            self.shared.liveness
        }
    }

    /// Why a new client connection must be refused now, if it must.
    fn overloaded(&mut self, ctx: &Ctx<'_, Msg>) -> Option<&'static str> {
        let limits = self.shared.limits;
        if self.shared.control.is_draining() {
            return Some("draining");
        }
        if self.shared.control.is_overloaded() {
            return Some("memory high-water mark");
        }
        if self.devices_online + self.handshakes.len() as u64 >= limits.connections_per_shard_max {
            return Some("connection cap");
        }
        if self.handshakes.len() >= limits.handshakes_max {
            return Some("too many upgrades in progress");
        }
        if limits.accepts_per_shard_per_s > 0.0 {
            let now = ctx.now_ms();
            let elapsed_s = now.saturating_sub(self.accept_refilled_at_ms) as f64 / 1000.0;
            self.accept_refilled_at_ms = now;
            // A burst of up to one second's worth is allowed.
            self.accept_tokens = (self.accept_tokens + elapsed_s * limits.accepts_per_shard_per_s)
                .min(limits.accepts_per_shard_per_s.max(1.0));
            if self.accept_tokens < 1.0 {
                return Some("connection rate limit");
            }
            self.accept_tokens -= 1.0;
        }
        None
    }

    fn slot_mut(&mut self, conn: ConnId) -> &mut Slot {
        let i = conn.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, Slot::vacant);
        }
        &mut self.slots[i]
    }

    /// Reserves per-connection tables for the shard's capacity once, so they
    /// never reallocate (reserved pages cost no RSS until used).
    fn reserve(&mut self, ctx: &Ctx<'_, Msg>) {
        if self.slots.capacity() == 0 {
            let capacity = ctx.connection_capacity();
            self.slots.reserve_exact(capacity);
            self.users = Users::with_capacity(capacity);
        }
    }

    /// Drops the gateway's state of a connection that is going away.
    fn forget(&mut self, ctx: &Ctx<'_, Msg>, conn: ConnId) {
        let slot = std::mem::replace(self.slot_mut(conn), Slot::vacant());
        match slot.user {
            VACANT | PUBLISHER | ADMIN => {}
            HANDSHAKE => {
                self.handshakes.remove(&conn);
            }
            user => {
                self.set_console(conn, false);
                self.device_left(ctx, user, conn);
            }
        }
    }
}

impl App for Gateway {
    type Msg = Msg;

    fn on_accept(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, listener: usize) {
        self.reserve(ctx);
        match listener {
            PUSH_LISTENER => return self.open_publisher(ctx, conn),
            ADMIN_LISTENER => return self.open_admin(ctx, conn),
            _ => {}
        }
        if let Some(why) = self.overloaded(ctx) {
            // Refused before reading a byte: the cheapest answer there is.
            GatewayStats::add(&self.stats().overload_rejections_total, 1);
            tracing::debug!(shard = ctx.shard_id(), why, "connection refused: 503");
            let response = crate::ws::handshake::response_error(
                503,
                &format!("server busy ({why}); try again later"),
                &[("Retry-After", "5")],
            );
            ctx.close(conn, Some(Bytes::from(response)));
            return;
        }
        *self.slot_mut(conn) = Slot {
            user: HANDSHAKE,
            // Until the upgrade, this field holds the listener number.
            last_rx_ms: listener as u32,
            pending: None,
        };
        self.handshakes.insert(conn);
        ctx.set_deadline(conn, ctx.now_ms() + self.shared.handshake_timeout_ms);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &mut [u8]) {
        match self.slot_mut(conn).user {
            VACANT => {}
            HANDSHAKE => self.on_handshake_bytes(ctx, conn, data),
            PUBLISHER => self.on_publisher_bytes(ctx, conn, data),
            ADMIN => self.on_admin_bytes(ctx, conn, data),
            _ => self.on_frames(ctx, conn, data),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        match self.slot_mut(conn).user {
            VACANT | PUBLISHER => {}
            HANDSHAKE | ADMIN => self.on_handshake_timeout(ctx, conn),
            _ => self.on_liveness_deadline(ctx, conn),
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, reason: CloseReason) {
        tracing::debug!(shard = ctx.shard_id(), ?reason, "connection ended");
        self.forget(ctx, conn);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Msg>, from_shard: usize, msg: Msg) {
        match msg {
            Msg::Handoff(_) => tracing::error!(
                shard = ctx.shard_id(),
                from_shard,
                "handoff state arrived as a plain message; dropped"
            ),
            Msg::Push {
                ticket,
                users,
                payload,
            } => {
                let counts = self.deliver_to_names(ctx, &users, payload);
                self.answer_pushed(ctx, from_shard, ticket, counts);
            }
            Msg::Broadcast { ticket, payload } => {
                let counts = self.deliver_to_everyone(ctx, payload);
                self.answer_pushed(ctx, from_shard, ticket, counts);
            }
            Msg::Pushed {
                ticket,
                delivered,
                stored,
                rejected,
            } => self.on_pushed_part(ctx, ticket, [delivered, stored, rejected]),
            Msg::StatusQuery { ticket } => {
                let status = self.shard_status(ctx);
                let _ = ctx.send_msg(from_shard, Msg::StatusPart { ticket, status });
            }
            Msg::StatusPart { ticket, status } => self.on_status_part(ctx, ticket, status),
            Msg::PresenceQuery { ticket, user } => {
                let (online, devices) = self.presence(&user);
                let _ = ctx.send_msg(
                    from_shard,
                    Msg::PresenceAnswer {
                        ticket,
                        online,
                        devices,
                    },
                );
            }
            Msg::PresenceAnswer {
                ticket,
                online,
                devices,
            } => self.on_presence_answer(ctx, ticket, online, devices),
        }
    }

    fn on_handoff(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, msg: Msg) {
        match msg {
            Msg::Handoff(handed) => self.open(ctx, conn, *handed),
            _ => {
                tracing::error!(shard = ctx.shard_id(), "handoff without upgrade state");
                ctx.abort(conn);
            }
        }
    }

    fn on_drained(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        if self.is_publisher(conn) {
            self.flush_replies(ctx, conn);
        } else {
            self.continue_replay(ctx, conn);
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.expire_mailboxes(ctx.now_ms());
        self.expire_broadcasts(ctx.now_ms());
        self.expire_departures(ctx.now_ms());
        self.expire_tickets(ctx);
        self.drain_step(ctx);
        let stats = self.stats();
        GatewayStats::set(&stats.users_online, self.users_online);
        GatewayStats::set(&stats.devices_online, self.devices_online);
        GatewayStats::set(&stats.mailbox_entries, self.mailbox_entries);
        GatewayStats::set(&stats.broadcast_log_entries, self.broadcasts.len() as u64);
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.stop_sessions(ctx);
        self.stop_publishers(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_state_is_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn wrapping_clock_reconstructs_recent_times() {
        let now = (1u64 << 33) + 500;
        assert_eq!(full_ms(now, (now - 1_000) as u32), now - 1_000);
        assert_eq!(full_ms(now, now as u32), now);
    }
}
