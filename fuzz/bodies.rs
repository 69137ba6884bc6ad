//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries
//! (`fuzz_targets/*.rs`, nightly + libFuzzer) and the stable smoke fuzzer
//! (`tests/fuzz_smoke.rs`, plain `cargo test`), so both check exactly the
//! same properties.
//!
//! Each body panics on a violated property and otherwise returns how deep
//! the input got (events seen, requests decoded …), which the smoke fuzzer
//! uses to check its inputs reach past the first parse error.

#![allow(dead_code)]

use pushgate::push::wire::{
    decode_reply, decode_request, encode_reply, encode_request, FrameSplitter, WireError,
    LENGTH_BYTES,
};
use pushgate::ws::deflate::{Deflater, Inflater};
use pushgate::ws::{
    parse_request, query_param, response_101, validate_upgrade, ClientSide, Event, FrameReader,
    HandshakeLimits, MessageKind, ProtocolError, ReaderLimits, ReaderRole, ServerSide,
};

// ------------------------------------------------ frame_reader, client_frame_reader

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Start(MessageKind),
    Data(Vec<u8>),
    End,
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

type Outcome = (Vec<Owned>, Result<(), ProtocolError>);

/// Feeds the pieces to one reader of role `R`; adjacent data events are
/// merged, since where a read ends carries no meaning.
fn run_reader<R: ReaderRole>(pieces: &[&[u8]], limits: &ReaderLimits) -> Outcome {
    run_reader_inflating::<R>(pieces, limits, None)
}

/// [`run_reader`] on a connection that negotiated permessage-deflate when
/// `inflater` is given.
fn run_reader_inflating<R: ReaderRole>(
    pieces: &[&[u8]],
    limits: &ReaderLimits,
    mut inflater: Option<&mut Inflater>,
) -> Outcome {
    let mut reader = FrameReader::<R>::default();
    let mut events: Vec<Owned> = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        let mut buffer = piece.to_vec();
        let fed = reader.feed_inflating(&mut buffer, limits, inflater.as_deref_mut(), |event| {
            let owned = match event {
                Event::MessageStart(kind) => Owned::Start(kind),
                Event::MessageData(bytes) => Owned::Data(bytes.to_vec()),
                Event::MessageEnd => Owned::End,
                Event::Ping(bytes) => Owned::Ping(bytes.to_vec()),
                Event::Pong(bytes) => Owned::Pong(bytes.to_vec()),
                Event::Close(close) => {
                    Owned::Close(close.map(|(code, reason)| (code.0, reason.to_owned())))
                }
            };
            match (events.last_mut(), owned) {
                (Some(Owned::Data(so_far)), Owned::Data(more)) => so_far.extend_from_slice(&more),
                (_, owned) => events.push(owned),
            }
        });
        if result.is_ok() {
            result = fed;
        } else {
            assert_eq!(fed, Ok(()), "input after an error is ignored");
        }
    }
    (events, result)
}

/// Same as the reader's own tests: on an error, the split run may have handed
/// out more of the failing text (a valid prefix in an earlier read).
fn agrees(whole: &Outcome, split: &Outcome) -> bool {
    if whole == split {
        return true;
    }
    let ((whole_events, whole_result), (split_events, split_result)) = (whole, split);
    if whole_result != split_result || whole_result.is_ok() {
        return false;
    }
    let n = whole_events.len();
    match (whole_events.last(), split_events.last()) {
        (Some(Owned::Data(w)), Some(Owned::Data(s))) if n == split_events.len() => {
            s.starts_with(w) && whole_events[..n - 1] == split_events[..n - 1]
        }
        (_, Some(Owned::Data(_))) if split_events.len() == n + 1 => {
            split_events[..n] == whole_events[..]
        }
        _ => false,
    }
}

/// Arbitrary bytes into a server's FrameReader, whole and split at an
/// arbitrary point: no panic, and both runs give the same events and result.
///
/// The first two bytes of the input pick the split point and the limits; the
/// rest is the stream. Returns the number of events of the whole run.
pub fn frame_reader(data: &[u8]) -> usize {
    reader_whole_and_split::<ServerSide>(data)
}

/// [`frame_reader`] for a client's FrameReader (unmasked server frames).
pub fn client_frame_reader(data: &[u8]) -> usize {
    reader_whole_and_split::<ClientSide>(data)
}

