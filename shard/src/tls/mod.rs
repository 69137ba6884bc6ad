//! TLS on chosen listeners, off to the side of the plain path: a plain
//! connection keeps its 32-byte entry and nothing else; a TLS connection
//! carries the `TLS` flag and one entry here, by slab index.
//!
//! - Accepted, nothing received yet: the entry only (a silent connection
//!   costs no handshake state).
//! - While handshaking: a rustls `ServerConnection` (a few KiB, bounded by
//!   the app's cap on upgrades in progress, since a TLS connection is an
//!   upgrade in progress for the app from its accept on).
//! - Once established: only the record state (`record::Session`, ~120 B:
//!   keys, IVs, sequence numbers). Received records are opened in place in
//!   the provided buffer (which goes back to the shard's buffer ring, the
//!   per-shard pool), sends are sealed when queued. A record split over
//!   receives is the only thing ever held.
//!
//! Handshake CPU is bounded per round: at most
//! `HANDSHAKE_FLIGHTS_PER_ROUND_MAX` server flights (X25519 + the
//! certificate's signature: ~0.2 ms of server CPU per whole handshake
//! with an ECDSA P-256 key, measured in bench/results/2026-12-01/tls; an
//! RSA-2048 signature costs several times more) are computed per loop
//! round, so other connections wait at most ~16 × 0.2 ms ≈ 3 ms for them;
//! a ClientHello over the budget waits for the next round, in arrival
//! order.

#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod handshake;
pub(crate) mod record;

use crate::ConnId;
use handshake::{Failure, Handshake, Progress};
use record::{Opened, RecordError, Session};
use std::collections::HashMap;
use std::sync::Arc;

/// Server flights (ClientHello → ServerHello … Finished) computed per round.
pub(crate) const HANDSHAKE_FLIGHTS_PER_ROUND_MAX: u32 = 16;

/// Which listeners speak TLS, and with what server configuration (the
/// certificate behind it may change: see the app's resolver).
#[derive(Clone, Debug)]
pub struct TlsListeners {
    pub config: Arc<rustls::ServerConfig>,
    /// Indexes into `RuntimeConfig::listeners`.
    pub listeners: Vec<usize>,
}

enum State {
    /// No byte yet: the rustls connection is made with the first ones.
    Accepted,
    Handshaking(Box<Handshake>),
    Established(Box<Session>),
}

/// A TLS connection's record state on its way to another shard.
pub(crate) type Moved = Box<Session>;

/// What a receive on a TLS connection means.
pub(crate) enum Input {
    /// Nothing for the app (handshake bytes).
    Nothing,
    /// Plaintext at the front of the receive buffer (this many bytes).
    InPlace(usize),
    /// Plaintext in its own buffer.
    Owned(Vec<u8>),
    /// The connection ends: `Some` (logged reason) for a failure, `None`
    /// for the client's close_notify. `reply` goes out before the close.
    Ended {
        failure: Option<String>,
        reply: Vec<u8>,
    },
}

pub(crate) struct Tls {
    config: Option<TlsListeners>,
    conns: HashMap<u32, State>,
    /// Handshakes whose ClientHello waits for a round with budget left.
    deferred: Vec<ConnId>,
    budget: u32,
    /// Handshakes completed since the reactor last counted them.
    established: u64,
}

impl Tls {
    pub(crate) fn new(config: Option<TlsListeners>) -> Tls {
        Tls {
            config,
            conns: HashMap::new(),
            deferred: Vec::new(),
            budget: HANDSHAKE_FLIGHTS_PER_ROUND_MAX,
            established: 0,
        }
    }

