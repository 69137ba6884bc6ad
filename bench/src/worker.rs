//! One worker: opens its slice of connections on one epoll, upgrades each,
//! checks the welcome, then holds them idle until told to stop.
//!
//! Plain epoll and nonblocking sockets, no runtime: the client must not be the
//! bottleneck or the noise in a measurement of the server, and a connection
//! here is a socket plus a small slot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::proto::Protocol;
use crate::sources::source_for;
use crate::sys::{self, Epoll};
use crate::token;
use crate::wsclient::Rng;

#[path = "worker_conn.rs"]
mod conn;
use conn::{Conn, Phase, SCRATCH_BYTES};
pub use conn::{SeqVerdict, SeqWindow};

/// Each worker keeps its sockets well inside the 20,000 open-file limit;
/// 64 workers × 16,000 make the 1,000,000-connection run possible.
pub const CONNS_PER_WORKER_MAX: u64 = 16_000;
/// Handshakes in flight per worker: enough to keep the server busy, few
/// enough that a burst cannot overrun its listen backlog.
pub const INFLIGHT_MAX_DEFAULT: usize = 512;
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Descriptors a worker needs besides its sockets: stdio, epoll, the stop fd.
const FDS_RESERVED: u64 = 16;
const EVENTS_PER_WAIT: usize = 256;
/// How often in-flight handshakes are checked against their deadline.
const TIMEOUT_SCAN_INTERVAL_MS: u64 = 50;
/// How long the hold loop sleeps between checks when nothing happens.
const HOLD_WAIT_MS: i32 = 1000;
/// Distinct failure reasons kept; the rest are counted as "other".
const REASONS_MAX: usize = 64;
/// Latency histogram range: 1 µs to 10 minutes, 3 significant digits.
pub const LATENCY_MAX_US: u64 = 600_000_000;
/// A command line on stdin longer than this is garbage, not a command.
const COMMAND_LINE_MAX_BYTES: usize = 256;

const STOP_TOKEN: u64 = u64::MAX;

/// What one worker does.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub target: SocketAddrV4,
    /// The `Host` header; the target as written on the command line.
    pub host: String,
    /// Rotated per connection by global index.
    pub sources: Vec<Ipv4Addr>,
    /// Global index of this worker's first connection (user `bench-<index>`).
    pub first_index: u64,
    pub count: u64,
    /// This worker's share of the connect rate; `None`: as fast as the
    /// in-flight limit allows.
    pub connect_rate_per_s: Option<f64>,
    pub inflight_max: usize,
    pub handshake_timeout_ms: u64,
    /// The dialect the server speaks.
    pub protocol: Protocol,
    /// Stop starting connections once this many failed (the rest count as
    /// not attempted): `idle --max` wants the first failure, not thousands
    /// of timeouts after it.
    pub stop_after_failures: Option<u64>,
}

impl WorkerConfig {
    pub fn new(target: SocketAddrV4, sources: Vec<Ipv4Addr>, first_index: u64, count: u64) -> Self {
        WorkerConfig {
            target,
            host: target.to_string(),
            sources,
            first_index,
            count,
            connect_rate_per_s: None,
            inflight_max: INFLIGHT_MAX_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            protocol: Protocol::Pushgate,
            stop_after_failures: None,
        }
    }
}

