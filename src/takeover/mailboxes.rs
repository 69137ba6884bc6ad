//! How mailboxes travel in a live upgrade (step 3): the old process's
//! exported home parts (`gateway::home::transfer`) become `Mailboxes`
//! messages within the bounds of one message ([`Packer`]), and the
//! successor puts the messages back together into whole users, each with
//! the broadcast log of the old shard that homed it ([`Assembler`]). Pure:
//! no socket, no shard; the take-over threads call it.
//!
//! A user whose entries exceed one message travels in parts (`more`), the
//! parts in consecutive messages; the successor keeps at most one user in
//! parts at a time, and a user whose last part never came is not imported
//! (it starts at the successor's floor: `recovered:false`, never a gap).
//! A stored push too large for any message (over
//! [`MAILBOX_ENTRY_BYTES_MAX`] as escaped JSON, or not UTF-8) does not
//! travel: the floor is raised over it, and the entries older than it stay
//! behind too (a resume from before it could not be recovered anyway).

use super::wire::{
    BroadcastLog, StoredEntry, UserMailbox, MAILBOX_BATCH_BYTES_MAX, MAILBOX_ENTRY_BYTES_MAX,
};
use crate::gateway::home::{MovedBroadcasts, MovedEntry, MovedUser};
use bytes::Bytes;
use std::sync::Arc;

/// What an old shard hands its take-over thread: its broadcast log first,
/// then its users.
#[derive(Debug)]
pub enum MailboxItem {
    Broadcasts(MovedBroadcasts),
    User(MovedUser),
}

impl MailboxItem {
    /// Payload bytes it holds (for the outbox's bound).
    pub fn payload_bytes(&self) -> usize {
        let entries = match self {
            MailboxItem::Broadcasts(b) => &b.entries,
            MailboxItem::User(u) => &u.entries,
        };
        entries.iter().map(|e| e.payload.len()).sum()
    }
}

/// Old shards a successor keeps broadcast logs for, at most (more is a
/// broken peer).
pub const ORIGIN_SHARDS_MAX: usize = 4096;

/// Bytes of a string as JSON text (quotes and escapes), at most.
fn json_string_bytes(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// An entry's bytes in a `Mailboxes` message, at most: its data escaped and
/// `{"seq":…,"age_ms":…,"data":…},` around it.
pub fn entry_bytes(entry: &StoredEntry) -> usize {
    json_string_bytes(&entry.data) + 80
}

/// A user's bytes besides its entries: its name escaped and the fields.
fn user_bytes(name: &str) -> usize {
    json_string_bytes(name) + 96
}

/// The entries of one mailbox (or broadcast log) that can travel, and the
/// floor that then holds: a push that cannot travel is dropped with
/// everything older, the floor raised to its seq.
fn travelling(floor_seq: u64, entries: &[MovedEntry]) -> (u64, Vec<StoredEntry>) {
    let wire: Vec<Option<StoredEntry>> = entries
        .iter()
        .map(|e| {
            let data = std::str::from_utf8(&e.payload).ok()?.to_string();
            let entry = StoredEntry {
                seq: e.seq,
                age_ms: e.age_ms,
                data,
            };
            (entry_bytes(&entry) <= MAILBOX_ENTRY_BYTES_MAX).then_some(entry)
        })
        .collect();
    match wire.iter().rposition(Option::is_none) {
        None => (floor_seq, wire.into_iter().flatten().collect()),
        Some(cut) => (
            floor_seq.max(entries[cut].seq),
            wire.into_iter().skip(cut + 1).flatten().collect(),
        ),
    }
}

/// The body of one `Mailboxes` message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailboxesBody {
    pub users: Vec<UserMailbox>,
    pub broadcasts: Option<BroadcastLog>,
}

/// Packs one old shard's items, in order, into message bodies of at most
/// `MAILBOX_BATCH_BYTES_MAX` (as counted by `entry_bytes`/`user_bytes`).
#[derive(Default)]
pub struct Packer {
    body: MailboxesBody,
    bytes: usize,
    /// Users sent whole (their last part packed).
    pub users: u64,
}

impl Packer {
    /// Adds `item`; full bodies go to `out`.
    pub fn add(&mut self, item: MailboxItem, out: &mut Vec<MailboxesBody>) {
        match item {
            MailboxItem::Broadcasts(log) => self.add_broadcasts(log, out),
            MailboxItem::User(user) => self.add_user(user, out),
        }
    }

    /// The body in progress, if it holds anything.
    pub fn flush(&mut self, out: &mut Vec<MailboxesBody>) {
        if !self.body.users.is_empty() || self.body.broadcasts.is_some() {
            out.push(std::mem::take(&mut self.body));
        }
        self.bytes = 0;
    }

