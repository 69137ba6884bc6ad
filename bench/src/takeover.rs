//! `pushgate-bench takeover`: a live binary upgrade under load. N
//! connections (one distinct user each) are held while pushes go to
//! random users at a steady rate (`--pushes-per-s`, one publisher
//! connection held throughout: the client library, which resends what the
//! old process left unanswered to the successor), or broadcasts do
//! (`--rate-per-s`); midway `pushgate upgrade` moves every connection to
//! a successor process. Counted at the clients, per device: pushes
//! duplicated and out of order (summed), and lost (expected minus
//! distinct received), disconnects, and the push→receive latency before
//! the upgrade, during it (`pushgate upgrade` start to outcome) and after
//! (the extra latency is during − before); a push's latency counts from
//! the moment it was due, so a publisher held up by the hand-over shows.
//! At the servers: the hand-over's time and both processes' peak memory.
//!
//! Each broadcast uses a fresh publisher connection (as before pushes
//! moved: comparable with the earlier results).

use std::path::PathBuf;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetSnapshot, FleetSpec};
use crate::machine::{self, Machine};
use crate::payload;
use crate::procfs;
use crate::proto::Protocol;
use crate::publish::{Item, Publisher};
use crate::push::LatencyMs;
use crate::server_info::{MetaArgs, ServerInfo};
use crate::sys;
use crate::worker::{Command, Tally, CONNS_PER_WORKER_MAX};

const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often both processes' memory is read during the upgrade.
const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Args, Debug, Clone)]
pub struct TakeoverArgs {
    /// The server's WebSocket listener (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// The running (old) server process.
    #[arg(long)]
    pub server_pid: u32,
    /// The server's --run-dir (secret for tokens, push sockets, take-over).
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The `pushgate` binary whose `upgrade` command is run.
    #[arg(long, default_value = "pushgate")]
    pub pushgate: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub conns: u64,
    /// Connections per worker process (≤ 16,000).
    #[arg(long, default_value_t = CONNS_PER_WORKER_MAX)]
    pub batch: u64,
    #[arg(long, default_value = "127.0.0.2-127.0.0.200")]
    pub sources: String,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 512)]
    pub inflight: usize,
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Broadcasts per second (each reaches every connection); 0: none.
    /// Not with --pushes-per-s (both number their payloads).
    #[arg(long, default_value_t = 0.0)]
    pub rate_per_s: f64,
    /// Pushes per second, each to one random user (one connection).
    #[arg(long, default_value_t = 1_000.0)]
    pub pushes_per_s: f64,
    /// Seconds of broadcasts before the upgrade.
    #[arg(long, default_value_t = 10)]
    pub before_s: u64,
    /// Seconds of broadcasts after the upgrade command returned.
    #[arg(long, default_value_t = 10)]
    pub after_s: u64,
    #[arg(long, default_value_t = 120)]
    pub receipt_timeout_s: u64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeakMemory {
    pub old_rss_before_bytes: u64,
    pub old_rss_peak_bytes: u64,
    pub new_rss_peak_bytes: u64,
    /// The largest sum of both at one sample.
    pub both_rss_peak_bytes: u64,
    pub samples: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TakeoverReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub conns_requested: u64,
    pub established: u64,
    pub connect_failures: Tally,
    /// Connections still open at the end, and what closed meanwhile.
    pub held_at_end: u64,
    pub disconnects: Tally,
    pub rate_per_s: f64,
    pub broadcasts_sent: u64,
    pub broadcast_errors: u64,
    pub pushes_per_s: f64,
    /// Pushes answered (each to one random user).
    pub pushes_sent: u64,
    /// Pushes not answered, or answered rejected.
    pub push_errors: u64,
    /// Expected receipts: held × broadcasts sent + pushes sent.
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub lost: i64,
    pub reordered: u64,
    pub latency_before_ms: LatencyMs,
    /// From the upgrade's start to its outcome (received meanwhile).
    pub latency_during_ms: LatencyMs,
    /// After the outcome, to the end.
    pub latency_after_ms: LatencyMs,
    /// During − before.
    pub extra_latency_p99_ms: f64,
    pub extra_latency_max_ms: f64,
    /// `pushgate upgrade`'s wall time, start to outcome.
    pub upgrade_command_ms: f64,
    /// What the old process reported for the move ("N live connections
    /// moved to pid P in T ms").
    pub upgrade_detail: String,
    pub successor_pid: Option<u32>,
    pub memory: PeakMemory,
    pub ok: bool,
}

