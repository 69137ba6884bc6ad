//! The frame header codec (RFC 6455 §5.2).
//!
//! ```text
//!  0 1 2 3 4 5 6 7 8 9 A B C D E F 0 1 2 3 4 5 6 7 8 9 A B C D E F
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | Masking-key, if MASK set to 1 |
//! +-------------------------------+-------------------------------+
//! ```

use super::ProtocolError;

/// The longest frame header: 2 bytes, a 64-bit length and a mask key.
pub const FRAME_HEADER_BYTES_MAX: usize = 14;

/// Control frames carry at most this many payload bytes (§5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// What a frame is (§5.2, §11.8). The reserved opcodes are not representable:
/// a frame carrying one is a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// The opcode for the 4 bits on the wire, `None` if reserved.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The 4 bits on the wire.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong: short, never fragmented, allowed between the
    /// fragments of a message.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last frame of its message.
    pub fin: bool,
    /// RSV1..RSV3 (3 bits). Always 0 from [`parse_header`], which rejects
    /// them because no extension is ever negotiated.
    pub rsv: u8,
    pub opcode: Opcode,
    /// The masking key; clients must send one, servers never do.
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// Parses a frame header from the start of `buf`.
///
/// `Ok(None)`: `buf` holds only the beginning of a header. `Ok(Some((header,
/// header_bytes)))`: the payload starts at `buf[header_bytes]`. Errors (all
/// 1002) come as soon as the bytes seen prove them, so a header fed in pieces
/// fails with the same error as a header fed whole: checks on the first two
/// bytes come before any on the extended length.
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    let rsv = (first >> 4) & 0x7;
    let Some(opcode) = Opcode::from_bits(first & 0x0F) else {
        return Err(ProtocolError::protocol("reserved opcode"));
    };
    if rsv != 0 {
        return Err(ProtocolError::protocol(
            "reserved bits set without a negotiated extension",
        ));
    }
    let masked = second & 0x80 != 0;
    let length_code = second & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::protocol("fragmented control frame"));
        }
        if usize::from(length_code) > CONTROL_PAYLOAD_BYTES_MAX {
            return Err(ProtocolError::protocol(
                "control frame payload over 125 bytes",
            ));
        }
    }

    // §5.2: "the minimal number of bytes MUST be used to encode the length".
    let (payload_len, length_end) = match length_code {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            let length = u16::from_be_bytes([bytes[0], bytes[1]]);
            if length < 126 {
                return Err(ProtocolError::protocol("non-minimal 16-bit payload length"));
            }
            (u64::from(length), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let length = u64::from_be_bytes(be);
            if length >> 63 != 0 {
                return Err(ProtocolError::protocol(
                    "64-bit payload length with top bit set",
                ));
            }
            if length <= u64::from(u16::MAX) {
                return Err(ProtocolError::protocol("non-minimal 64-bit payload length"));
            }
            (length, 10)
        }
        short => (u64::from(short), 2),
    };

    let (mask, header_bytes) = if masked {
        let Some(bytes) = buf.get(length_end..length_end + 4) else {
            return Ok(None);
        };
        (
            Some([bytes[0], bytes[1], bytes[2], bytes[3]]),
            length_end + 4,
        )
    } else {
        (None, length_end)
    };

    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, header_bytes)))
}

