//! WebSocket clients: request head → upgrade verdict → home shard →
//! welcome (and replay of what a resuming device missed) → frames until
//! close, with ping/idle liveness.

use super::{full_ms, Gateway, GatewayStats, Handed, Msg, Pending, Slot};
use crate::liveness::Action;
use crate::mailbox::merged_after;
use crate::route::home_shard;
use crate::upgrade::{self, Accepted, Verdict};
use crate::ws::close::CloseCode;
use crate::ws::frame::Opcode;
use crate::ws::handshake;
use crate::ws::reader::{Event, FrameReader};
use crate::ws::writer;
use crate::ws::ProtocolError;
use bytes::Bytes;
use shard::{ConnId, Ctx, SendError};

impl Gateway {
    fn refuse(
        &self,
        ctx: &mut Ctx<'_, Msg>,
        conn: ConnId,
        status: u16,
        response: Vec<u8>,
        reason: &str,
    ) {
        GatewayStats::add(&self.stats().handshakes_refused_total, 1);
        tracing::info!(shard = ctx.shard_id(), status, reason, "upgrade refused");
        ctx.close(conn, Some(Bytes::from(response)));
    }

    pub(super) fn on_handshake_bytes(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &[u8]) {
        // The common case, a head in one read, is judged without copying.
        let mut buffered = match self.slot_mut(conn).pending.take().map(|p| *p) {
            Some(Pending::Head(head)) => Some(head),
            _ => None,
        };
        let bytes: &[u8] = match buffered.as_mut() {
            Some(head) => {
                head.extend_from_slice(data);
                head
            }
            None => data,
        };
        let unix_s = (self.shared.clock_unix_base_ms + ctx.now_ms()) / 1000;
        let verdict = upgrade::evaluate(
            bytes,
            &self.shared.handshake_limits,
            &self.shared.secret,
            unix_s,
            &self.shared.site,
        );
        if matches!(verdict, Verdict::Incomplete) {
            let head = buffered.unwrap_or_else(|| data.to_vec());
            self.slot_mut(conn).pending = Some(Box::new(Pending::Head(head)));
            return;
        }
        let listener = self.slot_mut(conn).last_rx_ms as usize;
        self.forget(ctx, conn);
        match verdict {
            Verdict::Incomplete => unreachable!("handled above"),
            Verdict::Refuse {
                status,
                response,
                reason,
            } => self.refuse(ctx, conn, status, response, &reason),
            Verdict::Serve(response) => ctx.close(conn, Some(Bytes::from(response))),
            Verdict::Accept(accepted) => {
                let leftover = bytes[accepted.consumed..].to_vec();
                let console = self.shared.console_listeners.get(listener) == Some(&true);
                self.route(ctx, conn, accepted, leftover, console);
            }
        }
    }

    pub(super) fn on_handshake_timeout(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        self.forget(ctx, conn);
        let response = handshake::response_error(408, "handshake not completed in time", &[]);
        self.refuse(ctx, conn, 408, response, "handshake timeout");
    }

    /// Sends the connection to its user's home shard, or opens it here.
    fn route(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        conn: ConnId,
        a: Accepted,
        leftover: Vec<u8>,
        console: bool,
    ) {
        if self.shared.control.is_draining() {
            let response = handshake::response_error(
                503,
                "server restarting; reconnect elsewhere",
                &[("Retry-After", "1")],
            );
            self.refuse(ctx, conn, 503, response, "draining");
            return;
        }
        let home = home_shard(&a.user, ctx.shard_count());
        let handed = Box::new(Handed {
            user: a.user,
            console,
            accept_key: a.accept_key,
            since: a.since,
            leftover,
        });
        if home == ctx.shard_id() {
            self.open(ctx, conn, *handed);
            return;
        }
        if let Err(msg) = ctx.hand_off(conn, home, Msg::Handoff(handed)) {
            let user = match &msg {
                Msg::Handoff(h) => h.user.as_str(),
                _ => "",
            };
            tracing::warn!(
                shard = ctx.shard_id(),
                home,
                user,
                "home shard's queue is full; refusing the upgrade with 503"
            );
            let response = handshake::response_error(
                503,
                "server busy, try again shortly",
                &[("Retry-After", "1")],
            );
            ctx.close(conn, Some(Bytes::from(response)));
        }
    }

