//! Counting every notification through a failure: devices that log every
//! frame they read and reconnect with `?since=` as a real app does, a
//! publisher that pushes without pause and logs every answer, and the
//! ledger that compares the two.
//!
//! - A [`Device`] is one WebSocket client on its own thread. It logs each
//!   welcome (where it joined, `recovered`), each push (epoch, seq and the
//!   push's number `k`), and each end of a connection (a close code, or
//!   the socket breaking). After an end it reconnects with `?since=<the
//!   epoch and seq it last saw>`, first to the host it was on, then to the
//!   next host in its list while a connection cannot be made.
//! - A [`Publisher`] pushes `{"k":N}` through one host's push socket, one
//!   push at a time (the next after the answer), and logs each answer:
//!   the counts, or the error.
//! - [`Ledger::check`] holds a device to what its user was answered: every
//!   push answered with counts reaches it exactly once after de-duplication
//!   by seq, in the order it was pushed; a push answered with an error may
//!   or may not arrive (counted apart); duplicates are counted.
#![allow(dead_code)]

use crate::common::Server;
use pushgate::push::client::{Client, PushOutcome};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a device's read gives up waiting to look at its stop flag.
const READ_POLL_MS: u64 = 200;
/// Pause before a device reconnects (after an end or a failed connect).
const RECONNECT_PAUSE_MS: u64 = 100;
/// Numbers `k` of one publisher start at its id times this.
pub const K_PER_PUBLISHER: u64 = 1_000_000;

/// A host a device can connect to, with a token that host accepts.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub token: String,
}

impl Endpoint {
    pub fn of(server: &Server, user: &str) -> Endpoint {
        Endpoint {
            addr: server.addr,
            token: server.token(user),
        }
    }
}

/// A welcome.
#[derive(Clone, Debug)]
pub struct Joined {
    /// Index into the device's endpoints.
    pub endpoint: usize,
    pub at: Instant,
    pub since: Option<(u64, u64)>,
    pub recovered: Option<bool>,
    pub epoch: u64,
    pub seq: u64,
}

/// One push frame as read, duplicates included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub epoch: u64,
    pub seq: u64,
    pub k: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DeviceLog {
    pub joins: Vec<Joined>,
    pub received: Vec<Received>,
    /// Ends of connections: when, and why (`close 1012`, `broken: …`).
    pub ends: Vec<(Instant, String)>,
    /// Connections that could not be made (host gone, refused upgrade).
    pub failed_connects: u64,
}

