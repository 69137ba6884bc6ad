//! Wiring where a notification leaves: the home part's fan-out becomes one
//! `send` per device (the frame header and payload shared by all), a
//! device that cannot take it is cut as a slow consumer after the loop (it
//! resumes from its mailbox), and a resuming device is replayed what it
//! missed before anything live. An SSE device gets the push as an event,
//! built once per push on this shard and shared by every SSE recipient.

use super::home::{Counts, StoredPush};
use super::publish::tickets::Ticket;
use super::push_deflate::{Deflated, PushDeflater};
use super::sessions::Wire;
use super::{Gateway, GatewayStats, Io, Msg};
use crate::push::wire::ShardStatus;
use crate::takeover::resends::RequestKey;
use crate::ws::close::CloseCode;
use bytes::Bytes;
use shard::{ConnId, SendError};

impl Gateway {
    /// Sends the push in `self.fanout` to each listed device and completes
    /// its counts: a recipient is delivered if some device took it (or is
    /// replaying and will), else stored.
    pub(super) fn send_fanout(&mut self, io: &mut impl Io) -> Counts {
        let mut counts = self.fanout.counts;
        // Taken, not cloned: the scratch space must not keep the last push
        // (and its bytes) alive after its mailboxes let it go.
        let Some(push) = self.fanout.push.take() else {
            return counts;
        };
        let parts = push.parts();
        let epoch = self.home.epoch();
        let mut deflated = Deflated::default();
        let mut slow = Vec::new();
        for devices in self.fanout.recipients() {
            let mut got = false;
            for &conn in devices {
                if self.sessions.replay_cursor(conn).is_some() {
                    got = true; // the replay reaches it, in order
                    continue;
                }
                let sent = match self.sessions.wire(conn) {
                    Wire::Sse => io.send(conn, &[push.sse_event(epoch)]),
                    Wire::WebSocket | Wire::WebSocketTextPing => {
                        let compressed = if self.sessions.deflate(conn) {
                            deflated.get(&mut self.push_deflater, &push)
                        } else {
                            None
                        };
                        match compressed {
                            Some(frame) => io.send(conn, &[frame]),
                            None => io.send(conn, &parts),
                        }
                    }
                };
                match sent {
                    Ok(()) => got = true,
                    Err(SendError::QueueFull) => slow.push(conn),
                    Err(SendError::Closed) => {}
                }
            }
            if got {
                counts.delivered += 1;
            } else {
                counts.stored += 1;
            }
        }
        for conn in slow {
            self.slow_consumer(io, conn);
        }
        let stats = self.stats();
        GatewayStats::add(&stats.deliveries_total, counts.delivered as u64);
        GatewayStats::add(&stats.stored_total, counts.stored as u64);
        GatewayStats::add(&stats.rejected_total, counts.rejected as u64);
        counts
    }

    /// One push to `users` homed here, after any a predecessor forwarded
    /// (`deliver_forwarded`).
    pub(super) fn push_here<S: AsRef<str>>(
        &mut self,
        io: &mut impl Io,
        users: &[S],
        payload: Bytes,
        origin: Option<RequestKey>,
    ) -> Counts {
        self.deliver_forwarded(io);
        self.push_here_now(io, users, payload, origin)
    }

    /// `origin`: the publisher's name for the request, which goes with it
    /// if it is forwarded (a live upgrade).
    pub(super) fn push_here_now<S: AsRef<str>>(
        &mut self,
        io: &mut impl Io,
        users: &[S],
        payload: Bytes,
        origin: Option<RequestKey>,
    ) -> Counts {
        if let Some(counts) = self.forwarded(io, Some(users), &payload, origin) {
            return counts;
        }
        let memory_high = self.shared.control.is_overloaded();
        self.home
            .push(users, payload, io.now_ms(), memory_high, &mut self.fanout);
        self.send_fanout(io)
    }

    /// One push to every user with a device here, after any a predecessor
    /// forwarded (`deliver_forwarded`).
    pub(super) fn broadcast_here(&mut self, io: &mut impl Io, payload: Bytes) -> Counts {
        self.deliver_forwarded(io);
        self.broadcast_here_now(io, payload)
    }

