//! `pushgate-bench idle`: hold N idle authenticated connections and measure
//! what the server's user space pays for each.
//!
//! The parent only measures and coordinates; the sockets live in worker
//! processes (this same binary, `idle-worker`), each with ≤ 15,000 of them,
//! because one process cannot open more than 20,000 files here. The server,
//! with direct descriptors per ring, is the one that must exceed that.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use clap::{ArgGroup, Args};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::procfs::{self, ListenStat, SockStat};
use crate::sources::{parse_sources, parse_target};
use crate::token;
use crate::worker::{
    EstablishReport, HoldReport, Tally, Worker, WorkerConfig, CONNS_PER_WORKER_MAX,
    HANDSHAKE_TIMEOUT_MS_DEFAULT, INFLIGHT_MAX_DEFAULT, LATENCY_MAX_US,
};

#[path = "idle_report.rs"]
mod report;
use report::write_json;
pub use report::{render_table, HoldSummary, IdleReport, LatencySummary};

/// More workers than this on a 2-core box would only measure the scheduler.
const PROCS_MAX: u64 = 64;
/// A worker's report line holds a few thousand histogram buckets at most.
const REPORT_LINE_MAX_BYTES: u64 = 4 << 20;

/// `pushgate-bench idle`.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("secret").required(true).args(["secret_file", "run_dir"])))]
pub struct IdleArgs {
    /// The server's WebSocket listener (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// Connections to open, one distinct user (`bench-<index>`) each.
    #[arg(long)]
    pub conns: u64,
    /// The server process whose VmRSS is measured.
    #[arg(long)]
    pub server_pid: u32,
    /// File holding the server's HS256 secret (64 hex chars; used as text).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The server's --run-dir; the secret file is looked up in it.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Worker processes [default: ceil(conns / 15000)].
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
    /// Also write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `pushgate-bench idle-worker`: one slice of connections; spawned by `idle`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub target: String,
    #[arg(long)]
    pub secret_file: PathBuf,
    #[arg(long)]
    pub sources: String,
    #[arg(long)]
    pub first_index: u64,
    #[arg(long)]
    pub count: u64,
    /// This worker's share of the rate, connections per second.
    #[arg(long)]
    pub connect_rate: Option<f64>,
    #[arg(long)]
    pub inflight: usize,
    #[arg(long)]
    pub handshake_timeout_ms: u64,
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

/// One line of a worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMessage {
    Established(EstablishReport),
    Exit(HoldReport),
    Error { message: String },
}

fn emit(message: &WorkerMessage) -> io::Result<()> {
    let mut line = serde_json::to_string(message).map_err(io::Error::other)?;
    line.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

/// The worker process: establish, report, hold until stdin closes, report.
pub fn run_worker(args: WorkerArgs) -> Result<(), String> {
    let result = worker_inner(&args);
    if let Err(message) = &result {
        // The parent reads stdout; say it there too so it can attribute it.
        let _ = emit(&WorkerMessage::Error {
            message: message.clone(),
        });
    }
    result
}

fn worker_inner(args: &WorkerArgs) -> Result<(), String> {
    let target = parse_target(&args.target)?;
    let sources = parse_sources(&args.sources)?;
    let secret = token::read_secret(&args.secret_file)?;
    let mut config = WorkerConfig::new(target, sources, args.first_index, args.count);
    config.connect_rate_per_s = args.connect_rate;
    config.inflight_max = args.inflight;
    config.handshake_timeout_ms = args.handshake_timeout_ms;
    let stop = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| format!("stdin: {e}"))?;
    let mut worker = Worker::new(config, Some(stop)).map_err(|e| e.to_string())?;
    let now_unix_s = token::now_unix_s();
    let report = worker
        .establish(&mut |index| token::mint(&secret, index, now_unix_s))
        .map_err(|e| format!("establish: {e}"))?;
    emit(&WorkerMessage::Established(report)).map_err(|e| format!("stdout: {e}"))?;
    let hold = worker.hold().map_err(|e| format!("hold: {e}"))?;
    emit(&WorkerMessage::Exit(hold)).map_err(|e| format!("stdout: {e}"))?;
    Ok(())
}

struct Spawned {
    child: Child,
    stdout: BufReader<ChildStdout>,
    count: u64,
}

