//! The parent's side of the worker processes: spawn them (this same binary,
//! `worker`), read what they report, send them commands, stop them.
//!
//! A worker holds ≤ 15,000 sockets, because one process cannot open more
//! than 20,000 files here. It reports one JSON line when its connections
//! are established, answers each command line on its stdin with a
//! snapshot line, and exits (with a last line) when its stdin closes — so a
//! parent that dies stops its workers too.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::proto::Protocol;
use crate::sources::{parse_sources, parse_target};
use crate::token;
use crate::worker::{
    Command, EstablishReport, HoldReport, Snapshot, Tally, Worker, WorkerConfig, LATENCY_MAX_US,
};

/// A worker's report line holds a few thousand histogram buckets at most.
const REPORT_LINE_MAX_BYTES: u64 = 4 << 20;

/// `pushgate-bench worker`: one slice of connections; spawned by the
/// scenarios, not for direct use.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub target: String,
    #[arg(long, value_enum, default_value_t = Protocol::Pushgate)]
    pub protocol: Protocol,
    /// Only for `--protocol pushgate`.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
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
    #[arg(long)]
    pub stop_after_failures: Option<u64>,
}

/// One line of a worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMessage {
    Established(EstablishReport),
    Snapshot(Snapshot),
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

/// The worker process: establish, report, hold (answering commands) until
/// stdin closes, report.
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
    let secret = match (args.protocol.needs_token(), &args.secret_file) {
        (true, Some(path)) => Some(token::read_secret(path)?),
        (true, None) => return Err("--protocol pushgate needs --secret-file".to_string()),
        (false, _) => None,
    };
    let mut config = WorkerConfig::new(target, sources, args.first_index, args.count);
    config.connect_rate_per_s = args.connect_rate;
    config.inflight_max = args.inflight;
    config.handshake_timeout_ms = args.handshake_timeout_ms;
    config.protocol = args.protocol;
    config.stop_after_failures = args.stop_after_failures;
    let stop = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| format!("stdin: {e}"))?;
    let mut worker = Worker::new(config, Some(stop)).map_err(|e| e.to_string())?;
    let now_unix_s = token::now_unix_s();
    let report = worker
        .establish(&mut |index| match &secret {
            Some(secret) => token::mint(secret, index, now_unix_s),
            None => String::new(),
        })
        .map_err(|e| format!("establish: {e}"))?;
    emit(&WorkerMessage::Established(report)).map_err(|e| format!("stdout: {e}"))?;
    let hold = worker
        .hold_with(&mut |snapshot| emit(&WorkerMessage::Snapshot(snapshot)))
        .map_err(|e| format!("hold: {e}"))?;
    emit(&WorkerMessage::Exit(hold)).map_err(|e| format!("stdout: {e}"))?;
    Ok(())
}

/// What every worker of a fleet shares.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub exe: PathBuf,
    pub target: String,
    pub protocol: Protocol,
    pub secret_file: Option<PathBuf>,
    pub sources: String,
    pub handshake_timeout_ms: u64,
    /// See `WorkerConfig::stop_after_failures`.
    pub stop_after_failures: Option<u64>,
}

impl FleetSpec {
    /// The spec of this binary's workers; checks the target, the sources
    /// and (for pushgate) that the secret can be read, once, here.
    pub fn new(
        target: &str,
        protocol: Protocol,
        secret_file: Option<PathBuf>,
        sources: &str,
        handshake_timeout_ms: u64,
    ) -> Result<FleetSpec, String> {
        parse_target(target)?;
        parse_sources(sources)?;
        let secret_file = match (protocol.needs_token(), secret_file) {
            (true, Some(path)) => {
                let path =
                    std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                token::read_secret(&path)?;
                Some(path)
            }
            (true, None) => {
                return Err("pushgate needs --run-dir or --secret-file (for tokens)".to_string())
            }
            (false, _) => None,
        };
        Ok(FleetSpec {
            exe: std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
            target: target.to_string(),
            protocol,
            secret_file,
            sources: sources.to_string(),
            handshake_timeout_ms,
            stop_after_failures: None,
        })
    }
}

/// The secret file from `--secret-file` or the server's `--run-dir`.
pub fn resolve_secret_file(
    protocol: Protocol,
    secret_file: &Option<PathBuf>,
    run_dir: &Option<PathBuf>,
) -> Result<Option<PathBuf>, String> {
    if !protocol.needs_token() {
        return Ok(None);
    }
    match (secret_file, run_dir) {
        (Some(file), _) => Ok(Some(file.clone())),
        (None, Some(dir)) => token::secret_file_in_run_dir(dir).map(Some),
        (None, None) => Err("pushgate needs --secret-file or --run-dir".to_string()),
    }
}

struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    count: u64,
    established: Option<u64>,
}

