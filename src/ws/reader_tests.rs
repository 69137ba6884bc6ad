//! Tests of the frame reader: RFC 6455 and Autobahn cases, fed whole, split and byte by byte.

use super::*;
use crate::ws::writer::{write_fragmented, write_frame};

const FIN: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
pub(super) const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub(super) const LIMITS: ReaderLimits = ReaderLimits {
    frame_payload_bytes_max: 1 << 20,
    message_bytes_max: 1 << 20,
};

/// An event with its bytes copied out, to compare across runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Owned {
    Start(MessageKind),
    Data(Vec<u8>),
    End,
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

use Owned::{Data, End, Start};

fn text(bytes: &[u8]) -> Owned {
    Data(bytes.to_vec())
}

/// A masked client frame; `first_byte` is FIN | RSV | opcode.
fn frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    frame_with_mask(first_byte, payload, Some(KEY))
}

/// The writer's frame with its first byte replaced: these tests send what
/// the writer never would (reserved bits and opcodes, long control frames).
fn frame_with_mask(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_frame(&mut bytes, true, Opcode::Binary, payload, mask);
    bytes[0] = first_byte;
    bytes
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

pub(super) type Outcome = (Vec<Owned>, Result<(), ProtocolError>);

/// Feeds the pieces in order to a server's reader; see [`run_as`].
fn run(pieces: &[&[u8]], limits: &ReaderLimits) -> Outcome {
    run_as::<ServerSide>(pieces, limits)
}

/// Feeds the pieces in order to one reader of role `R`; adjacent data
/// events are merged, since where a read ends is not part of the meaning.
fn run_as<R: ReaderRole>(pieces: &[&[u8]], limits: &ReaderLimits) -> Outcome {
    let mut reader = FrameReader::<R>::default();
    let mut events: Vec<Owned> = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        let mut buffer = piece.to_vec();
        let fed = reader.feed(&mut buffer, limits, |event| {
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
        });
        if result.is_ok() {
            result = fed;
        } else {
            assert_eq!(fed, Ok(()), "input after an error is ignored");
        }
    }
    if result.is_err() || matches!(events.last(), Some(Owned::Close(_))) {
        assert!(!reader.holds_buffer(), "a closed reader frees its buffer");
    }
    (events, result)
}

/// Whether a split run agrees with the whole run. On a UTF-8 error the
/// split run may have handed out more of the failing text (a valid
/// prefix that arrived in an earlier read): that is the one difference
/// allowed.
fn agrees(whole: &Outcome, split: &Outcome) -> bool {
    if whole == split {
        return true;
    }
    let (whole_events, whole_result) = whole;
    let (split_events, split_result) = split;
    if whole_result != split_result || whole_result.is_ok() {
        return false;
    }
    match (whole_events.last(), split_events.last()) {
        (Some(Data(whole_data)), Some(Data(split_data)))
            if whole_events.len() == split_events.len() =>
        {
            split_data.starts_with(whole_data)
                && whole_events[..whole_events.len() - 1] == split_events[..split_events.len() - 1]
        }
        (_, Some(Data(_))) if split_events.len() == whole_events.len() + 1 => {
            split_events[..whole_events.len()] == whole_events[..]
        }
        _ => false,
    }
}

/// The split points to try: all of them for inputs up to 4 KiB. Larger
/// inputs (the 64 KiB cases) would take minutes at every offset in a
/// debug build, so they get every offset near the start and end and a
/// prime stride between.
fn split_offsets(len: usize) -> Vec<usize> {
    if len <= 4096 {
        return (0..=len).collect();
    }
    let mut offsets: Vec<usize> = (0..=300).chain(len - 300..=len).collect();
    offsets.extend((300..len - 300).step_by(997));
    offsets
}

/// Feeds `input` to a server's reader; see [`check_as`].
fn check_with(input: &[u8], limits: &ReaderLimits) -> Outcome {
    check_as::<ServerSide>(input, limits)
}

