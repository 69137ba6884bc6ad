//! What one push does on a shard: the devices it goes to (a [`Fanout`])
//! and the per-user outcome counts ([`Counts`], with [`RejectReasons`]).

use super::SharedPush;
use shard::ConnId;

/// Why a recipient was rejected; several can apply to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectReasons(u8);

impl RejectReasons {
    pub const INVALID_USER: RejectReasons = RejectReasons(1);
    pub const OFFLINE_USERS_FULL: RejectReasons = RejectReasons(2);
    pub const STORED_BYTES_FULL: RejectReasons = RejectReasons(4);
    pub const MEMORY_HIGH: RejectReasons = RejectReasons(8);
    pub const SHARD_UNAVAILABLE: RejectReasons = RejectReasons(16);
    pub const TOO_MANY_USERS: RejectReasons = RejectReasons(32);

    const TEXT: [(RejectReasons, &'static str); 6] = [
        (Self::INVALID_USER, "invalid user ID"),
        (Self::OFFLINE_USERS_FULL, "offline users at their bound"),
        (Self::STORED_BYTES_FULL, "stored bytes at their bound"),
        (Self::MEMORY_HIGH, "server over its memory mark"),
        (Self::SHARD_UNAVAILABLE, "a shard did not answer"),
        (Self::TOO_MANY_USERS, "too many recipients"),
    ];

    pub fn from_bits(bits: u8) -> RejectReasons {
        RejectReasons(bits)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn add(&mut self, other: RejectReasons) {
        self.0 |= other.0;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Each reason as text, in a fixed order.
    pub fn texts(self) -> impl Iterator<Item = &'static str> {
        Self::TEXT
            .into_iter()
            .filter(move |(r, _)| self.0 & r.0 != 0)
            .map(|(_, text)| text)
    }
}

/// Per-user outcome counts of one push (or of its part on one shard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Online: sent to a device now (or reaching it through its replay).
    pub delivered: u32,
    /// Offline, or no device took it: kept for the next connection.
    pub stored: u32,
    /// Not accepted; `reasons` says why.
    pub rejected: u32,
    pub reasons: RejectReasons,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.delivered += other.delivered;
        self.stored += other.stored;
        self.rejected += other.rejected;
        self.reasons.add(other.reasons);
    }

    pub fn reject(&mut self, n: u32, why: RejectReasons) {
        self.rejected += n;
        self.reasons.add(why);
    }

    pub fn total(&self) -> u32 {
        self.delivered + self.stored + self.rejected
    }
}

/// One push and the devices of its online recipients, user after user.
/// Reused across pushes (cleared by [`Fanout::clear`]) so a push allocates
/// nothing per recipient.
#[derive(Default)]
pub struct Fanout {
    pub push: Option<SharedPush>,
    devices: Vec<ConnId>,
    /// End (exclusive) in `devices` of each recipient's run.
    ends: Vec<u32>,
    /// Offline recipients and rejected ones, counted by the home part.
    pub counts: Counts,
}

impl Fanout {
    pub fn clear(&mut self) {
        self.push = None;
        self.devices.clear();
        self.ends.clear();
        self.counts = Counts::default();
    }

    /// Each online recipient's devices.
    pub fn recipients(&self) -> impl Iterator<Item = &[ConnId]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let run = &self.devices[start..end as usize];
            start = end as usize;
            run
        })
    }

    pub(super) fn add_recipient(&mut self, devices: impl Iterator<Item = ConnId>) {
        self.devices.extend(devices);
        self.ends.push(self.devices.len() as u32);
    }
}
