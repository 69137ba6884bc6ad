//! Backends on the per-shard Unix sockets: bytes in, requests out; replies
//! back in request order. Pure: the wiring runs the requests and sends the
//! replies this part lines up.
//!
//! A publisher connection is keyed by its full `ConnId`, so nothing kept
//! for it can reach another connection that later gets the same slot.

use super::tickets::Ticket;
use crate::gateway::sessions::handshakes::shrink_map_if_sparse;
use crate::push::wire::{self, FrameSplitter, Request};
use bytes::Bytes;
use shard::ConnId;
use std::collections::{HashMap, VecDeque};

/// Requests one publisher may have in flight (replies not yet read).
pub const OUTSTANDING_MAX: usize = 4096;
/// Reply slots an idle publisher keeps allocated.
const OUTSTANDING_KEPT_MAX: usize = 64;

struct Publisher {
    splitter: FrameSplitter,
    /// Bytes received that do not make a whole frame yet, and since when.
    partial_bytes: usize,
    partial_since_ms: u64,
    /// Replies in request order: ready bytes, or a ticket still waiting.
    outstanding: VecDeque<Outstanding>,
    /// Bytes from it are no longer processed (the drain's last step); it
    /// is closed once `outstanding` is empty. Never cleared: a request
    /// dropped unread must never be followed by an answer to a later one.
    reading_stopped: bool,
}

/// One reply's place: the ticket it waits for (0: none), its bytes once
/// ready, and the forwarded pushes that must be acknowledged before it
/// goes (`Moves::reply_gate`; 0 outside a live upgrade).
struct Outstanding {
    ticket: Ticket,
    reply: Option<Bytes>,
    gate: u64,
}

/// What bytes on a publisher connection asked for.
#[derive(Debug, Default)]
pub struct Received {
    pub requests: Vec<Request>,
    /// The stream is broken after `requests`: answer this and close.
    pub refuse: Option<String>,
}

pub struct Publishers {
    conns: HashMap<ConnId, Publisher>,
    frame_bytes_max: usize,
}

impl Publishers {
    pub fn new(frame_bytes_max: usize) -> Publishers {
        Publishers {
            conns: HashMap::new(),
            frame_bytes_max,
        }
    }

    pub fn open(&mut self, conn: ConnId) {
        self.conns.insert(
            conn,
            Publisher {
                splitter: FrameSplitter::default(),
                partial_bytes: 0,
                partial_since_ms: 0,
                outstanding: VecDeque::new(),
                reading_stopped: false,
            },
        );
    }

    /// From now on bytes from `conn` are dropped unread (as if they had
    /// stayed in the socket): the drain's last step.
    pub fn stop_reading(&mut self, conn: ConnId) {
        if let Some(p) = self.conns.get_mut(&conn) {
            p.reading_stopped = true;
        }
    }

    pub fn stop_reading_all(&mut self) {
        self.conns
            .values_mut()
            .for_each(|p| p.reading_stopped = true);
    }