/// Feeds `input` to readers of role `R` whole, split in two at every
/// offset, and byte by byte; all must agree. Returns the whole run's
/// outcome.
pub(super) fn check_as<R: ReaderRole>(input: &[u8], limits: &ReaderLimits) -> Outcome {
    let whole = run_as::<R>(&[input], limits);
    for split in split_offsets(input.len()) {
        let (head, tail) = input.split_at(split);
        let split_outcome = run_as::<R>(&[head, tail], limits);
        assert!(
            agrees(&whole, &split_outcome),
            "split at {split}:\n whole {whole:?}\n split {split_outcome:?}"
        );
    }
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    let bytewise_outcome = run_as::<R>(&bytewise, limits);
    assert!(
        agrees(&whole, &bytewise_outcome),
        "byte by byte:\n whole {whole:?}\n bytes {bytewise_outcome:?}"
    );
    whole
}

fn check(input: &[u8]) -> Outcome {
    check_with(input, &LIMITS)
}

fn assert_events(input: &[u8], expected: &[Owned]) {
    let (events, result) = check(input);
    assert_eq!(result, Ok(()));
    assert_eq!(events, expected);
}

/// The stream fails with `code`; `events` are what came before.
fn assert_fails(input: &[u8], code: CloseCode, expected: &[Owned]) {
    let (events, result) = check(input);
    assert_eq!(result.map_err(|error| error.code), Err(code), "{events:?}");
    assert_eq!(events, expected);
}

#[test]
fn reader_is_at_most_40_bytes() {
    assert!(std::mem::size_of::<FrameReader>() <= 40);
}

// RFC 6455 §5.7 examples.

#[test]
fn rfc_masked_hello() {
    let input = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_events(&input, &[Start(MessageKind::Text), text(b"Hello"), End]);
}

#[test]
fn rfc_fragmented_text() {
    let input = concat(&[frame(TEXT, b"Hel"), frame(FIN | CONTINUATION, b"lo")]);
    assert_events(&input, &[Start(MessageKind::Text), text(b"Hello"), End]);
}

#[test]
fn rfc_ping_and_pong() {
    assert_events(
        &frame(FIN | PING, b"Hello"),
        &[Owned::Ping(b"Hello".to_vec())],
    );
    assert_events(
        &frame(FIN | PONG, b"Hello"),
        &[Owned::Pong(b"Hello".to_vec())],
    );
}

#[test]
fn rfc_256_bytes_and_64_kib_binary() {
    for length in [256usize, 65536] {
        let payload: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        let input = frame(FIN | BINARY, &payload);
        assert_eq!(input[1] & 0x7f, if length == 256 { 126 } else { 127 });
        assert_events(&input, &[Start(MessageKind::Binary), Data(payload), End]);
    }
}

// Autobahn 1.x: framing.

#[test]
fn autobahn_1_text_and_binary_lengths() {
    for length in [0usize, 125, 126, 127, 128, 65535, 65536] {
        let payload: Vec<u8> = (0..length).map(|i| b'*' + (i % 7) as u8).collect();
        let expected_data: Vec<Owned> = if length == 0 {
            vec![]
        } else {
            vec![Data(payload.clone())]
        };
        for (opcode, kind) in [(TEXT, MessageKind::Text), (BINARY, MessageKind::Binary)] {
            let mut expected = vec![Start(kind)];
            expected.extend(expected_data.iter().cloned());
            expected.push(End);
            assert_events(&frame(FIN | opcode, &payload), &expected);
        }
    }
}

#[test]
fn autobahn_1_1_8_chopped_into_997_byte_reads() {
    let payload = vec![b'*'; 65536];
    let input = frame(FIN | TEXT, &payload);
    let pieces: Vec<&[u8]> = input.chunks(997).collect();
    let (events, result) = run(&pieces, &LIMITS);
    assert_eq!(result, Ok(()));
    assert_eq!(events, [Start(MessageKind::Text), Data(payload), End]);
}

#[test]
fn data_frames_are_streamed_not_buffered() {
    let payload = vec![7u8; 1000];
    let input = frame(FIN | BINARY, &payload);
    let mut reader = FrameReader::<ServerSide>::default();
    let (head, tail) = input.split_at(500);
    let mut slices = Vec::new();
    reader
        .feed(&mut head.to_vec(), &LIMITS, |event| {
            if let Event::MessageData(bytes) = event {
                slices.push(bytes.len());
            }
        })
        .unwrap();
    assert!(!reader.holds_buffer(), "mid-payload, nothing is stored");
    reader
        .feed(&mut tail.to_vec(), &LIMITS, |event| {
            if let Event::MessageData(bytes) = event {
                slices.push(bytes.len());
            }
        })
        .unwrap();
    assert_eq!(slices, [500 - 8, 508]);
}

