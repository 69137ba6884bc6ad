//! Several hosts (Redis configured): where each device on this shard
//! stands in its user's history in Redis, and the history reads it waits
//! for. Pure: connections, rungs, answers and `now` in; what to send, ask
//! or close out. Without Redis the gateway has no `Positions`.
//!
//! A device here is in one of three stages:
//! - **joining**: its upgrade is answered and its welcome waits for a read
//!   of the history (`history::resume`), which names the epoch and last seq
//!   it is greeted with. Doorbells for its user are not sent to it; the
//!   highest seq heard is remembered.
//! - **live** at a [`Position`] (the epoch of its welcome, the last seq it
//!   was sent): each rung is decided by [`gap::ring`].
//! - **repairing**: a rung showed a lost doorbell, and a read of the
//!   history after the device's seq is out. Rungs heard meanwhile only
//!   raise the highest seq heard; when the read answers and its replay is
//!   sent, a seq heard above the replay's end starts another read, so no
//!   push is sent out of order or skipped. A read starts from a rung
//!   ([`Positions::ring`]) or from the periodic check's answer
//!   ([`Positions::check`], `history_check.rs`) for a device it found
//!   behind the history.
//!
//! A read is bound to its device by the full `ConnId` (generation
//! included) and a number of its own: the answer for a device that left,
//! or for a read that timed out, finds nothing and is dropped. Reads out
//! at once are bounded ([`READS_IN_FLIGHT_MAX`]), and each has a deadline.

use crate::cluster::doorbell::Rung;
use crate::cluster::gap::{self, Position, Ring};
use shard::ConnId;
use std::collections::{BTreeMap, HashMap};

/// Reads of the history out at once on one shard; a device that needs one
/// beyond this is closed with 1013 and resumes when it reconnects. Well
/// above what the Redis thread serves at once (256 for every shard).
pub const READS_IN_FLIGHT_MAX: usize = 4_096;

/// Names one read, unique on this shard.
pub type ReadId = u64;

/// A device waiting for a read.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    why: Why,
    /// The read out and its deadline (`None` once the deadline passed:
    /// the device is being closed).
    read: Option<(ReadId, u64)>,
    /// The highest seq rung for the device's user since its read went out
    /// (0: none).
    heard_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// Its welcome; `since` as the device sent it.
    Joining { since: Option<Position> },
    /// A gap after `at`, where the device stands.
    Repairing { at: Position },
}

/// What a rung means for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to send now (a duplicate, or the device waits for a read).
    Nothing,
    /// Send the rung's push; the device is now at its seq.
    Send,
    /// Read the history after `after` (this push included) and send that
    /// first: ask for `read`.
    Repair { read: ReadId, after: Position },
    /// The history disagrees with what the device was sent: close it with
    /// 1012 so it reconnects and resumes (`recovered:false`).
    Resync,
    /// A repair is needed but too many reads are out: close the device
    /// with 1013; it resumes when it reconnects.
    Busy,
    /// A device this part does not know (it did not join through Redis:
    /// one moved here by a live upgrade): close it with 1012 so it
    /// reconnects and resumes from the history.
    Unknown,
}

/// A read's answer arrived for a device that waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// The device's welcome (it asked to resume from `since`): greet and
    /// replay, then [`Positions::settle`].
    Joined { since: Option<Position> },
    /// A repair of a device at `at`: send the replay after it, then
    /// [`Positions::settle`].
    Repaired { at: Position },
}

/// After a read's replay was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The device is live.
    Live,
    /// A push above the replay's end was rung meanwhile: ask for `read`
    /// (the history after `after`).
    Repair { read: ReadId, after: Position },
    /// Another read is needed but too many are out: close with 1013.
    Busy,
}

pub struct Positions {
    /// Live devices and where each stands: an idle device costs one entry
    /// here (24 bytes and the map's slack).
    live: HashMap<ConnId, Position>,
    /// Devices waiting for a read (at most [`READS_IN_FLIGHT_MAX`], plus
    /// those past their deadline until the wiring closes them).
    waiting: HashMap<ConnId, Waiting>,
    /// Reads out, by deadline: (deadline ms, read) → device.
    deadlines: BTreeMap<(u64, ReadId), ConnId>,
    next_read: ReadId,
    timeout_ms: u64,
}

impl Positions {
    /// `timeout_ms`: how long a read may take before its device is closed.
    pub fn new(timeout_ms: u64) -> Positions {
        Positions {
            live: HashMap::new(),
            waiting: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_read: 1,
            timeout_ms,
        }
    }

