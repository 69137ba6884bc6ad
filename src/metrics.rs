//! Prometheus text exposition of every shard's runtime and gateway
//! counters plus the host readings in `Control`. Pure: numbers in, text out.

use crate::control::Control;
use crate::gateway::GatewayStats;
use shard::StatsSnapshot;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

fn family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    values: impl Iterator<Item = (usize, u64)>,
) {
    let _ = writeln!(out, "# HELP pushgate_{name} {help}");
    let _ = writeln!(out, "# TYPE pushgate_{name} {kind}");
    for (shard, value) in values {
        let _ = writeln!(out, "pushgate_{name}{{shard=\"{shard}\"}} {value}");
    }
}

fn single(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(out, "# HELP pushgate_{name} {help}");
    let _ = writeln!(out, "# TYPE pushgate_{name} {kind}");
    let _ = writeln!(out, "pushgate_{name} {value}");
}

pub fn render(runtime: &[StatsSnapshot], gateway: &[GatewayStats], control: &Control) -> String {
    let mut out = String::with_capacity(8192);
    macro_rules! runtime_family {
        ($($field:ident: $kind:literal, $help:literal;)*) => {
            $(family(&mut out, concat!("ring_", stringify!($field)), $help, $kind,
                runtime.iter().enumerate().map(|(i, s)| (i, s.$field)));)*
        };
    }
    runtime_family! {
        connections_open: "gauge", "Sockets open on the shard's ring (clients, push, admin).";
        accepted_total: "counter", "Sockets accepted.";
        closed_total: "counter", "Sockets closed.";
        handoffs_out_total: "counter", "Connections handed to their home shard.";
        handoffs_in_total: "counter", "Connections received from another shard.";
        handoff_failures_total: "counter", "Handoffs that failed (connection closed).";
        bytes_received_total: "counter", "Bytes received.";
        bytes_sent_total: "counter", "Bytes sent.";
        sends_total: "counter", "sendmsg operations submitted (one gathers all a connection is owed).";
        send_coalesce_ms: "gauge", "How long a connection's new bytes may now wait for more (0 unless the shard is saturated).";
        loop_busy_permille: "gauge", "Share of the last 100 ms the shard's loop was not waiting for completions, in thousandths.";
        send_queue_bytes: "gauge", "Bytes queued in user space, not yet taken by the kernel.";
        recv_buffer_starved_total: "counter", "Receives that found the provided-buffer ring empty.";
        accept_table_full_total: "counter", "Accepts refused: fixed-file table full.";
        accept_renewals_total: "counter", "Armed accepts renewed: connections waited in the socket's accept queue for two checks a second apart with no accept completing (a lost wake-up).";
        mesh_messages_in_total: "counter", "Messages received from other shards.";
        sq_backlog_max: "gauge", "Most submissions ever waiting for SQ room.";
        loop_iterations_total: "counter", "Event-loop rounds.";
        tls_handshakes_total: "counter", "TLS handshakes completed on tls_listen.";
        tls_failures_total: "counter", "TLS connections refused or ended by a bad handshake or record.";
    }
    let rows: Vec<_> = gateway.iter().map(GatewayStats::rows).collect();
    if let Some(first) = rows.first() {
        for (col, (name, help, kind, _)) in first.iter().enumerate() {
            family(
                &mut out,
                name,
                help,
                kind,
                rows.iter().enumerate().map(|(i, r)| (i, r[col].3)),
            );
        }
    }
    single(
        &mut out,
        "draining",
        "1 while a drain is closing connections.",
        "gauge",
        control.is_draining() as u64,
    );
    single(
        &mut out,
        "overloaded",
        "1 while RSS is above the high-water mark.",
        "gauge",
        control.is_overloaded() as u64,
    );
    single(
        &mut out,
        "ready",
        "1 when /readyz says ready.",
        "gauge",
        control.is_ready() as u64,
    );
    single(
        &mut out,
        "resident_memory_bytes",
        "Process RSS.",
        "gauge",
        control.rss_bytes.load(Relaxed),
    );
    single(
        &mut out,
        "memory_high_water_bytes",
        "RSS at which readiness fails.",
        "gauge",
        control.memory_high_water_bytes.load(Relaxed),
    );
    single(
        &mut out,
        "kernel_tcp_sockets_inuse",
        "TCP sockets in use on the host (/proc/net/sockstat).",
        "gauge",
        control.tcp_sockets_inuse.load(Relaxed),
    );
    single(
        &mut out,
        "kernel_tcp_memory_bytes",
        "TCP socket buffer memory on the host (/proc/net/sockstat, pages × 4096).",
        "gauge",
        control.tcp_memory_pages.load(Relaxed) * 4096,
    );
    if control.is_redis_configured() {
        single(
            &mut out,
            "redis_up",
            "1 while the last Redis call succeeded and this host holds its host_id.",
            "gauge",
            !control.is_redis_down() as u64,
        );
        single(
            &mut out,
            "redis_errors_total",
            "Redis calls that failed or timed out.",
            "counter",
            control.redis_errors_total.load(Relaxed),
        );
        single(
            &mut out,
            "redis_round_trip_us",
            "Round trip of the last Redis heartbeat, microseconds.",
            "gauge",
            control.redis_round_trip_us.load(Relaxed),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_per_shard() {
        let runtime = vec![
            StatsSnapshot {
                connections_open: 3,
                ..Default::default()
            },
            StatsSnapshot::default(),
        ];
        let gateway: Vec<GatewayStats> = (0..2).map(|_| GatewayStats::default()).collect();
        GatewayStats::add(&gateway[1].deliveries_total, 7);
        let control = Control::default();
        control.start_drain(10);
        let text = render(&runtime, &gateway, &control);
        assert!(
            text.contains("pushgate_ring_connections_open{shard=\"0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pushgate_deliveries_total{shard=\"1\"} 7"),
            "{text}"
        );
        assert!(text.contains("# TYPE pushgate_deliveries_total counter"));
        assert!(text.contains("pushgate_draining 1"));
        assert!(text.contains("pushgate_ready 0"));
        assert!(
            !text.contains("redis"),
            "no Redis families on a single host"
        );
        control.set_redis_configured();
        let text = render(&runtime, &gateway, &control);
        assert!(text.contains("pushgate_redis_up 0"), "{text}");
        control.set_redis_up(true);
        let text = render(&runtime, &gateway, &control);
        assert!(text.contains("pushgate_redis_up 1"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().expect("every sample is a number");
        }
    }
}
