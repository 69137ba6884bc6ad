//! The home shard's side of a push: one seq per push on this shard, the
//! frame built once, stored in each recipient's mailbox (so a device that
//! is away, or too slow and cut off, resumes from it) and sent to every
//! device. Mailboxes expire by age and count; users with no device and no
//! stored push are forgotten after the retention time.

use super::{Expiry, Gateway, GatewayStats, Msg, Ticket};
use crate::auth::check_user_id;
use crate::mailbox::{SharedPush, StoredPush};
use crate::push::wire::ShardStatus;
use crate::users::UserIndex;
use bytes::Bytes;
use shard::{ConnId, Ctx, SendError};
use std::rc::Rc;

/// Per-user outcome counts: delivered now, stored for later, rejected.
pub(super) type Counts = [u32; 3];
const DELIVERED: usize = 0;
const STORED: usize = 1;
const REJECTED: usize = 2;

/// Devices of one user copied on the stack while sending to them.
const DEVICES_INLINE: usize = 4;

/// Mailbox entries and departures processed per tick at most, so a mass
/// expiry cannot stall the shard (the rest waits for the next tick).
const EXPIRY_WORK_PER_TICK_MAX: usize = 200_000;

impl Gateway {
    fn next_push(&mut self, now_ms: u64, payload: Bytes) -> SharedPush {
        self.seq += 1;
        Rc::new(StoredPush::new(self.seq, now_ms, payload))
    }

    /// Stores `push` for `user` and sends it to each device. Returns whether
    /// some device got it now.
    fn deliver(&mut self, ctx: &mut Ctx<'_, Msg>, user: UserIndex, push: &SharedPush) -> bool {
        let entries_max = self.shared.mailbox_entries_max;
        let Some(entry) = self.users.get_mut(user) else {
            return false;
        };
        if entry.mailbox().is_none_or(|m| m.is_empty()) {
            self.mailboxes_nonempty += 1;
        }
        match entry.extra_mut().mailbox.store(push.clone(), entries_max) {
            Some(evicted) => entry.floor_seq = entry.floor_seq.max(evicted),
            None => self.mailbox_entries += 1,
        }
        self.send_to_devices(ctx, user, push)
    }

    /// Sends `push` to each device of `user`; true if some device got it.
    fn send_to_devices(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        user: UserIndex,
        push: &SharedPush,
    ) -> bool {
        let Some(entry) = self.users.get(user) else {
            return false;
        };
        // Copied out because closing a slow device changes the list. Most
        // users have one device: no heap allocation per recipient for them.
        let mut inline = [None::<ConnId>; DEVICES_INLINE];
        let mut spill = Vec::new();
        for (i, conn) in entry.devices().enumerate() {
            match inline.get_mut(i) {
                Some(slot) => *slot = Some(conn),
                None => spill.push(conn),
            }
        }
        let mut delivered = false;
        for conn in inline.into_iter().flatten().chain(spill) {
            if self.is_replaying(conn) {
                delivered = true; // the replay reaches it, in order
                continue;
            }
            match ctx.send(conn, &push.parts()) {
                Ok(()) => delivered = true,
                Err(SendError::QueueFull) => self.slow_consumer(ctx, conn),
                Err(SendError::Closed) => {}
            }
        }
        delivered
    }

    fn remember_expiry(&mut self, push: SharedPush, recipients: Vec<UserIndex>) {
        if !recipients.is_empty() {
            let at_ms = push.stored_at_ms + self.shared.mailbox_retention_ms;
            self.expiries.push_back(Expiry {
                at_ms,
                push: Rc::downgrade(&push),
                recipients,
            });
        }
    }

    /// Delivers one push to named users homed on this shard.
    pub(super) fn deliver_to_names(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        names: &[String],
        payload: Bytes,
    ) -> Counts {
        let push = self.next_push(ctx.now_ms(), payload);
        let mut counts = [0; 3];
        let mut recipients = Vec::with_capacity(names.len());
        for name in names {
            if check_user_id(name).is_err() {
                counts[REJECTED] += 1;
                continue;
            }
            let user = self.users.find_or_create(name, self.forgotten_floor_seq);
            recipients.push(user);
            if self.deliver(ctx, user, &push) {
                counts[DELIVERED] += 1;
            } else {
                counts[STORED] += 1;
            }
        }
        self.remember_expiry(push, recipients);
        self.count_outcomes(counts);
        counts
    }

    fn count_outcomes(&self, counts: Counts) {
        let stats = self.stats();
        GatewayStats::add(&stats.deliveries_total, counts[DELIVERED] as u64);
        GatewayStats::add(&stats.stored_total, counts[STORED] as u64);
        GatewayStats::add(&stats.rejected_total, counts[REJECTED] as u64);
    }

