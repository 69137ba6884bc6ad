//! Wiring for clients: accept (admission) → request head (handshakes) →
//! the user's home shard → welcome and replay (home, sessions) → frames and
//! liveness until close; and the drip drain. A device is a WebSocket or a
//! Server-Sent Events stream ([`Wire`]); both take the same path, and
//! only the bytes that greet, ping and close it differ.

use super::{bytes, Gateway, GatewayStats, Handed, Io, Msg, CLIENT_LISTENER, CONSOLE_LISTENER};
use crate::liveness::Action;
use crate::route::home_shard;
use crate::sse;
use crate::upgrade::{Accepted, Transport, Verdict};
use crate::ws::close::CloseCode;
use crate::ws::frame::Opcode;
use crate::ws::handshake;
use crate::ws::writer;
use bytes::Bytes;
use shard::{ConnId, SendError};

use super::sessions::handshakes::Step;
use super::sessions::{ping_frame, Closing, Wire};

/// The heartbeat of a `?heartbeat=1` WebSocket device: the text message
/// `{"type":"ping"}` in one unmasked frame.
const TEXT_PING_FRAME: &[u8] = b"\x81\x0f{\"type\":\"ping\"}";

/// Users looked at per drain tick while looking for devices to close, so
/// one tick stays short even on a sparse table.
const DRAIN_SCAN_USERS_PER_TICK_MAX: usize = 100_000;

impl Gateway {
    fn refuse_upgrade(
        &self,
        io: &mut impl Io,
        conn: ConnId,
        status: u16,
        response: Vec<u8>,
        reason: &str,
    ) {
        GatewayStats::add(&self.stats().handshakes_refused_total, 1);
        tracing::info!(shard = io.shard_id(), status, reason, "upgrade refused");
        io.close(conn, Some(Bytes::from(response)));
    }

    pub(super) fn open_client(&mut self, io: &mut impl Io, conn: ConnId, listener: usize) {
        let now = io.now_ms();
        if let Err(why) = self.admission.admit(now, self.load()) {
            // Refused before reading a byte: the cheapest answer there is.
            GatewayStats::add(&self.stats().overload_rejections_total, 1);
            tracing::debug!(shard = io.shard_id(), why, "connection refused: 503");
            let response = handshake::response_error(
                503,
                &format!("server busy ({why}); try again later"),
                &[("Retry-After", "5")],
            );
            io.close(conn, Some(Bytes::from(response)));
            return;
        }
        self.handshakes.begin(conn, listener);
        io.set_deadline(conn, now + self.shared.handshake_timeout_ms);
    }

    pub(super) fn handshake_bytes(&mut self, io: &mut impl Io, conn: ConnId, data: &[u8]) {
        let unix_s = (self.shared.clock_unix_base_ms + io.now_ms()) / 1000;
        let step = self
            .handshakes
            .receive(conn, data, &self.shared.upgrade, unix_s);
        let Step::Judged {
            verdict,
            listener,
            leftover,
        } = step
        else {
            return;
        };
        match verdict {
            Verdict::Incomplete => {}
            Verdict::Refuse {
                status,
                response,
                reason,
            } => self.refuse_upgrade(io, conn, status, response, &reason),
            Verdict::Serve(response) => io.close(conn, Some(Bytes::from(response))),
            Verdict::Accept(accepted) => {
                let console = self.shared.console_listeners.get(listener) == Some(&true);
                self.route(io, conn, accepted, leftover, console);
            }
        }
    }

    pub(super) fn handshake_timeout(&mut self, io: &mut impl Io, conn: ConnId) {
        self.release(io, conn);
        let response = handshake::response_error(408, "handshake not completed in time", &[]);
        self.refuse_upgrade(io, conn, 408, response, "handshake timeout");
    }

