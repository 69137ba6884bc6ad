//! Admin HTTP connections (loopback by default): one request each, read
//! whole, then answered and closed. Keyed by the full `ConnId`, so an answer
//! that comes later (from other shards) reaches this connection or none.

use super::tickets::Ticket;
use crate::admin_http::{self, AdminHead, AdminRequest, Parsed};
use crate::gateway::sessions::handshakes::shrink_map_if_sparse;
use shard::ConnId;
use std::collections::HashMap;

/// Longest admin request head.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8192;

enum State {
    /// The request so far; whether its head was already reported.
    Reading { buf: Vec<u8>, head_seen: bool },
    /// Read; its answer is on its way (from other shards: `ticket`).
    Answering { ticket: Option<Ticket> },
}

/// What bytes on an admin connection brought.
#[derive(Debug)]
pub enum Received {
    Incomplete,
    /// The head is in and the body is not: authenticate now, before
    /// buffering a body for someone who may not send it.
    Head(AdminHead),
    /// The exact HTTP refusal to send.
    Refuse(Vec<u8>),
    Request(AdminRequest),
}

pub struct Admins {
    conns: HashMap<ConnId, State>,
    body_bytes_max: usize,
}

impl Admins {
    pub fn new(body_bytes_max: usize) -> Admins {
        Admins {
            conns: HashMap::new(),
            body_bytes_max,
        }
    }

    pub fn open(&mut self, conn: ConnId) {
        self.conns.insert(
            conn,
            State::Reading {
                buf: Vec::new(),
                head_seen: false,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn contains(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Forgets `conn`; returns the ticket its answer was waiting for (to
    /// cancel), or `None` if it was not an admin connection.
    pub fn close(&mut self, conn: ConnId) -> Option<Option<Ticket>> {
        match self.conns.remove(&conn)? {
            State::Answering { ticket } => Some(ticket),
            State::Reading { .. } => Some(None),
        }
    }

    /// The answer to `conn`'s request waits for `ticket`.
    pub fn expect(&mut self, conn: ConnId, ticket: Ticket) {
        if let Some(state @ State::Answering { .. }) = self.conns.get_mut(&conn) {
            *state = State::Answering {
                ticket: Some(ticket),
            };
        }
    }

    /// Returns the map's memory after many admin connections left.
    pub fn shrink_if_sparse(&mut self) {
        shrink_map_if_sparse(&mut self.conns);
    }

    pub fn conns(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Bytes of the request. A whole request moves the connection to
    /// answering: nothing more is read from it.
    pub fn receive(&mut self, conn: ConnId, data: &[u8]) -> Received {
        let Some(State::Reading { buf, head_seen }) = self.conns.get_mut(&conn) else {
            return Received::Incomplete;
        };
        buf.extend_from_slice(data);
        match admin_http::parse(buf, ADMIN_HEAD_BYTES_MAX, self.body_bytes_max) {
            Parsed::Request(request) => {
                self.conns.insert(conn, State::Answering { ticket: None });
                Received::Request(request)
            }
            Parsed::Refuse(response) => Received::Refuse(response),
            Parsed::Incomplete if *head_seen => Received::Incomplete,
            Parsed::Incomplete => {
                match admin_http::parse_head(buf, ADMIN_HEAD_BYTES_MAX, self.body_bytes_max) {
                    Ok(Some(head)) => {
                        *head_seen = true;
                        Received::Head(head)
                    }
                    _ => Received::Incomplete,
                }
            }
        }
    }
}
