//! What a successor remembers of the pushes it processed for named
//! publishers while its predecessor forwarded (module doc, "Publishers"),
//! so that a push the predecessor forwarded but did not answer before it
//! crashed or was stopped with SIGINT, and that the publisher therefore
//! sends again, is answered from here instead of delivered twice. Pure:
//! keys and times in, verdicts out; [`super::moves::Moves`] holds it.
//!
//! A push names itself with [`RequestKey`] (`Request::PushOnce`: the
//! publisher's random id and its request id). Two ways lead a push here:
//! forwarded by the predecessor (`forwarded`) and received directly
//! (`direct`), in either order — a publisher whose old process died
//! resends at once, and the forwarded copy may still be unread in the
//! conversation socket. Whichever comes second is not processed: a
//! forwarded copy of a push processed directly is skipped, and a direct
//! resend of a forwarded push is answered with what the predecessor would
//! have answered (stored for each recipient: it forwarded them).
//!
//! Bounds: per publisher the newest [`PER_PUBLISHER_MAX`] requests (a
//! client keeps at most 256 per shard in flight, the server 4,096 per
//! connection); in all [`REMEMBERED_MAX`] (≈ 80 bytes each: ≤ 21 MiB),
//! each for [`REMEMBERED_MS`] (a publisher resends within its reconnect
//! limit of 30 s of the close).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Requests remembered per publisher, at most (the oldest go first).
pub const PER_PUBLISHER_MAX: usize = 16_384;
/// Requests remembered in all, at most (the oldest go first).
pub const REMEMBERED_MAX: usize = 262_144;
/// How long a request is remembered: twice the client library's
/// `RECONNECT_TIME_MAX`.
pub const REMEMBERED_MS: u64 = 60_000;

/// One request as its publisher names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    pub publisher: u32,
    pub request: u64,
}

/// How a remembered request was processed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Forwarded by the predecessor and delivered here; a resend is
    /// answered as the predecessor would have: `stored` recipients.
    Forwarded { stored: u32 },
    /// Received directly and processed here: a forwarded copy is skipped.
    Direct,
}

struct Entry {
    seen: Seen,
    at_ms: u64,
}

#[derive(Default)]
pub struct Resends {
    entries: HashMap<RequestKey, Entry>,
    /// Every insertion with its time, oldest first: expiry and the global
    /// bound. An item whose entry went (a publisher's window) or was
    /// inserted again later (another time) is skipped when it comes out.
    order: VecDeque<(RequestKey, u64)>,
    /// Per publisher its remembered request ids, oldest first.
    per_publisher: HashMap<u32, VecDeque<u64>>,
}

impl Resends {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A push (or one part of it) forwarded by the predecessor for
    /// `recipients` users. True: deliver it. False: it was processed here
    /// already, received directly (skip it).
    pub fn forwarded(&mut self, key: RequestKey, recipients: u32, now_ms: u64) -> bool {
        self.expire(now_ms);
        match self.entries.get_mut(&key) {
            Some(Entry {
                seen: Seen::Direct, ..
            }) => false,
            Some(Entry {
                seen: Seen::Forwarded { stored },
                ..
            }) => {
                // Another part of the same request (its users were homed
                // on several of the predecessor's shards).
                *stored = stored.saturating_add(recipients);
                true
            }
            None => {
                let seen = Seen::Forwarded { stored: recipients };
                self.insert(key, seen, now_ms);
                true
            }
        }
    }

    /// A push received directly. `Some(stored)`: it was forwarded and
    /// delivered here already; answer that many as stored. `None`:
    /// process it; while `recording` (a predecessor may still forward)
    /// it is remembered, so a forwarded copy is skipped.
    pub fn direct(&mut self, key: RequestKey, recording: bool, now_ms: u64) -> Option<u32> {
        self.expire(now_ms);
        match self.entries.get(&key) {
            Some(Entry {
                seen: Seen::Forwarded { stored },
                ..
            }) => Some(*stored),
            Some(_) => None,
            None => {
                if recording {
                    self.insert(key, Seen::Direct, now_ms);
                }
                None
            }
        }
    }

    fn insert(&mut self, key: RequestKey, seen: Seen, now_ms: u64) {
        self.entries.insert(
            key,
            Entry {
                seen,
                at_ms: now_ms,
            },
        );
        self.order.push_back((key, now_ms));
        let ids = self.per_publisher.entry(key.publisher).or_default();
        ids.push_back(key.request);
        if ids.len() > PER_PUBLISHER_MAX {
            if let Some(oldest) = ids.pop_front() {
                self.entries.remove(&RequestKey {
                    publisher: key.publisher,
                    request: oldest,
                });
            }
        }
        while self.order.len() > REMEMBERED_MAX {
            self.pop_oldest();
        }
    }

    /// Forgets what is older than [`REMEMBERED_MS`].
    pub fn expire(&mut self, now_ms: u64) {
        // Bounded by `order`, which only shrinks here.
        while self
            .order
            .front()
            .is_some_and(|&(_, at)| at + REMEMBERED_MS <= now_ms)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((key, at)) = self.order.pop_front() else {
            return;
        };
        if self.entries.get(&key).is_none_or(|e| e.at_ms != at) {
            return; // gone with its publisher's window, or inserted again
        }
        self.entries.remove(&key);
        if let Some(ids) = self.per_publisher.get_mut(&key.publisher) {
            if ids.front() == Some(&key.request) {
                ids.pop_front();
            } else if let Some(i) = ids.iter().position(|&r| r == key.request) {
                ids.remove(i);
            }
            if ids.is_empty() {
                self.per_publisher.remove(&key.publisher);
            }
        }
    }
}