/// Running workers and the lines they report.
pub struct Fleet {
    spec: FleetSpec,
    members: Vec<Member>,
    lines: Receiver<(usize, Result<WorkerMessage, String>)>,
    sender: Sender<(usize, Result<WorkerMessage, String>)>,
    next_tag: u64,
}

/// The merged establish reports of some workers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Established {
    pub requested: u64,
    pub established: u64,
    pub failures: Tally,
    pub first_connect_mono_ns: u64,
    pub done_mono_ns: u64,
    #[serde(skip)]
    pub latency_us: Option<Histogram<u64>>,
}

impl Established {
    pub fn wall_s(&self) -> f64 {
        self.done_mono_ns.saturating_sub(self.first_connect_mono_ns) as f64 / 1e9
    }
}

/// Merged snapshots of every worker.
#[derive(Debug, Clone, Default)]
pub struct FleetSnapshot {
    pub held: u64,
    pub dropped: Tally,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unstamped: u64,
    /// 0 when nothing was received.
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub latency_us: Option<Histogram<u64>>,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn read_line(stdout: &mut impl BufRead) -> Result<WorkerMessage, String> {
    let mut line = String::new();
    let read = stdout
        .take(REPORT_LINE_MAX_BYTES)
        .read_line(&mut line)
        .map_err(|e| format!("reading its report: {e}"))?;
    if read == 0 {
        return Err("exited".to_string());
    }
    serde_json::from_str(&line).map_err(|e| format!("unreadable report: {e}"))
}

impl Fleet {
    pub fn new(spec: FleetSpec) -> Fleet {
        let (sender, lines) = mpsc::channel();
        Fleet {
            spec,
            members: Vec::new(),
            lines,
            sender,
            next_tag: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.child.id()).collect()
    }

    /// Starts a worker for users `first_index..first_index+count`; returns
    /// its number.
    pub fn spawn(
        &mut self,
        slice: (u64, u64),
        inflight: usize,
        connect_rate: Option<f64>,
    ) -> Result<usize, String> {
        let target = self.spec.target.clone();
        self.spawn_at(&target, slice, inflight, connect_rate)
    }

    /// [`Fleet::spawn`], with the worker's connections going to `target`
    /// instead of the spec's (several hosts of one cluster).
    pub fn spawn_at(
        &mut self,
        target: &str,
        (first_index, count): (u64, u64),
        inflight: usize,
        connect_rate: Option<f64>,
    ) -> Result<usize, String> {
        parse_target(target)?;
        let spec = &self.spec;
        let mut command = Process::new(&spec.exe);
        command
            .arg("worker")
            .arg("--target")
            .arg(target)
            .arg("--protocol")
            .arg(spec.protocol.name())
            .arg("--sources")
            .arg(&spec.sources)
            .arg("--first-index")
            .arg(first_index.to_string())
            .arg("--count")
            .arg(count.to_string())
            .arg("--inflight")
            .arg(inflight.max(1).to_string())
            .arg("--handshake-timeout-ms")
            .arg(spec.handshake_timeout_ms.to_string());
        if let Some(secret) = &spec.secret_file {
            command.arg("--secret-file").arg(secret);
        }
        if let Some(rate) = connect_rate {
            command.arg("--connect-rate").arg(rate.to_string());
        }
        if let Some(n) = spec.stop_after_failures {
            command.arg("--stop-after-failures").arg(n.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning a worker: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let index = self.members.len();
        let sender = self.sender.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            // Bounded: ends at the worker's EOF (it exits when its stdin
            // closes) or when the parent no longer listens.
            loop {
                let message = read_line(&mut reader);
                let end = message.is_err() || matches!(message, Ok(WorkerMessage::Exit(_)));
                if sender.send((index, message)).is_err() || end {
                    break;
                }
            }
        });
        self.members.push(Member {
            child,
            stdin,
            count,
            established: None,
        });
        Ok(index)
    }

