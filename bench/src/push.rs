//! The scenarios that push: `broadcast`, `homing` and `latency`.
//!
//! Each connects N clients (worker processes, one user each), then sends
//! through the server's publishing API — pushgate's client library, or a
//! peer's control WebSocket(s) — data stamped with a sequence number and
//! the send time ([`crate::payload`]). The clients count what arrives, flag
//! duplicates and pushes of a user that arrive out of order, and record the
//! push→receive latency; the parent merges their snapshots. Every scenario
//! first warms the server up (a broadcast round, a few seconds of pushes)
//! and measures after, so a JIT's cold start is not in the figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fleet::{self, Established, Fleet, FleetSnapshot, FleetSpec};
use crate::machine::{self, Machine};
use crate::payload;
use crate::procfs::{self, TcpSegs};
use crate::proto::Protocol;
use crate::publish::{Item, Publisher, Totals};
use crate::server_info::{self, MetaArgs, ServerInfo};
use crate::sys;
use crate::worker::{Command, Tally, CONNS_PER_WORKER_MAX};
use crate::wsclient::Rng;

pub(crate) const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the parent asks the workers how much has arrived.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// After the last push, a phase ends once nothing new arrived for this long
/// (or everything did).
pub(crate) const QUIET: Duration = Duration::from_secs(3);
/// A latency step keeps up when it delivers at least this share of the
/// offered rate, none lost.
pub const KEEP_UP_FRACTION: f64 = 0.95;
/// The ladder stops climbing past a step whose p99 is above this: the
/// server is queueing, not keeping up.
const SATURATED_P99_MS: f64 = 2000.0;

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
    /// The server process: its CPU time and that of its descendants (Node's
    /// cluster workers) are measured.
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
    /// Peers: the control WebSocket addresses, comma-separated, one per
    /// server process that takes commands; every command goes to each
    /// [default: --target].
    #[arg(long, value_delimiter = ',')]
    pub control: Vec<String>,
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
    #[command(flatten)]
    pub meta: MetaArgs,
}

impl Common {
    fn server(&self) -> String {
        self.server_name
            .clone()
            .unwrap_or_else(|| self.protocol.name().to_string())
    }

    fn controls(&self) -> Vec<String> {
        if self.control.is_empty() {
            vec![self.target.clone()]
        } else {
            self.control.clone()
        }
    }
}

/// The clients, connected, and the publisher.
struct Setup {
    fleet: Fleet,
    established: Established,
    publisher: Publisher,
    server_info: ServerInfo,
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
    let publisher = match Publisher::connect(
        common.protocol,
        common.run_dir.as_deref(),
        &common.controls(),
    ) {
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
        server_info: ServerInfo::read(common.server_pid, &common.server_extra_pids, &common.meta),
    })
}

