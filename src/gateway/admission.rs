//! The admission part: whether a new client connection may come in now
//! (connection cap, upgrades in progress, accept rate, memory, drain), and
//! the drip drain's pace. Pure: `now` and the shard's load in, a verdict or
//! a number of closes out.

/// Caps that refuse new client connections (503) before they cost more.
#[derive(Clone, Copy, Debug)]
pub struct OverloadLimits {
    /// Client connections per shard (`connections_max` / shards).
    pub connections_per_shard_max: u64,
    /// Upgrades in progress per shard.
    pub handshakes_max: usize,
    /// New client connections per second per shard; 0 = unlimited.
    pub accepts_per_shard_per_s: f64,
    /// Admin HTTP connections open at once per shard.
    pub admin_connections_max: usize,
    /// Push-socket connections open at once per shard (each may hold
    /// `OUTSTANDING_MAX` replies).
    pub publisher_connections_max: usize,
}

/// What admission looks at, read by the wiring from the other parts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub devices: u64,
    pub handshakes: usize,
    pub draining: bool,
    pub memory_high: bool,
}

/// One drain tick's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainStep {
    /// The drain just began here: stop accepting clients.
    pub began: bool,
    /// Devices to close with 1012 now.
    pub closes: usize,
}

pub struct Admission {
    limits: OverloadLimits,
    /// Token bucket of the accept rate limit.
    accept_tokens: f64,
    accept_refilled_at_ms: u64,
    /// When the drain last paced (None: not draining here yet).
    drain_paced_at_ms: Option<u64>,
    /// Closes this shard may make so far (fractions carry over).
    drain_closes_allowed: f64,
    drain_reported: bool,
}

impl Admission {
    pub fn new(limits: OverloadLimits) -> Admission {
        Admission {
            accept_tokens: limits.accepts_per_shard_per_s,
            limits,
            accept_refilled_at_ms: 0,
            drain_paced_at_ms: None,
            drain_closes_allowed: 0.0,
            drain_reported: false,
        }
    }

    pub fn limits(&self) -> &OverloadLimits {
        &self.limits
    }

