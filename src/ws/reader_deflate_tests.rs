//! Tests of the frame reader on a connection that negotiated
//! permessage-deflate (RFC 7692): compressed messages whole, fragmented,
//! interleaved with control frames, split at every offset; RSV1 rules; the
//! inflated-size bound.

use super::tests::{Owned, KEY};
use super::*;
use crate::ws::deflate::{Deflater, Inflater};
use crate::ws::writer::write_frame;
use Owned::{Data, End, Start};

const FIN: u8 = 0x80;
const RSV1_BIT: u8 = 0x40;
const RSV2_BIT: u8 = 0x20;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const PING: u8 = 0x9;

const LIMITS: ReaderLimits = ReaderLimits {
    frame_payload_bytes_max: 1 << 20,
    message_bytes_max: 1 << 16,
};

/// RFC 7692 §7.2.3.1: "Hello", compressed, tail stripped.
const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

/// A masked client frame; `first_byte` is FIN | RSV | opcode.
fn frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_frame(&mut bytes, true, Opcode::Binary, payload, Some(KEY));
    bytes[0] = first_byte;
    bytes
}

fn deflate(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Deflater::default().compress(&[message], &mut out);
    out
}

/// Feeds the pieces in order to one reader with an inflater (or without,
/// for `deflate: false`); adjacent data events are merged.
fn run(
    pieces: &[&[u8]],
    limits: &ReaderLimits,
    deflate: bool,
) -> (Vec<Owned>, Result<(), ProtocolError>) {
    let mut reader = FrameReader::<ServerSide>::default();
    let mut inflater = Inflater::default();
    let mut events: Vec<Owned> = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        let mut buffer = piece.to_vec();
        let fed = reader.feed_inflating(
            &mut buffer,
            limits,
            deflate.then_some(&mut inflater),
            |event| {
                let owned = match event {
                    Event::MessageStart(kind) => Start(kind),
                    Event::MessageData(bytes) => Data(bytes.to_vec()),
                    Event::MessageEnd => End,
                    Event::Ping(bytes) => Owned::Ping(bytes.to_vec()),
                    Event::Pong(bytes) => Owned::Pong(bytes.to_vec()),
                    Event::Close(close) => {
                        Owned::Close(close.map(|(code, reason)| (code.0, reason.to_owned())))
                    }
                };
                match (events.last_mut(), owned) {
                    (Some(Data(so_far)), Data(more)) => so_far.extend_from_slice(&more),
                    (_, owned) => events.push(owned),
                }
            },
        );
        if result.is_ok() {
            result = fed;
        }
    }
    if result.is_err() || events.last() == Some(&End) {
        assert!(
            !reader.holds_buffer(),
            "nothing held after a message or an error"
        );
    }
    (events, result)
}

/// Runs `input` whole, split in two at every offset, and byte by byte;
/// all must give the same outcome, which is returned.
fn check(input: &[u8], limits: &ReaderLimits) -> (Vec<Owned>, Result<(), ProtocolError>) {
    let whole = run(&[input], limits, true);
    for split in 0..=input.len() {
        let (head, tail) = input.split_at(split);
        assert_eq!(run(&[head, tail], limits, true), whole, "split at {split}");
    }
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(&bytewise, limits, true), whole, "byte by byte");
    whole
}

fn assert_events(input: &[u8], expected: &[Owned]) {
    assert_eq!(check(input, &LIMITS), (expected.to_vec(), Ok(())));
}

fn assert_fails(input: &[u8], code: CloseCode, reason: &str, expected: &[Owned]) {
    let (events, result) = check(input, &LIMITS);
    let error = result.expect_err("fails");
    assert_eq!((error.code, error.reason), (code, reason));
    assert_eq!(events, expected);
}

#[test]
fn rfc_7692_compressed_hello() {
    assert_events(
        &frame(FIN | RSV1_BIT | TEXT, &HELLO),
        &[Start(MessageKind::Text), Data(b"Hello".to_vec()), End],
    );
}

#[test]
fn fragmented_compressed_message_with_a_ping_between() {
    // §7.2.3.2 (split deflate stream across frames): RSV1 on the first only.
    let input = [
        frame(RSV1_BIT | TEXT, &HELLO[..3]),
        frame(FIN | PING, b"p"),
        frame(CONTINUATION, &HELLO[3..5]),
        frame(FIN | CONTINUATION, &HELLO[5..]),
    ]
    .concat();
    assert_events(
        &input,
        &[
            Start(MessageKind::Text),
            Owned::Ping(b"p".to_vec()),
            Data(b"Hello".to_vec()),
            End,
        ],
    );
}

#[test]
fn compressed_and_plain_messages_mix_on_one_connection() {
    let body = br#"{"type":"ack","seq":1,"padding":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    let input = [
        frame(FIN | RSV1_BIT | TEXT, &deflate(body)),
        frame(FIN | TEXT, b"plain"),
        frame(FIN | RSV1_BIT | BINARY, &deflate(&[0, 1, 2, 3])),
        frame(FIN | RSV1_BIT | TEXT, &[0x00]), // empty: just a stored-block start
    ]
    .concat();
    let (events, result) = check(&input, &LIMITS);
    assert_eq!(result, Ok(()));
    assert_eq!(
        events,
        [
            Start(MessageKind::Text),
            Data(body.to_vec()),
            End,
            Start(MessageKind::Text),
            Data(b"plain".to_vec()),
            End,
            Start(MessageKind::Binary),
            Data(vec![0, 1, 2, 3]),
            End,
            Start(MessageKind::Text),
            End,
        ]
    );
}

