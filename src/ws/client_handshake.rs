//! A client's side of the opening handshake (RFC 6455 §4.1), as pure
//! functions over bytes: build the upgrade request, recognise the `101`
//! response head and check its `Sec-WebSocket-Accept` against the key sent.
//! The load generator and the tests use it; the server's side is
//! [`super::handshake`], whose [`accept_key`] is the one both ends compute.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::handshake::accept_key;

/// The whole response head must fit in this; a server that sends more
/// before its blank line is broken or hostile.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 4096;

/// Characters of a status line kept in a [`ResponseHeadError`], so that a
/// garbage reply cannot blow up a log or a report.
const STATUS_LINE_CHARS_MAX: usize = 120;

/// Why a response head is not a successful upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseHeadError {
    /// No `\r\n\r\n` within [`RESPONSE_HEAD_BYTES_MAX`].
    TooLarge,
    /// The status line (printable, cut), when it is not `HTTP/1.1 101`.
    NotSwitching(String),
}

/// The `Sec-WebSocket-Key` for 16 random bytes (§4.1: "a randomly selected
/// 16-byte value that has been base64-encoded").
pub fn websocket_key(nonce: &[u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// A `GET target` upgrade request. `extra_headers` is zero or more whole
/// header lines, each ending in CRLF (e.g. `Authorization: Bearer …\r\n`),
/// written after the required ones.
pub fn upgrade_request(host: &str, target: &str, key_base64: &str, extra_headers: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key_base64}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         {extra_headers}\r\n"
    )
}

/// Looks for the end of the response head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(head_bytes))`: the head is
/// `buf[..head_bytes]` and its status is 101; bytes after it already belong
/// to the first frame.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<usize>, ResponseHeadError> {
    let window = &buf[..buf.len().min(RESPONSE_HEAD_BYTES_MAX)];
    let Some(end) = find(window, b"\r\n\r\n") else {
        return if buf.len() >= RESPONSE_HEAD_BYTES_MAX {
            Err(ResponseHeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let line_end = find(window, b"\r\n").unwrap_or(end);
    let status_line = &window[..line_end];
    let switching = status_line
        .strip_prefix(b"HTTP/1.1 101")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b' ');
    if !switching {
        let printable = String::from_utf8_lossy(status_line)
            .chars()
            .take(STATUS_LINE_CHARS_MAX)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        return Err(ResponseHeadError::NotSwitching(printable));
    }
    Ok(Some(end + 4))
}

/// The value of header `name` (case-insensitive) in a response head,
/// trimmed.
pub fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // Bounded by the head, itself at most RESPONSE_HEAD_BYTES_MAX.
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (field, value) = line.split_at(colon);
        field
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| value[1..].trim_ascii())
    })
}

/// Whether the head proves the server read our key (§4.1, the client's
/// fourth check on the response).
pub fn accept_matches(head: &[u8], key_base64: &str) -> bool {
    header_value(head, "sec-websocket-accept") == Some(accept_key(key_base64).as_bytes())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::handshake::{parse_request, validate_upgrade, HandshakeLimits};

    /// RFC 6455 §1.3's sample nonce, key and accept value.
    const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn key_is_the_base64_of_the_nonce() {
        assert_eq!(websocket_key(b"the sample nonce"), SAMPLE_KEY);
        let key = websocket_key(&[0xff; 16]);
        assert_eq!((key.len(), key.ends_with("==")), (24, true));
    }

    #[test]
    fn request_has_every_header_and_the_server_accepts_it() {
        let request = upgrade_request(
            "127.0.0.1:8080",
            "/ws?x=1",
            SAMPLE_KEY,
            "Authorization: Bearer TOK\r\n",
        );
        assert!(request.starts_with("GET /ws?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        for header in [
            "Upgrade: websocket\r\n",
            "Connection: Upgrade\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "Sec-WebSocket-Version: 13\r\n",
            "Authorization: Bearer TOK\r\n",
        ] {
            assert!(request.contains(header), "{header}");
        }
        assert!(request.ends_with("TOK\r\n\r\n"));
        // The server's own parser takes it whole and answers our key.
        let limits = HandshakeLimits {
            header_bytes_max: 4096,
            headers_max: 32,
        };
        let (parsed, consumed) = parse_request(request.as_bytes(), &limits).unwrap().unwrap();
        assert_eq!(consumed, request.len());
        assert_eq!(validate_upgrade(&parsed).as_deref(), Ok(SAMPLE_ACCEPT));
        assert!(upgrade_request("h", "/", "K", "").ends_with("Version: 13\r\n\r\n"));
    }

    const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn head_at_every_split_is_incomplete_until_whole() {
        for cut in 0..SWITCHING.len() {
            assert_eq!(
                parse_response_head(&SWITCHING[..cut]),
                Ok(None),
                "cut {cut}"
            );
        }
        assert_eq!(parse_response_head(SWITCHING), Ok(Some(SWITCHING.len())));
        let mut with_frame = SWITCHING.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_response_head(&with_frame), Ok(Some(SWITCHING.len())));
    }

    #[test]
    fn accept_header_is_checked() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     sec-websocket-accept :  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(accept_matches(head, SAMPLE_KEY));
        assert!(!accept_matches(head, "AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!accept_matches(SWITCHING, SAMPLE_KEY));
        assert_eq!(header_value(head, "Upgrade"), Some(&b"websocket"[..]));
    }

    #[test]
    fn head_rejects_other_statuses_with_the_status_line() {
        let head = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        let refused = ResponseHeadError::NotSwitching("HTTP/1.1 401 Unauthorized".into());
        for cut in 0..head.len() {
            // Refused only once the head is whole: until then, read more.
            assert_eq!(parse_response_head(&head[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(parse_response_head(head), Err(refused));
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 1010 x\r\n\r\n"),
            Err(ResponseHeadError::NotSwitching(_))
        ));
        let garbage = [b"\x01".repeat(500), b"\r\n\r\n".to_vec()].concat();
        assert_eq!(
            parse_response_head(&garbage),
            Err(ResponseHeadError::NotSwitching("?".repeat(120)))
        );
        assert_eq!(
            parse_response_head(&[b'a'; RESPONSE_HEAD_BYTES_MAX]),
            Err(ResponseHeadError::TooLarge)
        );
    }
}
