//! The push socket's wire format, shared by the server and the client
//! library.
//!
//! A frame is a 4-byte little-endian body length followed by the body, an
//! `rkyv` archive of a [`Request`] (publisher → server) or a [`Reply`]
//! (server → publisher). Bodies are validated (bytecheck) before use; a
//! frame over the size limit or that fails validation is answered with
//! [`Reply::Error`] and the publisher connection is closed. Requests may be
//! pipelined: every reply carries its request's `id`, and replies to one
//! connection come back in request order.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// The `confirm` a `Request::Drain` must carry.
pub const DRAIN_CONFIRM: &str = "drain pushgate";

/// Length prefix bytes.
pub const LENGTH_BYTES: usize = 4;
/// Default largest frame body accepted by the server.
pub const FRAME_BODY_BYTES_MAX_DEFAULT: usize = 1 << 20;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Deliver `data` (one JSON value, as text) to every device of each
    /// user, now if online and from the mailbox on reconnect.
    Push {
        id: u64,
        users: Vec<String>,
        data: String,
    },
    /// Deliver `data` to every connected user (each device once).
    Broadcast { id: u64, data: String },
    /// Is `user` online, and on how many devices?
    Presence { id: u64, user: String },
    /// Connection and user counts of every shard.
    Status { id: u64 },
    /// Start a drip drain: close client connections with 1012 at
    /// `rate_per_s` (0 = the configured rate), then exit. `confirm` must be
    /// [`DRAIN_CONFIRM`], so no stray bytes that happen to decode as this
    /// variant can stop a server.
    Drain {
        id: u64,
        rate_per_s: u32,
        confirm: String,
    },
    /// A [`Request::Push`] its publisher may send again after the server
    /// closed the connection without answering it (see "Reconnecting" in
    /// the client doc): `publisher` is a random number the publisher keeps
    /// for its lifetime, and with `id` names the request. A process that
    /// took over from one that crashed or was stopped mid-hand-over
    /// answers a resend of a request it already processed (forwarded by
    /// its predecessor) from memory instead of delivering it again.
    ///
    /// Wire compatibility: appended after every other variant, so their
    /// tags do not change, and `publisher` is 32 bits so the archived
    /// request keeps its size (32 bytes; the root of an archive is found
    /// from its end, so a size change would break every frame): a
    /// publisher that sends only the variants above works as before. A
    /// server older than this variant refuses it ("not a valid archive")
    /// and closes the connection.
    PushOnce {
        publisher: u32,
        id: u64,
        users: Vec<String>,
        data: String,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: u32,
    /// WebSocket devices connected (push sockets and upgrades in progress
    /// are not counted).
    pub connections: u64,
    /// Users homed on the shard with at least one device.
    pub users_online: u64,
    /// Users with undelivered-to-someone notifications kept for resume.
    pub mailboxes: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Per user: `delivered` = online, sent to its devices now; `stored` =
    /// offline, kept in the mailbox for its next connection; `rejected` =
    /// not accepted (invalid user ID, or the server is overloaded).
    Pushed {
        id: u64,
        delivered: u32,
        stored: u32,
        rejected: u32,
    },
    Presence {
        id: u64,
        online: bool,
        devices: u32,
    },
    Status {
        id: u64,
        shards: Vec<ShardStatus>,
    },
    /// A drain started (or its rate changed).
    Draining {
        id: u64,
        rate_per_s: u32,
    },
    /// The request (or the frame carrying it) was refused; `id` is 0 when
    /// the frame could not be read at all.
    Error {
        id: u64,
        message: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    TooLarge { len: usize, max: usize },
    Invalid(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge { len, max } => {
                write!(f, "frame body of {len} bytes exceeds the limit of {max}")
            }
            WireError::Invalid(reason) => write!(f, "frame body is not a valid archive: {reason}"),
        }
    }
}

impl std::error::Error for WireError {}