#[test]
fn buffer_is_held_only_for_partial_headers_and_control_frames() {
    let mut reader = FrameReader::<ServerSide>::default();
    let mut feed = |bytes: &[u8]| {
        reader.feed(&mut bytes.to_vec(), &LIMITS, |_| {}).unwrap();
        reader.holds_buffer()
    };
    let data = frame(FIN | TEXT, b"hi");
    assert!(feed(&data[..3]), "partial header");
    assert!(!feed(&data[3..7]), "header complete, payload streaming");
    assert!(!feed(&data[7..]), "frame complete");
    let ping = frame(FIN | PING, b"ping!");
    assert!(feed(&ping[..8]), "partial control frame");
    assert!(!feed(&ping[8..]), "control frame complete");
}

// Autobahn 2.x: pings and pongs.

#[test]
fn autobahn_2_pings() {
    // 2.1–2.4: empty, text, binary and 125-byte pings.
    assert_events(&frame(FIN | PING, b""), &[Owned::Ping(vec![])]);
    assert_events(
        &frame(FIN | PING, b"Hello, world!"),
        &[Owned::Ping(b"Hello, world!".to_vec())],
    );
    assert_events(
        &frame(
            FIN | PING,
            &[0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff],
        ),
        &[Owned::Ping(vec![
            0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff,
        ])],
    );
    let payload = vec![0xfe; 125];
    // 2.6: the same, chopped (check feeds it byte by byte).
    assert_events(&frame(FIN | PING, &payload), &[Owned::Ping(payload)]);
}

#[test]
fn autobahn_2_5_ping_over_125_bytes_fails() {
    assert_fails(
        &frame(FIN | PING, &[0xfe; 126]),
        CloseCode::PROTOCOL_ERROR,
        &[],
    );
}

#[test]
fn autobahn_2_7_to_2_11_pongs_and_many_pings() {
    assert_events(&frame(FIN | PONG, b""), &[Owned::Pong(vec![])]);
    assert_events(
        &frame(FIN | PONG, b"unsolicited pong payload"),
        &[Owned::Pong(b"unsolicited pong payload".to_vec())],
    );
    let input = concat(&[
        frame(FIN | PONG, b"unsolicited pong payload"),
        frame(FIN | PING, b"ping payload"),
    ]);
    assert_events(
        &input,
        &[
            Owned::Pong(b"unsolicited pong payload".to_vec()),
            Owned::Ping(b"ping payload".to_vec()),
        ],
    );
    let pings: Vec<Vec<u8>> = (0..10)
        .map(|i| frame(FIN | PING, format!("payload-{i}").as_bytes()))
        .collect();
    let expected: Vec<Owned> = (0..10)
        .map(|i| Owned::Ping(format!("payload-{i}").into_bytes()))
        .collect();
    assert_events(&concat(&pings), &expected);
}

// Autobahn 3.x: reserved bits.

#[test]
fn autobahn_3_reserved_bits() {
    let hello = frame(FIN | TEXT, b"Hello, world!");
    let echoed = [Start(MessageKind::Text), text(b"Hello, world!"), End];
    // 3.1: RSV1 on the first frame.
    assert_fails(
        &frame(FIN | 0x10 | TEXT, b"Hello"),
        CloseCode::PROTOCOL_ERROR,
        &[],
    );
    // 3.2–3.7: after a valid message; on text, binary, ping, close.
    for bad in [
        frame(FIN | 0x20 | TEXT, b"Hello, world!"),
        frame(FIN | 0x30 | TEXT, b"Hello, world!"),
        frame(FIN | 0x40 | TEXT, b"Hello, world!"),
        frame(FIN | 0x50 | BINARY, &[0xff; 8]),
        frame(FIN | 0x60 | PING, b"Hello"),
        frame(FIN | 0x70 | CLOSE, &close_payload(1000, b"")),
    ] {
        let input = concat(&[hello.clone(), bad, frame(FIN | PING, b"")]);
        assert_fails(&input, CloseCode::PROTOCOL_ERROR, &echoed);
    }
}

