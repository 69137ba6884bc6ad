//! How long a connection's new bytes may wait for more before they are
//! sent. Pure: the time the loop spent waiting for completions and `now`
//! in, a window out.
//!
//! Every sendmsg becomes at least one TCP segment, and on the receiving
//! side an acknowledgement; on loopback both cost the sending core. A shard
//! that has idle time sends at once (the window is 0: latency first). A
//! shard that is saturated — it never waits for completions — gains more
//! from putting several pushes owed to one connection into one sendmsg
//! than it loses in delay: its queues already hold pushes longer than the
//! window. The window grows with how little the loop waited over the last
//! period, up to `max_ms`.

/// How often the window is recomputed.
pub(crate) const PERIOD_MS: u64 = 100;
/// Below this share of the period spent busy, sends go out at once.
const BUSY_FROM: f64 = 0.5;
/// At or above this share, the window is `max_ms`.
const BUSY_FULL: f64 = 0.9;
/// Weight of the newest period in the busy share (an exponential average).
const SMOOTHING: f64 = 0.3;

pub(crate) struct Coalescer {
    max_ms: u64,
    window_ms: u64,
    /// The last period's busy share, in thousandths.
    busy_permille: u64,
    period_start_ms: u64,
    /// Microseconds spent blocked waiting for completions this period.
    waited_us: u64,
}

impl Coalescer {
    pub(crate) fn new(max_ms: u64, now_ms: u64) -> Coalescer {
        Coalescer {
            max_ms,
            window_ms: 0,
            busy_permille: 0,
            period_start_ms: now_ms,
            waited_us: 0,
        }
    }

    /// The loop was blocked waiting for completions this long.
    pub(crate) fn waited(&mut self, us: u64) {
        self.waited_us += us;
    }

    /// Recomputes the window once a period has passed.
    pub(crate) fn update(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.period_start_ms);
        if elapsed_ms < PERIOD_MS {
            return;
        }
        let waited = (self.waited_us as f64 / 1000.0 / elapsed_ms as f64).min(1.0);
        // Smoothed over a few periods, so one quiet period in a saturated
        // stretch does not reset the window (nor one busy period start it).
        let busy =
            SMOOTHING * (1.0 - waited) + (1.0 - SMOOTHING) * self.busy_permille as f64 / 1000.0;
        self.busy_permille = (busy * 1000.0).round() as u64;
        let share = ((busy - BUSY_FROM) / (BUSY_FULL - BUSY_FROM)).clamp(0.0, 1.0);
        self.window_ms = (share * self.max_ms as f64).round() as u64;
        self.period_start_ms = now_ms;
        self.waited_us = 0;
    }

    /// The share of the last period the loop was not waiting (‰).
    pub(crate) fn busy_permille(&self) -> u64 {
        self.busy_permille
    }

    /// How long new bytes for a connection may wait now (0: send at once).
    pub(crate) fn window_ms(&self) -> u64 {
        self.window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_shard_sends_at_once_and_a_saturated_one_waits_up_to_the_max() {
        let mut c = Coalescer::new(20, 0);
        assert_eq!(c.window_ms(), 0);
        // Half of each period waiting: not busy enough.
        c.waited(50_000);
        c.update(100);
        assert_eq!((c.busy_permille(), c.window_ms()), (150, 0));
        c.waited(50_000);
        c.update(200);
        assert_eq!((c.busy_permille(), c.window_ms()), (255, 0));
        // Never waiting: the busy share climbs over a few periods.
        let mut windows = Vec::new();
        for t in 3..=8 {
            c.update(t * 100);
            windows.push(c.window_ms());
        }
        assert_eq!(windows, [0, 7, 12, 16, 19, 20]);
        // One quiet period shrinks the window, not to 0; a quiet stretch does.
        c.waited(100_000);
        c.update(900);
        assert!(c.window_ms() > 0);
        for t in 10..=13 {
            c.waited(100_000);
            c.update(t * 100);
        }
        assert_eq!(c.window_ms(), 0);
    }

    #[test]
    fn the_window_is_recomputed_once_a_period() {
        let mut c = Coalescer::new(20, 0);
        for t in 1..=6 {
            c.update(t * 100);
        }
        let w = c.window_ms();
        c.waited(50_000);
        c.update(650);
        assert_eq!(c.window_ms(), w, "not before the period ends");
    }

    #[test]
    fn a_zero_max_never_holds() {
        let mut c = Coalescer::new(0, 0);
        c.update(1_000);
        assert_eq!(c.window_ms(), 0);
    }
}
