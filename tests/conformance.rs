//! RFC 6455 conformance of the real server, case by case from the Autobahn
//! testsuite's catalogue (fuzzingclient, cases 1–7 and 9).
//!
//! The cases are ported, not the suite's code (it is Python 2 only): each
//! opens a real upgraded connection to the real binary, writes exact bytes
//! (masked client frames from `common::client_frame`, anything malformed by
//! hand, some of it chopped into small writes) and checks the exact answer:
//! the next frame the server sends (a pong with the ping's payload, or a
//! close with a given code), that the server then closes the TCP connection,
//! or that nothing arrives. The server does not echo data messages (they are
//! accepted and not used), so "accepted" is shown by a ping answered next,
//! with nothing before the pong.
//!
//! The compression cases (Autobahn 12.x and 13.x, RFC 7692) run against a
//! server with `--deflate`: the negotiation, compressed client messages
//! whole and fragmented, RSV1's rules, the inflated-size bound, the
//! refusal of context takeover, and compressed pushes.
//!
//! Test names give the Autobahn case numbers they cover; the case id is in
//! every assertion message. Cases beyond Autobahn's (RFC 6455 §4 and §5.2
//! rules it does not exercise) are named after the RFC section. Each test
//! starts one server and opens many connections to it.

mod common;

use common::{client_frame, upgrade_request, Raw, Server};
use pushgate::ws;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// How long "nothing arrives" waits.
const QUIET: Duration = Duration::from_millis(100);

/// κόσμε (Greek "cosmos"), the suite's favourite valid multi-byte text.
const KOSME: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";

// ---------------------------------------------------------------------------
// Helpers

/// A server with pings far beyond any test's length, so that no server ping
/// ever sits where a test expects its pong or close.
fn start(extra: &[&str]) -> Server {
    let mut args = vec![
        "--shards",
        "2",
        "--ping-interval-ms",
        "600000",
        "--idle-timeout-ms",
        "1200000",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// An upgraded connection (its welcome read), for a fresh user each time so
/// that connections are spread over both shards and many are handed off.
fn open(server: &Server) -> Raw {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let user = format!("conformance-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let (raw, welcome) = Raw::upgraded(server, &user);
    assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");
    raw.stream.set_nodelay(true).unwrap();
    raw
}

/// A masked frame with the given first byte (FIN, RSV, opcode).
fn frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(first_byte, payload)
}

/// Only the (masked) header of a frame announcing `len` payload bytes.
fn header_only(first_byte: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first_byte];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    out
}

/// `frame` with the reserved bits `rsv` (1–7, RSV1 = 4) set.
fn frame_rsv(first_byte: u8, rsv: u8, payload: &[u8]) -> Vec<u8> {
    frame(first_byte | (rsv << 4), payload)
}

/// An unmasked frame, written by hand.
fn unmasked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![first_byte, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// A message of `opcode` split into frames of `size` payload bytes (one
/// empty frame for an empty payload), continuation frames after the first.
fn fragments(opcode: u8, payload: &[u8], size: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(size).collect()
    };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { opcode } else { CONT };
        let fin = if i + 1 == chunks.len() { FIN } else { 0 };
        out.extend(frame(fin | op, chunk));
    }
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Writes `bytes` in pieces of `chunk` bytes with a pause between them, so
/// that the server receives them in separate reads.
fn send_chopped(raw: &mut Raw, bytes: &[u8], chunk: usize, pause: Duration) {
    for piece in bytes.chunks(chunk) {
        raw.stream.write_all(piece).unwrap();
        raw.stream.flush().unwrap();
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// Reads one server frame: (first byte, payload), FIN and RSV included.
/// The header goes through the client side of the shared codec, which
/// also checks the server's rules (never masked, minimal lengths).
fn next_frame(raw: &mut Raw, case: &str) -> (u8, Vec<u8>) {
    next_frame_allowing(raw, case, 0)
}

/// [`next_frame`] on a connection whose extension gives the reserved bits
/// in `rsv_allowed` a meaning (permessage-deflate: RSV1).
fn next_frame_allowing(raw: &mut Raw, case: &str, rsv_allowed: u8) -> (u8, Vec<u8>) {
    let mut header = Vec::with_capacity(ws::frame::FRAME_HEADER_BYTES_MAX);
    let (parsed, _) = loop {
        match ws::parse_header_allowing(&header, ws::Role::Client, rsv_allowed) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {
                let mut byte = [0u8; 1];
                if let Err(e) = raw.stream.read_exact(&mut byte) {
                    panic!("{case}: no frame from the server: {e}");
                }
                header.push(byte[0]);
            }
            Err(e) => panic!("{case}: bad server frame header {header:02x?}: {e}"),
        }
    };
    let mut payload = vec![0; parsed.payload_len as usize];
    raw.stream.read_exact(&mut payload).unwrap();
    let first = (parsed.fin as u8) << 7 | parsed.rsv << 4 | parsed.opcode.bits();
    (first, payload)
}

/// The next frame is a pong carrying exactly `payload`.
fn expect_pong(raw: &mut Raw, payload: &[u8], case: &str) {
    let (first, got) = next_frame(raw, case);
    assert_eq!(
        first,
        FIN | PONG,
        "{case}: expected a pong, got first byte {first:#04x} with {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(got, payload, "{case}: pong payload");
}

/// The connection is open and nothing is queued before the answer to a
/// fresh ping: whatever was sent before was accepted silently.
fn expect_alive(raw: &mut Raw, case: &str) {
    let payload = format!("alive after {case}");
    raw.send(&frame(FIN | PING, payload.as_bytes()));
    expect_pong(raw, payload.as_bytes(), case);
}

/// The server closes: the next frame is a close with `code` (its reason, if
/// any, valid UTF-8), then the server ends the TCP stream.
fn expect_close(raw: &mut Raw, code: u16, case: &str) {
    let (first, payload) = next_frame(raw, case);
    assert_eq!(
        first,
        FIN | CLOSE,
        "{case}: expected a close, got first byte {first:#04x} with {:?}",
        String::from_utf8_lossy(&payload)
    );
    assert!(payload.len() >= 2, "{case}: close frame without a code");
    let got = u16::from_be_bytes([payload[0], payload[1]]);
    assert_eq!(got, code, "{case}: close code");
    assert!(
        std::str::from_utf8(&payload[2..]).is_ok(),
        "{case}: close reason is not UTF-8"
    );
    expect_eof(raw, case);
}

/// The server ends the TCP stream with nothing more, promptly (§7.1.1: the
/// server closes the TCP connection first, not after a linger): EOF within
/// a second, not a timeout.
fn expect_eof(raw: &mut Raw, case: &str) {
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut rest = Vec::new();
    match raw.stream.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "{case}: {} bytes after the close frame",
            rest.len()
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
            assert!(rest.is_empty(), "{case}: bytes after the close frame")
        }
        Err(e) => panic!("{case}: the server did not close the TCP connection: {e}"),
    }
}

/// Nothing arrives for a while (and the connection is not closed).
fn expect_nothing(raw: &mut Raw, wait: Duration, case: &str) {
    raw.stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match raw.stream.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("{case}: the server closed the connection"),
        Ok(_) => panic!(
            "{case}: the server sent something (first byte {:#04x})",
            byte[0]
        ),
        Err(e) => panic!("{case}: {e}"),
    }
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
}

/// Sends `bytes` on a fresh connection and expects the close `code`.
fn violation(server: &Server, bytes: &[u8], code: u16, case: &str) {
    let mut raw = open(server);
    raw.send(bytes);
    expect_close(&mut raw, code, case);
}

// ---------------------------------------------------------------------------
// 1.x framing

/// 1.1.1–1.1.8 (text), 1.2.1–1.2.8 (binary): payloads of 0, 125, 126, 127,
/// 128, 65535 and 65536 bytes (the 7-bit, 16-bit and 64-bit length forms on
/// both sides of each boundary), one frame each, and 65536 bytes written in
/// 997-byte chops; all accepted silently.
#[test]
fn case_1_x_framing() {
    let server = start(&[]);
    for (group, opcode) in [("1.1", TEXT), ("1.2", BINARY)] {
        let mut raw = open(&server);
        for (i, len) in [0usize, 125, 126, 127, 128, 65535, 65536]
            .into_iter()
            .enumerate()
        {
            let case = format!("{group}.{} ({len} bytes)", i + 1);
            let payload: Vec<u8> = (0..len).map(|i| b'*' + (i % 64) as u8).collect();
            raw.send(&frame(FIN | opcode, &payload));
            expect_alive(&mut raw, &case);
        }
        let case = format!("{group}.8 (65536 bytes in 997-byte chops)");
        let payload = vec![b'*'; 65536];
        send_chopped(
            &mut raw,
            &frame(FIN | opcode, &payload),
            997,
            Duration::from_micros(200),
        );
        expect_alive(&mut raw, &case);
    }
}