    /// Devices known here (joining, live or repairing).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.len() + self.waiting.len()
    }

    /// Reads out now.
    pub fn reads_in_flight(&self) -> usize {
        self.deadlines.len()
    }

    /// Puts `conn` in `waiting` for a new read, or `None` when too many
    /// are out (then nothing changes).
    fn start_read(&mut self, conn: ConnId, why: Why, now_ms: u64) -> Option<ReadId> {
        if self.deadlines.len() >= READS_IN_FLIGHT_MAX {
            return None;
        }
        let read = self.next_read;
        self.next_read += 1;
        let deadline = now_ms + self.timeout_ms;
        self.live.remove(&conn);
        let waiting = Waiting {
            why,
            read: Some((read, deadline)),
            // The read covers whatever was stored before it went out.
            heard_seq: 0,
        };
        if let Some(Waiting {
            read: Some(old), ..
        }) = self.waiting.insert(conn, waiting)
        {
            self.deadlines.remove(&(old.1, old.0));
        }
        self.deadlines.insert((deadline, read), conn);
        Some(read)
    }

    /// A device joined (asking to resume from `since`): its welcome waits
    /// for the read returned, or `None` when too many reads are out (close
    /// it with 1013; nothing is kept).
    pub fn join(&mut self, conn: ConnId, since: Option<Position>, now_ms: u64) -> Option<ReadId> {
        if self.deadlines.len() >= READS_IN_FLIGHT_MAX {
            return None;
        }
        self.forget(conn);
        self.start_read(conn, Why::Joining { since }, now_ms)
    }

    /// The device on `conn` is gone: its read, if any, is dropped.
    pub fn forget(&mut self, conn: ConnId) {
        self.live.remove(&conn);
        if let Some(Waiting {
            read: Some((read, deadline)),
            ..
        }) = self.waiting.remove(&conn)
        {
            self.deadlines.remove(&(deadline, read));
        }
    }

    /// A rung for the user of the device on `conn`.
    pub fn ring(&mut self, conn: ConnId, rung: &Rung, now_ms: u64) -> Action {
        if let Some(waiting) = self.waiting.get_mut(&conn) {
            waiting.heard_seq = waiting.heard_seq.max(rung.seq);
            return Action::Nothing;
        }
        let Some(at) = self.live.get_mut(&conn) else {
            return Action::Unknown;
        };
        match gap::ring(*at, rung) {
            Ring::Send => {
                at.seq = rung.seq;
                Action::Send
            }
            Ring::Have => Action::Nothing,
            Ring::Resync => Action::Resync,
            Ring::Repair { after_seq } => {
                let at = *at;
                let after = Position {
                    epoch: at.epoch,
                    seq: after_seq,
                };
                match self.start_read(conn, Why::Repairing { at }, now_ms) {
                    Some(read) => Action::Repair { read, after },
                    None => Action::Busy,
                }
            }
        }
    }

    /// Where a live device stands (`None`: joining, repairing or unknown).
    pub fn live_at(&self, conn: ConnId) -> Option<Position> {
        self.live.get(&conn).copied()
    }

    /// A periodic check read the history of the device on `conn` (asked
    /// when it stood at `asked_at`): `history` as [`gap::check`] takes it.
    /// A device that left, waits for a read or moved since is left alone
    /// (`Nothing`): a doorbell reached it meanwhile, and a gap would show
    /// there.
    pub fn check(
        &mut self,
        conn: ConnId,
        asked_at: Position,
        history: Option<Position>,
        now_ms: u64,
    ) -> Action {
        if self.live.get(&conn) != Some(&asked_at) {
            return Action::Nothing;
        }
        match gap::check(asked_at, history) {
            Ring::Have | Ring::Send => Action::Nothing,
            Ring::Resync => Action::Resync,
            Ring::Repair { after_seq } => {
                let after = Position {
                    epoch: asked_at.epoch,
                    seq: after_seq,
                };
                match self.start_read(conn, Why::Repairing { at: asked_at }, now_ms) {
                    Some(read) => Action::Repair { read, after },
                    None => Action::Busy,
                }
            }
        }
    }

    /// The answer to `read` for `conn` arrived: what it was for, if the
    /// device still waits for it (else the answer is dropped).
    pub fn answered(&mut self, conn: ConnId, read: ReadId) -> Option<Answered> {
        let waiting = self.waiting.get_mut(&conn)?;
        let (waited, deadline) = waiting.read?;
        if waited != read {
            return None;
        }
        waiting.read = None;
        self.deadlines.remove(&(deadline, read));
        Some(match waiting.why {
            Why::Joining { since } => Answered::Joined { since },
            Why::Repairing { at } => Answered::Repaired { at },
        })
    }

    /// The answer's replay was sent and the device is at `at`: live, unless
    /// a push above `at` was rung while it waited.
    pub fn settle(&mut self, conn: ConnId, at: Position, now_ms: u64) -> Settled {
        let Some(waiting) = self.waiting.remove(&conn) else {
            return Settled::Live;
        };
        if let Some((read, deadline)) = waiting.read {
            self.deadlines.remove(&(deadline, read));
        }
        self.live.insert(conn, at);
        if waiting.heard_seq <= at.seq {
            return Settled::Live;
        }
        match self.start_read(conn, Why::Repairing { at }, now_ms) {
            Some(read) => Settled::Repair { read, after: at },
            None => Settled::Busy,
        }
    }

    /// Devices whose read is past its deadline (each once; a late answer
    /// is then dropped): close them with 1013.
    pub fn expired(&mut self, now_ms: u64) -> Vec<ConnId> {
        let mut late = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let conn = entry.remove();
            if let Some(waiting) = self.waiting.get_mut(&conn) {
                waiting.read = None;
            }
            late.push(conn);
        }
        late
    }

    /// Gives memory back once a table is mostly empty.
    pub fn shrink_if_sparse(&mut self) {
        shrink_if_sparse(&mut self.live);
        shrink_if_sparse(&mut self.waiting);
    }
}

