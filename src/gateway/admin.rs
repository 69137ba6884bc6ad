//! Wiring for the admin listener (loopback by default): health,
//! readiness, metrics, and an authenticated HTTP push API for backends
//! that prefer HTTP to the Unix sockets. One request per connection; the
//! connection count is capped like client connections are.

use super::publish::admins::Received;
use super::publish::tickets::{Answer, ReplyTo};
use super::{Gateway, Io};
use crate::admin_http::{self, AdminRequest};
use crate::auth;
use crate::ws::handshake;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use shard::ConnId;

/// `POST /v1/push` body: `{"users":[…],"data":…}` or `{"all":true,"data":…}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    all: bool,
    data: Box<RawValue>,
}

impl Gateway {
    pub(super) fn open_admin(&mut self, io: &mut impl Io, conn: ConnId) {
        if let Err(why) = self.admission.admit_admin(self.admins.len()) {
            tracing::warn!(shard = io.shard_id(), why, "admin connection refused: 503");
            let response = handshake::response_error(503, why, &[("Retry-After", "1")]);
            io.close(conn, Some(Bytes::from(response)));
            return;
        }
        self.admins.open(conn);
        io.set_deadline(conn, io.now_ms() + self.shared.handshake_timeout_ms);
    }

    pub(super) fn admin_bytes(&mut self, io: &mut impl Io, conn: ConnId, data: &[u8]) {
        match self.admins.receive(conn, data) {
            Received::Incomplete => {}
            Received::Head(head) => {
                if let Err(response) = self.authenticate(io, &head.path, head.bearer.as_deref()) {
                    self.admin_respond(io, conn, response);
                }
            }
            Received::Refuse(response) => self.admin_respond(io, conn, response),
            Received::Request(request) => {
                // Owned by the request now; its answer closes the connection.
                io.clear_deadline(conn);
                self.route_admin(io, conn, request);
            }
        }
    }

    /// The API (`/v1/…`) needs an admin token; health and metrics do not.
    fn authenticate(&self, io: &impl Io, path: &str, bearer: Option<&str>) -> Result<(), Vec<u8>> {
        if !path.starts_with("/v1/") {
            return Ok(());
        }
        let unix_s = (self.shared.clock_unix_base_ms + io.now_ms()) / 1000;
        auth::verify_admin(&self.shared.upgrade.secret, bearer.unwrap_or(""), unix_s).map_err(|e| {
            tracing::info!(
                shard = io.shard_id(),
                path,
                reason = e.reason(),
                "admin request refused: 401"
            );
            handshake::response_error(
                401,
                &format!(
                    "{}: send Authorization: Bearer <token from `pushgate token --admin`>",
                    e.reason()
                ),
                &[("WWW-Authenticate", "Bearer")],
            )
        })
    }

    pub(super) fn admin_timeout(&mut self, io: &mut impl Io, conn: ConnId) {
        tracing::info!(
            shard = io.shard_id(),
            "admin request not completed in time: 408"
        );
        let response = handshake::response_error(408, "request not completed in time", &[]);
        self.admin_respond(io, conn, response);
    }

    fn admin_respond(&mut self, io: &mut impl Io, conn: ConnId, response: Vec<u8>) {
        self.release(io, conn);
        io.close(conn, Some(Bytes::from(response)));
    }

