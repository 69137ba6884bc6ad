//! A TLS handshake in progress: rustls drives it; this file feeds it whole
//! records, collects what it sends, and, once the handshake is done, takes
//! the traffic keys out of it (`dangerous_extract_secrets`) so the rustls
//! connection and its buffers can be dropped (see `record.rs`).
//!
//! Records are fed one at a time so that rustls never reads past the
//! client's Finished: what follows it is application data, opened by the
//! shard's record layer with the sequence numbers rustls reports.

use super::record::{self, Direction, RecordError, Session, Suite, HEADER_BYTES};
use rustls::{ConnectionTrafficSecrets, ServerConfig, ServerConnection};
use std::sync::Arc;

/// Bytes a client may send before its handshake is done (ClientHello,
/// change_cipher_spec, Finished: under 3 KiB from browsers; a ClientHello
/// with a post-quantum key share ~1.8 KiB). More is refused.
pub(crate) const HANDSHAKE_INPUT_BYTES_MAX: usize = 32 * 1024;
/// During the handshake a record may carry a whole ClientHello fragment.
const HANDSHAKE_RECORD_BYTES_MAX: usize = record::CIPHERTEXT_BYTES_MAX;

pub(crate) struct Handshake {
    /// Taken when the handshake is done (extraction consumes it).
    conn: Option<ServerConnection>,
    /// Received bytes that do not make a whole record yet (bounded by
    /// `HANDSHAKE_INPUT_BYTES_MAX`).
    pending: Vec<u8>,
    /// Bytes received so far, whole records fed to rustls included: the
    /// bound is on everything before the handshake ends, not only on what
    /// is pending (a ClientHello cut into many small records would
    /// otherwise go on for as long as rustls buffers its fragments).
    received_bytes: usize,
    /// The server's first flight (the step that costs CPU) was computed.
    flight_computed: bool,
}

/// Where a handshake stands after new bytes.
pub(crate) enum Progress {
    /// Waiting for more bytes from the client.
    More,
    /// A ClientHello waits: this round's handshake budget is spent (the
    /// caller resumes it in a later round).
    Deferred,
    /// Done: the record state, and the bytes after the client's Finished
    /// (application data still to open with it).
    Done(Box<Session>, Vec<u8>),
}

/// The handshake failed, for this reason (logged). What to send before
/// the close (a TLS alert, or a plain-text HTTP 400 for a plain HTTP
/// request) is already in the caller's output.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) reason: String,
}

const PLAIN_HTTP_REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 53\r\n\r\n\
This port speaks TLS: use https:// or wss:// instead\n";

impl Handshake {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<Handshake, Failure> {
        let conn = ServerConnection::new(config).map_err(|e| Failure {
            reason: format!("TLS set-up: {e}"),
        })?;
        Ok(Handshake {
            conn: Some(conn),
            pending: Vec::new(),
            received_bytes: 0,
            flight_computed: false,
        })
    }