/// A device of `user`: a client thread (see the module's doc).
pub struct Device {
    pub user: String,
    log: Arc<Mutex<DeviceLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Connects to `endpoints[first]` and waits (generously) for its
    /// first welcome.
    pub fn start(user: &str, endpoints: Vec<Endpoint>, first: usize) -> Device {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || run_device(&endpoints, first, &log, &stop))
        };
        let device = Device {
            user: user.to_owned(),
            log,
            stop,
            thread: Some(thread),
        };
        crate::redis_fixture::wait_for(
            &format!("{user}'s device welcomed"),
            Duration::from_secs(30),
            || !device.log().joins.is_empty(),
        );
        device
    }

    pub fn log(&self) -> DeviceLog {
        self.log.lock().unwrap().clone()
    }

    /// Stops the client (its connection closes) and returns its log.
    pub fn stop(mut self) -> DeviceLog {
        self.halt();
        self.log()
    }

    fn halt(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.halt();
    }
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect(endpoint: &Endpoint, since: Option<(u64, u64)>) -> Result<Ws, String> {
    use tungstenite::client::IntoClientRequest;
    let query = since.map_or(String::new(), |(epoch, seq)| {
        format!("?since={epoch}:{seq}")
    });
    let mut request = format!("ws://{}/ws{query}", endpoint.addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {}", endpoint.token);
    request
        .headers_mut()
        .insert("Authorization", bearer.parse().unwrap());
    let stream = TcpStream::connect_timeout(&endpoint.addr, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let (ws, response) = tungstenite::client(request, stream).map_err(|e| e.to_string())?;
    if response.status() != 101 {
        return Err(format!("upgrade answered {}", response.status()));
    }
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(READ_POLL_MS)))
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn run_device(endpoints: &[Endpoint], first: usize, log: &Mutex<DeviceLog>, stop: &AtomicBool) {
    let mut current = first;
    // The epoch of its last welcome and the last seq it saw.
    let mut position: Option<(u64, u64)> = None;
    while !stop.load(Relaxed) {
        let mut ws = match connect(&endpoints[current], position) {
            Ok(ws) => ws,
            Err(_) => {
                log.lock().unwrap().failed_connects += 1;
                current = (current + 1) % endpoints.len();
                std::thread::sleep(Duration::from_millis(RECONNECT_PAUSE_MS));
                continue;
            }
        };
        let since = position;
        let end = loop {
            if stop.load(Relaxed) {
                let _ = ws.close(None);
                let _ = ws.flush();
                return;
            }
            let text = match ws.read() {
                Ok(tungstenite::Message::Text(text)) => text,
                Ok(tungstenite::Message::Close(frame)) => {
                    break format!("close {}", frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => break format!("broken: {e}"),
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            let mut log = log.lock().unwrap();
            match v["type"].as_str() {
                Some("welcome") => {
                    let joined = Joined {
                        endpoint: current,
                        at: Instant::now(),
                        since,
                        recovered: v["recovered"].as_bool(),
                        epoch: v["epoch"].as_u64().unwrap(),
                        seq: v["seq"].as_u64().unwrap(),
                    };
                    // Recovered: the replay follows from `since`. Else the
                    // device starts at the newest push.
                    if joined.recovered != Some(true) {
                        position = Some((joined.epoch, joined.seq));
                    }
                    log.joins.push(joined);
                }
                Some("push") => {
                    let (epoch, _) = position.expect("a push after a welcome");
                    let seq = v["seq"].as_u64().unwrap();
                    let k = v["data"]["k"].as_u64().unwrap();
                    log.received.push(Received { epoch, seq, k });
                    position = Some((epoch, seq));
                }
                _ => panic!("unexpected message {v}"),
            }
        };
        log.lock().unwrap().ends.push((Instant::now(), end));
        std::thread::sleep(Duration::from_millis(RECONNECT_PAUSE_MS));
    }
}

/// One push and its answer.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub k: u64,
    pub users: Vec<String>,
    pub sent: Instant,
    pub answered: Instant,
    pub result: Result<PushOutcome, String>,
}

/// Who a push with number `k` goes to.
pub type Recipients = Box<dyn Fn(u64) -> Vec<String> + Send>;

/// Pushes through one host's push socket (see the module's doc).
pub struct Publisher {
    log: Arc<Mutex<Vec<Pushed>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Publisher `id` (its `k` start at `id` × [`K_PER_PUBLISHER`] + 1)
    /// through the host whose run directory is `run_dir`, `pause` between
    /// an answer and the next push.
    pub fn start(id: u64, run_dir: PathBuf, recipients: Recipients, pause: Duration) -> Publisher {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = None;
                let mut k = id * K_PER_PUBLISHER;
                while !stop.load(Relaxed) {
                    let client = match &mut client {
                        Some(client) => client,
                        None => {
                            match Client::connect_with_io_timeout(&run_dir, Duration::from_secs(10))
                            {
                                Ok(c) => client.insert(c),
                                Err(_) => {
                                    std::thread::sleep(pause.max(Duration::from_millis(50)));
                                    continue;
                                }
                            }
                        }
                    };
                    k += 1;
                    let users = recipients(k);
                    let names: Vec<&str> = users.iter().map(String::as_str).collect();
                    let sent = Instant::now();
                    let result = client
                        .push(&names, &format!(r#"{{"k":{k}}}"#))
                        .map_err(|e| e.to_string());
                    log.lock().unwrap().push(Pushed {
                        k,
                        users,
                        sent,
                        answered: Instant::now(),
                        result,
                    });
                    std::thread::sleep(pause);
                }
            })
        };
        Publisher {
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn pushes(&self) -> Vec<Pushed> {
        self.log.lock().unwrap().clone()
    }

    /// Stops after the push in progress is answered; every push's answer.
    pub fn stop(mut self) -> Vec<Pushed> {
        self.halt();
        self.pushes()
    }

    fn halt(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What one device got, as [`Ledger::check`] counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames read, duplicates included.
    pub notifications: usize,
    /// Pushes answered with counts that the device had to get.
    pub acked: usize,
    /// Pushes of its user answered with an error; how many of them came.
    pub failed: usize,
    pub failed_arrived: usize,
    /// Frames whose seq the device had read before.
    pub duplicates: usize,
    /// Pushes answered with counts, sent before a `recovered:false`
    /// welcome, that did not come (the welcome told the device it lost
    /// them).
    pub excused: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.notifications += o.notifications;
        self.acked += o.acked;
        self.failed += o.failed;
        self.failed_arrived += o.failed_arrived;
        self.duplicates += o.duplicates;
        self.excused += o.excused;
    }
}

/// Every push of every publisher, by number.
pub struct Ledger {
    by_k: HashMap<u64, Pushed>,
}

impl Ledger {
    pub fn new(publishers: &[&[Pushed]]) -> Ledger {
        let by_k = publishers
            .iter()
            .flat_map(|p| p.iter())
            .map(|p| (p.k, p.clone()))
            .collect();
        Ledger { by_k }
    }

    /// Pushes answered with counts (acknowledged), and with an error.
    pub fn answers(&self) -> (usize, usize) {
        let ok = self.by_k.values().filter(|p| p.result.is_ok()).count();
        (ok, self.by_k.len() - ok)
    }

    /// Holds `log`, a device of `user`, to what the publishers were told;
    /// `Err` says what is wrong (a missing push is `missing: [k…]`).
    pub fn check(&self, user: &str, log: &DeviceLog) -> Result<Tally, String> {
        let mut tally = Tally {
            notifications: log.received.len(),
            ..Tally::default()
        };
        let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
        let mut got: HashSet<u64> = HashSet::new();
        let mut newest: HashMap<u64, u64> = HashMap::new();
        // The last acknowledged k from each publisher, in arrival order.
        let mut last_acked: HashMap<u64, u64> = HashMap::new();
        for r in &log.received {
            if let Some(&k) = seen.get(&(r.epoch, r.seq)) {
                if k != r.k {
                    return Err(format!("seq {} carried k {k} and then k {}", r.seq, r.k));
                }
                tally.duplicates += 1;
                continue;
            }
            let newest = newest.entry(r.epoch).or_insert(0);
            if r.seq <= *newest {
                return Err(format!(
                    "seq {} (k {}) after seq {newest}: out of order",
                    r.seq, r.k
                ));
            }
            *newest = r.seq;
            seen.insert((r.epoch, r.seq), r.k);
            let Some(push) = self.by_k.get(&r.k) else {
                return Err(format!("k {} was never pushed", r.k));
            };
            if !push.users.iter().any(|u| u == user) {
                return Err(format!(
                    "k {} was pushed to {:?}, not {user}",
                    r.k, push.users
                ));
            }
            if !got.insert(r.k) {
                return Err(format!("k {} arrived under two seqs", r.k));
            }
            if push.result.is_ok() {
                let publisher = r.k / K_PER_PUBLISHER;
                if let Some(&before) = last_acked.get(&publisher) {
                    if r.k < before {
                        return Err(format!("k {} after k {before}: out of push order", r.k));
                    }
                }
                last_acked.insert(publisher, r.k);
            }
        }
        // What a `recovered:false` welcome told the device it lost.
        let lost_before = log
            .joins
            .iter()
            .filter(|j| j.since.is_some() && j.recovered == Some(false))
            .map(|j| j.at)
            .max();
        let first_join = log.joins.first().map(|j| j.at);
        let mut missing = Vec::new();
        let mut pushes: Vec<&Pushed> = self
            .by_k
            .values()
            .filter(|p| p.users.iter().any(|u| u == user))
            // Pushed before the device first joined: not its to get.
            .filter(|p| first_join.is_some_and(|at| p.sent >= at))
            .collect();
        pushes.sort_by_key(|p| p.k);
        for push in pushes {
            let arrived = got.contains(&push.k);
            match &push.result {
                Ok(_) => {
                    tally.acked += 1;
                    if !arrived {
                        // Sent after the device read that welcome: stored
                        // after the read it reported, so owed.
                        if lost_before.is_some_and(|at| push.sent < at) {
                            tally.excused += 1;
                        } else {
                            missing.push(push.k);
                        }
                    }
                }
                Err(_) => {
                    tally.failed += 1;
                    tally.failed_arrived += arrived as usize;
                }
            }
        }
        if missing.is_empty() {
            Ok(tally)
        } else {
            Err(format!("missing: {missing:?}"))
        }
    }

    /// Waits (up to `deadline`) until every device got every acknowledged
    /// push of its user, then checks each; the sum of their tallies.
    /// Panics with each device's log summary if one is still wrong.
    pub fn settle(&self, devices: &[Device], deadline: Duration) -> Tally {
        let end = Instant::now() + deadline;
        loop {
            let results: Vec<Result<Tally, String>> = devices
                .iter()
                .map(|d| self.check(&d.user, &d.log()))
                .collect();
            if results.iter().all(Result::is_ok) {
                let mut total = Tally::default();
                for tally in results.into_iter().flatten() {
                    total += tally;
                }
                return total;
            }
            if Instant::now() >= end {
                let mut report = String::new();
                for (device, result) in devices.iter().zip(results) {
                    let log = device.log();
                    report.push_str(&format!(
                        "\n{}: {result:?}; joins {:?}; ends {:?}; {} frames",
                        device.user,
                        log.joins,
                        log.ends,
                        log.received.len()
                    ));
                }
                panic!("devices did not get every acknowledged push in time:{report}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
