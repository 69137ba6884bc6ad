//! Server frames: unmasked, unfragmented (RFC 6455 §5.1: a server must not
//! mask).
//!
//! A push fans one payload out to many connections, so [`text_header`] lets
//! the caller write only the few header bytes per connection and send the
//! shared payload bytes after them without a copy.

use super::close::{is_valid_received_code, CloseCode, CLOSE_REASON_BYTES_MAX};
use super::frame::{encode_header, Opcode, CONTROL_PAYLOAD_BYTES_MAX};

/// A complete single-frame message or control frame: header and payload.
///
/// Control frames must carry at most 125 bytes; use [`ping_frame`],
/// [`pong_frame`] or [`close_frame`], which enforce it.
pub fn encode_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    debug_assert!(
        opcode != Opcode::Continuation,
        "a single frame starts its message"
    );
    let mut header = [0u8; 10];
    let header_bytes = encode_header(true, opcode, payload.len() as u64, &mut header);
    let mut frame = Vec::with_capacity(header_bytes + payload.len());
    frame.extend_from_slice(&header[..header_bytes]);
    frame.extend_from_slice(payload);
    frame
}

/// A close frame with `code` and `reason`; the reason is cut at a character
/// boundary to the 123 bytes a close frame can hold.
pub fn close_frame(code: CloseCode, reason: &str) -> Vec<u8> {
    debug_assert!(
        is_valid_received_code(code.0),
        "{code} may not be sent on the wire"
    );
    let reason = truncate_on_char_boundary(reason, CLOSE_REASON_BYTES_MAX);
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode_frame(Opcode::Close, &payload[..2 + reason.len()])
}

/// A pong; `payload` is normally the ping's, which is at most 125 bytes.
/// Anything longer is cut to 125 so the frame stays valid.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    encode_frame(Opcode::Pong, control_payload(payload))
}

/// A ping (a keepalive probe); `payload` longer than 125 bytes is cut.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    encode_frame(Opcode::Ping, control_payload(payload))
}

/// Writes the header of a single-frame text message of `payload_len` bytes
/// into `out` and returns its length (2, 4 or 10).
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
    use crate::ws::frame::parse_header;

    /// Parses a server frame back: (fin, opcode, payload).
    fn parse_frame(frame: &[u8]) -> (bool, Opcode, &[u8]) {
        let (header, header_bytes) = parse_header(frame).unwrap().unwrap();
        assert_eq!(header.mask, None, "servers never mask");
        assert_eq!(frame.len() as u64, header_bytes as u64 + header.payload_len);
        (header.fin, header.opcode, &frame[header_bytes..])
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