/// RFC 6455 §5.1–§5.2, the framing rules Autobahn's cases do not reach:
/// client frames must be masked; lengths must use the minimal encoding;
/// the 64-bit length's most significant bit must be 0.
#[test]
fn rfc_5_2_framing_rules() {
    let server = start(&[]);
    violation(
        &server,
        &unmasked_frame(FIN | TEXT, b"hi"),
        1002,
        "§5.1 unmasked text",
    );
    violation(
        &server,
        &unmasked_frame(FIN | PING, b"hi"),
        1002,
        "§5.1 unmasked ping",
    );
    violation(
        &server,
        &unmasked_frame(FIN | CLOSE, &1000u16.to_be_bytes()),
        1002,
        "§5.1 unmasked close",
    );

    let mask = [1u8, 2, 3, 4];
    // 5 payload bytes announced with the 16-bit form.
    let mut non_minimal_16 = vec![FIN | BINARY, 0x80 | 126, 0, 5];
    non_minimal_16.extend_from_slice(&mask);
    non_minimal_16.extend_from_slice(&[0; 5]);
    violation(
        &server,
        &non_minimal_16,
        1002,
        "§5.2 non-minimal 16-bit length",
    );
    // 200 payload bytes announced with the 64-bit form.
    let mut non_minimal_64 = vec![FIN | BINARY, 0x80 | 127];
    non_minimal_64.extend_from_slice(&200u64.to_be_bytes());
    non_minimal_64.extend_from_slice(&mask);
    non_minimal_64.extend_from_slice(&[0; 200]);
    violation(
        &server,
        &non_minimal_64,
        1002,
        "§5.2 non-minimal 64-bit length",
    );
    // The most significant bit of the 64-bit length set.
    let msb = header_only(FIN | BINARY, 1 << 63 | 1000);
    violation(
        &server,
        &msb,
        1002,
        "§5.2 64-bit length with the top bit set",
    );

    // A frame whose header arrives one byte at a time is read whole.
    let mut raw = open(&server);
    let big = frame(FIN | BINARY, &[7u8; 65536]);
    send_chopped(&mut raw, &big[..14], 1, Duration::from_millis(2));
    raw.send(&big[14..]);
    expect_alive(&mut raw, "§5.2 64-bit header in 1-byte chops");
}

/// RFC 6455 §4.1/§4.2.2: the client may send frames as soon as it has sent
/// its handshake; frames pipelined behind the upgrade request (here for
/// users of both shards, so also across the hand-off to the home shard) are
/// read after the welcome, including one split across the boundary.
#[test]
fn rfc_4_frames_pipelined_behind_the_upgrade() {
    let server = start(&[]);
    for i in 0..8 {
        let case = format!("§4 pipelined ping, user {i}");
        let mut raw = Raw::connect(server.addr);
        raw.stream.set_nodelay(true).unwrap();
        let token = server.token(&format!("pipelined-{i}"));
        let mut bytes =
            upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")).into_bytes();
        bytes.extend(frame(FIN | TEXT, b"right behind the handshake"));
        let ping = frame(FIN | PING, case.as_bytes());
        let split = if i % 2 == 0 { ping.len() } else { 3 };
        bytes.extend_from_slice(&ping[..split]);
        raw.send(&bytes);
        let head = raw.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{case}: {head}");
        let (first, welcome) = next_frame(&mut raw, &case);
        assert_eq!(first, FIN | TEXT, "{case}: the welcome comes first");
        assert!(welcome.starts_with(br#"{"type":"welcome""#), "{case}");
        if split < ping.len() {
            std::thread::sleep(Duration::from_millis(20));
            raw.send(&ping[split..]);
        }
        expect_pong(&mut raw, case.as_bytes(), &case);
    }
    // A violation pipelined behind the upgrade is answered after the welcome.
    let mut raw = Raw::connect(server.addr);
    let token = server.token("pipelined-violation");
    let mut bytes =
        upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")).into_bytes();
    bytes.extend(frame_rsv(FIN | TEXT, 4, b"bad"));
    raw.send(&bytes);
    assert!(raw.read_head().starts_with("HTTP/1.1 101"));
    let (first, _) = next_frame(&mut raw, "§4 pipelined violation");
    assert_eq!(first, FIN | TEXT);
    expect_close(&mut raw, 1002, "§4 pipelined violation");
}

/// The whole answer to `request` (the server closes after a refusal; after a
/// 101 this reads until the welcome has come and the read times out).
fn http_answer(server: &Server, request: &str) -> String {
    let mut raw = Raw::connect(server.addr);
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    raw.send(request.as_bytes());
    String::from_utf8_lossy(&raw.read_all()).into_owned()
}

/// A request head built from `lines` (request line first), with a final
/// empty line.
fn request(lines: &[&str]) -> String {
    let mut out = lines.join("\r\n");
    out.push_str("\r\n\r\n");
    out
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// RFC 6455 §4.2.1–§4.2.2 (Autobahn's fuzzingclient assumes these): the
/// accept value, header names and values case-insensitive, `Connection` a
/// list, no extension or subprotocol answered that was not agreed (so a
/// compressed frame stays a protocol error), and the defective requests
/// that must be refused with a 4xx instead of a 101.
#[test]
fn rfc_4_2_opening_handshake() {
    let server = start(&[]);
    let token = server.token("handshake");
    let auth = format!("Authorization: Bearer {token}");

    // §1.3/§4.2.2 the RFC's own example key and accept value.
    let answer = http_answer(&server, &upgrade_request("/ws", &format!("{auth}\r\n")));
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let head = answer.split("\r\n\r\n").next().unwrap();
    assert_eq!(
        header_value(head, "Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(header_value(head, "Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(header_value(head, "Connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));

    // Header names in lower case, values in mixed case, Connection as a
    // list (what Firefox sends), an Origin (what browsers send), and the
    // client offering an extension and subprotocols it may not get.
    let answer = http_answer(
        &server,
        &request(&[
            "GET /ws HTTP/1.1",
            "host: localhost:8080",
            "upgrade: WebSocket",
            "connection: keep-alive, Upgrade",
            "sec-websocket-key: x3JJHMbDL1EzLkh9GBhXDw==",
            "sec-websocket-version: 13",
            "origin: http://example.com",
            "sec-websocket-extensions: permessage-deflate; client_max_window_bits",
            "sec-websocket-protocol: chat, superchat",
            &auth.to_lowercase().replace(&token.to_lowercase(), &token),
        ]),
    );
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let head = answer.split("\r\n\r\n").next().unwrap();
    assert_eq!(
        header_value(head, "Sec-WebSocket-Accept"),
        Some("HSmrc0sMlYUkAGmm5OPpG2HaGWk="),
        "{head}"
    );
    // §4.2.2 / §9.1: nothing the server did not agree to.
    assert_eq!(
        header_value(head, "Sec-WebSocket-Extensions"),
        None,
        "{head}"
    );
    assert_eq!(header_value(head, "Sec-WebSocket-Protocol"), None, "{head}");

    // permessage-deflate was offered but not agreed: a frame with RSV1 (a
    // compressed message) is still a protocol error.
    let mut raw = Raw::connect(server.addr);
    raw.send(
        upgrade_request(
            "/ws",
            &format!("{auth}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"),
        )
        .as_bytes(),
    );
    let head = raw.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header_value(&head, "Sec-WebSocket-Extensions"),
        None,
        "{head}"
    );
    next_frame(&mut raw, "§9.1 welcome");
    raw.send(&frame_rsv(FIN | TEXT, 4, b"\xf2\x48\xcd\xc9\xc9\x07\x00"));
    expect_close(
        &mut raw,
        1002,
        "§9.1 compressed frame without the extension",
    );

    // Defective requests: refused with an HTTP error, never a 101.
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let refusals: Vec<(&str, String, &[&str])> = vec![
        (
            "§4.2.1 no Sec-WebSocket-Key",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: localhost",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
                &auth,
            ]),
            &["400"],
        ),
        (
            "§4.2.1 a key that is not 16 bytes",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: localhost",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==",
                "Sec-WebSocket-Version: 13",
                &auth,
            ]),
            &["400"],
        ),
        (
            "§4.2.1 HTTP/1.0",
            request(&[
                "GET /ws HTTP/1.0",
                "Host: localhost",
                "Upgrade: websocket",
                "Connection: Upgrade",
                key,
                "Sec-WebSocket-Version: 13",
                &auth,
            ]),
            &["400", "505"],
        ),
        (
            "§4.2.1 not GET",
            request(&[
                "POST /ws HTTP/1.1",
                "Host: localhost",
                "Upgrade: websocket",
                "Connection: Upgrade",
                key,
                "Sec-WebSocket-Version: 13",
                &auth,
            ]),
            &["400", "405"],
        ),
        (
            "§4.2.1 Connection without upgrade",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: localhost",
                "Upgrade: websocket",
                "Connection: keep-alive",
                key,
                "Sec-WebSocket-Version: 13",
                &auth,
            ]),
            &["400", "426"],
        ),
        (
            "§4.2.1 Upgrade other than websocket",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: localhost",
                "Upgrade: h2c",
                "Connection: Upgrade",
                key,
                "Sec-WebSocket-Version: 13",
                &auth,
            ]),
            &["400", "426"],
        ),
        (
            "§4.2.1/§4.4 no Sec-WebSocket-Version",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: localhost",
                "Upgrade: websocket",
                "Connection: Upgrade",
                key,
                &auth,
            ]),
            &["400", "426"],
        ),
    ];
    for (case, req, statuses) in refusals {
        let answer = http_answer(&server, &req);
        assert!(
            statuses
                .iter()
                .any(|s| answer.starts_with(&format!("HTTP/1.1 {s} "))),
            "{case}: want {statuses:?}, got {answer:?}"
        );
        if answer.starts_with("HTTP/1.1 426 ") {
            assert!(answer.contains("Sec-WebSocket-Version: 13"), "{case}");
        }
    }
}

