//! What the take-over thread and the shards' gateways share while live
//! connections move between processes: whether this process is exporting
//! its devices, the exported ones waiting to be sent (the outbox), the
//! received ones waiting for their home shard to adopt them (one inbox per
//! shard), and the history (epoch, seq) a successor continues.
//!
//! Bounds: the outbox holds at most [`OUTBOX_MAX`] descriptors (a shard
//! starts no export while the outbox and its own exports in flight reach
//! it), an inbox is filled by the take-over thread only while all inboxes
//! together hold under [`INBOX_MAX`]; so besides its rings' direct
//! descriptors the old process holds ≤ 2 × 4,096 regular ones for the move
//! (the outbox, plus each shard's installs in flight, each bounded by it)
//! and the successor ≤ 4,096 + 128, under RLIMIT_NOFILE (20,000 here).
//! Shards take their inbox once per timer tick (100 ms by default), so a
//! successor adopts up to `INBOX_MAX` devices per tick.
//!
//! Mailboxes (after the devices moved): while the old process exports
//! them, each shard fills its own mailbox outbox from its tick (a `Home`
//! is not `Send`) up to [`MAILBOX_OUTBOX_ITEMS_MAX`] users and
//! [`MAILBOX_OUTBOX_BYTES_MAX`] bytes of payload, and says when it has
//! none left; the successor's take-over thread hands received users to
//! their home shards' mailbox inboxes while they hold under
//! [`MAILBOX_INBOX_MAX`] users in all, and counts those not yet merged.

use super::mailboxes::{ArrivedUser, MailboxItem};
use super::resends::SharedResends;
use super::wire::{ConnectionRecord, ForwardedPush, FORWARD_BATCH_BYTES_MAX};
use crate::gateway::home::ImportCounts;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Exported descriptors waiting for the take-over thread, at most.
pub const OUTBOX_MAX: usize = 4096;
/// Received descriptors waiting for their shards, at most (all shards).
pub const INBOX_MAX: usize = 4096;
/// How far past the predecessor's newest seq a successor starts: the
/// predecessor keeps numbering pushes that reach it during the overlap,
/// and every seq it gives must stay below the successor's.
pub const SEQ_GAP: u64 = 1 << 32;

/// A connection on its way between processes: its socket and its state.
pub type Moving = (OwnedFd, ConnectionRecord);
/// Pushes waiting to be forwarded to the successor, at most; past it a
/// push is refused (retryable).
pub const FORWARD_MAX: usize = 16_384;

/// Mailbox items (users, a broadcast log) one old shard keeps waiting for
/// the take-over thread, at most.
pub const MAILBOX_OUTBOX_ITEMS_MAX: usize = 4096;
/// Payload bytes one old shard keeps waiting for the take-over thread, at
/// most (one user's mailbox may go over it: it is exported whole).
pub const MAILBOX_OUTBOX_BYTES_MAX: usize = 16 << 20;
/// Received users waiting for their shards to merge them, at most (all
/// shards); the take-over thread acknowledges the next batch only below it.
pub const MAILBOX_INBOX_MAX: usize = 16_384;

/// One old shard's exported mailboxes waiting to be sent.
#[derive(Default)]
struct MailboxOutbox {
    items: VecDeque<MailboxItem>,
    payload_bytes: usize,
    /// The shard exported everything it has.
    finished: bool,
}

