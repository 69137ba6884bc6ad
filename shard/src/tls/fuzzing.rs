//! The TLS record layer and handshake feeder as the fuzz targets see them
//! (`fuzz/bodies.rs`, re-exported by the app as `pushgate::tls::fuzzing`).
//! Not an API: the smallest surface that lets a fuzzer reach the private
//! record code with the properties it must hold checked here, next to the
//! code they are about.
//!
//! Record sessions use fixed test keys (AES-128-GCM): the fuzzer cannot
//! forge a tag, so it builds valid records with [`seal_client_record`]
//! (the client's direction of the same keys) and mixes them with garbage.

use super::handshake::{Failure, Handshake, Progress, HANDSHAKE_INPUT_BYTES_MAX};
use super::record::{
    Direction, Opened, RecordError, Session, Suite, CIPHERTEXT_BYTES_MAX, HEADER_BYTES,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use std::sync::Arc;

pub use rustls::ServerConfig;

const SERVER_KEY: [u8; 16] = [0x5e; 16];
const SERVER_IV: [u8; 12] = [0x51; 12];
const CLIENT_KEY: [u8; 16] = [0xc1; 16];
const CLIENT_IV: [u8; 12] = [0xc7; 12];

/// Largest a session may hold between receives: the start of one record
/// (header and all but its last byte).
pub const BUFFERED_BYTES_MAX: usize = HEADER_BYTES + CIPHERTEXT_BYTES_MAX - 1;

fn server_session() -> Session {
    let s = Suite::Aes128Gcm;
    Session::new(
        s,
        Direction::new(s, &SERVER_KEY, &SERVER_IV, 0).expect("fixed key sizes"),
        Direction::new(s, &CLIENT_KEY, &CLIENT_IV, 0).expect("fixed key sizes"),
    )
}

/// One record as the client of the fixed keys seals it at sequence number
/// `seq`: header type 23, `inner` is the whole inner plaintext (content,
/// then its content type, then any zero padding: RFC 8446 §5.2), so the
/// fuzzer can also make records without a type or over the plaintext
/// limit. The length field is what it is modulo 2^16.
pub fn seal_client_record(seq: u64, inner: &[u8]) -> Vec<u8> {
    let len = inner.len() + AES_128_GCM.tag_len();
    let mut out = vec![23, 3, 3];
    out.extend_from_slice(&(len as u16).to_be_bytes());
    let header: [u8; HEADER_BYTES] = out[..].try_into().expect("5 bytes");
    let mut nonce = CLIENT_IV;
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &CLIENT_KEY).expect("16 bytes"));
    out.extend_from_slice(inner);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut out[HEADER_BYTES..],
        )
        .expect("sealing in memory cannot fail");
    out.extend_from_slice(tag.as_ref());
    out
}

/// What one run of receives opened.
#[derive(Debug, PartialEq, Eq)]
pub struct Opening {
    /// Plaintext handed out, all receives together.
    pub plaintext: Vec<u8>,
    /// How the run ended: `Err` (the error's log line) stops it, as the
    /// connection closes; nothing after is fed.
    pub result: Result<(), String>,
    /// Bytes the session holds at the end (an incomplete record).
    pub buffered_bytes: usize,
}

/// Opens `pieces` (one receive each) with a fresh session of the fixed
/// keys. Panics if a receive leaves more than [`BUFFERED_BYTES_MAX`]
/// buffered or hands out more plaintext than the bytes that came in.
pub fn open_pieces(pieces: &[&[u8]]) -> Opening {
    let mut session = server_session();
    let mut plaintext = Vec::new();
    let mut received = 0;
    for piece in pieces {
        received += piece.len();
        let mut buf = piece.to_vec();
        let opened = session.open(&mut buf);
        let buffered_bytes = session.buffered_bytes();
        assert!(
            buffered_bytes <= BUFFERED_BYTES_MAX,
            "{buffered_bytes} bytes held over a bound of {BUFFERED_BYTES_MAX}"
        );
        match opened {
            Ok(Opened::InPlace(n)) => {
                assert!(n <= buf.len(), "{n} bytes of plaintext in {}", buf.len());
                plaintext.extend_from_slice(&buf[..n]);
            }
            Ok(Opened::Owned(v)) => plaintext.extend_from_slice(&v),
            Err(e) => {
                return Opening {
                    plaintext,
                    result: Err(error_line(e)),
                    buffered_bytes,
                }
            }
        }
        assert!(
            plaintext.len() <= received,
            "{} bytes of plaintext from {received} received",
            plaintext.len()
        );
    }
    Opening {
        plaintext,
        result: Ok(()),
        buffered_bytes: session.buffered_bytes(),
    }
}

fn error_line(e: RecordError) -> String {
    let line = e.to_string();
    assert!(!line.is_empty(), "{e:?} has a log line");
    line
}

