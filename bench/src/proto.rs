//! The three client dialects the load generator speaks, as pure functions:
//! pushgate's v1 protocol, the bench's peer protocol (bench/peers/README.md)
//! and socket.io's (Engine.IO 4 over a WebSocket) for the socket.io peer.
//!
//! Each dialect says how to ask for the upgrade, when a connection counts as
//! established, and where a pushed message's data is inside a text frame.

use pushgate::ws;
use serde::{Deserialize, Serialize};

use crate::wsclient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `GET /ws` with `Authorization: Bearer <jwt>`; established at the
    /// welcome message; pushes arrive as `{"type":"push","seq":N,"data":…}`.
    Pushgate,
    /// pushgate's, offering permessage-deflate
    /// (`permessage-deflate; client_max_window_bits`, as browsers do);
    /// compressed pushes (RSV1) are inflated before they are read.
    #[serde(rename = "pushgate-deflate")]
    #[value(name = "pushgate-deflate")]
    PushgateDeflate,
    /// `GET /ws?user=<id>`; established at `{"type":"welcome",…}`; pushes
    /// arrive as the payload itself.
    Peer,
    /// `GET /ws/?EIO=4&transport=websocket&user=<id>`; the server's open
    /// packet `0{…}` is answered with `40`, established at the `40{…}` ack;
    /// pushes arrive as `42["m",<payload>]`; ping `2` is answered with `3`.
    Socketio,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pushgate => "pushgate",
            Protocol::PushgateDeflate => "pushgate-deflate",
            Protocol::Peer => "peer",
            Protocol::Socketio => "socketio",
        }
    }

    /// Whether connections need a token minted with the server's secret.
    pub fn needs_token(self) -> bool {
        self.is_pushgate()
    }

    /// pushgate itself, with or without deflate (same publisher, same
    /// messages).
    pub fn is_pushgate(self) -> bool {
        matches!(self, Protocol::Pushgate | Protocol::PushgateDeflate)
    }

    /// Whether server frames may carry RSV1 (a compressed message).
    pub fn deflate(self) -> bool {
        self == Protocol::PushgateDeflate
    }

    /// The upgrade request of user `user`; `token` only for pushgate.
    pub fn upgrade_request(self, host: &str, key: &str, user: &str, token: &str) -> Vec<u8> {
        match self {
            Protocol::Pushgate => ws::upgrade_request(
                host,
                "/ws",
                key,
                &format!("Authorization: Bearer {token}\r\n"),
            )
            .into_bytes(),
            Protocol::PushgateDeflate => ws::upgrade_request(
                host,
                "/ws",
                key,
                &format!(
                    "Authorization: Bearer {token}\r\n\
                     Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                ),
            )
            .into_bytes(),
            Protocol::Peer => plain_upgrade_request(host, key, &format!("/ws?user={user}")),
            Protocol::Socketio => plain_upgrade_request(
                host,
                key,
                &format!("/ws/?EIO=4&transport=websocket&user={user}"),
            ),
        }
    }
}

/// An upgrade request without credentials.
pub fn plain_upgrade_request(host: &str, key: &str, path: &str) -> Vec<u8> {
    ws::upgrade_request(host, path, key, "").into_bytes()
}

/// What a text frame means while the connection is being set up.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupStep {
    /// The connection is established.
    Established,
    /// Send this text (masked) and keep waiting.
    Reply(&'static str),
    /// Nothing to do; keep waiting.
    Wait,
}

/// Judges a text frame received before the connection is established.
pub fn setup_text(protocol: Protocol, payload: &[u8]) -> Result<SetupStep, String> {
    match protocol {
        Protocol::Pushgate | Protocol::PushgateDeflate | Protocol::Peer => {
            wsclient::check_welcome(payload)?;
            Ok(SetupStep::Established)
        }
        Protocol::Socketio => match payload {
            // Engine.IO open packet: connect to the default namespace.
            [b'0', ..] => Ok(SetupStep::Reply("40")),
            // socket.io CONNECT ack for "/".
            [b'4', b'0', ..] => Ok(SetupStep::Established),
            [b'4', b'4', ..] => Err(format!(
                "socket.io connect refused: {}",
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            )),
            [b'2'] => Ok(SetupStep::Reply("3")),
            _ => Ok(SetupStep::Wait),
        },
    }
}

/// What an established connection does with a text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A pushed message; the slice holds its data (the bench stamp is in it).
    Message(&'a [u8]),
    /// Answer with this text (masked).
    Reply(&'static str),
    /// Not a message (e.g. a late socket.io ack).
    Other,
}

pub fn incoming_text(protocol: Protocol, payload: &[u8]) -> Incoming<'_> {
    match protocol {
        Protocol::Pushgate | Protocol::PushgateDeflate | Protocol::Peer => {
            Incoming::Message(payload)
        }
        Protocol::Socketio => match payload {
            [b'4', b'2', rest @ ..] => Incoming::Message(rest),
            [b'2'] => Incoming::Reply("3"),
            _ => Incoming::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_user_where_each_server_wants_it() {
        let text =
            |p: Protocol| String::from_utf8(p.upgrade_request("h:1", "K", "bench-7", "T")).unwrap();
        assert!(text(Protocol::Pushgate).contains("Authorization: Bearer T\r\n"));
        assert!(text(Protocol::Peer).starts_with("GET /ws?user=bench-7 HTTP/1.1\r\n"));
        assert!(!text(Protocol::Peer).contains("Authorization"));
        assert!(text(Protocol::Socketio)
            .starts_with("GET /ws/?EIO=4&transport=websocket&user=bench-7 HTTP/1.1\r\n"));
    }

    #[test]
    fn socketio_setup_sequence() {
        let p = Protocol::Socketio;
        assert_eq!(
            setup_text(p, br#"0{"sid":"x","pingInterval":25000}"#),
            Ok(SetupStep::Reply("40"))
        );
        assert_eq!(
            setup_text(p, br#"40{"sid":"y"}"#),
            Ok(SetupStep::Established)
        );
        assert_eq!(setup_text(p, b"2"), Ok(SetupStep::Reply("3")));
        assert!(setup_text(p, br#"44{"message":"no"}"#).is_err());
        assert_eq!(
            incoming_text(p, br#"42["m",{"b":1}]"#),
            Incoming::Message(br#"["m",{"b":1}]"#)
        );
        assert_eq!(incoming_text(p, b"2"), Incoming::Reply("3"));
    }

    #[test]
    fn welcome_establishes_plain_dialects() {
        let w = br#"{"type":"welcome","user":"bench-1"}"#;
        assert_eq!(setup_text(Protocol::Peer, w), Ok(SetupStep::Established));
        assert!(setup_text(Protocol::Peer, b"hello").is_err());
    }
}
