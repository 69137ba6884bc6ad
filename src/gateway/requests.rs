//! Wiring where a push is routed: a request from a publisher (push socket)
//! or the admin API is split by home shard — the local share is delivered
//! now, each other shard gets one message with its share — and answered
//! when every part is back (tickets), to its asker, in request order.

use super::home::Counts;
use super::publish::tickets::{Answer, Finished, Gathered, ReplyTo};
use super::{Gateway, GatewayStats, Io, Msg};
use crate::push::wire::{self, Reply, Request};
use crate::route::home_shard;
use crate::takeover::resends::RequestKey;
use bytes::Bytes;
use shard::{ConnId, SendError};

/// Recipients in one push request.
const USERS_PER_PUSH_MAX: usize = 100_000;

fn error_reply(id: u64, message: impl Into<String>) -> Vec<u8> {
    wire::encode_reply(&Reply::Error {
        id,
        message: message.into(),
    })
}

/// The wire reply of an answer. The push socket's `Pushed` carries counts
/// only; why recipients were rejected goes to the log and the metrics.
fn wire_reply(answer: Answer) -> Reply {
    match answer {
        Answer::Pushed { id, counts } => Reply::Pushed {
            id,
            delivered: counts.delivered,
            stored: counts.stored,
            rejected: counts.rejected,
        },
        Answer::Presence {
            id,
            online,
            devices,
        } => Reply::Presence {
            id,
            online,
            devices,
        },
        Answer::Status { id, shards } => Reply::Status { id, shards },
        Answer::Error { id, message } | Answer::Unavailable { id, message } => {
            Reply::Error { id, message }
        }
    }
}

/// A push payload must be one JSON value (it is embedded as `data`).
fn check_payload(data: &str) -> Result<(), String> {
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map(drop)
        .map_err(|e| format!("data is not one JSON value: {e}"))
}

impl Gateway {
    pub(super) fn open_publisher(&mut self, io: &mut impl Io, conn: ConnId) {
        if let Err(why) = self.admission.admit_publisher(self.publishers.len()) {
            tracing::warn!(shard = io.shard_id(), why, "push-socket connection refused");
            io.close(conn, Some(Bytes::from(error_reply(0, why))));
            return;
        }
        io.stream(conn);
        self.publishers.open(conn);
    }

    pub(super) fn publisher_bytes(&mut self, io: &mut impl Io, conn: ConnId, data: &[u8]) {
        if self.shared.control.closes_publishers() {
            // The drain's last step: what was not read before it is not
            // processed here, exactly as if it had stayed in the socket;
            // the connection closes once every request read is answered,
            // and the client resends the rest to the next process.
            self.publishers.stop_reading(conn);
        }
        let received = self.publishers.receive(conn, data, io.now_ms());
        for request in received.requests {
            self.handle_request(io, conn, request);
        }
        if let Some(why) = received.refuse {
            self.refuse_publisher(io, conn, &why);
        }
    }

    /// Answers a broken stream and closes only this publisher connection,
    /// after the replies that are ready.
    pub(super) fn refuse_publisher(&mut self, io: &mut impl Io, conn: ConnId, why: &str) {
        tracing::info!(
            shard = io.shard_id(),
            reason = why,
            "publisher refused; closing it"
        );
        self.flush_replies(io, conn);
        self.release(io, conn);
        io.close(conn, Some(Bytes::from(error_reply(0, why))));
    }

    fn handle_request(&mut self, io: &mut impl Io, conn: ConnId, request: Request) {
        let reply_to = ReplyTo::Publisher(conn);
        match request {
            Request::Push { id, users, data } => {
                self.push_request(io, reply_to, id, users, data, None)
            }
            Request::PushOnce {
                publisher,
                id,
                users,
                data,
            } => {
                let key = RequestKey {
                    publisher,
                    request: id,
                };
                // A resend of a push this process's predecessor forwarded
                // here and did not answer before it died: answered as the
                // predecessor would have, not delivered again.
                if let Some(stored) = self.shared.moves.resends.direct(key) {
                    tracing::info!(
                        shard = io.shard_id(),
                        publisher,
                        request = id,
                        "a resent push was processed here already (forwarded by the previous \
                         process); answered, not delivered again"
                    );
                    GatewayStats::add(&self.stats().push_resends_answered_total, 1);
                    let counts = Counts {
                        stored,
                        ..Counts::default()
                    };
                    return self.answer(io, reply_to, Answer::Pushed { id, counts });
                }
                self.push_request(io, reply_to, id, users, data, Some(key))
            }
            Request::Broadcast { id, data } => self.broadcast_request(io, reply_to, id, data),
            Request::Presence { id, user } => self.presence_request(io, reply_to, id, user),
            Request::Status { id } => self.status_request(io, reply_to, id),
            Request::Drain { id, confirm, .. } if confirm != wire::DRAIN_CONFIRM => {
                let why = format!(
                    "a drain request must carry confirm = {:?}",
                    wire::DRAIN_CONFIRM
                );
                self.publishers.reply(conn, error_reply(id, why), 0);
                self.flush_replies(io, conn);
            }
            Request::Drain { id, rate_per_s, .. } => {
                let rate = self.start_drain(io, rate_per_s, "the push socket");
                let reply = Reply::Draining {
                    id,
                    rate_per_s: rate,
                };
                self.publishers.reply(conn, wire::encode_reply(&reply), 0);
                self.flush_replies(io, conn);
            }
        }
    }

