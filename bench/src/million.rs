//! `pushgate-bench million`: one pushgate process holds a million
//! connections (one distinct user each, token verified, welcome received)
//! for a stated time, then one push goes to every connection and every
//! client counts what it received. A connection that fails or drops, or a
//! receipt that does not arrive, fails the run: nothing is estimated.
//!
//! The connections come from worker processes of ≤ 16,000 sockets each
//! (the open-file limit is 20,000 per process), opened one worker at a time
//! from many loopback source addresses (each gives the connect port search
//! about half of `ip_local_port_range`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetSpec};
use crate::idle::{mem_available_bytes, server_rss_bytes, PROCS_MAX};
use crate::kmem::{KernelMemory, KernelReading};
use crate::machine::{self, Machine};
use crate::payload;
use crate::procfs::{self, SockStat};
use crate::proto::Protocol;
use crate::publish::Publisher;
use crate::push::LatencyMs;
use crate::server_info::{self, MetaArgs, ServerInfo};
use crate::sys;
use crate::worker::{Command, Tally, CONNS_PER_WORKER_MAX};

const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the hold reports what is still held.
const HOLD_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Receipts: polled this often, given up after --receipt-timeout-s.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `pushgate-bench million` (pushgate only: the peers hold at most one
/// process's 20,000 files).
#[derive(Args, Debug, Clone)]
pub struct MillionArgs {
    /// The server's WebSocket listener (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    #[arg(long, default_value = "pushgate")]
    pub server_name: String,
    /// The server process (memory, descriptors).
    #[arg(long)]
    pub server_pid: u32,
    /// The server's --run-dir (secret for tokens, push sockets).
    #[arg(long)]
    pub run_dir: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    pub conns: u64,
    /// Connections per worker process (≤ 16,000).
    #[arg(long, default_value_t = CONNS_PER_WORKER_MAX)]
    pub batch: u64,
    /// Source addresses: `A-B` in 127.0.0.0/8.
    #[arg(long, default_value = "127.0.0.2-127.0.0.200")]
    pub sources: String,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 512)]
    pub inflight: usize,
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// How long every connection is held, idle, before the push.
    #[arg(long, default_value_t = 60)]
    pub hold_s: u64,
    /// The push's receipts must all arrive within this long.
    #[arg(long, default_value_t = 300)]
    pub receipt_timeout_s: u64,
    /// Stop opening before MemAvailable drops below this (MiB).
    #[arg(long, default_value_t = 2048)]
    pub memory_floor_mib: u64,
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct MillionReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub conns_requested: u64,
    pub workers: usize,
    pub batch: u64,
    pub sources: String,
    /// Connections established (token verified, welcome received).
    pub established: u64,
    pub connect_failures: Tally,
    /// Why opening stopped early, if it did.
    pub stopped_by: Option<String>,
    pub connect_wall_s: f64,
    pub connect_rate_per_s: f64,
    pub hold_s: u64,
    /// Still open after the hold, and what dropped meanwhile.
    pub held_after_hold: u64,
    pub dropped: Tally,
    pub server_rss_before_bytes: u64,
    pub server_rss_after_bytes: u64,
    pub server_rss_per_conn_bytes: Option<f64>,
    pub kernel_per_conn_bytes: Option<f64>,
    pub kernel: KernelMemory,
    pub server_open_fds: Option<u64>,
    pub server_open_files_limit: Option<u64>,
    pub sockstat_delta: SockStat,
    pub mem_available_after_bytes: Option<u64>,
    /// The push to every connection.
    pub push_server_delivered: u64,
    pub push_received: u64,
    pub push_duplicates: u64,
    /// held − unique receipts.
    pub push_missing: i64,
    pub push_time_to_last_ms: Option<f64>,
    pub push_receive_ms: LatencyMs,
    pub ok: bool,
}

