//! `pushgate-bench idle`: hold N idle connections and measure what each
//! costs the server — user space (RSS of all its processes) and kernel
//! ([`crate::kmem`]: slab and socket buffers, the server's end) — with
//! `--max`, keep opening until something fails and say what.
//!
//! The parent only measures and coordinates; the sockets live in worker
//! processes ([`crate::fleet`]), each with ≤ 15,000 of them, because one
//! process cannot open more than 20,000 files here. The server, with direct
//! descriptors per ring, is the one that must exceed that.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{self, Fleet, FleetSpec};
use crate::kmem::{KernelMemory, KernelReading};
use crate::procfs::{self, ListenStat, SockStat};
use crate::proto::Protocol;
use crate::server_info::{self, MetaArgs, ServerInfo};
use crate::worker::{
    Tally, CONNS_PER_WORKER_MAX, HANDSHAKE_TIMEOUT_MS_DEFAULT, INFLIGHT_MAX_DEFAULT,
};

#[path = "idle_report.rs"]
mod report;
pub use crate::fleet::{run_worker, split, WorkerArgs, WorkerMessage};
pub use report::{render_table, HoldSummary, IdleReport, LatencySummary};
use report::{write_json, write_json_value};

/// More workers than this on a 2-core box would only measure the scheduler.
pub(crate) const PROCS_MAX: u64 = 64;
/// How long the workers may take to exit once told to.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// `--max`: a worker stops starting connections after this many failed.
const MAX_FAILURES_PER_WORKER: u64 = 64;
/// `--max`: never fewer than this much memory left on the box.
const MEMORY_FLOOR_MIB_DEFAULT: u64 = 2048;

/// `pushgate-bench idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// The server's WebSocket listener (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// The dialect the server speaks.
    #[arg(long, value_enum, default_value_t = Protocol::Pushgate)]
    pub protocol: Protocol,
    /// The server's name in the report (default: the protocol's).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Connections to open, one distinct user (`bench-<index>`) each; with
    /// `--max`, the target at which to stop.
    #[arg(long)]
    pub conns: u64,
    /// The server process: its VmRSS and that of its descendants (Node's
    /// cluster workers) are measured.
    #[arg(long)]
    pub server_pid: u32,
    /// Other processes of the server (socket.io's redis-server),
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub server_extra_pids: Vec<u32>,
    /// File holding the server's HS256 secret (pushgate only).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The server's --run-dir; the secret file is looked up in it.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Worker processes [default: ceil(conns / 16000)].
    #[arg(long)]
    pub procs: Option<u64>,
    /// Source addresses, rotated per connection: `A` or `A-B` in 127.0.0.0/8.
    #[arg(long, default_value = "127.0.0.2-127.0.0.60")]
    pub sources: String,
    /// Total connect rate, `N` or `N/s` [default: as fast as --inflight allows].
    #[arg(long, value_parser = parse_rate)]
    pub connect_rate: Option<f64>,
    /// Handshakes in flight in all workers together; keeps bursts inside the
    /// server's listen backlog.
    #[arg(long, default_value_t = INFLIGHT_MAX_DEFAULT)]
    pub inflight: usize,
    /// A connection without its welcome by then counts as failed.
    #[arg(long, default_value_t = HANDSHAKE_TIMEOUT_MS_DEFAULT)]
    pub handshake_timeout_ms: u64,
    /// Pause between the last handshake and the second RSS reading.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// Connections opened and closed before the baseline reading, so code
    /// paged in and allocator arenas grown by the first handshakes are not
    /// counted per connection (users after the measured ones; 0 = none).
    /// Their freed slots are reused by measured connections, which lowers
    /// the result by at most warmup × ~90 B / conns: keep it small
    #[arg(long, default_value_t = 256)]
    pub warmup: u64,
    /// Keep the connections open this long after measuring.
    #[arg(long, default_value_t = 0)]
    pub hold_s: u64,
    /// Keep opening connections, a worker of --batch at a time, until one
    /// fails or --conns are held; report the maximum and what failed first.
    #[arg(long)]
    pub max: bool,
    /// `--max`: connections per worker (≤ 16,000).
    #[arg(long, default_value_t = CONNS_PER_WORKER_MAX)]
    pub batch: u64,
    /// `--max`: stop before MemAvailable drops below this (MiB).
    #[arg(long, default_value_t = MEMORY_FLOOR_MIB_DEFAULT)]
    pub memory_floor_mib: u64,
    /// `--max`: give up after this long in all.
    #[arg(long, default_value_t = 600)]
    pub max_wall_s: u64,
    /// `--max`: the server's log; its last warning or error goes in the
    /// report beside the classified failure.
    #[arg(long)]
    pub server_log: Option<PathBuf>,
    /// Also write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

