//! The gateway: implements `shard::App` by wiring owned parts together.
//!
//! Parts own their state behind private fields, take input and `now`, and
//! return what should happen; none calls another. The wiring (this file,
//! [`clients`], [`deliver`], [`requests`], [`admin`], [`bells`]) asks the
//! parts, then applies the results through [`Io`] — the shard in
//! production, the in-memory driver in tests:
//!
//! - [`admission`]: may a new connection come in; the drain's pace.
//! - [`sessions`]: upgrades in progress and WebSocket devices (frames,
//!   liveness, replay cursor).
//! - [`home`]: users homed here, their seq and mailboxes, their devices.
//! - [`publish`]: push-socket and admin connections, and requests waiting
//!   for other shards (tickets).
//! - [`positions`] (only with Redis): where each device stands in its
//!   user's history in Redis, and the history reads devices wait for.
//! - [`history_check`] (only with Redis): the periodic check of this
//!   shard's devices against the history in Redis (a lost doorbell no
//!   later push reveals).
//!
//! A connection leaves the gateway through one door, [`Gateway::release`],
//! whichever part holds it, so nothing is left behind for a later
//! connection in the same slot.

mod admin;
pub mod admission;
mod bells;
mod clients;
mod deliver;
mod history_check;
pub mod home;
mod io;
mod moves;
mod msg;
mod positions;
pub mod publish;
mod push_deflate;
mod requests;
pub mod sessions;
mod stats;

#[cfg(test)]
mod sim;

pub use admission::OverloadLimits;
pub use io::Io;
pub use msg::{Handed, Msg};
pub use stats::GatewayStats;

use crate::control::Control;
use admission::{Admission, Load};
use bytes::Bytes;
use home::{Fanout, Home, HomeSettings};
use publish::admins::Admins;
use publish::publishers::Publishers;
use publish::tickets::Tickets;
use sessions::handshakes::{Handshakes, UpgradeRules};
use sessions::{SessionSettings, Sessions};
use shard::{App, CloseReason, ConnId, Ctx};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Listener numbers, in the order `server` configures them.
pub const CLIENT_LISTENER: usize = 0;
pub const PUSH_LISTENER: usize = 1;
pub const ADMIN_LISTENER: usize = 2;
/// Present only when `console_listen` is configured.
pub const CONSOLE_LISTENER: usize = 3;
/// `tls_listen`: right after the last of the above that exists (3 without
/// a console listener, else 4); a client listener like `listen`.
pub const TLS_LISTENER_AFTER_CONSOLE: usize = 4;

/// How long a request waits for other shards.
const TICKET_TIMEOUT_MS: u64 = 5_000;

/// Settings shared by every shard's gateway.
pub struct GatewayShared {
    pub upgrade: UpgradeRules,
    pub sessions: SessionSettings,
    /// Per shard: `epoch` is this process's (mailboxes are in memory).
    pub home: HomeSettings,
    pub handshake_timeout_ms: u64,
    /// A publisher must finish a frame it started within this long.
    pub publisher_frame_timeout_ms: u64,
    /// Unix time in ms when the runtime's monotonic clock read 0; tokens
    /// are checked against it plus `Io::now_ms`.
    pub clock_unix_base_ms: u64,
    pub push_frame_bytes_max: usize,
    /// Per listener number: does it use the sleeping-console profile?
    pub console_listeners: Vec<bool>,
    pub limits: OverloadLimits,
    pub drain_rate_per_s: u32,
    /// With permessage-deflate on (`upgrade.site.deflate`), messages
    /// shorter than this go uncompressed.
    pub deflate_threshold_bytes: usize,
    pub control: Arc<Control>,
    /// One per shard, indexed by shard.
    pub stats: Arc<[GatewayStats]>,
    /// With Redis configured (several hosts): the queue to the Redis
    /// thread; presence is then cluster-wide.
    pub redis: Option<crate::cluster::RedisLink>,
    /// Connections moving between processes (a live upgrade), and the
    /// history (epoch, seq) this process continues.
    pub moves: Arc<crate::takeover::moves::Moves>,
}

