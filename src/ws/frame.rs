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

use super::{CloseCode, ProtocolError};

/// The longest frame header: 2 bytes, a 64-bit length and a mask key.
pub const FRAME_HEADER_BYTES_MAX: usize = 14;

/// Control frames carry at most this many payload bytes (§5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Which end of the connection a codec works for. The two ends differ in
/// one framing rule (§5.1): a client masks every frame it sends, a server
/// none, and each end must fail a connection whose peer breaks that rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    /// Whether the frames this end receives carry a mask: a server's do.
    #[inline]
    pub const fn receives_masked(self) -> bool {
        matches!(self, Self::Server)
    }

    /// The error for a received frame that breaks the mask rule.
    const fn mask_error(self) -> ProtocolError {
        match self {
            Self::Server => ProtocolError::protocol("client frame is not masked"),
            Self::Client => ProtocolError::protocol("server frame is masked"),
        }
    }
}

/// What a frame is (§5.2, §11.8). The reserved opcodes are not representable:
/// a frame carrying one is a protocol error.
///
/// Each variant's discriminant is its 4 bits on the wire, so that
/// [`Opcode::bits`] is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    /// The opcode for the 4 bits on the wire, `None` if reserved.
    #[inline]
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
    #[inline]
    pub fn bits(self) -> u8 {
        self as u8
    }

    /// Close, Ping and Pong: short, never fragmented, allowed between the
    /// fragments of a message.
    #[inline]
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last frame of its message.
    pub fin: bool,
    /// RSV1..RSV3 (3 bits, RSV1 the highest). Always 0 from [`parse_header`],
    /// which rejects them; [`parse_header_allowing`] lets a negotiated
    /// extension's through.
    pub rsv: u8,
    pub opcode: Opcode,
    /// The masking key; clients must send one, servers never do.
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Writes the header into `out` and returns its length: 2, 4 or 10
    /// bytes (the minimal encoding of `payload_len`), 4 more with a mask.
    #[inline]
    pub fn encode(&self, out: &mut [u8; FRAME_HEADER_BYTES_MAX]) -> usize {
        let (unmasked, _) = out.split_first_chunk_mut::<10>().expect("14 > 10");
        let length_end = encode_header(self.fin, self.opcode, self.payload_len, unmasked);
        debug_assert!(self.rsv < 8, "RSV is 3 bits");
        out[0] |= (self.rsv & 0x7) << 4;
        let Some(key) = self.mask else {
            return length_end;
        };
        out[1] |= 0x80;
        out[length_end..length_end + 4].copy_from_slice(&key);
        length_end + 4
    }
}

/// Parses a frame header from the start of `buf`, for the end `role`: the
/// peer's frames must be masked if and only if it is a client.
///
/// `Ok(None)`: `buf` holds only the beginning of a header. `Ok(Some((header,
/// header_bytes)))`: the payload starts at `buf[header_bytes]`. Errors (all
/// 1002) come as soon as the bytes seen prove them, so a header fed in pieces
/// fails with the same error as a header fed whole: checks on the first two
/// bytes come before any on the extended length, and the mask rule is
/// checked once the length is known.
#[inline]
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    parse_header_allowing(buf, role, 0)
}

/// RSV1, the bit permessage-deflate gives a meaning (RFC 7692 §6), as it
/// stands in [`FrameHeader::rsv`].
pub const RSV1: u8 = 0b100;

/// [`parse_header`] for a connection whose negotiated extensions give the
/// reserved bits in `rsv_allowed` a meaning: those may be set (what they
/// mean on which frame is the extension's rule, checked by the caller);
/// any other is still a protocol error.
#[inline]
pub fn parse_header_allowing(
    buf: &[u8],
    role: Role,
    rsv_allowed: u8,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    let rsv = (first >> 4) & 0x7;
    let Some(opcode) = Opcode::from_bits(first & 0x0F) else {
        return Err(ProtocolError::protocol("reserved opcode"));
    };
    if rsv & !rsv_allowed != 0 {
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

    if masked != role.receives_masked() {
        return Err(role.mask_error());
    }
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
#[inline]
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

/// `error`, from a call the compiler cannot see through.
///
/// An error built inline from constants lets the compiler spread its fields
/// over the bytes of the parse's result, and every good frame then pays to
/// put them back together: a client's parse loop ran twice the
/// instructions. Through this cold call the error is one opaque value.
#[cold]
#[inline(never)]
fn out_of_line(error: ProtocolError) -> ProtocolError {
    error
}

/// 1009 for a server frame over the client's limit; cold and out of line
/// for the reason [`out_of_line`] is.
#[cold]
#[inline(never)]
fn frame_too_big() -> ProtocolError {
    ProtocolError {
        code: CloseCode::TOO_BIG,
        reason: "frame too big",
    }
}

/// A whole unmasked frame, as a client receives it from a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    pub fin: bool,
    /// The reserved bits (0 unless the parse allowed some).
    pub rsv: u8,
    pub opcode: Opcode,
    /// The payload, a slice of the input.
    pub payload: &'a [u8],
    /// The bytes the frame took from the start of the input: its header and
    /// payload.
    pub frame_bytes: usize,
}

/// Parses one whole server frame from the start of `buf`, for a client that
/// keeps received bytes until a frame is complete and then uses it in place
/// (no state between reads but the bytes; [`super::FrameReader`] streams
/// instead).
///
/// `Ok(None)`: `buf` holds only the beginning of the frame.
/// `Ok(Some(frame))`: the frame is `buf[..frame.frame_bytes]`.
/// Errors: those of [`parse_header`] for a client, and 1009 for a data
/// frame's payload over `payload_bytes_max` (control frames are bounded at
/// 125 bytes by the protocol, as in [`super::ReaderLimits`]), decided from
/// the header before the payload arrives.
///
/// Inline (with [`parse_header`]) across crates: the bench's clients parse
/// every frame with it.
#[inline]
pub fn parse_server_frame(
    buf: &[u8],
    payload_bytes_max: u64,
) -> Result<Option<ServerFrame<'_>>, ProtocolError> {
    parse_server_frame_allowing(buf, payload_bytes_max, 0)
}

