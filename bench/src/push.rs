//! The scenarios that push: `broadcast`, `homing` and `latency`.
//!
//! Each connects N clients (worker processes, one user each), then sends
//! through the server's publishing API — pushgate's client library, or a
//! peer's control WebSocket — data stamped with a sequence number and the
//! send time ([`crate::payload`]). The clients count what arrives, flag
//! duplicates and record the push→receive latency; the parent merges
//! their snapshots.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fleet::{self, Established, Fleet, FleetSnapshot, FleetSpec};
use crate::machine::{self, Machine};
use crate::payload;
use crate::procfs;
use crate::proto::Protocol;
use crate::publish::{Item, Publisher, Totals};
use crate::sys;
use crate::worker::{Command, Tally, CONNS_PER_WORKER_MAX};
use crate::wsclient::Rng;

const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the parent asks the workers how much has arrived.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What every push scenario needs: the server, the clients, the output.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The server's WebSocket listener (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// The dialect the server speaks.
    #[arg(long, value_enum, default_value_t = Protocol::Pushgate)]
    pub protocol: Protocol,
    /// The server's name in the report (default: the protocol's).
    #[arg(long)]
    pub server_name: Option<String>,
    /// The server process: its CPU time is measured.
    #[arg(long)]
    pub server_pid: u32,
    /// Other processes whose CPU counts as the server's (socket.io's
    /// redis-server), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub server_extra_pids: Vec<u32>,
    /// pushgate: its --run-dir (secret for tokens, push sockets).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// pushgate: the secret file, if not in --run-dir.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Peers: the control WebSocket's address [default: --target].
    #[arg(long)]
    pub control: Option<String>,
    /// Clients, one distinct user (`bench-<index>`) each.
    #[arg(long)]
    pub conns: u64,
    /// Client worker processes [default: max(2, ceil(conns / 16000))].
    #[arg(long)]
    pub procs: Option<u64>,
    /// Source addresses, rotated per connection: `A` or `A-B` in 127.0.0.0/8.
    #[arg(long, default_value = "127.0.0.2-127.0.0.60")]
    pub sources: String,
    /// Handshakes in flight in all workers together.
    #[arg(long, default_value_t = 512)]
    pub inflight: usize,
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Size of each push's data (JSON), bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Common {
    fn server(&self) -> String {
        self.server_name
            .clone()
            .unwrap_or_else(|| self.protocol.name().to_string())
    }
}

/// The clients, connected, and the publisher.
struct Setup {
    fleet: Fleet,
    established: Established,
    publisher: Publisher,
}

fn set_up(common: &Common) -> Result<Setup, String> {
    if common.conns == 0 {
        return Err("--conns must be at least 1".to_string());
    }
    let procs = common
        .procs
        .unwrap_or_else(|| common.conns.div_ceil(CONNS_PER_WORKER_MAX).max(2))
        .clamp(1, common.conns);
    if common.conns.div_ceil(procs) > CONNS_PER_WORKER_MAX {
        return Err(format!(
            "{} connections need more than {procs} workers",
            common.conns
        ));
    }
    let secret = fleet::resolve_secret_file(common.protocol, &common.secret_file, &common.run_dir)?;
    let spec = FleetSpec::new(
        &common.target,
        common.protocol,
        secret,
        &common.sources,
        common.handshake_timeout_ms,
    )?;
    let mut fleet = Fleet::new(spec);
    let mut all = Vec::new();
    let inflight = common.inflight.div_ceil(procs as usize);
    for slice in fleet::split(common.conns, procs) {
        all.push(fleet.spawn(slice, inflight, None)?);
    }
    let deadline = Instant::now()
        + Duration::from_millis(common.handshake_timeout_ms * 3)
        + Duration::from_secs(60);
    let established = fleet.await_established(&all, deadline);
    println!(
        "{}: {} of {} clients connected in {:.2} s",
        common.server(),
        established.established,
        common.conns,
        established.wall_s()
    );
    for (why, n) in &established.failures.0 {
        println!("  failed {n:>8}  {why}");
    }
    let control = common.control.as_deref().unwrap_or(&common.target);
    let publisher = match Publisher::connect(common.protocol, common.run_dir.as_deref(), control) {
        Ok(p) => p,
        Err(e) => {
            fleet.stop(STOP_TIMEOUT);
            return Err(e);
        }
    };
    Ok(Setup {
        fleet,
        established,
        publisher,
    })
}

