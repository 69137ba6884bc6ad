//! Admin HTTP connections (loopback by default): one request each, read
//! whole, then answered and closed. Keyed by the full `ConnId`, so an answer
//! that comes later (from other shards) reaches this connection or none.

use crate::admin_http::{self, Parsed};
use shard::ConnId;
use std::collections::HashMap;

/// Longest admin request head.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8192;

enum State {
    /// The request so far.
    Reading(Vec<u8>),
    /// Read; its answer is on its way.
    Answering,
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
        self.conns.insert(conn, State::Reading(Vec::new()));
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

    pub fn close(&mut self, conn: ConnId) -> bool {
        self.conns.remove(&conn).is_some()
    }

    pub fn conns(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Bytes of the request. A whole request moves the connection to
    /// answering: nothing more is read from it.
    pub fn receive(&mut self, conn: ConnId, data: &[u8]) -> Parsed {
        let Some(State::Reading(buf)) = self.conns.get_mut(&conn) else {
            return Parsed::Incomplete;
        };
        buf.extend_from_slice(data);
        let parsed = admin_http::parse(buf, ADMIN_HEAD_BYTES_MAX, self.body_bytes_max);
        if matches!(parsed, Parsed::Request(_)) {
            self.conns.insert(conn, State::Answering);
        }
        parsed
    }
}
