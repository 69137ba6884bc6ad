//! Wiring for WebSocket clients: accept (admission) → request head
//! (handshakes) → the user's home shard → welcome and replay (home,
//! sessions) → frames and liveness until close; and the drip drain.

use super::{bytes, Gateway, GatewayStats, Handed, Io, Msg, CLIENT_LISTENER, CONSOLE_LISTENER};
use crate::liveness::Action;
use crate::route::home_shard;
use crate::upgrade::{Accepted, Verdict};
use crate::ws::close::CloseCode;
use crate::ws::frame::Opcode;
use crate::ws::handshake;
use crate::ws::writer;
use bytes::Bytes;
use shard::{ConnId, SendError};

use super::sessions::handshakes::Step;
use super::sessions::{ping_frame, Closing};

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
        if self.shared.control.is_draining() {
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
            accept_key: a.accept_key,
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

    /// The connection is on its home shard: register it, answer 101, greet
    /// it, replay what a resuming device missed, then read frames.
    pub(super) fn open_device(&mut self, io: &mut impl Io, conn: ConnId, handed: Handed) {
        let now = io.now_ms();
        let joined = self.home.join(&handed.user, conn, handed.since);
        let deadline =
            self.sessions
                .open(conn, joined.user, handed.console, joined.replay_after, now);
        GatewayStats::add(&self.stats().handshakes_total, 1);
        let welcome = format!(
            r#"{{"type":"welcome","user":{},"epoch":{},"seq":{}{}}}"#,
            serde_json::Value::from(handed.user.as_str()),
            joined.epoch,
            joined.last_seq,
            match joined.recovered {
                Some(r) => format!(r#","recovered":{r}"#),
                None => String::new(),
            }
        );
        let mut out = handshake::response_101(&handed.accept_key, None);
        out.extend_from_slice(&writer::encode_frame(Opcode::Text, welcome.as_bytes()));
        io.stream(conn);
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
            "connected"
        );
        if joined.replay_after.is_some() {
            self.continue_replay(io, conn);
        }
        if !handed.leftover.is_empty() && self.sessions.user(conn).is_some() {
            let mut leftover = handed.leftover;
            self.device_bytes(io, conn, &mut leftover);
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
                if io.send(conn, &bytes(ping_frame())).is_err() {
                    self.slow_consumer(io, conn);
                }
            }
            Some(Action::Close) => {
                tracing::debug!(shard = io.shard_id(), "idle timeout; closing");
                self.close_device(io, conn, CloseCode::GOING_AWAY, "idle timeout");
            }
        }
    }

    fn device_user_name(&self, conn: ConnId) -> String {
        self.sessions
            .user(conn)
            .map(|u| self.home.user_name(u).to_string())
            .unwrap_or_default()
    }

    /// Sends a close frame and closes (after the peer answers or the linger).
    pub(super) fn close_device(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        self.release(io, conn);
        io.close(conn, Some(Bytes::from(writer::close_frame(code, reason))));
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
            io.close_listener(CLIENT_LISTENER);
            io.close_listener(CONSOLE_LISTENER);
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