/// VmRSS of the server's processes (`pids[0]` the server itself, then its
/// descendants and extras, from [`server_info::server_pids`], listed once
/// before measuring: walking /proc between the kernel readings would add
/// /proc's own inodes to them), summed; an error if the server is gone.
/// Descriptors open in all of the server's processes together, and in the
/// one with the most (each process has its own open-file limit).
pub fn server_fds(pids: &[u32]) -> Option<(u64, u64)> {
    let counts: Vec<u64> = pids
        .iter()
        .filter_map(|&p| procfs::open_fd_count(p).ok())
        .collect();
    (!counts.is_empty()).then(|| {
        (
            counts.iter().sum(),
            counts.iter().copied().max().unwrap_or(0),
        )
    })
}

pub fn server_rss_bytes(pids: &[u32]) -> Result<u64, String> {
    let Some((&pid, rest)) = pids.split_first() else {
        return Err("no server process".to_string());
    };
    let root = procfs::rss_bytes(pid).map_err(|e| format!("server pid {pid}: {e}"))?;
    let rest: u64 = rest.iter().filter_map(|&p| procfs::rss_bytes(p).ok()).sum();
    Ok(root + rest)
}

/// The last line of a log that looks like a warning or an error, without
/// terminal colours, at most 300 characters.
pub fn last_warning(log: &str) -> Option<String> {
    let strip = |line: &str| -> String {
        let mut out = String::new();
        let mut chars = line.chars();
        // Bounded by the line.
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // Bounded by the line: skip to the end of the escape.
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    log.lines()
        .rev()
        .take(10_000)
        .map(strip)
        .find(|line| {
            let lower = line.to_ascii_lowercase();
            ["warn", "error", "emfile", "too many open files", "fail"]
                .iter()
                .any(|w| lower.contains(w))
        })
        .map(|line| line.trim().chars().take(300).collect())
}

/// `N` or `N/s`, positive.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "connect rate {text:?}: want a positive number, e.g. 5000/s"
        )),
    }
}

fn spec(args: &IdleArgs) -> Result<FleetSpec, String> {
    let secret = fleet::resolve_secret_file(args.protocol, &args.secret_file, &args.run_dir)?;
    FleetSpec::new(
        &args.target,
        args.protocol,
        secret,
        &args.sources,
        args.handshake_timeout_ms,
    )
}

/// Generous: every worker settles each connection within its timeout.
fn establish_deadline(args: &IdleArgs, conns: u64) -> Instant {
    let at_rate_s = args.connect_rate.map_or(0.0, |rate| conns as f64 / rate);
    Instant::now()
        + Duration::from_millis(args.handshake_timeout_ms * 3)
        + Duration::from_secs_f64(at_rate_s + 60.0)
}

/// Opens and closes `count` connections of users not used by the
/// measurement, so the baseline is taken with the server's code paged in
/// and its allocator warmed: what is measured after is per connection.
fn warm_up(spec: &FleetSpec, args: &IdleArgs) -> Result<(), String> {
    if args.warmup == 0 {
        return Ok(());
    }
    let mut fleet = Fleet::new(spec.clone());
    let inflight = args.inflight.min(args.warmup as usize);
    let worker = fleet.spawn((args.conns, args.warmup), inflight, None)?;
    let done = fleet.await_established(&[worker], establish_deadline(args, args.warmup));
    fleet.stop(STOP_TIMEOUT);
    if done.established != args.warmup {
        return Err(format!(
            "warm-up: only {} of {} connections established ({:?})",
            done.established, args.warmup, done.failures.0
        ));
    }
    // Let the server see the closes and free what they held.
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    Ok(())
}

fn check_procs(args: &IdleArgs) -> Result<u64, String> {
    if args.conns == 0 {
        return Err("--conns must be at least 1".to_string());
    }
    if args.inflight == 0 {
        return Err("--inflight must be at least 1".to_string());
    }
    let procs = args
        .procs
        .unwrap_or(args.conns.div_ceil(CONNS_PER_WORKER_MAX))
        .max(1);
    if procs > PROCS_MAX || procs > args.conns {
        return Err(format!(
            "--procs {procs}: want 1..={}",
            PROCS_MAX.min(args.conns)
        ));
    }
    if args.conns.div_ceil(procs) > CONNS_PER_WORKER_MAX {
        return Err(format!(
            "{} connections need at least {} workers of at most {CONNS_PER_WORKER_MAX}; raise --procs",
            args.conns,
            args.conns.div_ceil(CONNS_PER_WORKER_MAX)
        ));
    }
    Ok(procs)
}