/// Opens `stream` whole and split at `split` (clamped), and byte by byte
/// when it is short: no panic, the whole and split runs agree, and a run
/// in more pieces never hands out less before the same end. Returns the
/// whole run.
pub fn open_whole_and_split(stream: &[u8], split: usize) -> Opening {
    let whole = open_pieces(&[stream]);
    let (head, tail) = stream.split_at(split.min(stream.len()));
    let split_run = open_pieces(&[head, tail]);
    agree(&whole, &split_run, "split");
    if stream.len() <= 1024 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let byte_run = open_pieces(&bytes);
        agree(&whole, &byte_run, "byte by byte");
        agree(&split_run, &byte_run, "split, then byte by byte");
    }
    whole
}

/// `fewer` ran the same bytes as `more` in fewer receives. They end the
/// same way; on success they opened the same plaintext and hold the same
/// bytes; on an error the receive that failed lost its plaintext, so the
/// run in more pieces may have handed out more of it before the error.
fn agree(fewer: &Opening, more: &Opening, what: &str) {
    assert_eq!(fewer.result, more.result, "{what}: {fewer:?}\n{more:?}");
    if fewer.result.is_ok() {
        assert_eq!(fewer, more, "{what}");
    } else {
        assert!(
            more.plaintext.starts_with(&fewer.plaintext),
            "{what}: {fewer:?}\n{more:?}"
        );
    }
}

/// How a handshake fed arbitrary bytes ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// Refused (the reason is logged); the connection closes after the
    /// reply (`reply_bytes`: a TLS alert, or the plain-HTTP 400).
    Refused { reason: String, reply_bytes: usize },
    /// Still waiting for bytes (fewer than the input bound so far); the
    /// handshake timeout ends it on a real connection.
    Waiting,
    /// The handshake completed (only a real client can get here).
    Done,
}

/// Feeds `pieces` (one receive each) to a server handshake with `config`
/// and a budget that never runs out. Panics if bytes over the input bound
/// did not end it, or if a refusal's reply is neither TLS records nor the
/// plain-HTTP 400.
pub fn handshake_pieces(config: Arc<rustls::ServerConfig>, pieces: &[&[u8]]) -> HandshakeEnd {
    let mut handshake = match Handshake::new(config) {
        Ok(h) => h,
        Err(Failure { reason }) => panic!("a handshake with a good config starts: {reason}"),
    };
    let mut received = 0;
    for piece in pieces {
        received += piece.len();
        let mut out = Vec::new();
        let mut budget = u32::MAX;
        match handshake.advance(piece, &mut out, &mut budget) {
            Ok(Progress::More) => {}
            Ok(Progress::Deferred) => panic!("deferred with budget left"),
            Ok(Progress::Done(..)) => return HandshakeEnd::Done,
            Err(Failure { reason }) => {
                assert!(!reason.is_empty());
                check_reply(&out);
                return HandshakeEnd::Refused {
                    reason,
                    reply_bytes: out.len(),
                };
            }
        }
        assert!(
            received <= HANDSHAKE_INPUT_BYTES_MAX,
            "{received} bytes taken, over the bound of {HANDSHAKE_INPUT_BYTES_MAX}"
        );
    }
    HandshakeEnd::Waiting
}

/// A refusal's reply: the 400 for plain HTTP, or whole TLS records (the
/// server's flight, then its alert).
fn check_reply(out: &[u8]) {
    if out.starts_with(b"HTTP/1.1 400 ") {
        return;
    }
    let mut rest = out;
    while !rest.is_empty() {
        assert!(
            rest.len() >= HEADER_BYTES && matches!(rest[0], 20..=23) && rest[1] == 3,
            "a reply that is not TLS records: {out:?}"
        );
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert!(rest.len() >= HEADER_BYTES + len, "a cut record: {out:?}");
        rest = &rest[HEADER_BYTES + len..];
    }
}

/// Feeds `stream` to handshakes whole and split at `split` (clamped): no
/// panic, the bound holds, and both end the same way (refused, waiting or
/// done). Returns the whole run.
pub fn handshake_whole_and_split(
    config: Arc<rustls::ServerConfig>,
    stream: &[u8],
    split: usize,
) -> HandshakeEnd {
    let whole = handshake_pieces(config.clone(), &[stream]);
    let (head, tail) = stream.split_at(split.min(stream.len()));
    let split_run = handshake_pieces(config, &[head, tail]);
    if stream.len() > HANDSHAKE_INPUT_BYTES_MAX {
        // The whole run is refused before it parses anything; the split
        // one parses the head first, so they may fail for different reasons.
        return whole;
    }
    // A header that is not TLS is handed to rustls as it stands, so how
    // much of the record had arrived decides its reason and whether it
    // sends an alert; what must agree is how the handshake ended.
    assert_eq!(
        std::mem::discriminant(&whole),
        std::mem::discriminant(&split_run),
        "split at {split}: {whole:?}\n{split_run:?}"
    );
    whole
}
