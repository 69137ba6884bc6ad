//! Memory the process holds and gives back, read by the supervisor.
//!
//! glibc's malloc keeps what the shards free in its per-thread arenas: a
//! page is returned to the kernel only when it lies at the top of an arena's
//! heap, so after a million connections leave, RSS stays where it was
//! (measured: scripts/measure-memory-return.sh). `malloc_trim(0)` walks the
//! arenas and returns every whole free page inside them (`MADV_DONTNEED`).
//! It takes each arena's lock while it walks it, so a shard allocating in
//! that arena waits; it is therefore called only when it pays:
//!
//! - the heap's **slack** — RSS minus the bytes malloc has handed out and
//!   not had back — grew by `SLACK_GROWTH_MIN_BYTES` (or an eighth of what
//!   is in use, if more) over the lowest slack seen since the last trim:
//!   that much was freed and kept. At most once per `SLACK_GIVE_BACK_GAP_MS`.
//! - RSS is over the high-water mark: before the server declares itself
//!   overloaded (and while it is), so the state follows what the server
//!   holds, not what malloc keeps. At most once per `OVER_MARK_GIVE_BACK_GAP_MS`.
//!
//! [`GiveBack`] decides (pure: readings and `now` in, a yes or no out);
//! [`heap_in_use_bytes`] and [`give_back`] talk to the allocator; [`Watch`]
//! runs one supervisor round with them.

use std::time::Instant;

/// Slack growth that is worth a trim (the floor; an eighth of the heap in
/// use counts when larger, so a big heap is not trimmed for small change).
pub const SLACK_GROWTH_MIN_BYTES: u64 = 16 << 20;
/// Least time between trims for slack.
pub const SLACK_GIVE_BACK_GAP_MS: u64 = 10_000;
/// Least time between trims while RSS is over the high-water mark.
pub const OVER_MARK_GIVE_BACK_GAP_MS: u64 = 2_000;
/// How often the heap's use is read (it walks malloc's free lists; RSS
/// alone is read every supervisor round).
pub const HEAP_READ_GAP_MS: u64 = 2_000;

/// One look at the process's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub rss_bytes: u64,
    /// Bytes malloc has handed out (None: not known, e.g. another libc).
    pub heap_in_use_bytes: Option<u64>,
}

impl Reading {
    /// RSS not accounted for by the heap in use: code, stacks, rings and
    /// buffers, and memory malloc keeps after a free.
    fn slack_bytes(&self) -> Option<i64> {
        self.heap_in_use_bytes
            .map(|used| self.rss_bytes as i64 - used as i64)
    }
}

/// When to give freed memory back (see the module comment).
#[derive(Debug, Default)]
pub struct GiveBack {
    /// The lowest slack seen since the last give-back (or start): what the
    /// process holds besides its heap in use, once malloc kept nothing.
    slack_floor_bytes: Option<i64>,
    last_at_ms: Option<u64>,
}

impl GiveBack {
    /// Whether to give memory back now, given a reading, whether its RSS
    /// is over the high-water mark, and the time.
    pub fn due(&mut self, reading: Reading, over_mark: bool, now_ms: u64) -> bool {
        let since_last_ms = self
            .last_at_ms
            .map_or(u64::MAX, |at| now_ms.saturating_sub(at));
        if over_mark && since_last_ms >= OVER_MARK_GIVE_BACK_GAP_MS {
            return true;
        }
        let Some(slack) = reading.slack_bytes() else {
            return false;
        };
        let floor = self.slack_floor_bytes.map_or(slack, |f| f.min(slack));
        self.slack_floor_bytes = Some(floor);
        let in_use = reading.heap_in_use_bytes.unwrap_or(0);
        let growth_min = SLACK_GROWTH_MIN_BYTES.max(in_use / 8) as i64;
        slack - floor >= growth_min && since_last_ms >= SLACK_GIVE_BACK_GAP_MS
    }