pub fn run(args: TakeoverArgs) -> Result<bool, String> {
    if args.batch == 0 || args.batch > CONNS_PER_WORKER_MAX {
        return Err(format!("--batch: want 1..={CONNS_PER_WORKER_MAX}"));
    }
    let broadcasting = args.rate_per_s > 0.0;
    if broadcasting == (args.pushes_per_s > 0.0) {
        return Err("want one of --rate-per-s (broadcasts) and --pushes-per-s above 0".into());
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
    let server_info = ServerInfo::read(args.server_pid, &[], &args.meta);
    let mut fleet = Fleet::new(spec);
    let result = connect_and_upgrade(&args, &mut fleet);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let mut report = result?;
    report.server_info = server_info;
    report.disconnects.merge(&exit.dropped);
    report.ok = report.ok && exit.dropped.total() == 0;
    println!(
        "takeover: {} connections; {} broadcasts at {}/s, {} pushes to random users at {}/s ({} errors): {} received of {} expected, {} lost, {} duplicated, {} reordered, {} disconnects; latency p99 {:.1} → {:.1} (during) → {:.1} ms, max {:.1} → {:.1} → {:.1} ms; upgrade {:.0} ms ({}); peak RSS old {} MiB, new {} MiB, both {} MiB; ok {}",
        report.established,
        report.broadcasts_sent,
        report.rate_per_s,
        report.pushes_sent,
        report.pushes_per_s,
        report.push_errors,
        report.received,
        report.expected,
        report.lost,
        report.duplicates,
        report.reordered,
        report.disconnects.total(),
        report.latency_before_ms.p99,
        report.latency_during_ms.p99,
        report.latency_after_ms.p99,
        report.latency_before_ms.max,
        report.latency_during_ms.max,
        report.latency_after_ms.max,
        report.upgrade_command_ms,
        report.upgrade_detail,
        report.memory.old_rss_peak_bytes >> 20,
        report.memory.new_rss_peak_bytes >> 20,
        report.memory.both_rss_peak_bytes >> 20,
        report.ok
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &args.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

fn connect_and_upgrade(args: &TakeoverArgs, fleet: &mut Fleet) -> Result<TakeoverReport, String> {
    let mut established = 0u64;
    let mut failures = Tally::default();
    for (first, count) in batches(args.conns, args.batch) {
        let worker = fleet.spawn((first, count), args.inflight, None)?;
        let deadline = Instant::now()
            + Duration::from_millis(args.handshake_timeout_ms * 3)
            + Duration::from_secs(60);
        let done = fleet.await_established(&[worker], deadline);
        established += done.established;
        println!(
            "worker {worker}: {} of {count} established, {established} in all",
            done.established
        );
        if done.failures.total() > 0 {
            failures.merge(&done.failures);
            return Err(format!("connecting failed: {:?}", done.failures));
        }
    }
    fleet.command(Command::Reset, COUNT_TIMEOUT)?;

    // Broadcasts or pushes at a steady rate until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let pushes_sent = Arc::new(AtomicU64::new(0));
    let pusher = (args.pushes_per_s > 0.0).then(|| {
        let pace = Pace {
            run_dir: args.run_dir.clone(),
            per_s: args.pushes_per_s,
            users: args.conns,
            payload_bytes: args.payload_bytes,
        };
        let (stop, sent) = (stop.clone(), pushes_sent.clone());
        std::thread::spawn(move || push_to_random_users(&pace, &stop, &sent))
    });
    let publisher = (args.rate_per_s > 0.0).then(|| {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (run_dir, rate, bytes) = (args.run_dir.clone(), args.rate_per_s, args.payload_bytes);
        std::thread::spawn(move || -> u64 {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut next = Instant::now();
            let mut errors = 0;
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let data = payload::make(seq, sys::monotonic_ns(), bytes);
                let result = Publisher::connect(Protocol::Pushgate, Some(&run_dir), &[])
                    .and_then(|mut p| p.broadcast(&data));
                match result {
                    Ok(_) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("broadcast {seq}: {e}");
                    }
                }
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            errors
        })
    });
    std::thread::sleep(Duration::from_secs(args.before_s));
    let before = fleet.command(Command::Reset, COUNT_TIMEOUT)?;

    // The upgrade, with both processes' memory sampled meanwhile.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, old) = (sampling.clone(), args.server_pid);
        std::thread::spawn(move || sample_memory(old, &sampling))
    };
    let started = Instant::now();
    let out = Process::new(&args.pushgate)
        .args(["upgrade", "--timeout", "600", "--run-dir"])
        .arg(&args.run_dir)
        .output()
        .map_err(|e| format!("running {} upgrade: {e}", args.pushgate.display()))?;
    let upgrade_command_ms = started.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    print!("{stdout}");
    let (detail, successor_pid) = upgrade_outcome(&stdout);
    let during = fleet.command(Command::Reset, COUNT_TIMEOUT)?;
    std::thread::sleep(Duration::from_secs(args.after_s));
    stop.store(true, Ordering::Relaxed);
    let broadcast_errors = match publisher {
        Some(p) => p.join().map_err(|_| "publisher panicked")?,
        None => 0,
    };
    let push_errors = match pusher {
        Some(p) => p.join().map_err(|_| "pusher panicked")?,
        None => 0,
    };
    sampling.store(false, Ordering::Relaxed);
    let memory = sampler.join().map_err(|_| "sampler panicked")?;
    let sent_total = sent.load(Ordering::Relaxed);
    let pushes_total = pushes_sent.load(Ordering::Relaxed);

    // Every broadcast must reach every connection held, every push its
    // user's one connection.
    let held = fleet.command(Command::Count, COUNT_TIMEOUT)?.held;
    let expected = held * sent_total + pushes_total;
    let so_far = before.received + during.received;
    let after = await_receipts(fleet, expected.saturating_sub(so_far), args)?;
    let received = so_far + after.received;
    let duplicates = before.duplicates + during.duplicates + after.duplicates;
    let lost = expected as i64 - (received - duplicates) as i64;
    let latency_before_ms = latency(&before);
    let latency_during_ms = latency(&during);
    let latency_after_ms = latency(&after);
    let mut disconnects = before.dropped.clone();
    disconnects.merge(&during.dropped);
    disconnects.merge(&after.dropped);
    Ok(TakeoverReport {
        scenario: "takeover",
        machine: Machine::read(),
        server_info: ServerInfo::default(),
        conns_requested: args.conns,
        established,
        connect_failures: failures,
        held_at_end: held,
        disconnects: disconnects.clone(),
        rate_per_s: args.rate_per_s,
        broadcasts_sent: sent_total,
        broadcast_errors,
        pushes_per_s: args.pushes_per_s,
        pushes_sent: pushes_total,
        push_errors,
        expected,
        received,
        duplicates,
        lost,
        reordered: before.reordered + during.reordered + after.reordered,
        extra_latency_p99_ms: latency_during_ms.p99 - latency_before_ms.p99,
        extra_latency_max_ms: latency_during_ms.max - latency_before_ms.max,
        latency_before_ms,
        latency_during_ms,
        latency_after_ms,
        upgrade_command_ms,
        upgrade_detail: detail,
        successor_pid,
        memory,
        ok: out.status.success()
            && established == args.conns
            && held == established
            && lost == 0
            && duplicates == 0
            && broadcast_errors == 0
            && push_errors == 0
            && disconnects.total() == 0,
    })
}

/// What the pusher sends: `per_s` pushes a second, each to one of `users`
/// (`bench-<i>`) at random.
struct Pace {
    run_dir: PathBuf,
    per_s: f64,
    users: u64,
    payload_bytes: usize,
}

/// Pushes longest a pusher batch holds (a second's worth at most).
const PUSH_BATCH_MAX: usize = 100_000;

/// Pushes at `pace` until `stop`, through one client-library connection
/// held throughout (pipelined, `push_many` per batch of what is due): it
/// reopens the shard socket and resends what the old process left
/// unanswered. Each payload is stamped with the time it was due, not sent.
/// Returns the pushes not answered or rejected.
fn push_to_random_users(pace: &Pace, stop: &AtomicBool, sent: &AtomicU64) -> u64 {
    let connect = || Publisher::connect(Protocol::Pushgate, Some(&pace.run_dir), &[]);
    let mut publisher = match connect() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pusher: {e}");
            return 1;
        }
    };
    let mut rng = crate::wsclient::Rng::new(sys::monotonic_ns());
    let interval_ns = 1e9 / pace.per_s;
    let start_ns = sys::monotonic_ns();
    let due_ns = |k: u64| start_ns + (k as f64 * interval_ns) as u64;
    let (mut k, mut errors) = (0u64, 0u64);
    // Bounded by the caller's stop.
    while !stop.load(Ordering::Relaxed) {
        let now_ns = sys::monotonic_ns();
        let mut items = Vec::new();
        while due_ns(k) <= now_ns && items.len() < PUSH_BATCH_MAX {
            let due = due_ns(k);
            k += 1;
            let user = (rng.next_u64() % pace.users) as u32;
            let data = payload::make(k, due, pace.payload_bytes);
            items.push(Item {
                users: vec![user],
                data,
            });
        }
        let n = items.len() as u64;
        if n > 0 {
            match publisher.push_pipelined(&mut items.into_iter()) {
                Ok(totals) => {
                    sent.fetch_add(n - totals.rejected.min(n), Ordering::Relaxed);
                    errors += totals.rejected;
                }
                Err(e) => {
                    errors += n;
                    eprintln!("pushes {}..={k}: {e}", k + 1 - n);
                    if let Ok(p) = connect() {
                        publisher = p;
                    }
                }
            }
        }
        let next = due_ns(k).saturating_sub(sys::monotonic_ns());
        std::thread::sleep(Duration::from_nanos(next.min(10_000_000)));
    }
    errors
}