/// CPU seconds used so far by the server (its processes, their descendants
/// and the extra ones) and by the load generator (this process and its
/// workers).
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
        let server = server_info::server_pids(common.server_pid, &common.server_extra_pids);
        Cpu {
            server_s: sum(&mut server.into_iter()),
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
pub(crate) fn await_receipt(
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

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

// ---------------------------------------------------------------- broadcast

/// `pushgate-bench broadcast`.
#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Broadcasts measured, one after another (each waits until every client
    /// got the previous one or --round-timeout-s passed).
    #[arg(long, default_value_t = 5)]
    pub rounds: u64,
    /// Broadcasts before those, not measured (a JIT's cold first round).
    #[arg(long, default_value_t = 1)]
    pub warmup_rounds: u64,
    #[arg(long, default_value_t = 30)]
    pub round_timeout_s: u64,
    /// Pad the payload with realistic JSON records instead of a run of
    /// `x` (which compresses unrealistically well): for deflate runs.
    #[arg(long)]
    pub payload_json: bool,
    /// pushgate's admin address: read `pushgate_ring_bytes_sent_total`
    /// before and after each round, for the bytes the server sent.
    #[arg(long)]
    pub server_admin: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BroadcastRound {
    pub round: u64,
    pub server_delivered: u64,
    pub received: u64,
    pub missing: i64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Send (the stamp) → the last client's receipt.
    pub time_to_last_ms: f64,
    /// Send → receipt, over the clients.
    pub receive_ms: LatencyMs,
    pub cpu: CpuUse,
    /// Bytes the server sent during the round (`--server-admin`; pings
    /// included, a few bytes each), and per client.
    pub server_bytes_sent: Option<u64>,
    pub server_bytes_per_client: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BroadcastReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub connect_failures: Tally,
    pub payload_bytes: usize,
    /// Realistic JSON padding (`--payload-json`) rather than `x`s.
    pub payload_json: bool,
    pub warmup_rounds: u64,
    /// The measured rounds (after the warm-up).
    pub rounds: Vec<BroadcastRound>,
    /// Median over the measured rounds of the server's bytes sent per
    /// client (`--server-admin`).
    pub server_bytes_per_client: Option<f64>,
    /// Median over the measured rounds.
    pub time_to_last_ms: f64,
    pub time_to_last_ms_min: f64,
    pub time_to_last_ms_max: f64,
    /// Receive time percentiles over every measured round's receipts.
    pub receive_ms: LatencyMs,
    pub lost: i64,
    pub duplicates: u64,
    pub reordered: u64,
    pub dropped_connections: Tally,
    pub ok: bool,
}

pub fn run_broadcast(args: BroadcastArgs) -> Result<bool, String> {
    let common = &args.common;
    let Setup {
        mut fleet,
        established,
        mut publisher,
        server_info,
    } = set_up(common)?;
    let result = broadcast_rounds(&args, &mut fleet, &established, &mut publisher, server_info);
    drop(publisher);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let mut report = result?;
    report.dropped_connections.merge(&exit.dropped);
    println!(
        "{}: broadcast to {} clients: time to last {:.2} ms (median of {}), receive p50 {:.2} ms p99 {:.2} ms, lost {}, duplicates {}, reordered {}",
        report.server,
        report.conns_established,
        report.time_to_last_ms,
        report.rounds.len(),
        report.receive_ms.p50,
        report.receive_ms.p99,
        report.lost,
        report.duplicates,
        report.reordered
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &common.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

/// The sum of `pushgate_ring_bytes_sent_total` over the shards, from the
/// admin listener's `/metrics`.
fn server_bytes_sent(admin: &str) -> Result<u64, String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(admin).map_err(|e| format!("admin {admin}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("admin {admin}: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("admin {admin}: {e}"))?;
    let total = text
        .lines()
        .filter(|l| l.starts_with("pushgate_ring_bytes_sent_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    Ok(total)
}

fn broadcast_rounds(
    args: &BroadcastArgs,
    fleet: &mut Fleet,
    established: &Established,
    publisher: &mut Publisher,
    server_info: ServerInfo,
) -> Result<BroadcastReport, String> {
    let common = &args.common;
    let expected = established.established;
    let mut rounds = Vec::new();
    let mut all = fleet::new_histogram();
    // Bounded by --warmup-rounds + --rounds, each by --round-timeout-s.
    for round in 1..=args.warmup_rounds + args.rounds {
        let warmup = round <= args.warmup_rounds;
        fleet.command(Command::Reset, SNAPSHOT_TIMEOUT)?;
        let cpu_before = Cpu::read(common, fleet);
        let bytes_before = match &args.server_admin {
            Some(admin) => Some(server_bytes_sent(admin)?),
            None => None,
        };
        let sent_ns = sys::monotonic_ns();
        let data = if args.payload_json {
            payload::make_json(round, sent_ns, common.payload_bytes)
        } else {
            payload::make(round, sent_ns, common.payload_bytes)
        };
        let server_delivered = publisher.broadcast(&data)?;
        let limit = Duration::from_secs(args.round_timeout_s);
        let snap = await_receipt(fleet, expected, limit, limit)?;
        let cpu = Cpu::read(common, fleet).since(&cpu_before);
        let server_bytes_sent = match (&args.server_admin, bytes_before) {
            (Some(admin), Some(before)) => Some(server_bytes_sent(admin)?.saturating_sub(before)),
            _ => None,
        };
        let h = snap.latency_us.as_ref().expect("full snapshot");
        let unique = snap.received - snap.duplicates;
        let r = BroadcastRound {
            round,
            server_delivered,
            received: snap.received,
            missing: expected as i64 - unique as i64,
            duplicates: snap.duplicates,
            reordered: snap.reordered,
            time_to_last_ms: if snap.last_recv_ns > 0 {
                snap.last_recv_ns.saturating_sub(sent_ns) as f64 / 1e6
            } else {
                f64::NAN
            },
            receive_ms: LatencyMs::of(h),
            cpu,
            server_bytes_sent,
            server_bytes_per_client: server_bytes_sent.map(|b| b as f64 / expected.max(1) as f64),
        };
        println!(
            "round {round}{}: {} received of {expected}, time to last {:.2} ms, p50 {:.2} ms{}",
            if warmup { " (warm-up)" } else { "" },
            r.received,
            r.time_to_last_ms,
            r.receive_ms.p50,
            r.server_bytes_per_client
                .map(|b| format!(", server sent {b:.0} bytes per client"))
                .unwrap_or_default()
        );
        if !warmup {
            all.add(h).map_err(|e| format!("histogram: {e}"))?;
            rounds.push(r);
        }
    }
    let mut ttl: Vec<f64> = rounds
        .iter()
        .map(|r| r.time_to_last_ms)
        .filter(|t| t.is_finite())
        .collect();
    let lost = rounds.iter().map(|r| r.missing.max(0)).sum();
    let duplicates = rounds.iter().map(|r| r.duplicates).sum();
    let reordered = rounds.iter().map(|r| r.reordered).sum();
    let mut per_client: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.server_bytes_per_client)
        .collect();
    let server_bytes_per_client = (!per_client.is_empty()).then(|| median(&mut per_client));
    let min = ttl.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ttl.iter().copied().fold(0.0, f64::max);
    Ok(BroadcastReport {
        scenario: "broadcast",
        server: common.server(),
        protocol: common.protocol.name(),
        machine: Machine::read(),
        server_info,
        conns_requested: common.conns,
        conns_established: established.established,
        connect_failures: established.failures.clone(),
        payload_bytes: common.payload_bytes,
        payload_json: args.payload_json,
        server_bytes_per_client,
        warmup_rounds: args.warmup_rounds,
        time_to_last_ms: median(&mut ttl),
        time_to_last_ms_min: if min.is_finite() { min } else { 0.0 },
        time_to_last_ms_max: max,
        receive_ms: LatencyMs::of(&all),
        lost,
        duplicates,
        reordered,
        ok: lost == 0
            && duplicates == 0
            && reordered == 0
            && established.failures.total() == 0
            && ttl.len() == rounds.len(),
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
    /// How long to push (latency: per rate).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Pushes before the measurement, not measured (JIT, caches, buffers).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// After the last push, wait at most this long for deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub drain_s: f64,
    /// As fast as possible, but with at most this many deliveries sent and
    /// not yet received, over all clients together [default: 32 × clients,
    /// within 20,000..=200,000].
    #[arg(long)]
    pub window_deliveries: Option<u64>,
}

/// `pushgate-bench latency`: the homing workload at fixed rates, one after
/// another on the same connections, from the lowest.
#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub homing: HomingArgs,
    /// Offered deliveries per second (pushes/s × --fanout), comma-separated:
    /// a step of --duration-s at each.
    #[arg(long, value_delimiter = ',')]
    pub deliveries_per_s: Vec<f64>,
    /// One step at this many pushes per second (instead of the above).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run every step even past one the server did not keep up with.
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub connect_failures: Tally,
    pub fanout: u32,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// The end-to-end flow-control window (deliveries sent and not yet
    /// received, over all clients), and how often the publisher waited on it.
    pub window_deliveries: u64,
    pub flow_control_waits: Option<u64>,
    pub pushes: u64,
    /// Σ users per push.
    pub targeted: u64,
    /// What the server's replies counted.
    pub server_totals: Totals,
    pub received: u64,
    pub duplicates: u64,
    /// Arrived after a later push to the same user.
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
    /// TCP segments sent on the machine (both directions over loopback,
    /// /proc/net/snmp OutSegs) per delivery.
    pub tcp_segments: u64,
    pub tcp_segments_per_delivery: Option<f64>,
    pub latency_ms: LatencyMs,
    pub dropped_connections: Tally,
    pub ok: bool,
}

/// One rate of a latency run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStep {
    pub rate_target_deliveries_per_s: f64,
    pub rate_target_pushes_per_s: f64,
    pub pushes: u64,
    pub targeted: u64,
    /// What the publisher managed to send (below the target when the
    /// server's backpressure held it up).
    pub offered_deliveries_per_s: f64,
    /// Delivered to clients ÷ (first push → last receipt).
    pub achieved_deliveries_per_s: f64,
    pub server_totals: Totals,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub lost: i64,
    /// Stamped at the time each push was due, not when it was sent, so a
    /// late send shows as latency (no coordinated omission).
    pub latency_ms: LatencyMs,
    pub cpu: CpuUse,
    pub server_cpu_s_per_million: Option<f64>,
    pub tcp_segments_per_delivery: Option<f64>,
    /// Achieved ≥ KEEP_UP_FRACTION × target, nothing lost or duplicated.
    pub kept_up: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub connect_failures: Tally,
    pub fanout: u32,
    pub payload_bytes: usize,
    pub step_s: f64,
    pub warmup_s: f64,
    pub keep_up_fraction: f64,
    pub steps: Vec<LatencyStep>,
    /// The highest target rate kept up with, deliveries/s.
    pub max_kept_up_deliveries_per_s: Option<f64>,
    pub lost: i64,
    pub duplicates: u64,
    pub reordered: u64,
    pub dropped_connections: Tally,
    pub ok: bool,
}

/// Random distinct users for each push, from a fixed seed (the same pushes
/// for every server).
pub(crate) struct Targets {
    rng: Rng,
    users: u32,
    fanout: u32,
    /// Per user: the last push it was picked for.
    picked_in: Vec<u64>,
    push: u64,
}

impl Targets {
    pub(crate) fn new(users: u32, fanout: u32) -> Targets {
        Targets {
            rng: Rng::new(0x5eed_b0a7),
            users,
            fanout: fanout.min(users),
            picked_in: vec![0; users as usize],
            push: 0,
        }
    }

    pub(crate) fn next(&mut self) -> Vec<u32> {
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

/// The items of one phase: as fast as asked for, or paced, until the end
/// time. Sequence numbers continue from `first_seq`, so each user's pushes
/// stay in increasing order across phases.
struct Generator<'a> {
    flow: Option<FlowControl<'a>>,
    targets: &'a mut Targets,
    payload_bytes: usize,
    end: Instant,
    /// Paced: nanoseconds between pushes, and the first one's time.
    interval_ns: Option<f64>,
    start_ns: u64,
    first_seq: u64,
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
        let seq = self.first_seq + self.pushes;
        self.pushes += 1;
        self.targeted += users.len() as u64;
        Some(Item {
            users,
            data: payload::make(seq, stamp_ns, self.payload_bytes),
        })
    }
}

/// What carries over from one phase to the next: the targets' generator
/// and the next sequence number.
struct Pushes {
    targets: Targets,
    next_seq: u64,
    window: u64,
    payload_bytes: usize,
    /// Every client connected: each push is expected at every target (else
    /// only what the server said it delivered).
    all_online: bool,
}

/// How one phase sends: for how long, at what rate (`None`: as fast as the
/// window allows), and how long to wait for its deliveries after.
#[derive(Debug, Clone, Copy)]
struct PhaseSpec {
    duration_s: f64,
    pushes_per_s: Option<f64>,
    drain_s: f64,
}

/// One phase, sent and received.
struct Phase {
    pushes: u64,
    targeted: u64,
    totals: Totals,
    flow_waits: Option<u64>,
    push_wall_s: f64,
    delivery_wall_s: f64,
    expected: u64,
    snap: FleetSnapshot,
    unique: u64,
    lost: i64,
    cpu: CpuUse,
    tcp_segments: u64,
}

impl Phase {
    fn server_cpu_s_per_million(&self) -> Option<f64> {
        (self.unique > 0).then(|| self.cpu.server_s / (self.unique as f64 / 1e6))
    }

    fn tcp_segments_per_delivery(&self) -> Option<f64> {
        (self.unique > 0).then(|| self.tcp_segments as f64 / self.unique as f64)
    }

    fn latency(&self) -> LatencyMs {
        LatencyMs::of(self.snap.latency_us.as_ref().expect("full snapshot"))
    }
}

/// Sends for `duration_s` (as fast as the window allows, or at
/// `pushes_per_s`), waits for the deliveries, and measures.
fn run_phase(
    common: &Common,
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    pushes: &mut Pushes,
    spec: PhaseSpec,
) -> Result<Phase, String> {
    let PhaseSpec {
        duration_s,
        pushes_per_s,
        drain_s,
    } = spec;
    fleet.command(Command::Reset, SNAPSHOT_TIMEOUT)?;
    let cpu_before = Cpu::read(common, fleet);
    let segs_before = TcpSegs::read().unwrap_or_default();
    let started = Instant::now();
    let start_ns = sys::monotonic_ns();
    let flow = pushes_per_s.is_none().then_some(FlowControl {
        fleet: &mut *fleet,
        window: pushes.window,
        received: 0,
        waits: 0,
        error: None,
    });
    let mut generator = Generator {
        flow,
        targets: &mut pushes.targets,
        payload_bytes: pushes.payload_bytes,
        end: started + Duration::from_secs_f64(duration_s),
        interval_ns: pushes_per_s.map(|r| 1e9 / r),
        start_ns,
        first_seq: pushes.next_seq,
        pushes: 0,
        targeted: 0,
    };
    let totals = match pushes_per_s {
        None => publisher.push_pipelined(&mut generator)?,
        Some(_) => publisher.push_each(&mut generator)?,
    };
    let push_wall_s = started.elapsed().as_secs_f64();
    let (sent, targeted) = (generator.pushes, generator.targeted);
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
    pushes.next_seq += sent;
    let expected = if pushes.all_online {
        targeted
    } else {
        totals.delivered
    };
    let snap = await_receipt(fleet, expected, QUIET, Duration::from_secs_f64(drain_s))?;
    let cpu = Cpu::read(common, fleet).since(&cpu_before);
    let tcp_segments = TcpSegs::read().unwrap_or_default().sent_since(&segs_before);
    let unique = snap.received - snap.duplicates;
    let delivery_wall_s = if snap.last_recv_ns > start_ns {
        (snap.last_recv_ns - start_ns) as f64 / 1e9
    } else {
        push_wall_s
    };
    Ok(Phase {
        pushes: sent,
        targeted,
        totals,
        flow_waits,
        push_wall_s,
        delivery_wall_s: delivery_wall_s.max(push_wall_s),
        expected,
        lost: expected as i64 - unique as i64,
        unique,
        snap,
        cpu,
        tcp_segments,
    })
}

/// Checks the homing/latency arguments.
fn check_push_args(args: &HomingArgs) -> Result<(), String> {
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
    if !(0.0..=600.0).contains(&args.warmup_s) {
        return Err("--warmup-s: want [0, 600]".to_string());
    }
    Ok(())
}

fn new_pushes(args: &HomingArgs, all_online: bool) -> Pushes {
    let common = &args.common;
    Pushes {
        all_online,
        targets: Targets::new(common.conns as u32, args.fanout),
        next_seq: 1,
        window: args
            .window_deliveries
            .unwrap_or_else(|| (common.conns * 32).clamp(20_000, 200_000)),
        payload_bytes: common.payload_bytes,
    }
}

/// The warm-up phase, reported in one line and otherwise discarded.
fn warm_up(
    args: &HomingArgs,
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    pushes: &mut Pushes,
    pushes_per_s: Option<f64>,
) -> Result<(), String> {
    if args.warmup_s <= 0.0 {
        return Ok(());
    }
    let spec = PhaseSpec {
        duration_s: args.warmup_s,
        pushes_per_s,
        drain_s: args.drain_s,
    };
    let phase = run_phase(&args.common, fleet, publisher, pushes, spec)?;
    println!(
        "warm-up: {} pushes, {} of {} delivered in {:.2} s (not measured)",
        phase.pushes, phase.unique, phase.expected, phase.delivery_wall_s
    );
    Ok(())
}

pub fn run_homing(args: HomingArgs) -> Result<bool, String> {
    check_push_args(&args)?;
    let common = &args.common;
    let Setup {
        mut fleet,
        established,
        mut publisher,
        server_info,
    } = set_up(common)?;
    let all_online = established.established == common.conns;
    let mut pushes = new_pushes(&args, all_online);
    let window = pushes.window;
    let spec = PhaseSpec {
        duration_s: args.duration_s,
        pushes_per_s: None,
        drain_s: args.drain_s,
    };
    let result = warm_up(&args, &mut fleet, &mut publisher, &mut pushes, None)
        .and_then(|()| run_phase(common, &mut fleet, &mut publisher, &mut pushes, spec));
    drop(publisher);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    let phase = result?;
    let mut dropped = Tally::default();
    dropped.merge(&exit.dropped);
    let report = PushReport {
        scenario: "homing",
        server: common.server(),
        protocol: common.protocol.name(),
        machine: Machine::read(),
        server_info,
        conns_requested: common.conns,
        conns_established: established.established,
        connect_failures: established.failures.clone(),
        fanout: args.fanout,
        payload_bytes: common.payload_bytes,
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        window_deliveries: window,
        flow_control_waits: phase.flow_waits,
        pushes: phase.pushes,
        targeted: phase.targeted,
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
        server_cpu_s_per_million: phase.server_cpu_s_per_million(),
        tcp_segments: phase.tcp_segments,
        tcp_segments_per_delivery: phase.tcp_segments_per_delivery(),
        latency_ms: phase.latency(),
        ok: phase.lost == 0
            && phase.snap.duplicates == 0
            && phase.snap.reordered == 0
            && all_online
            && dropped.total() == 0,
        dropped_connections: dropped,
    };
    println!(
        "{} homing: {} pushes × {} users in {:.2} s = {:.0} pushes/s, {:.0} deliveries/s; lost {} duplicates {} reordered {}; \
         latency p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms; server CPU {:.2} s/M deliveries; {:.2} TCP segments/delivery; box busy {:.0} %",
        report.server,
        report.pushes,
        report.fanout,
        report.push_wall_s,
        report.pushes_per_s,
        report.deliveries_per_s,
        report.lost,
        report.duplicates,
        report.reordered,
        report.latency_ms.p50,
        report.latency_ms.p99,
        report.latency_ms.p999,
        report.server_cpu_s_per_million.unwrap_or(f64::NAN),
        report.tcp_segments_per_delivery.unwrap_or(f64::NAN),
        report.cpu.box_busy_fraction * 100.0
    );
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &common.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

pub fn run_latency(args: LatencyArgs) -> Result<bool, String> {
    let homing = &args.homing;
    check_push_args(homing)?;
    let fanout = f64::from(homing.fanout);
    // (target deliveries/s, pushes/s) per step.
    let rates: Vec<(f64, f64)> = match (args.rate, args.deliveries_per_s.is_empty()) {
        (Some(pushes), true) => vec![(pushes * fanout, pushes)],
        (None, false) => args
            .deliveries_per_s
            .iter()
            .map(|&d| (d, d / fanout))
            .collect(),
        _ => return Err("give either --deliveries-per-s LIST or --rate PUSHES".to_string()),
    };
    if rates
        .iter()
        .any(|&(_, pushes)| !(pushes.is_finite() && pushes > 0.0))
    {
        return Err("rates must be positive".to_string());
    }
    let common = &homing.common;
    let Setup {
        mut fleet,
        established,
        mut publisher,
        server_info,
    } = set_up(common)?;
    let all_online = established.established == common.conns;
    let mut pushes = new_pushes(homing, all_online);
    let mut steps = Vec::new();
    let mut run = || -> Result<(), String> {
        warm_up(
            homing,
            &mut fleet,
            &mut publisher,
            &mut pushes,
            Some(rates[0].1),
        )?;
        // Bounded by the rates given.
        for &(target, pushes_per_s) in &rates {
            let spec = PhaseSpec {
                duration_s: homing.duration_s,
                pushes_per_s: Some(pushes_per_s),
                drain_s: homing.drain_s,
            };
            let phase = run_phase(common, &mut fleet, &mut publisher, &mut pushes, spec)?;
            let step = latency_step(&phase, target, pushes_per_s);
            println!(
                "{:>9.0} deliveries/s offered {:>9.0}, achieved {:>9.0}: p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms; lost {} dup {} reordered {}; server CPU {:.2} s/M{}",
                target,
                step.offered_deliveries_per_s,
                step.achieved_deliveries_per_s,
                step.latency_ms.p50,
                step.latency_ms.p99,
                step.latency_ms.p999,
                step.lost,
                step.duplicates,
                step.reordered,
                step.server_cpu_s_per_million.unwrap_or(f64::NAN),
                if step.kept_up { "" } else { "  — did not keep up" }
            );
            let stop = !step.kept_up || step.latency_ms.p99 > SATURATED_P99_MS;
            steps.push(step);
            if stop && !args.keep_going {
                break;
            }
        }
        Ok(())
    };
    let result = run();
    drop(publisher);
    let (exit, _) = fleet.stop(STOP_TIMEOUT);
    result?;
    let mut dropped = Tally::default();
    dropped.merge(&exit.dropped);
    let lost = steps.iter().map(|s| s.lost.max(0)).sum();
    let duplicates = steps.iter().map(|s| s.duplicates).sum();
    let reordered = steps.iter().map(|s| s.reordered).sum();
    let report = LatencyReport {
        scenario: "latency",
        server: common.server(),
        protocol: common.protocol.name(),
        machine: Machine::read(),
        server_info,
        conns_requested: common.conns,
        conns_established: established.established,
        connect_failures: established.failures.clone(),
        fanout: homing.fanout,
        payload_bytes: common.payload_bytes,
        step_s: homing.duration_s,
        warmup_s: homing.warmup_s,
        keep_up_fraction: KEEP_UP_FRACTION,
        max_kept_up_deliveries_per_s: steps
            .iter()
            .filter(|s| s.kept_up)
            .map(|s| s.rate_target_deliveries_per_s)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r)))),
        ok: duplicates == 0
            && reordered == 0
            && all_online
            && dropped.total() == 0
            && steps.first().is_some_and(|s| s.kept_up),
        steps,
        lost,
        duplicates,
        reordered,
        dropped_connections: dropped,
    };
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &common.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}

fn latency_step(phase: &Phase, target: f64, pushes_per_s: f64) -> LatencyStep {
    let latency_ms = phase.latency();
    let offered = phase.targeted as f64 / phase.push_wall_s.max(1e-9);
    let achieved = phase.unique as f64 / phase.delivery_wall_s.max(1e-9);
    LatencyStep {
        rate_target_deliveries_per_s: target,
        rate_target_pushes_per_s: pushes_per_s,
        pushes: phase.pushes,
        targeted: phase.targeted,
        offered_deliveries_per_s: offered,
        achieved_deliveries_per_s: achieved,
        server_totals: phase.totals,
        received: phase.snap.received,
        duplicates: phase.snap.duplicates,
        reordered: phase.snap.reordered,
        lost: phase.lost,
        latency_ms,
        cpu: phase.cpu,
        server_cpu_s_per_million: phase.server_cpu_s_per_million(),
        tcp_segments_per_delivery: phase.tcp_segments_per_delivery(),
        kept_up: phase.lost == 0
            && phase.snap.duplicates == 0
            && achieved >= KEEP_UP_FRACTION * target,
    }
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
        let mut targets = Targets::new(10, 2);
        let mut g = Generator {
            flow: None,
            targets: &mut targets,
            payload_bytes: 50,
            end: start + Duration::from_millis(200),
            interval_ns: Some(1e9 / 100.0),
            start_ns: sys::monotonic_ns(),
            first_seq: 5,
            pushes: 0,
            targeted: 0,
        };
        let items: Vec<Item> = g.by_ref().collect();
        assert!((15..=21).contains(&items.len()), "{}", items.len());
        assert!(start.elapsed() < Duration::from_millis(400));
        assert_eq!(g.targeted, 2 * items.len() as u64);
        let first = payload::parse(items[0].data.as_bytes()).unwrap();
        let second = payload::parse(items[1].data.as_bytes()).unwrap();
        // Sequence numbers go on from the previous phase's.
        assert_eq!((first.seq, second.seq), (5, 6));
        assert_eq!(second.sent_ns - first.sent_ns, 10_000_000);
    }
}
