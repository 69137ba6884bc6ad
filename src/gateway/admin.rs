//! The admin listener (loopback by default): health, readiness, metrics,
//! and an authenticated HTTP push API for backends that prefer HTTP to the
//! Unix sockets. One request per connection.

use super::publish::ReplyTo;
use super::{Gateway, Msg, Pending, Slot, ADMIN};
use crate::admin_http::{self, AdminRequest, Parsed};
use crate::auth;
use crate::push::wire::Reply;
use crate::ws::handshake;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use shard::{ConnId, Ctx};

const ADMIN_HEAD_BYTES_MAX: usize = 8192;
/// How long an admin request may wait for other shards.
const ADMIN_REQUEST_TIMEOUT_MS: u64 = 5_000;

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
    pub(super) fn open_admin(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        *self.slot_mut(conn) = Slot {
            user: ADMIN,
            ..Slot::vacant()
        };
        ctx.set_deadline(conn, ctx.now_ms() + self.shared.handshake_timeout_ms);
    }

    pub(super) fn on_admin_bytes(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, data: &[u8]) {
        let mut buf = match self.slot_mut(conn).pending.take().map(|p| *p) {
            Some(Pending::Head(head)) => head,
            _ => Vec::new(),
        };
        buf.extend_from_slice(data);
        match admin_http::parse(&buf, ADMIN_HEAD_BYTES_MAX, self.shared.push_frame_bytes_max) {
            Parsed::Incomplete => {
                self.slot_mut(conn).pending = Some(Box::new(Pending::Head(buf)));
            }
            Parsed::Refuse(response) => self.admin_respond(ctx, conn, response),
            Parsed::Request(request) => {
                // Owned by the request now; an answer closes the connection.
                ctx.clear_deadline(conn);
                self.route_admin(ctx, conn, request);
            }
        }
    }

    fn admin_respond(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, response: Vec<u8>) {
        *self.slot_mut(conn) = Slot::vacant();
        ctx.close(conn, Some(Bytes::from(response)));
    }

    fn route_admin(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, req: AdminRequest) {
        let json = admin_http::json;
        let response = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => json(200, r#"{"status":"ok"}"#),
            ("GET", "/readyz") => {
                let control = &self.shared.control;
                if control.is_ready() {
                    json(200, r#"{"ready":true}"#)
                } else {
                    let why = if control.is_draining() { "draining" } else { "overloaded" };
                    json(503, &format!(r#"{{"ready":false,"reason":"{why}"}}"#))
                }
            }
            ("GET", "/metrics") => {
                let runtime: Vec<_> = ctx.all_stats().iter().map(|s| s.snapshot()).collect();
                let text = crate::metrics::render(&runtime, &self.shared.stats, &self.shared.control);
                handshake::response_content(200, "text/plain; version=0.0.4", text.as_bytes())
            }
            (_, "/healthz" | "/readyz" | "/metrics") => {
                handshake::response_error(405, "use GET", &[("Allow", "GET")])
            }
            (method, path) if path.starts_with("/v1/") => {
                let unix_s = (self.shared.clock_unix_base_ms + ctx.now_ms()) / 1000;
                let token = req.bearer.as_deref().unwrap_or("");
                if let Err(e) = auth::verify_admin(&self.shared.secret, token, unix_s) {
                    tracing::info!(shard = ctx.shard_id(), path, reason = e.reason(), "admin request refused: 401");
                    handshake::response_error(
                        401,
                        &format!("{}: send Authorization: Bearer <token from `pushgate token --admin`>", e.reason()),
                        &[("WWW-Authenticate", "Bearer")],
                    )
                } else {
                    match self.route_api(ctx, conn, method, path, &req) {
                        Some(response) => response,
                        None => return, // answered when the shards reply
                    }
                }
            }
            _ => handshake::response_error(404, "no such admin path: /healthz /readyz /metrics /v1/push /v1/presence/<user> /v1/drain", &[]),
        };
        self.admin_respond(ctx, conn, response);
    }

    /// The authenticated API. `None`: the answer comes later (other shards).
    fn route_api(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        conn: ConnId,
        method: &str,
        path: &str,
        req: &AdminRequest,
    ) -> Option<Vec<u8>> {
        let deadline_ms = ctx.now_ms() + ADMIN_REQUEST_TIMEOUT_MS;
        match (method, path) {
            ("POST", "/v1/push") => {
                let body: PushBody = match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => return Some(handshake::response_error(400, &format!("body must be {{\"users\":[…],\"data\":…}} or {{\"all\":true,\"data\":…}}: {e}"), &[])),
                };
                let data = body.data.get().to_string();
                match (body.all, body.users.is_empty()) {
                    (true, true) => {
                        self.broadcast_request(ctx, ReplyTo::Http(conn), 0, data, deadline_ms)
                    }
                    (false, false) => self.push_request(
                        ctx,
                        ReplyTo::Http(conn),
                        0,
                        body.users,
                        data,
                        deadline_ms,
                    ),
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
                self.presence_request(ctx, ReplyTo::Http(conn), 0, user, deadline_ms);
                None
            }
            ("POST", "/v1/drain") => {
                let rate = handshake::query_param(&req.query, "rate")
                    .and_then(|r| r.trim_end_matches("/s").parse::<u32>().ok())
                    .filter(|&r| r > 0)
                    .unwrap_or(self.shared.drain_rate_per_s);
                tracing::warn!(
                    shard = ctx.shard_id(),
                    rate_per_s = rate,
                    "drain requested over the admin API"
                );
                self.shared.control.start_drain(rate);
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

    /// A shard reply turned into the admin API's JSON answer.
    pub(super) fn answer_http(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId, reply: &Reply) {
        let (status, body) = match reply {
            Reply::Pushed {
                delivered,
                stored,
                rejected,
                ..
            } => (
                200,
                format!(r#"{{"delivered":{delivered},"stored":{stored},"rejected":{rejected}}}"#),
            ),
            Reply::Presence {
                online, devices, ..
            } => (200, format!(r#"{{"online":{online},"devices":{devices}}}"#)),
            Reply::Error { message, .. } => (
                400,
                format!(
                    r#"{{"error":{}}}"#,
                    serde_json::Value::from(message.as_str())
                ),
            ),
            other => (500, format!(r#"{{"error":"unexpected reply {other:?}"}}"#)),
        };
        self.admin_respond(ctx, conn, admin_http::json(status, &body));
    }
}