/// Writes the header of an unmasked (server) frame into `out` and returns its
/// length: 2, 4 or 10 bytes, the minimal encoding of `payload_len`.
pub fn encode_header(fin: bool, opcode: Opcode, payload_len: u64, out: &mut [u8; 10]) -> usize {
    debug_assert!(payload_len >> 63 == 0, "payload length must fit 63 bits");
    debug_assert!(
        !opcode.is_control() || (fin && payload_len <= CONTROL_PAYLOAD_BYTES_MAX as u64),
        "control frames are unfragmented and at most 125 bytes"
    );
    out[0] = if fin { 0x80 } else { 0 } | opcode.bits();
    if payload_len <= 125 {
        out[1] = payload_len as u8;
        2
    } else if let Ok(length) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&length.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::CloseCode;

    /// Parses `bytes` whole and every proper prefix of it: each prefix must
    /// be "need more" or fail with the same error as the whole (a header is
    /// parsed from a growing buffer, so this is every split point).
    fn parse_all_prefixes(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let whole = parse_header(bytes);
        let needed = match &whole {
            Ok(Some((_, header_bytes))) => *header_bytes,
            _ => bytes.len(),
        };
        for length in 0..needed {
            let prefix = parse_header(&bytes[..length]);
            match (&prefix, &whole) {
                (Ok(None), _) => {}
                (Err(prefix_error), Err(whole_error)) => assert_eq!(prefix_error, whole_error),
                _ => panic!("prefix {length} of {bytes:02x?}: {prefix:?} vs whole {whole:?}"),
            }
        }
        whole
    }

    fn header(fin: bool, opcode: Opcode, mask: Option<[u8; 4]>, payload_len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 §5.7.
        let cases: &[(&[u8], FrameHeader, usize)] = &[
            // Unmasked "Hello".
            (&[0x81, 0x05], header(true, Opcode::Text, None, 5), 2),
            // Masked "Hello".
            (
                &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d],
                header(true, Opcode::Text, Some([0x37, 0xfa, 0x21, 0x3d]), 5),
                6,
            ),
            // Fragmented "Hel" + "lo".
            (&[0x01, 0x03], header(false, Opcode::Text, None, 3), 2),
            (
                &[0x80, 0x02],
                header(true, Opcode::Continuation, None, 2),
                2,
            ),
            // Unmasked ping "Hello" and masked pong "Hello".
            (&[0x89, 0x05], header(true, Opcode::Ping, None, 5), 2),
            (
                &[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d],
                header(true, Opcode::Pong, Some([0x37, 0xfa, 0x21, 0x3d]), 5),
                6,
            ),
            // 256 bytes binary: 16-bit length.
            (
                &[0x82, 0x7E, 0x01, 0x00],
                header(true, Opcode::Binary, None, 256),
                4,
            ),
            // 64 KiB binary: 64-bit length.
            (
                &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0],
                header(true, Opcode::Binary, None, 65536),
                10,
            ),
        ];
        for (bytes, expected, header_bytes) in cases {
            let mut with_payload = bytes.to_vec();
            with_payload.extend_from_slice(b"payload");
            assert_eq!(
                parse_all_prefixes(&with_payload),
                Ok(Some((*expected, *header_bytes))),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn longest_header_is_fourteen_bytes() {
        let bytes = [0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        let parsed = parse_all_prefixes(&bytes).unwrap().unwrap();
        assert_eq!(
            parsed,
            (
                header(true, Opcode::Binary, Some([1, 2, 3, 4]), 1 << 32),
                14
            )
        );
        assert_eq!(parsed.1, FRAME_HEADER_BYTES_MAX);
    }

    #[test]
    fn length_boundaries() {
        for (bytes, payload_len) in [
            (vec![0x82, 125], 125u64),
            (vec![0x82, 126, 0, 126], 126),
            (vec![0x82, 126, 0xff, 0xff], 65535),
            (vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0], 65536),
            (
                vec![0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                (1 << 63) - 1,
            ),
        ] {
            let (parsed, _) = parse_all_prefixes(&bytes).unwrap().unwrap();
            assert_eq!(parsed.payload_len, payload_len);
        }
    }

    fn assert_protocol_error(bytes: &[u8], reason: &str) {
        let error = parse_all_prefixes(bytes).unwrap_err();
        assert_eq!(error.code, CloseCode::PROTOCOL_ERROR, "{bytes:02x?}");
        assert_eq!(error.reason, reason, "{bytes:02x?}");
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        // Autobahn 4.1.x (3..=7) and 4.2.x (0xB..=0xF).
        for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_protocol_error(&[0x80 | opcode, 0x80, 1, 2, 3, 4], "reserved opcode");
        }
    }

    #[test]
    fn reserved_bits_are_rejected() {
        // Autobahn 3.x: RSV 1..7 on text, binary, ping and close frames.
        for (rsv, opcode) in [(1u8, 1u8), (2, 1), (3, 1), (4, 1), (5, 2), (6, 9), (7, 8)] {
            assert_protocol_error(
                &[0x80 | (rsv << 4) | opcode, 0x80, 1, 2, 3, 4],
                "reserved bits set without a negotiated extension",
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        // Autobahn 2.5: ping with 126 bytes (only a 16-bit length can say so).
        assert_protocol_error(
            &[0x89, 0xFE, 0, 126],
            "control frame payload over 125 bytes",
        );
        assert_protocol_error(&[0x88, 0xFF], "control frame payload over 125 bytes");
        // Autobahn 5.1, 5.2: fragmented ping and pong.
        assert_protocol_error(&[0x09, 0x80], "fragmented control frame");
        assert_protocol_error(&[0x0A, 0x80], "fragmented control frame");
        // 125 bytes is fine.
        let (parsed, _) = parse_all_prefixes(&[0x89, 125]).unwrap().unwrap();
        assert_eq!(parsed.payload_len, 125);
    }

    #[test]
    fn non_minimal_lengths_are_rejected() {
        assert_protocol_error(&[0x82, 126, 0, 125], "non-minimal 16-bit payload length");
        assert_protocol_error(&[0x82, 126, 0, 0], "non-minimal 16-bit payload length");
        assert_protocol_error(
            &[0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            "non-minimal 64-bit payload length",
        );
        assert_protocol_error(
            &[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 5],
            "non-minimal 64-bit payload length",
        );
    }

    #[test]
    fn top_bit_of_64_bit_length_is_rejected() {
        assert_protocol_error(
            &[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
            "64-bit payload length with top bit set",
        );
    }

    #[test]
    fn first_two_bytes_decide_before_the_extended_length() {
        // A fragmented ping with a 127 length code fails on byte 2 already.
        assert_protocol_error(&[0x09, 0xFF], "fragmented control frame");
        assert_eq!(
            parse_header(&[0x03]),
            Ok(None),
            "one byte is never enough to fail"
        );
    }

    #[test]
    fn encode_round_trips() {
        for payload_len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 32, (1 << 63) - 1] {
            for (fin, opcode) in [
                (true, Opcode::Text),
                (false, Opcode::Binary),
                (true, Opcode::Continuation),
            ] {
                let mut out = [0u8; 10];
                let length = encode_header(fin, opcode, payload_len, &mut out);
                let expected_length = match payload_len {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                };
                assert_eq!(length, expected_length);
                assert_eq!(
                    parse_header(&out[..length]),
                    Ok(Some((header(fin, opcode, None, payload_len), length)))
                );
            }
        }
    }

    #[test]
    fn encode_matches_rfc_bytes() {
        let mut out = [0u8; 10];
        assert_eq!(encode_header(true, Opcode::Text, 5, &mut out), 2);
        assert_eq!(out[..2], [0x81, 0x05]);
        assert_eq!(encode_header(true, Opcode::Binary, 256, &mut out), 4);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(encode_header(true, Opcode::Binary, 65536, &mut out), 10);
        assert_eq!(out, [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(encode_header(true, Opcode::Ping, 0, &mut out), 2);
        assert_eq!(out[..2], [0x89, 0x00]);
    }

    #[test]
    fn opcode_bits_round_trip() {
        for bits in 0..16u8 {
            if let Some(opcode) = Opcode::from_bits(bits) {
                assert_eq!(opcode.bits(), bits);
                assert_eq!(opcode.is_control(), bits >= 8);
            }
        }
    }
}