/// RFC 6455 §4.2.1 item 2 (and RFC 9112 §3.2: "A server MUST respond with
/// a 400 (Bad Request) status code to any HTTP/1.1 request message that
/// lacks a Host header field"): a handshake without Host is refused.
#[test]
fn rfc_4_2_1_handshake_without_host_is_refused() {
    let server = start(&[]);
    let token = server.token("no-host");
    let answer = http_answer(
        &server,
        &request(&[
            "GET /ws HTTP/1.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            &format!("Authorization: Bearer {token}"),
        ]),
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
}

// ---------------------------------------------------------------------------
// 2.x pings and pongs

#[test]
fn case_2_x_ping_pong() {
    let server = start(&[]);
    let mut raw = open(&server);

    // 2.1 no payload; 2.2 small text payload; 2.3 small binary payload;
    // 2.4 the largest payload, 125 bytes.
    for (case, payload) in [
        ("2.1", b"".to_vec()),
        ("2.2", b"Hello, world!".to_vec()),
        ("2.3", vec![0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff]),
        ("2.4", vec![0xfe; 125]),
    ] {
        raw.send(&frame(FIN | PING, &payload));
        expect_pong(&mut raw, &payload, case);
    }

    // 2.6 125 bytes written one byte at a time.
    let payload = vec![0xfe; 125];
    send_chopped(
        &mut raw,
        &frame(FIN | PING, &payload),
        1,
        Duration::from_micros(500),
    );
    expect_pong(&mut raw, &payload, "2.6");

    // 2.7 an unsolicited pong without payload; 2.8 with payload: ignored.
    raw.send(&frame(FIN | PONG, b""));
    expect_nothing(&mut raw, QUIET, "2.7");
    expect_alive(&mut raw, "2.7");
    raw.send(&frame(FIN | PONG, b"unsolicited pong payload"));
    expect_nothing(&mut raw, QUIET, "2.8");
    expect_alive(&mut raw, "2.8");

    // 2.9 an unsolicited pong then a ping: only the ping is answered.
    raw.send(&cat(&[
        &frame(FIN | PONG, b"unsolicited pong payload"),
        &frame(FIN | PING, b"ping payload"),
    ]));
    expect_pong(&mut raw, b"ping payload", "2.9");

    // 2.10 ten pings in one write; 2.11 ten pings, each chopped into bytes.
    let pings: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("payload-{i}").into_bytes())
        .collect();
    raw.send(
        &pings
            .iter()
            .flat_map(|p| frame(FIN | PING, p))
            .collect::<Vec<_>>(),
    );
    for p in &pings {
        expect_pong(&mut raw, p, "2.10");
    }
    for p in &pings {
        send_chopped(
            &mut raw,
            &frame(FIN | PING, p),
            1,
            Duration::from_micros(200),
        );
    }
    for p in &pings {
        expect_pong(&mut raw, p, "2.11");
    }

    // 2.5 a 126-byte ping (§5.5: control payloads are at most 125 bytes).
    violation(&server, &frame(FIN | PING, &[0xfe; 126]), 1002, "2.5");
    // The same for a pong, which is also a control frame.
    violation(
        &server,
        &frame(FIN | PONG, &[0xfe; 126]),
        1002,
        "2.5 (pong)",
    );
}

// ---------------------------------------------------------------------------
// 3.x reserved bits

/// No extension is negotiated, so any RSV bit is a protocol error (§5.2);
/// frames after the bad one (a ping) are not answered.
#[test]
fn case_3_x_reserved_bits() {
    let server = start(&[]);
    let small = b"Hello, world!";
    let ping = frame(FIN | PING, b"");
    // 3.1 RSV=1 on a text frame (RSV3).
    violation(&server, &frame_rsv(FIN | TEXT, 1, small), 1002, "3.1");
    // 3.2 a valid text, then RSV=2 (RSV2) text, then a ping, one write each.
    let mut raw = open(&server);
    raw.send(&frame(FIN | TEXT, small));
    expect_alive(&mut raw, "3.2 (the valid text)");
    raw.send(&frame_rsv(FIN | TEXT, 2, small));
    raw.send(&ping);
    expect_close(&mut raw, 1002, "3.2");
    // 3.3 the same with RSV=3, all in one write.
    violation(
        &server,
        &cat(&[
            &frame(FIN | TEXT, small),
            &frame_rsv(FIN | TEXT, 3, small),
            &ping,
        ]),
        1002,
        "3.3",
    );
    // 3.4 the same with RSV=4 (RSV1), written one byte at a time.
    let mut raw = open(&server);
    let bytes = cat(&[
        &frame(FIN | TEXT, small),
        &frame_rsv(FIN | TEXT, 4, small),
        &ping,
    ]);
    send_chopped(&mut raw, &bytes, 1, Duration::from_micros(200));
    expect_close(&mut raw, 1002, "3.4");
    // 3.5 RSV=5 on a binary frame; 3.6 RSV=6 on a ping; 3.7 RSV=7 on a close.
    violation(
        &server,
        &frame_rsv(FIN | BINARY, 5, &[0xff; 8]),
        1002,
        "3.5",
    );
    violation(&server, &frame_rsv(FIN | PING, 6, small), 1002, "3.6");
    violation(
        &server,
        &frame_rsv(FIN | CLOSE, 7, &1000u16.to_be_bytes()),
        1002,
        "3.7",
    );
    // Each of RSV1, RSV2, RSV3 alone on every kind of frame.
    for rsv in [4u8, 2, 1] {
        for (kind, first) in [
            ("text", FIN | TEXT),
            ("binary", FIN | BINARY),
            ("continuation", CONT),
            ("ping", FIN | PING),
            ("pong", FIN | PONG),
            ("close", FIN | CLOSE),
        ] {
            let case = format!("3.x RSV{} on {kind}", 4 - rsv.trailing_zeros() - 1);
            let bytes = if first == CONT {
                // On the continuation of an open message.
                cat(&[
                    &frame(TEXT, b"open "),
                    &frame_rsv(FIN | CONT, rsv, b"message"),
                ])
            } else {
                frame_rsv(first, rsv, &[])
            };
            violation(&server, &bytes, 1002, &case);
        }
    }
}

// ---------------------------------------------------------------------------
// 4.x opcodes

