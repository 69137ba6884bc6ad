//! One device connection's state, indexed by `ConnId::index`: 16 bytes, and
//! an idle device holds no heap memory here. How a vacant slot is marked is
//! private to this file; everyone else sees `Option<UserIndex>`.

use crate::gateway::home::UserIndex;
use crate::ws::reader::FrameReader;

/// Marks a slot with no device (no user index can be this large: a shard's
/// user table is bounded far below it).
const VACANT: u32 = u32::MAX;

pub(super) struct Slot {
    user: u32,
    /// Low 32 bits of `now_ms` when the last byte arrived (wrapping).
    last_rx_ms: u32,
    /// Work in progress: a frame or message mid-way, and/or a replay not
    /// finished. `None` for an idle device.
    pub(super) work: Option<Box<Work>>,
}

pub(super) struct Work {
    pub(super) frames: FrameReader,
    /// The last seq sent by a replay still in progress: live pushes wait
    /// in the mailbox until the replay catches up.
    pub(super) replay_after: Option<u64>,
}

impl Work {
    pub(super) fn is_idle(&self) -> bool {
        self.replay_after.is_none() && self.frames.is_at_rest()
    }
}

impl Slot {
    pub(super) const fn vacant() -> Slot {
        Slot {
            user: VACANT,
            last_rx_ms: 0,
            work: None,
        }
    }

    pub(super) fn device(user: UserIndex, now_ms: u64) -> Slot {
        assert_ne!(user, VACANT, "user index out of range");
        Slot {
            user,
            last_rx_ms: now_ms as u32,
            work: None,
        }
    }

    pub(super) fn user(&self) -> Option<UserIndex> {
        (self.user != VACANT).then_some(self.user)
    }

    pub(super) fn touch(&mut self, now_ms: u64) {
        self.last_rx_ms = now_ms as u32;
    }

    /// When the last byte arrived, as a full time (given a `now_ms` less
    /// than 2^32 ms ≈ 49 days after it).
    pub(super) fn last_rx_ms(&self, now_ms: u64) -> u64 {
        now_ms - (now_ms as u32).wrapping_sub(self.last_rx_ms) as u64
    }

    pub(super) fn work_mut(&mut self) -> &mut Work {
        self.work.get_or_insert_with(|| {
            Box::new(Work {
                frames: FrameReader::default(),
                replay_after: None,
            })
        })
    }

    /// Drops the work box when nothing is in progress.
    pub(super) fn shrink(&mut self) {
        if self.work.as_ref().is_some_and(|w| w.is_idle()) {
            self.work = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_state_is_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn wrapping_clock_reconstructs_recent_times() {
        let now = (1u64 << 33) + 500;
        let slot = Slot::device(1, now - 1_000);
        assert_eq!(slot.last_rx_ms(now), now - 1_000);
        assert_eq!(Slot::device(1, now).last_rx_ms(now), now);
    }

    #[test]
    fn vacant_is_not_a_user() {
        assert_eq!(Slot::vacant().user(), None);
        assert_eq!(Slot::device(0, 5).user(), Some(0));
    }
}