    /// Takes `input`; appends what the server sends to `out`. `budget`
    /// counts server flights this round may still compute.
    pub(crate) fn advance(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        budget: &mut u32,
    ) -> Result<Progress, Failure> {
        self.received_bytes += input.len();
        if self.received_bytes > HANDSHAKE_INPUT_BYTES_MAX {
            return Err(Failure {
                reason: format!(
                    "over {HANDSHAKE_INPUT_BYTES_MAX} bytes before the handshake ended"
                ),
            });
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        let result = loop {
            let len = match record::record_len(&self.pending[at..], HANDSHAKE_RECORD_BYTES_MAX) {
                Ok(Some(len)) => len,
                Ok(None) => break Ok(Progress::More),
                Err(e) => break Err(self.refuse(at, e, out)),
            };
            let end = at + HEADER_BYTES + len;
            if end > self.pending.len() {
                break Ok(Progress::More);
            }
            if !self.flight_computed && self.pending[at] == record::CONTENT_HANDSHAKE {
                if *budget == 0 {
                    break Ok(Progress::Deferred);
                }
                *budget -= 1;
            }
            if let Err(f) = self.feed(at, end, out) {
                break Err(f);
            }
            at = end;
            if !self.conn().is_handshaking() {
                break self.finish(at);
            }
        };
        if matches!(result, Ok(Progress::More | Progress::Deferred)) {
            self.pending.drain(..at);
        }
        result
    }

    fn conn(&mut self) -> &mut ServerConnection {
        self.conn
            .as_mut()
            .expect("used only until the handshake is done")
    }

    /// Gives rustls the record at `pending[at..end]`.
    fn feed(&mut self, at: usize, end: usize, out: &mut Vec<u8>) -> Result<(), Failure> {
        let conn = self
            .conn
            .as_mut()
            .expect("used only until the handshake is done");
        let mut record = &self.pending[at..end];
        while !record.is_empty() {
            if let Err(e) = conn.read_tls(&mut record) {
                return Err(Failure {
                    reason: format!("reading a record: {e}"),
                });
            }
        }
        let processed = self.conn().process_new_packets();
        self.write_out(out);
        match processed {
            Ok(_) => {
                if !out.is_empty() {
                    self.flight_computed = true;
                }
                Ok(())
            }
            Err(e) => Err(Failure {
                reason: format!("TLS handshake failed: {e}"),
            }),
        }
    }

    fn write_out(&mut self, out: &mut Vec<u8>) {
        while self.conn().wants_write() {
            if self.conn().write_tls(out).is_err() {
                break;
            }
        }
    }

    /// A record header that is not TLS: a plain HTTP request gets a 400
    /// that says what to do; anything else goes to rustls, whose refusal
    /// (an alert) is the answer.
    fn refuse(&mut self, at: usize, e: RecordError, out: &mut Vec<u8>) -> Failure {
        let rest = &self.pending[at..];
        let method_len = rest
            .iter()
            .take(8)
            .take_while(|b| b.is_ascii_uppercase())
            .count();
        if at == 0
            && !self.flight_computed
            && (3..=7).contains(&method_len)
            && rest.get(method_len) == Some(&b' ')
        {
            out.extend_from_slice(PLAIN_HTTP_REPLY);
            return Failure {
                reason: "plain HTTP request on the TLS port (answered 400)".into(),
            };
        }
        let conn = self
            .conn
            .as_mut()
            .expect("used only until the handshake is done");
        let mut bytes = rest;
        let _ = conn.read_tls(&mut bytes);
        let processed = self.conn().process_new_packets();
        self.write_out(out);
        Failure {
            reason: match processed {
                Err(err) => format!("TLS handshake failed: {err}"),
                Ok(_) => format!("TLS handshake failed: {e}"),
            },
        }
    }

    /// The handshake is done: the keys, and what came after `pending[..at]`.
    fn finish(&mut self, at: usize) -> Result<Progress, Failure> {
        let rest = self.pending.split_off(at);
        let conn = self.conn.take().expect("finished once");
        let fail = |reason: String| Failure { reason };
        let secrets = conn
            .dangerous_extract_secrets()
            .map_err(|e| fail(format!("taking the traffic keys: {e}")))?;
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let (suite, tx) =
            direction(tx, tx_seq).ok_or_else(|| fail("unsupported cipher suite".into()))?;
        let (_, rx) =
            direction(rx, rx_seq).ok_or_else(|| fail("unsupported cipher suite".into()))?;
        Ok(Progress::Done(Box::new(Session::new(suite, tx, rx)), rest))
    }
}

fn direction(secrets: ConnectionTrafficSecrets, seq: u64) -> Option<(Suite, Direction)> {
    let (suite, key, iv) = match &secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (Suite::Chacha20Poly1305, key, iv)
        }
        _ => return None,
    };
    Some((
        suite,
        Direction::new(suite, key.as_ref(), iv.as_ref(), seq)?,
    ))
}
