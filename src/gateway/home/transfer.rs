//! Mailboxes that move with a live upgrade (`crate::takeover`, step 3):
//! the old process *exports* each shard's users (name, floor, entries) and
//! its broadcast log; the successor *imports* them into the home part of
//! each user's home shard, before its own entries (every old seq is below
//! the successor's `seq_start`). Pure: `now` and entries in, counts out.
//!
//! Old shard j's broadcasts go into the mailboxes of the users old homed
//! on j: with another shard count those users land on different shards,
//! whose own broadcast logs hold only the successor's broadcasts.
//!
//! Bounds hold in the successor (`entries_max`, `stored_bytes_max`,
//! `offline_users_max`): what does not fit is dropped *oldest first* and
//! the user's floor raised over it, so a resume across a dropped entry is
//! `recovered:false`, never a silent gap. A user that does not fit at all
//! is not created: it starts at the successor's floor (`seq_start`) when
//! it comes, which no old position is above.

use super::mailbox::StoredPush;
use super::{Expiry, Home, SharedPush};
use bytes::Bytes;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

/// A stored push's bytes besides its payload, at most: the WebSocket
/// header (≤ 10), `{"type":"push","seq":N,"data":` (≤ 50) and `}`.
const PUSH_FRAMING_BYTES_MAX: usize = 64;

/// One stored push as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedEntry {
    pub seq: u64,
    /// Milliseconds since it was stored (clocks of two processes differ).
    pub age_ms: u64,
    pub payload: Bytes,
}

/// A user's mailbox as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedUser {
    pub name: String,
    /// Every push to this user with seq ≤ this is gone.
    pub floor_seq: u64,
    /// Oldest first.
    pub entries: Vec<MovedEntry>,
}

/// One shard's broadcast log as it travels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MovedBroadcasts {
    /// Every broadcast with seq ≤ this is gone.
    pub floor_seq: u64,
    /// Oldest first.
    pub entries: Vec<MovedEntry>,
}

/// What an import kept and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub users: u64,
    pub entries: u64,
    /// Entries over `entries_max` or `stored_bytes_max` (floor raised).
    pub entries_dropped: u64,
    /// Users over `offline_users_max` (not created).
    pub users_dropped: u64,
}

/// Pushes imported so far, by (old shard, seq), so that a broadcast or a
/// push to several users stays one allocation (and is counted once in
/// `stored_bytes`) however many imports bring it. Weak: an entry every
/// mailbox dropped frees its push; dead entries are swept once the map
/// doubled since the last sweep, so it stays under twice the imported
/// pushes alive.
#[derive(Default)]
pub(super) struct ImportedPushes {
    by_origin_seq: HashMap<(usize, u64), Weak<StoredPush>>,
    len_after_sweep: usize,
}

impl ImportedPushes {
    fn get_or_insert(
        &mut self,
        key: (usize, u64),
        make: impl FnOnce() -> SharedPush,
    ) -> SharedPush {
        if let Some(push) = self.by_origin_seq.get(&key).and_then(Weak::upgrade) {
            return push;
        }
        let push = make();
        self.by_origin_seq.insert(key, Rc::downgrade(&push));
        if self.by_origin_seq.len() > 2 * self.len_after_sweep.max(1024) {
            self.by_origin_seq.retain(|_, p| p.strong_count() > 0);
            self.by_origin_seq.shrink_to_fit();
            self.len_after_sweep = self.by_origin_seq.len();
        }
        push
    }
}

fn moved(push: &SharedPush, now_ms: u64) -> MovedEntry {
    MovedEntry {
        seq: push.seq,
        age_ms: now_ms.saturating_sub(push.stored_at_ms),
        payload: push.payload.clone(),
    }
}