pub struct Moves {
    exporting: AtomicBool,
    /// Mailboxes are being exported (the old process, after the devices).
    exporting_mailboxes: AtomicBool,
    /// Counts mailbox exports, so a shard still in an earlier one starts
    /// over.
    mailbox_round: AtomicU64,
    /// What the shards merged (the successor).
    merge_counts: Mutex<ImportCounts>,
    mailbox_outboxes: Vec<Mutex<MailboxOutbox>>,
    /// Per shard: received users to merge (the successor).
    mailbox_inboxes: Vec<Mutex<Vec<ArrivedUser>>>,
    /// Users received and not yet merged by their shard.
    mailboxes_unmerged: AtomicUsize,
    /// Per shard: it has no device, handshake or export left.
    shards_done: Vec<AtomicBool>,
    outbox: Mutex<VecDeque<Moving>>,
    inboxes: Vec<Mutex<Vec<Moving>>>,
    inbox_len: AtomicUsize,
    /// This process's epoch (its own, or the predecessor's it continues).
    epoch: AtomicU64,
    /// The newest seq any shard gave (noted once per tick).
    seq_high: AtomicU64,
    /// Seqs a successor starts above (0: this process started fresh):
    /// resumes from before it are not recovered (the mailboxes did not move).
    seq_start: AtomicU64,
    /// From the first export on, pushes go to the successor (a device may
    /// be on its way there); ≤ `FORWARD_MAX` wait here.
    forwarding: AtomicBool,
    forward: Mutex<VecDeque<ForwardedPush>>,
    /// A batch taken from `forward` is on its way (until acknowledged).
    forward_sending: AtomicBool,
    forwarded_total: AtomicU64,
    /// Pushes ever accepted for forwarding, and of those the ones the
    /// successor acknowledged (a prefix: batches go and are acknowledged
    /// in order). A reply to a publisher filled while forwarding waits
    /// until every push accepted before it was acknowledged
    /// (`reply_gate`): a push is answered only once it is the
    /// successor's, so a process that dies takes no answered push along.
    forward_accepted: AtomicU64,
    forward_acked: AtomicU64,
    /// Debug fault (`PUSHGATE_DEBUG_TAKEOVER=kill-after-forwarding`):
    /// acknowledgements are no longer counted, so replies stay withheld.
    forward_acks_withheld: AtomicBool,
    /// What the successor remembers of the pushes it processed for named
    /// publishers while the predecessor forwarded.
    pub resends: SharedResends,
    /// Per shard: pushes to deliver here (forwarded by a predecessor, or
    /// taken back from a successor that died).
    pushes_in: Vec<Mutex<Vec<ForwardedPush>>>,
}