    pub(super) fn broadcast_here_now(&mut self, io: &mut impl Io, payload: Bytes) -> Counts {
        if let Some(counts) = self.forwarded::<&str>(io, None, &payload, None) {
            return counts;
        }
        self.home.broadcast(payload, io.now_ms(), &mut self.fanout);
        self.send_fanout(io)
    }

    /// Another shard's push for users homed here; the counts go back.
    pub(super) fn push_part(
        &mut self,
        io: &mut impl Io,
        from_shard: usize,
        ticket: Ticket,
        users: &[String],
        payload: Bytes,
        origin: Option<RequestKey>,
    ) {
        let counts = self.push_here(io, users, payload, origin);
        self.answer_part(io, from_shard, ticket, counts);
    }

    pub(super) fn broadcast_part(
        &mut self,
        io: &mut impl Io,
        from_shard: usize,
        ticket: Ticket,
        payload: Bytes,
    ) {
        let counts = self.broadcast_here(io, payload);
        self.answer_part(io, from_shard, ticket, counts);
    }

    fn answer_part(&mut self, io: &mut impl Io, to: usize, ticket: Ticket, counts: Counts) {
        if io.send_msg(to, Msg::Pushed { ticket, counts }).is_err() {
            // The origin times the ticket out and counts these as rejected.
            tracing::warn!(
                shard = io.shard_id(),
                to,
                "could not return push counts: queue full"
            );
        }
    }

    /// Sends what a resuming device is owed after its replay cursor while
    /// its send queue takes it; continues on `drained`; ends when caught
    /// up, after which live pushes reach it directly.
    pub(super) fn continue_replay(&mut self, io: &mut impl Io, conn: ConnId) {
        let (Some(mut cursor), Some(user)) =
            (self.sessions.replay_cursor(conn), self.sessions.user(conn))
        else {
            return;
        };
        let Ok(owed) = self.home.replay_after(user, cursor) else {
            // The mailbox dropped entries this device had not been sent.
            return self.close_device(
                io,
                conn,
                CloseCode::TRY_AGAIN_LATER,
                "fell behind the mailbox",
            );
        };
        let mut caught_up = true;
        let (wire, epoch) = (self.sessions.wire(conn), self.home.epoch());
        let mut deflater = self
            .sessions
            .deflate(conn)
            .then_some(&mut self.push_deflater);
        for push in owed {
            match send_push(io, conn, wire, epoch, push, deflater.as_deref_mut()) {
                Ok(()) => cursor = push.seq,
                Err(SendError::QueueFull) => {
                    caught_up = false;
                    break;
                }
                Err(SendError::Closed) => return,
            }
        }
        if caught_up {
            self.sessions.set_replay_cursor(conn, None);
        } else {
            self.sessions.set_replay_cursor(conn, Some(cursor));
            io.notify_when_drained(conn);
        }
    }

    pub(super) fn shard_status(&self) -> ShardStatus {
        let status = self.home.status();
        ShardStatus {
            shard: self.shard_id as u32,
            connections: status.devices_online,
            users_online: status.users_online,
            // A counter, not a scan: status must cost the same at 1M users.
            mailboxes: status.mailboxes_nonempty,
        }
    }
}

/// One stored push on `conn`, in its wire's form (compressed with
/// `deflater` if the device negotiated it and the push is worth it).
pub(super) fn send_push(
    io: &mut impl Io,
    conn: ConnId,
    wire: Wire,
    epoch: u64,
    push: &StoredPush,
    deflater: Option<&mut PushDeflater>,
) -> Result<(), SendError> {
    match wire {
        Wire::Sse => io.send(conn, &[push.sse_event(epoch)]),
        Wire::WebSocket | Wire::WebSocketTextPing => match deflater.and_then(|d| d.frame(push)) {
            Some(frame) => io.send(conn, &[frame]),
            None => io.send(conn, &push.parts()),
        },
    }
}
