//! A coarse hashed timer wheel with no timer object per connection.
//!
//! A connection has one deadline (a tick number stored in its slab entry).
//! The wheel holds connection indexes (4 bytes each) in buckets; moving a
//! deadline later does not touch the wheel (the entry is re-filed lazily
//! when its bucket comes up), so a busy connection that pushes its idle
//! deadline forward on every message costs one store. A stale index (a
//! connection re-filed elsewhere, closed, or replaced by a newer one in the
//! same slot) is recognised by the slot's `wheel_tick` and dropped; if a
//! newer connection sits in the same bucket, the first copy handles it and
//! the second finds `wheel_tick` already changed.

/// Where the wheel keeps a connection's deadline state (lives in the conn).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct TimerSlot {
    /// Absolute tick of the deadline; 0 = none.
    pub(crate) deadline_tick: u32,
    /// Absolute tick of the bucket that holds this connection; 0 = not filed.
    pub(crate) wheel_tick: u32,
}

/// A processed bucket keeps an allocation for up to this many entries.
const BUCKET_KEEP_ENTRIES_MAX: usize = 4096;
/// ... and for at least this many (no shrinking below it).
const BUCKET_KEEP_ENTRIES_MIN: usize = 16;

pub(crate) struct TimerWheel {
    buckets: Vec<Vec<u32>>,
    tick_ms: u64,
    /// Ticks up to and including this one have been processed.
    current_tick: u32,
}

impl TimerWheel {
    pub(crate) fn new(bucket_count: usize, tick_ms: u64, now_ms: u64) -> TimerWheel {
        assert!(bucket_count >= 2 && tick_ms > 0);
        TimerWheel {
            buckets: (0..bucket_count).map(|_| Vec::new()).collect(),
            tick_ms,
            // Tick 0 means "none", so the clock starts at 1.
            current_tick: (now_ms / tick_ms) as u32 + 1,
        }
    }

    /// The tick a deadline at `at_ms` fires on (rounded up, never in the past).
    pub(crate) fn tick_for(&self, at_ms: u64) -> u32 {
        let tick = at_ms.div_ceil(self.tick_ms) + 1;
        (tick.min(u32::MAX as u64 - 1) as u32).max(self.current_tick + 1)
    }

    /// Milliseconds (monotonic clock) at which the next tick is due.
    pub(crate) fn next_tick_at_ms(&self) -> u64 {
        self.current_tick as u64 * self.tick_ms
    }

    /// Sets or moves the deadline of `conn`; `deadline_tick` 0 clears it.
    pub(crate) fn set(&mut self, slot: &mut TimerSlot, conn: u32, deadline_tick: u32) {
        slot.deadline_tick = deadline_tick;
        if deadline_tick != 0 && (slot.wheel_tick == 0 || deadline_tick < slot.wheel_tick) {
            self.file(slot, conn);
        }
    }

    fn file(&mut self, slot: &mut TimerSlot, conn: u32) {
        // A deadline beyond one revolution is filed at the farthest bucket
        // and re-filed from there.
        let horizon = self.current_tick + self.buckets.len() as u32 - 1;
        let at = slot.deadline_tick.clamp(self.current_tick + 1, horizon);
        slot.wheel_tick = at;
        let n = self.buckets.len();
        self.buckets[at as usize % n].push(conn);
    }

