//! Deciding an upgrade request: pure (bytes, secret and the time in; a
//! verdict out). Every refusal carries the exact HTTP response to send and
//! a reason for the log.

use crate::auth::{self, Secret};
use crate::ws::handshake::{self, HandshakeLimits, ParseError};

/// The path WebSocket clients connect to.
pub const WS_PATH: &str = "/ws";

/// Where a reconnecting client left off: `?since=<epoch>:<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Since {
    pub epoch: u64,
    pub seq: u64,
}

impl Since {
    pub fn parse(text: &str) -> Option<Since> {
        let (epoch, seq) = text.split_once(':')?;
        Some(Since {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub user: String,
    /// The Sec-WebSocket-Accept value for the 101 response.
    pub accept_key: String,
    pub since: Option<Since>,
    /// Bytes of the request head; anything after it is already WebSocket data.
    pub consumed: usize,
}

/// What the client listener serves besides `/ws`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Site {
    /// `GET /`: the demo page.
    pub page: &'static [u8],
    /// `GET /dev/token?user=U` mints a one-hour token. Development only:
    /// anyone who can reach the port can then act as any user.
    pub dev_tokens: bool,
}

/// Lifetime of a token minted by `/dev/token`.
const DEV_TOKEN_TTL_S: u64 = 3600;

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
        (_, WS_PATH) => {}
        ("GET", "/") if !site.page.is_empty() => {
            return Verdict::Serve(handshake::response_content(
                200,
                "text/html; charset=utf-8",
                site.page,
            ))
        }
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
            return Verdict::Serve(handshake::response_content(
                200,
                "application/json",
                body.as_bytes(),
            ));
        }
        _ => {
            return refuse(
                404,
                &format!("no such path; WebSocket clients connect to {WS_PATH}"),
                &[],
            )
        }
    }
    let accept_key = match handshake::validate_upgrade(&request) {
        Ok(key) => key,
        Err(e) => return refuse(e.http_status(), e.reason(), e.extra_headers()),
    };
    let query_token = handshake::query_param(&request.query, "token");
    let Some(token) =
        auth::token_from_request(request.authorization.as_deref(), query_token.as_deref())
    else {
        return refuse(
            401,
            "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>",
            &[("WWW-Authenticate", "Bearer")],
        );
    };
    let user = match auth::verify(secret, token, now_unix_s) {
        Ok(user) => user,
        Err(e) => {
            return refuse(
                401,
                &format!("invalid token: {}", e.reason()),
                &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
            )
        }
    };
    let since = match handshake::query_param(&request.query, "since") {
        None => None,
        Some(text) => match Since::parse(&text) {
            Some(s) => Some(s),
            None => return refuse(400, "since must be <epoch>:<seq>, two integers", &[]),
        },
    };
    Verdict::Accept(Accepted {
        user,
        accept_key,
        since,
        consumed,
    })
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
                    assert_eq!(a.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
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
        assert_eq!(
            status(&judge(&request(&format!("/ws?token={good}&since=x"), ""))),
            400
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
