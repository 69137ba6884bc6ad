//! The gateway: implements `shard::App`, gluing the upgrade, the WebSocket
//! frame reader, users and liveness together. It never touches a socket;
//! everything goes through `Ctx`.
//!
//! A connection's life: accepted on any shard → request head buffered and
//! judged (`upgrade`) → handed to the user's home shard (`route`) → 101 and
//! welcome sent from there → frames read until close, ping/idle by
//! `liveness`.

use crate::auth::Secret;
use crate::liveness::{Action, Liveness};
use crate::route::home_shard;
use crate::upgrade::{self, Accepted, Since, Verdict};
use crate::users::Users;
use crate::ws::close::CloseCode;
use crate::ws::handshake::{self, HandshakeLimits};
use crate::ws::reader::{Event, FrameReader, ReaderLimits};
use crate::ws::writer;
use crate::ws::ProtocolError;
use bytes::Bytes;
use shard::{App, CloseReason, ConnId, Ctx, SendError};
use std::collections::HashSet;
use std::sync::Arc;

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
}

/// Messages between gateway shards.
pub enum Msg {
    /// A connection moving to its user's home shard, with its upgrade.
    Handoff(Box<Handed>),
}

pub struct Handed {
    user: String,
    accept_key: String,
    since: Option<Since>,
    /// WebSocket bytes that arrived right behind the request head.
    leftover: Vec<u8>,
}

/// Per-connection state, indexed by `ConnId::index`: 16 bytes, and an idle
/// open connection holds no heap memory here.
struct Slot {
    /// The user's index when open; `VACANT` or `HANDSHAKE` otherwise.
    user: u32,
    /// Low 32 bits of `now_ms` when the last byte arrived (wrapping); open only.
    last_rx_ms: u32,
    /// Work in progress: a request head that arrived in pieces, or a frame
    /// reader with a frame or message mid-way. None when at rest.
    pending: Option<Box<Pending>>,
}

const VACANT: u32 = u32::MAX;
const HANDSHAKE: u32 = u32::MAX - 1;

enum Pending {
    Head(Vec<u8>),
    Frames(FrameReader),
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

pub struct Gateway {
    shared: Arc<GatewayShared>,
    slots: Vec<Slot>,
    users: Users,
    /// Connections still in the upgrade (few, short-lived).
    handshakes: HashSet<ConnId>,
}

fn full_ms(now_ms: u64, low: u32) -> u64 {
    now_ms - (now_ms as u32).wrapping_sub(low) as u64
}

impl Gateway {
    pub fn new(shared: Arc<GatewayShared>) -> Gateway {
        Gateway {
            shared,
            slots: Vec::new(),
            users: Users::default(),
            handshakes: HashSet::new(),
        }
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

    fn refuse(ctx: &mut Ctx<'_, Msg>, conn: ConnId, status: u16, response: Vec<u8>, reason: &str) {
        tracing::info!(shard = ctx.shard_id(), status, reason, "upgrade refused");
        ctx.close(conn, Some(Bytes::from(response)));
    }

    fn on_handshake_bytes(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &[u8]) {
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
        );
        if matches!(verdict, Verdict::Incomplete) {
            let head = buffered.unwrap_or_else(|| data.to_vec());
            self.slot_mut(conn).pending = Some(Box::new(Pending::Head(head)));
            return;
        }
        *self.slot_mut(conn) = Slot::vacant();
        self.handshakes.remove(&conn);
        match verdict {
            Verdict::Incomplete => unreachable!("handled above"),
            Verdict::Refuse {
                status,
                response,
                reason,
            } => Self::refuse(ctx, conn, status, response, &reason),
            Verdict::Accept(accepted) => {
                let leftover = bytes[accepted.consumed..].to_vec();
                self.route(ctx, conn, accepted, leftover);
            }
        }
    }

