//! Per-shard counters, written by the shard thread with relaxed atomics and
//! read by anyone (metrics, tests, benchmarks).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct ShardStats {
    pub connections_open: AtomicU64,
    pub accepted_total: AtomicU64,
    pub closed_total: AtomicU64,
    pub handoffs_out_total: AtomicU64,
    pub handoffs_in_total: AtomicU64,
    pub handoff_failures_total: AtomicU64,
    pub bytes_received_total: AtomicU64,
    pub bytes_sent_total: AtomicU64,
    /// sendmsg operations submitted (each gathers what one connection is owed).
    pub sends_total: AtomicU64,
    /// How long a connection's new bytes may now wait for more (ms).
    pub send_coalesce_ms: AtomicU64,
    /// Share of the last 100 ms the loop was not waiting for completions (‰).
    pub loop_busy_permille: AtomicU64,
    pub send_queue_bytes: AtomicU64,
    pub recv_buffer_starved_total: AtomicU64,
    pub accept_table_full_total: AtomicU64,
    /// Armed accepts renewed because their socket's queue stood still.
    pub accept_renewals_total: AtomicU64,
    pub mesh_messages_in_total: AtomicU64,
    pub sq_backlog_max: AtomicU64,
    pub loop_iterations_total: AtomicU64,
    /// TLS handshakes completed / refused or failed (incl. bad records later).
    pub tls_handshakes_total: AtomicU64,
    pub tls_failures_total: AtomicU64,
}

/// A plain copy of [`ShardStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections_open: u64,
    pub accepted_total: u64,
    pub closed_total: u64,
    pub handoffs_out_total: u64,
    pub handoffs_in_total: u64,
    pub handoff_failures_total: u64,
    pub bytes_received_total: u64,
    pub bytes_sent_total: u64,
    pub sends_total: u64,
    pub send_coalesce_ms: u64,
    pub loop_busy_permille: u64,
    pub send_queue_bytes: u64,
    pub recv_buffer_starved_total: u64,
    pub accept_table_full_total: u64,
    pub accept_renewals_total: u64,
    pub mesh_messages_in_total: u64,
    pub sq_backlog_max: u64,
    pub loop_iterations_total: u64,
    pub tls_handshakes_total: u64,
    pub tls_failures_total: u64,
}

impl ShardStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_open: self.connections_open.load(Relaxed),
            accepted_total: self.accepted_total.load(Relaxed),
            closed_total: self.closed_total.load(Relaxed),
            handoffs_out_total: self.handoffs_out_total.load(Relaxed),
            handoffs_in_total: self.handoffs_in_total.load(Relaxed),
            handoff_failures_total: self.handoff_failures_total.load(Relaxed),
            bytes_received_total: self.bytes_received_total.load(Relaxed),
            bytes_sent_total: self.bytes_sent_total.load(Relaxed),
            sends_total: self.sends_total.load(Relaxed),
            send_coalesce_ms: self.send_coalesce_ms.load(Relaxed),
            loop_busy_permille: self.loop_busy_permille.load(Relaxed),
            send_queue_bytes: self.send_queue_bytes.load(Relaxed),
            recv_buffer_starved_total: self.recv_buffer_starved_total.load(Relaxed),
            accept_table_full_total: self.accept_table_full_total.load(Relaxed),
            accept_renewals_total: self.accept_renewals_total.load(Relaxed),
            mesh_messages_in_total: self.mesh_messages_in_total.load(Relaxed),
            sq_backlog_max: self.sq_backlog_max.load(Relaxed),
            loop_iterations_total: self.loop_iterations_total.load(Relaxed),
            tls_handshakes_total: self.tls_handshakes_total.load(Relaxed),
            tls_failures_total: self.tls_failures_total.load(Relaxed),
        }
    }

    pub(crate) fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }
}
