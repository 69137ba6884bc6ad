//! RFC 6455 WebSocket protocol, as pure code: bytes in, bytes and events out.
//!
//! Nothing here does I/O, reads a clock or allocates on the fast path of a
//! complete frame, so the shard can drive millions of connections with it and
//! the tests need no sockets. Incomplete input is always "need more"
//! (`Ok(None)` or a stored partial), never an error.
//!
//! The codec serves both ends of a connection: the server reads masked
//! frames and writes unmasked ones, a client (the bench, the tests) the
//! reverse. The one rule that differs is a [`Role`]'s (§5.1); everything
//! else is the same code.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade request and the responses to it.
//! - [`client_handshake`]: a client's side of it: the request, the 101 check.
//! - [`frame`]: the frame header codec (§5.2), and whole server frames.
//! - [`mask`]: payload masking (§5.3).
//! - [`close`]: close codes and the close frame payload (§7.4).
//! - [`utf8`]: streaming UTF-8 validation of text messages (§8.1).
//! - [`reader`]: the per-connection incoming frame reader (the hot path).
//! - [`writer`]: outgoing frames, masked for a client.

pub mod client_handshake;
pub mod close;
pub mod deflate;
pub mod deflate_offer;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod reader;
pub mod utf8;
pub mod writer;

pub use client_handshake::{
    accept_matches, parse_response_head, upgrade_request, websocket_key, ResponseHeadError,
};
pub use close::{is_valid_received_code, parse_close_payload, CloseCode};
pub use frame::{
    encode_header, parse_header, parse_header_allowing, parse_server_frame,
    parse_server_frame_allowing, FrameHeader, Opcode, Role, ServerFrame, RSV1,
};
pub use handshake::{
    accept_key, parse_request, query_param, response_101, response_content, response_error,
    validate_upgrade, HandshakeLimits, ParseError, Request, UpgradeError,
};
pub use mask::apply_mask;
pub use reader::{
    ClientSide, Event, FrameReader, MessageKind, ReaderLimits, ReaderRole, ServerSide,
};
pub use utf8::Utf8Validator;
pub use writer::{
    close_frame, encode_frame, ping_frame, pong_frame, text_header, write_close_frame,
    write_control_frame, write_fragmented, write_frame,
};

/// A violation of the protocol by the peer: the connection must be closed
/// with `code`, and nothing more read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct ProtocolError {
    /// The status code to send in the close frame.
    pub code: CloseCode,
    /// A short human text for logs and the close frame's reason. Kept to at
    /// most 123 bytes so that it always fits a close frame whole.
    pub reason: &'static str,
}

impl ProtocolError {
    /// A 1002 error: the peer broke the framing rules.
    pub const fn protocol(reason: &'static str) -> Self {
        Self {
            code: CloseCode::PROTOCOL_ERROR,
            reason,
        }
    }
}