pub struct Gateway {
    shared: Arc<GatewayShared>,
    shard_id: usize,
    admission: Admission,
    handshakes: Handshakes,
    sessions: Sessions,
    home: Home,
    publishers: Publishers,
    admins: Admins,
    tickets: Tickets,
    /// Scratch space for one push's recipients, reused so a push
    /// allocates nothing per recipient.
    fanout: Fanout,
    /// The shard's compressor for devices that negotiated deflate.
    push_deflater: push_deflate::PushDeflater,
    /// Where the drain's search for devices to close continues.
    drain_cursor: usize,
    /// Per-connection tables sized for the shard's capacity (once).
    reserved: bool,
    /// With Redis: users whose device count here changed since the last
    /// tick's presence write.
    presence_outbox: Option<crate::cluster::PresenceOutbox>,
    /// With Redis: where each device stands in its user's history in
    /// Redis, and the history reads devices wait for.
    positions: Option<positions::Positions>,
    /// With Redis: the periodic check of this shard's devices against the
    /// history (created at the first tick, which knows the time).
    history_check: Option<history_check::HistoryCheck>,
    /// Devices being exported (a live upgrade); ≤ `moves::EXPORTS_IN_FLIGHT_MAX`.
    exports: std::collections::HashSet<ConnId>,
    /// Where the search for devices to export continues.
    export_cursor: usize,
    /// This shard told `Control` its publishers are all closed (the
    /// drain's last step); once per drain.
    publishers_closed_reported: bool,
    /// The mailbox export this shard is in (`Moves::mailbox_round`) and
    /// where it stands.
    mailbox_export: (u64, moves::MailboxExport),
}

impl Gateway {
    pub fn new(shared: Arc<GatewayShared>, shard_id: usize) -> Gateway {
        let mut home = Home::new(shared.home);
        let seq_start = shared.moves.seq_start();
        if seq_start > 0 {
            home.continue_history(seq_start);
        }
        Gateway {
            admission: Admission::new(shared.limits),
            handshakes: Handshakes::default(),
            sessions: Sessions::new(shared.sessions),
            home,
            publishers: Publishers::new(shared.push_frame_bytes_max),
            admins: Admins::new(shared.push_frame_bytes_max),
            tickets: Tickets::new(TICKET_TIMEOUT_MS),
            fanout: Fanout::default(),
            push_deflater: push_deflate::PushDeflater::new(shared.deflate_threshold_bytes),
            drain_cursor: 0,
            reserved: false,
            presence_outbox: shared
                .redis
                .as_ref()
                .map(|_| crate::cluster::PresenceOutbox::default()),
            positions: shared
                .redis
                .as_ref()
                .map(|link| positions::Positions::new(link.answer_timeout_ms())),
            history_check: None,
            exports: std::collections::HashSet::new(),
            publishers_closed_reported: false,
            export_cursor: 0,
            mailbox_export: (0, moves::MailboxExport::NotStarted),
            shared,
            shard_id,
        }
    }

    fn stats(&self) -> &GatewayStats {
        &self.shared.stats[self.shard_id]
    }

    fn load(&self) -> Load {
        Load {
            devices: self.sessions.len() as u64,
            handshakes: self.handshakes.len(),
            draining: self.shared.control.refuses_clients(),
            memory_high: self.shared.control.is_overloaded(),
        }
    }

    /// Sizes the per-connection tables for the shard's capacity once, so
    /// they do not reallocate while filling (reserved pages cost no RSS
    /// until used). Keeps whatever is already there.
    fn reserve(&mut self, io: &impl Io) {
        if !self.reserved {
            self.reserved = true;
            let capacity = io.connection_capacity();
            self.sessions.reserve(capacity);
            self.home.reserve(capacity);
        }
    }

    /// The one door by which a connection leaves the gateway: whichever
    /// part holds it forgets it, and requests it was waiting for are
    /// cancelled. Safe to call for a connection already released.
    fn release(&mut self, io: &impl Io, conn: ConnId) {
        self.exports.remove(&conn);
        if let Some(positions) = &mut self.positions {
            positions.forget(conn);
        }
        if let Some(user) = self.sessions.user(conn) {
            // The device list holds the full id: a stale `conn` whose slot
            // now belongs to another device does not match.
            if self.home.devices_of(user).any(|c| c == conn) {
                self.sessions.close(conn);
                if let Some(outbox) = &mut self.presence_outbox {
                    outbox.mark(self.home.user_name(user));
                }
                self.home.leave(user, conn, io.now_ms());
            }
            return;
        }
        if self.handshakes.remove(conn) {
            return;
        }
        if let Some(tickets) = self.publishers.close(conn) {
            for ticket in tickets {
                self.tickets.cancel(ticket);
            }
        } else if let Some(Some(ticket)) = self.admins.close(conn) {
            self.tickets.cancel(ticket);
        }
    }

    /// Connection accepted on `listener`.
    pub fn accept(&mut self, io: &mut impl Io, conn: ConnId, listener: usize) {
        self.reserve(io);
        match listener {
            PUSH_LISTENER => self.open_publisher(io, conn),
            ADMIN_LISTENER => self.open_admin(io, conn),
            _ => self.open_client(io, conn, listener),
        }
    }