/// Polls until `expected` receipts arrived since the last reset, nothing
/// new came for 5 s, or the receipt timeout passed.
fn await_receipts(
    fleet: &mut Fleet,
    expected: u64,
    args: &TakeoverArgs,
) -> Result<FleetSnapshot, String> {
    let limit = Instant::now() + Duration::from_secs(args.receipt_timeout_s);
    let (mut last, mut last_change) = (0, Instant::now());
    // Bounded by --receipt-timeout-s.
    while Instant::now() < limit {
        let count = fleet.command(Command::Count, COUNT_TIMEOUT)?;
        if count.received >= expected {
            break;
        }
        if count.received != last {
            (last, last_change) = (count.received, Instant::now());
        } else if last_change.elapsed() >= Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    fleet.command(Command::Snapshot, COUNT_TIMEOUT)
}

fn latency(snapshot: &FleetSnapshot) -> LatencyMs {
    snapshot
        .latency_us
        .as_ref()
        .map(LatencyMs::of)
        .unwrap_or_default()
}

/// The old process's "connections" step and the successor's pid, from
/// `pushgate upgrade`'s JSON lines.
fn upgrade_outcome(stdout: &str) -> (String, Option<u32>) {
    let mut detail = String::new();
    let mut pid = None;
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["step"] == "connections" {
            detail = v["detail"].as_str().unwrap_or("").to_string();
        }
        if let Some(p) = v["successor_pid"].as_u64() {
            pid = Some(p as u32);
        }
    }
    (detail, pid)
}