fn reader_whole_and_split<R: ReaderRole>(data: &[u8]) -> usize {
    let [split_seed, limits_seed, stream @ ..] = data else {
        return 0;
    };
    let limits = ReaderLimits {
        frame_payload_bytes_max: u64::from(*limits_seed) * 4,
        message_bytes_max: u64::from(*limits_seed) * 16,
    };
    let split = usize::from(*split_seed) * stream.len() / 255;
    let whole = run_reader::<R>(&[stream], &limits);
    let (head, tail) = stream.split_at(split);
    let split_outcome = run_reader::<R>(&[head, tail], &limits);
    assert!(
        agrees(&whole, &split_outcome),
        "split at {split}:\n whole {whole:?}\n split {split_outcome:?}"
    );
    whole.0.len()
}

// ------------------------------------------------------------ inflate

/// Arbitrary bytes on a connection that negotiated permessage-deflate: a
/// server's FrameReader with the shard's inflater, whole and split at an
/// arbitrary point, must not panic and must agree; and the stream itself,
/// inflated as one compressed message under a bound, must never hand out
/// more than the bound, and what it inflates to must survive a round trip
/// through the deflater.
///
/// The first two bytes pick the split point and the limits; the rest is
/// the stream. Returns the events of the whole run plus 1 if the stream
/// inflated.
pub fn inflate(data: &[u8]) -> usize {
    let [split_seed, limits_seed, stream @ ..] = data else {
        return 0;
    };
    let limits = ReaderLimits {
        frame_payload_bytes_max: u64::from(*limits_seed) * 64,
        message_bytes_max: u64::from(*limits_seed) * 256,
    };
    // One inflater for both runs, as on a shard: each message resets it.
    let mut inflater = Inflater::default();
    let split = usize::from(*split_seed) * stream.len() / 255;
    let whole = run_reader_inflating::<ServerSide>(&[stream], &limits, Some(&mut inflater));
    let (head, tail) = stream.split_at(split);
    let split_outcome =
        run_reader_inflating::<ServerSide>(&[head, tail], &limits, Some(&mut inflater));
    assert!(
        agrees(&whole, &split_outcome),
        "split at {split}:\n whole {whole:?}\n split {split_outcome:?}"
    );

    let bytes_max = limits.message_bytes_max;
    let mut inflated = Vec::new();
    let result = inflater.inflate(stream, bytes_max, |chunk| {
        inflated.extend_from_slice(chunk);
        Ok(())
    });
    assert!(
        inflated.len() as u64 <= bytes_max,
        "{} bytes handed out over a bound of {bytes_max}",
        inflated.len()
    );
    let Ok(size) = result else {
        return whole.0.len();
    };
    assert_eq!(size, inflated.len() as u64);
    let mut again = Vec::new();
    Deflater::default().compress(&[&inflated], &mut again);
    let mut round_trip = Vec::new();
    inflater
        .inflate(&again, bytes_max, |chunk| {
            round_trip.extend_from_slice(chunk);
            Ok(())
        })
        .expect("our own DEFLATE inflates");
    assert_eq!(round_trip, inflated, "round trip");
    whole.0.len() + 1
}

// ------------------------------------------------------------ handshake

/// Arbitrary bytes as an upgrade request: parsing, validating and building
/// the responses must not panic, and a request parsed from a prefix must be
/// the one parsed from the whole.
///
/// Returns 0 (incomplete or refused while parsing), 1 (parsed, upgrade
/// refused) or 2 (a valid upgrade).
pub fn handshake(data: &[u8]) -> usize {
    let limits = HandshakeLimits {
        header_bytes_max: 1024,
        headers_max: 16,
    };
    let Ok(Some((request, consumed))) = parse_request(data, &limits) else {
        if let Err(error) = parse_request(data, &limits) {
            assert!(matches!(error.http_status(), 400 | 431));
            let _response = error.response();
        }
        return 0;
    };
    assert!(consumed <= data.len() && consumed <= limits.header_bytes_max);
    // The head alone parses to the same request: bytes after it do not matter.
    let again = parse_request(&data[..consumed], &limits);
    assert_eq!(again, Ok(Some((request.clone(), consumed))));
    let _ = query_param(&request.query, "token");
    let _ = query_param(&request.query, "since");
    match validate_upgrade(&request) {
        Ok(accept) => {
            let _response = response_101(
                &accept,
                request.ws_protocols.first().map(String::as_str),
                None,
            );
            2
        }
        Err(error) => {
            let _response = error.response();
            1
        }
    }
}

// ------------------------------------------------------------ push_decoder