impl Moves {
    pub fn new(shards: usize, epoch: u64) -> Moves {
        Moves {
            exporting: AtomicBool::new(false),
            exporting_mailboxes: AtomicBool::new(false),
            mailbox_round: AtomicU64::new(0),
            merge_counts: Mutex::default(),
            mailbox_outboxes: (0..shards).map(|_| Mutex::default()).collect(),
            mailbox_inboxes: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            mailboxes_unmerged: AtomicUsize::new(0),
            shards_done: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            outbox: Mutex::new(VecDeque::new()),
            inboxes: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            inbox_len: AtomicUsize::new(0),
            epoch: AtomicU64::new(epoch),
            seq_high: AtomicU64::new(0),
            seq_start: AtomicU64::new(0),
            forwarding: AtomicBool::new(false),
            forward: Mutex::new(VecDeque::new()),
            forward_sending: AtomicBool::new(false),
            forwarded_total: AtomicU64::new(0),
            forward_accepted: AtomicU64::new(0),
            forward_acked: AtomicU64::new(0),
            forward_acks_withheld: AtomicBool::new(false),
            resends: SharedResends::default(),
            pushes_in: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    // --- Forwarding pushes (the old process, from the first export on) ---

    pub fn start_forwarding(&self) {
        self.forwarding.store(true, Ordering::Release);
    }

    pub fn is_forwarding(&self) -> bool {
        self.forwarding.load(Ordering::Acquire)
    }

    /// Queues a push for the successor; gives it back if forwarding
    /// stopped meanwhile or the queue is full.
    pub fn push_forward(&self, push: ForwardedPush) -> Result<(), ForwardedPush> {
        let mut queue = self.lock_forward();
        if !self.is_forwarding() || queue.len() >= FORWARD_MAX {
            return Err(push);
        }
        queue.push_back(push);
        self.forward_accepted.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// What a reply to a publisher filled now waits for (see
    /// `forward_accepted`): the pushes accepted so far must be
    /// acknowledged. 0 (none) when not forwarding.
    pub fn reply_gate(&self) -> u64 {
        if self.is_forwarding() {
            self.forward_accepted.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Pushes the successor acknowledged (or delivered here after all).
    pub fn forward_acked(&self) -> u64 {
        self.forward_acked.load(Ordering::Acquire)
    }

    /// Whether this process ever forwarded: its shards then release
    /// withheld replies each tick.
    pub fn ever_forwarded(&self) -> bool {
        self.forward_accepted.load(Ordering::Acquire) > 0
    }

    /// The successor acknowledged `pushes` more.
    pub fn ack_forwarded(&self, pushes: usize) {
        if !self.forward_acks_withheld.load(Ordering::Acquire) {
            self.forward_acked
                .fetch_add(pushes as u64, Ordering::AcqRel);
        }
    }

    /// Debug fault: from now on acknowledgements release no reply.
    pub fn withhold_forward_acks(&self) {
        self.forward_acks_withheld.store(true, Ordering::Release);
    }

    /// The oldest waiting pushes, up to `FORWARD_BATCH_BYTES_MAX` of data.
    pub fn take_forward(&self) -> Vec<ForwardedPush> {
        let mut queue = self.lock_forward();
        let mut bytes = 0;
        let mut n = 0;
        for push in queue.iter() {
            let size = push.data.len() + push.users.iter().map(|u| u.len() + 4).sum::<usize>();
            if n > 0 && bytes + size > FORWARD_BATCH_BYTES_MAX {
                break;
            }
            bytes += size;
            n += 1;
        }
        queue.drain(..n).collect()
    }

    /// Counts pushes sent to the successor.
    pub fn count_forwarded(&self, pushes: usize) {
        self.forwarded_total
            .fetch_add(pushes as u64, Ordering::Relaxed);
    }

    pub fn has_forwarded(&self) -> bool {
        self.forwarded_total.load(Ordering::Relaxed) > 0
    }

    /// A batch taken with `take_forward` is in transit (or no longer).
    pub fn set_forward_sending(&self, sending: bool) {
        self.forward_sending.store(sending, Ordering::Release);
    }

    /// Waits up to `timeout` until every push accepted for forwarding was
    /// acknowledged by the successor (polling each millisecond): a process
    /// that exits must not take accepted pushes with it. True when done.
    pub fn wait_forwarded(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let idle = self.forward_idle();
            if idle || !self.is_forwarding() {
                return idle;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Every push accepted for forwarding was acknowledged by the
    /// successor (none waits, none is in transit).
    pub fn forward_idle(&self) -> bool {
        // The queue first: the sender marks a batch in transit before it
        // takes it, so an empty queue and no batch in transit is idle.
        self.lock_forward().is_empty() && !self.forward_sending.load(Ordering::Acquire)
    }

    /// Ends forwarding; returns what was not sent (to deliver here).
    pub fn stop_forwarding(&self) -> Vec<ForwardedPush> {
        let mut queue = self.lock_forward();
        self.forwarding.store(false, Ordering::Release);
        // Delivered here after all: their replies may go.
        if !self.forward_acks_withheld.load(Ordering::Acquire) {
            let accepted = self.forward_accepted.load(Ordering::Acquire);
            self.forward_acked.store(accepted, Ordering::Release);
        }
        queue.drain(..).collect()
    }

    fn lock_forward(&self) -> std::sync::MutexGuard<'_, VecDeque<ForwardedPush>> {
        self.forward.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives shard `shard` a push to deliver (its users are homed there;
    /// none: a broadcast, given to every shard).
    pub fn push_pushes_in(&self, shard: usize, push: ForwardedPush) {
        self.pushes_in[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(push);
    }

    pub fn take_pushes_in(&self, shard: usize) -> Vec<ForwardedPush> {
        std::mem::take(
            &mut *self.pushes_in[shard]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Splits `push` by home shard over this process's shard count into
    /// the shards' `pushes_in` (a broadcast goes to every shard).
    pub fn deliver_here(&self, push: ForwardedPush) {
        let shards = self.shards();
        if push.users.is_empty() {
            for shard in 0..shards {
                self.push_pushes_in(shard, push.clone());
            }
            return;
        }
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); shards];
        for user in push.users {
            by_shard[crate::route::home_shard(&user, shards)].push(user);
        }
        for (shard, users) in by_shard.into_iter().enumerate() {
            if !users.is_empty() {
                let data = push.data.clone();
                let origin = push.origin;
                self.push_pushes_in(
                    shard,
                    ForwardedPush {
                        users,
                        data,
                        origin,
                    },
                );
            }
        }
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    // --- History ---

    /// Continue a predecessor's history: its epoch, seqs from `seq_start`.
    /// Called before the shards start.
    pub fn continue_history(&self, epoch: u64, seq_start: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
        self.seq_start.store(seq_start, Ordering::Relaxed);
        self.note_seq(seq_start);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn seq_start(&self) -> u64 {
        self.seq_start.load(Ordering::Relaxed)
    }

    pub fn note_seq(&self, seq: u64) {
        self.seq_high.fetch_max(seq, Ordering::Relaxed);
    }

    /// Where a successor's seqs start.
    pub fn successor_seq_start(&self) -> u64 {
        self.seq_high.load(Ordering::Relaxed) + SEQ_GAP
    }

    // --- Exporting (the old process) ---

    pub fn start_export(&self) {
        for done in &self.shards_done {
            done.store(false, Ordering::Relaxed);
        }
        self.exporting.store(true, Ordering::Release);
    }

    /// Ends the export and returns whatever waits in the outbox (to be
    /// taken back). Under the outbox's lock, so an export that completes
    /// meanwhile either is in what this returns or finds the export
    /// stopped (`push_outbox` fails) — none is left behind.
    pub fn stop_export(&self) -> Vec<Moving> {
        let mut outbox = self.lock_outbox();
        self.exporting.store(false, Ordering::Release);
        outbox.drain(..).collect()
    }

    pub fn is_exporting(&self) -> bool {
        self.exporting.load(Ordering::Acquire)
    }

    /// Shard `shard` has nothing left to export (or has again).
    pub fn set_shard_done(&self, shard: usize, done: bool) {
        self.shards_done[shard].store(done, Ordering::Relaxed);
    }

    pub fn all_shards_done(&self) -> bool {
        self.shards_done.iter().all(|d| d.load(Ordering::Relaxed))
    }

    /// Room in the outbox for another export in flight.
    pub fn outbox_has_room(&self, in_flight: usize) -> bool {
        self.lock_outbox().len() + in_flight < OUTBOX_MAX
    }

    /// Queues an exported connection for the successor; if the export was
    /// stopped meanwhile, gives it back (the caller adopts it again).
    pub fn push_outbox(&self, moving: Moving) -> Result<(), Moving> {
        let mut outbox = self.lock_outbox();
        if !self.is_exporting() {
            return Err(moving);
        }
        outbox.push_back(moving);
        Ok(())
    }

    /// Up to `max` exported connections, oldest first.
    pub fn take_outbox(&self, max: usize) -> Vec<Moving> {
        let mut outbox = self.lock_outbox();
        let n = outbox.len().min(max);
        outbox.drain(..n).collect()
    }

    fn lock_outbox(&self) -> std::sync::MutexGuard<'_, VecDeque<Moving>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    // --- Mailboxes (the old process exports, the successor merges) ---

    /// Asks every shard to export its mailboxes (from the start).
    pub fn start_mailbox_export(&self) {
        for outbox in &self.mailbox_outboxes {
            *lock(outbox) = MailboxOutbox::default();
        }
        self.mailbox_round.fetch_add(1, Ordering::AcqRel);
        self.exporting_mailboxes.store(true, Ordering::Release);
    }

    /// The current mailbox export (a shard in another one starts over).
    pub fn mailbox_round(&self) -> u64 {
        self.mailbox_round.load(Ordering::Acquire)
    }

    /// Ends the mailbox export and drops what waits (the mailboxes stay
    /// with their shards: an export only copies them).
    pub fn stop_mailbox_export(&self) {
        self.exporting_mailboxes.store(false, Ordering::Release);
        for outbox in &self.mailbox_outboxes {
            *lock(outbox) = MailboxOutbox::default();
        }
    }

    pub fn is_exporting_mailboxes(&self) -> bool {
        self.exporting_mailboxes.load(Ordering::Acquire)
    }

    /// Room in shard `shard`'s mailbox outbox for another item.
    pub fn mailbox_outbox_has_room(&self, shard: usize) -> bool {
        let outbox = lock(&self.mailbox_outboxes[shard]);
        outbox.items.len() < MAILBOX_OUTBOX_ITEMS_MAX
            && outbox.payload_bytes < MAILBOX_OUTBOX_BYTES_MAX
    }

    /// Queues an exported item of shard `shard` for export `round`
    /// (dropped if that export stopped meanwhile).
    pub fn push_mailbox(&self, shard: usize, round: u64, item: MailboxItem) {
        let mut outbox = lock(&self.mailbox_outboxes[shard]);
        if self.is_exporting_mailboxes() && self.mailbox_round() == round {
            outbox.payload_bytes += item.payload_bytes();
            outbox.items.push_back(item);
        }
    }

    /// Shard `shard` exported all its mailboxes for export `round`.
    pub fn finish_mailboxes(&self, shard: usize, round: u64) {
        let mut outbox = lock(&self.mailbox_outboxes[shard]);
        if self.is_exporting_mailboxes() && self.mailbox_round() == round {
            outbox.finished = true;
        }
    }

    /// Up to `max` of shard `shard`'s items, oldest first, and whether
    /// that was the last of them.
    pub fn take_mailboxes(&self, shard: usize, max: usize) -> (Vec<MailboxItem>, bool) {
        let mut outbox = lock(&self.mailbox_outboxes[shard]);
        let n = outbox.items.len().min(max);
        let items: Vec<MailboxItem> = outbox.items.drain(..n).collect();
        outbox.payload_bytes -= items.iter().map(MailboxItem::payload_bytes).sum::<usize>();
        let last = outbox.finished && outbox.items.is_empty();
        (items, last)
    }

    /// Gives a received user to shard `shard` (its home here) to merge.
    pub fn push_mailbox_in(&self, shard: usize, user: ArrivedUser) {
        lock(&self.mailbox_inboxes[shard]).push(user);
        self.mailboxes_unmerged.fetch_add(1, Ordering::AcqRel);
    }

    /// Everything waiting for shard `shard` to merge; the shard calls
    /// `merged` once done.
    pub fn take_mailboxes_in(&self, shard: usize) -> Vec<ArrivedUser> {
        std::mem::take(&mut *lock(&self.mailbox_inboxes[shard]))
    }

    /// `users` taken with `take_mailboxes_in` are merged, with `counts`.
    pub fn merged(&self, users: usize, counts: ImportCounts) {
        let mut total = lock(&self.merge_counts);
        total.users += counts.users;
        total.entries += counts.entries;
        total.entries_dropped += counts.entries_dropped;
        total.users_dropped += counts.users_dropped;
        drop(total);
        self.mailboxes_unmerged.fetch_sub(users, Ordering::AcqRel);
    }

    /// What the shards merged so far.
    pub fn merge_counts(&self) -> ImportCounts {
        *lock(&self.merge_counts)
    }

    /// Users received and not yet merged.
    pub fn mailboxes_unmerged(&self) -> usize {
        self.mailboxes_unmerged.load(Ordering::Acquire)
    }

    // --- Adopting (the successor, or the old taking back) ---

    /// Gives `moving` to shard `shard` to adopt.
    pub fn push_inbox(&self, shard: usize, moving: Moving) {
        self.inboxes[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(moving);
        self.inbox_len.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything waiting for shard `shard`.
    pub fn take_inbox(&self, shard: usize) -> Vec<Moving> {
        let taken = std::mem::take(
            &mut *self.inboxes[shard]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.inbox_len.fetch_sub(taken.len(), Ordering::Relaxed);
        taken
    }

    /// Connections received and not yet taken by their shard.
    pub fn inbox_len(&self) -> usize {
        self.inbox_len.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str) -> ConnectionRecord {
        ConnectionRecord {
            user: user.into(),
            console: false,
            wire: super::super::wire::WireKind::WebSocket,
            idle_ms: 0,
            seq: 0,
        }
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn the_outbox_bounds_exports_and_hands_out_oldest_first() {
        let m = Moves::new(2, 7);
        assert!(m.outbox_has_room(OUTBOX_MAX - 1));
        assert!(!m.outbox_has_room(OUTBOX_MAX));
        assert!(m.push_outbox((fd(), record("x"))).is_err(), "not exporting");
        m.start_export();
        m.push_outbox((fd(), record("a"))).unwrap();
        m.push_outbox((fd(), record("b"))).unwrap();
        assert!(!m.outbox_has_room(OUTBOX_MAX - 2));
        let got: Vec<String> = m.take_outbox(1).into_iter().map(|(_, r)| r.user).collect();
        assert_eq!(got, ["a"]);
        m.push_outbox((fd(), record("c"))).unwrap();
        let left: Vec<String> = m.stop_export().into_iter().map(|(_, r)| r.user).collect();
        assert_eq!(left, ["b", "c"], "stopping hands back what waits");
        let (_, back) = m.push_outbox((fd(), record("d"))).unwrap_err();
        assert_eq!(back.user, "d", "a late export comes back");
    }

    fn mailbox_user(name: &str) -> MailboxItem {
        MailboxItem::User(crate::gateway::home::MovedUser {
            name: name.into(),
            floor_seq: 0,
            entries: vec![crate::gateway::home::MovedEntry {
                seq: 1,
                age_ms: 0,
                payload: bytes::Bytes::from_static(b"12"),
            }],
        })
    }

    #[test]
    fn mailbox_outboxes_are_per_shard_bounded_and_say_when_done() {
        let m = Moves::new(2, 7);
        m.push_mailbox(0, m.mailbox_round(), mailbox_user("x"));
        assert!(m.take_mailboxes(0, 10).0.is_empty(), "not exporting");
        m.start_mailbox_export();
        let round = m.mailbox_round();
        m.push_mailbox(0, round - 1, mailbox_user("y"));
        assert!(m.take_mailboxes(0, 10).0.is_empty(), "an earlier export's");
        for i in 0..MAILBOX_OUTBOX_ITEMS_MAX {
            assert!(m.mailbox_outbox_has_room(1));
            m.push_mailbox(1, round, mailbox_user(&format!("u{i}")));
        }
        assert!(!m.mailbox_outbox_has_room(1));
        assert!(m.mailbox_outbox_has_room(0));
        m.finish_mailboxes(1, round);
        let (items, last) = m.take_mailboxes(1, 10);
        assert_eq!((items.len(), last), (10, false));
        assert!(m.mailbox_outbox_has_room(1));
        let (items, last) = m.take_mailboxes(1, usize::MAX);
        assert_eq!((items.len(), last), (MAILBOX_OUTBOX_ITEMS_MAX - 10, true));
        let (_, last) = m.take_mailboxes(0, 10);
        assert!(!last, "shard 0 has not said it finished");
        m.stop_mailbox_export();
        assert!(!m.is_exporting_mailboxes());
    }

    #[test]
    fn inboxes_are_per_shard_and_counted() {
        let m = Moves::new(2, 7);
        m.push_inbox(1, (fd(), record("a")));
        assert_eq!(m.inbox_len(), 1);
        assert!(m.take_inbox(0).is_empty());
        assert_eq!(m.take_inbox(1).len(), 1);
        assert_eq!(m.inbox_len(), 0);
    }

    #[test]
    fn a_successor_starts_above_every_seq_given_here() {
        let m = Moves::new(1, 7);
        m.note_seq(40);
        m.note_seq(12);
        assert_eq!(m.successor_seq_start(), 40 + SEQ_GAP);
        let next = Moves::new(3, 0);
        next.continue_history(7, m.successor_seq_start());
        assert_eq!((next.epoch(), next.seq_start()), (7, 40 + SEQ_GAP));
        assert_eq!(next.successor_seq_start(), 40 + 2 * SEQ_GAP);
    }
}
