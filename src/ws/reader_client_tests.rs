//! Tests of the client's reader (`FrameReader<ClientSide>`), and round trips
//! across the two roles: a client's frames through a server's reader, a
//! server's frames through a client's reader. Every input is fed whole,
//! split in two at every offset and byte by byte (`check_as`).

use super::tests::{check_as, Outcome, Owned, KEY, LIMITS};
use super::*;
use crate::ws::writer::{
    close_frame, encode_frame, ping_frame, pong_frame, text_header, write_close_frame,
    write_control_frame, write_fragmented, write_frame,
};

use Owned::{Data, End, Start};

/// The length classes of §5.2: 7-bit (0, 125), 16-bit (126, 65535),
/// 64-bit (65536).
const DATA_LENGTHS: [usize; 5] = [0, 125, 126, 65535, 65536];
/// Control frames carry at most 125 bytes: only the 7-bit class.
const CONTROL_LENGTHS: [usize; 2] = [0, 125];

/// `length` bytes of valid ASCII text (so text and binary can share it).
fn payload(length: usize) -> Vec<u8> {
    (0..length).map(|i| b'a' + (i % 26) as u8).collect()
}

fn client_check(input: &[u8]) -> Outcome {
    check_as::<ClientSide>(input, &LIMITS)
}

fn server_check(input: &[u8]) -> Outcome {
    check_as::<ServerSide>(input, &LIMITS)
}

/// What a reader reports for a whole message of `kind`.
fn message_events(kind: MessageKind, payload: &[u8]) -> Vec<Owned> {
    let data = (!payload.is_empty()).then(|| Data(payload.to_vec()));
    [Some(Start(kind)), data, Some(End)]
        .into_iter()
        .flatten()
        .collect()
}

/// A close payload of exactly `length` bytes (0, or a code and a reason).
fn close_reason(length: usize) -> Option<(CloseCode, String)> {
    (length > 0).then(|| (CloseCode::NORMAL, "r".repeat(length - 2)))
}

fn close_events(close: &Option<(CloseCode, String)>) -> Vec<Owned> {
    vec![Owned::Close(
        close
            .as_ref()
            .map(|(code, reason)| (code.0, reason.clone())),
    )]
}

// ---------------------------------------------------------------- round trips

/// A round-trip case: what it is, its frames, and the events a reader of the
/// other end reports for them.
type Case = (String, Vec<u8>, Vec<Owned>);

/// Every opcode at every length class its frames can have, written by the
/// `write_*` functions with `mask` (`Some` for a client's frames, `None`
/// for a server's).
fn round_trip_cases(mask: Option<[u8; 4]>) -> Vec<Case> {
    let mut cases = Vec::new();
    for length in DATA_LENGTHS {
        let body = payload(length);
        for (opcode, kind) in [
            (Opcode::Text, MessageKind::Text),
            (Opcode::Binary, MessageKind::Binary),
        ] {
            let mut frames = Vec::new();
            write_frame(&mut frames, true, opcode, &body, mask);
            let events = message_events(kind, &body);
            cases.push((format!("{opcode:?} {length}"), frames, events));
        }
        // A continuation frame of each length class ends a message.
        let mut frames = Vec::new();
        write_frame(&mut frames, false, Opcode::Binary, b"head", mask);
        write_frame(&mut frames, true, Opcode::Continuation, &body, mask);
        let events = message_events(MessageKind::Binary, &[&b"head"[..], &body].concat());
        cases.push((format!("Continuation {length}"), frames, events));
    }
    for length in CONTROL_LENGTHS {
        let body = payload(length);
        for (opcode, event) in [
            (Opcode::Ping, Owned::Ping(body.clone())),
            (Opcode::Pong, Owned::Pong(body.clone())),
        ] {
            let mut frames = Vec::new();
            write_control_frame(&mut frames, opcode, &body, mask);
            cases.push((format!("{opcode:?} {length}"), frames, vec![event]));
        }
        let close = close_reason(length);
        let mut frames = Vec::new();
        match &close {
            Some((code, reason)) => write_close_frame(&mut frames, *code, reason, mask),
            None => write_control_frame(&mut frames, Opcode::Close, b"", mask),
        }
        cases.push((format!("Close {length}"), frames, close_events(&close)));
    }
    cases
}

