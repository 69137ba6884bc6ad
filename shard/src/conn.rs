//! A connection is a slab entry of a few dozen bytes, not a task. It holds a
//! fixed-file slot, its timer state and, only while it has unsent bytes, a
//! boxed send queue.

use crate::timer::TimerSlot;
use bytes::{Buf, Bytes};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A free entry of the connection table.
    Vacant,
    /// Owned by the app: data is delivered, sends are accepted.
    Open,
    /// Waiting for queued bytes to leave before the fd moves to another shard.
    HandingOff,
    /// The fd is on its way to another shard (MsgRingSendFd in flight).
    HandedOff,
    /// The app asked to close: flush the queue, then shut down writing and
    /// read (and discard) until the peer closes or the linger deadline.
    Flushing,
    Lingering,
    /// Cancels and the close are in flight; freed when nothing is.
    Closed,
}

/// Flags in `Conn::flags`.
pub(crate) const RECV_ARMED: u16 = 1;
/// Receive with a multishot recv; without it, one recv at a time (used while
/// the connection may still be handed to another shard).
pub(crate) const STREAMING: u16 = 2;
pub(crate) const SEND_IN_FLIGHT: u16 = 4;
pub(crate) const CLOSE_IN_FLIGHT: u16 = 8;
pub(crate) const SHUTDOWN_IN_FLIGHT: u16 = 16;
/// Waiting for a provided buffer (the recv ended with ENOBUFS).
pub(crate) const STARVED: u16 = 32;
/// Our MsgRingSendFd for this connection has not completed yet.
pub(crate) const HANDOFF_IN_FLIGHT: u16 = 64;
/// Listed in `Reactor::send_ready`: its queue goes out at the end of this round.
pub(crate) const SEND_READY: u16 = 128;
/// The app wants `on_drained` when the send queue empties.
pub(crate) const WANT_DRAINED: u16 = 256;
/// The peer half-closed (recv returned 0) while we were still flushing: finish
/// sending, then close without lingering for an EOF we already have.
pub(crate) const PEER_EOF: u16 = 512;
/// Closed while its shutdown(SHUT_WR) was still running: the close of the
/// fixed slot waits for it (see `Reactor::final_close`).
pub(crate) const CLOSE_DEFERRED: u16 = 1024;
/// Accepted on a TLS listener: its bytes pass through the shard's `tls`
/// part (its state lives there, not here).
pub(crate) const TLS: u16 = 2048;
/// The app asked to move the connection out of the process (`Ctx::export`):
/// no recv is armed again; once nothing is in flight and nothing queued,
/// its descriptor is installed as a regular one (`INSTALL_IN_FLIGHT`).
pub(crate) const EXPORTING: u16 = 4096;
/// Our FIXED_FD_INSTALL for this connection has not completed yet.
pub(crate) const INSTALL_IN_FLIGHT: u16 = 8192;
/// The app lets this connection's new bytes wait for the coalescing window
/// (`Ctx::coalesce_sends`: a device, never a publisher awaiting replies,
/// whose wait would stall the whole pipeline behind it).
pub(crate) const COALESCED: u16 = 16384;

pub(crate) struct Conn {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    pub(crate) timer: TimerSlot,
    pub(crate) phase: Phase,
    pub(crate) flags: u16,
    pub(crate) send: Option<Box<SendQueue>>,
}

impl Conn {
    pub(crate) fn vacant() -> Conn {
        Conn {
            slot: 0,
            gen: 0,
            timer: TimerSlot::default(),
            phase: Phase::Vacant,
            flags: 0,
            send: None,
        }
    }

    pub(crate) fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
    pub(crate) fn set(&mut self, flag: u16) {
        self.flags |= flag;
    }
    pub(crate) fn clear(&mut self, flag: u16) {
        self.flags &= !flag;
    }
    /// Ops whose completion we still wait for before the entry may be freed.
    pub(crate) fn ops_in_flight(&self) -> bool {
        self.has(
            RECV_ARMED
                | SEND_IN_FLIGHT
                | CLOSE_IN_FLIGHT
                | SHUTDOWN_IN_FLIGHT
                | HANDOFF_IN_FLIGHT
                | CLOSE_DEFERRED
                | INSTALL_IN_FLIGHT,
        )
    }
    pub(crate) fn queued_bytes(&self) -> usize {
        self.send.as_ref().map_or(0, |q| q.queued_bytes)
    }
}

/// How many chunks one sendmsg gathers.
pub(crate) const IOV_MAX_PER_SEND: usize = 8;

/// Unsent bytes of one connection, as shared chunks (a per-recipient header
/// and a payload every recipient shares). The iovec array and msghdr live
/// here so their addresses stay valid while the kernel uses them.
pub(crate) struct SendQueue {
    chunks: VecDeque<Bytes>,
    pub(crate) queued_bytes: usize,
    iov: [libc::iovec; IOV_MAX_PER_SEND],
    msghdr: libc::msghdr,
}

impl SendQueue {
    pub(crate) fn new() -> Box<SendQueue> {
        Box::new(SendQueue {
            chunks: VecDeque::with_capacity(4),
            queued_bytes: 0,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_MAX_PER_SEND],
            // SAFETY: msghdr is a plain C struct for which all-zero is the
            // valid "no name, no control, no iovecs" value.
            msghdr: unsafe { std::mem::zeroed() },
        })
    }

    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.queued_bytes += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Fills the iovecs from the front of the queue and returns the msghdr
    /// for a sendmsg. The chunks must not change until `advance` is called.
    pub(crate) fn prepare(&mut self) -> *const libc::msghdr {
        let mut n = 0;
        for chunk in self.chunks.iter().take(IOV_MAX_PER_SEND) {
            self.iov[n] = libc::iovec {
                iov_base: chunk.as_ptr() as *mut libc::c_void,
                iov_len: chunk.len(),
            };
            n += 1;
        }
        self.msghdr.msg_iov = self.iov.as_mut_ptr();
        self.msghdr.msg_iovlen = n as _;
        &self.msghdr
    }

    /// Drops `sent` bytes from the front (a short write leaves the rest).
    pub(crate) fn advance(&mut self, mut sent: usize) {
        self.queued_bytes -= sent;
        while sent > 0 {
            let front = self.chunks.front_mut().expect("sent more than queued");
            if front.len() <= sent {
                sent -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(sent);
                sent = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_writes_advance_across_chunks() {
        let mut q = SendQueue::new();
        q.push(Bytes::from_static(b"ab"));
        q.push(Bytes::from_static(b""));
        q.push(Bytes::from_static(b"cdef"));
        assert_eq!(q.queued_bytes, 6);
        let m = q.prepare();
        // SAFETY: m points into q, which is alive.
        assert_eq!(unsafe { (*m).msg_iovlen }, 2);
        q.advance(3);
        assert_eq!(q.queued_bytes, 3);
        assert_eq!(&q.chunks[0][..], b"def");
        q.advance(3);
        assert!(q.is_empty());
    }

    #[test]
    fn idle_connection_is_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 32,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
