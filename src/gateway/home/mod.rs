//! The home part: the users homed on this shard, what each is owed, and
//! which of their devices are here. Pure: `now`, names and payloads in;
//! "send this push to these connections" out. It never touches a socket
//! and never calls another part: the wiring sends what it returns.
//!
//! Every push gets the next seq of this shard (strictly increasing for each
//! user), is kept in each recipient's mailbox (or once in the shard's
//! broadcast log) for `retention_ms` / `entries_max`, and is listed for each
//! online recipient's devices. A device that reconnects with `since` is told
//! whether nothing it was owed was lost (`recovered`) and is replayed what
//! it missed, in seq order.
//!
//! What publishers can create here is bounded: users kept only for their
//! mailbox (`offline_users_max`) and the bytes of stored pushes
//! (`stored_bytes_max`); past either, or while the host is over its memory
//! mark, pushes to offline users are rejected with a reason.
//!
//! The seam for a shared store (Redis, issue 11): sessions only see
//! [`Joined`], [`Home::replay_after`] and [`Home::leave`], and deliveries
//! arrive as a [`Fanout`]; where seq and mailboxes live is private here.
//! With Redis configured the seq and history live in Redis instead, and
//! this part only keeps which devices each user has here (the wiring in
//! `gateway/bells.rs` greets and delivers from Redis).

mod expiries;
mod fanout;
mod mailbox;
mod transfer;
mod users;

pub use fanout::{Counts, Fanout, RejectReasons};
pub use mailbox::{merged_after, SharedPush, StoredPush};
pub use transfer::{ImportCounts, MovedBroadcasts, MovedEntry, MovedUser};
pub use users::UserIndex;

use crate::auth::check_user_id;
use crate::upgrade::Since;
use bytes::Bytes;
use mailbox::Mailbox;
use shard::ConnId;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use users::Users;

/// Mailbox entries and departures processed per tick at most, so a mass
/// expiry cannot stall the shard (the rest waits for the next tick).
const EXPIRY_WORK_PER_TICK_MAX: usize = 200_000;

#[derive(Clone, Copy, Debug)]
pub struct HomeSettings {
    /// Names this shard's history: a resume from another epoch is not
    /// recovered.
    pub epoch: u64,
    pub retention_ms: u64,
    pub entries_max: usize,
    /// Users with no device kept here for their mailbox, at most.
    pub offline_users_max: u64,
    /// Bytes of pushes kept for resume on this shard, at most.
    pub stored_bytes_max: u64,
}

/// A device joined: its handle and how to greet it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    pub user: UserIndex,
    pub epoch: u64,
    /// The newest seq that concerns this user.
    pub last_seq: u64,
    /// Only for a resume: was nothing after `since` lost?
    pub recovered: Option<bool>,
    /// Replay entries after this seq before any live push.
    pub replay_after: Option<u64>,
}

/// The mailbox dropped entries a replaying device had not been sent yet.
#[derive(Debug, PartialEq, Eq)]
pub struct FellBehind;

/// Counts for status and metrics: each O(1) to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomeStatus {
    pub users: u64,
    pub users_online: u64,
    pub devices_online: u64,
    pub mailboxes_nonempty: u64,
    pub mailbox_entries: u64,
    pub broadcast_log_entries: u64,
    pub stored_bytes: u64,
}

/// A push kept in mailboxes, to expire from them together (its time is
/// the key in `Expiries`).
struct Expiry {
    /// Weak: a push every mailbox has already evicted (by count) must not
    /// stay allocated until its retention time.
    push: std::rc::Weak<StoredPush>,
    recipients: Vec<UserIndex>,
}