// Autobahn 4.x: opcodes.

#[test]
fn autobahn_4_reserved_opcodes() {
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        // 4.1.1, 4.2.1: alone.
        assert_fails(&frame(FIN | opcode, b""), CloseCode::PROTOCOL_ERROR, &[]);
        // 4.1.3–4.1.5, 4.2.3–4.2.5: after a valid message, before a ping.
        let input = concat(&[
            frame(FIN | TEXT, b"Hello"),
            frame(FIN | opcode, b"reserved"),
            frame(FIN | PING, b""),
        ]);
        assert_fails(
            &input,
            CloseCode::PROTOCOL_ERROR,
            &[Start(MessageKind::Text), text(b"Hello"), End],
        );
    }
}

// Autobahn 5.x: fragmentation.

#[test]
fn autobahn_5_1_and_5_2_fragmented_control_frames() {
    let input = concat(&[frame(PING, b"frag"), frame(FIN | CONTINUATION, b"ment")]);
    assert_fails(&input, CloseCode::PROTOCOL_ERROR, &[]);
    let input = concat(&[frame(PONG, b"frag"), frame(FIN | CONTINUATION, b"ment")]);
    assert_fails(&input, CloseCode::PROTOCOL_ERROR, &[]);
}

#[test]
fn autobahn_5_3_to_5_8_fragments_with_interleaved_control_frames() {
    // 5.3–5.5: two fragments.
    let input = concat(&[
        frame(TEXT, b"fragment1"),
        frame(FIN | CONTINUATION, b"fragment2"),
    ]);
    assert_events(
        &input,
        &[Start(MessageKind::Text), text(b"fragment1fragment2"), End],
    );
    // 5.6–5.8: a ping between them.
    let input = concat(&[
        frame(TEXT, b"fragment1"),
        frame(FIN | PING, b"ping payload"),
        frame(FIN | CONTINUATION, b"fragment2"),
    ]);
    assert_events(
        &input,
        &[
            Start(MessageKind::Text),
            text(b"fragment1"),
            Owned::Ping(b"ping payload".to_vec()),
            text(b"fragment2"),
            End,
        ],
    );
}

#[test]
fn autobahn_5_9_to_5_14_continuation_without_a_message() {
    // 5.9–5.11: a final continuation first.
    let input = concat(&[
        frame(FIN | CONTINUATION, b"non-continuation payload"),
        frame(FIN | TEXT, b"Hello, world!"),
    ]);
    assert_fails(&input, CloseCode::PROTOCOL_ERROR, &[]);
    // 5.12–5.14: a non-final continuation first.
    let input = concat(&[
        frame(CONTINUATION, b"non-continuation payload"),
        frame(FIN | TEXT, b"Hello, world!"),
    ]);
    assert_fails(&input, CloseCode::PROTOCOL_ERROR, &[]);
    // After a complete message, a continuation is again without one.
    let input = concat(&[frame(FIN | TEXT, b"a"), frame(FIN | CONTINUATION, b"b")]);
    assert_fails(
        &input,
        CloseCode::PROTOCOL_ERROR,
        &[Start(MessageKind::Text), text(b"a"), End],
    );
}

#[test]
fn autobahn_5_15_to_5_18_new_message_inside_a_message() {
    // 5.15: a valid two-fragment message, then a continuation, then text.
    let input = concat(&[
        frame(TEXT, b"fragment1"),
        frame(FIN | CONTINUATION, b"fragment2"),
        frame(CONTINUATION, b"fragment3"),
        frame(FIN | TEXT, b"fragment4"),
    ]);
    assert_fails(
        &input,
        CloseCode::PROTOCOL_ERROR,
        &[Start(MessageKind::Text), text(b"fragment1fragment2"), End],
    );
    // 5.18: text, then text again, with no continuation.
    let input = concat(&[frame(TEXT, b"fragment1"), frame(FIN | TEXT, b"fragment2")]);
    assert_fails(
        &input,
        CloseCode::PROTOCOL_ERROR,
        &[Start(MessageKind::Text), text(b"fragment1")],
    );
    // Binary inside text is just as wrong.
    let input = concat(&[frame(TEXT, b"a"), frame(FIN | BINARY, b"b")]);
    assert_fails(
        &input,
        CloseCode::PROTOCOL_ERROR,
        &[Start(MessageKind::Text), text(b"a")],
    );
}