/// Bodies cut from `pieces` fed in order, and how the splitter ended. After
/// an error the stream is unusable (the server replies and closes), so
/// nothing more is fed.
fn split_bodies(pieces: &[&[u8]], body_bytes_max: usize) -> (Vec<Vec<u8>>, Result<(), WireError>) {
    let mut splitter = FrameSplitter::default();
    let mut bodies = Vec::new();
    for piece in pieces {
        let fed = splitter.feed(piece, body_bytes_max, |body| bodies.push(body.to_vec()));
        if fed.is_err() {
            return (bodies, fed);
        }
    }
    (bodies, Ok(()))
}

/// Arbitrary bytes as a push-socket stream: cut into frames whole, split at
/// an arbitrary point, and (when short) one byte at a time — all must give
/// the same bodies and the same error — then every body is decoded as a
/// request and as a reply without panicking, and whatever decodes encodes
/// back to an archive that decodes to the same value.
///
/// The first two bytes pick the split point and the frame limit; the rest
/// is the stream. Returns the number of bodies that decoded as requests.
pub fn push_decoder(data: &[u8]) -> usize {
    let [split_seed, limit_seed, stream @ ..] = data else {
        return 0;
    };
    let body_bytes_max = usize::from(*limit_seed) * 64;
    let whole = split_bodies(&[stream], body_bytes_max);
    let split = usize::from(*split_seed) * stream.len() / 255;
    let (head, tail) = stream.split_at(split);
    let split_outcome = split_bodies(&[head, tail], body_bytes_max);
    assert_eq!(whole, split_outcome, "split at {split}");
    if stream.len() <= 512 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(whole, split_bodies(&bytes, body_bytes_max), "byte by byte");
    }
    for body in &whole.0 {
        assert!(body.len() <= body_bytes_max);
    }
    let mut decoded = 0;
    for body in &whole.0 {
        if let Ok(request) = decode_request(body) {
            let frame = encode_request(&request);
            assert_eq!(
                decode_request(&frame[LENGTH_BYTES..]).as_ref(),
                Ok(&request),
                "request round trip"
            );
            decoded += 1;
        }
        if let Ok(reply) = decode_reply(body) {
            let frame = encode_reply(&reply);
            assert_eq!(
                decode_reply(&frame[LENGTH_BYTES..]).as_ref(),
                Ok(&reply),
                "reply round trip"
            );
        }
    }
    decoded
}

// ------------------------------------------------------------ tls_records

use pushgate::tls::fuzzing::{self as tls_fuzzing, HandshakeEnd};

/// A TLS record stream written by a small program, so that most inputs
/// carry records that authenticate (a fuzzer cannot forge a tag) among
/// garbage. Each op is one byte, its low two bits say what follows:
///
/// - `0`: raw bytes: a length byte, then that many bytes (or what is left).
/// - `1`: an application-data record of the client's fixed keys: a length
///   byte, then that much content; `op >> 2 & 7` zero bytes of padding.
/// - `2`: a record of another inner type: a type byte, a length byte, the
///   content (an alert is `[level, description]`, 1 is a KeyUpdate …).
/// - `3`: a record of `(op >> 2) * 1024 + next byte` bytes of 'x' (up to
///   the 2^14 plaintext limit and over it), type application data.
///
/// Sealed records take the next sequence number; `op & 0x80` on `1` and
/// `2` reuses the previous one instead (a replay).
fn tls_program(program: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    fn take<'a>(program: &'a [u8], at: &mut usize, n: usize) -> &'a [u8] {
        let start = (*at).min(program.len());
        let end = (start + n).min(program.len());
        *at = end;
        &program[start..end]
    }
    let byte = |at: &mut usize| take(program, at, 1).first().copied().unwrap_or(0);
    let mut seq = 0u64;
    let mut at = 0;
    while at < program.len() {
        let op = program[at];
        at += 1;
        let mut seal = |inner: Vec<u8>| {
            let this = if op & 0x80 != 0 && op & 3 != 3 {
                seq.saturating_sub(1)
            } else {
                seq
            };
            seq = this + 1;
            tls_fuzzing::seal_client_record(this, &inner)
        };
        let record = match op & 3 {
            0 => {
                let n = usize::from(byte(&mut at));
                take(program, &mut at, n).to_vec()
            }
            1 => {
                let n = usize::from(byte(&mut at));
                let mut inner = take(program, &mut at, n).to_vec();
                inner.push(23);
                inner.resize(inner.len() + usize::from(op >> 2 & 7), 0);
                seal(inner)
            }
            2 => {
                let inner_type = byte(&mut at);
                let n = usize::from(byte(&mut at));
                let mut inner = take(program, &mut at, n).to_vec();
                inner.push(inner_type);
                seal(inner)
            }
            _ => {
                let n = usize::from(op >> 2 & 0x1f) * 1024 + usize::from(byte(&mut at));
                let mut inner = vec![b'x'; n];
                inner.push(23);
                seal(inner)
            }
        };
        stream.extend_from_slice(&record);
    }
    stream
}