/// Runs the whole measurement. `Ok(true)`: every connection was established
/// and stayed up.
pub fn run(args: IdleArgs) -> Result<bool, String> {
    if args.max {
        return run_max(args);
    }
    let procs = check_procs(&args)?;
    let spec = spec(&args)?;
    let pid = args.server_pid;
    warm_up(&spec, &args)?;
    let extra = &args.server_extra_pids;
    let server_info = ServerInfo::read(pid, extra, &args.meta);
    let pids = server_info::server_pids(pid, extra);
    let rss_before_bytes = server_rss_bytes(&pids)?;
    let kernel_before = KernelReading::read();
    let sockstat_before = SockStat::read().map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    let listen_before = ListenStat::read().unwrap_or_default();

    let inflight_per_worker = args.inflight.div_ceil(procs as usize);
    let rate_per_worker = args.connect_rate.map(|rate| rate / procs as f64);
    let mut fleet = Fleet::new(spec);
    let mut all = Vec::new();
    for slice in fleet::split(args.conns, procs) {
        all.push(fleet.spawn(slice, inflight_per_worker, rate_per_worker)?);
    }
    let done = fleet.await_established(&all, establish_deadline(&args, args.conns));

    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let rss_after_bytes = server_rss_bytes(&pids)?;
    let kernel = KernelMemory::between(&kernel_before, &KernelReading::read(), done.established);
    let sockstat_after = SockStat::read().map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    let listen_after = ListenStat::read().unwrap_or_default();
    let server_open_fds = server_fds(&pids).map(|(sum, _)| sum);
    let server_open_files_limit = procfs::open_files_limit(pid).ok();

    let established = done.established;
    let wall_s = done.wall_s();
    let latency = done.latency_us.as_ref().expect("merged histogram");
    let sockstat_delta = sockstat_after.delta(&sockstat_before);
    let user_per_conn = (established > 0)
        .then(|| (rss_after_bytes as f64 - rss_before_bytes as f64) / established as f64);
    let mut report = IdleReport {
        scenario: "idle",
        server: args
            .server_name
            .clone()
            .unwrap_or_else(|| args.protocol.name().to_string()),
        protocol: args.protocol.name(),
        machine: crate::machine::Machine::read(),
        target: args.target.clone(),
        server_pid: pid,
        procs,
        conns_requested: args.conns,
        conns_established: established,
        conns_failed: done.failures.total(),
        failures: done.failures.clone(),
        connect_wall_ms: wall_s * 1e3,
        connect_rate_per_s: if wall_s > 0.0 {
            established as f64 / wall_s
        } else {
            0.0
        },
        handshake_latency_us: LatencySummary {
            count: latency.len(),
            p50: latency.value_at_quantile(0.50),
            p99: latency.value_at_quantile(0.99),
            max: latency.max(),
        },
        settle_ms: args.settle_ms,
        server_rss_before_bytes: rss_before_bytes,
        server_rss_after_bytes: rss_after_bytes,
        server_rss_per_conn_bytes: user_per_conn,
        kernel_per_conn_bytes: kernel.server_end_per_conn_bytes,
        total_per_conn_bytes: user_per_conn
            .zip(kernel.server_end_per_conn_bytes)
            .map(|(u, k)| u + k),
        kernel,
        server_info,
        server_open_fds,
        server_open_files_limit,
        sockstat_before,
        sockstat_after,
        sockstat_delta,
        tcp_mem_delta_bytes: sockstat_delta.tcp_mem_pages * crate::sys::page_size_bytes() as i64,
        listen_delta: listen_after.delta(&listen_before),
        hold: None,
    };
    print!("{}", render_table(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }

    if args.hold_s > 0 {
        println!("holding {} connections for {} s", established, args.hold_s);
        std::thread::sleep(Duration::from_secs(args.hold_s));
    }
    let (exit, workers_ok) = fleet.stop(STOP_TIMEOUT);
    let hold = HoldSummary {
        hold_s: args.hold_s,
        held_at_stop: exit.held_at_stop,
        dropped: exit.dropped,
        pings_answered: exit.pings_answered,
        pongs_unsent: exit.pongs_unsent,
        frames_ignored: exit.frames_ignored,
    };
    println!(
        "held at stop          {:>10}   dropped while held {}   pings answered {}",
        hold.held_at_stop,
        hold.dropped.total(),
        hold.pings_answered
    );
    for (why, n) in &hold.dropped.0 {
        println!("  dropped {n:>8}  {why}");
    }
    let all_held = hold.dropped.total() == 0;
    report.hold = Some(hold);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report.conns_failed == 0 && all_held && workers_ok)
}

