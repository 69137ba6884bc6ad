//! Wiring for a live upgrade that moves devices between processes
//! (`crate::takeover`). The old process *exports* its devices a few at a
//! time, each at a quiescent point (`shard::Ctx::export`: reads stopped,
//! what it was sent flushed), and hands each socket with its record to the
//! take-over thread. The successor — or the old process taking back a
//! batch the successor never acknowledged — *adopts* them on each user's
//! home shard: the device is registered again, keeps its liveness timing,
//! and is replayed whatever was pushed to its user after the newest seq it
//! was sent. A moved device sees nothing of the move: no close, no welcome.
//!
//! After the devices, the old process exports each shard's mailboxes
//! (broadcast log first, then every user, a bounded number per tick into
//! the shard's mailbox outbox) and the successor merges the users that
//! arrive for each of its shards (`Home::import`), on their next tick.

use super::home::{Counts, ImportCounts, RejectReasons};
use super::sessions::Wire;
use super::{Gateway, Io, Msg};
use crate::takeover::mailboxes::MailboxItem;
use crate::takeover::resends::RequestKey;
use crate::takeover::wire::{ConnectionRecord, ForwardedPush, WireKind, FORWARD_DATA_BYTES_MAX};
use crate::ws::close::CloseCode;
use crate::ws::writer;
use bytes::Bytes;
use shard::{ConnId, ExportError};
use std::os::fd::{AsRawFd, OwnedFd};

/// Exports one shard has started and not seen finish, at most: bounds the
/// descriptors in flight and the work per call. Each finished export
/// starts the next, so the move runs at the ring's pace, not the tick's.
const EXPORTS_IN_FLIGHT_MAX: usize = 512;
/// Users looked at per call while looking for devices to export.
const EXPORT_SCAN_USERS_PER_CALL_MAX: usize = 10_000;
/// Users whose mailbox one shard exports per tick, at most (fewer while
/// its mailbox outbox is full).
const MAILBOX_EXPORT_USERS_PER_TICK_MAX: usize = 4096;

/// Where a shard's mailbox export stands (the old process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum MailboxExport {
    /// Its broadcast log is still to go.
    #[default]
    NotStarted,
    /// Users from this user-table slot on are still to go.
    From(usize),
    Finished,
}

impl Gateway {
    /// Once per tick: merge the mailboxes and adopt the devices that
    /// arrived for this shard; while the process exports mailboxes, export
    /// more of them; while it exports devices, start exporting more and say
    /// whether this shard is done.
    pub(super) fn moves_step(&mut self, io: &mut impl Io) {
        let moves = self.shared.moves.clone();
        let shard = io.shard_id();
        self.merge_mailboxes(io);
        self.export_mailboxes(io);
        self.deliver_forwarded(io);
        for (fd, record) in moves.take_inbox(shard) {
            if let Err((_fd, msg)) = io.adopt(fd, Msg::Moved(Box::new(record))) {
                let user = match &msg {
                    Msg::Moved(r) => r.user.as_str(),
                    _ => "",
                };
                tracing::warn!(
                    shard,
                    user,
                    "a moved connection could not be adopted (stopping, or the kernel lacks \
                     the io_uring op); it closes and the device resumes when it reconnects"
                );
            }
        }
        if !moves.is_exporting() {
            self.exports.clear();
            return;
        }
        if !self.export_more(io) {
            return;
        }
        let done =
            self.sessions.is_empty() && self.handshakes.is_empty() && self.exports.is_empty();
        moves.set_shard_done(shard, done);
    }