    /// Bytes from `conn`.
    pub fn data(&mut self, io: &mut impl Io, conn: ConnId, data: &mut [u8]) {
        if self.sessions.user(conn).is_some() {
            self.device_bytes(io, conn, data);
        } else if self.handshakes.contains(conn) {
            self.handshake_bytes(io, conn, data);
        } else if self.publishers.contains(conn) {
            self.publisher_bytes(io, conn, data);
        } else if self.admins.contains(conn) {
            self.admin_bytes(io, conn, data);
        }
    }

    /// `conn`'s deadline passed.
    pub fn timer(&mut self, io: &mut impl Io, conn: ConnId) {
        if self.sessions.user(conn).is_some() {
            self.device_deadline(io, conn);
        } else if self.handshakes.contains(conn) {
            self.handshake_timeout(io, conn);
        } else if self.admins.contains(conn) {
            self.admin_timeout(io, conn);
        }
    }

    /// `conn` ended without the gateway asking.
    pub fn closed(&mut self, io: &mut impl Io, conn: ConnId, reason: CloseReason) {
        tracing::debug!(shard = io.shard_id(), ?reason, "connection ended");
        self.release(io, conn);
    }

    /// `conn`'s send queue emptied, as asked.
    pub fn drained(&mut self, io: &mut impl Io, conn: ConnId) {
        if self.publishers.contains(conn) {
            self.flush_replies(io, conn);
        } else {
            self.continue_replay(io, conn);
        }
    }

    /// A message from `from_shard`.
    pub fn message(&mut self, io: &mut impl Io, from_shard: usize, msg: Msg) {
        match msg {
            Msg::Handoff(_) | Msg::Moved(_) => tracing::error!(
                shard = io.shard_id(),
                from_shard,
                "connection state arrived as a plain message; dropped"
            ),
            Msg::Push {
                ticket,
                users,
                payload,
                origin,
            } => self.push_part(io, from_shard, ticket, &users, payload, origin),
            Msg::Broadcast { ticket, payload } => {
                self.broadcast_part(io, from_shard, ticket, payload)
            }
            Msg::Pushed { ticket, counts } => {
                let finished = self.tickets.pushed_part(ticket, counts);
                self.finish(io, finished);
            }
            Msg::StatusQuery { ticket } => {
                let status = self.shard_status();
                let _ = io.send_msg(from_shard, Msg::StatusPart { ticket, status });
            }
            Msg::StatusPart { ticket, status } => {
                let finished = self.tickets.status_part(ticket, status);
                self.finish(io, finished);
            }
            Msg::PresenceQuery { ticket, user } => {
                let (online, devices) = self.home.presence(&user);
                let answer = Msg::PresenceAnswer {
                    ticket,
                    online,
                    devices,
                };
                let _ = io.send_msg(from_shard, answer);
            }
            Msg::PresenceAnswer {
                ticket,
                online,
                devices,
            } => {
                let finished = self.tickets.presence_part(ticket, online, devices);
                self.finish(io, finished);
            }
            Msg::RedisFailed { ticket, why } => {
                let finished = self.tickets.failed(ticket, why);
                self.finish(io, finished);
            }
            Msg::Bell(bell) => self.bell(io, *bell),
            Msg::BroadcastBell(bell) => self.broadcast_bell(io, &bell),
            Msg::Resumed { conn, read, result } => self.resumed(io, conn, read, result),
            Msg::Checked { batch, result } => self.checked(io, batch, result),
            Msg::PresenceResync => {
                if let Some(outbox) = &mut self.presence_outbox {
                    for user in self.home.online_users() {
                        outbox.mark(user);
                    }
                }
            }
        }
    }

    /// A connection handed over by another shard arrived with its state.
    pub fn handed_in(&mut self, io: &mut impl Io, conn: ConnId, msg: Msg) {
        self.reserve(io);
        match msg {
            Msg::Handoff(handed) => self.open_device(io, conn, *handed),
            _ => {
                tracing::error!(shard = io.shard_id(), "handoff without upgrade state");
                io.abort(conn);
            }
        }
    }

