//! One open push socket of a shard: pipelined requests out, replies back in
//! request order, every read and write under a timeout; reopened, with the
//! unanswered requests sent again, when the server closes it cleanly (see
//! "Reconnecting" in the [`client`](super) doc).

use super::*;
use std::time::Instant;

/// Attempts to reopen a closed shard socket (and closes without a reply in
/// between) before the call fails with [`ClientError::Reconnect`].
pub const RECONNECT_ATTEMPTS_MAX: u32 = 12;
/// Longest time spent reopening one shard socket before giving up.
pub const RECONNECT_TIME_MAX: Duration = Duration::from_secs(30);
/// Wait before the second attempt; doubles each attempt up to
/// [`RECONNECT_DELAY_MAX`]. The first attempt is at once: in a live upgrade
/// the successor already accepts on the very same socket.
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(10);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

/// One request queued or written and not answered yet, kept encoded so it
/// can be sent again on a reopened socket.
struct Awaiting {
    id: u64,
    frame: Vec<u8>,
}

/// How reopening after a close is going: attempts since the last reply
/// read, and since when.
#[derive(Default)]
struct Retry {
    attempts: u32,
    since: Option<Instant>,
}

/// One open shard socket and the requests on it that await a reply.
pub(super) struct Conn {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Encoded requests not yet written: at most [`OUT_FLUSH_BYTES`] plus one
    /// frame (or, right after a reopen, the unanswered requests:
    /// [`AWAITING_BYTES_MAX`] plus one frame).
    out: Vec<u8>,
    /// The requests queued or written and not yet answered, oldest first:
    /// the server answers in this order. At most the caller's window, and
    /// [`AWAITING_BYTES_MAX`] plus one frame.
    awaiting: VecDeque<Awaiting>,
    awaiting_bytes: usize,
    /// A write found the socket closed by the server: nothing more is
    /// written to it; the replies it sent before closing are read, then
    /// the socket is reopened and the rest sent again.
    closed_for_writes: bool,
    retry: Retry,
    /// Reused reply body buffer, at most [`REPLY_BODY_BYTES_MAX`].
    body: Vec<u8>,
    io_timeout: Duration,
    /// Times this connection was reopened (for tests and logs).
    reopened: u64,
}

/// End of stream, a reset or a broken pipe: the server closed the socket.
fn closed_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Connects to `socket` and sets the timeouts; the raw error if it fails.
fn open_stream(socket: &Path, io_timeout: Duration) -> io::Result<(UnixStream, UnixStream)> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    let writer = stream.try_clone()?;
    Ok((stream, writer))
}