/// Counts by reason, with a cap on distinct reasons so a server that puts a
/// unique id in every error cannot grow the report without bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    pub fn add(&mut self, reason: String) {
        self.add_n(reason, 1);
    }

    pub fn add_n(&mut self, reason: String, n: u64) {
        if n == 0 {
            return;
        }
        let key = if self.0.len() < REASONS_MAX || self.0.contains_key(&reason) {
            reason
        } else {
            "other".to_string()
        };
        *self.0.entry(key).or_insert(0) += n;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (reason, n) in &other.0 {
            self.add_n(reason.clone(), *n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The first line a worker reports: its connections are up (or failed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EstablishReport {
    pub requested: u64,
    pub established: u64,
    pub failed: u64,
    pub failures: Tally,
    /// CLOCK_MONOTONIC when the first connect started, comparable across
    /// processes.
    pub first_connect_mono_ns: u64,
    /// CLOCK_MONOTONIC when the last connection was settled.
    pub done_mono_ns: u64,
    /// Handshake latency, connect() to welcome, as recorded histogram
    /// buckets `(value_us, count)` so the parent can merge workers exactly.
    pub latency_us: Vec<(u64, u64)>,
}

/// What happened while the connections were held.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections still open when the stop came.
    pub held_at_stop: u64,
    pub dropped: Tally,
    pub pings_answered: u64,
    pub pongs_unsent: u64,
    pub frames_ignored: u64,
}

/// What the connections received since the last reset: pushed messages
/// carrying a bench stamp ([`crate::payload`]).
pub struct RecvStats {
    pub received: u64,
    /// Stamped messages whose sequence the connection had already received.
    pub duplicates: u64,
    /// Stamped messages that arrived after a higher sequence (not lost, not
    /// duplicated; concurrent publishers may cause it).
    pub reordered: u64,
    /// Text messages without a stamp.
    pub unstamped: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    /// Receive time minus the stamp's send time, microseconds.
    pub latency_us: Histogram<u64>,
}

impl RecvStats {
    fn new() -> io::Result<Self> {
        Ok(RecvStats {
            received: 0,
            duplicates: 0,
            reordered: 0,
            unstamped: 0,
            first_recv_ns: 0,
            last_recv_ns: 0,
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .map_err(|e| io::Error::other(format!("histogram: {e}")))?,
        })
    }

    fn record(&mut self, sent_ns: u64, now_ns: u64, verdict: SeqVerdict) {
        self.received += 1;
        match verdict {
            SeqVerdict::InOrder => {}
            SeqVerdict::Reordered => self.reordered += 1,
            SeqVerdict::Duplicate => self.duplicates += 1,
        }
        if self.first_recv_ns == 0 {
            self.first_recv_ns = now_ns;
        }
        self.last_recv_ns = self.last_recv_ns.max(now_ns);
        let latency_us = now_ns.saturating_sub(sent_ns) / 1000;
        self.latency_us.saturating_record(latency_us.max(1));
    }

    fn reset(&mut self) {
        self.received = 0;
        self.duplicates = 0;
        self.reordered = 0;
        self.unstamped = 0;
        self.first_recv_ns = 0;
        self.last_recv_ns = 0;
        self.latency_us.reset();
    }
}

/// A command the parent writes on a worker's stdin, one per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `count <tag>`: a snapshot without the latency histogram.
    Count(u64),
    /// `snapshot <tag>`: everything received since the last reset.
    Snapshot(u64),
    /// `reset <tag>`: the snapshot, then the counters start again at zero.
    Reset(u64),
}

impl Command {
    pub fn parse(line: &str) -> Option<Command> {
        let (word, tag) = line.trim().split_once(' ')?;
        let tag = tag.trim().parse().ok()?;
        match word {
            "count" => Some(Command::Count(tag)),
            "snapshot" => Some(Command::Snapshot(tag)),
            "reset" => Some(Command::Reset(tag)),
            _ => None,
        }
    }

    pub fn line(self) -> String {
        match self {
            Command::Count(tag) => format!("count {tag}\n"),
            Command::Snapshot(tag) => format!("snapshot {tag}\n"),
            Command::Reset(tag) => format!("reset {tag}\n"),
        }
    }
}

/// A worker's answer to a [`Command`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub tag: u64,
    pub held: u64,
    pub dropped: Tally,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unstamped: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    /// `(value_us, count)` buckets; empty for `count`.
    pub latency_us: Vec<(u64, u64)>,
}

/// One process's share of the connections.
pub struct Worker {
    config: WorkerConfig,
    epoll: Epoll,
    /// Indexed by slot (the epoll token); `None` is free.
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    /// Slots mid-handshake; at most `config.inflight_max`.
    inflight: Vec<usize>,
    stop: Option<File>,
    stopped: bool,
    rng: Rng,
    latency_us: Histogram<u64>,
    established: u64,
    failures: Tally,
    hold: HoldReport,
    recv_stats: RecvStats,
    /// Shared read buffer of established connections.
    scratch: Vec<u8>,
    /// Bytes of an unfinished command line from stdin.
    stdin_line: Vec<u8>,
    commands: std::collections::VecDeque<Command>,
}

impl Worker {
    /// `stop`: a readable descriptor (the worker's stdin) whose EOF ends the
    /// worker; `None` for in-process use.
    pub fn new(config: WorkerConfig, stop: Option<File>) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if config.count > CONNS_PER_WORKER_MAX {
            return Err(invalid(format!(
                "{} connections in one worker; at most {CONNS_PER_WORKER_MAX}",
                config.count
            )));
        }
        if config.sources.is_empty() {
            return Err(invalid("no source addresses".to_string()));
        }
        if config.inflight_max == 0 {
            return Err(invalid("in-flight limit is 0".to_string()));
        }
        let fds_limit = sys::open_files_soft_limit()?;
        if config.count + FDS_RESERVED > fds_limit {
            return Err(invalid(format!(
                "{} connections need more than this process's open-file limit ({fds_limit})",
                config.count
            )));
        }
        let epoll = Epoll::new()?;
        if let Some(stop) = &stop {
            epoll.add(stop.as_fd(), libc::EPOLLIN as u32, STOP_TOKEN)?;
        }
        let mut seed = [0u8; 8];
        sys::random_bytes(&mut seed)?;
        let latency_us = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
            .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
        Ok(Worker {
            conns: Vec::with_capacity(config.count as usize),
            free_slots: Vec::new(),
            inflight: Vec::with_capacity(config.inflight_max),
            config,
            epoll,
            stop,
            stopped: false,
            rng: Rng::new(u64::from_le_bytes(seed)),
            latency_us,
            established: 0,
            failures: Tally::default(),
            hold: HoldReport::default(),
            recv_stats: RecvStats::new()?,
            scratch: vec![0; SCRATCH_BYTES],
            stdin_line: Vec::new(),
            commands: std::collections::VecDeque::new(),
        })
    }

    /// Connections currently open and past their welcome.
    pub fn held(&self) -> u64 {
        self.established - self.hold.dropped.total()
    }

    /// Opens every connection of the slice, at most `inflight_max` handshakes
    /// at a time, and returns once each is established or failed (or the
    /// stop fd closed). `token_for(index)` gives the bearer token of global
    /// connection `index`.
    pub fn establish(
        &mut self,
        token_for: &mut dyn FnMut(u64) -> String,
    ) -> io::Result<EstablishReport> {
        let start_ns = sys::monotonic_ns();
        let timeout_ns = self.config.handshake_timeout_ms.saturating_mul(1_000_000);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut started = 0u64;
        let mut last_scan_ns = start_ns;
        // Bounded: each pass starts connections (at most `count` in all) or
        // waits at most TIMEOUT_SCAN_INTERVAL_MS; every started connection is
        // settled within its timeout by the scan, so the loop ends at most
        // one timeout after the last start.
        while !self.stopped {
            let now_ns = sys::monotonic_ns();
            let gave_up = self
                .config
                .stop_after_failures
                .is_some_and(|limit| self.failures.total() >= limit);
            while !gave_up
                && started < self.config.count
                && self.inflight.len() < self.config.inflight_max
                && self.rate_allows(started, now_ns - start_ns)
            {
                let index = self.config.first_index + started;
                let token = token_for(index);
                self.start(index, &token, now_ns);
                started += 1;
            }
            if (gave_up || started == self.config.count) && self.inflight.is_empty() {
                if started < self.config.count {
                    self.failures.add_n(
                        "not attempted (stopped after the first failures)".to_string(),
                        self.config.count - started,
                    );
                }
                break;
            }
            let wait_ms = self.wait_ms(started, now_ns - start_ns);
            let ready = self.epoll.wait(&mut events, wait_ms)?;
            for event in &events[..ready] {
                self.dispatch(event.u64, event.events);
            }
            let now_ns = sys::monotonic_ns();
            if now_ns - last_scan_ns >= TIMEOUT_SCAN_INTERVAL_MS * 1_000_000 {
                self.expire(now_ns, timeout_ns);
                last_scan_ns = now_ns;
            }
        }
        if self.stopped {
            self.abandon(started);
        }
        let failed = self.failures.total();
        debug_assert_eq!(self.established + failed, self.config.count);
        Ok(EstablishReport {
            requested: self.config.count,
            established: self.established,
            failed,
            failures: self.failures.clone(),
            first_connect_mono_ns: start_ns,
            done_mono_ns: sys::monotonic_ns(),
            latency_us: self
                .latency_us
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        })
    }

    /// Keeps the established connections open, answering pings, until the
    /// stop fd reaches EOF. Without a stop fd it returns at once.
    pub fn hold(&mut self) -> io::Result<HoldReport> {
        self.hold_with(&mut |_| Ok(()))
    }

    /// [`Worker::hold`], answering each command read from the stop fd
    /// (stdin) with `respond(snapshot)`.
    pub fn hold_with(
        &mut self,
        respond: &mut dyn FnMut(Snapshot) -> io::Result<()>,
    ) -> io::Result<HoldReport> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        // Bounded by the stop signal, which the parent always sends (closing
        // our stdin, or dying, which closes it too).
        while self.stop.is_some() && !self.stopped {
            let ready = self.epoll.wait(&mut events, HOLD_WAIT_MS)?;
            for event in &events[..ready] {
                self.dispatch(event.u64, event.events);
            }
            // Bounded: the queue only holds what stdin delivered.
            while let Some(command) = self.commands.pop_front() {
                respond(self.snapshot(command))?;
            }
        }
        let mut report = self.hold.clone();
        report.held_at_stop = self.held();
        self.close_abortively();
        Ok(report)
    }

    /// Makes every open connection's close a reset ([`sys::set_linger_zero`]):
    /// they close when the worker drops them, and leave no TIME_WAIT.
    fn close_abortively(&mut self) {
        for conn in self.conns.iter().flatten() {
            let _ = sys::set_linger_zero(conn.stream.as_fd());
        }
    }

    /// What the connections received since the last reset.
    pub fn snapshot(&mut self, command: Command) -> Snapshot {
        let (tag, with_latency) = match command {
            Command::Count(tag) => (tag, false),
            Command::Snapshot(tag) | Command::Reset(tag) => (tag, true),
        };
        let stats = &self.recv_stats;
        let snapshot = Snapshot {
            tag,
            held: self.held(),
            dropped: self.hold.dropped.clone(),
            received: stats.received,
            duplicates: stats.duplicates,
            reordered: stats.reordered,
            unstamped: stats.unstamped,
            first_recv_ns: stats.first_recv_ns,
            last_recv_ns: stats.last_recv_ns,
            latency_us: if with_latency {
                stats
                    .latency_us
                    .iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value()))
                    .collect()
            } else {
                Vec::new()
            },
        };
        if matches!(command, Command::Reset(_)) {
            self.recv_stats.reset();
        }
        snapshot
    }

    /// Whether connection number `started` may begin `elapsed_ns` after the
    /// first: a steady rate, not bursts.
    fn rate_allows(&self, started: u64, elapsed_ns: u64) -> bool {
        match self.config.connect_rate_per_s {
            None => true,
            Some(rate) => (started as f64) < rate * (elapsed_ns as f64 / 1e9) + 1.0,
        }
    }

    fn wait_ms(&self, started: u64, elapsed_ns: u64) -> i32 {
        let scan_ms = TIMEOUT_SCAN_INTERVAL_MS as i32;
        match self.config.connect_rate_per_s {
            Some(rate)
                if started < self.config.count
                    && self.inflight.len() < self.config.inflight_max =>
            {
                let due_ns = (started as f64 / rate * 1e9) as u64;
                let until_ms = due_ns.saturating_sub(elapsed_ns).div_ceil(1_000_000);
                (until_ms as i32).clamp(1, scan_ms)
            }
            _ => scan_ms,
        }
    }

    fn start(&mut self, index: u64, token: &str, now_ns: u64) {
        let source = source_for(&self.config.sources, index);
        let stream = match sys::connect_from(source, self.config.target) {
            Ok(stream) => stream,
            Err((what, e)) => {
                let text = match e.raw_os_error() {
                    Some(libc::ECONNREFUSED) => "connect refused".to_string(),
                    _ => format!("{what}: {e}"),
                };
                self.failures.add(text);
                return;
            }
        };
        let slot = self.free_slots.pop().unwrap_or(self.conns.len());
        // Writability reports the connect's outcome, immediate or not.
        if let Err(e) = self
            .epoll
            .add(stream.as_fd(), libc::EPOLLOUT as u32, slot as u64)
        {
            self.failures.add(format!("epoll add: {e}"));
            if slot < self.conns.len() {
                self.free_slots.push(slot);
            }
            return;
        }
        let key = self.rng.websocket_key();
        let request = self.config.protocol.upgrade_request(
            &self.config.host,
            &key,
            &token::user_id(index),
            token,
        );
        let conn = Conn {
            stream,
            phase: Phase::Connecting,
            started_ns: now_ns,
            request,
            key,
            written_bytes: 0,
            recv: Vec::new(),
            seqs: SeqWindow::default(),
        };
        if slot == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[slot] = Some(conn);
        }
        self.inflight.push(slot);
    }

    fn dispatch(&mut self, token: u64, readiness: u32) {
        if token == STOP_TOKEN {
            self.poll_stop();
            return;
        }
        let slot = token as usize;
        // A slot closed earlier in this batch has no connection any more.
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.phase == Phase::Established {
            if let Err(why) = conn.serve(
                self.config.protocol,
                &mut self.rng,
                &mut self.hold,
                &mut self.recv_stats,
                &mut self.scratch,
            ) {
                self.hold.dropped.add(why);
                self.release(slot);
            }
            return;
        }
        match conn.advance(
            &self.epoll,
            slot as u64,
            readiness,
            self.config.protocol,
            &mut self.rng,
        ) {
            Ok(false) => {}
            Ok(true) => {
                let latency_us = (sys::monotonic_ns() - conn.started_ns) / 1000;
                self.latency_us.saturating_record(latency_us.max(1));
                self.established += 1;
                self.leave_inflight(slot);
                // Bytes that came with the welcome (a ping, say) will not
                // raise another readiness event on their own.
                let leftover = self.conns[slot]
                    .as_ref()
                    .is_some_and(|c| !c.recv.is_empty());
                if leftover {
                    self.dispatch(token, 0);
                }
            }
            Err(why) => self.close_inflight(slot, why),
        }
    }

    fn poll_stop(&mut self) {
        let Some(stop) = self.stop.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 512];
        match stop.read(&mut chunk) {
            // Bytes on stdin are commands, one per line; only its end stops.
            Ok(n) if n > 0 => self.take_commands(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(_) | Err(_) => self.stopped = true,
        }
    }

    fn take_commands(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != b'\n' {
                if self.stdin_line.len() < COMMAND_LINE_MAX_BYTES {
                    self.stdin_line.push(b);
                }
                continue;
            }
            let line = std::mem::take(&mut self.stdin_line);
            if let Some(command) = std::str::from_utf8(&line).ok().and_then(Command::parse) {
                self.commands.push_back(command);
            }
        }
    }

    fn leave_inflight(&mut self, slot: usize) {
        if let Some(at) = self.inflight.iter().position(|&s| s == slot) {
            self.inflight.swap_remove(at);
        }
    }

    /// Closes the socket (which also takes it off the epoll) and frees the slot.
    fn release(&mut self, slot: usize) {
        if self.conns[slot].take().is_some() {
            self.free_slots.push(slot);
        }
    }

    fn close_inflight(&mut self, slot: usize, why: String) {
        self.failures.add(why);
        self.leave_inflight(slot);
        self.release(slot);
    }

    fn expire(&mut self, now_ns: u64, timeout_ns: u64) {
        let expired: Vec<usize> = self
            .inflight
            .iter()
            .copied()
            .filter(|&slot| {
                self.conns[slot]
                    .as_ref()
                    .is_some_and(|c| now_ns - c.started_ns >= timeout_ns)
            })
            .collect();
        for slot in expired {
            let phase = self.conns[slot]
                .as_ref()
                .map_or(Phase::Connecting, |c| c.phase);
            let why = format!(
                "timeout {} ms ({})",
                self.config.handshake_timeout_ms,
                phase.name()
            );
            self.close_inflight(slot, why);
        }
    }

    /// The stop came mid-way: whatever is unfinished counts as failed, so
    /// established + failed always equals requested.
    fn abandon(&mut self, started: u64) {
        let inflight: Vec<usize> = self.inflight.clone();
        for slot in inflight {
            self.close_inflight(slot, "stopped mid-handshake".to_string());
        }
        self.failures.add_n(
            "stopped before connecting".to_string(),
            self.config.count - started,
        );
    }
}