#[test]
fn empty_compressed_frame_is_an_empty_message() {
    assert_events(
        &frame(FIN | RSV1_BIT | BINARY, &[]),
        &[Start(MessageKind::Binary), End],
    );
}

#[test]
fn rsv1_rules() {
    assert_fails(
        &frame(FIN | RSV1_BIT | PING, b""),
        CloseCode::PROTOCOL_ERROR,
        "RSV1 set on a control frame",
        &[],
    );
    assert_fails(
        &[
            frame(RSV1_BIT | TEXT, &HELLO[..3]),
            frame(FIN | RSV1_BIT | CONTINUATION, &HELLO[3..]),
        ]
        .concat(),
        CloseCode::PROTOCOL_ERROR,
        "RSV1 set on a continuation frame",
        &[Start(MessageKind::Text)],
    );
    assert_fails(
        &frame(FIN | RSV2_BIT | TEXT, b"x"),
        CloseCode::PROTOCOL_ERROR,
        "reserved bits set without a negotiated extension",
        &[],
    );
    // Not negotiated: RSV1 is a reserved bit like any other.
    let (events, result) = run(&[&frame(FIN | RSV1_BIT | TEXT, &HELLO)], &LIMITS, false);
    assert_eq!(events, []);
    assert_eq!(
        result.map_err(|e| (e.code, e.reason)),
        Err((
            CloseCode::PROTOCOL_ERROR,
            "reserved bits set without a negotiated extension"
        ))
    );
}

#[test]
fn a_zip_bomb_is_1009_while_inflating() {
    let bomb = deflate(&vec![b'a'; 4 << 20]);
    assert!(bomb.len() < 8192, "4 MiB in {} bytes", bomb.len());
    let (events, result) = run(&[&frame(FIN | RSV1_BIT | TEXT, &bomb)], &LIMITS, true);
    assert_eq!(
        result.map_err(|e| (e.code, e.reason)),
        Err((CloseCode::TOO_BIG, "message too big once inflated"))
    );
    let handed: usize = events
        .iter()
        .map(|e| match e {
            Data(d) => d.len(),
            _ => 0,
        })
        .sum();
    assert!(handed as u64 <= LIMITS.message_bytes_max, "{handed}");
    // At the bound exactly it is a message.
    let fits = deflate(&vec![b'a'; 1 << 16]);
    let (_, result) = run(&[&frame(FIN | RSV1_BIT | TEXT, &fits)], &LIMITS, true);
    assert_eq!(result, Ok(()));
}

#[test]
fn compressed_bytes_on_the_wire_are_bounded_too() {
    let limits = ReaderLimits {
        frame_payload_bytes_max: 1 << 20,
        message_bytes_max: 10,
    };
    let (_, result) = run(
        &[&[
            frame(RSV1_BIT | TEXT, &[0; 8]),
            frame(FIN | CONTINUATION, &[0; 8]),
        ]
        .concat()],
        &limits,
        true,
    );
    assert_eq!(
        result.map_err(|e| (e.code, e.reason)),
        Err((CloseCode::TOO_BIG, "message too big"))
    );
}

#[test]
fn inflated_text_must_be_utf8_and_data_must_be_deflate() {
    assert_fails(
        &frame(FIN | RSV1_BIT | TEXT, &deflate(b"ok \xff")),
        CloseCode::INVALID_PAYLOAD,
        "text message is not valid UTF-8",
        &[Start(MessageKind::Text)],
    );
    // The same bytes as binary are fine.
    assert_events(
        &frame(FIN | RSV1_BIT | BINARY, &deflate(b"ok \xff")),
        &[Start(MessageKind::Binary), Data(b"ok \xff".to_vec()), End],
    );
    assert_fails(
        &frame(FIN | RSV1_BIT | BINARY, &[0xff, 0xff, 0xff]),
        CloseCode::INVALID_PAYLOAD,
        "compressed message is not valid DEFLATE data",
        &[Start(MessageKind::Binary)],
    );
}

#[test]
fn one_inflater_serves_interleaved_connections() {
    // Two connections' compressed messages arrive in halves, interleaved:
    // each reader keeps its own bytes, and the shared inflater only runs
    // on whole messages.
    let a_body = "a".repeat(3000) + "end-a";
    let b_body = "b".repeat(3000) + "end-b";
    let a = frame(FIN | RSV1_BIT | TEXT, &deflate(a_body.as_bytes()));
    let b = frame(FIN | RSV1_BIT | TEXT, &deflate(b_body.as_bytes()));
    let mut inflater = Inflater::default();
    let (mut ra, mut rb) = (
        FrameReader::<ServerSide>::default(),
        FrameReader::<ServerSide>::default(),
    );
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let (a1, a2) = a.split_at(a.len() / 2);
    let (b1, b2) = b.split_at(b.len() / 2);
    for (reader, piece, got) in [(&mut ra, a1, &mut got_a), (&mut rb, b1, &mut got_b)] {
        reader
            .feed_inflating(&mut piece.to_vec(), &LIMITS, Some(&mut inflater), |e| {
                if let Event::MessageData(d) = e {
                    got.extend_from_slice(d)
                }
            })
            .unwrap();
        assert!(reader.holds_buffer() && got.is_empty());
    }
    for (reader, piece, got) in [(&mut rb, b2, &mut got_b), (&mut ra, a2, &mut got_a)] {
        reader
            .feed_inflating(&mut piece.to_vec(), &LIMITS, Some(&mut inflater), |e| {
                if let Event::MessageData(d) = e {
                    got.extend_from_slice(d)
                }
            })
            .unwrap();
        assert!(reader.is_at_rest());
    }
    assert_eq!((got_a, got_b), (a_body.into_bytes(), b_body.into_bytes()));
}