impl Conn {
    pub(super) fn open(
        run_dir: &Path,
        shard: usize,
        io_timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let socket = shard_socket_path(run_dir, shard);
        let (stream, writer) = open_stream(&socket, io_timeout).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                run_dir: run_dir.to_owned(),
                socket: socket.clone(),
            },
            _ => ClientError::Io {
                socket: socket.clone(),
                source: e,
            },
        })?;
        Ok(Conn {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            writer,
            out: Vec::new(),
            awaiting: VecDeque::new(),
            awaiting_bytes: 0,
            closed_for_writes: false,
            retry: Retry::default(),
            body: Vec::new(),
            io_timeout,
            socket,
            reopened: 0,
        })
    }

    pub(super) fn idle(&self) -> bool {
        self.awaiting.is_empty() && self.out.is_empty()
    }

    /// Requests queued or written and not answered yet.
    pub(super) fn awaiting_len(&self) -> usize {
        self.awaiting.len()
    }

    /// Their encoded size: the memory kept to send them again.
    pub(super) fn awaiting_bytes(&self) -> usize {
        self.awaiting_bytes
    }

    pub(super) fn reopened(&self) -> u64 {
        self.reopened
    }

    /// Has the server closed this (idle) connection? Looks without blocking:
    /// end of stream means closed; nothing to read means open.
    pub(super) fn closed_by_peer(&mut self) -> bool {
        if self.closed_for_writes {
            return true;
        }
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
        let closed = match peeked {
            Ok(empty) => empty,
            Err(e) => closed_kind(e.kind()),
        };
        closed || restored.is_err()
    }

    pub(super) fn io_error(&self, source: io::Error) -> ClientError {
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
    pub(super) fn queue(&mut self, id: u64, frame: Vec<u8>) -> Result<(), ClientError> {
        if !self.closed_for_writes {
            self.out.extend_from_slice(&frame);
        }
        self.awaiting_bytes += frame.len();
        self.awaiting.push_back(Awaiting { id, frame });
        if self.out.len() >= OUT_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is queued. A socket the server closed is not an error
    /// here: the replies it sent before closing are still to be read, and
    /// `recv` reopens and sends again what they do not answer.
    pub(super) fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() || self.closed_for_writes {
            return Ok(());
        }
        match self.writer.write_all(&self.out) {
            Ok(()) => {}
            Err(e) if closed_kind(e.kind()) => self.closed_for_writes = true,
            Err(e) => return Err(self.io_error(e)),
        }
        self.out.clear();
        if self.out.capacity() > 2 * OUT_FLUSH_BYTES {
            self.out = Vec::new(); // one big request does not pin its buffer
        }
        Ok(())
    }

    /// Reads one reply, or `None` if the server closed the socket before
    /// its first byte (at a frame boundary: a clean close). A close in the
    /// middle of a reply is an error.
    fn read_reply_or_closed(&mut self) -> Result<Option<Reply>, ClientError> {
        // Bounded: each turn reads, or retries a read a signal interrupted.
        loop {
            match self.reader.fill_buf() {
                Ok([]) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if closed_kind(e.kind()) => return Ok(None),
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.read_reply().map(Some)
    }

    pub(super) fn read_reply(&mut self) -> Result<Reply, ClientError> {
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

    pub(super) fn read_exact_or_closed(
        &mut self,
        buf: &mut [u8],
        part: &str,
    ) -> Result<(), ClientError> {
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ClientError::Protocol(format!(
                    "{} closed the connection in the middle of the reply {part} to request {}; \
                     the server stopped abruptly (see its log)",
                    self.socket.display(),
                    self.awaiting.front().map_or(0, |a| a.id),
                ))
            } else {
                self.io_error(e)
            }
        })
    }

    /// Reads the reply to the oldest outstanding request, writing any queued
    /// requests first (the reply may depend on them). A [`Reply::Error`] or
    /// a reply to another id is an error. If the server closed the socket
    /// cleanly first, reopens it and sends the unanswered requests again.
    pub(super) fn recv(&mut self) -> Result<Reply, ClientError> {
        self.flush()?;
        // Bounded: each turn reads a reply or reopens, and reopening gives
        // up after RECONNECT_ATTEMPTS_MAX turns without a reply.
        loop {
            let Some(expected_id) = self.awaiting.front().map(|a| a.id) else {
                // Callers only read with requests outstanding.
                return Err(ClientError::Protocol(
                    "internal: reading a reply with no request outstanding".to_owned(),
                ));
            };
            match self.read_reply_or_closed()? {
                Some(reply) => {
                    if let Some(done) = self.awaiting.pop_front() {
                        self.awaiting_bytes -= done.frame.len();
                    }
                    self.retry = Retry::default();
                    return check_reply(expected_id, reply);
                }
                None => self.reopen_and_resend()?,
            }
        }
    }

    /// The server closed the socket after answering every request it read
    /// (a drain, or the old process of a live upgrade): the requests still
    /// awaiting a reply were never processed. Reopens the same socket path
    /// (in a live upgrade, now the successor's) with bounded retries and
    /// sends them again, in order.
    fn reopen_and_resend(&mut self) -> Result<(), ClientError> {
        let since = *self.retry.since.get_or_insert_with(Instant::now);
        let (stream, writer) = loop {
            self.retry.attempts += 1;
            let attempts = self.retry.attempts;
            // Doubles from the second attempt; the first is at once.
            let delay = match attempts {
                0 | 1 => Duration::ZERO,
                n => RECONNECT_DELAY_FIRST
                    .saturating_mul(1 << (n - 2).min(16))
                    .min(RECONNECT_DELAY_MAX),
            };
            let give_up = |reason: String| ClientError::Reconnect {
                socket: self.socket.clone(),
                unanswered: self.awaiting.len(),
                attempts,
                waited_ms: since.elapsed().as_millis(),
                reason,
            };
            if attempts > RECONNECT_ATTEMPTS_MAX || since.elapsed() + delay > RECONNECT_TIME_MAX {
                return Err(give_up(
                    "it kept closing or refusing connections".to_owned(),
                ));
            }
            std::thread::sleep(delay);
            match open_stream(&self.socket, self.io_timeout) {
                Ok(opened) => break opened,
                Err(e) if attempts >= RECONNECT_ATTEMPTS_MAX => {
                    return Err(give_up(e.to_string()));
                }
                Err(_) => continue,
            }
        };
        self.reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        self.writer = writer;
        self.closed_for_writes = false;
        self.reopened += 1;
        self.out.clear();
        for request in &self.awaiting {
            self.out.extend_from_slice(&request.frame);
        }
        self.flush()
    }

    pub(super) fn recv_pushed(&mut self) -> Result<PushOutcome, ClientError> {
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

pub(super) fn reply_id(reply: &Reply) -> u64 {
    match *reply {
        Reply::Pushed { id, .. }
        | Reply::Presence { id, .. }
        | Reply::Status { id, .. }
        | Reply::Draining { id, .. }
        | Reply::Error { id, .. } => id,
    }
}

pub(super) fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Pushed { .. } => "Pushed",
        Reply::Presence { .. } => "Presence",
        Reply::Status { .. } => "Status",
        Reply::Draining { .. } => "Draining",
        Reply::Error { .. } => "Error",
    }
}

pub(super) fn unexpected(wanted: &str, got: &Reply) -> ClientError {
    ClientError::Protocol(format!(
        "expected a {wanted} reply to request {}, got {}",
        reply_id(got),
        reply_kind(got)
    ))
}

/// Turns a `Reply::Error` into [`ClientError::Server`] and a reply to
/// another request into [`ClientError::Protocol`]; passes the rest through.
pub(super) fn check_reply(expected_id: u64, reply: Reply) -> Result<Reply, ClientError> {
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
pub(super) fn encode(
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
