//! Backends on the per-shard Unix sockets: frames → requests → work here
//! and on other shards → replies, in request order per connection.
//!
//! A request that needs other shards gets a ticket; their answers come back
//! as messages and the reply is sent when the last one arrives (or, after
//! `TICKET_TIMEOUT_MS`, with what arrived: missing push recipients count as
//! rejected).

use super::deliver::Counts;
use super::{Gateway, GatewayStats, Msg, Pending, Slot, Ticket, PUBLISHER};
use crate::push::wire::{self, FrameSplitter, Reply, Request, ShardStatus};
use crate::route::home_shard;
use bytes::Bytes;
use shard::{ConnId, Ctx};
use std::collections::VecDeque;

/// Requests one publisher may have in flight (replies not yet read).
const OUTSTANDING_MAX: usize = 4096;
/// Recipients in one push request.
const USERS_PER_PUSH_MAX: usize = 100_000;
/// How long a request waits for other shards.
const TICKET_TIMEOUT_MS: u64 = 5_000;

pub(super) struct Publisher {
    conn: ConnId,
    splitter: FrameSplitter,
    /// Replies in request order: ready bytes, or a ticket still waiting.
    outstanding: VecDeque<(Ticket, Option<Vec<u8>>)>,
}

enum Acc {
    Pushed {
        counts: Counts,
        users_unanswered: u32,
    },
    Status(Vec<ShardStatus>),
    Presence(Option<(bool, u32)>),
}

/// Who is waiting for a reply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ReplyTo {
    /// A push-socket connection: a wire reply, in request order.
    Publisher(ConnId),
    /// An admin HTTP request: a JSON response, then close.
    Http(ConnId),
}

pub(super) struct Waiting {
    reply_to: ReplyTo,
    request_id: u64,
    parts_left: u32,
    deadline_ms: u64,
    acc: Acc,
}

pub(super) fn pushed_reply(id: u64, counts: Counts) -> Reply {
    Reply::Pushed {
        id,
        delivered: counts[0],
        stored: counts[1],
        rejected: counts[2],
    }
}

fn error_reply(id: u64, message: impl Into<String>) -> Vec<u8> {
    wire::encode_reply(&Reply::Error {
        id,
        message: message.into(),
    })
}

impl Gateway {
    pub(super) fn open_publisher(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        ctx.stream(conn);
        *self.slot_mut(conn) = Slot {
            user: PUBLISHER,
            last_rx_ms: 0,
            pending: Some(Box::new(Pending::Publisher(Publisher {
                conn,
                splitter: FrameSplitter::default(),
                outstanding: VecDeque::new(),
            }))),
        };
    }

    fn publisher_mut(&mut self, conn: ConnId) -> Option<&mut Publisher> {
        match self.slots.get_mut(conn.index())?.pending.as_deref_mut()? {
            Pending::Publisher(p) if p.conn == conn => Some(p),
            _ => None,
        }
    }

    pub(super) fn on_publisher_bytes(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &[u8]) {
        let max = self.shared.push_frame_bytes_max;
        let Some(publisher) = self.publisher_mut(conn) else {
            return;
        };
        let mut requests = Vec::new();
        let framing = publisher
            .splitter
            .feed(data, max, |body| requests.push(wire::decode_request(body)));
        for request in requests {
            if !self.is_publisher(conn) {
                return; // refused mid-batch: the rest is dropped with it
            }
            match request {
                Ok(request) => self.handle_request(ctx, conn, request),
                Err(e) => {
                    self.refuse_publisher(ctx, conn, &format!("bad push frame: {e}"));
                    return;
                }
            }
        }
        if let Err(e) = framing {
            self.refuse_publisher(ctx, conn, &format!("bad push frame: {e}"));
        }
    }

    /// Answers a broken frame and closes only this publisher connection.
    fn refuse_publisher(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, why: &str) {
        tracing::info!(
            shard = ctx.shard_id(),
            reason = why,
            "publisher refused; closing it"
        );
        self.flush_replies(ctx, conn);
        *self.slot_mut(conn) = Slot::vacant();
        ctx.close(conn, Some(Bytes::from(error_reply(0, why))));
    }

    fn reply_now(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, reply: Vec<u8>) {
        if let Some(p) = self.publisher_mut(conn) {
            p.outstanding.push_back((0, Some(reply)));
        }
        self.flush_replies(ctx, conn);
    }