    /// Memory was given back; `after` is the reading taken right after.
    pub fn given_back(&mut self, after: Reading, now_ms: u64) {
        self.last_at_ms = Some(now_ms);
        self.slack_floor_bytes = after.slack_bytes();
    }
}

/// Whether the server is overloaded, from RSS: over the mark to enter the
/// state, and back under 95 % of it to leave, so readiness does not flap at
/// the mark. Recomputed from the current RSS every supervisor round.
pub fn overloaded(was_overloaded: bool, rss_bytes: u64, high_water_bytes: u64) -> bool {
    if was_overloaded {
        rss_bytes > high_water_bytes / 100 * 95
    } else {
        rss_bytes > high_water_bytes
    }
}

/// What one supervisor round found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// RSS after any memory given back this round.
    pub rss_bytes: u64,
    pub overloaded: bool,
}

/// The supervisor's memory watch: reads RSS every round (and the heap's
/// use every `HEAP_READ_GAP_MS`), gives memory back when [`GiveBack`] says
/// so, and decides the overload state from what is left.
pub struct Watch {
    give_back: GiveBack,
    started: Instant,
    heap_read_at_ms: Option<u64>,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch::new()
    }
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            give_back: GiveBack::default(),
            started: Instant::now(),
            heap_read_at_ms: None,
        }
    }

    /// One round; None when RSS cannot be read (then nothing changes).
    pub fn round(&mut self, was_overloaded: bool, high_water_bytes: u64) -> Option<Round> {
        let rss_bytes = rss_bytes()?;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let heap_due = self
            .heap_read_at_ms
            .is_none_or(|at| now_ms >= at + HEAP_READ_GAP_MS);
        let heap_in_use_bytes = if heap_due {
            self.heap_read_at_ms = Some(now_ms);
            heap_in_use_bytes()
        } else {
            None
        };
        let mut reading = Reading {
            rss_bytes,
            heap_in_use_bytes,
        };
        let over_mark = overloaded(was_overloaded, rss_bytes, high_water_bytes);
        if self.give_back.due(reading, over_mark, now_ms) {
            reading = self.give_back_now(reading, over_mark, now_ms);
        }
        Some(Round {
            rss_bytes: reading.rss_bytes,
            overloaded: overloaded(was_overloaded, reading.rss_bytes, high_water_bytes),
        })
    }

    /// Gives memory back, logs what came back; returns the new reading.
    fn give_back_now(&mut self, before: Reading, over_mark: bool, now_ms: u64) -> Reading {
        let started = Instant::now();
        give_back();
        let took = started.elapsed();
        let after = Reading {
            rss_bytes: rss_bytes().unwrap_or(before.rss_bytes),
            heap_in_use_bytes: heap_in_use_bytes(),
        };
        self.give_back.given_back(after, now_ms);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let rss_before_mib = mib(before.rss_bytes);
        let rss_after_mib = mib(after.rss_bytes);
        let heap_in_use_mib = after.heap_in_use_bytes.map(mib);
        let took_ms = took.as_secs_f64() * 1e3;
        // Over the mark this runs every few seconds: only what changed
        // something (or took long) is worth a line at info.
        let returned_bytes = before.rss_bytes.saturating_sub(after.rss_bytes);
        if returned_bytes >= 1 << 20 || took_ms >= 10.0 {
            tracing::info!(
                rss_before_mib,
                rss_after_mib,
                heap_in_use_mib,
                took_ms,
                over_mark,
                "gave memory back to the kernel"
            );
        } else {
            tracing::debug!(
                rss_before_mib,
                rss_after_mib,
                heap_in_use_mib,
                took_ms,
                over_mark,
                "gave memory back to the kernel"
            );
        }
        after
    }
}

/// The process's resident set, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE always answers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Bytes malloc has handed out and not had back: chunks in use in every
/// arena plus its own mmapped chunks (glibc's `mallinfo2`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 has no preconditions; it locks each arena while
    // it sums it and returns a plain struct by value.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use_bytes() -> Option<u64> {
    None
}

