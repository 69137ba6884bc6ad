//! Wiring for several hosts (Redis configured): a device's welcome and
//! replay come from its user's history in Redis, and pushes arrive as
//! doorbells (`Msg::Bell`) whose rungs [`Positions`] decides per device
//! (`cluster::gap`): sent in seq order, skipped when the device has it,
//! repaired from the history when a doorbell was lost, or the device told
//! to reconnect and resume (1012) when the history disagrees with what it
//! was sent. Reads of the history go to the Redis thread
//! (`ToRedis::Resume`) and come back as `Msg::Resumed`. A periodic check
//! ([`HistoryCheck`]) compares each live device with its user's newest
//! seq in Redis (`ToRedis::Check`, `Msg::Checked`) and starts the same
//! repair (or 1012) for a device a lost doorbell left behind when no later
//! push reveals it.
//!
//! [`Positions`]: super::positions::Positions

use super::clients::Greeting;
use super::deliver::send_push;
use super::history_check::{Checked, HistoryCheck, CHECK_USERS_MAX};
use super::home::StoredPush;
use super::positions::{Action, Answered, ReadId, Settled};
use super::{bytes, Gateway, GatewayStats, Io};
use crate::cluster::broadcast::BroadcastBell;
use crate::cluster::doorbell::{Bell, RECIPIENTS_PER_BELL_MAX};
use crate::cluster::gap::{self, Position};
use crate::cluster::history::Resumed;
use crate::cluster::ToRedis;
use crate::upgrade::Since;
use crate::ws::close::CloseCode;
use bytes::Bytes;
use shard::{ConnId, SendError};
use std::cell::Cell;
use std::rc::Rc;

/// Why a device is closed so that it reconnects and resumes from the
/// history (its welcome then says whether it lost something).
const RESUME_REASON: &str = "history changed; reconnect and resume";
const BUSY_REASON: &str = "server busy; try again later";
const REDIS_REASON: &str = "Redis unavailable; try again later";

/// A push of the shared history in its wire form. Nothing on this shard
/// keeps it (the history is in Redis), so it counts in no ledger.
fn shared_push(seq: u64, payload: Bytes, now_ms: u64) -> StoredPush {
    StoredPush::new(seq, now_ms, payload, Rc::new(Cell::new(0)))
}