pub struct Home {
    settings: HomeSettings,
    users: Users,
    /// The last seq assigned on this shard.
    seq: u64,
    /// The highest seq any forgotten user may have lost; a user created
    /// anew starts its floor here, so an old resume is never "recovered"
    /// by mistake.
    forgotten_floor_seq: u64,
    expiries: expiries::Expiries<Expiry>,
    /// Broadcasts, kept once per shard (not in every user's mailbox) and
    /// merged with a user's mailbox when a device resumes.
    broadcasts: Mailbox,
    /// The highest broadcast seq dropped from `broadcasts`.
    broadcast_floor_seq: u64,
    /// Users whose last device left, to forget after the retention time.
    departures: VecDeque<(u64, UserIndex)>,
    users_online: u64,
    devices_online: u64,
    mailbox_entries: u64,
    mailboxes_nonempty: u64,
    /// Bytes of the stored pushes alive on this shard (each counted once,
    /// however many mailboxes share it); pushes give theirs back on drop.
    stored_bytes: Rc<Cell<u64>>,
    /// Where a predecessor's history ends (`continue_history`; 0: none):
    /// a floor above it means something was dropped here since.
    history_start_seq: u64,
    /// Imported entries are dated no later than this (set by the first
    /// import: the oldest push of this process then), so they expire
    /// before this process's own entries in the same mailbox.
    import_clamp_ms: Option<u64>,
    /// Imported pushes by (old shard, seq), shared across imports.
    imported: transfer::ImportedPushes,
}

impl Home {
    pub fn new(settings: HomeSettings) -> Home {
        Home {
            settings,
            users: Users::default(),
            seq: 0,
            forgotten_floor_seq: 0,
            expiries: expiries::Expiries::default(),
            broadcasts: Mailbox::default(),
            broadcast_floor_seq: 0,
            departures: VecDeque::new(),
            users_online: 0,
            devices_online: 0,
            mailbox_entries: 0,
            mailboxes_nonempty: 0,
            stored_bytes: Rc::new(Cell::new(0)),
            history_start_seq: 0,
            import_clamp_ms: None,
            imported: Default::default(),
        }
    }

    /// Reserves room for `users` entries (virtual memory until used); keeps
    /// every user already here.
    pub fn reserve(&mut self, users: usize) {
        self.users.reserve(users);
    }

    pub fn epoch(&self) -> u64 {
        self.settings.epoch
    }

    /// Continues a predecessor's history (a live upgrade): seqs go on from
    /// `seq_start`, and nothing at or below it can be resumed here until
    /// the predecessor's mailboxes arrive (`import`). Before any user is
    /// here.
    pub fn continue_history(&mut self, seq_start: u64) {
        debug_assert_eq!(self.users.len(), 0, "continue_history on a used shard");
        self.seq = self.seq.max(seq_start);
        self.history_start_seq = self.history_start_seq.max(seq_start);
        // Every user here is created with this floor; the broadcast log's
        // floor stays: a predecessor's broadcasts arrive in the mailboxes
        // of the users they concern (`import`), whose floors then say what
        // can be resumed.
        self.forgotten_floor_seq = self.forgotten_floor_seq.max(seq_start);
    }

    /// The last seq given on this shard.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The newest seq that concerns `user`: what a device that was sent
    /// everything has seen last.
    pub fn newest_seq_of(&self, user: UserIndex) -> u64 {
        self.newest_seq(user)
    }

    pub fn status(&self) -> HomeStatus {
        HomeStatus {
            users: self.users.len() as u64,
            users_online: self.users_online,
            devices_online: self.devices_online,
            mailboxes_nonempty: self.mailboxes_nonempty,
            mailbox_entries: self.mailbox_entries,
            broadcast_log_entries: self.broadcasts.len() as u64,
            stored_bytes: self.stored_bytes.get(),
        }
    }

    pub fn user_name(&self, user: UserIndex) -> &str {
        self.users.get(user).map_or("", |u| u.name())
    }

    /// A device of `name` opened here (`conn`): registers it and says how
    /// to greet it. A resume is recovered when nothing after the device's
    /// seq was lost for this user in this epoch.
    pub fn join(&mut self, name: &str, conn: ConnId, since: Option<Since>) -> Joined {
        let user = self.users.find_or_create(name, self.forgotten_floor_seq);
        if self.users.get(user).is_some_and(|u| u.device_count() == 0) {
            self.users_online += 1;
        }
        self.users.attach(user, conn);
        self.devices_online += 1;
        let last_seq = self.newest_seq(user);
        let floor_seq = self.resume_floor_seq(user);
        let recovered = since.map(|since| {
            since.epoch == self.settings.epoch && since.seq >= floor_seq && since.seq <= last_seq
        });
        let replay_after = match (recovered, since) {
            (Some(true), Some(since)) if since.seq < last_seq => Some(since.seq),
            _ => None,
        };
        Joined {
            user,
            epoch: self.settings.epoch,
            last_seq,
            recovered,
            replay_after,
        }
    }

