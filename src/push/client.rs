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

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::IgnoredAny;

use crate::config::SHARDS_MAX;
use crate::push::wire::{self, Reply, Request, ShardStatus};
use crate::route::home_shard;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Presence {
    pub user: String,
    pub online: bool,
    /// Connected devices of the user (0 when offline).
    pub devices: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no pushgate at {}: {} does not exist or refuses connections — \
         is `pushgate serve --run-dir {}` running?",
        run_dir.display(),
        socket.display(),
        run_dir.display()
    )]
    NotRunning { run_dir: PathBuf, socket: PathBuf },

    #[error("{}: {source}", socket.display())]
    Io { socket: PathBuf, source: io::Error },

    #[error(
        "{} did not answer within {io_timeout_ms} ms; the server is overloaded or hung \
         (check its log), or give the client a longer timeout",
        socket.display()
    )]
    Timeout {
        socket: PathBuf,
        io_timeout_ms: u128,
    },

    /// The bytes on the socket are not what the protocol allows: a reply to
    /// another request, a reply of the wrong kind, a frame that does not
    /// decode, or the connection closing with replies outstanding.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The server answered with [`Reply::Error`].
    #[error("the server refused the request: {0}")]
    Server(String),

    /// The notification payload or a `--ndjson` line is not acceptable.
    #[error("{0}")]
    InvalidData(String),

    #[error(
        "{what} is {body_bytes} bytes, over the push socket's frame limit of {body_bytes_max} \
         bytes; {hint}"
    )]
    TooLarge {
        what: String,
        body_bytes: usize,
        body_bytes_max: usize,
        hint: &'static str,
    },
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

/// One `--ndjson` line: `{"users":["a","b"],"data":<any JSON>}`. Unknown
/// keys are refused so a typo (`"user"`) is reported, not silently ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PushLine {
    users: Vec<String>,
    /// The data's text as written, only checked to be JSON: rebuilding it
    /// from a `Value` would round big integers and rewrite floats (`1.10`
    /// → `1.1`), and devices are promised the payload as sent.
    data: Box<serde_json::value::RawValue>,
}

/// Parses one `--ndjson` line into `(users, data)`, the data byte for byte
/// as written on the line (without the whitespace around it); `None` for a
/// blank line. The error says what is wrong, not where: the caller knows
/// the line number.
pub fn parse_push_line(line: &str) -> Result<Option<(Vec<String>, String)>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let parsed: PushLine = serde_json::from_str(line)
        .map_err(|e| format!("{e}; expected {{\"users\":[\"USER\",…],\"data\":<any JSON>}}"))?;
    if parsed.users.is_empty() {
        return Err(
            "\"users\" is empty; name at least one user (`pushgate push --all` reaches everyone)"
                .to_owned(),
        );
    }
    let data = Box::<str>::from(parsed.data).into_string();
    Ok(Some((parsed.users, data)))
}

/// The pushes in an NDJSON stream, one per non-blank line, for
/// [`Client::push_many`]. Reading stops at the first bad line; the error is
/// kept in [`NdjsonPushes::error`], since `push_many` takes plain items and
/// the lines before it have already been sent by then.
pub struct NdjsonPushes<R> {
    reader: R,
    line_bytes_max: usize,
    line: String,
    line_number: u64,
    /// Pushes handed out so far.
    pub items: u64,
    /// Why reading stopped early, naming the line; `None` at a clean end.
    pub error: Option<ClientError>,
    /// Set at the end or the first bad line: nothing is read after either.
    done: bool,
}

impl<R: BufRead> NdjsonPushes<R> {
    /// Reads `reader`, refusing a line longer than `line_bytes_max` (see
    /// [`ndjson_line_bytes_max`]) so one missing newline cannot fill memory.
    pub fn new(reader: R, line_bytes_max: usize) -> NdjsonPushes<R> {
        NdjsonPushes {
            reader,
            line_bytes_max,
            line: String::new(),
            line_number: 0,
            items: 0,
            error: None,
            done: false,
        }
    }