/// CPU seconds used so far by the server (and its extra processes) and by
/// the load generator (this process and its workers).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server_s: f64,
    loadgen_s: f64,
    at: Option<Instant>,
}

impl Cpu {
    fn read(common: &Common, fleet: &Fleet) -> Cpu {
        let sum = |pids: &mut dyn Iterator<Item = u32>| -> f64 {
            pids.map(|pid| procfs::cpu_seconds(pid).unwrap_or(0.0))
                .sum()
        };
        Cpu {
            server_s: sum(&mut std::iter::once(common.server_pid)
                .chain(common.server_extra_pids.iter().copied())),
            loadgen_s: sum(&mut std::iter::once(std::process::id()).chain(fleet.pids())),
            at: Some(Instant::now()),
        }
    }

    fn since(&self, before: &Cpu) -> CpuUse {
        let wall_s = match (self.at, before.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        let server_s = self.server_s - before.server_s;
        let loadgen_s = self.loadgen_s - before.loadgen_s;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuUse {
            wall_s,
            server_s,
            loadgen_s,
            box_busy_fraction: if wall_s > 0.0 {
                (server_s + loadgen_s) / (cores * wall_s)
            } else {
                0.0
            },
        }
    }
}

/// CPU used over a measured interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub wall_s: f64,
    pub server_s: f64,
    pub loadgen_s: f64,
    /// (server + load generator) / (cores × wall): near 1, the box was
    /// saturated and the load generator's share limited the server.
    pub box_busy_fraction: f64,
}

/// Percentiles of a latency histogram (µs), in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyMs {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn of(h: &Histogram<u64>) -> LatencyMs {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        LatencyMs {
            count: h.len(),
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1e3,
        }
    }
}

