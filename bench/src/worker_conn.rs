//! One connection's client side: the nonblocking upgrade handshake, then answering pings while idle.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

use pushgate::ws::client_handshake::RESPONSE_HEAD_BYTES_MAX;
use pushgate::ws::deflate::Inflater;
use pushgate::ws::{self, Opcode, ResponseHeadError};

use super::{HoldReport, RecvStats};
use crate::payload;
use crate::proto::{self, Incoming, Protocol, SetupStep};
use crate::sys::Epoll;
use crate::wsclient::{self, Rng};

const READ_CHUNK_BYTES: usize = 4096;
/// Reads of one readable connection per epoll event.
const READS_PER_EVENT: usize = 4;
/// The worker's shared read buffer: holds any whole frame a client accepts.
pub(super) const SCRATCH_BYTES: usize = 64 * 1024;
/// A response head plus a whole welcome frame fit; nothing bigger is valid.
const RECV_BUFFER_MAX_BYTES: usize =
    RESPONSE_HEAD_BYTES_MAX + wsclient::FRAME_PAYLOAD_MAX_BYTES + 16;
thread_local! {
    /// The worker's inflater and its output, for `--protocol
    /// pushgate-deflate` (one per worker thread, as one per server shard).
    static INFLATE: std::cell::RefCell<(Inflater, Vec<u8>)> =
        std::cell::RefCell::new((Inflater::default(), Vec::new()));
}

/// Inflates a compressed message (RSV1) and hands its bytes to `use_it`.
fn with_inflated<T>(
    payload: &[u8],
    use_it: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, String> {
    INFLATE.with_borrow_mut(|(inflater, out)| {
        out.clear();
        inflater
            .inflate(payload, FRAME_PAYLOAD_MAX_BYTES, |chunk| {
                out.extend_from_slice(chunk);
                Ok(())
            })
            .map_err(|e| format!("inflate: {}", e.reason))?;
        use_it(out)
    })
}

/// The cap on a server's data frame, as the parser takes it.
const FRAME_PAYLOAD_MAX_BYTES: u64 = wsclient::FRAME_PAYLOAD_MAX_BYTES as u64;

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
    /// Sequence numbers received ([`SeqWindow`]): duplicates and reordering.
    pub(super) seqs: SeqWindow,
}

/// What a connection knows of the bench sequence numbers it received: the
/// highest, and which of the 64 below it arrived. A number seen before is a
/// duplicate; one below the highest but unseen arrived out of order (which
/// concurrent publishers may cause); one more than 64 below the highest
/// cannot be told apart and counts as out of order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqWindow {
    highest: u64,
    /// Bit i: `highest − i` was received (bit 0 is `highest` itself).
    seen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    InOrder,
    Reordered,
    Duplicate,
}

impl SeqWindow {
    pub fn record(&mut self, seq: u64) -> SeqVerdict {
        if self.seen == 0 || seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if self.seen == 0 || shift >= 64 {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = seq;
            return SeqVerdict::InOrder;
        }
        let back = self.highest - seq;
        if back >= 64 {
            return SeqVerdict::Reordered;
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            SeqVerdict::Duplicate
        } else {
            self.seen |= bit;
            SeqVerdict::Reordered
        }
    }
}