#[test]
fn autobahn_5_19_and_5_20_five_fragments_with_pings() {
    let input = concat(&[
        frame(TEXT, b"fragment1"),
        frame(CONTINUATION, b"fragment2"),
        frame(FIN | PING, b"pongme 1!"),
        frame(CONTINUATION, b"fragment3"),
        frame(CONTINUATION, b"fragment4"),
        frame(FIN | PING, b"pongme 2!"),
        frame(FIN | CONTINUATION, b"fragment5"),
    ]);
    assert_events(
        &input,
        &[
            Start(MessageKind::Text),
            text(b"fragment1fragment2"),
            Owned::Ping(b"pongme 1!".to_vec()),
            text(b"fragment3fragment4"),
            Owned::Ping(b"pongme 2!".to_vec()),
            text(b"fragment5"),
            End,
        ],
    );
}

#[test]
fn empty_fragments() {
    // Autobahn 6.1.2, 6.1.3: empty fragments make valid messages.
    let input = concat(&[
        frame(TEXT, b""),
        frame(CONTINUATION, b""),
        frame(FIN | CONTINUATION, b""),
    ]);
    assert_events(&input, &[Start(MessageKind::Text), End]);
    let input = concat(&[
        frame(TEXT, b""),
        frame(CONTINUATION, b"middle"),
        frame(FIN | CONTINUATION, b""),
    ]);
    assert_events(&input, &[Start(MessageKind::Text), text(b"middle"), End]);
}

// Autobahn 6.x: UTF-8 handling.

/// A text message in frames of `fragment_bytes` payload bytes each.
fn fragmented_text(payload: &[u8], fragment_bytes: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_fragmented(&mut bytes, Opcode::Text, payload, fragment_bytes, || {
        Some(KEY)
    });
    bytes
}

#[test]
fn autobahn_6_valid_utf8_in_any_fragmentation() {
    for valid in [
        "Hello-µ@ßöäüàá-UTF-8!!",              // 6.2
        "κόσμε",                               // 6.5, 6.6
        "\u{0}\u{80}\u{800}\u{10000}",         // 6.7 first of each length
        "\u{7f}\u{7ff}\u{ffff}",               // 6.9 last of each length
        "\u{d7ff}\u{e000}\u{fffd}\u{10ffff}",  // 6.11 other boundaries
        "\u{fffe}\u{ffff}\u{1fffe}\u{10fffe}", // 6.22 noncharacters are valid
    ] {
        for fragment_bytes in [1, 2, 3, 4, 5, 64] {
            let input = fragmented_text(valid.as_bytes(), fragment_bytes);
            assert_events(
                &input,
                &[Start(MessageKind::Text), text(valid.as_bytes()), End],
            );
        }
    }
}

#[test]
fn autobahn_6_invalid_utf8_fails_with_1007() {
    let cases: &[&[u8]] = &[
        // 6.3.1: κόσμε, a surrogate, "edited".
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        // 6.8: 5- and 6-byte sequences.
        b"\xf8\x88\x80\x80\x80",
        b"\xfc\x84\x80\x80\x80\x80",
        // 6.10: beyond U+10FFFF.
        b"\xf4\x90\x80\x80",
        b"\xf7\xbf\xbf\xbf",
        // 6.12: unexpected continuation bytes.
        b"\x80",
        b"\x80\xbf\x80\xbf",
        // 6.13: lonely start bytes.
        b"\xc0 \xc1 ",
        // 6.14: last continuation byte missing.
        b"\xe0\x80",
        b"\xf0\x80\x80",
        // 6.15: concatenated incomplete sequences.
        b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80",
        // 6.16: impossible bytes.
        b"\xfe\xfe\xff\xff",
        // 6.17–6.19: overlong forms.
        b"\xc0\xaf",
        b"\xf0\x80\x80\xaf",
        b"\xc1\xbf",
        b"\xe0\x80\x80",
        // 6.20, 6.21: surrogates.
        b"\xed\xbf\xbf",
        b"\xed\xa0\x80\xed\xb0\x80",
        // Ends inside a code point: only the final frame can tell.
        b"ok\xe2\x82",
    ];
    for bytes in cases {
        for fragment_bytes in [1, 3, 64] {
            let input = fragmented_text(bytes, fragment_bytes);
            let (events, result) = check(&input);
            assert_eq!(
                result.map_err(|error| error.code),
                Err(CloseCode::INVALID_PAYLOAD),
                "{bytes:02x?} in fragments of {fragment_bytes}"
            );
            assert_eq!(events.first(), Some(&Start(MessageKind::Text)));
            assert!(!events.contains(&End));
        }
    }
}