/// Polls the workers until `expected` stamped messages arrived, nothing
/// new arrived for `quiet`, or `limit` passed; returns the full snapshot.
fn await_receipt(
    fleet: &mut Fleet,
    expected: u64,
    quiet: Duration,
    limit: Duration,
) -> Result<FleetSnapshot, String> {
    let started = Instant::now();
    let mut last_count = 0;
    let mut last_change = Instant::now();
    // Bounded by `limit`.
    while started.elapsed() < limit {
        let count = fleet.command(Command::Count, SNAPSHOT_TIMEOUT)?;
        if count.received >= expected {
            break;
        }
        if count.received != last_count {
            last_count = count.received;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    fleet.command(Command::Snapshot, SNAPSHOT_TIMEOUT)
}

// ---------------------------------------------------------------- broadcast

/// `pushgate-bench broadcast`.
#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Broadcasts, one after another (each waits until every client got the
    /// previous one or --round-timeout-s passed).
    #[arg(long, default_value_t = 5)]
    pub rounds: u64,
    #[arg(long, default_value_t = 30)]
    pub round_timeout_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BroadcastRound {
    pub round: u64,
    pub server_delivered: u64,
    pub received: u64,
    pub missing: i64,
    pub duplicates: u64,
    /// Send (the stamp) → the last client's receipt.
    pub time_to_last_ms: f64,
    /// Send → receipt, over the clients.
    pub receive_ms: LatencyMs,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct BroadcastReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub connect_failures: Tally,
    pub payload_bytes: usize,
    pub rounds: Vec<BroadcastRound>,
    /// Median over the rounds.
    pub time_to_last_ms: f64,
    pub time_to_last_ms_min: f64,
    /// Receive time percentiles over every round's receipts.
    pub receive_ms: LatencyMs,
    pub lost: i64,
    pub duplicates: u64,
    pub dropped_connections: Tally,
    pub ok: bool,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run_broadcast(args: BroadcastArgs) -> Result<bool, String> {
    let common = &args.common;
    let Setup {
        mut fleet,
        established,
        mut publisher,
    } = set_up(common)?;
    let result = broadcast_rounds(&args, &mut fleet, &established, &mut publisher);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let mut report = result?;
    report.dropped_connections.merge(&exit.dropped);
    println!(
        "{}: broadcast to {} clients: time to last {:.2} ms (median of {}), receive p50 {:.2} ms p99 {:.2} ms, lost {}, duplicates {}",
        report.server,
        report.conns_established,
        report.time_to_last_ms,
        report.rounds.len(),
        report.receive_ms.p50,
        report.receive_ms.p99,
        report.lost,
        report.duplicates
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &common.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

fn broadcast_rounds(
    args: &BroadcastArgs,
    fleet: &mut Fleet,
    established: &Established,
    publisher: &mut Publisher,
) -> Result<BroadcastReport, String> {
    let common = &args.common;
    let expected = established.established;
    let mut rounds = Vec::new();
    let mut all = fleet::new_histogram();
    // Bounded by --rounds, each by --round-timeout-s.
    for round in 1..=args.rounds {
        fleet.command(Command::Reset, SNAPSHOT_TIMEOUT)?;
        let cpu_before = Cpu::read(common, fleet);
        let sent_ns = sys::monotonic_ns();
        let data = payload::make(round, sent_ns, common.payload_bytes);
        let server_delivered = publisher.broadcast(&data)?;
        let snap = await_receipt(
            fleet,
            expected,
            Duration::from_secs(args.round_timeout_s),
            Duration::from_secs(args.round_timeout_s),
        )?;
        let cpu = Cpu::read(common, fleet).since(&cpu_before);
        let h = snap.latency_us.as_ref().expect("full snapshot");
        all.add(h).map_err(|e| format!("histogram: {e}"))?;
        let unique = snap.received - snap.duplicates;
        rounds.push(BroadcastRound {
            round,
            server_delivered,
            received: snap.received,
            missing: expected as i64 - unique as i64,
            duplicates: snap.duplicates,
            time_to_last_ms: if snap.last_recv_ns > 0 {
                snap.last_recv_ns.saturating_sub(sent_ns) as f64 / 1e6
            } else {
                f64::NAN
            },
            receive_ms: LatencyMs::of(h),
            cpu,
        });
        let r = rounds.last().expect("just pushed");
        println!(
            "round {round}: {} received of {expected}, time to last {:.2} ms, p50 {:.2} ms",
            r.received, r.time_to_last_ms, r.receive_ms.p50
        );
    }
    let mut ttl: Vec<f64> = rounds
        .iter()
        .map(|r| r.time_to_last_ms)
        .filter(|t| t.is_finite())
        .collect();
    let lost = rounds.iter().map(|r| r.missing.max(0)).sum();
    let duplicates = rounds.iter().map(|r| r.duplicates).sum();
    let min = ttl.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(BroadcastReport {
        scenario: "broadcast",
        server: common.server(),
        protocol: common.protocol.name(),
        machine: Machine::read(),
        conns_requested: common.conns,
        conns_established: established.established,
        connect_failures: established.failures.clone(),
        payload_bytes: common.payload_bytes,
        time_to_last_ms: median(&mut ttl),
        time_to_last_ms_min: if min.is_finite() { min } else { 0.0 },
        receive_ms: LatencyMs::of(&all),
        lost,
        duplicates,
        ok: lost == 0 && duplicates == 0 && established.failures.total() == 0,
        rounds,
        dropped_connections: Tally::default(),
    })
}

// ------------------------------------------------------- homing and latency

/// `pushgate-bench homing`: pushes to random users, as fast as possible.
#[derive(Args, Debug, Clone)]
pub struct HomingArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users each push goes to (distinct, random among the connected).
    #[arg(long, default_value_t = 300)]
    pub fanout: u32,
    /// How long to push.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// After the last push, wait at most this long for deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub drain_s: f64,
    /// As fast as possible, but with at most this many deliveries sent and
    /// not yet received [default: 32 per client, 20,000..=200,000].
    #[arg(long)]
    pub window_deliveries: Option<u64>,
}

/// `pushgate-bench latency`: the homing workload at a fixed rate.
#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub homing: HomingArgs,
    /// Pushes per second (each to --fanout users).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Take the rate from a homing report: its pushes_per_s × --rate-fraction.
    #[arg(long)]
    pub rate_from: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5)]
    pub rate_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub connect_failures: Tally,
    pub fanout: u32,
    pub payload_bytes: usize,
    pub duration_s: f64,
    /// Latency only: the rate asked for (pushes/s).
    pub rate_target_per_s: Option<f64>,
    /// Homing only: the end-to-end flow-control window (deliveries sent and
    /// not yet received), and how often the publisher waited on it.
    pub window_deliveries: Option<u64>,
    pub flow_control_waits: Option<u64>,
    pub pushes: u64,
    /// Σ users per push.
    pub targeted: u64,
    /// What the server's replies counted.
    pub server_totals: Totals,
    pub received: u64,
    pub duplicates: u64,
    /// Arrived after a later push to the same user (not lost; the paced
    /// pushgate run publishes from several threads, whose order is not
    /// defined).
    pub reordered: u64,
    pub unstamped: u64,
    /// targeted − (received − duplicates).
    pub lost: i64,
    pub push_wall_s: f64,
    /// First push → last receipt.
    pub delivery_wall_s: f64,
    pub pushes_per_s: f64,
    pub deliveries_per_s: f64,
    pub cpu: CpuUse,
    pub server_cpu_s_per_million: Option<f64>,
    pub latency_ms: LatencyMs,
    pub dropped_connections: Tally,
    pub ok: bool,
}

/// Random distinct users for each push, from a fixed seed (the same pushes
/// for every server).
struct Targets {
    rng: Rng,
    users: u32,
    fanout: u32,
    /// Per user: the last push it was picked for.
    picked_in: Vec<u64>,
    push: u64,
}

impl Targets {
    fn new(users: u32, fanout: u32) -> Targets {
        Targets {
            rng: Rng::new(0x5eed_b0a7),
            users,
            fanout: fanout.min(users),
            picked_in: vec![0; users as usize],
            push: 0,
        }
    }

    fn next(&mut self) -> Vec<u32> {
        self.push += 1;
        let mut out = Vec::with_capacity(self.fanout as usize);
        // Bounded: fanout ≤ users, and each draw of a fresh user succeeds
        // with probability ≥ 1 − fanout/users; capped besides.
        for _ in 0..self.fanout as u64 * 64 {
            if out.len() == self.fanout as usize {
                break;
            }
            let user = (self.rng.next_u64() % u64::from(self.users)) as u32;
            if self.picked_in[user as usize] != self.push {
                self.picked_in[user as usize] = self.push;
                out.push(user);
            }
        }
        out
    }
}

/// End-to-end flow control of an as-fast-as-possible run: the publisher
/// waits while more than `window` deliveries are sent but not yet received
/// by the clients, so the run measures what the server delivers to clients
/// that keep up — not how much it can buffer (pushgate closes a connection
/// whose send queue overflows with 1013; the Node peers would buffer
/// without bound).
struct FlowControl<'a> {
    fleet: &'a mut Fleet,
    window: u64,
    received: u64,
    waits: u64,
    error: Option<String>,
}