    fn add_broadcasts(&mut self, log: MovedBroadcasts, out: &mut Vec<MailboxesBody>) {
        let (floor_seq, entries) = travelling(log.floor_seq, &log.entries);
        // Broadcasts come before any user of their shard: start afresh.
        self.flush(out);
        let mut part = BroadcastLog {
            floor_seq,
            entries: Vec::new(),
        };
        for entry in entries {
            let size = entry_bytes(&entry);
            if self.bytes + size > MAILBOX_BATCH_BYTES_MAX {
                self.body.broadcasts = Some(std::mem::take(&mut part));
                part.floor_seq = floor_seq;
                self.flush(out);
            }
            self.bytes += size;
            part.entries.push(entry);
        }
        self.body.broadcasts = Some(part);
    }

    fn add_user(&mut self, user: MovedUser, out: &mut Vec<MailboxesBody>) {
        let (floor_seq, entries) = travelling(user.floor_seq, &user.entries);
        let head = user_bytes(&user.name);
        if self.bytes + head > MAILBOX_BATCH_BYTES_MAX {
            self.flush(out);
        }
        let fresh = |name: &str| UserMailbox {
            name: name.to_string(),
            floor_seq,
            entries: Vec::new(),
            more: false,
        };
        let mut part = fresh(&user.name);
        self.bytes += head;
        for entry in entries {
            let size = entry_bytes(&entry);
            if self.bytes + size > MAILBOX_BATCH_BYTES_MAX {
                if part.entries.is_empty() {
                    // Nothing of this user in the body yet: it starts the
                    // next one.
                    self.bytes -= head;
                } else {
                    part.more = true;
                    let done = std::mem::replace(&mut part, fresh(&user.name));
                    self.body.users.push(done);
                }
                self.flush(out);
                self.bytes = head;
            }
            self.bytes += size;
            part.entries.push(entry);
        }
        self.body.users.push(part);
        self.users += 1;
    }
}

/// A received user, ready for its home shard here.
pub struct ArrivedUser {
    /// The old shard that homed it (its seqs are that shard's).
    pub origin: usize,
    pub broadcasts: Arc<MovedBroadcasts>,
    pub user: MovedUser,
}

/// Puts received `Mailboxes` back together (the successor).
#[derive(Default)]
pub struct Assembler {
    /// Per old shard: its broadcast log (appended part by part).
    logs: Vec<Option<Arc<MovedBroadcasts>>>,
    /// A user whose next part is still to come, with its old shard.
    partial: Option<(usize, MovedUser)>,
}

fn moved_entries(entries: Vec<StoredEntry>) -> impl Iterator<Item = MovedEntry> {
    entries.into_iter().map(|e| MovedEntry {
        seq: e.seq,
        age_ms: e.age_ms,
        payload: Bytes::from(e.data),
    })
}

