//! What the runtime offers a live binary upgrade (the gateway's
//! `takeover` module drives it): the listening sockets it can hand to a
//! successor process, a gate that pauses and resumes accepting on every
//! shard without closing a listener, and listeners inherited from a
//! predecessor.
//!
//! Why pause instead of close: a listening socket shared by two processes
//! (the same `struct file`, passed with SCM_RIGHTS) keeps its accept queue
//! for as long as either holds it, so the successor accepts from the very
//! socket the old process stops accepting from, and no connection attempt
//! is refused or reset. Closing one member of an SO_REUSEPORT group instead
//! would reset the connections queued on it. And a paused listener can be
//! resumed: if the successor dies after taking over, the old process takes
//! its listeners back (`AcceptGate::resume`).

use crate::mesh::Waker;
use io_uring::opcode;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether this kernel can move connections between processes: it has
/// IORING_OP_FIXED_FD_INSTALL (a direct descriptor becomes a regular one,
/// Linux 6.8) and IORING_OP_FILES_UPDATE (a regular one enters a ring's
/// table). Probed once with a small ring of its own; without them a live
/// upgrade moves the listeners only and drains the connections.
pub fn connection_moves_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let probe = || -> std::io::Result<bool> {
            let ring = io_uring::IoUring::new(2)?;
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe)?;
            Ok(probe.is_supported(opcode::FixedFdInstall::CODE)
                && probe.is_supported(opcode::FilesUpdate::CODE))
        };
        match probe() {
            Ok(supported) => supported,
            Err(e) => {
                tracing::warn!("probing io_uring for connection moves failed: {e}");
                false
            }
        }
    })
}

/// A listening socket received from a predecessor: `listener` is the index
/// into `RuntimeConfig::listeners`. A runtime started with them uses them
/// in the order given (the predecessor's shard order), dealing the sockets
/// of one listener round-robin over its shards.
#[derive(Debug)]
pub struct InheritedListener {
    pub listener: usize,
    pub fd: OwnedFd,
}

/// A duplicate of one of this runtime's listening sockets, for a successor.
#[derive(Debug)]
pub struct ListenerCopy {
    /// Index into `RuntimeConfig::listeners`.
    pub listener: usize,
    /// The shard that accepts on it.
    pub shard: usize,
    pub fd: OwnedFd,
}

/// Duplicates of every listening socket, kept by the runtime so that a
/// successor can be given them (and so that they stay open, paused, while
/// a successor takes over). Bounded: shards × listeners descriptors.
///
/// A plain drain must `forget` them: a listener the shards closed but a
/// copy keeps open would queue connections nobody accepts, where a closed
/// one refuses them at once so the client goes elsewhere.
#[derive(Clone, Debug)]
pub struct ListenerCopies {
    copies: Arc<Mutex<Option<Vec<ListenerCopy>>>>,
}

impl ListenerCopies {
    pub(crate) fn new(copies: Vec<ListenerCopy>) -> ListenerCopies {
        ListenerCopies {
            copies: Arc::new(Mutex::new(Some(copies))),
        }
    }