#[test]
fn autobahn_6_4_fails_fast_before_the_frame_ends() {
    // 6.4.1–6.4.4: the reader must fail at the byte that proves the text
    // invalid, without waiting for the rest of the frame or message.
    let payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited";
    let input = frame(FIN | TEXT, payload);
    let header_bytes = 6;
    let proving_byte = header_bytes + 12; // the 0x90 after 0xF4
    let (_, result) = run(&[&input[..=proving_byte]], &LIMITS);
    assert_eq!(
        result.map_err(|error| error.code),
        Err(CloseCode::INVALID_PAYLOAD)
    );
    let (_, result) = run(&[&input[..proving_byte]], &LIMITS);
    assert_eq!(result, Ok(()), "F4 alone could still be valid");
    // The same one byte at a time.
    let bytewise: Vec<&[u8]> = input[..=proving_byte].chunks(1).collect();
    let (_, result) = run(&bytewise, &LIMITS);
    assert_eq!(
        result.map_err(|error| error.code),
        Err(CloseCode::INVALID_PAYLOAD)
    );
}

#[test]
fn binary_is_not_utf8_checked() {
    let input = frame(FIN | BINARY, b"\xff\xfe\xc0");
    assert_events(
        &input,
        &[
            Start(MessageKind::Binary),
            Data(b"\xff\xfe\xc0".to_vec()),
            End,
        ],
    );
}

#[test]
fn text_validation_continues_across_messages() {
    // A message ending cleanly resets the validator for the next one.
    let input = concat(&[
        frame(FIN | TEXT, "é".as_bytes()),
        frame(FIN | TEXT, b"\x80"),
    ]);
    assert_fails(
        &input,
        CloseCode::INVALID_PAYLOAD,
        &[
            Start(MessageKind::Text),
            text("é".as_bytes()),
            End,
            Start(MessageKind::Text),
        ],
    );
}

// Autobahn 7.x: closing.

#[test]
fn autobahn_7_1_input_after_close_is_ignored() {
    let close = frame(FIN | CLOSE, &close_payload(1000, b""));
    let closed = Owned::Close(Some((1000, String::new())));
    // 7.1.1: message then close.
    let input = concat(&[frame(FIN | TEXT, b"Hello World!"), close.clone()]);
    assert_events(
        &input,
        &[
            Start(MessageKind::Text),
            text(b"Hello World!"),
            End,
            closed.clone(),
        ],
    );
    // 7.1.2–7.1.4: close, then close / ping / text, all ignored.
    for after in [
        close.clone(),
        frame(FIN | PING, b""),
        frame(FIN | TEXT, b"Hello World!"),
        vec![0xff, 0xff, 0xff], // even garbage
    ] {
        assert_events(
            &concat(&[close.clone(), after]),
            std::slice::from_ref(&closed),
        );
    }
    // 7.1.5: close in the middle of a fragmented message.
    let input = concat(&[
        frame(TEXT, b"fragment1"),
        close.clone(),
        frame(FIN | CONTINUATION, b"fragment2"),
    ]);
    assert_events(
        &input,
        &[Start(MessageKind::Text), text(b"fragment1"), closed.clone()],
    );
    // 7.1.6: a big message, then close, then a ping.
    let big = vec![b'*'; 10000];
    let input = concat(&[
        frame(FIN | TEXT, &big),
        close.clone(),
        frame(FIN | PING, b""),
    ]);
    assert_events(&input, &[Start(MessageKind::Text), Data(big), End, closed]);
}