/// Reads the old process's RSS and its children's (the successor is its
/// child) every `MEMORY_SAMPLE_INTERVAL` until told to stop.
fn sample_memory(old: u32, sampling: &AtomicBool) -> PeakMemory {
    let mut peak = PeakMemory {
        old_rss_before_bytes: procfs::rss_bytes(old).unwrap_or(0),
        ..PeakMemory::default()
    };
    let mut successor = None;
    // Bounded by the caller's stop (after the upgrade and --after-s).
    while sampling.load(Ordering::Relaxed) {
        if successor.is_none() {
            successor = children(old).into_iter().next();
        }
        let old_rss = procfs::rss_bytes(old).unwrap_or(0);
        let new_rss = successor.map_or(0, |p| procfs::rss_bytes(p).unwrap_or(0));
        peak.old_rss_peak_bytes = peak.old_rss_peak_bytes.max(old_rss);
        peak.new_rss_peak_bytes = peak.new_rss_peak_bytes.max(new_rss);
        peak.both_rss_peak_bytes = peak.both_rss_peak_bytes.max(old_rss + new_rss);
        peak.samples += 1;
        std::thread::sleep(MEMORY_SAMPLE_INTERVAL);
    }
    peak
}

/// Child processes of `pid` (any of its threads').
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
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
    fn the_outcome_is_read_from_the_upgrade_lines() {
        let out = concat!(
            r#"{"op":"progress","step":"committed","detail":"x"}"#,
            "\n",
            r#"{"op":"progress","step":"connections","detail":"5 live connections moved to pid 9 in 3 ms"}"#,
            "\n",
            r#"{"op":"outcome","ok":true,"message":"m","successor_pid":9}"#,
            "\n"
        );
        let (detail, pid) = upgrade_outcome(out);
        assert_eq!(detail, "5 live connections moved to pid 9 in 3 ms");
        assert_eq!(pid, Some(9));
    }
}
