//! `pushgate-bench cluster`: the homing workload over several hosts of one
//! cluster (issue 11): clients spread evenly over the hosts, every push
//! entering one host for recipients on the *other* hosts.
//!
//! - Host `h` holds the users of the `h`-th equal slice of `bench-0..N`.
//! - Each user receives from exactly one entry host: the users of host `h`
//!   at an even offset in its slice from host `h+1`, at an odd one from
//!   host `h+2` (mod hosts). So each entry host pushes to users on every
//!   other host, never its own, and each user's pushes come from one
//!   publisher in one order — the clients check per user that the sequence
//!   numbers rise (loss, duplicates and reordering are counted as in
//!   `homing`).
//! - One publisher thread per entry host (pushgate: that host's push
//!   sockets, each request written at once, as the latency scenario does;
//!   peers: that process's control connection), each as fast as a shared
//!   end-to-end window allows (deliveries sent and not yet received, over
//!   all clients), strictly: a push waits while the window is full.
//! - CPU is read separately for the gateways (each host's process and its
//!   descendants) and for the Redis processes, per million deliveries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{self, Fleet, FleetSpec};
use crate::machine::{self, Machine};
use crate::payload;
use crate::procfs;
use crate::proto::Protocol;
use crate::publish::{Item, Publisher, Totals};
use crate::push::{await_receipt, LatencyMs, QUIET, SNAPSHOT_TIMEOUT, STOP_TIMEOUT};
use crate::server_info::{self, MetaArgs, ServerInfo};
use crate::sys;
use crate::worker::{Command, Tally, CONNS_PER_WORKER_MAX};

/// Hosts a cluster run spreads over, at most.
const HOSTS_MAX: usize = 16;
mod layout;

pub use layout::Layout;
use layout::PoolTargets;

/// A publisher waits at most this long for the window to open once.
const WINDOW_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often the main thread reads the clients' receipts for the window.
const WINDOW_POLL: Duration = Duration::from_millis(5);

/// `pushgate-bench cluster`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Each host's WebSocket listener, comma-separated (127.0.0.0/8).
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// The dialect the hosts speak.
    #[arg(long, value_enum, default_value_t = Protocol::Pushgate)]
    pub protocol: Protocol,
    #[arg(long)]
    pub server_name: Option<String>,
    /// The gateway processes (each with its descendants: Node's workers).
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateway_pids: Vec<u32>,
    /// The Redis processes.
    #[arg(long, value_delimiter = ',')]
    pub redis_pids: Vec<u32>,
    /// pushgate: each host's --run-dir (its push sockets), in --targets order.
    #[arg(long, value_delimiter = ',')]
    pub run_dirs: Vec<PathBuf>,
    /// pushgate: the secret file every host shares (tokens).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Peers: each host's control address, in --targets order.
    #[arg(long, value_delimiter = ',')]
    pub control: Vec<String>,
    /// Clients, one distinct user each, spread evenly over the hosts.
    #[arg(long)]
    pub conns: u64,
    /// Users each push goes to (distinct, random among those the entry
    /// host pushes to).
    #[arg(long, default_value_t = 300)]
    pub fanout: u32,
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    #[arg(long, default_value_t = 15.0)]
    pub drain_s: f64,
    /// Deliveries sent and not yet received, over all clients [default:
    /// 32 × clients, within 20,000..=200,000].
    #[arg(long)]
    pub window_deliveries: Option<u64>,
    #[arg(long, default_value = "127.0.0.2-127.0.0.60")]
    pub sources: String,
    #[arg(long, default_value_t = 512)]
    pub inflight: usize,
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

/// The end-to-end window all publisher threads share: the main thread
/// stores what the clients received, each publisher adds what it targets.
struct Window {
    targeted: AtomicU64,
    received: AtomicU64,
    deliveries: u64,
}

impl Window {
    /// Blocks (bounded) while more than the window is in flight, until at
    /// most half of it is. Strict: every publisher sends each push the
    /// moment it is drawn (nothing waits in a batch buffer), so what is in
    /// flight can always arrive.
    fn wait(&self) {
        let in_flight = || {
            self.targeted
                .load(Relaxed)
                .saturating_sub(self.received.load(Relaxed))
        };
        if in_flight() <= self.deliveries {
            return;
        }
        let started = Instant::now();
        // Bounded by WINDOW_WAIT_MAX.
        while started.elapsed() < WINDOW_WAIT_MAX && in_flight() > self.deliveries / 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One entry host's pushes: until `end`, sequence numbers `next_seq`,
/// `next_seq + hosts`, … so they rise per user across phases.
struct EntryPushes<'a> {
    targets: &'a mut PoolTargets,
    window: &'a Window,
    next_seq: &'a mut u64,
    stride: u64,
    payload_bytes: usize,
    end: Instant,
    pushes: u64,
}

impl Iterator for EntryPushes<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        self.window.wait();
        if Instant::now() >= self.end {
            return None;
        }
        let users = self.targets.next();
        self.window.targeted.fetch_add(users.len() as u64, Relaxed);
        let seq = *self.next_seq;
        *self.next_seq += self.stride;
        self.pushes += 1;
        Some(Item {
            users,
            data: payload::make(seq, sys::monotonic_ns(), self.payload_bytes),
        })
    }
}

