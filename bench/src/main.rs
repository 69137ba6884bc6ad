//! `pushgate-bench`: the command line over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pushgate_bench::idle::{self, IdleArgs, WorkerArgs};

#[derive(Parser)]
#[command(
    name = "pushgate-bench",
    about = "Load generator and measurements for pushgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle authenticated WebSocket connections and measure the
    /// server's user-space RSS per connection.
    Idle(IdleArgs),
    /// One worker process of `idle` (spawned by it, not for direct use).
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Idle(args) => match idle::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(message) => {
                eprintln!("pushgate-bench idle: {message}");
                ExitCode::from(2)
            }
        },
        Cmd::IdleWorker(args) => match idle::run_worker(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("pushgate-bench idle-worker: {message}");
                ExitCode::from(2)
            }
        },
    }
}