    /// Sends the connection to its user's home shard, or opens it here.
    fn route(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        a: Accepted,
        leftover: Vec<u8>,
        console: bool,
    ) {
        if self.shared.control.refuses_clients() {
            let response = handshake::response_error(
                503,
                "server restarting; reconnect elsewhere",
                &[("Retry-After", "1")],
            );
            self.refuse_upgrade(io, conn, 503, response, "draining");
            return;
        }
        let home = home_shard(&a.user, io.shard_count());
        let handed = Handed {
            user: a.user,
            console,
            transport: a.transport,
            since: a.since,
            leftover,
        };
        if home == io.shard_id() {
            return self.open_device(io, conn, handed);
        }
        if let Err(msg) = io.hand_off(conn, home, Msg::Handoff(Box::new(handed))) {
            let user = match &msg {
                Msg::Handoff(h) => h.user.as_str(),
                _ => "",
            };
            tracing::warn!(
                shard = io.shard_id(),
                home,
                user,
                "home shard's queue is full; refusing the upgrade with 503"
            );
            let response = handshake::response_error(
                503,
                "server busy, try again shortly",
                &[("Retry-After", "1")],
            );
            io.close(conn, Some(Bytes::from(response)));
        }
    }

    /// The connection is on its home shard: register it, answer (101, or
    /// the SSE head), greet it, replay what a resuming device missed, then
    /// read frames (WebSocket) or nothing (SSE). With Redis the greeting
    /// and the replay wait for a read of the user's history
    /// ([`Gateway::ask_welcome`]); the history on this shard is not used.
    pub(super) fn open_device(&mut self, io: &mut impl Io, conn: ConnId, handed: Handed) {
        let now = io.now_ms();
        let with_redis = self.positions.is_some();
        let since = if with_redis { None } else { handed.since };
        let joined = self.home.join(&handed.user, conn, since);
        if let Some(outbox) = &mut self.presence_outbox {
            outbox.mark(&handed.user);
        }
        let deadline =
            self.sessions
                .open(conn, joined.user, handed.console, joined.replay_after, now);
        let wire = match handed.transport {
            Transport::Sse => Wire::Sse,
            Transport::WebSocket {
                text_heartbeat: true,
                ..
            } => Wire::WebSocketTextPing,
            Transport::WebSocket { .. } => Wire::WebSocket,
        };
        self.sessions.set_wire(conn, wire);
        let deflate = match &handed.transport {
            Transport::WebSocket { deflate, .. } => *deflate,
            Transport::Sse => None,
        };
        self.sessions.set_deflate(conn, deflate.is_some());
        GatewayStats::add(&self.stats().handshakes_total, 1);
        let mut out = match &handed.transport {
            Transport::WebSocket { accept_key, .. } => {
                let extensions = deflate.map(|agreement| agreement.response_value());
                handshake::response_101(accept_key, None, extensions.as_deref())
            }
            Transport::Sse => sse::RESPONSE_HEAD.to_vec(),
        };
        if !with_redis {
            out.extend_from_slice(&self.greeting(
                io,
                conn,
                &handed.user,
                Greeting {
                    epoch: joined.epoch,
                    last_seq: joined.last_seq,
                    recovered: joined.recovered,
                    since_seq: handed.since.map(|s| s.seq),
                },
            ));
        }
        io.stream(conn);
        io.coalesce_sends(conn);
        io.set_deadline(conn, deadline);
        if io.send(conn, &bytes(out)).is_err() {
            self.release(io, conn);
            io.abort(conn);
            return;
        }
        tracing::debug!(
            shard = io.shard_id(),
            user = handed.user,
            recovered = ?joined.recovered,
            ?wire,
            "connected"
        );
        if with_redis {
            self.ask_welcome(io, conn, &handed.user, handed.since);
        } else if joined.replay_after.is_some() {
            self.continue_replay(io, conn);
        }
        if wire != Wire::Sse && !handed.leftover.is_empty() && self.sessions.user(conn).is_some() {
            let mut leftover = handed.leftover;
            self.device_bytes(io, conn, &mut leftover);
        }
    }