impl Assembler {
    /// One message's content; whole users go to `out`. An error: the
    /// message names an impossible shard (the peer is broken).
    pub fn receive(
        &mut self,
        shard: usize,
        users: Vec<UserMailbox>,
        broadcasts: Option<BroadcastLog>,
        out: &mut Vec<ArrivedUser>,
    ) -> Result<(), String> {
        if shard >= ORIGIN_SHARDS_MAX {
            return Err(format!("mailboxes of old shard {shard}: no such shard"));
        }
        if self.logs.len() <= shard {
            self.logs.resize(shard + 1, None);
        }
        if let Some(part) = broadcasts {
            let log = self.logs[shard].get_or_insert_with(Default::default);
            // Not shared yet: a shard's users come after all its log.
            let log = Arc::make_mut(log);
            log.floor_seq = log.floor_seq.max(part.floor_seq);
            log.entries.extend(moved_entries(part.entries));
        }
        for part in users {
            let more = part.more;
            let user = match self.partial.take() {
                Some((origin, mut user)) if origin == shard && user.name == part.name => {
                    user.entries.extend(moved_entries(part.entries));
                    user
                }
                // A user whose rest never came is not imported (it starts
                // at this process's floor: not recovered, never a gap).
                _ => MovedUser {
                    name: part.name,
                    floor_seq: part.floor_seq,
                    entries: moved_entries(part.entries).collect(),
                },
            };
            if more {
                self.partial = Some((shard, user));
                continue;
            }
            let broadcasts = self.logs[shard]
                .get_or_insert_with(Default::default)
                .clone();
            out.push(ArrivedUser {
                origin: shard,
                broadcasts,
                user,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, payload: &str) -> MovedEntry {
        MovedEntry {
            seq,
            age_ms: seq * 10,
            payload: Bytes::from(payload.to_string()),
        }
    }

    fn user(name: &str, floor_seq: u64, entries: Vec<MovedEntry>) -> MovedUser {
        MovedUser {
            name: name.into(),
            floor_seq,
            entries,
        }
    }

    /// Packs `items` of old shard `shard`, sends each body through JSON
    /// as the wire does, and assembles them.
    fn travel(shard: usize, items: Vec<MailboxItem>) -> (Vec<MailboxesBody>, Vec<ArrivedUser>) {
        let mut packer = Packer::default();
        let mut bodies = Vec::new();
        for item in items {
            packer.add(item, &mut bodies);
        }
        packer.flush(&mut bodies);
        let mut assembler = Assembler::default();
        let mut arrived = Vec::new();
        for (batch, body) in bodies.iter().enumerate() {
            let msg = super::super::wire::Message::Mailboxes {
                batch: batch as u64,
                shard,
                users: body.users.clone(),
                broadcasts: body.broadcasts.clone(),
            };
            let text = serde_json::to_vec(&msg).unwrap();
            assert!(text.len() <= super::super::wire::MESSAGE_BYTES_MAX);
            match serde_json::from_slice(&text).unwrap() {
                super::super::wire::Message::Mailboxes {
                    shard,
                    users,
                    broadcasts,
                    ..
                } => assembler
                    .receive(shard, users, broadcasts, &mut arrived)
                    .unwrap(),
                other => panic!("{other:?}"),
            }
        }
        (bodies, arrived)
    }

    #[test]
    fn users_and_broadcasts_arrive_whole_with_their_shards_log() {
        let log = MovedBroadcasts {
            floor_seq: 1,
            entries: vec![entry(2, "\"b\"")],
        };
        let a = user("a", 0, vec![entry(3, "{\"n\":1}"), entry(4, "\"x\\\"y\"")]);
        let b = user("b", 5, Vec::new());
        let (bodies, arrived) = travel(
            3,
            vec![
                MailboxItem::Broadcasts(log.clone()),
                MailboxItem::User(a.clone()),
                MailboxItem::User(b.clone()),
            ],
        );
        assert_eq!(bodies.len(), 1, "small: one message");
        assert_eq!(arrived.len(), 2);
        assert_eq!((arrived[0].origin, &arrived[0].user), (3, &a));
        assert_eq!(&arrived[1].user, &b);
        assert_eq!(*arrived[0].broadcasts, log);
        assert!(Arc::ptr_eq(&arrived[0].broadcasts, &arrived[1].broadcasts));
    }

    #[test]
    fn a_large_mailbox_and_log_travel_in_parts_within_the_bound() {
        let big = "\"".repeat(20_000); // 40,000 bytes escaped
        let log = MovedBroadcasts {
            floor_seq: 0,
            entries: (1..=3).map(|s| entry(s, &big)).collect(),
        };
        let a = user("a", 0, (10..20).map(|s| entry(s, &big)).collect());
        let b = user("b", 0, vec![entry(30, "1")]);
        let (bodies, arrived) = travel(
            0,
            vec![
                MailboxItem::Broadcasts(log.clone()),
                MailboxItem::User(a.clone()),
                MailboxItem::User(b.clone()),
            ],
        );
        assert!(bodies.len() >= 13, "{}", bodies.len());
        for body in &bodies {
            let counted: usize = body
                .users
                .iter()
                .map(|u| user_bytes(&u.name) + u.entries.iter().map(entry_bytes).sum::<usize>())
                .sum::<usize>()
                + body
                    .broadcasts
                    .iter()
                    .flat_map(|l| &l.entries)
                    .map(entry_bytes)
                    .sum::<usize>();
            assert!(counted <= MAILBOX_BATCH_BYTES_MAX, "{counted}");
        }
        assert_eq!(arrived.len(), 2);
        assert_eq!(arrived[0].user, a);
        assert_eq!(arrived[1].user, b);
        assert_eq!(*arrived[0].broadcasts, log);
    }

    #[test]
    fn a_push_too_large_to_travel_raises_the_floor_over_it_and_what_is_older() {
        let huge = "x".repeat(MAILBOX_ENTRY_BYTES_MAX);
        let a = user(
            "a",
            1,
            vec![entry(2, "1"), entry(3, &huge), entry(4, "2"), entry(5, "3")],
        );
        let log = MovedBroadcasts {
            floor_seq: 0,
            entries: vec![entry(6, &huge), entry(7, "4")],
        };
        let (_, arrived) = travel(0, vec![MailboxItem::Broadcasts(log), MailboxItem::User(a)]);
        assert_eq!(arrived[0].user.floor_seq, 3);
        let seqs: Vec<u64> = arrived[0].user.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(arrived[0].broadcasts.floor_seq, 6);
        assert_eq!(arrived[0].broadcasts.entries.len(), 1);
    }

    #[test]
    fn a_user_whose_last_part_never_came_is_not_imported() {
        let mut assembler = Assembler::default();
        let mut out = Vec::new();
        let part = |name: &str, more: bool| UserMailbox {
            name: name.into(),
            floor_seq: 0,
            entries: vec![StoredEntry {
                seq: 1,
                age_ms: 0,
                data: "1".into(),
            }],
            more,
        };
        assembler
            .receive(0, vec![part("a", true)], None, &mut out)
            .unwrap();
        assert!(out.is_empty(), "waits for the rest");
        // Another user comes instead: a's part is dropped, b arrives alone.
        assembler
            .receive(0, vec![part("b", false)], None, &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].user.name, "b");
        assert_eq!(out[0].user.entries.len(), 1);
        assert!(assembler
            .receive(ORIGIN_SHARDS_MAX, Vec::new(), None, &mut out)
            .is_err());
    }
}
