//! One connection's client side: the nonblocking upgrade handshake, then answering pings while idle.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

use super::HoldReport;
use crate::sys::Epoll;
use crate::wsclient::{self, HeadError, Rng};

const READ_CHUNK_BYTES: usize = 4096;
/// A response head plus a whole welcome frame fit; nothing bigger is valid.
const RECV_BUFFER_MAX_BYTES: usize =
    wsclient::RESPONSE_HEAD_MAX_BYTES + wsclient::FRAME_PAYLOAD_MAX_BYTES + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Connecting,
    Writing,
    ReadingHead,
    ReadingWelcome,
    Established,
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connect",
            Phase::Writing => "request",
            Phase::ReadingHead => "response",
            Phase::ReadingWelcome => "welcome",
            Phase::Established => "idle",
        }
    }
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) phase: Phase,
    pub(super) started_ns: u64,
    /// The upgrade request; freed once written.
    pub(super) request: Vec<u8>,
    /// Our Sec-WebSocket-Key, to check the server's accept; freed after.
    pub(super) key: String,
    pub(super) written_bytes: usize,
    /// Received bytes not yet consumed; freed whenever it drains, so an idle
    /// connection holds no buffer.
    pub(super) recv: Vec<u8>,
}

fn reason(phase: Phase, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect refused".to_string(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => format!("reset ({})", phase.name()),
        Some(libc::ETIMEDOUT) => format!("kernel timeout ({})", phase.name()),
        _ => format!("{}: {e}", phase.name()),
    }
}

impl Conn {
    /// Reads whatever the socket has, up to the buffer cap. Returns whether
    /// the peer closed its side.
    fn fill_recv(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        // Bounded: each pass appends ≥1 byte to a capped buffer, or returns.
        loop {
            let room = RECV_BUFFER_MAX_BYTES.saturating_sub(self.recv.len());
            if room == 0 {
                return Ok(false);
            }
            let want = room.min(chunk.len());
            match (&self.stream).read(&mut chunk[..want]) {
                Ok(0) => return Ok(true),
                Ok(n) => self.recv.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(reason(self.phase, &e)),
            }
        }
    }

    fn consume(&mut self, bytes: usize) {
        self.recv.drain(..bytes);
        if self.recv.is_empty() {
            self.recv = Vec::new();
        }
    }

