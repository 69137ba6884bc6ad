//! How long a connection's new bytes may wait for more before they are
//! sent. Pure: the time the loop spent waiting for completions and `now`
//! in, a window out.
//!
//! Every sendmsg becomes at least one TCP segment, and on the receiving
//! side an acknowledgement; on loopback both cost the sending core. A shard
//! with idle time sends at once (the window is 0: latency first). A shard
//! that is saturated — it hardly ever waits for completions — gains more
//! from putting several pushes owed to one connection into one sendmsg
//! than it loses in delay: its queues already hold pushes longer than the
//! window. Only connections the app marked wait (`Ctx::coalesce_sends`:
//! devices); a peer that waits for each answer — a publisher with a window
//! of requests open — would stall behind held replies and leave the shard
//! idle (measured: README, "Send coalescing").
//!
//! Two states with hysteresis, not a window that follows the busy share:
//! coalescing makes the loop cheaper, so a window that shrank with the busy
//! share would settle part-way, and a threshold low enough to catch
//! saturation early would also open at moderate load (a shard half busy
//! must keep its latency). So a shard starts coalescing with the whole
//! window once its smoothed busy share reaches `ENTER_PERMILLE`, and stops
//! only when it falls under `LEAVE_PERMILLE` — which the cheaper sends alone
//! do not bring about while the load lasts.

/// How often the busy share is recomputed.
pub(crate) const PERIOD_MS: u64 = 100;
/// Start coalescing at this smoothed busy share (‰).
const ENTER_PERMILLE: u64 = 800;
/// Stop coalescing under this smoothed busy share (‰).
const LEAVE_PERMILLE: u64 = 400;
/// Weight of the newest period in the busy share (an exponential average):
/// one quiet period in a saturated stretch does not end coalescing, nor
/// one busy period start it.
const SMOOTHING: f64 = 0.3;

pub(crate) struct Coalescer {
    max_ms: u64,
    coalescing: bool,
    /// The smoothed busy share, in thousandths.
    busy_permille: u64,
    period_start_ms: u64,
    /// Microseconds spent blocked waiting for completions this period.
    waited_us: u64,
}

impl Coalescer {
    pub(crate) fn new(max_ms: u64, now_ms: u64) -> Coalescer {
        Coalescer {
            max_ms,
            coalescing: false,
            busy_permille: 0,
            period_start_ms: now_ms,
            waited_us: 0,
        }
    }

    /// The loop was blocked waiting for completions this long.
    pub(crate) fn waited(&mut self, us: u64) {
        self.waited_us += us;
    }

    /// Recomputes the busy share once a period has passed.
    pub(crate) fn update(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.period_start_ms);
        if elapsed_ms < PERIOD_MS {
            return;
        }
        let waited = (self.waited_us as f64 / 1000.0 / elapsed_ms as f64).min(1.0);
        let busy =
            SMOOTHING * (1.0 - waited) + (1.0 - SMOOTHING) * self.busy_permille as f64 / 1000.0;
        self.busy_permille = (busy * 1000.0).round() as u64;
        if self.busy_permille >= ENTER_PERMILLE {
            self.coalescing = true;
        } else if self.busy_permille < LEAVE_PERMILLE {
            self.coalescing = false;
        }
        self.period_start_ms = now_ms;
        self.waited_us = 0;
    }

    /// The smoothed share of recent periods the loop was not waiting (‰).
    pub(crate) fn busy_permille(&self) -> u64 {
        self.busy_permille
    }

    /// How long new bytes for a connection may wait now (0: send at once).
    pub(crate) fn window_ms(&self) -> u64 {
        if self.coalescing {
            self.max_ms
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs periods of 100 ms, each with `waited_ms` of waiting, from
    /// `*t`; the windows after each.
    fn periods(c: &mut Coalescer, t: &mut u64, waited_ms: &[u64]) -> Vec<u64> {
        waited_ms
            .iter()
            .map(|&w| {
                c.waited(w * 1000);
                *t += PERIOD_MS;
                c.update(*t);
                c.window_ms()
            })
            .collect()
    }

    #[test]
    fn a_half_busy_shard_sends_at_once_however_long_it_stays_so() {
        let (mut c, mut t) = (Coalescer::new(40, 0), 0);
        assert_eq!(c.window_ms(), 0);
        assert!(periods(&mut c, &mut t, &[50; 50]).iter().all(|&w| w == 0));
        assert!((495..=505).contains(&c.busy_permille()));
        // Even 75 % busy for good is not saturation.
        assert!(periods(&mut c, &mut t, &[25; 50]).iter().all(|&w| w == 0));
    }

    #[test]
    fn a_saturated_shard_coalesces_with_the_whole_window_until_the_load_leaves() {
        let (mut c, mut t) = (Coalescer::new(40, 0), 0);
        // Never waiting: the smoothed share passes 80 % in a few periods.
        let windows = periods(&mut c, &mut t, &[0; 6]);
        assert_eq!(windows, [0, 0, 0, 0, 40, 40]);
        // Cheaper sends make it wait a third of the time: it keeps
        // coalescing (a window that followed the share would close here).
        assert!(periods(&mut c, &mut t, &[35; 30]).iter().all(|&w| w == 40));
        // One quiet period does not end it.
        assert_eq!(periods(&mut c, &mut t, &[100]), [40]);
        // The load leaves: mostly waiting, it stops within a few periods.
        let windows = periods(&mut c, &mut t, &[90; 4]);
        assert_eq!(windows.last(), Some(&0));
    }

    #[test]
    fn one_busy_period_does_not_start_it() {
        let (mut c, mut t) = (Coalescer::new(40, 0), 0);
        periods(&mut c, &mut t, &[60; 20]);
        assert_eq!(periods(&mut c, &mut t, &[0, 60, 60]), [0, 0, 0]);
    }

    #[test]
    fn the_share_is_recomputed_once_a_period() {
        let mut c = Coalescer::new(40, 0);
        for t in 1..=6 {
            c.update(t * 100);
        }
        let busy = c.busy_permille();
        c.waited(50_000);
        c.update(650);
        assert_eq!(c.busy_permille(), busy, "not before the period ends");
    }

    #[test]
    fn a_zero_max_never_holds() {
        let mut c = Coalescer::new(0, 0);
        for t in 1..=20 {
            c.update(t * 100);
        }
        assert_eq!(c.window_ms(), 0);
    }
}
