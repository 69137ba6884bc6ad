//! Close status codes and the close frame payload (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use super::ProtocolError;

/// A close frame's reason may hold at most this many bytes: a control frame
/// payload is at most 125 bytes, and the status code takes two of them.
pub const CLOSE_REASON_BYTES_MAX: usize = 123;

/// A close status code (RFC 6455 §7.4.1 and the IANA registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutting down, page left).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1007: message data inconsistent with its type (invalid UTF-8 text).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a policy was violated (here: a bad or expired token).
    pub const POLICY: Self = Self(1008);
    /// 1009: a frame or message is too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1011: an unexpected condition on the server.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the server is restarting (drain); reconnect.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: the server is overloaded or the client too slow; retry later.
    pub const TRY_AGAIN_LATER: Self = Self(1013);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether a peer may send `code` in a close frame.
///
/// 1004 is reserved, and 1005, 1006 and 1015 only ever stand for "no code"
/// inside an endpoint, so on the wire they are errors, like any unassigned
/// code below 3000. 3000–3999 (registered) and 4000–4999 (private use) are
/// for applications and always allowed.
pub fn is_valid_received_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame payload (already unmasked).
///
/// Empty → `Ok(None)` (no status code). One byte cannot hold a code → 1002;
/// a code a peer may not send → 1002; a reason that is not UTF-8 → 1007.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::protocol("close payload of one byte")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_received_code(code) {
                return Err(ProtocolError::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError {
                code: CloseCode::INVALID_PAYLOAD,
                reason: "close reason is not valid UTF-8",
            })?;
            Ok(Some((CloseCode(code), reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_valid_on_the_wire() {
        // Autobahn 7.7.x (valid) and 7.9.x / 7.13.x (invalid), plus the
        // IANA registrations 1012–1014 that came after RFC 6455.
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(is_valid_received_code(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_received_code(code), "{code}");
        }
    }

    #[test]
    fn empty_payload_has_no_code() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
    }

    #[test]
    fn one_byte_payload_is_a_protocol_error() {
        let error = parse_close_payload(&[0x03]).unwrap_err();
        assert_eq!(error.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn code_only() {
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8]),
            Ok(Some((CloseCode::NORMAL, "")))
        );
    }

    #[test]
    fn code_and_reason() {
        let mut payload = vec![0x0f, 0xa0]; // 4000
        payload.extend_from_slice("bye κόσμε".as_bytes());
        assert_eq!(
            parse_close_payload(&payload),
            Ok(Some((CloseCode(4000), "bye κόσμε")))
        );
    }

    #[test]
    fn invalid_code_is_a_protocol_error() {
        for code in [0u16, 999, 1005, 1006, 1016, 5000] {
            let error = parse_close_payload(&code.to_be_bytes()).unwrap_err();
            assert_eq!(error.code, CloseCode::PROTOCOL_ERROR, "{code}");
        }
    }

    #[test]
    fn invalid_utf8_reason_is_invalid_payload() {
        // Autobahn 7.5.1: a reason with an invalid UTF-8 sequence.
        let payload = [
            0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed,
            0xa0, 0x80,
        ];
        let error = parse_close_payload(&payload).unwrap_err();
        assert_eq!(error.code, CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn display_is_the_number() {
        assert_eq!(CloseCode::TOO_BIG.to_string(), "1009");
    }
}
