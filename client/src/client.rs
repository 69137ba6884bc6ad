//! The blocking client library backends use to push, and what `pushgate push`
//! and `pushgate status` run on.
//!
//! It speaks [`wire`] frames over the shards' Unix sockets
//! (`<run_dir>/shard-<i>.sock`). Each user is sent straight to its home shard
//! ([`home_shard`]), so a push costs the server no forwarding hop; broadcast
//! and status go to shard 0, which fans out itself. One socket per shard is
//! opened on first use and kept; requests on it are pipelined and its replies
//! come back in request order, which is what lets [`Client::push_many`] keep
//! many requests in flight without matching replies by anything but order.
//!
//! Std only and blocking: a backend that wants concurrency runs one `Client`
//! per thread. Every read and write has a timeout, so a hung server fails a
//! call instead of hanging the caller.
//!
//! # Reconnecting
//!
//! A server that drains (`pushgate drain`, SIGTERM) or hands over to a new
//! binary (`pushgate upgrade`) closes a push socket only after answering
//! every request it *read*; what the client wrote after that is not read
//! and not processed. So when a shard socket closes at a reply boundary
//! (end of stream, connection reset, broken pipe) with requests awaiting a
//! reply: a request whose reply was read is done; every request after the
//! last reply read was never processed. The client reopens the same
//! `shard-<i>.sock` path — after `pushgate upgrade`, the successor accepts
//! on that very socket — and sends exactly those requests again, in order,
//! so nothing is lost and nothing is processed twice. Reopening is retried
//! [`RECONNECT_ATTEMPTS_MAX`] times with a doubling delay (the first at
//! once), for at most [`RECONNECT_TIME_MAX`]; then the call fails with
//! [`ClientError::Reconnect`], which says how many requests were left
//! unanswered. [`Client::push`], [`Client::push_many`], [`Client::broadcast`]
//! and the queries all do this; `pushgate push` (and `--ndjson`) run on it.
//!
//! A server that crashes or is stopped with SIGINT may have processed
//! requests it did not answer. For pushes in the middle of a live upgrade
//! this is covered too: every push names itself ([`Request::PushOnce`]:
//! a random publisher id kept for the client's life, and its request id,
//! numbered from a random start and unchanged by a resend), and the
//! successor answers a resend of a push it already processed from memory
//! instead of delivering it again. Not covered: a crash outside a live
//! upgrade (a restarted server knows nothing of what it processed),
//! broadcasts, and a close in the middle of a reply (reported as an
//! error, not resent). A drain request that is resent reaches whichever
//! process serves the socket next.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_core::de::IgnoredAny;
use serde_core::ser::{Serialize, SerializeStruct, Serializer};

use crate::route::{home_shard, SHARDS_MAX};
use crate::wire::{self, Reply, Request, ShardStatus};

/// How long one read or write on a push socket may block before the call
/// fails: long enough for a loaded server, short enough that a hung one does
/// not hang a CLI or a backend thread forever.
pub const IO_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Requests [`Client::push_many`] keeps in flight per shard. Enough to hide
/// the round trip; bounded so unread replies (a few dozen bytes each) always
/// fit in the socket buffer and neither side can block the other.
pub const PUSH_WINDOW_REQUESTS_DEFAULT: usize = 256;

/// Largest request frame body sent unless [`Client::set_frame_body_bytes_max`]
/// says otherwise: the server's default `push_frame_bytes_max`. The server
/// refuses a bigger frame and closes the connection, so the client refuses
/// it first, with a message that says what to change.
pub const FRAME_BODY_BYTES_MAX_DEFAULT: usize = wire::FRAME_BODY_BYTES_MAX_DEFAULT;

/// Largest reply body accepted. Replies are small (a status reply of 1,024
/// shards is ~40 kB); one this big means the socket is not a pushgate's.
const REPLY_BODY_BYTES_MAX: usize = wire::FRAME_BODY_BYTES_MAX_DEFAULT;

/// Longest `--ndjson` line for a frame limit of `frame_body_bytes_max`. A
/// line carries one request's users and data, which must fit in a frame;
/// JSON escaping and whitespace can make the text larger, hence the slack.
pub fn ndjson_line_bytes_max(frame_body_bytes_max: usize) -> usize {
    frame_body_bytes_max.saturating_mul(4)
}

/// Encoded size of the requests [`Client::push_many`] keeps awaiting a reply
/// per shard, at most (besides the window): they are kept until answered so
/// they can be sent again on a reopened socket (see "Reconnecting").
pub const AWAITING_BYTES_MAX: usize = 4 << 20;

