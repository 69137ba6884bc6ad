//! Requests waiting for other shards. A request that needs other shards'
//! parts gets a ticket; their answers come back as messages and the
//! request finishes when the last one arrives, or at its deadline with
//! what arrived (missing push recipients count as rejected). Pure: parts
//! and `now` in, finished answers out; the wiring sends them.
//!
//! A ticket belongs to the connection that asked, which keeps its ticket
//! ids. When that connection goes, its tickets are cancelled, so an answer
//! can never reach another connection that later got the same slot.

use crate::gateway::home::{Counts, RejectReasons};
use crate::push::wire::ShardStatus;
use shard::ConnId;
use std::collections::{HashMap, VecDeque};

/// Identifies a request waiting for other shards, on its origin shard.
pub type Ticket = u64;

/// Who is waiting for an answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum ReplyTo {
    /// A push-socket connection: a wire reply, in request order.
    Publisher(ConnId),
    /// An admin HTTP request: a JSON response, then close.
    Http(ConnId),
}

impl ReplyTo {
    pub fn conn(self) -> ConnId {
        match self {
            ReplyTo::Publisher(c) | ReplyTo::Http(c) => c,
        }
    }
}

/// A request's answer, before it is encoded for its asker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Pushed {
        id: u64,
        counts: Counts,
    },
    Presence {
        id: u64,
        online: bool,
        devices: u32,
    },
    Status {
        id: u64,
        shards: Vec<ShardStatus>,
    },
    Error {
        id: u64,
        message: String,
    },
    /// A service the answer needs (Redis) is unavailable: HTTP 503.
    Unavailable {
        id: u64,
        message: String,
    },
}

/// What is gathered while parts arrive.
#[derive(Debug)]
pub enum Gathered {
    Pushed {
        counts: Counts,
        /// Recipients sent to other shards and not answered yet.
        users_unanswered: u32,
    },
    Status(Vec<ShardStatus>),
    Presence(Option<(bool, u32)>),
}

struct Waiting {
    reply_to: ReplyTo,
    request_id: u64,
    parts_left: u32,
    gathered: Gathered,
}

/// A finished request: whose it is and its answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Finished {
    pub reply_to: ReplyTo,
    pub ticket: Ticket,
    pub answer: Answer,
}

pub struct Tickets {
    waiting: HashMap<Ticket, Waiting>,
    /// Deadlines in the order tickets were opened: every ticket waits the
    /// same time, so this is also deadline order.
    deadlines: VecDeque<(u64, Ticket)>,
    next: Ticket,
    timeout_ms: u64,
}