impl FlowControl<'_> {
    /// Blocks (bounded) until at most `window / 2` of `targeted` are in flight.
    fn wait(&mut self, targeted: u64) {
        if targeted.saturating_sub(self.received) <= self.window || self.error.is_some() {
            return;
        }
        self.waits += 1;
        let started = Instant::now();
        let mut last_change = Instant::now();
        // Bounded: 5 s at most. Deliveries of requests still sitting in the
        // publisher's own batch buffer cannot arrive, so it also gives up
        // waiting after 20 ms without progress.
        while started.elapsed() < Duration::from_secs(5) {
            match self.fleet.command(Command::Count, SNAPSHOT_TIMEOUT) {
                Ok(count) => {
                    if count.received != self.received {
                        self.received = count.received;
                        last_change = Instant::now();
                    }
                }
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
            if targeted.saturating_sub(self.received) <= self.window / 2
                || last_change.elapsed() >= Duration::from_millis(20)
            {
                return;
            }
            // Each poll costs both sides a pipe round trip: not too often.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The items of a run: as fast as asked for, or paced, until the end time.
struct Generator<'a> {
    flow: Option<FlowControl<'a>>,
    targets: Targets,
    payload_bytes: usize,
    end: Instant,
    /// Paced: nanoseconds between pushes, and the first one's time.
    interval_ns: Option<f64>,
    start_ns: u64,
    pushes: u64,
    targeted: u64,
}

impl Iterator for Generator<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if let Some(flow) = self.flow.as_mut() {
            flow.wait(self.targeted);
        }
        let now = Instant::now();
        if now >= self.end {
            return None;
        }
        let seq = self.pushes + 1;
        let stamp_ns = match self.interval_ns {
            None => sys::monotonic_ns(),
            Some(interval) => {
                // The intended send time is the stamp, so a late send shows
                // as latency rather than hiding it (no coordinated omission).
                let due_ns = self.start_ns + (self.pushes as f64 * interval) as u64;
                let wait_ns = due_ns.saturating_sub(sys::monotonic_ns());
                if now + Duration::from_nanos(wait_ns) >= self.end {
                    return None;
                }
                if wait_ns > 0 {
                    std::thread::sleep(Duration::from_nanos(wait_ns));
                }
                due_ns
            }
        };
        let users = self.targets.next();
        self.pushes = seq;
        self.targeted += users.len() as u64;
        Some(Item {
            users,
            data: payload::make(seq, stamp_ns, self.payload_bytes),
        })
    }
}

