//! Abuse against the real binary: floods, slow senders, oversized input,
//! forged tokens, hostile publishers and admin requests.
//!
//! Every test runs one server and a **bystander**: a well-behaved WebSocket
//! client connected for the whole test while a background thread pushes it
//! numbered notifications through the client library. Whatever the abuse,
//! the server must answer each bad input as the README says, stay healthy
//! (`/healthz` 200), return to its baseline connection count, and the
//! bystander must receive every number in order exactly once.
//!
//! Everything is loopback, bounded in count and time, and stays far below
//! the 20,000 open-files limit (at most ~2,000 sockets open at once).
//!
//! Several tests here first failed and found real bugs (evicted pushes held
//! until expiry, publishers cut off below their in-flight limit, status
//! cost growing with users, admin head limit and duplicate Content-Length);
//! they now guard the fixes. A failing test prints the server's last log
//! lines (and, with `ABUSE_DEBUG=1`, its counters).

mod common;

use common::{client_frame, next_push, upgrade_request, ws_connect, Raw, Server};
use pushgate::auth::{self, Secret};
use pushgate::push::client::Client;
use pushgate::push::wire::{self, Reply, Request};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The handshake timeout every abuse server runs with: short, so floods of
/// half-open connections resolve within the test.
const HANDSHAKE_TIMEOUT_MS: u64 = 1000;
/// What the server is allowed beyond a deadline before we call it late.
const SLACK: Duration = Duration::from_millis(2500);

/// Open files the test process wants: the largest flood holds ~2,000
/// sockets, and tests run in parallel.
const OPEN_FILES_WANTED: u64 = 8192;
const OPEN_FILES_NEEDED: u64 = 4500;

/// Raises the soft open-files limit towards [`OPEN_FILES_WANTED`] (never
/// past the hard limit); CI machines often start at 1,024.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < OPEN_FILES_WANTED {
            limit.rlim_cur = OPEN_FILES_WANTED.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
    }
    assert!(
        limit.rlim_cur >= OPEN_FILES_NEEDED,
        "the abuse tests need {OPEN_FILES_NEEDED} open files; the hard limit is {} \
         (raise it: ulimit -Hn, LimitNOFILE)",
        limit.rlim_max
    );
}

/// A server under test that prints the end of its log if the test fails.
struct Target(Server);

impl std::ops::Deref for Target {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.0.log.lock().unwrap_or_else(|e| e.into_inner());
            let skip = log.len().saturating_sub(40);
            eprintln!("--- the server's last log lines:");
            for line in &log[skip..] {
                eprintln!("{line}");
            }
            drop(log);
            // ABUSE_DEBUG=1: the counters too, to see where connections went.
            if std::env::var("ABUSE_DEBUG").is_ok() {
                let (_, metrics) = self.0.admin("GET", "/metrics", None, "");
                for l in metrics.lines().filter(|l| !l.starts_with('#')) {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn start(extra: &[&str]) -> Target {
    raise_open_files_limit();
    let timeout = HANDSHAKE_TIMEOUT_MS.to_string();
    let mut flags = vec!["--shards", "2", "--handshake-timeout-ms", timeout.as_str()];
    flags.extend_from_slice(extra);
    Target(Server::start(&flags))
}

// ---------------------------------------------------------------- helpers

/// xorshift64*: deterministic bytes for garbage, no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Sum over shards of `pushgate_<name>` in `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let (status, text) = server.admin("GET", "/metrics", None, "");
    assert_eq!(status, 200, "{text}");
    let prefix = format!("pushgate_{name}");
    text.lines()
        .filter(|l| {
            l.strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("bad metric line {l:?}"))
        })
        .sum()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn assert_healthy(server: &Server) {
    let (status, body) = server.admin("GET", "/healthz", None, "");
    assert_eq!(status, 200, "healthz: {body}");
    let (status, body) = server.admin("GET", "/readyz", None, "");
    assert_eq!(status, 200, "readyz: {body}");
}

/// Open sockets on every ring return to `baseline` (the bystander, its
/// pusher's push sockets and the scrape itself), and the only WebSocket
/// device left is the bystander.
fn assert_back_to_baseline(server: &Server, baseline: u64) {
    let mut open = 0;
    let back = eventually(Duration::from_secs(6), || {
        open = metric(server, "ring_connections_open");
        open <= baseline
    });
    assert!(
        back,
        "connections open stayed at {open}, baseline {baseline}"
    );
    let devices: u64 = Client::connect(&server.run_dir)
        .unwrap()
        .status()
        .unwrap()
        .iter()
        .map(|s| s.connections)
        .sum();
    assert_eq!(devices, 1, "only the bystander is left connected");
}

/// Peak resident set of the server so far (kB), from /proc.
fn vm_hwm_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Resident set of the server now (kB), from /proc.
fn vm_rss_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The status code of an HTTP response, if it is one.
fn http_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// Reads until the peer closes (EOF or reset) or `timeout`; returns the bytes
/// and whether the connection was closed.
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(_) => return (out, true), // reset: closed
        }
    }
}

/// One raw request: connect, send (a write error means the server already
/// answered and closed), read the answer until close.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let _ = stream.write_all(bytes);
    read_until_closed(&mut stream, Duration::from_secs(5))
}

fn status_of(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let (response, closed) = exchange(addr, bytes);
    assert!(closed, "the connection is closed after the answer");
    http_status(&response)
}

