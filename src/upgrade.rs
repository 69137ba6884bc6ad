//! Deciding a request on the client listener: pure (bytes, secret and the
//! time in; a verdict out). A device connects with a WebSocket upgrade on
//! `/ws` or a Server-Sent Events stream on `/sse` (for networks that break
//! WebSocket); both carry the same token and resume position. Every
//! refusal carries the exact HTTP response to send and a reason for the log.

use crate::auth::{self, Secret};
use crate::ws::deflate_offer::{self, Agreement};
use crate::ws::handshake::{self, HandshakeLimits, ParseError, Request};

/// The path WebSocket clients connect to.
pub const WS_PATH: &str = "/ws";
/// The path Server-Sent Events clients connect to.
pub const SSE_PATH: &str = "/sse";
/// Where the browser SDK (sdk/pushgate.js) is served, for pages that load
/// it straight from the gateway.
pub const SDK_PATH: &str = "/pushgate.js";
/// The browser SDK, built in.
pub const SDK_JS: &[u8] = include_bytes!("../sdk/pushgate.js");

/// Where a reconnecting client left off: `?since=<epoch>:<seq>` (or, on
/// `/sse`, `Last-Event-ID: <epoch>:<seq>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Since {
    pub epoch: u64,
    pub seq: u64,
}

impl Since {
    /// A position that was sent but cannot be read. It is answered like a
    /// position from an unknown epoch — a welcome with `recovered:false`,
    /// so the client resets — rather than with a 400, which a browser's
    /// WebSocket cannot see and would retry forever. No epoch is
    /// `u64::MAX` and no seq reaches it, so it is never recovered.
    pub const UNREADABLE: Since = Since {
        epoch: u64::MAX,
        seq: u64::MAX,
    };

    pub fn parse(text: &str) -> Option<Since> {
        let (epoch, seq) = text.split_once(':')?;
        Some(Since {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// A position the client sent: read, or [`Since::UNREADABLE`].
    fn from_client(text: &str) -> Since {
        Since::parse(text).unwrap_or(Since::UNREADABLE)
    }
}

/// How an accepted device is spoken to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket {
        /// The Sec-WebSocket-Accept value for the 101 response.
        accept_key: String,
        /// `?heartbeat=1`: the server's pings are text messages
        /// `{"type":"ping"}` the client answers with any message, because a
        /// browser's WebSocket API hides ping frames from the page.
        text_heartbeat: bool,
        /// permessage-deflate was offered and accepted (server `deflate`).
        deflate: Option<Agreement>,
    },
    /// `GET /sse`: a `text/event-stream` response (see `crate::sse`).
    Sse,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub user: String,
    pub transport: Transport,
    pub since: Option<Since>,
    /// Bytes of the request head; anything after it is already WebSocket
    /// data (or, on SSE, bytes that are ignored).
    pub consumed: usize,
}

/// What the client listener serves besides `/ws`, `/sse` and the SDK.
#[derive(Clone, Copy, Debug, Default)]
pub struct Site {
    /// `GET /`: the demo page.
    pub page: &'static [u8],
    /// `GET /dev/token?user=U` mints a one-hour token. Development only:
    /// anyone who can reach the port can then act as any user.
    pub dev_tokens: bool,
    /// Accept permessage-deflate offers on `/ws` (config `deflate`).
    pub deflate: bool,
}

/// Lifetime of a token minted by `/dev/token`.
const DEV_TOKEN_TTL_S: u64 = 3600;

/// Lets pages of any origin read an SSE answer or load the SDK: tokens
/// travel in the URL or a header, never in a cookie, so nothing is exposed.
const ANY_ORIGIN: (&str, &str) = ("Access-Control-Allow-Origin", "*");

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request head has not fully arrived (and is within the limit).
    Incomplete,
    Refuse {
        status: u16,
        /// The complete HTTP response, ready to send before closing.
        response: Vec<u8>,
        /// Why, for the log line.
        reason: String,
    },
    Accept(Accepted),
    /// A plain HTTP answer (the demo page, a dev token), then close.
    Serve(Vec<u8>),
}

fn refuse(status: u16, reason: &str, extra: &[(&str, &str)]) -> Verdict {
    Verdict::Refuse {
        status,
        response: handshake::response_error(status, reason, extra),
        reason: reason.to_string(),
    }
}