/// The `--max` report.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMaxReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: crate::machine::Machine,
    pub target: String,
    pub server_pid: u32,
    pub conns_target: u64,
    pub batch: u64,
    pub workers: usize,
    /// Connections established and still open at the end.
    pub max_held: u64,
    pub reached_target: bool,
    /// Why it stopped: the first failure, classified.
    pub stopped_by: String,
    pub failures: Tally,
    pub wall_s: f64,
    pub connect_rate_per_s: f64,
    pub server_alive: bool,
    pub server_rss_before_bytes: u64,
    pub server_rss_after_bytes: Option<u64>,
    pub server_rss_per_conn_bytes: Option<f64>,
    /// The server's end in the kernel, per connection held ([`crate::kmem`]).
    pub kernel_per_conn_bytes: Option<f64>,
    pub kernel: KernelMemory,
    pub server_info: ServerInfo,
    pub server_open_fds: Option<u64>,
    pub server_open_files_limit: Option<u64>,
    pub mem_available_after_bytes: Option<u64>,
    /// The server log's last warning or error (with --server-log).
    pub server_log_hint: Option<String>,
    pub sockstat_delta: SockStat,
    pub listen_delta: ListenStat,
}

/// Names the likely cause of the first failures from the workers' reasons
/// and what the server looks like now.
pub fn classify(
    failures: &Tally,
    server_alive: bool,
    server_fds: Option<u64>,
    server_fd_limit: Option<u64>,
) -> String {
    if !server_alive {
        return "server exited".to_string();
    }
    let Some((why, n)) = failures
        .0
        .iter()
        .filter(|(why, _)| !why.starts_with("not attempted"))
        .max_by_key(|(_, n)| **n)
    else {
        return "nothing failed".to_string();
    };
    let near_fd_limit = matches!((server_fds, server_fd_limit),
        (Some(fds), Some(limit)) if fds + 64 >= limit);
    let fd_note = match (server_fds, server_fd_limit) {
        (Some(fds), Some(limit)) => format!(" (server has {fds} of {limit} files open)"),
        _ => String::new(),
    };
    let cause = if why.contains("Cannot assign requested address") || why.contains("os error 99") {
        "client port exhaustion (EADDRNOTAVAIL)".to_string()
    } else if why.contains("Too many open files") {
        "load generator fd limit (EMFILE)".to_string()
    } else if why.starts_with("status: HTTP/1.1 503") {
        "server refusal: 503 (connection cap / overload protection)".to_string()
    } else if let Some(status) = why.strip_prefix("status: ") {
        format!("server refusal: {status}")
    } else if near_fd_limit {
        format!("server fd limit{fd_note}")
    } else if why == "connect refused" {
        "server not accepting (connection refused)".to_string()
    } else if why.starts_with("timeout") || why.starts_with("kernel timeout") {
        format!("server stopped accepting or answering{fd_note}")
    } else {
        format!("{why}{fd_note}")
    };
    format!("{cause} — {n}× \"{why}\"")
}

pub(crate) fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    procfs::parse_status_kib(&text, "MemAvailable:").map(|kib| kib * 1024)
}