/// Next wire frame on a push socket; `None` when the server closed it.
fn read_reply(stream: &mut UnixStream) -> Option<Reply> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a reply: {e}"),
    }
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut body).expect("a whole reply body");
    Some(wire::decode_reply(&body).expect("a valid reply"))
}

fn push_socket(server: &Server, shard: usize) -> UnixStream {
    let s = UnixStream::connect(server.run_dir.join(format!("shard-{shard}.sock"))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends one raw body with a correct length prefix; returns the reply and
/// the connection.
fn publish_raw(server: &Server, body: &[u8]) -> (Reply, UnixStream) {
    let mut s = push_socket(server, 0);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    s.write_all(&frame).unwrap();
    let Some(reply) = read_reply(&mut s) else {
        panic!(
            "no reply to a {}-byte body {body:02x?} before the close",
            body.len()
        );
    };
    (reply, s)
}

/// Whether the server closes `s` within a short wait (nothing more may come).
fn is_closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut rest = [0u8; 1];
    match s.read(&mut rest) {
        Ok(0) => true,
        Ok(_) => panic!("one reply per request"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

fn error_message(reply: &Reply) -> &str {
    match reply {
        Reply::Error { message, .. } => message,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

// ---------------------------------------------------------------- bystander

/// A background thread that ends with a result or why it failed.
type Worker<T> = JoinHandle<Result<T, String>>;

/// A WebSocket client that stays connected for the whole test, fed numbered
/// notifications by a background publisher every few milliseconds.
struct Bystander {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    pusher: Mutex<Option<Worker<u64>>>,
    reader: Mutex<Option<Worker<Vec<u64>>>>,
    /// Sockets open on the rings once everything is in place (bystander,
    /// the pusher's push sockets, the scrape that measured it).
    baseline: u64,
}

impl Bystander {
    fn start(server: &Server) -> Bystander {
        let (mut ws, welcome) = ws_connect(server, "bystander", false, None);
        assert_eq!(welcome["user"], "bystander");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let reader = {
            let received = received.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut last_seq = 0;
                loop {
                    let text = match ws.read() {
                        Ok(Message::Text(t)) => t,
                        Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                        Ok(other) => {
                            return Err(format!("unexpected {other:?} after {} pushes", got.len()))
                        }
                        Err(e) => return Err(format!("{e} after {} pushes", got.len())),
                    };
                    let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    if v["type"] != "push" || seq <= last_seq {
                        return Err(format!("unexpected {v} after seq {last_seq}"));
                    }
                    last_seq = seq;
                    if v["data"] == "done" {
                        return Ok(got);
                    }
                    match v["data"].as_u64() {
                        Some(n) => got.push(n),
                        None => return Err(format!("not a bystander number: {v}")),
                    }
                    received.fetch_add(1, Relaxed);
                }
            })
        };
        let pusher = {
            let stop = stop.clone();
            let run_dir = server.run_dir.clone();
            thread::spawn(move || {
                let mut client = Client::connect(&run_dir).map_err(|e| e.to_string())?;
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let outcome = client
                        .push(&["bystander"], &n.to_string())
                        .map_err(|e| format!("push {n}: {e}"))?;
                    if outcome.delivered != 1 {
                        return Err(format!("push {n}: {outcome:?}"));
                    }
                    n += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                client
                    .push(&["bystander"], "\"done\"")
                    .map_err(|e| format!("final push: {e}"))?;
                Ok(n)
            })
        };
        assert!(
            eventually(Duration::from_secs(5), || received.load(Relaxed) > 0),
            "the bystander receives its first push"
        );
        let baseline = metric(server, "ring_connections_open");
        Bystander {
            stop,
            received,
            pusher: Mutex::new(Some(pusher)),
            reader: Mutex::new(Some(reader)),
            baseline,
        }
    }

    /// Asserts the bystander is still being served right now; if not, says
    /// why its threads ended.
    fn still_receiving(&self) {
        let before = self.received.load(Relaxed);
        if eventually(Duration::from_secs(5), || {
            self.received.load(Relaxed) > before + 3
        }) {
            return;
        }
        fn ended<T: std::fmt::Debug>(handle: &Mutex<Option<JoinHandle<T>>>) -> String {
            let mut handle = handle.lock().unwrap();
            match handle.take() {
                Some(h) if h.is_finished() => format!("{:?}", h.join()),
                other => {
                    *handle = other;
                    "still running".into()
                }
            }
        }
        panic!(
            "the bystander stopped receiving at {before}; its publisher: {}; its reader: {}",
            ended(&self.pusher),
            ended(&self.reader)
        );
    }

    /// Stops the pusher and checks every number arrived, in order, once.
    fn finish(self) {
        self.still_receiving();
        self.stop.store(true, Relaxed);
        let pushed = self.pusher.into_inner().unwrap().unwrap().join();
        let got = self.reader.into_inner().unwrap().unwrap().join();
        let pushed = pushed.expect("pusher thread");
        let got = got.expect("reader thread");
        let pushed = pushed.unwrap_or_else(|e| panic!("the bystander's publisher failed: {e}"));
        let got = got.unwrap_or_else(|e| panic!("the bystander's connection failed: {e}"));
        // How many fit in the test's time depends on the machine's load;
        // `still_receiving` above already saw the bystander served at the
        // end. Some pushes must have gone, or nothing was checked.
        assert!(pushed > 3, "only {pushed} pushes during the test");
        let first_wrong = got.iter().zip(0..).position(|(&n, i)| n != i);
        assert_eq!(
            first_wrong,
            None,
            "in order, none lost or duplicated (got {} of {pushed})",
            got.len()
        );
        assert_eq!(got.len() as u64, pushed, "every push arrived once");
    }
}

// ---------------------------------------------------------------- 1. floods

#[test]
fn handshake_flood_of_half_open_and_garbage_connections_is_cleared() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let refused_before = metric(&server, "handshakes_refused_total");

    let started = Instant::now();
    let mut half_open: Vec<TcpStream> = (0..1500)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();

    // Garbage: (bytes, small enough to be read in one receive, so the answer
    // cannot be lost to a reset).
    let mut rng = Rng(0x5eed_0001);
    let garbage: Vec<(Vec<u8>, bool)> = (0..500)
        .map(|i| match i % 6 {
            0 => {
                let n = 1 + rng.below(2048);
                (rng.bytes(n), true)
            }
            1 => {
                // A TLS 1.2 ClientHello record header and random body.
                let n = 64 + rng.below(400);
                let mut hello = vec![0x16, 0x03, 0x01, (n >> 8) as u8, n as u8, 0x01];
                hello.extend(rng.bytes(n));
                (hello, true)
            }
            2 => (b"\r\n".repeat(8192), false),
            3 => (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00".to_vec(),
                true,
            ),
            4 => (vec![0; 1024], true),
            _ => {
                // Too many header lines.
                let mut req = b"GET /ws HTTP/1.1\r\n".to_vec();
                for h in 0..100 {
                    req.extend_from_slice(format!("X-H{h}: v\r\n").as_bytes());
                }
                req.extend_from_slice(b"\r\n");
                (req, true)
            }
        })
        .collect();
    let mut garbage_conns: Vec<(TcpStream, bool)> = garbage
        .iter()
        .map(|(bytes, small)| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            let _ = s.write_all(bytes);
            (s, *small)
        })
        .collect();
    let connected = started.elapsed();
    bystander.still_receiving();

    for (i, (stream, small)) in garbage_conns.iter_mut().enumerate() {
        let (response, closed) = read_until_closed(stream, Duration::from_secs(5));
        assert!(closed, "garbage connection {i} closed");
        let status = http_status(&response);
        if *small || !response.is_empty() {
            assert!(
                matches!(status, Some(400 | 431)),
                "garbage connection {i} ({} bytes): {:?}",
                garbage[i].0.len(),
                String::from_utf8_lossy(&response)
            );
        }
    }
    for (i, stream) in half_open.iter_mut().enumerate() {
        let (response, closed) = read_until_closed(stream, Duration::from_secs(5));
        assert!(
            closed,
            "half-open connection {i} closed by the handshake timeout"
        );
        assert_eq!(
            http_status(&response),
            Some(408),
            "half-open connection {i}: {:?}",
            String::from_utf8_lossy(&response)
        );
    }
    let all_closed = started.elapsed();
    assert!(
        all_closed <= connected + Duration::from_millis(HANDSHAKE_TIMEOUT_MS) + SLACK,
        "the last half-open connection closed {all_closed:?} after the flood began \
         (connecting took {connected:?})"
    );
    drop(half_open);
    drop(garbage_conns);

    assert_back_to_baseline(&server, bystander.baseline);
    assert_eq!(
        metric(&server, "handshakes_refused_total") - refused_before,
        2000,
        "each flood connection was refused once"
    );
    // A new client still gets in.
    let (_ws, welcome) = ws_connect(&server, "latecomer", true, None);
    assert_eq!(welcome["user"], "latecomer");
    assert_healthy(&server);
    bystander.finish();
}

// ---------------------------------------------------------------- 2. slowloris

#[test]
fn slowloris_connections_are_closed_with_408_at_the_handshake_timeout() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let request = upgrade_request(&format!("/ws?token={}", server.token("loris")), "");
    let request = request.as_bytes();

    let started = Instant::now();
    let mut conns: Vec<(TcpStream, Vec<u8>, bool)> = (0..200)
        .map(|_| {
            let s = TcpStream::connect(server.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Vec::new(), false)
        })
        .collect();
    let mut sent = 0;
    let mut mid_attack_checked = false;
    while conns.iter().any(|(_, _, closed)| !closed)
        && started.elapsed() < Duration::from_millis(HANDSHAKE_TIMEOUT_MS) + SLACK
    {
        for (stream, response, closed) in conns.iter_mut().filter(|c| !c.2) {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        *closed = true;
                        break;
                    }
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *closed = true;
                        break;
                    }
                }
            }
            if !*closed && response.is_empty() {
                // One more header byte; the request never completes in time.
                let _ = stream.write(&request[sent % request.len()..][..1]);
            }
        }
        sent += 1;
        if !mid_attack_checked && started.elapsed() > Duration::from_millis(400) {
            // Meanwhile an honest client upgrades without waiting.
            let t = Instant::now();
            let (_ws, welcome) = ws_connect(&server, "honest", false, None);
            assert_eq!(welcome["user"], "honest");
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            mid_attack_checked = true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    for (i, (_, response, closed)) in conns.iter().enumerate() {
        assert!(
            closed,
            "slowloris connection {i} still open after {elapsed:?}"
        );
        assert_eq!(
            http_status(response),
            Some(408),
            "slowloris connection {i}: {:?}",
            String::from_utf8_lossy(response)
        );
    }
    assert!(
        sent >= 3,
        "each sent a few bytes before the timeout ({sent})"
    );
    drop(conns);
    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
}

