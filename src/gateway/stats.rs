//! Per-shard gateway counters for /metrics: written by the owning shard
//! with relaxed atomics, read by whichever shard serves the scrape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! gateway_stats {
    ($($(#[doc = $doc:literal])* $name:ident: $kind:literal,)*) => {
        #[derive(Default, Debug)]
        pub struct GatewayStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl GatewayStats {
            /// (name, help, "counter"|"gauge", value) of every field.
            pub fn rows(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($doc),*), $kind, self.$name.load(Relaxed)),)*]
            }
        }
    };
}

gateway_stats! {
    /// Upgrades completed (welcome sent).
    handshakes_total: "counter",
    /// Upgrades refused with an HTTP error (bad token, path, version …).
    handshakes_refused_total: "counter",
    /// New connections refused at accept: caps, rate limit, memory, drain.
    overload_rejections_total: "counter",
    /// Push requests (push, broadcast) handled with this shard as origin.
    push_requests_total: "counter",
    /// Resent pushes answered without delivering them again: the previous
    /// process of a live upgrade forwarded them here and stopped before
    /// answering (`takeover::resends`).
    push_resends_answered_total: "counter",
    /// Notifications queued to devices.
    deliveries_total: "counter",
    /// Recipients that were offline (stored only).
    stored_total: "counter",
    /// Recipients rejected (invalid user ID, overload).
    rejected_total: "counter",
    /// Devices closed with 1013 for not reading.
    slow_consumer_closes_total: "counter",
    /// Devices closed with 1012 by a drain.
    drain_closes_total: "counter",
    /// Users with at least one device on this shard.
    users_online: "gauge",
    /// WebSocket devices on this shard.
    devices_online: "gauge",
    /// Notifications kept in mailboxes (entries, all users).
    mailbox_entries: "gauge",
    /// Broadcasts kept in the shard's broadcast log.
    broadcast_log_entries: "gauge",
    /// Users kept on this shard (online, or offline with a mailbox or a
    /// recent departure).
    users_stored: "gauge",
    /// Bytes of notifications kept for resume on this shard.
    stored_bytes: "gauge",
    /// Client connections whose upgrade is in progress.
    handshakes_in_progress: "gauge",
    /// Requests waiting for other shards' answers (tickets).
    requests_waiting: "gauge",
    /// Push-socket connections.
    publisher_connections: "gauge",
    /// Admin HTTP connections.
    admin_connections: "gauge",
    /// Several hosts: reads of the history in Redis started to repair a gap
    /// (a lost doorbell), from a doorbell or a periodic check.
    history_repairs_total: "counter",
    /// Several hosts: users whose history the periodic check read.
    history_checked_users_total: "counter",
    /// Several hosts: devices the periodic check found behind the history
    /// in Redis (a lost doorbell no push revealed).
    history_check_gaps_total: "counter",
    /// Several hosts: reads of the history out now (welcomes and repairs).
    history_reads_in_flight: "gauge",
}

impl GatewayStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }

    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Relaxed);
    }
}
