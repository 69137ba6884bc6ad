//! Gap repair: what a shard does with a doorbell for one device. Pure: the
//! device's position and the rung in, an action out.
//!
//! A doorbell is at-most-once and may arrive twice (a retried ring) or
//! after a later one was repaired from the history; each rung names the
//! user's previous seq, so the shard sends it only when the device's last
//! delivered push is exactly that one, skips what the device has, and
//! otherwise reads the history after the device's last seq (which includes
//! the rung's push) before anything live.

use super::doorbell::Rung;

/// Where a device stands in its user's history: the epoch of its welcome
/// and the seq of the last push it was sent (0: none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// What to do with a rung for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// The next push in order: send it; the device's seq becomes the
    /// rung's.
    Send,
    /// The device has it already (a duplicate doorbell, or a repair that
    /// replayed it): nothing to do.
    Have,
    /// Pushes between the device's seq and this one were not rung here
    /// (a lost doorbell): replay the history after `after_seq`, this push
    /// included, before anything live.
    Repair { after_seq: u64 },
    /// The history no longer agrees with what the device was sent (a new
    /// epoch, or a seq the history skipped over: Redis lost writes). The
    /// device must reconnect and resume, which tells it `recovered:false`.
    Resync,
}

/// The action for `rung` on a device at `at`.
pub fn ring(at: Position, rung: &Rung) -> Ring {
    if rung.epoch != at.epoch {
        return Ring::Resync;
    }
    if rung.seq <= at.seq {
        return Ring::Have;
    }
    match rung.previous_seq.cmp(&at.seq) {
        std::cmp::Ordering::Equal => Ring::Send,
        std::cmp::Ordering::Greater => Ring::Repair { after_seq: at.seq },
        // The device was sent a seq between the user's previous push and
        // this one, which the history says does not exist.
        std::cmp::Ordering::Less => Ring::Resync,
    }
}

/// The action for a device at `at` when a periodic check read its user's
/// history meta in Redis: `history` is the partition's epoch and the
/// user's newest seq in it (`None`: the partition's meta is gone, which
/// only a loss of Redis data does once a device joined). Catches a lost
/// doorbell that no later push reveals: the history is ahead of the
/// device. The caller checks only a device whose position did not change
/// while the read was out, so a history behind it is a loss too.
pub fn check(at: Position, history: Option<Position>) -> Ring {
    let Some(history) = history else {
        return Ring::Resync;
    };
    if history.epoch != at.epoch {
        return Ring::Resync;
    }
    match history.seq.cmp(&at.seq) {
        std::cmp::Ordering::Equal => Ring::Have,
        std::cmp::Ordering::Greater => Ring::Repair { after_seq: at.seq },
        std::cmp::Ordering::Less => Ring::Resync,
    }
}

/// The entries of a replay a device has not been sent, and its position
/// after them.
pub type Replayed<'a, T> = (&'a [(u64, T)], Position);

/// The entries of a replay (oldest first, from `history::resume`) that a
/// device at `at` has not been sent, and its position after them; a
/// replay that does not continue from the device's seq is refused (the
/// caller resyncs the device).
pub fn replay_after<T>(at: Position, entries: &[(u64, T)]) -> Result<Replayed<'_, T>, NotInOrder> {
    let start = entries.partition_point(|(seq, _)| *seq <= at.seq);
    let rest = &entries[start..];
    if rest.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(NotInOrder);
    }
    let seq = rest.last().map_or(at.seq, |(seq, _)| *seq);
    Ok((
        rest,
        Position {
            epoch: at.epoch,
            seq,
        },
    ))
}