    /// Starts (or re-paces) a drain; 0 = the configured rate.
    pub(super) fn start_drain(&self, io: &impl Io, rate_per_s: u32, via: &str) -> u32 {
        let rate = if rate_per_s == 0 {
            self.shared.drain_rate_per_s
        } else {
            rate_per_s
        };
        tracing::warn!(
            shard = io.shard_id(),
            rate_per_s = rate,
            "drain requested over {via}"
        );
        self.shared.control.start_drain(rate);
        rate
    }

    /// Answers `reply_to` now (in order, for a publisher).
    fn answer(&mut self, io: &mut impl Io, reply_to: ReplyTo, answer: Answer) {
        match reply_to {
            ReplyTo::Publisher(conn) => {
                let gate = self.shared.moves.reply_gate();
                self.publishers
                    .reply(conn, wire::encode_reply(&wire_reply(answer)), gate);
                self.flush_replies(io, conn);
            }
            ReplyTo::Http(conn) => self.answer_http(io, conn, &answer),
        }
    }

    /// A request whose parts are all in (or late): its answer goes to its
    /// asker, which is still there (a gone asker's tickets are cancelled).
    pub(super) fn finish(&mut self, io: &mut impl Io, finished: Option<Finished>) {
        let Some(Finished {
            reply_to,
            ticket,
            answer,
        }) = finished
        else {
            return;
        };
        if let Answer::Pushed { counts, .. } = &answer {
            self.log_rejections(io, counts);
        }
        match reply_to {
            ReplyTo::Publisher(conn) => {
                let reply = wire::encode_reply(&wire_reply(answer));
                let gate = self.shared.moves.reply_gate();
                self.publishers.fill(conn, ticket, reply, gate);
                self.flush_replies(io, conn);
            }
            ReplyTo::Http(conn) => self.answer_http(io, conn, &answer),
        }
    }

    fn log_rejections(&self, io: &impl Io, counts: &Counts) {
        if counts.rejected > 0 {
            let reasons: Vec<&str> = counts.reasons.texts().collect();
            tracing::info!(
                shard = io.shard_id(),
                rejected = counts.rejected,
                reasons = reasons.join(", "),
                "push recipients rejected"
            );
        }
    }

    /// Opens a ticket for a request; a publisher's reply keeps its place.
    fn open_ticket(&mut self, io: &impl Io, reply_to: ReplyTo, id: u64, gathered: Gathered) -> u64 {
        let ticket = self.tickets.open(reply_to, id, gathered, io.now_ms());
        match reply_to {
            ReplyTo::Publisher(conn) => self.publishers.expect(conn, ticket),
            ReplyTo::Http(conn) => self.admins.expect(conn, ticket),
        }
        ticket
    }

    /// Sends one part of a ticket's work to another shard.
    fn send_part(&mut self, io: &mut impl Io, shard: usize, ticket: u64, users: u32, msg: Msg) {
        if io.send_msg(shard, msg).is_ok() {
            self.tickets.part_sent(ticket, users);
        } else {
            tracing::warn!(
                shard = io.shard_id(),
                to = shard,
                "shard queue full; part of a request refused"
            );
            self.tickets.part_refused(ticket, users);
        }
    }

