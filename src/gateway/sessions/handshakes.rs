//! Client connections whose upgrade request has not been judged yet. Few
//! and short-lived (bounded by `handshakes_max` and `handshake_timeout_ms`),
//! so they live in a map keyed by the full `ConnId`: an id kept past its
//! connection can never reach a newer one.

use crate::auth::Secret;
use crate::upgrade::{self, Accepted, Site, Verdict};
use crate::ws::handshake::HandshakeLimits;
use shard::ConnId;
use std::collections::HashMap;

/// What judges an upgrade request (the same for every shard).
pub struct UpgradeRules {
    pub limits: HandshakeLimits,
    pub secret: Secret,
    pub site: Site,
}

struct Pending {
    listener: usize,
    /// The request head so far, when it arrived in pieces.
    head: Vec<u8>,
}

/// The outcome of bytes on an upgrading connection.
#[derive(Debug)]
pub enum Step {
    /// Not a whole request head yet; keep reading.
    Incomplete,
    /// Judged: the connection is no longer a handshake.
    Judged {
        verdict: Verdict,
        listener: usize,
        /// WebSocket bytes that arrived right behind an accepted head.
        leftover: Vec<u8>,
    },
}

#[derive(Default)]
pub struct Handshakes {
    pending: HashMap<ConnId, Pending>,
}

impl Handshakes {
    pub fn begin(&mut self, conn: ConnId, listener: usize) {
        self.pending.insert(
            conn,
            Pending {
                listener,
                head: Vec::new(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn contains(&self, conn: ConnId) -> bool {
        self.pending.contains_key(&conn)
    }

    /// Forgets `conn` (timed out, closed, or stopped); true if it was one.
    pub fn remove(&mut self, conn: ConnId) -> bool {
        self.pending.remove(&conn).is_some()
    }

    /// Returns the map's memory after a flood of upgrades has passed
    /// (a `HashMap` keeps its capacity): see [`shrink_map_if_sparse`].
    pub fn shrink_if_sparse(&mut self) {
        shrink_map_if_sparse(&mut self.pending);
    }

    /// Every upgrade in progress (to abort them on stop).
    pub fn take_all(&mut self) -> Vec<ConnId> {
        self.pending.drain().map(|(conn, _)| conn).collect()
    }

    /// Bytes on an upgrading connection. The common case, a head in one
    /// read, is judged without copying it.
    pub fn receive(
        &mut self,
        conn: ConnId,
        data: &[u8],
        rules: &UpgradeRules,
        now_unix_s: u64,
    ) -> Step {
        let Some(pending) = self.pending.get_mut(&conn) else {
            return Step::Incomplete;
        };
        let bytes: &[u8] = if pending.head.is_empty() {
            data
        } else {
            pending.head.extend_from_slice(data);
            &pending.head
        };
        let verdict =
            upgrade::evaluate(bytes, &rules.limits, &rules.secret, now_unix_s, &rules.site);
        if matches!(verdict, Verdict::Incomplete) {
            if pending.head.is_empty() {
                pending.head = data.to_vec();
            }
            return Step::Incomplete;
        }
        let leftover = match &verdict {
            Verdict::Accept(Accepted { consumed, .. }) => bytes[*consumed..].to_vec(),
            _ => Vec::new(),
        };
        let listener = pending.listener;
        self.pending.remove(&conn);
        Step::Judged {
            verdict,
            listener,
            leftover,
        }
    }
}

/// Below this capacity a map is not worth shrinking.
const SHRINK_CAPACITY_MIN: usize = 1024;

/// Gives a map's memory back once under a quarter of its capacity is in
/// use, keeping room for twice what is left. O(n) when it shrinks, after at
/// least 3n/4 removals, so O(1) amortised per removal. Shared by the
/// gateway's per-connection maps (handshakes, publishers, admins).
pub fn shrink_map_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() >= SHRINK_CAPACITY_MIN && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_flood_gives_its_memory_back() {
        let mut h = Handshakes::default();
        for i in 0..4096 {
            h.begin(ConnId::for_tests(i, 1), 0);
        }
        for i in 0..2000 {
            h.remove(ConnId::for_tests(i, 1));
        }
        h.shrink_if_sparse();
        assert!(h.pending.capacity() >= 4096, "half full: kept");
        for i in 2000..4090 {
            h.remove(ConnId::for_tests(i, 1));
        }
        h.shrink_if_sparse();
        assert!(h.pending.capacity() < 64, "{}", h.pending.capacity());
        assert_eq!(h.len(), 6);
        assert!(h.contains(ConnId::for_tests(4095, 1)));
        let mut small = HashMap::from([(1, 1)]);
        small.reserve(500);
        let capacity = small.capacity();
        shrink_map_if_sparse(&mut small);
        assert_eq!(small.capacity(), capacity, "small maps are left alone");
    }
}