/// One entry host's publisher and what carries over between phases.
struct Entry {
    publisher: Publisher,
    targets: PoolTargets,
    next_seq: u64,
}

/// CPU seconds so far: gateways, Redis, load generator.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    gateways_s: f64,
    redis_s: f64,
    loadgen_s: f64,
}

impl Cpu {
    fn read(args: &ClusterArgs, fleet: &Fleet) -> Cpu {
        let sum = |pids: Vec<u32>| -> f64 {
            pids.into_iter()
                .map(|pid| procfs::cpu_seconds(pid).unwrap_or(0.0))
                .sum()
        };
        let (first, rest) = args.gateway_pids.split_first().expect("checked");
        let mut loadgen = vec![std::process::id()];
        loadgen.extend(fleet.pids());
        Cpu {
            gateways_s: sum(server_info::server_pids(*first, rest)),
            redis_s: sum(args.redis_pids.clone()),
            loadgen_s: sum(loadgen),
        }
    }
}

/// CPU used over a measured phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClusterCpu {
    pub wall_s: f64,
    pub gateways_s: f64,
    pub redis_s: f64,
    pub loadgen_s: f64,
    /// Everything measured ÷ (cores × wall): near 1, the box was saturated.
    pub box_busy_fraction: f64,
}

/// One phase, sent and received.
struct Phase {
    pushes: u64,
    targeted: u64,
    totals: Totals,
    push_wall_s: f64,
    delivery_wall_s: f64,
    snap: fleet::FleetSnapshot,
    unique: u64,
    lost: i64,
    cpu: ClusterCpu,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub hosts: usize,
    pub targets: Vec<String>,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub connect_failures: Tally,
    pub fanout: u32,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub window_deliveries: u64,
    pub pushes: u64,
    pub targeted: u64,
    /// Recipients on the host the push entered (0 by construction).
    pub targeted_on_entry_host: u64,
    pub server_totals: Totals,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unstamped: u64,
    pub lost: i64,
    pub push_wall_s: f64,
    pub delivery_wall_s: f64,
    pub pushes_per_s: f64,
    pub deliveries_per_s: f64,
    pub cpu: ClusterCpu,
    pub gateways_cpu_s_per_million: Option<f64>,
    pub redis_cpu_s_per_million: Option<f64>,
    /// Gateways and Redis together.
    pub server_cpu_s_per_million: Option<f64>,
    pub latency_ms: LatencyMs,
    pub load_average: Option<[f64; 3]>,
    pub dropped_connections: Tally,
    pub ok: bool,
}

fn check(args: &ClusterArgs) -> Result<(), String> {
    let hosts = args.targets.len();
    if !(2..=HOSTS_MAX).contains(&hosts) {
        return Err(format!("--targets: want 2 to {HOSTS_MAX} hosts"));
    }
    if args.gateway_pids.is_empty() {
        return Err("--gateway-pids: at least one".to_string());
    }
    match args.protocol {
        Protocol::Pushgate if args.run_dirs.len() != hosts => {
            return Err("--run-dirs: one per host, in --targets order".to_string())
        }
        Protocol::Pushgate => {}
        _ if args.control.len() != hosts => {
            return Err("--control: one per host, in --targets order".to_string())
        }
        _ => {}
    }
    if args.conns < 2 * hosts as u64 || args.conns > u64::from(u32::MAX) {
        return Err(format!("--conns: want 2 × hosts ({}) or more", 2 * hosts));
    }
    if args.fanout == 0 {
        return Err("--fanout: at least 1".to_string());
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        return Err("--duration-s: want (0, 3600]".to_string());
    }
    Ok(())
}