#[test]
fn client_frames_through_a_server_reader() {
    for (case, frames, events) in round_trip_cases(Some(KEY)) {
        assert_eq!(server_check(&frames), (events, Ok(())), "{case}");
    }
}

#[test]
fn server_frames_through_a_client_reader() {
    for (case, frames, events) in round_trip_cases(None) {
        assert_eq!(client_check(&frames), (events, Ok(())), "{case}");
    }
}

/// The server's own frame functions write what `write_*` writes unmasked,
/// so the round trips above cover them.
#[test]
fn server_frame_functions_are_the_unmasked_writers() {
    for length in DATA_LENGTHS {
        let body = payload(length);
        for opcode in [Opcode::Text, Opcode::Binary] {
            let mut written = Vec::new();
            write_frame(&mut written, true, opcode, &body, None);
            assert_eq!(encode_frame(opcode, &body), written, "{opcode:?} {length}");
        }
        // The push path: a shared header, then the payload.
        let mut header = [0u8; 10];
        let header_bytes = text_header(length as u64, &mut header);
        assert_eq!(
            [&header[..header_bytes], &body].concat(),
            encode_frame(Opcode::Text, &body)
        );
    }
    for length in CONTROL_LENGTHS {
        let body = payload(length);
        for (opcode, frame) in [
            (Opcode::Ping, ping_frame(&body)),
            (Opcode::Pong, pong_frame(&body)),
        ] {
            let mut written = Vec::new();
            write_control_frame(&mut written, opcode, &body, None);
            assert_eq!(frame, written, "{opcode:?} {length}");
        }
    }
    let mut written = Vec::new();
    write_close_frame(&mut written, CloseCode::NORMAL, "bye", None);
    assert_eq!(close_frame(CloseCode::NORMAL, "bye"), written);
}

#[test]
fn fragmented_messages_round_trip_both_ways() {
    let body = payload(1000);
    let mut keys = (0..).map(|k: u32| Some(k.to_be_bytes()));
    let mut from_client = Vec::new();
    write_fragmented(&mut from_client, Opcode::Text, &body, 99, || {
        keys.next().unwrap()
    });
    let mut from_server = Vec::new();
    write_fragmented(&mut from_server, Opcode::Text, &body, 99, || None);
    let expected = (message_events(MessageKind::Text, &body), Ok(()));
    assert_eq!(server_check(&from_client), expected);
    assert_eq!(client_check(&from_server), expected);
}

// ---------------------------------------------------------------- the client's rules

fn assert_client_fails(input: &[u8], code: CloseCode, reason: &str, expected: &[Owned]) {
    let (events, result) = client_check(input);
    let error = result.expect_err("the stream fails");
    assert_eq!((error.code, error.reason), (code, reason));
    assert_eq!(events, expected);
}

#[test]
fn rfc_unmasked_examples() {
    // RFC 6455 §5.7, the unmasked frames a client receives.
    let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let fragmented = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    for input in [&hello[..], &fragmented] {
        assert_eq!(
            client_check(input),
            (message_events(MessageKind::Text, b"Hello"), Ok(()))
        );
    }
    assert_eq!(
        client_check(&ping),
        (vec![Owned::Ping(b"Hello".to_vec())], Ok(()))
    );
}

#[test]
fn masked_server_frames_fail() {
    let mut masked = Vec::new();
    write_frame(&mut masked, true, Opcode::Text, b"Hello", Some(KEY));
    assert_client_fails(
        &masked,
        CloseCode::PROTOCOL_ERROR,
        "server frame is masked",
        &[],
    );
    // After a good message, and for control frames too.
    let mut input = encode_frame(Opcode::Binary, b"ok");
    write_control_frame(&mut input, Opcode::Ping, b"", Some(KEY));
    assert_client_fails(
        &input,
        CloseCode::PROTOCOL_ERROR,
        "server frame is masked",
        &message_events(MessageKind::Binary, b"ok"),
    );
}

