//! Outgoing frames, for either end: a server's are unmasked (RFC 6455 §5.1:
//! a server must not mask), a client's are masked with a key it passes in
//! (a fresh one per frame, §5.3).
//!
//! The `write_*` functions append to a caller's buffer, so a client that
//! reuses one allocates nothing per frame; the others return a server's
//! frame in a `Vec` of its own. A push fans one payload out to many
//! connections, so [`text_header`] lets the caller write only the few header
//! bytes per connection and send the shared payload bytes after them
//! without a copy.

use super::close::{is_valid_received_code, CloseCode, CLOSE_REASON_BYTES_MAX};
use super::frame::{
    encode_header, FrameHeader, Opcode, CONTROL_PAYLOAD_BYTES_MAX, FRAME_HEADER_BYTES_MAX,
};
use super::mask::apply_mask;

/// Appends one frame to `out`: its header, then `payload`, masked with
/// `mask` when given (a client's frame). Allocates only if `out` must grow.
///
/// Control frames must be unfragmented and carry at most 125 bytes; use
/// [`write_control_frame`] or [`write_close_frame`], which enforce it.
#[inline]
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut header_buf = [0u8; FRAME_HEADER_BYTES_MAX];
    let header_bytes = header.encode(&mut header_buf);
    out.reserve(header_bytes + payload.len());
    out.extend_from_slice(&header_buf[..header_bytes]);
    let payload_start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[payload_start..], key, 0);
    }
}

/// Appends a close, ping or pong; `payload` longer than 125 bytes is cut so
/// the frame stays valid (a pong's is normally the ping's, at most 125).
pub fn write_control_frame(
    out: &mut Vec<u8>,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    debug_assert!(opcode.is_control(), "{opcode:?} is not a control opcode");
    write_frame(out, true, opcode, control_payload(payload), mask);
}

/// Appends a close frame with `code` and `reason`; the reason is cut at a
/// character boundary to the 123 bytes a close frame can hold.
pub fn write_close_frame(out: &mut Vec<u8>, code: CloseCode, reason: &str, mask: Option<[u8; 4]>) {
    debug_assert!(
        is_valid_received_code(code.0),
        "{code} may not be sent on the wire"
    );
    let reason = truncate_on_char_boundary(reason, CLOSE_REASON_BYTES_MAX);
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    write_frame(out, true, Opcode::Close, &payload[..2 + reason.len()], mask);
}

/// Appends a text or binary message of `opcode` as frames of at most
/// `fragment_bytes_max` payload bytes (§5.4): the first of `opcode`,
/// continuation frames after it, FIN on the last; an empty payload is one
/// empty frame. `next_mask` gives each frame's key: a client's must be a
/// fresh one every time, a server's is `None`.
pub fn write_fragmented(
    out: &mut Vec<u8>,
    opcode: Opcode,
    payload: &[u8],
    fragment_bytes_max: usize,
    mut next_mask: impl FnMut() -> Option<[u8; 4]>,
) {
    debug_assert!(
        matches!(opcode, Opcode::Text | Opcode::Binary),
        "only data messages are fragmented"
    );
    assert!(fragment_bytes_max > 0, "a fragment carries at least a byte");
    let fragments = payload.len().div_ceil(fragment_bytes_max).max(1);
    let mut chunks = payload.chunks(fragment_bytes_max);
    for index in 0..fragments {
        let chunk = chunks.next().unwrap_or_default();
        let frame_opcode = if index == 0 {
            opcode
        } else {
            Opcode::Continuation
        };
        write_frame(
            out,
            index + 1 == fragments,
            frame_opcode,
            chunk,
            next_mask(),
        );
    }
}

/// A server's complete single-frame message or control frame: header and
/// payload.
///
/// Control frames must carry at most 125 bytes; use [`ping_frame`],
/// [`pong_frame`] or [`close_frame`], which enforce it.
pub fn encode_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    debug_assert!(
        opcode != Opcode::Continuation,
        "a single frame starts its message"
    );
    let mut frame = Vec::with_capacity(10 + payload.len());
    write_frame(&mut frame, true, opcode, payload, None);
    frame
}