// ---------------------------------------------------------------- 3. oversized

#[test]
fn oversized_headers_frames_and_messages_are_refused_without_buffering() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let hwm_before = vm_hwm_kb(&server);

    // A 1 MB header section: 431 after header_bytes_max, then closed.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut head = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
            head.resize(1 << 20, b'a');
            let _ = stream.write_all(&head);
        })
    };
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(closed, "closed after the 431");
    assert_eq!(
        http_status(&response),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    writer.join().unwrap();

    // Frame headers announcing 2^62 bytes (valid, over the limit: 1009) and
    // 2^63 (most significant bit set, which RFC 6455 §5.2 forbids: 1002).
    for (len, code) in [(1u64 << 62, 1009), (1u64 << 63, 1002), (u64::MAX, 1002)] {
        let (mut raw, _) = Raw::upgraded(&server, "huge");
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend_from_slice(&[0xaa; 64]);
        raw.send(&frame);
        assert_eq!(raw.read_close_code(), code, "frame announcing {len} bytes");
        let (_, closed) = read_until_closed(&mut raw.stream, Duration::from_secs(5));
        assert!(closed);
    }

    // A 16 MiB binary message in 64 KiB masked fragments: 1009 once the
    // message passes message_bytes_max, not buffered to the end.
    let (mut raw, _) = Raw::upgraded(&server, "huge");
    let fragment = vec![0x5a; 64 * 1024];
    let first = client_frame(0x02, &fragment);
    let middle = client_frame(0x00, &fragment);
    let last = client_frame(0x80, &fragment);
    let writer = {
        let mut stream = raw.stream.try_clone().unwrap();
        thread::spawn(move || {
            for i in 0..256 {
                let frame = match i {
                    0 => &first,
                    255 => &last,
                    _ => &middle,
                };
                if stream.write_all(frame).is_err() {
                    break;
                }
            }
        })
    };
    assert_eq!(raw.read_close_code(), 1009, "16 MiB message");
    let (_, closed) = read_until_closed(&mut raw.stream, Duration::from_secs(5));
    assert!(closed, "closed after the 1009");
    // The server discards the rest while it lingers, then closes.
    writer.join().unwrap();

    let hwm_after = vm_hwm_kb(&server);
    assert!(
        hwm_after - hwm_before < 8 * 1024,
        "peak RSS grew by {} kB",
        hwm_after - hwm_before
    );
    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
}

