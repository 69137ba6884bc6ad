//! The HTTP/1.1 side of a connection: the upgrade request (RFC 6455 §4.2.1)
//! and every response the gateway sends before or instead of a WebSocket.
//!
//! The request is parsed from the bytes received so far; the caller keeps
//! appending and calling again until it gets a request or an error. A
//! [`Request`] is owned and built once per connection, so it may allocate.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use sha1::{Digest, Sha1};

/// Appended to the client's key before hashing it into the accept value
/// (RFC 6455 §1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on the request head, so a client cannot make us buffer or scan
/// without end before it is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// The request line and headers, including the final CRLFCRLF.
    pub header_bytes_max: usize,
    pub headers_max: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            header_bytes_max: 8192,
            headers_max: 64,
        }
    }
}

/// What the gateway needs from a request head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target up to the '?' (the query is not part of it).
    pub path: String,
    /// The raw query string after the '?', "" if none.
    pub query: String,
    /// `Upgrade` lists "websocket" and `Connection` lists "upgrade" (both
    /// case-insensitive, comma-separated lists).
    pub upgrade_websocket: bool,
    pub ws_version: Option<String>,
    pub ws_key: Option<String>,
    pub authorization: Option<String>,
    pub origin: Option<String>,
    /// `Last-Event-ID`: where an `EventSource` reconnecting to `/sse` left off.
    pub last_event_id: Option<String>,
    /// The subprotocols the client offers, in its order.
    pub ws_protocols: Vec<String>,
    /// Each `Sec-WebSocket-Extensions` line, in order (the header may
    /// repeat; together they make one list).
    pub ws_extensions: Vec<String>,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub http_minor_version: u8,
    /// A `Host` header was present (exactly one: a second is malformed).
    pub has_host: bool,
}

/// A request head that cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Over `header_bytes_max` or `headers_max`: answer 431.
    #[error("request header fields too large")]
    HeaderTooLarge,
    /// Not HTTP/1.x: answer 400.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl ParseError {
    pub fn http_status(&self) -> u16 {
        match self {
            Self::HeaderTooLarge => 431,
            Self::Malformed(_) => 400,
        }
    }

    /// The complete response to send before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        response_error(self.http_status(), &self.to_string(), &[])
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet and can still fit the limit.
/// `Ok(Some((request, consumed)))`: `consumed` is the length of the head
/// including the final CRLFCRLF; bytes after it (a pipelined first frame)
/// are the caller's. A head longer than `header_bytes_max`, decided as soon
/// as that many bytes hold no complete head, or with more than `headers_max`
/// headers → [`ParseError::HeaderTooLarge`].
pub fn parse_request(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request, usize)>, ParseError> {
    let window = &buf[..buf.len().min(limits.header_bytes_max)];
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut parsed = httparse::Request::new(&mut headers);
    let consumed = match parsed.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if window.len() < limits.header_bytes_max => return Ok(None),
        // The first header_bytes_max bytes hold no complete head: it is longer.
        Ok(httparse::Status::Partial) => return Err(ParseError::HeaderTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeaderTooLarge),
        Err(error) => return Err(ParseError::Malformed(parse_error_text(error))),
    };
    // httparse fills these in on Complete; stay total rather than unwrap.
    let (Some(method), Some(target), Some(http_minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(ParseError::Malformed("incomplete request line"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        http_minor_version,
        ..Request::default()
    };

    let mut upgrade_lists_websocket = false;
    let mut connection_lists_upgrade = false;
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_lists_websocket |= list_contains(header_text(header)?, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_lists_upgrade |= list_contains(header_text(header)?, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            set_once(
                &mut request.ws_version,
                header,
                "duplicate Sec-WebSocket-Version",
            )?;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            set_once(&mut request.ws_key, header, "duplicate Sec-WebSocket-Key")?;
        } else if name.eq_ignore_ascii_case("authorization") {
            set_once(
                &mut request.authorization,
                header,
                "duplicate Authorization",
            )?;
        } else if name.eq_ignore_ascii_case("origin") {
            set_once(&mut request.origin, header, "duplicate Origin")?;
        } else if name.eq_ignore_ascii_case("last-event-id") {
            set_once(
                &mut request.last_event_id,
                header,
                "duplicate Last-Event-ID",
            )?;
        } else if name.eq_ignore_ascii_case("host") {
            // RFC 9112 §3.2: more than one Host line is a 400.
            if request.has_host {
                return Err(ParseError::Malformed("duplicate Host"));
            }
            request.has_host = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            request.ws_extensions.push(header_text(header)?.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // The header may repeat; its tokens add up (RFC 7230 §3.2.2).
            request
                .ws_protocols
                .extend(list_tokens(header_text(header)?).map(str::to_owned));
        }
    }
    request.upgrade_websocket = upgrade_lists_websocket && connection_lists_upgrade;
    Ok(Some((request, consumed)))
}

fn parse_error_text(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "not HTTP/1.x",
    }
}

fn header_text<'h>(header: &httparse::Header<'h>) -> Result<&'h str, ParseError> {
    std::str::from_utf8(header.value)
        .map(str::trim)
        .map_err(|_| ParseError::Malformed("header value is not UTF-8"))
}

