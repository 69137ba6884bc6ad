//! The TLS 1.3 record layer of an established connection (RFC 8446 §5),
//! done by the shard with the keys rustls hands over after the handshake —
//! what kTLS does in the kernel, in user space. Pure: bytes in, bytes out.
//!
//! Why not keep the rustls connection: it holds a few KiB of state and
//! buffers per connection for as long as the connection lives; an idle
//! connection here holds only its [`Session`] (two keys, two IVs, two
//! sequence numbers: one allocation of ≤ 160 bytes), and a record that arrives split
//! over receives is the only thing ever buffered (`partial`, while it is
//! incomplete). Keys are expanded per record (well under a microsecond),
//! not kept expanded per connection.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

/// Record header: type, legacy version (2), length (2).
pub(crate) const HEADER_BYTES: usize = 5;
/// Largest plaintext in one record (2^14).
pub(crate) const PLAINTEXT_BYTES_MAX: usize = 16_384;
/// Largest ciphertext a TLS 1.3 record may carry (2^14 + 256).
pub(crate) const CIPHERTEXT_BYTES_MAX: usize = PLAINTEXT_BYTES_MAX + 256;
const TAG_BYTES: usize = 16;
/// Records per key before the connection is closed instead of rekeyed:
/// below AES-GCM's confidentiality limit (2^24.5 full records, RFC 8446
/// §5.5). A push connection never gets near; one that does reconnects.
pub(crate) const RECORDS_PER_KEY_MAX: u64 = 1 << 24;

pub(crate) const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
pub(crate) const CONTENT_ALERT: u8 = 21;
pub(crate) const CONTENT_HANDSHAKE: u8 = 22;
pub(crate) const CONTENT_APPLICATION_DATA: u8 = 23;

/// The AEAD of the negotiated cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
    fn key_bytes(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }
}

/// One direction's traffic key, IV and next sequence number.
pub(crate) struct Direction {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    pub(crate) fn new(suite: Suite, key: &[u8], iv: &[u8], seq: u64) -> Option<Direction> {
        if key.len() != suite.key_bytes() || iv.len() != 12 {
            return None;
        }
        let mut d = Direction {
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        d.key[..key.len()].copy_from_slice(key);
        d.iv.copy_from_slice(iv);
        Some(d)
    }