fn frame(body: AlignedVec) -> Vec<u8> {
    let mut out = Vec::with_capacity(LENGTH_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn encode_request(request: &Request) -> Vec<u8> {
    frame(rkyv::to_bytes::<rancor::Error>(request).expect("archiving to memory cannot fail"))
}

pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    frame(rkyv::to_bytes::<rancor::Error>(reply).expect("archiving to memory cannot fail"))
}

/// Copies `body` to an aligned buffer (archives need their natural
/// alignment, a socket read gives none) and validates it.
fn aligned(body: &[u8]) -> AlignedVec {
    let mut buf = AlignedVec::with_capacity(body.len());
    buf.extend_from_slice(body);
    buf
}

pub fn decode_request(body: &[u8]) -> Result<Request, WireError> {
    rkyv::from_bytes::<Request, rancor::Error>(&aligned(body))
        .map_err(|e| WireError::Invalid(e.to_string()))
}

pub fn decode_reply(body: &[u8]) -> Result<Reply, WireError> {
    rkyv::from_bytes::<Reply, rancor::Error>(&aligned(body))
        .map_err(|e| WireError::Invalid(e.to_string()))
}

/// Cuts a byte stream into frame bodies. Pure: bytes in, bodies out.
/// Holds at most one partial frame (≤ `body_bytes_max` + 4 bytes).
#[derive(Default)]
pub struct FrameSplitter {
    buf: Vec<u8>,
}

impl FrameSplitter {
    /// Appends `input` and calls `on_body` for each complete frame body.
    /// A length over `body_bytes_max` is an error; the stream is unusable
    /// after it (the caller replies and closes).
    pub fn feed(
        &mut self,
        input: &[u8],
        body_bytes_max: usize,
        mut on_body: impl FnMut(&[u8]),
    ) -> Result<(), WireError> {
        // Fast path: whole frames straight from `input`, no copy.
        let mut rest = input;
        if self.buf.is_empty() {
            while let Some((body, used)) = Self::next(rest, body_bytes_max)? {
                on_body(body);
                rest = &rest[used..];
            }
            self.buf.extend_from_slice(rest);
            return Ok(());
        }
        self.buf.extend_from_slice(rest);
        let mut start = 0;
        while let Some((body, used)) = Self::next(&self.buf[start..], body_bytes_max)? {
            on_body(body);
            start += used;
        }
        self.buf.drain(..start);
        if self.buf.is_empty() {
            self.buf = Vec::new(); // an idle publisher keeps no buffer
        }
        Ok(())
    }

    fn next(bytes: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, WireError> {
        if bytes.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(bytes[..LENGTH_BYTES].try_into().unwrap()) as usize;
        if len > max {
            return Err(WireError::TooLarge { len, max });
        }
        if bytes.len() < LENGTH_BYTES + len {
            return Ok(None);
        }
        Ok(Some((
            &bytes[LENGTH_BYTES..LENGTH_BYTES + len],
            LENGTH_BYTES + len,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Request> {
        vec![
            Request::Push {
                id: 1,
                users: vec!["alice".into(), "bob".into()],
                data: r#"{"hi":1}"#.into(),
            },
            Request::Broadcast {
                id: 2,
                data: "[1,2,3]".into(),
            },
            Request::Presence {
                id: 3,
                user: "ünïcode".into(),
            },
            Request::Status { id: 4 },
            Request::PushOnce {
                publisher: 0xdead_beef,
                id: u64::MAX - 7,
                users: vec!["carol".into()],
                data: "{}".into(),
            },
        ]
    }

    #[test]
    fn the_archived_request_keeps_its_size_so_older_publishers_still_decode() {
        // The root of an archive is located from the end of the frame by
        // the archived type's size: 32 bytes since the first version.
        assert_eq!(std::mem::size_of::<ArchivedRequest>(), 32);
        // A frame as an older publisher encodes it decodes the same.
        let push = Request::Push {
            id: 5,
            users: vec!["alice".into()],
            data: "1".into(),
        };
        let framed = encode_request(&push);
        assert_eq!(decode_request(&framed[LENGTH_BYTES..]).unwrap(), push);
    }

    #[test]
    fn requests_round_trip_through_the_splitter_at_every_split() {
        let stream: Vec<u8> = sample().iter().flat_map(encode_request).collect();
        for split in 0..=stream.len() {
            let mut splitter = FrameSplitter::default();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                splitter
                    .feed(part, 1024, |body| got.push(decode_request(body).unwrap()))
                    .unwrap();
            }
            assert_eq!(got, sample(), "split at {split}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = vec![
            Reply::Pushed {
                id: 9,
                delivered: 3,
                stored: 1,
                rejected: 0,
            },
            Reply::Status {
                id: 1,
                shards: vec![ShardStatus {
                    shard: 0,
                    connections: 5,
                    users_online: 4,
                    mailboxes: 1,
                }],
            },
            Reply::Error {
                id: 0,
                message: "bad".into(),
            },
        ];
        for reply in replies {
            let framed = encode_reply(&reply);
            assert_eq!(decode_reply(&framed[LENGTH_BYTES..]).unwrap(), reply);
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        let mut splitter = FrameSplitter::default();
        let err = splitter
            .feed(&(2000u32).to_le_bytes(), 1024, |_| panic!("no body"))
            .unwrap_err();
        assert_eq!(
            err,
            WireError::TooLarge {
                len: 2000,
                max: 1024
            }
        );
        assert_eq!(
            err.to_string(),
            "frame body of 2000 bytes exceeds the limit of 1024"
        );
        assert!(decode_request(b"definitely not an archive").is_err());
        assert!(decode_request(&[0xff; 64]).is_err());
        assert!(decode_request(&[]).is_err());
        let invalid = decode_request(b"garbage").unwrap_err().to_string();
        assert!(
            invalid.starts_with("frame body is not a valid archive: "),
            "{invalid}"
        );
    }
}
