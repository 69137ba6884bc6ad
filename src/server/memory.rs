//! Memory the process gives back, and the overload state, for the
//! supervisor.
//!
//! The server's allocator is jemalloc (`src/main.rs`) with background
//! threads that return freed pages to the kernel about a second after they
//! were freed (`dirty_decay_ms:1000`, `muzzy_decay_ms:0`). glibc's malloc,
//! used before, keeps what the shards free in its per-thread arenas: after
//! 100,000 connections left, RSS stayed 24–30 MB above where it started,
//! and after 500,000 offline users expired, 88–89 MB, for good. Measured with
//! scripts/measure-memory-return.sh (bench/results/2026-12-01/memory-return/, README
//! "Memory given back") against glibc plus a supervisor that calls
//! `malloc_trim(0)` when the heap's slack grows: jemalloc returns more
//! (7–10 MB left, against 12–16) and sooner (by the reading 8 s after the
//! users expired, where the trim waits up to 10 s between calls), holds
//! fewer bytes per idle connection (125–133, against 133–140) and delivered
//! as many pushes (homing 270–282 k/s, against 239–273 k/s), at the price
//! of a C dependency and a larger footprint right after a broadcast (+25 MB
//! at 100,000 devices, against +13). `malloc_trim` also takes each arena's
//! lock while it walks it (0.4–8 ms a call), stalling a shard that
//! allocates meanwhile. jemalloc's default 10 s decay held 145–162 bytes
//! per idle connection (pages freed while tables grew were still resident
//! when measured) and +50 MB after a broadcast, hence 1 s.
//!
//! Over the high-water mark the supervisor does not wait for the decay:
//! before it declares the server overloaded, and every
//! `OVER_MARK_GIVE_BACK_GAP_MS` while it is, it purges every arena now and
//! reads RSS again, so the state follows what the server holds, not what
//! the allocator has yet to return. [`GiveBack`] decides when (pure: `now`
//! in, a yes or no out); [`give_back`] talks to jemalloc; [`Watch`] runs one
//! supervisor round with them.

use std::time::Instant;

/// Least time between give-backs while RSS is over the high-water mark.
pub const OVER_MARK_GIVE_BACK_GAP_MS: u64 = 2_000;

/// When to give freed memory back ahead of the allocator's own decay.
#[derive(Debug, Default)]
pub struct GiveBack {
    last_at_ms: Option<u64>,
}

impl GiveBack {
    /// Whether to give memory back now: RSS is over the mark (`over_mark`,
    /// with the overload band: see [`overloaded`]) and the last give-back
    /// was at least `OVER_MARK_GIVE_BACK_GAP_MS` ago.
    pub fn due(&self, over_mark: bool, now_ms: u64) -> bool {
        over_mark
            && self
                .last_at_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= OVER_MARK_GIVE_BACK_GAP_MS)
    }

    pub fn given_back(&mut self, now_ms: u64) {
        self.last_at_ms = Some(now_ms);
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

/// The supervisor's memory watch: reads RSS every round, gives memory back
/// when [`GiveBack`] says so, and decides the overload state from what is
/// left.
pub struct Watch {
    give_back: GiveBack,
    started: Instant,
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
        }
    }

    /// One round; None when RSS cannot be read (then nothing changes).
    pub fn round(&mut self, was_overloaded: bool, high_water_bytes: u64) -> Option<Round> {
        let mut rss = rss_bytes()?;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let over_mark = overloaded(was_overloaded, rss, high_water_bytes);
        if self.give_back.due(over_mark, now_ms) {
            self.give_back.given_back(now_ms);
            let started = Instant::now();
            let purged = give_back();
            let took_ms = started.elapsed().as_secs_f64() * 1e3;
            let before = rss;
            rss = rss_bytes().unwrap_or(before);
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let (rss_before_mib, rss_after_mib) = (mib(before), mib(rss));
            match purged {
                // Every few seconds while overloaded: only a give-back that
                // changed something (or took long) is worth a line at info.
                Ok(()) if before.saturating_sub(rss) >= 1 << 20 || took_ms >= 10.0 => {
                    tracing::info!(
                        rss_before_mib,
                        rss_after_mib,
                        took_ms,
                        "over the high-water mark: gave memory back to the kernel"
                    )
                }
                Ok(()) => tracing::debug!(
                    rss_before_mib,
                    rss_after_mib,
                    took_ms,
                    "over the high-water mark: gave memory back to the kernel"
                ),
                Err(errno) => tracing::warn!(
                    errno,
                    "over the high-water mark: jemalloc refused to purge its arenas"
                ),
            }
        }
        Some(Round {
            rss_bytes: rss,
            overloaded: overloaded(was_overloaded, rss, high_water_bytes),
        })
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

/// jemalloc's name for "every arena" in `arena.<i>.*` (MALLCTL_ARENAS_ALL).
const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";

/// Returns every freed page jemalloc holds to the kernel now, rather than
/// when its decay would. Err: the errno `mallctl` answered.
pub fn give_back() -> Result<(), i32> {
    // SAFETY: "arena.<i>.purge" takes and returns no value, so null old and
    // new pointers with zero lengths are its documented call; the name is a
    // NUL-terminated string that outlives the call.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn over_the_mark_gives_back_first_and_then_spaced() {
        let mut g = GiveBack::default();
        assert!(!g.due(false, 0), "under the mark: the decay does it");
        assert!(g.due(true, 0), "before declaring overload");
        g.given_back(0);
        assert!(!g.due(true, 1_000));
        assert!(g.due(true, OVER_MARK_GIVE_BACK_GAP_MS));
        assert!(!g.due(false, 60_000));
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
    fn a_round_over_the_mark_gives_back_and_says_overloaded() {
        let mut watch = Watch::new();
        let round = watch.round(false, 1).expect("RSS is readable");
        assert!(round.overloaded && round.rss_bytes > 0);
        let round = watch.round(true, u64::MAX).unwrap();
        assert!(!round.overloaded);
    }

    #[test]
    fn jemalloc_purges_on_request() {
        // This test binary allocates with the system allocator; jemalloc
        // (linked all the same) has its own arenas, which it can purge.
        assert_eq!(give_back(), Ok(()));
    }
}