/// The bytes an attacker controls after the TLS handshake: a record stream
/// (see [`tls_program`]) opened by the shard's record layer with fixed
/// keys, whole, split at an arbitrary point and (when short) byte by byte:
/// no panic, never more than one record held between receives, garbage
/// refused with an error, and the runs agree (see
/// `shard/src/tls/fuzzing.rs`).
///
/// The first byte picks the split point, the second whether the rest is a
/// program (even) or the raw stream (odd). Returns 0 when nothing
/// authenticated, 1 when a record authenticated but the run failed, 2
/// when it opened plaintext.
pub fn tls_records(data: &[u8]) -> usize {
    let [split_seed, mode, rest @ ..] = data else {
        return 0;
    };
    let stream = if mode & 1 == 0 {
        tls_program(rest)
    } else {
        rest.to_vec()
    };
    let split = usize::from(*split_seed) * stream.len() / 255;
    let whole = tls_fuzzing::open_whole_and_split(&stream, split);
    match &whole.result {
        Ok(()) if !whole.plaintext.is_empty() => 2,
        Ok(()) => 0,
        Err(e) if e.contains("authentication") || e.contains("content type") => 0,
        Err(_) => 1,
    }
}

/// A fixed ECDSA P-256 test certificate for localhost and its key (made
/// for this fuzz target only; it protects nothing).
const TEST_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUL2PBmLxFtXTsO1uzXx0isFIrfrgwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMTA0NDQyMFoYDzIxMjYxMTA3
MDQ0NDIwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARdSZtg095JZh1bbE0Uktr73ChDanXE6t1lIAGVyepn0dAjL0+co/BO
szVDa872tWQCVw/bYD9sQjgHu0Mx2FyMo2kwZzAdBgNVHQ4EFgQUBUrYDrlYkdVW
8RR9J5XgfP/nKcMwHwYDVR0jBBgwFoAUBUrYDrlYkdVW8RR9J5XgfP/nKcMwDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIhALDXkv3VR7Zi56vt9YphzYDmq783OmUhcJJthIn+OWkhAiBCUyAw75vp
n5WbdOZCaF1U7lY5pBo+zvSN8pOvpbtlEQ==
-----END CERTIFICATE-----
";
const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5OUxpbwOCSATUSPY
iCRg9cPKpO2mF7xdUpaiYDj3UKWhRANCAARdSZtg095JZh1bbE0Uktr73ChDanXE
6t1lIAGVyepn0dAjL0+co/BOszVDa872tWQCVw/bYD9sQjgHu0Mx2FyM
-----END PRIVATE KEY-----
";

/// The server configuration the app builds (`CertStore::server_config`)
/// for the test certificate, made once per process.
fn tls_server_config() -> std::sync::Arc<pushgate::tls::fuzzing::ServerConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<pushgate::tls::fuzzing::ServerConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("pushgate-fuzz-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temp dir");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&cert, TEST_CERT_PEM).expect("write the test certificate");
            std::fs::write(&key, TEST_KEY_PEM).expect("write the test key");
            let store = pushgate::tls::CertStore::load(&cert, &key).expect("the test certificate");
            let _ = std::fs::remove_dir_all(&dir);
            store.server_config()
        })
        .clone()
}

/// Arbitrary bytes as what a client sends before its handshake ends: the
/// shard's handshake (rustls behind `handshake.rs`), fed whole and split at
/// an arbitrary point, never panics, refuses over its input bound, and a
/// refusal replies with TLS records (the alert) or the plain-HTTP 400.
///
/// The first byte picks the split point; the rest is the stream. Returns 0
/// when the first record was refused, 1 when it waits for more, 2 when
/// rustls answered with a flight (a ClientHello got through).
pub fn tls_handshake(data: &[u8]) -> usize {
    let [split_seed, stream @ ..] = data else {
        return 0;
    };
    let split = usize::from(*split_seed) * stream.len() / 255;
    match tls_fuzzing::handshake_whole_and_split(tls_server_config(), stream, split) {
        HandshakeEnd::Refused { reply_bytes, .. } if reply_bytes > 200 => 2,
        HandshakeEnd::Refused { .. } => 0,
        HandshakeEnd::Waiting => 1,
        HandshakeEnd::Done => 2,
    }
}