    /// The welcome message a device is greeted with, in its wire's form
    /// (after the 101 or the SSE response head).
    pub(super) fn greeting(
        &self,
        io: &impl Io,
        conn: ConnId,
        user: &str,
        greeting: Greeting,
    ) -> Vec<u8> {
        let wire = self.sessions.wire(conn);
        // Clients that asked for heartbeats they can see are told how
        // often they come, to notice a dead connection.
        let heartbeat = match wire {
            Wire::WebSocket => String::new(),
            _ => format!(
                r#","heartbeat_ms":{}"#,
                self.sessions.ping_interval_ms(conn)
            ),
        };
        let welcome = format!(
            r#"{{"type":"welcome","user":{},"epoch":{},"seq":{}{}{heartbeat}}}"#,
            serde_json::Value::from(user),
            greeting.epoch,
            greeting.last_seq,
            match greeting.recovered {
                Some(r) => format!(r#","recovered":{r}"#),
                None => String::new(),
            }
        );
        match wire {
            Wire::WebSocket | Wire::WebSocketTextPing => {
                writer::encode_frame(Opcode::Text, welcome.as_bytes())
            }
            Wire::Sse => {
                // The event's id is where the client stands after it: its
                // own position while a replay follows, else the newest seq.
                let position_seq = match (greeting.recovered, greeting.since_seq) {
                    (Some(true), Some(since_seq)) => since_seq,
                    _ => greeting.last_seq,
                };
                let retry_ms = sse::retry_ms(
                    CloseCode::NORMAL,
                    retry_seed(io.shard_id(), conn, io.now_ms()),
                );
                sse::welcome_event(retry_ms, greeting.epoch, position_seq, &welcome)
            }
        }
    }

    pub(super) fn device_bytes(&mut self, io: &mut impl Io, conn: ConnId, data: &mut [u8]) {
        let received = self.sessions.receive(conn, data, io.now_ms());
        // Pongs first: a ping answered before the close (Autobahn 7.1.x).
        if !received.pongs.is_empty() {
            if let Err(SendError::QueueFull) = io.send(conn, &bytes(received.pongs)) {
                return self.slow_consumer(io, conn);
            }
        }
        match received.close {
            Some(Closing::ProtocolError(code, reason)) => {
                let user = self.device_user_name(conn);
                tracing::info!(
                    shard = io.shard_id(),
                    user,
                    code = code.0,
                    reason,
                    "protocol error; closing"
                );
                self.close_device(io, conn, code, reason);
            }
            Some(Closing::Echo(code)) => {
                tracing::debug!(shard = io.shard_id(), code = code.0, "client closed");
                self.close_device(io, conn, code, "");
            }
            None => {}
        }
    }

    pub(super) fn device_deadline(&mut self, io: &mut impl Io, conn: ConnId) {
        let now = io.now_ms();
        match self.sessions.on_deadline(conn, now) {
            None => {}
            Some(Action::Wait { next_at_ms }) => io.set_deadline(conn, next_at_ms),
            Some(Action::Ping { next_at_ms }) => {
                io.set_deadline(conn, next_at_ms);
                let heartbeat = match self.sessions.wire(conn) {
                    Wire::WebSocket => Bytes::from(ping_frame()),
                    Wire::WebSocketTextPing => Bytes::from_static(TEXT_PING_FRAME),
                    Wire::Sse => Bytes::from_static(sse::HEARTBEAT),
                };
                if io.send(conn, &[heartbeat]).is_err() {
                    self.slow_consumer(io, conn);
                }
            }
            Some(Action::Close) => {
                tracing::debug!(shard = io.shard_id(), "idle timeout; closing");
                self.close_device(io, conn, CloseCode::GOING_AWAY, "idle timeout");
            }
        }
    }

    pub(super) fn device_user_name(&self, conn: ConnId) -> String {
        self.sessions
            .user(conn)
            .map(|u| self.home.user_name(u).to_string())
            .unwrap_or_default()
    }

    /// Sends a close frame and closes (after the peer answers or the
    /// linger). An SSE device gets the same code and reason as a last event,
    /// with the delay after which to reconnect (spread for a drain).
    pub(super) fn close_device(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        let wire = self.sessions.wire(conn);
        self.release(io, conn);
        let last = match wire {
            Wire::Sse => {
                let retry_ms = sse::retry_ms(code, retry_seed(io.shard_id(), conn, io.now_ms()));
                sse::close_event(code, reason, retry_ms)
            }
            Wire::WebSocket | Wire::WebSocketTextPing => writer::close_frame(code, reason),
        };
        io.close(conn, Some(Bytes::from(last)));
    }

    /// A device not reading fast enough: cut it; it resumes from the mailbox.
    pub(super) fn slow_consumer(&mut self, io: &mut impl Io, conn: ConnId) {
        GatewayStats::add(&self.stats().slow_consumer_closes_total, 1);
        let user = self.device_user_name(conn);
        tracing::info!(
            shard = io.shard_id(),
            user,
            "send queue full: slow consumer closed with 1013"
        );
        self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, "send queue full");
    }

