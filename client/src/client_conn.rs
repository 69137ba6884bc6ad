//! One open push socket of a shard: pipelined requests out, replies back in
//! request order, every read and write under a timeout.

use super::*;

/// One open shard socket and the requests on it that await a reply.
pub(super) struct Conn {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Encoded requests not yet written: at most [`OUT_FLUSH_BYTES`] plus one
    /// frame.
    out: Vec<u8>,
    /// Ids of the requests queued or written and not yet answered, oldest
    /// first: the server answers in this order.
    pub(super) awaiting_ids: VecDeque<u64>,
    /// Reused reply body buffer, at most [`REPLY_BODY_BYTES_MAX`].
    body: Vec<u8>,
    io_timeout: Duration,
}

impl Conn {
    pub(super) fn open(
        run_dir: &Path,
        shard: usize,
        io_timeout: Duration,
    ) -> Result<Conn, ClientError> {
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

    pub(super) fn idle(&self) -> bool {
        self.awaiting_ids.is_empty() && self.out.is_empty()
    }

    /// Has the server closed this (idle) connection? Looks without blocking:
    /// end of stream means closed; nothing to read means open.
    pub(super) fn closed_by_peer(&mut self) -> bool {
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
    pub(super) fn queue(&mut self, id: u64, frame: &[u8]) -> Result<(), ClientError> {
        self.out.extend_from_slice(frame);
        self.awaiting_ids.push_back(id);
        if self.out.len() >= OUT_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), ClientError> {
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
    pub(super) fn write_failed(&mut self, error: io::Error) -> ClientError {
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
    pub(super) fn recv(&mut self) -> Result<Reply, ClientError> {
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