    /// Advances the wheel to `now_ms`; calls `fire` for each connection whose
    /// deadline passed. `lookup` maps a live connection to its timer slot
    /// (None for a closed one). Work per call is bounded by the entries of at
    /// most one revolution of buckets, however long the shard slept.
    pub(crate) fn advance(
        &mut self,
        now_ms: u64,
        mut lookup: impl FnMut(u32) -> Option<*mut TimerSlot>,
        mut fire: impl FnMut(u32),
    ) {
        let target = (now_ms / self.tick_ms) as u32 + 1;
        let n = self.buckets.len() as u32;
        if target > self.current_tick + n {
            // Slept longer than a revolution: visiting each bucket once is
            // enough, because an entry is due whenever its tick has passed.
            self.current_tick = target - n;
        }
        while self.current_tick < target {
            self.current_tick += 1;
            let tick = self.current_tick;
            let idx = (tick % n) as usize;
            let mut bucket = std::mem::take(&mut self.buckets[idx]);
            let held = bucket.len();
            let mut kept = Vec::new();
            for conn in bucket.drain(..) {
                let Some(slot_ptr) = lookup(conn) else {
                    continue;
                };
                // SAFETY: `lookup` returns a pointer into the live slab entry
                // of `conn`; nothing else touches the slab while this
                // reference lives (it ends before `fire` is called).
                let slot = unsafe { &mut *slot_ptr };
                if slot.wheel_tick == 0 || slot.wheel_tick % n != idx as u32 {
                    continue; // re-filed elsewhere or cleared: a stale copy
                }
                if slot.wheel_tick > tick {
                    kept.push(conn); // filed for a later revolution
                    continue;
                }
                slot.wheel_tick = 0;
                if slot.deadline_tick == 0 {
                    continue;
                }
                if slot.deadline_tick <= tick {
                    slot.deadline_tick = 0;
                    fire(conn);
                } else {
                    self.file(slot, conn);
                }
            }
            // Filing never targets the bucket being processed (it files at
            // current+1 ..= current+n-1), so the slot is still empty here.
            let slot_vec = &mut self.buckets[idx];
            debug_assert!(slot_vec.is_empty());
            if kept.is_empty() && held <= BUCKET_KEEP_ENTRIES_MAX {
                // Keep the allocation for next time (no malloc per tick),
                // sized for what the bucket just held: capacity left over
                // from a flood of connections is given back within one
                // revolution of the wheel.
                let want = held.max(BUCKET_KEEP_ENTRIES_MIN);
                if bucket.capacity() >= 4 * want {
                    bucket.shrink_to(want);
                }
                *slot_vec = bucket;
            } else {
                *slot_vec = kept;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(i: u32) -> u32 {
        i
    }

    struct World {
        wheel: TimerWheel,
        slots: HashMap<u32, TimerSlot>,
    }

    impl World {
        fn new() -> World {
            World {
                wheel: TimerWheel::new(8, 10, 0),
                slots: HashMap::new(),
            }
        }
        fn set(&mut self, c: u32, at_ms: u64) {
            let tick = self.wheel.tick_for(at_ms);
            let slot = self.slots.entry(c).or_default();
            self.wheel.set(slot, c, tick);
        }
        fn advance(&mut self, now_ms: u64) -> Vec<u32> {
            let mut fired = Vec::new();
            let slots = &mut self.slots;
            self.wheel.advance(
                now_ms,
                |c| slots.get_mut(&c).map(|s| s as *mut TimerSlot),
                |c| fired.push(c),
            );
            fired
        }
    }

    #[test]
    fn fires_once_at_or_after_deadline() {
        let mut w = World::new();
        w.set(id(1), 25);
        assert!(w.advance(20).is_empty());
        assert_eq!(w.advance(40), vec![id(1)]);
        assert!(w.advance(200).is_empty());
    }

    #[test]
    fn moving_later_defers_and_earlier_advances() {
        let mut w = World::new();
        w.set(id(1), 30);
        w.set(id(1), 60); // later: lazily re-filed
        assert!(w.advance(45).is_empty());
        assert_eq!(w.advance(75), vec![id(1)]);
        w.set(id(2), 70);
        w.set(id(2), 20 + 75); // not earlier than 70? it is later; still fine
        w.set(id(3), 200);
        w.set(id(3), 90); // earlier: filed again, old copy goes stale
        let fired = w.advance(110);
        assert_eq!(fired, vec![id(3), id(2)]);
        assert!(w.advance(400).is_empty());
    }

    #[test]
    fn deadline_beyond_one_revolution() {
        let mut w = World::new(); // 8 buckets × 10 ms = 80 ms per revolution
        w.set(id(7), 500);
        for t in (0..490).step_by(10) {
            assert!(w.advance(t).is_empty(), "fired early at {t}");
        }
        let mut fired = Vec::new();
        for t in (490..=520).step_by(10) {
            fired.extend(w.advance(t));
        }
        assert_eq!(fired, vec![id(7)]);
    }

    #[test]
    fn cleared_and_closed_never_fire() {
        let mut w = World::new();
        w.set(id(1), 30);
        w.set(id(2), 30);
        let tick = 0;
        let slot = w.slots.get_mut(&id(1)).unwrap();
        w.wheel.set(slot, id(1), tick);
        w.slots.remove(&id(2));
        assert!(w.advance(100).is_empty());
    }

    #[test]
    fn bucket_memory_follows_what_the_buckets_hold() {
        let mut w = World::new(); // 8 buckets × 10 ms
        let capacity = |w: &World| w.wheel.buckets.iter().map(Vec::capacity).sum::<usize>();
        // A flood: 2,000 connections due in each of the next buckets.
        for c in 0..14_000u32 {
            w.set(id(c), 20 + (c as u64 / 2_000) * 10);
        }
        assert!(capacity(&w) >= 14_000);
        assert_eq!(w.advance(100).len(), 14_000);
        // Each bucket keeps room for what it just held…
        assert!(capacity(&w) >= 8_000);
        // …and a quiet revolution later, only a little.
        for c in 0..8u32 {
            w.set(id(c), 110 + c as u64 * 10);
        }
        w.advance(200);
        assert!(
            capacity(&w) <= 8 * BUCKET_KEEP_ENTRIES_MIN * 2,
            "{}",
            capacity(&w)
        );
    }

    #[test]
    fn long_sleep_is_bounded() {
        let mut w = World::new();
        w.set(id(1), 30);
        assert_eq!(w.advance(10_000_000), vec![id(1)]);
        w.set(id(2), 10_000_050);
        assert_eq!(w.advance(10_000_100), vec![id(2)]);
    }
}
