//! A shard's presence changes not yet written to Redis. Pure.
//!
//! A device that connects or leaves marks its user; each tick the shard
//! sends the marked users' current device counts in batches. Marks
//! coalesce (a user who connects and leaves ten times between ticks is
//! written once, with the final count), and a batch the queue refused
//! stays marked for the next tick. Bound: one mark per user homed on the
//! shard.

use super::link::{ToRedis, PRESENCE_BATCH_MAX};
use std::collections::HashSet;

#[derive(Default)]
pub struct PresenceOutbox {
    marked: HashSet<String>,
}

impl PresenceOutbox {
    /// `user`'s device count on this shard changed.
    pub fn mark(&mut self, user: &str) {
        if !self.marked.contains(user) {
            self.marked.insert(user.to_owned());
        }
    }

    pub fn len(&self) -> usize {
        self.marked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marked.is_empty()
    }

    /// Takes up to `batches` batches of marked users with their counts now
    /// (`devices(user)`), as messages for the Redis thread. `send` queues
    /// one; a refused one is marked again and the flush stops. Returns
    /// whether the queue took every batch offered.
    pub fn flush(
        &mut self,
        shard: usize,
        batches: usize,
        devices: impl Fn(&str) -> u32,
        mut send: impl FnMut(ToRedis) -> Result<(), ToRedis>,
    ) -> bool {
        for _ in 0..batches {
            if self.marked.is_empty() {
                return true;
            }
            let users: Vec<String> = self
                .marked
                .iter()
                .take(PRESENCE_BATCH_MAX)
                .cloned()
                .collect();
            for user in &users {
                self.marked.remove(user);
            }
            let batch = users
                .into_iter()
                .map(|user| {
                    let count = devices(&user);
                    (user, count)
                })
                .collect();
            let msg = ToRedis::PresenceUpdate {
                shard,
                devices: batch,
            };
            if let Err(ToRedis::PresenceUpdate { devices, .. }) = send(msg) {
                for (user, _) in devices {
                    self.marked.insert(user);
                }
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_coalesce_and_a_refused_batch_stays() {
        let mut outbox = PresenceOutbox::default();
        for _ in 0..3 {
            outbox.mark("a");
        }
        outbox.mark("b");
        assert_eq!(outbox.len(), 2);
        let refused = outbox.flush(0, 4, |_| 1, Err);
        assert!(!refused);
        assert_eq!(outbox.len(), 2, "kept for the next tick");
        let mut sent = Vec::new();
        let ok = outbox.flush(
            1,
            4,
            |u| if u == "a" { 2 } else { 0 },
            |m| {
                sent.push(m);
                Ok(())
            },
        );
        assert!(ok);
        assert!(outbox.is_empty());
        let [ToRedis::PresenceUpdate { shard, devices }] = &sent[..] else {
            panic!("one batch");
        };
        assert_eq!(*shard, 1);
        let mut devices = devices.clone();
        devices.sort();
        assert_eq!(devices, [("a".to_owned(), 2), ("b".to_owned(), 0)]);
    }

    #[test]
    fn batches_are_bounded() {
        let mut outbox = PresenceOutbox::default();
        for i in 0..PRESENCE_BATCH_MAX * 2 + 1 {
            outbox.mark(&format!("u{i}"));
        }
        let mut sizes = Vec::new();
        let _ = outbox.flush(
            0,
            2,
            |_| 1,
            |m| {
                if let ToRedis::PresenceUpdate { devices, .. } = m {
                    sizes.push(devices.len());
                }
                Ok(())
            },
        );
        assert_eq!(sizes, [PRESENCE_BATCH_MAX, PRESENCE_BATCH_MAX]);
        assert_eq!(outbox.len(), 1, "the rest waits for the next tick");
    }
}
