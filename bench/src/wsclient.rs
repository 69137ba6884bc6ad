//! The client side of pushgate's v1 upgrade as pure functions over bytes:
//! build the request, recognise the response head, parse server frames,
//! build a masked pong. No I/O here, so every case is a unit test.

use pushgate::ws::handshake::accept_key;

/// The whole `101` head must fit in this; a server that sends more is broken.
pub const RESPONSE_HEAD_MAX_BYTES: usize = 4096;
/// The welcome message is tens of bytes; anything near this is not a welcome.
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 16 * 1024;
/// RFC 6455 §5.5: control frames carry at most 125 payload bytes.
pub const CONTROL_PAYLOAD_MAX_BYTES: usize = 125;

pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// `GET /ws` with the token in the Authorization header (the non-browser
/// form of the v1 protocol).
pub fn upgrade_request(host: &str, key_base64: &str, token: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key_base64}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\
         \r\n"
    )
    .into_bytes()
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// No `\r\n\r\n` within [`RESPONSE_HEAD_MAX_BYTES`].
    TooLarge,
    /// The status line, when it is not `HTTP/1.1 101`.
    NotSwitching(String),
}

/// Looks for the end of the response head in `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(n))`: the head is `buf[..n]`
/// and its status is 101; bytes after it already belong to the first frame.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<usize>, HeadError> {
    let window = &buf[..buf.len().min(RESPONSE_HEAD_MAX_BYTES)];
    let Some(end) = find(window, b"\r\n\r\n") else {
        return if buf.len() >= RESPONSE_HEAD_MAX_BYTES {
            Err(HeadError::TooLarge)
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
        return Err(HeadError::NotSwitching(printable(status_line, 120)));
    }
    Ok(Some(end + 4))
}

/// The value of header `name` (case-insensitive) in a response head, trimmed.
pub fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // Bounded by the head, itself at most RESPONSE_HEAD_MAX_BYTES.
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (field, value) = line.split_at(colon);
        field
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| value[1..].trim_ascii())
    })
}

/// Whether the head proves the server read our key (RFC 6455 §4.1, step 4 of
/// the client's checks), with the server's own `accept_key`.
pub fn accept_matches(head: &[u8], key_base64: &str) -> bool {
    header_value(head, "sec-websocket-accept") == Some(accept_key(key_base64).as_bytes())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Lossy, length-capped text for a failure reason, so a garbage reply cannot
/// blow up the report.
fn printable(bytes: &[u8], chars_max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(chars_max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// RFC 6455 §5.1: a client must fail a connection whose server masks.
    Masked,
    /// RSV bits set without a negotiated extension.
    Reserved,
    TooLarge(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Masked => write!(f, "server frame is masked"),
            FrameError::Reserved => write!(f, "server frame sets RSV bits"),
            FrameError::TooLarge(n) => write!(f, "server frame of {n} bytes"),
        }
    }
}

/// Parses one server frame from the front of `buf`.
///
/// `Ok(None)`: incomplete. `Ok(Some((frame, n)))`: the frame took `buf[..n]`.
pub fn parse_frame(
    buf: &[u8],
    payload_max_bytes: usize,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, header_bytes) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(ext) => (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(ext) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(ext);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > payload_max_bytes as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let total = header_bytes + len as usize;
    let Some(payload) = buf.get(header_bytes..total) else {
        return Ok(None);
    };
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload,
    };
    Ok(Some((frame, total)))
}

/// Accepts exactly the v1 welcome: a JSON object whose `type` is `welcome`.
pub fn check_welcome(payload: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("welcome is not JSON: {e}"))?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("welcome") => Ok(()),
        _ => Err(format!(
            "first message is not a welcome: {}",
            printable(payload, 80)
        )),
    }
}

/// `code reason` from a close frame's payload (RFC 6455 §5.5.1).
pub fn describe_close(payload: &[u8]) -> String {
    match payload {
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let reason = printable(reason, 80);
            if reason.is_empty() {
                format!("{code}")
            } else {
                format!("{code} {reason}")
            }
        }
        _ => "no code".to_string(),
    }
}