impl Home {
    /// Every user here with its floor and mailbox, from user-table slot
    /// `cursor` on: at most `take` users. Returns where to continue (None:
    /// done). Payloads are shared, not copied.
    pub fn export_users(
        &self,
        cursor: usize,
        take: usize,
        now_ms: u64,
        out: &mut Vec<MovedUser>,
    ) -> Option<usize> {
        for (taken, (index, entry)) in self.users.iter_from(cursor).enumerate() {
            if taken >= take {
                return Some(index as usize);
            }
            out.push(MovedUser {
                name: entry.name().to_string(),
                floor_seq: entry.floor_seq,
                entries: entry
                    .mailbox()
                    .map(|m| m.after(0).map(|p| moved(p, now_ms)).collect())
                    .unwrap_or_default(),
            });
        }
        None
    }

    /// This shard's broadcast log.
    pub fn export_broadcasts(&self, now_ms: u64) -> MovedBroadcasts {
        MovedBroadcasts {
            floor_seq: self.broadcast_floor_seq,
            entries: self.broadcasts.after(0).map(|p| moved(p, now_ms)).collect(),
        }
    }

    /// Merges a predecessor's users (all homed here by this process's
    /// route hash) with the broadcasts of the old shard that homed them
    /// (`origin`: seqs are per old shard). Old entries go before this
    /// shard's own (their seqs are all below `continue_history`'s
    /// `seq_start`); the user's floor is lowered to old's unless something
    /// was dropped here since. May be called many times, a few users each.
    pub fn import(
        &mut self,
        origin: usize,
        users: Vec<MovedUser>,
        broadcasts: &MovedBroadcasts,
        now_ms: u64,
    ) -> ImportCounts {
        // Old entries expire before any of this process's own (a mailbox
        // expires oldest first): their times are clamped below the oldest
        // push stored here before the first import.
        let retention_ms = self.settings.retention_ms;
        let oldest_own_ms = *self.import_clamp_ms.get_or_insert_with(|| {
            self.expiries
                .oldest_own_ms()
                .map_or(now_ms, |at| at.saturating_sub(retention_ms))
                .min(now_ms)
        });
        let mut counts = ImportCounts::default();
        for user in users {
            self.import_user(origin, user, broadcasts, now_ms, oldest_own_ms, &mut counts);
        }
        // Old entries went into the imported expiries (a heap, O(log n)
        // each), which go first on a tie with this process's own: in a
        // mailbox they come first, and a mailbox expires oldest first.
        counts
    }

    /// Old entries are dated no later than `dated_max_ms`.
    fn import_user(
        &mut self,
        origin: usize,
        moved: MovedUser,
        broadcasts: &MovedBroadcasts,
        now_ms: u64,
        dated_max_ms: u64,
        counts: &mut ImportCounts,
    ) {
        let known = self.users.find(&moved.name);
        if known.is_none() && self.offline_users() >= self.settings.offline_users_max {
            counts.users_dropped += 1;
            counts.entries_dropped += moved.entries.len() as u64;
            return;
        }
        let user = match known {
            Some(u) => u,
            None => {
                let u = self
                    .users
                    .find_or_create(&moved.name, self.forgotten_floor_seq);
                // Forgotten after the retention time like any departed user.
                self.users
                    .get_mut(u)
                    .expect("created")
                    .extra_mut()
                    .left_at_ms = Some(now_ms);
                self.departures.push_back((now_ms, u));
                u
            }
        };
        counts.users += 1;
        let entry = self.users.get(user).expect("found or created");
        if entry.floor_seq > self.history_start_seq {
            // Something was dropped here already: old's entries are below
            // it and cannot be resumed across; keep the higher floor.
            counts.entries_dropped += moved.entries.len() as u64;
            return;
        }
        let mine = entry.mailbox().map_or(0, |m| m.len());
        let merged = merge_by_seq(&moved.entries, &broadcasts.entries);
        let floor_old = moved.floor_seq.max(broadcasts.floor_seq);
        let mut floor = floor_old;
        // Newest first: keep what fits, the rest is dropped and raises the
        // floor over it.
        let room = self.settings.entries_max.saturating_sub(mine);
        let mut kept: Vec<&MovedEntry> = Vec::new();
        let mut bytes = self.stored_bytes.get();
        for e in merged.iter().rev().filter(|e| e.seq > floor) {
            let fits = kept.len() < room
                && bytes + (e.payload.len() + PUSH_FRAMING_BYTES_MAX) as u64
                    <= self.settings.stored_bytes_max;
            if !fits {
                floor = floor.max(e.seq);
                break;
            }
            bytes += (e.payload.len() + PUSH_FRAMING_BYTES_MAX) as u64;
            kept.push(e);
        }
        let eligible = merged.iter().filter(|e| e.seq > floor_old).count();
        counts.entries_dropped += (eligible - kept.len()) as u64;
        let mut pushes = Vec::with_capacity(kept.len());
        for e in kept.into_iter().rev() {
            let stored_at_ms = now_ms.saturating_sub(e.age_ms).min(dated_max_ms);
            let stored_bytes = &self.stored_bytes;
            let push = self.imported.get_or_insert((origin, e.seq), || {
                Rc::new(StoredPush::new(
                    e.seq,
                    stored_at_ms,
                    e.payload.clone(),
                    stored_bytes.clone(),
                ))
            });
            pushes.push(push);
        }
        let entry = self.users.get_mut(user).expect("found or created");
        entry.floor_seq = floor;
        if pushes.is_empty() {
            return;
        }
        counts.entries += pushes.len() as u64;
        if mine == 0 {
            self.mailboxes_nonempty += 1;
        }
        self.mailbox_entries += pushes.len() as u64;
        for push in &pushes {
            self.expiries.push_imported(
                push.stored_at_ms + self.settings.retention_ms,
                Expiry {
                    push: Rc::downgrade(push),
                    recipients: vec![user],
                },
            );
        }
        entry.extra_mut().mailbox.prepend(pushes);
    }
}

