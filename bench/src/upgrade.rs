//! `pushgate-bench upgrade`: N connections opened and upgraded as fast as
//! the server takes them; connections/s, the handshake latency histogram,
//! and the listen queue's overflows and drops meanwhile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{self, Fleet, FleetSpec};
use crate::machine::{self, Machine};
use crate::procfs::{self, ListenStat};
use crate::proto::Protocol;
use crate::push::{CpuUse, LatencyMs};
use crate::server_info::{self, MetaArgs, ServerInfo};
use crate::worker::{Tally, CONNS_PER_WORKER_MAX};

#[derive(Args, Debug, Clone)]
pub struct UpgradeArgs {
    /// The server's WebSocket listener (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    #[arg(long, value_enum, default_value_t = Protocol::Pushgate)]
    pub protocol: Protocol,
    #[arg(long)]
    pub server_name: Option<String>,
    #[arg(long)]
    pub server_pid: u32,
    #[arg(long, value_delimiter = ',')]
    pub server_extra_pids: Vec<u32>,
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    #[arg(long)]
    pub conns: u64,
    /// Worker processes [default: max(2, ceil(conns / 16000))].
    #[arg(long)]
    pub procs: Option<u64>,
    #[arg(long, default_value = "127.0.0.2-127.0.0.60")]
    pub sources: String,
    /// Handshakes in flight in all workers together: the burst's size.
    #[arg(long, default_value_t = 1024)]
    pub inflight: usize,
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub scenario: &'static str,
    pub server: String,
    pub protocol: &'static str,
    pub machine: Machine,
    pub server_info: ServerInfo,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub failures: Tally,
    pub procs: u64,
    pub inflight: usize,
    pub wall_s: f64,
    pub conns_per_s: f64,
    /// connect() → the server's welcome (pushgate, peers) or socket.io's
    /// connect ack.
    pub handshake_ms: LatencyMs,
    /// `(upper bound ms, count)` on a log scale, for charts.
    pub handshake_histogram_ms: Vec<(f64, u64)>,
    pub listen_overflows: i64,
    pub listen_drops: i64,
    pub cpu: CpuUse,
    pub ok: bool,
}

pub fn run(args: UpgradeArgs) -> Result<bool, String> {
    if args.conns == 0 {
        return Err("--conns must be at least 1".to_string());
    }
    let procs = args
        .procs
        .unwrap_or_else(|| args.conns.div_ceil(CONNS_PER_WORKER_MAX).max(2))
        .clamp(1, args.conns);
    if args.conns.div_ceil(procs) > CONNS_PER_WORKER_MAX {
        return Err(format!(
            "{} connections need more than {procs} workers",
            args.conns
        ));
    }
    let secret = fleet::resolve_secret_file(args.protocol, &args.secret_file, &args.run_dir)?;
    let spec = FleetSpec::new(
        &args.target,
        args.protocol,
        secret,
        &args.sources,
        args.handshake_timeout_ms,
    )?;
    let server_pids = server_info::server_pids(args.server_pid, &args.server_extra_pids);
    let server_cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .map(|&p| procfs::cpu_seconds(p).unwrap_or(0.0))
            .sum()
    };
    let server_info = ServerInfo::read(args.server_pid, &args.server_extra_pids, &args.meta);
    let listen_before = ListenStat::read().unwrap_or_default();
    let server_before = server_cpu(&server_pids);
    let loadgen_before = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut fleet = Fleet::new(spec);
    let mut all = Vec::new();
    let inflight = args.inflight.div_ceil(procs as usize);
    for slice in fleet::split(args.conns, procs) {
        all.push(fleet.spawn(slice, inflight, None)?);
    }
    let deadline = Instant::now()
        + Duration::from_millis(args.handshake_timeout_ms * 3)
        + Duration::from_secs(60);
    let done = fleet.await_established(&all, deadline);
    // The workers' CPU up to now (they only hold from here on).
    let loadgen_s = fleet
        .pids()
        .iter()
        .map(|&p| procfs::cpu_seconds(p).unwrap_or(0.0))
        .sum::<f64>()
        + procfs::cpu_seconds(std::process::id()).unwrap_or(0.0)
        - loadgen_before;
    let server_s = server_cpu(&server_pids) - server_before;
    let wall_all_s = started.elapsed().as_secs_f64();
    let listen = ListenStat::read().unwrap_or_default().delta(&listen_before);
    fleet.stop(Duration::from_secs(30));

    let h = done.latency_us.as_ref().expect("merged histogram");
    let wall_s = done.wall_s();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut histogram = Vec::new();
    if !h.is_empty() {
        // Bounded: doubling from 0.1 ms past the maximum (≤ 10 min).
        let mut upper_us = 100u64;
        let mut below = 0u64;
        loop {
            let count = h.count_between(0, upper_us);
            histogram.push((upper_us as f64 / 1e3, count - below));
            below = count;
            if upper_us >= h.max() {
                break;
            }
            upper_us *= 2;
        }
    }
    let report = UpgradeReport {
        scenario: "upgrade",
        server: args
            .server_name
            .clone()
            .unwrap_or_else(|| args.protocol.name().to_string()),
        protocol: args.protocol.name(),
        machine: Machine::read(),
        server_info,
        conns_requested: args.conns,
        conns_established: done.established,
        failures: done.failures.clone(),
        procs,
        inflight: args.inflight,
        wall_s,
        conns_per_s: if wall_s > 0.0 {
            done.established as f64 / wall_s
        } else {
            0.0
        },
        handshake_ms: LatencyMs::of(h),
        handshake_histogram_ms: histogram,
        listen_overflows: listen.listen_overflows,
        listen_drops: listen.listen_drops,
        cpu: CpuUse {
            wall_s: wall_all_s,
            server_s,
            loadgen_s,
            box_busy_fraction: (server_s + loadgen_s) / (cores * wall_all_s.max(1e-9)),
        },
        ok: done.failures.total() == 0,
    };
    println!(
        "{}: {} of {} upgraded in {:.2} s = {:.0} conn/s; handshake p50 {:.2} ms p99 {:.2} ms max {:.2} ms; listen overflows {:+} drops {:+}",
        report.server,
        report.conns_established,
        report.conns_requested,
        report.wall_s,
        report.conns_per_s,
        report.handshake_ms.p50,
        report.handshake_ms.p99,
        report.handshake_ms.max,
        report.listen_overflows,
        report.listen_drops
    );
    for (why, n) in &report.failures.0 {
        println!("  failed {n:>8}  {why}");
    }
    println!("note: {}", machine::SHARED_CORES_NOTE);
    if let Some(path) = &args.json {
        machine::write_json(path, &report)?;
    }
    Ok(report.ok)
}