    /// Once `Control` says draining: stop accepting clients (push and admin
    /// sockets stay), then close this shard's share of the drain rate with
    /// 1012 ("service restart") each tick, so devices reconnect to the
    /// successor a few at a time. Report when no client is left.
    pub(super) fn drain_step(&mut self, io: &mut impl Io) {
        let control = self.shared.control.clone();
        if !control.is_draining() {
            // A drain that was stopped (a successor died) starts afresh.
            self.admission.drain_stopped();
            return;
        }
        let step =
            self.admission
                .drain_tick(io.now_ms(), control.drain_rate_per_s(), io.shard_count());
        if step.began {
            tracing::info!(
                shard = io.shard_id(),
                devices = self.sessions.len(),
                "drain: no longer accepting clients"
            );
            // Handed over: the successor accepts from these very sockets.
            if !control.listeners_handed_over() {
                io.close_listener(CLIENT_LISTENER);
                io.close_listener(CONSOLE_LISTENER);
                // tls_listen, when it follows a console listener.
                io.close_listener(super::TLS_LISTENER_AFTER_CONSOLE);
            }
        }
        if step.closes > 0 {
            let mut to_close = Vec::new();
            self.drain_cursor = self.home.devices_from(
                self.drain_cursor,
                DRAIN_SCAN_USERS_PER_TICK_MAX,
                step.closes,
                &mut to_close,
            );
            self.admission.drained(to_close.len());
            for conn in to_close {
                GatewayStats::add(&self.stats().drain_closes_total, 1);
                let reason = "server restarting; reconnect";
                self.close_device(io, conn, CloseCode::SERVICE_RESTART, reason);
            }
        }
        if self.sessions.is_empty() && self.handshakes.is_empty() && self.admission.report_drained()
        {
            tracing::info!(shard = io.shard_id(), "drain: shard empty");
            control.shard_drained();
        }
    }

    pub(super) fn stop_clients(&mut self, io: &mut impl Io) {
        for conn in self.handshakes.take_all() {
            io.abort(conn);
        }
        let mut devices = Vec::new();
        self.home
            .devices_from(0, usize::MAX, usize::MAX, &mut devices);
        for conn in devices {
            self.close_device(io, conn, CloseCode::GOING_AWAY, "server shutting down");
        }
    }
}

/// What a welcome says.
#[derive(Clone, Copy, Debug)]
pub(super) struct Greeting {
    pub epoch: u64,
    /// The newest seq that concerns the user.
    pub last_seq: u64,
    /// Only for a resume: was nothing after `since` lost?
    pub recovered: Option<bool>,
    /// The seq the device resumes from, if it sent one.
    pub since_seq: Option<u64>,
}

/// Differs between connections (of any shard, and between two closes of
/// one slot), so the delays SSE clients are told spread out.
fn retry_seed(shard: usize, conn: ConnId, now_ms: u64) -> u64 {
    ((shard as u64) << 56) ^ ((conn.index() as u64) << 32) ^ now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_ping_is_one_text_frame() {
        assert_eq!(
            TEXT_PING_FRAME,
            &writer::encode_frame(Opcode::Text, br#"{"type":"ping"}"#)[..]
        );
    }
}