impl Tickets {
    pub fn new(timeout_ms: u64) -> Tickets {
        Tickets {
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            next: 1,
            timeout_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Opens a ticket for a request of `reply_to` that waits until
    /// `now_ms` + the timeout at most.
    pub fn open(
        &mut self,
        reply_to: ReplyTo,
        request_id: u64,
        gathered: Gathered,
        now_ms: u64,
    ) -> Ticket {
        let ticket = self.next;
        self.next += 1;
        self.waiting.insert(
            ticket,
            Waiting {
                reply_to,
                request_id,
                parts_left: 0,
                gathered,
            },
        );
        self.deadlines.push_back((now_ms + self.timeout_ms, ticket));
        ticket
    }

    /// A part of the ticket's work went to another shard, with `users`
    /// push recipients (0 for other requests).
    pub fn part_sent(&mut self, ticket: Ticket, users: u32) {
        if let Some(w) = self.waiting.get_mut(&ticket) {
            w.parts_left += 1;
            if let Gathered::Pushed {
                users_unanswered, ..
            } = &mut w.gathered
            {
                *users_unanswered += users;
            }
        }
    }

    /// A part could not be sent (the shard's queue was full).
    pub fn part_refused(&mut self, ticket: Ticket, users: u32) {
        if let Some(Gathered::Pushed { counts, .. }) =
            self.waiting.get_mut(&ticket).map(|w| &mut w.gathered)
        {
            counts.reject(users, RejectReasons::SHARD_UNAVAILABLE);
        }
    }

    /// A part arrived; returns the request if it is now complete.
    fn arrived(&mut self, ticket: Ticket, update: impl FnOnce(&mut Gathered)) -> Option<Finished> {
        let w = self.waiting.get_mut(&ticket)?; // timed out or cancelled
        update(&mut w.gathered);
        w.parts_left = w.parts_left.saturating_sub(1);
        self.finish_if_done(ticket)
    }

    pub fn pushed_part(&mut self, ticket: Ticket, part: Counts) -> Option<Finished> {
        self.arrived(ticket, |g| {
            if let Gathered::Pushed {
                counts,
                users_unanswered,
            } = g
            {
                counts.add(part);
                *users_unanswered = users_unanswered.saturating_sub(part.total());
            }
        })
    }

    pub fn status_part(&mut self, ticket: Ticket, status: ShardStatus) -> Option<Finished> {
        self.arrived(ticket, |g| {
            if let Gathered::Status(parts) = g {
                parts.push(status);
            }
        })
    }

    pub fn presence_part(
        &mut self,
        ticket: Ticket,
        online: bool,
        devices: u32,
    ) -> Option<Finished> {
        self.arrived(ticket, |g| {
            if let Gathered::Presence(answer) = g {
                *answer = Some((online, devices));
            }
        })
    }

    /// A part failed because a service it needs (Redis) is unavailable: the
    /// request finishes now with `message` as its error.
    pub fn failed(&mut self, ticket: Ticket, message: String) -> Option<Finished> {
        let w = self.waiting.remove(&ticket)?; // timed out or cancelled
        Some(Finished {
            reply_to: w.reply_to,
            ticket,
            answer: Answer::Unavailable {
                id: w.request_id,
                message,
            },
        })
    }

    /// The request, if no part is outstanding.
    pub fn finish_if_done(&mut self, ticket: Ticket) -> Option<Finished> {
        if self.waiting.get(&ticket)?.parts_left > 0 {
            return None;
        }
        self.finish(ticket)
    }

    fn finish(&mut self, ticket: Ticket) -> Option<Finished> {
        let w = self.waiting.remove(&ticket)?;
        let id = w.request_id;
        let answer = match w.gathered {
            Gathered::Pushed {
                mut counts,
                users_unanswered,
            } => {
                if users_unanswered > 0 {
                    counts.reject(users_unanswered, RejectReasons::SHARD_UNAVAILABLE);
                }
                Answer::Pushed { id, counts }
            }
            Gathered::Status(mut shards) => {
                shards.sort_by_key(|s| s.shard);
                Answer::Status { id, shards }
            }
            Gathered::Presence(Some((online, devices))) => Answer::Presence {
                id,
                online,
                devices,
            },
            Gathered::Presence(None) => Answer::Error {
                id,
                message: "the user's home shard did not answer".into(),
            },
        };
        Some(Finished {
            reply_to: w.reply_to,
            ticket,
            answer,
        })
    }

    /// Requests past their deadline, answered with what arrived.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Finished> {
        let mut late = Vec::new();
        while let Some(&(at, ticket)) = self.deadlines.front() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop_front();
            if let Some(finished) = self.finish(ticket) {
                late.push(finished);
            }
        }
        late
    }