    /// Advances the handshake as far as the socket allows. `Ok(true)`: the
    /// welcome arrived.
    pub(super) fn advance(
        &mut self,
        epoll: &Epoll,
        slot: u64,
        readiness: u32,
    ) -> Result<bool, String> {
        if self.phase == Phase::Connecting {
            if let Some(e) = self
                .stream
                .take_error()
                .map_err(|e| reason(self.phase, &e))?
            {
                return Err(reason(self.phase, &e));
            }
            if readiness & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                return Err("connect: hang-up".to_string());
            }
            self.phase = Phase::Writing;
        }
        if self.phase == Phase::Writing {
            // Bounded: each write makes progress or returns.
            while self.written_bytes < self.request.len() {
                match (&self.stream).write(&self.request[self.written_bytes..]) {
                    Ok(0) => return Err("request: socket closed".to_string()),
                    Ok(n) => self.written_bytes += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(reason(self.phase, &e)),
                }
            }
            self.request = Vec::new();
            epoll
                .modify(self.stream.as_fd(), libc::EPOLLIN as u32, slot)
                .map_err(|e| format!("epoll modify: {e}"))?;
            self.phase = Phase::ReadingHead;
            // The reply cannot be here yet; readability will say when.
            return Ok(false);
        }
        let peer_closed = match self.fill_recv() {
            Ok(peer_closed) => peer_closed,
            // A server that refuses may reset right after its status line;
            // the status says more than the reset.
            Err(why) => {
                if let (Phase::ReadingHead, Err(HeadError::NotSwitching(line))) =
                    (self.phase, wsclient::parse_response_head(&self.recv))
                {
                    return Err(format!("status: {line}"));
                }
                return Err(why);
            }
        };
        if self.phase == Phase::ReadingHead {
            match wsclient::parse_response_head(&self.recv) {
                Ok(None) if peer_closed => return Err("eof before response".to_string()),
                Ok(None) => return Ok(false),
                Ok(Some(head_bytes)) => {
                    if !wsclient::accept_matches(&self.recv[..head_bytes], &self.key) {
                        return Err("bad Sec-WebSocket-Accept".to_string());
                    }
                    self.key = String::new();
                    self.consume(head_bytes);
                    self.phase = Phase::ReadingWelcome;
                }
                Err(HeadError::TooLarge) => {
                    return Err(format!(
                        "response head over {} bytes",
                        wsclient::RESPONSE_HEAD_MAX_BYTES
                    ))
                }
                Err(HeadError::NotSwitching(line)) => return Err(format!("status: {line}")),
            }
        }
        // Bounded: each pass consumes one whole frame from a capped buffer.
        loop {
            let (opcode, fin, used) =
                match wsclient::parse_frame(&self.recv, wsclient::FRAME_PAYLOAD_MAX_BYTES) {
                    Err(e) => return Err(format!("welcome: {e}")),
                    Ok(None) if peer_closed => return Err("eof before welcome".to_string()),
                    Ok(None) => return Ok(false),
                    Ok(Some((frame, used))) => {
                        match frame.opcode {
                            wsclient::OPCODE_TEXT if frame.fin => {
                                wsclient::check_welcome(frame.payload)?
                            }
                            wsclient::OPCODE_CLOSE => {
                                return Err(format!(
                                    "closed by server: {}",
                                    wsclient::describe_close(frame.payload)
                                ))
                            }
                            _ => {}
                        }
                        (frame.opcode, frame.fin, used)
                    }
                };
            self.consume(used);
            match opcode {
                wsclient::OPCODE_TEXT if fin => {
                    self.phase = Phase::Established;
                    return Ok(true);
                }
                // A keepalive before the welcome is odd but harmless.
                wsclient::OPCODE_PING | wsclient::OPCODE_PONG => continue,
                other => return Err(format!("first frame: opcode {other:#x} fin {fin}")),
            }
        }
    }

    /// Serves an established connection that became readable: answers pings,
    /// skips anything else. `Err`: the connection is gone.
    pub(super) fn serve_idle(
        &mut self,
        rng: &mut Rng,
        hold: &mut HoldReport,
    ) -> Result<(), String> {
        let peer_closed = self.fill_recv()?;
        // Bounded: each pass consumes one whole frame from a capped buffer.
        loop {
            let parsed = wsclient::parse_frame(&self.recv, wsclient::FRAME_PAYLOAD_MAX_BYTES)
                .map_err(|e| format!("idle: {e}"))?;
            let Some((frame, used)) = parsed else {
                return if peer_closed {
                    Err("eof (idle)".to_string())
                } else {
                    Ok(())
                };
            };
            match frame.opcode {
                wsclient::OPCODE_PING => {
                    match wsclient::masked_control_frame(
                        wsclient::OPCODE_PONG,
                        frame.payload,
                        rng.mask(),
                    ) {
                        // A pong is 6–131 bytes into an idle socket's empty
                        // send buffer: it goes whole or the socket is broken.
                        Some(pong) => match (&self.stream).write(&pong) {
                            Ok(n) if n == pong.len() => hold.pings_answered += 1,
                            Ok(_) | Err(_) => hold.pongs_unsent += 1,
                        },
                        None => return Err("idle: ping over 125 bytes".to_string()),
                    }
                }
                wsclient::OPCODE_CLOSE => {
                    return Err(format!(
                        "closed by server: {}",
                        wsclient::describe_close(frame.payload)
                    ))
                }
                _ => hold.frames_ignored += 1,
            }
            self.consume(used);
        }
    }
}