#[test]
fn autobahn_7_3_close_payloads() {
    // 7.3.1: empty.
    assert_events(&frame(FIN | CLOSE, b""), &[Owned::Close(None)]);
    // 7.3.2: one byte.
    assert_fails(&frame(FIN | CLOSE, b"\x03"), CloseCode::PROTOCOL_ERROR, &[]);
    // 7.3.3: code only.
    assert_events(
        &frame(FIN | CLOSE, &close_payload(1000, b"")),
        &[Owned::Close(Some((1000, String::new())))],
    );
    // 7.3.4: code and reason.
    assert_events(
        &frame(FIN | CLOSE, &close_payload(1000, b"Hello World!")),
        &[Owned::Close(Some((1000, "Hello World!".into())))],
    );
    // 7.3.5: a 123-byte reason, the most that fits.
    let reason = "*".repeat(123);
    assert_events(
        &frame(FIN | CLOSE, &close_payload(1000, reason.as_bytes())),
        &[Owned::Close(Some((1000, reason)))],
    );
    // 7.3.6: a 124-byte reason makes a 126-byte control frame.
    assert_fails(
        &frame(FIN | CLOSE, &close_payload(1000, &[b'*'; 124])),
        CloseCode::PROTOCOL_ERROR,
        &[],
    );
}

#[test]
fn autobahn_7_5_close_reason_not_utf8() {
    let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
    assert_fails(
        &frame(FIN | CLOSE, &close_payload(1000, reason)),
        CloseCode::INVALID_PAYLOAD,
        &[],
    );
}

#[test]
fn autobahn_7_7_to_7_13_close_codes() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        assert_events(
            &frame(FIN | CLOSE, &close_payload(code, b"")),
            &[Owned::Close(Some((code, String::new())))],
        );
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_fails(
            &frame(FIN | CLOSE, &close_payload(code, b"")),
            CloseCode::PROTOCOL_ERROR,
            &[],
        );
    }
}

// Rules of this server beyond the catalogue.

#[test]
fn unmasked_client_frames_fail() {
    assert_fails(
        &frame_with_mask(FIN | TEXT, b"Hello", None),
        CloseCode::PROTOCOL_ERROR,
        &[],
    );
    assert_fails(
        &frame_with_mask(FIN | PING, b"", None),
        CloseCode::PROTOCOL_ERROR,
        &[],
    );
}

#[test]
fn frame_over_the_limit_fails_from_its_header() {
    let limits = ReaderLimits {
        frame_payload_bytes_max: 100,
        message_bytes_max: 1000,
    };
    let (events, result) = check_with(&frame(FIN | BINARY, &[0; 100]), &limits);
    assert_eq!(result, Ok(()));
    assert_eq!(events.len(), 3);
    let (events, result) = check_with(&frame(FIN | BINARY, &[0; 101]), &limits);
    assert_eq!(result.map_err(|error| error.code), Err(CloseCode::TOO_BIG));
    assert_eq!(events, []);
    // The header alone decides: no payload needs to arrive.
    let header_only = &frame(FIN | BINARY, &[0; 101])[..8];
    let (_, result) = run(&[header_only], &limits);
    assert_eq!(result.map_err(|error| error.code), Err(CloseCode::TOO_BIG));
    // A 2^62-byte frame announced in a header is refused, not awaited.
    let mut huge = vec![FIN | BINARY, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&KEY);
    let (_, result) = check_with(&huge, &limits);
    assert_eq!(result.map_err(|error| error.code), Err(CloseCode::TOO_BIG));
}

