//! The users homed on one shard and the connections (devices) of each.
//!
//! Sized for millions of idle users: a `HashTable<u32>` index (4 bytes a
//! bucket, so its load-factor slack costs little) over a dense table of
//! 48-byte entries whose names of up to 22 bytes are stored inline (no heap
//! allocation for typical user IDs). One device is stored inline; more
//! devices and the mailbox go to a box that most idle users do not have. The entry table's capacity is reserved up front: it never
//! reallocates, and untouched capacity is virtual memory only.

use super::mailbox::Mailbox;
use crate::route::user_hash;
use hashbrown::HashTable;
use shard::ConnId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A user ID, inline when short.
enum UserName {
    Inline {
        len: u8,
        bytes: [u8; INLINE_NAME_BYTES_MAX],
    },
    Heap(Box<str>),
}

const INLINE_NAME_BYTES_MAX: usize = 22;

impl UserName {
    fn new(name: &str) -> UserName {
        if name.len() <= INLINE_NAME_BYTES_MAX {
            let mut bytes = [0; INLINE_NAME_BYTES_MAX];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            UserName::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            UserName::Heap(name.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            UserName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).expect("built from a str")
            }
            UserName::Heap(s) => s,
        }
    }
}

/// What most users do not need: more devices, a mailbox, a departure time.
/// Boxed, so a user with one device and no pending pushes costs 48 bytes.
#[derive(Default)]
pub struct UserExtra {
    pub more_devices: Vec<ConnId>,
    pub mailbox: Mailbox,
    /// When the last device left (ms); None while a device is connected.
    pub left_at_ms: Option<u64>,
}

pub struct UserEntry {
    name: UserName,
    /// 8 bytes: `ConnId`'s generation is never zero, which `None` uses.
    first_device: Option<ConnId>,
    pub extra: Option<Box<UserExtra>>,
    /// Every notification with seq ≤ this is gone (dropped from the mailbox
    /// or from a forgotten entry): a resume from below it is not recovered.
    pub floor_seq: u64,
}

impl UserEntry {
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn devices(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.first_device.into_iter().chain(
            self.extra
                .iter()
                .flat_map(|e| e.more_devices.iter().copied()),
        )
    }

    pub fn device_count(&self) -> usize {
        self.first_device.is_some() as usize
            + self.extra.as_ref().map_or(0, |e| e.more_devices.len())
    }

    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.extra.as_ref().map(|e| &e.mailbox)
    }

    pub fn extra_mut(&mut self) -> &mut UserExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// The newest seq this user has been sent (or lost).
    pub fn last_seq(&self) -> u64 {
        self.mailbox()
            .and_then(Mailbox::last_seq)
            .unwrap_or(0)
            .max(self.floor_seq)
    }

    /// Drops the extra box when it holds nothing.
    pub fn shrink(&mut self) {
        if let Some(extra) = &self.extra {
            if extra.more_devices.is_empty()
                && extra.mailbox.is_empty()
                && extra.left_at_ms.is_none()
            {
                self.extra = None;
            }
        }
    }
}

/// Index of a user in the registry (stable while the user is registered).
pub type UserIndex = u32;

#[derive(Default)]
pub struct Users {
    index: HashTable<UserIndex>,
    /// `None` marks a free entry (no extra bytes: it uses a niche).
    entries: Vec<Option<UserEntry>>,
    /// Free entries below `entries.len()`, lowest first.
    free: BinaryHeap<Reverse<UserIndex>>,
    len: usize,
}

/// Below this many entries a table is not worth shrinking.
const SHRINK_ENTRIES_MIN: usize = 1024;