    /// A device of `user` is gone.
    pub fn leave(&mut self, user: UserIndex, conn: ConnId, now_ms: u64) {
        let Some(entry) = self.users.get(user) else {
            return;
        };
        if !entry.devices().any(|c| c == conn) {
            debug_assert!(false, "leave of a device that is not registered");
            return;
        }
        self.devices_online -= 1;
        if !self.users.detach(user, conn) {
            return;
        }
        self.users_online -= 1;
        if let Some(entry) = self.users.get_mut(user) {
            entry.extra_mut().left_at_ms = Some(now_ms);
        }
        self.departures.push_back((now_ms, user));
    }

    /// The user called `name`, if kept here.
    pub fn find(&self, name: &str) -> Option<UserIndex> {
        self.users.find(name)
    }

    /// The devices registered for `user`.
    pub fn devices_of(&self, user: UserIndex) -> impl Iterator<Item = ConnId> + '_ {
        self.users.get(user).into_iter().flat_map(|u| u.devices())
    }

    /// Every device registered here, in user-table order from `cursor`
    /// (wrapping): at most `take` of them, looking at no more than
    /// `scan_max` users. Returns where to continue.
    pub fn devices_from(
        &self,
        cursor: usize,
        scan_max: usize,
        take: usize,
        out: &mut Vec<ConnId>,
    ) -> usize {
        self.users.devices_from(cursor, scan_max, take, out)
    }

    /// Users with devices here, in user-table order from slot `cursor`,
    /// looking at no more than `scan_max` slots: `each` gets the name and
    /// devices of each. Returns where to continue (`None`: the table's end
    /// was reached).
    pub fn online_users_from(
        &self,
        cursor: usize,
        scan_max: usize,
        mut each: impl FnMut(&str, &mut dyn Iterator<Item = ConnId>),
    ) -> Option<usize> {
        let end = cursor.saturating_add(scan_max);
        for (i, entry) in self.users.iter_from(cursor) {
            if i as usize >= end {
                return Some(end);
            }
            if entry.device_count() > 0 {
                each(entry.name(), &mut entry.devices());
            }
        }
        None
    }

    fn next_push(&mut self, now_ms: u64, payload: Bytes) -> SharedPush {
        self.seq += 1;
        Rc::new(StoredPush::new(
            self.seq,
            now_ms,
            payload,
            self.stored_bytes.clone(),
        ))
    }

    /// One push to named users homed here. Names must be distinct (the
    /// origin de-duplicates a request's users). Online recipients' devices
    /// go to `out`; offline ones are stored or rejected and counted there.
    /// `memory_high`: the host is over its memory mark, so nothing new is
    /// kept for offline users.
    pub fn push<S: AsRef<str>>(
        &mut self,
        names: &[S],
        payload: Bytes,
        now_ms: u64,
        memory_high: bool,
        out: &mut Fanout,
    ) {
        out.clear();
        // The new push is already counted in `stored_bytes` while it lives.
        let push = self.next_push(now_ms, payload);
        let mut recipients = Vec::with_capacity(names.len());
        let mut stored_once = false;
        for name in names {
            let name = name.as_ref();
            if check_user_id(name).is_err() {
                out.counts.reject(1, RejectReasons::INVALID_USER);
                continue;
            }
            let known = self.users.find(name);
            if known
                .and_then(|u| self.users.get(u))
                .is_some_and(|u| u.last_seq() == push.seq)
            {
                continue; // listed twice: it has this push already
            }
            let online = known
                .and_then(|u| self.users.get(u))
                .is_some_and(|u| u.device_count() > 0);
            // Storing costs its bytes once per push (shared by every
            // mailbox) and an entry per user not yet kept here.
            let bytes_fit =
                stored_once || self.stored_bytes.get() <= self.settings.stored_bytes_max;
            if !online {
                let why = if memory_high {
                    Some(RejectReasons::MEMORY_HIGH)
                } else if !bytes_fit {
                    Some(RejectReasons::STORED_BYTES_FULL)
                } else if known.is_none() && self.offline_users() >= self.settings.offline_users_max
                {
                    Some(RejectReasons::OFFLINE_USERS_FULL)
                } else {
                    None
                };
                if let Some(why) = why {
                    out.counts.reject(1, why);
                    continue;
                }
            }
            let user = match known {
                Some(u) => u,
                None => self.users.find_or_create(name, self.forgotten_floor_seq),
            };
            if bytes_fit {
                self.store(user, &push);
                recipients.push(user);
                stored_once = true;
            } else {
                // Delivered but not kept: a resume across it is a gap.
                let entry = self.users.get_mut(user).expect("found above");
                entry.floor_seq = entry.floor_seq.max(push.seq);
            }
            match self.users.get(user) {
                Some(entry) if entry.device_count() > 0 => out.add_recipient(entry.devices()),
                _ => out.counts.stored += 1,
            }
        }
        self.remember_expiry(&push, recipients);
        out.push = Some(push);
    }

    /// Users kept here without a device.
    fn offline_users(&self) -> u64 {
        self.users.len() as u64 - self.users_online
    }

    fn store(&mut self, user: UserIndex, push: &SharedPush) {
        let entries_max = self.settings.entries_max;
        let entry = self.users.get_mut(user).expect("stored for a known user");
        if entry.mailbox().is_none_or(|m| m.is_empty()) {
            self.mailboxes_nonempty += 1;
        }
        match entry.extra_mut().mailbox.store(push.clone(), entries_max) {
            Some(evicted) => entry.floor_seq = entry.floor_seq.max(evicted),
            None => self.mailbox_entries += 1,
        }
    }

    fn remember_expiry(&mut self, push: &SharedPush, recipients: Vec<UserIndex>) {
        if !recipients.is_empty() {
            self.expiries.push_own(
                push.stored_at_ms + self.settings.retention_ms,
                Expiry {
                    push: Rc::downgrade(push),
                    recipients,
                },
            );
        }
    }

    /// One push to every user with a device here. It is stored once, in
    /// the shard's broadcast log, not in each mailbox.
    pub fn broadcast(&mut self, payload: Bytes, now_ms: u64, out: &mut Fanout) {
        out.clear();
        let push = self.next_push(now_ms, payload);
        if let Some(evicted) = self
            .broadcasts
            .store(push.clone(), self.settings.entries_max)
        {
            self.broadcast_floor_seq = self.broadcast_floor_seq.max(evicted);
        }
        for (_, user) in self.users.iter().filter(|(_, u)| u.device_count() > 0) {
            out.add_recipient(user.devices());
        }
        out.push = Some(push);
    }

    /// The lowest seq a device may resume from without a gap: below it,
    /// something for this user (or a broadcast) was dropped.
    fn resume_floor_seq(&self, user: UserIndex) -> u64 {
        let user_floor = self.users.get(user).map_or(u64::MAX, |u| u.floor_seq);
        user_floor.max(self.broadcast_floor_seq)
    }

    /// The newest seq that concerns `user` (its pushes and broadcasts).
    fn newest_seq(&self, user: UserIndex) -> u64 {
        let user_last = self.users.get(user).map_or(0, |u| u.last_seq());
        user_last
            .max(self.broadcasts.last_seq().unwrap_or(0))
            .max(self.broadcast_floor_seq)
    }

    /// What `user` is owed after `cursor`, oldest first: its mailbox and
    /// the broadcasts merged by seq. Fails if entries after `cursor` were
    /// dropped meanwhile (the device must reconnect and be told).
    pub fn replay_after(
        &self,
        user: UserIndex,
        cursor: u64,
    ) -> Result<impl Iterator<Item = &SharedPush>, FellBehind> {
        if self.resume_floor_seq(user) > cursor {
            return Err(FellBehind);
        }
        let mailbox = self.users.get(user).and_then(|u| u.mailbox());
        Ok(merged_after(mailbox, &self.broadcasts, cursor))
    }

    /// (online, devices) of a user homed here.
    pub fn presence(&self, name: &str) -> (bool, u32) {
        let devices = self
            .users
            .find(name)
            .and_then(|u| self.users.get(u))
            .map_or(0, |u| u.device_count() as u32);
        (devices > 0, devices)
    }

    /// The users with at least one device here (for a presence resync).
    pub fn online_users(&self) -> impl Iterator<Item = &str> + '_ {
        self.users
            .iter()
            .filter(|(_, u)| u.device_count() > 0)
            .map(|(_, u)| u.name())
    }

    /// Expires mailbox entries, broadcasts and departed users whose time
    /// has come (bounded work per call), and gives memory back.
    pub fn tick(&mut self, now_ms: u64) {
        self.expire_mailboxes(now_ms);
        self.expire_broadcasts(now_ms);
        self.expire_departures(now_ms);
        self.users.shrink_if_sparse();
        self.expiries.shrink_if_sparse();
        shrink_if_sparse(&mut self.departures);
    }

    /// Forgets a user with no device and nothing stored once the retention
    /// time has passed since its last device left, so its floor survives
    /// short absences exactly.
    fn maybe_forget(&mut self, user: UserIndex, now_ms: u64) {
        let retention = self.settings.retention_ms;
        let Some(entry) = self.users.get(user) else {
            return;
        };
        if entry.device_count() > 0 {
            return;
        }
        let (stored, left_at) = match &entry.extra {
            Some(extra) => (extra.mailbox.len(), extra.left_at_ms),
            None => (0, None),
        };
        if stored > 0 || left_at.is_some_and(|t| t + retention > now_ms) {
            return;
        }
        self.forgotten_floor_seq = self.forgotten_floor_seq.max(entry.last_seq());
        self.users.forget(user);
    }

    fn expire_mailboxes(&mut self, now_ms: u64) {
        let mut work = 0;
        // Bounded: each turn removes one item, and the work per tick is
        // capped.
        while work < EXPIRY_WORK_PER_TICK_MAX {
            let Some(expiry) = self.expiries.pop_due(now_ms) else {
                return;
            };
            work += expiry.recipients.len();
            // Gone already: every mailbox evicted it (count bound).
            let push = expiry.push.upgrade();
            for user in expiry.recipients {
                if let (Some(push), Some(entry)) = (&push, self.users.get_mut(user)) {
                    if let Some(extra) = entry.extra.as_mut() {
                        if let Some(seq) = extra.mailbox.expire(push) {
                            let emptied = extra.mailbox.is_empty();
                            entry.floor_seq = entry.floor_seq.max(seq);
                            entry.shrink();
                            self.mailbox_entries -= 1;
                            self.mailboxes_nonempty -= emptied as u64;
                        }
                    }
                }
                self.maybe_forget(user, now_ms);
            }
        }
    }

    fn expire_broadcasts(&mut self, now_ms: u64) {
        let retention = self.settings.retention_ms;
        while let Some(oldest) = self.broadcasts.oldest() {
            if oldest.stored_at_ms + retention > now_ms {
                return;
            }
            let oldest = oldest.clone();
            if let Some(seq) = self.broadcasts.expire(&oldest) {
                self.broadcast_floor_seq = self.broadcast_floor_seq.max(seq);
            }
        }
    }

    fn expire_departures(&mut self, now_ms: u64) {
        let retention = self.settings.retention_ms;
        for _ in 0..EXPIRY_WORK_PER_TICK_MAX {
            match self.departures.front() {
                Some(&(at, user)) if at + retention <= now_ms => {
                    self.departures.pop_front();
                    self.maybe_forget(user, now_ms);
                }
                _ => return,
            }
        }
    }
}

/// Gives a queue's memory back once it holds under a quarter of it.
fn shrink_if_sparse<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > 64 && queue.len() < queue.capacity() / 4 {
        queue.shrink_to(queue.len() * 2);
    }
}

#[cfg(test)]
mod tests;