/// Encoded requests are gathered per shard and written once this many bytes
/// are waiting, so pipelined small pushes cost one syscall per batch.
const OUT_FLUSH_BYTES: usize = 64 * 1024;

/// Receive buffer per shard socket; replies are small, a burst of pipelined
/// ones arrives in a few reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A reply body above this is not kept for reuse, so one large `Status`
/// reply does not pin its buffer for the life of the client.
const BODY_BUFFER_KEEP_BYTES: usize = 64 * 1024;

/// The Unix socket shard `shard` listens on for pushes.
pub fn shard_socket_path(run_dir: &Path, shard: usize) -> PathBuf {
    run_dir.join(format!("shard-{shard}.sock"))
}

/// Counts summed over every user a push reached; see [`Reply::Pushed`] for
/// what each means.
/// Serialises as `{"delivered":N,"stored":N,"rejected":N}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Online users the notification was sent to now.
    pub delivered: u64,
    /// Offline users it was kept for, delivered when they reconnect.
    pub stored: u64,
    /// Users it was not accepted for (invalid user ID, or server overloaded).
    pub rejected: u64,
}

impl std::ops::AddAssign for PushOutcome {
    fn add_assign(&mut self, other: PushOutcome) {
        self.delivered += other.delivered;
        self.stored += other.stored;
        self.rejected += other.rejected;
    }
}

/// Serialises as `{"user":U,"online":B,"devices":N}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user: String,
    pub online: bool,
    /// Connected devices of the user (0 when offline).
    pub devices: u32,
}

// By hand, not derived: the crate depends on serde's traits only, so a
// backend does not build serde's derive macros for two small structs.
impl Serialize for PushOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("PushOutcome", 3)?;
        out.serialize_field("delivered", &self.delivered)?;
        out.serialize_field("stored", &self.stored)?;
        out.serialize_field("rejected", &self.rejected)?;
        out.end()
    }
}

impl Serialize for Presence {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Presence", 3)?;
        out.serialize_field("user", &self.user)?;
        out.serialize_field("online", &self.online)?;
        out.serialize_field("devices", &self.devices)?;
        out.end()
    }
}

/// Checks `data_json` is exactly one JSON value (surrounding whitespace
/// allowed) without building it. The server checks the same and refuses the
/// request otherwise; checking here says so before anything is sent.
pub fn check_data(data_json: &str) -> Result<(), ClientError> {
    serde_json::from_str::<IgnoredAny>(data_json)
        .map(|_| ())
        .map_err(|e| ClientError::InvalidData(format!("data is not one JSON value: {e}")))
}

/// Splits `users` by home shard: `(shard, users)` in ascending shard order,
/// each group keeping the order the users were given in. Sorting pairs (not a
/// bucket per shard) keeps the cost proportional to the users, not to the
/// shard count, which matters for `push_many` of single-user pushes.
pub fn group_by_home_shard<S>(
    users: impl IntoIterator<Item = S>,
    shard_count: usize,
) -> Vec<(usize, Vec<String>)>
where
    S: Into<String>,
{
    let mut homed: Vec<(usize, String)> = users
        .into_iter()
        .map(|user| {
            let user = user.into();
            (home_shard(&user, shard_count), user)
        })
        .collect();
    homed.sort_by_key(|&(shard, _)| shard); // stable: keeps the given order
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    for (shard, user) in homed {
        match groups.last_mut() {
            Some((last, group)) if *last == shard => group.push(user),
            _ => groups.push((shard, vec![user])),
        }
    }
    groups
}

/// A random number from the standard library's randomly keyed hasher (no
/// dependency): names a publisher, not a secret.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[path = "client_conn.rs"]
mod conn;
#[path = "client_error.rs"]
mod error;
#[path = "client_ndjson.rs"]
mod ndjson;

use conn::{encode, unexpected, Conn};
pub use conn::{RECONNECT_ATTEMPTS_MAX, RECONNECT_TIME_MAX};
pub use error::ClientError;
pub use ndjson::{parse_push_line, NdjsonPushes};