/// A replay whose seqs do not strictly increase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotInOrder;

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(epoch: u64, seq: u64, previous_seq: u64) -> Rung {
        Rung {
            user: "u".into(),
            epoch,
            seq,
            previous_seq,
        }
    }

    const AT: Position = Position { epoch: 7, seq: 10 };

    #[test]
    fn the_next_push_is_sent() {
        assert_eq!(ring(AT, &rung(7, 14, 10)), Ring::Send);
        let fresh = Position { epoch: 7, seq: 0 };
        assert_eq!(ring(fresh, &rung(7, 3, 0)), Ring::Send);
    }

    #[test]
    fn a_duplicate_or_replayed_push_is_skipped() {
        assert_eq!(ring(AT, &rung(7, 10, 4)), Ring::Have);
        assert_eq!(ring(AT, &rung(7, 9, 2)), Ring::Have);
    }

    #[test]
    fn a_lost_doorbell_is_repaired_from_the_history() {
        assert_eq!(ring(AT, &rung(7, 20, 15)), Ring::Repair { after_seq: 10 });
    }

    #[test]
    fn a_history_that_disagrees_resyncs_the_device() {
        assert_eq!(ring(AT, &rung(8, 11, 10)), Ring::Resync, "new epoch");
        assert_eq!(ring(AT, &rung(7, 12, 5)), Ring::Resync, "seq 10 unknown");
    }

    #[test]
    fn every_ring_order_ends_with_each_push_sent_once_in_order() {
        // A user's pushes 3, 5, 9, 12 (each rung names its previous); the
        // doorbells arrive in every order, some twice, some never; a
        // repair replays the history. Each push reaches the device once,
        // in seq order.
        let history = [(3u64, 0u64), (5, 3), (9, 5), (12, 9)];
        let orders: Vec<Vec<usize>> = vec![
            vec![0, 1, 2, 3],
            vec![3, 2, 1, 0],
            vec![1, 1, 0, 3],
            vec![2],
            vec![0, 2, 2, 3, 1],
        ];
        for order in orders {
            let mut at = Position { epoch: 1, seq: 0 };
            let mut sent = Vec::new();
            for &i in &order {
                let (seq, previous) = history[i];
                match ring(at, &rung(1, seq, previous)) {
                    Ring::Send => {
                        sent.push(seq);
                        at.seq = seq;
                    }
                    Ring::Have => {}
                    Ring::Repair { after_seq } => {
                        // The history up to this push (a later push may be
                        // stored too, and is replayed as well).
                        let stored: Vec<(u64, ())> =
                            history.iter().map(|&(s, _)| (s, ())).collect();
                        let (entries, next) = replay_after(
                            Position {
                                epoch: 1,
                                seq: after_seq,
                            },
                            &stored,
                        )
                        .unwrap();
                        sent.extend(entries.iter().map(|(s, _)| *s));
                        at = next;
                    }
                    Ring::Resync => panic!("{order:?}: no resync expected"),
                }
            }
            let mut expected = sent.clone();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(sent, expected, "{order:?}: once each, in order");
            let last = order.iter().map(|&i| history[i].0).max().unwrap();
            assert!(
                sent.last().is_some_and(|&s| s >= last),
                "{order:?}: reached {last}"
            );
            assert!(
                sent.iter()
                    .copied()
                    .eq(history.iter().map(|h| h.0).take(sent.len())),
                "{order:?}: no push skipped: {sent:?}"
            );
        }
    }

    #[test]
    fn a_check_repairs_a_device_behind_the_history_and_resyncs_a_disagreeing_one() {
        let history = |epoch, seq| Some(Position { epoch, seq });
        assert_eq!(check(AT, history(7, 10)), Ring::Have, "up to date");
        assert_eq!(
            check(AT, history(7, 12)),
            Ring::Repair { after_seq: 10 },
            "a lost doorbell no push revealed"
        );
        assert_eq!(check(AT, history(8, 12)), Ring::Resync, "another epoch");
        assert_eq!(
            check(AT, history(7, 9)),
            Ring::Resync,
            "history lost seq 10"
        );
        assert_eq!(check(AT, None), Ring::Resync, "partition meta gone");
    }

    #[test]
    fn a_replay_out_of_order_is_refused() {
        let entries = [(11u64, ()), (13, ()), (12, ())];
        assert_eq!(replay_after(AT, &entries), Err(NotInOrder));
        let entries = [(9u64, ()), (10, ()), (12, ())];
        let (rest, next) = replay_after(AT, &entries).unwrap();
        assert_eq!((rest.len(), next), (1, Position { epoch: 7, seq: 12 }));
        let (rest, next) = replay_after(AT, &entries[..2]).unwrap();
        assert_eq!((rest.len(), next), (0, AT));
    }
}
