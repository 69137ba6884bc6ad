//! What can go wrong pushing, each with a message that says what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ClientError {
    /// No server listens on the shard socket (the file is missing, or nobody
    /// accepts on it).
    NotRunning {
        run_dir: PathBuf,
        socket: PathBuf,
    },

    Io {
        socket: PathBuf,
        source: io::Error,
    },

    /// A read or write blocked for longer than the client's I/O timeout.
    Timeout {
        socket: PathBuf,
        io_timeout_ms: u128,
    },

    /// The bytes on the socket are not what the protocol allows: a reply to
    /// another request, a reply of the wrong kind, a frame that does not
    /// decode, or the connection closing with replies outstanding.
    Protocol(String),

    /// The server closed a shard socket with requests unanswered and it
    /// could not be reopened (or kept closing) within the bounds of
    /// [`RECONNECT_ATTEMPTS_MAX`](crate::client::RECONNECT_ATTEMPTS_MAX)
    /// and [`RECONNECT_TIME_MAX`](crate::client::RECONNECT_TIME_MAX).
    Reconnect {
        socket: PathBuf,
        /// Requests of this socket left without a reply.
        unanswered: usize,
        attempts: u32,
        waited_ms: u128,
        /// The last connect error, or why the attempts ran out.
        reason: String,
    },

    /// The server answered with [`Reply::Error`](crate::wire::Reply::Error).
    Server(String),

    /// The notification payload or a `--ndjson` line is not acceptable.
    InvalidData(String),

    /// A request would be larger than the server accepts; nothing was sent.
    TooLarge {
        what: String,
        body_bytes: usize,
        body_bytes_max: usize,
        hint: &'static str,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotRunning { run_dir, socket } => write!(
                f,
                "no pushgate at {}: {} does not exist or refuses connections — \
                 is `pushgate serve --run-dir {}` running?",
                run_dir.display(),
                socket.display(),
                run_dir.display()
            ),
            ClientError::Io { socket, source } => write!(f, "{}: {source}", socket.display()),
            ClientError::Timeout {
                socket,
                io_timeout_ms,
            } => write!(
                f,
                "{} did not answer within {io_timeout_ms} ms; the server is overloaded or hung \
                 (check its log), or give the client a longer timeout",
                socket.display()
            ),
            ClientError::Reconnect {
                socket,
                unanswered,
                attempts,
                waited_ms,
                reason,
            } => write!(
                f,
                "{} closed with {unanswered} requests unanswered and could not be reopened \
                 ({attempts} attempts over {waited_ms} ms: {reason}); a server that drained or \
                 was upgraded did not process them, so they can be sent again — is a pushgate \
                 serving {}?",
                socket.display(),
                socket.display()
            ),
            ClientError::Protocol(reason) => write!(f, "protocol error: {reason}"),
            ClientError::Server(message) => {
                write!(f, "the server refused the request: {message}")
            }
            ClientError::InvalidData(reason) => f.write_str(reason),
            ClientError::TooLarge {
                what,
                body_bytes,
                body_bytes_max,
                hint,
            } => write!(
                f,
                "{what} is {body_bytes} bytes, over the push socket's frame limit of \
                 {body_bytes_max} bytes; {hint}"
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn messages_say_what_to_do() {
        let socket = PathBuf::from("/run/pg/shard-0.sock");
        let cases = [
            (
                ClientError::NotRunning {
                    run_dir: "/run/pg".into(),
                    socket: socket.clone(),
                },
                "no pushgate at /run/pg: /run/pg/shard-0.sock does not exist or refuses \
                 connections — is `pushgate serve --run-dir /run/pg` running?",
            ),
            (
                ClientError::Io {
                    socket: socket.clone(),
                    source: io::Error::other("boom"),
                },
                "/run/pg/shard-0.sock: boom",
            ),
            (
                ClientError::Timeout {
                    socket,
                    io_timeout_ms: 250,
                },
                "/run/pg/shard-0.sock did not answer within 250 ms; the server is overloaded \
                 or hung (check its log), or give the client a longer timeout",
            ),
            (
                ClientError::Reconnect {
                    socket: "/run/pg/shard-1.sock".into(),
                    unanswered: 3,
                    attempts: 12,
                    waited_ms: 900,
                    reason: "connection refused".into(),
                },
                "/run/pg/shard-1.sock closed with 3 requests unanswered and could not be \
                 reopened (12 attempts over 900 ms: connection refused); a server that drained \
                 or was upgraded did not process them, so they can be sent again — is a \
                 pushgate serving /run/pg/shard-1.sock?",
            ),
            (ClientError::Protocol("x".into()), "protocol error: x"),
            (
                ClientError::Server("full".into()),
                "the server refused the request: full",
            ),
            (ClientError::InvalidData("bad".into()), "bad"),
            (
                ClientError::TooLarge {
                    what: "the frame".into(),
                    body_bytes: 10,
                    body_bytes_max: 5,
                    hint: "send less",
                },
                "the frame is 10 bytes, over the push socket's frame limit of 5 bytes; \
                 send less",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn only_io_errors_have_a_source() {
        let io = ClientError::Io {
            socket: "s".into(),
            source: io::Error::other("boom"),
        };
        assert_eq!(io.source().unwrap().to_string(), "boom");
        assert!(ClientError::Protocol("x".into()).source().is_none());
    }
}