    /// Once per timer tick: expiries, late requests, stalled publishers,
    /// the drain, giving memory back, and the gauges.
    pub fn tick(&mut self, io: &mut impl Io) {
        let now = io.now_ms();
        self.home.tick(now);
        for finished in self.tickets.expire(now) {
            tracing::warn!(
                shard = io.shard_id(),
                ticket = finished.ticket,
                "shards did not answer in time; replying with what arrived"
            );
            self.finish(io, Some(finished));
        }
        let timeout_ms = self.shared.publisher_frame_timeout_ms;
        for conn in self.publishers.stalled(now, timeout_ms) {
            let why = format!("a frame was not completed within {timeout_ms} ms");
            self.refuse_publisher(io, conn, &why);
        }
        self.drain_step(io);
        self.release_forwarded_replies(io);
        self.close_publishers_step(io);
        self.expire_reads(io);
        self.flush_presence(io);
        self.check_step(io);
        self.moves_step(io);
        self.shared.moves.note_seq(self.home.last_seq());
        // Give back what a flood of connections left in the tables.
        self.sessions.shrink_if_sparse();
        self.handshakes.shrink_if_sparse();
        self.publishers.shrink_if_sparse();
        self.admins.shrink_if_sparse();
        let status = self.home.status();
        let stats = self.stats();
        GatewayStats::set(&stats.users_online, status.users_online);
        GatewayStats::set(&stats.devices_online, status.devices_online);
        GatewayStats::set(&stats.mailbox_entries, status.mailbox_entries);
        GatewayStats::set(&stats.broadcast_log_entries, status.broadcast_log_entries);
        GatewayStats::set(&stats.users_stored, status.users);
        GatewayStats::set(&stats.stored_bytes, status.stored_bytes);
        GatewayStats::set(&stats.handshakes_in_progress, self.handshakes.len() as u64);
        GatewayStats::set(&stats.requests_waiting, self.tickets.len() as u64);
        GatewayStats::set(&stats.publisher_connections, self.publishers.len() as u64);
        GatewayStats::set(&stats.admin_connections, self.admins.len() as u64);
    }

    /// With Redis: writes this shard's presence changes (a few batches per
    /// tick; a full queue keeps them for the next).
    fn flush_presence(&mut self, io: &impl Io) {
        /// Batches per tick: a resync of a full shard spreads over ticks.
        const PRESENCE_BATCHES_PER_TICK: usize = 8;
        let (Some(outbox), Some(link)) = (&mut self.presence_outbox, &self.shared.redis) else {
            return;
        };
        let home = &self.home;
        let flushed = outbox.flush(
            io.shard_id(),
            PRESENCE_BATCHES_PER_TICK,
            |user| home.presence(user).1,
            |msg| link.try_send(msg),
        );
        if !flushed {
            tracing::debug!(
                shard = io.shard_id(),
                waiting = outbox.len(),
                "Redis queue full; presence changes wait for the next tick"
            );
        }
    }

    /// The runtime is stopping: every connection is closed (devices with
    /// 1001, publishers after their ready replies).
    pub fn stop(&mut self, io: &mut impl Io) {
        self.stop_clients(io);
        self.stop_publishers(io);
    }
}

impl App for Gateway {
    type Msg = Msg;

    fn on_accept(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, listener: usize) {
        self.accept(ctx, conn, listener);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &mut [u8]) {
        self.data(ctx, conn, data);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        self.timer(ctx, conn);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, reason: CloseReason) {
        self.closed(ctx, conn, reason);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Msg>, from_shard: usize, msg: Msg) {
        self.message(ctx, from_shard, msg);
    }

    fn on_handoff(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, msg: Msg) {
        self.handed_in(ctx, conn, msg);
    }

    fn on_drained(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        self.drained(ctx, conn);
    }

    fn on_exported(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, fd: OwnedFd) {
        self.exported(ctx, conn, fd);
    }

    fn on_export_failed(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, errno: i32) {
        self.export_failed(ctx, conn, errno);
    }

    fn on_adopted(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, msg: Msg) {
        match msg {
            Msg::Moved(record) => self.adopted(ctx, conn, *record),
            _ => {
                tracing::error!(shard = ctx.shard_id(), "adopted without a record");
                ctx.abort(conn);
            }
        }
    }

    fn on_adopt_failed(&mut self, ctx: &mut Ctx<'_, Msg>, _fd: OwnedFd, msg: Msg, errno: i32) {
        let user = match &msg {
            Msg::Moved(r) => r.user.as_str(),
            _ => "",
        };
        tracing::warn!(
            shard = ctx.shard_id(),
            user,
            errno,
            "a moved connection could not be adopted; it closes and the device resumes \
             when it reconnects"
        );
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.tick(ctx);
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_, Msg>) {
        self.stop(ctx);
    }
}

/// Shorthand for a one-part send.
fn bytes(v: Vec<u8>) -> [Bytes; 1] {
    [Bytes::from(v)]
}
