//! State shared by the main thread and every shard: drain, overload,
//! readiness, and host readings the main thread takes (so shards make no
//! syscalls for them). Relaxed atomics: each value is read on its own.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Control {
    draining: AtomicBool,
    drain_rate_per_s: AtomicU32,
    /// Shards that have no client connection left while draining.
    shards_drained: AtomicUsize,
    /// The drain's last step: shards stop reading publisher connections
    /// and close each once everything it read is answered, so a request
    /// is either answered here or was never processed (the client library
    /// resends those to whoever serves the sockets next).
    closing_publishers: AtomicBool,
    /// Shards that closed every publisher connection in that step.
    shards_publishers_closed: AtomicUsize,
    /// RSS above the high-water mark, with a 5 % band to leave the state:
    /// recomputed by the supervisor every round after giving memory back
    /// (`server::memory`), so it never outlives what the server holds.
    overloaded: AtomicBool,
    pub rss_bytes: AtomicU64,
    pub memory_high_water_bytes: AtomicU64,
    /// /proc/net/sockstat: TCP sockets in use and their memory (pages).
    pub tcp_sockets_inuse: AtomicU64,
    pub tcp_memory_pages: AtomicU64,
    /// A live upgrade (`crate::takeover`) gave this process's listeners to
    /// a successor: a drain then leaves them open (the successor accepts
    /// from them; they are paused here) and does not refuse clients that
    /// got in before the pause, since the successor is not a different
    /// host: they are served and drained like the rest.
    listeners_handed_over: AtomicBool,
    /// This process is taking over from a predecessor and not done yet:
    /// not ready (`/readyz`).
    taking_over: AtomicBool,
    /// Redis (several hosts, `crate::cluster`): set once at start when it is
    /// configured; then `redis_up` follows the Redis thread's last call.
    redis_configured: AtomicBool,
    redis_up: AtomicBool,
    /// Redis calls that failed or timed out.
    pub redis_errors_total: AtomicU64,
    /// Round trip of the last heartbeat, microseconds.
    pub redis_round_trip_us: AtomicU64,
}

impl Control {
    /// Starts a drip drain at `rate_per_s` connections per second over all
    /// shards. Idempotent; a later call only changes the rate.
    pub fn start_drain(&self, rate_per_s: u32) {
        self.drain_rate_per_s.store(rate_per_s.max(1), Relaxed);
        self.draining.store(true, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Ends a drain (a successor that took over died: this process serves
    /// again). Shards reset their drain pacing when they see it.
    pub fn stop_drain(&self) {
        self.draining.store(false, Relaxed);
        self.shards_drained.store(0, Relaxed);
        self.closing_publishers.store(false, Relaxed);
        self.shards_publishers_closed.store(0, Relaxed);
    }

    /// Every client is gone: shards stop reading publishers and close them
    /// once answered (see the field).
    pub fn close_publishers(&self) {
        self.closing_publishers.store(true, Relaxed);
    }

    pub fn closes_publishers(&self) -> bool {
        self.closing_publishers.load(Relaxed)
    }

    /// Called once by each shard when its last publisher is closed.
    pub fn shard_publishers_closed(&self) {
        self.shards_publishers_closed.fetch_add(1, Relaxed);
    }

    pub fn shards_publishers_closed(&self) -> usize {
        self.shards_publishers_closed.load(Relaxed)
    }

    /// Whether new clients are refused because of a drain: not when the
    /// listeners went to a successor on this host (see the field).
    pub fn refuses_clients(&self) -> bool {
        self.is_draining() && !self.listeners_handed_over()
    }

    pub fn set_listeners_handed_over(&self, handed_over: bool) {
        self.listeners_handed_over.store(handed_over, Relaxed);
    }

    pub fn listeners_handed_over(&self) -> bool {
        self.listeners_handed_over.load(Relaxed)
    }

    pub fn set_taking_over(&self, taking_over: bool) {
        self.taking_over.store(taking_over, Relaxed);
    }

    pub fn is_taking_over(&self) -> bool {
        self.taking_over.load(Relaxed)
    }

    pub fn drain_rate_per_s(&self) -> u32 {
        self.drain_rate_per_s.load(Relaxed)
    }

    /// Called once by each shard when its last client connection is gone.
    pub fn shard_drained(&self) {
        self.shards_drained.fetch_add(1, Relaxed);
    }

    pub fn shards_drained(&self) -> usize {
        self.shards_drained.load(Relaxed)
    }

    pub fn set_overloaded(&self, overloaded: bool) {
        self.overloaded.store(overloaded, Relaxed);
    }

    pub fn is_overloaded(&self) -> bool {
        self.overloaded.load(Relaxed)
    }

    /// This process shares state through Redis (set before the shards start).
    pub fn set_redis_configured(&self) {
        self.redis_configured.store(true, Relaxed);
    }

    pub fn is_redis_configured(&self) -> bool {
        self.redis_configured.load(Relaxed)
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(up, Relaxed);
    }

    /// Redis is configured and its last call failed (or this host lost its
    /// claim on its host_id).
    pub fn is_redis_down(&self) -> bool {
        self.is_redis_configured() && !self.redis_up.load(Relaxed)
    }

    /// Whether a load balancer should send new clients here.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why /readyz says 503, the most urgent first; `None` when ready.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if self.is_taking_over() {
            Some("taking over")
        } else if self.is_redis_down() {
            Some("redis")
        } else if self.is_overloaded() {
            Some("overloaded")
        } else {
            None
        }
    }
}