pub fn run(args: ClusterArgs) -> Result<bool, String> {
    check(&args)?;
    let hosts = args.targets.len();
    let layout = Layout::new(args.conns, hosts);
    let secret = match args.protocol.needs_token() {
        true => Some(
            args.secret_file
                .clone()
                .ok_or("pushgate needs --secret-file (shared by every host)")?,
        ),
        false => None,
    };
    let spec = FleetSpec::new(
        &args.targets[0],
        args.protocol,
        secret,
        &args.sources,
        args.handshake_timeout_ms,
    )?;
    let mut fleet = Fleet::new(spec);
    let mut workers = Vec::new();
    let workers_per_host = |count: u64| count.div_ceil(CONNS_PER_WORKER_MAX).max(1);
    let total_workers: u64 = layout.slices.iter().map(|s| workers_per_host(s.1)).sum();
    let inflight = args.inflight.div_ceil(total_workers as usize);
    for (host, &(first, count)) in layout.slices.iter().enumerate() {
        for (offset, n) in fleet::split(count, workers_per_host(count)) {
            workers.push(fleet.spawn_at(
                &args.targets[host],
                (first + offset, n),
                inflight,
                None,
            )?);
        }
    }
    let deadline = Instant::now()
        + Duration::from_millis(args.handshake_timeout_ms * 3)
        + Duration::from_secs(60);
    let established = fleet.await_established(&workers, deadline);
    let server = args
        .server_name
        .clone()
        .unwrap_or_else(|| args.protocol.name().to_string());
    println!(
        "{server}: {} of {} clients connected to {hosts} hosts in {:.2} s",
        established.established,
        args.conns,
        established.wall_s()
    );
    for (why, n) in &established.failures.0 {
        println!("  failed {n:>8}  {why}");
    }
    let all_online = established.established == args.conns;
    let server_info = ServerInfo::read(args.gateway_pids[0], &extra_pids(&args), &args.meta);
    let mut entries = match connect_entries(&args, &layout) {
        Ok(entries) => entries,
        Err(e) => {
            fleet.stop(STOP_TIMEOUT);
            return Err(e);
        }
    };
    let window = args
        .window_deliveries
        .unwrap_or_else(|| (args.conns * 32).clamp(20_000, 200_000));
    let result = (|| {
        if args.warmup_s > 0.0 {
            let warm = phase(&args, &mut fleet, &mut entries, window, args.warmup_s)?;
            println!(
                "warm-up: {} pushes, {} of {} delivered in {:.2} s (not measured)",
                warm.pushes, warm.unique, warm.targeted, warm.delivery_wall_s
            );
        }
        phase(&args, &mut fleet, &mut entries, window, args.duration_s)
    })();
    drop(entries);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let phase = result?;
    let mut dropped = Tally::default();
    dropped.merge(&exit.dropped);
    let per_million = |cpu_s: f64| (phase.unique > 0).then(|| cpu_s / (phase.unique as f64 / 1e6));
    let report = ClusterReport {
        scenario: "cluster",
        server,
        protocol: args.protocol.name(),
        machine: Machine::read(),
        server_info,
        hosts,
        targets: args.targets.clone(),
        conns_requested: args.conns,
        conns_established: established.established,
        connect_failures: established.failures.clone(),
        fanout: args.fanout,
        payload_bytes: args.payload_bytes,
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        window_deliveries: window,
        pushes: phase.pushes,
        targeted: phase.targeted,
        targeted_on_entry_host: 0,
        server_totals: phase.totals,
        received: phase.snap.received,
        duplicates: phase.snap.duplicates,
        reordered: phase.snap.reordered,
        unstamped: phase.snap.unstamped,
        lost: phase.lost,
        push_wall_s: phase.push_wall_s,
        delivery_wall_s: phase.delivery_wall_s,
        pushes_per_s: phase.pushes as f64 / phase.push_wall_s.max(1e-9),
        deliveries_per_s: phase.unique as f64 / phase.delivery_wall_s.max(1e-9),
        cpu: phase.cpu,
        gateways_cpu_s_per_million: per_million(phase.cpu.gateways_s),
        redis_cpu_s_per_million: per_million(phase.cpu.redis_s),
        server_cpu_s_per_million: per_million(phase.cpu.gateways_s + phase.cpu.redis_s),
        latency_ms: LatencyMs::of(phase.snap.latency_us.as_ref().expect("full snapshot")),
        load_average: procfs::loadavg(),
        ok: phase.lost == 0
            && phase.snap.duplicates == 0
            && phase.snap.reordered == 0
            && all_online
            && dropped.total() == 0,
        dropped_connections: dropped,
    };
    println!(
        "{} cluster ({hosts} hosts): {} pushes × {} users in {:.2} s = {:.0} deliveries/s; lost {} duplicates {} \
         reordered {}; latency p50 {:.2} ms p99 {:.2} ms; CPU per M deliveries: gateways {:.2} s, Redis {:.2} s; \
         box busy {:.0} %",
        report.server,
        report.pushes,
        report.fanout,
        report.push_wall_s,
        report.deliveries_per_s,
        report.lost,
        report.duplicates,
        report.reordered,
        report.latency_ms.p50,
        report.latency_ms.p99,
        report.gateways_cpu_s_per_million.unwrap_or(f64::NAN),
        report.redis_cpu_s_per_million.unwrap_or(f64::NAN),
        report.cpu.box_busy_fraction * 100.0
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &args.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

/// Every gateway after the first, and the Redis processes: what the
/// report lists as the server's processes.
fn extra_pids(args: &ClusterArgs) -> Vec<u32> {
    let mut extra = args.gateway_pids[1..].to_vec();
    extra.extend(&args.redis_pids);
    extra
}

fn connect_entries(args: &ClusterArgs, layout: &Layout) -> Result<Vec<Entry>, String> {
    let hosts = args.targets.len();
    (0..hosts)
        .map(|entry| {
            let publisher = match args.protocol {
                Protocol::Pushgate | Protocol::PushgateDeflate => {
                    Publisher::connect(args.protocol, Some(&args.run_dirs[entry]), &[])?
                }
                _ => Publisher::connect(args.protocol, None, &args.control[entry..=entry])?,
            };
            Ok(Entry {
                publisher,
                targets: PoolTargets::new(layout.pools[entry].clone(), args.fanout),
                next_seq: 1 + entry as u64,
            })
        })
        .collect()
}

/// Pushes through every entry host at once for `duration_s`, then waits
/// for the deliveries and measures.
fn phase(
    args: &ClusterArgs,
    fleet: &mut Fleet,
    entries: &mut [Entry],
    window: u64,
    duration_s: f64,
) -> Result<Phase, String> {
    fleet.command(Command::Reset, SNAPSHOT_TIMEOUT)?;
    let cpu_before = Cpu::read(args, fleet);
    let started = Instant::now();
    let start_ns = sys::monotonic_ns();
    let end = started + Duration::from_secs_f64(duration_s);
    let shared = Window {
        targeted: AtomicU64::new(0),
        received: AtomicU64::new(0),
        deliveries: window,
    };
    let running = AtomicUsize::new(entries.len());
    let stride = entries.len() as u64;
    let payload_bytes = args.payload_bytes;
    let (sent, poll_error) = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .iter_mut()
            .map(|entry| {
                let (shared, running) = (&shared, &running);
                scope.spawn(move || {
                    let mut items = EntryPushes {
                        targets: &mut entry.targets,
                        window: shared,
                        next_seq: &mut entry.next_seq,
                        stride,
                        payload_bytes,
                        end,
                        pushes: 0,
                    };
                    let totals = entry.publisher.push_each(&mut items);
                    let pushes = items.pushes;
                    running.fetch_sub(1, Relaxed);
                    totals.map(|t| (t, pushes))
                })
            })
            .collect();
        // The window's receipts, while any publisher runs; bounded by the
        // phase's end plus the publishers' last replies.
        let mut poll_error = None;
        while running.load(Relaxed) > 0 {
            match fleet.command(Command::Count, SNAPSHOT_TIMEOUT) {
                Ok(count) => shared.received.store(count.received, Relaxed),
                Err(e) => {
                    // Publishers stop waiting on a stalled window by
                    // themselves (WINDOW_WAIT_MAX); report the error after
                    // they end.
                    poll_error.get_or_insert(e);
                }
            }
            std::thread::sleep(WINDOW_POLL);
        }
        let sent: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a publisher panicked".into()))
            })
            .collect();
        (sent, poll_error)
    });
    if let Some(e) = poll_error {
        return Err(e);
    }
    let push_wall_s = started.elapsed().as_secs_f64();
    let mut totals = Totals::default();
    let mut pushes = 0;
    for result in sent {
        let (t, n) = result?;
        totals.delivered += t.delivered;
        totals.stored += t.stored;
        totals.rejected += t.rejected;
        pushes += n;
    }
    let targeted = shared.targeted.load(Relaxed);
    let snap = await_receipt(
        fleet,
        targeted,
        QUIET,
        Duration::from_secs_f64(args.drain_s),
    )?;
    let after = Cpu::read(args, fleet);
    let wall_s = started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let gateways_s = after.gateways_s - cpu_before.gateways_s;
    let redis_s = after.redis_s - cpu_before.redis_s;
    let loadgen_s = after.loadgen_s - cpu_before.loadgen_s;
    let unique = snap.received - snap.duplicates;
    let delivery_wall_s = if snap.last_recv_ns > start_ns {
        (snap.last_recv_ns - start_ns) as f64 / 1e9
    } else {
        push_wall_s
    };
    Ok(Phase {
        pushes,
        targeted,
        totals,
        push_wall_s,
        delivery_wall_s: delivery_wall_s.max(push_wall_s),
        lost: targeted as i64 - unique as i64,
        unique,
        snap,
        cpu: ClusterCpu {
            wall_s,
            gateways_s,
            redis_s,
            loadgen_s,
            box_busy_fraction: (gateways_s + redis_s + loadgen_s) / (cores * wall_s.max(1e-9)),
        },
    })
}
