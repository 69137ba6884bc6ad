//! The connection slab: a Vec of 32-byte entries plus a free list. Unlike
//! `slab::Slab` it adds no per-entry tag (a vacant entry is marked by its
//! phase).
//!
//! Memory: the shard's full capacity is reserved when the table is made, so
//! filling it up never reallocates (the untouched tail stays virtual and
//! costs no RSS, and no old copy is left behind in the heap). A new
//! connection takes the lowest free entry, so the live entries stay packed
//! at the front and the vacant ones gather at the tail; once under a quarter
//! of the entries are in use, [`ConnTable::shrink_if_sparse`] cuts the
//! vacant tail off and gives its memory back. A table that was shrunk grows
//! again as a `Vec` does (doubling, which reallocates), so "no reallocation
//! while filling" holds up to the first shrink.

use crate::conn::{Conn, Phase};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Below this many entries (32 KiB) a table is not worth shrinking.
const SHRINK_ENTRIES_MIN: usize = 1024;

pub(crate) struct ConnTable {
    entries: Vec<Conn>,
    /// Vacant entries below `entries.len()`, lowest first: O(log n) to take
    /// or give one.
    free: BinaryHeap<Reverse<u32>>,
    len: usize,
}

impl ConnTable {
    pub(crate) fn with_capacity(capacity: usize) -> ConnTable {
        ConnTable {
            entries: Vec::with_capacity(capacity),
            free: BinaryHeap::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores `conn` in the lowest vacant entry; returns its index.
    pub(crate) fn insert(&mut self, conn: Conn) -> usize {
        debug_assert!(conn.phase != Phase::Vacant);
        self.len += 1;
        match self.free.pop() {
            Some(Reverse(i)) => {
                self.entries[i as usize] = conn;
                i as usize
            }
            None => {
                self.entries.push(conn);
                self.entries.len() - 1
            }
        }
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Conn> {
        self.entries.get(index).filter(|c| c.phase != Phase::Vacant)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut Conn> {
        self.entries
            .get_mut(index)
            .filter(|c| c.phase != Phase::Vacant)
    }

    /// Empties an occupied entry and returns what it held.
    pub(crate) fn remove(&mut self, index: usize) -> Conn {
        let vacant = Conn::vacant();
        let old = std::mem::replace(&mut self.entries[index], vacant);
        assert!(old.phase != Phase::Vacant, "removing a vacant entry");
        self.free.push(Reverse(index as u32));
        self.len -= 1;
        old
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, c)| c.phase != Phase::Vacant)
    }

    /// Returns memory once under a quarter of the entries are in use: cuts
    /// the vacant tail off and leaves room for twice the live entries. O(n)
    /// when it shrinks, which takes at least 3n/4 removals since the table
    /// was last full enough, so O(1) amortised per removal; O(1) when
    /// there is no vacant tail to cut.
    pub(crate) fn shrink_if_sparse(&mut self) {
        let n = self.entries.len();
        if n < SHRINK_ENTRIES_MIN || self.len >= n / 4 {
            return;
        }
        while self
            .entries
            .last()
            .is_some_and(|c| c.phase == Phase::Vacant)
        {
            self.entries.pop();
        }
        if self.entries.len() == n {
            // A live entry at the end holds the table up to it (indexes
            // are in the kernel's hands and cannot move); nothing to cut.
            return;
        }
        let kept = self.entries.len() as u32;
        self.free.retain(|&Reverse(i)| i < kept);
        self.free.shrink_to(self.free.len() * 2);
        self.entries.shrink_to(self.entries.len() * 2);
    }

    /// Entries (live and vacant) and the capacity behind them.
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize) {
        (self.entries.len(), self.entries.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Conn {
        Conn {
            phase: Phase::Open,
            ..Conn::vacant()
        }
    }

    #[test]
    fn freed_entries_are_reused_lowest_first() {
        let mut table = ConnTable::with_capacity(16);
        let ids: Vec<usize> = (0..8).map(|_| table.insert(live())).collect();
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
        for i in [6, 2, 4] {
            table.remove(i);
        }
        assert_eq!(table.insert(live()), 2);
        assert_eq!(table.insert(live()), 4);
        assert_eq!(table.insert(live()), 6);
        assert_eq!(table.insert(live()), 8, "then the end");
        assert_eq!(table.len(), 9);
    }

    #[test]
    fn filling_the_reservation_does_not_reallocate() {
        let capacity = 4 * SHRINK_ENTRIES_MIN;
        let mut table = ConnTable::with_capacity(capacity);
        let start = table.entries.as_ptr();
        for _ in 0..capacity {
            table.insert(live());
        }
        assert_eq!(table.entries.as_ptr(), start);
        assert_eq!(table.footprint(), (capacity, capacity));
    }

    #[test]
    fn a_mostly_empty_table_cuts_its_vacant_tail_and_grows_again() {
        let n = 4 * SHRINK_ENTRIES_MIN;
        let mut table = ConnTable::with_capacity(n);
        for _ in 0..n {
            table.insert(live());
        }
        // A quarter or more in use: kept as it is.
        for i in n / 4..n {
            table.remove(i);
        }
        table.shrink_if_sparse();
        assert_eq!(table.footprint(), (n, n));
        // Under a quarter: the tail after the last live entry goes.
        table.remove(n / 4 - 1);
        for i in 10..n / 4 - 1 {
            table.remove(i);
        }
        table.remove(3);
        table.shrink_if_sparse();
        assert_eq!(table.len(), 9);
        let (entries, capacity) = table.footprint();
        assert_eq!(entries, 10, "cut after the last live entry (index 9)");
        assert!(capacity <= 20, "capacity {capacity}");
        assert!(table.get(9).is_some() && table.get(10).is_none());
        // The hole below the cut is reused first, then the table grows.
        assert_eq!(table.insert(live()), 3);
        let grown: Vec<usize> = (0..3).map(|_| table.insert(live())).collect();
        assert_eq!(grown, vec![10, 11, 12]);
        for _ in 0..n {
            table.insert(live());
        }
        assert_eq!(table.len(), 13 + n);
    }

    #[test]
    fn a_live_entry_at_the_end_holds_the_table() {
        let n = 4 * SHRINK_ENTRIES_MIN;
        let mut table = ConnTable::with_capacity(n);
        for _ in 0..n {
            table.insert(live());
        }
        for i in 1..n - 1 {
            table.remove(i);
        }
        table.shrink_if_sparse();
        assert_eq!(table.footprint(), (n, n));
        assert_eq!(table.insert(live()), 1, "its free list is intact");
        table.remove(n - 1);
        table.shrink_if_sparse();
        assert_eq!(table.footprint().0, 2, "cut once it left");
    }

    #[test]
    fn a_small_table_is_left_alone() {
        let mut table = ConnTable::with_capacity(64);
        for _ in 0..64 {
            table.insert(live());
        }
        for i in 1..64 {
            table.remove(i);
        }
        table.shrink_if_sparse();
        assert_eq!(table.footprint(), (64, 64));
        assert_eq!(table.insert(live()), 1);
    }
}