/// Two seq-ordered lists as one (a seq in both counts once).
fn merge_by_seq<'a>(a: &'a [MovedEntry], b: &'a [MovedEntry]) -> Vec<&'a MovedEntry> {
    let mut out: Vec<&MovedEntry> = a.iter().chain(b).collect();
    out.sort_by_key(|e| e.seq);
    out.dedup_by_key(|e| e.seq);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Fanout, HomeSettings};
    use super::*;
    use crate::upgrade::Since;
    use shard::ConnId;

    const EPOCH: u64 = 9;
    const GAP: u64 = 1 << 32;

    fn home(entries_max: usize, offline_users_max: u64, stored_bytes_max: u64) -> Home {
        Home::new(HomeSettings {
            epoch: EPOCH,
            retention_ms: 1_000,
            entries_max,
            offline_users_max,
            stored_bytes_max,
        })
    }

    fn push(h: &mut Home, name: &str, body: &'static str, now_ms: u64) -> u64 {
        let mut out = Fanout::default();
        h.push(
            &[name],
            Bytes::from_static(body.as_bytes()),
            now_ms,
            false,
            &mut out,
        );
        assert_eq!(out.counts.rejected, 0);
        h.last_seq()
    }

    fn since(seq: u64) -> Option<Since> {
        Some(Since { epoch: EPOCH, seq })
    }

    /// Old's whole home part, as the take-over would send it.
    fn export(old: &Home, now_ms: u64) -> (Vec<MovedUser>, MovedBroadcasts) {
        let mut users = Vec::new();
        let mut cursor = 0;
        while let Some(next) = old.export_users(cursor, 1, now_ms, &mut users) {
            cursor = next;
        }
        (users, old.export_broadcasts(now_ms))
    }

    fn successor_of(old: &Home, h: Home) -> Home {
        let mut h = h;
        h.continue_history(old.last_seq() + GAP);
        h
    }

    /// (recovered, replayed payloads) for a device of `name` resuming.
    fn resume(h: &mut Home, name: &str, seq: u64, conn: u32) -> (Option<bool>, Vec<(u64, Bytes)>) {
        let joined = h.join(name, ConnId::for_tests(conn, 1), since(seq));
        let replayed = match joined.replay_after {
            Some(after) => h
                .replay_after(joined.user, after)
                .unwrap()
                .map(|p| (p.seq, p.payload.clone()))
                .collect(),
            None => Vec::new(),
        };
        (joined.recovered, replayed)
    }

    #[test]
    fn a_resume_from_before_the_upgrade_is_recovered_with_exactly_what_was_missed() {
        let mut old = home(8, 8, 100_000);
        let seen = push(&mut old, "a", "\"a1\"", 10);
        push(&mut old, "a", "\"a2\"", 20);
        let mut out = Fanout::default();
        old.broadcast(Bytes::from_static(b"\"all\""), 30, &mut out);
        push(&mut old, "a", "\"a3\"", 40);
        // A device of b was online and left before the upgrade.
        let b = old.join("b", ConnId::for_tests(1, 1), None).user;
        let b_seen = old.newest_seq_of(b);
        old.leave(b, ConnId::for_tests(1, 1), 45);
        push(&mut old, "b", "\"b1\"", 50);

        let mut new = successor_of(&old, home(8, 8, 100_000));
        let a_new = push(&mut new, "a", "\"a4\"", 5); // during the overlap
        let (users, broadcasts) = export(&old, 60);
        let counts = new.import(0, users, &broadcasts, 6);
        assert_eq!(counts.users, 2);
        assert_eq!(counts.entries_dropped, 0);
        assert_eq!(counts.users_dropped, 0);

        let (recovered, replayed) = resume(&mut new, "a", seen, 2);
        assert_eq!(recovered, Some(true));
        let bodies: Vec<&[u8]> = replayed.iter().map(|(_, p)| &p[..]).collect();
        let want: [&[u8]; 4] = [b"\"a2\"", b"\"all\"", b"\"a3\"", b"\"a4\""];
        assert_eq!(bodies, want);
        assert_eq!(replayed.last().unwrap().0, a_new);
        assert!(replayed.windows(2).all(|w| w[0].0 < w[1].0), "seq order");

        let (recovered, replayed) = resume(&mut new, "b", b_seen, 3);
        assert_eq!(recovered, Some(true));
        assert_eq!(replayed.len(), 1);
        assert_eq!(&replayed[0].1[..], b"\"b1\"");
    }

    #[test]
    fn entries_over_the_successors_bound_are_dropped_oldest_first_with_the_floor_raised() {
        let mut old = home(8, 8, 100_000);
        let first = push(&mut old, "a", "1", 10);
        let seqs: Vec<u64> = (0..4).map(|i| push(&mut old, "a", "2", 11 + i)).collect();
        let mut new = successor_of(&old, home(2, 8, 100_000));
        let (users, broadcasts) = export(&old, 20);
        let counts = new.import(0, users, &broadcasts, 1);
        assert_eq!(counts.entries, 2);
        assert_eq!(counts.entries_dropped, 3);
        assert_eq!(resume(&mut new, "a", first, 1).0, Some(false));
        let (recovered, replayed) = resume(&mut new, "a", seqs[1], 2);
        assert_eq!(recovered, Some(true), "the raised floor is exact");
        assert_eq!(replayed.iter().map(|r| r.0).collect::<Vec<_>>(), &seqs[2..]);
    }

    #[test]
    fn stored_bytes_and_offline_users_bounds_hold_in_the_successor() {
        let mut old = home(8, 8, 100_000);
        let a = push(&mut old, "a", "\"0123456789\"", 10);
        push(&mut old, "a", "\"0123456789\"", 11);
        let c = push(&mut old, "c", "1", 12);
        push(&mut old, "c", "2", 13);
        // Room for one user and about one entry's bytes.
        let mut new = successor_of(&old, home(8, 1, 100));
        let (users, broadcasts) = export(&old, 20);
        let counts = new.import(0, users, &broadcasts, 1);
        assert_eq!(counts.users, 1);
        assert_eq!(counts.users_dropped, 1);
        assert!(counts.entries_dropped >= 2, "{counts:?}");
        assert!(new.status().stored_bytes <= 100);
        assert_eq!(resume(&mut new, "a", a - 1, 1).0, Some(false));
        let (recovered, replayed) = resume(&mut new, "a", a, 3);
        assert_eq!(recovered, Some(true), "the newest entry fit");
        assert_eq!(replayed.len(), 1);
        assert_eq!(resume(&mut new, "c", c, 2).0, Some(false));
    }

    #[test]
    fn imported_entries_expire_and_are_counted() {
        let mut old = home(8, 8, 100_000);
        push(&mut old, "a", "1", 10);
        push(&mut old, "a", "2", 11);
        let mut new = successor_of(&old, home(8, 8, 100_000));
        push(&mut new, "a", "3", 500);
        let (users, broadcasts) = export(&old, 20);
        new.import(0, users, &broadcasts, 600);
        assert_eq!(new.status().mailbox_entries, 3);
        assert_eq!(new.status().mailboxes_nonempty, 1);
        new.tick(10_000);
        let status = new.status();
        assert_eq!(status.mailbox_entries, 0);
        assert_eq!(status.mailboxes_nonempty, 0);
        assert_eq!(status.stored_bytes, 0);
        assert_eq!(status.users, 0, "forgotten after the retention time");
    }

    #[test]
    fn entries_of_several_imports_expire_in_time_order_before_own_ones() {
        let mut old = home(8, 8, 100_000);
        push(&mut old, "a", "1", 10);
        push(&mut old, "b", "2", 300);
        push(&mut old, "a", "3", 600);
        let mut new = successor_of(&old, home(8, 8, 100_000));
        push(&mut new, "c", "4", 500);
        // Exported at old's 700: ages 690, 400, 100. Imported at new's
        // 800, each user on its own (as the take-over brings them): dated
        // 110, 400 and 700 clamped to 500 (no later than new's oldest),
        // so they expire (retention 1,000) at 1,110, 1,400 and 1,500, the
        // last before new's own entry of the same time.
        let (users, broadcasts) = export(&old, 700);
        for user in users {
            new.import(0, vec![user], &broadcasts, 800);
        }
        assert_eq!(new.status().mailbox_entries, 4);
        let mut left = Vec::new();
        for now in [1_109, 1_110, 1_399, 1_400, 1_499, 1_500] {
            new.tick(now);
            left.push(new.status().mailbox_entries);
        }
        assert_eq!(left, [4, 3, 3, 2, 2, 0]);
    }

    #[test]
    fn a_broadcast_is_one_allocation_for_every_imported_user() {
        let mut old = home(8, 8, 100_000);
        let mut out = Fanout::default();
        old.join("a", ConnId::for_tests(1, 1), None);
        old.join("b", ConnId::for_tests(2, 1), None);
        old.broadcast(Bytes::from_static(b"\"x\""), 10, &mut out);
        drop(out);
        let mut new = successor_of(&old, home(8, 8, 100_000));
        let (users, broadcasts) = export(&old, 20);
        // One import per user, as the take-over brings them a few at a time.
        for user in users {
            new.import(0, vec![user], &broadcasts, 1);
        }
        let one = StoredPush::new(1, 0, Bytes::from_static(b"\"x\""), Default::default());
        assert_eq!(new.status().stored_bytes, one.wire_bytes() as u64);
        // Seqs are per old shard: another shard's seq 1 is another push.
        let mut other = home(8, 8, 100_000);
        other.join("c", ConnId::for_tests(3, 1), None);
        let mut out = Fanout::default();
        other.broadcast(Bytes::from_static(b"\"y\""), 10, &mut out);
        drop(out);
        let (users, broadcasts) = export(&other, 20);
        new.import(1, users, &broadcasts, 1);
        assert_eq!(new.status().stored_bytes, 2 * one.wire_bytes() as u64);
        let (recovered, replayed) = resume(&mut new, "c", 0, 4);
        assert_eq!(recovered, Some(true));
        assert_eq!(&replayed[0].1[..], b"\"y\"");
    }
}