    /// Why a new client connection must be refused now, if it must. An
    /// admitted connection takes one token of the accept rate.
    pub fn admit(&mut self, now_ms: u64, load: Load) -> Result<(), &'static str> {
        let limits = self.limits;
        if load.draining {
            return Err("draining");
        }
        if load.memory_high {
            return Err("memory high-water mark");
        }
        if load.devices + load.handshakes as u64 >= limits.connections_per_shard_max {
            return Err("connection cap");
        }
        if load.handshakes >= limits.handshakes_max {
            return Err("too many upgrades in progress");
        }
        if limits.accepts_per_shard_per_s > 0.0 {
            let elapsed_s = now_ms.saturating_sub(self.accept_refilled_at_ms) as f64 / 1000.0;
            self.accept_refilled_at_ms = now_ms;
            // A burst of up to one second's worth is allowed.
            self.accept_tokens = (self.accept_tokens + elapsed_s * limits.accepts_per_shard_per_s)
                .min(limits.accepts_per_shard_per_s.max(1.0));
            if self.accept_tokens < 1.0 {
                return Err("connection rate limit");
            }
            self.accept_tokens -= 1.0;
        }
        Ok(())
    }

    /// Whether another admin connection may open beside `open` ones.
    pub fn admit_admin(&self, open: usize) -> Result<(), &'static str> {
        if open >= self.limits.admin_connections_max {
            return Err("too many admin connections");
        }
        Ok(())
    }

    /// Whether another push-socket connection may open beside `open` ones.
    pub fn admit_publisher(&self, open: usize) -> Result<(), &'static str> {
        if open >= self.limits.publisher_connections_max {
            return Err("too many push-socket connections");
        }
        Ok(())
    }

    /// Paces the drip drain: this shard's share of `rate_per_s` (over
    /// `shards`) since the last tick. Fractions carry over, so any rate is
    /// honoured; nothing is due once the shard reported itself empty.
    pub fn drain_tick(&mut self, now_ms: u64, rate_per_s: u32, shards: usize) -> DrainStep {
        if self.drain_reported {
            return DrainStep {
                began: false,
                closes: 0,
            };
        }
        let began = self.drain_paced_at_ms.is_none();
        let last = *self.drain_paced_at_ms.get_or_insert(now_ms);
        let rate_per_shard = rate_per_s as f64 / shards.max(1) as f64;
        self.drain_closes_allowed += rate_per_shard * now_ms.saturating_sub(last) as f64 / 1000.0;
        self.drain_paced_at_ms = Some(now_ms);
        DrainStep {
            began,
            closes: self.drain_closes_allowed.floor() as usize,
        }
    }

    /// The wiring closed `n` devices of the allowance.
    pub fn drained(&mut self, n: usize) {
        self.drain_closes_allowed = (self.drain_closes_allowed - n as f64).max(0.0);
    }

    /// The drain was stopped: forget its pacing, so a later one begins anew.
    pub fn drain_stopped(&mut self) {
        self.drain_paced_at_ms = None;
        self.drain_closes_allowed = 0.0;
        self.drain_reported = false;
    }

    /// The shard has no client left: report once.
    pub fn report_drained(&mut self) -> bool {
        !std::mem::replace(&mut self.drain_reported, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OverloadLimits {
        OverloadLimits {
            connections_per_shard_max: 10,
            handshakes_max: 3,
            accepts_per_shard_per_s: 0.0,
            admin_connections_max: 2,
            publisher_connections_max: 2,
        }
    }

    #[test]
    fn caps_refuse_with_their_reason() {
        let mut a = Admission::new(limits());
        let load = Load::default();
        assert_eq!(a.admit(0, load), Ok(()));
        let cases = [
            (
                Load {
                    draining: true,
                    ..load
                },
                "draining",
            ),
            (
                Load {
                    memory_high: true,
                    ..load
                },
                "memory high-water mark",
            ),
            (
                Load {
                    devices: 8,
                    handshakes: 2,
                    ..load
                },
                "connection cap",
            ),
            (
                Load {
                    handshakes: 3,
                    ..load
                },
                "too many upgrades in progress",
            ),
        ];
        for (load, why) in cases {
            assert_eq!(a.admit(0, load), Err(why));
        }
        assert_eq!(a.admit_admin(1), Ok(()));
        assert_eq!(a.admit_admin(2), Err("too many admin connections"));
        assert_eq!(a.admit_publisher(1), Ok(()));
        assert_eq!(
            a.admit_publisher(2),
            Err("too many push-socket connections")
        );
    }

    #[test]
    fn accept_rate_allows_a_one_second_burst_then_refills() {
        let mut a = Admission::new(OverloadLimits {
            accepts_per_shard_per_s: 5.0,
            ..limits()
        });
        let ok = |a: &mut Admission, now| a.admit(now, Load::default()).is_ok();
        assert_eq!((0..10).filter(|_| ok(&mut a, 0)).count(), 5);
        assert!(!ok(&mut a, 100));
        assert!(ok(&mut a, 400), "two tokens back after 400 ms");
        assert!(ok(&mut a, 400));
        assert!(!ok(&mut a, 400));
    }

    #[test]
    fn drain_paces_the_shards_share_and_carries_fractions() {
        let mut a = Admission::new(limits());
        let first = a.drain_tick(1_000, 30, 4);
        assert_eq!(
            first,
            DrainStep {
                began: true,
                closes: 0
            }
        );
        // 7.5/s for this shard: 100 ms ticks carry 0.75 each.
        let mut closed = 0;
        for t in 1..=40 {
            let step = a.drain_tick(1_000 + t * 100, 30, 4);
            assert!(!step.began);
            a.drained(step.closes);
            closed += step.closes;
        }
        assert_eq!(closed, 30, "4 s at 7.5/s");
        assert!(a.report_drained());
        assert!(!a.report_drained(), "reported once");
        assert_eq!(a.drain_tick(10_000, 30, 4).closes, 0);
    }
}