    fn next_item(&mut self) -> Result<Option<(Vec<String>, String)>, String> {
        // Bounded by the stream length: every turn consumes a line.
        loop {
            self.line.clear();
            self.line_number += 1;
            let limit_bytes = self.line_bytes_max as u64 + 1; // + the newline
            let read_bytes = (&mut self.reader)
                .take(limit_bytes)
                .read_line(&mut self.line)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::InvalidData => "is not UTF-8".to_owned(),
                    _ => format!("could not be read: {e}"),
                })?;
            if read_bytes == 0 {
                return Ok(None);
            }
            if read_bytes as u64 == limit_bytes && !self.line.ends_with('\n') {
                return Err(format!(
                    "is longer than {} bytes; one push must fit in a frame",
                    self.line_bytes_max
                ));
            }
            if let Some(item) = parse_push_line(&self.line)? {
                return Ok(Some(item));
            }
        }
    }
}

impl<R: BufRead> Iterator for NdjsonPushes<R> {
    type Item = (Vec<String>, String);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_item() {
            Ok(Some(item)) => {
                self.items += 1;
                Some(item)
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(reason) => {
                self.done = true;
                let line = self.line_number;
                self.error = Some(ClientError::InvalidData(format!("line {line}: {reason}")));
                self.line = String::new(); // a refused long line keeps no buffer
                None
            }
        }
    }
}

/// One open shard socket and the requests on it that await a reply.
struct Conn {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Encoded requests not yet written: at most [`OUT_FLUSH_BYTES`] plus one
    /// frame.
    out: Vec<u8>,
    /// Ids of the requests queued or written and not yet answered, oldest
    /// first: the server answers in this order.
    awaiting_ids: VecDeque<u64>,
    /// Reused reply body buffer, at most [`REPLY_BODY_BYTES_MAX`].
    body: Vec<u8>,
    io_timeout: Duration,
}