#[test]
fn the_servers_rules_hold_for_a_client_too() {
    let with_first_byte = |first_byte: u8, payload: &[u8]| {
        let mut frame = encode_frame(Opcode::Binary, payload);
        frame[0] = first_byte;
        frame
    };
    for (input, code, reason) in [
        (
            with_first_byte(0xC1, b"x"),
            CloseCode::PROTOCOL_ERROR,
            "reserved bits set without a negotiated extension",
        ),
        (
            with_first_byte(0x83, b""),
            CloseCode::PROTOCOL_ERROR,
            "reserved opcode",
        ),
        (
            with_first_byte(0x09, b""),
            CloseCode::PROTOCOL_ERROR,
            "fragmented control frame",
        ),
        (
            with_first_byte(0x89, &[0; 126]),
            CloseCode::PROTOCOL_ERROR,
            "control frame payload over 125 bytes",
        ),
        (
            with_first_byte(0x80, b"x"),
            CloseCode::PROTOCOL_ERROR,
            "continuation frame without a message in progress",
        ),
        (
            encode_frame(Opcode::Text, &[0xce, 0xba, 0xff]),
            CloseCode::INVALID_PAYLOAD,
            "text message is not valid UTF-8",
        ),
        (
            encode_frame(Opcode::Close, &1005u16.to_be_bytes()),
            CloseCode::PROTOCOL_ERROR,
            "invalid close code",
        ),
    ] {
        let (_, result) = client_check(&input);
        let error = result.expect_err(reason);
        assert_eq!((error.code, error.reason), (code, reason), "{input:02x?}");
    }
}

#[test]
fn limits_bound_a_client_from_the_header() {
    let limits = ReaderLimits {
        frame_payload_bytes_max: 100,
        message_bytes_max: 150,
    };
    let (events, result) =
        check_as::<ClientSide>(&encode_frame(Opcode::Binary, &[0; 100]), &limits);
    assert_eq!((events.len(), result), (3, Ok(())));
    // The header alone decides: no payload needs to arrive.
    let header_only = &encode_frame(Opcode::Binary, &[0; 101])[..4];
    let (events, result) = check_as::<ClientSide>(header_only, &limits);
    assert_eq!(events, []);
    assert_eq!(result.map_err(|error| error.code), Err(CloseCode::TOO_BIG));
    let mut input = Vec::new();
    write_frame(&mut input, false, Opcode::Binary, &[0; 100], None);
    write_frame(&mut input, true, Opcode::Continuation, &[0; 51], None);
    let (_, result) = check_as::<ClientSide>(&input, &limits);
    assert_eq!(result.map_err(|error| error.reason), Err("message too big"));
}

#[test]
fn a_client_reader_holds_a_buffer_only_for_partial_headers_and_control_frames() {
    let mut reader = FrameReader::<ClientSide>::default();
    assert!(reader.is_at_rest());
    let mut seen = 0;
    let mut frame = encode_frame(Opcode::Binary, &[7; 300]);
    let (header, payload) = frame.split_at_mut(4);
    reader
        .feed(&mut header[..1], &LIMITS, |_| seen += 1)
        .unwrap();
    assert!(reader.holds_buffer());
    reader
        .feed(&mut header[1..], &LIMITS, |_| seen += 1)
        .unwrap();
    assert!(!reader.holds_buffer(), "a data frame's payload is streamed");
    reader.feed(payload, &LIMITS, |_| seen += 1).unwrap();
    assert!(reader.is_at_rest());
    assert_eq!(seen, 3);
    let mut ping = ping_frame(b"abc");
    let (start, rest) = ping.split_at_mut(3);
    reader.feed(start, &LIMITS, |_| seen += 1).unwrap();
    assert!(reader.holds_buffer(), "a control frame is gathered whole");
    reader.feed(rest, &LIMITS, |_| seen += 1).unwrap();
    assert!(reader.is_at_rest());
    assert_eq!(seen, 4);
}

#[test]
fn client_reader_is_at_most_32_bytes() {
    assert!(std::mem::size_of::<FrameReader<ClientSide>>() <= 40);
}