    fn route_admin(&mut self, io: &mut impl Io, conn: ConnId, req: AdminRequest) {
        let json = admin_http::json;
        let response = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => json(200, r#"{"status":"ok"}"#),
            ("GET", "/readyz") => {
                match self.shared.control.not_ready_reason() {
                    None => json(200, r#"{"ready":true}"#),
                    Some(why) => json(503, &format!(r#"{{"ready":false,"reason":"{why}"}}"#)),
                }
            }
            ("GET", "/metrics") => {
                let runtime = io.runtime_stats();
                let text = crate::metrics::render(&runtime, &self.shared.stats, &self.shared.control);
                handshake::response_content(200, "text/plain; version=0.0.4", text.as_bytes())
            }
            (_, "/healthz" | "/readyz" | "/metrics") => {
                handshake::response_error(405, "use GET", &[("Allow", "GET")])
            }
            (method, path) if path.starts_with("/v1/") => {
                match self.authenticate(io, path, req.bearer.as_deref()) {
                    Err(response) => response,
                    Ok(()) => match self.route_api(io, conn, method, path, &req) {
                        Some(response) => response,
                        None => return, // answered when the shards reply
                    },
                }
            }
            _ => handshake::response_error(404, "no such admin path: /healthz /readyz /metrics /v1/push /v1/presence/<user> /v1/drain", &[]),
        };
        self.admin_respond(io, conn, response);
    }

    /// The authenticated API. `None`: the answer comes later (other shards).
    fn route_api(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        method: &str,
        path: &str,
        req: &AdminRequest,
    ) -> Option<Vec<u8>> {
        let reply_to = ReplyTo::Http(conn);
        match (method, path) {
            ("POST", "/v1/push") => {
                let body: PushBody = match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => return Some(handshake::response_error(400, &format!("body must be {{\"users\":[…],\"data\":…}} or {{\"all\":true,\"data\":…}}: {e}"), &[])),
                };
                let data = body.data.get().to_string();
                match (body.all, body.users.is_empty()) {
                    (true, true) => self.broadcast_request(io, reply_to, 0, data),
                    (false, false) => self.push_request(io, reply_to, 0, body.users, data, None),
                    _ => {
                        return Some(handshake::response_error(
                            400,
                            "give either \"users\" (non-empty) or \"all\":true",
                            &[],
                        ))
                    }
                }
                None
            }
            ("GET", p) if p.starts_with("/v1/presence/") => {
                let encoded = &p["/v1/presence/".len()..];
                let user = percent_encoding::percent_decode_str(encoded)
                    .decode_utf8_lossy()
                    .into_owned();
                self.presence_request(io, reply_to, 0, user);
                None
            }
            ("POST", "/v1/drain") => {
                let rate = handshake::query_param(&req.query, "rate")
                    .and_then(|r| r.trim_end_matches("/s").parse::<u32>().ok())
                    .unwrap_or(0);
                let rate = self.start_drain(io, rate, "the admin API");
                Some(admin_http::json(
                    202,
                    &format!(r#"{{"draining":true,"rate_per_s":{rate}}}"#),
                ))
            }
            (_, "/v1/push" | "/v1/drain") => Some(handshake::response_error(
                405,
                "use POST",
                &[("Allow", "POST")],
            )),
            _ => Some(handshake::response_error(404, "no such API path", &[])),
        }
    }

    /// A request's answer as the admin API's JSON, if its connection is
    /// still waiting for it.
    pub(super) fn answer_http(&mut self, io: &mut impl Io, conn: ConnId, answer: &Answer) {
        if !self.admins.contains(conn) {
            return;
        }
        let (status, body) = match answer {
            Answer::Pushed { counts, .. } => {
                let reasons: Vec<serde_json::Value> = counts
                    .reasons
                    .texts()
                    .map(serde_json::Value::from)
                    .collect();
                let mut body = format!(
                    r#"{{"delivered":{},"stored":{},"rejected":{}"#,
                    counts.delivered, counts.stored, counts.rejected
                );
                if !reasons.is_empty() {
                    body.push_str(&format!(
                        r#","rejected_reasons":{}"#,
                        serde_json::Value::from(reasons)
                    ));
                }
                body.push('}');
                (200, body)
            }
            Answer::Presence {
                online, devices, ..
            } => (200, format!(r#"{{"online":{online},"devices":{devices}}}"#)),
            Answer::Error { message, .. } => (
                400,
                format!(
                    r#"{{"error":{}}}"#,
                    serde_json::Value::from(message.as_str())
                ),
            ),
            Answer::Unavailable { message, .. } => (
                503,
                format!(
                    r#"{{"error":{}}}"#,
                    serde_json::Value::from(message.as_str())
                ),
            ),
            Answer::Status { .. } => (500, r#"{"error":"unexpected status answer"}"#.into()),
        };
        self.admin_respond(io, conn, admin_http::json(status, &body));
    }
}