pub fn run(args: MillionArgs) -> Result<bool, String> {
    if args.batch == 0 || args.batch > CONNS_PER_WORKER_MAX {
        return Err(format!("--batch: want 1..={CONNS_PER_WORKER_MAX}"));
    }
    if args.conns.div_ceil(args.batch) > PROCS_MAX {
        return Err(format!(
            "{} connections in batches of {} need more than {PROCS_MAX} workers",
            args.conns, args.batch
        ));
    }
    let secret = crate::token::secret_file_in_run_dir(&args.run_dir)?;
    let mut spec = FleetSpec::new(
        &args.target,
        Protocol::Pushgate,
        Some(secret),
        &args.sources,
        args.handshake_timeout_ms,
    )?;
    spec.stop_after_failures = Some(1);
    let pid = args.server_pid;
    let server_info = ServerInfo::read(pid, &[], &args.meta);
    let pids = server_info::server_pids(pid, &[]);
    let rss_before = server_rss_bytes(&pids)?;
    let kernel_before = KernelReading::read();
    let sockstat_before = SockStat::read().unwrap_or_default();
    let mut fleet = Fleet::new(spec);
    let result = connect_hold_push(&args, &mut fleet, &pids, rss_before, kernel_before);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let mut report = result?;
    report.server_info = server_info;
    report.sockstat_delta = report.sockstat_delta.delta(&sockstat_before);
    report.dropped.merge(&exit.dropped);
    report.ok = report.ok && exit.dropped.total() == 0;
    println!(
        "{}: {} of {} established in {:.0} s ({:.0}/s); held {} after {} s; push: {} received, {} missing, {} duplicates, last after {} ms; {:.0} B user space + {} B kernel per connection; {} fds; ok {}",
        report.server,
        report.established,
        report.conns_requested,
        report.connect_wall_s,
        report.connect_rate_per_s,
        report.held_after_hold,
        report.hold_s,
        report.push_received,
        report.push_missing,
        report.push_duplicates,
        report
            .push_time_to_last_ms
            .map_or_else(|| "?".to_string(), |t| format!("{t:.0}")),
        report.server_rss_per_conn_bytes.unwrap_or(f64::NAN),
        report
            .kernel_per_conn_bytes
            .map_or_else(|| "?".to_string(), |k| format!("{k:.0}")),
        report.server_open_fds.unwrap_or(0),
        report.ok
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &args.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

fn connect_hold_push(
    args: &MillionArgs,
    fleet: &mut Fleet,
    pids: &[u32],
    rss_before: u64,
    kernel_before: KernelReading,
) -> Result<MillionReport, String> {
    let pid = args.server_pid;
    let floor_bytes = args.memory_floor_mib << 20;
    let mut established = 0u64;
    let mut failures = Tally::default();
    let mut stopped_by = None;
    let (mut first_ns, mut done_ns) = (0u64, 0u64);
    // Bounded: at most ceil(conns / batch) ≤ PROCS_MAX workers.
    for (first, count) in batches(args.conns, args.batch) {
        if mem_available_bytes().is_some_and(|m| m < floor_bytes + (count << 13)) {
            stopped_by = Some(format!(
                "memory guard (MemAvailable near {} MiB)",
                args.memory_floor_mib
            ));
            break;
        }
        let worker = fleet.spawn((first, count), args.inflight, None)?;
        let deadline = Instant::now()
            + Duration::from_millis(args.handshake_timeout_ms * 3)
            + Duration::from_secs(60);
        let done = fleet.await_established(&[worker], deadline);
        if first_ns == 0 {
            first_ns = done.first_connect_mono_ns;
        }
        done_ns = done_ns.max(done.done_mono_ns);
        established += done.established;
        println!(
            "worker {worker}: {} of {count} established, {established} in all",
            done.established
        );
        if done.failures.total() > 0 {
            failures.merge(&done.failures);
            stopped_by = Some("a connection failed".to_string());
            break;
        }
    }
    let connect_wall_s = done_ns.saturating_sub(first_ns) as f64 / 1e9;
    // Bounded by --hold-s.
    let hold_end = Instant::now() + Duration::from_secs(args.hold_s);
    while Instant::now() < hold_end {
        let left = hold_end.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(HOLD_REPORT_INTERVAL));
        let held = fleet.command(Command::Count, COUNT_TIMEOUT)?.held;
        println!(
            "holding: {held} connections, {:.0} s to go",
            hold_end
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        );
    }
    let after_hold = fleet.command(Command::Count, COUNT_TIMEOUT)?;
    let held = after_hold.held;
    // Memory before listing descriptors (which adds /proc inodes).
    let rss_after = server_rss_bytes(pids)?;
    let kernel = KernelMemory::between(&kernel_before, &KernelReading::read(), held);
    let sockstat_after = SockStat::read().unwrap_or_default();
    let server_open_fds = procfs::open_fd_count(pid).ok();
    let server_open_files_limit = procfs::open_files_limit(pid).ok();

    // One push to every connection, counted at the clients.
    fleet.command(Command::Reset, COUNT_TIMEOUT)?;
    let mut publisher = Publisher::connect(Protocol::Pushgate, Some(&args.run_dir), &[])?;
    let sent_ns = sys::monotonic_ns();
    let data = payload::make(1, sent_ns, args.payload_bytes);
    let server_delivered = publisher.broadcast(&data)?;
    let limit = Instant::now() + Duration::from_secs(args.receipt_timeout_s);
    // Bounded by --receipt-timeout-s.
    while Instant::now() < limit {
        if fleet.command(Command::Count, COUNT_TIMEOUT)?.received >= held {
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let snap = fleet.command(Command::Snapshot, COUNT_TIMEOUT)?;
    let unique = snap.received - snap.duplicates;
    let missing = held as i64 - unique as i64;
    let receive_ms = LatencyMs::of(snap.latency_us.as_ref().expect("full snapshot"));
    Ok(MillionReport {
        scenario: "million",
        server: args.server_name.clone(),
        protocol: Protocol::Pushgate.name(),
        machine: Machine::read(),
        server_info: ServerInfo::default(),
        conns_requested: args.conns,
        workers: fleet.len(),
        batch: args.batch,
        sources: args.sources.clone(),
        established,
        connect_failures: failures,
        stopped_by,
        connect_wall_s,
        connect_rate_per_s: if connect_wall_s > 0.0 {
            established as f64 / connect_wall_s
        } else {
            0.0
        },
        hold_s: args.hold_s,
        held_after_hold: held,
        dropped: after_hold.dropped,
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        server_rss_per_conn_bytes: (held > 0)
            .then(|| (rss_after as f64 - rss_before as f64) / held as f64),
        kernel_per_conn_bytes: kernel.server_end_per_conn_bytes,
        kernel,
        server_open_fds,
        server_open_files_limit,
        // The caller subtracts the reading from before.
        sockstat_delta: sockstat_after,
        mem_available_after_bytes: mem_available_bytes(),
        push_server_delivered: server_delivered,
        push_received: snap.received,
        push_duplicates: snap.duplicates,
        push_missing: missing,
        push_time_to_last_ms: (snap.last_recv_ns > 0)
            .then(|| snap.last_recv_ns.saturating_sub(sent_ns) as f64 / 1e6),
        push_receive_ms: receive_ms,
        ok: established == args.conns
            && held == established
            && missing == 0
            && snap.duplicates == 0,
    })
}

/// `(first_index, count)` slices of at most `batch`.
fn batches(conns: u64, batch: u64) -> Vec<(u64, u64)> {
    (0..conns.div_ceil(batch))
        .map(|i| (i * batch, batch.min(conns - i * batch)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_connection_once() {
        assert_eq!(
            batches(1_000_000, 16_000).len(),
            63,
            "62 full workers and one of 8,000"
        );
        assert_eq!(batches(1_000_000, 16_000)[62], (992_000, 8_000));
        assert_eq!(batches(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(batches(8, 4), vec![(0, 4), (4, 4)]);
    }
}
