//! `pushgate-bench`: the command line over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pushgate_bench::cluster::{self, ClusterArgs};
use pushgate_bench::environment::{self, EnvironmentArgs};
use pushgate_bench::fleet::{self, WorkerArgs};
use pushgate_bench::idle::{self, IdleArgs};
use pushgate_bench::million::{self, MillionArgs};
use pushgate_bench::push::{self, BroadcastArgs, HomingArgs, LatencyArgs};
use pushgate_bench::report::{self, ReportArgs};
use pushgate_bench::takeover::{self, TakeoverArgs};
use pushgate_bench::tls::{self, TlsHandshakesArgs, TlsIdleArgs};
use pushgate_bench::upgrade::{self, UpgradeArgs};

#[derive(Parser)]
#[command(
    name = "pushgate-bench",
    about = "Load generator and measurements for pushgate and its peers",
    after_help = "The load generator and the server share the machine's cores over loopback; \
                  every result says so."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle WebSocket connections and measure the server's memory
    /// per connection, user space and kernel; --max: open until something fails.
    Idle(IdleArgs),
    /// Open and upgrade N connections as fast as the server takes them.
    Upgrade(UpgradeArgs),
    /// N clients; broadcasts; time from send to the last client's receipt.
    Broadcast(BroadcastArgs),
    /// N clients; pushes of 200 bytes to 300 random users each, as fast as
    /// possible: deliveries/s, lost, duplicated, server CPU per delivery.
    Homing(HomingArgs),
    /// The homing workload at fixed rates, from low to saturation:
    /// push→receive latency percentiles and deliveries/s achieved at each.
    Latency(LatencyArgs),
    /// The homing workload over several hosts of one cluster: clients
    /// spread over the hosts, each push entering one host for users on the
    /// others: deliveries/s, latency, CPU of gateways and Redis.
    Cluster(ClusterArgs),
    /// pushgate: hold a million connections for a while, then push once to
    /// each and count the receipts.
    Million(MillionArgs),
    /// N idle connections over TLS (or --plain): server memory per connection.
    TlsIdle(TlsIdleArgs),
    /// TLS handshakes as fast as the clients go: rate and server CPU each.
    TlsHandshakes(TlsHandshakesArgs),
    /// pushgate: hold N connections with broadcasts at a steady rate while
    /// `pushgate upgrade` moves them live: disconnects, lost, duplicated,
    /// extra latency, hand-over time, both processes' peak memory.
    Takeover(TakeoverArgs),
    /// Record the machine, kernel settings and every runtime's version.
    Environment(EnvironmentArgs),
    /// Merge a results directory's runs: per-scenario JSON, summary.md, SVG charts.
    Report(ReportArgs),
    /// One worker process (spawned by the scenarios, not for direct use).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// The old name of `worker`.
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
}

fn finish(name: &str, result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("pushgate-bench {name}: {message}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Idle(args) => finish("idle", idle::run(args)),
        Cmd::Upgrade(args) => finish("upgrade", upgrade::run(args)),
        Cmd::Broadcast(args) => finish("broadcast", push::run_broadcast(args)),
        Cmd::Homing(args) => finish("homing", push::run_homing(args)),
        Cmd::Latency(args) => finish("latency", push::run_latency(args)),
        Cmd::Cluster(args) => finish("cluster", cluster::run(args)),
        Cmd::Million(args) => finish("million", million::run(args)),
        Cmd::TlsIdle(args) => finish("tls-idle", tls::run_idle(args)),
        Cmd::TlsHandshakes(args) => finish("tls-handshakes", tls::run_handshakes(args)),
        Cmd::Takeover(args) => finish("takeover", takeover::run(args)),
        Cmd::Environment(args) => finish("environment", environment::run(args).map(|()| true)),
        Cmd::Report(args) => finish("report", report::run(args).map(|()| true)),
        Cmd::Worker(args) | Cmd::IdleWorker(args) => match fleet::run_worker(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("pushgate-bench worker: {message}");
                ExitCode::from(2)
            }
        },
    }
}
