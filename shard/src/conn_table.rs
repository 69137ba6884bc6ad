//! The connection slab: a Vec of 32-byte entries plus a free list. Unlike
//! `slab::Slab` it adds no per-entry tag (a vacant entry is marked by its
//! phase), and its capacity is reserved up front, so the table never
//! reallocates: the untouched tail stays virtual and costs no RSS, and no
//! old copy is left behind in the heap after a growth.

use crate::conn::{Conn, Phase};

pub(crate) struct ConnTable {
    entries: Vec<Conn>,
    free: Vec<u32>,
    len: usize,
}

impl ConnTable {
    pub(crate) fn with_capacity(capacity: usize) -> ConnTable {
        ConnTable {
            entries: Vec::with_capacity(capacity),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, conn: Conn) -> usize {
        debug_assert!(conn.phase != Phase::Vacant);
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
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
        self.free.push(index as u32);
        self.len -= 1;
        old
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, c)| c.phase != Phase::Vacant)
    }
}
