//! When to ping a quiet client and when to give up on it. Pure: the time of
//! the last byte received and `now` in, an action out. One deadline per
//! connection; the gateway re-arms it from the returned `next_at_ms`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Ping after this much silence; 0 = never ping (sleeping devices:
    /// TCP keepalive checks the path without waking the application).
    pub ping_interval_ms: u64,
    /// Close after this much silence.
    pub idle_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing due yet.
    Wait { next_at_ms: u64 },
    /// Send a ping, then wait.
    Ping { next_at_ms: u64 },
    /// Silent for too long: close.
    Close,
}

impl Liveness {
    /// The first deadline after the connection opened (or after activity).
    pub fn first_deadline_ms(&self, last_rx_ms: u64) -> u64 {
        if self.ping_interval_ms > 0 {
            last_rx_ms + self.ping_interval_ms.min(self.idle_timeout_ms)
        } else {
            last_rx_ms + self.idle_timeout_ms
        }
    }

    /// What to do when the deadline fires. Activity does not move the
    /// deadline (that would cost work per message); it is looked at here.
    pub fn on_deadline(&self, last_rx_ms: u64, now_ms: u64) -> Action {
        let silent_ms = now_ms.saturating_sub(last_rx_ms);
        let idle_at = last_rx_ms + self.idle_timeout_ms;
        if silent_ms >= self.idle_timeout_ms {
            return Action::Close;
        }
        if self.ping_interval_ms == 0 {
            return Action::Wait {
                next_at_ms: idle_at,
            };
        }
        if silent_ms >= self.ping_interval_ms {
            Action::Ping {
                next_at_ms: idle_at.min(now_ms + self.ping_interval_ms),
            }
        } else {
            Action::Wait {
                next_at_ms: idle_at.min(last_rx_ms + self.ping_interval_ms),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Liveness = Liveness {
        ping_interval_ms: 30_000,
        idle_timeout_ms: 120_000,
    };

    #[test]
    fn quiet_client_is_pinged_then_closed() {
        let mut now = L.first_deadline_ms(0);
        assert_eq!(now, 30_000);
        let mut pings = 0;
        loop {
            match L.on_deadline(0, now) {
                Action::Ping { next_at_ms } => {
                    pings += 1;
                    now = next_at_ms;
                }
                Action::Wait { next_at_ms } => now = next_at_ms,
                Action::Close => break,
            }
        }
        assert_eq!(now, 120_000);
        assert_eq!(pings, 3);
    }

    #[test]
    fn activity_defers_pings() {
        assert_eq!(
            L.on_deadline(20_000, 30_000),
            Action::Wait { next_at_ms: 50_000 }
        );
        assert_eq!(
            L.on_deadline(20_000, 50_000),
            Action::Ping { next_at_ms: 80_000 }
        );
    }

    #[test]
    fn no_pings_for_sleeping_devices() {
        let l = Liveness {
            ping_interval_ms: 0,
            idle_timeout_ms: 600_000,
        };
        assert_eq!(l.first_deadline_ms(0), 600_000);
        assert_eq!(
            l.on_deadline(100, 600_000),
            Action::Wait {
                next_at_ms: 600_100
            }
        );
        assert_eq!(l.on_deadline(100, 600_100), Action::Close);
    }
}
