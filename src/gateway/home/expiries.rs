//! When stored pushes leave the mailboxes: a shard's own pushes are
//! stored in time order (appended to a queue), a predecessor's imported
//! ones (a live upgrade, `Home::import`) come in any order and are dated
//! before them. Two queues merged when popping — the own ones in a
//! `VecDeque`, the imported ones in a min-heap — so an import costs
//! O(log n) per entry instead of a pass over every stored entry, and the
//! order out is by time, imported first on a tie (in a mailbox they come
//! first, and a mailbox expires oldest first), in arrival order within
//! each queue. Pure: times in, items out.
//!
//! Bounds: one item per stored push with recipients here (own) or per
//! imported entry group; both shrink as items expire.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// An imported item, ordered by (time, arrival).
struct Imported<T> {
    at_ms: u64,
    arrival: u64,
    item: T,
}

impl<T> PartialEq for Imported<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.arrival) == (other.at_ms, other.arrival)
    }
}

impl<T> Eq for Imported<T> {}

impl<T> PartialOrd for Imported<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Imported<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_ms, self.arrival).cmp(&(other.at_ms, other.arrival))
    }
}

pub(super) struct Expiries<T> {
    /// The shard's own items, `at_ms` not decreasing.
    own: VecDeque<(u64, T)>,
    imported: BinaryHeap<Reverse<Imported<T>>>,
    /// Imported items so far: keeps equal times in arrival order.
    arrivals: u64,
}

impl<T> Default for Expiries<T> {
    fn default() -> Expiries<T> {
        Expiries {
            own: VecDeque::new(),
            imported: BinaryHeap::new(),
            arrivals: 0,
        }
    }
}

impl<T> Expiries<T> {
    /// One of the shard's own items; `at_ms` is at least every own item's
    /// before it (pushes are stored in time order).
    pub(super) fn push_own(&mut self, at_ms: u64, item: T) {
        debug_assert!(self.own.back().is_none_or(|&(last, _)| last <= at_ms));
        self.own.push_back((at_ms, item));
    }

    /// An imported item, of any time: O(log n).
    pub(super) fn push_imported(&mut self, at_ms: u64, item: T) {
        self.arrivals += 1;
        self.imported.push(Reverse(Imported {
            at_ms,
            arrival: self.arrivals,
            item,
        }));
    }

    /// The time of the oldest own item.
    pub(super) fn oldest_own_ms(&self) -> Option<u64> {
        self.own.front().map(|&(at, _)| at)
    }

    /// The next item due at `now_ms` (time ≤ `now_ms`), oldest first.
    pub(super) fn pop_due(&mut self, now_ms: u64) -> Option<T> {
        let own_at = self.own.front().map(|&(at, _)| at);
        let imported_at = self.imported.peek().map(|Reverse(i)| i.at_ms);
        let imported_first = match (imported_at, own_at) {
            (Some(i), Some(o)) => i <= o,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if imported_first {
            if imported_at.is_some_and(|at| at <= now_ms) {
                return self.imported.pop().map(|Reverse(i)| i.item);
            }
            return None;
        }
        if own_at.is_some_and(|at| at <= now_ms) {
            return self.own.pop_front().map(|(_, item)| item);
        }
        None
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.own.len() + self.imported.len()
    }

    /// Gives back the room a burst left (see `shrink_if_sparse`).
    pub(super) fn shrink_if_sparse(&mut self) {
        super::shrink_if_sparse(&mut self.own);
        if self.imported.is_empty() && self.imported.capacity() > 0 {
            self.imported = BinaryHeap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Expiries<&'static str>, now_ms: u64) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop_due(now_ms)).collect()
    }

    #[test]
    fn own_and_imported_items_leave_by_time_imported_first_on_a_tie() {
        let mut q = Expiries::default();
        q.push_own(100, "own100");
        q.push_own(200, "own200");
        q.push_imported(150, "imp150");
        q.push_imported(50, "imp50");
        q.push_imported(100, "imp100");
        assert_eq!(q.len(), 5);
        assert_eq!(q.oldest_own_ms(), Some(100));
        assert_eq!(drain(&mut q, 99), ["imp50"]);
        assert_eq!(drain(&mut q, 150), ["imp100", "own100", "imp150"]);
        // Another import later, older than what is left.
        q.push_imported(10, "late10");
        q.push_imported(200, "late200");
        assert_eq!(drain(&mut q, 1_000), ["late10", "late200", "own200"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn equal_times_keep_their_arrival_order_in_each_queue() {
        let mut q = Expiries::default();
        for label in ["i1", "i2", "i3"] {
            q.push_imported(7, label);
        }
        q.push_own(7, "o1");
        q.push_own(7, "o2");
        assert_eq!(drain(&mut q, 7), ["i1", "i2", "i3", "o1", "o2"]);
    }

    #[test]
    fn many_imports_in_any_order_come_out_sorted() {
        let mut q: Expiries<u64> = Expiries::default();
        // A deterministic shuffle of 0..10_000 over several imports.
        let times: Vec<u64> = (0..10_000u64).map(|i| (i * 7_919) % 10_000).collect();
        for chunk in times.chunks(1_000) {
            for &t in chunk {
                q.push_imported(t, t);
            }
            q.push_own(20_000 + q.len() as u64, u64::MAX);
        }
        let out: Vec<u64> = std::iter::from_fn(|| q.pop_due(15_000)).collect();
        assert_eq!(out, (0..10_000).collect::<Vec<_>>());
        assert_eq!(q.len(), 10, "own items are not due yet");
        q.shrink_if_sparse();
        assert_eq!(q.imported.capacity(), 0);
    }
}