    pub(crate) fn is_tls_listener(&self, listener: usize) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.listeners.contains(&listener))
    }

    /// A connection accepted on a TLS listener; its handshake starts with
    /// its first bytes.
    pub(crate) fn start(&mut self, id: ConnId) {
        self.conns.insert(id.index, State::Accepted);
    }

    /// A new loop round: the handshake budget is full again.
    pub(crate) fn new_round(&mut self) {
        self.budget = HANDSHAKE_FLIGHTS_PER_ROUND_MAX;
    }

    pub(crate) fn take_established(&mut self) -> u64 {
        std::mem::take(&mut self.established)
    }

    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    pub(crate) fn take_deferred(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.deferred)
    }

    /// Bytes received on `id`; handshake output goes to `out`.
    pub(crate) fn input(&mut self, id: ConnId, buf: &mut [u8], out: &mut Vec<u8>) -> Input {
        let Some(state) = self.conns.get_mut(&id.index) else {
            return Input::Nothing;
        };
        if matches!(state, State::Accepted) {
            let config = self.config.as_ref().expect("a TLS listener").config.clone();
            match Handshake::new(config) {
                Ok(hs) => *state = State::Handshaking(Box::new(hs)),
                Err(Failure { reason }) => {
                    self.conns.remove(&id.index);
                    return Input::Ended {
                        failure: Some(reason),
                        reply: Vec::new(),
                    };
                }
            }
        }
        let progress = match state {
            State::Accepted => unreachable!("made a handshake above"),
            State::Established(session) => {
                return match session.open(buf) {
                    Ok(Opened::InPlace(n)) => Input::InPlace(n),
                    Ok(Opened::Owned(v)) => Input::Owned(v),
                    Err(e) => ended(session, e),
                };
            }
            State::Handshaking(hs) => hs.advance(buf, out, &mut self.budget),
        };
        match progress {
            Ok(Progress::More) => Input::Nothing,
            Ok(Progress::Deferred) => {
                self.deferred.push(id);
                Input::Nothing
            }
            Err(Failure { reason }) => {
                self.conns.remove(&id.index);
                Input::Ended {
                    failure: Some(reason),
                    reply: std::mem::take(out),
                }
            }
            Ok(Progress::Done(mut session, mut rest)) => {
                let result = if rest.is_empty() {
                    Input::Nothing
                } else {
                    match session.open(&mut rest) {
                        Ok(Opened::InPlace(n)) => {
                            rest.truncate(n);
                            Input::Owned(rest)
                        }
                        Ok(Opened::Owned(v)) => Input::Owned(v),
                        Err(e) => ended(&mut session, e),
                    }
                };
                self.conns.insert(id.index, State::Established(session));
                self.established += 1;
                result
            }
        }
    }

    /// Resumes a deferred handshake (no new bytes).
    pub(crate) fn resume(&mut self, id: ConnId, out: &mut Vec<u8>) -> Input {
        self.input(id, &mut [], out)
    }

    /// Seals app bytes for `id`; `None` while it is still handshaking
    /// (bytes the app sends before the handshake ends, e.g. a 503 at
    /// accept, cannot be sent to a TLS client and are dropped).
    pub(crate) fn seal(
        &mut self,
        id: ConnId,
        parts: &[&[u8]],
    ) -> Option<Result<Vec<u8>, RecordError>> {
        match self.conns.get_mut(&id.index)? {
            State::Established(session) => Some(session.seal(parts)),
            State::Handshaking(_) | State::Accepted => None,
        }
    }

    /// The close_notify alert for a connection closing cleanly.
    pub(crate) fn close_notify(&mut self, id: ConnId) -> Option<Vec<u8>> {
        match self.conns.get_mut(&id.index)? {
            State::Established(session) => session.seal_alert(1, 0).ok(),
            State::Handshaking(_) | State::Accepted => None,
        }
    }

    /// The connection's entry is freed.
    pub(crate) fn remove(&mut self, id: ConnId) {
        self.conns.remove(&id.index);
    }

    /// Takes the record state of an established connection that moves to
    /// another shard. `Err` while it is still handshaking.
    pub(crate) fn take_for_handoff(&mut self, id: ConnId) -> Result<Option<Moved>, ()> {
        match self.conns.remove(&id.index) {
            None => Ok(None),
            Some(State::Established(session)) => Ok(Some(session)),
            Some(other) => {
                self.conns.insert(id.index, other);
                Err(())
            }
        }
    }

    /// Puts back what `take_for_handoff` took (the handoff did not start).
    pub(crate) fn put_back(&mut self, id: ConnId, moved: Option<Moved>) {
        if let Some(session) = moved {
            self.conns.insert(id.index, State::Established(session));
        }
    }

    /// A handed-in connection's record state.
    pub(crate) fn adopt(&mut self, id: ConnId, moved: Moved) {
        self.conns.insert(id.index, State::Established(moved));
    }
}

/// How a record failure ends the connection: the client's close_notify is
/// answered with ours; a record the shard refuses gets the fatal alert
/// that says why (RFC 8446 §6.2), so the client's TLS stack reports the
/// cause instead of a bare reset; a peer's own error alert gets nothing.
fn ended(session: &mut Session, e: RecordError) -> Input {
    let reply = |session: &mut Session, level: u8, description: u8| {
        session.seal_alert(level, description).unwrap_or_default()
    };
    match e {
        RecordError::PeerAlert(0) => Input::Ended {
            failure: None,
            reply: reply(session, 1, 0),
        },
        RecordError::PeerAlert(_) | RecordError::KeyExhausted => Input::Ended {
            failure: Some(e.to_string()),
            reply: Vec::new(),
        },
        e => Input::Ended {
            failure: Some(e.to_string()),
            reply: reply(session, 2, alert_for(e)),
        },
    }
}

/// The fatal alert's description for a refused record.
fn alert_for(e: RecordError) -> u8 {
    const UNEXPECTED_MESSAGE: u8 = 10;
    const BAD_RECORD_MAC: u8 = 20;
    const RECORD_OVERFLOW: u8 = 22;
    match e {
        RecordError::BadRecordMac => BAD_RECORD_MAC,
        RecordError::Unexpected(what) if what.contains("too long") => RECORD_OVERFLOW,
        _ => UNEXPECTED_MESSAGE,
    }
}

#[cfg(test)]
mod tests;