/// A masked client frame carrying a control payload (≤ 125 bytes), e.g. the
/// pong that answers a ping with the same payload.
pub fn masked_control_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Option<Vec<u8>> {
    if payload.len() > CONTROL_PAYLOAD_MAX_BYTES {
        return None;
    }
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    frame.push(0x80 | payload.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Some(frame)
}

/// Standard base64 with padding (RFC 4648 §4); enough for a 16-byte key.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[*s as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// xorshift64*: fast, non-cryptographic. The key and masks only need to
/// differ between connections (RFC 6455 nonces against proxy caches); the
/// seed comes from the kernel.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
    pub fn websocket_key(&mut self) -> String {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        key[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        base64_encode(&key)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        let bytes = self.next_u64().to_le_bytes();
        [bytes[0], bytes[1], bytes[2], bytes[3]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input), expected);
        }
        // The RFC 6455 §1.3 sample nonce.
        assert_eq!(
            base64_encode(b"the sample nonce"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
    }

    #[test]
    fn keys_are_24_chars_and_differ() {
        let mut rng = Rng::new(7);
        let a = rng.websocket_key();
        let b = rng.websocket_key();
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("=="));
        assert_ne!(a, b);
    }

    #[test]
    fn request_has_every_header() {
        let req = String::from_utf8(upgrade_request("127.0.0.1:8080", "KEY", "TOK")).unwrap();
        assert!(req.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        for header in [
            "Upgrade: websocket\r\n",
            "Connection: Upgrade\r\n",
            "Sec-WebSocket-Key: KEY\r\n",
            "Sec-WebSocket-Version: 13\r\n",
            "Authorization: Bearer TOK\r\n",
        ] {
            assert!(req.contains(header), "{header}");
        }
        assert!(req.ends_with("\r\n\r\n"));
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
        // RFC 6455 §1.3's sample key and accept value.
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     sec-websocket-accept :  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(accept_matches(head, "dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!accept_matches(head, "AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!accept_matches(SWITCHING, "dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(header_value(head, "Upgrade"), Some(&b"websocket"[..]));
    }

    #[test]
    fn head_rejects_other_statuses_with_the_status_line() {
        let head = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response_head(head),
            Err(HeadError::NotSwitching("HTTP/1.1 401 Unauthorized".into()))
        );
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 1010 x\r\n\r\n"),
            Err(HeadError::NotSwitching(_))
        ));
        assert_eq!(
            parse_response_head(&[b'a'; RESPONSE_HEAD_MAX_BYTES]),
            Err(HeadError::TooLarge)
        );
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_of_each_length_form_parse_at_every_split() {
        for len in [0usize, 5, 125, 126, 300, 0x1_0000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = server_frame(OPCODE_TEXT, &payload);
            for cut in 0..wire.len() {
                assert_eq!(
                    parse_frame(&wire[..cut], 1 << 20),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
            let (frame, used) = parse_frame(&wire, 1 << 20).unwrap().unwrap();
            assert_eq!(used, wire.len());
            assert!(frame.fin);
            assert_eq!(frame.opcode, OPCODE_TEXT);
            assert_eq!(frame.payload, &payload[..]);
        }
    }

    #[test]
    fn frame_errors() {
        assert_eq!(
            parse_frame(&[0x81, 0x81, 0, 0, 0, 0, 0], 100),
            Err(FrameError::Masked)
        );
        assert_eq!(parse_frame(&[0xc1, 0x00], 100), Err(FrameError::Reserved));
        assert_eq!(
            parse_frame(&server_frame(OPCODE_TEXT, &[0; 200]), 100),
            Err(FrameError::TooLarge(200))
        );
    }

    #[test]
    fn welcome_is_recognised() {
        assert_eq!(
            check_welcome(br#"{"type":"welcome","user":"x","epoch":1,"seq":0}"#),
            Ok(())
        );
        assert!(check_welcome(br#"{"type":"push","seq":1}"#).is_err());
        assert!(check_welcome(b"welcome").is_err());
    }

    #[test]
    fn close_is_described() {
        let mut payload = 1008u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bad token");
        assert_eq!(describe_close(&payload), "1008 bad token");
        assert_eq!(describe_close(&[]), "no code");
    }

    #[test]
    fn pong_is_masked_and_unmasks_to_the_ping_payload() {
        let mask = [1, 2, 3, 4];
        let frame = masked_control_frame(OPCODE_PONG, b"hello", mask).unwrap();
        assert_eq!(frame[0], 0x80 | OPCODE_PONG);
        assert_eq!(frame[1], 0x80 | 5);
        assert_eq!(&frame[2..6], &mask);
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
        assert!(masked_control_frame(OPCODE_PONG, &[0; 126], mask).is_none());
    }
}