impl Conn {
    fn open(run_dir: &Path, shard: usize, io_timeout: Duration) -> Result<Conn, ClientError> {
        let socket = shard_socket_path(run_dir, shard);
        let stream = UnixStream::connect(&socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                run_dir: run_dir.to_owned(),
                socket: socket.clone(),
            },
            _ => ClientError::Io {
                socket: socket.clone(),
                source: e,
            },
        })?;
        let io_error = |source| ClientError::Io {
            socket: socket.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(io_timeout))
            .map_err(io_error)?;
        stream
            .set_write_timeout(Some(io_timeout))
            .map_err(io_error)?;
        let writer = stream.try_clone().map_err(io_error)?;
        Ok(Conn {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            writer,
            out: Vec::new(),
            awaiting_ids: VecDeque::new(),
            body: Vec::new(),
            io_timeout,
            socket,
        })
    }

    fn idle(&self) -> bool {
        self.awaiting_ids.is_empty() && self.out.is_empty()
    }

    /// Has the server closed this (idle) connection? Looks without blocking:
    /// end of stream means closed; nothing to read means open.
    fn closed_by_peer(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false; // unread bytes; the next read reports them
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let peeked = self.reader.fill_buf().map(|bytes| bytes.is_empty());
        let restored = self.reader.get_ref().set_nonblocking(false);
        // A socket that cannot be made blocking again is no use either.
        matches!(peeked, Ok(true)) || restored.is_err()
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                socket: self.socket.clone(),
                io_timeout_ms: self.io_timeout.as_millis(),
            },
            _ => ClientError::Io {
                socket: self.socket.clone(),
                source,
            },
        }
    }

    /// Queues an encoded request; writes the batch once it is big enough.
    fn queue(&mut self, id: u64, frame: &[u8]) -> Result<(), ClientError> {
        self.out.extend_from_slice(frame);
        self.awaiting_ids.push_back(id);
        if self.out.len() >= OUT_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.writer.write_all(&self.out) {
            return Err(self.write_failed(e));
        }
        self.out.clear();
        if self.out.capacity() > 2 * OUT_FLUSH_BYTES {
            self.out = Vec::new(); // one big request does not pin its buffer
        }
        Ok(())
    }

    /// The server closes a connection after refusing a frame, so a failed
    /// write usually has the reason waiting unread: fetch it if it is there.
    fn write_failed(&mut self, error: io::Error) -> ClientError {
        let closed_by_server = matches!(
            error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if closed_by_server {
            // Bounded: one read per request still awaiting a reply.
            for _ in 0..self.awaiting_ids.len() {
                match self.read_reply() {
                    Ok(Reply::Error { message, .. }) => return ClientError::Server(message),
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        self.io_error(error)
    }

    fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut length = [0u8; wire::LENGTH_BYTES];
        self.read_exact_or_closed(&mut length, "length")?;
        let body_bytes = u32::from_le_bytes(length) as usize;
        if body_bytes > REPLY_BODY_BYTES_MAX {
            return Err(ClientError::Protocol(format!(
                "{} sent a reply frame of {body_bytes} bytes, over the limit of \
                 {REPLY_BODY_BYTES_MAX}; is it a pushgate push socket?",
                self.socket.display()
            )));
        }
        let mut body = std::mem::take(&mut self.body);
        body.resize(body_bytes, 0);
        let read = self.read_exact_or_closed(&mut body, "body");
        let decoded = read.and_then(|()| {
            wire::decode_reply(&body).map_err(|e| {
                ClientError::Protocol(format!(
                    "{} sent a reply that does not decode ({e}); are client and server the \
                     same pushgate version?",
                    self.socket.display()
                ))
            })
        });
        if body.capacity() <= BODY_BUFFER_KEEP_BYTES {
            self.body = body;
        }
        decoded
    }

    fn read_exact_or_closed(&mut self, buf: &mut [u8], part: &str) -> Result<(), ClientError> {
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ClientError::Protocol(format!(
                    "{} closed the connection before the reply {part} to request {} arrived; \
                     the server is stopping or refused an earlier frame (see its log)",
                    self.socket.display(),
                    self.awaiting_ids.front().copied().unwrap_or(0),
                ))
            } else {
                self.io_error(e)
            }
        })
    }

    /// Reads the reply to the oldest outstanding request, writing any queued
    /// requests first (the reply may depend on them). A [`Reply::Error`] or
    /// a reply to another id is an error.
    fn recv(&mut self) -> Result<Reply, ClientError> {
        self.flush()?;
        let Some(&expected_id) = self.awaiting_ids.front() else {
            // Callers only read with requests outstanding.
            return Err(ClientError::Protocol(
                "internal: reading a reply with no request outstanding".to_owned(),
            ));
        };
        let reply = self.read_reply()?;
        self.awaiting_ids.pop_front();
        check_reply(expected_id, reply)
    }

    fn recv_pushed(&mut self) -> Result<PushOutcome, ClientError> {
        match self.recv()? {
            Reply::Pushed {
                delivered,
                stored,
                rejected,
                ..
            } => Ok(PushOutcome {
                delivered: delivered.into(),
                stored: stored.into(),
                rejected: rejected.into(),
            }),
            other => Err(unexpected("Pushed", &other)),
        }
    }
}

fn reply_id(reply: &Reply) -> u64 {
    match *reply {
        Reply::Pushed { id, .. }
        | Reply::Presence { id, .. }
        | Reply::Status { id, .. }
        | Reply::Draining { id, .. }
        | Reply::Error { id, .. } => id,
    }
}

fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Pushed { .. } => "Pushed",
        Reply::Presence { .. } => "Presence",
        Reply::Status { .. } => "Status",
        Reply::Draining { .. } => "Draining",
        Reply::Error { .. } => "Error",
    }
}

fn unexpected(wanted: &str, got: &Reply) -> ClientError {
    ClientError::Protocol(format!(
        "expected a {wanted} reply to request {}, got {}",
        reply_id(got),
        reply_kind(got)
    ))
}