    /// The connection is on its home shard: register it, answer 101, greet
    /// it, replay what a resuming device missed, then read frames.
    pub(super) fn open(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, handed: Handed) {
        self.reserve(ctx);
        let user = self
            .users
            .find_or_create(&handed.user, self.forgotten_floor_seq);
        if self.users.get(user).is_some_and(|u| u.device_count() == 0) {
            self.users_online += 1;
        }
        self.users.attach(user, conn);
        self.devices_online += 1;
        self.set_console(conn, handed.console);
        GatewayStats::add(&self.stats().handshakes_total, 1);
        let last_seq = self.newest_seq(user);
        let floor_seq = self.resume_floor_seq(user);
        // A resume is recovered when nothing after the device's seq was
        // lost for this user in this epoch: replay the rest in order.
        let recovered = handed.since.map(|since| {
            since.epoch == self.shared.epoch && since.seq >= floor_seq && since.seq <= last_seq
        });
        let welcome = format!(
            r#"{{"type":"welcome","user":{},"epoch":{},"seq":{}{}}}"#,
            serde_json::Value::from(handed.user.as_str()),
            self.shared.epoch,
            last_seq,
            match recovered {
                Some(r) => format!(r#","recovered":{r}"#),
                None => String::new(),
            }
        );
        let mut out = handshake::response_101(&handed.accept_key, None);
        out.extend_from_slice(&writer::encode_frame(Opcode::Text, welcome.as_bytes()));
        let replay_after = match (recovered, handed.since) {
            (Some(true), Some(since)) if since.seq < last_seq => Some(since.seq),
            _ => None,
        };
        ctx.stream(conn);
        let now = ctx.now_ms();
        *self.slot_mut(conn) = Slot {
            user,
            last_rx_ms: now as u32,
            pending: replay_after.map(|after| {
                Box::new(Pending::Open {
                    frames: FrameReader::default(),
                    replay_after: Some(after),
                })
            }),
        };
        ctx.set_deadline(conn, self.liveness(conn).first_deadline_ms(now));
        if ctx.send(conn, &[Bytes::from(out)]).is_err() {
            self.forget(ctx, conn);
            ctx.abort(conn);
            return;
        }
        if replay_after.is_some() {
            self.continue_replay(ctx, conn);
        }
        tracing::debug!(
            shard = ctx.shard_id(),
            user = handed.user,
            ?recovered,
            "connected"
        );
        if !handed.leftover.is_empty() {
            let mut leftover = handed.leftover;
            self.on_frames(ctx, conn, &mut leftover);
        }
    }

    /// Sends a close frame and closes (after the peer answers or the linger).
    pub(super) fn close_ws(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        conn: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        self.forget(ctx, conn);
        ctx.close(conn, Some(Bytes::from(writer::close_frame(code, reason))));
    }

    fn user_name(&self, conn: ConnId) -> String {
        self.slots
            .get(conn.index())
            .and_then(|s| self.users.get(s.user))
            .map(|u| u.name().to_string())
            .unwrap_or_default()
    }

    pub(super) fn on_frames(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &mut [u8]) {
        let now = ctx.now_ms();
        let slot = self.slot_mut(conn);
        slot.last_rx_ms = now as u32;
        let (mut frames, replay_after) = match slot.pending.take().map(|p| *p) {
            Some(Pending::Open {
                frames,
                replay_after,
            }) => (frames, replay_after),
            _ => (FrameReader::default(), None),
        };
        let limits = self.shared.reader_limits;
        let mut peer_close: Option<Option<CloseCode>> = None;
        let mut send_failed = None;
        let result = frames.feed(data, &limits, |event| match event {
            Event::Ping(payload) => {
                let pong = Bytes::from(writer::pong_frame(payload));
                if let Err(e) = ctx.send(conn, &[pong]) {
                    send_failed = Some(e);
                }
            }
            Event::Close(status) => peer_close = Some(status.map(|(code, _)| code)),
            // Client messages are accepted within the limits and not used yet.
            Event::MessageStart(_) | Event::MessageData(_) | Event::MessageEnd | Event::Pong(_) => {
            }
        });
        if let Err(ProtocolError { code, reason }) = result {
            let user = self.user_name(conn);
            tracing::info!(
                shard = ctx.shard_id(),
                user,
                code = code.0,
                reason,
                "protocol error; closing"
            );
            self.close_ws(ctx, conn, code, reason);
            return;
        }
        if let Some(status) = peer_close {
            // Echo the client's code (RFC 6455 §5.5.1); none given → 1000.
            let code = status.unwrap_or(CloseCode::NORMAL);
            tracing::debug!(shard = ctx.shard_id(), code = code.0, "client closed");
            self.close_ws(ctx, conn, code, "");
            return;
        }
        if let Some(SendError::QueueFull) = send_failed {
            self.slow_consumer(ctx, conn);
            return;
        }
        if frames.is_at_rest() && replay_after.is_none() {
            return; // nothing mid-way: keep no reader for an idle connection
        }
        self.slot_mut(conn).pending = Some(Box::new(Pending::Open {
            frames,
            replay_after,
        }));
    }

    /// True while `conn` is still being sent its replay: live pushes wait in
    /// the mailbox so they arrive after it, in order.
    pub(super) fn is_replaying(&self, conn: ConnId) -> bool {
        matches!(
            self.slots
                .get(conn.index())
                .and_then(|s| s.pending.as_deref()),
            Some(Pending::Open {
                replay_after: Some(_),
                ..
            })
        )
    }

    /// Sends mailbox entries after the replay cursor while the send queue
    /// takes them; continues on `on_drained`; ends when caught up.
    pub(super) fn continue_replay(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        let Some(slot) = self.slots.get(conn.index()) else {
            return;
        };
        let Some(Pending::Open {
            replay_after: Some(mut cursor),
            ..
        }) = slot.pending.as_deref()
        else {
            return;
        };
        let Some(entry) = self.users.get(slot.user) else {
            return;
        };
        if self.resume_floor_seq(slot.user) > cursor {
            // The mailbox dropped entries this device had not been sent.
            self.close_ws(
                ctx,
                conn,
                CloseCode::TRY_AGAIN_LATER,
                "fell behind the mailbox",
            );
            return;
        }
        let mut caught_up = true;
        for push in merged_after(entry.mailbox(), &self.broadcasts, cursor) {
            match ctx.send(conn, &push.parts()) {
                Ok(()) => cursor = push.seq,
                Err(SendError::QueueFull) => {
                    caught_up = false;
                    break;
                }
                Err(SendError::Closed) => return,
            }
        }
        let slot = self.slot_mut(conn);
        let Some(Pending::Open {
            frames,
            replay_after,
        }) = slot.pending.as_deref_mut()
        else {
            return;
        };
        if !caught_up {
            *replay_after = Some(cursor);
            ctx.notify_when_drained(conn);
        } else if frames.is_at_rest() {
            slot.pending = None;
        } else {
            *replay_after = None;
        }
    }

    /// A device not reading fast enough: cut it; it resumes from the mailbox.
    pub(super) fn slow_consumer(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        GatewayStats::add(&self.stats().slow_consumer_closes_total, 1);
        let user = self.user_name(conn);
        tracing::info!(
            shard = ctx.shard_id(),
            user,
            "send queue full: slow consumer closed with 1013"
        );
        self.close_ws(ctx, conn, CloseCode::TRY_AGAIN_LATER, "send queue full");
    }

    pub(super) fn on_liveness_deadline(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        let now = ctx.now_ms();
        let last_rx = full_ms(now, self.slot_mut(conn).last_rx_ms);
        match self.liveness(conn).on_deadline(last_rx, now) {
            Action::Wait { next_at_ms } => ctx.set_deadline(conn, next_at_ms),
            Action::Ping { next_at_ms } => {
                ctx.set_deadline(conn, next_at_ms);
                if ctx
                    .send(conn, &[Bytes::from(writer::ping_frame(b""))])
                    .is_err()
                {
                    self.slow_consumer(ctx, conn);
                }
            }
            Action::Close => {
                tracing::debug!(shard = ctx.shard_id(), "idle timeout; closing");
                self.close_ws(ctx, conn, CloseCode::GOING_AWAY, "idle timeout");
            }
        }
    }

    pub(super) fn stop_sessions(&mut self, ctx: &mut Ctx<'_, Msg>) {
        for conn in std::mem::take(&mut self.handshakes) {
            *self.slot_mut(conn) = Slot::vacant();
            ctx.abort(conn);
        }
        let open: Vec<ConnId> = self.users.iter().flat_map(|(_, u)| u.devices()).collect();
        for conn in open {
            self.close_ws(ctx, conn, CloseCode::GOING_AWAY, "server shutting down");
        }
    }
}
