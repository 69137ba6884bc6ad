//! The admin listener's HTTP/1.1: one request per connection (the answer
//! closes it). Pure: bytes in, a request or a refusal out.

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

pub fn parse(buf: &[u8], head_bytes_max: usize, body_bytes_max: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= head_bytes_max => n,
        Ok(httparse::Status::Complete(_)) => {
            return Parsed::Refuse(handshake::response_error(
                431,
                "request head too large",
                &[],
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() > head_bytes_max => {
            return Parsed::Refuse(handshake::response_error(
                431,
                "request head too large",
                &[],
            ))
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refuse(handshake::response_error(431, "too many headers", &[]))
        }
        Err(e) => {
            return Parsed::Refuse(handshake::response_error(
                400,
                &format!("malformed request: {e}"),
                &[],
            ))
        }
    };
    let mut content_length: Option<usize> = None;
    let mut bearer = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                // RFC 9112 §6.3: a second Content-Length is a request
                // smuggling hazard; refuse rather than pick one.
                Some(n) if content_length.is_none() => content_length = Some(n),
                Some(_) => {
                    return Parsed::Refuse(handshake::response_error(
                        400,
                        "more than one Content-Length",
                        &[],
                    ))
                }
                None => {
                    return Parsed::Refuse(handshake::response_error(
                        400,
                        "bad Content-Length",
                        &[],
                    ))
                }
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            let value = String::from_utf8_lossy(h.value);
            if let Some((scheme, token)) = value.trim().split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") {
                    bearer = Some(token.trim().to_string());
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refuse(handshake::response_error(
                411,
                "send the body with Content-Length",
                &[],
            ));
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > body_bytes_max {
        return Parsed::Refuse(handshake::response_error(
            413,
            &format!("body of {content_length} bytes; the limit is {body_bytes_max}"),
            &[],
        ));
    }
    if buf.len() < head_len + content_length {
        return Parsed::Incomplete;
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Request(AdminRequest {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        bearer,
        body: buf[head_len..head_len + content_length].to_vec(),
    })
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
}