/// [`Resends`] shared by the take-over thread (forwarded pushes) and the
/// shards (direct ones), on one clock. Costs a shard nothing outside a
/// hand-over: with nothing remembered and not recording, no lock is taken.
pub struct SharedResends {
    resends: Mutex<Resends>,
    /// Entries held (read without the lock).
    len: AtomicUsize,
    /// A predecessor may still forward: direct pushes are remembered.
    recording: AtomicBool,
    started: Instant,
}

impl Default for SharedResends {
    fn default() -> SharedResends {
        SharedResends {
            resends: Mutex::default(),
            len: AtomicUsize::new(0),
            recording: AtomicBool::new(false),
            started: Instant::now(),
        }
    }
}

impl SharedResends {
    /// On while a predecessor forwards pushes to this process.
    pub fn set_recording(&self, recording: bool) {
        self.recording.store(recording, Ordering::Release);
    }

    /// The forwarded pushes of one batch, in order: false for each one to
    /// skip (see [`Resends::forwarded`]); pushes without a key are kept.
    pub fn forwarded(&self, pushes: &[(Option<RequestKey>, u32)]) -> Vec<bool> {
        let now_ms = self.now_ms();
        let mut resends = self.lock();
        let keep = pushes
            .iter()
            .map(|&(key, recipients)| key.is_none_or(|k| resends.forwarded(k, recipients, now_ms)))
            .collect();
        self.len.store(resends.len(), Ordering::Release);
        keep
    }

    /// A push received directly (see [`Resends::direct`]).
    pub fn direct(&self, key: RequestKey) -> Option<u32> {
        let recording = self.recording.load(Ordering::Acquire);
        if !recording && self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let now_ms = self.now_ms();
        let mut resends = self.lock();
        let seen = resends.direct(key, recording, now_ms);
        self.len.store(resends.len(), Ordering::Release);
        seen
    }

    /// Forgets what expired (each tick of shard 0, so memory is given back
    /// when no push comes).
    pub fn expire(&self) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let now_ms = self.now_ms();
        let mut resends = self.lock();
        resends.expire(now_ms);
        self.len.store(resends.len(), Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Resends> {
        self.resends.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(publisher: u32, request: u64) -> RequestKey {
        RequestKey { publisher, request }
    }

    #[test]
    fn a_resend_of_a_forwarded_push_is_answered_not_processed() {
        let mut r = Resends::default();
        assert!(r.forwarded(key(7, 1), 3, 0));
        assert_eq!(r.direct(key(7, 1), true, 10), Some(3));
        // Another publisher's request with the same id is its own.
        assert_eq!(r.direct(key(8, 1), true, 10), None);
        // Not recording: a new request is processed and not remembered.
        assert_eq!(r.direct(key(7, 2), false, 10), None);
        assert!(r.forwarded(key(7, 2), 1, 10));
    }

    #[test]
    fn a_forwarded_copy_of_a_push_processed_directly_is_skipped() {
        let mut r = Resends::default();
        assert_eq!(r.direct(key(1, 5), true, 0), None);
        assert!(!r.forwarded(key(1, 5), 2, 1));
        // Resent once more: processed (it was processed here directly, a
        // publisher resends only to another process).
        assert_eq!(r.direct(key(1, 5), true, 2), None);
    }

    #[test]
    fn parts_of_one_request_are_all_delivered_and_answered_together() {
        let mut r = Resends::default();
        assert!(r.forwarded(key(1, 9), 2, 0));
        assert!(r.forwarded(key(1, 9), 3, 0));
        assert_eq!(r.direct(key(1, 9), true, 0), Some(5));
    }

    #[test]
    fn requests_are_forgotten_after_the_expiry() {
        let mut r = Resends::default();
        r.forwarded(key(1, 1), 1, 0);
        r.forwarded(key(1, 2), 1, 1000);
        r.expire(REMEMBERED_MS);
        assert_eq!(r.len(), 1);
        assert_eq!(r.direct(key(1, 1), false, REMEMBERED_MS), None);
        assert_eq!(r.direct(key(1, 2), false, REMEMBERED_MS), Some(1));
        r.expire(REMEMBERED_MS + 1000);
        assert!(r.is_empty());
        assert!(r.per_publisher.is_empty() && r.order.is_empty());
    }

    #[test]
    fn a_publisher_keeps_its_newest_window_and_all_stay_under_the_cap() {
        let mut r = Resends::default();
        for id in 0..PER_PUBLISHER_MAX as u64 + 10 {
            r.forwarded(key(1, id), 1, 0);
        }
        assert_eq!(r.len(), PER_PUBLISHER_MAX);
        assert_eq!(r.direct(key(1, 9), false, 0), None, "the oldest went");
        assert_eq!(r.direct(key(1, 10), false, 0), Some(1));
        let publishers = REMEMBERED_MAX / PER_PUBLISHER_MAX + 2;
        for p in 2..publishers as u32 + 2 {
            for id in 0..PER_PUBLISHER_MAX as u64 {
                r.forwarded(key(p, id), 1, 0);
            }
        }
        assert!(r.len() <= REMEMBERED_MAX);
        assert!(r.order.len() <= REMEMBERED_MAX);
        // The newest publisher is whole; the oldest went first.
        assert_eq!(r.direct(key(publishers as u32 + 1, 0), false, 0), Some(1));
        assert_eq!(r.direct(key(1, 20), false, 0), None);
        // Expiry empties it all, per-publisher lists included.
        r.expire(REMEMBERED_MS);
        assert!(r.is_empty() && r.per_publisher.is_empty());
    }
}