fn run_max(args: IdleArgs) -> Result<bool, String> {
    if args.batch == 0 || args.batch > CONNS_PER_WORKER_MAX {
        return Err(format!("--batch: want 1..={CONNS_PER_WORKER_MAX}"));
    }
    let mut spec = spec(&args)?;
    // Past the first failures the rest would only time out one by one.
    spec.stop_after_failures = Some(MAX_FAILURES_PER_WORKER);
    let pid = args.server_pid;
    let started = Instant::now();
    let wall_deadline = started + Duration::from_secs(args.max_wall_s);
    let extra = &args.server_extra_pids;
    let server_info = ServerInfo::read(pid, extra, &args.meta);
    let pids = server_info::server_pids(pid, extra);
    let rss_before_bytes = server_rss_bytes(&pids)?;
    let kernel_before = KernelReading::read();
    let sockstat_before = SockStat::read().map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    let listen_before = ListenStat::read().unwrap_or_default();
    let floor_bytes = args.memory_floor_mib << 20;
    let mut fleet = Fleet::new(spec);
    let mut held = 0u64;
    let mut failures = Tally::default();
    let mut stopped_by = String::new();
    let mut first_ns = 0u64;
    let mut done_ns = 0u64;
    // Bounded: each turn adds a worker of ≥1 connection towards the target,
    // at most PROCS_MAX of them, within the wall-clock limit.
    while held < args.conns {
        if fleet.len() as u64 >= PROCS_MAX {
            stopped_by = format!("worker limit ({PROCS_MAX} workers)");
            break;
        }
        if Instant::now() >= wall_deadline {
            stopped_by = format!("time limit ({} s)", args.max_wall_s);
            break;
        }
        if mem_available_bytes().is_some_and(|m| m < floor_bytes + (args.batch << 13)) {
            stopped_by = format!(
                "memory guard (MemAvailable near {} MiB)",
                args.memory_floor_mib
            );
            break;
        }
        if procfs::rss_bytes(pid).is_err() {
            stopped_by = "server exited".to_string();
            break;
        }
        let count = args.batch.min(args.conns - held);
        let worker = fleet.spawn((held, count), args.inflight, args.connect_rate)?;
        let done = fleet.await_established(&[worker], establish_deadline(&args, count));
        if first_ns == 0 {
            first_ns = done.first_connect_mono_ns;
        }
        done_ns = done_ns.max(done.done_mono_ns);
        held += done.established;
        println!(
            "worker {worker}: {} of {count} established, {held} held",
            done.established
        );
        if done.failures.total() > 0 {
            failures.merge(&done.failures);
            break;
        }
    }
    // What the server holds now: connections dropped meanwhile count out.
    let snapshot = fleet.command(crate::worker::Command::Count, Duration::from_secs(30));
    let max_held = snapshot.as_ref().map_or(held, |s| s.held);
    let server_alive = procfs::rss_bytes(pid).is_ok();
    // Memory first: listing the server's descriptors adds /proc inodes.
    let rss_after = server_rss_bytes(&pids).ok();
    let kernel = KernelMemory::between(&kernel_before, &KernelReading::read(), max_held);
    let fds = server_fds(&pids);
    let server_open_fds = fds.map(|(sum, _)| sum);
    let server_open_files_limit = procfs::open_files_limit(pid).ok();
    if stopped_by.is_empty() {
        stopped_by = if failures.total() > 0 || !server_alive {
            classify(
                &failures,
                server_alive,
                fds.map(|(_, most)| most),
                server_open_files_limit,
            )
        } else {
            "reached the target".to_string()
        };
    }
    let wall_s = done_ns.saturating_sub(first_ns) as f64 / 1e9;
    let report = IdleMaxReport {
        scenario: "idle-max",
        server: args
            .server_name
            .clone()
            .unwrap_or_else(|| args.protocol.name().to_string()),
        protocol: args.protocol.name(),
        machine: crate::machine::Machine::read(),
        target: args.target.clone(),
        server_pid: pid,
        conns_target: args.conns,
        batch: args.batch,
        workers: fleet.len(),
        max_held,
        reached_target: max_held >= args.conns,
        stopped_by,
        failures,
        wall_s,
        connect_rate_per_s: if wall_s > 0.0 {
            held as f64 / wall_s
        } else {
            0.0
        },
        server_alive,
        server_rss_before_bytes: rss_before_bytes,
        server_rss_after_bytes: rss_after,
        server_rss_per_conn_bytes: rss_after
            .filter(|_| max_held > 0)
            .map(|after| (after as f64 - rss_before_bytes as f64) / max_held as f64),
        kernel_per_conn_bytes: kernel.server_end_per_conn_bytes,
        kernel,
        server_info,
        server_open_fds,
        server_open_files_limit,
        mem_available_after_bytes: mem_available_bytes(),
        server_log_hint: args
            .server_log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| {
                // The tail is enough; logs can be large.
                let tail = &bytes[bytes.len().saturating_sub(1 << 20)..];
                last_warning(&String::from_utf8_lossy(tail))
            }),
        sockstat_delta: SockStat::read().unwrap_or_default().delta(&sockstat_before),
        listen_delta: ListenStat::read().unwrap_or_default().delta(&listen_before),
    };
    println!(
        "max held {} of target {}; stopped by: {}",
        report.max_held, report.conns_target, report.stopped_by
    );
    if let Some(hint) = &report.server_log_hint {
        println!("server log: {hint}");
    }
    if let Some(path) = &args.json {
        write_json_value(path, &report)?;
    }
    if args.hold_s > 0 {
        std::thread::sleep(Duration::from_secs(args.hold_s));
    }
    fleet.stop(STOP_TIMEOUT);
    Ok(true)
}

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
