//! Several hosts (Redis configured): each shard's periodic check of its
//! devices against the history in Redis. Pure: `now` and answers in; the
//! batch to ask for and the devices to compare out.
//!
//! Pub/sub is at-most-once: a lost doorbell shows at the user's next push
//! (`cluster::gap::ring`) or the device's next reconnect, and otherwise
//! never. So at most every `redis_check_interval_ms` a shard starts a
//! round that walks its user table: per tick, one batch of at most
//! [`CHECK_USERS_MAX`] users with live devices (the user table slots
//! looked at are bounded the same), sent to the Redis thread
//! (`ToRedis::Check`), which reads each user's partition epoch and newest
//! seq; the answer (`Msg::Checked`) is compared with each device's
//! position by `cluster::gap::check`. One batch is out at a time per
//! shard, with a deadline: so a shard asks about at most
//! [`CHECK_USERS_MAX`] users per tick (10,240 per second at the 100 ms
//! tick), and a round over U users lasts at least U / 1,024 ticks (a
//! million users: about 100 s) — a lost doorbell is caught within one
//! interval plus one round.

use crate::cluster::gap::Position;
pub use crate::cluster::link::CHECK_USERS_MAX;
use shard::ConnId;

/// A device in a batch: its user's index among the batch's users, and
/// where it stood when the batch was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub user: usize,
    pub conn: ConnId,
    pub at: Position,
}

struct InFlight {
    batch: u64,
    deadline_ms: u64,
    devices: Vec<Checked>,
}

pub struct HistoryCheck {
    interval_ms: u64,
    answer_timeout_ms: u64,
    /// Where the round's walk of the user table continues (`None`: no
    /// round in progress).
    cursor: Option<usize>,
    next_round_ms: u64,
    next_batch: u64,
    in_flight: Option<InFlight>,
}

impl HistoryCheck {
    /// The first round starts one interval after `now_ms`.
    pub fn new(interval_ms: u64, answer_timeout_ms: u64, now_ms: u64) -> HistoryCheck {
        HistoryCheck {
            interval_ms,
            answer_timeout_ms,
            cursor: None,
            next_round_ms: now_ms + interval_ms,
            next_batch: 1,
            in_flight: None,
        }
    }

    /// Where to walk the user table from for a batch now, or `None` when
    /// none is due (a batch is out, or the next round has not come). A
    /// batch past its deadline is given up (its late answer is dropped).
    pub fn due(&mut self, now_ms: u64) -> Option<usize> {
        if let Some(out) = &self.in_flight {
            if now_ms < out.deadline_ms {
                return None;
            }
            self.in_flight = None;
        }
        if self.cursor.is_none() && now_ms >= self.next_round_ms {
            self.next_round_ms = now_ms + self.interval_ms;
            self.cursor = Some(0);
        }
        self.cursor
    }

    /// The number for the next batch.
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// The walk continues from `cursor` (`None`: the round is done); the
    /// batch numbered [`Self::next_batch`] went out for `devices`
    /// (nothing out if empty). A batch the queue refused is not reported:
    /// the walk tries the same place at the next tick.
    pub fn sent(&mut self, cursor: Option<usize>, devices: Vec<Checked>, now_ms: u64) {
        self.cursor = cursor;
        if devices.is_empty() {
            return;
        }
        self.in_flight = Some(InFlight {
            batch: self.next_batch,
            deadline_ms: now_ms + self.answer_timeout_ms,
            devices,
        });
        self.next_batch += 1;
    }

    /// The answer to `batch` arrived: the devices it was for, if it is the
    /// batch out (else it is dropped).
    pub fn answered(&mut self, batch: u64) -> Option<Vec<Checked>> {
        if self.in_flight.as_ref()?.batch != batch {
            return None;
        }
        self.in_flight.take().map(|out| out.devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user: usize) -> Checked {
        Checked {
            user,
            conn: ConnId::for_tests(user as u32, 1),
            at: Position { epoch: 1, seq: 2 },
        }
    }

    #[test]
    fn rounds_start_at_most_every_interval_and_walk_in_batches() {
        let mut c = HistoryCheck::new(1_000, 500, 0);
        assert_eq!(c.due(999), None, "not before the first interval");
        assert_eq!(c.due(1_000), Some(0));
        let batch = c.next_batch();
        c.sent(Some(1_024), vec![device(0)], 1_000);
        assert_eq!(c.due(1_100), None, "one batch out at a time");
        assert_eq!(c.answered(batch + 1), None, "another batch");
        assert_eq!(c.answered(batch), Some(vec![device(0)]));
        assert_eq!(c.answered(batch), None, "once");
        assert_eq!(c.due(1_100), Some(1_024), "the walk continues");
        c.sent(None, Vec::new(), 1_100);
        assert_eq!(c.due(1_200), None, "round done; the next at 2,000");
        assert_eq!(c.due(2_000), Some(0));
    }

    #[test]
    fn a_batch_past_its_deadline_is_given_up_and_its_answer_dropped() {
        let mut c = HistoryCheck::new(1_000, 500, 0);
        assert_eq!(c.due(1_000), Some(0));
        let batch = c.next_batch();
        c.sent(Some(10), vec![device(0)], 1_000);
        assert_eq!(c.due(1_499), None);
        assert_eq!(c.due(1_500), Some(10));
        assert_eq!(c.answered(batch), None, "late");
    }

    #[test]
    fn a_refused_batch_is_tried_again_from_the_same_place() {
        let mut c = HistoryCheck::new(1_000, 500, 0);
        assert_eq!(c.due(1_000), Some(0));
        // The queue refused it: nothing reported.
        assert_eq!(c.due(1_100), Some(0));
    }
}
