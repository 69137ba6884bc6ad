//! The admin listener's HTTP/1.1: one request per connection (the answer
//! closes it). Pure: bytes in, a request or a refusal out.

use crate::auth;
use crate::ws::handshake;

/// Header lines accepted in one admin request.
const HEADERS_MAX: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub struct AdminRequest {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    /// The complete HTTP error response to send.
    Refuse(Vec<u8>),
    Request(AdminRequest),
}

/// A request head read in full (its body may still be on its way).
#[derive(Debug, PartialEq, Eq)]
pub struct AdminHead {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// Bytes of the head, and of the body it announces.
    pub head_bytes: usize,
    pub body_bytes: usize,
}

/// The request head in `buf`: `Ok(None)` while it is incomplete, the exact
/// refusal if it cannot be served. Lets the caller authenticate a request
/// before its body arrives.
pub fn parse_head(
    buf: &[u8],
    head_bytes_max: usize,
    body_bytes_max: usize,
) -> Result<Option<AdminHead>, Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= head_bytes_max => n,
        Ok(httparse::Status::Complete(_)) => {
            return Err(handshake::response_error(
                431,
                "request head too large",
                &[],
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() > head_bytes_max => {
            return Err(handshake::response_error(
                431,
                "request head too large",
                &[],
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(handshake::response_error(431, "too many headers", &[]))
        }
        Err(e) => {
            return Err(handshake::response_error(
                400,
                &format!("malformed request: {e}"),
                &[],
            ))
        }
    };
    let mut content_length: Option<usize> = None;
    let mut authorization: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3: a second Content-Length, even an equal one, is
            // a request smuggling hazard; refuse rather than pick one.
            if content_length.is_some() {
                return Err(handshake::response_error(
                    400,
                    "more than one Content-Length",
                    &[],
                ));
            }
            match content_length_value(h.value) {
                Some(n) => content_length = Some(n),
                None => {
                    return Err(handshake::response_error(
                        400,
                        "bad Content-Length: it must be decimal digits only",
                        &[],
                    ))
                }
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            // Two credentials: which one authenticates? Refused, as on the
            // client listener.
            if authorization.is_some() {
                return Err(handshake::response_error(
                    400,
                    "more than one Authorization",
                    &[],
                ));
            }
            authorization = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(handshake::response_error(
                411,
                "send the body with Content-Length",
                &[],
            ));
        }
    }
    // The same rule as the client listener's: `Bearer` 1*SP b64token.
    let bearer = authorization
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(auth::bearer_token)
        .map(str::to_owned);
    let content_length = content_length.unwrap_or(0);
    if content_length > body_bytes_max {
        return Err(handshake::response_error(
            413,
            &format!("body of {content_length} bytes; the limit is {body_bytes_max}"),
            &[],
        ));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(AdminHead {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        bearer,
        head_bytes: head_len,
        body_bytes: content_length,
    }))
}

/// The whole request in `buf`, once its body has arrived.
pub fn parse(buf: &[u8], head_bytes_max: usize, body_bytes_max: usize) -> Parsed {
    let head = match parse_head(buf, head_bytes_max, body_bytes_max) {
        Ok(Some(head)) => head,
        Ok(None) => return Parsed::Incomplete,
        Err(response) => return Parsed::Refuse(response),
    };
    let end = head.head_bytes + head.body_bytes;
    if buf.len() < end {
        return Parsed::Incomplete;
    }
    Parsed::Request(AdminRequest {
        body: buf[head.head_bytes..end].to_vec(),
        method: head.method,
        path: head.path,
        query: head.query,
        bearer: head.bearer,
    })
}

fn content_length_value(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A JSON response.
pub fn json(status: u16, body: &str) -> Vec<u8> {
    handshake::response_content(status, "application/json", body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_with_body_at_every_split() {
        let raw = b"POST /v1/push?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t0k\r\nContent-Length: 5\r\n\r\nhello";
        for split in 0..raw.len() {
            assert_eq!(
                parse(&raw[..split], 4096, 1024),
                Parsed::Incomplete,
                "{split}"
            );
        }
        assert_eq!(
            parse(raw, 4096, 1024),
            Parsed::Request(AdminRequest {
                method: "POST".into(),
                path: "/v1/push".into(),
                query: "x=1".into(),
                bearer: Some("t0k".into()),
                body: b"hello".to_vec(),
            })
        );
    }

    fn status(p: Parsed) -> String {
        match p {
            Parsed::Refuse(r) => String::from_utf8(r).unwrap()[9..12].to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(status(parse(b"GARBAGE\x01\r\n\r\n", 4096, 10)), "400");
        assert_eq!(
            status(parse(
                b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n",
                4096,
                10
            )),
            "413"
        );
        assert_eq!(
            status(parse(
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                4096,
                10
            )),
            "400"
        );
        assert_eq!(
            status(parse(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                4096,
                10
            )),
            "411"
        );
        assert_eq!(status(parse(&[b'a'; 5000], 4096, 10)), "431");
        let long = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(5000));
        assert_eq!(status(parse(long.as_bytes(), 4096, 10)), "431");
        let complete = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(5000));
        assert_eq!(status(parse(complete.as_bytes(), 4096, 10)), "431");
        let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(status(parse(two, 4096, 10)), "400");
    }

    /// RFC 9110 §8.6: digits only. `+3` used to parse as 3 (Rust's integer
    /// parser takes a sign), so a front end that reads it differently
    /// could disagree with us on where the body ends.
    #[test]
    fn content_length_is_digits_only_and_never_repeated() {
        let with = |lengths: &str| {
            let raw = format!("POST / HTTP/1.1\r\n{lengths}\r\nabc");
            status(parse(raw.as_bytes(), 4096, 10))
        };
        for bad in [
            "Content-Length: +3\r\n",
            "Content-Length: -3\r\n",
            "Content-Length: 3, 3\r\n",
            "Content-Length: 0x3\r\n",
            "Content-Length: 3 3\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "Content-Length: 3\r\nContent-Length: +3\r\n",
            "Content-Length: 3\r\ncontent-length: 4\r\n",
        ] {
            assert_eq!(with(bad), "400", "{bad:?}");
        }
        // Leading zeros are digits; surrounding whitespace is the field's.
        for good in [
            "Content-Length: 3\r\n",
            "Content-Length: 003\r\n",
            "Content-Length:  3 \r\n",
        ] {
            let Parsed::Request(r) = parse(
                format!("POST / HTTP/1.1\r\n{good}\r\nabc").as_bytes(),
                4096,
                10,
            ) else {
                panic!("{good:?} refused")
            };
            assert_eq!(r.body, b"abc");
        }
    }

    /// One rule with the client listener (`auth::bearer_token`): spaces
    /// only after `Bearer`. A tab used to be refused here but accepted on
    /// the client listener.
    #[test]
    fn bearer_rule_is_the_client_listeners() {
        let bearer = |value: &str| {
            let raw = format!("GET / HTTP/1.1\r\nAuthorization: {value}\r\n\r\n");
            match parse(raw.as_bytes(), 4096, 10) {
                Parsed::Request(r) => r.bearer,
                other => panic!("{other:?}"),
            }
        };
        for value in ["Bearer t0k", "bearer t0k", "BEARER   t0k", "Bearer t0k  "] {
            assert_eq!(bearer(value).as_deref(), Some("t0k"), "{value:?}");
            assert_eq!(
                bearer(value).as_deref(),
                auth::token_from_request(Some(value), None),
                "{value:?}"
            );
        }
        for value in [
            "Bearer\tt0k",
            "Bearer \tt0k",
            "Bearer",
            "Bearert0k",
            "Basic t0k",
            "Bearer t 0k",
        ] {
            assert_eq!(bearer(value), None, "{value:?}");
            assert_eq!(
                auth::token_from_request(Some(value), None),
                None,
                "{value:?}"
            );
        }
        let two = b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n";
        assert_eq!(status(parse(two, 4096, 10)), "400");
    }
}
