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
        let busy = 1.0 - waited;
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
        // Half the period waiting: not busy enough.
        c.waited(50_000);
        c.update(100);
        assert_eq!(c.window_ms(), 0);
        // Never waiting: the whole window.
        c.update(200);
        assert_eq!(c.window_ms(), 20);
        // 30 % waiting = 70 % busy: half way.
        c.waited(30_000);
        c.update(300);
        assert_eq!(c.window_ms(), 10);
        // Idle again: back to 0 at the next period, not before.
        c.waited(90_000);
        c.update(350);
        assert_eq!(c.window_ms(), 10);
        c.update(400);
        assert_eq!(c.window_ms(), 0);
    }

    #[test]
    fn a_zero_max_never_holds() {
        let mut c = Coalescer::new(0, 0);
        c.update(1_000);
        assert_eq!(c.window_ms(), 0);
    }
}