    /// The per-record nonce (RFC 8446 §5.3) and the key, for the next
    /// record; advances the sequence number so no nonce is used twice.
    fn next(&mut self, suite: Suite) -> Result<(LessSafeKey, Nonce), RecordError> {
        if self.seq >= RECORDS_PER_KEY_MAX {
            return Err(RecordError::KeyExhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        let key = UnboundKey::new(suite.algorithm(), &self.key[..suite.key_bytes()])
            .map_err(|_| RecordError::BadRecordMac)?;
        Ok((LessSafeKey::new(key), Nonce::assume_unique_for_key(nonce)))
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        // Keys do not outlive the connection in freed memory.
        for b in self.key.iter_mut().chain(self.iv.iter_mut()) {
            // SAFETY: `b` is a valid, aligned &mut u8; a volatile write is
            // not optimised away although the value is never read again.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Why a connection's records cannot go on; each ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Authentication failed (wrong key, tampered or truncated record).
    BadRecordMac,
    /// A record header or inner type that TLS 1.3 does not allow here.
    Unexpected(&'static str),
    /// The peer sent an alert: close_notify (0) or an error.
    PeerAlert(u8),
    /// A post-handshake handshake message (KeyUpdate, ...): not supported;
    /// the client reconnects.
    PostHandshakeMessage,
    /// `RECORDS_PER_KEY_MAX` records under one key.
    KeyExhausted,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::BadRecordMac => f.write_str("record failed authentication"),
            RecordError::Unexpected(what) => write!(f, "unexpected record: {what}"),
            RecordError::PeerAlert(0) => f.write_str("peer sent close_notify"),
            RecordError::PeerAlert(d) => write!(f, "peer sent alert {d}"),
            RecordError::PostHandshakeMessage => f.write_str(
                "post-handshake message (KeyUpdate) not supported; the client reconnects",
            ),
            RecordError::KeyExhausted => f.write_str("record limit per key reached"),
        }
    }
}

/// The length a record header announces, after checking the header.
/// `None`: fewer than `HEADER_BYTES` bytes so far.
pub(crate) fn record_len(
    bytes: &[u8],
    ciphertext_max: usize,
) -> Result<Option<usize>, RecordError> {
    if bytes.len() < HEADER_BYTES {
        return Ok(None);
    }
    if !matches!(
        bytes[0],
        CONTENT_CHANGE_CIPHER_SPEC | CONTENT_ALERT | CONTENT_HANDSHAKE | CONTENT_APPLICATION_DATA
    ) {
        return Err(RecordError::Unexpected("content type"));
    }
    if bytes[1] != 3 || bytes[2] > 4 {
        return Err(RecordError::Unexpected("version"));
    }
    let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    if len > ciphertext_max {
        return Err(RecordError::Unexpected("record too long"));
    }
    Ok(Some(len))
}

/// An established connection's record state.
pub(crate) struct Session {
    suite: Suite,
    tx: Direction,
    rx: Direction,
    /// The start of a record that did not fit in the receives so far;
    /// `None` between records (the usual, idle case). Bounded by one
    /// record plus one receive.
    partial: Option<Vec<u8>>,
}

/// What the bytes of one receive held, once opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Plaintext, moved to the front of the buffer passed in (this many bytes).
    InPlace(usize),
    /// Plaintext in a new buffer (a record had started in an earlier receive).
    Owned(Vec<u8>),
}

impl Session {
    pub(crate) fn new(suite: Suite, tx: Direction, rx: Direction) -> Session {
        Session {
            suite,
            tx,
            rx,
            partial: None,
        }
    }

    /// Bytes held for a record split over receives (0 when idle).
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, Vec::len)
    }