/// A server's close frame with `code` and `reason`; the reason is cut at a
/// character boundary to the 123 bytes a close frame can hold.
pub fn close_frame(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(2 + CONTROL_PAYLOAD_BYTES_MAX);
    write_close_frame(&mut frame, code, reason, None);
    frame
}

/// A server's pong; `payload` is normally the ping's, which is at most 125
/// bytes. Anything longer is cut to 125 so the frame stays valid.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(2 + CONTROL_PAYLOAD_BYTES_MAX);
    write_control_frame(&mut frame, Opcode::Pong, payload, None);
    frame
}

/// A server's ping (a keepalive probe); `payload` longer than 125 bytes is
/// cut.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(2 + CONTROL_PAYLOAD_BYTES_MAX);
    write_control_frame(&mut frame, Opcode::Ping, payload, None);
    frame
}

/// Writes the header of a server's single-frame text message of
/// `payload_len` bytes into `out` and returns its length (2, 4 or 10).
pub fn text_header(payload_len: u64, out: &mut [u8; 10]) -> usize {
    encode_header(true, Opcode::Text, payload_len, out)
}

fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(CONTROL_PAYLOAD_BYTES_MAX)]
}

fn truncate_on_char_boundary(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::parse_close_payload;
    use crate::ws::frame::{parse_header, parse_server_frame, Role};

    /// Parses a server frame back: (fin, opcode, payload). A masked frame
    /// fails: servers never mask.
    fn parse_frame(frame: &[u8]) -> (bool, Opcode, &[u8]) {
        let parsed = parse_server_frame(frame, u64::MAX).unwrap().unwrap();
        assert_eq!(parsed.frame_bytes, frame.len());
        (parsed.fin, parsed.opcode, parsed.payload)
    }

    /// Parses the client frames in `wire` back: (fin, opcode, key,
    /// unmasked payload) each. An unmasked frame fails: clients always mask.
    fn parse_client_frames(mut wire: &[u8]) -> Vec<(bool, Opcode, [u8; 4], Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (header, header_bytes) = parse_header(wire, Role::Server).unwrap().unwrap();
            let frame_bytes = header_bytes + header.payload_len as usize;
            let key = header.mask.unwrap();
            let mut payload = wire[header_bytes..frame_bytes].to_vec();
            apply_mask(&mut payload, key, 0);
            frames.push((header.fin, header.opcode, key, payload));
            wire = &wire[frame_bytes..];
        }
        frames
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn client_frames_are_masked_with_the_given_key() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut out = Vec::new();
        write_frame(&mut out, true, Opcode::Text, b"Hello", Some(KEY));
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        for length in [0usize, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..length).map(|i| (i * 3) as u8).collect();
            let mut out = Vec::new();
            write_frame(&mut out, false, Opcode::Binary, &payload, Some(KEY));
            assert_eq!(
                parse_client_frames(&out),
                [(false, Opcode::Binary, KEY, payload)]
            );
        }
    }

    #[test]
    fn frames_append_without_allocating_when_there_is_room() {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"before");
        let capacity = out.capacity();
        write_frame(&mut out, true, Opcode::Text, b"pong", Some(KEY));
        write_control_frame(&mut out, Opcode::Pong, b"abc", Some([1, 2, 3, 4]));
        assert_eq!(out.capacity(), capacity);
        assert_eq!(&out[..6], b"before");
        assert_eq!(
            parse_client_frames(&out[6..]),
            [
                (true, Opcode::Text, KEY, b"pong".to_vec()),
                (true, Opcode::Pong, [1, 2, 3, 4], b"abc".to_vec()),
            ]
        );
    }

    #[test]
    fn client_control_frames_are_cut_and_masked() {
        let mut out = Vec::new();
        write_control_frame(&mut out, Opcode::Ping, &[7; 200], Some(KEY));
        write_close_frame(&mut out, CloseCode::GOING_AWAY, &"é".repeat(100), Some(KEY));
        let frames = parse_client_frames(&out);
        assert_eq!(frames[0], (true, Opcode::Ping, KEY, vec![7; 125]));
        let (fin, opcode, _, payload) = &frames[1];
        assert_eq!((*fin, *opcode), (true, Opcode::Close));
        let (code, reason) = parse_close_payload(payload).unwrap().unwrap();
        assert_eq!((code, reason.len()), (CloseCode::GOING_AWAY, 122));
    }

    #[test]
    fn fragmented_messages() {
        let payload: Vec<u8> = (0..10u8).collect();
        let mut keys = (1..).map(|k: u8| [k, k, k, k]);
        let mut out = Vec::new();
        write_fragmented(&mut out, Opcode::Text, &payload, 4, || keys.next());
        // A fresh key per frame; FIN only on the last.
        assert_eq!(
            parse_client_frames(&out),
            [
                (false, Opcode::Text, [1; 4], vec![0, 1, 2, 3]),
                (false, Opcode::Continuation, [2; 4], vec![4, 5, 6, 7]),
                (true, Opcode::Continuation, [3; 4], vec![8, 9]),
            ]
        );
        // Server fragments are unmasked; exact multiples make no empty tail;
        // an empty message is one empty frame.
        let mut out = Vec::new();
        write_fragmented(&mut out, Opcode::Binary, &payload[..8], 4, || None);
        write_fragmented(&mut out, Opcode::Text, b"", 4, || None);
        assert_eq!(
            out,
            [
                &[0x02, 4, 0, 1, 2, 3][..],
                &[0x80, 4, 4, 5, 6, 7],
                &[0x81, 0],
            ]
            .concat()
        );
    }

    #[test]
    fn text_and_binary_frames() {
        assert_eq!(encode_frame(Opcode::Text, b"Hello"), b"\x81\x05Hello");
        for length in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload = vec![0xabu8; length];
            let frame = encode_frame(Opcode::Binary, &payload);
            assert_eq!(parse_frame(&frame), (true, Opcode::Binary, &payload[..]));
        }
    }

    #[test]
    fn text_header_glues_onto_a_shared_payload() {
        let payload = vec![b'x'; 300];
        let mut header = [0u8; 10];
        let header_bytes = text_header(payload.len() as u64, &mut header);
        let mut frame = header[..header_bytes].to_vec();
        frame.extend_from_slice(&payload);
        assert_eq!(frame, encode_frame(Opcode::Text, &payload));
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        let frame = close_frame(CloseCode::SERVICE_RESTART, "draining");
        let (fin, opcode, payload) = parse_frame(&frame);
        assert!(fin);
        assert_eq!(opcode, Opcode::Close);
        assert_eq!(
            parse_close_payload(payload),
            Ok(Some((CloseCode::SERVICE_RESTART, "draining")))
        );
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        // 'é' is two bytes: 123 is odd, so the cut must back off one byte.
        let reason = "é".repeat(100);
        let frame = close_frame(CloseCode::NORMAL, &reason);
        let (_, _, payload) = parse_frame(&frame);
        let (_, parsed) = parse_close_payload(payload).unwrap().unwrap();
        assert_eq!(parsed.len(), 122);
        assert!(reason.starts_with(parsed));
        // Exactly 123 ASCII bytes fit whole; 124 lose one.
        for (length, kept) in [(123, 123), (124, 123), (5, 5)] {
            let reason = "a".repeat(length);
            let frame = close_frame(CloseCode::NORMAL, &reason);
            assert!(frame.len() <= 2 + 125);
            let (_, _, payload) = parse_frame(&frame);
            assert_eq!(parse_close_payload(payload).unwrap().unwrap().1.len(), kept);
        }
    }

    #[test]
    fn ping_and_pong() {
        assert_eq!(ping_frame(b""), [0x89, 0x00]);
        assert_eq!(pong_frame(b"Hello"), b"\x8a\x05Hello");
        let long = vec![7u8; 200];
        let pong = pong_frame(&long);
        let (_, opcode, payload) = parse_frame(&pong);
        assert_eq!(opcode, Opcode::Pong);
        assert_eq!(payload.len(), 125);
    }
}