    /// Sends `reply` to whoever asked, now (in order, for a publisher).
    pub(super) fn answer(&mut self, ctx: &mut Ctx<'_, Msg>, to: ReplyTo, reply: Reply) {
        match to {
            ReplyTo::Publisher(conn) => self.reply_now(ctx, conn, wire::encode_reply(&reply)),
            ReplyTo::Http(conn) => self.answer_http(ctx, conn, &reply),
        }
    }

    /// Registers a request that waits for other shards' parts.
    fn wait_for(
        &mut self,
        reply_to: ReplyTo,
        request_id: u64,
        deadline_ms: u64,
        acc: Acc,
    ) -> Ticket {
        let waiting = Waiting {
            reply_to,
            request_id,
            parts_left: 0,
            deadline_ms,
            acc,
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if let ReplyTo::Publisher(conn) = waiting.reply_to {
            if let Some(p) = self.publisher_mut(conn) {
                p.outstanding.push_back((ticket, None));
            }
        }
        self.tickets.insert(ticket, waiting);
        ticket
    }

    fn handle_request(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, request: Request) {
        let request_confirm = match &request {
            Request::Drain { confirm, .. } => Some(confirm.clone()),
            _ => None,
        };
        let busy = self
            .publisher_mut(conn)
            .is_some_and(|p| p.outstanding.len() >= OUTSTANDING_MAX);
        let deadline_ms = ctx.now_ms() + TICKET_TIMEOUT_MS;
        match request {
            _ if busy => {
                // Bounded: one error and close, not an error per request.
                let why = format!(
                    "more than {OUTSTANDING_MAX} requests in flight: read replies before sending more"
                );
                self.refuse_publisher(ctx, conn, &why);
            }
            Request::Push { id, users, data } => {
                self.push_request(ctx, ReplyTo::Publisher(conn), id, users, data, deadline_ms);
            }
            Request::Broadcast { id, data } => {
                self.broadcast_request(ctx, ReplyTo::Publisher(conn), id, data, deadline_ms);
            }
            Request::Drain { id, .. } if !matches!(&request_confirm, Some(c) if c == wire::DRAIN_CONFIRM) =>
            {
                let why = format!(
                    "a drain request must carry confirm = {:?}",
                    wire::DRAIN_CONFIRM
                );
                self.reply_now(ctx, conn, error_reply(id, why));
            }
            Request::Drain { id, rate_per_s, .. } => {
                let rate = if rate_per_s == 0 {
                    self.shared.drain_rate_per_s
                } else {
                    rate_per_s
                };
                tracing::warn!(
                    shard = ctx.shard_id(),
                    rate_per_s = rate,
                    "drain requested on the push socket"
                );
                self.shared.control.start_drain(rate);
                let reply = wire::encode_reply(&Reply::Draining {
                    id,
                    rate_per_s: rate,
                });
                self.reply_now(ctx, conn, reply);
            }
            Request::Presence { id, user } => {
                self.presence_request(ctx, ReplyTo::Publisher(conn), id, user, deadline_ms);
            }
            Request::Status { id } => {
                let local = self.shard_status(ctx);
                let ticket = self.wait_for(
                    ReplyTo::Publisher(conn),
                    id,
                    deadline_ms,
                    Acc::Status(vec![local]),
                );
                let me = ctx.shard_id();
                for shard in (0..ctx.shard_count()).filter(|&s| s != me) {
                    self.send_part(ctx, shard, ticket, Msg::StatusQuery { ticket });
                }
                self.finish_if_done(ctx, ticket);
            }
        }
    }

    /// Splits recipients by home shard: local ones are served now, each
    /// other shard gets one message with its share (not one per user).
    pub(super) fn push_request(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        reply_to: ReplyTo,
        id: u64,
        users: Vec<String>,
        data: String,
        deadline_ms: u64,
    ) {
        if let Err(why) = check_payload(&data) {
            return self.answer(ctx, reply_to, Reply::Error { id, message: why });
        }
        if users.len() > USERS_PER_PUSH_MAX {
            let message = format!(
                "{} users in one push; the limit is {USERS_PER_PUSH_MAX}",
                users.len()
            );
            return self.answer(ctx, reply_to, Reply::Error { id, message });
        }
        GatewayStats::add(&self.stats().push_requests_total, 1);
        let payload = Bytes::from(data);
        let shards = ctx.shard_count();
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); shards];
        for user in users {
            let home = home_shard(&user, shards);
            by_shard[home].push(user);
        }
        let local = std::mem::take(&mut by_shard[ctx.shard_id()]);
        let counts = if local.is_empty() {
            [0; 3]
        } else {
            self.deliver_to_names(ctx, &local, payload.clone())
        };
        let ticket = self.wait_for(
            reply_to,
            id,
            deadline_ms,
            Acc::Pushed {
                counts,
                users_unanswered: 0,
            },
        );
        for (shard, users) in by_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let count = users.len() as u32;
            let msg = Msg::Push {
                ticket,
                users,
                payload: payload.clone(),
            };
            if self.send_part(ctx, shard, ticket, msg) {
                if let Some(Acc::Pushed {
                    users_unanswered, ..
                }) = self.tickets.get_mut(&ticket).map(|w| &mut w.acc)
                {
                    *users_unanswered += count;
                }
            } else if let Some(Acc::Pushed { counts, .. }) =
                self.tickets.get_mut(&ticket).map(|w| &mut w.acc)
            {
                counts[2] += count;
            }
        }
        self.finish_if_done(ctx, ticket);
    }

    /// Every shard delivers to its connected users; the counts are summed.
    pub(super) fn broadcast_request(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        reply_to: ReplyTo,
        id: u64,
        data: String,
        deadline_ms: u64,
    ) {
        if let Err(why) = check_payload(&data) {
            return self.answer(ctx, reply_to, Reply::Error { id, message: why });
        }
        GatewayStats::add(&self.stats().push_requests_total, 1);
        let payload = Bytes::from(data);
        let counts = self.deliver_to_everyone(ctx, payload.clone());
        let ticket = self.wait_for(
            reply_to,
            id,
            deadline_ms,
            Acc::Pushed {
                counts,
                users_unanswered: 0,
            },
        );
        let me = ctx.shard_id();
        for shard in (0..ctx.shard_count()).filter(|&s| s != me) {
            let msg = Msg::Broadcast {
                ticket,
                payload: payload.clone(),
            };
            self.send_part(ctx, shard, ticket, msg);
        }
        self.finish_if_done(ctx, ticket);
    }

    /// Presence of `user`, answered by its home shard.
    pub(super) fn presence_request(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        reply_to: ReplyTo,
        id: u64,
        user: String,
        deadline_ms: u64,
    ) {
        let home = home_shard(&user, ctx.shard_count());
        if home == ctx.shard_id() {
            let (online, devices) = self.presence(&user);
            return self.answer(
                ctx,
                reply_to,
                Reply::Presence {
                    id,
                    online,
                    devices,
                },
            );
        }
        let ticket = self.wait_for(reply_to, id, deadline_ms, Acc::Presence(None));
        self.send_part(ctx, home, ticket, Msg::PresenceQuery { ticket, user });
        self.finish_if_done(ctx, ticket);
    }

    /// Sends one part of a ticket's work; false if the shard's queue is full.
    fn send_part(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        shard: usize,
        ticket: Ticket,
        msg: Msg,
    ) -> bool {
        if ctx.send_msg(shard, msg).is_err() {
            tracing::warn!(
                shard = ctx.shard_id(),
                to = shard,
                "shard queue full; part of a request refused"
            );
            return false;
        }
        if let Some(w) = self.tickets.get_mut(&ticket) {
            w.parts_left += 1;
        }
        true
    }

    fn part_arrived(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        ticket: Ticket,
        update: impl FnOnce(&mut Acc),
    ) {
        let Some(w) = self.tickets.get_mut(&ticket) else {
            return; // timed out already
        };
        update(&mut w.acc);
        w.parts_left = w.parts_left.saturating_sub(1);
        self.finish_if_done(ctx, ticket);
    }

    pub(super) fn on_pushed_part(&mut self, ctx: &mut Ctx<'_, Msg>, ticket: Ticket, part: Counts) {
        self.part_arrived(ctx, ticket, |acc| {
            if let Acc::Pushed {
                counts,
                users_unanswered,
            } = acc
            {
                for (c, p) in counts.iter_mut().zip(part) {
                    *c += p;
                }
                *users_unanswered = users_unanswered.saturating_sub(part.iter().sum());
            }
        });
    }

    pub(super) fn on_status_part(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        ticket: Ticket,
        status: ShardStatus,
    ) {
        self.part_arrived(ctx, ticket, |acc| {
            if let Acc::Status(parts) = acc {
                parts.push(status);
            }
        });
    }

    pub(super) fn on_presence_answer(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        ticket: Ticket,
        online: bool,
        devices: u32,
    ) {
        self.part_arrived(ctx, ticket, |acc| {
            if let Acc::Presence(answer) = acc {
                *answer = Some((online, devices));
            }
        });
    }

    fn finish_if_done(&mut self, ctx: &mut Ctx<'_, Msg>, ticket: Ticket) {
        if self.tickets.get(&ticket).is_some_and(|w| w.parts_left == 0) {
            self.finish(ctx, ticket);
        }
    }

    fn finish(&mut self, ctx: &mut Ctx<'_, Msg>, ticket: Ticket) {
        let Some(w) = self.tickets.remove(&ticket) else {
            return;
        };
        let id = w.request_id;
        let reply = match w.acc {
            Acc::Pushed {
                mut counts,
                users_unanswered,
            } => {
                counts[2] += users_unanswered;
                pushed_reply(id, counts)
            }
            Acc::Status(mut shards) => {
                shards.sort_by_key(|s| s.shard);
                Reply::Status { id, shards }
            }
            Acc::Presence(Some((online, devices))) => Reply::Presence {
                id,
                online,
                devices,
            },
            Acc::Presence(None) => Reply::Error {
                id,
                message: "the user's home shard did not answer".into(),
            },
        };
        match w.reply_to {
            ReplyTo::Http(conn) => self.answer_http(ctx, conn, &reply),
            ReplyTo::Publisher(conn) => {
                if let Some(p) = self.publisher_mut(conn) {
                    if let Some(slot) = p.outstanding.iter_mut().find(|(t, _)| *t == ticket) {
                        slot.1 = Some(wire::encode_reply(&reply));
                    }
                }
                self.flush_replies(ctx, conn);
            }
        }
    }

    /// Sends the replies that are ready at the front, keeping order.
    /// Sends the replies that are ready at the front, keeping order, as far
    /// as the send queue takes them; the rest waits (bounded by
    /// OUTSTANDING_MAX) and goes out when the publisher reads (`on_drained`).
    pub(super) fn flush_replies(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        loop {
            let Some(p) = self.publisher_mut(conn) else {
                return;
            };
            let Some((_, Some(reply))) = p.outstanding.front() else {
                return;
            };
            let reply = Bytes::from(reply.clone());
            match ctx.send(conn, &[reply]) {
                Ok(()) => {
                    if let Some(p) = self.publisher_mut(conn) {
                        p.outstanding.pop_front();
                    }
                }
                Err(shard::SendError::QueueFull) => {
                    ctx.notify_when_drained(conn);
                    return;
                }
                Err(shard::SendError::Closed) => return,
            }
        }
    }

    /// True if `conn` is a publisher (its `on_drained` sends more replies).
    pub(super) fn is_publisher(&mut self, conn: ConnId) -> bool {
        self.publisher_mut(conn).is_some()
    }

    pub(super) fn expire_tickets(&mut self, ctx: &mut Ctx<'_, Msg>) {
        if self.tickets.is_empty() {
            return;
        }
        let now = ctx.now_ms();
        let late: Vec<Ticket> = self
            .tickets
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now)
            .map(|(t, _)| *t)
            .collect();
        for ticket in late {
            tracing::warn!(
                shard = ctx.shard_id(),
                ticket,
                "shards did not answer in time; replying with what arrived"
            );
            self.finish(ctx, ticket);
        }
    }

    pub(super) fn stop_publishers(&mut self, ctx: &mut Ctx<'_, Msg>) {
        let publishers: Vec<ConnId> = self
            .slots
            .iter()
            .filter_map(|s| match s.pending.as_deref() {
                Some(Pending::Publisher(p)) => Some(p.conn),
                _ => None,
            })
            .collect();
        for conn in publishers {
            self.flush_replies(ctx, conn);
            *self.slot_mut(conn) = Slot::vacant();
            ctx.close(conn, None);
        }
    }
}

/// A push payload must be one JSON value (it is embedded as `data`).
fn check_payload(data: &str) -> Result<(), String> {
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map(drop)
        .map_err(|e| format!("data is not one JSON value: {e}"))
}