/// Judges the bytes received so far on a new connection.
pub fn evaluate(
    buf: &[u8],
    limits: &HandshakeLimits,
    secret: &Secret,
    now_unix_s: u64,
    site: &Site,
) -> Verdict {
    let (request, consumed) = match handshake::parse_request(buf, limits) {
        Ok(None) => return Verdict::Incomplete,
        Ok(Some(parsed)) => parsed,
        Err(e @ ParseError::HeaderTooLarge) => {
            return refuse(e.http_status(), "request header section too large", &[])
        }
        Err(ParseError::Malformed(what)) => {
            return refuse(400, &format!("malformed HTTP request: {what}"), &[])
        }
    };
    match (request.method.as_str(), request.path.as_str()) {
        (_, WS_PATH) => websocket(&request, consumed, secret, now_unix_s, site.deflate),
        (_, SSE_PATH) => event_stream(&request, consumed, secret, now_unix_s),
        ("GET", SDK_PATH) => Verdict::Serve(sdk_response()),
        ("GET", "/") if !site.page.is_empty() => Verdict::Serve(handshake::response_content(
            200,
            "text/html; charset=utf-8",
            site.page,
        )),
        ("GET", "/dev/token") if site.dev_tokens => {
            let user = handshake::query_param(&request.query, "user").unwrap_or_default();
            if let Err(e) = auth::check_user_id(&user) {
                return refuse(400, &format!("user: {}", e.reason()), &[]);
            }
            let token = auth::mint(secret, &user, DEV_TOKEN_TTL_S, now_unix_s);
            let body = format!(
                r#"{{"user":{},"token":"{token}"}}"#,
                serde_json::Value::from(user.as_ref())
            );
            Verdict::Serve(handshake::response_content(
                200,
                "application/json",
                body.as_bytes(),
            ))
        }
        _ => refuse(
            404,
            &format!("no such path; clients connect to {WS_PATH} (WebSocket) or {SSE_PATH} (Server-Sent Events)"),
            &[],
        ),
    }
}