    /// The successor: merges the mailboxes that arrived for users homed
    /// here, each group of one old shard's users with that shard's
    /// broadcast log.
    fn merge_mailboxes(&mut self, io: &impl Io) {
        let moves = &self.shared.moves;
        let arrived = moves.take_mailboxes_in(io.shard_id());
        if arrived.is_empty() {
            return;
        }
        let taken = arrived.len();
        let now = io.now_ms();
        let mut counts = ImportCounts::default();
        let mut arrived = arrived.into_iter().peekable();
        while let Some(first) = arrived.next() {
            let (origin, broadcasts) = (first.origin, first.broadcasts);
            let mut users = vec![first.user];
            while let Some(next) = arrived.next_if(|a| a.origin == origin) {
                users.push(next.user);
            }
            let c = self.home.import(origin, users, &broadcasts, now);
            counts.users += c.users;
            counts.entries += c.entries;
            counts.entries_dropped += c.entries_dropped;
            counts.users_dropped += c.users_dropped;
        }
        if counts.entries_dropped > 0 || counts.users_dropped > 0 {
            tracing::warn!(
                shard = io.shard_id(),
                entries_dropped = counts.entries_dropped,
                users_dropped = counts.users_dropped,
                "mailboxes from the previous process over this process's bounds were \
                 dropped (oldest first); their devices resume with recovered:false"
            );
        }
        moves.merged(taken, counts);
    }

    /// The old process, after its devices moved: exports this shard's
    /// broadcast log, then its users, into the shard's mailbox outbox while
    /// it has room (≤ `MAILBOX_EXPORT_USERS_PER_TICK_MAX` users a tick).
    fn export_mailboxes(&mut self, io: &impl Io) {
        let moves = self.shared.moves.clone();
        if !moves.is_exporting_mailboxes() {
            self.mailbox_export = (0, MailboxExport::NotStarted);
            return;
        }
        let shard = io.shard_id();
        let round = moves.mailbox_round();
        if self.mailbox_export.0 != round {
            self.mailbox_export = (round, MailboxExport::NotStarted);
        }
        let now = io.now_ms();
        let mut cursor = match self.mailbox_export.1 {
            MailboxExport::Finished => return,
            MailboxExport::From(cursor) => cursor,
            MailboxExport::NotStarted => {
                let log = self.home.export_broadcasts(now);
                moves.push_mailbox(shard, round, MailboxItem::Broadcasts(log));
                0
            }
        };
        let mut users = Vec::with_capacity(1);
        for _ in 0..MAILBOX_EXPORT_USERS_PER_TICK_MAX {
            if !moves.mailbox_outbox_has_room(shard) {
                break;
            }
            let next = self.home.export_users(cursor, 1, now, &mut users);
            for user in users.drain(..) {
                moves.push_mailbox(shard, round, MailboxItem::User(user));
            }
            match next {
                Some(next) => cursor = next,
                None => {
                    moves.finish_mailboxes(shard, round);
                    self.mailbox_export.1 = MailboxExport::Finished;
                    return;
                }
            }
        }
        self.mailbox_export.1 = MailboxExport::From(cursor);
    }

    /// Delivers the pushes a predecessor forwarded for users homed here,
    /// in the order they came. Called each tick and before any push is
    /// delivered here (`push_here`, `broadcast_here`): a publisher that
    /// moves from the old process to this one resends here only what the
    /// old one left unanswered, after the old one saw its forwarded pushes
    /// acknowledged, so delivering those first keeps the publisher's order.
    pub(super) fn deliver_forwarded(&mut self, io: &mut impl Io) {
        let shard = io.shard_id();
        for push in self.shared.moves.take_pushes_in(shard) {
            let payload = Bytes::from(push.data);
            let counts = if push.users.is_empty() {
                self.broadcast_here_now(io, payload)
            } else {
                self.push_here_now(io, &push.users, payload, push.origin)
            };
            if counts.rejected > 0 {
                tracing::warn!(
                    shard,
                    rejected = counts.rejected,
                    "a forwarded push was refused here"
                );
            }
        }
    }