pub fn run_homing(args: HomingArgs) -> Result<bool, String> {
    run_pushes("homing", &args, None)
}

pub fn run_latency(args: LatencyArgs) -> Result<bool, String> {
    let rate = match (args.rate, &args.rate_from) {
        (Some(rate), _) => rate,
        (None, Some(path)) => rate_from(path)? * args.rate_fraction,
        (None, None) => return Err("give --rate or --rate-from HOMING.json".to_string()),
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("rate {rate}: want a positive number of pushes/s"));
    }
    run_pushes("latency", &args.homing, Some(rate))
}

/// `pushes_per_s` of a homing report.
fn rate_from(path: &std::path::Path) -> Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    value["pushes_per_s"]
        .as_f64()
        .filter(|r| *r > 0.0)
        .ok_or_else(|| format!("{}: no positive pushes_per_s", path.display()))
}

fn run_pushes(
    scenario: &'static str,
    args: &HomingArgs,
    rate: Option<f64>,
) -> Result<bool, String> {
    let common = &args.common;
    if common.conns > u64::from(u32::MAX) {
        return Err("--conns: at most 2^32 − 1".to_string());
    }
    if args.fanout == 0 || u64::from(args.fanout) > common.conns {
        return Err(format!("--fanout {}: want 1..=--conns", args.fanout));
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        return Err("--duration-s: want (0, 3600]".to_string());
    }
    let Setup {
        mut fleet,
        established,
        mut publisher,
    } = set_up(common)?;
    let result = push_run(
        scenario,
        args,
        rate,
        &mut fleet,
        &established,
        &mut publisher,
    );
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let mut report = result?;
    report.dropped_connections.merge(&exit.dropped);
    println!(
        "{} {}: {} pushes × {} users in {:.2} s = {:.0} pushes/s, {:.0} deliveries/s; lost {} duplicates {}; \
         latency p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms; server CPU {:.2} s/M deliveries; box busy {:.0} %",
        report.server,
        scenario,
        report.pushes,
        report.fanout,
        report.push_wall_s,
        report.pushes_per_s,
        report.deliveries_per_s,
        report.lost,
        report.duplicates,
        report.latency_ms.p50,
        report.latency_ms.p99,
        report.latency_ms.p999,
        report.server_cpu_s_per_million.unwrap_or(f64::NAN),
        report.cpu.box_busy_fraction * 100.0
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &common.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

fn push_run(
    scenario: &'static str,
    args: &HomingArgs,
    rate: Option<f64>,
    fleet: &mut Fleet,
    established: &Established,
    publisher: &mut Publisher,
) -> Result<PushReport, String> {
    let common = &args.common;
    fleet.command(Command::Reset, SNAPSHOT_TIMEOUT)?;
    let cpu_before = Cpu::read(common, fleet);
    let started = Instant::now();
    let start_ns = sys::monotonic_ns();
    let window = args
        .window_deliveries
        .unwrap_or_else(|| (common.conns * 32).clamp(20_000, 200_000));
    let flow = rate.is_none().then_some(FlowControl {
        fleet: &mut *fleet,
        window,
        received: 0,
        waits: 0,
        error: None,
    });
    let mut generator = Generator {
        flow,
        targets: Targets::new(common.conns as u32, args.fanout),
        payload_bytes: common.payload_bytes,
        end: started + Duration::from_secs_f64(args.duration_s),
        interval_ns: rate.map(|r| 1e9 / r),
        start_ns,
        pushes: 0,
        targeted: 0,
    };
    let totals = match rate {
        None => publisher.push_pipelined(&mut generator)?,
        Some(_) => publisher.push_each(&mut generator, common.run_dir.as_deref())?,
    };
    let push_wall_s = started.elapsed().as_secs_f64();
    let (pushes, targeted) = (generator.pushes, generator.targeted);
    let flow_waits = match generator.flow.take() {
        Some(flow) => {
            if let Some(e) = flow.error {
                return Err(e);
            }
            Some(flow.waits)
        }
        None => None,
    };
    drop(generator);
    let all_online = established.established == common.conns;
    let expected = if all_online {
        targeted
    } else {
        totals.delivered
    };
    let quiet = Duration::from_secs(3);
    let snap = await_receipt(
        fleet,
        expected,
        quiet,
        Duration::from_secs_f64(args.drain_s),
    )?;
    let cpu = Cpu::read(common, fleet).since(&cpu_before);
    let unique = snap.received - snap.duplicates;
    let delivery_wall_s = if snap.last_recv_ns > start_ns {
        (snap.last_recv_ns - start_ns) as f64 / 1e9
    } else {
        push_wall_s
    };
    let lost = expected as i64 - unique as i64;
    let h = snap.latency_us.as_ref().expect("full snapshot");
    Ok(PushReport {
        scenario,
        server: common.server(),
        protocol: common.protocol.name(),
        machine: Machine::read(),
        conns_requested: common.conns,
        conns_established: established.established,
        connect_failures: established.failures.clone(),
        fanout: args.fanout,
        payload_bytes: common.payload_bytes,
        duration_s: args.duration_s,
        rate_target_per_s: rate,
        window_deliveries: rate.is_none().then_some(window),
        flow_control_waits: flow_waits,
        pushes,
        targeted,
        server_totals: totals,
        received: snap.received,
        duplicates: snap.duplicates,
        reordered: snap.reordered,
        unstamped: snap.unstamped,
        lost,
        push_wall_s,
        delivery_wall_s,
        pushes_per_s: pushes as f64 / push_wall_s.max(1e-9),
        deliveries_per_s: unique as f64 / delivery_wall_s.max(1e-9),
        server_cpu_s_per_million: (unique > 0).then(|| cpu.server_s / (unique as f64 / 1e6)),
        cpu,
        latency_ms: LatencyMs::of(h),
        dropped_connections: Tally::default(),
        ok: lost == 0 && snap.duplicates == 0 && all_online,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_distinct_and_in_range() {
        let mut t = Targets::new(1000, 300);
        for _ in 0..50 {
            let mut picked = t.next();
            assert_eq!(picked.len(), 300);
            assert!(picked.iter().all(|&u| u < 1000));
            picked.sort_unstable();
            picked.dedup();
            assert_eq!(picked.len(), 300);
        }
        // Every user, when the fan-out is everyone.
        let mut all = Targets::new(10, 10);
        let mut picked = all.next();
        picked.sort_unstable();
        assert_eq!(picked, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn paced_generator_keeps_its_schedule_and_stops_in_time() {
        let start = Instant::now();
        let mut g = Generator {
            flow: None,
            targets: Targets::new(10, 2),
            payload_bytes: 50,
            end: start + Duration::from_millis(200),
            interval_ns: Some(1e9 / 100.0),
            start_ns: sys::monotonic_ns(),
            pushes: 0,
            targeted: 0,
        };
        let items: Vec<Item> = g.by_ref().collect();
        assert!((15..=21).contains(&items.len()), "{}", items.len());
        assert!(start.elapsed() < Duration::from_millis(400));
        assert_eq!(g.targeted, 2 * items.len() as u64);
        let first = payload::parse(items[0].data.as_bytes()).unwrap();
        let second = payload::parse(items[1].data.as_bytes()).unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(second.sent_ns - first.sent_ns, 10_000_000);
    }
}