/// Splits `conns` into `procs` contiguous slices `(first_index, count)`,
/// sizes differing by at most one.
pub fn split(conns: u64, procs: u64) -> Vec<(u64, u64)> {
    let base = conns / procs;
    let extra = conns % procs;
    let mut first = 0;
    (0..procs)
        .map(|i| {
            let count = base + u64::from(i < extra);
            let slice = (first, count);
            first += count;
            slice
        })
        .collect()
}

fn resolve_secret_file(args: &IdleArgs) -> Result<PathBuf, String> {
    match (&args.secret_file, &args.run_dir) {
        (Some(file), _) => Ok(file.clone()),
        (None, Some(dir)) => token::secret_file_in_run_dir(dir),
        (None, None) => Err("give --secret-file or --run-dir".to_string()),
    }
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> Result<WorkerMessage, String> {
    let mut line = String::new();
    let read = stdout
        .take(REPORT_LINE_MAX_BYTES)
        .read_line(&mut line)
        .map_err(|e| format!("reading its report: {e}"))?;
    if read == 0 {
        return Err("exited without a report".to_string());
    }
    serde_json::from_str(&line).map_err(|e| format!("unreadable report: {e}"))
}

/// Runs the whole measurement. `Ok(true)`: every connection was established
/// and stayed up.
/// Starts one `idle-worker` process for users `first_index..first_index+count`.
fn spawn_worker(
    exe: &Path,
    target: &str,
    secret_file: &Path,
    args: &IdleArgs,
    (first_index, count): (u64, u64),
    inflight_per_worker: usize,
    rate_per_worker: Option<f64>,
) -> Result<Spawned, String> {
    let mut command = Command::new(exe);
    command
        .arg("idle-worker")
        .arg("--target")
        .arg(target)
        .arg("--secret-file")
        .arg(secret_file)
        .arg("--sources")
        .arg(&args.sources)
        .arg("--first-index")
        .arg(first_index.to_string())
        .arg("--count")
        .arg(count.to_string())
        .arg("--inflight")
        .arg(inflight_per_worker.to_string())
        .arg("--handshake-timeout-ms")
        .arg(args.handshake_timeout_ms.to_string());
    if let Some(rate) = rate_per_worker {
        command.arg("--connect-rate").arg(rate.to_string());
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning a worker: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    Ok(Spawned {
        child,
        stdout: BufReader::new(stdout),
        count,
    })
}

/// Opens and closes `count` connections of users not used by the
/// measurement, so the baseline is taken with the server's code paged in
/// and its allocator warmed: what is measured after is per connection.
fn warm_up(exe: &Path, target: &str, secret_file: &Path, args: &IdleArgs) -> Result<(), String> {
    if args.warmup == 0 {
        return Ok(());
    }
    let inflight = args.inflight.min(args.warmup as usize);
    let mut worker = spawn_worker(
        exe,
        target,
        secret_file,
        args,
        (args.conns, args.warmup),
        inflight,
        None,
    )?;
    let outcome = read_line(&mut worker.stdout);
    drop(worker.child.stdin.take()); // closing stdin makes the worker close its sockets
    let _ = worker.child.wait();
    match outcome {
        Ok(WorkerMessage::Established(report)) if report.established == args.warmup => {}
        Ok(WorkerMessage::Established(report)) => {
            return Err(format!(
                "warm-up: only {} of {} connections established",
                report.established, args.warmup
            ))
        }
        Ok(_) => return Err("warm-up worker did not establish".to_string()),
        Err(why) => return Err(format!("warm-up: {why}")),
    }
    // Let the server see the closes and free what they held.
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    Ok(())
}

pub fn run(args: IdleArgs) -> Result<bool, String> {
    let target = parse_target(&args.target)?;
    parse_sources(&args.sources)?;
    let secret_file = resolve_secret_file(&args)?;
    let secret_file = std::fs::canonicalize(&secret_file)
        .map_err(|e| format!("{}: {e}", secret_file.display()))?;
    // Fail here, once, rather than in every worker.
    token::read_secret(&secret_file)?;
    if args.conns == 0 {
        return Err("--conns must be at least 1".to_string());
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
    if args.inflight == 0 {
        return Err("--inflight must be at least 1".to_string());
    }
    let pid = args.server_pid;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    warm_up(&exe, &target.to_string(), &secret_file, &args)?;
    let rss_before_bytes = procfs::rss_bytes(pid).map_err(|e| format!("server pid {pid}: {e}"))?;
    let sockstat_before = SockStat::read().map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    let listen_before = ListenStat::read().unwrap_or_default();

    let inflight_per_worker = args.inflight.div_ceil(procs as usize);
    let rate_per_worker = args.connect_rate.map(|rate| rate / procs as f64);
    let mut workers = Vec::with_capacity(procs as usize);
    for (first_index, count) in split(args.conns, procs) {
        let spawned = spawn_worker(
            &exe,
            &target.to_string(),
            &secret_file,
            &args,
            (first_index, count),
            inflight_per_worker,
            rate_per_worker,
        )?;
        workers.push(spawned);
    }

    let mut established = 0;
    let mut failures = Tally::default();
    let mut latency_us =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds");
    let mut first_ns = u64::MAX;
    let mut done_ns = 0;
    for (i, worker) in workers.iter_mut().enumerate() {
        match read_line(&mut worker.stdout) {
            Ok(WorkerMessage::Established(report)) => {
                established += report.established;
                failures.merge(&report.failures);
                for (value, count) in report.latency_us {
                    latency_us.saturating_record_n(value, count);
                }
                first_ns = first_ns.min(report.first_connect_mono_ns);
                done_ns = done_ns.max(report.done_mono_ns);
            }
            Ok(WorkerMessage::Error { message }) => {
                eprintln!("worker {i}: {message}");
                failures.add_n(format!("worker error: {message}"), worker.count);
            }
            Ok(WorkerMessage::Exit(_)) => {
                failures.add_n("worker exited early".to_string(), worker.count);
            }
            Err(why) => {
                eprintln!("worker {i}: {why}");
                failures.add_n(format!("worker failed: {why}"), worker.count);
            }
        }
    }

    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let rss_after_bytes = procfs::rss_bytes(pid).map_err(|e| format!("server pid {pid}: {e}"))?;
    let sockstat_after = SockStat::read().map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    let listen_after = ListenStat::read().unwrap_or_default();
    let server_open_fds = procfs::open_fd_count(pid).ok();
    let server_open_files_limit = procfs::open_files_limit(pid).ok();

    let wall_ns = done_ns.saturating_sub(first_ns);
    let wall_s = wall_ns as f64 / 1e9;
    let sockstat_delta = sockstat_after.delta(&sockstat_before);
    let mut report = IdleReport {
        target: target.to_string(),
        server_pid: pid,
        procs,
        conns_requested: args.conns,
        conns_established: established,
        conns_failed: failures.total(),
        failures,
        connect_wall_ms: wall_ns as f64 / 1e6,
        connect_rate_per_s: if wall_s > 0.0 {
            established as f64 / wall_s
        } else {
            0.0
        },
        handshake_latency_us: LatencySummary {
            count: latency_us.len(),
            p50: latency_us.value_at_quantile(0.50),
            p99: latency_us.value_at_quantile(0.99),
            max: latency_us.max(),
        },
        settle_ms: args.settle_ms,
        server_rss_before_bytes: rss_before_bytes,
        server_rss_after_bytes: rss_after_bytes,
        server_rss_per_conn_bytes: (established > 0)
            .then(|| (rss_after_bytes as f64 - rss_before_bytes as f64) / established as f64),
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
    let mut hold = HoldSummary {
        hold_s: args.hold_s,
        held_at_stop: 0,
        dropped: Tally::default(),
        pings_answered: 0,
        pongs_unsent: 0,
        frames_ignored: 0,
    };
    // Closing stdin is the stop signal; then collect each exit line.
    for worker in &mut workers {
        drop(worker.child.stdin.take());
    }
    let mut workers_ok = true;
    for (i, worker) in workers.iter_mut().enumerate() {
        if let Ok(WorkerMessage::Exit(exit)) = read_line(&mut worker.stdout) {
            hold.held_at_stop += exit.held_at_stop;
            hold.dropped.merge(&exit.dropped);
            hold.pings_answered += exit.pings_answered;
            hold.pongs_unsent += exit.pongs_unsent;
            hold.frames_ignored += exit.frames_ignored;
        }
        match worker.child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("worker {i}: {status}");
                workers_ok = false;
            }
            Err(e) => {
                eprintln!("worker {i}: wait: {e}");
                workers_ok = false;
            }
        }
    }
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

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