// ---------------------------------------------------------------- 4. slow consumer

#[test]
fn a_client_that_never_reads_is_cut_with_1013_while_the_bystander_keeps_receiving() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let (mut victim, welcome) = Raw::upgraded(&server, "victim");
    assert!(welcome.contains("\"victim\""), "{welcome}");

    // 20 MB to a client that reads nothing, in 16 KiB notifications.
    let mut publisher = Client::connect(&server.run_dir).unwrap();
    let pad = "x".repeat(16 * 1024);
    let (mut delivered, mut queued_max) = (0, 0);
    let mut victim_read = false;
    for i in 0..1280 {
        let outcome = publisher
            .push(&["victim"], &format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
            .unwrap();
        delivered += outcome.delivered;
        assert_eq!(outcome.delivered + outcome.stored, 1, "{outcome:?}");
        if i % 64 == 0 {
            queued_max = queued_max.max(metric(&server, "ring_send_queue_bytes"));
        }
        if outcome.stored == 1 && !victim_read {
            // Cut: what the victim reads now is some pushes, then 1013,
            // then the end. It reads at once, as a client would: a closing
            // connection's goodbye waits `close_linger` (2 s) for a reader,
            // and the rest of this loop may take longer than that on a
            // busy machine.
            assert_eq!(victim.read_close_code(), 1013);
            let (_, closed) = read_until_closed(&mut victim.stream, Duration::from_secs(5));
            assert!(closed, "the slow consumer is closed, not kept");
            victim_read = true;
        }
    }
    assert!(victim_read, "the victim was never cut");
    assert!(
        (1..1280).contains(&delivered),
        "the victim was cut before 20 MB went out ({delivered} delivered)"
    );
    // send_queue_bytes_max (256 KiB) plus one message admitted on top.
    assert!(queued_max <= 300 * 1024, "{queued_max} bytes queued");
    assert_eq!(metric(&server, "slow_consumer_closes_total"), 1);
    bystander.still_receiving();
    drop(victim);
    drop(publisher);

    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
}