/// Writes a small masked text frame whole, or fails: it goes into a
/// socket's nearly empty send buffer.
fn send_text(stream: &TcpStream, text: &str, rng: &mut Rng) -> Result<(), String> {
    let mut frame = Vec::with_capacity(text.len() + ws::frame::FRAME_HEADER_BYTES_MAX);
    ws::write_frame(
        &mut frame,
        true,
        Opcode::Text,
        text.as_bytes(),
        Some(rng.mask()),
    );
    match (&*stream).write(&frame) {
        Ok(n) if n == frame.len() => Ok(()),
        Ok(_) => Err("short write of a control reply".to_string()),
        Err(e) => Err(format!("reply: {e}")),
    }
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
        protocol: Protocol,
        rng: &mut Rng,
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
                if let (Phase::ReadingHead, Err(ResponseHeadError::NotSwitching(line))) =
                    (self.phase, ws::parse_response_head(&self.recv))
                {
                    return Err(format!("status: {line}"));
                }
                return Err(why);
            }
        };
        if self.phase == Phase::ReadingHead {
            match ws::parse_response_head(&self.recv) {
                Ok(None) if peer_closed => return Err("eof before response".to_string()),
                Ok(None) => return Ok(false),
                Ok(Some(head_bytes)) => {
                    if !ws::accept_matches(&self.recv[..head_bytes], &self.key) {
                        return Err("bad Sec-WebSocket-Accept".to_string());
                    }
                    self.key = String::new();
                    self.consume(head_bytes);
                    self.phase = Phase::ReadingWelcome;
                }
                Err(ResponseHeadError::TooLarge) => {
                    return Err(format!(
                        "response head over {RESPONSE_HEAD_BYTES_MAX} bytes"
                    ))
                }
                Err(ResponseHeadError::NotSwitching(line)) => {
                    return Err(format!("status: {line}"))
                }
            }
        }
        // Bounded: each pass consumes one whole frame from a capped buffer.
        loop {
            let (opcode, fin, step, used) =
                match ws::parse_server_frame(&self.recv, FRAME_PAYLOAD_MAX_BYTES) {
                    Err(e) => return Err(format!("welcome: {}", e.reason)),
                    Ok(None) if peer_closed => return Err("eof before welcome".to_string()),
                    Ok(None) => return Ok(false),
                    Ok(Some(frame)) => {
                        let step = match frame.opcode {
                            Opcode::Text if frame.fin => {
                                Some(proto::setup_text(protocol, frame.payload)?)
                            }
                            Opcode::Close => {
                                return Err(format!(
                                    "closed by server: {}",
                                    wsclient::describe_close(frame.payload)
                                ))
                            }
                            _ => None,
                        };
                        (frame.opcode, frame.fin, step, frame.frame_bytes)
                    }
                };
            self.consume(used);
            match (opcode, step) {
                (_, Some(SetupStep::Established)) => {
                    self.phase = Phase::Established;
                    return Ok(true);
                }
                (_, Some(SetupStep::Reply(text))) => send_text(&self.stream, text, rng)?,
                (_, Some(SetupStep::Wait)) => continue,
                // A keepalive before the welcome is odd but harmless.
                (Opcode::Ping | Opcode::Pong, None) => continue,
                (other, None) => {
                    return Err(format!("first frame: opcode {:#x} fin {fin}", other.bits()))
                }
            }
        }
    }

    /// Serves an established connection that became readable: counts and
    /// times pushed messages, answers pings, skips anything else. `Err`: the
    /// connection is gone.
    ///
    /// Reads go into the worker's `scratch` buffer; only a partial frame
    /// left at the end of a read is copied into the connection's own
    /// buffer, so a connection between messages holds no memory.
    pub(super) fn serve(
        &mut self,
        protocol: Protocol,
        rng: &mut Rng,
        hold: &mut HoldReport,
        stats: &mut RecvStats,
        scratch: &mut [u8],
    ) -> Result<(), String> {
        let mut filled = self.recv.len();
        scratch[..filled].copy_from_slice(&self.recv);
        self.recv = Vec::new();
        if filled > 0 {
            // Whole frames may be waiting already (they came with the
            // welcome): the socket may have nothing more to say for a while.
            let now_ns = crate::sys::monotonic_ns();
            let used = self.frames(&scratch[..filled], protocol, rng, hold, stats, now_ns)?;
            scratch.copy_within(used..filled, 0);
            filled -= used;
        }
        // Bounded: each pass reads ≥1 byte into a fixed buffer or returns;
        // at most READS_PER_EVENT reads, then level-triggered epoll calls
        // again, so one busy connection cannot starve the others.
        for _ in 0..READS_PER_EVENT {
            let room = scratch.len() - filled;
            let read = match (&self.stream).read(&mut scratch[filled..]) {
                Ok(0) => {
                    self.keep_partial(&scratch[..filled]);
                    return Err("eof (idle)".to_string());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(reason(self.phase, &e)),
            };
            filled += read;
            let now_ns = crate::sys::monotonic_ns();
            let used = self.frames(&scratch[..filled], protocol, rng, hold, stats, now_ns)?;
            scratch.copy_within(used..filled, 0);
            filled -= used;
            if read < room {
                break; // the socket is drained
            }
        }
        self.keep_partial(&scratch[..filled]);
        Ok(())
    }

    fn keep_partial(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.recv = rest.to_vec();
        }
    }

    /// Handles every whole frame at the front of `buf`; returns the bytes used.
    fn frames(
        &mut self,
        buf: &[u8],
        protocol: Protocol,
        rng: &mut Rng,
        hold: &mut HoldReport,
        stats: &mut RecvStats,
        now_ns: u64,
    ) -> Result<usize, String> {
        let mut used = 0;
        // Bounded: each pass consumes one whole frame of `buf`.
        loop {
            let rsv_allowed = if protocol.deflate() { ws::RSV1 } else { 0 };
            let parsed =
                ws::parse_server_frame_allowing(&buf[used..], FRAME_PAYLOAD_MAX_BYTES, rsv_allowed)
                    .map_err(|e| format!("idle: {}", e.reason))?;
            let Some(frame) = parsed else {
                return Ok(used);
            };
            if frame.rsv & ws::RSV1 != 0 && frame.opcode == Opcode::Text && frame.fin {
                // pushgate sends a compressed push as one frame.
                with_inflated(frame.payload, |message| {
                    match proto::incoming_text(protocol, message) {
                        Incoming::Message(data) => match payload::parse(data) {
                            Some(stamp) => {
                                let verdict = self.seqs.record(stamp.seq);
                                stats.record(stamp.sent_ns, now_ns, verdict);
                            }
                            None => stats.unstamped += 1,
                        },
                        _ => hold.frames_ignored += 1,
                    }
                    Ok(())
                })?;
                used += frame.frame_bytes;
                continue;
            }
            match frame.opcode {
                Opcode::Text => match proto::incoming_text(protocol, frame.payload) {
                    Incoming::Message(data) => match payload::parse(data) {
                        Some(stamp) => {
                            let verdict = self.seqs.record(stamp.seq);
                            stats.record(stamp.sent_ns, now_ns, verdict);
                        }
                        None => stats.unstamped += 1,
                    },
                    Incoming::Reply(text) => {
                        send_text(&self.stream, text, rng)?;
                        hold.pings_answered += 1;
                    }
                    Incoming::Other => hold.frames_ignored += 1,
                },
                Opcode::Ping => {
                    // The parser held the ping to 125 bytes: the pong is
                    // 6–131 bytes into an idle socket's empty send buffer,
                    // so it goes whole or the socket is broken.
                    let mut pong = Vec::with_capacity(6 + frame.payload.len());
                    let mask = Some(rng.mask());
                    ws::write_control_frame(&mut pong, Opcode::Pong, frame.payload, mask);
                    match (&self.stream).write(&pong) {
                        Ok(n) if n == pong.len() => hold.pings_answered += 1,
                        Ok(_) | Err(_) => hold.pongs_unsent += 1,
                    }
                }
                Opcode::Close => {
                    return Err(format!(
                        "closed by server: {}",
                        wsclient::describe_close(frame.payload)
                    ))
                }
                _ => hold.frames_ignored += 1,
            }
            used += frame.frame_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SeqVerdict::*, SeqWindow};

    #[test]
    fn seq_window_tells_duplicates_from_reordering() {
        let mut w = SeqWindow::default();
        assert_eq!(w.record(5), InOrder);
        assert_eq!(w.record(9), InOrder);
        assert_eq!(w.record(7), Reordered);
        assert_eq!(w.record(7), Duplicate);
        assert_eq!(w.record(9), Duplicate);
        assert_eq!(w.record(5), Duplicate);
        assert_eq!(w.record(6), Reordered);
        assert_eq!(w.record(200), InOrder);
        assert_eq!(w.record(137), Reordered); // 63 below: still tracked
        assert_eq!(w.record(137), Duplicate);
        assert_eq!(w.record(100), Reordered); // too far back to know
        assert_eq!(w.record(201), InOrder);
        assert_eq!(w.record(200), Duplicate);
    }
}