    /// Starts exporting devices up to the bounds; false if this kernel
    /// cannot (the export stopped, every device stays).
    fn export_more(&mut self, io: &mut impl Io) -> bool {
        let moves = self.shared.moves.clone();
        let shard = io.shard_id();
        let room = EXPORTS_IN_FLIGHT_MAX.saturating_sub(self.exports.len());
        if room > 0 && moves.outbox_has_room(self.exports.len()) {
            let mut candidates = Vec::new();
            self.export_cursor = self.home.devices_from(
                self.export_cursor,
                EXPORT_SCAN_USERS_PER_CALL_MAX,
                room,
                &mut candidates,
            );
            for conn in candidates {
                if self.exports.len() >= EXPORTS_IN_FLIGHT_MAX {
                    break;
                }
                // A device mid-frame or mid-replay moves on a later tick.
                if self.exports.contains(&conn) || self.sessions.holds_work(conn) {
                    continue;
                }
                // Negotiated permessage-deflate: the successor would not
                // know it (a compressed client message would be a protocol
                // error there). Reconnects instead, as in a drain.
                if self.sessions.deflate(conn) {
                    self.close_for_reconnect(io, conn);
                    continue;
                }
                match io.export(conn) {
                    Ok(()) => {
                        self.exports.insert(conn);
                    }
                    Err(ExportError::NotOpen) => {}
                    Err(ExportError::KeptHere) => self.close_for_reconnect(io, conn),
                    Err(ExportError::Unsupported) => {
                        tracing::warn!(
                            shard,
                            "this kernel cannot move connections (no \
                             IORING_OP_FIXED_FD_INSTALL); the take-over drains instead"
                        );
                        for (fd, record) in moves.stop_export() {
                            let _ = io.adopt(fd, Msg::Moved(Box::new(record)));
                        }
                        return false;
                    }
                }
            }
        }
        true
    }

    /// A device that cannot move (TLS, deflate) reconnects to the
    /// successor: 1012, as a drain tells it.
    fn close_for_reconnect(&mut self, io: &mut impl Io, conn: ConnId) {
        self.close_device(
            io,
            conn,
            CloseCode::SERVICE_RESTART,
            "server restarting; its state cannot move with the connection",
        );
    }

    /// While this process forwards (its devices are moving, so one may be
    /// on its way), a push to users homed here goes to the successor,
    /// which delivers or stores it; counted as stored. A broadcast is
    /// forwarded once, by shard 0. A push the queue cannot take is
    /// refused (retryable), never dropped. None: deliver here as usual.
    pub(super) fn forwarded<S: AsRef<str>>(
        &mut self,
        io: &impl Io,
        users: Option<&[S]>,
        payload: &Bytes,
        origin: Option<RequestKey>,
    ) -> Option<Counts> {
        let moves = &self.shared.moves;
        if !moves.is_forwarding() {
            return None;
        }
        let recipients = users.map_or(0, |u| u.len() as u32);
        if users.is_none() && io.shard_id() != 0 {
            return Some(Counts::default());
        }
        let refused = |why: &str| {
            tracing::warn!(
                shard = io.shard_id(),
                why,
                "push refused during a live upgrade"
            );
            let mut counts = Counts {
                rejected: recipients.max(1),
                ..Counts::default()
            };
            counts.reasons.add(RejectReasons::SHARD_UNAVAILABLE);
            Some(counts)
        };
        let Ok(data) = std::str::from_utf8(payload) else {
            return refused("not UTF-8");
        };
        if data.len() > FORWARD_DATA_BYTES_MAX {
            return refused("too large to forward while connections move; retry");
        }
        let push = ForwardedPush {
            users: users.map_or_else(Vec::new, |u| {
                u.iter().map(|s| s.as_ref().to_string()).collect()
            }),
            data: data.to_string(),
            origin,
        };
        match moves.push_forward(push) {
            Ok(()) => Some(Counts {
                stored: recipients,
                ..Counts::default()
            }),
            // Forwarding ended meanwhile: deliver here after all.
            Err(_) if !moves.is_forwarding() => None,
            Err(_) => refused("the forwarding queue is full; retry"),
        }
    }