/// Turns a `Reply::Error` into [`ClientError::Server`] and a reply to
/// another request into [`ClientError::Protocol`]; passes the rest through.
fn check_reply(expected_id: u64, reply: Reply) -> Result<Reply, ClientError> {
    match reply {
        // Id 0: the server could not read the frame at all, so it cannot
        // name the request; the message is still the answer to it.
        Reply::Error { id, message } if id == expected_id || id == 0 => {
            Err(ClientError::Server(message))
        }
        Reply::Error { id, message } => Err(ClientError::Protocol(format!(
            "the server answered request {id} while request {expected_id} was next, \
             with the error: {message}"
        ))),
        reply if reply_id(&reply) != expected_id => Err(ClientError::Protocol(format!(
            "the server answered request {} while request {expected_id} was next",
            reply_id(&reply)
        ))),
        reply => Ok(reply),
    }
}

/// Encodes `request`, refusing a frame the server would refuse.
fn encode(
    request: &Request,
    body_bytes_max: usize,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, ClientError> {
    let frame = wire::encode_request(request);
    let body_bytes = frame.len() - wire::LENGTH_BYTES;
    if body_bytes > body_bytes_max {
        return Err(ClientError::TooLarge {
            what: what(),
            body_bytes,
            body_bytes_max,
            hint: "split the users over several pushes or send a smaller payload \
                   (or raise the server's push_frame_bytes_max)",
        });
    }
    Ok(frame)
}

/// A connection to a running pushgate: one lazily opened socket per shard.
pub struct Client {
    run_dir: PathBuf,
    shard_count: usize,
    /// Index = shard; `None` until first used, and again after an error left
    /// the connection in an unknown state.
    conns: Vec<Option<Conn>>,
    /// Next request id; starts at 1 because 0 means "unreadable frame".
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
            next_id: 1,
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
            let request = Request::Push {
                id,
                users: group,
                data: data_json.to_owned(),
            };
            let frame = encode(&request, self.frame_body_bytes_max, || {
                format!("the frame pushing to the {user_count} users homed on shard {shard}")
            })?;
            frames.push((shard, frame, id));
        }
        let result = self.send_then_sum(&frames);
        self.forget_failed(&result);
        result
    }

    fn send_then_sum(
        &mut self,
        frames: &[(usize, Vec<u8>, u64)],
    ) -> Result<PushOutcome, ClientError> {
        for (shard, frame, id) in frames {
            self.conn(*shard)?.queue(*id, frame)?;
        }
        for (shard, _, _) in frames {
            self.conn(*shard)?.flush()?;
        }
        let mut outcome = PushOutcome::default();
        for (shard, _, _) in frames {
            outcome += self.conn(*shard)?.recv_pushed()?;
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
        let result = self.send_then_sum(&[(0, frame, id)]);
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
            .round_trip(shard, id, &frame)
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
            confirm: crate::push::wire::DRAIN_CONFIRM.to_owned(),
        };
        let frame = encode(&request, self.frame_body_bytes_max, || {
            "the drain request frame".to_owned()
        })?;
        let result = self
            .round_trip(0, id, &frame)
            .and_then(|reply| match reply {
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
        let result = self
            .round_trip(0, id, &frame)
            .and_then(|reply| match reply {
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
    /// and how many went out. After any other error (connection, server) it
    /// is unknown which of the items in flight were delivered.
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
                let request = Request::Push {
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
                while conn.awaiting_ids.len() >= window {
                    *outcome += conn.recv_pushed()?;
                }
                conn.queue(id, &frame)?;
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
            while !conn.awaiting_ids.is_empty() {
                *outcome += conn.recv_pushed()?;
            }
        }
        Ok(())
    }

    fn round_trip(&mut self, shard: usize, id: u64, frame: &[u8]) -> Result<Reply, ClientError> {
        let conn = self.conn(shard)?;
        conn.queue(id, frame)?;
        conn.recv()
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        // 2^64 requests will not happen, but never hand out the reserved 0.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
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
