//! Tests of upgrade-request parsing and validation, and of each response's bytes.

use super::*;

/// RFC 6455 §1.2's sample handshake, with a query and a token.
const SAMPLE: &str = "GET /chat?token=abc.def&since=7%3A42 HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Extensions: x-foo\r\n\
    Authorization: Bearer xyz\r\n\
    \r\n";

/// Parses `bytes` at every length: every prefix shorter than the head
/// must be "need more" or the same error as the whole.
fn parse_all_prefixes(
    bytes: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request, usize)>, ParseError> {
    let whole = parse_request(bytes, limits);
    let needed = match &whole {
        Ok(Some((_, consumed))) => *consumed,
        _ => bytes.len(),
    };
    for length in 0..needed {
        match (parse_request(&bytes[..length], limits), &whole) {
            (Ok(None), _) => {}
            (Err(prefix_error), Err(whole_error)) => assert_eq!(&prefix_error, whole_error),
            (prefix, _) => panic!("prefix {length}: {prefix:?} vs whole {whole:?}"),
        }
    }
    whole
}

fn parse_sample(text: &str) -> Request {
    let limits = HandshakeLimits::default();
    let (request, consumed) = parse_all_prefixes(text.as_bytes(), &limits)
        .unwrap()
        .unwrap();
    assert_eq!(consumed, text.len());
    request
}