    /// Seals `parts` (sent back to back) as application-data records.
    pub(crate) fn seal(&mut self, parts: &[&[u8]]) -> Result<Vec<u8>, RecordError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let records = total.div_ceil(PLAINTEXT_BYTES_MAX).max(1);
        let mut out = Vec::with_capacity(total + records * (HEADER_BYTES + 1 + TAG_BYTES));
        let mut plain = parts.iter().flat_map(|p| p.iter().copied());
        let mut left = total;
        loop {
            let n = left.min(PLAINTEXT_BYTES_MAX);
            let start = out.len();
            out.extend_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3, 0, 0]);
            out.extend(plain.by_ref().take(n));
            self.seal_record_at(&mut out, start, CONTENT_APPLICATION_DATA)?;
            left -= n;
            if left == 0 {
                return Ok(out);
            }
        }
    }

    /// Seals an alert record (`level` 1 warning / 2 fatal, `description`).
    pub(crate) fn seal_alert(
        &mut self,
        level: u8,
        description: u8,
    ) -> Result<Vec<u8>, RecordError> {
        let mut out = vec![CONTENT_APPLICATION_DATA, 3, 3, 0, 0, level, description];
        self.seal_record_at(&mut out, 0, CONTENT_ALERT)?;
        Ok(out)
    }

    /// `out[start..]` is a 5-byte header followed by the plaintext: appends
    /// the inner type and the tag, encrypts, and fills in the length.
    fn seal_record_at(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
        inner: u8,
    ) -> Result<(), RecordError> {
        out.push(inner);
        let len = out.len() - start - HEADER_BYTES + TAG_BYTES;
        out[start + 3..start + 5].copy_from_slice(&(len as u16).to_be_bytes());
        let header: [u8; HEADER_BYTES] = out[start..start + HEADER_BYTES]
            .try_into()
            .expect("5 bytes");
        let (key, nonce) = self.tx.next(self.suite)?;
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER_BYTES..])
            .map_err(|_| RecordError::BadRecordMac)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens every complete record in `buf` (one receive), keeping the
    /// start of an incomplete last record for the next call.
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<Opened, RecordError> {
        match self.partial.take() {
            None => {
                let (plain, used) = self.open_records(buf)?;
                if used < buf.len() {
                    self.partial = Some(buf[used..].to_vec());
                }
                Ok(Opened::InPlace(plain))
            }
            Some(mut held) => {
                held.extend_from_slice(buf);
                let (plain, used) = self.open_records(&mut held)?;
                if used < held.len() {
                    let rest = held[used..].to_vec();
                    self.partial = Some(rest);
                }
                held.truncate(plain);
                Ok(Opened::Owned(held))
            }
        }
    }

    /// Opens the complete records at the front of `buf`, moving their
    /// plaintext to the front. Returns (plaintext bytes, bytes consumed).
    fn open_records(&mut self, buf: &mut [u8]) -> Result<(usize, usize), RecordError> {
        let mut read = 0;
        let mut written = 0;
        while let Some(len) = record_len(&buf[read..], CIPHERTEXT_BYTES_MAX)? {
            let end = read + HEADER_BYTES + len;
            if end > buf.len() {
                break;
            }
            if buf[read] != CONTENT_APPLICATION_DATA {
                // TLS 1.3 protects every record after the handshake; a
                // plaintext alert or change_cipher_spec here is refused.
                return Err(RecordError::Unexpected(
                    "unprotected record after the handshake",
                ));
            }
            if len < 1 + TAG_BYTES {
                return Err(RecordError::BadRecordMac);
            }
            let header: [u8; HEADER_BYTES] =
                buf[read..read + HEADER_BYTES].try_into().expect("5 bytes");
            let (key, nonce) = self.rx.next(self.suite)?;
            let plain_len = key
                .open_in_place(nonce, Aad::from(header), &mut buf[read + HEADER_BYTES..end])
                .map_err(|_| RecordError::BadRecordMac)?
                .len();
            // The inner plaintext ends with its type, then zero padding.
            let body = &buf[read + HEADER_BYTES..read + HEADER_BYTES + plain_len];
            let Some(type_at) = body.iter().rposition(|&b| b != 0) else {
                return Err(RecordError::Unexpected("record without a content type"));
            };
            if type_at > PLAINTEXT_BYTES_MAX {
                return Err(RecordError::Unexpected("plaintext too long"));
            }
            match body[type_at] {
                CONTENT_APPLICATION_DATA => {
                    buf.copy_within(read + HEADER_BYTES..read + HEADER_BYTES + type_at, written);
                    written += type_at;
                }
                CONTENT_ALERT if type_at == 2 => return Err(RecordError::PeerAlert(body[1])),
                CONTENT_HANDSHAKE => return Err(RecordError::PostHandshakeMessage),
                _ => return Err(RecordError::Unexpected("inner content type")),
            }
            read = end;
        }
        Ok((written, read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, Session) {
        let k1 = [7u8; 16];
        let k2 = [9u8; 16];
        let iv1 = [1u8; 12];
        let iv2 = [2u8; 12];
        let s = Suite::Aes128Gcm;
        let server = Session::new(
            s,
            Direction::new(s, &k1, &iv1, 0).unwrap(),
            Direction::new(s, &k2, &iv2, 0).unwrap(),
        );
        let client = Session::new(
            s,
            Direction::new(s, &k2, &iv2, 0).unwrap(),
            Direction::new(s, &k1, &iv1, 0).unwrap(),
        );
        (server, client)
    }

    fn open_all(s: &mut Session, bytes: &[u8]) -> Result<Vec<u8>, RecordError> {
        let mut buf = bytes.to_vec();
        Ok(match s.open(&mut buf)? {
            Opened::InPlace(n) => buf[..n].to_vec(),
            Opened::Owned(v) => v,
        })
    }

    #[test]
    fn round_trip_split_at_every_offset() {
        let (mut server, _) = pair();
        let wire: Vec<u8> = [
            server.seal(&[b"hello ", b"world"]).unwrap(),
            server.seal(&[b""]).unwrap(),
            server.seal(&[&[b'x'; 40][..]]).unwrap(),
        ]
        .concat();
        let want: Vec<u8> = [&b"hello world"[..], &[b'x'; 40][..]].concat();
        for cut in 0..=wire.len() {
            for cut2 in cut..=wire.len() {
                let (_, mut client) = pair();
                let mut got = open_all(&mut client, &wire[..cut]).unwrap();
                got.extend(open_all(&mut client, &wire[cut..cut2]).unwrap());
                got.extend(open_all(&mut client, &wire[cut2..]).unwrap());
                assert_eq!(got, want, "cut at {cut}, {cut2}");
                assert_eq!(client.buffered_bytes(), 0);
            }
        }
    }

    #[test]
    fn large_plaintext_spans_records() {
        let (mut server, mut client) = pair();
        let big = vec![3u8; PLAINTEXT_BYTES_MAX * 2 + 5];
        let wire = server.seal(&[&big[..10], &big[10..]]).unwrap();
        assert_eq!(wire.len(), big.len() + 3 * (HEADER_BYTES + 1 + TAG_BYTES));
        assert_eq!(open_all(&mut client, &wire).unwrap(), big);
    }

    #[test]
    fn tampered_record_fails() {
        let (mut server, mut client) = pair();
        let mut wire = server.seal(&[b"secret"]).unwrap();
        wire[7] ^= 1;
        assert_eq!(open_all(&mut client, &wire), Err(RecordError::BadRecordMac));
    }

    #[test]
    fn replayed_record_fails() {
        let (mut server, mut client) = pair();
        let wire = server.seal(&[b"once"]).unwrap();
        assert_eq!(open_all(&mut client, &wire).unwrap(), b"once");
        assert_eq!(open_all(&mut client, &wire), Err(RecordError::BadRecordMac));
    }

    #[test]
    fn alerts_and_handshake_messages_end_the_session() {
        let (mut server, mut client) = pair();
        let wire = server.seal_alert(1, 0).unwrap();
        assert_eq!(open_all(&mut client, &wire), Err(RecordError::PeerAlert(0)));
        let (mut server, mut client) = pair();
        let mut rec = vec![CONTENT_APPLICATION_DATA, 3, 3, 0, 0, 24, 0, 0, 1, 0];
        server
            .seal_record_at(&mut rec, 0, CONTENT_HANDSHAKE)
            .unwrap();
        assert_eq!(
            open_all(&mut client, &rec),
            Err(RecordError::PostHandshakeMessage)
        );
    }

    #[test]
    fn bad_headers_refused() {
        let (_, mut client) = pair();
        assert!(open_all(&mut client, b"GET / HTTP/1.1\r\n").is_err());
        let (_, mut client) = pair();
        assert!(open_all(&mut client, &[23, 3, 3, 0xff, 0xff]).is_err());
        let (_, mut client) = pair();
        assert!(open_all(&mut client, &[21, 3, 3, 0, 2, 2, 40]).is_err());
    }

    #[test]
    fn nonces_follow_the_sequence_number() {
        // Two sessions whose tx starts at seq 5 agree with one that sealed
        // five records first: the nonce is iv XOR seq, never reused.
        let (mut a, _) = pair();
        for _ in 0..5 {
            a.seal(&[b"."]).unwrap();
        }
        let s = Suite::Aes128Gcm;
        let mut b = Session::new(
            s,
            Direction::new(s, &[7; 16], &[1; 12], 5).unwrap(),
            Direction::new(s, &[9; 16], &[2; 12], 0).unwrap(),
        );
        assert_eq!(a.seal(&[b"x"]).unwrap(), b.seal(&[b"x"]).unwrap());
    }

    #[test]
    fn key_exhaustion_refuses_to_seal() {
        let s = Suite::Chacha20Poly1305;
        let mut a = Session::new(
            s,
            Direction::new(s, &[7; 32], &[1; 12], RECORDS_PER_KEY_MAX).unwrap(),
            Direction::new(s, &[9; 32], &[2; 12], 0).unwrap(),
        );
        assert_eq!(a.seal(&[b"x"]), Err(RecordError::KeyExhausted));
    }

    #[test]
    fn idle_session_is_small() {
        assert!(
            std::mem::size_of::<Session>() <= 160,
            "{}",
            std::mem::size_of::<Session>()
        );
    }
}