/// [`parse_server_frame`] on a connection whose extension gives the
/// reserved bits in `rsv_allowed` a meaning (see [`parse_header_allowing`]).
pub fn parse_server_frame_allowing(
    buf: &[u8],
    payload_bytes_max: u64,
    rsv_allowed: u8,
) -> Result<Option<ServerFrame<'_>>, ProtocolError> {
    let (header, header_bytes) = match parse_header_allowing(buf, Role::Client, rsv_allowed) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(error) => return Err(out_of_line(error)),
    };
    if header.payload_len > payload_bytes_max && !header.opcode.is_control() {
        return Err(frame_too_big());
    }
    // A frame that could not fit in memory is too big whatever the limit.
    let frame_bytes = usize::try_from(header.payload_len)
        .ok()
        .and_then(|payload_len| payload_len.checked_add(header_bytes))
        .ok_or_else(frame_too_big)?;
    let Some(payload) = buf.get(header_bytes..frame_bytes) else {
        return Ok(None);
    };
    Ok(Some(ServerFrame {
        fin: header.fin,
        rsv: header.rsv,
        opcode: header.opcode,
        payload,
        frame_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes` whole and every proper prefix of it, for the end whose
    /// mask rule the bytes keep (a masked frame is read by a server): see
    /// [`parse_all_prefixes_as`].
    fn parse_all_prefixes(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let masked = bytes.get(1).is_some_and(|second| second & 0x80 != 0);
        let role = if masked { Role::Server } else { Role::Client };
        parse_all_prefixes_as(bytes, role)
    }

    /// Parses `bytes` whole and every proper prefix of it: each prefix must
    /// be "need more" or fail with the same error as the whole (a header is
    /// parsed from a growing buffer, so this is every split point).
    fn parse_all_prefixes_as(
        bytes: &[u8],
        role: Role,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let whole = parse_header(bytes, role);
        let needed = match &whole {
            Ok(Some((_, header_bytes))) => *header_bytes,
            _ => bytes.len(),
        };
        for length in 0..needed {
            let prefix = parse_header(&bytes[..length], role);
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
            parse_header(&[0x03], Role::Server),
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
                    parse_header(&out[..length], Role::Client),
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
    fn mask_rule_is_the_peers() {
        let masked_text = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
        let unmasked_text = [0x81, 0x05];
        let parsed = parse_all_prefixes_as(&masked_text, Role::Server).unwrap();
        assert_eq!(parsed.unwrap().0.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let parsed = parse_all_prefixes_as(&unmasked_text, Role::Client).unwrap();
        assert_eq!(parsed.unwrap().0.mask, None);
        // Each end fails the other's rule broken, with its own reason.
        for (bytes, role, reason) in [
            (
                &unmasked_text[..],
                Role::Server,
                "client frame is not masked",
            ),
            (&masked_text[..], Role::Client, "server frame is masked"),
            (
                &[0x89, 0x00][..],
                Role::Server,
                "client frame is not masked",
            ),
            (
                &[0x8a, 0x80, 1, 2, 3, 4][..],
                Role::Client,
                "server frame is masked",
            ),
        ] {
            let error = parse_all_prefixes_as(bytes, role).unwrap_err();
            assert_eq!(
                (error.code, error.reason),
                (CloseCode::PROTOCOL_ERROR, reason)
            );
        }
        // Decided once the length is known, before the key: after the
        // extended length, and any length error comes first.
        assert_eq!(parse_header(&[0x82, 0xFE, 0x01], Role::Client), Ok(None));
        assert_eq!(
            parse_header(&[0x82, 0xFE, 0x01, 0x00], Role::Client),
            Err(ProtocolError::protocol("server frame is masked"))
        );
        assert_eq!(
            parse_header(&[0x82, 126, 0, 5], Role::Server),
            Err(ProtocolError::protocol("non-minimal 16-bit payload length"))
        );
    }

    /// Every length class, with and without a mask, through
    /// `FrameHeader::encode` and back through the parser of the receiving
    /// end, at every split.
    #[test]
    fn header_encode_round_trips_for_both_roles() {
        for payload_len in [0u64, 125, 126, 65535, 65536, (1 << 63) - 1] {
            for (fin, opcode) in [
                (true, Opcode::Text),
                (false, Opcode::Binary),
                (true, Opcode::Continuation),
            ] {
                for (mask, role) in [(None, Role::Client), (Some([9, 8, 7, 6]), Role::Server)] {
                    let sent = header(fin, opcode, mask, payload_len);
                    let mut out = [0u8; FRAME_HEADER_BYTES_MAX];
                    let length = sent.encode(&mut out);
                    let parsed = parse_all_prefixes_as(&out[..length], role);
                    assert_eq!(parsed, Ok(Some((sent, length))), "{sent:?}");
                }
            }
        }
        let mut out = [0u8; FRAME_HEADER_BYTES_MAX];
        let ping = header(true, Opcode::Ping, Some([0x37, 0xfa, 0x21, 0x3d]), 5);
        assert_eq!(ping.encode(&mut out), 6);
        assert_eq!(out[..6], [0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        // Reserved bits are written as asked (tests of peers send them).
        let reserved = FrameHeader {
            rsv: 0b101,
            ..header(true, Opcode::Text, None, 0)
        };
        assert_eq!(reserved.encode(&mut out), 2);
        assert_eq!(out[..2], [0xD1, 0x00]);
    }

    fn unmasked_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = [0u8; 10];
        let header_bytes = encode_header(fin, opcode, payload.len() as u64, &mut out);
        [&out[..header_bytes], payload].concat()
    }

    #[test]
    fn server_frames_parse_whole_at_every_length_class_and_split() {
        for length in [0usize, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..length).map(|i| (i * 7) as u8).collect();
            for (fin, opcode) in [(true, Opcode::Text), (false, Opcode::Binary)] {
                let mut wire = unmasked_frame(fin, opcode, &payload);
                let frame_bytes = wire.len();
                // A whole frame is found at every cut: every prefix is
                // "need more", and bytes after it are not its business.
                for cut in 0..frame_bytes {
                    assert_eq!(
                        parse_server_frame(&wire[..cut], 1 << 20),
                        Ok(None),
                        "length {length} cut {cut}"
                    );
                }
                wire.extend_from_slice(&[0x81, 0x00]);
                let expected = ServerFrame {
                    fin,
                    rsv: 0,
                    opcode,
                    payload: &payload,
                    frame_bytes,
                };
                assert_eq!(parse_server_frame(&wire, 1 << 20), Ok(Some(expected)));
            }
        }
        // The limit is on data frames: a control frame's is the protocol's.
        let ping = unmasked_frame(true, Opcode::Ping, b"Hello");
        let frame = parse_server_frame(&ping, 0).unwrap().unwrap();
        assert_eq!((frame.opcode, frame.payload), (Opcode::Ping, &b"Hello"[..]));
    }

    #[test]
    fn server_frame_errors_come_from_the_header() {
        let too_big = ProtocolError {
            code: CloseCode::TOO_BIG,
            reason: "frame too big",
        };
        let wire = unmasked_frame(true, Opcode::Binary, &[0; 200]);
        assert_eq!(
            parse_server_frame(&wire, 200).map(|f| f.is_some()),
            Ok(true)
        );
        // The header alone decides: no payload needs to arrive.
        assert_eq!(parse_server_frame(&wire[..4], 199), Err(too_big));
        assert_eq!(
            parse_server_frame(
                &[0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                u64::MAX
            ),
            if usize::BITS < 64 {
                Err(too_big)
            } else {
                Ok(None)
            }
        );
        for (bytes, reason) in [
            (
                &[0x81, 0x85, 1, 2, 3, 4, 0, 0, 0, 0, 0][..],
                "server frame is masked",
            ),
            (
                &[0xC1, 0x00][..],
                "reserved bits set without a negotiated extension",
            ),
            (&[0x83, 0x00][..], "reserved opcode"),
            (&[0x09, 0x00][..], "fragmented control frame"),
            (
                &[0x89, 0x7E, 0x00, 0x7E][..],
                "control frame payload over 125 bytes",
            ),
        ] {
            let error = parse_server_frame(bytes, 1 << 20).unwrap_err();
            assert_eq!(
                (error.code, error.reason),
                (CloseCode::PROTOCOL_ERROR, reason)
            );
            // Fed in pieces, it fails the same or still needs more.
            for cut in 0..bytes.len() {
                match parse_server_frame(&bytes[..cut], 1 << 20) {
                    Ok(None) => {}
                    prefix => assert_eq!(prefix, Err(error), "{bytes:02x?} cut {cut}"),
                }
            }
        }
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