fn shrink_if_sparse<V>(map: &mut HashMap<ConnId, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(index: u32, generation: u32) -> ConnId {
        ConnId::for_tests(index, generation)
    }

    fn rung(epoch: u64, seq: u64, previous_seq: u64) -> Rung {
        Rung {
            user: "u".into(),
            epoch,
            seq,
            previous_seq,
        }
    }

    #[test]
    fn a_joining_device_is_sent_nothing_and_repairs_what_it_heard_above_its_welcome() {
        let mut p = Positions::new(1_000);
        let c = conn(1, 1);
        let read = p.join(c, None, 0).unwrap();
        assert_eq!(p.ring(c, &rung(7, 12, 9), 5), Action::Nothing);
        assert_eq!(p.ring(c, &rung(7, 15, 12), 6), Action::Nothing);
        assert_eq!(p.answered(c, read), Some(Answered::Joined { since: None }));
        // The welcome said 12 (the read ran before push 15 was stored).
        let Settled::Repair { read, after } = p.settle(c, Position { epoch: 7, seq: 12 }, 10)
        else {
            panic!("a repair expected");
        };
        assert_eq!(after, Position { epoch: 7, seq: 12 });
        assert_eq!(
            p.answered(c, read),
            Some(Answered::Repaired {
                at: Position { epoch: 7, seq: 12 }
            })
        );
        assert_eq!(
            p.settle(c, Position { epoch: 7, seq: 15 }, 20),
            Settled::Live
        );
        assert_eq!(p.ring(c, &rung(7, 16, 15), 21), Action::Send);
        assert_eq!(
            p.ring(c, &rung(7, 16, 15), 22),
            Action::Nothing,
            "a duplicate"
        );
        assert_eq!(p.reads_in_flight(), 0);
    }

    #[test]
    fn a_welcome_at_or_above_what_was_heard_is_live_at_once() {
        let mut p = Positions::new(1_000);
        let c = conn(1, 1);
        let read = p.join(c, None, 0).unwrap();
        assert_eq!(p.ring(c, &rung(7, 12, 9), 5), Action::Nothing);
        assert_eq!(p.answered(c, read), Some(Answered::Joined { since: None }));
        assert_eq!(
            p.settle(c, Position { epoch: 7, seq: 12 }, 10),
            Settled::Live
        );
        assert_eq!(p.ring(c, &rung(7, 12, 9), 11), Action::Nothing);
    }

    #[test]
    fn a_lost_doorbell_starts_one_repair_and_later_rungs_wait_for_it() {
        let mut p = Positions::new(1_000);
        let c = conn(3, 1);
        let read = p.join(c, None, 0).unwrap();
        p.answered(c, read).unwrap();
        assert_eq!(p.settle(c, Position { epoch: 7, seq: 4 }, 0), Settled::Live);
        let Action::Repair { read, after } = p.ring(c, &rung(7, 9, 6), 1) else {
            panic!("a repair expected");
        };
        assert_eq!(after, Position { epoch: 7, seq: 4 });
        // Pushes rung during the repair are not sent out of order.
        assert_eq!(p.ring(c, &rung(7, 11, 9), 2), Action::Nothing);
        let at = Position { epoch: 7, seq: 4 };
        assert_eq!(p.answered(c, read), Some(Answered::Repaired { at }));
        // The replay reached 11: live; else another read.
        assert_eq!(
            p.settle(c, Position { epoch: 7, seq: 11 }, 3),
            Settled::Live
        );
        assert_eq!(p.ring(c, &rung(7, 11, 9), 4), Action::Nothing);
        assert_eq!(p.ring(c, &rung(7, 12, 11), 5), Action::Send);
        assert_eq!(p.ring(c, &rung(8, 13, 12), 6), Action::Resync);
    }

    #[test]
    fn late_answers_and_reused_slots_find_nothing() {
        let mut p = Positions::new(1_000);
        let old = conn(5, 1);
        let read = p.join(old, None, 0).unwrap();
        p.forget(old);
        assert_eq!(p.reads_in_flight(), 0);
        let new = conn(5, 2);
        let new_read = p.join(new, None, 10).unwrap();
        assert_eq!(p.answered(new, read), None, "another read");
        assert_eq!(p.answered(old, read), None, "the old connection");
        // Past the deadline: closed once, and the answer is dropped.
        assert_eq!(p.expired(1_009), Vec::<ConnId>::new());
        assert_eq!(p.expired(1_010), vec![new]);
        assert_eq!(p.expired(5_000), Vec::<ConnId>::new());
        assert_eq!(p.answered(new, new_read), None);
    }

    #[test]
    fn a_check_repairs_an_unchanged_device_behind_the_history_only() {
        let mut p = Positions::new(1_000);
        let c = conn(2, 1);
        let read = p.join(c, None, 0).unwrap();
        p.answered(c, read).unwrap();
        let at = Position { epoch: 7, seq: 4 };
        assert_eq!(p.settle(c, at, 0), Settled::Live);
        assert_eq!(p.live_at(c), Some(at));
        let ahead = Some(Position { epoch: 7, seq: 6 });
        // Moved since the check was asked, or another connection: nothing.
        let before = Position { epoch: 7, seq: 3 };
        assert_eq!(p.check(c, before, ahead, 1), Action::Nothing);
        assert_eq!(p.check(conn(2, 2), at, ahead, 1), Action::Nothing);
        assert_eq!(p.check(c, at, Some(at), 1), Action::Nothing);
        let Action::Repair { read, after } = p.check(c, at, ahead, 1) else {
            panic!("a repair expected");
        };
        assert_eq!(after, at);
        assert_eq!(p.live_at(c), None, "repairing");
        assert_eq!(p.check(c, at, ahead, 2), Action::Nothing, "one repair");
        assert_eq!(p.answered(c, read), Some(Answered::Repaired { at }));
        let now = Position { epoch: 7, seq: 6 };
        assert_eq!(p.settle(c, now, 3), Settled::Live);
        let other_epoch = Some(Position { epoch: 8, seq: 6 });
        assert_eq!(p.check(c, now, other_epoch, 4), Action::Resync);
    }

    #[test]
    fn reads_out_at_once_are_bounded() {
        let mut p = Positions::new(1_000);
        for i in 0..READS_IN_FLIGHT_MAX as u32 {
            assert!(p.join(conn(i, 1), None, 0).is_some());
        }
        let extra = conn(READS_IN_FLIGHT_MAX as u32, 1);
        assert_eq!(p.join(extra, None, 0), None);
        assert_eq!(
            p.len(),
            READS_IN_FLIGHT_MAX,
            "nothing kept for a refused join"
        );
        // A live device that needs a repair then is closed as busy.
        let c = conn(0, 1);
        let read = p.waiting[&c].read.unwrap().0;
        p.answered(c, read).unwrap();
        p.settle(c, Position { epoch: 1, seq: 1 }, 0);
        assert!(
            p.join(extra, None, 0).is_some(),
            "the answered read made room"
        );
        assert_eq!(p.ring(c, &rung(1, 5, 3), 0), Action::Busy);
    }
}