impl Gateway {
    /// Closes each still-present device of `to_close` with its code, so
    /// it reconnects and resumes from the history.
    fn close_to_resume(
        &mut self,
        io: &mut impl Io,
        to_close: Vec<(ConnId, CloseCode, &'static str)>,
    ) {
        for (conn, code, reason) in to_close {
            if self.sessions.user(conn).is_some() {
                tracing::info!(
                    shard = io.shard_id(),
                    code = code.0,
                    reason,
                    "device closed to resume from the history"
                );
                self.close_device(io, conn, code, reason);
            }
        }
    }

    /// With Redis: `conn`'s upgrade was answered; its welcome waits for a
    /// read of `user`'s history. The device's presence is written first,
    /// on the same queue (the Redis thread writes presence before it
    /// serves what follows): a push stored after the read finds the device
    /// and rings this shard, one stored before it is in the read.
    pub(super) fn ask_welcome(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        user: &str,
        since: Option<Since>,
    ) {
        let (Some(positions), Some(link)) = (&mut self.positions, self.shared.redis.clone()) else {
            return;
        };
        let shard = io.shard_id();
        let since_at = since.map(|s| Position {
            epoch: s.epoch,
            seq: s.seq,
        });
        let Some(read) = positions.join(conn, since_at, io.now_ms()) else {
            tracing::warn!(
                shard,
                user,
                "too many Redis history reads out; device closed with 1013"
            );
            return self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON);
        };
        let devices = self.home.presence(user).1;
        let presence = ToRedis::PresenceUpdate {
            shard,
            devices: vec![(user.to_owned(), devices)],
        };
        let resume = ToRedis::Resume {
            shard,
            conn,
            read,
            user: user.to_owned(),
            since: since.map(|s| (s.epoch, s.seq)),
        };
        if link.try_send(presence).is_err() || link.try_send(resume).is_err() {
            tracing::warn!(
                shard,
                user,
                "Redis queue full; device closed with 1013 (try again later)"
            );
            self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON);
        }
    }

    /// A doorbell: each rung for every device of its user here, as
    /// [`Positions::ring`](super::positions::Positions::ring) decides.
    pub(super) fn bell(&mut self, io: &mut impl Io, bell: Bell) {
        if self.positions.is_none() {
            return;
        }
        let now = io.now_ms();
        let mut devices = Vec::new();
        let mut to_close: Vec<(ConnId, CloseCode, &'static str)> = Vec::new();
        let mut slow = Vec::new();
        let mut delivered = 0u64;
        for rung in &bell.rungs {
            let Some(user) = self.home.find(&rung.user) else {
                continue;
            };
            devices.clear();
            devices.extend(self.home.devices_of(user));
            // Built once per rung, for all the user's devices here.
            let mut push = None;
            let mut got = false;
            for &conn in &devices {
                let Some(positions) = &mut self.positions else {
                    return;
                };
                match positions.ring(conn, rung, now) {
                    Action::Nothing => {}
                    Action::Send => {
                        let push = push.get_or_insert_with(|| {
                            shared_push(rung.seq, bell.payload.clone(), now)
                        });
                        match self.send_shared(io, conn, rung.epoch, push) {
                            Ok(()) => got = true,
                            Err(SendError::QueueFull) => slow.push(conn),
                            Err(SendError::Closed) => {}
                        }
                    }
                    Action::Repair { read, after } => {
                        tracing::debug!(
                            shard = io.shard_id(),
                            user = rung.user,
                            after_seq = after.seq,
                            seq = rung.seq,
                            "a doorbell was lost; repairing from the history"
                        );
                        if !self.ask_repair(io, conn, &rung.user, read, after) {
                            to_close.push((conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON));
                        }
                    }
                    Action::Resync => {
                        to_close.push((conn, CloseCode::SERVICE_RESTART, RESUME_REASON))
                    }
                    Action::Busy => to_close.push((conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON)),
                    // A device that did not join through Redis (one moved
                    // here by a live upgrade): it resumes from Redis.
                    Action::Unknown => {
                        to_close.push((conn, CloseCode::SERVICE_RESTART, RESUME_REASON))
                    }
                }
            }
            delivered += got as u64;
        }
        GatewayStats::add(&self.stats().deliveries_total, delivered);
        for conn in slow {
            self.slow_consumer(io, conn);
        }
        self.close_to_resume(io, to_close);
    }

    /// A broadcast: a rung for every user with devices here (users
    /// homed on this shard, in batches of [`RECIPIENTS_PER_BELL_MAX`]),
    /// each decided per device as any doorbell's
    /// ([`BroadcastBell::rung`] says why no read per user is needed).
    pub(super) fn broadcast_bell(&mut self, io: &mut impl Io, bell: &BroadcastBell) {
        // One batch at a time, so the rungs held are bounded. A device
        // closed by a batch (1012/1013) may shift the table under the
        // cursor: a user skipped is a lost doorbell (the check repairs),
        // one seen twice has it already.
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            let Some(positions) = &self.positions else {
                return;
            };
            let mut rungs = Vec::new();
            cursor = self
                .home
                .online_users_from(at, RECIPIENTS_PER_BELL_MAX, |name, devices| {
                    let epoch = bell.epoch_of(name);
                    let seqs = devices
                        .filter_map(|conn| positions.live_at(conn))
                        .filter(|at| at.epoch == epoch)
                        .map(|at| at.seq);
                    rungs.push(bell.rung(name, seqs));
                });
            if !rungs.is_empty() {
                let payload = bell.payload.clone();
                self.bell(io, Bell { rungs, payload });
            }
        }
    }

    /// Asks the Redis thread for the history after `after` for the device
    /// on `conn`; false if the queue is full (the caller closes it).
    fn ask_repair(
        &self,
        io: &impl Io,
        conn: ConnId,
        user: &str,
        read: ReadId,
        after: Position,
    ) -> bool {
        let Some(link) = &self.shared.redis else {
            return false;
        };
        let resume = ToRedis::Resume {
            shard: io.shard_id(),
            conn,
            read,
            user: user.to_owned(),
            since: Some((after.epoch, after.seq)),
        };
        let sent = link.try_send(resume).is_ok();
        if sent {
            GatewayStats::add(&self.stats().history_repairs_total, 1);
        } else {
            tracing::warn!(
                shard = io.shard_id(),
                user,
                "Redis queue full; a gap cannot be repaired, device closed with 1013"
            );
        }
        sent
    }

    /// The answer to a history read: the device's welcome and replay, or a
    /// gap's replay; then live (or another read, if pushes were rung
    /// above what the answer covered).
    pub(super) fn resumed(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        read: ReadId,
        result: Result<Box<Resumed>, String>,
    ) {
        let Some(positions) = &mut self.positions else {
            return;
        };
        // A device that left, or a read that timed out: dropped.
        let Some(answered) = positions.answered(conn, read) else {
            return;
        };
        let resumed = match result {
            Ok(resumed) => resumed,
            Err(why) => {
                let user = self.device_user_name(conn);
                tracing::warn!(
                    shard = io.shard_id(),
                    user,
                    %why,
                    "could not read the user's history in Redis; device closed with 1013 \
                     (try again later)"
                );
                return self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, REDIS_REASON);
            }
        };
        let at = match answered {
            Answered::Joined { since } => self.welcome_from_history(io, conn, since, &resumed),
            Answered::Repaired { at } => {
                if resumed.epoch != at.epoch || resumed.recovered != Some(true) {
                    // Redis lost what the device was sent, or what it
                    // missed: it must be told (recovered:false).
                    tracing::info!(
                        shard = io.shard_id(),
                        "a gap cannot be repaired from the history; the device resumes"
                    );
                    return self.close_device(io, conn, CloseCode::SERVICE_RESTART, RESUME_REASON);
                }
                self.send_replay(io, conn, at, &resumed.replay)
            }
        };
        let Some(at) = at else {
            return;
        };
        let Some(positions) = &mut self.positions else {
            return;
        };
        match positions.settle(conn, at, io.now_ms()) {
            Settled::Live => {}
            Settled::Repair { read, after } => {
                let user = self.device_user_name(conn);
                if !self.ask_repair(io, conn, &user, read, after) {
                    self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON);
                }
            }
            Settled::Busy => self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON),
        }
    }

    /// Greets a joining device with what the history says and replays
    /// what it missed; returns where it then stands (`None`: it is gone).
    fn welcome_from_history(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        since: Option<Position>,
        resumed: &Resumed,
    ) -> Option<Position> {
        let user = self.device_user_name(conn);
        let greeting = Greeting {
            epoch: resumed.epoch,
            last_seq: resumed.last_seq,
            recovered: resumed.recovered,
            since_seq: since.map(|s| s.seq),
        };
        let welcome = self.greeting(io, conn, &user, greeting);
        match io.send(conn, &bytes(welcome)) {
            Ok(()) => {}
            Err(SendError::QueueFull) => {
                self.slow_consumer(io, conn);
                return None;
            }
            Err(SendError::Closed) => return None,
        }
        tracing::debug!(
            shard = io.shard_id(),
            user,
            recovered = ?resumed.recovered,
            replay = resumed.replay.len(),
            "welcomed from the history in Redis"
        );
        match (resumed.recovered, since) {
            (Some(true), Some(since)) => self.send_replay(io, conn, since, &resumed.replay),
            // Nothing to resume (or it is lost, and the welcome said so):
            // the device starts at the newest push.
            _ => Some(Position {
                epoch: resumed.epoch,
                seq: resumed.last_seq,
            }),
        }
    }

    /// Sends the entries of a replay the device at `at` has not had, in
    /// order; returns where it then stands (`None`: it is gone or closed).
    fn send_replay(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        at: Position,
        entries: &[(u64, Bytes)],
    ) -> Option<Position> {
        let Ok((rest, next)) = gap::replay_after(at, entries) else {
            self.close_device(io, conn, CloseCode::SERVICE_RESTART, RESUME_REASON);
            return None;
        };
        let now = io.now_ms();
        for (seq, payload) in rest {
            let push = shared_push(*seq, payload.clone(), now);
            match self.send_shared(io, conn, at.epoch, &push) {
                Ok(()) => {}
                // A replay larger than the send queue: the device resumes
                // the rest when it reconnects.
                Err(SendError::QueueFull) => {
                    self.slow_consumer(io, conn);
                    return None;
                }
                Err(SendError::Closed) => return None,
            }
        }
        GatewayStats::add(&self.stats().deliveries_total, rest.len() as u64);
        Some(next)
    }

    /// One push of the shared history on `conn`, in its wire's form.
    fn send_shared(
        &mut self,
        io: &mut impl Io,
        conn: ConnId,
        epoch: u64,
        push: &StoredPush,
    ) -> Result<(), SendError> {
        let wire = self.sessions.wire(conn);
        let deflater = self
            .sessions
            .deflate(conn)
            .then_some(&mut self.push_deflater);
        send_push(io, conn, wire, epoch, push, deflater)
    }

    /// With Redis, once per tick: the next batch of the periodic history
    /// check, when one is due (see [`HistoryCheck`]).
    pub(super) fn check_step(&mut self, io: &mut impl Io) {
        let (Some(positions), Some(link)) = (&self.positions, &self.shared.redis) else {
            return;
        };
        let now = io.now_ms();
        let check = self.history_check.get_or_insert_with(|| {
            HistoryCheck::new(link.check_interval_ms(), link.answer_timeout_ms(), now)
        });
        GatewayStats::set(
            &self.shared.stats[self.shard_id].history_reads_in_flight,
            positions.reads_in_flight() as u64,
        );
        let Some(cursor) = check.due(now) else {
            return;
        };
        let mut users: Vec<String> = Vec::new();
        let mut devices = Vec::new();
        let next = self
            .home
            .online_users_from(cursor, CHECK_USERS_MAX, |name, conns| {
                let before = devices.len();
                for conn in conns {
                    if let Some(at) = positions.live_at(conn) {
                        let user = users.len();
                        devices.push(Checked { user, conn, at });
                    }
                }
                if devices.len() > before {
                    users.push(name.to_owned());
                }
            });
        if users.is_empty() {
            return check.sent(next, devices, now);
        }
        let asked = users.len() as u64;
        let msg = ToRedis::Check {
            shard: io.shard_id(),
            batch: check.next_batch(),
            users,
        };
        if link.try_send(msg).is_ok() {
            check.sent(next, devices, now);
            GatewayStats::add(
                &self.shared.stats[self.shard_id].history_checked_users_total,
                asked,
            );
        } else {
            tracing::debug!(
                shard = io.shard_id(),
                "Redis queue full; the history check tries again at the next tick"
            );
        }
    }

    /// The answer to a batch of the periodic history check: a device behind
    /// its user's history is repaired as a doorbell's gap would be; one the
    /// history disagrees with is closed with 1012 to resume.
    pub(super) fn checked(
        &mut self,
        io: &mut impl Io,
        batch: u64,
        result: Result<Vec<Option<(u64, u64)>>, String>,
    ) {
        let Some(devices) = self.history_check.as_mut().and_then(|c| c.answered(batch)) else {
            return;
        };
        let read = match result {
            Ok(read) => read,
            Err(why) => {
                tracing::warn!(
                    shard = io.shard_id(),
                    %why,
                    "could not check devices against the history in Redis; the next round tries again"
                );
                return;
            }
        };
        let now = io.now_ms();
        let mut to_close: Vec<(ConnId, CloseCode, &'static str)> = Vec::new();
        for device in devices {
            let Some(&history) = read.get(device.user) else {
                continue;
            };
            let history = history.map(|(epoch, seq)| Position { epoch, seq });
            let Some(positions) = &mut self.positions else {
                return;
            };
            match positions.check(device.conn, device.at, history, now) {
                Action::Nothing | Action::Send | Action::Unknown => {}
                Action::Repair { read, after } => {
                    GatewayStats::add(&self.stats().history_check_gaps_total, 1);
                    let user = self.device_user_name(device.conn);
                    tracing::info!(
                        shard = io.shard_id(),
                        user,
                        after_seq = after.seq,
                        "the history check found a device behind (a lost doorbell); repairing"
                    );
                    if !self.ask_repair(io, device.conn, &user, read, after) {
                        to_close.push((device.conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON));
                    }
                }
                Action::Resync => {
                    to_close.push((device.conn, CloseCode::SERVICE_RESTART, RESUME_REASON))
                }
                Action::Busy => {
                    GatewayStats::add(&self.stats().history_check_gaps_total, 1);
                    to_close.push((device.conn, CloseCode::TRY_AGAIN_LATER, BUSY_REASON))
                }
            }
        }
        self.close_to_resume(io, to_close);
    }

    /// Devices whose history read did not answer in time are closed with
    /// 1013: Redis is slow or away, and a welcome must not guess.
    pub(super) fn expire_reads(&mut self, io: &mut impl Io) {
        let Some(positions) = &mut self.positions else {
            return;
        };
        for conn in positions.expired(io.now_ms()) {
            let user = self.device_user_name(conn);
            tracing::warn!(
                shard = io.shard_id(),
                user,
                "Redis did not answer a history read in time; device closed with 1013 \
                 (try again later)"
            );
            self.close_device(io, conn, CloseCode::TRY_AGAIN_LATER, REDIS_REASON);
        }
        if let Some(positions) = &mut self.positions {
            positions.shrink_if_sparse();
        }
    }
}