/// Returns every whole free page malloc keeps to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_back() {
    // SAFETY: malloc_trim has no preconditions; it only releases memory
    // malloc holds free, taking each arena's lock while it does.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn reading(rss_mb: u64, in_use_mb: u64) -> Reading {
        Reading {
            rss_bytes: rss_mb * MB,
            heap_in_use_bytes: Some(in_use_mb * MB),
        }
    }

    #[test]
    fn growing_use_is_not_slack() {
        let mut g = GiveBack::default();
        assert!(!g.due(reading(100, 20), false, 0));
        // RSS and the heap grow together: the server holds it.
        assert!(!g.due(reading(600, 520), false, 60_000));
    }

    #[test]
    fn freed_and_kept_memory_is_given_back_once() {
        let mut g = GiveBack::default();
        assert!(!g.due(reading(600, 520), false, 0));
        // 400 MB freed, RSS unchanged: slack grew by 400 MB.
        assert!(g.due(reading(600, 120), false, 20_000));
        g.given_back(reading(210, 120), 20_000);
        assert!(!g.due(reading(210, 120), false, 40_000));
    }

    #[test]
    fn what_a_trim_could_not_return_does_not_trigger_again() {
        let mut g = GiveBack::default();
        assert!(!g.due(reading(600, 520), false, 0));
        assert!(g.due(reading(600, 120), false, 20_000));
        // Fragmented pages: the trim returned 10 MB. The floor moves to
        // what is left, so the next rounds do not trim again for it.
        g.given_back(reading(590, 120), 20_000);
        assert!(!g.due(reading(590, 120), false, 60_000));
        let growth_mb = SLACK_GROWTH_MIN_BYTES / MB;
        assert!(!g.due(reading(590 + growth_mb - 1, 120), false, 90_000));
        assert!(g.due(reading(590 + growth_mb, 120), false, 90_000));
    }

    #[test]
    fn slack_trims_are_spaced() {
        let mut g = GiveBack::default();
        assert!(!g.due(reading(100, 90), false, 0));
        assert!(g.due(reading(300, 90), false, 10_000));
        g.given_back(reading(300, 90), 10_000);
        // Slack grew again, but the last trim was just now.
        assert!(!g.due(reading(500, 90), false, 15_000));
        assert!(g.due(reading(500, 90), false, 20_000));
    }

    #[test]
    fn small_change_on_a_big_heap_waits() {
        let mut g = GiveBack::default();
        assert!(!g.due(reading(8_100, 8_000), false, 0));
        // 100 MB of slack is under an eighth of 8 GB in use.
        assert!(!g.due(reading(8_100, 7_900), false, 60_000));
        assert!(g.due(reading(8_100, 6_900), false, 60_000));
    }

    #[test]
    fn over_the_mark_gives_back_first_and_then_spaced() {
        let mut g = GiveBack::default();
        let unknown = Reading {
            rss_bytes: 900 * MB,
            heap_in_use_bytes: None,
        };
        assert!(g.due(unknown, true, 0));
        g.given_back(unknown, 0);
        assert!(!g.due(unknown, true, 1_000));
        assert!(g.due(unknown, true, OVER_MARK_GIVE_BACK_GAP_MS));
        assert!(
            !g.due(unknown, false, 60_000),
            "no heap reading: no slack rule"
        );
    }

    #[test]
    fn overload_has_hysteresis_and_follows_rss() {
        let mark = 1000 * MB;
        assert!(!overloaded(false, mark, mark));
        assert!(overloaded(false, mark + 1, mark));
        assert!(overloaded(true, 960 * MB, mark), "inside the 5 % band");
        assert!(!overloaded(true, 940 * MB, mark));
    }

    #[test]
    fn the_allocator_answers() {
        assert!(rss_bytes().is_some_and(|r| r > 0));
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let held: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 << 10]).collect();
            assert!(heap_in_use_bytes().is_some_and(|b| b >= 4 << 20));
            drop(held);
            give_back();
        }
    }
}
