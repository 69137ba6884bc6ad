//! Messages between shards: a bounded flume channel per shard plus an
//! eventfd whose read is armed in the receiving ring, so a sleeping shard
//! wakes up. Wake-ups coalesce: a sender writes the eventfd only when the
//! receiver has not been notified since it last drained, so a burst of
//! messages costs one wake-up (a cross-core wake is ~15 µs here).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What travels between shards.
pub(crate) enum Envelope<M> {
    App {
        from: u16,
        msg: M,
    },
    /// The app state of a connection whose fd follows via MsgRingSendFd
    /// (a HandoffIn completion with the same token).
    Handoff {
        token: u64,
        msg: M,
        /// A TLS connection's record state travels with it.
        tls: Option<crate::tls::Moved>,
    },
    /// The fd of this handoff will never arrive.
    HandoffCancel {
        token: u64,
    },
}

/// Wakes one shard from any thread.
pub struct Waker {
    eventfd: OwnedFd,
    notified: AtomicBool,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            notified: AtomicBool::new(false),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Makes sure the shard looks at its inbox soon.
    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.force_wake();
        }
    }

    fn force_wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full
        // counter (EAGAIN) still means a wake-up is pending, so the result
        // needs no handling.
        unsafe {
            libc::write(self.fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Called by the receiving shard before it drains its inbox, so a
    /// message sent during the drain triggers a new wake-up.
    pub(crate) fn reset(&self) {
        self.notified.store(false, Ordering::Release);
    }
}

/// The `from` a shard's app sees on a message sent by an [`Injector`]
/// (from a thread that is not a shard).
pub const FROM_OUTSIDE: usize = u16::MAX as usize;

/// Sends app messages to one shard from a thread that is not a shard (the
/// Redis thread): the same bounded inbox and coalesced wake-up as the
/// mesh. Never blocks: a full inbox hands the message back.
pub struct Injector<M> {
    tx: flume::Sender<Envelope<M>>,
    waker: Arc<Waker>,
}

impl<M> Clone for Injector<M> {
    fn clone(&self) -> Self {
        Injector {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<M> Injector<M> {
    pub(crate) fn new(tx: flume::Sender<Envelope<M>>, waker: Arc<Waker>) -> Injector<M> {
        Injector { tx, waker }
    }

    /// Queues `msg` for the shard (its app sees `from` = [`FROM_OUTSIDE`]);
    /// `Err(msg)` when its inbox is full or it has stopped.
    pub fn try_send(&self, msg: M) -> Result<(), M> {
        let envelope = Envelope::App {
            from: FROM_OUTSIDE as u16,
            msg,
        };
        match self.tx.try_send(envelope) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(flume::TrySendError::Full(Envelope::App { msg, .. }))
            | Err(flume::TrySendError::Disconnected(Envelope::App { msg, .. })) => Err(msg),
            Err(_) => unreachable!("an injector only sends App envelopes"),
        }
    }
}

/// One shard's view of another: where to send messages and fds.
pub(crate) struct Peer<M> {
    pub(crate) tx: flume::Sender<Envelope<M>>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) ring_fd: RawFd,
}

pub(crate) struct Mesh<M> {
    pub(crate) peers: Vec<Peer<M>>,
    pub(crate) inbox: flume::Receiver<Envelope<M>>,
    pub(crate) waker: Arc<Waker>,
}

impl<M> Mesh<M> {
    /// Sends to another shard without blocking. A full channel returns the
    /// envelope: a shard must never wait on another (two could deadlock).
    pub(crate) fn send(&self, to: usize, envelope: Envelope<M>) -> Result<(), Envelope<M>> {
        let peer = &self.peers[to];
        match peer.tx.try_send(envelope) {
            Ok(()) => {
                peer.waker.wake();
                Ok(())
            }
            Err(flume::TrySendError::Full(e)) | Err(flume::TrySendError::Disconnected(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_coalesce_until_reset() {
        let w = Waker::new().unwrap();
        w.wake();
        w.wake();
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from our eventfd.
        let n = unsafe { libc::read(w.fd(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(buf), 1, "second wake must be coalesced");
        w.reset();
        w.wake();
        // SAFETY: as above.
        let n = unsafe { libc::read(w.fd(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
    }
}