/// A connection to a running pushgate: one lazily opened socket per shard.
pub struct Client {
    run_dir: PathBuf,
    shard_count: usize,
    /// Index = shard; `None` until first used, and again after an error left
    /// the connection in an unknown state.
    conns: Vec<Option<Conn>>,
    /// Names this client's pushes (with their request ids) so a process
    /// that took over from one that crashed mid-hand-over answers a resend
    /// of one it already processed instead of delivering it twice
    /// ([`Request::PushOnce`]). Random, kept for the client's lifetime.
    publisher: u32,
    /// Next request id; never 0, which means "unreadable frame". Starts at
    /// a random number, so two publishers that drew the same `publisher`
    /// still name different requests.
    next_id: u64,
    io_timeout: Duration,
    push_window_requests: usize,
    frame_body_bytes_max: usize,
}

impl Client {
    /// Connects to shard 0 and asks it for the status of every shard, which
    /// gives the shard count the home of a user depends on.
    pub fn connect(run_dir: &Path) -> Result<Client, ClientError> {
        Client::connect_with_io_timeout(run_dir, IO_TIMEOUT_DEFAULT)
    }

    /// [`Client::connect`] with `io_timeout` for every read and write instead
    /// of [`IO_TIMEOUT_DEFAULT`].
    pub fn connect_with_io_timeout(
        run_dir: &Path,
        io_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let mut client = Client {
            run_dir: run_dir.to_owned(),
            shard_count: 1, // until the server says; only shard 0 is used meanwhile
            conns: vec![None],
            publisher: random_u64() as u32,
            next_id: (random_u64() >> 1).max(1),
            io_timeout,
            push_window_requests: PUSH_WINDOW_REQUESTS_DEFAULT,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
        };
        let shards = client.status()?;
        // The highest number, not the length: a shard missing from the
        // reply (slow to answer) still counts. Not empty: status() checks.
        let shard_count = shards.last().map_or(1, |s| s.shard as usize + 1);
        client.shard_count = shard_count;
        client.conns.resize_with(shard_count, || None);
        Ok(client)
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Refuse request frames over `body_bytes_max` instead of
    /// [`FRAME_BODY_BYTES_MAX_DEFAULT`]: set it to the server's
    /// `push_frame_bytes_max` when that is not the default.
    pub fn set_frame_body_bytes_max(&mut self, body_bytes_max: usize) {
        self.frame_body_bytes_max = body_bytes_max;
    }

    pub fn frame_body_bytes_max(&self) -> usize {
        self.frame_body_bytes_max
    }

    /// The size check (first: no point parsing what cannot be sent), then
    /// the JSON check.
    fn check_payload(&self, data_json: &str) -> Result<(), ClientError> {
        if data_json.len() > self.frame_body_bytes_max {
            return Err(ClientError::TooLarge {
                what: "the notification data".to_owned(),
                body_bytes: data_json.len(),
                body_bytes_max: self.frame_body_bytes_max,
                hint: "send a smaller payload, for example a URL or ID the device fetches \
                       (or raise the server's push_frame_bytes_max)",
            });
        }
        check_data(data_json)
    }

    /// Delivers `data_json` (one JSON value, as text) to every device of each
    /// of `users`. Users are grouped by home shard and each group is sent to
    /// its shard's socket; all requests are written before any reply is read.
    pub fn push(&mut self, users: &[&str], data_json: &str) -> Result<PushOutcome, ClientError> {
        self.check_payload(data_json)?;
        // Encode everything first: a request too large for one shard refuses
        // the whole push before any shard has delivered part of it.
        let mut frames = Vec::new();
        for (shard, group) in group_by_home_shard(users.iter().copied(), self.shard_count) {
            let id = self.take_id();
            let user_count = group.len();
            let request = Request::PushOnce {
                publisher: self.publisher,
                id,
                users: group,
                data: data_json.to_owned(),
            };
            let frame = encode(&request, self.frame_body_bytes_max, || {
                format!("the frame pushing to the {user_count} users homed on shard {shard}")
            })?;
            frames.push((shard, frame, id));
        }
        let result = self.send_then_sum(frames);
        self.forget_failed(&result);
        result
    }

    fn send_then_sum(
        &mut self,
        frames: Vec<(usize, Vec<u8>, u64)>,
    ) -> Result<PushOutcome, ClientError> {
        let shards: Vec<usize> = frames.iter().map(|&(shard, _, _)| shard).collect();
        for (shard, frame, id) in frames {
            self.conn(shard)?.queue(id, frame)?;
        }
        for &shard in &shards {
            self.conn(shard)?.flush()?;
        }
        let mut outcome = PushOutcome::default();
        for &shard in &shards {
            outcome += self.conn(shard)?.recv_pushed()?;
        }
        Ok(outcome)
    }

    /// Delivers `data_json` to every connected user (each device once).
    pub fn broadcast(&mut self, data_json: &str) -> Result<PushOutcome, ClientError> {
        self.check_payload(data_json)?;
        let id = self.take_id();
        let request = Request::Broadcast {
            id,
            data: data_json.to_owned(),
        };
        let frame = encode(&request, self.frame_body_bytes_max, || {
            "the broadcast frame".to_owned()
        })?;
        let result = self.send_then_sum(vec![(0, frame, id)]);
        self.forget_failed(&result);
        result
    }

    /// Is `user` online, and on how many devices? Asked of its home shard,
    /// which holds the answer.
    pub fn presence(&mut self, user: &str) -> Result<Presence, ClientError> {
        let shard = home_shard(user, self.shard_count);
        let id = self.take_id();
        let request = Request::Presence {
            id,
            user: user.to_owned(),
        };
        let frame = encode(&request, self.frame_body_bytes_max, || {
            "the presence request frame".to_owned()
        })?;
        let result = self
            .round_trip(shard, id, frame)
            .and_then(|reply| match reply {
                Reply::Presence {
                    online, devices, ..
                } => Ok(Presence {
                    user: user.to_owned(),
                    online,
                    devices,
                }),
                other => Err(unexpected("Presence", &other)),
            });
        self.forget_failed(&result);
        result
    }

    /// Starts a drip drain: the server stops accepting clients, closes them
    /// with 1012 at `rate_per_s` (0 = its configured rate) and exits when
    /// empty. Returns the rate in force.
    pub fn drain(&mut self, rate_per_s: u32) -> Result<u32, ClientError> {
        let id = self.take_id();
        let request = Request::Drain {
            id,
            rate_per_s,
            confirm: wire::DRAIN_CONFIRM.to_owned(),
        };
        let frame = encode(&request, self.frame_body_bytes_max, || {
            "the drain request frame".to_owned()
        })?;
        let result = self.round_trip(0, id, frame).and_then(|reply| match reply {
            Reply::Draining { rate_per_s, .. } => Ok(rate_per_s),
            other => Err(unexpected("Draining", &other)),
        });
        self.forget_failed(&result);
        result
    }

    /// Connection and user counts of every shard, ordered by shard number.
    /// A shard that did not answer the server in time is left out.
    pub fn status(&mut self) -> Result<Vec<ShardStatus>, ClientError> {
        let id = self.take_id();
        let frame = encode(&Request::Status { id }, self.frame_body_bytes_max, || {
            "the status request frame".to_owned()
        })?;
        let result = self.round_trip(0, id, frame).and_then(|reply| match reply {
            Reply::Status { mut shards, .. } => {
                shards.sort_by_key(|s| s.shard);
                // The server leaves out a shard that did not answer in
                // time, so gaps are possible; a repeat is not.
                // The bound keeps a bogus number from sizing
                // `conns` absurdly.
                let repeated = shards.windows(2).any(|w| w[0].shard == w[1].shard);
                let beyond = shards
                    .last()
                    .is_some_and(|s| s.shard as usize >= SHARDS_MAX);
                if shards.is_empty() || repeated || beyond {
                    let numbers: Vec<u32> = shards.iter().map(|s| s.shard).collect();
                    Err(ClientError::Protocol(format!(
                        "the status reply lists shards {numbers:?}; expected each shard \
                             once, numbered below {SHARDS_MAX}"
                    )))
                } else {
                    Ok(shards)
                }
            }
            other => Err(unexpected("Status", &other)),
        });
        self.forget_failed(&result);
        result
    }

    /// Many pushes, pipelined: up to [`PUSH_WINDOW_REQUESTS_DEFAULT`]
    /// requests in flight per shard, replies read as the window fills, all
    /// outcomes summed. Each item is `(users, data_json)`; items are sent in
    /// order and an item with no users is skipped.
    ///
    /// An invalid item (data not JSON, too large) stops the call: the items
    /// before it are still sent and answered, and the error names the item
    /// and how many went out. A socket the server closes cleanly (a drain,
    /// a live upgrade) is reopened and the unanswered requests sent again
    /// ("Reconnecting" above). After any other error (connection, server)
    /// it is unknown which of the items in flight were delivered.
    pub fn push_many<I>(&mut self, items: I) -> Result<PushOutcome, ClientError>
    where
        I: IntoIterator<Item = (Vec<String>, String)>,
    {
        let mut outcome = PushOutcome::default();
        let mut sent_items = 0u64;
        let result = self
            .queue_pushes(items, &mut outcome, &mut sent_items)
            .and_then(|()| self.drain_pushes(&mut outcome));
        let result = match result {
            Ok(()) => Ok(outcome),
            Err(e @ (ClientError::InvalidData(_) | ClientError::TooLarge { .. })) => {
                // Nothing of the invalid item went out; finish what did, so
                // "everything before it was sent" holds.
                self.drain_pushes(&mut outcome).and(Err(match e {
                    ClientError::InvalidData(reason) => ClientError::InvalidData(format!(
                        "{reason} (stopped there; the {sent_items} pushes before it were sent)"
                    )),
                    other => other,
                }))
            }
            Err(e) => Err(e),
        };
        self.forget_failed(&result);
        result
    }

    /// Encodes and queues every item, reading replies whenever a shard's
    /// window is full.
    fn queue_pushes<I>(
        &mut self,
        items: I,
        outcome: &mut PushOutcome,
        sent_items: &mut u64,
    ) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = (Vec<String>, String)>,
    {
        let window = self.push_window_requests;
        for (index, (users, data)) in items.into_iter().enumerate() {
            let item_number = index + 1;
            self.check_payload(&data).map_err(|e| match e {
                ClientError::InvalidData(reason) => {
                    ClientError::InvalidData(format!("push {item_number}: {reason}"))
                }
                other => other,
            })?;
            // Encode all parts first: an item too large for one shard is not
            // sent to the others either.
            let mut frames = Vec::new();
            for (shard, group) in group_by_home_shard(users, self.shard_count) {
                let id = self.take_id();
                let user_count = group.len();
                let request = Request::PushOnce {
                    publisher: self.publisher,
                    id,
                    users: group,
                    data: data.clone(),
                };
                let frame = encode(&request, self.frame_body_bytes_max, || {
                    format!(
                        "the frame of push {item_number} to the {user_count} users homed on \
                         shard {shard}"
                    )
                })?;
                frames.push((shard, id, frame));
            }
            for (shard, id, frame) in frames {
                let conn = self.conn(shard)?;
                // Bounded: each turn answers one of at most `window` requests.
                while conn.awaiting_len() >= window
                    || (conn.awaiting_len() > 0 && conn.awaiting_bytes() >= AWAITING_BYTES_MAX)
                {
                    *outcome += conn.recv_pushed()?;
                }
                conn.queue(id, frame)?;
            }
            *sent_items += 1;
        }
        Ok(())
    }

    /// Writes every queued request, then reads every outstanding reply.
    fn drain_pushes(&mut self, outcome: &mut PushOutcome) -> Result<(), ClientError> {
        // Every shard's tail is written before waiting on any, so all shards
        // work on their last requests at once.
        for conn in self.conns.iter_mut().flatten() {
            conn.flush()?;
        }
        for conn in self.conns.iter_mut().flatten() {
            // Bounded by the window.
            while conn.awaiting_len() > 0 {
                *outcome += conn.recv_pushed()?;
            }
        }
        Ok(())
    }

    fn round_trip(&mut self, shard: usize, id: u64, frame: Vec<u8>) -> Result<Reply, ClientError> {
        let conn = self.conn(shard)?;
        conn.queue(id, frame)?;
        conn.recv()
    }

    /// How many times a shard socket was reopened after the server closed
    /// it with requests unanswered (and those requests sent again), over
    /// the connections open now.
    pub fn reconnects(&self) -> u64 {
        self.conns.iter().flatten().map(Conn::reopened).sum()
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        // 2^64 requests will not happen, but never hand out the reserved 0.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The random number that names this client's pushes
    /// ([`Request::PushOnce`]).
    pub fn publisher_id(&self) -> u32 {
        self.publisher
    }

    fn conn(&mut self, shard: usize) -> Result<&mut Conn, ClientError> {
        let slot = &mut self.conns[shard];
        // A kept connection the server has since closed (it restarted or
        // stopped) would fail the next write: reopen it instead. Only an idle
        // one: with requests outstanding, a close is an error to report.
        if slot
            .as_mut()
            .is_some_and(|c| c.idle() && c.closed_by_peer())
        {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(Conn::open(&self.run_dir, shard, self.io_timeout)?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }

    /// After an error the connections may be out of step with the server
    /// (replies outstanding) or closed by it (it closes after refusing a
    /// frame): drop them all so the next call starts clean. Reopening a Unix
    /// socket is cheap; reading a stale reply as the answer is not.
    fn forget_failed<T>(&mut self, result: &Result<T, ClientError>) {
        if result.is_err() {
            self.conns.iter_mut().for_each(|slot| *slot = None);
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
