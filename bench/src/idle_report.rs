//! The `idle` run's report: its fields, its `--json` file and the human table.

use std::path::Path;

use serde::Serialize;

use crate::procfs::{ListenStat, SockStat};
use crate::worker::Tally;

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HoldSummary {
    pub hold_s: u64,
    pub held_at_stop: u64,
    pub dropped: Tally,
    pub pings_answered: u64,
    pub pongs_unsent: u64,
    pub frames_ignored: u64,
}

/// The result of one `idle` run, as printed and as written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    /// The server's name in the results (`pushgate`, `node-ws`, …).
    pub server: String,
    pub protocol: &'static str,
    pub machine: crate::machine::Machine,
    pub target: String,
    pub server_pid: u32,
    pub procs: u64,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub conns_failed: u64,
    pub failures: Tally,
    pub connect_wall_ms: f64,
    pub connect_rate_per_s: f64,
    pub handshake_latency_us: LatencySummary,
    pub settle_ms: u64,
    pub server_rss_before_bytes: u64,
    pub server_rss_after_bytes: u64,
    /// User space: Σ VmRSS of the server's processes, (after − before) /
    /// established; `None` with nothing established.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// Kernel: the server's end of each connection ([`crate::kmem`]).
    pub kernel_per_conn_bytes: Option<f64>,
    /// User space + kernel.
    pub total_per_conn_bytes: Option<f64>,
    pub kernel: crate::kmem::KernelMemory,
    pub server_info: crate::server_info::ServerInfo,
    /// Descriptors the server's processes had open, together, with every
    /// connection held.
    pub server_open_fds: Option<u64>,
    pub server_open_files_limit: Option<u64>,
    pub sockstat_before: SockStat,
    pub sockstat_after: SockStat,
    pub sockstat_delta: SockStat,
    pub tcp_mem_delta_bytes: i64,
    pub listen_delta: ListenStat,
    pub hold: Option<HoldSummary>,
}

pub(super) fn write_json(path: &Path, report: &IdleReport) -> Result<(), String> {
    crate::machine::write_json(path, report)
}

pub(super) fn write_json_value<T: Serialize>(path: &Path, report: &T) -> Result<(), String> {
    crate::machine::write_json(path, report)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// The human summary.
pub fn render_table(r: &IdleReport) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let lat = &r.handshake_latency_us;
    let _ = writeln!(
        t,
        "pushgate-bench idle   {} ({})   target {}   server pid {}   workers {}",
        r.server, r.protocol, r.target, r.server_pid, r.procs
    );
    let _ = writeln!(t, "connections requested {:>10}", r.conns_requested);
    let _ = writeln!(t, "established           {:>10}", r.conns_established);
    let _ = writeln!(t, "failed                {:>10}", r.conns_failed);
    for (why, n) in &r.failures.0 {
        let _ = writeln!(t, "  {n:>8}  {why}");
    }
    let _ = writeln!(
        t,
        "connect+handshake     {:>10.0} ms   {:.0} conn/s",
        r.connect_wall_ms, r.connect_rate_per_s
    );
    let _ = writeln!(
        t,
        "handshake latency     p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        lat.p50 as f64 / 1e3,
        lat.p99 as f64 / 1e3,
        lat.max as f64 / 1e3
    );
    let _ = writeln!(
        t,
        "server RSS            before {:.1} MiB   after {:.1} MiB   (settled {} ms)",
        mib(r.server_rss_before_bytes),
        mib(r.server_rss_after_bytes),
        r.settle_ms
    );
    let per_conn = r
        .server_rss_per_conn_bytes
        .map_or_else(|| "?".to_string(), |b| format!("{b:.1}"));
    let _ = writeln!(t, "server bytes/conn     {per_conn:>10}   (user space)");
    let shown = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |b| format!("{b:.1}"));
    let _ = writeln!(
        t,
        "kernel bytes/conn     {:>10}   (server end; both ends {}, client end {})",
        shown(r.kernel_per_conn_bytes),
        shown(
            r.kernel
                .both_ends_bytes
                .filter(|_| r.conns_established > 0)
                .map(|b| b as f64 / r.conns_established as f64)
        ),
        shown(r.kernel.client_end_per_conn_bytes)
    );
    let _ = writeln!(
        t,
        "total bytes/conn      {:>10}   (user + kernel)",
        shown(r.total_per_conn_bytes)
    );
    let _ = writeln!(
        t,
        "server open fds       {:>10}   open-file limit {}",
        optional(r.server_open_fds),
        optional(r.server_open_files_limit)
    );
    let d = &r.sockstat_delta;
    let _ = writeln!(
        t,
        "kernel TCP delta      inuse {:+}   alloc {:+}   tw {:+}   mem {:+} pages ({:+} B)",
        d.tcp_inuse, d.tcp_alloc, d.tcp_tw, d.tcp_mem_pages, r.tcp_mem_delta_bytes
    );
    let _ = writeln!(
        t,
        "listen overflows      {:+}   drops {:+}",
        r.listen_delta.listen_overflows, r.listen_delta.listen_drops
    );
    t
}