/// `mailbox_entries_max` bounds what is kept per user: pushes evicted from
/// a mailbox must be freed, not held until `mailbox_retention_ms`.
#[test]
fn pushes_evicted_from_a_mailbox_are_freed() {
    let server = start(&["--mailbox-entries-max", "8"]);
    let bystander = Bystander::start(&server);
    let rss_before = vm_rss_kb(&server);
    let mut publisher = Client::connect(&server.run_dir).unwrap();
    let pad = "x".repeat(256 * 1024);
    for i in 0..80 {
        let outcome = publisher
            .push(&["offline"], &format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
            .unwrap();
        assert_eq!(outcome.stored, 1, "{outcome:?}");
    }
    // 8 entries of 256 KiB are kept; the other 72 (18 MiB) must not be.
    let grown = vm_rss_kb(&server).saturating_sub(rss_before);
    assert!(
        grown < 8 * 1024,
        "resident memory grew by {grown} kB holding 8 entries of 256 KiB"
    );
    assert_healthy(&server);
    bystander.finish();
}

// ---------------------------------------------------------------- 5. tokens

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn forged_expired_and_truncated_tokens_get_401_even_in_a_burst() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let now = common::now_unix_s();
    let good = server.token("mallory");
    let parts: Vec<&str> = good.split('.').collect();
    let other_secret = Secret::from_bytes(vec![0x42; 32]);
    let secret_bytes = std::fs::read(server.run_dir.join("secret")).unwrap();
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &serde_json::json!({"sub": "bystander", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret_bytes.trim_ascii()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "bystander"}),
        &jsonwebtoken::EncodingKey::from_secret(secret_bytes.trim_ascii()),
    )
    .unwrap();
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let by_payload = b64(format!(r#"{{"sub":"bystander","exp":{}}}"#, now + 600).as_bytes());
    let bad_tokens: Vec<(&str, String)> = vec![
        (
            "expired",
            auth::mint(&server.secret, "bystander", 10, now - 60),
        ),
        (
            "another secret",
            auth::mint(&other_secret, "bystander", 600, now),
        ),
        ("alg none", format!("{none_header}.{by_payload}.")),
        ("alg none, no dot", format!("{none_header}.{by_payload}")),
        (
            "mallory's signature on another payload",
            format!("{}.{by_payload}.{}", parts[0], parts[2]),
        ),
        ("HS512 with the right secret", hs512),
        ("no exp", no_exp),
        ("truncated signature", good[..good.len() - 5].to_string()),
        ("no signature", format!("{}.{}.", parts[0], parts[1])),
        ("header only", parts[0].to_string()),
        (
            "control character in sub",
            auth::mint(&server.secret, "a\u{1}b", 600, now),
        ),
        ("empty sub", auth::mint(&server.secret, "", 600, now)),
    ];
    for (what, token) in &bad_tokens {
        for request in [
            upgrade_request(&format!("/ws?token={token}"), ""),
            upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")),
        ] {
            let (response, closed) = exchange(server.addr, request.as_bytes());
            let text = String::from_utf8_lossy(&response);
            assert!(closed, "{what}: closed after the refusal");
            assert_eq!(http_status(&response), Some(401), "{what}: {text}");
            assert!(text.contains("WWW-Authenticate"), "{what}: {text}");
        }
    }

    // Mallory's token opens mallory's session and nothing else, even with
    // the bystander's token offered beside it (the header wins).
    let mut raw = Raw::connect(server.addr);
    let theirs = server.token("bystander");
    raw.send(
        upgrade_request(
            &format!("/ws?token={theirs}"),
            &format!("Authorization: Bearer {good}\r\n"),
        )
        .as_bytes(),
    );
    assert!(raw.read_head().starts_with("HTTP/1.1 101"));
    let (_, welcome) = raw.read_frame();
    let welcome: serde_json::Value = serde_json::from_slice(&welcome).unwrap();
    assert_eq!(welcome["user"], "mallory");
    let (mut mallory, welcome) = ws_connect(&server, "mallory", true, None);
    assert_eq!(welcome["user"], "mallory");
    let mut c = Client::connect(&server.run_dir).unwrap();
    c.push(&["mallory"], r#""for mallory""#).unwrap();
    assert_eq!(next_push(&mut mallory).1, "for mallory");
    // The bystander's numbers never reach mallory (a ping is fine).
    common::assert_quiet(&mut mallory, Duration::from_millis(300));
    drop((mallory, raw, c));

    // 1,000 rapid bad-token upgrades from 8 threads.
    let started = Instant::now();
    let addr = server.addr;
    let tokens: Arc<Vec<String>> = Arc::new(bad_tokens.into_iter().map(|(_, t)| t).collect());
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let tokens = tokens.clone();
            thread::spawn(move || {
                for i in 0..125 {
                    let token = &tokens[(w + i) % tokens.len()];
                    let request = upgrade_request(&format!("/ws?token={token}"), "");
                    let (response, _) = exchange(addr, request.as_bytes());
                    assert_eq!(
                        http_status(&response),
                        Some(401),
                        "{}",
                        String::from_utf8_lossy(&response)
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    bystander.still_receiving();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "1,000 refusals took {:?}",
        started.elapsed()
    );
    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
}

// ---------------------------------------------------------------- 6. publishers

const PUSH_FRAME_MAX: usize = 4 << 20;

#[test]
fn hostile_publishers_get_error_replies_and_the_server_stays_healthy() {
    let max = PUSH_FRAME_MAX.to_string();
    let server = start(&["--push-frame-bytes-max", max.as_str()]);
    let bystander = Bystander::start(&server);
    let hwm_before = vm_hwm_kb(&server);
    let mut rng = Rng(0x5eed_0006);

    // Bodies that are not archives: refused, that connection closed.
    let mut bodies = vec![Vec::new(), vec![0xab; 8], vec![0xff; 64]];
    bodies.extend((0..30).map(|_| {
        let n = 1 + rng.below(300);
        rng.bytes(n)
    }));
    for body in &bodies {
        let (reply, mut s) = publish_raw(&server, body);
        assert!(
            error_message(&reply).contains("bad push frame"),
            "{reply:?}"
        );
        assert!(is_closed(&mut s), "a bad frame closes its connection");
    }

    // Truncated valid archives (to users nobody is): whatever they decode to,
    // each gets exactly one valid reply.
    let valid = wire::encode_request(&Request::Push {
        id: 7,
        users: vec!["ghost-1".into(), "ghost-2".into()],
        data: r#"{"a":[1,2,3]}"#.into(),
    });
    let body = &valid[wire::LENGTH_BYTES..];
    let mut decoded = 0;
    for cut in 0..body.len() {
        if !matches!(publish_raw(&server, &body[..cut]).0, Reply::Error { .. }) {
            decoded += 1;
        }
    }
    eprintln!("truncated archives: {decoded} of {} decoded", body.len());

    // Oversized length prefixes: refused at once, without waiting for a body.
    for len in [u32::MAX, (PUSH_FRAME_MAX + 1) as u32] {
        let mut s = push_socket(&server, 1);
        s.write_all(&len.to_le_bytes()).unwrap();
        let reply = read_reply(&mut s).expect("an error reply");
        assert!(error_message(&reply).contains("exceeds"), "{reply:?}");
        assert!(read_reply(&mut s).is_none(), "then closed");
    }

    // Data that is not JSON: an error, the connection stays usable.
    let mut s = push_socket(&server, 0);
    for (id, data) in [(1, "{not json"), (2, ""), (3, "1 2"), (4, "\u{0}")] {
        let request = Request::Push {
            id,
            users: vec!["ghost".into()],
            data: data.into(),
        };
        s.write_all(&wire::encode_request(&request)).unwrap();
        match read_reply(&mut s) {
            Some(Reply::Error { id: got, message }) => {
                assert_eq!(got, id);
                assert!(message.contains("JSON"), "{message}");
            }
            other => panic!("{data:?}: {other:?}"),
        }
    }

    // 10,000 pipelined requests, no reply read until all are written:
    // bounded — in-order replies, "in flight" errors, or the publisher cut.
    // (Before the 100,000-user push below: with that many users stored each
    // Status is slow, see a_status_flood_with_many_users_stored_….)
    let (mut pipelined, writing, write_result) = pipeline_statuses(&server, 10_000);
    assert!(
        writing < Duration::from_secs(8),
        "writing 10,000 requests blocked for {writing:?}: the server stopped reading \
         without closing ({write_result:?})"
    );
    let (mut answered, mut in_flight_errors, mut last_id) = (0, 0, 0);
    while let Some(reply) = read_reply(&mut pipelined) {
        match reply {
            Reply::Pushed { id, .. } | Reply::Status { id, .. } => {
                assert!(
                    id > last_id,
                    "replies in request order: {id} after {last_id}"
                );
                last_id = id;
                answered += 1;
            }
            Reply::Error { id: 0, message } if message.contains("in flight") => {
                in_flight_errors += 1
            }
            other => panic!("{other:?}"),
        }
        if answered + in_flight_errors == 10_000 {
            break;
        }
    }
    eprintln!(
        "pipelined 10,000: {answered} answered, {in_flight_errors} refused as in flight, \
         write {write_result:?} in {writing:?}"
    );
    drop(pipelined);
    bystander.still_receiving();

    // 200,000 recipients: refused (the limit is 100,000); exactly 100,000
    // are accepted; the connection stays usable.
    let users: Vec<String> = (0..200_000).map(|i| format!("g{i}")).collect();
    for (id, n) in [(10u64, 200_000usize), (11, 100_000)] {
        let request = Request::Push {
            id,
            users: users[..n].to_vec(),
            data: "1".into(),
        };
        let frame = wire::encode_request(&request);
        assert!(frame.len() <= PUSH_FRAME_MAX + 4, "{}", frame.len());
        s.write_all(&frame).unwrap();
        match read_reply(&mut s).expect("a reply") {
            Reply::Error { id: got, message } => {
                assert_eq!((got, n), (id, 200_000), "{message}");
                assert!(message.contains("100000"), "{message}");
            }
            Reply::Pushed {
                id: got,
                delivered,
                stored,
                rejected,
            } => {
                assert_eq!((got, n), (id, 100_000));
                assert_eq!(delivered + stored + rejected, 100_000);
            }
            other => panic!("{other:?}"),
        }
    }
    drop(users);
    s.write_all(&wire::encode_request(&Request::Status { id: 12 }))
        .unwrap();
    assert!(matches!(
        read_reply(&mut s),
        Some(Reply::Status { id: 12, .. })
    ));
    drop(s);

    let hwm_after = vm_hwm_kb(&server);
    assert!(
        hwm_after - hwm_before < 96 * 1024,
        "peak RSS grew by {} kB",
        hwm_after - hwm_before
    );
    let mut c = Client::connect(&server.run_dir).unwrap();
    assert_eq!(c.status().unwrap().len(), 2);
    drop(c);
    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
}

/// README: "A publisher may have 4,096 requests in flight". One that stays
/// under that and reads its replies only once everything is written must
/// get every reply, in order.
#[test]
fn a_publisher_within_the_in_flight_limit_gets_every_reply() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let mut s = push_socket(&server, 0);
    let mut batch = Vec::new();
    for id in 1..=4000u64 {
        let request = if id % 2 == 0 {
            Request::Status { id }
        } else {
            Request::Push {
                id,
                users: vec![format!("ghost-{}", id % 64)],
                data: id.to_string(),
            }
        };
        batch.extend(wire::encode_request(&request));
    }
    s.write_all(&batch).unwrap();
    for id in 1..=4000u64 {
        match read_reply(&mut s) {
            Some(Reply::Pushed { id: got, .. } | Reply::Status { id: got, .. }) => {
                assert_eq!(got, id)
            }
            other => panic!("reply {id} of 4,000: {other:?}"),
        }
    }
    assert_healthy(&server);
    bystander.finish();
}

/// Pipelines `n` requests (every other one a Status) on one push socket
/// without reading; returns the socket and how long the write took.
fn pipeline_statuses(server: &Server, n: u64) -> (UnixStream, Duration, std::io::Result<()>) {
    let mut s = push_socket(server, 0);
    let mut batch = Vec::new();
    for id in 1..=n {
        let request = if id % 2 == 0 {
            Request::Status { id }
        } else {
            Request::Push {
                id,
                users: vec![format!("ghost-{}", id % 64)],
                data: id.to_string(),
            }
        };
        batch.extend(wire::encode_request(&request));
    }
    let started = Instant::now();
    let written = s.write_all(&batch);
    (s, started.elapsed(), written)
}

/// A shard's Status costs O(its users) (`shard_status` counts non-empty
/// mailboxes by scanning every user), so 5,000 pipelined Status requests
/// after a 100,000-user push stall both shards for seconds; with the CPU
/// contended that ends with the bystander silently dropped.
#[test]
fn a_status_flood_with_many_users_stored_does_not_stall_or_drop_anyone() {
    let max = PUSH_FRAME_MAX.to_string();
    let server = start(&["--push-frame-bytes-max", max.as_str()]);
    let bystander = Bystander::start(&server);
    // Contend for the CPU the way a busy CI machine does.
    let spin = Arc::new(AtomicBool::new(true));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let spin = spin.clone();
            thread::spawn(move || {
                while spin.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut s = push_socket(&server, 0);
    let users: Vec<String> = (0..100_000).map(|i| format!("g{i}")).collect();
    s.write_all(&wire::encode_request(&Request::Push {
        id: 1,
        users,
        data: "1".into(),
    }))
    .unwrap();
    assert!(matches!(read_reply(&mut s), Some(Reply::Pushed { .. })));
    let (_pipelined, took, written) = pipeline_statuses(&server, 10_000);
    let healthy = std::panic::catch_unwind(AssertUnwindSafe(|| bystander.still_receiving()));
    spin.store(false, Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    if let Err(panic) = healthy {
        std::panic::resume_unwind(panic);
    }
    assert!(
        took < Duration::from_secs(2),
        "the server stopped reading the pipeline for {took:?} ({written:?})"
    );
    assert_healthy(&server);
    bystander.finish();
}

// ---------------------------------------------------------------- 7. admin

fn admin_request(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}\r\n{body}").into_bytes()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[test]
fn admin_abuse_is_refused_with_precise_statuses() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let admin = server.admin_addr;
    let now = common::now_unix_s();
    let good = server.admin_token();
    let push_body = r#"{"users":["ghost"],"data":1}"#;
    let cl = format!("Content-Length: {}\r\n", push_body.len());

    let unauthorized = [
        ("no token", String::new()),
        ("a client's token", bearer(&server.token("bystander"))),
        ("garbage token", bearer("garbage")),
        (
            "expired admin token",
            bearer(&auth::mint_admin(&server.secret, 10, now - 60)),
        ),
        (
            "admin token from another secret",
            bearer(&auth::mint_admin(
                &Secret::from_bytes(vec![7; 32]),
                600,
                now,
            )),
        ),
        ("Basic scheme", format!("Authorization: Basic {good}\r\n")),
    ];
    for (what, auth_header) in &unauthorized {
        for (method, path, body) in [
            ("POST", "/v1/push", push_body),
            ("GET", "/v1/presence/bystander", ""),
            ("POST", "/v1/drain?rate=1", ""),
        ] {
            let headers = format!("{auth_header}Content-Length: {}\r\n", body.len());
            let status = status_of(admin, &admin_request(method, path, &headers, body));
            assert_eq!(status, Some(401), "{what}: {method} {path}");
        }
    }

    let many_headers: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut rng = Rng(0x5eed_0007);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "body over the limit",
            admin_request(
                "POST",
                "/v1/push",
                &format!("{}Content-Length: 100000000\r\n", bearer(&good)),
                "",
            ),
            413,
        ),
        (
            "chunked",
            admin_request(
                "POST",
                "/v1/push",
                &format!("{}Transfer-Encoding: chunked\r\n", bearer(&good)),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            411,
        ),
        (
            "chunked and a length",
            admin_request(
                "POST",
                "/v1/push",
                &format!("{}{cl}Transfer-Encoding: chunked\r\n", bearer(&good)),
                push_body,
            ),
            411,
        ),
        (
            "negative length",
            admin_request("POST", "/v1/push", "Content-Length: -1\r\n", ""),
            400,
        ),
        (
            "length not a number",
            admin_request("POST", "/v1/push", "Content-Length: lots\r\n", ""),
            400,
        ),
        (
            "not JSON",
            admin_request(
                "POST",
                "/v1/push",
                &format!("{}Content-Length: 9\r\n", bearer(&good)),
                "{not json",
            ),
            400,
        ),
        (
            "too many headers",
            admin_request("GET", "/healthz", &many_headers, ""),
            431,
        ),
        ("NUL bytes", vec![0; 512], 400),
        ("random bytes", rng.bytes(700), 400),
        (
            "TLS ClientHello",
            [vec![0x16, 0x03, 0x01, 0x00, 0x80, 0x01], rng.bytes(128)].concat(),
            400,
        ),
        (
            "no such path",
            admin_request("GET", "/../etc/passwd", "", ""),
            404,
        ),
        (
            "wrong method",
            admin_request("DELETE", "/healthz", "", ""),
            405,
        ),
    ];
    for (what, request, want) in &cases {
        let (response, closed) = exchange(admin, request);
        assert!(closed, "{what}: closed after the answer");
        assert_eq!(
            http_status(&response),
            Some(*want),
            "{what}: {:?}",
            String::from_utf8_lossy(&response)
        );
    }

    // 300 admin connections that never send a request: 408 at the
    // handshake timeout, each closed.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    for (i, stream) in idle.iter_mut().enumerate() {
        let (response, closed) = read_until_closed(stream, SLACK * 2);
        assert!(closed, "idle admin connection {i} closed");
        assert_eq!(
            http_status(&response),
            Some(408),
            "idle admin connection {i}"
        );
    }
    drop(idle);

    // None of it drained the server or stopped the real API.
    assert_eq!(metric(&server, "draining"), 0);
    let (status, body) = server.admin("GET", "/v1/presence/bystander", Some(&good), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"online\":true"), "{body}");
    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
}

/// An admin request head over 8 KiB is refused with 431 however it arrives.
#[test]
fn admin_head_over_the_limit_is_refused_with_431() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let huge_head = format!("X-Pad: {}\r\n", "a".repeat(9000));
    let request = admin_request("GET", "/healthz", &huge_head, "");
    let (response, closed) = exchange(server.admin_addr, &request);
    assert!(closed);
    assert_eq!(
        http_status(&response),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert_healthy(&server);
    bystander.finish();
}

/// RFC 9112 §6.3: differing Content-Length values are an unrecoverable
/// framing error; the server must answer 400, not pick one.
#[test]
fn admin_refuses_conflicting_content_lengths() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let good = server.admin_token();
    let body = r#"{"users":["ghost"],"data":1}"#;
    let request = admin_request(
        "POST",
        "/v1/push",
        &format!(
            "{}Content-Length: 3\r\nContent-Length: {}\r\n",
            bearer(&good),
            body.len()
        ),
        body,
    );
    let (response, closed) = exchange(server.admin_addr, &request);
    assert!(closed);
    assert_eq!(
        http_status(&response),
        Some(400),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert_healthy(&server);
    bystander.finish();
}

// ------------------------------------------------------ 8. deferred answers

/// Issue 10, finding 1: an answer that comes later (other shards) must
/// reach its asker or no one. Admin and publisher requests whose askers
/// close before the answer, thousands of them, while WebSocket clients
/// connect into the freed slots: afterwards no upgrade is stuck, the
/// gauges are back to zero, no user is shown online without a socket, and
/// a drain completes.
#[test]
fn answers_for_askers_that_closed_never_reach_anyone_else() {
    let server = start(&[]);
    let bystander = Bystander::start(&server);
    let token = server.admin_token();
    let users: Vec<String> = (0..200).map(|i| format!("offline-{i}")).collect();
    let body = serde_json::json!({"users": users, "data": {"late": true}}).to_string();
    let admin_addr = server.admin_addr;
    let run_dir = server.run_dir.clone();
    let askers = thread::spawn(move || {
        for i in 0..1_000u64 {
            let request = admin_request("POST", "/v1/push", &bearer(&token), &body);
            let mut s = TcpStream::connect(admin_addr).unwrap();
            let _ = s.write_all(&request);
            drop(s); // gone before the shards answer
            let mut p = UnixStream::connect(run_dir.join("shard-0.sock")).unwrap();
            let push = Request::Push {
                id: i,
                users: vec![
                    format!("offline-{}", i % 200),
                    format!("offline-{}", (i + 7) % 200),
                ],
                data: "1".into(),
            };
            let _ = p.write_all(&wire::encode_request(&push));
            drop(p);
        }
    });
    // Clients connect and leave meanwhile; each must be welcomed.
    for i in 0..600 {
        let (raw, welcome) = Raw::upgraded(&server, &format!("client-{i}"));
        assert!(welcome.contains("welcome"), "client {i}: {welcome}");
        drop(raw);
    }
    askers.join().unwrap();
    let settled = eventually(Duration::from_secs(20), || {
        metric(&server, "handshakes_in_progress") == 0
            && metric(&server, "requests_waiting") == 0
            && metric(&server, "publisher_connections") <= 2 // the bystander's pusher
            && metric(&server, "devices_online") == 1
    });
    assert!(
        settled,
        "left behind: {} upgrades, {} requests, {} publishers, {} devices",
        metric(&server, "handshakes_in_progress"),
        metric(&server, "requests_waiting"),
        metric(&server, "publisher_connections"),
        metric(&server, "devices_online"),
    );
    let mut c = Client::connect(&server.run_dir).unwrap();
    for i in [0, 299, 599] {
        let presence = c.presence(&format!("client-{i}")).unwrap();
        assert!(!presence.online, "client-{i} shown online without a socket");
    }
    drop(c);
    assert_back_to_baseline(&server, bystander.baseline);
    assert_healthy(&server);
    bystander.finish();
    // SAFETY: kill(2) on the server, our own child.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(30), || server
            .log_contains("drain complete")),
        "the drain completes"
    );
}