#[test]
fn message_over_the_limit_fails_from_the_header_that_crosses_it() {
    let limits = ReaderLimits {
        frame_payload_bytes_max: 100,
        message_bytes_max: 150,
    };
    let fits = concat(&[
        frame(BINARY, &[1; 100]),
        frame(FIN | CONTINUATION, &[2; 50]),
    ]);
    let (_, result) = check_with(&fits, &limits);
    assert_eq!(result, Ok(()));
    let over = concat(&[
        frame(BINARY, &[1; 100]),
        frame(FIN | CONTINUATION, &[2; 51]),
    ]);
    let (events, result) = check_with(&over, &limits);
    assert_eq!(result.map_err(|error| error.code), Err(CloseCode::TOO_BIG));
    assert_eq!(events, [Start(MessageKind::Binary), Data(vec![1; 100])]);
    // The count starts again with each message.
    let two = concat(&[
        frame(FIN | BINARY, &[1; 100]),
        frame(FIN | BINARY, &[2; 100]),
    ]);
    let (_, result) = check_with(&two, &limits);
    assert_eq!(result, Ok(()));
    // Control frames count toward neither limit.
    let tiny = ReaderLimits {
        frame_payload_bytes_max: 0,
        message_bytes_max: 0,
    };
    let (_, result) = check_with(&frame(FIN | PING, &[0; 125]), &tiny);
    assert_eq!(result, Ok(()));
}

#[test]
fn non_minimal_length_fails() {
    let mut input = vec![FIN | BINARY, 0x80 | 126, 0, 5];
    input.extend_from_slice(&KEY);
    input.extend_from_slice(&[0; 5]);
    assert_fails(&input, CloseCode::PROTOCOL_ERROR, &[]);
}

#[test]
fn at_rest_only_between_messages() {
    let mut reader = FrameReader::<ServerSide>::default();
    assert!(reader.is_at_rest());
    let mut feed = |bytes: &[u8]| {
        reader.feed(&mut bytes.to_vec(), &LIMITS, |_| {}).unwrap();
        reader.is_at_rest()
    };
    let first = frame(TEXT, b"ab");
    let last = frame(FIN | CONTINUATION, b"cd");
    assert!(!feed(&first[..1]), "partial header");
    assert!(!feed(&first[1..7]), "mid-payload");
    assert!(!feed(&first[7..]), "between fragments");
    assert!(
        !feed(&frame(FIN | PING, b"")),
        "a ping does not end the message"
    );
    assert!(feed(&last), "message complete");
    assert!(feed(&frame(FIN | PONG, b"x")));
    assert!(!feed(&frame(FIN | CLOSE, b"")), "closed is not at rest");
}

#[test]
fn an_error_closes_the_reader() {
    let mut reader = FrameReader::<ServerSide>::default();
    let mut bad = vec![0xff, 0xff];
    assert!(reader.feed(&mut bad, &LIMITS, |_| {}).is_err());
    let mut good = frame(FIN | PING, b"");
    let mut events = 0;
    assert_eq!(reader.feed(&mut good, &LIMITS, |_| events += 1), Ok(()));
    assert_eq!(events, 0);
    assert!(!reader.holds_buffer());
}

#[test]
fn many_small_messages_in_one_read() {
    let frames: Vec<Vec<u8>> = (0..50u8)
        .map(|i| {
            frame(
                FIN | if i % 2 == 0 { TEXT } else { BINARY },
                &[b'a' + i % 26; 3],
            )
        })
        .collect();
    let (events, result) = check(&concat(&frames));
    assert_eq!(result, Ok(()));
    assert_eq!(events.len(), 150);
}

/// xorshift64*: deterministic pseudo-random input without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_frame_sequences_agree_at_every_split() {
    // Mostly-valid streams built from random frames, with random bad
    // bytes now and then, so that both long valid runs and errors at
    // every stage come up.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let pieces: [&[u8]; 6] = [
        b"abc",
        "κόσμε".as_bytes(),
        b"\xf4\x90",
        b"",
        b"\xff",
        &[0x80],
    ];
    for _ in 0..300 {
        let mut input = Vec::new();
        for _ in 0..rng.next() % 6 {
            let first_byte = match rng.next() % 10 {
                0 => FIN | TEXT,
                1 => TEXT,
                2 => FIN | CONTINUATION,
                3 => CONTINUATION,
                4 => FIN | BINARY,
                5 => FIN | PING,
                6 => FIN | PONG,
                7 => FIN | CLOSE,
                8 => rng.next() as u8,
                _ => BINARY,
            };
            let payload = pieces[(rng.next() % pieces.len() as u64) as usize];
            input.extend_from_slice(&frame(first_byte, payload));
        }
        // The outcome varies; that every split agrees is the test.
        let _outcome = check(&input);
    }
}