    /// Drops `ticket`: its asker is gone. Its deadline entry stays and is
    /// skipped when it comes up.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        self.waiting.remove(&ticket).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(i: u32, gen: u32) -> ConnId {
        ConnId::for_tests(i, gen)
    }

    fn counts(delivered: u32, stored: u32) -> Counts {
        Counts {
            delivered,
            stored,
            ..Counts::default()
        }
    }

    fn pushed(counts: Counts) -> Gathered {
        Gathered::Pushed {
            counts,
            users_unanswered: 0,
        }
    }

    #[test]
    fn a_push_finishes_when_its_last_part_arrives() {
        let mut t = Tickets::new(5_000);
        let to = ReplyTo::Publisher(conn(1, 1));
        let ticket = t.open(to, 7, pushed(counts(1, 0)), 0);
        t.part_sent(ticket, 2);
        t.part_sent(ticket, 1);
        assert_eq!(t.pushed_part(ticket, counts(1, 1)), None);
        let done = t.pushed_part(ticket, counts(0, 1)).expect("complete");
        assert_eq!(done.reply_to, to);
        assert_eq!(
            done.answer,
            Answer::Pushed {
                id: 7,
                counts: counts(2, 2)
            }
        );
        assert!(t.is_empty());
        assert_eq!(
            t.pushed_part(ticket, counts(9, 9)),
            None,
            "late part ignored"
        );
    }

    #[test]
    fn a_late_request_answers_with_what_arrived_and_counts_the_rest_rejected() {
        let mut t = Tickets::new(5_000);
        let ticket = t.open(ReplyTo::Http(conn(2, 1)), 0, pushed(counts(0, 1)), 100);
        t.part_sent(ticket, 3);
        t.part_sent(ticket, 2);
        assert_eq!(t.pushed_part(ticket, counts(3, 0)), None);
        assert!(t.expire(5_099).is_empty());
        let late = t.expire(5_100);
        let Answer::Pushed { counts, .. } = late[0].answer else {
            panic!("{late:?}")
        };
        assert_eq!(
            (counts.delivered, counts.stored, counts.rejected),
            (3, 1, 2)
        );
        assert_eq!(counts.reasons, RejectReasons::SHARD_UNAVAILABLE);
    }

    #[test]
    fn refused_parts_are_rejected_at_once() {
        let mut t = Tickets::new(5_000);
        let ticket = t.open(ReplyTo::Http(conn(2, 1)), 0, pushed(counts(1, 0)), 0);
        t.part_refused(ticket, 4);
        let done = t.finish_if_done(ticket).expect("nothing outstanding");
        let Answer::Pushed { counts, .. } = done.answer else {
            panic!()
        };
        assert_eq!(counts.rejected, 4);
    }

    #[test]
    fn a_cancelled_ticket_is_not_answered_and_others_are() {
        let mut t = Tickets::new(5_000);
        let old = conn(3, 1);
        let new = conn(3, 2); // the same slot, reused
        let a = t.open(ReplyTo::Http(old), 0, Gathered::Presence(None), 0);
        t.part_sent(a, 0);
        let b = t.open(ReplyTo::Publisher(new), 1, Gathered::Presence(None), 0);
        t.part_sent(b, 0);
        assert!(t.cancel(a));
        assert!(!t.cancel(a), "once");
        assert_eq!(t.presence_part(a, true, 1), None, "cancelled");
        let done = t.presence_part(b, true, 2).expect("the new one's");
        assert_eq!(done.reply_to, ReplyTo::Publisher(new));
        assert!(t.expire(u64::MAX).is_empty());
    }

    #[test]
    fn status_parts_are_sorted_by_shard_and_a_missing_presence_is_an_error() {
        let mut t = Tickets::new(10);
        let status = |shard| ShardStatus {
            shard,
            connections: 0,
            users_online: 0,
            mailboxes: 0,
        };
        let s = t.open(
            ReplyTo::Http(conn(1, 1)),
            5,
            Gathered::Status(vec![status(1)]),
            0,
        );
        t.part_sent(s, 0);
        t.part_sent(s, 0);
        t.status_part(s, status(2));
        let done = t.status_part(s, status(0)).unwrap();
        let Answer::Status { shards, .. } = done.answer else {
            panic!()
        };
        assert_eq!(
            shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let p = t.open(ReplyTo::Http(conn(1, 1)), 6, Gathered::Presence(None), 0);
        t.part_sent(p, 0);
        let late = t.expire(10);
        assert!(matches!(late[0].answer, Answer::Error { id: 6, .. }));
    }
}