/// Stores a header that may appear only once: a repeat is ambiguous (which
/// key, which token?), so it is refused rather than guessed.
fn set_once(
    slot: &mut Option<String>,
    header: &httparse::Header<'_>,
    duplicate: &'static str,
) -> Result<(), ParseError> {
    if slot.is_some() {
        return Err(ParseError::Malformed(duplicate));
    }
    *slot = Some(header_text(header)?.to_owned());
    Ok(())
}

fn list_tokens(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn list_contains(value: &str, token: &str) -> bool {
    list_tokens(value).any(|candidate| candidate.eq_ignore_ascii_case(token))
}

/// Why a request is not a WebSocket upgrade we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeError {
    NotGet,
    NotUpgrade,
    BadVersion,
    MissingKey,
    BadKey,
    OldHttp,
    MissingHost,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for UpgradeError {}

impl UpgradeError {
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotGet => 405,
            Self::BadVersion => 426,
            Self::NotUpgrade
            | Self::MissingKey
            | Self::BadKey
            | Self::OldHttp
            | Self::MissingHost => 400,
        }
    }

    /// A one-line human explanation for the response body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotGet => "a WebSocket upgrade must use GET",
            Self::NotUpgrade => {
                "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)"
            }
            Self::BadVersion => "unsupported WebSocket version: this server speaks version 13",
            Self::MissingKey => "missing Sec-WebSocket-Key header",
            Self::BadKey => "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
            Self::OldHttp => "a WebSocket upgrade needs HTTP/1.1",
            Self::MissingHost => "missing Host header (RFC 6455 §4.2.1, RFC 9112 §3.2)",
        }
    }

    /// Headers the response must carry: `Allow` with a 405 (RFC 9110
    /// §15.5.6), and the version we speak with a 426 (RFC 6455 §4.2.2).
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::NotGet => &[("Allow", "GET")],
            Self::BadVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }

    /// The complete response to send before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        response_error(self.http_status(), self.reason(), self.extra_headers())
    }
}

/// Checks the request against RFC 6455 §4.2.1 and returns the
/// `Sec-WebSocket-Accept` value for the 101 response.
pub fn validate_upgrade(req: &Request) -> Result<String, UpgradeError> {
    if req.method != "GET" {
        return Err(UpgradeError::NotGet);
    }
    if req.http_minor_version < 1 {
        return Err(UpgradeError::OldHttp);
    }
    if !req.has_host {
        return Err(UpgradeError::MissingHost);
    }
    if !req.upgrade_websocket {
        return Err(UpgradeError::NotUpgrade);
    }
    if req.ws_version.as_deref() != Some("13") {
        return Err(UpgradeError::BadVersion);
    }
    let key = req.ws_key.as_deref().ok_or(UpgradeError::MissingKey)?;
    // 16 bytes are always 24 base64 characters; checking the length first
    // keeps a huge header from being decoded.
    let key_is_16_bytes = key.len() == 24 && BASE64.decode(key).is_ok_and(|raw| raw.len() == 16);
    if !key_is_16_bytes {
        return Err(UpgradeError::BadKey);
    }
    Ok(accept_key(key))
}

/// `base64(sha1(key + GUID))`: proves to the client that this server read
/// its handshake as a WebSocket one (RFC 6455 §4.2.2).
pub fn accept_key(client_key: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(client_key.as_bytes());
    hasher.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(hasher.finalize())
}

/// The value of the first `name` parameter in a query string, percent-decoded
/// with '+' as a space (form encoding, what browsers produce). A parameter
/// without '=' has the value "". Invalid UTF-8 after decoding becomes U+FFFD:
/// a token mangled that way simply fails to verify.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_form_component(key) == name).then(|| decode_form_component(value))
    })
}

fn decode_form_component(component: &str) -> Cow<'_, str> {
    if component.contains('+') {
        // '+' must become a space before percent-decoding, so that "%2B"
        // still decodes to a literal '+'.
        let spaced = component.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(component).decode_utf8_lossy()
    }
}

/// The 101 response that completes the upgrade.
pub fn response_101(accept: &str, protocol: Option<&str>, extensions: Option<&str>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(protocol) = protocol {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(protocol);
        response.push_str("\r\n");
    }
    if let Some(extensions) = extensions {
        response.push_str("Sec-WebSocket-Extensions: ");
        response.push_str(extensions);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// A complete plain-text error response; the connection closes after it.
/// `body` is a one-line human explanation; a final newline is added if it
/// has none.
pub fn response_error(status: u16, body: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = body.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    build_response(
        status,
        "text/plain; charset=utf-8",
        extra_headers,
        text.as_bytes(),
    )
}

/// A complete response with any content (the demo page); the connection
/// closes after it, like after an error.
pub fn response_content(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    build_response(status, content_type, &[], body)
}

fn build_response(
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        // Header text comes from our code, never from a peer; a line break
        // in it would split the response.
        debug_assert!(!name.contains(['\r', '\n']) && !value.contains(['\r', '\n']));
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(body);
    response
}

/// The standard reason phrase (RFC 9110 §15, RFC 6585 for 429 and 431).
fn reason_phrase(status: u16) -> &'static str {
    standard_reason_phrase(status).unwrap_or(match status {
        // The phrase is informational (RFC 9110 §4); clients go by the code.
        100..=199 => "Informational",
        200..=299 => "Success",
        300..=399 => "Redirection",
        400..=499 => "Client Error",
        _ => "Server Error",
    })
}

fn standard_reason_phrase(status: u16) -> Option<&'static str> {
    let phrase = match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    };
    Some(phrase)
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