    /// Splits recipients by home shard: local ones are served now, each
    /// other shard gets one message with its share (not one per user). A
    /// user listed twice is one recipient.
    pub(super) fn push_request(
        &mut self,
        io: &mut impl Io,
        reply_to: ReplyTo,
        id: u64,
        users: Vec<String>,
        data: String,
        origin: Option<RequestKey>,
    ) {
        if let Err(message) = check_payload(&data) {
            return self.answer(io, reply_to, Answer::Error { id, message });
        }
        if users.len() > USERS_PER_PUSH_MAX {
            let message = format!(
                "{} users in one push; the limit is {USERS_PER_PUSH_MAX}",
                users.len()
            );
            return self.answer(io, reply_to, Answer::Error { id, message });
        }
        GatewayStats::add(&self.stats().push_requests_total, 1);
        let payload = Bytes::from(data);
        if let Some(link) = self.shared.redis.clone() {
            return self.push_through_redis(io, &link, reply_to, id, users, payload);
        }
        let shards = io.shard_count();
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); shards];
        for user in users {
            by_shard[home_shard(&user, shards)].push(user);
        }
        // A user's every mention lands in one share: de-duplicate there.
        for share in &mut by_shard {
            share.sort_unstable();
            share.dedup();
        }
        let local = std::mem::take(&mut by_shard[io.shard_id()]);
        let counts = if local.is_empty() {
            Counts::default()
        } else {
            self.push_here(io, &local, payload.clone(), origin)
        };
        let gathered = Gathered::Pushed {
            counts,
            users_unanswered: 0,
        };
        let ticket = self.open_ticket(io, reply_to, id, gathered);
        for (shard, users) in by_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let n = users.len() as u32;
            let msg = Msg::Push {
                ticket,
                users,
                payload: payload.clone(),
                origin,
            };
            self.send_part(io, shard, ticket, n, msg);
        }
        let finished = self.tickets.finish_if_done(ticket);
        self.finish(io, finished);
    }

    /// Several hosts: the Redis thread stores the push in each recipient's
    /// history and rings the hosts·shards where they have devices; its
    /// counts answer the ticket.
    fn push_through_redis(
        &mut self,
        io: &mut impl Io,
        link: &crate::cluster::RedisLink,
        reply_to: ReplyTo,
        id: u64,
        mut users: Vec<String>,
        payload: Bytes,
    ) {
        users.sort_unstable();
        users.dedup();
        let mut counts = Counts::default();
        users.retain(|user| {
            let valid = crate::auth::check_user_id(user).is_ok();
            if !valid {
                counts.reject(1, super::home::RejectReasons::INVALID_USER);
            }
            valid
        });
        let n = users.len() as u32;
        let gathered = Gathered::Pushed {
            counts,
            users_unanswered: 0,
        };
        let ticket = self.open_ticket(io, reply_to, id, gathered);
        let push = crate::cluster::ToRedis::Push {
            shard: io.shard_id(),
            ticket,
            users,
            payload,
        };
        self.send_to_redis(io, link, ticket, n, push);
    }

    /// Hands a ticket's work to the Redis thread, whose answer finishes
    /// it; a full queue fails it now with a clear error.
    fn send_to_redis(
        &mut self,
        io: &mut impl Io,
        link: &crate::cluster::RedisLink,
        ticket: u64,
        users: u32,
        msg: crate::cluster::ToRedis,
    ) {
        let finished = match link.try_send(msg) {
            Ok(()) => {
                self.tickets.part_sent(ticket, users);
                None
            }
            Err(_) => {
                tracing::warn!(shard = io.shard_id(), "Redis queue full; push refused");
                self.tickets
                    .failed(ticket, "Redis queue full; try again later".to_owned())
            }
        };
        self.finish(io, finished);
    }

    /// Every shard delivers to its connected users; the counts are summed.
    pub(super) fn broadcast_request(
        &mut self,
        io: &mut impl Io,
        reply_to: ReplyTo,
        id: u64,
        data: String,
    ) {
        if let Err(message) = check_payload(&data) {
            return self.answer(io, reply_to, Answer::Error { id, message });
        }
        GatewayStats::add(&self.stats().push_requests_total, 1);
        let payload = Bytes::from(data);
        if let Some(link) = self.shared.redis.clone() {
            // Several hosts: stored once per partition of the shared
            // history and rung on every live host (`cluster::broadcast`);
            // the answer counts hosts reached.
            let gathered = Gathered::Pushed {
                counts: Counts::default(),
                users_unanswered: 0,
            };
            let ticket = self.open_ticket(io, reply_to, id, gathered);
            let broadcast = crate::cluster::ToRedis::Broadcast {
                shard: io.shard_id(),
                ticket,
                payload,
            };
            return self.send_to_redis(io, &link, ticket, 0, broadcast);
        }
        let counts = self.broadcast_here(io, payload.clone());
        let gathered = Gathered::Pushed {
            counts,
            users_unanswered: 0,
        };
        let ticket = self.open_ticket(io, reply_to, id, gathered);
        let me = io.shard_id();
        for shard in (0..io.shard_count()).filter(|&s| s != me) {
            let msg = Msg::Broadcast {
                ticket,
                payload: payload.clone(),
            };
            self.send_part(io, shard, ticket, 0, msg);
        }
        let finished = self.tickets.finish_if_done(ticket);
        self.finish(io, finished);
    }

    /// Presence of `user`, answered by its home shard.
    pub(super) fn presence_request(
        &mut self,
        io: &mut impl Io,
        reply_to: ReplyTo,
        id: u64,
        user: String,
    ) {
        if let Some(link) = self.shared.redis.clone() {
            // Several hosts: Redis knows every host's devices of the user.
            let ticket = self.open_ticket(io, reply_to, id, Gathered::Presence(None));
            let shard = io.shard_id();
            let finished = match link.try_send(crate::cluster::ToRedis::Presence {
                shard,
                ticket,
                user,
            }) {
                Ok(()) => {
                    self.tickets.part_sent(ticket, 0);
                    None
                }
                Err(_) => {
                    tracing::warn!(shard, "Redis queue full; presence query refused");
                    self.tickets
                        .failed(ticket, "Redis queue full; try again later".to_owned())
                }
            };
            return self.finish(io, finished);
        }
        let home = home_shard(&user, io.shard_count());
        if home == io.shard_id() {
            let (online, devices) = self.home.presence(&user);
            let answer = Answer::Presence {
                id,
                online,
                devices,
            };
            return self.answer(io, reply_to, answer);
        }
        let ticket = self.open_ticket(io, reply_to, id, Gathered::Presence(None));
        self.send_part(io, home, ticket, 0, Msg::PresenceQuery { ticket, user });
        let finished = self.tickets.finish_if_done(ticket);
        self.finish(io, finished);
    }

    /// Every shard's counts.
    fn status_request(&mut self, io: &mut impl Io, reply_to: ReplyTo, id: u64) {
        let local = self.shard_status();
        let ticket = self.open_ticket(io, reply_to, id, Gathered::Status(vec![local]));
        let me = io.shard_id();
        for shard in (0..io.shard_count()).filter(|&s| s != me) {
            self.send_part(io, shard, ticket, 0, Msg::StatusQuery { ticket });
        }
        let finished = self.tickets.finish_if_done(ticket);
        self.finish(io, finished);
    }

    /// Sends the replies that are ready at the front, keeping order, as far
    /// as the send queue takes them; the rest waits (bounded by
    /// `OUTSTANDING_MAX`) and goes out when the publisher reads.
    pub(super) fn flush_replies(&mut self, io: &mut impl Io, conn: ConnId) {
        let acked = self.shared.moves.forward_acked();
        while let Some(reply) = self.publishers.ready_front(conn, acked) {
            match io.send(conn, &[reply]) {
                Ok(()) => self.publishers.pop_front(conn),
                Err(SendError::QueueFull) => return io.notify_when_drained(conn),
                Err(SendError::Closed) => return,
            }
        }
    }

    /// Each tick once this process forwarded pushes (a live upgrade):
    /// sends the replies whose forwarded pushes the successor has since
    /// acknowledged (`Moves::reply_gate`). Shard 0 also forgets the
    /// resends remembered past their time (`takeover::resends`).
    pub(super) fn release_forwarded_replies(&mut self, io: &mut impl Io) {
        if io.shard_id() == 0 {
            self.shared.moves.resends.expire();
        }
        if !self.shared.moves.ever_forwarded() {
            return;
        }
        for conn in self.publishers.conns() {
            self.flush_replies(io, conn);
        }
    }

    /// The drain's last step (`Control::close_publishers`), each tick:
    /// closes every publisher whose requests are all answered (replies
    /// handed to the send queue, which a close sends first). Bytes that
    /// arrive meanwhile are not read (`publisher_bytes`). So a publisher
    /// is closed only after answering every request this process read:
    /// whatever it has no reply for was never processed and may be sent
    /// again. While pushes are forwarded to a successor (a live upgrade),
    /// it also waits until the successor acknowledged them all, so a push
    /// resent to the successor is delivered after them, in order.
    pub(super) fn close_publishers_step(&mut self, io: &mut impl Io) {
        let control = self.shared.control.clone();
        let closing = control.closes_publishers();
        if closing {
            self.publishers.stop_reading_all();
        } else {
            // A take-back ended the step; a publisher that had bytes
            // dropped still closes below (it stopped reading for good).
            self.publishers_closed_reported = false;
        }
        let moves = &self.shared.moves;
        if moves.is_forwarding() && !moves.forward_idle() {
            return;
        }
        for conn in self.publishers.closable() {
            self.release(io, conn);
            io.close(conn, None);
        }
        if closing && self.publishers.is_empty() && !self.publishers_closed_reported {
            self.publishers_closed_reported = true;
            tracing::info!(
                shard = io.shard_id(),
                "drain: every publisher answered and closed"
            );
            control.shard_publishers_closed();
        }
    }

    pub(super) fn stop_publishers(&mut self, io: &mut impl Io) {
        for conn in self.publishers.conns() {
            self.flush_replies(io, conn);
            self.release(io, conn);
            io.close(conn, None);
        }
        for conn in self.admins.conns() {
            self.release(io, conn);
            io.close(conn, None);
        }
    }
}