#[test]
fn rfc_sample_accept_key() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn parses_the_sample_at_every_split() {
    let request = parse_sample(SAMPLE);
    assert_eq!(
        request,
        Request {
            method: "GET".into(),
            path: "/chat".into(),
            query: "token=abc.def&since=7%3A42".into(),
            upgrade_websocket: true,
            ws_version: Some("13".into()),
            ws_key: Some("dGhlIHNhbXBsZSBub25jZQ==".into()),
            authorization: Some("Bearer xyz".into()),
            origin: Some("http://example.com".into()),
            last_event_id: None,
            ws_protocols: vec!["chat".into(), "superchat".into()],
            ws_extensions: vec![
                "permessage-deflate; client_max_window_bits".into(),
                "x-foo".into()
            ],
            http_minor_version: 1,
            has_host: true,
        }
    );
    assert_eq!(
        validate_upgrade(&request).as_deref(),
        Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn consumed_stops_at_the_head() {
    // A client may send its first frame right behind the request.
    let mut bytes = SAMPLE.as_bytes().to_vec();
    bytes.extend_from_slice(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
    let (_, consumed) = parse_request(&bytes, &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(consumed, SAMPLE.len());
}

#[test]
fn header_names_and_tokens_are_case_insensitive() {
    let request = parse_sample(
        "GET /ws HTTP/1.1\r\nHOST: x\r\nupgrade: WebSocket\r\n\
         connection: keep-alive, UPGRADE\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         SEC-WEBSOCKET-VERSION: 13\r\n\r\n",
    );
    assert!(request.upgrade_websocket);
    assert_eq!(request.query, "");
    assert!(validate_upgrade(&request).is_ok());
}

#[test]
fn repeated_protocol_headers_add_up() {
    let request = parse_sample(
        "GET / HTTP/1.1\r\nSec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b, ,c\r\n\r\n",
    );
    assert_eq!(request.ws_protocols, ["a", "b", "c"]);
}

#[test]
fn upgrade_needs_both_headers() {
    let only_upgrade = parse_sample("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
    assert!(!only_upgrade.upgrade_websocket);
    let only_connection = parse_sample("GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n");
    assert!(!only_connection.upgrade_websocket);
    // "upgrade" must be a whole token, not a substring.
    let substring =
        parse_sample("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: noupgrade\r\n\r\n");
    assert!(!substring.upgrade_websocket);
}

#[test]
fn plain_get_parses() {
    let request = parse_sample("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/");
    assert!(!request.upgrade_websocket);
    assert_eq!(validate_upgrade(&request), Err(UpgradeError::NotUpgrade));
}

fn upgrade_request() -> Request {
    parse_sample(SAMPLE)
}

#[test]
fn each_upgrade_error() {
    let cases: Vec<(Request, UpgradeError, u16)> = vec![
        (
            Request {
                method: "POST".into(),
                ..upgrade_request()
            },
            UpgradeError::NotGet,
            405,
        ),
        (
            Request {
                has_host: false,
                ..upgrade_request()
            },
            UpgradeError::MissingHost,
            400,
        ),
        (
            Request {
                http_minor_version: 0,
                ..upgrade_request()
            },
            UpgradeError::OldHttp,
            400,
        ),
        (
            Request {
                upgrade_websocket: false,
                ..upgrade_request()
            },
            UpgradeError::NotUpgrade,
            400,
        ),
        (
            Request {
                ws_version: Some("8".into()),
                ..upgrade_request()
            },
            UpgradeError::BadVersion,
            426,
        ),
        (
            Request {
                ws_version: None,
                ..upgrade_request()
            },
            UpgradeError::BadVersion,
            426,
        ),
        (
            Request {
                ws_key: None,
                ..upgrade_request()
            },
            UpgradeError::MissingKey,
            400,
        ),
        (
            Request {
                // 15 bytes.
                ws_key: Some("AAAAAAAAAAAAAAAAAAAA".into()),
                ..upgrade_request()
            },
            UpgradeError::BadKey,
            400,
        ),
        (
            Request {
                // 17 bytes.
                ws_key: Some("AAAAAAAAAAAAAAAAAAAAAAA=".into()),
                ..upgrade_request()
            },
            UpgradeError::BadKey,
            400,
        ),
        (
            Request {
                ws_key: Some("not base64 at all!!!!!==".into()),
                ..upgrade_request()
            },
            UpgradeError::BadKey,
            400,
        ),
    ];
    for (request, error, status) in cases {
        assert_eq!(validate_upgrade(&request), Err(error));
        assert_eq!(error.http_status(), status);
        let response = String::from_utf8(error.response()).unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{response}"
        );
        assert!(response.ends_with(&format!("\r\n\r\n{}\n", error.reason())));
    }
    let version = String::from_utf8(UpgradeError::BadVersion.response()).unwrap();
    assert!(
        version.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{version}"
    );
    let method = String::from_utf8(UpgradeError::NotGet.response()).unwrap();
    assert!(method.contains("\r\nAllow: GET\r\n"), "{method}");
}

#[test]
fn http_1_0_parses_then_fails_validation() {
    let request = parse_sample(
        "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(request.http_minor_version, 0);
    assert_eq!(validate_upgrade(&request), Err(UpgradeError::OldHttp));
}

/// A complete head of exactly `length` bytes, padded with one header.
fn head_of_length(length: usize) -> Vec<u8> {
    let prefix = "GET / HTTP/1.1\r\nX-Pad: ";
    let suffix = "\r\n\r\n";
    let pad = length - prefix.len() - suffix.len();
    format!("{prefix}{}{suffix}", "p".repeat(pad)).into_bytes()
}

#[test]
fn header_bytes_limit() {
    let limits = HandshakeLimits {
        header_bytes_max: 200,
        headers_max: 8,
    };
    let at_limit = head_of_length(200);
    let (_, consumed) = parse_all_prefixes(&at_limit, &limits).unwrap().unwrap();
    assert_eq!(consumed, 200);

    let over = head_of_length(201);
    assert_eq!(
        parse_all_prefixes(&over, &limits),
        Err(ParseError::HeaderTooLarge)
    );
    // Decided as soon as 200 bytes hold no complete head...
    assert_eq!(
        parse_request(&over[..200], &limits),
        Err(ParseError::HeaderTooLarge)
    );
    // ...and not before.
    assert_eq!(parse_request(&over[..199], &limits), Ok(None));
    assert_eq!(ParseError::HeaderTooLarge.http_status(), 431);
    let response = String::from_utf8(ParseError::HeaderTooLarge.response()).unwrap();
    assert!(response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

#[test]
fn headers_count_limit() {
    let limits = HandshakeLimits {
        header_bytes_max: 8192,
        headers_max: 4,
    };
    let four = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert!(parse_all_prefixes(four.as_bytes(), &limits)
        .unwrap()
        .is_some());
    let five = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
    assert_eq!(
        parse_all_prefixes(five.as_bytes(), &limits),
        Err(ParseError::HeaderTooLarge)
    );
}

#[test]
fn malformed_requests() {
    let limits = HandshakeLimits::default();
    for bytes in [
        &b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET / HTTP/1.1\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Key: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nOrigin: \xff\xfe\r\n\r\n",
    ] {
        let error = parse_all_prefixes(bytes, &limits).unwrap_err();
        assert!(
            matches!(error, ParseError::Malformed(_)),
            "{bytes:02x?}: {error:?}"
        );
        assert_eq!(error.http_status(), 400);
    }
}

#[test]
fn query_param_decoding() {
    let query = "token=a%2Eb%2Bc&since=7%3A42&name=J+Doe&flag&token=second&e%6Dpty=";
    assert_eq!(query_param(query, "token").as_deref(), Some("a.b+c"));
    assert_eq!(query_param(query, "since").as_deref(), Some("7:42"));
    assert_eq!(query_param(query, "name").as_deref(), Some("J Doe"));
    assert_eq!(query_param(query, "flag").as_deref(), Some(""));
    assert_eq!(query_param(query, "empty").as_deref(), Some(""));
    assert_eq!(query_param(query, "missing"), None);
    assert_eq!(query_param("", "token"), None);
    // Undecoded values borrow from the query.
    assert!(matches!(
        query_param("token=plain", "token"),
        Some(Cow::Borrowed("plain"))
    ));
    // Invalid UTF-8 is replaced, not an error.
    assert_eq!(query_param("t=%ff", "t").as_deref(), Some("\u{fffd}"));
}

#[test]
fn response_101_shape() {
    let response =
        String::from_utf8(response_101("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None, None)).unwrap();
    assert_eq!(
        response,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    let response = String::from_utf8(response_101("x", Some("chat"), None)).unwrap();
    let deflate =
        String::from_utf8(response_101("x", None, Some("permessage-deflate; a"))).unwrap();
    assert!(
        deflate.ends_with("Sec-WebSocket-Extensions: permessage-deflate; a\r\n\r\n"),
        "{deflate}"
    );
    assert!(response.ends_with("Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: chat\r\n\r\n"));
}

#[test]
fn response_error_shape() {
    let response =
        String::from_utf8(response_error(429, "slow down", &[("Retry-After", "5")])).unwrap();
    assert_eq!(
        response,
        "HTTP/1.1 429 Too Many Requests\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 10\r\n\
         Connection: close\r\n\
         Retry-After: 5\r\n\
         \r\n\
         slow down\n"
    );
    // A body that already ends its line gets no second newline.
    let response = String::from_utf8(response_error(404, "no such page\n", &[])).unwrap();
    assert!(response.ends_with("Content-Length: 13\r\nConnection: close\r\n\r\nno such page\n"));
}

#[test]
fn response_content_shape() {
    let response = response_content(200, "text/html; charset=utf-8", b"<h1>hi</h1>");
    assert_eq!(
        String::from_utf8(response).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: 11\r\nConnection: close\r\n\r\n<h1>hi</h1>"
    );
}