impl Users {
    /// Reserves room for `users` more entries (virtual until used).
    pub fn reserve(&mut self, users: usize) {
        self.entries.reserve(users);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn entry(&self, user: UserIndex) -> &UserEntry {
        self.entries[user as usize]
            .as_ref()
            .expect("indexed users exist")
    }

    pub fn find(&self, name: &str) -> Option<UserIndex> {
        self.index
            .find(user_hash(name), |&i| self.entry(i).name() == name)
            .copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (UserIndex, &UserEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as UserIndex, e)))
    }

    /// Like `iter`, from entry slot `cursor` on (O(1) to start there).
    pub fn iter_from(&self, cursor: usize) -> impl Iterator<Item = (UserIndex, &UserEntry)> {
        self.entries
            .iter()
            .enumerate()
            .skip(cursor)
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as UserIndex, e)))
    }

    pub fn get(&self, user: UserIndex) -> Option<&UserEntry> {
        self.entries.get(user as usize)?.as_ref()
    }

    fn insert_entry(&mut self, entry: UserEntry) -> UserIndex {
        self.len += 1;
        match self.free.pop().map(|Reverse(u)| u) {
            Some(u) => {
                self.entries[u as usize] = Some(entry);
                u
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as UserIndex
            }
        }
    }

    pub fn get_mut(&mut self, user: UserIndex) -> Option<&mut UserEntry> {
        self.entries.get_mut(user as usize)?.as_mut()
    }

    /// The user named `name`, created with `floor_seq` if unknown.
    pub fn find_or_create(&mut self, name: &str, floor_seq: u64) -> UserIndex {
        if let Some(u) = self.find(name) {
            return u;
        }
        let u = self.insert_entry(UserEntry {
            name: UserName::new(name),
            first_device: None,
            extra: None,
            floor_seq,
        });
        let entries = &self.entries;
        self.index.insert_unique(user_hash(name), u, |&i| {
            user_hash(entries[i as usize].as_ref().expect("indexed").name())
        });
        u
    }

    /// Registers `conn` as a device of `user`.
    pub fn attach(&mut self, user: UserIndex, conn: ConnId) {
        let entry = self.get_mut(user).expect("attach to a known user");
        if let Some(extra) = entry.extra.as_mut() {
            extra.left_at_ms = None;
        }
        if entry.first_device.is_none() {
            entry.first_device = Some(conn);
        } else {
            entry.extra_mut().more_devices.push(conn);
        }
        entry.shrink();
    }

    /// Removes a device; returns true if the user has none left.
    pub fn detach(&mut self, user: UserIndex, conn: ConnId) -> bool {
        let Some(entry) = self.get_mut(user) else {
            return false;
        };
        if entry.first_device == Some(conn) {
            entry.first_device = entry.extra.as_mut().and_then(|e| e.more_devices.pop());
        } else if let Some(extra) = entry.extra.as_mut() {
            extra.more_devices.retain(|&c| c != conn);
        }
        entry.shrink();
        entry.first_device.is_none()
    }

    /// Removes a user entirely.
    pub fn forget(&mut self, user: UserIndex) {
        let Some(entry) = self.entries.get_mut(user as usize).and_then(Option::take) else {
            return;
        };
        let hash = user_hash(entry.name());
        if let Ok(found) = self.index.find_entry(hash, |&i| i == user) {
            found.remove();
        }
        self.free.push(Reverse(user));
        self.len -= 1;
    }

    /// Devices of the users from entry `cursor` on (wrapping), at most
    /// `take`, looking at no more than `scan_max` entries; returns where
    /// to continue.
    pub fn devices_from(
        &self,
        cursor: usize,
        scan_max: usize,
        take: usize,
        out: &mut Vec<ConnId>,
    ) -> usize {
        let n = self.entries.len();
        if n == 0 {
            return 0;
        }
        let mut i = cursor % n;
        let start = out.len();
        for _ in 0..scan_max.min(n) {
            if out.len() - start >= take {
                break;
            }
            if let Some(entry) = &self.entries[i] {
                out.extend(entry.devices().take(take - (out.len() - start)));
            }
            i = (i + 1) % n;
        }
        i
    }

    /// Returns memory once under a quarter of the table is in use: cuts
    /// the free tail off the entries and shrinks the index.
    pub fn shrink_if_sparse(&mut self) {
        let n = self.entries.len();
        if n < SHRINK_ENTRIES_MIN || self.len >= n / 4 {
            return;
        }
        while self.entries.last().is_some_and(Option::is_none) {
            self.entries.pop();
        }
        let kept = self.entries.len() as UserIndex;
        self.free.retain(|&Reverse(u)| u < kept);
        self.free.shrink_to_fit();
        self.entries.shrink_to(self.entries.len() * 2);
        let entries = &self.entries;
        self.index.shrink_to(self.len * 2, |&i| {
            user_hash(entries[i as usize].as_ref().expect("indexed").name())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(i: u32) -> ConnId {
        ConnId::for_tests(i, 1)
    }

    #[test]
    fn freed_entries_are_reused_lowest_first_and_the_table_shrinks() {
        let mut users = Users::default();
        let n = 4 * SHRINK_ENTRIES_MIN;
        let ids: Vec<UserIndex> = (0..n)
            .map(|i| users.find_or_create(&format!("u{i}"), 0))
            .collect();
        for &u in &ids[10..] {
            users.forget(u);
        }
        users.forget(ids[3]);
        assert_eq!(
            users.find_or_create("again", 0),
            ids[3],
            "lowest free first"
        );
        users.shrink_if_sparse();
        assert_eq!(users.entries.len(), 10, "free tail cut off");
        assert!(users.entries.capacity() <= 20);
        assert_eq!(users.find("u9"), Some(ids[9]));
        assert_eq!(users.find("u11"), None);
        let next = users.find_or_create("new", 0);
        assert_eq!(next, 10, "grows again from the cut");
        assert_eq!(users.len(), 11);
    }

    #[test]
    fn devices_from_wraps_and_bounds_its_work() {
        let mut users = Users::default();
        for i in 0..5 {
            let u = users.find_or_create(&format!("u{i}"), 0);
            users.attach(u, conn(i));
        }
        let mut out = Vec::new();
        let next = users.devices_from(3, 10, 3, &mut out);
        assert_eq!(out, vec![conn(3), conn(4), conn(0)]);
        assert_eq!(next, 1);
        out.clear();
        assert_eq!(users.devices_from(0, 2, 10, &mut out), 2, "scan bound");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn attach_detach_multi_device() {
        let mut users = Users::default();
        let a = users.find_or_create("alice", 7);
        users.attach(a, conn(1));
        assert_eq!(users.find_or_create("alice", 99), a);
        users.attach(a, conn(2));
        let long = "a-user-id-longer-than-twenty-two-bytes";
        let b = users.find_or_create(long, 0);
        users.attach(b, conn(3));
        assert_ne!(a, b);
        assert_eq!(users.find(long), Some(b));
        assert_eq!(users.get(a).unwrap().device_count(), 2);
        assert_eq!(users.get(a).unwrap().floor_seq, 7);
        assert!(!users.detach(a, conn(1)));
        assert_eq!(
            users.get(a).unwrap().devices().collect::<Vec<_>>(),
            vec![conn(2)]
        );
        assert!(users.detach(a, conn(2)));
        assert!(
            users.get(a).unwrap().extra.is_none(),
            "an empty extra box is freed"
        );
        users.forget(a);
        assert_eq!(users.find("alice"), None);
        assert_eq!(users.len(), 1);
        users.forget(b);
        assert_eq!(users.len(), 0);
    }

    #[test]
    fn entries_stay_small() {
        // name 24 + first device 8 + extra box 8 + floor 8; None is free.
        assert_eq!(std::mem::size_of::<Option<UserEntry>>(), 48);
    }
}
