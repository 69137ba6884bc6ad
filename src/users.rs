//! The users homed on one shard and the connections (devices) of each.
//!
//! Sized for millions of idle users: a `HashTable<u32>` index (4 bytes a
//! bucket, so its load-factor slack costs little) over a dense table of
//! 40-byte entries whose names of up to 22 bytes are stored inline (no heap
//! allocation for typical user IDs). One device is stored inline; more go to
//! a boxed list. The entry table's capacity is reserved up front: it never
//! reallocates, and untouched capacity is virtual memory only.

use crate::route::user_hash;
use hashbrown::HashTable;
use shard::ConnId;

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

/// The devices of one user: the first inline, the rest boxed.
#[derive(Default)]
struct Devices {
    /// 8 bytes: `ConnId`'s generation is never zero, which `None` uses.
    first: Option<ConnId>,
    /// Boxed: 8 bytes per user instead of 24, and most users have one device.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<ConnId>>>,
}

pub struct UserEntry {
    name: UserName,
    devices: Devices,
}

impl UserEntry {
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn devices(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.devices
            .first
            .into_iter()
            .chain(self.devices.more.iter().flat_map(|v| v.iter().copied()))
    }

    pub fn device_count(&self) -> usize {
        self.devices.first.is_some() as usize + self.devices.more.as_ref().map_or(0, |v| v.len())
    }
}

/// Index of a user in the registry (stable while the user is registered).
pub type UserIndex = u32;

#[derive(Default)]
pub struct Users {
    index: HashTable<UserIndex>,
    /// `None` marks a free entry (no extra bytes: it uses a niche).
    entries: Vec<Option<UserEntry>>,
    free: Vec<UserIndex>,
    len: usize,
}

impl Users {
    /// Reserves room for `users` entries (virtual until used).
    pub fn with_capacity(users: usize) -> Users {
        Users {
            entries: Vec::with_capacity(users),
            ..Users::default()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    pub fn get(&self, user: UserIndex) -> Option<&UserEntry> {
        self.entries.get(user as usize)?.as_ref()
    }

    fn insert_entry(&mut self, entry: UserEntry) -> UserIndex {
        self.len += 1;
        match self.free.pop() {
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

    /// Registers `conn` as a device of `name` (creating the user).
    pub fn attach(&mut self, name: &str, conn: ConnId) -> UserIndex {
        let user = match self.find(name) {
            Some(u) => u,
            None => {
                let u = self.insert_entry(UserEntry {
                    name: UserName::new(name),
                    devices: Devices::default(),
                });
                let entries = &self.entries;
                self.index.insert_unique(user_hash(name), u, |&i| {
                    user_hash(entries[i as usize].as_ref().expect("indexed").name())
                });
                u
            }
        };
        let devices = &mut self.entries[user as usize]
            .as_mut()
            .expect("just found or inserted")
            .devices;
        if devices.first.is_none() {
            devices.first = Some(conn);
        } else {
            devices.more.get_or_insert_with(Default::default).push(conn);
        }
        user
    }

    /// Removes a device; a user left without devices is forgotten.
    pub fn detach(&mut self, user: UserIndex, conn: ConnId) {
        let Some(Some(entry)) = self.entries.get_mut(user as usize) else {
            return;
        };
        let devices = &mut entry.devices;
        if devices.first == Some(conn) {
            devices.first = devices.more.as_mut().and_then(|v| v.pop());
        } else if let Some(more) = devices.more.as_mut() {
            more.retain(|&c| c != conn);
        }
        if devices.more.as_ref().is_some_and(|v| v.is_empty()) {
            devices.more = None;
        }
        if devices.first.is_none() {
            let hash = user_hash(entry.name());
            if let Ok(found) = self.index.find_entry(hash, |&i| i == user) {
                found.remove();
            }
            self.entries[user as usize] = None;
            self.free.push(user);
            self.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(i: u32) -> ConnId {
        ConnId::for_tests(i, 1)
    }

    #[test]
    fn attach_detach_multi_device() {
        let mut users = Users::default();
        let a = users.attach("alice", conn(1));
        assert_eq!(users.attach("alice", conn(2)), a);
        let long = "a-user-id-longer-than-twenty-two-bytes";
        let b = users.attach(long, conn(3));
        assert_ne!(a, b);
        assert_eq!(users.find(long), Some(b));
        assert_eq!(users.get(a).unwrap().device_count(), 2);
        users.detach(a, conn(1));
        assert_eq!(
            users.get(a).unwrap().devices().collect::<Vec<_>>(),
            vec![conn(2)]
        );
        users.detach(a, conn(2));
        assert_eq!(users.find("alice"), None);
        assert_eq!(users.len(), 1);
        users.detach(b, conn(3));
        assert!(users.is_empty());
    }

    #[test]
    fn entries_stay_small() {
        assert!(
            std::mem::size_of::<UserEntry>() <= 40,
            "{}",
            std::mem::size_of::<UserEntry>()
        );
    }
}