fn websocket(
    request: &Request,
    consumed: usize,
    secret: &Secret,
    now_unix_s: u64,
    deflate: bool,
) -> Verdict {
    let accept_key = match handshake::validate_upgrade(request) {
        Ok(key) => key,
        Err(e) => return refuse(e.http_status(), e.reason(), e.extra_headers()),
    };
    let user = match authenticate(request, secret, now_unix_s, &[]) {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let since = handshake::query_param(&request.query, "since").map(|t| Since::from_client(&t));
    let text_heartbeat =
        handshake::query_param(&request.query, "heartbeat").as_deref() == Some("1");
    // An offer we cannot honour is declined: the connection goes on
    // uncompressed (RFC 7692 §5).
    let deflate = deflate
        .then(|| deflate_offer::negotiate(&request.ws_extensions))
        .flatten();
    Verdict::Accept(Accepted {
        user,
        transport: Transport::WebSocket {
            accept_key,
            text_heartbeat,
            deflate,
        },
        since,
        consumed,
    })
}

/// `GET /sse`. The resume position comes from `Last-Event-ID` before
/// `?since=`: an `EventSource` keeps the URL it was made with and sends the
/// id of the last event it saw, which is the newer of the two.
fn event_stream(request: &Request, consumed: usize, secret: &Secret, now_unix_s: u64) -> Verdict {
    if request.method != "GET" {
        return refuse(
            405,
            &format!("{SSE_PATH} takes GET"),
            &[("Allow", "GET"), ANY_ORIGIN],
        );
    }
    let user = match authenticate(request, secret, now_unix_s, &[ANY_ORIGIN]) {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let last_event_id = request
        .last_event_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .map(Since::from_client);
    let since = last_event_id.or_else(|| {
        handshake::query_param(&request.query, "since").map(|t| Since::from_client(&t))
    });
    Verdict::Accept(Accepted {
        user,
        transport: Transport::Sse,
        since,
        consumed,
    })
}

/// The user a request's token names, or the 401 to answer (with `extra`
/// headers).
fn authenticate(
    request: &Request,
    secret: &Secret,
    now_unix_s: u64,
    extra: &[(&str, &str)],
) -> Result<String, Verdict> {
    let query_token = handshake::query_param(&request.query, "token");
    let Some(token) =
        auth::token_from_request(request.authorization.as_deref(), query_token.as_deref())
    else {
        let headers = [&[("WWW-Authenticate", "Bearer")], extra].concat();
        return Err(refuse(
            401,
            "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>",
            &headers,
        ));
    };
    auth::verify(secret, token, now_unix_s).map_err(|e| {
        let headers = [
            &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
            extra,
        ]
        .concat();
        refuse(401, &format!("invalid token: {}", e.reason()), &headers)
    })
}

/// `GET /pushgate.js`: the SDK as an ES module. Any origin may load it
/// (module scripts are fetched with CORS); `no-cache` makes a browser ask
/// again after an upgrade instead of running an SDK older than the server.
fn sdk_response() -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/javascript; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-cache\r\n\
         {}: {}\r\n\
         Connection: close\r\n\r\n",
        SDK_JS.len(),
        ANY_ORIGIN.0,
        ANY_ORIGIN.1
    )
    .into_bytes();
    out.extend_from_slice(SDK_JS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn secret() -> Secret {
        Secret::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn request(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn judge(buf: &[u8]) -> Verdict {
        evaluate(
            buf,
            &HandshakeLimits::default(),
            &secret(),
            NOW,
            &Site::default(),
        )
    }

    #[test]
    fn deflate_is_negotiated_only_when_the_server_offers_it() {
        let token = auth::mint(&secret(), "alice", 60, NOW);
        let offer = "Sec-WebSocket-Extensions: foo, permessage-deflate; client_max_window_bits\r\n";
        let buf = request(&format!("/ws?token={token}"), offer);
        let deflate_of =
            |site: &Site| match evaluate(&buf, &HandshakeLimits::default(), &secret(), NOW, site) {
                Verdict::Accept(Accepted {
                    transport: Transport::WebSocket { deflate, .. },
                    ..
                }) => deflate,
                other => panic!("{other:?}"),
            };
        assert_eq!(deflate_of(&Site::default()), None, "off by default");
        let on = Site {
            deflate: true,
            ..Site::default()
        };
        assert_eq!(
            deflate_of(&on),
            Some(Agreement {
                server_max_window_bits: None
            })
        );
        // An offer we cannot honour is declined, not refused.
        let small_window = request(
            &format!("/ws?token={token}"),
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n",
        );
        match evaluate(
            &small_window,
            &HandshakeLimits::default(),
            &secret(),
            NOW,
            &on,
        ) {
            Verdict::Accept(Accepted {
                transport: Transport::WebSocket { deflate, .. },
                ..
            }) => assert_eq!(deflate, None),
            other => panic!("{other:?}"),
        }
    }

    fn status(v: &Verdict) -> u16 {
        match v {
            Verdict::Refuse { status, .. } => *status,
            Verdict::Accept(_) => 101,
            Verdict::Serve(_) => 200,
            Verdict::Incomplete => 0,
        }
    }

    #[test]
    fn accepts_header_and_query_tokens_at_every_split() {
        let token = auth::mint(&secret(), "alice", 60, NOW);
        for buf in [
            request("/ws", &format!("Authorization: Bearer {token}\r\n")),
            request(&format!("/ws?token={token}&since=7:42"), ""),
        ] {
            for split in 0..buf.len() {
                assert_eq!(judge(&buf[..split]), Verdict::Incomplete, "split {split}");
            }
            match judge(&buf) {
                Verdict::Accept(a) => {
                    assert_eq!(a.user, "alice");
                    assert_eq!(
                        a.transport,
                        Transport::WebSocket {
                            accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                            text_heartbeat: false,
                            deflate: None,
                        }
                    );
                    assert_eq!(a.consumed, buf.len());
                }
                other => panic!("{other:?}"),
            }
        }
        let buf = request(&format!("/ws?token={token}&since=7:42"), "");
        let Verdict::Accept(a) = judge(&buf) else {
            panic!()
        };
        assert_eq!(a.since, Some(Since { epoch: 7, seq: 42 }));
    }

    #[test]
    fn refusals_have_precise_statuses() {
        let good = auth::mint(&secret(), "bob", 60, NOW);
        let expired = auth::mint(&secret(), "bob", 60, NOW - 120);
        let foreign = auth::mint(
            &Secret::from_bytes(b"another-secret-another-secret-xx".to_vec()),
            "bob",
            60,
            NOW,
        );
        assert_eq!(status(&judge(&request("/ws", ""))), 401);
        assert_eq!(
            status(&judge(&request(&format!("/ws?token={expired}"), ""))),
            401
        );
        assert_eq!(
            status(&judge(&request(&format!("/ws?token={foreign}"), ""))),
            401
        );
        assert_eq!(status(&judge(&request("/ws?token=garbage", ""))), 401);
        assert_eq!(
            status(&judge(&request(&format!("/other?token={good}"), ""))),
            404
        );
        let plain = format!("GET /ws?token={good} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&judge(plain.as_bytes())), 400);
        let v8 = String::from_utf8(request(&format!("/ws?token={good}"), ""))
            .unwrap()
            .replace("Version: 13", "Version: 8");
        let verdict = judge(v8.as_bytes());
        assert_eq!(status(&verdict), 426);
        let Verdict::Refuse { response, .. } = verdict else {
            panic!()
        };
        let text = String::from_utf8(response).unwrap();
        assert!(text.contains("Sec-WebSocket-Version: 13"), "{text}");
        let huge = request("/ws", &format!("X-Pad: {}\r\n", "a".repeat(10_000)));
        assert_eq!(status(&judge(&huge)), 431);
        assert_eq!(status(&judge(b"\x16\x03\x01garbage-not-http\r\n\r\n")), 400);
    }

    #[test]
    fn demo_page_and_dev_tokens_only_when_enabled() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        let site = Site {
            page: b"<html>",
            dev_tokens: true,
            deflate: false,
        };
        let judge_site = |buf: &[u8], site: &Site| {
            evaluate(buf, &HandshakeLimits::default(), &secret(), NOW, site)
        };
        let Verdict::Serve(page) = judge_site(&get("/"), &site) else {
            panic!()
        };
        assert!(page.ends_with(b"<html>"));
        let Verdict::Serve(json) = judge_site(&get("/dev/token?user=eve"), &site) else {
            panic!()
        };
        let body = String::from_utf8(json).unwrap();
        let token = body
            .split(r#""token":""#)
            .nth(1)
            .unwrap()
            .trim_end_matches("\"}");
        assert_eq!(auth::verify(&secret(), token, NOW), Ok("eve".to_string()));
        assert_eq!(status(&judge_site(&get("/dev/token?user="), &site)), 400);
        // Off unless asked for.
        assert_eq!(status(&judge(&get("/dev/token?user=eve"))), 404);
        assert_eq!(status(&judge(&get("/"))), 404);
    }

    /// Issue 13: a resume position that cannot be read is answered like one
    /// from an unknown epoch (accepted; the welcome says `recovered:false`),
    /// never with a 400 a browser cannot see.
    #[test]
    fn unreadable_since_is_an_unrecoverable_resume_not_a_400() {
        let good = auth::mint(&secret(), "bob", 60, NOW);
        for since in [
            "x",
            "",
            "7",
            "7:",
            ":3",
            "-1:2",
            "1:2:3",
            "99999999999999999999:1",
        ] {
            let buf = request(&format!("/ws?token={good}&since={since}"), "");
            let Verdict::Accept(a) = judge(&buf) else {
                panic!("since={since:?}")
            };
            assert_eq!(a.since, Some(Since::UNREADABLE), "since={since:?}");
        }
        let Verdict::Accept(a) = judge(&request(&format!("/ws?token={good}"), "")) else {
            panic!()
        };
        assert_eq!(a.since, None, "no since: a first connect");
    }

    #[test]
    fn websocket_heartbeat_opt_in() {
        let good = auth::mint(&secret(), "bob", 60, NOW);
        for (query, text) in [("&heartbeat=1", true), ("&heartbeat=0", false), ("", false)] {
            let Verdict::Accept(a) = judge(&request(&format!("/ws?token={good}{query}"), ""))
            else {
                panic!()
            };
            let Transport::WebSocket { text_heartbeat, .. } = a.transport else {
                panic!()
            };
            assert_eq!(text_heartbeat, text, "{query}");
        }
    }

    fn sse_request(target: &str, extra: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n")
            .into_bytes()
    }

    #[test]
    fn sse_accepts_header_and_query_tokens_at_every_split() {
        let token = auth::mint(&secret(), "erin", 60, NOW);
        for buf in [
            sse_request("/sse", &format!("Authorization: Bearer {token}\r\n")),
            sse_request(&format!("/sse?token={token}&since=7:42"), ""),
        ] {
            for split in 0..buf.len() {
                assert_eq!(judge(&buf[..split]), Verdict::Incomplete, "split {split}");
            }
            let Verdict::Accept(a) = judge(&buf) else {
                panic!()
            };
            assert_eq!(a.user, "erin");
            assert_eq!(a.transport, Transport::Sse);
            assert_eq!(a.consumed, buf.len());
        }
    }

    #[test]
    fn sse_resumes_from_last_event_id_before_since() {
        let token = auth::mint(&secret(), "erin", 60, NOW);
        let since = |target: &str, extra: &str| match judge(&sse_request(target, extra)) {
            Verdict::Accept(a) => a.since,
            other => panic!("{other:?}"),
        };
        let q = format!("/sse?token={token}");
        assert_eq!(since(&q, ""), None);
        assert_eq!(
            since(&format!("{q}&since=5:6"), ""),
            Some(Since { epoch: 5, seq: 6 })
        );
        assert_eq!(
            since(&q, "Last-Event-ID: 8:9\r\n"),
            Some(Since { epoch: 8, seq: 9 })
        );
        // An EventSource keeps its first URL: the header is the newer position.
        assert_eq!(
            since(&format!("{q}&since=5:6"), "Last-Event-ID: 8:9\r\n"),
            Some(Since { epoch: 8, seq: 9 })
        );
        assert_eq!(
            since(&q, "Last-Event-ID: garbage\r\n"),
            Some(Since::UNREADABLE)
        );
        assert_eq!(since(&q, "Last-Event-ID:\r\n"), None, "empty: no id");
        let twice = sse_request(&q, "Last-Event-ID: 1:1\r\nLast-Event-ID: 1:2\r\n");
        assert_eq!(status(&judge(&twice)), 400);
    }

    #[test]
    fn sse_refusals_are_readable_from_any_origin() {
        let expired = auth::mint(&secret(), "erin", 60, NOW - 120);
        for (buf, want) in [
            (sse_request("/sse", ""), 401),
            (sse_request(&format!("/sse?token={expired}"), ""), 401),
            (b"POST /sse HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405),
        ] {
            let verdict = judge(&buf);
            assert_eq!(status(&verdict), want);
            let Verdict::Refuse { response, .. } = verdict else {
                panic!()
            };
            let text = String::from_utf8(response).unwrap();
            assert!(text.contains("Access-Control-Allow-Origin: *"), "{text}");
        }
    }

    #[test]
    fn the_sdk_is_served_as_a_module_to_any_origin() {
        let Verdict::Serve(response) = judge(b"GET /pushgate.js HTTP/1.1\r\nHost: x\r\n\r\n")
        else {
            panic!()
        };
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/javascript; charset=utf-8"));
        assert!(head.contains("Access-Control-Allow-Origin: *"));
        assert!(head.contains(&format!("Content-Length: {}", SDK_JS.len())));
        assert_eq!(body.as_bytes(), SDK_JS);
    }

    /// Issue 10: an admin token passed as a client token for user "admin".
    #[test]
    fn admin_tokens_are_not_client_tokens() {
        let admin = auth::mint_admin(&secret(), 60, NOW);
        for buf in [
            request(&format!("/ws?token={admin}"), ""),
            request("/ws", &format!("Authorization: Bearer {admin}\r\n")),
        ] {
            let verdict = judge(&buf);
            assert_eq!(status(&verdict), 401);
            let Verdict::Refuse { reason, .. } = verdict else {
                panic!()
            };
            assert!(reason.contains("not for clients"), "{reason}");
        }
    }

    /// One Bearer rule on both listeners (`auth::bearer_token`): `Bearer`
    /// and the token are separated by spaces only; a tab is no credential.
    #[test]
    fn bearer_needs_a_space_not_a_tab() {
        let good = auth::mint(&secret(), "dave", 60, NOW);
        let space = request("/ws", &format!("Authorization: Bearer  {good}\r\n"));
        assert_eq!(status(&judge(&space)), 101);
        let tab = request("/ws", &format!("Authorization: Bearer\t{good}\r\n"));
        assert_eq!(status(&judge(&tab)), 401);
    }

    #[test]
    fn bearer_header_wins_over_query() {
        let good = auth::mint(&secret(), "carol", 60, NOW);
        let buf = request(
            "/ws?token=bad",
            &format!("Authorization: bearer {good}\r\n"),
        );
        let Verdict::Accept(a) = judge(&buf) else {
            panic!()
        };
        assert_eq!(a.user, "carol");
    }
}