    /// Delivers one push to every user of this shard with a device. It is
    /// stored once, in the shard's broadcast log, not in each mailbox.
    pub(super) fn deliver_to_everyone(&mut self, ctx: &mut Ctx<'_, Msg>, payload: Bytes) -> Counts {
        let push = self.next_push(ctx.now_ms(), payload);
        if let Some(evicted) = self
            .broadcasts
            .store(push.clone(), self.shared.mailbox_entries_max)
        {
            self.broadcast_floor_seq = self.broadcast_floor_seq.max(evicted);
        }
        let online: Vec<UserIndex> = self
            .users
            .iter()
            .filter(|(_, u)| u.device_count() > 0)
            .map(|(i, _)| i)
            .collect();
        let mut counts = [0; 3];
        for user in online {
            if self.send_to_devices(ctx, user, &push) {
                counts[DELIVERED] += 1;
            } else {
                counts[STORED] += 1;
            }
        }
        self.count_outcomes(counts);
        counts
    }

    /// The lowest seq a device may resume from without a gap: below it,
    /// something for this user (or a broadcast) was dropped.
    pub(super) fn resume_floor_seq(&self, user: UserIndex) -> u64 {
        let user_floor = self.users.get(user).map_or(u64::MAX, |u| u.floor_seq);
        user_floor.max(self.broadcast_floor_seq)
    }

    /// The newest seq that concerns `user` (its pushes and broadcasts).
    pub(super) fn newest_seq(&self, user: UserIndex) -> u64 {
        let user_last = self.users.get(user).map_or(0, |u| u.last_seq());
        user_last
            .max(self.broadcasts.last_seq().unwrap_or(0))
            .max(self.broadcast_floor_seq)
    }

    /// Sends a part's counts to the shard that is waiting for them.
    pub(super) fn answer_pushed(
        &mut self,
        ctx: &mut Ctx<'_, Msg>,
        to: usize,
        ticket: Ticket,
        counts: Counts,
    ) {
        let msg = Msg::Pushed {
            ticket,
            delivered: counts[DELIVERED],
            stored: counts[STORED],
            rejected: counts[REJECTED],
        };
        if ctx.send_msg(to, msg).is_err() {
            // The origin times the ticket out and counts these as rejected.
            tracing::warn!(
                shard = ctx.shard_id(),
                to,
                "could not return push counts: queue full"
            );
        }
    }

    /// A device of `user` is gone.
    pub(super) fn device_left(&mut self, ctx: &Ctx<'_, Msg>, user: UserIndex, conn: ConnId) {
        self.devices_online = self.devices_online.saturating_sub(1);
        if !self.users.detach(user, conn) {
            return;
        }
        self.users_online = self.users_online.saturating_sub(1);
        let now = ctx.now_ms();
        if let Some(entry) = self.users.get_mut(user) {
            entry.extra_mut().left_at_ms = Some(now);
        }
        self.departures.push_back((now, user));
    }

    /// Forgets a user with no device and nothing stored once the retention
    /// time has passed since its last device left, so its floor survives
    /// short absences exactly.
    fn maybe_forget(&mut self, user: UserIndex, now_ms: u64) {
        let retention = self.shared.mailbox_retention_ms;
        let Some(entry) = self.users.get_mut(user) else {
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

    pub(super) fn expire_mailboxes(&mut self, now_ms: u64) {
        let mut work = 0;
        while self.expiries.front().is_some_and(|e| e.at_ms <= now_ms) {
            if work >= EXPIRY_WORK_PER_TICK_MAX {
                return;
            }
            let expiry = self.expiries.pop_front().expect("checked");
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

    pub(super) fn expire_broadcasts(&mut self, now_ms: u64) {
        let retention = self.shared.mailbox_retention_ms;
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

    pub(super) fn expire_departures(&mut self, now_ms: u64) {
        let retention = self.shared.mailbox_retention_ms;
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

    /// (online, devices) of a user homed here.
    pub(super) fn presence(&self, name: &str) -> (bool, u32) {
        let devices = self
            .users
            .find(name)
            .and_then(|u| self.users.get(u))
            .map_or(0, |u| u.device_count() as u32);
        (devices > 0, devices)
    }

    pub(super) fn shard_status(&self, ctx: &Ctx<'_, Msg>) -> ShardStatus {
        ShardStatus {
            shard: ctx.shard_id() as u32,
            connections: self.devices_online,
            users_online: self.users_online,
            // A counter, not a scan: status must cost the same at 1M users.
            mailboxes: self.mailboxes_nonempty,
        }
    }
}