    /// Publishers that stopped reading and have every request answered
    /// (each reply handed to the send queue): ready to close.
    pub fn closable(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, p)| p.reading_stopped && p.outstanding.is_empty())
            .map(|(&conn, _)| conn)
            .collect()
    }

    pub fn contains(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Forgets `conn`; returns the tickets its waiting replies were for
    /// (to cancel), or `None` if it was not a publisher.
    pub fn close(&mut self, conn: ConnId) -> Option<Vec<Ticket>> {
        let p = self.conns.remove(&conn)?;
        Some(
            p.outstanding
                .into_iter()
                .filter(|o| o.reply.is_none())
                .map(|o| o.ticket)
                .collect(),
        )
    }

    /// Returns the map's memory after many publishers left.
    pub fn shrink_if_sparse(&mut self) {
        shrink_map_if_sparse(&mut self.conns);
    }

    pub fn conns(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Cuts frames out of `data` and decodes them. Past `OUTSTANDING_MAX`
    /// requests in flight, or on a broken frame, the rest is refused.
    pub fn receive(&mut self, conn: ConnId, data: &[u8], now_ms: u64) -> Received {
        let mut received = Received::default();
        let Some(p) = self.conns.get_mut(&conn) else {
            return received;
        };
        if p.reading_stopped {
            return received;
        }
        if p.partial_bytes == 0 {
            p.partial_since_ms = now_ms;
        }
        p.partial_bytes += data.len();
        let mut bodies = Vec::new();
        let framing = p.splitter.feed(data, self.frame_bytes_max, |body| {
            bodies.push((body.len(), wire::decode_request(body)));
        });
        let mut in_flight = p.outstanding.len();
        for (len, body) in bodies {
            p.partial_bytes -= wire::LENGTH_BYTES + len;
            if received.refuse.is_some() {
                continue;
            }
            match body {
                Ok(_) if in_flight >= OUTSTANDING_MAX => {
                    // Bounded: one error and close, not an error per request.
                    received.refuse = Some(format!(
                        "more than {OUTSTANDING_MAX} requests in flight: read replies before sending more"
                    ));
                }
                Ok(request) => {
                    in_flight += 1;
                    received.requests.push(request);
                }
                Err(e) => received.refuse = Some(format!("bad push frame: {e}")),
            }
        }
        if let Err(e) = framing {
            received
                .refuse
                .get_or_insert_with(|| format!("bad push frame: {e}"));
        }
        received
    }

    /// Publishers holding part of a frame for longer than `timeout_ms`.
    pub fn stalled(&self, now_ms: u64, timeout_ms: u64) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, p)| p.partial_bytes > 0 && p.partial_since_ms + timeout_ms <= now_ms)
            .map(|(&conn, _)| conn)
            .collect()
    }

    pub fn outstanding(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |p| p.outstanding.len())
    }

    /// Lines up a reply that is ready now (after those before it); it goes
    /// once `gate` forwarded pushes were acknowledged.
    pub fn reply(&mut self, conn: ConnId, reply: Vec<u8>, gate: u64) {
        if let Some(p) = self.conns.get_mut(&conn) {
            p.outstanding.push_back(Outstanding {
                ticket: 0,
                reply: Some(Bytes::from(reply)),
                gate,
            });
        }
    }

    /// Holds the place of a reply that `ticket` will bring.
    pub fn expect(&mut self, conn: ConnId, ticket: Ticket) {
        if let Some(p) = self.conns.get_mut(&conn) {
            p.outstanding.push_back(Outstanding {
                ticket,
                reply: None,
                gate: 0,
            });
        }
    }

    /// `ticket`'s reply arrived; it goes once `gate` forwarded pushes
    /// were acknowledged.
    pub fn fill(&mut self, conn: ConnId, ticket: Ticket, reply: Vec<u8>, gate: u64) {
        if let Some(p) = self.conns.get_mut(&conn) {
            if let Some(slot) = p.outstanding.iter_mut().find(|o| o.ticket == ticket) {
                slot.reply = Some(Bytes::from(reply));
                slot.gate = gate;
            }
        }
    }

    /// The next reply to send, if it is ready and its gate is at most
    /// `forward_acked` (order is kept).
    pub fn ready_front(&self, conn: ConnId, forward_acked: u64) -> Option<Bytes> {
        match self.conns.get(&conn)?.outstanding.front() {
            Some(Outstanding {
                reply: Some(reply),
                gate,
                ..
            }) if *gate <= forward_acked => Some(reply.clone()),
            _ => None,
        }
    }

    pub fn pop_front(&mut self, conn: ConnId) {
        if let Some(p) = self.conns.get_mut(&conn) {
            p.outstanding.pop_front();
            // A burst of pipelined requests (up to OUTSTANDING_MAX) leaves
            // its queue's capacity behind; an idle publisher keeps little.
            if p.outstanding.is_empty() && p.outstanding.capacity() > OUTSTANDING_KEPT_MAX {
                p.outstanding = VecDeque::new();
            }
        }
    }
}

#[cfg(test)]
mod tests;