#[test]
fn case_4_x_opcodes() {
    let server = start(&[]);
    let text = frame(FIN | TEXT, b"Hello, world!");
    let ping = frame(FIN | PING, b"");
    for (group, opcodes) in [("4.1", [3u8, 4, 5, 6, 7]), ("4.2", [11u8, 12, 13, 14, 15])] {
        for (i, op) in opcodes.into_iter().enumerate() {
            let case = format!("{group}.{} (opcode {op})", i + 1);
            let reserved_empty = frame(FIN | op, b"");
            let reserved_payload = frame(FIN | op, b"reserved opcode payload");
            match i {
                // .1 the reserved opcode alone; .2 with a payload.
                0 => violation(&server, &reserved_empty, 1002, &case),
                1 => violation(&server, &reserved_payload, 1002, &case),
                // .3 after a valid text, then a ping: no pong.
                2 => violation(&server, &cat(&[&text, &reserved_empty, &ping]), 1002, &case),
                3 => violation(
                    &server,
                    &cat(&[&text, &reserved_payload, &ping]),
                    1002,
                    &case,
                ),
                // .5 the same written one byte at a time.
                _ => {
                    let mut raw = open(&server);
                    let bytes = cat(&[&text, &reserved_payload, &ping]);
                    send_chopped(&mut raw, &bytes, 1, Duration::from_micros(200));
                    expect_close(&mut raw, 1002, &case);
                }
            }
            // Without FIN too (a reserved opcode never starts a message).
            violation(
                &server,
                &frame(op, b"x"),
                1002,
                &format!("{case} without FIN"),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 5.x fragmentation

#[test]
fn case_5_x_fragmentation() {
    let server = start(&[]);
    let chop = Duration::from_micros(200);

    // 5.1 a ping in two fragments; 5.2 a pong in two fragments (§5.5:
    // control frames must not be fragmented).
    violation(
        &server,
        &cat(&[&frame(PING, b"fragment1"), &frame(FIN | CONT, b"fragment2")]),
        1002,
        "5.1",
    );
    violation(
        &server,
        &cat(&[&frame(PONG, b"fragment1"), &frame(FIN | CONT, b"fragment2")]),
        1002,
        "5.2",
    );

    // 5.3 text in two fragments, one write; 5.4 in two writes with a pause;
    // 5.5 written one byte at a time.
    let two = cat(&[&frame(TEXT, b"fragment1"), &frame(FIN | CONT, b"fragment2")]);
    let mut raw = open(&server);
    raw.send(&two);
    expect_alive(&mut raw, "5.3");
    raw.send(&frame(TEXT, b"fragment1"));
    std::thread::sleep(Duration::from_millis(20));
    raw.send(&frame(FIN | CONT, b"fragment2"));
    expect_alive(&mut raw, "5.4");
    send_chopped(&mut raw, &two, 1, chop);
    expect_alive(&mut raw, "5.5");

    // 5.6 text in two fragments with a ping in between: answered at once,
    // in the middle of the message; 5.7 one write per frame; 5.8 chopped.
    let first = frame(TEXT, b"fragment1");
    let ping = frame(FIN | PING, b"pongme!");
    let last = frame(FIN | CONT, b"fragment2");
    raw.send(&cat(&[&first, &ping, &last]));
    expect_pong(&mut raw, b"pongme!", "5.6");
    expect_alive(&mut raw, "5.6");
    raw.send(&first);
    raw.send(&ping);
    expect_pong(&mut raw, b"pongme!", "5.7 (mid-message)");
    raw.send(&last);
    expect_alive(&mut raw, "5.7");
    send_chopped(&mut raw, &cat(&[&first, &ping, &last]), 1, chop);
    expect_pong(&mut raw, b"pongme!", "5.8");
    expect_alive(&mut raw, "5.8");

    // 5.9–5.11 a final continuation with nothing to continue, then a valid
    // fragmented text: one write, a write per frame, one byte at a time.
    let orphan_fin = frame(FIN | CONT, b"non-continuation payload");
    let valid = cat(&[&frame(TEXT, b"fragment1"), &frame(FIN | CONT, b"fragment2")]);
    violation(&server, &cat(&[&orphan_fin, &valid]), 1002, "5.9");
    let mut raw = open(&server);
    raw.send(&orphan_fin);
    raw.send(&valid);
    expect_close(&mut raw, 1002, "5.10");
    let mut raw = open(&server);
    send_chopped(&mut raw, &cat(&[&orphan_fin, &valid]), 1, chop);
    expect_close(&mut raw, 1002, "5.11");

    // 5.12–5.14 the same with a non-final continuation.
    let orphan = frame(CONT, b"non-continuation payload");
    violation(&server, &cat(&[&orphan, &valid]), 1002, "5.12");
    let mut raw = open(&server);
    raw.send(&orphan);
    raw.send(&valid);
    expect_close(&mut raw, 1002, "5.13");
    let mut raw = open(&server);
    send_chopped(&mut raw, &cat(&[&orphan, &valid]), 1, chop);
    expect_close(&mut raw, 1002, "5.14");

    // 5.15 a complete fragmented text, then a continuation with nothing to
    // continue, then a text; the ping after it must not be answered.
    violation(
        &server,
        &cat(&[
            &frame(TEXT, b"fragment1"),
            &frame(FIN | CONT, b"fragment2"),
            &frame(CONT, b"fragment3"),
            &frame(FIN | TEXT, b"fragment4"),
            &frame(FIN | PING, b""),
        ]),
        1002,
        "5.15",
    );
    // 5.16 (non-final) and 5.17 (final) orphan continuations, then text,
    // twice.
    for (case, orphan) in [("5.16", &orphan), ("5.17", &orphan_fin)] {
        violation(&server, &cat(&[orphan, &valid, orphan, &valid]), 1002, case);
    }
    // 5.18 a new text while a fragmented text is open (both opcodes text).
    violation(
        &server,
        &cat(&[&frame(TEXT, b"fragment1"), &frame(FIN | TEXT, b"fragment2")]),
        1002,
        "5.18",
    );
    // The same for binary, and across kinds.
    violation(
        &server,
        &cat(&[
            &frame(BINARY, b"fragment1"),
            &frame(FIN | BINARY, b"fragment2"),
        ]),
        1002,
        "5.18 (binary)",
    );
    violation(
        &server,
        &cat(&[&frame(TEXT, b"fragment1"), &frame(BINARY, b"fragment2")]),
        1002,
        "5.18 (binary inside text)",
    );

    // 5.19 text in five fragments with two pings in between and pauses,
    // each pong answered as its ping arrives; 5.20 the same chopped.
    let mut raw = open(&server);
    for (case, chopped) in [("5.19", false), ("5.20", true)] {
        let send = |raw: &mut Raw, bytes: &[u8]| {
            if chopped {
                send_chopped(raw, bytes, 1, chop);
            } else {
                raw.send(bytes);
            }
        };
        send(&mut raw, &frame(TEXT, b"fragment1"));
        send(&mut raw, &frame(CONT, b"fragment2"));
        send(&mut raw, &frame(FIN | PING, b"pongme 1!"));
        expect_pong(&mut raw, b"pongme 1!", case);
        std::thread::sleep(Duration::from_millis(30));
        send(&mut raw, &frame(CONT, b"fragment3"));
        std::thread::sleep(Duration::from_millis(30));
        send(&mut raw, &frame(CONT, b"fragment4"));
        send(&mut raw, &frame(FIN | PING, b"pongme 2!"));
        expect_pong(&mut raw, b"pongme 2!", case);
        send(&mut raw, &frame(FIN | CONT, b"fragment5"));
        expect_alive(&mut raw, case);
    }

    // 10.1.1 65536 bytes of text auto-fragmented into 1300-byte frames.
    raw.send(&fragments(TEXT, &[b'*'; 65536], 1300));
    expect_alive(&mut raw, "10.1.1");

    // Binary messages fragment the same way; empty fragments count.
    raw.send(&fragments(BINARY, &[0xab; 1000], 7));
    expect_alive(&mut raw, "5.x binary in 7-byte fragments");
    raw.send(&cat(&[
        &frame(BINARY, b""),
        &frame(CONT, b""),
        &frame(FIN | CONT, b""),
    ]));
    expect_alive(&mut raw, "5.x three empty binary fragments");
}

// ---------------------------------------------------------------------------
// 6.x UTF-8

/// (case, payload) that are valid UTF-8: accepted.
fn valid_utf8_samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut samples: Vec<(&str, Vec<u8>)> = vec![
        ("6.2.1", "Hello-µ@ßöäüàá-UTF-8!!".as_bytes().to_vec()),
        (
            "6.5.1",
            b"\x70\x61\x79\x6c\x6f\x61\x64\xec\xb0\xbc".to_vec(),
        ),
        ("6.5.2", KOSME.to_vec()),
        ("6.7.1 first 1-byte (U+0000)", b"\x00".to_vec()),
        ("6.7.2 first 2-byte (U+0080)", b"\xc2\x80".to_vec()),
        ("6.7.3 first 3-byte (U+0800)", b"\xe0\xa0\x80".to_vec()),
        ("6.7.4 first 4-byte (U+10000)", b"\xf0\x90\x80\x80".to_vec()),
        ("6.9.1 last 1-byte (U+007F)", b"\x7f".to_vec()),
        ("6.9.2 last 2-byte (U+07FF)", b"\xdf\xbf".to_vec()),
        ("6.9.3 last 3-byte (U+FFFF)", b"\xef\xbf\xbf".to_vec()),
        ("6.9.4 last 4-byte (U+10FFFF)", b"\xf4\x8f\xbf\xbf".to_vec()),
        ("6.11.1 U+D7FF", b"\xed\x9f\xbf".to_vec()),
        ("6.11.2 U+E000", b"\xee\x80\x80".to_vec()),
        ("6.11.3 U+FFFD", b"\xef\xbf\xbd".to_vec()),
        ("6.11.4 U+10FFFF", b"\xf4\x8f\xbf\xbf".to_vec()),
        ("6.23.1 U+FFFD", b"\xef\xbf\xbd".to_vec()),
    ];
    // 6.22.x noncharacters are valid UTF-8: U+FFFE/U+FFFF of every plane
    // and U+FDD0..U+FDEF.
    for plane in 0u32..=16 {
        for low in [0xfffe, 0xffff] {
            let c = char::from_u32(plane << 16 | low).unwrap();
            samples.push(("6.22.x noncharacter", c.to_string().into_bytes()));
        }
    }
    for c in 0xfdd0u32..=0xfdef {
        let c = char::from_u32(c).unwrap();
        samples.push(("6.22.x noncharacter", c.to_string().into_bytes()));
    }
    // 6.6.x prefixes of κόσμε that end on a code point boundary.
    for len in [2, 5, 7, 9, 11] {
        samples.push(("6.6.x prefix of κόσμε", KOSME[..len].to_vec()));
    }
    samples
}

/// (case, payload) that are not valid UTF-8: 1007.
fn invalid_utf8_samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut samples: Vec<(&str, Vec<u8>)> = vec![
        (
            "6.3.1 surrogate inside text",
            cat(&[KOSME, b"\xed\xa0\x80", b"edited"]),
        ),
        ("6.8.1 5-byte sequence", b"\xf8\x88\x80\x80\x80".to_vec()),
        ("6.8.2 6-byte sequence", b"\xfc\x84\x80\x80\x80\x80".to_vec()),
        ("6.10.1 over U+10FFFF (U+1FFFFF)", b"\xf7\xbf\xbf\xbf".to_vec()),
        ("6.10.2 5-byte max", b"\xfb\xbf\xbf\xbf\xbf".to_vec()),
        ("6.10.3 6-byte max", b"\xfd\xbf\xbf\xbf\xbf\xbf".to_vec()),
        ("6.11.5 U+110000", b"\xf4\x90\x80\x80".to_vec()),
        ("6.12.1 lone continuation", b"\x80".to_vec()),
        ("6.12.2 lone continuation", b"\xbf".to_vec()),
        ("6.12.3 2 continuations", b"\x80\xbf".to_vec()),
        ("6.12.4 3 continuations", b"\x80\xbf\x80".to_vec()),
        ("6.12.5 4 continuations", b"\x80\xbf\x80\xbf".to_vec()),
        ("6.12.6 5 continuations", b"\x80\xbf\x80\xbf\x80".to_vec()),
        ("6.12.7 6 continuations", b"\x80\xbf\x80\xbf\x80\xbf".to_vec()),
        ("6.12.8 all continuations", (0x80u8..=0xbf).collect()),
        (
            "6.13.1 2-byte leads followed by space",
            (0xc0u8..=0xdf).flat_map(|b| [b, b' ']).collect(),
        ),
        (
            "6.13.2 3-byte leads followed by space",
            (0xe0u8..=0xef).flat_map(|b| [b, b' ']).collect(),
        ),
        (
            "6.13.3 4-byte leads followed by space",
            (0xf0u8..=0xf7).flat_map(|b| [b, b' ']).collect(),
        ),
        (
            "6.13.4 5-byte leads followed by space",
            (0xf8u8..=0xfb).flat_map(|b| [b, b' ']).collect(),
        ),
        ("6.13.5 6-byte leads followed by space", b"\xfc \xfd ".to_vec()),
        ("6.14.1 truncated 2-byte (U+0000)", b"\xc0".to_vec()),
        ("6.14.2 truncated 3-byte (U+0000)", b"\xe0\x80".to_vec()),
        ("6.14.3 truncated 4-byte (U+0000)", b"\xf0\x80\x80".to_vec()),
        ("6.14.4 truncated 5-byte", b"\xf8\x80\x80\x80".to_vec()),
        ("6.14.5 truncated 6-byte", b"\xfc\x80\x80\x80\x80".to_vec()),
        ("6.14.6 truncated 2-byte (U+07FF)", b"\xdf".to_vec()),
        ("6.14.7 truncated 3-byte (U+FFFF)", b"\xef\xbf".to_vec()),
        ("6.14.8 truncated 4-byte", b"\xf7\xbf\xbf".to_vec()),
        ("6.14.9 truncated 5-byte", b"\xfb\xbf\xbf\xbf".to_vec()),
        ("6.14.10 truncated 6-byte", b"\xfd\xbf\xbf\xbf\xbf".to_vec()),
        (
            "6.15.1 truncated sequences concatenated",
            b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf".to_vec(),
        ),
        ("6.16.1 impossible byte FE", b"\xfe".to_vec()),
        ("6.16.2 impossible byte FF", b"\xff".to_vec()),
        ("6.16.3 impossible bytes", b"\xfe\xfe\xff\xff".to_vec()),
        ("6.17.1 overlong '/' 2-byte", b"\xc0\xaf".to_vec()),
        ("6.17.2 overlong '/' 3-byte", b"\xe0\x80\xaf".to_vec()),
        ("6.17.3 overlong '/' 4-byte", b"\xf0\x80\x80\xaf".to_vec()),
        ("6.17.4 overlong '/' 5-byte", b"\xf8\x80\x80\x80\xaf".to_vec()),
        ("6.17.5 overlong '/' 6-byte", b"\xfc\x80\x80\x80\x80\xaf".to_vec()),
        ("6.18.1 maximum overlong 2-byte", b"\xc1\xbf".to_vec()),
        ("6.18.2 maximum overlong 3-byte", b"\xe0\x9f\xbf".to_vec()),
        ("6.18.3 maximum overlong 4-byte", b"\xf0\x8f\xbf\xbf".to_vec()),
        ("6.18.4 maximum overlong 5-byte", b"\xf8\x87\xbf\xbf\xbf".to_vec()),
        ("6.18.5 maximum overlong 6-byte", b"\xfc\x83\xbf\xbf\xbf\xbf".to_vec()),
        ("6.19.1 overlong NUL 2-byte", b"\xc0\x80".to_vec()),
        ("6.19.2 overlong NUL 3-byte", b"\xe0\x80\x80".to_vec()),
        ("6.19.3 overlong NUL 4-byte", b"\xf0\x80\x80\x80".to_vec()),
        ("6.19.4 overlong NUL 5-byte", b"\xf8\x80\x80\x80\x80".to_vec()),
        ("6.19.5 overlong NUL 6-byte", b"\xfc\x80\x80\x80\x80\x80".to_vec()),
        ("6.20.1 surrogate U+D800", b"\xed\xa0\x80".to_vec()),
        ("6.20.2 surrogate U+DB7F", b"\xed\xad\xbf".to_vec()),
        ("6.20.3 surrogate U+DB80", b"\xed\xae\x80".to_vec()),
        ("6.20.4 surrogate U+DBFF", b"\xed\xaf\xbf".to_vec()),
        ("6.20.5 surrogate U+DC00", b"\xed\xb0\x80".to_vec()),
        ("6.20.6 surrogate U+DF80", b"\xed\xbe\x80".to_vec()),
        ("6.20.7 surrogate U+DFFF", b"\xed\xbf\xbf".to_vec()),
        ("6.21.1 surrogate pair", b"\xed\xa0\x80\xed\xb0\x80".to_vec()),
        ("6.21.2 surrogate pair", b"\xed\xa0\x80\xed\xbf\xbf".to_vec()),
        ("6.21.3 surrogate pair", b"\xed\xad\xbf\xed\xb0\x80".to_vec()),
        ("6.21.4 surrogate pair", b"\xed\xad\xbf\xed\xbf\xbf".to_vec()),
        ("6.21.5 surrogate pair", b"\xed\xae\x80\xed\xb0\x80".to_vec()),
        ("6.21.6 surrogate pair", b"\xed\xae\x80\xed\xbf\xbf".to_vec()),
        ("6.21.7 surrogate pair", b"\xed\xaf\xbf\xed\xb0\x80".to_vec()),
        ("6.21.8 surrogate pair", b"\xed\xaf\xbf\xed\xbf\xbf".to_vec()),
    ];
    // 6.6.x prefixes of κόσμε that end inside a code point: truncated at
    // the end of the message.
    for len in [1, 3, 4, 6, 8, 10] {
        samples.push(("6.6.x truncated prefix of κόσμε", KOSME[..len].to_vec()));
    }
    samples
}

/// The samples are what their names say (checked against std), so a
/// wrong expectation here cannot pass for a server bug or hide one.
#[test]
fn utf8_samples_are_classified_right() {
    for (case, bytes) in valid_utf8_samples() {
        assert!(std::str::from_utf8(&bytes).is_ok(), "{case}");
    }
    for (case, bytes) in invalid_utf8_samples() {
        assert!(std::str::from_utf8(&bytes).is_err(), "{case}");
    }
}

/// 6.1.x empty text; 6.2.x and the valid samples of 6.5–6.23 in one frame,
/// in 1-byte fragments (every multi-byte code point split across frames),
/// in two fragments split at every byte, and as one frame written in 1-byte
/// chops: all accepted.
#[test]
fn case_6_x_utf8_valid() {
    let server = start(&[]);
    let mut raw = open(&server);
    // 6.1.1 an empty text; 6.1.2 three empty fragments; 6.1.3 empty,
    // non-empty, empty.
    raw.send(&frame(FIN | TEXT, b""));
    expect_alive(&mut raw, "6.1.1");
    raw.send(&cat(&[
        &frame(TEXT, b""),
        &frame(CONT, b""),
        &frame(FIN | CONT, b""),
    ]));
    expect_alive(&mut raw, "6.1.2");
    raw.send(&cat(&[
        &frame(TEXT, b""),
        &frame(CONT, b"middle frame payload"),
        &frame(FIN | CONT, b""),
    ]));
    expect_alive(&mut raw, "6.1.3");

    for (case, bytes) in valid_utf8_samples() {
        raw.send(&frame(FIN | TEXT, &bytes));
        expect_alive(&mut raw, &format!("{case} in one frame"));
        // 6.2.3/6.2.4: fragments of one byte.
        raw.send(&fragments(TEXT, &bytes, 1));
        expect_alive(&mut raw, &format!("{case} in 1-byte fragments"));
        // 6.2.2: two fragments, split at every position.
        let mut two = Vec::new();
        for split in 0..=bytes.len() {
            two.extend(frame(TEXT, &bytes[..split]));
            two.extend(frame(FIN | CONT, &bytes[split..]));
        }
        raw.send(&two);
        expect_alive(&mut raw, &format!("{case} in two fragments"));
    }
    // One frame whose multi-byte code points are split across reads.
    let long: Vec<u8> = valid_utf8_samples()
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    send_chopped(
        &mut raw,
        &frame(FIN | TEXT, &long),
        3,
        Duration::from_micros(100),
    );
    expect_alive(&mut raw, "6.x all valid samples in one frame, 3-byte chops");
    // In 5-byte fragments, written in 7-byte chops: code points split by
    // frame boundaries and by read boundaries at once.
    send_chopped(
        &mut raw,
        &fragments(TEXT, &long, 5),
        7,
        Duration::from_micros(50),
    );
    expect_alive(
        &mut raw,
        "6.x all valid samples in 5-byte fragments, 7-byte chops",
    );
}

/// 6.3.x and the invalid samples of 6.6–6.21: in one frame, after valid
/// text, and in 1-byte fragments: closed with 1007 (also when the message
/// only turns out to be truncated at its end).
#[test]
fn case_6_x_utf8_invalid() {
    let server = start(&[]);
    for (case, bytes) in invalid_utf8_samples() {
        violation(
            &server,
            &frame(FIN | TEXT, &bytes),
            1007,
            &format!("{case} in one frame"),
        );
        violation(
            &server,
            &frame(FIN | TEXT, &cat(&[KOSME, &bytes])),
            1007,
            &format!("{case} after κόσμε"),
        );
        // 6.3.2: fragments of one byte.
        violation(
            &server,
            &fragments(TEXT, &bytes, 1),
            1007,
            &format!("{case} in 1-byte fragments"),
        );
    }
    // Truncated at the end of a fragmented message: the last fragment is
    // empty, or ends in the middle of a code point.
    violation(
        &server,
        &cat(&[&frame(TEXT, b"\xce"), &frame(FIN | CONT, b"")]),
        1007,
        "6.x truncated before an empty final fragment",
    );
    violation(
        &server,
        &cat(&[&frame(TEXT, KOSME), &frame(FIN | CONT, b"\xe1\xbd")]),
        1007,
        "6.x truncated in the final fragment",
    );
    // Valid messages do not make the next one valid: the validator starts
    // afresh, and an unfinished code point does not carry over.
    let mut raw = open(&server);
    raw.send(&frame(FIN | TEXT, KOSME));
    expect_alive(&mut raw, "6.x valid before invalid");
    raw.send(&cat(&[
        &frame(FIN | TEXT, b"\xce"),
        &frame(FIN | TEXT, b"\xba"),
    ]));
    expect_close(&mut raw, 1007, "6.x code point split across two messages");
    // Binary messages are not UTF-8 checked.
    let mut raw = open(&server);
    raw.send(&frame(FIN | BINARY, b"\xed\xa0\x80\xff\xfe"));
    expect_alive(&mut raw, "6.x binary is not validated");
}

/// 6.4.x fail fast: the close comes as soon as the invalid byte arrives,
/// before the rest of the message (or of the frame) is sent.
#[test]
fn case_6_4_x_utf8_fail_fast() {
    let server = start(&[]);
    // 6.4.1 the invalid code point is in the first fragment.
    let mut raw = open(&server);
    raw.send(&frame(TEXT, &cat(&[KOSME, b"\xf4\x90\x80\x80"])));
    expect_close(&mut raw, 1007, "6.4.1");

    // 6.4.2 the first fragment ends on a lead byte that could still be
    // valid; the second brings the bytes that make it invalid.
    let mut raw = open(&server);
    raw.send(&frame(TEXT, &cat(&[KOSME, b"\xf4"])));
    expect_nothing(&mut raw, QUIET, "6.4.2 (valid so far)");
    raw.send(&frame(CONT, b"\x90\x80\x80"));
    expect_close(&mut raw, 1007, "6.4.2");

    // 6.4.3 one frame, written in parts: the part with the invalid bytes
    // closes before the rest of the frame arrives.
    let whole = frame(FIN | TEXT, &cat(&[KOSME, b"\xf4\x90\x80\x80", b"-edited"]));
    let header = 6; // 2 bytes and a mask: the payload is short
    let lead = header + KOSME.len() + 1;
    let mut raw = open(&server);
    raw.send(&whole[..lead]);
    expect_nothing(&mut raw, QUIET, "6.4.3 (valid so far)");
    raw.send(&whole[lead..lead + 3]);
    expect_close(&mut raw, 1007, "6.4.3");

    // 6.4.4 the same, the invalid continuation byte sent alone.
    let mut raw = open(&server);
    raw.send(&whole[..lead]);
    expect_nothing(&mut raw, QUIET, "6.4.4 (valid so far)");
    raw.send(&whole[lead..lead + 1]);
    expect_close(&mut raw, 1007, "6.4.4");

    // Fail fast on the kinds of invalid byte: an overlong lead, a surrogate,
    // over U+10FFFF, a lone continuation, in a message left open.
    for (case, bad) in [
        ("6.4.x overlong", &b"\xc0\xaf"[..]),
        ("6.4.x surrogate", b"\xed\xa0\x80"),
        ("6.4.x over U+10FFFF", b"\xf4\x90\x80\x80"),
        ("6.4.x lone continuation", b"\x80"),
        ("6.4.x impossible byte", b"\xff"),
    ] {
        let mut raw = open(&server);
        raw.send(&frame(TEXT, &cat(&[b"valid start ", bad])));
        expect_close(&mut raw, 1007, case);
    }
}

// ---------------------------------------------------------------------------
// 7.x close handling

#[test]
fn case_7_x_close() {
    let server = start(&[]);
    let close_1000 = frame(FIN | CLOSE, &1000u16.to_be_bytes());

    // 7.1.1 a text, then a close: echoed 1000, TCP closed.
    let mut raw = open(&server);
    raw.send(&frame(FIN | TEXT, b"Hello World!"));
    raw.send(&close_1000);
    expect_close(&mut raw, 1000, "7.1.1");
    // 7.1.2 two closes: one answer.
    violation(&server, &cat(&[&close_1000, &close_1000]), 1000, "7.1.2");
    // 7.1.3 a close then a ping: no pong. 7.1.4 a close then a text.
    violation(
        &server,
        &cat(&[&close_1000, &frame(FIN | PING, b"")]),
        1000,
        "7.1.3",
    );
    violation(
        &server,
        &cat(&[&close_1000, &frame(FIN | TEXT, b"after close")]),
        1000,
        "7.1.4",
    );
    // Even data that would be a violation is ignored after the close.
    violation(
        &server,
        &cat(&[
            &close_1000,
            &frame(FIN | 3, b""),
            &frame(FIN | TEXT, b"\xff"),
        ]),
        1000,
        "7.1.4 (violations after the close)",
    );
    // The same, the data in a later write.
    let mut raw = open(&server);
    raw.send(&close_1000);
    std::thread::sleep(Duration::from_millis(10));
    let _ = raw.stream.write_all(&frame(FIN | PING, b"too late"));
    expect_close(&mut raw, 1000, "7.1.3 (ping in a later write)");
    // A ping before the close, in the same write, is answered first (§5.5.2:
    // "unless it already received a Close frame").
    let mut raw = open(&server);
    raw.send(&cat(&[&frame(FIN | PING, b"before close"), &close_1000]));
    expect_pong(&mut raw, b"before close", "7.1.x ping then close");
    expect_close(&mut raw, 1000, "7.1.x ping then close");
    // 7.1.5 a close between the fragments of a message.
    violation(
        &server,
        &cat(&[
            &frame(TEXT, b"fragment1"),
            &close_1000,
            &frame(FIN | CONT, b"fragment2"),
        ]),
        1000,
        "7.1.5",
    );
    // 7.1.6 a large message, then a close, then a ping.
    violation(
        &server,
        &cat(&[
            &frame(FIN | TEXT, &vec![b'B'; 65536]),
            &close_1000,
            &frame(FIN | PING, b""),
        ]),
        1000,
        "7.1.6",
    );

    // 7.3.1 an empty close: answered with a close (1000), TCP closed.
    violation(&server, &frame(FIN | CLOSE, b""), 1000, "7.3.1");
    // 7.3.2 a 1-byte payload cannot hold a code.
    violation(&server, &frame(FIN | CLOSE, b"\x03"), 1002, "7.3.2");
    // 7.3.3 code only; 7.3.4 code and reason; 7.3.5 code and a 123-byte
    // reason, the most that fits.
    violation(&server, &close_1000, 1000, "7.3.3");
    let with = |reason: &[u8]| frame(FIN | CLOSE, &cat(&[&1000u16.to_be_bytes(), reason]));
    violation(&server, &with(b"Hello World!"), 1000, "7.3.4");
    violation(&server, &with(&[b'*'; 123]), 1000, "7.3.5");
    // 7.3.6 a 124-byte reason: a 126-byte control frame.
    violation(&server, &with(&[b'*'; 124]), 1002, "7.3.6");
    // A close written one byte at a time.
    let mut raw = open(&server);
    send_chopped(&mut raw, &with(b"chopped"), 1, Duration::from_micros(300));
    expect_close(&mut raw, 1000, "7.3.x close in 1-byte chops");

    // 7.5.1 a reason that is not UTF-8.
    violation(
        &server,
        &with(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"),
        1007,
        "7.5.1",
    );
    // A valid multi-byte reason is fine.
    violation(&server, &with(KOSME), 1000, "7.5.x κόσμε reason");

    // 7.7.x codes a peer may send are echoed back (§5.5.1).
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let case = format!("7.7.x code {code}");
        violation(
            &server,
            &frame(FIN | CLOSE, &code.to_be_bytes()),
            code,
            &case,
        );
        let payload = cat(&[&code.to_be_bytes(), b"with a reason"]);
        violation(&server, &frame(FIN | CLOSE, &payload), code, &case);
    }
    // 7.9.x codes that must never be on the wire (reserved, unassigned, or
    // meaning "no code"), and 7.13.x codes out of range: 1002.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let case = format!("7.9.x/7.13.x code {code}");
        violation(
            &server,
            &frame(FIN | CLOSE, &code.to_be_bytes()),
            1002,
            &case,
        );
    }
}

// ---------------------------------------------------------------------------
// 9.x limits and large messages

/// The server's limits (§10.4): a frame over `--frame-payload-bytes-max`
/// or a message over `--message-bytes-max` is closed with 1009, decided
/// from the header, before its payload is sent; exactly the limit passes.
#[test]
fn case_9_x_limits() {
    let server = start(&[
        "--frame-payload-bytes-max",
        "1000",
        "--message-bytes-max",
        "4000",
    ]);
    let mut raw = open(&server);
    for opcode in [TEXT, BINARY] {
        raw.send(&frame(FIN | opcode, &[b'x'; 1000]));
        expect_alive(&mut raw, "9.x frame at the limit");
        raw.send(&fragments(opcode, &[b'x'; 4000], 1000));
        expect_alive(&mut raw, "9.x message at the limit, 4 fragments");
        raw.send(&fragments(opcode, &[b'x'; 4000], 1));
        expect_alive(&mut raw, "9.x message at the limit, 4000 fragments");
    }
    // Control frames are bounded by the protocol (125), not the data limit.
    raw.send(&frame(FIN | PING, &[b'p'; 125]));
    expect_pong(&mut raw, &[b'p'; 125], "9.x ping");

    for (kind, opcode) in [("text", TEXT), ("binary", BINARY)] {
        // One byte over, in one frame; only the header is sent.
        let over = header_only(FIN | opcode, 1001);
        violation(
            &server,
            &over,
            1009,
            &format!("9.x {kind} frame of 1001 bytes"),
        );
        // A frame announcing 2^62 bytes.
        let huge = header_only(FIN | opcode, 1 << 62);
        violation(
            &server,
            &huge,
            1009,
            &format!("9.x {kind} frame of 2^62 bytes"),
        );
        // The continuation frame is over the frame limit.
        let bytes = cat(&[&frame(opcode, b"start"), &frame(FIN | CONT, &[b'x'; 1001])]);
        violation(
            &server,
            &bytes,
            1009,
            &format!("9.x {kind} continuation of 1001 bytes"),
        );
        // Frames within the limit, the message one byte over it.
        violation(
            &server,
            &fragments(opcode, &[b'x'; 4001], 1000),
            1009,
            &format!("9.x {kind} message of 4001 bytes in 5 fragments"),
        );
        violation(
            &server,
            &fragments(opcode, &[b'x'; 4001], 100),
            1009,
            &format!("9.x {kind} message of 4001 bytes in 41 fragments"),
        );
        // Over the limit with a ping in between: the ping is answered, the
        // frame that crosses the limit is not accepted.
        let mut raw = open(&server);
        raw.send(&cat(&[
            &frame(opcode, &[b'x'; 1000]),
            &frame(FIN | PING, b"mid"),
        ]));
        expect_pong(&mut raw, b"mid", "9.x ping inside a large message");
        raw.send(&frame(CONT, &[b'x'; 1000]));
        raw.send(&frame(CONT, &[b'x'; 1000]));
        raw.send(&frame(CONT, &[b'x'; 1000]));
        expect_alive(&mut raw, "9.x 4000 bytes in, message open");
        raw.send(&frame(FIN | CONT, b"!"));
        expect_close(
            &mut raw,
            1009,
            &format!("9.x {kind} the byte that crosses the limit"),
        );
    }
}

/// 9.1.x (text) and 9.2.x (binary): large messages in one frame; 9.3.x and
/// 9.4.x: a 4 MiB message in fragments of 64 B to 4 MiB; 9.5.x and 9.6.x: a
/// 1 MiB message written in chops of 64 B to 4 KiB. All accepted (with
/// limits raised to 16 MiB), each shown by a ping answered next.
#[test]
fn case_9_x_large_messages() {
    let started = Instant::now();
    let server = start(&[
        "--frame-payload-bytes-max",
        "16777216",
        "--message-bytes-max",
        "16777216",
    ]);
    // Valid UTF-8 with multi-byte code points straddling every boundary.
    let text = |len: usize| -> Vec<u8> {
        let unit = "pushgate κόσμε ✓ 🙂 ".as_bytes();
        let mut out: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
        // Cut back to a code point boundary and pad with ASCII.
        while std::str::from_utf8(&out).is_err() {
            out.pop();
        }
        out.resize(len, b'.');
        out
    };
    let mut raw = open(&server);
    for (group, opcode) in [("9.1", TEXT), ("9.2", BINARY)] {
        for (i, len) in [65536usize, 262144, 1 << 20, 4 << 20, 8 << 20, 16 << 20]
            .into_iter()
            .enumerate()
        {
            let payload = if opcode == TEXT {
                text(len)
            } else {
                vec![0xfe; len]
            };
            raw.send(&frame(FIN | opcode, &payload));
            expect_alive(&mut raw, &format!("{group}.{} ({len} bytes)", i + 1));
        }
    }
    let four_mib = text(4 << 20);
    for (group, opcode) in [("9.3", TEXT), ("9.4", BINARY)] {
        for (i, size) in [
            64usize,
            256,
            1 << 10,
            4 << 10,
            16 << 10,
            64 << 10,
            256 << 10,
            1 << 20,
            4 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            raw.send(&fragments(opcode, &four_mib, size));
            expect_alive(
                &mut raw,
                &format!("{group}.{} (fragments of {size})", i + 1),
            );
        }
    }
    let one_mib = text(1 << 20);
    for (group, opcode) in [("9.5", TEXT), ("9.6", BINARY)] {
        for (i, chop) in [64usize, 128, 256, 512, 1024, 2048, 4096]
            .into_iter()
            .enumerate()
        {
            send_chopped(
                &mut raw,
                &frame(FIN | opcode, &one_mib),
                chop,
                Duration::ZERO,
            );
            expect_alive(&mut raw, &format!("{group}.{} (chops of {chop})", i + 1));
        }
    }
    // And one over the raised limit is still refused.
    violation(
        &server,
        &header_only(FIN | BINARY, (16 << 20) + 1),
        1009,
        "9.x one byte over 16 MiB",
    );
    eprintln!("9.x large messages took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 12.x / 13.x permessage-deflate (RFC 7692)

use pushgate::push::client::Client;
use pushgate::ws::deflate::{Deflater, Inflater};

/// Our only answer to an accepted offer.
const DEFLATE_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// An upgraded connection that offered `offer` in Sec-WebSocket-Extensions;
/// returns it (welcome read) and the server's answer to the offer, if any.
fn open_offering(server: &Server, user: &str, offer: &str) -> (Raw, Option<String>) {
    let mut raw = Raw::connect(server.addr);
    let token = server.token(user);
    raw.send(
        upgrade_request(
            "/ws",
            &format!("Authorization: Bearer {token}\r\nSec-WebSocket-Extensions: {offer}\r\n"),
        )
        .as_bytes(),
    );
    let head = raw.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let answer = header_value(&head, "Sec-WebSocket-Extensions").map(str::to_owned);
    let (first, welcome) = next_frame(&mut raw, "welcome");
    assert_eq!(first, FIN | TEXT, "the welcome is small: sent plain");
    assert!(welcome.starts_with(br#"{"type":"welcome""#));
    raw.stream.set_nodelay(true).unwrap();
    (raw, answer)
}

fn open_deflate(server: &Server) -> Raw {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let user = format!("deflate-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let (raw, answer) = open_offering(server, &user, "permessage-deflate; client_max_window_bits");
    assert_eq!(answer.as_deref(), Some(DEFLATE_ANSWER));
    raw
}

fn deflate(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Deflater::default().compress(&[message], &mut out);
    out
}

fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Inflater::default()
        .inflate(compressed, 1 << 24, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .expect("valid DEFLATE from the server");
    out
}

/// RSV1 as it stands in the first byte.
const RSV1: u8 = 0x40;

/// RFC 7692 §5, §7.1: which offers are accepted, and the answer's form.
#[test]
fn rfc_7692_negotiation() {
    let server = start(&["--deflate"]);
    for (offer, answer) in [
        ("permessage-deflate", Some(DEFLATE_ANSWER)),
        ("permessage-deflate; client_max_window_bits", Some(DEFLATE_ANSWER)),
        (
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
            Some(DEFLATE_ANSWER),
        ),
        (
            "permessage-deflate; server_max_window_bits=15",
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"),
        ),
        // Declined (a window we cannot promise, an unknown parameter), the
        // next offer taken.
        (
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; x=1, permessage-deflate",
            Some(DEFLATE_ANSWER),
        ),
        // Declined, and nothing else offered: the connection goes on plain.
        ("permessage-deflate; server_max_window_bits=8", None),
        ("permessage-deflate; client_max_window_bits=20", None),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate;;", None),
    ] {
        let (mut raw, got) = open_offering(&server, "negotiation", offer);
        assert_eq!(got.as_deref(), answer, "offer {offer:?}");
        if got.is_none() {
            // Not negotiated: RSV1 is a reserved bit like the others.
            raw.send(&frame(FIN | RSV1 | TEXT, &deflate(b"Hello")));
            expect_close(&mut raw, 1002, &format!("RSV1 after declining {offer:?}"));
        }
    }
    // A server without --deflate never answers the offer.
    let plain = start(&[]);
    let (_, got) = open_offering(&plain, "negotiation", "permessage-deflate");
    assert_eq!(got, None, "deflate is off by default");
}

/// 12.x (client side, mirrored): compressed text and binary messages of
/// many sizes, whole and fragmented into frames of many sizes, with a ping
/// between fragments; all accepted silently. Plain messages still work.
#[test]
fn case_12_x_compressed_messages() {
    let server = start(&["--deflate"]);
    let mut raw = open_deflate(&server);
    let json: Vec<u8> = (0..2000)
        .flat_map(|i| format!(r#"{{"id":{i},"v":"value {i}"}},"#).into_bytes())
        .collect();
    for size in [0usize, 1, 16, 64, 256, 1024, 4096, 32_768, 65_536] {
        let message = &json[..size.min(json.len())];
        let compressed = deflate(message);
        for opcode in [TEXT, BINARY] {
            let case = format!("12.x {size} bytes, opcode {opcode}");
            raw.send(&frame(FIN | RSV1 | opcode, &compressed));
            expect_alive(&mut raw, &case);
            // Fragmented: RSV1 on the first frame only.
            for chunk in [1usize, 7, 64, 1000] {
                let parts: Vec<&[u8]> = compressed.chunks(chunk).collect();
                let mut bytes = Vec::new();
                for (i, part) in parts.iter().enumerate() {
                    let first = if i == 0 { RSV1 | opcode } else { CONT };
                    let fin = if i + 1 == parts.len() { FIN } else { 0 };
                    bytes.extend(frame(fin | first, part));
                    if i == 0 {
                        bytes.extend(frame(FIN | PING, b"between"));
                    }
                }
                raw.send(&bytes);
                expect_pong(&mut raw, b"between", &format!("{case}, frames of {chunk}"));
                expect_alive(&mut raw, &format!("{case}, frames of {chunk}"));
            }
        }
    }
    // The same compressed bytes, written a byte at a time.
    send_chopped(
        &mut raw,
        &frame(FIN | RSV1 | TEXT, &deflate(&json[..3000])),
        1,
        Duration::ZERO,
    );
    expect_alive(&mut raw, "12.x chopped");
    raw.send(&frame(FIN | TEXT, b"plain text still works"));
    expect_alive(&mut raw, "12.x plain");
}

/// RFC 7692 §6: RSV1 only on a data message's first frame.
#[test]
fn rfc_7692_rsv1_rules() {
    let server = start(&["--deflate"]);
    let hello = deflate(b"Hello");
    for (case, bytes) in [
        ("RSV1 on a ping", frame(FIN | RSV1 | PING, b"")),
        ("RSV1 on a pong", frame(FIN | RSV1 | PONG, b"")),
        (
            "RSV1 on a close",
            frame(FIN | RSV1 | CLOSE, &1000u16.to_be_bytes()),
        ),
        (
            "RSV1 on a continuation",
            cat(&[
                &frame(RSV1 | TEXT, &hello[..2]),
                &frame(FIN | RSV1 | CONT, &hello[2..]),
            ]),
        ),
        (
            "RSV1 on the continuation of a plain message",
            cat(&[&frame(TEXT, b"He"), &frame(FIN | RSV1 | CONT, b"llo")]),
        ),
        ("RSV2 with deflate", frame(FIN | 0x20 | TEXT, b"x")),
        ("RSV3 with deflate", frame(FIN | 0x10 | TEXT, b"x")),
    ] {
        let mut raw = open_deflate(&server);
        raw.send(&bytes);
        expect_close(&mut raw, 1002, case);
    }
}

/// The bound on inflated size (1009, decided while inflating), bad DEFLATE
/// and bad UTF-8 once inflated (1007).
#[test]
fn rfc_7692_bounds_and_bad_data() {
    let server = start(&["--deflate", "--message-bytes-max", "65536"]);
    let bomb = deflate(&vec![b'a'; 64 << 20]);
    assert!(bomb.len() < 100_000, "64 MiB in {} bytes", bomb.len());
    let mut raw = open_deflate(&server);
    raw.send(&frame(FIN | RSV1 | BINARY, &bomb));
    expect_close(&mut raw, 1009, "zip bomb");
    // Exactly at the bound passes.
    let mut raw = open_deflate(&server);
    raw.send(&frame(FIN | RSV1 | TEXT, &deflate(&vec![b'a'; 65_536])));
    expect_alive(&mut raw, "inflated to the bound");
    raw.send(&frame(FIN | RSV1 | TEXT, &deflate(&vec![b'a'; 65_537])));
    expect_close(&mut raw, 1009, "one byte over");
    for (case, bytes, code) in [
        (
            "reserved block type",
            frame(FIN | RSV1 | BINARY, &[0xff, 0xff, 0xff]),
            1007,
        ),
        (
            "invalid UTF-8 inflated",
            frame(FIN | RSV1 | TEXT, &deflate(b"ok \xff")),
            1007,
        ),
    ] {
        let mut raw = open_deflate(&server);
        raw.send(&bytes);
        expect_close(&mut raw, code, case);
    }
}

/// We answer `client_no_context_takeover`: a client that keeps its context
/// anyway sends a second message that refers back into the first, which
/// cannot be inflated alone (1007), and the connection ends there.
#[test]
fn rfc_7692_context_takeover_is_refused() {
    use flate2::{Compress, Compression, FlushCompress};
    let server = start(&["--deflate"]);
    let mut raw = open_deflate(&server);
    let mut kept = Compress::new(Compression::default(), false);
    let message = br#"{"type":"note","text":"the same words, twice over"}"#;
    let mut messages = Vec::new();
    for _ in 0..2 {
        let mut out = Vec::with_capacity(1024);
        kept.compress_vec(message, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        messages.push(out);
    }
    assert!(
        messages[1].len() < messages[0].len(),
        "the second refers back"
    );
    raw.send(&frame(FIN | RSV1 | TEXT, &messages[0]));
    expect_alive(&mut raw, "first message (no context yet)");
    raw.send(&frame(FIN | RSV1 | TEXT, &messages[1]));
    expect_close(&mut raw, 1007, "second message taking over the context");
}

/// 13.x (server side): pushes of the threshold or more arrive as one frame
/// with RSV1 that inflates alone to the push; smaller ones arrive plain.
#[test]
fn case_13_x_compressed_pushes() {
    let server = start(&["--deflate", "--deflate-threshold-bytes", "512"]);
    let user = "deflate-pushes";
    let (mut raw, answer) = open_offering(&server, user, "permessage-deflate");
    assert_eq!(answer.as_deref(), Some(DEFLATE_ANSWER));
    let mut publisher = Client::connect(&server.run_dir).unwrap();
    for (seq, size) in [10usize, 400, 600, 5000, 70_000].into_iter().enumerate() {
        let data = format!("\"{}\"", "ab".repeat(size / 2));
        assert_eq!(publisher.push(&[user], &data).unwrap().delivered, 1);
        let case = format!("13.x push of {size}");
        let (first, payload) = next_frame_allowing(&mut raw, &case, 0b100);
        let expected = format!(r#"{{"type":"push","seq":{},"data":{data}}}"#, seq + 1);
        if expected.len() >= 512 {
            assert_eq!(first, FIN | RSV1 | TEXT, "{case}: compressed");
            assert!(
                payload.len() < expected.len() / 4,
                "{case}: {}",
                payload.len()
            );
            assert_eq!(inflate(&payload), expected.as_bytes(), "{case}");
        } else {
            assert_eq!(first, FIN | TEXT, "{case}: under the threshold, plain");
            assert_eq!(payload, expected.as_bytes(), "{case}");
        }
    }
    // A device that did not negotiate gets the same pushes plain.
    let (mut plain, answer) = open_offering(&server, "deflate-plain", "x-other");
    assert_eq!(answer, None);
    let data = format!("\"{}\"", "ab".repeat(3000));
    assert_eq!(
        publisher.push(&["deflate-plain"], &data).unwrap().delivered,
        1
    );
    let (first, payload) = next_frame(&mut plain, "13.x not negotiated");
    assert_eq!(first, FIN | TEXT);
    assert!(payload.ends_with(format!("{data}}}").as_bytes()));
}
