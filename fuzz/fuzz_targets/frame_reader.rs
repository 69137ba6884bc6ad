//! Arbitrary bytes into a FrameReader, whole and split at an arbitrary point:
//! no panic, and both runs give the same events and result.
//!
//! The first two bytes of the input pick the split point and the limits; the
//! rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::ws::{Event, FrameReader, MessageKind, ProtocolError, ReaderLimits};

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

/// Feeds the pieces to one reader; adjacent data events are merged, since
/// where a read ends carries no meaning.
fn run(pieces: &[&[u8]], limits: &ReaderLimits) -> Outcome {
    let mut reader = FrameReader::default();
    let mut events: Vec<Owned> = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        let mut buffer = piece.to_vec();
        let fed = reader.feed(&mut buffer, limits, |event| {
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

fuzz_target!(|data: &[u8]| {
    let [split_seed, limits_seed, stream @ ..] = data else {
        return;
    };
    let limits = ReaderLimits {
        frame_payload_bytes_max: u64::from(*limits_seed) * 4,
        message_bytes_max: u64::from(*limits_seed) * 16,
    };
    let split = usize::from(*split_seed) * stream.len() / 255;
    let whole = run(&[stream], &limits);
    let (head, tail) = stream.split_at(split);
    let split_outcome = run(&[head, tail], &limits);
    assert!(
        agrees(&whole, &split_outcome),
        "split at {split}:\n whole {whole:?}\n split {split_outcome:?}"
    );
});