    /// Waits for the establish report of each worker in `which`, at most
    /// until `deadline`; a worker that fails or is late counts all its
    /// connections as failed.
    pub fn await_established(&mut self, which: &[usize], deadline: Instant) -> Established {
        let mut merged = Established {
            first_connect_mono_ns: u64::MAX,
            latency_us: Some(new_histogram()),
            ..Established::default()
        };
        let mut waiting: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.members[i].established.is_none())
            .collect();
        for &i in which {
            merged.requested += self.members[i].count;
            if let Some(n) = self.members[i].established {
                merged.established += n; // reported before; no details kept
            }
        }
        // Bounded by the deadline and by the number of workers waited on.
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (index, message) = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => break,
            };
            let Some(at) = waiting.iter().position(|&w| w == index) else {
                continue;
            };
            let count = self.members[index].count;
            match message {
                Ok(WorkerMessage::Established(report)) => {
                    waiting.swap_remove(at);
                    self.members[index].established = Some(report.established);
                    merged.established += report.established;
                    merged.failures.merge(&report.failures);
                    if let Some(h) = merged.latency_us.as_mut() {
                        for (value, n) in report.latency_us {
                            h.saturating_record_n(value, n);
                        }
                    }
                    merged.first_connect_mono_ns = merged
                        .first_connect_mono_ns
                        .min(report.first_connect_mono_ns);
                    merged.done_mono_ns = merged.done_mono_ns.max(report.done_mono_ns);
                }
                Ok(WorkerMessage::Error { message }) => {
                    waiting.swap_remove(at);
                    self.members[index].established = Some(0);
                    eprintln!("worker {index}: {message}");
                    merged
                        .failures
                        .add_n(format!("worker error: {message}"), count);
                }
                Ok(_) | Err(_) => {
                    waiting.swap_remove(at);
                    self.members[index].established = Some(0);
                    merged
                        .failures
                        .add_n("worker exited before reporting".to_string(), count);
                }
            }
        }
        for index in waiting {
            self.members[index].established = Some(0);
            merged.failures.add_n(
                "worker did not report in time".to_string(),
                self.members[index].count,
            );
        }
        if merged.first_connect_mono_ns == u64::MAX {
            merged.first_connect_mono_ns = 0;
        }
        merged
    }

    /// Sends `command` (built from a fresh tag) to every worker and merges
    /// their answers; a worker that does not answer by `timeout` is an error.
    pub fn command(
        &mut self,
        make: fn(u64) -> Command,
        timeout: Duration,
    ) -> Result<FleetSnapshot, String> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let line = make(tag).line();
        let mut asked = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if let Some(stdin) = member.stdin.as_mut() {
                if member.established.unwrap_or(0) > 0 && stdin.write_all(line.as_bytes()).is_ok() {
                    let _ = stdin.flush();
                    asked.push(i);
                }
            }
        }
        let deadline = Instant::now() + timeout;
        let mut merged = FleetSnapshot {
            latency_us: Some(new_histogram()),
            ..FleetSnapshot::default()
        };
        // Bounded by the deadline and the number of workers asked.
        while !asked.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((index, Ok(WorkerMessage::Snapshot(s)))) if s.tag == tag => {
                    asked.retain(|&i| i != index);
                    merged.held += s.held;
                    merged.dropped.merge(&s.dropped);
                    merged.received += s.received;
                    merged.duplicates += s.duplicates;
                    merged.reordered += s.reordered;
                    merged.unstamped += s.unstamped;
                    if s.first_recv_ns > 0 {
                        merged.first_recv_ns = if merged.first_recv_ns == 0 {
                            s.first_recv_ns
                        } else {
                            merged.first_recv_ns.min(s.first_recv_ns)
                        };
                    }
                    merged.last_recv_ns = merged.last_recv_ns.max(s.last_recv_ns);
                    if let Some(h) = merged.latency_us.as_mut() {
                        for (value, n) in s.latency_us {
                            h.saturating_record_n(value, n);
                        }
                    }
                }
                // An older answer, arriving late: skip it.
                Ok((_, Ok(WorkerMessage::Snapshot(_)))) => {}
                Ok((index, Ok(other))) => {
                    return Err(format!("worker {index} answered {other:?}"));
                }
                Ok((index, Err(why))) => return Err(format!("worker {index}: {why}")),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} workers did not answer within {timeout:?}",
                        asked.len()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("every worker is gone".to_string())
                }
            }
        }
        Ok(merged)
    }

    /// Closes every worker's stdin, collects their exit reports (at most
    /// until `timeout`), and reaps them; a worker still running then is
    /// killed (only our own children, by pid).
    pub fn stop(mut self, timeout: Duration) -> (HoldReport, bool) {
        for member in &mut self.members {
            drop(member.stdin.take());
        }
        let mut hold = HoldReport::default();
        let mut waiting: Vec<usize> = (0..self.members.len()).collect();
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline and the number of workers.
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((index, Ok(WorkerMessage::Exit(exit)))) => {
                    waiting.retain(|&i| i != index);
                    hold.held_at_stop += exit.held_at_stop;
                    hold.dropped.merge(&exit.dropped);
                    hold.pings_answered += exit.pings_answered;
                    hold.pongs_unsent += exit.pongs_unsent;
                    hold.frames_ignored += exit.frames_ignored;
                }
                Ok((index, Err(_))) => waiting.retain(|&i| i != index),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let mut all_ok = true;
        for (i, member) in self.members.iter_mut().enumerate() {
            if waiting.contains(&i) {
                let _ = member.child.kill();
            }
            match member.child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    eprintln!("worker {i}: {status}");
                    all_ok = false;
                }
                Err(e) => {
                    eprintln!("worker {i}: wait: {e}");
                    all_ok = false;
                }
            }
        }
        (hold, all_ok)
    }
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