    /// Fresh duplicates of every copy (for sending: the receiver's
    /// descriptors are its own), or `None` once forgotten.
    pub fn duplicate(&self) -> std::io::Result<Option<Vec<ListenerCopy>>> {
        let guard = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        let Some(copies) = guard.as_ref() else {
            return Ok(None);
        };
        copies
            .iter()
            .map(|c| {
                Ok(ListenerCopy {
                    listener: c.listener,
                    shard: c.shard,
                    fd: c.fd.try_clone()?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map(Some)
    }

    /// Closes the copies: from now on the shards' own descriptors are the
    /// only ones (a plain drain closes those).
    pub fn forget(&self) {
        self.copies.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Pauses and resumes accepting on every shard. Listeners stay open while
/// paused: connection attempts wait in the accept queue (for a successor
/// accepting from the same sockets, or for `resume`).
#[derive(Clone)]
pub struct AcceptGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    paused: AtomicBool,
    /// Bumped by `renew`: every shard re-arms its accepts.
    renewals: AtomicU64,
    /// Shards whose accepts are all cancelled and completed since the pause.
    shards_paused: AtomicUsize,
    wakers: Vec<Arc<Waker>>,
}

impl AcceptGate {
    pub(crate) fn new(wakers: Vec<Arc<Waker>>) -> AcceptGate {
        AcceptGate {
            inner: Arc::new(GateInner {
                paused: AtomicBool::new(false),
                renewals: AtomicU64::new(0),
                shards_paused: AtomicUsize::new(0),
                wakers,
            }),
        }
    }

    /// Asks every shard to stop accepting (cancel its multishot accepts).
    pub fn pause(&self) {
        self.inner.paused.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Asks every shard to accept again.
    pub fn resume(&self) {
        self.inner.paused.store(false, Ordering::Release);
        self.wake_all();
    }

    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::Acquire)
    }

    /// Asks every shard to cancel its armed accepts and arm them afresh.
    ///
    /// Why: while two processes' rings wait on the same listening socket
    /// (a take-over, until the old one's pause completes), io_uring's
    /// exclusive accept polls can lose a wake-up — a connection then waits
    /// in the accept queue of a socket whose armed accept is never woken
    /// (seen under CPU load: shards idle, the queue not empty). A fresh
    /// accept tries at once and registers a clean wait, so the successor
    /// renews once the old process has stopped accepting.
    pub fn renew(&self) {
        self.inner.renewals.fetch_add(1, Ordering::AcqRel);
        self.wake_all();
    }

    /// Waits until every shard confirmed that no accept of it is armed any
    /// more (no connection can reach this process from now on), polling
    /// every millisecond up to `timeout`. False on time-out.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inner.shards_paused.load(Ordering::Acquire) >= self.inner.wakers.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wake_all(&self) {
        for w in &self.inner.wakers {
            w.wake();
        }
    }
}

/// One shard's view of the gate: what it has done about the latest request.
#[derive(Debug, Default)]
pub(crate) struct GateFollower {
    /// The shard has cancelled its accepts for a pause.
    paused: bool,
    /// ...and counted itself in `shards_paused`.
    confirmed: bool,
    /// The last `renew` acted on.
    renewals_seen: u64,
}

/// What a shard should do this round about the gate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GateStep {
    Nothing,
    /// Cancel every armed accept and arm none until `Resume`.
    Pause,
    /// Arm the accepts again.
    Resume,
    /// Cancel every armed accept; each is armed afresh when its
    /// cancellation completes.
    Renew,
}

impl GateFollower {
    /// Called once per loop round: `accepts_armed` says whether any accept
    /// of this shard is still armed (its cancel has not completed yet).
    pub(crate) fn step(&mut self, gate: &AcceptGate, accepts_armed: bool) -> GateStep {
        let wanted = gate.is_paused();
        if wanted && !self.paused {
            self.paused = true;
            return GateStep::Pause;
        }
        if !wanted && self.paused {
            if self.confirmed {
                gate.inner.shards_paused.fetch_sub(1, Ordering::AcqRel);
            }
            *self = GateFollower {
                renewals_seen: self.renewals_seen,
                ..GateFollower::default()
            };
            return GateStep::Resume;
        }
        let renewals = gate.inner.renewals.load(Ordering::Acquire);
        if renewals != self.renewals_seen {
            self.renewals_seen = renewals;
            if !self.paused {
                return GateStep::Renew;
            }
        }
        if self.paused && !self.confirmed && !accepts_armed {
            self.confirmed = true;
            gate.inner.shards_paused.fetch_add(1, Ordering::AcqRel);
        }
        GateStep::Nothing
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(shards: usize) -> AcceptGate {
        AcceptGate::new(
            (0..shards)
                .map(|_| Arc::new(Waker::new().unwrap()))
                .collect(),
        )
    }

    #[test]
    fn a_shard_confirms_only_once_its_accepts_are_gone() {
        let g = gate(1);
        let mut f = GateFollower::default();
        assert_eq!(f.step(&g, true), GateStep::Nothing);
        g.pause();
        assert_eq!(f.step(&g, true), GateStep::Pause);
        assert_eq!(f.step(&g, true), GateStep::Nothing);
        assert!(!g.wait_paused(Duration::ZERO), "an accept is still armed");
        assert_eq!(f.step(&g, false), GateStep::Nothing);
        assert!(g.wait_paused(Duration::ZERO));
        g.resume();
        assert_eq!(f.step(&g, false), GateStep::Resume);
        assert!(!g.wait_paused(Duration::ZERO), "the count went back down");
    }

    #[test]
    fn a_renewal_is_acted_on_once_and_not_while_paused() {
        let g = gate(1);
        let mut f = GateFollower::default();
        g.renew();
        assert_eq!(f.step(&g, true), GateStep::Renew);
        assert_eq!(f.step(&g, true), GateStep::Nothing);
        g.pause();
        assert_eq!(f.step(&g, true), GateStep::Pause);
        g.renew();
        assert_eq!(
            f.step(&g, false),
            GateStep::Nothing,
            "paused: nothing to renew"
        );
        g.resume();
        assert_eq!(f.step(&g, false), GateStep::Resume);
        assert_eq!(f.step(&g, false), GateStep::Nothing);
    }

    #[test]
    fn a_pause_and_resume_the_shard_never_saw_changes_nothing() {
        let g = gate(2);
        let mut f = GateFollower::default();
        g.pause();
        g.resume();
        assert_eq!(f.step(&g, true), GateStep::Nothing);
        assert!(!f.is_paused());
    }
}