    /// Sends the connection to its user's home shard, or opens it here.
    fn route(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, a: Accepted, leftover: Vec<u8>) {
        let home = home_shard(&a.user, ctx.shard_count());
        let handed = Box::new(Handed {
            user: a.user,
            accept_key: a.accept_key,
            since: a.since,
            leftover,
        });
        if home == ctx.shard_id() {
            self.open(ctx, conn, *handed);
            return;
        }
        if let Err(Msg::Handoff(handed)) = ctx.hand_off(conn, home, Msg::Handoff(handed)) {
            tracing::warn!(
                shard = ctx.shard_id(),
                home,
                user = handed.user,
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

    /// The connection is on its home shard: register it, answer 101 and
    /// greet it, then read frames.
    fn open(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, handed: Handed) {
        self.reserve(ctx);
        let user = self.users.attach(&handed.user, conn);
        let welcome = format!(
            r#"{{"type":"welcome","user":{},"epoch":{},"seq":{}}}"#,
            serde_json::Value::from(handed.user.as_str()),
            self.shared.epoch,
            0
        );
        let _ = handed.since; // replay arrives with mailboxes
        let mut out = handshake::response_101(&handed.accept_key, None);
        out.extend_from_slice(&writer::encode_frame(
            crate::ws::frame::Opcode::Text,
            welcome.as_bytes(),
        ));
        ctx.stream(conn);
        let now = ctx.now_ms();
        *self.slot_mut(conn) = Slot {
            user,
            last_rx_ms: now as u32,
            pending: None,
        };
        ctx.set_deadline(conn, self.shared.liveness.first_deadline_ms(now));
        if ctx.send(conn, &[Bytes::from(out)]).is_err() {
            self.forget(conn);
            ctx.abort(conn);
            return;
        }
        tracing::debug!(shard = ctx.shard_id(), user = handed.user, "connected");
        if !handed.leftover.is_empty() {
            let mut leftover = handed.leftover;
            self.on_frames(ctx, conn, &mut leftover);
        }
    }

    /// Drops the gateway's state of a connection that is going away.
    fn forget(&mut self, conn: ConnId) {
        let slot = std::mem::replace(self.slot_mut(conn), Slot::vacant());
        match slot.user {
            VACANT => {}
            HANDSHAKE => {
                self.handshakes.remove(&conn);
            }
            user => self.users.detach(user, conn),
        }
    }

    /// Sends a close frame and closes (after the peer answers or the linger).
    fn close_ws(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, code: CloseCode, reason: &str) {
        self.forget(conn);
        ctx.close(conn, Some(Bytes::from(writer::close_frame(code, reason))));
    }

    fn on_frames(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &mut [u8]) {
        let now = ctx.now_ms();
        let slot = self.slot_mut(conn);
        let user = slot.user;
        slot.last_rx_ms = now as u32;
        let mut frames = match slot.pending.take().map(|p| *p) {
            Some(Pending::Frames(reader)) => reader,
            _ => FrameReader::default(),
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
        let user_name = self
            .users
            .get(user)
            .map(|u| u.name().to_string())
            .unwrap_or_default();
        if let Err(ProtocolError { code, reason }) = result {
            tracing::info!(
                shard = ctx.shard_id(),
                user = user_name,
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
            tracing::debug!(
                shard = ctx.shard_id(),
                user = user_name,
                code = code.0,
                "client closed"
            );
            self.close_ws(ctx, conn, code, "");
            return;
        }
        if let Some(SendError::QueueFull) = send_failed {
            tracing::info!(
                shard = ctx.shard_id(),
                user = user_name,
                "send queue full; closing 1013"
            );
            self.close_ws(ctx, conn, CloseCode::TRY_AGAIN_LATER, "send queue full");
            return;
        }
        if frames.is_at_rest() {
            return; // nothing mid-way: keep no reader for an idle connection
        }
        self.slot_mut(conn).pending = Some(Box::new(Pending::Frames(frames)));
    }
}

impl App for Gateway {
    type Msg = Msg;

    fn on_accept(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, _listener: usize) {
        self.reserve(ctx);
        *self.slot_mut(conn) = Slot {
            user: HANDSHAKE,
            ..Slot::vacant()
        };
        self.handshakes.insert(conn);
        ctx.set_deadline(conn, ctx.now_ms() + self.shared.handshake_timeout_ms);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &mut [u8]) {
        match self.slot_mut(conn).user {
            VACANT => {}
            HANDSHAKE => self.on_handshake_bytes(ctx, conn, data),
            _ => self.on_frames(ctx, conn, data),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        let now = ctx.now_ms();
        let slot = self.slot_mut(conn);
        match slot.user {
            VACANT => {}
            HANDSHAKE => {
                self.forget(conn);
                let response =
                    handshake::response_error(408, "handshake not completed in time", &[]);
                Self::refuse(ctx, conn, 408, response, "handshake timeout");
            }
            _ => {
                let last_rx = full_ms(now, slot.last_rx_ms);
                match self.shared.liveness.on_deadline(last_rx, now) {
                    Action::Wait { next_at_ms } => ctx.set_deadline(conn, next_at_ms),
                    Action::Ping { next_at_ms } => {
                        ctx.set_deadline(conn, next_at_ms);
                        if ctx
                            .send(conn, &[Bytes::from(writer::ping_frame(b""))])
                            .is_err()
                        {
                            self.close_ws(ctx, conn, CloseCode::TRY_AGAIN_LATER, "send queue full");
                        }
                    }
                    Action::Close => {
                        tracing::debug!(shard = ctx.shard_id(), "idle timeout; closing");
                        self.close_ws(ctx, conn, CloseCode::GOING_AWAY, "idle timeout");
                    }
                }
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, reason: CloseReason) {
        tracing::debug!(shard = ctx.shard_id(), ?reason, "connection ended");
        self.forget(conn);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Msg>, from_shard: usize, msg: Msg) {
        match msg {
            Msg::Handoff(_) => tracing::error!(
                shard = ctx.shard_id(),
                from_shard,
                "handoff state arrived as a plain message; dropped"
            ),
        }
    }

    fn on_handoff(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, msg: Msg) {
        let Msg::Handoff(handed) = msg;
        self.open(ctx, conn, *handed);
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_, Msg>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_state_is_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 24,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn wrapping_clock_reconstructs_recent_times() {
        let now = (1u64 << 33) + 500;
        assert_eq!(full_ms(now, (now - 1_000) as u32), now - 1_000);
        assert_eq!(full_ms(now, now as u32), now);
    }
}