    /// A device left the shard: its record and socket go to the take-over
    /// thread. One that received part of a frame after it was picked is
    /// told to reconnect instead (1012), as a drain would.
    pub(super) fn exported(&mut self, io: &mut impl Io, conn: ConnId, fd: OwnedFd) {
        self.exports.remove(&conn);
        let Some(user) = self.sessions.user(conn) else {
            return; // not a device (never picked): the socket closes
        };
        let now = io.now_ms();
        let wire = self.sessions.wire(conn);
        let record = ConnectionRecord {
            user: self.home.user_name(user).to_string(),
            console: self.sessions.is_console(conn),
            wire: match wire {
                Wire::WebSocket => WireKind::WebSocket,
                Wire::WebSocketTextPing => WireKind::WebSocketTextPing,
                Wire::Sse => WireKind::Sse,
            },
            idle_ms: now.saturating_sub(self.sessions.last_rx_ms(conn, now)),
            seq: self.home.newest_seq_of(user),
        };
        let busy = self.sessions.holds_work(conn);
        self.release(io, conn);
        if busy {
            tracing::info!(
                shard = io.shard_id(),
                user = record.user,
                "a device sent part of a frame while it was being moved: closed with 1012; \
                 it reconnects and resumes"
            );
            goodbye(&fd, wire);
            return;
        }
        match self.shared.moves.push_outbox((fd, record)) {
            Ok(()) => {
                self.export_more(io);
            }
            Err((fd, record)) => {
                // The take-over ended meanwhile (failed, or fell back to a
                // drain): the device stays here, adopted again.
                if let Err((_fd, _)) = io.adopt(fd, Msg::Moved(Box::new(record))) {
                    tracing::warn!(
                        shard = io.shard_id(),
                        "a device could not be taken back; it closes and resumes when it \
                         reconnects"
                    );
                }
            }
        }
    }

    /// The export of `conn` failed: it stays here.
    pub(super) fn export_failed(&mut self, io: &mut impl Io, conn: ConnId, errno: i32) {
        self.exports.remove(&conn);
        tracing::warn!(
            shard = io.shard_id(),
            errno,
            "a device could not be moved; it stays with this process"
        );
    }

    /// A moved device arrived on its home shard with its record.
    pub(super) fn adopted(&mut self, io: &mut impl Io, conn: ConnId, record: ConnectionRecord) {
        self.reserve(io);
        let now = io.now_ms();
        let joined = self.home.join(&record.user, conn, None);
        // Below the history this process continues from, the predecessor
        // delivered everything: nothing here is older.
        let cursor = record.seq.max(self.shared.moves.seq_start());
        let replay_after = (joined.last_seq > cursor).then_some(cursor);
        self.sessions
            .open(conn, joined.user, record.console, replay_after, now);
        self.sessions.set_wire(
            conn,
            match record.wire {
                WireKind::WebSocket => Wire::WebSocket,
                WireKind::WebSocketTextPing => Wire::WebSocketTextPing,
                WireKind::Sse => Wire::Sse,
            },
        );
        let last_rx_ms = now.saturating_sub(record.idle_ms);
        let deadline = self.sessions.resume_liveness(conn, last_rx_ms);
        io.coalesce_sends(conn);
        io.set_deadline(conn, deadline.max(now));
        tracing::debug!(
            shard = io.shard_id(),
            user = record.user,
            replay_after,
            "moved device adopted"
        );
        if replay_after.is_some() {
            self.continue_replay(io, conn);
        }
    }
}

/// Tells a device whose socket this process holds outside its rings to
/// reconnect: a close frame (or SSE close event) with 1012, written
/// without blocking (its send buffer is empty: it was flushed), then the
/// socket closes when `fd` drops.
fn goodbye(fd: &OwnedFd, wire: Wire) {
    let reason = "server restarting; reconnect";
    let last = match wire {
        Wire::Sse => crate::sse::close_event(CloseCode::SERVICE_RESTART, reason, 1_000),
        Wire::WebSocket | Wire::WebSocketTextPing => {
            writer::close_frame(CloseCode::SERVICE_RESTART, reason)
        }
    };
    // SAFETY: sends from a live buffer on a socket we own; the result only
    // decides whether the goodbye arrived, which the peer learns anyway.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            last.as_ptr().cast(),
            last.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}
